//! The node's identity, by Momentum's rules (reference/momentum.md §1.3):
//!
//! - nodename: `cluster { nodename }`, else env `EC_NODE_NAME`, else the system hostname
//!   truncated at the first '.';
//! - nodeaddr: `cluster { nodeaddr }`, else the first usable address the nodename resolves
//!   to (getaddrinfo), else the first usable address of the host's interfaces (IPv4 before
//!   IPv6). "Usable" excludes loopback, unspecified, multicast and IPv6 link-local; an
//!   explicit loopback nodeaddr is an error (Momentum: "must not be 127.0.0.1").
//!
//! Debian maps the hostname to 127.0.1.1 in /etc/hosts, which is why loopback answers from
//! the resolver fall through to the interface addresses rather than failing.

use std::net::{IpAddr, ToSocketAddrs};

/// Where the nodename came from (shown in logs and `check-config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    Config,
    Env,
    Hostname,
}

/// Where the nodeaddr came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrSource {
    Config,
    Resolved,
    Interface,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub nodename: String,
    pub nodename_source: NameSource,
    pub nodeaddr: IpAddr,
    pub nodeaddr_source: AddrSource,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "cannot determine the node name: no cluster {{ nodename }}, no EC_NODE_NAME and the hostname is {hostname:?}"
    )]
    NoNodename { hostname: Option<String> },
    #[error(
        "cluster {{ nodeaddr = {addr} }} is not usable: the node address must be routable on the cluster network, never loopback, unspecified or multicast"
    )]
    BadNodeaddr { addr: IpAddr },
    #[error(
        "cannot determine the node address: '{nodename}' resolves to no usable address ({resolved}) and no interface has a non-loopback address; set cluster {{ nodeaddr = … }}"
    )]
    NoNodeaddr { nodename: String, resolved: String },
}

/// The host facts identity resolution depends on; injectable for tests.
pub trait HostFacts {
    /// `EC_NODE_NAME`.
    fn env_node_name(&self) -> Option<String>;
    fn hostname(&self) -> Option<String>;
    /// getaddrinfo(name), in resolver order; empty when it fails.
    fn resolve(&self, name: &str) -> Vec<IpAddr>;
    /// Interface addresses, in getifaddrs order.
    fn interface_addrs(&self) -> Vec<IpAddr>;
}

/// The real host.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemHost;

impl HostFacts for SystemHost {
    fn env_node_name(&self) -> Option<String> {
        std::env::var("EC_NODE_NAME").ok()
    }

    fn hostname(&self) -> Option<String> {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
    }

    fn resolve(&self, name: &str) -> Vec<IpAddr> {
        match (name, 0u16).to_socket_addrs() {
            Ok(it) => it.map(|sa| sa.ip()).collect(),
            Err(e) => {
                tracing::debug!(name, error = %e, "nodename does not resolve");
                Vec::new()
            }
        }
    }

