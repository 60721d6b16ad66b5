//! Shared helpers of Duraplane's command-line tools.
//!
//! * [`frames`]: live TCP frames — `duraplane::bpf::frames` layouts with real MACs,
//!   sequence numbers and valid checksums.
//! * [`sources`]: spoofed source addresses drawn from a CIDR.
//! * [`neigh`]: destination MAC from the kernel neighbour table.
//! * [`connect`]: many real TCP connections bound to chosen source addresses.
//! * [`tail`]: the options and output lines of `dp-logctl tail` and `dp-logsub tail`.

pub mod connect;
pub mod frames;
pub mod neigh;
pub mod sources;
pub mod tail;

use std::net::IpAddr;

use duraplane::{
    config::Cidr,
    inbound::{cidr_string, parse_cidr},
    testbed::{is_documentation, is_documentation_net},
};

/// Errors of the tool helpers.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(
        "{what} {addr} is outside the documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32)"
    )]
    NotDocumentation { what: &'static str, addr: String },
    #[error(transparent)]
    Cidr(#[from] duraplane::inbound::InboundError),
    #[error("{what}: {errno}")]
    Sys { what: String, errno: nix::Error },
    #[error("no neighbour entry for {addr} on {ifname} (is the address on that link?)")]
    NoNeighbour { addr: IpAddr, ifname: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad MAC address `{input}`")]
    BadMac { input: String },
}

/// Refuse an address outside the documentation ranges.
pub fn require_documentation(what: &'static str, ip: &IpAddr) -> Result<(), ToolError> {
    if is_documentation(ip) {
        Ok(())
    } else {
        Err(ToolError::NotDocumentation {
            what,
            addr: ip.to_string(),
        })
    }
}

/// Parse a CIDR that must lie entirely inside one documentation range.
pub fn documentation_cidr(what: &'static str, s: &str) -> Result<Cidr, ToolError> {
    let c = parse_cidr(s)?;
    if is_documentation_net(&c.addr, c.prefix) {
        Ok(c)
    } else {
        Err(ToolError::NotDocumentation {
            what,
            addr: cidr_string(&c),
        })
    }
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], ToolError> {
    let bad = || ToolError::BadMac {
        input: s.to_string(),
    };
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// Format a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documentation_only() {
        assert!(documentation_cidr("source", "198.51.100.0/24").is_ok());
        assert!(documentation_cidr("source", "2001:db8:1::/48").is_ok());
        assert!(documentation_cidr("source", "198.51.0.0/16").is_err());
        assert!(documentation_cidr("source", "10.0.0.0/24").is_err());
        assert!(require_documentation("destination", &"192.0.2.1".parse().unwrap()).is_ok());
        assert!(require_documentation("destination", &"192.168.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn macs() {
        let m = parse_mac("02:00:5e:10:00:0A").unwrap();
        assert_eq!(mac_string(&m), "02:00:5e:10:00:0a");
        assert!(parse_mac("02:00:5e:10:00").is_err());
        assert!(parse_mac("02:00:5e:10:00:zz").is_err());
    }
}
