//! DuraVIP at the NIC, on a real daemon with `xdp_ingress` attached to its Topology
//! interface (one corosync node plus an observer namespace on the same bridge):
//! - the observer's ARP requests for an owned VIP are answered; SIGSTOP the daemon and,
//!   once its lease has run out, they are not (the kernel still has the VIP plumbed: the
//!   program drops them); SIGCONT and they are answered again;
//! - a reload (SIGHUP) re-announces the owned VIP;
//! - kill -9 the daemon: its node stops answering (the reaper unplumbs the VIP);
//! - many declared VIPs are all plumbed, put into the NIC's VIP table and shown; the
//!   datapath pieces handle the full 4,096.

mod cluster_support;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use cluster_support::{Cluster, VIP_TOPOLOGY, wait_until};
use duraplane::{
    bpf::{Datapath, DatapathConfig, XdpMode},
    config::model::{Cidr, Topology},
    duravip::{
        announce::{PacketSocket, Targets, frames},
        plumb::{Plumber, Reconciler, Trigger},
    },
    testbed::Testbed,
};
use nix::sys::signal::Signal;

const OBS: &str = "obs";
const OBS_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

fn binding(k: usize, addr: &str) -> String {
    cluster_support::binding(k, addr, None)
}

/// One corosync node with its daemon, and the observer on the same bridge.
struct Node {
    c: Cluster,
}

impl Node {
    fn start(bindings: &str) -> Node {
        let bindings = bindings.to_owned();
        let mut c = Cluster::builder(1)
            .cluster(|_| format!("view_mature_time = 1\nif_check_interval = 1\n{VIP_TOPOLOGY}"))
            .top(move |_| bindings.clone())
            .duraplane(|_| "interfaces = ( eth0 )\nxdp_mode = generic\n".to_owned())
            .up();
        c.add_peer(OBS, &["192.0.2.100/24", "198.51.100.200/24"]);
        c.start_daemons();
        Node { c }
    }

    fn ask(&self, cmd: &str) -> String {
        self.c.ask(0, cmd)
    }

    /// Declares `bindings` instead in the node's configuration file (for a reload).
    fn rewrite_bindings(&mut self, bindings: String) {
        self.c.config.top = Box::new(move |_| bindings.clone());
        self.c.write_config(0);
    }

    /// Tagged DuraVIP addresses plumbed on the node's eth0.
    fn plumbed(&self) -> Vec<String> {
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            let o = self
                .c
                .tb
                .exec("node1", &["ip", fam, "-o", "addr", "show", "dev", "eth0"])
                .unwrap_or_default();
            for l in o.lines() {
                let mut w = l.split_whitespace();
                if w.any(|x| x == "inet" || x == "inet6")
                    && let Some(a) = w.next()
                {
                    let a = a.split('/').next().unwrap_or_default();
                    if a.starts_with("198.51.100.") || a.starts_with("2001:db8:1:") {
                        out.push(a.to_owned());
                    }
                }
            }
        }
        out
    }

    fn node_mac(&self) -> [u8; 6] {
        mac(&self.c.tb, "node1")
    }

    /// Sends ARP requests for `vip` from the observer; the sender MAC of the first reply.
    fn arp(&self, vip: Ipv4Addr) -> Option<[u8; 6]> {
        let obs_mac = mac(&self.c.tb, OBS);
        self.c
            .tb
            .run_in(OBS, move || {
                // SAFETY: a NUL-terminated name.
                let ix = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
                let s = PacketSocket::open(ix, 0x0806).expect("packet socket");
                let req = arp_request(obs_mac, OBS_V4, vip);
                for _ in 0..3 {
                    s.send(&req).expect("send ARP request");
                    let until = Instant::now() + Duration::from_millis(200);
                    while let Some(left) = until.checked_duration_since(Instant::now()) {
                        let Ok(Some(f)) = s.recv(left) else { break };
                        if f.len() >= 42
                            && f[12..14] == [0x08, 0x06]
                            && f[20..22] == [0, 2]
                            && f[28..32] == vip.octets()
                            && f[38..42] == OBS_V4.octets()
                        {
                            let mut m = [0u8; 6];
                            m.copy_from_slice(&f[22..28]);
                            return Some(m);
                        }
                    }
                }
                None
            })
            .expect("run_in observer")
    }
}

fn mac(tb: &Testbed, host: &str) -> [u8; 6] {
    let s = tb
        .exec(host, &["cat", "/sys/class/net/eth0/address"])
        .expect("mac");
    let mut m = [0u8; 6];
    for (i, b) in s.trim().split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(b, 16).expect("hex");
    }
    m
}

