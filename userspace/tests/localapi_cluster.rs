//! Three `duraplane run` daemons on a real corosync cluster, asked through their local
//! API sockets: gauges raised on two nodes are totalled on the third (and shown by
//! `cluster shared show outbound_domains`), a "10/60" shared throttle consumed from all
//! three nodes at once stops within the documented bound, a cache entry written on node1
//! is read on node3 (with `snapshot`, a node started later sees an earlier entry; without,
//! it does not), and `inbound_count` answers the cluster-wide figure from real TCP
//! connections counted by XDP on two nodes.

mod cluster_support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster_support::{Cluster, wait_until};

const NET: &str = "198.51.100.0/24";

fn wait(what: &str, f: impl FnMut() -> bool) {
    wait_until(what, 30, f)
}

#[test]
fn gauges_throttles_caches_and_counts_are_cluster_wide() {
    let mut c = Cluster::builder(3)
        .key("localapi-test-key-0123456789abcdef")
        .cluster(|_| {
            r#"Replicate "inbound_cidr" {}
Replicate "outbound_domains" {}
Replicate "shared_named_throttles" {}
Replicate "snapcache" {
  type = "cache"
  parameters = "snapshot"
}
Replicate "plaincache" {
  type = "cache"
}
"#
            .to_owned()
        })
        .duraplane(|_| {
            format!(
                r#"interfaces = ( "eth0" )
ports = ( 25 )
poll_interval = "20ms"
Netblock "{NET}" {{
  max_connections = 100
  action = "drop"
}}
"#
            )
        })
        .up();
    c.add_client("client", &["198.51.100.10/24", "198.51.100.11/24"]);
    c.route_on_nodes(NET);
    let listeners = c.listen_on_nodes(25);

    // node1 and node2 first; entries written before node3 exists.
    c.start_daemon();
    c.start_daemon();
    c.wait_linked(1);
    assert_eq!(c.api(0).ping().unwrap(), "node1");
    c.api(0)
        .cache_set("snapcache", "early", "before node3", "1H")
        .unwrap();
    c.api(0)
        .cache_set("plaincache", "early", "before node3", "0")
        .unwrap();
    wait("node2 has the early entry", || {
        c.api(1).cache_get("snapcache", "early").unwrap().as_deref() == Some("before node3")
    });

    c.start_daemon();
    c.wait_linked(2);
    let list = c.ask(2, "cluster shared list");
    assert!(
        list.contains("              outbound_domains [lazy, gauge table w/ snapshots]"),
        "{list}"
    );

    // Caches: snapshot → node3 sees the early entry; without snapshot it does not, but it
    // does see a write made after it joined.
    wait("node3 has the early snapshot entry", || {
        c.api(2).cache_get("snapcache", "early").unwrap().as_deref() == Some("before node3")
    });
    c.api(0)
        .cache_set("plaincache", "late", "after", "0")
        .unwrap();
    wait("node3 has the late entry", || {
        c.api(2).cache_get("plaincache", "late").unwrap().as_deref() == Some("after")
    });
    assert_eq!(c.api(2).cache_get("plaincache", "early").unwrap(), None);
    let info = c.ask(2, "cluster info");
    let ignored: u64 = info
        .lines()
        .find(|l| l.trim_start().starts_with("cache plaincache:"))
        .and_then(|l| l.rsplit(", ").next())
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{info}"));
    assert!(
        ignored >= 1,
        "the early entry was ignored, and counted: {info}"
    );
    // Last writer wins across nodes; a delete on node3 reaches node1.
    c.api(1)
        .cache_set("snapcache", "k", "from node2", "0")
        .unwrap();
    wait("k on node1", || {
        c.api(0).cache_get("snapcache", "k").unwrap().as_deref() == Some("from node2")
    });
    c.api(0)
        .cache_set("snapcache", "k", "from node1", "0")
        .unwrap();
    for i in 0..3 {
        wait("newer k everywhere", || {
            c.api(i).cache_get("snapcache", "k").unwrap().as_deref() == Some("from node1")
        });
    }
    assert!(c.api(2).cache_delete("snapcache", "k").unwrap());
    wait("delete reaches node1", || {
        c.api(0).cache_get("snapcache", "k").unwrap().is_none()
    });

    // Gauges: 2 on node1 + 3 on node2 = 5 seen on node3.
    c.api(0)
        .gauge_inc("outbound_domains", "aol.com", 2)
        .unwrap();
    c.api(1)
        .gauge_inc("outbound_domains", "AOL.com", 3)
        .unwrap();
    c.api(1)
        .gauge_inc("outbound_domains", "yahoo.com", 1)
        .unwrap();
    // Node2's two keys may reach node3 in different flushes: wait for both.
    wait("gauge totals on node3", || {
        c.api(2).gauge_get("outbound_domains", "aol.com").unwrap() == (0, 5)
            && c.api(2).gauge_get("outbound_domains", "yahoo.com").unwrap() == (0, 1)
    });
    assert_eq!(c.api(2).outbound_count("aol.com").unwrap(), 5);
    let show = c.ask(2, "cluster shared show outbound_domains");
    assert_eq!(
        show,
        format!(
            "lazy, snapped gauge table 'outbound_domains', view 'global'\n{:>60}:{:>13}\n{:>60}:{:>13}\n",
            "aol.com", 5, "yahoo.com", 1
        )
    );
    let from1 = c.ask(2, "cluster shared show outbound_domains from node1");
    let head = from1.lines().next().unwrap_or_default();
    assert!(
        head.starts_with("lazy, snapped gauge table 'outbound_domains', view '#")
            && head.ends_with("#node1'"),
        "{from1}"
    );
    assert!(
        from1.contains(&format!("{:>60}:{:>13}\n", "aol.com", 2)),
        "{from1}"
    );
    assert!(!from1.contains("yahoo.com"), "{from1}");
    c.api(0)
        .gauge_dec("outbound_domains", "aol.com", 2)
        .unwrap();
    wait("gauge decrement on node3", || {
        c.api(2).outbound_count("aol.com").unwrap() == 3
    });

    // Throttle "10/60" on all three nodes, consumed concurrently. Stay inside one window.
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if secs % 60 > 40 {
        std::thread::sleep(Duration::from_secs(61 - secs % 60));
    }
    for i in 0..3 {
        c.api(i).throttle_create("burst", "10/60", None).unwrap();
    }
    let taken: Vec<u64> = std::thread::scope(|s| {
        let c = &c;
        let hs: Vec<_> = (0..3)
            .map(|i| {
                s.spawn(move || {
                    let mut cl = c.api(i);
                    let mut n = 0;
                    let end = Instant::now() + Duration::from_secs(4);
                    while Instant::now() < end {
                        if cl.throttle_consume("burst", 1).unwrap().allowed {
                            n += 1;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total: u64 = taken.iter().sum();
    eprintln!("throttle 10/60 on 3 nodes: taken {taken:?} = {total}");
    // Documented bound: X + (nodes - 1) = 12; the cluster does get its 10.
    assert!((10..=12).contains(&total), "took {total} ({taken:?})");
    for i in 0..3 {
        assert!(!c.api(i).throttle_check("burst").unwrap().allowed);
    }

    // inbound_count: connections from .10 to node1 and node2, from .11 to node2.
    let held = vec![
        c.connect_from("client", "198.51.100.10", 0, 25)
            .expect("conn"),
        c.connect_from("client", "198.51.100.10", 1, 25)
            .expect("conn"),
        c.connect_from("client", "198.51.100.11", 1, 25)
            .expect("conn"),
    ];
    wait("inbound count on node3", || {
        c.api(2)
            .inbound_count("/24", Some("198.51.100.77"))
            .unwrap()
            == 3
    });
    let mut c3 = c.api(2);
    assert_eq!(c3.inbound_count("/32", Some("198.51.100.10")).unwrap(), 2);
    assert_eq!(c3.inbound_count("198.51.100.11", None).unwrap(), 1);
    assert_eq!(c3.inbound_count("198.51.100.0/25", None).unwrap(), 3);
    assert_eq!(c3.inbound_count("203.0.113.0/24", None).unwrap(), 0);
    assert!(
        c3.inbound_count("/24", None).is_err(),
        "relative form needs addr"
    );
    drop(held);
    drop(listeners);
}
