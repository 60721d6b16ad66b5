//! Netblock classification, limit enforcement, remote counts, reload and expiry of
//! `xdp_ingress`, through BPF_PROG_TEST_RUN in the real kernel.

use std::{net::IpAddr, time::Duration};

use duraplane::bpf::{
    Cidr, Datapath, DatapathConfig, NetblockAction, NetblockCounters, NetblockSpec,
    frames::{Frame, tcp_flags as f},
    testrun::Verdict,
};
use duraplane_common::{
    DROP_EVENTS_BYTES,
    Stat::{self, *},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn spec(cidr: &str, limit: Option<u64>, action: NetblockAction) -> NetblockSpec {
    let (a, p) = cidr.split_once('/').unwrap();
    NetblockSpec {
        cidr: Cidr {
            addr: ip(a),
            prefix: p.parse().unwrap(),
        },
        max_connections: limit,
        action,
    }
}

fn count(cidr: &str) -> NetblockSpec {
    spec(cidr, None, NetblockAction::Count)
}

fn load(netblocks: Vec<NetblockSpec>) -> Datapath {
    Datapath::load(&DatapathConfig {
        netblocks,
        ..DatapathConfig::default()
    })
    .unwrap()
}

fn id_of(dp: &Datapath, cidr: &str) -> u32 {
    let c = spec(cidr, None, NetblockAction::Count).cidr;
    dp.netblock_ids()
        .into_iter()
        .find(|(x, _)| *x == c)
        .map(|(_, id)| id)
        .unwrap_or_else(|| panic!("{cidr} has no id"))
}

fn nb(dp: &mut Datapath, id: u32) -> NetblockCounters {
    dp.read_netblocks()
        .unwrap()
        .into_iter()
        .find(|n| n.id == id)
        .unwrap_or_else(|| panic!("id {id} not reported"))
}

fn dst_for(src: IpAddr) -> IpAddr {
    if src.is_ipv4() {
        ip("203.0.113.1")
    } else {
        ip("2001:db8:ffff::1")
    }
}

fn syn(dp: &Datapath, src: &str, sport: u16) -> Verdict {
    let s = ip(src);
    let fr = Frame::tcp(s, sport, dst_for(s), 25, f::SYN).build();
    dp.test_run(&fr, 1).unwrap().verdict
}

fn fin(dp: &Datapath, src: &str, sport: u16) -> Verdict {
    let s = ip(src);
    let fr = Frame::tcp(s, sport, dst_for(s), 25, f::FIN | f::ACK).build();
    dp.test_run(&fr, 1).unwrap().verdict
}

fn stats(dp: &Datapath) -> Vec<(Stat, u64)> {
    dp.read_stats().unwrap().nonzero()
}

#[test]
fn longest_prefix_classification_v4_and_v6() {
    let mut dp = load(vec![
        count("192.0.2.0/24"),
        count("192.0.2.128/25"),
        count("192.0.2.192/26"),
        count("2001:db8::/32"),
        count("2001:db8:1::/48"),
        count("2001:db8:1:2::/64"),
    ]);
    let cases = [
        ("192.0.2.10", Some("192.0.2.0/24")),
        ("192.0.2.130", Some("192.0.2.128/25")),
        ("192.0.2.200", Some("192.0.2.192/26")),
        ("198.51.100.7", None),
        ("2001:db8:5::1", Some("2001:db8::/32")),
        ("2001:db8:1:7::1", Some("2001:db8:1::/48")),
        ("2001:db8:1:2::99", Some("2001:db8:1:2::/64")),
        ("2001:db9::1", None),
    ];
    for (i, (src, _)) in cases.iter().enumerate() {
        assert_eq!(syn(&dp, src, 1000 + i as u16), Verdict::Pass);
    }
    let ids: Vec<u32> = (0..6)
        .map(|i| {
            id_of(
                &dp,
                [
                    "192.0.2.0/24",
                    "192.0.2.128/25",
                    "192.0.2.192/26",
                    "2001:db8::/32",
                    "2001:db8:1::/48",
                    "2001:db8:1:2::/64",
                ][i],
            )
        })
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 6, "distinct ids");
    assert!(!ids.contains(&0));
    for id in &ids {
        let n = nb(&mut dp, *id);
        assert_eq!((n.local, n.stats.syn, n.stats.opened), (1, 1, 1), "id {id}");
        assert!(n.cidr.is_some());
    }
    let n0 = nb(&mut dp, 0);
    assert_eq!((n0.local, n0.stats.syn, n0.cidr), (2, 2, None));
    // Each flow remembers its netblock.
    for fl in dp.read_flows().unwrap() {
        let want = cases
            .iter()
            .find(|(s, _)| ip(s) == fl.src)
            .unwrap()
            .1
            .map_or(0, |c| id_of(&dp, c));
        assert_eq!(fl.netblock, want, "{}", fl.src);
    }
    assert_eq!(stats(&dp), vec![(Packets, 8), (Syn, 8), (Opened, 8)]);
}

