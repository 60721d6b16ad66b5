//! Issue 5, exact view/quorum pairing. Corosync reports one ring change through two
//! services: the CPG views and totem ring (on the group's connection) and the quorum
//! verdict (on the quorum connection), each tagged with the ring id. These tests check on a
//! real four-node corosync what DuraVIP's pairing relies on, then that the daemons use it.

mod cluster_support;
#[path = "duravip_cluster_support/monitors.rs"]
mod monitors;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, mpsc::RecvTimeoutError},
    time::{Duration, Instant},
};

use cluster_support::{Cluster, binding, wait_until};
use duraplane::{
    bus::{Bus, BusConfig, BusEvent, RingId},
    testbed::daemons::DaemonNode,
};
use monitors::{Event, Monitors, decision_logs};

const VIPS: [&str; 3] = ["198.51.100.1", "198.51.100.2", "198.51.100.3"];
/// What the daemon logs when the fallback, not the pairing, decided.
const UNPAIRED: &str = "never paired the view with a quorum verdict";

const GROUP: &str = "ec_cluster";

/// Every event of every node's bus, in arrival order per node.
type Log = Arc<Mutex<Vec<(Instant, usize, BusEvent)>>>;

/// A bus of the test's own on `node`'s corosync, its events appended to `log`.
fn start_bus(c: &Cluster, node: usize, log: &Log) -> Bus {
    let (bus, rx) = c.bus(
        node,
        BusConfig {
            cluster_group: GROUP.into(),
            control_group: "ec_console".into(),
            log_group: None,
            retry_interval: Duration::from_millis(200),
        },
    );
    let log = Arc::clone(log);
    std::thread::spawn(move || {
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(ev) => log.lock().unwrap().push((Instant::now(), node, ev)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    });
    bus
}

/// What matters of an event for pairing, one line.
fn brief(ev: &BusEvent) -> Option<String> {
    match ev {
        BusEvent::View {
            group,
            members,
            left,
            ..
        } if group == GROUP => Some(format!(
            "view {:?} left {:?}",
            members.iter().map(|m| m.nodeid).collect::<Vec<_>>(),
            left.iter()
                .map(|(m, r)| format!("{}:{r:?}", m.nodeid))
                .collect::<Vec<_>>()
        )),
        BusEvent::Ring { ring, nodes, .. } => Some(format!("ring {ring} {nodes:?}")),
        BusEvent::Quorum {
            quorate,
            ring,
            nodes,
        } => Some(format!(
            "quorum {quorate} {} {nodes:?}",
            ring.map_or("-".into(), |r| r.to_string())
        )),
        _ => None,
    }
}

/// Events of `node` since `mark` (an index into the log).
fn since(log: &Log, mark: usize, node: usize) -> Vec<BusEvent> {
    log.lock().unwrap()[mark..]
        .iter()
        .filter(|(_, n, _)| *n == node)
        .map(|(_, _, e)| e.clone())
        .collect()
}

fn dump(log: &Log, mark: usize, t0: Instant) -> String {
    log.lock().unwrap()[mark..]
        .iter()
        .filter_map(|(t, n, e)| {
            brief(e).map(|b| {
                format!(
                    "  +{:>5} ms node{} {b}",
                    t.saturating_duration_since(t0).as_millis(),
                    n + 1
                )
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The latest ring on the CPG connection and the latest quorum verdict's flag and ring.
type State = (Option<RingId>, Option<(bool, Option<RingId>)>);

fn state(evs: &[BusEvent]) -> State {
    let mut ring = None;
    let mut q = None;
    for e in evs {
        match e {
            BusEvent::Ring { ring: r, .. } => ring = Some(*r),
            BusEvent::Quorum {
                quorate, ring: r, ..
            } => q = Some((*quorate, r.or(q.and_then(|x: (bool, Option<RingId>)| x.1)))),
            _ => {}
        }
    }
    (ring, q)
}

/// A new ring and a quorum verdict (either way) for that same ring.
fn ring_with_verdict((ring, q): State) -> bool {
    ring.is_some() && q.is_some_and(|(_, r)| r == ring)
}

/// A new ring and a quorate verdict for it.
fn ring_quorate((ring, q): State) -> bool {
    ring.is_some() && q == Some((true, ring))
}

/// Waits (20 s) until the state since `mark` of every one of the four nodes is `ok`.
fn wait_states(log: &Log, mark: usize, what: &str, ok: fn(State) -> bool) {
    wait_until(what, 20, || (0..4).all(|i| ok(state(&since(log, mark, i)))));
}

/// Drops every packet between the two halves (nft in each node's namespace; the tables go
/// with the namespaces).
fn split(c: &Cluster, a: &[usize], b: &[usize], on: bool) {
    for (mine, other) in [(a, b), (b, a)] {
        for i in mine {
            let h = &c.host(*i);
            if on {
                let set = format!(
                    "{{ {} }}",
                    other
                        .iter()
                        .map(|j| c.addr(*j).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let nft = |args: &[&str]| {
                    let mut cmd = vec!["nft"];
                    cmd.extend_from_slice(args);
                    c.tb.exec(h, &cmd).expect("nft split");
                };
                nft(&["add", "table", "inet", "ringsplit"]);
                for (chain, hook, dir) in [("in", "input", "saddr"), ("out", "output", "daddr")] {
                    nft(&[
                        "add",
                        "chain",
                        "inet",
                        "ringsplit",
                        chain,
                        &format!("{{ type filter hook {hook} priority 0; }}"),
                    ]);
                    nft(&[
                        "add",
                        "rule",
                        "inet",
                        "ringsplit",
                        chain,
                        "ip",
                        dir,
                        &set,
                        "drop",
                    ]);
                }
            } else {
                c.tb.exec(h, &["nft", "delete", "table", "inet", "ringsplit"])
                    .expect("nft heal");
            }
        }
    }
}

/// What corosync 3.1.7 really reports, on four nodes: at start, for a daemon leaving its
/// group (no ring change), for an even 2|2 split and for the heal. Asserts the facts the
/// pairing rule rests on, and prints the sequences (`--nocapture`).
#[test]
fn corosync_ring_ids_pair_views_and_quorum() {
    // Corosync on four nodes, no daemons: the test's own buses are the members.
    let c = Cluster::builder(4).up();
    let log: Log = Arc::default();
    let t0 = Instant::now();
    let mut buses: Vec<Option<Bus>> = (0..4).map(|i| Some(start_bus(&c, i, &log))).collect();
    let view_of = |evs: &[BusEvent]| {
        evs.iter().rev().find_map(|e| match e {
            BusEvent::View { group, members, .. } if group == GROUP => {
                Some(members.iter().map(|m| m.nodeid).collect::<Vec<_>>())
            }
            _ => None,
        })
    };
    wait_until("every bus sees four members", 20, || {
        (0..4).all(|i| view_of(&since(&log, 0, i)).is_some_and(|v| v.len() == 4))
    });
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("start:\n{}", dump(&log, 0, t0));
    // At start the quorum connection names the current ring (tracking delivers the current
    // state); the CPG connection names none until the next ring change (rust-corosync
    // 3.2.0 cannot ask for CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF).
    let start_rings: Vec<Option<RingId>> = (0..4)
        .map(|i| state(&since(&log, 0, i)).1.and_then(|q| q.1))
        .collect();
    assert!(
        start_rings
            .iter()
            .all(|r| r.is_some() && *r == start_rings[0]),
        "every node's quorum verdict names the same ring at start: {start_rings:?}"
    );

    // A daemon leaves its group (its corosync lives): views change, the ring does not.
    let mark = log.lock().unwrap().len();
    let t1 = Instant::now();
    buses[3] = None;
    wait_until("node4 gone from the views", 10, || {
        (0..3).all(|i| view_of(&since(&log, mark, i)).is_some_and(|v| v.len() == 3))
    });
    std::thread::sleep(Duration::from_millis(1000));
    eprintln!("daemon leave:\n{}", dump(&log, mark, t1));
    for i in 0..3 {
        let evs = since(&log, mark, i);
        assert!(
            evs.iter()
                .all(|e| !matches!(e, BusEvent::Ring { .. } | BusEvent::Quorum { .. })),
            "node{}: a daemon leaving is no ring change: {evs:?}",
            i + 1
        );
    }
    buses[3] = Some(start_bus(&c, 3, &log));
    wait_until("node4 back", 10, || {
        (0..4).all(|i| view_of(&since(&log, mark, i)).is_some_and(|v| v.len() == 4))
    });

    // 3|1: node4 cut off. The majority stays quorate: does it get a verdict for its new
    // ring all the same? (The pairing needs one.)
    let mark = log.lock().unwrap().len();
    let t4 = Instant::now();
    split(&c, &[0, 1, 2], &[3], true);
    wait_states(
        &log,
        mark,
        "every node sees a new ring and a verdict for it",
        ring_with_verdict,
    );
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("3|1 split:\n{}", dump(&log, mark, t4));
    for i in 0..4 {
        let (_, q) = state(&since(&log, mark, i));
        assert_eq!(
            q.map(|x| x.0),
            Some(i < 3),
            "node{}: quorate iff in the three",
            i + 1
        );
    }
    let mark = log.lock().unwrap().len();
    let t5 = Instant::now();
    split(&c, &[0, 1, 2], &[3], false);
    wait_states(
        &log,
        mark,
        "every node sees the merged ring quorate",
        ring_quorate,
    );
    std::thread::sleep(Duration::from_millis(300));
    eprintln!("3|1 heal:\n{}", dump(&log, mark, t5));

    // Even split 2|2: neither half is quorate; every node sees a new ring with its view
    // (before the ring, on the CPG connection) and a verdict for that same ring.
    let mark = log.lock().unwrap().len();
    let t2 = Instant::now();
    split(&c, &[0, 1], &[2, 3], true);
    wait_states(
        &log,
        mark,
        "both halves see the split ring and its verdict",
        ring_with_verdict,
    );
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("2|2 split:\n{}", dump(&log, mark, t2));
    for i in 0..4 {
        let evs = since(&log, mark, i);
        let (ring, q) = state(&evs);
        assert_eq!(
            q.map(|x| x.0),
            Some(false),
            "node{}: an even split is quorate nowhere",
            i + 1
        );
        let ring_at = evs
            .iter()
            .position(|e| matches!(e, BusEvent::Ring { .. }))
            .unwrap();
        assert!(
            view_of(&evs[..ring_at]).is_some_and(|v| v.len() == 2),
            "node{}: the two-node view arrives before the ring {ring:?}: {evs:?}",
            i + 1
        );
    }

    // Heal: one merged ring, quorate again, the four-node view before its ring.
    let mark = log.lock().unwrap().len();
    let t3 = Instant::now();
    split(&c, &[0, 1], &[2, 3], false);
    wait_states(
        &log,
        mark,
        "every node sees the merged ring quorate",
        ring_quorate,
    );
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("heal:\n{}", dump(&log, mark, t3));
    let rings: Vec<Option<RingId>> = (0..4).map(|i| state(&since(&log, mark, i)).0).collect();
    assert!(
        rings.iter().all(|r| *r == rings[0]),
        "one merged ring everywhere: {rings:?}"
    );
    for i in 0..4 {
        let evs = since(&log, mark, i);
        let ring_at = evs
            .iter()
            .rposition(|e| matches!(e, BusEvent::Ring { .. }))
            .unwrap();
        assert!(
            view_of(&evs[..ring_at]).is_some_and(|v| v.len() == 4),
            "node{}: the merged view arrives before its ring: {evs:?}",
            i + 1
        );
    }
    drop(buses);
}

/// Lines inside `cluster { }` of the daemon test: quick maturity and balance, one VIP per
/// node, IPv4 VIPs on `eth0`.
const DURAVIP_CLUSTER: &str = r#"view_mature_time = 2
view_balance_interval = 0.5
duravip_balance_set_size = 1
if_check_interval = 1
Topology "198.51.100.0/24" {
  cidrmask = "32"
  interface = "eth0"
}
"#;

/// Indexes of the nodes whose `eth0` has `vip` plumbed.
fn holders(c: &Cluster, vip: &str) -> BTreeSet<usize> {
    (0..c.len())
        .filter(|i| {
            c.tb.exec(&c.host(*i), &["ip", "-o", "addr", "show", "dev", "eth0"])
                .unwrap_or_default()
                .split_whitespace()
                .any(|w| w.split('/').next() == Some(vip))
        })
        .collect()
}

/// Three daemons: a node cut off from a quorate ring never plumbs a VIP (the view {me}
/// arrives before corosync's verdict about it), after the heal it plumbs nothing before
/// maturity, and a kill -9 of a daemon (no ring change) still fails over — decided by the
/// pairing, never by the fallback.
#[test]
fn isolated_node_never_plumbs_and_a_killed_daemon_fails_over() {
    let mut c = Cluster::builder(3)
        .cluster(|_| DURAVIP_CLUSTER.to_owned())
        .top(|_| {
            VIPS.iter()
                .enumerate()
                .map(|(k, v)| binding(k, v, None))
                .collect()
        })
        .start();
    let balanced = |c: &Cluster| {
        let h: Vec<BTreeSet<usize>> = VIPS.iter().map(|v| holders(c, v)).collect();
        h.iter().all(|x| x.len() == 1) && h.iter().flatten().collect::<BTreeSet<_>>().len() == 3
    };
    wait_until("one VIP on each node", 30, || balanced(&c));
    let logs = |nodes: &[DaemonNode]| decision_logs(nodes, 25);

    // Partition node3 away and heal, twice.
    for round in 0..2 {
        let mon = Monitors::start(&c);
        split(&c, &[0, 1], &[2], true);
        wait_until("node3 released, the majority holds every VIP", 20, || {
            VIPS.iter().all(|v| {
                let h = holders(&c, v);
                h.len() == 1 && !h.contains(&2)
            })
        });
        split(&c, &[0, 1], &[2], false);
        wait_until("node3 back in the view", 20, || {
            c.console(0, "cluster info")
                .is_ok_and(|o| o.contains("View: 3 members (3 live)"))
        });
        // Watch on, below view_mature_time (2 s): nothing may be plumbed by node3.
        std::thread::sleep(Duration::from_millis(1200));
        let ch = mon.events(&VIPS);
        let ctx = || format!("round {round}: changes {ch:#?}\n{}", logs(&c.nodes));
        eprintln!("{}", ctx());
        assert!(
            ch.iter().all(|e| e.node != 2 || !e.added),
            "node3 plumbed a VIP while isolated or right after the heal\n{}",
            ctx()
        );
        assert!(
            ch.iter().any(|e| e.node == 2 && !e.added),
            "node3 released its VIP while isolated\n{}",
            ctx()
        );
        assert!(
            ch.iter().all(|e| e.node == 2 || e.added),
            "the majority never drops a VIP\n{}",
            ctx()
        );
        wait_until("balanced again", 30, || balanced(&c));
    }

    // kill -9 of node1's daemon: its corosync lives, so no ring change comes; the
    // survivors fail over on the view alone.
    let before: Vec<BTreeSet<usize>> = VIPS.iter().map(|v| holders(&c, v)).collect();
    let victim_vip = VIPS[before.iter().position(|h| h.contains(&0)).unwrap()];
    let mon = Monitors::start(&c);
    let text_before_kill = logs(&c.nodes);
    c.kill(0);
    wait_until("a survivor holds the killed daemon's VIP", 20, || {
        holders(&c, victim_vip).iter().any(|n| *n != 0)
    });
    std::thread::sleep(Duration::from_millis(500));
    let ch = mon.events(&VIPS);
    let ctx = || {
        format!(
            "kill -9: changes {ch:#?}\n{text_before_kill}\n{}",
            logs(&c.nodes)
        )
    };
    eprintln!("{}", ctx());
    let on_survivors: Vec<&Event> = ch.iter().filter(|e| e.node != 0).collect();
    assert!(
        on_survivors.len() == 1 && on_survivors[0].vip == victim_vip && on_survivors[0].added,
        "exactly one survivor plumbs the killed daemon's VIP, nothing else moves\n{}",
        ctx()
    );
    assert!(
        !text_before_kill.contains(UNPAIRED) && !logs(&c.nodes).contains(UNPAIRED),
        "the pairing, not the fallback, decided\n{}",
        ctx()
    );
}
