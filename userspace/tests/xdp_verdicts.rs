//! `xdp_ingress` verdicts and counters, run in the real kernel with BPF_PROG_TEST_RUN.
//! Every test loads its own program and maps, so tests are independent and parallel.

use std::net::IpAddr;

use duraplane::bpf::{
    BpfError, Datapath, DatapathConfig, NetblockCounters,
    frames::{Frame, Ipv6Ext, arp_request, tcp_flags as f},
    testrun::Verdict,
};
use duraplane_common::Stat::{self, *};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn load(cfg: DatapathConfig) -> Datapath {
    Datapath::load(&cfg).unwrap_or_else(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            msg += &format!("\n  caused by: {c}");
            src = c.source();
        }
        panic!("{msg}")
    })
}

fn dp() -> Datapath {
    load(DatapathConfig::default())
}

fn with_flow_capacity(flow_capacity: u32) -> Datapath {
    load(DatapathConfig {
        flow_capacity,
        ..DatapathConfig::default()
    })
}

fn run(dp: &Datapath, frame: &Frame) -> Verdict {
    dp.test_run(&frame.build(), 1).unwrap().verdict
}

fn stats(dp: &Datapath) -> Vec<(Stat, u64)> {
    dp.read_stats().unwrap().nonzero()
}

fn nb0(dp: &mut Datapath) -> NetblockCounters {
    dp.read_netblocks()
        .unwrap()
        .into_iter()
        .find(|n| n.id == 0)
        .unwrap()
}

/// After `case`: the nonzero counters are `want`, and netblock 0 has `local` open
/// connections.
#[track_caller]
fn assert_counts(dp: &mut Datapath, case: &str, want: &[(Stat, u64)], local: u64) {
    assert_eq!(stats(dp), want, "{case}: counters");
    assert_eq!(
        nb0(dp).local,
        local,
        "{case}: open connections of netblock 0"
    );
}

/// A SYN, the FIN or RST that closes its flow, and a second one that finds no flow.
const CLOSED_ONCE: [(Stat, u64); 5] = [
    (Packets, 3),
    (Syn, 1),
    (Opened, 1),
    (FinRstClosed, 1),
    (FinRstNoFlow, 1),
];

/// Client/server pairs for both families.
fn pairs() -> [(IpAddr, IpAddr); 2] {
    [
        (ip("192.0.2.10"), ip("203.0.113.1")),
        (ip("2001:db8:1::10"), ip("2001:db8:ffff::1")),
    ]
}

/// The four encapsulations every basic path is checked with.
fn variants() -> Vec<(IpAddr, IpAddr, Option<u16>)> {
    pairs()
        .into_iter()
        .flat_map(|(s, d)| [(s, d, None), (s, d, Some(42))])
        .collect()
}

fn tcp(s: IpAddr, d: IpAddr, vlan: Option<u16>, sport: u16, dport: u16, flags: u8) -> Frame {
    let fr = Frame::tcp(s, sport, d, dport, flags);
    match vlan {
        Some(v) => fr.vlan(v),
        None => fr,
    }
}

#[test]
fn syn_is_counted_v4_v6_with_and_without_vlan() {
    for (s, d, vlan) in variants() {
        let mut dp = dp();
        assert_eq!(run(&dp, &tcp(s, d, vlan, 40000, 25, f::SYN)), Verdict::Pass);
        assert_eq!(
            stats(&dp),
            vec![(Packets, 1), (Syn, 1), (Opened, 1)],
            "{s} vlan {vlan:?}"
        );
        let flows = dp.read_flows().unwrap();
        assert_eq!(flows.len(), 1);
        assert_eq!(
            (flows[0].src, flows[0].sport, flows[0].dst, flows[0].dport),
            (s, 40000, d, 25)
        );
        assert_eq!(flows[0].netblock, 0);
        assert!(flows[0].opened_ns > 0);
        let src = dp.read_sources().unwrap();
        assert_eq!(src.len(), 1);
        assert_eq!(
            (src[0].addr, src[0].opened, src[0].closed, src[0].current),
            (s, 1, 0, 1)
        );
        let n = nb0(&mut dp);
        assert_eq!(n.local, 1);
        assert_eq!((n.stats.syn, n.stats.opened, n.stats.closed), (1, 1, 0));
    }
}

