//! Gratuitous ARP (both forms) and unsolicited NA sent with AF_PACKET from one namespace,
//! captured on the other side, and learnt by the peer's neighbour table — the failover
//! case: the peer still has the old owner's MAC and must switch to ours. Documentation
//! addresses only.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    thread::sleep,
    time::{Duration, Instant},
};

use duraplane::{
    duravip::{
        announce::{PacketSocket, Targets},
        plumb::{PlumbSpec, Plumber},
    },
    testbed::Testbed,
};

const V4: &str = "198.51.100.50";
const V6: &str = "2001:db8:1::50";
const OLD_MAC: &str = "02:00:00:00:00:99";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac_str(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    /// (op, destination MAC)
    Arp(u16, [u8; 6]),
    /// (override flag, destination MAC)
    Na(bool, [u8; 6]),
}

/// Classify a captured frame announcing our VIPs; anything else → None.
fn classify(f: &[u8], mac: &[u8]) -> Option<Seen> {
    if f.len() < 14 || &f[6..12] != mac {
        return None;
    }
    let dst: [u8; 6] = f[..6].try_into().ok()?;
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0806 if f.len() >= 42 => {
            let spa = IpAddr::from(<[u8; 4]>::try_from(&f[28..32]).ok()?);
            let tpa = IpAddr::from(<[u8; 4]>::try_from(&f[38..42]).ok()?);
            (spa == ip(V4) && tpa == ip(V4) && &f[22..28] == mac)
                .then(|| Seen::Arp(u16::from_be_bytes([f[20], f[21]]), dst))
        }
        0x86dd if f.len() >= 54 + 32 => {
            let icmp = &f[54..];
            let target = IpAddr::from(<[u8; 16]>::try_from(&icmp[8..24]).ok()?);
            (f[20] == 58 && icmp[0] == 136 && target == ip(V6) && &icmp[26..32] == mac)
                .then(|| Seen::Na(icmp[4] & 0x20 != 0, dst))
        }
        _ => None,
    }
}

struct Bed {
    tb: Testbed,
    a_mac: Vec<u8>,
    a_ix: u32,
    b_mac: Vec<u8>,
    b_ix: u32,
}

fn bed() -> Bed {
    let mut tb = Testbed::new().unwrap();
    tb.add_host("a").unwrap();
    tb.add_host("b").unwrap();
    tb.veth_pair(
        "a",
        "b",
        &["198.51.100.1/24", "2001:db8:1::1/64"],
        &["198.51.100.2/24", "2001:db8:1::2/64"],
    )
    .unwrap();
    let link = |h: &str| {
        tb.run_in(h, || Plumber::new().unwrap().link("eth0").unwrap().unwrap())
            .unwrap()
    };
    let (la, lb) = (link("a"), link("b"));
    // IPv6 on a veth is configured when the carrier comes up (after both ends are up);
    // until then multicast has no route and an NA to ff02::1 is dropped. Wait (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    for h in ["a", "b"] {
        while !tb
            .exec(
                h,
                &["ip", "-6", "route", "show", "table", "local", "dev", "eth0"],
            )
            .unwrap()
            .contains("multicast ff00::/8")
        {
            assert!(Instant::now() < deadline, "IPv6 never came up on {h}");
            sleep(Duration::from_millis(20));
        }
    }
    // The VIPs live on a (plumbed as the daemon would).
    tb.run_in("a", || {
        let mut p = Plumber::new().unwrap();
        for (addr, prefix) in [(V4, 32), (V6, 128)] {
            p.add(&PlumbSpec {
                addr: ip(addr),
                prefix,
                ifname: "eth0".into(),
            })
            .unwrap();
        }
    })
    .unwrap();
    Bed {
        tb,
        a_mac: la.mac,
        a_ix: la.index,
        b_mac: lb.mac,
        b_ix: lb.index,
    }
}

/// The peer believes the VIPs are at the old owner's MAC.
fn stale_neighbours(tb: &Testbed) {
    for v in [V4, V6] {
        tb.exec(
            "b",
            &[
                "ip", "neigh", "replace", v, "lladdr", OLD_MAC, "dev", "eth0", "nud", "stale",
            ],
        )
        .unwrap();
        let n = tb
            .exec("b", &["ip", "neigh", "show", v, "dev", "eth0"])
            .unwrap();
        assert!(n.contains(OLD_MAC), "{n}");
    }
}

/// Send with `targets` from a, capture on b until `want` is seen (bounded), and wait
/// (bounded) for b's neighbour table to hold a's MAC for both VIPs.
fn announce_and_check(bed: &Bed, targets: Targets, want: &BTreeSet<Seen>) {
    let (b_ix, a_ix) = (bed.b_ix, bed.a_ix);
    let cap = bed
        .tb
        .run_in("b", move || {
            PacketSocket::open(b_ix, libc::ETH_P_ALL as u16).unwrap()
        })
        .unwrap();
    let mac: [u8; 6] = bed.a_mac.as_slice().try_into().unwrap();
    let sent = bed
        .tb
        .run_in("a", move || {
            let s = PacketSocket::open(a_ix, 0).unwrap();
            s.announce(mac, ip(V4), &targets).unwrap() + s.announce(mac, ip(V6), &targets).unwrap()
        })
        .unwrap();
    assert_eq!(sent, want.len());
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !want.is_subset(&seen) && Instant::now() < deadline {
        if let Some(f) = cap.recv(Duration::from_millis(200)).unwrap()
            && let Some(s) = classify(&f, &bed.a_mac)
        {
            seen.insert(s);
        }
    }
    assert_eq!(&seen, want);
    let a_mac = mac_str(&bed.a_mac);
    for v in [V4, V6] {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let n = bed
                .tb
                .exec("b", &["ip", "neigh", "show", v, "dev", "eth0"])
                .unwrap();
            if n.contains(&a_mac) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "b never learnt {v} at {a_mac}: {n}"
            );
            sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn broadcast_garp_both_forms_and_na_reach_the_peer_and_update_its_cache() {
    let bed = bed();
    stale_neighbours(&bed.tb);
    let bcast = [0xff; 6];
    let want = BTreeSet::from([
        Seen::Arp(1, bcast),
        Seen::Arp(2, bcast),
        Seen::Na(true, [0x33, 0x33, 0, 0, 0, 1]),
    ]);
    announce_and_check(&bed, Targets::Broadcast, &want);
}

#[test]
fn unicast_to_known_hosts_when_arp_all_hosts_is_off() {
    let bed = bed();
    stale_neighbours(&bed.tb);
    let b_mac: [u8; 6] = bed.b_mac.as_slice().try_into().unwrap();
    let targets = Targets::Hosts(vec![
        (ip("198.51.100.2"), b_mac),
        (ip("2001:db8:1::2"), b_mac),
    ]);
    let want = BTreeSet::from([
        Seen::Arp(1, b_mac),
        Seen::Arp(2, b_mac),
        Seen::Na(true, b_mac),
    ]);
    announce_and_check(&bed, targets, &want);
}