#[test]
fn limit_with_drop_action_drops_the_k_plus_first_syn() {
    for (block, src, k) in [
        ("192.0.2.0/24", "192.0.2.9", 3u64),
        ("2001:db8:7::/48", "2001:db8:7::9", 2),
    ] {
        let mut dp = load(vec![spec(block, Some(k), NetblockAction::Drop)]);
        let id = id_of(&dp, block);
        for p in 0..k as u16 {
            assert_eq!(syn(&dp, src, 100 + p), Verdict::Pass, "SYN {p}");
        }
        assert_eq!(syn(&dp, src, 999), Verdict::Drop);
        // Its retransmit is dropped again (it was never tracked).
        assert_eq!(syn(&dp, src, 999), Verdict::Drop);
        // Other netblocks are unaffected.
        let other = if src.contains(':') {
            "2001:db8:9::1"
        } else {
            "198.51.100.1"
        };
        assert_eq!(syn(&dp, other, 1), Verdict::Pass);
        assert_eq!(
            stats(&dp),
            vec![
                (Packets, k + 3),
                (Syn, k + 3),
                (Opened, k + 1),
                (Dropped, 2)
            ]
        );
        let n = nb(&mut dp, id);
        assert_eq!(n.local, k);
        assert_eq!((n.limit, n.action), (k, NetblockAction::Drop));
        assert_eq!(
            (n.stats.syn, n.stats.opened, n.stats.dropped),
            (k + 2, k, 2)
        );
        assert_eq!(dp.read_flows().unwrap().len() as u64, k + 1);

        let ev = dp.poll_drop_events(16);
        assert_eq!(ev.len(), 2);
        for e in &ev {
            assert_eq!((e.addr, e.netblock, e.dport), (ip(src), id, 25));
            assert!(e.ts_ns > 0);
        }
        assert!(ev[0].ts_ns <= ev[1].ts_ns);
        assert!(dp.poll_drop_events(16).is_empty());

        // A close makes room for exactly one more.
        assert_eq!(fin(&dp, src, 100), Verdict::Pass);
        assert_eq!(syn(&dp, src, 999), Verdict::Pass);
        assert_eq!(syn(&dp, src, 1000), Verdict::Drop);
        assert_eq!(nb(&mut dp, id).local, k);
    }
}

#[test]
fn limit_with_count_action_passes_and_reports() {
    let mut dp = load(vec![spec(
        "198.51.100.0/24",
        Some(2),
        NetblockAction::Count,
    )]);
    let id = id_of(&dp, "198.51.100.0/24");
    for p in 0..4 {
        assert_eq!(syn(&dp, "198.51.100.20", p), Verdict::Pass);
    }
    assert_eq!(
        stats(&dp),
        vec![(Packets, 4), (Syn, 4), (Opened, 4), (OverLimit, 2)]
    );
    let n = nb(&mut dp, id);
    // Count-only: over-limit connections are real, so they are still tracked.
    assert_eq!((n.local, n.stats.opened, n.stats.over_limit), (4, 4, 2));
    assert!(dp.poll_drop_events(8).is_empty());
}

