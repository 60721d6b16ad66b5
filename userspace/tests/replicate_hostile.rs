//! Replication against hostile or broken peers, on one daemon (a one-node cluster): a
//! wrong cluster key is refused and counted; malformed and out-of-sync frames close the
//! link, are counted and never reach a slot; a missing key file leaves the daemon running
//! with replication off and says why.

mod cluster_support;

use std::{net::SocketAddr, time::Duration};

use cluster_support::{Cluster, ClusterBuilder, wait_until};
use duraplane::{
    engine::{ClusterKey, Frame, ServiceId, client::Client},
    replicate::{
        inbound::source_key,
        wire::{FLAG_FIRST, FLAG_LAST, MsgKind, encode},
    },
};

const KEY: &str = "replication-test-key-0123456789abcdef";

/// One node replicating `inbound_cidr`; the test names its key.
fn solo() -> ClusterBuilder {
    Cluster::builder(1).cluster(|_| "Replicate \"inbound_cidr\" {}\n".to_owned())
}

fn wait(what: &str, f: impl FnMut() -> bool) {
    wait_until(what, 20, f)
}

/// Connects to the daemon from inside its namespace and runs `f` on the client.
fn with_client<T: Send + 'static>(
    c: &Cluster,
    key: &'static [u8],
    f: impl FnOnce(Result<Client, String>) -> T + Send + 'static,
) -> T {
    let addr = SocketAddr::new(c.addr(0), 4802);
    c.tb.run_in(&c.host(0), move || {
        let key = ClusterKey::from_bytes(key).expect("key");
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
    let c = solo().key(KEY).start();
    wait("replication running", || {
        c.ask(0, "cluster info")
            .contains("Replication: inbound_cidr")
    });

    // Wrong key: the handshake fails and the daemon counts it.
    let r = with_client(&c, b"a-completely-different-key-000000", |c| c.is_ok());
    assert!(!r, "a wrong key must not authenticate");
    wait("refusal counted", || {
        c.ask(0, "cluster info")
            .contains("1 peers refused (bad key)")
    });

    // Garbage in a replication frame: link closed, counted.
    let was_closed = with_client(&c, KEY.as_bytes(), |c| {
        let mut c = c.expect("right key");
        c.send(&Frame::new(ServiceId::REPLICATION, 2, vec![1, 2, 3]))
            .expect("send");
        closed(&mut c)
    });
    assert!(was_closed, "malformed frame closes the link");
    // A valid snapshot, then a delta that skips a sequence number: resync (link closed).
    let ip = "198.51.100.7".parse().expect("ip");
    let k = source_key(&ip);
    let was_closed = with_client(&c, KEY.as_bytes(), move |c| {
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
    wait("counters", || {
        let info = c.ask(0, "cluster info");
        info.contains("1 malformed, 1 resyncs")
    });
    // The intruder is not in the cluster view: its slot never counts in the total.
    let global = c.ask(0, "cluster shared show inbound_cidr");
    assert_eq!(
        global, "lazy, snapped cidrtree 'inbound_cidr', view 'global'\n",
        "{global}"
    );
    // The slot it did send is intact (the skipped delta did not touch it).
    let slot = c.ask(0, "cluster shared show inbound_cidr from intruder");
    assert!(
        slot.contains("      5                         198.51.100.7/32"),
        "{slot}"
    );
    assert!(
        c.ask(0, "cluster nodename").contains("node1"),
        "daemon alive"
    );
}

#[test]
fn missing_key_file_runs_without_replication_and_says_so() {
    let mut c = solo().up();
    let key = c.dir.path().join("missing.key");
    c.config.key = Some(key.clone());
    c.start_daemons();
    let info = c.ask(0, "cluster info");
    assert!(info.contains("Replication: off (cluster key:"), "{info}");
    assert!(info.contains("missing.key"), "{info}");
    assert!(!key.exists(), "nothing created silently");
}
