//! Source addresses and ports for generated flows, reproducible so that a second run with
//! `--kind fin|rst` closes exactly the flows the first run opened.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use duraplane::config::Cidr;

/// xorshift64*: tiny, seedable, good enough for spreading test traffic.
#[derive(Debug, Clone)]
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

/// How sources are picked from the CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Address `i mod size` for flow `i`.
    Sequential,
    /// A seeded random address per flow.
    Random,
}

/// The `i`-th flow's source address and port.
#[derive(Debug, Clone)]
pub struct Sources {
    net: Cidr,
    mode: Mode,
    rng: Rng,
    /// Number of addresses in the CIDR, capped at 2^64.
    size: u128,
}

impl Sources {
    pub fn new(net: Cidr, mode: Mode, seed: u64) -> Self {
        let width = if net.addr.is_ipv4() { 32 } else { 128 };
        let host_bits = width - u32::from(net.prefix);
        let size = if host_bits >= 64 {
            1u128 << 64
        } else {
            1u128 << host_bits
        };
        Sources {
            net,
            mode,
            rng: Rng::new(seed),
            size,
        }
    }

    /// Next flow's (source address, source port).
    pub fn flow(&mut self, i: u64) -> (IpAddr, u16) {
        let (offset, port) = match self.mode {
            Mode::Sequential => {
                let off = u128::from(i) % self.size;
                let round = u128::from(i) / self.size;
                (off, 1024 + (round % 64512) as u16)
            }
            Mode::Random => {
                let r = self.rng.next_u64();
                let p = self.rng.next_u64();
                (u128::from(r) % self.size, 1024 + (p % 64512) as u16)
            }
        };
        let addr = match self.net.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from((u128::from(u32::from(a)) + offset) as u32)),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(offset))),
        };
        (addr, port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duraplane::inbound::{cidr_contains, parse_cidr};
    use std::collections::HashSet;

    #[test]
    fn sequential_covers_the_block_then_changes_port() {
        let net = parse_cidr("198.51.100.0/30").unwrap();
        let mut s = Sources::new(net, Mode::Sequential, 1);
        let flows: Vec<_> = (0..8).map(|i| s.flow(i)).collect();
        let addrs: HashSet<_> = flows.iter().map(|f| f.0).collect();
        assert_eq!(addrs.len(), 4);
        assert_eq!(flows[0], ("198.51.100.0".parse().unwrap(), 1024));
        assert_eq!(flows[5], ("198.51.100.1".parse().unwrap(), 1025));
        let all: HashSet<_> = flows.iter().collect();
        assert_eq!(all.len(), 8, "every flow is a distinct 4-tuple");
    }

    #[test]
    fn random_stays_inside_and_is_reproducible() {
        for c in ["203.0.113.0/24", "2001:db8:5::/48", "192.0.2.9/32"] {
            let net = parse_cidr(c).unwrap();
            let mut a = Sources::new(net, Mode::Random, 42);
            let mut b = Sources::new(net, Mode::Random, 42);
            for i in 0..500 {
                let f = a.flow(i);
                assert!(cidr_contains(&net, &f.0), "{} outside {c}", f.0);
                assert!(f.1 >= 1024);
                assert_eq!(f, b.flow(i));
            }
        }
    }
}
