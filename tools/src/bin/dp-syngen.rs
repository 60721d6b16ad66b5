//! dp-syngen: crafted TCP SYNs (or FIN/RST) from spoofed sources, sent as raw Ethernet
//! frames over AF_PACKET out of one interface. Test traffic only: every source and
//! destination must be in the documentation ranges, and count and duration are bounded.

use std::{
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use duraplane_tools::{
    documentation_cidr, frames, mac_string, neigh, parse_mac, require_documentation,
    sources::{Mode, Sources},
};

const MAX_COUNT: u64 = 10_000_000;
const MAX_DURATION: f64 = 600.0;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    /// SYN (opens a flow).
    Syn,
    /// FIN+ACK (closes a flow).
    Fin,
    /// RST (aborts a flow).
    Rst,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SrcMode {
    Sequential,
    Random,
}

/// Send crafted TCP SYN/FIN/RST frames from spoofed documentation-range sources.
///
/// Flows are reproducible: the same --src, --src-mode, --seed and --count give the same
/// (source, port) sequence, so a second run with --kind fin or rst closes the flows a
/// SYN run opened.
#[derive(Debug, Parser)]
#[command(name = "dp-syngen", version)]
struct Args {
    /// Interface to send on (raw frames via AF_PACKET).
    #[arg(short, long)]
    interface: String,
    /// Destination address (documentation ranges only).
    #[arg(short, long)]
    dst: IpAddr,
    /// Destination TCP port.
    #[arg(short = 'p', long, default_value_t = 25)]
    dport: u16,
    /// Destination MAC; default: resolved through the kernel neighbour table.
    #[arg(long)]
    dst_mac: Option<String>,
    /// Spoofed sources are drawn from this CIDR (inside one documentation range).
    #[arg(short, long)]
    src: String,
    /// How sources are drawn from --src.
    #[arg(long, value_enum, default_value_t = SrcMode::Sequential)]
    src_mode: SrcMode,
    /// Seed for --src-mode random, sequence numbers and IP ids.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Segment kind.
    #[arg(short, long, value_enum, default_value_t = Kind::Syn)]
    kind: Kind,
    /// Frames per second; 0 = as fast as possible.
    #[arg(short, long, default_value_t = 1000)]
    rate: u64,
    /// Stop after this many frames (max 10,000,000).
    #[arg(short, long, default_value_t = 10_000)]
    count: u64,
    /// Stop after this many seconds (max 600).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

fn packet_socket(ifname: &str) -> Result<(OwnedFd, i32)> {
    let ifindex = nix::net::if_::if_nametoindex(ifname)
        .with_context(|| format!("no interface {ifname}"))? as i32;
    // SAFETY: plain socket(2); protocol 0 = send only, nothing is queued for reading.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, ifindex))
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.count == 0 || a.count > MAX_COUNT {
        bail!("--count must be 1..={MAX_COUNT}");
    }
    if !(a.duration > 0.0 && a.duration <= MAX_DURATION) {
        bail!("--duration must be in (0, {MAX_DURATION}] seconds");
    }
    require_documentation("destination", &a.dst)?;
    let src = documentation_cidr("source", &a.src)?;
    if src.addr.is_ipv4() != a.dst.is_ipv4() {
        bail!(
            "--src {} and --dst {} are of different families",
            a.src,
            a.dst
        );
    }
    let src_mac = neigh::interface_mac(&a.interface)?;
    let dst_mac = match &a.dst_mac {
        Some(m) => parse_mac(m)?,
        None => neigh::resolve(a.dst, &a.interface, Duration::from_secs(3))?,
    };
    let (sock, ifindex) = packet_socket(&a.interface)?;
    let ethertype: u16 = if a.dst.is_ipv4() { 0x0800 } else { 0x86dd };
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid initial value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ethertype.to_be();
    sll.sll_ifindex = ifindex;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&dst_mac);

    let flags = match a.kind {
        Kind::Syn => frames::SYN,
        Kind::Fin => frames::FIN | frames::ACK,
        Kind::Rst => frames::RST,
    };
    let mode = match a.src_mode {
        SrcMode::Sequential => Mode::Sequential,
        SrcMode::Random => Mode::Random,
    };
    let mut flows = Sources::new(src, mode, a.seed);
    let mut rng = duraplane_tools::sources::Rng::new(a.seed ^ 0x5eed);
    let start = Instant::now();
    let limit = Duration::from_secs_f64(a.duration);
    let gap = if a.rate == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(1.0 / a.rate as f64)
    };
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut first_error = None;
    for i in 0..a.count {
        let now = Instant::now();
        if now - start >= limit {
            break;
        }
        // Pace against the schedule, not the previous send, so the average rate holds.
        let due = gap.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX));
        if let Some(wait) = due.checked_sub(now - start) {
            std::thread::sleep(wait.min(limit.saturating_sub(now - start)));
        }
        let (s, sport) = flows.flow(i);
        let r = rng.next_u64();
        let frame = frames::TcpFrame {
            src_mac,
            dst_mac,
            src: s,
            dst: a.dst,
            sport,
            dport: a.dport,
            // FIN/RST carry seq+1 so they follow the SYN of the same seeded flow.
            seq: (r as u32).wrapping_add(u32::from(!matches!(a.kind, Kind::Syn))),
            flags,
            ip_id: (r >> 32) as u16,
        }
        .build()
        .context("frame families differ")?;
        // SAFETY: frame and sll are valid for the call; lengths match the buffers.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n == frame.len() as isize {
            sent += 1;
        } else {
            failed += 1;
            first_error.get_or_insert_with(std::io::Error::last_os_error);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = if elapsed > 0.0 {
        sent as f64 / elapsed
    } else {
        0.0
    };
    println!(
        "sent={sent} failed={failed} elapsed={elapsed:.3}s rate={rate:.1}/s interface={} dst={}:{} dst_mac={} src={}",
        a.interface,
        a.dst,
        a.dport,
        mac_string(&dst_mac),
        a.src
    );
    if let Some(e) = first_error {
        eprintln!("dp-syngen: {failed} sends failed, first error: {e}");
    }
    Ok(())
}
