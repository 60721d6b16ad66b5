//! The kernel/user contract of Duraplane.
//!
//! Every eBPF map key and value is defined here, once, `#[repr(C)]` with `zerocopy`
//! derives, and used by both the eBPF programs (`ebpf/duraplane-ebpf`) and the daemon
//! (`userspace`). Nothing on either side re-declares these layouts by hand.
//!
//! Conventions: addresses are kept in wire (network) byte order in 16-byte arrays (IPv4 in
//! the first 4 bytes, the rest zero) tagged by `family` ([`AF_INET`] / [`AF_INET6`]); ports
//! are in host byte order. Every struct is free of implicit padding (explicit `_pad` fields,
//! always zero) so that keys hash identically on both sides.
#![no_std]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Linux `AF_INET`, the `family` tag of IPv4 keys.
pub const AF_INET: u8 = 2;
/// Linux `AF_INET6`, the `family` tag of IPv6 keys.
pub const AF_INET6: u8 = 10;

/// Number of policy netblock ids, including id 0 ([`NETBLOCK_UNCLASSIFIED`]). Sizes every
/// array indexed by netblock id; the program treats an id ≥ this as 0.
pub const MAX_NETBLOCKS: u32 = 4096;
/// The netblock id of sources no configured netblock covers.
pub const NETBLOCK_UNCLASSIFIED: u32 = 0;

/// Default capacity of each of [`map_names::FLOWS_V4`] and [`map_names::FLOWS_V6`]: flow slots
/// per node and address family (rounded up to a power of two, in sets of [`WAYS`]). A SYN
/// whose set is full counts as `flow_map_full` even if other sets have room: size for about
/// twice the expected concurrent connections (each flow has two candidate sets). Userspace
/// may override it before load.
pub const FLOWS_MAX_ENTRIES: u32 = 131_072;
/// Default capacity of [`map_names::SOURCES`]: source slots (distinct source addresses),
/// rounded up to a power of two, in sets of [`WAYS`]; idle sources are re-used, active ones
/// never evicted.
pub const SOURCES_MAX_ENTRIES: u32 = 65_536;
/// Capacity of each LPM trie ([`map_names::NETBLOCKS_V4`], [`map_names::NETBLOCKS_V6`]).
pub const NETBLOCK_PREFIXES_MAX_ENTRIES: u32 = 4096;
/// Size in bytes of the drop-event ring buffer (power of two, page multiple).
pub const DROP_EVENTS_BYTES: u32 = 256 * 1024;
/// Capacity of [`map_names::VIPS`]: DuraVIP addresses this node can answer for.
pub const VIPS_MAX_ENTRIES: u32 = 4096;
/// Capacity of each of [`map_names::OUT_FLOWS_V4`] and [`map_names::OUT_FLOWS_V6`]: concurrent
/// outbound connections per node and address family.
pub const OUT_FLOWS_MAX_ENTRIES: u32 = 65_536;
/// Capacity of [`map_names::DESTINATIONS`] (distinct destination addresses; LRU).
pub const DESTINATIONS_MAX_ENTRIES: u32 = 65_536;

