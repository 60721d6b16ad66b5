//! `inbound_cidr` on top of the generic slots: keys are the configured netblocks (their
//! remote totals go into the kernel REMOTE map, which the XDP program adds to its local
//! count for enforcement) and the sources with open connections (the cluster-wide CIDR
//! tree of `cluster shared show inbound_cidr`).
//!
//! Keys: `'N' ‖ prefix ‖ addr(4|16)` for a netblock, `'S' ‖ addr(4|16)` for a source.
//! Netblocks are keyed by CIDR, not by the node-local map id, so nodes agree on them.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::mpsc::{self, RecvTimeoutError},
    thread::JoinHandle,
    time::Duration,
};

use super::{ReplicationHandle, Sink, slots::Key};
use crate::{
    bpf::{NetblockCounters, SourceCount},
    config::Cidr,
    console::ConsoleError,
    inbound::{CidrTree, shared_list_line},
};

/// The object name (Momentum's `Replicate "inbound_cidr" {}`).
pub const INBOUND_CIDR: &str = "inbound_cidr";
/// The applier re-writes every netblock this often even without changes (self-healing
/// after a netblock reload reset the kernel's REMOTE entries).
const REFRESH: Duration = Duration::from_secs(1);

/// A decoded `inbound_cidr` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundKey {
    Netblock(Cidr),
    Source(IpAddr),
}

fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn addr_of(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        16 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

pub fn netblock_key(c: &Cidr) -> Key {
    let mut k = vec![b'N', c.prefix];
    k.extend(addr_bytes(&c.addr));
    k
}

pub fn source_key(ip: &IpAddr) -> Key {
    let mut k = vec![b'S'];
    k.extend(addr_bytes(ip));
    k
}

/// `None` for keys this version does not know (ignored, never an error).
pub fn decode_key(k: &[u8]) -> Option<InboundKey> {
    match k.split_first()? {
        (b'N', rest) => {
            let (prefix, a) = rest.split_first()?;
            let addr = addr_of(a)?;
            let c = crate::inbound::cidr(addr, *prefix).ok()?;
            Some(InboundKey::Netblock(c))
        }
        (b'S', a) => addr_of(a).map(InboundKey::Source),
        _ => None,
    }
}

/// This node's slot from one poll: local count per configured netblock and the sources
/// with open connections (bounded: zero counts are absent).
pub fn local_table(netblocks: &[NetblockCounters], sources: &[SourceCount]) -> HashMap<Key, i64> {
    let mut m = HashMap::new();
    for nb in netblocks {
        if let Some(c) = nb.cidr
            && nb.local > 0
        {
            m.insert(
                netblock_key(&c),
                i64::try_from(nb.local).unwrap_or(i64::MAX),
            );
        }
    }
    for s in sources {
        if s.current > 0 {
            m.insert(
                source_key(&s.addr),
                i64::try_from(s.current).unwrap_or(i64::MAX),
            );
        }
    }
    m
}

/// The CIDR tree of the source keys of a slot or a total.
pub fn tree_of(values: &HashMap<Key, i64>) -> CidrTree {
    let mut t = CidrTree::new();
    for (k, v) in values {
        if let Some(InboundKey::Source(ip)) = decode_key(k)
            && *v > 0
        {
            t.set(ip, *v as u64);
        }
    }
    t
}

/// What the inbound poller and console use of replication.
#[derive(Debug, Clone)]
pub struct InboundLink {
    repl: ReplicationHandle,
}

impl InboundLink {
    pub fn new(repl: ReplicationHandle) -> Self {
        InboundLink { repl }
    }

    /// Hands one poll's local counts to replication.
    pub fn publish_local(&self, netblocks: &[NetblockCounters], sources: &[SourceCount]) {
        self.repl
            .publish(INBOUND_CIDR, local_table(netblocks, sources));
    }

    /// `cluster shared list`.
    pub fn render_list(&self) -> String {
        let mut out = "Currently managed objects:\n".to_owned();
        for o in self.repl.objects() {
            // Momentum's wording where it has one; the scope name decides the type unless a
            // `type`/`class` overrides it, and only caches may carry other names.
            let kind = match o.as_str() {
                INBOUND_CIDR | super::outbound::OUTBOUND_CIDR => CidrTree::LIST_KIND,
                "outbound_domains" | "outbound_binding_domains" => "lazy, gauge table w/ snapshots",
                "shared_named_throttles" => "lazy, throttle table w/ snapshots",
                _ => "lazy, cache",
            };
            out.push_str(&shared_list_line(&o, kind));
            out.push('\n');
        }
        out
    }

    /// `cluster shared show inbound_cidr [from NODE]`: the sum of the live slots, or one
    /// node's slot under its private name.
    pub fn render_show(&self, from: Option<&str>) -> Result<String, ConsoleError> {
        render_tree_show(&self.repl, INBOUND_CIDR, from)
    }
}

/// `cluster shared show OBJECT [from NODE]` for a CIDR-tree object (`inbound_cidr`,
/// `outbound_cidr`: both key addresses as `'S' ‖ addr`): the sum of the live slots (view
/// `'global'`), or one node's slot under its private name.
pub fn render_tree_show(
    repl: &ReplicationHandle,
    object: &str,
    from: Option<&str>,
) -> Result<String, ConsoleError> {
    match from {
        None => {
            let g = repl.global(object).unwrap_or_default();
            Ok(tree_of(&g).render(object, "global"))
        }
        Some(node) => {
            let slot = repl
                .slot(object, node)
                .ok_or_else(|| ConsoleError::Failed {
                    message: format!(
                        "no {object} slot from node '{node}' (not in the cluster view or not connected; see 'cluster membership')"
                    ),
                })?;
            let view = repl.private_name(node).unwrap_or_else(|| node.to_owned());
            Ok(tree_of(&slot).render(object, &view))
        }
    }
}

/// A sink for `inbound_cidr` that hands the netblock remote totals to `apply` on its own
/// thread (the reactor never waits for the kernel map or the data plane lock). The thread
/// ends when the sink is dropped (the engine stopped).
pub fn remote_applier(
    mut apply: impl FnMut(&[(Cidr, u64)]) + Send + 'static,
) -> std::io::Result<(Sink, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<Vec<(Key, i64)>>();
    let thread = std::thread::Builder::new()
        .name("repl-apply".into())
        .spawn(move || {
            let mut totals: HashMap<Cidr, u64> = HashMap::new();
            loop {
                let first = match rx.recv_timeout(REFRESH) {
                    Ok(v) => Some(v),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                };
                let mut changed = first.is_none();
                for batch in first.into_iter().chain(rx.try_iter()) {
                    for (k, v) in batch {
                        if let Some(InboundKey::Netblock(c)) = decode_key(&k) {
                            changed = true;
                            if v > 0 {
                                totals.insert(c, v as u64);
                            } else {
                                totals.remove(&c);
                            }
                        }
                    }
                }
                if !changed {
                    continue;
                }
                let v: Vec<(Cidr, u64)> = totals.iter().map(|(c, v)| (*c, *v)).collect();
                apply(&v);
            }
        })?;
    let sink: Sink = Box::new(move |keys| {
        let _ = tx.send(keys);
    });
    Ok((sink, thread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::parse_cidr;

    #[test]
    fn keys_roundtrip_and_unknown_keys_are_ignored() {
        for c in ["192.0.2.0/24", "2001:db8::/32", "0.0.0.0/0"] {
            let c = parse_cidr(c).unwrap();
            assert_eq!(decode_key(&netblock_key(&c)), Some(InboundKey::Netblock(c)));
        }
        for a in ["198.51.100.7", "2001:db8::1"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(decode_key(&source_key(&ip)), Some(InboundKey::Source(ip)));
        }
        assert_eq!(decode_key(b"X123"), None);
        assert_eq!(decode_key(b"S12"), None);
        assert_eq!(decode_key(&[b'N', 40, 1, 2, 3, 4]), None);
        assert_eq!(decode_key(&[]), None);
    }

    #[test]
    fn tree_shows_sources_only() {
        let mut m = HashMap::new();
        m.insert(source_key(&"198.51.100.7".parse().unwrap()), 2);
        m.insert(source_key(&"198.51.100.9".parse().unwrap()), 1);
        m.insert(netblock_key(&parse_cidr("198.51.100.0/24").unwrap()), 3);
        let t = tree_of(&m);
        assert_eq!(t.total(), 3);
        let text = t.render(INBOUND_CIDR, "global");
        assert!(text.starts_with("lazy, snapped cidrtree 'inbound_cidr', view 'global'\n"));
        assert!(text.contains("198.51.100.7/32"), "{text}");
    }
}
