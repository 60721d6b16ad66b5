//! Inbound accounting that needs no kernel: the CIDR tree of current connections that
//! `cluster shared show inbound_cidr` prints (Momentum's `cidrtree`), and the
//! `inbound show` table with SYN rates computed from successive samples.
//!
//! The poller that reads the XDP maps feeds both; keeping them pure makes them testable
//! byte-for-byte against Momentum's documented output (reference/momentum.md §3.1).

mod cidrtree;
mod service;
mod show;

pub use cidrtree::{CidrTree, shared_list_line};
pub use service::{InboundService, ServiceError};
pub use show::{NetblockRow, SynRateCalculator, render_inbound_show};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::Cidr;

/// Errors of the inbound accounting helpers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InboundError {
    /// A CIDR string that is not `address[/len]`.
    #[error("invalid CIDR `{input}`: {reason}")]
    BadCidr { input: String, reason: &'static str },
    /// A prefix length longer than the address family allows.
    #[error("prefix length {len} is too long for {addr} (max {max})")]
    PrefixTooLong { addr: IpAddr, len: u8, max: u8 },
}

/// Address width in bits of the family of `ip`.
pub(crate) fn width(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// The address as an integer, left-aligned in the family's width (v4 in the low 32 bits).
pub(crate) fn to_bits(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

pub(crate) fn from_bits(v4: bool, bits: u128) -> IpAddr {
    if v4 {
        // Callers only pass values that came from a 32-bit address.
        IpAddr::V4(Ipv4Addr::from(bits as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(bits))
    }
}

/// Mask keeping the first `len` bits of a `width`-bit value.
pub(crate) fn mask(width: u8, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        let all: u128 = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        all & !all.checked_shr(u32::from(len)).unwrap_or(0)
    }
}

/// Build a normalized [`Cidr`] (host bits cleared).
pub fn cidr(addr: IpAddr, len: u8) -> Result<Cidr, InboundError> {
    let w = width(&addr);
    if len > w {
        return Err(InboundError::PrefixTooLong { addr, len, max: w });
    }
    let bits = to_bits(&addr) & mask(w, len);
    Ok(Cidr {
        addr: from_bits(addr.is_ipv4(), bits),
        prefix: len,
    })
}

/// Parse `addr/len` or a bare address (a host route) into a normalized [`Cidr`].
pub fn parse_cidr(input: &str) -> Result<Cidr, InboundError> {
    let bad = |reason| InboundError::BadCidr {
        input: input.to_string(),
        reason,
    };
    let (a, l) = match input.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (input, None),
    };
    let addr: IpAddr = a.trim().parse().map_err(|_| bad("not an IP address"))?;
    let len = match l {
        Some(l) => l
            .trim()
            .parse::<u8>()
            .map_err(|_| bad("bad prefix length"))?,
        None => width(&addr),
    };
    cidr(addr, len)
}

/// Whether `ip` falls inside `net` (families must match).
pub fn cidr_contains(net: &Cidr, ip: &IpAddr) -> bool {
    if net.addr.is_ipv4() != ip.is_ipv4() {
        return false;
    }
    let w = width(ip);
    to_bits(ip) & mask(w, net.prefix) == to_bits(&net.addr) & mask(w, net.prefix)
}

/// `addr/len` as Momentum prints it.
pub fn cidr_string(c: &Cidr) -> String {
    format!("{}/{}", c.addr, c.prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalizes_and_rejects() {
        let c = parse_cidr("192.0.2.77/24").unwrap();
        assert_eq!(cidr_string(&c), "192.0.2.0/24");
        assert_eq!(
            cidr_string(&parse_cidr("2001:db8::1").unwrap()),
            "2001:db8::1/128"
        );
        assert_eq!(
            cidr_string(&parse_cidr("2001:db8:ffff::/33").unwrap()),
            "2001:db8:8000::/33"
        );
        assert_eq!(cidr_string(&parse_cidr("0.0.0.0/0").unwrap()), "0.0.0.0/0");
        assert!(matches!(
            parse_cidr("192.0.2.0/33"),
            Err(InboundError::PrefixTooLong { len: 33, .. })
        ));
        assert!(matches!(
            parse_cidr("nope/8"),
            Err(InboundError::BadCidr { .. })
        ));
        assert!(matches!(
            parse_cidr("192.0.2.0/x"),
            Err(InboundError::BadCidr { .. })
        ));
    }

    #[test]
    fn contains_respects_family_and_mask() {
        let n = parse_cidr("198.51.100.0/25").unwrap();
        assert!(cidr_contains(&n, &"198.51.100.127".parse().unwrap()));
        assert!(!cidr_contains(&n, &"198.51.100.128".parse().unwrap()));
        assert!(!cidr_contains(&n, &"2001:db8::1".parse().unwrap()));
        let all = parse_cidr("::/0").unwrap();
        assert!(cidr_contains(&all, &"2001:db8::1".parse().unwrap()));
    }
}