/// Names of the maps in the eBPF object (the `static` names in `duraplane-ebpf`).
pub mod map_names {
    /// `ARRAY` set index → [`crate::FlowSetV4`]: open IPv4 connections.
    pub const FLOWS_V4: &str = "FLOWS_V4";
    /// `ARRAY` set index → [`crate::FlowSetV6`]: open IPv6 connections.
    pub const FLOWS_V6: &str = "FLOWS_V6";
    /// `ARRAY` set index → [`crate::SourceSet`]: per-source counts and cached netblock.
    pub const SOURCES: &str = "SOURCES";
    /// `ARRAY`, one entry → [`crate::Runtime`]: clock, hash seed, netblock generation.
    pub const RUNTIME: &str = "RUNTIME";
    /// `LPM_TRIE` `{prefixlen u32, [u8; 4]}` → netblock id `u32`.
    pub const NETBLOCKS_V4: &str = "NETBLOCKS_V4";
    /// `LPM_TRIE` `{prefixlen u32, [u8; 16]}` → netblock id `u32`.
    pub const NETBLOCKS_V6: &str = "NETBLOCKS_V6";
    /// `ARRAY` netblock id → [`crate::NetblockLimit`].
    pub const LIMITS: &str = "LIMITS";
    /// `ARRAY` netblock id → `u64`: current connections on this node (atomic).
    pub const LOCAL: &str = "LOCAL";
    /// `ARRAY` netblock id → `u64`: current connections on all other nodes.
    pub const REMOTE: &str = "REMOTE";
    /// `PERCPU_ARRAY` netblock id → [`crate::NetblockStats`].
    pub const NB_STATS: &str = "NB_STATS";
    /// `PERCPU_ARRAY`, one entry → [`crate::StatsBlock`].
    pub const STATS: &str = "STATS";
    /// `ARRAY`, one entry → [`crate::PortSet`]: counted destination ports.
    pub const PORTS: &str = "PORTS";
    /// `RINGBUF` of [`crate::DropEvent`].
    pub const DROP_EVENTS: &str = "DROP_EVENTS";
    /// `HASH` [`crate::VipKey`] → [`crate::VipValue`]: VIPs whose ARP/NS `xdp_ingress` answers.
    pub const VIPS: &str = "VIPS";
    /// `ARRAY`, one entry → [`crate::Lease`]: the daemon's liveness lease.
    pub const LEASE: &str = "LEASE";
    /// `HASH` [`crate::FlowKeyV4`] → [`crate::FlowValue`]: open outbound IPv4 connections
    /// (`saddr`/`sport` local, `daddr`/`dport` remote).
    pub const OUT_FLOWS_V4: &str = "OUT_FLOWS_V4";
    /// `HASH` [`crate::FlowKeyV6`] → [`crate::FlowValue`]: open outbound IPv6 connections.
    pub const OUT_FLOWS_V6: &str = "OUT_FLOWS_V6";
    /// `LRU_PERCPU_HASH` [`crate::SourceKey`] (the destination) → [`crate::SourceCounts`].
    pub const DESTINATIONS: &str = "DESTINATIONS";
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// The ingress XDP program (connection accounting and enforcement).
    pub const XDP_INGRESS: &str = "xdp_ingress";
    /// `return XDP_PASS` and nothing else: the baseline benches measure `xdp_ingress` against
    /// (built by the same toolchain, loaded the same way).
    pub const XDP_PASS: &str = "xdp_pass";
    /// `return XDP_TX`: run with `BPF_F_TEST_XDP_LIVE_FRAMES` to transmit announcements
    /// (gratuitous ARP, unsolicited NA) at the NIC.
    pub const XDP_ANNOUNCE: &str = "xdp_announce";
    /// TC egress classifier counting outbound connections per destination (never drops).
    pub const TC_EGRESS: &str = "tc_egress";
}

/// One open IPv4 connection, as seen on the wire from the client. IPv4 and IPv6 flows live in
/// separate maps so the common IPv4 key is 12 bytes (one jhash round, one compare) instead of
/// a family-tagged 40. Aligned to 4 so the program builds it with word stores.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FlowKeyV4 {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// Client port, host byte order.
    pub sport: u16,
    /// Counted server port, host byte order.
    pub dport: u16,
}

/// One open IPv6 connection (see [`FlowKeyV4`]); 36 bytes.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FlowKeyV6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Client port, host byte order.
    pub sport: u16,
    /// Counted server port, host byte order.
    pub dport: u16,
}

