//! ARP and neighbour-solicitation answering for owned VIPs in `xdp_ingress`, gated by the
//! daemon's lease: BPF_PROG_TEST_RUN checks of every reply field, and a namespace test
//! where a real peer resolves the VIP through the attached program.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    time::{Duration, Instant},
};

use duraplane::{
    bpf::{
        Datapath, DatapathConfig, XdpMode,
        frames::{
            self, DST_MAC, SRC_MAC, arp, arp_request, icmpv6_checksum, neighbour_solicitation,
            with_vlan,
        },
        testrun::Verdict,
    },
    testbed::Testbed,
};
use duraplane_common::Stat::{self, *};

const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const PEER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const VIP_MAC: [u8; 6] = [0x02, 0xdd, 0, 0, 0, 0x64];

fn vip6() -> Ipv6Addr {
    "2001:db8:1::100".parse().unwrap()
}

fn peer6() -> Ipv6Addr {
    "2001:db8:1::2".parse().unwrap()
}

fn dp() -> Datapath {
    Datapath::load(&DatapathConfig::default()).unwrap()
}

fn owning(addr: IpAddr) -> Datapath {
    let mut d = dp();
    d.set_vip(addr, VIP_MAC).unwrap();
    d.renew_lease(Duration::from_secs(60)).unwrap();
    d
}

fn stats(dp: &Datapath) -> Vec<(Stat, u64)> {
    dp.read_stats().unwrap().nonzero()
}

