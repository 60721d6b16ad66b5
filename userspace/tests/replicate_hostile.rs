//! Replication against hostile or broken peers, on one daemon in its own namespace: a
//! wrong cluster key is refused and counted; malformed and out-of-sync frames close the
//! link, are counted and never reach a slot; a missing key file leaves the daemon running
//! with replication off and says why.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use duraplane::{
    engine::{ClusterKey, Frame, ServiceId, client::Client},
    replicate::{
        inbound::source_key,
        wire::{FLAG_FIRST, FLAG_LAST, MsgKind, encode},
    },
    testbed::{Testbed, daemons::DaemonNode},
};

const BIN: &str = env!("CARGO_BIN_EXE_duraplane");
const KEY: &[u8] = b"replication-test-key-0123456789abcdef";

fn config(socket: &Path, key: &Path) -> String {
    format!(
        r#"ECCluster_Listener {{
  Listen "192.0.2.1:4802" {{}}
}}
cluster {{
  nodename = "solo"
  nodeaddr = "192.0.2.1"
  Replicate "inbound_cidr" {{}}
}}
duraplane {{
  control_socket = "{}"
  metrics = "off"
  cluster_key_file = "{}"
}}
"#,
        socket.display(),
        key.display()
    )
}

fn ask(n: &DaemonNode, cmd: &str) -> String {
    n.console(Path::new(BIN), cmd)
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects to the daemon from inside its namespace and runs `f` on the client.
fn with_client<T: Send + 'static>(
    tb: &Testbed,
    key: &'static [u8],
    f: impl FnOnce(Result<Client, String>) -> T + Send + 'static,
) -> T {
    tb.run_in("solo", move || {
        let key = ClusterKey::from_bytes(key).expect("key");
        let addr: SocketAddr = "192.0.2.1:4802".parse().expect("addr");
        f(
            Client::connect(addr, &key, "intruder", Duration::from_secs(2))
                .map_err(|e| e.to_string()),
        )
    })
    .expect("netns")
}

/// Whether the daemon closed the client's connection (read returns an error/EOF).
fn closed(c: &mut Client) -> bool {
    c.recv().is_err()
}

#[test]
fn wrong_key_malformed_frames_and_gaps_are_refused_and_counted() {
    let mut tb = Testbed::new().expect("testbed");
    tb.add_host("solo").expect("host");
    tb.attach("solo", &["192.0.2.1/24"]).expect("attach");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("cluster.key");
    std::fs::write(&key, KEY).expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod 600");
    let socket = dir.path().join("solo.sock");
    let node = DaemonNode::start(
        &tb,
        Path::new(BIN),
        "solo",
        dir.path(),
        socket.clone(),
        &config(&socket, &key),
    )
    .expect("daemon");
    wait_until("replication running", || {
        ask(&node, "cluster info").contains("Replication: inbound_cidr")
    });

    // Wrong key: the handshake fails and the daemon counts it.
    let r = with_client(&tb, b"a-completely-different-key-000000", |c| c.is_ok());
    assert!(!r, "a wrong key must not authenticate");
    wait_until("refusal counted", || {
        ask(&node, "cluster info").contains("1 peers refused (bad key)")
    });

    // Garbage in a replication frame: link closed, counted.
    let was_closed = with_client(&tb, KEY, |c| {
        let mut c = c.expect("right key");
        c.send(&Frame::new(ServiceId::REPLICATION, 2, vec![1, 2, 3]))
            .expect("send");
        closed(&mut c)
    });
    assert!(was_closed, "malformed frame closes the link");
    // A valid snapshot, then a delta that skips a sequence number: resync (link closed).
    let ip = "198.51.100.7".parse().expect("ip");
    let k = source_key(&ip);
    let was_closed = with_client(&tb, KEY, move |c| {
        let mut c = c.expect("right key");
        c.send(&encode(
            MsgKind::Snapshot,
            FLAG_FIRST | FLAG_LAST,
            "inbound_cidr",
            1,
            10,
            0,
            &[(&k, 5)],
        ))
        .expect("send");
        c.send(&encode(
            MsgKind::Delta,
            0,
            "inbound_cidr",
            1,
            12,
            0,
            &[(&k, 9)],
        ))
        .expect("send");
        closed(&mut c)
    });
    assert!(was_closed, "a gap resets the link");
    wait_until("counters", || {
        let info = ask(&node, "cluster info");
        info.contains("1 malformed, 1 resyncs")
    });
    // The intruder is not in the cluster view: its slot never counts in the total.
    let global = ask(&node, "cluster shared show inbound_cidr");
    assert_eq!(
        global, "lazy, snapped cidrtree 'inbound_cidr', view 'global'\n",
        "{global}"
    );
    // The slot it did send is intact (the skipped delta did not touch it).
    let slot = ask(&node, "cluster shared show inbound_cidr from intruder");
    assert!(
        slot.contains("      5                         198.51.100.7/32"),
        "{slot}"
    );
    assert!(
        ask(&node, "cluster nodename").contains("solo"),
        "daemon alive"
    );
}

#[test]
fn missing_key_file_runs_without_replication_and_says_so() {
    let mut tb = Testbed::new().expect("testbed");
    tb.add_host("solo").expect("host");
    tb.attach("solo", &["192.0.2.1/24"]).expect("attach");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("missing.key");
    let socket = dir.path().join("solo.sock");
    let node = DaemonNode::start(
        &tb,
        Path::new(BIN),
        "solo",
        dir.path(),
        socket.clone(),
        &config(&socket, &key),
    )
    .expect("daemon runs");
    let info = ask(&node, "cluster info");
    assert!(info.contains("Replication: off (cluster key:"), "{info}");
    assert!(info.contains("missing.key"), "{info}");
    assert!(!key.exists(), "nothing created silently");
}
