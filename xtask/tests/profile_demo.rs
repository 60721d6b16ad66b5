//! `cargo xtask profile …` against a real one-node demo (corosync + duraplane with XDP in
//! network namespaces). Needs root, like the demo. Everything started here is stopped by pid
//! (the demo removes its namespaces on SIGTERM).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A process we started; SIGTERM then (after 20 s) SIGKILL on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `dp-demo --nodes 1` and returns it with node1's control socket.
fn start_demo(seconds: u64) -> (Guard, PathBuf) {
    let bin = root().join("target/release/dp-demo");
    if !bin.exists() || !root().join("target/release/duraplane").exists() {
        let st = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "-p",
                "duraplane-tools",
                "-p",
                "duraplane",
                "--bins",
            ])
            .current_dir(root())
            .status()
            .unwrap();
        assert!(st.success(), "building the demo failed");
    }
    let mut child = Command::new(bin)
        .args(["--nodes", "1", "--duration", &seconds.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let guard = Guard(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the demo did not print its console socket in time");
        if let Some(rest) = line.split("console --socket ").nth(1) {
            let sock = PathBuf::from(rest.split_whitespace().next().unwrap());
            // Keep draining stdout so the demo never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (guard, sock);
        }
    }
}

#[test]
fn usage_errors_are_clear() {
    let o = xtask(&["profile", "bpf", "--help"]);
    assert!(o.status.success());
    assert!(text(&o).contains("CAP_SYS_ADMIN"), "{}", text(&o));
    let o = xtask(&["profile", "perf", "--help"]);
    assert!(text(&o).contains("perf_event_paranoid"), "{}", text(&o));
    let o = xtask(&["profile", "tune"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--socket PATH or --demo"), "{}", text(&o));
    let o = xtask(&["profile", "perf", "--pid", "999999999", "--seconds", "1"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no process 999999999"), "{}", text(&o));
    let o = xtask(&["profile", "bpf", "--socket", "/nonexistent/x.sock"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("/nonexistent/x.sock"), "{}", text(&o));
}

/// One demo node, every profile command against it (about 30 s, most of it corosync and the
/// daemon starting).
#[test]
fn profile_commands_against_a_demo_node() {
    let (demo, sock) = start_demo(120);
    let s = sock.to_str().unwrap();

    // bpf: the node's program with a real verifier count, its maps and loss counters.
    let o = xtask(&["profile", "bpf", "--socket", s, "--seconds", "1"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let row = out
        .lines()
        .find(|l| l.contains("xdp_ingress") && l.contains("node1 (pid"))
        .unwrap_or_else(|| panic!("no xdp_ingress row for node1:\n{out}"));
    // ID PROGRAM HELD-BY(3 words) RUNS RUNS/S AVG VERIFIED XLATED JITED
    let cols: Vec<&str> = row.split_whitespace().collect();
    let verified: u64 = cols[cols.len() - 3].parse().unwrap();
    let xlated: u64 = cols[cols.len() - 2].parse().unwrap();
    assert!(verified > 0 && xlated > 0, "{row}");
    assert!(out.contains("FLOWS"), "{out}");
    // The flow and source tables are set-associative arrays (the SYN fast path).
    assert!(
        out.lines()
            .any(|l| l.contains("SOURCES") && l.contains("array")),
        "{out}"
    );
    assert!(out.contains("flow_map_full: 0"), "{out}");
    // Exactly one program row: --socket filters to this node's daemon.
    assert_eq!(
        out.lines().filter(|l| l.contains(" xdp_ingress ")).count(),
        1,
        "{out}"
    );

    // tune: map verdicts with their figures, and the demo's corosync token.
    let o = xtask(&["profile", "tune", "--socket", s, "--seconds", "1"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("Tuning node1"), "{out}");
    assert!(out.contains("SOURCES: no change"), "{out}");
    // The token the demo's corosync runs with (examples/cluster-3node/corosync.conf).
    let token = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/cluster-3node/corosync.conf"
    ))
    .unwrap()
    .lines()
    .find_map(|l| l.trim().strip_prefix("token:").map(|v| v.trim().to_owned()))
    .unwrap();
    assert!(out.contains(&format!("token {token} ms")), "{out}");

    // Ctrl-C while the sysctl is switched on: restored, reported as interrupted.
    let before = std::fs::read_to_string(SYSCTL).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["profile", "bpf", "--socket", s, "--seconds", "30"])
        .args(["--stats-method", "sysctl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::fs::read_to_string(SYSCTL).unwrap().trim() != "1" {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "sysctl never switched on"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("interrupted"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(SYSCTL).unwrap(), before);

    // perf: a flame graph and the daemon's threads.
    let svg = std::env::temp_dir().join(format!("xtask-profile-{}.svg", std::process::id()));
    let o = xtask(&[
        "profile",
        "perf",
        "--socket",
        s,
        "--seconds",
        "2",
        "--out",
        svg.to_str().unwrap(),
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("inbound-poll"), "{out}");
    let body = std::fs::read_to_string(&svg).unwrap();
    assert!(
        body.contains("<svg") && body.contains("duraplane pid"),
        "not a flame graph"
    );
    std::fs::remove_file(&svg).unwrap();

    drop(demo);
}
