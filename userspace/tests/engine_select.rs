//! Backend selection in a running engine: forced by configuration, forced by the
//! environment (in a child process, since the environment is process-wide), and auto.

mod engine_support;

use std::process::Command;

use duraplane::engine::{
    BackendChoice, BackendKind, Engine, EngineError,
    select::{ENV_VAR, probe_system, select},
};
use engine_support::*;

#[test]
fn forced_mio_by_configuration() {
    if std::env::var_os(ENV_VAR).is_some() {
        return; // the environment overrides configuration by design
    }
    let (e, _) = start_echo(config(BackendChoice::Mio, "s", &[v4()]));
    assert_eq!(e.stats().backend, BackendKind::Mio);
    assert_eq!(e.selection().reason, "forced by configuration");
    assert_echo(e.local_addrs()[0]);
}

#[test]
fn auto_matches_the_system_probe() {
    if std::env::var_os(ENV_VAR).is_some() {
        return;
    }
    let want = select(BackendChoice::Auto, None, probe_system).unwrap().kind;
    let (e, _) = start_echo(config(BackendChoice::Auto, "s", &[v4()]));
    assert_eq!(e.stats().backend, want);
    assert!(e.selection().reason.starts_with("auto: "));
    assert_echo(e.local_addrs()[0]);
}

#[test]
fn bad_environment_value_is_an_error() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_reports_backend", "--ignored", "--nocapture"])
        .env(ENV_VAR, "kqueue")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DURAPLANE_ENGINE: unknown engine backend \"kqueue\""), "{text}");
}

#[test]
fn environment_forces_mio_over_configuration() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_reports_backend", "--ignored", "--nocapture"])
        .env(ENV_VAR, "mio")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("child: backend=mio reason=forced by DURAPLANE_ENGINE"), "{text}");
    assert!(out.status.success(), "{text}");
}

/// Run by the tests above in a child process with the environment set.
#[test]
#[ignore = "helper: run in a child process by the environment tests"]
fn child_reports_backend() {
    match Engine::start(config(BackendChoice::IoUring, "s", &[v4()]), Vec::new()) {
        Ok(e) => {
            assert_echo_noop(&e);
            println!(
                "child: backend={} reason={}",
                e.stats().backend,
                e.selection().reason
            );
        }
        Err(e @ EngineError::Select(_)) => println!("child: error: {e}"),
        Err(e) => panic!("{e}"),
    }
}

fn assert_echo_noop(e: &Engine) {
    // No services: a client still authenticates.
    let c = client(e.local_addrs()[0]);
    assert_eq!(c.peer_name(), "s");
}
