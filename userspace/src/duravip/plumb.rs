//! Plumbing DuraVIP addresses with rtnetlink (no `ip` command), tagged so every address we
//! ever added is recognised later — after a crash, at the next start, by an operator.
//!
//! Tagging: every address carries `IFA_PROTO` = [`DURAVIP_PROTO`] (kernel ≥ 6.3 stores and
//! reports a user value for IPv4 and IPv6 alike; iproute2 ≥ 6.1 prints it, older ones
//! do not). IPv4 addresses also get the label `<ifname>:dv` when it fits in 15 bytes, so `ip addr` makes
//! them obvious. Recognition uses the protocol only: labels do not exist for IPv6.
//!
//! IPv6 addresses are added with `IFA_F_NODAD`: a VIP must answer at once, and a moved VIP
//! is by definition "duplicate" for a moment on the network.
//!
//! Damping ([`Reconciler`]): an owner change decided by an election is plumbed at once
//! ([`Trigger::Election`]); the periodic maintenance check (`if_check_interval`) re-plumbs
//! a desired-but-missing address only once it was missing in `if_down_limit` consecutive
//! checks ([`Trigger::Maintenance`]), so flapping interfaces are not chased. Removal of an
//! address we no longer own is always immediate: two owners are worse than none.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{
        AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressProtocol,
        AddressScope,
    },
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::config::model::Topology;

use super::decl::topology_for;

/// `IFA_PROTO` value marking addresses Duraplane plumbed (0xd5, "D"uraplane; values
/// 0–3 are the kernel's own).
pub const DURAVIP_PROTO: u8 = 0xd5;

/// Suffix of the IPv4 label (`eth1:dv`).
pub const LABEL_SUFFIX: &str = ":dv";

/// Plumbing failures, with what an operator needs to act.
#[derive(Debug, thiserror::Error)]
pub enum PlumbError {
    #[error("netlink socket: {source}")]
    Socket {
        #[source]
        source: std::io::Error,
    },
    #[error("netlink {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink {op}: malformed reply: {detail}")]
    Decode { op: &'static str, detail: String },
    #[error("netlink {op} {addr} on {ifname}: {source}")]
    Kernel {
        op: &'static str,
        addr: IpAddr,
        ifname: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "DuraVIP {addr} is not inside any `Topology` network: refusing to plumb it (add a Topology stanza covering it)"
    )]
    NoTopology { addr: IpAddr },
    #[error("interface `{ifname}` (Topology for {addr}) does not exist")]
    NoInterface { ifname: String, addr: IpAddr },
    #[error("cidrmask /{prefix} is too long for {addr}")]
    BadPrefix { addr: IpAddr, prefix: u8 },
}

/// A link: what plumbing and announcing need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// Empty for links without a hardware address.
    pub mac: Vec<u8>,
}

/// One address as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddress {
    pub addr: IpAddr,
    pub prefix: u8,
    pub index: u32,
    pub label: Option<String>,
    pub proto: Option<u8>,
    /// `IFA_F_*` (full 32 bits).
    pub flags: u32,
}

impl IfAddress {
    /// Whether we plumbed it (see the module doc).
    pub fn is_duravip(&self) -> bool {
        self.proto == Some(DURAVIP_PROTO)
    }

    /// IPv6 still doing duplicate address detection.
    pub fn is_tentative(&self) -> bool {
        self.flags & AddressFlags::Tentative.bits() != 0
    }
}

/// Where and how to plumb one VIP, from its Topology.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlumbSpec {
    pub addr: IpAddr,
    pub prefix: u8,
    pub ifname: String,
}

