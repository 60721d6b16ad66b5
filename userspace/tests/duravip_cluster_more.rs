//! DuraVIP on three real daemons, the harder cases: preference and failback after
//! maturity, a SIGSTOPped owner (its VIPs move on missed heartbeats), `cluster duravip
//! move` (both sides agree), IPv6 failover, and a partition (the isolated node, without
//! quorum, releases its VIPs; after healing nothing moves before maturity).

mod duravip_cluster_support;

use std::time::{Duration, Instant};

use duraplane::testbed::Stream;
use duravip_cluster_support::{BIN, Cluster, Vip, shown_owners, wait_until};
use nix::sys::signal::Signal;

const PREF: &str = "198.51.100.1";
const B: &str = "198.51.100.2";
const V6: &str = "2001:db8:1::1";

fn shown_owner(c: &Cluster, i: usize, vip: &str) -> Option<String> {
    shown_owners(&c.ask(i, "cluster duravip show"))
        .into_iter()
        .find(|(v, _)| v == vip)
        .map(|(_, n)| n)
}

#[test]
fn preference_hung_owner_move_ipv6_and_partition() {
    let vips = [
        Vip {
            addr: PREF,
            preference: Some("node2"),
        },
        Vip {
            addr: B,
            preference: None,
        },
        Vip {
            addr: V6,
            preference: None,
        },
    ];
    let mut c = Cluster::start(&vips);

    // Preference: PREF ends on node2 (node1 started first and took it; it fails back
    // once the view is mature).
    wait_until("PREF on node2 alone", 20, || c.holders(PREF) == vec![1]);
    c.wait_single(B, 5);
    c.wait_single(V6, 5);
    wait_until("observer reaches PREF on node2", 5, || {
        c.connect(PREF).as_deref() == Some("node2")
    });

    // SIGSTOP node2's daemon: its corosync stays, heartbeats stop, PREF moves.
    c.nodes[1].signal(Signal::SIGSTOP).expect("stop");
    let mut to = usize::MAX;
    wait_until("PREF plumbed by another node", 10, || {
        let h: Vec<usize> = c.holders(PREF).into_iter().filter(|i| *i != 1).collect();
        if h.len() == 1 {
            to = h[0];
        }
        h.len() == 1
    });
    wait_until("observer served by the new owner", 5, || {
        c.connect(PREF) == Some(format!("node{}", to + 1))
    });
    // SIGCONT: node2 releases what it held while stopped, then (view mature) PREF fails
    // back to it.
    c.nodes[1].signal(Signal::SIGCONT).expect("cont");
    wait_until("PREF back on node2 alone", 15, || {
        c.holders(PREF) == vec![1]
    });
    wait_until("observer served by node2 again", 5, || {
        c.connect(PREF).as_deref() == Some("node2")
    });

    // cluster duravip move: B to a node that does not own it; both sides agree. Not to
    // node2: PREF prefers it, and a pin to a live node stays, so the balanced end state
    // below needs B elsewhere.
    let from = c.wait_single(B, 5);
    let target = if from == 0 { 2 } else { 0 };
    let out = c.ask(
        2,
        &format!("cluster duravip move {B} to node{}", target + 1),
    );
    assert!(out.contains("Moving"), "{out}");
    wait_until("B on the target only", 10, || c.holders(B) == vec![target]);
    let want = format!("node{}", target + 1);
    wait_until("old and new owner agree", 5, || {
        shown_owner(&c, from, B).as_deref() == Some(want.as_str())
            && shown_owner(&c, target, B).as_deref() == Some(want.as_str())
    });
    let bad = c.nodes[0].console(
        std::path::Path::new(BIN),
        "cluster duravip move 198.51.100.99 to node2",
    );
    assert!(bad.is_err(), "move of an undeclared VIP refused: {bad:?}");

    // IPv6: kill -9 the owner of V6; a survivor plumbs it, the observer sees the NA and
    // connects.
    let o6 = c.wait_single(V6, 5);
    wait_until("observer reaches V6", 5, || {
        c.connect(V6) == Some(format!("node{}", o6 + 1))
    });
    let cap = c.capture();
    c.nodes[o6].kill();
    let mut n6 = usize::MAX;
    wait_until("a survivor plumbs V6", 10, || {
        let h: Vec<usize> = c.holders(V6).into_iter().filter(|i| *i != o6).collect();
        if h.len() == 1 {
            n6 = h[0];
        }
        h.len() == 1
    });
    let mac6 = c.mac(n6);
    wait_until("observer captured the unsolicited NA", 5, || {
        cap.lines(Stream::Stdout).iter().any(|l| {
            l.split_whitespace().nth(1) == Some(mac6.as_str())
                && l.contains("neighbor advertisement")
                && l.contains("tgt is 2001:db8:1::1")
        })
    });
    wait_until("V6 neighbour entry moved", 5, || {
        c.observer_neigh(V6) == Some(mac6.clone())
    });
    wait_until("new TCP connection to V6", 5, || {
        c.connect(V6) == Some(format!("node{}", n6 + 1))
    });
    drop(cap);
    c.nodes[o6]
        .restart(&c.tb, std::path::Path::new(BIN))
        .expect("restart");
    wait_until("restarted node cleaned its orphan", 10, || {
        !c.holders(V6).contains(&o6) || c.holders(V6) == vec![o6]
    });
    wait_until("every VIP single-owned", 15, || {
        [PREF, B, V6].iter().all(|v| c.holders(v).len() == 1)
    });

    // Partition: isolate node3 (bridge port down). Without quorum it releases everything;
    // the other two take its VIPs.
    c.set_port(2, false);
    // Wait for corosync to see the partition on both sides: node3 may hold nothing at this
    // point (it was restarted above), and then the two waits below pass at once. A heal
    // within the token timeout is a flap, not a partition: the rings re-form in several
    // steps (a view {node1, node3} without node2 was seen) and VIPs move for real.
    wait_until("the majority's view lost node3", 15, || {
        c.ask(0, "cluster info")
            .contains("View: 2 members (2 live)")
    });
    wait_until("isolated node3 without quorum", 15, || {
        c.ask(2, "cluster info").contains("Quorum: NOT quorate")
    });
    wait_until("isolated node3 released its VIPs", 15, || {
        [PREF, B, V6].iter().all(|v| !c.holders(v).contains(&2))
    });
    wait_until("the majority owns every VIP", 15, || {
        [PREF, B, V6].iter().all(|v| c.holders(v).len() == 1)
    });
    let before: Vec<Vec<usize>> = [PREF, B, V6].iter().map(|v| c.holders(v)).collect();
    // Heal: node3 rejoins; nothing moves before maturity (2 s after the view).
    c.set_port(2, true);
    wait_until("node3 back in the view", 15, || {
        c.ask(0, "cluster info")
            .contains("View: 3 members (3 live)")
    });
    let healed = Instant::now();
    while healed.elapsed() < Duration::from_millis(1200) {
        let now: Vec<Vec<usize>> = [PREF, B, V6].iter().map(|v| c.holders(v)).collect();
        assert!(
            now == before,
            "a VIP moved before maturity after healing ({} ms after the 3-member view was \
             seen): before {before:?}, now {now:?}\n{}",
            healed.elapsed().as_millis(),
            c.diagnosis()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_until("balanced after healing", 20, || {
        let h: Vec<Vec<usize>> = [PREF, B, V6].iter().map(|v| c.holders(v)).collect();
        h.iter().all(|x| x.len() == 1) && h[0] == vec![1] && {
            let mut o: Vec<usize> = h.iter().map(|x| x[0]).collect();
            o.sort_unstable();
            o == [0, 1, 2]
        }
    });
}
