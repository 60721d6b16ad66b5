//! DuraVIP at the NIC: answering ARP/NS for owned VIPs in `xdp_ingress` under a lease, and
//! transmitting announcements (gratuitous ARP, unsolicited NA) from the NIC.
//!
//! The lease makes answers fail safe: the program answers only while the daemon keeps
//! renewing it, so a hung or dead daemon stops claiming its VIPs after one lease duration
//! (the kernel then answers only for addresses still plumbed).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use aya::{
    maps::MapError,
    programs::{ProgramError, Xdp},
};
use duraplane_common::{
    AF_INET, AF_INET6, Lease, VipKey, VipValue, map_names as names, program_names,
};

use super::{BpfError, Datapath, map_err, monotonic_ns, testrun};

/// The kernel-internal `ENOTSUPP`, which leaks to userspace from some paths.
const ENOTSUPP: i32 = 524;

/// How [`Datapath::announce`] put the frames on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceMethod {
    /// `xdp_announce` run with `BPF_F_TEST_XDP_LIVE_FRAMES`: sent from the driver's XDP
    /// transmit path (kernel ≥ 5.18, driver with `ndo_xdp_xmit`).
    LiveFrames,
    /// An `AF_PACKET` raw socket (the kernel or driver refused live frames).
    Packet,
}

impl AnnounceMethod {
    /// Stable name for logs and the console.
    pub const fn name(self) -> &'static str {
        match self {
            AnnounceMethod::LiveFrames => "xdp_live_frames",
            AnnounceMethod::Packet => "af_packet",
        }
    }
}

/// One VIP the program answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipEntry {
    pub addr: IpAddr,
    pub mac: [u8; 6],
    /// Only requests arriving here are answered; `None` = any interface.
    pub ifindex: Option<u32>,
}

fn vip_key(addr: IpAddr) -> VipKey {
    let mut a = [0u8; 16];
    let family = match addr {
        IpAddr::V4(v) => {
            a[..4].copy_from_slice(&v.octets());
            AF_INET
        }
        IpAddr::V6(v) => {
            a = v.octets();
            AF_INET6
        }
    };
    VipKey {
        addr: a,
        family,
        _pad: [0; 7],
    }
}

/// Largest frame announced (live frames need the frame inside one page with headroom).
const MAX_ANNOUNCE_FRAME: usize = 1514;

impl Datapath {
    /// Answers ARP (IPv4) or NS (IPv6) for `addr` with `mac`, on any interface, while the
    /// lease is fresh.
    pub fn set_vip(&mut self, addr: IpAddr, mac: [u8; 6]) -> Result<(), BpfError> {
        self.set_vip_on(addr, mac, None)
    }

    /// As [`set_vip`](Self::set_vip), answering only requests received on `ifindex`.
    pub fn set_vip_on(
        &mut self,
        addr: IpAddr,
        mac: [u8; 6],
        ifindex: Option<u32>,
    ) -> Result<(), BpfError> {
        let v = VipValue {
            ifindex: ifindex.unwrap_or(0),
            mac,
            _pad: [0; 2],
        };
        self.vips
            .insert(vip_key(addr), v, 0)
            .map_err(map_err(names::VIPS, "insert"))
    }

