//! `outbound_cidr` on a real three-node cluster (corosync, `duraplane run`, TC egress on
//! each node's eth0): connections from node1 and node2 to a server namespace are seen as
//! one cluster-wide total on all three nodes (console tree in Momentum's format, local
//! API "outbound connections to this /24"), closes bring it down everywhere, and a clean
//! stop detaches the classifier. node3 has no interfaces: it counts nothing and still
//! answers with the cluster's figures.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use duraplane::{
    inbound::CidrTree,
    localapi::Client,
    testbed::{
        Testbed,
        corosync::{CorosyncCluster, CorosyncTiming},
        daemons::DaemonNode,
    },
};
use nix::sys::signal::Signal;

const BIN: &str = env!("CARGO_BIN_EXE_duraplane");

/// node3 has no interfaces: it counts nothing but shows the cluster's tree.
fn config(i: usize, socket: &Path, key: &Path) -> String {
    let interfaces = if i == 3 {
        ""
    } else {
        "interfaces = ( \"eth0\" )"
    };
    format!(
        r#"ECCluster_Listener {{
  Listen "192.0.2.1{i}:4802" {{}}
}}
cluster {{
  nodename = "node{i}"
  nodeaddr = "192.0.2.1{i}"
  heartbeats_per_sec = 10
  heartbeat_start_delay = 0
  Replicate "outbound_cidr" {{}}
}}
duraplane {{
  control_socket = "{}"
  metrics = "off"
  {interfaces}
  ports = ( 25 2525 )
  poll_interval = "20ms"
  cluster_key_file = "{}"
}}
"#,
        socket.display(),
        key.display()
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

fn api_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("node{i}")).join("api.sock")
}

fn api(dir: &Path, i: usize) -> Client {
    Client::connect(&api_path(dir, i)).expect("local API")
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
    let mut tb = Testbed::new().expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cluster = CorosyncCluster::start(&mut tb, 3, d.to_path_buf(), CorosyncTiming::default())
        .expect("corosync");
    tb.add_host("server").expect("server");
    let sif = tb
        .attach("server", &["198.51.100.20/24", "198.51.100.21/24"])
        .expect("server on the bridge");
    tb.add_route("server", "192.0.2.0/24", &sif, None)
        .expect("route");
    // The kernel completes handshakes into the backlog without accept().
    let listeners: Vec<TcpListener> = tb
        .run_in("server", || {
            ["198.51.100.20:2525", "198.51.100.21:2525"]
                .iter()
                .map(TcpListener::bind)
                .collect::<std::io::Result<Vec<_>>>()
        })
        .expect("netns")
        .expect("listen");
    let key = d.join("cluster.key");
    std::fs::write(&key, "outbound-test-key-0123456789abcdef\n").expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod 600");
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let host = cluster.host(i - 1).to_owned();
        tb.add_route(&host, "198.51.100.0/24", "eth0", None)
            .expect("route");
        let socket = d.join(format!("node{i}")).join("control.sock");
        nodes.push(
            DaemonNode::start(
                &tb,
                Path::new(BIN),
                &host,
                d,
                socket.clone(),
                &config(i, &socket, &key),
            )
            .expect("daemon"),
        );
    }
    for n in &nodes {
        wait_until(&format!("{} linked to 2 peers", n.host), || {
            ask(n, "cluster info").matches("(linked, live").count() == 2
        });
    }
    let list = ask(&nodes[2], "cluster shared list");
    assert!(
        list.contains("                 outbound_cidr [lazy, cidrtree w/ snapshots]"),
        "{list}"
    );
    let info = ask(&nodes[0], "cluster info");
    assert!(info.contains("TC egress (outbound_cidr): eth0 ("), "{info}");
    assert!(
        nodes[2]
            .log()
            .contains("needs duraplane.interfaces to count on"),
        "{}",
        nodes[2].log()
    );

    // node1: 2 to .20; node2: 3 to .20 and 1 to .21; node3: none.
    let h1 = cluster.host(0).to_owned();
    let h2 = cluster.host(1).to_owned();
    let held1 = connect(&tb, &h1, "198.51.100.20:2525", 2);
    let mut held2 = connect(&tb, &h2, "198.51.100.20:2525", 3);
    let held2b = connect(&tb, &h2, "198.51.100.21:2525", 1);
    for i in 1..=3 {
        wait_until(&format!("cluster-wide total on node{i}"), || {
            api(d, i)
                .outbound_cidr_count("/24", Some("198.51.100.77"))
                .unwrap()
                == 6
        });
    }
    let mut c3 = api(d, 3);
    assert_eq!(
        c3.outbound_cidr_count("/32", Some("198.51.100.20"))
            .unwrap(),
        5
    );
    assert_eq!(c3.outbound_cidr_count("198.51.100.21", None).unwrap(), 1);
    assert_eq!(c3.outbound_cidr_count("203.0.113.0/24", None).unwrap(), 0);
    // Momentum's tree format on the node that opened nothing. Only connections to the
    // counted ports count: the nodes' own peer links (192.0.2.1x:4802) are not in it.
    let show = ask(&nodes[2], "cluster shared show outbound_cidr");
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
    let from2 = ask(&nodes[2], "cluster shared show outbound_cidr from node2");
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
    for i in 1..=3 {
        wait_until(&format!("closes seen on node{i}"), || {
            api(d, i)
                .outbound_cidr_count("198.51.100.0/24", None)
                .unwrap()
                == 3
        });
    }
    let show = ask(&nodes[0], "cluster shared show outbound_cidr");
    assert_eq!(
        branch(&show),
        branch(&tree(&[("198.51.100.20", 2), ("198.51.100.21", 1)]).render("x", "y")),
        "{show}"
    );

    // A clean stop detaches the classifier from node1's eth0; node1's slot goes away.
    nodes[0].signal(Signal::SIGTERM).expect("SIGTERM");
    wait_until("node1 detached TC egress", || {
        nodes[0].log().contains("TC egress detached")
    });
    let shown = tb
        .exec(&h1, &["bpftool", "net", "show", "dev", "eth0"])
        .expect("bpftool");
    assert!(!shown.contains("tc_egress"), "{shown}");
    wait_until("node1's slot dropped on node3", || {
        api(d, 3)
            .outbound_cidr_count("198.51.100.0/24", None)
            .unwrap()
            == 1
    });
    drop(held1);
    drop(held2b);
    drop(listeners);
}