/// The plumbing of `addr` according to the Topology stanzas; refused outside them.
pub fn plan(addr: IpAddr, topology: &[Topology]) -> Result<PlumbSpec, PlumbError> {
    let t = topology_for(topology, &addr).ok_or(PlumbError::NoTopology { addr })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    // `cidrmask = 32` is the documented default, also for IPv6 Topology stanzas written
    // by v4 habit: 32 on a v6 VIP is honoured as written (a /32 prefix route) only if
    // explicitly meant; we take it literally.
    if t.cidrmask > max {
        return Err(PlumbError::BadPrefix {
            addr,
            prefix: t.cidrmask,
        });
    }
    Ok(PlumbSpec {
        addr,
        prefix: t.cidrmask,
        ifname: t.interface.clone(),
    })
}

/// A blocking rtnetlink socket in the caller's network namespace (the namespace of the
/// thread that calls [`Plumber::new`]).
#[derive(Debug)]
pub struct Plumber {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn family(a: &IpAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

impl Plumber {
    pub fn new() -> Result<Self, PlumbError> {
        let mut sock =
            Socket::new(NETLINK_ROUTE).map_err(|source| PlumbError::Socket { source })?;
        sock.bind_auto()
            .map_err(|source| PlumbError::Socket { source })?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|source| PlumbError::Socket { source })?;
        Ok(Plumber {
            sock,
            seq: 0,
            buf: Vec::new(),
        })
    }

    /// Send one request and collect the replies: every inner message of a dump until
    /// `NLMSG_DONE`, or the ACK/NACK of a change (a NACK is returned as `Err(errno)`).
    fn request(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Result<Vec<RouteNetlinkMessage>, std::io::Error>, PlumbError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock
            .send(&out, 0)
            .map_err(|source| PlumbError::Io { op, source })?;
        let mut got = Vec::new();
        loop {
            self.buf.clear();
            self.buf.reserve(1 << 16);
            self.sock
                .recv(&mut self.buf, 0)
                .map_err(|source| PlumbError::Io { op, source })?;
            let mut off = 0usize;
            while off < self.buf.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..])
                    .map_err(|e| PlumbError::Decode {
                        op,
                        detail: e.to_string(),
                    })?;
                let len = m.header.length as usize;
                if len == 0 {
                    return Err(PlumbError::Decode {
                        op,
                        detail: "zero-length message".into(),
                    });
                }
                off += len.div_ceil(4) * 4;
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(Ok(got)),
                    NetlinkPayload::Error(e) => {
                        return Ok(match e.code {
                            None => Ok(got),
                            Some(_) => Err(e.to_io()),
                        });
                    }
                    NetlinkPayload::InnerMessage(i) => got.push(i),
                    _ => {}
                }
            }
        }
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<LinkInfo>, PlumbError> {
        let replies = self
            .request(
                "dump links",
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_REQUEST | NLM_F_DUMP,
            )?
            .map_err(|source| PlumbError::Io {
                op: "dump links",
                source,
            })?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => {
                    let mut info = LinkInfo {
                        index: l.header.index,
                        name: String::new(),
                        mac: Vec::new(),
                    };
                    for a in l.attributes {
                        match a {
                            LinkAttribute::IfName(n) => info.name = n,
                            LinkAttribute::Address(mac) => info.mac = mac,
                            _ => {}
                        }
                    }
                    Some(info)
                }
                _ => None,
            })
            .collect())
    }

    /// The link called `ifname`.
    pub fn link(&mut self, ifname: &str) -> Result<Option<LinkInfo>, PlumbError> {
        Ok(self.links()?.into_iter().find(|l| l.name == ifname))
    }

    /// Every address of the namespace.
    pub fn addresses(&mut self) -> Result<Vec<IfAddress>, PlumbError> {
        let replies = self
            .request(
                "dump addresses",
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_REQUEST | NLM_F_DUMP,
            )?
            .map_err(|source| PlumbError::Io {
                op: "dump addresses",
                source,
            })?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let mut addr = None;
            let mut local = None;
            let mut label = None;
            let mut proto = None;
            let mut flags = u32::from(a.header.flags.bits());
            for at in a.attributes {
                match at {
                    AddressAttribute::Address(x) => addr = Some(x),
                    AddressAttribute::Local(x) => local = Some(x),
                    AddressAttribute::Label(l) => label = Some(l),
                    AddressAttribute::Protocol(p) => proto = Some(u8::from(p)),
                    AddressAttribute::Flags(f) => flags = f.bits(),
                    _ => {}
                }
            }
            // IPv4: IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on
            // point-to-point links).
            if let Some(addr) = local.or(addr) {
                out.push(IfAddress {
                    addr,
                    prefix: a.header.prefix_len,
                    index: a.header.index,
                    label,
                    proto,
                    flags,
                });
            }
        }
        Ok(out)
    }

    /// The addresses we plumbed (tagged), wherever they are.
    pub fn plumbed(&mut self) -> Result<Vec<IfAddress>, PlumbError> {
        Ok(self
            .addresses()?
            .into_iter()
            .filter(IfAddress::is_duravip)
            .collect())
    }

    /// The node's own addresses (not ours, not loopback or link-local), with their
    /// interface, for [`super::decl::validate`]'s "main address" rule.
    pub fn main_addresses(&mut self) -> Result<Vec<(IpAddr, String)>, PlumbError> {
        let names: BTreeMap<u32, String> = self
            .links()?
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect();
        Ok(self
            .addresses()?
            .into_iter()
            .filter(|a| !a.is_duravip() && !a.addr.is_loopback())
            .filter(|a| !matches!(a.addr, IpAddr::V6(v) if v.is_unicast_link_local()))
            .map(|a| {
                let n = names.get(&a.index).cloned().unwrap_or_default();
                (a.addr, n)
            })
            .collect())
    }

    fn message(spec_addr: IpAddr, prefix: u8, index: u32, ifname: &str) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = family(&spec_addr);
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.header.scope = AddressScope::Universe;
        m.attributes.push(AddressAttribute::Local(spec_addr));
        m.attributes.push(AddressAttribute::Address(spec_addr));
        if spec_addr.is_ipv4() && !ifname.is_empty() {
            let label = format!("{ifname}{LABEL_SUFFIX}");
            if label.len() <= 15 {
                m.attributes.push(AddressAttribute::Label(label));
            }
        }
        m
    }

    /// Plumb one address (tagged; IPv6 without DAD). Already present → `Ok(false)`.
    pub fn add(&mut self, spec: &PlumbSpec) -> Result<bool, PlumbError> {
        let link = self
            .link(&spec.ifname)?
            .ok_or_else(|| PlumbError::NoInterface {
                ifname: spec.ifname.clone(),
                addr: spec.addr,
            })?;
        self.add_at(spec, link.index)
    }

    /// As [`add`](Self::add) on the interface with index `index` (already looked up):
    /// one netlink round trip per address, which is what keeps 4,096 VIPs fast.
    pub fn add_at(&mut self, spec: &PlumbSpec, index: u32) -> Result<bool, PlumbError> {
        let max = if spec.addr.is_ipv4() { 32 } else { 128 };
        if spec.prefix > max {
            return Err(PlumbError::BadPrefix {
                addr: spec.addr,
                prefix: spec.prefix,
            });
        }
        let mut m = Self::message(spec.addr, spec.prefix, index, &spec.ifname);
        if spec.addr.is_ipv6() {
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        m.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                DURAVIP_PROTO,
            )));
        match self.request(
            "add address",
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )? {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(source) => Err(PlumbError::Kernel {
                op: "add address",
                addr: spec.addr,
                ifname: spec.ifname.clone(),
                source,
            }),
        }
    }

    /// Remove one address. Already gone → `Ok(false)`.
    pub fn remove(&mut self, a: &IfAddress) -> Result<bool, PlumbError> {
        let m = Self::message(a.addr, a.prefix, a.index, "");
        match self.request(
            "remove address",
            RouteNetlinkMessage::DelAddress(m),
            NLM_F_REQUEST | NLM_F_ACK,
        )? {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(source) => Err(PlumbError::Kernel {
                op: "remove address",
                addr: a.addr,
                ifname: format!("ifindex {}", a.index),
                source,
            }),
        }
    }

    /// Remove every tagged address: the clean slate Momentum starts from. Returns them.
    pub fn remove_orphans(&mut self) -> Result<Vec<IfAddress>, PlumbError> {
        let mut removed = Vec::new();
        for a in self.plumbed()? {
            if self.remove(&a)? {
                removed.push(a);
            }
        }
        Ok(removed)
    }
}