#[test]
fn synack_ack_and_data_are_not_counted() {
    for (s, d, vlan) in variants() {
        let mut dp = dp();
        for flags in [f::SYN | f::ACK, f::ACK, f::PSH | f::ACK] {
            let fr = tcp(s, d, vlan, 40000, 25, flags).payload(b"EHLO x\r\n");
            assert_eq!(run(&dp, &fr), Verdict::Pass);
        }
        // The fast path: passed after parsing, with no map access, so not even `packets`.
        assert_eq!(stats(&dp), vec![], "{s} vlan {vlan:?}");
        assert!(dp.read_flows().unwrap().is_empty());
        assert!(dp.read_sources().unwrap().is_empty());
        assert_eq!(nb0(&mut dp).local, 0);
    }
}

#[test]
fn fin_closes_exactly_once() {
    for (s, d, vlan) in variants() {
        let mut dp = dp();
        run(&dp, &tcp(s, d, vlan, 40001, 587, f::SYN));
        assert_eq!(nb0(&mut dp).local, 1);
        assert_eq!(
            run(&dp, &tcp(s, d, vlan, 40001, 587, f::FIN | f::ACK)),
            Verdict::Pass
        );
        // Retransmitted FIN: nothing left to close.
        assert_eq!(
            run(&dp, &tcp(s, d, vlan, 40001, 587, f::FIN | f::ACK)),
            Verdict::Pass
        );
        let case = format!("FIN {s} vlan {vlan:?}");
        assert_counts(&mut dp, &case, &CLOSED_ONCE, 0);
        let n = nb0(&mut dp);
        assert_eq!((n.stats.opened, n.stats.closed), (1, 1), "{case}");
        let src = dp.read_sources().unwrap();
        assert_eq!((src[0].opened, src[0].closed, src[0].current), (1, 1, 0));
        assert!(dp.read_flows().unwrap().is_empty());
    }
}

#[test]
fn rst_closes_exactly_once() {
    for (s, d, vlan) in variants() {
        let mut dp = dp();
        run(&dp, &tcp(s, d, vlan, 40002, 465, f::SYN));
        run(&dp, &tcp(s, d, vlan, 40002, 465, f::RST));
        run(&dp, &tcp(s, d, vlan, 40002, 465, f::RST | f::ACK));
        assert_counts(&mut dp, &format!("RST {s} vlan {vlan:?}"), &CLOSED_ONCE, 0);
    }
}

#[test]
fn fin_without_flow_changes_nothing() {
    let mut dp = dp();
    let (s, d) = pairs()[0];
    run(&dp, &tcp(s, d, None, 1, 25, f::SYN));
    // Same client, other port pair: no flow.
    run(&dp, &tcp(s, d, None, 2, 25, f::FIN));
    assert_counts(
        &mut dp,
        "FIN of another port pair",
        &[(Packets, 2), (Syn, 1), (Opened, 1), (FinRstNoFlow, 1)],
        1,
    );
}

#[test]
fn retransmitted_syn_is_counted_once() {
    for (s, d, vlan) in variants() {
        let mut dp = dp();
        let syn = tcp(s, d, vlan, 40003, 25, f::SYN).build();
        assert_eq!(dp.test_run(&syn, 1).unwrap().verdict, Verdict::Pass);
        // Two more, through the kernel's repeat loop.
        assert_eq!(dp.test_run(&syn, 2).unwrap().verdict, Verdict::Pass);
        assert_eq!(
            stats(&dp),
            vec![(Packets, 3), (Syn, 3), (SynRetransmit, 2), (Opened, 1)]
        );
        let n = nb0(&mut dp);
        assert_eq!((n.local, n.stats.syn, n.stats.opened), (1, 1, 1));
        assert_eq!(dp.read_sources().unwrap()[0].opened, 1);
    }
}

#[test]
fn two_connections_from_one_source() {
    let mut dp = dp();
    let (s, d) = pairs()[1];
    run(&dp, &tcp(s, d, None, 1000, 25, f::SYN));
    run(&dp, &tcp(s, d, None, 1001, 25, f::SYN));
    run(&dp, &tcp(s, d, None, 1000, 25, f::FIN));
    let src = dp.read_sources().unwrap();
    assert_eq!(src.len(), 1);
    assert_eq!((src[0].opened, src[0].closed, src[0].current), (2, 1, 1));
    assert_eq!(nb0(&mut dp).local, 1);
}

