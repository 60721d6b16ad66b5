//! Telling the network where a VIP lives: gratuitous ARP (request *and* reply form — some
//! switches and hosts honour only one of them) and IPv6 unsolicited neighbour
//! advertisements (override flag, to ff02::1), the schedule they are sent on, and an
//! AF_PACKET sender.
//!
//! The frame builders are plain byte builders shared by the XDP live-frames sender
//! ([`crate::bpf::Datapath::announce`]) and the AF_PACKET fallback. Schedule: at once, then ~1 s, ~2 s, ~5 s after the VIP was plumbed
//! (catching switches that were busy learning), then a periodic refresh (default
//! [`DEFAULT_REFRESH`]) so caches that missed a burst converge anyway.
//! `arp_all_hosts = false`: unicast to a known-hosts list instead of broadcast.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

/// Broadcast Ethernet address.
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// ff02::1 (all nodes).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Offsets of the burst after a VIP is (re)plumbed.
pub const BURST: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];
/// Periodic refresh after the burst: below the usual 30 s ARP reachable time so a cache
/// that missed the burst is refreshed before it goes stale for long.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);

/// Announcement pacing: at most [`PACE_VIPS`] VIPs per [`PACE`] (two ARP frames each), so
/// a takeover of 4,096 VIPs leaves as 8 bursts of ≤ 1,024 frames over ~140 ms instead of
/// one 8,192-frame burst that overflows switch and host queues.
pub const PACE_VIPS: usize = 512;
pub const PACE: Duration = Duration::from_millis(20);

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

/// Which ARP form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpForm {
    /// op 1, target hardware address zero (or the host's for unicast).
    Request,
    /// op 2, target hardware address broadcast (or the host's for unicast).
    Reply,
}

/// A gratuitous ARP for `vip` owned by `mac`. `to`: `None` broadcasts; `Some((mac, ip))`
/// aims it at one known host (Linux treats a reply whose target hardware address is its
/// own as gratuitous and overrides its cache). 60 bytes (padded minimum frame).
pub fn arp_frame(form: ArpForm, mac: [u8; 6], vip: Ipv4Addr, to: Option<[u8; 6]>) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&to.unwrap_or(BROADCAST));
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    let (op, tha) = match (form, to) {
        (ArpForm::Request, None) => (1u16, [0u8; 6]),
        (ArpForm::Reply, None) => (2, BROADCAST),
        (ArpForm::Request, Some(h)) => (1, h),
        (ArpForm::Reply, Some(h)) => (2, h),
    };
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&vip.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&vip.octets());
    f.resize(60, 0);
    f
}