/// What started a reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The assignment changed: plumb at once.
    Election,
    /// The periodic `if_check_interval` check: missing addresses are damped.
    Maintenance,
}

/// What [`Reconciler::reconcile`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub added: Vec<PlumbSpec>,
    pub removed: Vec<IfAddress>,
    /// Desired, missing, waiting for more maintenance checks: (address, checks seen).
    pub pending: Vec<(IpAddr, u32)>,
    /// Desired but refused (no Topology, no interface): the daemon logs these.
    pub refused: Vec<(IpAddr, String)>,
}

impl Reconciled {
    pub fn changed(&self) -> bool {
        !self.added.is_empty() || !self.removed.is_empty()
    }
}

/// Keeps the kernel's tagged addresses equal to the desired set, with damping.
#[derive(Debug, Clone)]
pub struct Reconciler {
    down_limit: u32,
    missing: BTreeMap<IpAddr, u32>,
}

impl Reconciler {
    /// `down_limit`: `if_down_limit`; 0 or 1 means no damping.
    pub fn new(down_limit: u32) -> Self {
        Reconciler {
            down_limit,
            missing: BTreeMap::new(),
        }
    }

    /// Make the tagged addresses equal to `desired` (planned through `topology`).
    /// Idempotent: a second call with the same input changes nothing.
    pub fn reconcile(
        &mut self,
        p: &mut Plumber,
        desired: &BTreeSet<IpAddr>,
        topology: &[Topology],
        trigger: Trigger,
    ) -> Result<Reconciled, PlumbError> {
        let mut r = Reconciled::default();
        let links: BTreeMap<String, u32> =
            p.links()?.into_iter().map(|l| (l.name, l.index)).collect();
        let mut specs: BTreeMap<IpAddr, (PlumbSpec, u32)> = BTreeMap::new();
        for a in desired {
            match plan(*a, topology) {
                Ok(s) => match links.get(&s.ifname) {
                    Some(ix) => {
                        let ix = *ix;
                        specs.insert(*a, (s, ix));
                    }
                    None => r.refused.push((
                        *a,
                        PlumbError::NoInterface {
                            ifname: s.ifname,
                            addr: *a,
                        }
                        .to_string(),
                    )),
                },
                Err(e) => r.refused.push((*a, e.to_string())),
            }
        }
        let plumbed = p.plumbed()?;
        // Remove what is not wanted, or wanted elsewhere / with another prefix.
        let mut present = BTreeSet::new();
        for a in plumbed {
            let right = specs
                .get(&a.addr)
                .is_some_and(|(s, ix)| *ix == a.index && s.prefix == a.prefix);
            if right {
                present.insert(a.addr);
            } else if p.remove(&a)? {
                r.removed.push(a);
            }
        }
        self.missing
            .retain(|a, _| specs.contains_key(a) && !present.contains(a));
        for (a, (s, ix)) in &specs {
            if present.contains(a) {
                continue;
            }
            if trigger == Trigger::Maintenance && self.down_limit > 1 {
                let n = self.missing.entry(*a).or_insert(0);
                *n += 1;
                if *n < self.down_limit {
                    r.pending.push((*a, *n));
                    continue;
                }
            }
            self.missing.remove(a);
            p.add_at(s, *ix)?;
            r.added.push(s.clone());
        }
        Ok(r)
    }
}