/// What a flow remembers so its close decrements the right netblock exactly once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FlowValue {
    /// Netblock id the SYN was classified into (the one whose LOCAL count it holds).
    pub netblock: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_coarse_ns()` when the SYN was accepted: CLOCK_MONOTONIC_COARSE, never
    /// ahead of CLOCK_MONOTONIC and at most one tick (1/CONFIG_HZ) behind it, at a fraction of
    /// the cost of the precise clock. Expiry may therefore close a flow up to a tick early.
    pub opened_ns: u64,
}

/// A source address (per-source counts). Aligned to 4 so the program builds it with word
/// stores; the layout (20 bytes, no padding) is the same as with byte alignment.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SourceKey {
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}

/// Per-CPU connection counts of one source; current = Σopened − Σclosed over CPUs
/// (opens and closes of one connection may happen on different CPUs).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SourceCounts {
    pub opened: u64,
    pub closed: u64,
}

/// Ways per set of the flow tables ([`FlowSetV4`], [`FlowSetV6`]) and of [`SourceSet`].
pub const WAYS: usize = 8;
/// [`FlowSlotV4::source`] of a flow whose source has no [`SourceSlot`] (its set was full of
/// sources with open connections): the open counted `source_map_insert_failed`.
pub const NO_SOURCE: u32 = u32::MAX;
/// [`SourceSlot::state`] while one CPU initialises a slot it just claimed.
pub const SOURCE_PENDING: u64 = u64::MAX;
/// Low bits of [`SourceSlot::state`] holding the source's open connections.
pub const SOURCE_CURRENT_BITS: u32 = 24;
/// Mask of the open-connection count in [`SourceSlot::state`].
pub const SOURCE_CURRENT_MASK: u64 = (1 << SOURCE_CURRENT_BITS) - 1;

/// One open inbound IPv4 connection in a set-associative flow table (a BPF `ARRAY` of
/// [`FlowSetV4`]): claimed with one compare-and-swap, no kernel hash map on the SYN path.
///
/// `state`: 0 = free; an even, non-zero 64-bit tag (a seeded hash of the key) = live; the
/// tag + 1 = being written by the CPU that claimed it (a concurrent SYN of the same flow
/// treats that as a retransmit). A close wins the slot by swapping its tag back to 0, so
/// it counts exactly once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FlowSlotV4 {
    pub state: u64,
    pub key: FlowKeyV4,
    /// Netblock id the SYN was classified into (the one whose LOCAL count it holds).
    pub netblock: u32,
    /// `set × WAYS + way` of the [`SourceSlot`] holding this flow's count, or [`NO_SOURCE`].
    pub source: u32,
    pub _pad: u32,
    /// [`Runtime::clock_ns`] when the SYN was accepted (userspace's CLOCK_MONOTONIC as of
    /// its last refresh: never after the real open time).
    pub opened_ns: u64,
}

/// One set of the IPv4 flow table: [`WAYS`] slots, 328 bytes. Each flow has two candidate
/// sets and lives in the second only when the first was full: two-choice placement keeps
/// `flow_map_full` away until the table is nearly full, and `overflow` (flows of this set
/// living in their second set) lets lookups skip the second set almost always.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FlowSetV4 {
    pub overflow: u64,
    pub slots: [FlowSlotV4; WAYS],
}

/// One open inbound IPv6 connection (see [`FlowSlotV4`]); 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FlowSlotV6 {
    pub state: u64,
    pub key: FlowKeyV6,
    pub netblock: u32,
    pub source: u32,
    pub _pad: u32,
    pub opened_ns: u64,
}

/// One set of the IPv6 flow table (see [`FlowSetV4`]): [`WAYS`] slots, 520 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FlowSetV6 {
    pub overflow: u64,
    pub slots: [FlowSlotV6; WAYS],
}

/// One source address in the set-associative source table (a BPF `ARRAY` of
/// [`SourceSet`], each source hashed to two candidate sets).
///
/// `state`: 0 = free; [`SOURCE_PENDING`] = being initialised; otherwise a 39-bit tag of the
/// address above [`SOURCE_CURRENT_BITS`] bits of open connections, changed only by
/// compare-and-swap on open (so a slot is never re-claimed under an open) and by an atomic
/// decrement on close. Only slots with no open connection are ever re-used: an active source
/// is never evicted. The cached classification saves the LPM trie walk on every SYN.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SourceSlot {
    pub state: u64,
    pub key: SourceKey,
    pub _pad: u32,
    /// `generation << 32 | netblock id`: the source's classification, valid while the
    /// generation equals [`Runtime::netblock_gen`] (bumped by every netblock reload).
    pub class: u64,
    /// Connections opened since the slot was claimed (cumulative).
    pub opened: u64,
    /// Connections closed since the slot was claimed (cumulative).
    pub closed: u64,
    pub _pad2: u64,
}

/// One set of the source table: [`WAYS`] slots, 512 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SourceSet {
    pub slots: [SourceSlot; WAYS],
}

/// Written by userspace, read by every SYN/FIN/RST (map `RUNTIME`, one entry): the clock
/// flows are stamped with (a helper call per SYN cost more than everything else on the
/// path), the netblock generation, and the table geometry.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Runtime {
    /// CLOCK_MONOTONIC ns as of userspace's last refresh.
    pub clock_ns: u64,
    /// Seed of the flow and source hashes (random per load: sets cannot be aimed at).
    pub seed: u64,
    /// Bumped on every netblock reload; invalidates [`SourceSlot::class`].
    pub netblock_gen: u32,
    /// Number of flow sets − 1 (a power of two − 1), both families.
    pub flow_set_mask: u32,
    /// Number of source sets − 1 (a power of two − 1).
    pub source_set_mask: u32,
    /// Always 0. The program adds it to a way index it found: the verifier then sees one
    /// unknown way in 0..WAYS instead of one state per way (which multiplied to E2BIG).
    pub zero: u32,
}

/// [`NetblockLimit::action`]: count only.
pub const ACTION_COUNT: u32 = 0;
/// [`NetblockLimit::action`]: drop SYNs at the NIC while over the limit.
pub const ACTION_DROP: u32 = 1;

/// Enforcement policy of one netblock id.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetblockLimit {
    /// Cluster-wide limit on current connections; 0 = no limit.
    pub limit: u64,
    /// [`ACTION_COUNT`] or [`ACTION_DROP`].
    pub action: u32,
    pub _pad: u32,
}

/// Per-CPU event counters of one netblock id (sum over CPUs in userspace).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetblockStats {
    /// First SYNs classified into this netblock (retransmits excluded).
    pub syn: u64,
    /// Flows accepted and counted.
    pub opened: u64,
    /// Flows closed (FIN/RST or expired by userspace).
    pub closed: u64,
    /// SYNs dropped by the limit.
    pub dropped: u64,
    /// SYNs over the limit with action count (passed and tracked).
    pub over_limit: u64,
}

/// Counted destination ports as a 65,536-bit bitmap: one lookup, no hashing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PortSet {
    pub words: [u64; 1024],
}

impl PortSet {
    /// The empty set.
    pub const fn empty() -> Self {
        Self { words: [0; 1024] }
    }

    /// Adds `port`.
    pub const fn insert(&mut self, port: u16) {
        self.words[(port >> 6) as usize] |= 1 << (port & 63);
    }

    /// Whether `port` is in the set.
    #[inline(always)]
    pub const fn contains(&self, port: u16) -> bool {
        (self.words[(port >> 6) as usize] >> (port & 63)) & 1 != 0
    }
}

/// One SYN dropped at the NIC: the rejectlog feed (ring buffer record).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DropEvent {
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC_COARSE, see [`FlowValue::opened_ns`]).
    pub ts_ns: u64,
    pub saddr: [u8; 16],
    pub netblock: u32,
    /// Host byte order.
    pub dport: u16,
    pub family: u8,
    pub _pad: u8,
}

/// XDP metadata (in front of the packet) marking a synthetic RST that userspace runs
/// through `BPF_PROG_TEST_RUN` to expire a flow. The program then closes the flow through
/// its normal close path (one code path, atomic, per-CPU-correct) and counts it as
/// [`Stat::Expired`] instead of [`Stat::FinRstClosed`]. Real NICs never supply this
/// metadata (only an XDP program running before ours could).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ExpireMeta {
    pub magic: u32,
}

/// [`ExpireMeta::magic`] ("DPEX").
pub const EXPIRE_MAGIC: u32 = 0x4450_4558;

/// A DuraVIP address ([`map_names::VIPS`] key), IPv4 in the first 4 bytes of `addr`. The
/// address comes first and the key is 8-aligned so the program's word stores into its stack
/// copy stay aligned even when LLVM merges them into 8-byte stores (the verifier rejects
/// misaligned stack access).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 7],
}

/// How to answer for one VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VipValue {
    /// Answer only requests received on this interface; 0 = on any interface.
    pub ifindex: u32,
    /// The hardware address the answer gives for the VIP.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The daemon's liveness lease ([`map_names::LEASE`]): ARP/NS for VIPs are answered only while
/// `now ≤ renewed_ns + duration_ns` (`now` = `bpf_ktime_get_coarse_ns`). `renewed_ns` = 0
/// means never renewed: no answers.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Lease {
    /// CLOCK_MONOTONIC ns of the last renewal.
    pub renewed_ns: u64,
    pub duration_ns: u64,
}

/// Global counters, slots of [`StatsBlock::counters`]. Every map-full, insert failure and
/// eviction has its own slot: nothing the program gives up on is silent.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stat {
    /// Every frame that left the fast path, i.e. every frame *except* well-formed TCP
    /// segments that carry neither FIN, RST nor a bare SYN (ACKs, data, SYN+ACK: the bulk of
    /// established traffic), which are passed after parsing without any map access. Every
    /// frame counted by another slot below is counted here too. Totals of all frames are the
    /// interface's own counters (`ip -s link`).
    Packets = 0,
    /// Not IPv4/IPv6 (ARP, QinQ outer tag, …): passed.
    NonIp,
    /// IP but not TCP (or an IPv6 chain ending elsewhere): passed.
    NonTcp,
    /// TCP SYN/FIN/RST to a port not in [`PortSet`]: passed. (Other segments to such ports
    /// take the fast path and are not counted.)
    UncountedPort,
    /// Frame shorter than the headers it announces: passed.
    Truncated,
    /// IPv4 version/IHL or IPv6 header nonsense: passed.
    Malformed,
    /// TCP fragments (non-first, or first with more-fragments): passed uncounted.
    Fragments,
    /// IPv6 with more extension headers than the program walks: passed uncounted.
    Ipv6ExtUnsupported,
    /// SYN without ACK to a counted port (retransmits included).
    Syn,
    /// SYN for a flow already tracked: not counted again.
    SynRetransmit,
    /// Flows accepted and counted.
    Opened,
    /// Flows closed by a client FIN/RST.
    FinRstClosed,
    /// FIN/RST for no tracked flow (already closed, or never counted).
    FinRstNoFlow,
    /// Flows closed by userspace expiry.
    Expired,
    /// SYNs dropped over a limit.
    Dropped,
    /// SYNs over a limit with action count (passed, tracked).
    OverLimit,
    /// Flow insert failed because FLOWS_V4/FLOWS_V6 is full: SYN passed uncounted.
    FlowMapFull,
    /// Flow insert failed for another reason (ENOMEM…): SYN passed uncounted.
    FlowInsertFailed,
    /// Per-source entry could not be created: the flow is counted per netblock only.
    SourceMapInsertFailed,
    /// Close of a source whose entry the LRU evicted: its per-source count is lost.
    SourceEvicted,
    /// Drop event lost because the ring buffer was full.
    RingbufFull,
    /// LOCAL decrement found 0 (a bug or a reset map): clamped at 0.
    LocalUnderflow,
    /// ARP requests for an owned VIP answered in XDP (XDP_TX).
    ArpAnswered,
    /// IPv6 neighbour solicitations for an owned VIP answered with an NA (XDP_TX).
    NdAnswered,
    /// ARP/NS for an owned VIP passed unanswered because the lease was stale.
    LeaseStale,
    /// TC egress: SYN without ACK sent by this node (retransmits included).
    OutSyn,
    /// TC egress: SYN for an outbound flow already tracked.
    OutSynRetransmit,
    /// TC egress: outbound connections counted.
    OutOpened,
    /// TC egress: outbound connections closed by a local FIN/RST (exactly once each).
    OutClosed,
    /// TC egress: local FIN/RST for no tracked outbound flow.
    OutFinRstNoFlow,
    /// TC egress: OUT_FLOWS_V4/V6 full: connection not counted.
    OutFlowMapFull,
    /// TC egress: outbound flow insert failed for another reason.
    OutFlowInsertFailed,
    /// TC egress: per-destination entry could not be created.
    DestMapInsertFailed,
    /// TC egress: close of a destination whose entry the LRU evicted.
    DestEvicted,
}

/// Number of [`Stat`] slots.
pub const STAT_COUNT: usize = Stat::DestEvicted as usize + 1;

impl Stat {
    /// Every slot, in index order.
    pub const ALL: [Stat; STAT_COUNT] = [
        Stat::Packets,
        Stat::NonIp,
        Stat::NonTcp,
        Stat::UncountedPort,
        Stat::Truncated,
        Stat::Malformed,
        Stat::Fragments,
        Stat::Ipv6ExtUnsupported,
        Stat::Syn,
        Stat::SynRetransmit,
        Stat::Opened,
        Stat::FinRstClosed,
        Stat::FinRstNoFlow,
        Stat::Expired,
        Stat::Dropped,
        Stat::OverLimit,
        Stat::FlowMapFull,
        Stat::FlowInsertFailed,
        Stat::SourceMapInsertFailed,
        Stat::SourceEvicted,
        Stat::RingbufFull,
        Stat::LocalUnderflow,
        Stat::ArpAnswered,
        Stat::NdAnswered,
        Stat::LeaseStale,
        Stat::OutSyn,
        Stat::OutSynRetransmit,
        Stat::OutOpened,
        Stat::OutClosed,
        Stat::OutFinRstNoFlow,
        Stat::OutFlowMapFull,
        Stat::OutFlowInsertFailed,
        Stat::DestMapInsertFailed,
        Stat::DestEvicted,
    ];

    /// Stable snake_case name (metrics label, console output).
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Packets => "packets",
            Stat::NonIp => "non_ip",
            Stat::NonTcp => "non_tcp",
            Stat::UncountedPort => "uncounted_port",
            Stat::Truncated => "truncated",
            Stat::Malformed => "malformed",
            Stat::Fragments => "fragments",
            Stat::Ipv6ExtUnsupported => "ipv6_ext_unsupported",
            Stat::Syn => "syn",
            Stat::SynRetransmit => "syn_retransmit",
            Stat::Opened => "opened",
            Stat::FinRstClosed => "fin_rst_closed",
            Stat::FinRstNoFlow => "fin_rst_no_flow",
            Stat::Expired => "expired",
            Stat::Dropped => "dropped",
            Stat::OverLimit => "over_limit",
            Stat::FlowMapFull => "flow_map_full",
            Stat::FlowInsertFailed => "flow_insert_failed",
            Stat::SourceMapInsertFailed => "source_map_insert_failed",
            Stat::SourceEvicted => "source_evicted",
            Stat::RingbufFull => "ringbuf_full",
            Stat::LocalUnderflow => "local_underflow",
            Stat::ArpAnswered => "arp_answered",
            Stat::NdAnswered => "nd_answered",
            Stat::LeaseStale => "lease_stale",
            Stat::OutSyn => "out_syn",
            Stat::OutSynRetransmit => "out_syn_retransmit",
            Stat::OutOpened => "out_opened",
            Stat::OutClosed => "out_closed",
            Stat::OutFinRstNoFlow => "out_fin_rst_no_flow",
            Stat::OutFlowMapFull => "out_flow_map_full",
            Stat::OutFlowInsertFailed => "out_flow_insert_failed",
            Stat::DestMapInsertFailed => "dest_map_insert_failed",
            Stat::DestEvicted => "dest_evicted",
        }
    }
}

/// All global counters of one CPU. The STATS map has one entry holding this block (rather
/// than one entry per [`Stat`]) so the program does a single, verifier-inlined lookup per
/// slow-path packet and then plain increments.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct StatsBlock {
    pub counters: [u64; STAT_COUNT],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are `#[repr(C)]`, contain only integers and byte arrays, have no padding
    // (checked by the zerocopy `IntoBytes` derive) and are valid for any bit pattern
    // (`FromBytes`).
    unsafe impl aya::Pod for super::FlowKeyV4 {}
    unsafe impl aya::Pod for super::FlowKeyV6 {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::SourceCounts {}
    unsafe impl aya::Pod for super::FlowSetV4 {}
    unsafe impl aya::Pod for super::FlowSetV6 {}
    unsafe impl aya::Pod for super::SourceSet {}
    unsafe impl aya::Pod for super::Runtime {}
    unsafe impl aya::Pod for super::NetblockLimit {}
    unsafe impl aya::Pod for super::NetblockStats {}
    unsafe impl aya::Pod for super::PortSet {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::StatsBlock {}
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipValue {}
    unsafe impl aya::Pod for super::Lease {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(size_of::<FlowKeyV4>(), 12);
        assert_eq!(size_of::<FlowKeyV6>(), 36);
        assert_eq!(size_of::<FlowValue>(), 16);
        assert_eq!(size_of::<SourceKey>(), 20);
        assert_eq!(size_of::<SourceCounts>(), 16);
        assert_eq!(size_of::<FlowSlotV4>(), 40);
        assert_eq!(size_of::<FlowSetV4>(), 328);
        assert_eq!(size_of::<FlowSetV6>(), 520);
        assert_eq!(size_of::<FlowSlotV6>(), 64);
        assert_eq!(size_of::<SourceSlot>(), 64);
        assert_eq!(size_of::<SourceSet>(), 512);
        assert_eq!(size_of::<Runtime>(), 32);
        assert_eq!(size_of::<NetblockLimit>(), 16);
        assert_eq!(size_of::<NetblockStats>(), 40);
        assert_eq!(size_of::<PortSet>(), 8192);
        assert_eq!(size_of::<DropEvent>(), 32);
        assert_eq!(size_of::<StatsBlock>(), 8 * STAT_COUNT);
        assert_eq!(size_of::<VipKey>(), 24);
        assert_eq!(size_of::<VipValue>(), 12);
        assert_eq!(size_of::<Lease>(), 16);
    }

    #[test]
    fn stat_table_is_in_index_order() {
        for (i, s) in Stat::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "{}", s.name());
        }
    }

    #[test]
    fn port_set() {
        let mut p = PortSet::empty();
        p.insert(25);
        p.insert(65535);
        assert!(p.contains(25) && p.contains(65535));
        assert!(!p.contains(24) && !p.contains(26) && !p.contains(0));
    }
}