#[test]
fn remote_counts_take_part_in_enforcement() {
    let mut dp = load(vec![spec("192.0.2.0/24", Some(5), NetblockAction::Drop)]);
    let id = id_of(&dp, "192.0.2.0/24");
    dp.set_remote(id, 3).unwrap();
    assert_eq!(syn(&dp, "192.0.2.1", 1), Verdict::Pass);
    assert_eq!(syn(&dp, "192.0.2.2", 2), Verdict::Pass);
    assert_eq!(syn(&dp, "192.0.2.3", 3), Verdict::Drop);
    let n = nb(&mut dp, id);
    assert_eq!((n.local, n.remote, n.stats.dropped), (2, 3, 1));
    // The cluster total drops: room again.
    dp.set_remote(id, 0).unwrap();
    assert_eq!(syn(&dp, "192.0.2.3", 3), Verdict::Pass);
    // Remote alone can exceed the limit.
    dp.set_remote(id, 100).unwrap();
    assert_eq!(syn(&dp, "192.0.2.4", 4), Verdict::Drop);
    assert_eq!(
        stats(&dp),
        vec![(Packets, 5), (Syn, 5), (Opened, 3), (Dropped, 2)]
    );
    assert!(dp.set_remote(duraplane_common::MAX_NETBLOCKS, 1).is_err());
}

#[test]
fn reload_keeps_counts_and_never_reuses_a_busy_id() {
    let mut dp = load(vec![count("192.0.2.0/24"), count("198.51.100.0/24")]);
    let a = id_of(&dp, "192.0.2.0/24");
    let b = id_of(&dp, "198.51.100.0/24");
    syn(&dp, "192.0.2.1", 1);
    syn(&dp, "192.0.2.2", 2);
    syn(&dp, "198.51.100.1", 3);

    // Reload: A gains a limit, B goes away (one flow still open), C is new.
    dp.set_netblocks(&[
        spec("192.0.2.0/24", Some(3), NetblockAction::Drop),
        count("203.0.113.0/24"),
    ])
    .unwrap();
    assert_eq!(id_of(&dp, "192.0.2.0/24"), a);
    let c = id_of(&dp, "203.0.113.0/24");
    assert_ne!(c, b, "B's id still holds an open flow");
    let na = nb(&mut dp, a);
    assert_eq!((na.local, na.stats.opened, na.limit), (2, 2, 3));
    let nbb = nb(&mut dp, b);
    assert_eq!((nbb.local, nbb.cidr, nbb.limit), (1, None, 0));
    // The new limit applies to the existing count: one more, then drop.
    assert_eq!(syn(&dp, "192.0.2.3", 4), Verdict::Pass);
    assert_eq!(syn(&dp, "192.0.2.4", 5), Verdict::Drop);
    // B's sources are unclassified now; B's old flow still closes against B.
    syn(&dp, "198.51.100.2", 6);
    assert_eq!(nb(&mut dp, 0).local, 1);
    fin(&dp, "198.51.100.1", 3);
    let after: Vec<u32> = dp.read_netblocks().unwrap().iter().map(|n| n.id).collect();
    assert!(!after.contains(&b), "idle removed id is no longer reported");

    // Another reload: D may now take B's id, starting from zero.
    dp.set_netblocks(&[
        spec("192.0.2.0/24", Some(3), NetblockAction::Drop),
        count("203.0.113.0/24"),
        count("198.51.100.128/25"),
    ])
    .unwrap();
    let d = id_of(&dp, "198.51.100.128/25");
    assert_eq!(d, b);
    let nd = nb(&mut dp, d);
    assert_eq!((nd.local, nd.stats), (0, Default::default()));
    assert_eq!(id_of(&dp, "192.0.2.0/24"), a);
    assert_eq!(id_of(&dp, "203.0.113.0/24"), c);
    assert_eq!(nb(&mut dp, a).local, 3);
    assert_eq!(
        stats(&dp),
        vec![
            (Packets, 7),
            (Syn, 6),
            (Opened, 5),
            (FinRstClosed, 1),
            (Dropped, 1)
        ]
    );
}

