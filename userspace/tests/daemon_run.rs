//! `duraplane run` as a real process: console, metrics, signals, reload, check-config,
//! privilege drop.

mod daemon_support;

use daemon_support::*;
use nix::sys::signal::Signal;
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::Duration,
};

#[test]
fn run_answers_console_and_metrics_then_sigterm_exits_cleanly() {
    let mut d = Daemon::start("");

    let o = d.console(&["cluster", "nodename"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "testnode\n");

    let o = d.console(&["cluster", "nodeaddr"]);
    assert_eq!(stdout(&o), "192.0.2.10:4802\n");

    let o = d.console(&["CLUSTER", "Info"]);
    assert!(o.status.success());
    let info = stdout(&o);
    assert!(
        info.starts_with(
            "Daemon: corosync [not connected]\n\
             Control Group: ec_console\n\
             Cluster Group: ec_cluster (no membership: corosync not connected)\n\
             Logger Group: none\n\
             Node: testnode 192.0.2.10:4802\n"
        ),
        "{info}"
    );
    assert!(info.contains("XDP: not attached"), "{info}");

    let m = d.scrape("/metrics");
    assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
    assert!(
        m.contains("Content-Type: application/openmetrics-text"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "duraplane_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{m}"
    );
    for name in [
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_start_time_seconds ",
        "process_threads ",
    ] {
        assert!(m.contains(name), "missing {name}: {m}");
    }
    assert!(d.scrape("/").starts_with("HTTP/1.1 404"));

    assert!(d.socket.exists());
    d.signal(Signal::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st}: {}", d.log_text());
    assert!(!d.socket.exists(), "control socket left behind");
    let log = d.log_text();
    assert!(log.contains("shutting down"), "{log}");
}

#[test]
fn sigint_also_shuts_down() {
    let mut d = Daemon::start("");
    d.signal(Signal::SIGINT);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
    assert!(!d.socket.exists());
}

#[test]
fn sighup_with_broken_config_keeps_running_and_logs_errors() {
    let mut d = Daemon::start("");
    let good = fs::read_to_string(&d.config).unwrap();
    fs::write(
        &d.config,
        format!("{good}\ncluster {{ view_mature_tme = 5 }}\n"),
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    let log = d.wait_log("configuration not reloaded", Duration::from_secs(10));
    // The diagnostic names the file and position.
    let conf = d.config.display().to_string();
    assert!(log.contains(&format!("{conf}:")), "{log}");
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "daemon died on SIGHUP"
    );
    assert_eq!(stdout(&d.console(&["cluster", "nodename"])), "testnode\n");

    // The console command does the same and says so with an error exit.
    let o = d.console(&["config", "reload"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("Configuration not reloaded"),
        "{}",
        stderr(&o)
    );

    // A good file reloads.
    fs::write(&d.config, &good).unwrap();
    let o = d.console(&["config", "reload"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("Configuration reloaded from"));
    let m = d.scrape("/metrics");
    assert!(
        m.contains("duraplane_config_reloads_total{result=\"error\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("duraplane_config_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );

    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn json_log_format() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::spawn_in(
        tmp.path(),
        &tmp.path().join("c.sock"),
        "",
        &["--log-format", "json"],
    );
    d.wait_ready();
    let log = d.log_text();
    let first = log.lines().next().unwrap();
    let v: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(v["message"], "starting", "{first}");
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn check_config_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.conf");
    fs::write(&good, config_text(&tmp.path().join("c.sock"), 9480, "")).unwrap();
    let o = Command::new(BIN)
        .args(["check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("testnode"), "{}", stdout(&o));

    let bad = tmp.path().join("bad.conf");
    fs::write(&bad, "cluster {\n  view_mature_tme = 5\n}\n").unwrap();
    let o = Command::new(BIN)
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.starts_with(&format!("{}:2:", bad.display())), "{err}");

    let o = Command::new(BIN)
        .args(["check-config"])
        .arg(tmp.path().join("missing.conf"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn run_with_invalid_config_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.conf");
    fs::write(&bad, "cluster {\n  view_mature_tme = 5\n}\n").unwrap();
    let o = Command::new(BIN)
        .args(["run", "--foreground", "-c"])
        .arg(&bad)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with(&format!("{}:2:", bad.display())));
}

#[test]
fn run_without_foreground_detaches_once_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("bg.sock");
    let port = free_port();
    let conf = tmp.path().join("bg.conf");
    fs::write(&conf, config_text(&socket, port, "")).unwrap();
    let o = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    // The detached daemon's pid, found by its unique config path, so we kill only it.
    let pid = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&*conf.to_string_lossy()))
                .unwrap_or(false)
        });
    struct Kill(Option<i32>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(p) = self.0 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), Signal::SIGKILL);
            }
        }
    }
    let guard = Kill(pid);
    assert!(o.status.success(), "parent exit {:?}", o.status);
    assert!(guard.0.is_some(), "no detached daemon found");
    // Ready means answering, with no waiting on our side.
    assert_eq!(
        stdout(&console(&socket, &["cluster", "nodename"])),
        "testnode\n"
    );
}