    fn interface_addrs(&self) -> Vec<IpAddr> {
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
            return Vec::new();
        };
        addrs
            .filter_map(|ifa| {
                let a = ifa.address?;
                if let Some(v4) = a.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .collect()
    }
}

/// True for addresses that can never be a cluster address.
fn forbidden(a: &IpAddr) -> bool {
    let a = a.to_canonical();
    a.is_loopback() || a.is_unspecified() || a.is_multicast()
}

/// What an automatically chosen address must also avoid: IPv6 link-local needs a scope id
/// peers cannot know; IPv4 link-local (169.254/16) is not routable either.
fn usable_auto(a: &IpAddr) -> bool {
    if forbidden(a) {
        return false;
    }
    match a.to_canonical() {
        IpAddr::V4(v4) => !v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// Resolves the identity from the explicit options and the host facts.
pub fn resolve(
    nodename: Option<&str>,
    nodeaddr: Option<IpAddr>,
    host: &dyn HostFacts,
) -> Result<Identity, IdentityError> {
    let explicit = nodename.map(str::trim).filter(|n| !n.is_empty());
    let (nodename, nodename_source) = if let Some(n) = explicit {
        (n.to_owned(), NameSource::Config)
    } else if let Some(n) = host.env_node_name().filter(|n| !n.trim().is_empty()) {
        (n.trim().to_owned(), NameSource::Env)
    } else {
        let hostname = host.hostname();
        let short = hostname
            .as_deref()
            .and_then(|h| h.split('.').next())
            .map(str::trim)
            .filter(|h| !h.is_empty());
        match short {
            Some(s) => (s.to_owned(), NameSource::Hostname),
            None => return Err(IdentityError::NoNodename { hostname }),
        }
    };

    let (nodeaddr, nodeaddr_source) = if let Some(a) = nodeaddr {
        if forbidden(&a) {
            return Err(IdentityError::BadNodeaddr { addr: a });
        }
        (a, AddrSource::Config)
    } else {
        let resolved = host.resolve(&nodename);
        if let Some(a) = resolved.iter().find(|a| usable_auto(a)) {
            (*a, AddrSource::Resolved)
        } else {
            let ifs = host.interface_addrs();
            let pick = ifs
                .iter()
                .find(|a| a.is_ipv4() && usable_auto(a))
                .or_else(|| ifs.iter().find(|a| usable_auto(a)));
            match pick {
                Some(a) => (*a, AddrSource::Interface),
                None => {
                    return Err(IdentityError::NoNodeaddr {
                        nodename,
                        resolved: if resolved.is_empty() {
                            "does not resolve".into()
                        } else {
                            resolved
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                    });
                }
            }
        }
    };
    Ok(Identity {
        nodename,
        nodename_source,
        nodeaddr,
        nodeaddr_source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        env: Option<String>,
        hostname: Option<String>,
        resolved: Vec<IpAddr>,
        ifs: Vec<IpAddr>,
    }

    impl HostFacts for Fake {
        fn env_node_name(&self) -> Option<String> {
            self.env.clone()
        }
        fn hostname(&self) -> Option<String> {
            self.hostname.clone()
        }
        fn resolve(&self, _: &str) -> Vec<IpAddr> {
            self.resolved.clone()
        }
        fn interface_addrs(&self) -> Vec<IpAddr> {
            self.ifs.clone()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn explicit_wins() {
        let host = Fake {
            env: Some("envname".into()),
            hostname: Some("h.example.com".into()),
            resolved: vec![ip("198.51.100.7")],
            ..Fake::default()
        };
        let id = resolve(Some("mta1"), Some(ip("192.0.2.5")), &host).unwrap();
        assert_eq!(id.nodename, "mta1");
        assert_eq!(id.nodename_source, NameSource::Config);
        assert_eq!(id.nodeaddr, ip("192.0.2.5"));
        assert_eq!(id.nodeaddr_source, AddrSource::Config);
    }

    #[test]
    fn env_before_hostname() {
        let host = Fake {
            env: Some("labrat-1".into()),
            hostname: Some("h.example.com".into()),
            resolved: vec![ip("198.51.100.7")],
            ..Fake::default()
        };
        let id = resolve(None, None, &host).unwrap();
        assert_eq!(id.nodename, "labrat-1");
        assert_eq!(id.nodename_source, NameSource::Env);
        assert_eq!(id.nodeaddr, ip("198.51.100.7"));
        assert_eq!(id.nodeaddr_source, AddrSource::Resolved);
    }

    #[test]
    fn hostname_truncated_at_first_dot() {
        let host = Fake {
            env: Some("  ".into()),
            hostname: Some("relay-0-1.mail.example.com".into()),
            resolved: vec![ip("2001:db8::25")],
            ..Fake::default()
        };
        let id = resolve(None, None, &host).unwrap();
        assert_eq!(id.nodename, "relay-0-1");
        assert_eq!(id.nodename_source, NameSource::Hostname);
        assert_eq!(id.nodeaddr, ip("2001:db8::25"));
    }

    #[test]
    fn loopback_resolution_falls_back_to_interfaces_ipv4_first() {
        let host = Fake {
            hostname: Some("vm".into()),
            resolved: vec![ip("127.0.1.1")],
            ifs: vec![
                ip("127.0.0.1"),
                ip("::1"),
                ip("fe80::1"),
                ip("2001:db8::2"),
                ip("169.254.0.9"),
                ip("192.0.2.2"),
            ],
            ..Fake::default()
        };
        let id = resolve(None, None, &host).unwrap();
        assert_eq!(id.nodeaddr, ip("192.0.2.2"));
        assert_eq!(id.nodeaddr_source, AddrSource::Interface);
    }

    #[test]
    fn loopback_rejected() {
        let host = Fake {
            hostname: Some("vm".into()),
            ..Fake::default()
        };
        for bad in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0"] {
            assert_eq!(
                resolve(Some("n"), Some(ip(bad)), &host),
                Err(IdentityError::BadNodeaddr { addr: ip(bad) })
            );
        }
        let only_lo = Fake {
            hostname: Some("vm".into()),
            resolved: vec![ip("127.0.1.1")],
            ifs: vec![ip("127.0.0.1"), ip("::1")],
            ..Fake::default()
        };
        assert!(matches!(
            resolve(None, None, &only_lo),
            Err(IdentityError::NoNodeaddr { .. })
        ));
    }

    #[test]
    fn no_hostname_is_an_error() {
        let host = Fake {
            hostname: Some(".".into()),
            ..Fake::default()
        };
        assert!(matches!(
            resolve(None, None, &host),
            Err(IdentityError::NoNodename { .. })
        ));
    }
}
