//! Three `duraplane run` daemons on a real corosync cluster, XDP on each node's bridge
//! port, real TCP clients from a client namespace on the same bridge: per-netblock counts
//! are cluster-wide on every node, a cluster-wide limit is enforced at every NIC, a hung
//! daemon's slot is excluded and readmitted, a crashed daemon's slot is dropped, and a
//! restarted daemon resyncs (with the counts its new program has: none of the old flows).

mod cluster_support;

use std::net::TcpStream;

use cluster_support::{Cluster, wait_until};
use nix::sys::signal::Signal;

const NET: &str = "198.51.100.0/24";
/// The cluster-wide limit of NET.
const K: u64 = 4;

fn wait(what: &str, f: impl FnMut() -> bool) {
    wait_until(what, 30, f)
}

/// Column `col` of NET's row of `inbound show` on node `i`.
fn column(c: &Cluster, i: usize, col: usize) -> Option<u64> {
    c.ask(i, "inbound show")
        .lines()
        .find(|l| l.split_whitespace().next() == Some(NET))
        .and_then(|l| l.split_whitespace().nth(col))
        .and_then(|v| v.parse().ok())
}

/// The `current` column.
fn current(c: &Cluster, i: usize) -> Option<u64> {
    column(c, i, 1)
}

fn dropped(c: &Cluster, i: usize) -> Option<u64> {
    column(c, i, 3)
}

fn all_show(c: &Cluster, nodes: &[usize], want: u64, what: &str) {
    for &i in nodes {
        wait(&format!("{what}: node{} shows {want}", i + 1), || {
            current(c, i) == Some(want)
        });
    }
}

/// Connects from `src` (in the client namespace) to node `i`'s (0-based) port 25.
fn connect(c: &Cluster, src: &str, i: usize) -> std::io::Result<TcpStream> {
    c.connect_from("client", src, i, 25)
}

#[test]
fn counts_are_cluster_wide_enforced_everywhere_and_follow_the_view() {
    let mut c = Cluster::builder(3)
        .key("replication-test-key-0123456789abcdef")
        .cluster(|_| "Replicate \"inbound_cidr\" {}\n".to_owned())
        .duraplane(|_| {
            format!(
                r#"interfaces = ( "eth0" )
ports = ( 25 )
poll_interval = "20ms"
Netblock "{NET}" {{
  max_connections = {K}
  action = "drop"
}}
"#
            )
        })
        .up();
    c.add_client(
        "client",
        &["198.51.100.10/24", "198.51.100.11/24", "198.51.100.12/24"],
    );
    c.route_on_nodes(NET);
    let listeners = c.listen_on_nodes(25);
    c.start_daemons();
    c.wait_linked(2);
    let list = c.ask(0, "cluster shared list");
    assert_eq!(
        list,
        "Currently managed objects:\n                  inbound_cidr [lazy, cidrtree w/ snapshots]\n",
        "{list}"
    );

    // Two connections to node1 (from .10 and .11), one to node2 (from .10): every node
    // shows the cluster-wide 3.
    let mut held = vec![
        connect(&c, "198.51.100.10", 0).expect("conn"),
        connect(&c, "198.51.100.11", 0).expect("conn"),
        connect(&c, "198.51.100.10", 1).expect("conn"),
    ];
    all_show(&c, &[0, 1, 2], 3, "cluster-wide count");
    let global = c.ask(2, "cluster shared show inbound_cidr");
    assert!(
        global.starts_with("lazy, snapped cidrtree 'inbound_cidr', view 'global'\n"),
        "{global}"
    );
    assert!(
        global.contains(&format!("{:>7}{:25}198.51.100.10/32\n", 2, "")),
        "{global}"
    );
    assert!(
        global.contains(&format!("{:>7}{:25}198.51.100.11/32\n", 1, "")),
        "{global}"
    );
    let from1 = c.ask(2, "cluster shared show inbound_cidr from node1");
    let first = from1.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("lazy, snapped cidrtree 'inbound_cidr', view '#1-")
            && first.ends_with("#node1'"),
        "{from1}"
    );
    assert!(
        from1.contains(&format!("{:>7}{:25}198.51.100.10/32\n", 1, "")),
        "{from1}"
    );
    assert!(
        c.console(2, "cluster shared show inbound_cidr from nobody")
            .is_err()
    );

    // K spread over two nodes; the K+1th to the third node is dropped at its NIC.
    held.push(connect(&c, "198.51.100.12", 1).expect("4th conn (at the limit)"));
    all_show(&c, &[0, 1, 2], K, "at the limit");
    let before = dropped(&c, 2).unwrap_or(0);
    assert!(
        connect(&c, "198.51.100.12", 2).is_err(),
        "the K+1th connection to node3 must fail"
    );
    assert!(
        dropped(&c, 2).unwrap_or(0) > before,
        "dropped at node3's NIC"
    );
    assert_eq!(current(&c, 2), Some(K));

    // SIGSTOP node2's daemon: its 2 connections are excluded while it is hung, then
    // readmitted (its slot was kept, not dropped).
    c.signal(1, Signal::SIGSTOP);
    all_show(&c, &[0, 2], 2, "node2 hung");
    c.signal(1, Signal::SIGCONT);
    all_show(&c, &[0, 2], K, "node2 readmitted");

    // kill -9 of node1's daemon: its slot is dropped everywhere at the view change.
    c.kill(0);
    all_show(&c, &[1, 2], 2, "node1 crashed");
    assert!(
        c.ask(2, "cluster info").contains("1 slots dropped"),
        "{}",
        c.ask(2, "cluster info")
    );
    let global = c.ask(2, "cluster shared show inbound_cidr");
    assert!(!global.contains("198.51.100.11/32"), "{global}");

    // node1 restarts: its XDP maps were not pinned, so its old flows died with it and its
    // new program counts 0 of them; it resyncs the others' slots (2) and sends its own.
    c.restart(0);
    wait("node1 resynced", || current(&c, 0) == Some(2));
    c.wait_linked(2);
    let from1 = c.ask(1, "cluster shared show inbound_cidr from node1");
    assert_eq!(
        from1.lines().count(),
        1,
        "node1's new slot is empty: {from1}"
    );
    // A new connection to node1 is counted cluster-wide again.
    held.push(connect(&c, "198.51.100.11", 0).expect("conn after restart"));
    all_show(&c, &[0, 1, 2], 3, "after restart");

    // Partition: node2's link to the bridge goes down (a whole-node fault, detected by
    // corosync's token timeout). Each side drops the other's slot: node1 and node3 count
    // only node1's connection; node2, alone and without quorum, only its own two.
    c.set_port(1, false);
    all_show(&c, &[0, 2], 1, "node2 partitioned away");
    all_show(&c, &[1], 2, "node2 alone");
    wait("node2 without quorum", || {
        c.ask(1, "cluster info").contains("Quorum: NOT quorate")
    });
    // Heal: the views merge and every slot is back everywhere.
    c.set_port(1, true);
    all_show(&c, &[0, 1, 2], 3, "partition healed");
    drop(held);
    drop(listeners);
}
