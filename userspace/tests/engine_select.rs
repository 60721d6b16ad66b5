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
    let want = select(BackendChoice::Auto, None, probe_system)
        .unwrap()
        .kind;
    let (e, _) = start_echo(config(BackendChoice::Auto, "s", &[v4()]));
    assert_eq!(e.stats().backend, want);
    assert!(e.selection().reason.starts_with("auto: "));
    assert_echo(e.local_addrs()[0]);
}

#[test]
fn bad_environment_value_is_an_error() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_reports_backend",
            "--ignored",
            "--nocapture",
        ])
        .env(ENV_VAR, "kqueue")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("DURAPLANE_ENGINE: unknown engine backend \"kqueue\""),
        "{text}"
    );
}

#[test]
fn environment_forces_mio_over_configuration() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_reports_backend",
            "--ignored",
            "--nocapture",
        ])
        .env(ENV_VAR, "mio")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("child: backend=mio reason=forced by DURAPLANE_ENGINE"),
        "{text}"
    );
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

/// io_uring_setup denied by a real seccomp filter (as container runtimes do): auto
/// falls back to mio and serves; forcing io_uring is a clear error.
#[test]
fn seccomp_denied_io_uring_falls_back_to_mio() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_under_seccomp", "--ignored", "--nocapture"])
        .env_remove(ENV_VAR)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("child: auto=mio"), "{text}");
    assert!(text.contains("child: forced=unavailable"), "{text}");
}

#[test]
#[ignore = "helper: run in a child process by seccomp_denied_io_uring_falls_back_to_mio"]
fn child_under_seccomp() {
    deny_io_uring_setup();
    let (e, _) = start_echo(config(BackendChoice::Auto, "s", &[v4()]));
    assert_eq!(e.stats().backend, BackendKind::Mio);
    assert!(
        e.selection().reason.contains("denied"),
        "{}",
        e.selection().reason
    );
    assert_echo(e.local_addrs()[0]);
    println!("child: auto={}", e.stats().backend);
    match Engine::start(config(BackendChoice::IoUring, "s", &[v4()]), Vec::new()) {
        Err(EngineError::Select(_)) => println!("child: forced=unavailable"),
        Ok(_) => panic!("forced io_uring started under seccomp"),
        Err(e) => panic!("{e}"),
    }
}

/// Installs a seccomp filter on this thread (inherited by threads it spawns) that
/// fails io_uring_setup(2) with EPERM.
fn deny_io_uring_setup() {
    const NR_IO_URING_SETUP: u32 = 425; // same number on x86_64 and aarch64
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut filter = [
        // A = seccomp_data.nr
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: NR_IO_URING_SETUP,
        },
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: standard seccomp installation on the current thread with a valid program.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog
            ),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
    }
}
