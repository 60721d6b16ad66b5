//! Three `duraplane run` daemons on a real corosync cluster: membership and leader in
//! Momentum's formats, `broadcast` gathering every node's answer, a crashed daemon leaving
//! the view at once, and a SIGSTOPped daemon excluded by heartbeats and readmitted.

mod cluster_support;

use cluster_support::{Cluster, wait_until};
use nix::sys::signal::Signal;

fn wait(what: &str, f: impl FnMut() -> bool) {
    wait_until(what, 20, f)
}

#[test]
fn membership_leader_broadcast_crash_and_hung_daemon() {
    let mut c = Cluster::builder(3).start();
    // Every node lists all three, with names and addresses, in Momentum's format.
    for i in 0..3 {
        wait("3 announced members", || {
            let m = c.ask(i, "cluster membership");
            (1..=3).all(|i| m.contains(&format!("Node Name: node{i}\n")))
        });
    }
    let m = c.ask(1, "cluster membership");
    assert!(
        m.contains("Address: 192.0.2.13:4802\nGroups: ec_cluster, ec_console\n"),
        "{m}"
    );
    let info = c.ask(2, "cluster info");
    assert!(
        info.contains("Cluster Group: ec_cluster (node1 is leader)"),
        "{info}"
    );
    assert!(info.contains("Quorum: quorate"), "{info}");
    assert!(info.contains("View: 3 members (3 live)"), "{info}");

    // broadcast runs the command everywhere and labels each answer.
    let b = c.ask(0, "broadcast cluster nodename");
    assert_eq!(b, "node1:\nnode1\nnode2:\nnode2\nnode3:\nnode3\n", "{b}");
    let err = c.console(0, "broadcast broadcast cluster info");
    assert!(err.is_err(), "nested broadcast refused");

    // SIGSTOP node2's daemon: corosync keeps it in the view, heartbeats exclude it.
    c.signal(1, Signal::SIGSTOP);
    wait("node2 marked hung", || {
        c.ask(0, "cluster info")
            .contains("View: 3 members (2 live)")
    });
    assert!(
        c.ask(2, "cluster membership")
            .contains("(hung: no heartbeat)")
    );
    c.signal(1, Signal::SIGCONT);
    wait("node2 readmitted", || {
        c.ask(0, "cluster info")
            .contains("View: 3 members (3 live)")
    });

    // kill -9 of node1's daemon: it leaves at once, node2 becomes leader.
    c.kill(0);
    wait("node1 gone", || {
        let info = c.ask(2, "cluster info");
        info.contains("View: 2 members") && info.contains("(node2 is leader)")
    });
    assert!(!c.ask(1, "cluster membership").contains("node1"));

    // It restarts and rejoins.
    c.restart(0);
    wait("node1 back", || {
        c.ask(2, "cluster info").contains("(node1 is leader)")
    });
}
