//! Announcements at the NIC: gratuitous ARP (request and reply forms) and an IPv6
//! unsolicited NA transmitted by `Datapath::announce` — XDP live frames, and the AF_PACKET
//! fallback — arrive at a peer namespace, whose neighbour table learns the VIP's MAC.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use duraplane::{
    bpf::{AnnounceMethod, BpfError, Datapath, DatapathConfig, frames},
    testbed::{ProcessGuard, Stream, Testbed},
};

const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const MAC: [u8; 6] = [0x02, 0xdd, 0, 0, 0, 0x64];
const MAC_S: &str = "02:dd:00:00:00:64";

fn vip6() -> Ipv6Addr {
    "2001:db8:1::100".parse().unwrap()
}

fn capture(tb: &Testbed, ifname: &str) -> ProcessGuard {
    let p = tb
        .spawn(
            "peer",
            &[
                "tcpdump",
                "-i",
                ifname,
                "-n",
                "-e",
                "-l",
                "-p",
                "--immediate-mode",
                "-s",
                "128",
                "-B",
                "8192",
                "-vv",
                "arp or icmp6",
            ],
        )
        .unwrap();
    assert!(
        p.wait_for_line(Stream::Stderr, Duration::from_secs(10), |l| l
            .contains("listening on")),
        "tcpdump did not start: {:?}",
        p.lines(Stream::Stderr)
    );
    p
}

fn wait_lines(p: &ProcessGuard, pats: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = p.lines(Stream::Stdout);
        let all = pats.iter().all(|pat| lines.iter().any(|l| l.contains(pat)));
        if all || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn announce_and_check(method: AnnounceMethod) {
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
    // XDP_TX into a veth reaches the peer only if the peer runs NAPI (GRO).
    tb.enable_gro("peer", &pair.b_if).unwrap();
    // The peer creates an IPv4 entry from a gratuitous ARP (arp_accept); for IPv6 it holds
    // a stale entry with the previous owner's MAC, which the override NA must replace
    // (what matters after a failover; Linux hosts do not create entries from untracked NAs).
    let b = pair.b_if.clone();
    // locktime 0: the entry was just written; the default (1 s) would keep it.
    for key in [
        format!("net.ipv4.conf.{b}.arp_accept=1"),
        format!("net.ipv6.neigh.{b}.locktime=0"),
    ] {
        tb.exec("peer", &["sysctl", "-qw", &key]).unwrap();
    }
    tb.exec(
        "peer",
        &[
            "ip",
            "neigh",
            "add",
            "2001:db8:1::100",
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            &b,
            "nud",
            "stale",
        ],
    )
    .unwrap();
    let cap = capture(&tb, &b);
    let a_if = pair.a_if.clone();
    let peer_ns = tb.netns("peer").unwrap().to_string();
    let b2 = b.clone();
    // Announce like a daemon does after a takeover: a few rounds 200 ms apart (here until
    // the peer's IPv6 entry shows the new MAC, at most 5 rounds). A single NA right after
    // the namespaces were built was sometimes not applied by the peer.
    let (got, rounds) = tb
        .run_in("vip", move || -> Result<(AnnounceMethod, u32), BpfError> {
            let ifindex = nix::net::if_::if_nametoindex(a_if.as_str()).unwrap();
            let mut dp = Datapath::load(&DatapathConfig::default())?;
            dp.prefer_packet_announce(method == AnnounceMethod::Packet);
            let frames = [
                frames::gratuitous_arp(VIP4, MAC, false),
                frames::gratuitous_arp(VIP4, MAC, true),
                frames::unsolicited_na(vip6(), MAC),
            ];
            let mut got = method;
            for round in 1..=5 {
                got = dp.announce(ifindex, &frames, 1)?;
                std::thread::sleep(Duration::from_millis(200));
                let out = std::process::Command::new("ip")
                    .args([
                        "-n",
                        &peer_ns,
                        "neigh",
                        "show",
                        "2001:db8:1::100",
                        "dev",
                        &b2,
                    ])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&out.stdout).contains(MAC_S) {
                    return Ok((got, round));
                }
            }
            Ok((got, 5))
        })
        .unwrap()
        .unwrap();
    eprintln!("{method:?}: IPv6 entry updated after {rounds} announce round(s)");
    assert_eq!(got, method);
    let lines = wait_lines(
        &cap,
        &[
            "Request who-has 192.0.2.100 tell 192.0.2.100",
            "Reply 192.0.2.100 is-at 02:dd:00:00:00:64",
            "tgt is 2001:db8:1::100, Flags [override]",
        ],
    );
    let text = lines.join("\n");
    for pat in [
        "Request who-has 192.0.2.100 tell 192.0.2.100",
        "Reply 192.0.2.100 is-at 02:dd:00:00:00:64",
        "tgt is 2001:db8:1::100, Flags [override]",
    ] {
        assert!(
            text.contains(pat),
            "{method:?}: missing {pat:?} in:\n{text}"
        );
    }
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with_time() && l.contains(MAC_S) || !l.contains("192.0.2.100")),
        "{text}"
    );
    let n = tb
        .exec("peer", &["ip", "neigh", "show", "dev", &b])
        .unwrap();
    let has = |addr: &str| {
        n.lines()
            .any(|l| l.starts_with(&format!("{addr} ")) && l.contains(MAC_S))
    };
    assert!(
        has("192.0.2.100"),
        "{method:?}: IPv4 neighbour not learned:\n{n}"
    );
    assert!(
        has("2001:db8:1::100"),
        "{method:?}: IPv6 neighbour not learned:\n{n}\n{text}"
    );
}

trait TimeStamped {
    fn starts_with_time(&self) -> bool;
}

impl TimeStamped for String {
    fn starts_with_time(&self) -> bool {
        self.as_bytes().first().is_some_and(u8::is_ascii_digit)
    }
}

#[test]
fn live_frames_reach_the_peer_and_teach_its_neighbour_table() {
    announce_and_check(AnnounceMethod::LiveFrames);
}

#[test]
fn af_packet_fallback_reaches_the_peer_too() {
    announce_and_check(AnnounceMethod::Packet);
}

#[test]
fn bad_frames_are_refused_before_any_syscall() {
    let mut dp = Datapath::load(&DatapathConfig::default()).unwrap();
    match dp.announce(1, &[vec![0u8; 10]], 1) {
        Err(BpfError::AnnounceFrame { frame_len: 10 }) => {}
        other => panic!("{other:?}"),
    }
}
