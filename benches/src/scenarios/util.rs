//! Small helpers shared by the scenarios: a seeded PRNG, checksummed SYN frames, medians.

use std::net::{IpAddr, Ipv4Addr};

use duraplane::bpf::{Cidr, NetblockAction, NetblockSpec};

use super::rawbpf::off;

/// xorshift64*: reproducible frame sets without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// A 54-byte Ethernet/IPv4/TCP SYN with valid IP and TCP checksums, laid out for
/// [`super::rawbpf::tx_random_source`]: last source octet and source port zero, their
/// compensating fields all-ones.
pub fn flood_syn(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; off::MIN_LEN];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = 14;
    f[ip] = 0x45;
    f[ip + 2..ip + 4].copy_from_slice(&40u16.to_be_bytes());
    f[ip + 4] = 0x12;
    f[off::IP_ID_LO] = 0xff;
    f[ip + 6] = 0x40; // DF
    f[ip + 8] = 64;
    f[ip + 9] = 6;
    let mut s = src.octets();
    s[3] = 0;
    f[ip + 12..ip + 16].copy_from_slice(&s);
    f[ip + 16..ip + 20].copy_from_slice(&dst.octets());
    let c = !fold(sum16(&f[ip..ip + 20]));
    f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    let tcp = 34;
    f[off::SPORT..off::SPORT + 2].copy_from_slice(&0u16.to_be_bytes());
    f[tcp + 2..tcp + 4].copy_from_slice(&25u16.to_be_bytes());
    f[off::SEQ_HI..off::SEQ_HI + 2].copy_from_slice(&0xffffu16.to_be_bytes());
    f[tcp + 6..tcp + 8].copy_from_slice(&0x1234u16.to_be_bytes());
    f[off::ACK_LO] = 0xff;
    f[tcp + 12] = 5 << 4;
    f[tcp + 13] = 0x02; // SYN
    f[tcp + 14..tcp + 16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&f[ip + 12..ip + 20]);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let c = !fold(sum16(&pseudo) + sum16(&f[tcp..tcp + 20]));
    f[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// Whether the IPv4 header and TCP checksums of a [`flood_syn`]-style frame hold.
#[cfg(test)]
pub fn checksums_ok(f: &[u8]) -> bool {
    let ip = 14;
    let tcp = 34;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&f[ip + 12..ip + 20]);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    fold(sum16(&f[ip..ip + 20])) == 0xffff
        && fold(sum16(&pseudo) + sum16(&f[tcp..tcp + 20])) == 0xffff
}

pub fn netblock(cidr: &str, max: Option<u64>, action: NetblockAction) -> NetblockSpec {
    let (a, p) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let addr: IpAddr = a.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    NetblockSpec {
        cidr: Cidr {
            addr,
            prefix: p.parse().unwrap_or(32),
        },
        max_connections: max,
        action,
    }
}

/// A latency histogram in µs, 1 µs to 60 s at 3 significant digits: the one every
/// scenario records into, so their percentiles compare.
pub fn latency_histogram() -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    Ok(hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// Median of a non-empty slice (sorted copy).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_frame_checksums_hold_before_and_after_the_rewrite() {
        let mut f = flood_syn(
            [2, 0, 0, 0, 0, 2],
            [2, 0, 0, 0, 0, 1],
            "198.51.100.0".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
        );
        assert!(checksums_ok(&f));
        // The program's rewrite, as done on a little-endian host.
        let r: u32 = 0x1234_a5c3;
        f[off::SPORT..off::SPORT + 2].copy_from_slice(&(r as u16).to_ne_bytes());
        f[off::SEQ_HI..off::SEQ_HI + 2]
            .copy_from_slice(&(0xffffu32.wrapping_sub(r) as u16).to_ne_bytes());
        let b = ((r >> 16) & 0xff) as u8;
        f[off::SADDR_LAST] = b;
        f[off::IP_ID_LO] = 0xff - b;
        f[off::ACK_LO] = 0xff - b;
        assert!(checksums_ok(&f));
        assert_eq!(f[off::SADDR_LAST], 0x34);
    }

    #[test]
    fn median_picks_the_middle() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