fn proc_status(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap()
        .trim()
}

#[test]
fn security_drops_to_nobody_keeping_listed_and_required_capabilities() {
    let tmp = tempfile::tempdir().unwrap();
    // So the unprivileged daemon can reach (and at exit remove) its socket.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let socket = tmp.path().join("run/control.sock");
    let mut d = Daemon::spawn_in(
        tmp.path(),
        &socket,
        r#"Security {
  user = "nobody"
  group = "nogroup"
  Capabilities = "cap_net_bind_service+ep"
}"#,
        &[],
    );
    d.wait_ready();
    let st = proc_status(d.pid());
    assert_eq!(status_field(&st, "Uid:"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(&st, "Gid:"), "65534\t65534\t65534\t65534");
    // net_bind_service(10) + net_admin(12) + net_raw(13) + perfmon(38) + bpf(39)
    let expected: u64 = (1 << 10) | (1 << 12) | (1 << 13) | (1 << 38) | (1 << 39);
    let eff = u64::from_str_radix(status_field(&st, "CapEff:"), 16).unwrap();
    let prm = u64::from_str_radix(status_field(&st, "CapPrm:"), 16).unwrap();
    let bnd = u64::from_str_radix(status_field(&st, "CapBnd:"), 16).unwrap();
    assert_eq!(eff, expected, "CapEff {eff:#x}");
    assert_eq!(prm, expected, "CapPrm {prm:#x}");
    assert_eq!(bnd, expected, "CapBnd {bnd:#x}");
    let log = d.log_text();
    assert!(log.contains("lacks CAP_BPF"), "{log}");
    assert!(log.contains("privileges dropped"), "{log}");

    // Still serving, as nobody, on a socket group members may use.
    assert_eq!(stdout(&d.console(&["cluster", "nodename"])), "testnode\n");
    let meta = fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    d.signal(Signal::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        d.log_text()
    );
    assert!(!socket.exists());
}

#[test]
fn unknown_security_user_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::spawn_in(
        tmp.path(),
        &tmp.path().join("c.sock"),
        "Security {\n  user = \"no-such-user-dp\"\n}\n",
        &[],
    );
    let st = d.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(1));
    assert!(
        d.log_text()
            .contains("Security: user 'no-such-user-dp' does not exist"),
        "{}",
        d.log_text()
    );
}

#[test]
fn root_without_security_stays_root_and_says_so() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let mut d = Daemon::start("");
    assert!(d.log_text().contains("no Security stanza: staying root"));
    assert_eq!(status_field(&proc_status(d.pid()), "Uid:"), "0\t0\t0\t0");
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn momentum_default_capability_string_keeps_what_the_process_has() {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut d = Daemon::spawn_in(
        tmp.path(),
        &tmp.path().join("run/control.sock"),
        r#"Security {
  user = "nobody"
  group = "nogroup"
  Capabilities = "cap_net_admin+ep cap_net_bind_service+ep cap_net_raw+ep cap_sys_resource+ep"
}"#,
        &[],
    );
    d.wait_ready();
    // What we (and so the daemon) were started with bounds what it can keep.
    let own = u64::from_str_radix(
        status_field(&proc_status(std::process::id() as i32), "CapPrm:"),
        16,
    )
    .unwrap();
    let planned: u64 = (1 << 10) | (1 << 12) | (1 << 13) | (1 << 24) | (1 << 38) | (1 << 39);
    let eff = u64::from_str_radix(status_field(&proc_status(d.pid()), "CapEff:"), 16).unwrap();
    assert_eq!(eff, planned & own, "CapEff {eff:#x}");
    let log = d.log_text();
    assert!(
        log.contains("keeping cap_bpf,cap_perfmon in addition"),
        "{log}"
    );
    if own & (1 << 24) == 0 {
        assert!(log.contains("started without cap_sys_resource"), "{log}");
    }
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
}