fn arp_request(mac: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f.resize(60, 0);
    f
}

#[test]
fn stopped_or_killed_daemon_stops_answering_arp_for_its_vip() {
    let mut n = Node::start(&binding(0, "198.51.100.1"));
    let vip = VIP.to_string();
    wait_until("the VIP is plumbed", 20, || {
        n.plumbed() == vec![vip.clone()]
    });
    wait_until("the VIP is in the NIC's table", 5, || {
        n.ask("cluster info")
            .contains("ARP/NS answered at the NIC for 1 (xdp_ingress on eth0")
    });
    let info = n.ask("cluster info");
    assert!(
        info.contains("announcing with xdp_live_frames")
            || info.contains("announcing with af_packet"),
        "{info}"
    );
    let node_mac = n.node_mac();
    assert_eq!(n.arp(VIP), Some(node_mac), "answered while the daemon runs");

    // A configuration reload re-announces the owned VIP (gratuitous ARP) long after its
    // burst (0, 1, 2, 5 s) and before the 30 s refresh.
    std::thread::sleep(Duration::from_secs(6));
    let cap =
        n.c.tb
            .run_in(OBS, || {
                // SAFETY: a NUL-terminated name.
                let ix = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
                PacketSocket::open(ix, 0x0806).expect("capture socket")
            })
            .expect("run_in observer");
    while let Ok(Some(_)) = cap.recv(Duration::from_millis(10)) {}
    n.c.signal(0, Signal::SIGHUP);
    let until = Instant::now() + Duration::from_secs(3);
    let mut garp = false;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Ok(Some(f)) = cap.recv(left) else { break };
        if f.len() >= 42
            && f[12..14] == [0x08, 0x06]
            && f[6..12] == node_mac
            && f[28..32] == VIP.octets()
            && f[38..42] == VIP.octets()
        {
            garp = true;
            break;
        }
    }
    assert!(garp, "no gratuitous ARP for {VIP} after SIGHUP");
    drop(cap);

    // A stopped daemon renews nothing: once the lease (700 ms here: `hung_after`) ran out, the program
    // drops the requests although the kernel still has the VIP plumbed.
    n.c.signal(0, Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(600));
    wait_until("no ARP answer from the stopped daemon's node", 10, || {
        n.arp(VIP).is_none()
    });
    assert_eq!(
        n.plumbed(),
        vec![vip.clone()],
        "still plumbed in the kernel"
    );
    n.c.signal(0, Signal::SIGCONT);
    wait_until("answers again after SIGCONT", 15, || {
        n.arp(VIP) == Some(node_mac)
    });

    // kill -9: the XDP link closes with the process, the reaper unplumbs the VIP, and the
    // kernel has nothing to answer for.
    n.c.kill(0);
    wait_until("the VIP is unplumbed after kill -9", 10, || {
        n.plumbed().is_empty()
    });
    assert_eq!(
        n.arp(VIP),
        None,
        "a killed daemon's node answers no ARP for its VIP"
    );
}

