//! Three `duraplane run` daemons on a real corosync cluster, XDP on each node's bridge
//! port, real TCP clients from a client namespace on the same bridge: per-netblock counts
//! are cluster-wide on every node, a cluster-wide limit is enforced at every NIC, a hung
//! daemon's slot is excluded and readmitted, a crashed daemon's slot is dropped, and a
//! restarted daemon resyncs (with the counts its new program has: none of the old flows).

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use duraplane::testbed::{
    Testbed,
    corosync::{CorosyncCluster, CorosyncTiming},
    daemons::DaemonNode,
};
use nix::sys::signal::Signal;
use socket2::{Domain, SockAddr, Socket, Type};

const BIN: &str = env!("CARGO_BIN_EXE_duraplane");
const NET: &str = "198.51.100.0/24";
/// The cluster-wide limit of NET.
const K: u64 = 4;

fn config(i: usize, socket: &Path, key: &Path) -> String {
    format!(
        r#"ECCluster_Listener {{
  Listen "192.0.2.1{i}:4802" {{}}
}}
cluster {{
  nodename = "node{i}"
  nodeaddr = "192.0.2.1{i}"
  heartbeats_per_sec = 10
  heartbeat_start_delay = 0
  Replicate "inbound_cidr" {{}}
}}
duraplane {{
  control_socket = "{}"
  metrics = "off"
  interfaces = ( "eth0" )
  ports = ( 25 )
  poll_interval = "20ms"
  cluster_key_file = "{}"
  Netblock "{NET}" {{
    max_connections = {K}
    action = "drop"
  }}
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

/// The `current` column of `inbound show` for NET.
fn current(n: &DaemonNode) -> Option<u64> {
    ask(n, "inbound show")
        .lines()
        .find(|l| l.split_whitespace().next() == Some(NET))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn dropped(n: &DaemonNode) -> Option<u64> {
    ask(n, "inbound show")
        .lines()
        .find(|l| l.split_whitespace().next() == Some(NET))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}

fn all_show(nodes: &[&DaemonNode], want: u64, what: &str) {
    for n in nodes {
        wait_until(&format!("{what}: {} shows {want}", n.host), || {
            current(n) == Some(want)
        });
    }
}

/// Connects from `src` (in the client namespace) to node `i`'s port 25.
fn connect(tb: &Testbed, src: &str, i: usize) -> std::io::Result<TcpStream> {
    let src: IpAddr = src.parse().expect("ip");
    let dst = SocketAddr::new(IpAddr::from([192, 0, 2, 10 + i as u8]), 25);
    tb.run_in("client", move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
        s.connect_timeout(&SockAddr::from(dst), Duration::from_millis(1500))?;
        Ok(s.into())
    })
    .expect("netns")
}

#[test]
fn counts_are_cluster_wide_enforced_everywhere_and_follow_the_view() {
    let mut tb = Testbed::new().expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = CorosyncCluster::start(
        &mut tb,
        3,
        dir.path().to_path_buf(),
        CorosyncTiming::default(),
    )
    .expect("corosync");
    tb.add_host("client").expect("client");
    let cif = tb
        .attach(
            "client",
            &["198.51.100.10/24", "198.51.100.11/24", "198.51.100.12/24"],
        )
        .expect("client on the bridge");
    tb.add_route("client", "192.0.2.0/24", &cif, None)
        .expect("route");
    let key = dir.path().join("cluster.key");
    std::fs::write(&key, "replication-test-key-0123456789abcdef\n").expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod 600");
    let mut listeners: Vec<TcpListener> = Vec::new();
    for i in 1..=3 {
        let host = cluster.host(i - 1).to_owned();
        tb.add_route(&host, NET, "eth0", None).expect("route");
        let l = tb
            .run_in(&host, move || {
                TcpListener::bind(SocketAddr::new(IpAddr::from([192, 0, 2, 10 + i as u8]), 25))
            })
            .expect("netns")
            .expect("listen :25");
        listeners.push(l);
    }
    let mut nodes: Vec<DaemonNode> = (1..=3)
        .map(|i| {
            let socket = dir.path().join(format!("node{i}.sock"));
            DaemonNode::start(
                &tb,
                Path::new(BIN),
                cluster.host(i - 1),
                dir.path(),
                socket.clone(),
                &config(i, &socket, &key),
            )
            .expect("daemon")
        })
        .collect();
    for n in &nodes {
        wait_until("replication linked to both peers", || {
            let info = ask(n, "cluster info");
            info.matches("(linked, live").count() == 2
        });
    }
    let list = ask(&nodes[0], "cluster shared list");
    assert_eq!(
        list,
        "Currently managed objects:\n                  inbound_cidr [lazy, cidrtree w/ snapshots]\n",
        "{list}"
    );

    // Two connections to node1 (from .10 and .11), one to node2 (from .10): every node
    // shows the cluster-wide 3.
    let mut held = vec![
        connect(&tb, "198.51.100.10", 1).expect("conn"),
        connect(&tb, "198.51.100.11", 1).expect("conn"),
        connect(&tb, "198.51.100.10", 2).expect("conn"),
    ];
    all_show(&[&nodes[0], &nodes[1], &nodes[2]], 3, "cluster-wide count");
    let global = ask(&nodes[2], "cluster shared show inbound_cidr");
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
    let from1 = ask(&nodes[2], "cluster shared show inbound_cidr from node1");
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
        nodes[2]
            .console(
                Path::new(BIN),
                "cluster shared show inbound_cidr from nobody"
            )
            .is_err()
    );

    // K spread over two nodes; the K+1th to the third node is dropped at its NIC.
    held.push(connect(&tb, "198.51.100.12", 2).expect("4th conn (at the limit)"));
    all_show(&[&nodes[0], &nodes[1], &nodes[2]], K, "at the limit");
    let before = dropped(&nodes[2]).unwrap_or(0);
    assert!(
        connect(&tb, "198.51.100.12", 3).is_err(),
        "the K+1th connection to node3 must fail"
    );
    assert!(
        dropped(&nodes[2]).unwrap_or(0) > before,
        "dropped at node3's NIC"
    );
    assert_eq!(current(&nodes[2]), Some(K));

    // SIGSTOP node2's daemon: its 2 connections are excluded while it is hung, then
    // readmitted (its slot was kept, not dropped).
    nodes[1].signal(Signal::SIGSTOP).expect("stop");
    all_show(&[&nodes[0], &nodes[2]], 2, "node2 hung");
    nodes[1].signal(Signal::SIGCONT).expect("cont");
    all_show(&[&nodes[0], &nodes[2]], K, "node2 readmitted");

    // kill -9 of node1's daemon: its slot is dropped everywhere at the view change.
    nodes[0].kill();
    all_show(&[&nodes[1], &nodes[2]], 2, "node1 crashed");
    assert!(
        ask(&nodes[2], "cluster info").contains("1 slots dropped"),
        "{}",
        ask(&nodes[2], "cluster info")
    );
    let global = ask(&nodes[2], "cluster shared show inbound_cidr");
    assert!(!global.contains("198.51.100.11/32"), "{global}");

    // node1 restarts: its XDP maps were not pinned, so its old flows died with it and its
    // new program counts 0 of them; it resyncs the others' slots (2) and sends its own.
    nodes[0].restart(&tb, Path::new(BIN)).expect("restart");
    wait_until("node1 resynced", || current(&nodes[0]) == Some(2));
    for n in &nodes {
        wait_until("node1 linked again", || {
            ask(n, "cluster info").matches("(linked, live").count() == 2
        });
    }
    let from1 = ask(&nodes[1], "cluster shared show inbound_cidr from node1");
    assert_eq!(
        from1.lines().count(),
        1,
        "node1's new slot is empty: {from1}"
    );
    // A new connection to node1 is counted cluster-wide again.
    held.push(connect(&tb, "198.51.100.11", 1).expect("conn after restart"));
    all_show(&[&nodes[0], &nodes[1], &nodes[2]], 3, "after restart");

    // Partition: node2's link to the bridge goes down (a whole-node fault, detected by
    // corosync's token timeout). Each side drops the other's slot: node1 and node3 count
    // only node1's connection; node2, alone and without quorum, only its own two.
    let br = tb.bridge().expect("bridge namespace");
    let port2 = "p1"; // bridge ports are numbered in attach order: node1 p0, node2 p1, …
    tb_link(&br, port2, "down");
    all_show(&[&nodes[0], &nodes[2]], 1, "node2 partitioned away");
    all_show(&[&nodes[1]], 2, "node2 alone");
    wait_until("node2 without quorum", || {
        ask(&nodes[1], "cluster info").contains("Quorum: NOT quorate")
    });
    // Heal: the views merge and every slot is back everywhere.
    tb_link(&br, port2, "up");
    all_show(&[&nodes[0], &nodes[1], &nodes[2]], 3, "partition healed");
    drop(held);
    drop(listeners);
}

/// `ip link set PORT up|down` inside the bridge's namespace.
fn tb_link(bridge_ns: &str, port: &str, state: &str) {
    let st = std::process::Command::new("ip")
        .args(["-n", bridge_ns, "link", "set", port, state])
        .status()
        .expect("ip");
    assert!(st.success(), "ip link set {port} {state}");
}