#[test]
fn arp_request_for_owned_vip_is_answered_plain_and_vlan() {
    let dp = owning(VIP4.into());
    let req = arp_request(PEER4, VIP4);
    // The reply, field by field: Ethernet to the requester from the VIP's MAC, ARP
    // ethernet/IPv4 header, op 2, sender = VIP MAC/VIP, target = requester MAC/IP.
    let want = arp(SRC_MAC, VIP_MAC, 2, VIP_MAC, VIP4, SRC_MAC, PEER4);
    assert_eq!(&want[12..22], &[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    let (v, out) = dp.test_run_output(&req).unwrap();
    assert_eq!(v, Verdict::Tx);
    assert_eq!(out, want);
    let (v, out) = dp.test_run_output(&with_vlan(&req, 42)).unwrap();
    assert_eq!(v, Verdict::Tx);
    assert_eq!(out, with_vlan(&want, 42));
    assert_eq!(stats(&dp), vec![(Packets, 2), (ArpAnswered, 2)]);
}

#[test]
fn arp_is_passed_when_not_ours_or_not_a_request_and_dropped_when_stale() {
    let mut dp = owning(VIP4.into());
    let other = arp_request(PEER4, Ipv4Addr::new(192, 0, 2, 101));
    let gratuitous = frames::gratuitous_arp(VIP4, SRC_MAC, false);
    let reply = arp(DST_MAC, SRC_MAC, 2, SRC_MAC, PEER4, DST_MAC, VIP4);
    for f in [&other, &gratuitous, &reply] {
        assert_eq!(dp.test_run_output(f).unwrap(), (Verdict::Pass, f.clone()));
    }
    assert_eq!(stats(&dp), vec![(Packets, 3), (NonIp, 3)]);

    // Only on the configured interface (test runs arrive on lo, ifindex 1).
    let req = arp_request(PEER4, VIP4);
    dp.set_vip_on(VIP4.into(), VIP_MAC, Some(999)).unwrap();
    assert_eq!(dp.test_run(&req, 1).unwrap().verdict, Verdict::Pass);
    dp.set_vip_on(VIP4.into(), VIP_MAC, Some(1)).unwrap();
    assert_eq!(dp.test_run(&req, 1).unwrap().verdict, Verdict::Tx);

    // A lease that ran out, and a revoked one: dropped (the kernel, which may still have
    // the VIP plumbed, must not answer for a hung daemon), counted as stale.
    dp.renew_lease(Duration::from_millis(20)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(dp.test_run(&req, 1).unwrap().verdict, Verdict::Drop);
    dp.renew_lease(Duration::from_secs(60)).unwrap();
    assert_eq!(dp.test_run(&req, 1).unwrap().verdict, Verdict::Tx);
    dp.revoke_lease().unwrap();
    assert_eq!(dp.test_run(&req, 1).unwrap().verdict, Verdict::Drop);
    // A stale lease drops only requests for owned VIPs: the others still pass.
    assert_eq!(dp.test_run(&other, 1).unwrap().verdict, Verdict::Pass);
    assert_eq!(
        stats(&dp),
        vec![(Packets, 9), (NonIp, 7), (ArpAnswered, 2), (LeaseStale, 2)]
    );

    // Removed: not answered, not stale.
    dp.renew_lease(Duration::from_secs(60)).unwrap();
    assert!(dp.remove_vip(VIP4.into()).unwrap());
    assert!(!dp.remove_vip(VIP4.into()).unwrap());
    assert_eq!(dp.test_run(&req, 1).unwrap().verdict, Verdict::Pass);
    assert_eq!(dp.read_stats().unwrap().get(LeaseStale), 2);
}

#[test]
fn never_renewed_lease_answers_nothing() {
    let mut dp = dp();
    dp.set_vip(VIP4.into(), VIP_MAC).unwrap();
    assert_eq!(
        dp.test_run(&arp_request(PEER4, VIP4), 1).unwrap().verdict,
        Verdict::Drop
    );
    assert_eq!(stats(&dp), vec![(Packets, 1), (NonIp, 1), (LeaseStale, 1)]);
    assert_eq!(
        dp.vips().unwrap(),
        vec![duraplane::bpf::VipEntry {
            addr: VIP4.into(),
            mac: VIP_MAC,
            ifindex: None
        }]
    );
}

/// Checks every field of the NA `xdp_ingress` made of an NS from `PEER6`/`SRC_MAC`.
fn check_na(out: &[u8], vlan: Option<u16>) {
    let (l2, ethertype) = match vlan {
        Some(id) => {
            assert_eq!(&out[12..16], &[0x81, 0, (id >> 8) as u8, id as u8]);
            (18, &out[16..18])
        }
        None => (14, &out[12..14]),
    };
    assert_eq!(out.len(), l2 + 40 + 32, "{out:02x?}");
    assert_eq!(&out[0..6], &SRC_MAC, "to the solicitor");
    assert_eq!(&out[6..12], &VIP_MAC, "from the VIP's MAC");
    assert_eq!(ethertype, &[0x86, 0xdd]);
    let ip = &out[l2..l2 + 40];
    assert_eq!(&ip[0..4], &[0x60, 0, 0, 0]);
    assert_eq!(&ip[4..6], &32u16.to_be_bytes(), "payload length");
    assert_eq!(ip[6], 58);
    assert_eq!(ip[7], 255, "hop limit");
    assert_eq!(&ip[8..24], &vip6().octets(), "source = target");
    assert_eq!(&ip[24..40], &peer6().octets(), "destination = solicitor");
    let m = &out[l2 + 40..];
    assert_eq!(&m[0..2], &[136, 0]);
    assert_eq!(
        &m[4..8],
        &[frames::NA_SOLICITED | frames::NA_OVERRIDE, 0, 0, 0]
    );
    assert_eq!(&m[8..24], &vip6().octets());
    assert_eq!(&m[24..26], &[2, 1], "target link-layer address option");
    assert_eq!(&m[26..32], &VIP_MAC);
    let sum = u16::from_be_bytes([m[2], m[3]]);
    assert_eq!(sum, icmpv6_checksum(vip6(), peer6(), m), "ICMPv6 checksum");
}

#[test]
fn neighbour_solicitation_is_answered_with_a_checksummed_na() {
    let dp = owning(vip6().into());
    // With the source link-layer option (same size as the NA), without it (the frame
    // grows), with an extra nonce option (it shrinks), and behind a VLAN tag.
    let with_opt = neighbour_solicitation(peer6(), SRC_MAC, vip6(), true);
    let bare = neighbour_solicitation(peer6(), SRC_MAC, vip6(), false);
    let mut msg = with_opt[54..].to_vec();
    msg.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
    let group = frames::solicited_node(vip6());
    let nonce = frames::icmpv6_frame(
        frames::ipv6_multicast_mac(group),
        SRC_MAC,
        peer6(),
        group,
        &msg,
    );
    for (f, vlan) in [
        (with_opt.clone(), None),
        (bare, None),
        (nonce, None),
        (with_vlan(&with_opt, 7), Some(7)),
    ] {
        let (v, out) = dp.test_run_output(&f).unwrap();
        assert_eq!(v, Verdict::Tx);
        check_na(&out, vlan);
    }
    assert_eq!(stats(&dp), vec![(Packets, 4), (NdAnswered, 4)]);
}

#[test]
fn neighbour_solicitation_passes_when_dad_or_not_ours_and_is_dropped_when_stale() {
    let mut dp = owning(vip6().into());
    let dad = neighbour_solicitation(Ipv6Addr::UNSPECIFIED, SRC_MAC, vip6(), false);
    let other = neighbour_solicitation(peer6(), SRC_MAC, "2001:db8:1::101".parse().unwrap(), true);
    let mut low_hops = neighbour_solicitation(peer6(), SRC_MAC, vip6(), true);
    low_hops[21] = 64;
    for f in [&dad, &other, &low_hops] {
        assert_eq!(dp.test_run_output(f).unwrap(), (Verdict::Pass, f.clone()));
    }
    let ns = neighbour_solicitation(peer6(), SRC_MAC, vip6(), true);
    assert_eq!(dp.test_run(&ns, 1).unwrap().verdict, Verdict::Tx);
    dp.revoke_lease().unwrap();
    assert_eq!(dp.test_run(&ns, 1).unwrap().verdict, Verdict::Drop);
    // DAD probes and other targets still pass with a stale lease.
    for f in [&dad, &other] {
        assert_eq!(dp.test_run_output(f).unwrap(), (Verdict::Pass, f.clone()));
    }
    assert_eq!(
        stats(&dp),
        vec![(Packets, 7), (NonTcp, 6), (NdAnswered, 1), (LeaseStale, 1)]
    );
}

fn ip_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pings `addr` once from `ns` (the reply never comes: nobody owns the VIP's MAC; the
/// point is the neighbour resolution) and returns the neighbour entry for `addr`.
fn resolve(ns: &str, addr: &str, dev: &str) -> String {
    ip_in(ns, &["neigh", "flush", "dev", dev]);
    let _ = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", addr])
        .output()
        .unwrap();
    ip_in(ns, &["neigh", "show", "to", addr, "dev", dev])
}

/// A peer resolves the VIP through `xdp_ingress` attached in `mode` on the VIP side while
/// the lease is fresh, and learns nothing once it ran out. `peer_gro`: GRO on the peer veth;
/// `peer_xdp`: `xdp_ingress` (no VIPs: it passes everything) attached natively on the peer.
fn peer_resolves_vip(mode: XdpMode, peer_gro: bool, peer_xdp: bool) {
    let mut tb = Testbed::new().unwrap();
    tb.add_host("vip").unwrap();
    tb.add_host("peer").unwrap();
    let pair = tb
        .veth_pair(
            "vip",
            "peer",
            &["192.0.2.1/24", "2001:db8:1::1/64"],
            &["192.0.2.2/24", "2001:db8:1::2/64"],
        )
        .unwrap();
    if peer_gro {
        tb.enable_gro("peer", &pair.b_if).unwrap();
    }
    assert_eq!(tb.gro_enabled("peer", &pair.b_if).unwrap(), peer_gro);
    let b = pair.b_if.clone();
    let _peer_dp = peer_xdp.then(|| {
        tb.run_in("peer", move || {
            let mut d = dp();
            d.attach(&b, XdpMode::Native).unwrap();
            d
        })
        .unwrap()
    });
    let peer_ns = tb.netns("peer").unwrap().to_string();
    let (a_if, b_if) = (pair.a_if.clone(), pair.b_if.clone());
    tb.run_in("vip", move || {
        let mut dp = dp();
        dp.attach(&a_if, mode).unwrap();
        dp.set_vip(VIP4.into(), VIP_MAC).unwrap();
        dp.set_vip(vip6().into(), VIP_MAC).unwrap();
        dp.renew_lease(Duration::from_secs(60)).unwrap();
        let mac = "02:dd:00:00:00:64";
        let n4 = resolve(&peer_ns, "192.0.2.100", &b_if);
        assert!(
            n4.contains(mac),
            "{mode:?}: IPv4 neighbour: {n4:?}; stats {:?}; peer link {}",
            dp.read_stats().unwrap().nonzero(),
            ip_in(&peer_ns, &["-s", "-d", "link", "show", "dev", &b_if])
        );
        let n6 = resolve(&peer_ns, "2001:db8:1::100", &b_if);
        assert!(
            n6.contains(mac),
            "{mode:?}: IPv6 neighbour (NA checksum accepted): {n6:?}"
        );
        let st = dp.read_stats().unwrap();
        assert!(
            st.get(ArpAnswered) >= 1 && st.get(NdAnswered) >= 1,
            "{:?}",
            st.nonzero()
        );

        // The lease runs out: the peer learns nothing any more.
        dp.renew_lease(Duration::from_millis(100)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let n4 = resolve(&peer_ns, "192.0.2.100", &b_if);
        assert!(!n4.contains(mac), "IPv4 neighbour after expiry: {n4:?}");
        let n6 = resolve(&peer_ns, "2001:db8:1::100", &b_if);
        assert!(!n6.contains(mac), "IPv6 neighbour after expiry: {n6:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while dp.read_stats().unwrap().get(LeaseStale) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(dp.read_stats().unwrap().get(LeaseStale) >= 2);
    })
    .unwrap();
}

#[test]
fn peer_resolves_the_vip_while_the_lease_is_fresh_only() {
    // Generic mode: the answer goes out through the stack's transmit path, any veth peer.
    peer_resolves_vip(XdpMode::Generic, false, false);
}

#[test]
fn native_mode_answers_reach_a_veth_peer_that_runs_xdp() {
    // Native mode on a veth: XDP_TX puts the answer on the peer's XDP ring, and the kernel
    // (veth_xdp_flush) schedules the peer's NAPI for it only when the peer has an XDP
    // program of its own. GRO on the peer is not enough for XDP_TX on 6.18: the frame is
    // queued (xdp:xdp_bulk_tx sent=1) and never delivered. docs/duravip.md, "Native XDP on
    // veth".
    peer_resolves_vip(XdpMode::Native, false, true);
}