/// Through the daemon: 4,096 VIPs declared, announced on the bus (one ~400 KiB message),
/// plumbed, put in the NIC's table and shown as owned.
#[test]
fn four_thousand_and_ninety_six_vips_through_the_daemon_are_plumbed_answered_and_shown() {
    const N: usize = 4096;
    let mut b = String::new();
    for k in 0..N {
        b.push_str(&binding(k, &format!("2001:db8:1::1:{k:x}")));
    }
    let n = Node::start(&b);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let got = n.plumbed().len();
        if got == N {
            break;
        }
        if Instant::now() > deadline {
            let log = n.c.nodes[0].log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{got} of {N} VIPs plumbed; daemon log tail (newest first):\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_until("every VIP in the NIC's table", 10, || {
        n.ask("cluster info")
            .contains(&format!("ARP/NS answered at the NIC for {N} "))
    });
    // The console's state follows once the daemon's tick that plumbed them is through
    // (plumbing 4,096 addresses takes seconds; the test may look in between).
    let owned = |show: &str| show.lines().filter(|l| l.contains("(owned,safe)")).count();
    wait_until("every VIP shown owned", 10, || {
        owned(&n.ask("cluster duravip show")) == N
    });
    let show = n.ask("cluster duravip show");
    assert_eq!(owned(&show), N, "{}", &show[..show.len().min(2000)]);
}

/// The datapath pieces the daemon uses, at the full 4,096: netlink plumbing (tagged, one
/// round trip each), the NIC's VIP table (sized for exactly that many), the announcements
/// (live frames or AF_PACKET), and the NIC answering a neighbour solicitation for the last
/// VIP from a peer namespace.
#[test]
fn four_thousand_and_ninety_six_vips_plumb_fill_the_vip_table_and_announce() {
    const N: u32 = 4096;
    let mut tb = Testbed::new().expect("testbed");
    tb.add_host("vip").expect("host");
    tb.add_host("peer").expect("host");
    let pair = tb
        .veth_pair(
            "vip",
            "peer",
            &["192.0.2.1/24", "2001:db8:1::1/64"],
            &["192.0.2.2/24", "2001:db8:1::2/64"],
        )
        .expect("veth");
    let (a_if, b_if) = (pair.a_if.clone(), pair.b_if.clone());
    tb.enable_gro("peer", &b_if).expect("gro");
    let vips: Vec<IpAddr> = (0..N)
        .map(|k| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 1, k as u16)))
        .collect();
    let last = vips[vips.len() - 1];
    let v = vips.clone();
    let (mac, dp) = tb
        .run_in("vip", move || {
            let topology = vec![Topology {
                network: Cidr {
                    addr: "2001:db8:1::".parse().expect("net"),
                    prefix: 64,
                },
                cidrmask: 128,
                interface: a_if.clone(),
            }];
            let mut p = Plumber::new().expect("netlink");
            let desired: BTreeSet<IpAddr> = v.iter().copied().collect();
            let r = Reconciler::new(1)
                .reconcile(&mut p, &desired, &topology, Trigger::Election)
                .expect("reconcile");
            assert_eq!(
                r.added.len(),
                N as usize,
                "refused: {:?}",
                r.refused.first()
            );
            let plumbed = p.plumbed().expect("plumbed");
            assert_eq!(plumbed.len(), N as usize);
            assert!(plumbed.iter().all(|a| a.is_duravip()));
            let link = p.link(&a_if).expect("link").expect("exists");
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&link.mac);

            let mut dp = Datapath::load(&DatapathConfig::default()).expect("load");
            dp.attach(&a_if, XdpMode::Generic).expect("attach");
            for a in &v {
                dp.set_vip_on(*a, mac, Some(link.index))
                    .expect("VIPS insert");
            }
            // The table is sized for exactly the 4,096 a node may own.
            let extra = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1));
            assert!(dp.set_vip_on(extra, mac, Some(link.index)).is_err());
            assert_eq!(dp.vips().expect("vips").len(), N as usize);
            dp.renew_lease(Duration::from_secs(60)).expect("lease");
            let mut sent = 0usize;
            for a in &v {
                let fs = frames(mac, *a, &Targets::Broadcast);
                dp.announce(link.index, &fs, 1).expect("announce");
                sent += fs.len();
            }
            assert_eq!(sent, N as usize, "one unsolicited NA per IPv6 VIP");
            (mac, dp)
        })
        .expect("run_in vip");
    // The peer resolves the last VIP: answered by the NIC with the VIP's MAC.
    let out = tb
        .exec(
            "peer",
            &["ping", "-6", "-c", "1", "-W", "1", &last.to_string()],
        )
        .unwrap_or_default();
    let neigh = tb
        .exec("peer", &["ip", "-6", "neigh", "show", &last.to_string()])
        .unwrap_or_default();
    let want: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert!(neigh.contains(&want.join(":")), "{neigh} / {out}");
    drop(dp);
}

/// A reload that declares another VIP announces the new declarations on the bus, so the
/// node takes it without a restart; a reload that drops it releases it.
#[test]
fn a_reload_that_declares_or_drops_a_vip_takes_or_releases_it() {
    let mut n = Node::start(&binding(0, "198.51.100.1"));
    let one = vec!["198.51.100.1".to_owned()];
    wait_until("the first VIP is plumbed", 20, || n.plumbed() == one);
    n.rewrite_bindings(format!(
        "{}{}",
        binding(0, "198.51.100.1"),
        binding(1, "198.51.100.2")
    ));
    n.c.signal(0, Signal::SIGHUP);
    wait_until("the newly declared VIP is plumbed", 20, || {
        let mut p = n.plumbed();
        p.sort();
        p == vec!["198.51.100.1".to_owned(), "198.51.100.2".to_owned()]
    });
    n.rewrite_bindings(binding(0, "198.51.100.1"));
    n.c.signal(0, Signal::SIGHUP);
    wait_until("the dropped VIP is released", 20, || n.plumbed() == one);
}