#[test]
fn uncounted_ports_pass_untouched() {
    for (s, d, vlan) in variants() {
        let mut dp = dp();
        for flags in [f::SYN, f::FIN, f::RST, f::ACK] {
            assert_eq!(run(&dp, &tcp(s, d, vlan, 40000, 80, flags)), Verdict::Pass);
        }
        // The ACK takes the fast path (uncounted); SYN, FIN and RST are looked at.
        assert_eq!(stats(&dp), vec![(Packets, 3), (UncountedPort, 3)]);
        assert!(dp.read_flows().unwrap().is_empty());
    }
}

#[test]
fn configured_ports_replace_the_default_set() {
    let mut dp = load(DatapathConfig {
        ports: vec![2525],
        ..DatapathConfig::default()
    });
    let (s, d) = pairs()[0];
    run(&dp, &tcp(s, d, None, 1, 25, f::SYN));
    run(&dp, &tcp(s, d, None, 1, 2525, f::SYN));
    assert_eq!(
        stats(&dp),
        vec![(Packets, 2), (UncountedPort, 1), (Syn, 1), (Opened, 1)]
    );
    // Reload: 25 counted again, 2525 not.
    dp.set_ports(&[25]).unwrap();
    run(&dp, &tcp(s, d, None, 2, 25, f::SYN));
    run(&dp, &tcp(s, d, None, 2, 2525, f::SYN));
    assert_eq!(
        stats(&dp),
        vec![(Packets, 4), (UncountedPort, 2), (Syn, 2), (Opened, 2)]
    );
}

