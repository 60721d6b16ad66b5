//! From the configuration's `DuravipDecl`s to the per-address [`VipDecl`]s a node
//! announces, and the rules the configuration alone cannot check (they need the node's
//! own addresses).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::config::model::{Cidr, DuravipDecl, DuravipSource, Topology};

use super::assign::VipDecl;

/// A DuraVIP rule broken by this node's configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeclError {
    #[error(
        "{addr} is a main address of this node (on {ifname}); it cannot be a DuraVIP: the node would lose it when another node owns the VIP"
    )]
    MainAddress { addr: IpAddr, ifname: String },
    #[error(
        "DuraVIP {addr} ({source_desc}) is not inside any `Topology` network; add `Topology \"<network/prefix>\" {{ interface = \"…\" }}` covering it"
    )]
    NoTopology { addr: IpAddr, source_desc: String },
    #[error(
        "DuraVIP {addr} ({source_desc}) follows `{target}`, which is no DuraVIP binding name or address on this node"
    )]
    UnknownFollow {
        addr: IpAddr,
        source_desc: String,
        target: String,
    },
}

/// Where a declaration came from, for error messages and the services set.
pub fn source_desc(s: &DuravipSource) -> String {
    match s {
        DuravipSource::Binding { name } => format!("Binding \"{name}\""),
        DuravipSource::Listen { listener, spec } => format!("{listener} Listen \"{spec}\""),
    }
}

/// Fold the configuration's declarations into one [`VipDecl`] per address ("service
/// upgrade": an address DuraVIP on one service is DuraVIP on all of them).
pub fn declarations(decls: &[DuravipDecl]) -> Vec<VipDecl> {
    let mut by: BTreeMap<IpAddr, VipDecl> = BTreeMap::new();
    for d in decls {
        let v = by.entry(d.addr).or_insert_with(|| VipDecl {
            addr: d.addr,
            bindings: BTreeSet::new(),
            services: BTreeSet::new(),
            preference: None,
            follow: None,
        });
        match &d.source {
            DuravipSource::Binding { name } => {
                v.bindings.insert(name.clone());
                v.services.insert("Binding".to_owned());
            }
            DuravipSource::Listen { listener, .. } => {
                v.services.insert(listener.clone());
            }
        }
        if v.preference.is_none() {
            v.preference.clone_from(&d.preference);
        }
        if v.follow.is_none() {
            v.follow.clone_from(&d.follow);
        }
    }
    by.into_values().collect()
}

/// Whether `net` contains `addr` (same family, prefix bits equal).
pub fn cidr_contains(net: &Cidr, addr: &IpAddr) -> bool {
    match (net.addr, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let p = u32::from(net.prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            u32::from(n) & mask == u32::from(*a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let p = u32::from(net.prefix.min(128));
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            u128::from(n) & mask == u128::from(*a) & mask
        }
        _ => false,
    }
}

/// The Topology whose network holds `addr` (longest prefix wins).
pub fn topology_for<'a>(topology: &'a [Topology], addr: &IpAddr) -> Option<&'a Topology> {
    topology
        .iter()
        .filter(|t| cidr_contains(&t.network, addr))
        .max_by_key(|t| t.network.prefix)
}

/// Check the rules that need the node: no main address is a VIP, every VIP has a
/// Topology, every follow target exists. `main_addrs`: (address, interface) of the node's
/// own (non-DuraVIP) addresses, e.g. from [`super::plumb::Plumber::main_addresses`].
pub fn validate(
    decls: &[DuravipDecl],
    topology: &[Topology],
    main_addrs: &[(IpAddr, String)],
) -> Vec<DeclError> {
    let mut errs = Vec::new();
    let folded = declarations(decls);
    let mut seen = BTreeSet::new();
    for d in decls {
        if !seen.insert(d.addr) {
            continue;
        }
        let src = source_desc(&d.source);
        if let Some((_, ifname)) = main_addrs.iter().find(|(a, _)| *a == d.addr) {
            errs.push(DeclError::MainAddress {
                addr: d.addr,
                ifname: ifname.clone(),
            });
        }
        if topology_for(topology, &d.addr).is_none() {
            errs.push(DeclError::NoTopology {
                addr: d.addr,
                source_desc: src.clone(),
            });
        }
    }
    for d in decls {
        let Some(t) = &d.follow else { continue };
        let known = match t.parse::<IpAddr>() {
            Ok(a) => folded.iter().any(|v| v.addr == a),
            Err(_) => folded.iter().any(|v| v.bindings.contains(t)),
        };
        if !known {
            errs.push(DeclError::UnknownFollow {
                addr: d.addr,
                source_desc: source_desc(&d.source),
                target: t.clone(),
            });
        }
    }
    errs
}

/// IPv6 DuraVIPs above which the address plan is checked (see [`address_plan_advice`]).
const PLAN_CHECK_VIPS: usize = 512;

