//! Three `duraplane run` daemons on a real corosync cluster: membership and leader in
//! Momentum's formats, `broadcast` gathering every node's answer, a crashed daemon leaving
//! the view at once, and a SIGSTOPped daemon excluded by heartbeats and readmitted.

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
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ask(n: &DaemonNode, cmd: &str) -> String {
    n.console(Path::new(BIN), cmd)
        .unwrap_or_else(|e| panic!("{cmd} on {}: {e}", n.host))
}

#[test]
fn membership_leader_broadcast_crash_and_hung_daemon() {
    let mut tb = Testbed::new().expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = CorosyncCluster::start(
        &mut tb,
        3,
        dir.path().to_path_buf(),
        CorosyncTiming::default(),
    )
    .expect("corosync");
    let mut nodes: Vec<DaemonNode> = (1..=3)
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

    // Every node lists all three, with names and addresses, in Momentum's format.
    for n in &nodes {
        wait_until("3 announced members", || {
            let m = ask(n, "cluster membership");
            (1..=3).all(|i| m.contains(&format!("Node Name: node{i}\n")))
        });
    }
    let m = ask(&nodes[1], "cluster membership");
    assert!(
        m.contains("Address: 192.0.2.13:4802\nGroups: ec_cluster, ec_console\n"),
        "{m}"
    );
    let info = ask(&nodes[2], "cluster info");
    assert!(
        info.contains("Cluster Group: ec_cluster (node1 is leader)"),
        "{info}"
    );
    assert!(info.contains("Quorum: quorate"), "{info}");
    assert!(info.contains("View: 3 members (3 live)"), "{info}");

    // broadcast runs the command everywhere and labels each answer.
    let b = ask(&nodes[0], "broadcast cluster nodename");
    assert_eq!(b, "node1:\nnode1\nnode2:\nnode2\nnode3:\nnode3\n", "{b}");
    let err = nodes[0].console(Path::new(BIN), "broadcast broadcast cluster info");
    assert!(err.is_err(), "nested broadcast refused");

    // SIGSTOP node2's daemon: corosync keeps it in the view, heartbeats exclude it.
    nodes[1].signal(Signal::SIGSTOP).expect("stop");
    wait_until("node2 marked hung", || {
        ask(&nodes[0], "cluster info").contains("View: 3 members (2 live)")
    });
    assert!(ask(&nodes[2], "cluster membership").contains("(hung: no heartbeat)"));
    nodes[1].signal(Signal::SIGCONT).expect("cont");
    wait_until("node2 readmitted", || {
        ask(&nodes[0], "cluster info").contains("View: 3 members (3 live)")
    });

    // kill -9 of node1's daemon: it leaves at once, node2 becomes leader.
    nodes[0].kill();
    wait_until("node1 gone", || {
        let info = ask(&nodes[2], "cluster info");
        info.contains("View: 2 members") && info.contains("(node2 is leader)")
    });
    assert!(!ask(&nodes[1], "cluster membership").contains("node1"));

    // It restarts and rejoins.
    nodes[0].restart(&tb, Path::new(BIN)).expect("restart");
    wait_until("node1 back", || {
        ask(&nodes[2], "cluster info").contains("(node1 is leader)")
    });
}
