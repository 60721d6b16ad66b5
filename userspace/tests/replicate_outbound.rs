//! `outbound_cidr` on a real three-node cluster (corosync, `duraplane run`, TC egress on
//! each node's eth0): connections from node1 and node2 to a server namespace are seen as
//! one cluster-wide total on all three nodes (console tree in Momentum's format, local
//! API "outbound connections to this /24"), closes bring it down everywhere, and a clean
//! stop detaches the classifier. node3 has no interfaces: it counts nothing and still
//! answers with the cluster's figures.

mod cluster_support;

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use cluster_support::{Cluster, wait_until};
use duraplane::{inbound::CidrTree, testbed::Testbed};
use nix::sys::signal::Signal;

fn wait(what: &str, f: impl FnMut() -> bool) {
    wait_until(what, 30, f)
}

/// Opens `n` connections from node `host`'s namespace to `dst`.
fn connect(tb: &Testbed, host: &str, dst: &str, n: usize) -> Vec<TcpStream> {
    let dst: SocketAddr = dst.parse().expect("addr");
    tb.run_in(host, move || {
        (0..n)
            .map(|_| TcpStream::connect_timeout(&dst, Duration::from_secs(3)))
            .collect::<std::io::Result<Vec<_>>>()
    })
    .expect("netns")
    .expect("connect")
}

/// The tree lines of the server's 198.0.0.0/8 branch.
fn branch(tree: &str) -> Vec<String> {
    tree.lines()
        .filter(|l| {
            l.split_whitespace()
                .last()
                .is_some_and(|c| c.starts_with("198."))
        })
        .map(str::to_owned)
        .collect()
}

fn tree(entries: &[(&str, u64)]) -> CidrTree {
    let mut t = CidrTree::new();
    for (a, n) in entries {
        t.set(a.parse::<IpAddr>().unwrap(), *n);
    }
    t
}

#[test]
fn outbound_connections_are_one_cluster_wide_total() {
    // node3 has no interfaces: it counts nothing but shows the cluster's tree.
    let mut c = Cluster::builder(3)
        .key("outbound-test-key-0123456789abcdef")
        .cluster(|_| "Replicate \"outbound_cidr\" {}\n".to_owned())
        .duraplane(|i| {
            let interfaces = if i == 2 {
                ""
            } else {
                "interfaces = ( \"eth0\" )\n"
            };
            format!("{interfaces}ports = ( 25 2525 )\npoll_interval = \"20ms\"\n")
        })
        .up();
    c.add_client("server", &["198.51.100.20/24", "198.51.100.21/24"]);
    // The kernel completes handshakes into the backlog without accept().
    let listeners: Vec<TcpListener> =
        c.tb.run_in("server", || {
            ["198.51.100.20:2525", "198.51.100.21:2525"]
                .iter()
                .map(TcpListener::bind)
                .collect::<std::io::Result<Vec<_>>>()
        })
        .expect("netns")
        .expect("listen");
    c.route_on_nodes("198.51.100.0/24");
    c.start_daemons();
    c.wait_linked(2);
    let list = c.ask(2, "cluster shared list");
    assert!(
        list.contains("                 outbound_cidr [lazy, cidrtree w/ snapshots]"),
        "{list}"
    );
    let info = c.ask(0, "cluster info");
    assert!(info.contains("TC egress (outbound_cidr): eth0 ("), "{info}");
    assert!(
        c.nodes[2]
            .log()
            .contains("needs duraplane.interfaces to count on"),
        "{}",
        c.nodes[2].log()
    );

    // node1: 2 to .20; node2: 3 to .20 and 1 to .21; node3: none.
    let h1 = c.host(0);
    let h2 = c.host(1);
    let held1 = connect(&c.tb, &h1, "198.51.100.20:2525", 2);
    let mut held2 = connect(&c.tb, &h2, "198.51.100.20:2525", 3);
    let held2b = connect(&c.tb, &h2, "198.51.100.21:2525", 1);
    for i in 0..3 {
        wait(&format!("cluster-wide total on node{}", i + 1), || {
            c.api(i)
                .outbound_cidr_count("/24", Some("198.51.100.77"))
                .unwrap()
                == 6
        });
    }
    let mut c3 = c.api(2);
    assert_eq!(
        c3.outbound_cidr_count("/32", Some("198.51.100.20"))
            .unwrap(),
        5
    );
    assert_eq!(c3.outbound_cidr_count("198.51.100.21", None).unwrap(), 1);
    assert_eq!(c3.outbound_cidr_count("203.0.113.0/24", None).unwrap(), 0);
    // Momentum's tree format on the node that opened nothing. Only connections to the
    // counted ports count: the nodes' own peer links (192.0.2.1x:4802) are not in it.
    let show = c.ask(2, "cluster shared show outbound_cidr");
    assert!(
        show.starts_with("lazy, snapped cidrtree 'outbound_cidr', view 'global'\n"),
        "{show}"
    );
    let body = |t: &str| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        body(&show),
        body(&tree(&[("198.51.100.20", 5), ("198.51.100.21", 1)]).render("x", "y")),
        "{show}"
    );
    assert!(!show.contains("192.0.2."), "peer links counted: {show}");
    let from2 = c.ask(2, "cluster shared show outbound_cidr from node2");
    let head = from2.lines().next().unwrap_or_default();
    assert!(
        head.starts_with("lazy, snapped cidrtree 'outbound_cidr', view '#")
            && head.ends_with("#node2'"),
        "{from2}"
    );
    assert_eq!(
        branch(&from2),
        branch(&tree(&[("198.51.100.20", 3), ("198.51.100.21", 1)]).render("x", "y")),
        "node2's slot only: {from2}"
    );

    // node2 closes its three to .20 (FINs leave through tc_egress): 3 left everywhere.
    held2.clear();
    for i in 0..3 {
        wait(&format!("closes seen on node{}", i + 1), || {
            c.api(i)
                .outbound_cidr_count("198.51.100.0/24", None)
                .unwrap()
                == 3
        });
    }
    let show = c.ask(0, "cluster shared show outbound_cidr");
    assert_eq!(
        branch(&show),
        branch(&tree(&[("198.51.100.20", 2), ("198.51.100.21", 1)]).render("x", "y")),
        "{show}"
    );

    // A clean stop detaches the classifier from node1's eth0; node1's slot goes away.
    c.signal(0, Signal::SIGTERM);
    wait("node1 detached TC egress", || {
        c.nodes[0].log().contains("TC egress detached")
    });
    let shown =
        c.tb.exec(&h1, &["bpftool", "net", "show", "dev", "eth0"])
            .expect("bpftool");
    assert!(!shown.contains("tc_egress"), "{shown}");
    wait("node1's slot dropped on node3", || {
        c.api(2)
            .outbound_cidr_count("198.51.100.0/24", None)
            .unwrap()
            == 1
    });
    drop(held1);
    drop(held2b);
    drop(listeners);
}