#[test]
fn reload_rejects_bad_netblocks() {
    let mut dp = load(vec![]);
    assert!(dp.set_netblocks(&[count("192.0.2.0/33")]).is_err());
    assert!(
        dp.set_netblocks(&[count("192.0.2.0/24"), count("192.0.2.77/24")])
            .is_err(),
        "same network after masking"
    );
    // Host bits are masked: 192.0.2.77/24 is 192.0.2.0/24.
    dp.set_netblocks(&[count("192.0.2.77/24")]).unwrap();
    assert_eq!(id_of(&dp, "192.0.2.0/24"), 1);
}

#[test]
fn expire_flows_closes_each_flow_once() {
    let mut dp = load(vec![count("192.0.2.0/24")]);
    let a = id_of(&dp, "192.0.2.0/24");
    syn(&dp, "192.0.2.1", 1);
    syn(&dp, "198.51.100.1", 2);
    syn(&dp, "2001:db8::1", 3);
    // A flow on a port that is later removed from the counted set still expires.
    let s = ip("192.0.2.2");
    dp.test_run(&Frame::tcp(s, 4, dst_for(s), 465, f::SYN).build(), 1)
        .unwrap();
    dp.set_ports(&[25]).unwrap();

    // Nothing is a million seconds old.
    assert_eq!(dp.expire_flows(Duration::from_secs(1_000_000)).unwrap(), 0);
    assert_eq!(dp.read_flows().unwrap().len(), 4);
    // Everything opened up to now.
    assert_eq!(dp.expire_flows(Duration::ZERO).unwrap(), 4);
    assert!(dp.read_flows().unwrap().is_empty());
    assert_eq!(dp.expire_flows(Duration::ZERO).unwrap(), 0);
    assert_eq!(nb(&mut dp, a).local, 0);
    assert_eq!(nb(&mut dp, 0).local, 0);
    assert_eq!(
        (nb(&mut dp, a).stats.closed, nb(&mut dp, 0).stats.closed),
        (2, 2)
    );
    for s in dp.read_sources().unwrap() {
        assert_eq!((s.opened, s.closed, s.current), (1, 1, 0), "{}", s.addr);
    }
    // A late FIN finds nothing.
    fin(&dp, "192.0.2.1", 1);
    assert_eq!(
        stats(&dp),
        vec![
            (Packets, 9),
            (Syn, 4),
            (Opened, 4),
            (FinRstNoFlow, 1),
            (Expired, 4)
        ]
    );
}

#[test]
fn full_ring_buffer_is_counted() {
    let mut dp = load(vec![spec("192.0.2.0/24", Some(1), NetblockAction::Drop)]);
    let id = id_of(&dp, "192.0.2.0/24");
    assert_eq!(syn(&dp, "192.0.2.1", 1), Verdict::Pass);
    // More drops than the ring holds (a record is 8 bytes of header + 32 of event),
    // through the kernel's repeat loop.
    let n = DROP_EVENTS_BYTES / 40 + 500;
    let s = ip("192.0.2.1");
    let r = dp
        .test_run(&Frame::tcp(s, 2, dst_for(s), 25, f::SYN).build(), n)
        .unwrap();
    assert_eq!(r.verdict, Verdict::Drop);
    let st = dp.read_stats().unwrap();
    assert_eq!(st.get(Dropped), u64::from(n));
    let lost = st.get(RingbufFull);
    assert!(lost > 0);
    let mut read = 0u64;
    loop {
        let ev = dp.poll_drop_events(1024);
        if ev.is_empty() {
            break;
        }
        assert!(ev.iter().all(|e| e.netblock == id && e.addr == s));
        read += ev.len() as u64;
    }
    assert_eq!(read + lost, u64::from(n));
    assert_eq!(nb(&mut dp, id).stats.dropped, u64::from(n));
}
