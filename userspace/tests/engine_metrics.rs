//! The daemon's port-4802 engine shows up in `cluster info` and in `duraplane_engine_*`
//! metrics, and a client with the wrong cluster key is counted as `bad_auth`.

mod daemon_support;

use std::{net::SocketAddr, time::Duration};

use daemon_support::{Daemon, http_get, stdout};
use duraplane::{
    engine::{auth::ClusterKey, client::Client},
    testbed::daemons::write_key,
};

#[test]
fn engine_counters_reach_cluster_info_and_metrics() {
    let keydir = tempfile::tempdir().expect("tempdir");
    let key = keydir.path().join("cluster.key");
    write_key(&key, b"0123456789abcdef0123456789abcdef\n").expect("key");
    let d = Daemon::start(&format!(
        "cluster {{\n  Replicate \"inbound_cidr\" {{}}\n}}\nduraplane {{\n  cluster_key_file = \"{}\"\n}}\n",
        key.display()
    ));

    let info = stdout(&d.console(&["cluster", "info"]));
    // `cargo xtask test` runs this suite again with the mio backend forced.
    if let Ok(forced) = std::env::var("DURAPLANE_ENGINE") {
        let want = if forced == "mio" { "mio" } else { "io_uring" };
        assert!(
            info.contains(&format!("Cluster engine (4802): {want} backend")),
            "DURAPLANE_ENGINE={forced}: {info}"
        );
    }
    assert!(
        info.contains("Cluster engine (4802): io_uring backend")
            || info.contains("Cluster engine (4802): mio backend"),
        "{info}"
    );

    // A client that knows a different key: the handshake fails and is counted.
    let wrong = ClusterKey::from_bytes(b"ffffffffffffffffffffffffffffffff").expect("key");
    let addr: SocketAddr = "127.0.0.1:4802".parse().expect("addr");
    assert!(Client::connect(addr, &wrong, "intruder", Duration::from_secs(2)).is_err());

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = http_get(d.metrics, "/metrics");
        if m.contains("duraplane_engine_rejected_total{reason=\"bad_auth\"} 1") {
            assert!(m.contains("duraplane_engine_accepted_total 1"), "{m}");
            assert!(m.contains("duraplane_engine_uring_enters_total"), "{m}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no bad_auth count:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
