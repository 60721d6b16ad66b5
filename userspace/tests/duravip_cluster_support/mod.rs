//! Shared harness of the DuraVIP cluster tests: three `duraplane run` daemons on a real
//! corosync cluster (nodes 192.0.2.11–13 on one bridge), VIPs in 198.51.100.0/24 and
//! 2001:db8:1::/64 on each node's `eth0`, an observer namespace on the same bridge with an
//! address in both VIP networks, and a TCP service on 0.0.0.0:2525 / [::]:2525 in every
//! node that answers with its node name.
#![allow(dead_code)]

#[path = "../cluster_support/mod.rs"]
mod cluster_support;
pub mod monitors;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

pub use cluster_support::{BIN, Cluster, wait_until};
use cluster_support::{VIP_TOPOLOGY, binding};
use duraplane::testbed::{ProcessGuard, Stream, corosync::CorosyncTiming};

pub const OBS: &str = "obs";
pub const PORT: u16 = 2525;

/// One DuraVIP declaration of the test config: address and optional preferred node.
pub struct Vip {
    pub addr: &'static str,
    pub preference: Option<&'static str>,
}

fn serve(l: TcpListener, name: String) {
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(format!("{name}\n").as_bytes());
        }
    });
}

/// The DuraVIP harness on the shared testbed (an inherent impl: same test crate).
impl Cluster {
    pub fn start(vips: &[Vip]) -> Cluster {
        Cluster::start_timed(vips, CorosyncTiming::default())
    }

    /// As [`Cluster::start`] with the given corosync timing.
    pub fn start_timed(vips: &[Vip], timing: CorosyncTiming) -> Cluster {
        let bindings: String = vips
            .iter()
            .enumerate()
            .map(|(k, v)| binding(k, v.addr, v.preference))
            .collect();
        let mut c = Cluster::builder(3)
            .timing(timing)
            .cluster(|_| {
                format!(
                    "view_mature_time = 2\nview_balance_interval = 0.5\n\
                     duravip_balance_set_size = 1\nif_check_interval = 1\n{VIP_TOPOLOGY}"
                )
            })
            .top(move |_| bindings.clone())
            .up();
        c.add_peer(
            OBS,
            &["192.0.2.100/24", "198.51.100.200/24", "2001:db8:1::200/64"],
        );
        // GARP/NA may override an entry however recently it was confirmed.
        c.tb.exec(OBS, &["sysctl", "-qw", "net.ipv4.neigh.eth0.locktime=0"])
            .expect("locktime");
        // Replies from a VIP to the observer leave on-link.
        c.route_on_nodes("198.51.100.0/24");
        c.route_on_nodes("2001:db8:1::/64");
        for i in 0..3 {
            let (l4, l6) =
                c.tb.run_in(&c.host(i), || {
                    let l4 = TcpListener::bind(("0.0.0.0", PORT)).expect("listen v4");
                    let l6 = socket2_v6only().expect("listen v6");
                    (l4, l6)
                })
                .expect("run_in");
            let name = format!("node{}", i + 1);
            serve(l4, name.clone());
            serve(l6, name);
        }
        c.start_daemons();
        c
    }

    /// Indexes (0-based) of the nodes whose `eth0` has `vip` plumbed.
    pub fn holders(&self, vip: &str) -> Vec<usize> {
        (0..3)
            .filter(|i| {
                let out = self
                    .tb
                    .exec(&self.host(*i), &["ip", "-o", "addr", "show", "dev", "eth0"])
                    .unwrap_or_default();
                out.split_whitespace()
                    .any(|w| w.split('/').next() == Some(vip))
            })
            .collect()
    }

    /// The single holder of `vip`, once there is exactly one.
    pub fn wait_single(&self, vip: &str, secs: u64) -> usize {
        let mut h = Vec::new();
        wait_until(&format!("exactly one holder of {vip}"), secs, || {
            h = self.holders(vip);
            h.len() == 1
        });
        h[0]
    }

    pub fn mac(&self, i: usize) -> String {
        self.mac_of(&self.host(i))
    }

    /// A new TCP connection from the observer to `vip`:2525; the node name that answered.
    pub fn connect(&self, vip: &str) -> Option<String> {
        let addr: SocketAddr = SocketAddr::new(vip.parse().ok()?, PORT);
        self.tb
            .run_in(OBS, move || {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).ok()?;
                Some(out.trim().to_owned())
            })
            .ok()
            .flatten()
    }

    /// The observer's neighbour entry (MAC) for `vip`.
    pub fn observer_neigh(&self, vip: &str) -> Option<String> {
        let out = self
            .tb
            .exec(OBS, &["ip", "neigh", "show", vip, "dev", "eth0"])
            .ok()?;
        let mut w = out.split_whitespace();
        w.find(|x| *x == "lladdr")?;
        w.next().map(str::to_owned)
    }

    /// Starts tcpdump on the observer for ARP and ICMPv6 with link-level headers.
    pub fn capture(&self) -> ProcessGuard {
        let p = self
            .tb
            .spawn(
                OBS,
                &[
                    "tcpdump",
                    "-i",
                    "eth0",
                    "-n",
                    "-e",
                    "-l",
                    "-p",
                    "--immediate-mode",
                    "-s",
                    "128",
                    "-B",
                    "8192",
                    "arp or icmp6",
                ],
            )
            .expect("tcpdump");
        assert!(
            p.wait_for_line(Stream::Stderr, Duration::from_secs(10), |l| l
                .contains("listening on")),
            "tcpdump did not start: {:?}",
            p.lines(Stream::Stderr)
        );
        p
    }
}

fn socket2_v6only() -> std::io::Result<TcpListener> {
    // std binds [::] dual-stack; the v4 listener already holds 0.0.0.0:2525.
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    s.set_only_v6(true)?;
    s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, PORT)).into())?;
    s.listen(64)?;
    Ok(s.into())
}

/// Owner per VIP as `cluster duravip show` on node `i` reports it (the `*` row).
pub fn shown_owners(show: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = None;
    for l in show.lines() {
        if let Some((head, _)) = l.split_once(": (") {
            cur = head.split('/').next().map(str::to_owned);
        } else if l.starts_with(" *")
            && let (Some(v), Some(n)) = (&cur, l.split_whitespace().nth(1))
        {
            out.push((v.clone(), n.to_owned()));
        }
    }
    out
}
