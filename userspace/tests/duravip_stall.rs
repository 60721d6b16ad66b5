//! Stalls that must not look like failures: a node crash stops corosync's token, and with
//! it every member's heartbeats, until the ring re-forms. Survivors must keep judging each
//! other live through that stall (corosync alone decides who left), or they release and
//! re-take VIPs for nothing. Also: corosync really runs with the timing the project
//! recommends (a nodelist makes it add `token_coefficient` per node to the token).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use duraplane::testbed::{
    Testbed,
    corosync::{CorosyncCluster, CorosyncTiming},
    daemons::DaemonNode,
};
use nix::sys::signal::Signal;

const BIN: &str = env!("CARGO_BIN_EXE_duraplane");

fn config(i: usize, socket: &Path) -> String {
    format!(
        r#"ECCluster_Listener {{
  Listen "192.0.2.1{i}:4802" {{}}
}}
cluster {{
  nodename = "node{i}"
  nodeaddr = "192.0.2.1{i}"
  heartbeats_per_sec = 10
  heartbeat_start_delay = 0
}}
duraplane {{
  control_socket = "{}"
  metrics = "off"
}}
"#,
        socket.display()
    )
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ask(n: &DaemonNode, cmd: &str) -> String {
    n.console(Path::new(BIN), cmd)
        .unwrap_or_else(|e| panic!("{cmd} on {}: {e}", n.host))
}

fn cmap(tb: &Testbed, host: &str, key: &str) -> Option<u32> {
    let out = tb.exec(host, &["corosync-cmapctl", "-g", key]).ok()?;
    out.rsplit('=').next()?.trim().parse().ok()
}

#[test]
fn corosync_runs_the_recommended_timing() {
    let mut tb = Testbed::new().expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    let t = CorosyncTiming::default();
    let cluster =
        CorosyncCluster::start(&mut tb, 3, dir.path().to_path_buf(), t).expect("corosync");
    for i in 0..3 {
        let h = cluster.host(i);
        assert_eq!(
            cmap(&tb, h, "runtime.config.totem.token"),
            Some(t.token_ms),
            "{h}: runtime token (token_coefficient must not inflate it)"
        );
        assert_eq!(
            cmap(&tb, h, "runtime.config.totem.consensus"),
            Some(t.consensus_ms)
        );
        if let Some((interval, timeout)) = t.knet_ping {
            assert_eq!(
                cmap(
                    &tb,
                    h,
                    "runtime.config.totem.interface.0.knet_ping_interval"
                ),
                Some(interval)
            );
            assert_eq!(
                cmap(&tb, h, "runtime.config.totem.interface.0.knet_ping_timeout"),
                Some(timeout)
            );
        }
    }
}

#[test]
fn survivors_stay_live_while_the_ring_re_forms() {
    let mut tb = Testbed::new().expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    // A slow token on purpose: the ring stays stalled for ~2 s after the crash, several
    // times the 700 ms hung threshold, so judging silence by the local clock would mark
    // every member hung long before corosync's new view.
    let timing = CorosyncTiming {
        token_ms: 1000,
        consensus_ms: 1200,
        ..CorosyncTiming::default()
    };
    let mut cluster =
        CorosyncCluster::start(&mut tb, 3, dir.path().to_path_buf(), timing).expect("corosync");
    let nodes: Vec<DaemonNode> = (1..=3)
        .map(|i| {
            let socket = dir.path().join(format!("node{i}.sock"));
            DaemonNode::start(
                &tb,
                Path::new(BIN),
                cluster.host(i - 1),
                dir.path(),
                socket.clone(),
                &config(i, &socket),
            )
            .expect("daemon")
        })
        .collect();
    wait_until("3 live members", || {
        ask(&nodes[0], "cluster info").contains("View: 3 members (3 live)")
    });

    // Node3 crashes: link down first (no FIN, RST or ICMP reaches the others), then its
    // daemon and corosync die.
    tb.exec(cluster.host(2), &["ip", "link", "set", "eth0", "down"])
        .expect("link down");
    nodes[2].signal(Signal::SIGKILL).expect("kill daemon");
    cluster
        .kill_node(2, Signal::SIGKILL)
        .expect("kill corosync");

    // Until corosync's new view, node1 keeps all three live (node3 too: that it is gone
    // is corosync's to say); then the view has the two survivors, both live.
    let mut polls = 0;
    loop {
        let info = ask(&nodes[0], "cluster info");
        if info.contains("View: 2 members") {
            assert!(info.contains("View: 2 members (2 live)"), "{info}");
            break;
        }
        assert!(
            info.contains("View: 3 members (3 live)"),
            "a member was judged hung while the ring re-formed: {info}"
        );
        polls += 1;
        assert!(polls < 600, "no new view after the crash: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        polls > 10,
        "the ring stall was not observed ({polls} polls)"
    );
    let m = ask(&nodes[1], "cluster membership");
    assert!(!m.contains("hung"), "{m}");
}