#[test]
fn non_tcp_passes() {
    let mut dp = dp();
    for (s, d) in pairs() {
        assert_eq!(run(&dp, &Frame::udp(s, 53, d, 25)), Verdict::Pass);
        assert_eq!(run(&dp, &Frame::udp(s, 53, d, 25).vlan(3)), Verdict::Pass);
        assert_eq!(run(&dp, &Frame::icmp_echo(s, d)), Verdict::Pass);
    }
    // IPv6 with an extension header leading to UDP.
    let (s6, d6) = pairs()[1];
    assert_eq!(
        run(&dp, &Frame::udp(s6, 1, d6, 25).ipv6_ext(Ipv6Ext::HopByHop)),
        Verdict::Pass
    );
    assert_eq!(stats(&dp), vec![(Packets, 7), (NonTcp, 7)]);

    let arp = arp_request("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
    assert_eq!(dp.test_run(&arp, 1).unwrap().verdict, Verdict::Pass);
    // ARP behind an 802.1Q tag.
    let mut tagged = arp[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    tagged.extend_from_slice(&arp[12..]);
    assert_eq!(dp.test_run(&tagged, 1).unwrap().verdict, Verdict::Pass);
    assert_eq!(stats(&dp), vec![(Packets, 9), (NonIp, 2), (NonTcp, 7)]);
    assert!(dp.read_flows().unwrap().is_empty());
    assert_eq!(nb0(&mut dp).local, 0);
}

#[test]
fn ipv4_options_are_skipped() {
    let mut dp = dp();
    let (s, d) = pairs()[0];
    // 4 bytes (NOPs), 8 bytes, and the maximum 40 bytes (IHL 15).
    for (i, opts) in [vec![1u8; 4], vec![1u8; 8], vec![1u8; 40]]
        .iter()
        .enumerate()
    {
        for vlan in [None, Some(9)] {
            let sport = 5000 + i as u16 * 2 + u16::from(vlan.is_some());
            let fr = tcp(s, d, vlan, sport, 25, f::SYN).ipv4_options(opts);
            assert_eq!(run(&dp, &fr), Verdict::Pass);
        }
    }
    assert_eq!(stats(&dp), vec![(Packets, 6), (Syn, 6), (Opened, 6)]);
    let mut ports: Vec<u16> = dp.read_flows().unwrap().iter().map(|f| f.sport).collect();
    ports.sort();
    assert_eq!(ports, vec![5000, 5001, 5002, 5003, 5004, 5005]);
    assert!(dp.read_flows().unwrap().iter().all(|f| f.dport == 25));
    // The FIN with options finds its flow.
    run(
        &dp,
        &tcp(s, d, None, 5004, 25, f::FIN).ipv4_options(&[1u8; 40]),
    );
    assert_eq!(nb0(&mut dp).local, 5);
}

#[test]
fn malformed_ip_headers_pass() {
    let dp = dp();
    let (s, d) = pairs()[0];
    let mut v4 = tcp(s, d, None, 1, 25, f::SYN).build();
    v4[14] = 0x44; // IHL 4 (< 5)
    assert_eq!(dp.test_run(&v4, 1).unwrap().verdict, Verdict::Pass);
    v4[14] = 0x55; // version 5
    assert_eq!(dp.test_run(&v4, 1).unwrap().verdict, Verdict::Pass);
    let (s6, d6) = pairs()[1];
    let mut v6 = tcp(s6, d6, None, 1, 25, f::SYN).build();
    v6[14] = 0x40; // version 4 in an IPv6 ethertype
    assert_eq!(dp.test_run(&v6, 1).unwrap().verdict, Verdict::Pass);
    // IHL says 60 bytes but the frame ends after 20 + TCP: truncated, not a crash.
    let mut long_ihl = tcp(s, d, None, 1, 25, f::SYN).build();
    long_ihl[14] = 0x4f;
    assert_eq!(dp.test_run(&long_ihl, 1).unwrap().verdict, Verdict::Pass);
    assert_eq!(
        stats(&dp),
        vec![(Packets, 4), (Truncated, 1), (Malformed, 3)]
    );
}

#[test]
fn fragments_pass_uncounted() {
    let mut dp = dp();
    let (s, d) = pairs()[0];
    // First fragment with MF, middle fragment, last fragment.
    for (off, more) in [(0, true), (185, true), (370, false)] {
        let fr = tcp(s, d, None, 1, 25, f::SYN).ipv4_fragment(off, more);
        assert_eq!(run(&dp, &fr), Verdict::Pass);
    }
    let (s6, d6) = pairs()[1];
    for (off, more) in [(0, true), (185, true), (370, false)] {
        let fr =
            tcp(s6, d6, Some(4), 1, 25, f::SYN).ipv6_ext(Ipv6Ext::Fragment { offset: off, more });
        assert_eq!(run(&dp, &fr), Verdict::Pass);
    }
    assert_eq!(stats(&dp), vec![(Packets, 6), (Fragments, 6)]);
    assert!(dp.read_flows().unwrap().is_empty());
    // An IPv6 atomic fragment (offset 0, no MF) is a whole packet: counted.
    let atomic = tcp(s6, d6, None, 2, 25, f::SYN).ipv6_ext(Ipv6Ext::Fragment {
        offset: 0,
        more: false,
    });
    run(&dp, &atomic);
    assert_counts(
        &mut dp,
        "IPv6 atomic fragment",
        &[(Packets, 7), (Fragments, 6), (Syn, 1), (Opened, 1)],
        1,
    );
}

#[test]
fn ipv6_extension_headers_up_to_three_are_walked() {
    let mut dp = dp();
    let (s, d) = pairs()[1];
    let chains: [&[Ipv6Ext]; 3] = [
        &[Ipv6Ext::HopByHop],
        &[Ipv6Ext::HopByHop, Ipv6Ext::DestOpts],
        &[Ipv6Ext::HopByHop, Ipv6Ext::Routing, Ipv6Ext::DestOpts],
    ];
    for (i, chain) in chains.iter().enumerate() {
        let mut fr = tcp(s, d, None, 100 + i as u16, 25, f::SYN);
        for e in *chain {
            fr = fr.ipv6_ext(*e);
        }
        assert_eq!(run(&dp, &fr), Verdict::Pass);
    }
    assert_eq!(stats(&dp), vec![(Packets, 3), (Syn, 3), (Opened, 3)]);
    // Four extension headers: beyond the bound, passed uncounted.
    let mut fr = tcp(s, d, None, 200, 25, f::SYN);
    for e in [
        Ipv6Ext::HopByHop,
        Ipv6Ext::Routing,
        Ipv6Ext::DestOpts,
        Ipv6Ext::DestOpts,
    ] {
        fr = fr.ipv6_ext(e);
    }
    assert_eq!(run(&dp, &fr), Verdict::Pass);
    assert_counts(
        &mut dp,
        "four extension headers",
        &[(Packets, 4), (Ipv6ExtUnsupported, 1), (Syn, 3), (Opened, 3)],
        3,
    );
}

#[test]
fn truncated_headers_at_every_length_pass() {
    let (s4, d4) = pairs()[0];
    let (s6, d6) = pairs()[1];
    let frames = [
        tcp(s4, d4, None, 1, 25, f::SYN),
        tcp(s4, d4, Some(7), 1, 25, f::SYN),
        tcp(s4, d4, None, 1, 25, f::SYN).ipv4_options(&[1; 12]),
        tcp(s6, d6, None, 1, 25, f::SYN),
        tcp(s6, d6, Some(7), 1, 25, f::SYN),
        tcp(s6, d6, Some(7), 1, 25, f::SYN)
            .ipv6_ext(Ipv6Ext::HopByHop)
            .ipv6_ext(Ipv6Ext::Fragment {
                offset: 0,
                more: false,
            }),
    ];
    for fr in &frames {
        let mut dp = dp();
        let full = fr.build();
        let hlen = fr.header_len();
        assert_eq!(hlen, full.len());
        // Below an Ethernet header the kernel's test run refuses the frame (and no driver
        // delivers one); the verifier guarantees those lengths are safe anyway.
        for len in 0..14 {
            match dp.test_run(&full[..len], 1) {
                Err(BpfError::TestRunFrame { frame_len, .. }) => assert_eq!(frame_len, len),
                other => panic!("length {len}: {other:?}"),
            }
        }
        assert_eq!(stats(&dp), vec![]);
        for len in 14..hlen {
            let r = dp.test_run(&full[..len], 1).unwrap();
            assert_eq!(r.verdict, Verdict::Pass, "length {len} of {hlen}");
        }
        let n = (hlen - 14) as u64;
        assert_eq!(stats(&dp), vec![(Packets, n), (Truncated, n)], "{fr:?}");
        assert!(dp.read_flows().unwrap().is_empty());
        // The complete header is counted.
        assert_eq!(dp.test_run(&full, 1).unwrap().verdict, Verdict::Pass);
        assert_counts(
            &mut dp,
            &format!("complete header of {fr:?}"),
            &[(Packets, n + 1), (Truncated, n), (Syn, 1), (Opened, 1)],
            1,
        );
    }
}

#[test]
fn flow_map_full_passes_uncounted_and_says_so() {
    // One set of 8 ways: every flow hashes into it, so "full" is exact here (with more
    // sets, a SYN whose own set is full is counted the same way).
    const CAP: u32 = 8;
    let mut dp = with_flow_capacity(CAP);
    let (s, d) = pairs()[0];
    for p in 0..CAP as u16 {
        assert_eq!(
            run(&dp, &tcp(s, d, None, 10_000 + p, 25, f::SYN)),
            Verdict::Pass
        );
    }
    assert_eq!(dp.read_flows().unwrap().len(), CAP as usize);
    // One more (twice): passes, uncounted, counted as flow_map_full.
    for _ in 0..2 {
        assert_eq!(
            run(&dp, &tcp(s, d, None, 20_000, 25, f::SYN)),
            Verdict::Pass
        );
    }
    let c = u64::from(CAP);
    assert_counts(
        &mut dp,
        "one SYN beyond a full table, twice",
        &[
            (Packets, c + 2),
            (Syn, c + 2),
            (Opened, c),
            (FlowMapFull, 2),
        ],
        c,
    );
    // Its FIN finds nothing to close.
    run(&dp, &tcp(s, d, None, 20_000, 25, f::FIN));
    // After one close there is room again.
    run(&dp, &tcp(s, d, None, 10_000, 25, f::FIN));
    run(&dp, &tcp(s, d, None, 20_000, 25, f::SYN));
    assert_counts(
        &mut dp,
        "a SYN after one close",
        &[
            (Packets, c + 5),
            (Syn, c + 3),
            (Opened, c + 1),
            (FinRstClosed, 1),
            (FinRstNoFlow, 1),
            (FlowMapFull, 2),
        ],
        c,
    );
}

#[test]
fn source_table_full_is_counted_and_active_sources_stay() {
    const SOURCES: u32 = 8;
    let mut dp = load(DatapathConfig {
        source_capacity: SOURCES,
        ..DatapathConfig::default()
    });
    let d = ip("203.0.113.1");
    // Far more distinct sources than the table holds, all with an open connection: the
    // first 8 keep their slots (active sources are never evicted), the rest are counted
    // as source_map_insert_failed at open and as source_evicted at close.
    let n = 200u16;
    for i in 0..n {
        let s = IpAddr::from([198, 51, 100, i as u8]);
        run(&dp, &tcp(s, d, None, 1000 + i, 25, f::SYN));
    }
    for i in 0..n {
        let s = IpAddr::from([198, 51, 100, i as u8]);
        run(&dp, &tcp(s, d, None, 1000 + i, 25, f::FIN));
    }
    let st = dp.read_stats().unwrap();
    let sources = dp.read_sources().unwrap();
    assert!(sources.len() <= 2 * SOURCES as usize, "{}", sources.len());
    // Every close is either recorded on a live source entry or counted as evicted.
    let closed_on_entries: u64 = sources.iter().map(|s| s.closed).sum();
    assert_eq!(sources.len(), SOURCES as usize);
    assert!(sources.iter().all(|s| s.current == 0 && s.opened == 1));
    assert_eq!(
        st.get(SourceMapInsertFailed),
        u64::from(n) - u64::from(SOURCES)
    );
    assert_eq!(st.get(SourceEvicted), st.get(SourceMapInsertFailed));
    assert_eq!(closed_on_entries + st.get(SourceEvicted), u64::from(n));
    assert_eq!(st.get(FinRstClosed), u64::from(n));
    assert_eq!(st.get(Opened), u64::from(n));
    assert_eq!(nb0(&mut dp).local, 0);
    // Idle sources are re-used: a new source gets a slot again.
    run(&dp, &tcp(ip("192.0.2.9"), d, None, 999, 25, f::SYN));
    let sources = dp.read_sources().unwrap();
    assert!(
        sources
            .iter()
            .any(|s| s.addr == ip("192.0.2.9") && s.current == 1)
    );
    assert_eq!(nb0(&mut dp).local, 1);
}

#[test]
fn full_table_with_second_choice_sets_opens_and_closes_each_flow_once() {
    // 8 sets of 8 ways filled to the brim, both families: flows overflow into their
    // second-choice set, and whatever finds both sets full is counted. Every opened flow
    // is found again (retransmit), closed exactly once, and the table empties completely.
    const CAP: u32 = 64;
    let mut dp = with_flow_capacity(CAP);
    let mut total = 0u64;
    for (s, d) in pairs() {
        for p in 0..CAP as u16 {
            run(&dp, &tcp(s, d, None, 10_000 + p, 25, f::SYN));
        }
        // Retransmits of every one of them, wherever it landed.
        for p in 0..CAP as u16 {
            run(&dp, &tcp(s, d, None, 10_000 + p, 25, f::SYN));
        }
        total += u64::from(CAP);
    }
    let st = dp.read_stats().unwrap();
    let opened = st.get(Opened);
    let full = st.get(FlowMapFull);
    assert!(opened >= total / 2, "{:?}", st.nonzero());
    // A flow that did not fit is tried again by its retransmit (and may fit by then only
    // if something closed: nothing did).
    assert_eq!(opened + full / 2, total, "{:?}", st.nonzero());
    assert_eq!(full % 2, 0);
    assert_eq!(st.get(SynRetransmit), opened);
    assert_eq!(dp.read_flows().unwrap().len() as u64, opened);
    assert_eq!(nb0(&mut dp).local, opened);
    for (s, d) in pairs() {
        for p in 0..CAP as u16 {
            run(&dp, &tcp(s, d, None, 10_000 + p, 25, f::RST));
            run(&dp, &tcp(s, d, None, 10_000 + p, 25, f::RST));
        }
    }
    let st = dp.read_stats().unwrap();
    assert_eq!(st.get(FinRstClosed), opened);
    assert_eq!(st.get(FinRstNoFlow), 2 * total - opened);
    assert!(dp.read_flows().unwrap().is_empty());
    assert_eq!(nb0(&mut dp).local, 0);
    assert!(dp.read_sources().unwrap().iter().all(|s| s.current == 0));
    // Emptied: the same flows fit again as they did the first time or better.
    for (s, d) in pairs() {
        for p in 0..CAP as u16 {
            run(&dp, &tcp(s, d, None, 10_000 + p, 25, f::SYN));
        }
    }
    assert!(dp.read_stats().unwrap().get(Opened) - opened >= total / 2);
}
