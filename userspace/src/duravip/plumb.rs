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
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::config::model::Topology;

use super::decl::topology_for;

/// `IFA_PROTO` value marking addresses Duraplane plumbed (0xd5, "D"uraplane; values
/// 0–3 are the kernel's own).
pub const DURAVIP_PROTO: u8 = 0xd5;

/// Suffix of the IPv4 label (`eth1:dv`).
pub const LABEL_SUFFIX: &str = ":dv";

/// Changes sent in one `sendmsg` ([`Plumber::add_many`], [`Plumber::remove_many`]). Only the
/// last of a window asks for an ACK; failures are NACKed anyway, at most one per message, so a
/// window's replies (≈ 1 KiB of receive buffer each) always fit the buffer set in
/// [`Plumber::new`] and none is dropped.
pub const WINDOW: usize = 128;

/// Receive buffer asked for (the kernel caps it at `net.core.rmem_max`, doubled).
const RX_BUF: usize = 1 << 20;

/// `RT_TABLE_LOCAL`: where the kernel puts the `local` route of every address.
const TABLE_LOCAL: u8 = 255;

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
        sock.set_rx_buf_sz(RX_BUF)
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
            for m in self.receive(op)? {
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

    /// Reads one datagram and decodes every netlink message in it.
    fn receive(
        &mut self,
        op: &'static str,
    ) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, PlumbError> {
        self.buf.clear();
        self.buf.reserve(1 << 16);
        self.sock
            .recv(&mut self.buf, 0)
            .map_err(|source| PlumbError::Io { op, source })?;
        let mut msgs = Vec::new();
        let mut off = 0usize;
        while off < self.buf.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..]).map_err(
                |e| PlumbError::Decode {
                    op,
                    detail: e.to_string(),
                },
            )?;
            let len = m.header.length as usize;
            if len == 0 {
                return Err(PlumbError::Decode {
                    op,
                    detail: "zero-length message".into(),
                });
            }
            off += len.div_ceil(4) * 4;
            msgs.push(m);
        }
        Ok(msgs)
    }

    /// Send changes as pipelined windows of [`WINDOW`] messages, one `sendmsg` each, and
    /// return every message's outcome in order (`None`: done, `Some(errno)`: NACKed). Only the
    /// last message of a window asks for an ACK: netlink handles a datagram's messages in
    /// order, so once that ACK is read every NACK of the window has been read before it.
    fn batch(
        &mut self,
        op: &'static str,
        msgs: Vec<(RouteNetlinkMessage, u16)>,
    ) -> Result<Vec<Option<std::io::Error>>, PlumbError> {
        let mut out: Vec<Option<std::io::Error>> = Vec::with_capacity(msgs.len());
        let mut it = msgs.into_iter().peekable();
        let mut wire = Vec::new();
        while it.peek().is_some() {
            let window: Vec<_> = it.by_ref().take(WINDOW).collect();
            let n = window.len();
            let first = self.seq.wrapping_add(1);
            wire.clear();
            for (k, (msg, flags)) in window.into_iter().enumerate() {
                self.seq = self.seq.wrapping_add(1);
                let mut header = NetlinkHeader::default();
                header.flags = if k + 1 == n {
                    flags | NLM_F_ACK
                } else {
                    flags & !NLM_F_ACK
                };
                header.sequence_number = self.seq;
                let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
                nl.finalize();
                let start = wire.len();
                let len = nl.buffer_len();
                wire.resize(start + len.div_ceil(4) * 4, 0);
                nl.serialize(&mut wire[start..start + len]);
            }
            let last = self.seq;
            self.sock
                .send(&wire, 0)
                .map_err(|source| PlumbError::Io { op, source })?;
            let mut res: Vec<Option<std::io::Error>> = (0..n).map(|_| None).collect();
            let mut done = false;
            while !done {
                for m in self.receive(op)? {
                    let seq = m.header.sequence_number;
                    let idx = seq.wrapping_sub(first) as usize;
                    if idx >= n {
                        continue;
                    }
                    if let NetlinkPayload::Error(e) = m.payload {
                        if e.code.is_some() {
                            res[idx] = Some(e.to_io());
                        }
                        if seq == last {
                            done = true;
                        }
                    }
                }
            }
            out.extend(res);
        }
        Ok(out)
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

    /// As [`add`](Self::add) on the interface with index `index` (already looked up).
    pub fn add_at(&mut self, spec: &PlumbSpec, index: u32) -> Result<bool, PlumbError> {
        let added = self.add_many(&[(spec.clone(), index)])?;
        Ok(added.first().copied().unwrap_or(false))
    }

    /// The `RTM_NEWADDR` of one VIP: tagged; IPv6 without DAD, and a /128 without the prefix
    /// route (it would be the address itself, which the kernel's `local` route already
    /// covers, and every later IPv6 address removal walks all routes: half as many is
    /// twice as fast).
    fn add_message(spec: &PlumbSpec, index: u32) -> Result<AddressMessage, PlumbError> {
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
            let mut flags = AddressFlags::Nodad;
            if spec.prefix == max {
                flags |= AddressFlags::Noprefixroute;
            }
            m.attributes.push(AddressAttribute::Flags(flags));
        }
        m.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                DURAVIP_PROTO,
            )));
        Ok(m)
    }

    /// Plumb many addresses, each on the interface index given (already looked up), in
    /// pipelined windows ([`WINDOW`] per `sendmsg`) instead of a round trip each. Per
    /// address, in order: `true` added, `false` already present. Any other failure is
    /// returned (the first one) after the whole batch went through: the rest is plumbed,
    /// and a later reconcile finishes the job.
    ///
    /// IPv6 costs the kernel more than the message: every `RTM_NEWADDR` re-announces all
    /// multicast groups of the interface (`ipv6_find_idev` → `ipv6_mc_up`), and each IPv6
    /// address joins its own solicited-node group, so n addresses cost O(n²) (docs/duravip.md,
    /// "Plumbing cost").
    pub fn add_many(&mut self, items: &[(PlumbSpec, u32)]) -> Result<Vec<bool>, PlumbError> {
        let mut msgs = Vec::with_capacity(items.len());
        for (spec, index) in items {
            msgs.push((
                RouteNetlinkMessage::NewAddress(Self::add_message(spec, *index)?),
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
            ));
        }
        let res = self.batch("add address", msgs)?;
        let mut out = Vec::with_capacity(items.len());
        let mut failed = None;
        for ((spec, _), r) in items.iter().zip(res) {
            match r {
                None => out.push(true),
                Some(e) if e.raw_os_error() == Some(libc::EEXIST) => out.push(false),
                Some(source) => {
                    out.push(false);
                    failed.get_or_insert(PlumbError::Kernel {
                        op: "add address",
                        addr: spec.addr,
                        ifname: spec.ifname.clone(),
                        source,
                    });
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Remove one address. Already gone → `Ok(false)`.
    pub fn remove(&mut self, a: &IfAddress) -> Result<bool, PlumbError> {
        let removed = self.remove_many(std::slice::from_ref(a))?;
        Ok(removed.first().copied().unwrap_or(false))
    }

    /// The kernel's `local` route of an IPv6 address (table local, on its interface).
    fn local_route(a: &IfAddress) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = family(&a.addr);
        r.header.destination_prefix_length = 128;
        r.header.table = TABLE_LOCAL;
        r.header.kind = RouteType::Local;
        r.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(a.addr)));
        r.attributes.push(RouteAttribute::Oif(a.index));
        r
    }

    /// Remove many addresses in pipelined windows. Per address, in order: `true` removed,
    /// `false` already gone; any other failure is returned (the first) after the batch.
    ///
    /// Pass them in the order [`addresses`](Self::addresses) lists them: the kernel lists an
    /// interface's addresses (and multicast groups) newest first and looks each one up from
    /// the head, so that order finds every one at once. IPv6 addresses lose their `local`
    /// route first (the address stops receiving at that moment, which a release wants
    /// anyway): removing an IPv6 address walks every route of the namespace
    /// (`rt6_remove_prefsrc`), and without the 4,096 local routes that walk is short.
    pub fn remove_many(&mut self, addrs: &[IfAddress]) -> Result<Vec<bool>, PlumbError> {
        let routes: Vec<_> = addrs
            .iter()
            .filter(|a| a.addr.is_ipv6())
            .map(|a| {
                (
                    RouteNetlinkMessage::DelRoute(Self::local_route(a)),
                    NLM_F_REQUEST,
                )
            })
            .collect();
        if !routes.is_empty() {
            // A NACK (ESRCH) only means the route was already gone: the address removal
            // below is what counts.
            self.batch("remove local route", routes)?;
        }
        let msgs = addrs
            .iter()
            .map(|a| {
                (
                    RouteNetlinkMessage::DelAddress(Self::message(a.addr, a.prefix, a.index, "")),
                    NLM_F_REQUEST,
                )
            })
            .collect();
        let res = self.batch("remove address", msgs)?;
        let mut out = Vec::with_capacity(addrs.len());
        let mut failed = None;
        for (a, r) in addrs.iter().zip(res) {
            match r {
                None => out.push(true),
                Some(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => out.push(false),
                Some(source) => {
                    out.push(false);
                    failed.get_or_insert(PlumbError::Kernel {
                        op: "remove address",
                        addr: a.addr,
                        ifname: format!("ifindex {}", a.index),
                        source,
                    });
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Remove every tagged address: the clean slate Momentum starts from. Returns them.
    pub fn remove_orphans(&mut self) -> Result<Vec<IfAddress>, PlumbError> {
        let found = self.plumbed()?;
        let removed = self.remove_many(&found)?;
        Ok(found
            .into_iter()
            .zip(removed)
            .filter_map(|(a, r)| r.then_some(a))
            .collect())
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
        // (Kept in the kernel's listing order: see `Plumber::remove_many`.)
        let mut present = BTreeSet::new();
        let mut unwanted = Vec::new();
        for a in plumbed {
            let right = specs
                .get(&a.addr)
                .is_some_and(|(s, ix)| *ix == a.index && s.prefix == a.prefix);
            if right {
                present.insert(a.addr);
            } else {
                unwanted.push(a);
            }
        }
        let gone = p.remove_many(&unwanted)?;
        r.removed.extend(
            unwanted
                .into_iter()
                .zip(gone)
                .filter_map(|(a, g)| g.then_some(a)),
        );
        self.missing
            .retain(|a, _| specs.contains_key(a) && !present.contains(a));
        let mut wanted = Vec::new();
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
            wanted.push((s.clone(), *ix));
        }
        p.add_many(&wanted)?;
        r.added.extend(wanted.into_iter().map(|(s, _)| s));
        Ok(r)
    }
}