/// Ethernet multicast address of an IPv6 multicast group (33:33 + low 32 bits).
pub fn ipv6_multicast_mac(group: &Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// An unsolicited neighbour advertisement for `vip` (override set, solicited clear, with
/// the target link-layer address option), from `vip` to `dst` (ff02::1 for everyone, or
/// one known host), hop limit 255 as RFC 4861 requires.
pub fn na_frame(mac: [u8; 6], vip: Ipv6Addr, dst: Ipv6Addr, dst_mac: [u8; 6]) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]);
    icmp.extend_from_slice(&0x2000_0000u32.to_be_bytes()); // O flag
    icmp.extend_from_slice(&vip.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac);
    let ck = icmpv6_checksum(&vip, &dst, &icmp);
    icmp[2..4].copy_from_slice(&ck.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&u16::try_from(icmp.len()).unwrap_or(32).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&vip.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The ICMPv6 checksum over the pseudo-header and `body` (its checksum field zero).
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, body: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum = sum.wrapping_add(u32::from(w));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&u32::try_from(body.len()).unwrap_or(0).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(body);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Where announcements go (`arp_all_hosts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// `arp_all_hosts = true`: broadcast ARP, NA to ff02::1.
    Broadcast,
    /// `arp_all_hosts = false`: one unicast frame of each form per known host (the
    /// interface's neighbour table, gateways first, is the natural list).
    Hosts(Vec<(IpAddr, [u8; 6])>),
}

/// Every frame announcing `vip` from `mac`: two ARP forms per destination for IPv4, one
/// NA per destination for IPv6. Hosts of the other family are skipped.
pub fn frames(mac: [u8; 6], vip: IpAddr, targets: &Targets) -> Vec<Vec<u8>> {
    match (vip, targets) {
        (IpAddr::V4(v), Targets::Broadcast) => vec![
            arp_frame(ArpForm::Request, mac, v, None),
            arp_frame(ArpForm::Reply, mac, v, None),
        ],
        (IpAddr::V6(v), Targets::Broadcast) => {
            vec![na_frame(mac, v, ALL_NODES, ipv6_multicast_mac(&ALL_NODES))]
        }
        (IpAddr::V4(v), Targets::Hosts(hs)) => hs
            .iter()
            .filter(|(ip, _)| ip.is_ipv4())
            .flat_map(|(_, hm)| {
                [
                    arp_frame(ArpForm::Request, mac, v, Some(*hm)),
                    arp_frame(ArpForm::Reply, mac, v, Some(*hm)),
                ]
            })
            .collect(),
        (IpAddr::V6(v), Targets::Hosts(hs)) => hs
            .iter()
            .filter_map(|(ip, hm)| match ip {
                IpAddr::V6(h) => Some(na_frame(mac, v, *h, *hm)),
                IpAddr::V4(_) => None,
            })
            .collect(),
    }
}

/// The announcement schedule of every VIP this node owns. Pure: the caller passes the
/// clock and sends what [`due`](Self::due) returns.
#[derive(Debug, Clone)]
pub struct Scheduler {
    refresh: Option<Duration>,
    vips: BTreeMap<IpAddr, Timer>,
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    started: Instant,
    step: usize,
    next: Instant,
}

impl Scheduler {
    /// `refresh`: `None` switches the periodic refresh off.
    pub fn new(refresh: Option<Duration>) -> Self {
        Scheduler {
            refresh,
            vips: BTreeMap::new(),
        }
    }

    /// A VIP was plumbed here: restart its burst.
    pub fn start(&mut self, vip: IpAddr, now: Instant) {
        self.vips.insert(
            vip,
            Timer {
                started: now,
                step: 0,
                next: now,
            },
        );
    }

    /// A VIP left this node: no more announcements.
    pub fn stop(&mut self, vip: &IpAddr) {
        self.vips.remove(vip);
    }

    /// VIPs to announce now. Steps missed during a stall are sent once, not replayed.
    pub fn due(&mut self, now: Instant) -> Vec<IpAddr> {
        self.due_at_most(now, usize::MAX)
    }

    /// As [`due`](Self::due), but at most `max` VIPs, the longest-waiting first; the rest
    /// stay due for the next call. Paces a takeover of thousands of VIPs so the first
    /// announcements leave in bounded bursts instead of one unbounded one.
    pub fn due_at_most(&mut self, now: Instant, max: usize) -> Vec<IpAddr> {
        let mut waiting: Vec<(Instant, IpAddr)> = self
            .vips
            .iter()
            .filter(|(_, t)| t.next <= now)
            .map(|(v, t)| (t.next, *v))
            .collect();
        if waiting.len() > max {
            waiting.select_nth_unstable(max);
            waiting.truncate(max);
        }
        let picked: std::collections::BTreeSet<IpAddr> =
            waiting.into_iter().map(|(_, v)| v).collect();
        let mut out = Vec::new();
        let mut done = Vec::new();
        for (vip, t) in &mut self.vips {
            if t.next > now || !picked.contains(vip) {
                continue;
            }
            out.push(*vip);
            // Skip burst steps already in the past.
            t.step += 1;
            while t.step < BURST.len() && t.started + BURST[t.step] <= now {
                t.step += 1;
            }
            if t.step < BURST.len() {
                t.next = t.started + BURST[t.step];
            } else if let Some(r) = self.refresh {
                // From when this send was due, so refreshes do not drift; after a stall,
                // from now.
                let mut next = t.next + r;
                if next <= now {
                    next = now + r;
                }
                t.next = next;
            } else {
                done.push(*vip);
            }
        }
        for v in done {
            self.vips.remove(&v);
        }
        out
    }

    /// When [`due`](Self::due) next has something: the daemon's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.vips.values().map(|t| t.next).min()
    }
}

/// Sending failures.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("AF_PACKET socket: {source}")]
    Socket {
        #[source]
        source: std::io::Error,
    },
    #[error("send on ifindex {ifindex}: {source}")]
    Send {
        ifindex: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("receive on ifindex {ifindex}: {source}")]
    Recv {
        ifindex: u32,
        #[source]
        source: std::io::Error,
    },
}

/// A raw AF_PACKET socket on one interface (needs CAP_NET_RAW): the fallback sender
/// where XDP live frames are not available, and a capture tool for tests.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl PacketSocket {
    /// `protocol`: 0 to send only; `libc::ETH_P_ALL` to also receive every frame.
    pub fn open(ifindex: u32, protocol: u16) -> Result<Self, AnnounceError> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(protocol.to_be()),
            )
        };
        if fd < 0 {
            return Err(AnnounceError::Socket {
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let s = PacketSocket { fd, ifindex };
        let sll = s.sockaddr(protocol, BROADCAST);
        // SAFETY: sll is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                s.fd.as_raw_fd(),
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(AnnounceError::Socket {
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(s)
    }

    fn sockaddr(&self, protocol: u16, dst: [u8; 6]) -> libc::sockaddr_ll {
        let mut addr = [0u8; 8];
        addr[..6].copy_from_slice(&dst);
        libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: protocol.to_be(),
            sll_ifindex: i32::try_from(self.ifindex).unwrap_or(0),
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 6,
            sll_addr: addr,
        }
    }

    /// Send one complete Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> Result<(), AnnounceError> {
        let mut dst = BROADCAST;
        if frame.len() >= 14 {
            dst.copy_from_slice(&frame[..6]);
        }
        let proto = if frame.len() >= 14 {
            u16::from_be_bytes([frame[12], frame[13]])
        } else {
            0
        };
        let sll = self.sockaddr(proto, dst);
        // SAFETY: the buffer and sockaddr are valid for the lengths given.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(AnnounceError::Send {
                ifindex: self.ifindex,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Announce `vip`: every frame of [`frames`]. Returns how many were sent.
    pub fn announce(
        &self,
        mac: [u8; 6],
        vip: IpAddr,
        targets: &Targets,
    ) -> Result<usize, AnnounceError> {
        let fs = frames(mac, vip, targets);
        for f in &fs {
            self.send(f)?;
        }
        Ok(fs.len())
    }

    /// Receive one frame, waiting at most `timeout`; `Ok(None)` on timeout.
    pub fn recv(&self, timeout: Duration) -> Result<Option<Vec<u8>>, AnnounceError> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        if rc < 0 {
            return Err(AnnounceError::Recv {
                ifindex: self.ifindex,
                source: std::io::Error::last_os_error(),
            });
        }
        if rc == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 2048];
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(AnnounceError::Recv {
                ifindex: self.ifindex,
                source: std::io::Error::last_os_error(),
            });
        }
        buf.truncate(usize::try_from(n).unwrap_or(0));
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

    #[test]
    fn arp_forms() {
        let vip = Ipv4Addr::new(198, 51, 100, 50);
        let rq = arp_frame(ArpForm::Request, MAC, vip, None);
        assert_eq!(rq.len(), 60);
        assert_eq!(&rq[..6], &BROADCAST);
        assert_eq!(&rq[12..14], &[0x08, 0x06]);
        assert_eq!(&rq[20..22], &[0, 1]);
        assert_eq!(&rq[22..28], &MAC);
        assert_eq!(&rq[28..32], &vip.octets());
        assert_eq!(&rq[32..38], &[0; 6]);
        assert_eq!(&rq[38..42], &vip.octets());
        let rp = arp_frame(ArpForm::Reply, MAC, vip, None);
        assert_eq!(&rp[20..22], &[0, 2]);
        assert_eq!(&rp[32..38], &BROADCAST);
        let host = [0x02, 0, 0, 0, 0, 0x09];
        let u = arp_frame(ArpForm::Reply, MAC, vip, Some(host));
        assert_eq!(&u[..6], &host);
        assert_eq!(&u[32..38], &host);
    }

    #[test]
    fn na_has_override_hop_limit_and_valid_checksum() {
        let vip: Ipv6Addr = "2001:db8:1::50".parse().unwrap();
        let f = na_frame(MAC, vip, ALL_NODES, ipv6_multicast_mac(&ALL_NODES));
        assert_eq!(&f[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(f.len(), 14 + 40 + 32);
        assert_eq!(f[14 + 7], 255, "hop limit");
        assert_eq!(f[14 + 6], 58);
        let icmp = &f[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4], 0x20, "override only");
        // Re-summing with the checksum in place gives zero.
        let mut body = icmp.to_vec();
        let ck = u16::from_be_bytes([body[2], body[3]]);
        body[2] = 0;
        body[3] = 0;
        assert_eq!(icmpv6_checksum(&vip, &ALL_NODES, &body), ck);
        assert_eq!(&icmp[24..26], &[2, 1]);
        assert_eq!(&icmp[26..32], &MAC);
    }

    #[test]
    fn unicast_targets_per_family() {
        let t = Targets::Hosts(vec![
            ("198.51.100.2".parse().unwrap(), [2, 0, 0, 0, 0, 2]),
            ("2001:db8:1::2".parse().unwrap(), [2, 0, 0, 0, 0, 3]),
        ]);
        assert_eq!(frames(MAC, "198.51.100.50".parse().unwrap(), &t).len(), 2);
        let six = frames(MAC, "2001:db8:1::50".parse().unwrap(), &t);
        assert_eq!(six.len(), 1);
        assert_eq!(&six[0][..6], &[2, 0, 0, 0, 0, 3]);
    }

    #[test]
    fn schedule_burst_then_refresh() {
        let t0 = Instant::now();
        let v: IpAddr = "198.51.100.50".parse().unwrap();
        let mut s = Scheduler::new(Some(Duration::from_secs(30)));
        s.start(v, t0);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(s.due(t0), vec![v]);
        assert!(s.due(at(500)).is_empty());
        assert_eq!(s.next_deadline(), Some(at(1000)));
        assert_eq!(s.due(at(1000)), vec![v]);
        assert_eq!(s.due(at(2000)), vec![v]);
        assert!(s.due(at(4999)).is_empty());
        assert_eq!(s.due(at(5000)), vec![v]);
        assert_eq!(s.next_deadline(), Some(at(35_000)));
        assert_eq!(s.due(at(35_000)), vec![v]);
        assert_eq!(s.next_deadline(), Some(at(65_000)));
        // A stall: sent once, not replayed; the next refresh counts from now.
        assert_eq!(s.due(at(200_000)), vec![v]);
        assert!(s.due(at(200_001)).is_empty());
        assert_eq!(s.next_deadline(), Some(at(230_000)));
        s.stop(&v);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn paced_schedule_sends_every_vip_once_in_bounded_batches() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Some(Duration::from_secs(30)));
        let vips: Vec<IpAddr> = (0..4096u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0xc633_0000 | i)))
            .collect();
        for v in &vips {
            s.start(*v, t0);
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut batches = 0;
        loop {
            let b = s.due_at_most(t0, 512);
            if b.is_empty() {
                break;
            }
            assert!(b.len() <= 512);
            for v in b {
                assert!(
                    seen.insert(v),
                    "{v} announced twice in the first burst step"
                );
            }
            batches += 1;
        }
        assert_eq!(seen.len(), 4096);
        assert_eq!(batches, 8);
        // The rest of the burst is still scheduled for every VIP.
        assert_eq!(s.next_deadline(), Some(t0 + BURST[1]));
        assert_eq!(s.due_at_most(t0 + BURST[1], usize::MAX).len(), 4096);
    }

    #[test]
    fn schedule_without_refresh_ends_after_the_burst() {
        let t0 = Instant::now();
        let v: IpAddr = "2001:db8:1::50".parse().unwrap();
        let mut s = Scheduler::new(None);
        s.start(v, t0);
        // Late first poll at 3 s: sent once, the 1 s and 2 s steps are skipped.
        assert_eq!(s.due(t0 + Duration::from_secs(3)), vec![v]);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(s.due(t0 + Duration::from_secs(5)), vec![v]);
        assert_eq!(s.next_deadline(), None);
    }
}
