//! The only addresses test traffic may use: the documentation ranges (RFC 5737, RFC 3849).

use std::net::IpAddr;

use super::TestbedError;

/// RFC 5737 / RFC 3849 networks: (network, prefix length).
pub const DOCUMENTATION_NETS: &[(&str, u8)] = &[
    ("192.0.2.0", 24),
    ("198.51.100.0", 24),
    ("203.0.113.0", 24),
    ("2001:db8::", 32),
];

/// Whether `ip` lies in one of the documentation ranges.
pub fn is_documentation(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            matches!(
                (o[0], o[1], o[2]),
                (192, 0, 2) | (198, 51, 100) | (203, 0, 113)
            )
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            s[0] == 0x2001 && s[1] == 0x0db8
        }
    }
}

/// Whether the whole network `ip/prefix` lies inside one documentation range (so a route
/// or an on-link prefix never covers anything else).
pub fn is_documentation_net(ip: &IpAddr, prefix: u8) -> bool {
    let min = if ip.is_ipv4() { 24 } else { 32 };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    is_documentation(ip) && (min..=max).contains(&prefix)
}

/// Refuse anything outside the documentation ranges.
pub fn check_documentation(ip: &IpAddr) -> Result<(), TestbedError> {
    if is_documentation(ip) {
        Ok(())
    } else {
        Err(TestbedError::NotDocumentation {
            addr: ip.to_string(),
        })
    }
}

/// An interface address, `192.0.2.1/24` or `2001:db8::1/64`, inside a documentation range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IfAddr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl IfAddr {
    /// Parse and check: the address *and* its whole on-link network must be documentation
    /// space (so v4 prefixes are /24../32 and v6 /32../128). A bare address is a host
    /// address (/32, /128).
    pub fn parse(s: &str) -> Result<Self, TestbedError> {
        let bad = || TestbedError::BadAddress {
            input: s.to_string(),
        };
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix = match p {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None if ip.is_ipv4() => 32,
            None => 128,
        };
        check_documentation(&ip)?;
        if !is_documentation_net(&ip, prefix) {
            return Err(TestbedError::NotDocumentation {
                addr: s.to_string(),
            });
        }
        Ok(IfAddr { ip, prefix })
    }
}

impl std::fmt::Display for IfAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_documentation_ranges() {
        for ok in [
            "192.0.2.1",
            "198.51.100.254",
            "203.0.113.0",
            "2001:db8::1",
            "2001:db8:ffff::1",
        ] {
            assert!(is_documentation(&ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "8.8.8.8",
            "127.0.0.1",
            "192.0.3.1",
            "2001:db9::1",
            "fe80::1",
            "::1",
        ] {
            assert!(!is_documentation(&bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn ifaddr_checks_the_whole_network() {
        assert_eq!(
            IfAddr::parse("192.0.2.1/24").unwrap().to_string(),
            "192.0.2.1/24"
        );
        assert_eq!(IfAddr::parse("2001:db8::1").unwrap().prefix, 128);
        assert!(matches!(
            IfAddr::parse("192.0.2.1/16"),
            Err(TestbedError::NotDocumentation { .. })
        ));
        assert!(matches!(
            IfAddr::parse("10.1.1.1/24"),
            Err(TestbedError::NotDocumentation { .. })
        ));
        assert!(matches!(
            IfAddr::parse("2001:db8::1/16"),
            Err(TestbedError::NotDocumentation { .. })
        ));
        assert!(matches!(
            IfAddr::parse("x/24"),
            Err(TestbedError::BadAddress { .. })
        ));
        assert!(matches!(
            IfAddr::parse("192.0.2.1/33"),
            Err(TestbedError::NotDocumentation { .. })
        ));
    }
}