/// Advice when many IPv6 VIPs each need their own solicited-node multicast group: the
/// kernel walks every group of the interface on each address add, so plumbing n such VIPs
/// costs O(n²) (≈ 6 s for 4,096 on the project's machine) while VIPs sharing their low 24
/// bits (one group) plumb in ≈ 0.3 s (`vip_scale` bench, docs/duravip.md).
pub fn address_plan_advice(decls: &[DuravipDecl]) -> Option<String> {
    let v6: BTreeSet<std::net::Ipv6Addr> = decls
        .iter()
        .filter_map(|d| match d.addr {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        })
        .collect();
    let groups: BTreeSet<u32> = v6
        .iter()
        .map(|a| u32::from_be_bytes(a.octets()[12..16].try_into().unwrap_or([0; 4])) & 0x00ff_ffff)
        .collect();
    (v6.len() > PLAN_CHECK_VIPS && groups.len() > PLAN_CHECK_VIPS / 2).then(|| {
        format!(
            "{} IPv6 DuraVIPs use {} solicited-node multicast groups (one per distinct low 24 bits): \
             the kernel's cost of plumbing them grows with the square of that number, so a takeover \
             of all of them takes seconds; VIPs that share their low 24 bits (e.g. one ::1 per /80) \
             plumb ~20× faster (docs/duravip.md, \"Plumbing cost\")",
            v6.len(),
            groups.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(
        addr: &str,
        source: DuravipSource,
        pref: Option<&str>,
        follow: Option<&str>,
    ) -> DuravipDecl {
        DuravipDecl {
            addr: addr.parse().unwrap(),
            source,
            preference: pref.map(str::to_owned),
            follow: follow.map(str::to_owned),
        }
    }

    fn binding(n: &str) -> DuravipSource {
        DuravipSource::Binding { name: n.into() }
    }

    fn listen(spec: &str) -> DuravipSource {
        DuravipSource::Listen {
            listener: "ESMTP_Listener".into(),
            spec: spec.into(),
        }
    }

    fn topo(net: &str, prefix: u8) -> Topology {
        Topology {
            network: Cidr {
                addr: net.parse().unwrap(),
                prefix,
            },
            cidrmask: 32,
            interface: "eth1".into(),
        }
    }

    #[test]
    fn declarations_fold_services_per_address() {
        let d = declarations(&[
            decl("198.51.100.10", binding("foo"), Some("n1"), None),
            decl("198.51.100.10", listen("198.51.100.10:25"), None, None),
            decl(
                "198.51.100.11",
                listen("198.51.100.11:25"),
                None,
                Some("foo"),
            ),
        ]);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].bindings.iter().collect::<Vec<_>>(), ["foo"]);
        assert_eq!(
            d[0].services.iter().collect::<Vec<_>>(),
            ["Binding", "ESMTP_Listener"]
        );
        assert_eq!(d[0].preference.as_deref(), Some("n1"));
        assert_eq!(d[1].follow.as_deref(), Some("foo"));
    }

    #[test]
    fn main_address_topology_and_follow_rules() {
        let decls = [
            decl("198.51.100.1", binding("main"), None, None),
            decl("203.0.113.5", binding("far"), None, None),
            decl(
                "198.51.100.7",
                listen("198.51.100.7:25"),
                None,
                Some("nosuch"),
            ),
            decl(
                "198.51.100.8",
                listen("198.51.100.8:25"),
                None,
                Some("main"),
            ),
            decl("2001:db8::10", binding("six"), None, None),
        ];
        let topology = [topo("198.51.100.0", 24), topo("2001:db8::", 64)];
        let main = [("198.51.100.1".parse().unwrap(), "eth0".to_owned())];
        let errs = validate(&decls, &topology, &main);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(matches!(&errs[0], DeclError::MainAddress { ifname, .. } if ifname == "eth0"));
        assert!(
            matches!(&errs[1], DeclError::NoTopology { addr, .. } if addr.to_string() == "203.0.113.5")
        );
        assert!(matches!(&errs[2], DeclError::UnknownFollow { target, .. } if target == "nosuch"));
        assert!(errs[1].to_string().contains("Topology"));
    }

    #[test]
    fn longest_topology_wins() {
        let t = [topo("198.51.100.0", 24), topo("198.51.100.128", 25)];
        let a: IpAddr = "198.51.100.200".parse().unwrap();
        assert_eq!(topology_for(&t, &a).unwrap().network.prefix, 25);
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        assert_eq!(topology_for(&t, &b).unwrap().network.prefix, 24);
        assert!(topology_for(&t, &"2001:db8::1".parse().unwrap()).is_none());
    }

    #[test]
    fn address_plan_advice_counts_solicited_node_groups() {
        let spread: Vec<DuravipDecl> = (1..=600u32)
            .map(|k| {
                decl(
                    &format!("2001:db8:1::{:x}:{:x}", k >> 16, k & 0xffff),
                    binding("b"),
                    None,
                    None,
                )
            })
            .collect();
        let advice = address_plan_advice(&spread).expect("600 groups");
        assert!(advice.contains("600 IPv6 DuraVIPs use 600"), "{advice}");
        // The same count sharing the low 24 bits: one group, no advice.
        let shared: Vec<DuravipDecl> = (1..=600u32)
            .map(|k| {
                decl(
                    &format!("2001:db8:1:0:0:{k:x}:0:1"),
                    binding("b"),
                    None,
                    None,
                )
            })
            .collect();
        assert_eq!(address_plan_advice(&shared), None);
        // Few VIPs: nothing to say.
        assert_eq!(address_plan_advice(&spread[..100]), None);
    }
}