    /// Stops answering for `addr`; returns whether it was there.
    pub fn remove_vip(&mut self, addr: IpAddr) -> Result<bool, BpfError> {
        match self.vips.remove(&vip_key(addr)) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(source) => Err(BpfError::Map {
                map: names::VIPS,
                op: "remove",
                source: Box::new(source),
            }),
        }
    }

    /// Every VIP the program answers for.
    pub fn vips(&self) -> Result<Vec<VipEntry>, BpfError> {
        let mut out = Vec::new();
        for kv in self.vips.iter() {
            let (k, v) = kv.map_err(map_err(names::VIPS, "iterate"))?;
            let addr = if k.family == AF_INET {
                IpAddr::V4(Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]))
            } else {
                IpAddr::V6(Ipv6Addr::from(k.addr))
            };
            out.push(VipEntry {
                addr,
                mac: v.mac,
                ifindex: (v.ifindex != 0).then_some(v.ifindex),
            });
        }
        Ok(out)
    }

    /// Renews the lease from now (CLOCK_MONOTONIC) for `duration`: call it from the
    /// heartbeat loop with a duration of a few heartbeat intervals.
    pub fn renew_lease(&mut self, duration: Duration) -> Result<(), BpfError> {
        let lease = Lease {
            renewed_ns: monotonic_ns()?,
            duration_ns: u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
        };
        self.lease
            .set(0, lease, 0)
            .map_err(map_err(names::LEASE, "set"))
    }

    /// Ends the lease at once (orderly shutdown, loss of quorum): no more answers.
    pub fn revoke_lease(&mut self) -> Result<(), BpfError> {
        self.lease
            .set(0, Lease::default(), 0)
            .map_err(map_err(names::LEASE, "set"))
    }

    /// Skips live frames and announces with `AF_PACKET` (`true`), or tries live frames
    /// again first (`false`). For operators whose NIC drops XDP-transmitted frames silently.
    pub fn prefer_packet_announce(&mut self, yes: bool) {
        self.live_frames_ok = !yes;
    }

    /// The `xdp_announce` program, loaded on first use.
    fn announce_program(&mut self) -> Result<&Xdp, BpfError> {
        Ok(self.loaded_program::<Xdp>(program_names::XDP_ANNOUNCE)?)
    }

    /// Transmits each of `frames` (complete Ethernet frames, e.g. gratuitous ARP request
    /// and reply, unsolicited NA) `repeat` times out of `ifindex` (in the calling thread's
    /// network namespace). Uses XDP live frames; falls back to `AF_PACKET` — for this and
    /// every later call — when the kernel or driver refuses them (EINVAL/EOPNOTSUPP).
    /// Returns the method used, for the daemon to show.
    ///
    /// With live frames the kernel does not report per-frame transmit failures (a veth
    /// whose peer takes no XDP frames drops them); `AF_PACKET` errors are reported.
    pub fn announce<F: AsRef<[u8]>>(
        &mut self,
        ifindex: u32,
        frames: &[F],
        repeat: u32,
    ) -> Result<AnnounceMethod, BpfError> {
        for f in frames {
            let len = f.as_ref().len();
            if !(14..=MAX_ANNOUNCE_FRAME).contains(&len) {
                return Err(BpfError::AnnounceFrame { frame_len: len });
            }
        }
        if self.live_frames_ok {
            match self.announce_live(ifindex, frames, repeat) {
                Ok(()) => return Ok(AnnounceMethod::LiveFrames),
                Err(Fallback::No(e)) => return Err(e),
                Err(Fallback::Yes(why)) => {
                    tracing::info!(ifindex, error = %why, "XDP live frames refused; announcing with AF_PACKET");
                    self.live_frames_ok = false;
                }
            }
        }
        send_packet(ifindex, frames, repeat)?;
        Ok(AnnounceMethod::Packet)
    }

    fn announce_live<F: AsRef<[u8]>>(
        &mut self,
        ifindex: u32,
        frames: &[F],
        repeat: u32,
    ) -> Result<(), Fallback> {
        let prog = match self.announce_program() {
            Ok(p) => p,
            // A kernel that cannot load even `return XDP_TX` cannot do live frames.
            Err(e @ BpfError::ProgramLoad { .. }) => return Err(Fallback::Yes(e.to_string())),
            Err(e) => return Err(Fallback::No(e)),
        };
        for f in frames {
            if let Err(e) = testrun::run_xdp_live(prog, f.as_ref(), ifindex, repeat) {
                let errno = match &e {
                    ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
                    _ => None,
                };
                return Err(match errno {
                    Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) => {
                        Fallback::Yes(e.to_string())
                    }
                    _ => Fallback::No(BpfError::Announce {
                        ifindex,
                        method: AnnounceMethod::LiveFrames,
                        source: std::io::Error::other(e),
                    }),
                });
            }
        }
        Ok(())
    }
}

enum Fallback {
    Yes(String),
    No(BpfError),
}

/// Sends the frames with an `AF_PACKET` raw socket bound to nothing (the address names
/// the interface).
fn send_packet<F: AsRef<[u8]>>(ifindex: u32, frames: &[F], repeat: u32) -> Result<(), BpfError> {
    let err = |source| BpfError::Announce {
        ifindex,
        method: AnnounceMethod::Packet,
        source,
    };
    // Protocol 0: send only, so the socket never queues received frames.
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    for _ in 0..repeat.max(1) {
        for f in frames {
            let f = f.as_ref();
            sll.sll_addr[..6].copy_from_slice(&f[..6]);
            // SAFETY: valid buffer and address for the lengths given.
            let n = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n < 0 {
                return Err(err(std::io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}
