//! Loading, attaching and reading/writing the XDP data plane (`xdp_ingress`).
//!
//! [`Datapath`] owns the loaded eBPF object and every map; the rest of the daemon talks to
//! the kernel side only through it. Map layouts come from `duraplane-common`.
//!
//! Counting model (DESIGN.md "eBPF data plane"): the program tracks each accepted SYN as a
//! flow and keeps, per policy netblock id, the current number of open flows on this node
//! (LOCAL, atomic). Replication writes the other nodes' total into REMOTE; SYNs of a
//! netblock at or over `local + remote >= limit` are dropped (action drop) or only reported
//! (action count). Flows close on the client's FIN/RST, or when userspace expires them
//! ([`Datapath::expire_flows`]).

mod batch;
mod egress;
pub mod frames;
pub mod testrun;
mod vip;

pub use egress::{DestinationCount, OutboundFlow};
pub use vip::{AnnounceMethod, VipEntry};

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, BorrowedFd},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, IterableMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap,
        PerCpuValues, RingBuf, lpm_trie::Key,
    },
    programs::{ProgramError, Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId},
};
use duraplane_common::{
    ACTION_COUNT, ACTION_DROP, AF_INET, DropEvent, EXPIRE_MAGIC, FLOWS_MAX_ENTRIES, FlowKeyV4,
    FlowKeyV6, FlowSetV4, FlowSetV6, FlowValue, Lease, MAX_NETBLOCKS, NetblockLimit, NetblockStats,
    PortSet, Runtime, SOURCE_CURRENT_MASK, SOURCE_PENDING, SOURCES_MAX_ENTRIES, STAT_COUNT,
    SourceCounts, SourceKey, SourceSet, Stat, StatsBlock, VipKey, VipValue, WAYS,
    map_names as names, program_names,
};
use zerocopy::FromBytes;

use crate::config::DuraplaneSettings;
pub use crate::config::{Cidr, NetblockAction, XdpMode};
use batch::Layout;
use testrun::RunOutcome;

/// One policy netblock: the configuration's `Netblock "cidr" { max_connections action }`.
pub use crate::config::Netblock as NetblockSpec;

/// Errors of the data plane layer; each names what an operator needs to act on.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("the embedded eBPF object is empty (built with AYA_BUILD_SKIP=1?)")]
    ObjectMissing,
    #[error(
        "loading the eBPF object failed (maps: flows={flow_capacity}, sources={source_capacity})"
    )]
    Load {
        flow_capacity: u32,
        source_capacity: u32,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF program `{program}` not found in the object")]
    ProgramMissing { program: &'static str },
    #[error("loading eBPF program `{program}` into the kernel failed (verifier log in the cause)")]
    ProgramLoad {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("eBPF map `{map}` not found in the object")]
    MapMissing { map: &'static str },
    #[error("eBPF map `{map}`: {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("eBPF map `{map}`: {op} failed")]
    MapSyscall {
        map: &'static str,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching XDP to `{interface}` in {mode:?} mode failed{}", native_error.as_ref().map(|e| format!(" (native mode failed first: {e})")).unwrap_or_default())]
    AttachFailed {
        interface: String,
        mode: AttachedMode,
        /// With [`XdpMode::Auto`]: why native mode failed before the generic attempt.
        native_error: Option<String>,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("XDP is already attached to `{interface}` by this datapath")]
    AlreadyAttached { interface: String },
    #[error("XDP is not attached to `{interface}` by this datapath")]
    NotAttached { interface: String },
    #[error("detaching XDP from `{interface}` failed")]
    DetachFailed {
        interface: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("netblock {addr}/{prefix}: prefix longer than the address")]
    InvalidPrefix { addr: IpAddr, prefix: u8 },
    #[error("netblock {addr}/{prefix} is configured twice")]
    DuplicateNetblock { addr: IpAddr, prefix: u8 },
    #[error(
        "too many netblocks: {requested} requested, at most {max} (ids 1..{max} free of open flows)"
    )]
    TooManyNetblocks { requested: usize, max: u32 },
    #[error("netblock id {id} out of range (ids are below {max})")]
    NetblockIdOutOfRange { id: u32, max: u32 },
    #[error("BPF_PROG_TEST_RUN on a {frame_len}-byte frame failed")]
    TestRun {
        frame_len: usize,
        #[source]
        source: Box<ProgramError>,
    },
    #[error(
        "BPF_PROG_TEST_RUN cannot carry a {frame_len}-byte frame with {meta_len} bytes of metadata"
    )]
    TestRunFrame { frame_len: usize, meta_len: usize },
    #[error("cannot read the number of possible CPUs from {path}")]
    PossibleCpus {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reading CLOCK_MONOTONIC failed")]
    Clock {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot announce a {frame_len}-byte frame (14..=1514 bytes)")]
    AnnounceFrame { frame_len: usize },
    #[error("announcing on ifindex {ifindex} via {} failed", method.name())]
    Announce {
        ifindex: u32,
        method: AnnounceMethod,
        #[source]
        source: std::io::Error,
    },
    #[error("adding the clsact qdisc to `{interface}` failed")]
    Clsact {
        interface: String,
        #[source]
        source: Box<aya::programs::tc::TcError>,
    },
    #[error("attaching TC egress to `{interface}` failed")]
    EgressAttach {
        interface: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("TC egress is already attached to `{interface}` by this datapath")]
    EgressAlreadyAttached { interface: String },
    #[error("TC egress is not attached to `{interface}` by this datapath")]
    EgressNotAttached { interface: String },
    #[error("detaching TC egress from `{interface}` failed")]
    EgressDetach {
        interface: String,
        #[source]
        source: Box<ProgramError>,
    },
}

/// Load-time settings of the data plane.
#[derive(Debug, Clone, PartialEq)]
pub struct DatapathConfig {
    /// Counted TCP destination ports.
    pub ports: Vec<u16>,
    pub netblocks: Vec<NetblockSpec>,
    /// Slots of each flow table (per address family), rounded up to a power of two ≥ 8;
    /// fixed at load. A SYN whose 8-way set is full counts as `flow_map_full` even if other
    /// sets have room: size for about twice the concurrent connections expected.
    pub flow_capacity: u32,
    /// Slots of the source table (distinct source addresses), rounded up to a power of two
    /// ≥ 8; fixed at load. Idle sources are re-used, active ones never evicted.
    pub source_capacity: u32,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            ports: vec![25, 465, 587],
            netblocks: Vec::new(),
            flow_capacity: FLOWS_MAX_ENTRIES,
            source_capacity: SOURCES_MAX_ENTRIES,
        }
    }
}

impl From<&DuraplaneSettings> for DatapathConfig {
    fn from(s: &DuraplaneSettings) -> Self {
        Self {
            ports: s.ports.clone(),
            netblocks: s.netblocks.clone(),
            ..Self::default()
        }
    }
}

/// The mode an attachment actually got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// In the generic network stack path (`XDP_FLAGS_SKB_MODE`), ~10× slower.
    Generic,
}

/// Global counters summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub counters: [u64; STAT_COUNT],
}

impl StatsSnapshot {
    /// The value of one counter.
    pub fn get(&self, s: Stat) -> u64 {
        self.counters[s as usize]
    }

    /// The non-zero counters in index order: lets tests and logs state the whole set.
    pub fn nonzero(&self) -> Vec<(Stat, u64)> {
        self.iter().filter(|(_, v)| *v != 0).collect()
    }

    /// `(name, value)` of every counter, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Stat, u64)> + '_ {
        Stat::ALL.iter().map(|s| (*s, self.counters[*s as usize]))
    }
}

/// The state of one netblock id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetblockCounters {
    pub id: u32,
    /// `None` for id 0 (unclassified) and for removed netblocks still holding flows.
    pub cidr: Option<Cidr>,
    /// Configured limit (0 = none) and action.
    pub limit: u64,
    pub action: NetblockAction,
    /// Open flows on this node.
    pub local: u64,
    /// Open flows on the other nodes, as last written by [`Datapath::set_remote`].
    pub remote: u64,
    /// Event counters summed over CPUs.
    pub stats: NetblockStats,
}

/// Connection counts of one source address (summed over CPUs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceCount {
    pub addr: IpAddr,
    pub opened: u64,
    pub closed: u64,
    /// Open connections (exact: kept by the program with compare-and-swap).
    pub current: u64,
}

/// One open flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEntry {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub netblock: u32,
    /// CLOCK_MONOTONIC ns as of the last clock refresh before the SYN was accepted (the
    /// program reads userspace's clock instead of calling a time helper on every SYN).
    pub opened_ns: u64,
}

/// Program types that can be loaded lazily by [`Datapath::loaded_program`] (aya gives
/// each type its own inherent `load`).
trait LazyLoad {
    fn is_loaded(&self) -> bool;
    fn load_now(&mut self) -> Result<(), ProgramError>;
}

impl LazyLoad for Xdp {
    fn is_loaded(&self) -> bool {
        self.fd().is_ok()
    }
    fn load_now(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

impl LazyLoad for aya::programs::SchedClassifier {
    fn is_loaded(&self) -> bool {
        self.fd().is_ok()
    }
    fn load_now(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

/// One entry of a flow map, either direction: `s*` is the packet's source side.
struct RawFlow {
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    value: FlowValue,
}

/// A SYN dropped at the NIC (rejectlog feed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropRecord {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    pub addr: IpAddr,
    pub netblock: u32,
    pub dport: u16,
}

struct Attachment {
    interface: String,
    mode: AttachedMode,
    link: XdpLinkId,
}

#[derive(Debug, Clone, Copy)]
struct Assigned {
    id: u32,
}

/// The loaded data plane: program, maps and attachments. Detaches on drop.
pub struct Datapath {
    ebpf: Ebpf,
    flows_v4: Array<MapData, FlowSetV4>,
    flows_v6: Array<MapData, FlowSetV6>,
    sources: Array<MapData, SourceSet>,
    runtime_map: Array<MapData, Runtime>,
    /// The last value written to RUNTIME (userspace is its only writer).
    runtime: Runtime,
    nb_v4: LpmTrie<MapData, [u8; 4], u32>,
    nb_v6: LpmTrie<MapData, [u8; 16], u32>,
    limits: Array<MapData, NetblockLimit>,
    local: Array<MapData, u64>,
    remote: Array<MapData, u64>,
    nb_stats: PerCpuArray<MapData, NetblockStats>,
    stats: PerCpuArray<MapData, StatsBlock>,
    ports: Array<MapData, PortSet>,
    drop_events: RingBuf<MapData>,
    vips: HashMap<MapData, VipKey, VipValue>,
    lease: Array<MapData, Lease>,
    out_flows_v4: HashMap<MapData, FlowKeyV4, FlowValue>,
    out_flows_v6: HashMap<MapData, FlowKeyV6, FlowValue>,
    destinations: PerCpuHashMap<MapData, SourceKey, SourceCounts>,
    netblocks: BTreeMap<Cidr, Assigned>,
    attachments: Vec<Attachment>,
    egress: Vec<egress::EgressAttachment>,
    cpus: usize,
    /// Cleared after the kernel refuses BPF_MAP_LOOKUP_BATCH once.
    batch_ok: bool,
    /// Cleared after the kernel refuses XDP live frames once (announce uses AF_PACKET).
    live_frames_ok: bool,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(BpfError::MapMissing { map: name })?;
    T::try_from(map).map_err(|source| BpfError::Map {
        map: name,
        op: "open",
        source: Box::new(source),
    })
}

/// An owned copy of a map's fd, so a dump can borrow `self` mutably meanwhile.
fn dup_fd(map: &MapData, name: &'static str) -> Result<std::os::fd::OwnedFd, BpfError> {
    map.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| BpfError::MapSyscall {
            map: name,
            op: "dup",
            source,
        })
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map {
        map,
        op,
        source: Box::new(source),
    }
}

/// `addr` with the host bits beyond `prefix` cleared, or `None` if `prefix` is too long.
fn masked(addr: IpAddr, prefix: u8) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(a) if prefix <= 32 => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            Some(IpAddr::V4(Ipv4Addr::from(u32::from(a) & m)))
        }
        IpAddr::V6(a) if prefix <= 128 => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            Some(IpAddr::V6(Ipv6Addr::from(u128::from(a) & m)))
        }
        _ => None,
    }
}

fn key_addr(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

fn monotonic_ns() -> Result<u64, BpfError> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(BpfError::Clock {
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Number of `WAYS`-slot sets for a table of `capacity` slots (rounded up to a power of
/// two, at least one set): the program picks a set with `hash & (sets − 1)`.
fn sets_for(capacity: u32) -> u32 {
    (capacity
        .max(1)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
        / WAYS as u32)
        .max(1)
}

/// Sums per-CPU values laid out as the kernel copies them (`round_up(size, 8)` per CPU).
fn sum_percpu<V: FromBytes + Copy>(bytes: &[u8], add: impl Fn(&mut V, &V), mut acc: V) -> V {
    let stride = size_of::<V>().next_multiple_of(8);
    for chunk in bytes.chunks_exact(stride) {
        if let Ok((v, _)) = V::read_from_prefix(chunk) {
            add(&mut acc, &v);
        }
    }
    acc
}

/// A flow slot state that is live (not free, not being written).
fn live_flow(state: u64) -> bool {
    state != 0 && state & 1 == 0
}

fn add_nb(a: &mut NetblockStats, b: &NetblockStats) {
    a.syn += b.syn;
    a.opened += b.opened;
    a.closed += b.closed;
    a.dropped += b.dropped;
    a.over_limit += b.over_limit;
}

impl Datapath {
    /// Loads `EBPF_OBJECT` into the kernel (verifier included), sizes FLOWS/SOURCES from
    /// `config`, and fills the port set and netblock tables. Nothing is attached yet.
    pub fn load(config: &DatapathConfig) -> Result<Datapath, BpfError> {
        if crate::EBPF_OBJECT.is_empty() {
            return Err(BpfError::ObjectMissing);
        }
        let cpus = aya::util::nr_cpus()
            .map_err(|(path, source)| BpfError::PossibleCpus { path, source })?;
        let flow_sets = sets_for(config.flow_capacity);
        let source_sets = sets_for(config.source_capacity);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::FLOWS_V4, flow_sets)
            .map_max_entries(names::FLOWS_V6, flow_sets)
            .map_max_entries(names::SOURCES, source_sets)
            .load(crate::EBPF_OBJECT)
            .map_err(|source| BpfError::Load {
                flow_capacity: config.flow_capacity,
                source_capacity: config.source_capacity,
                source: Box::new(source),
            })?;
        let prog_name = program_names::XDP_INGRESS;
        let prog: &mut Xdp = ebpf
            .program_mut(prog_name)
            .ok_or(BpfError::ProgramMissing { program: prog_name })?
            .try_into()
            .map_err(|source| BpfError::ProgramLoad {
                program: prog_name,
                source: Box::new(source),
            })?;
        prog.load().map_err(|source| BpfError::ProgramLoad {
            program: prog_name,
            source: Box::new(source),
        })?;
        let mut dp = Datapath {
            flows_v4: take(&mut ebpf, names::FLOWS_V4)?,
            flows_v6: take(&mut ebpf, names::FLOWS_V6)?,
            sources: take(&mut ebpf, names::SOURCES)?,
            runtime_map: take(&mut ebpf, names::RUNTIME)?,
            runtime: Runtime {
                clock_ns: 0,
                seed: rand::random(),
                netblock_gen: 0,
                flow_set_mask: flow_sets - 1,
                source_set_mask: source_sets - 1,
                zero: 0,
            },
            nb_v4: take(&mut ebpf, names::NETBLOCKS_V4)?,
            nb_v6: take(&mut ebpf, names::NETBLOCKS_V6)?,
            limits: take(&mut ebpf, names::LIMITS)?,
            local: take(&mut ebpf, names::LOCAL)?,
            remote: take(&mut ebpf, names::REMOTE)?,
            nb_stats: take(&mut ebpf, names::NB_STATS)?,
            stats: take(&mut ebpf, names::STATS)?,
            ports: take(&mut ebpf, names::PORTS)?,
            drop_events: take(&mut ebpf, names::DROP_EVENTS)?,
            vips: take(&mut ebpf, names::VIPS)?,
            lease: take(&mut ebpf, names::LEASE)?,
            out_flows_v4: take(&mut ebpf, names::OUT_FLOWS_V4)?,
            out_flows_v6: take(&mut ebpf, names::OUT_FLOWS_V6)?,
            destinations: take(&mut ebpf, names::DESTINATIONS)?,
            ebpf,
            netblocks: BTreeMap::new(),
            attachments: Vec::new(),
            egress: Vec::new(),
            cpus,
            batch_ok: true,
            live_frames_ok: true,
        };
        dp.refresh_clock()?;
        dp.set_ports(&config.ports)?;
        dp.set_netblocks(&config.netblocks)?;
        Ok(dp)
    }

    /// Writes [`Self::runtime`] to the RUNTIME map.
    fn write_runtime(&mut self) -> Result<(), BpfError> {
        self.runtime_map
            .set(0, self.runtime, 0)
            .map_err(map_err(names::RUNTIME, "set"))
    }

    /// Advances the clock new flows are stamped with to now. Called by every periodic read
    /// (the daemon polls every poll interval), so a flow's stamp is at most one poll
    /// interval before its real open time, never after it.
    fn refresh_clock(&mut self) -> Result<(), BpfError> {
        self.runtime.clock_ns = monotonic_ns()?;
        self.write_runtime()
    }

    /// Invalidates every source's cached classification (after the tries changed).
    fn bump_netblock_gen(&mut self) -> Result<(), BpfError> {
        self.runtime.netblock_gen = self.runtime.netblock_gen.wrapping_add(1);
        self.write_runtime()
    }

    /// The loaded `xdp_ingress` program (for [`testrun`] and benches).
    pub fn program(&self) -> Result<&Xdp, BpfError> {
        let name = program_names::XDP_INGRESS;
        self.ebpf
            .program(name)
            .ok_or(BpfError::ProgramMissing { program: name })?
            .try_into()
            .map_err(|source| BpfError::ProgramLoad {
                program: name,
                source: Box::new(source),
            })
    }

    /// The object's `xdp_pass` program (`return XDP_PASS`), loaded on first use: the
    /// baseline benches measure `xdp_ingress` against, built and loaded the same way.
    pub fn baseline_program(&mut self) -> Result<&Xdp, BpfError> {
        Ok(self.loaded_program::<Xdp>(program_names::XDP_PASS)?)
    }

    /// The object's program `name` as a `P`, loaded into the kernel on first use (the
    /// programs besides `xdp_ingress` are loaded only when a feature needs them).
    fn loaded_program<P: LazyLoad>(&mut self, name: &'static str) -> Result<&mut P, BpfError>
    where
        for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let prog: &mut P = self
            .ebpf
            .program_mut(name)
            .ok_or(BpfError::ProgramMissing { program: name })?
            .try_into()
            .map_err(|source| BpfError::ProgramLoad {
                program: name,
                source: Box::new(source),
            })?;
        if !prog.is_loaded() {
            prog.load_now().map_err(|source| BpfError::ProgramLoad {
                program: name,
                source: Box::new(source),
            })?;
        }
        Ok(prog)
    }

    /// Runs `xdp_ingress` on `frame` through `BPF_PROG_TEST_RUN` (real maps, real effects).
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<RunOutcome, BpfError> {
        testrun::run_xdp(self.program()?, frame, repeat)
    }

    /// Runs `xdp_ingress` once on `frame`; returns the verdict and the frame as the program
    /// left it (e.g. the ARP reply it transmits).
    pub fn test_run_output(&self, frame: &[u8]) -> Result<(testrun::Verdict, Vec<u8>), BpfError> {
        testrun::run_xdp_output(self.program()?, frame)
    }

    /// Attaches `xdp_ingress` to `interface`. `Auto` tries native mode first and falls back
    /// to generic mode; the mode obtained is returned.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<AttachedMode, BpfError> {
        if self.attachments.iter().any(|a| a.interface == interface) {
            return Err(BpfError::AlreadyAttached {
                interface: interface.to_owned(),
            });
        }
        let prog = self.loaded_program::<Xdp>(program_names::XDP_INGRESS)?;
        let fail = |mode, native_error, source| BpfError::AttachFailed {
            interface: interface.to_owned(),
            mode,
            native_error,
            source: Box::new(source),
        };
        let (link, got) = match mode {
            XdpMode::Native => (
                prog.attach(interface, AyaXdpMode::Driver)
                    .map_err(|e| fail(AttachedMode::Native, None, e))?,
                AttachedMode::Native,
            ),
            XdpMode::Generic => (
                prog.attach(interface, AyaXdpMode::Skb)
                    .map_err(|e| fail(AttachedMode::Generic, None, e))?,
                AttachedMode::Generic,
            ),
            XdpMode::Auto => match prog.attach(interface, AyaXdpMode::Driver) {
                Ok(l) => (l, AttachedMode::Native),
                Err(native) => {
                    tracing::warn!(interface, error = %native, "native XDP failed, trying generic");
                    let l = prog
                        .attach(interface, AyaXdpMode::Skb)
                        .map_err(|e| fail(AttachedMode::Generic, Some(native.to_string()), e))?;
                    (l, AttachedMode::Generic)
                }
            },
        };
        self.attachments.push(Attachment {
            interface: interface.to_owned(),
            mode: got,
            link,
        });
        Ok(got)
    }

    /// Interfaces this datapath is attached to, with their modes.
    pub fn attachments(&self) -> Vec<(String, AttachedMode)> {
        self.attachments
            .iter()
            .map(|a| (a.interface.clone(), a.mode))
            .collect()
    }

    /// Detaches from `interface`. Counts and flows are kept.
    pub fn detach(&mut self, interface: &str) -> Result<(), BpfError> {
        let pos = self
            .attachments
            .iter()
            .position(|a| a.interface == interface)
            .ok_or_else(|| BpfError::NotAttached {
                interface: interface.to_owned(),
            })?;
        let a = self.attachments.remove(pos);
        let prog = self.loaded_program::<Xdp>(program_names::XDP_INGRESS)?;
        prog.detach(a.link)
            .map_err(|source| BpfError::DetachFailed {
                interface: a.interface,
                source: Box::new(source),
            })
    }

    /// Replaces the counted port set (config reload; flows already open are unaffected and
    /// still close/expire normally).
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<(), BpfError> {
        let mut set = PortSet::empty();
        for p in ports {
            set.insert(*p);
        }
        self.ports
            .set(0, set, 0)
            .map_err(map_err(names::PORTS, "set"))
    }

    /// Installs the policy netblocks; may be called again on reload without detaching.
    ///
    /// Ids are stable: a CIDR present before and after keeps its id, its counts, its flows
    /// and its stats (its limit/action are updated). A new CIDR gets the lowest id that is
    /// unused *and* has no open flows (LOCAL = 0), so flows of a removed netblock can never
    /// decrement a newcomer. Update order keeps classification sane at every moment:
    /// removed prefixes leave the tries first, new ids get zeroed stats and their limit
    /// before their prefix is inserted. A failure midway leaves a partial update (the
    /// error says which map); calling again with the same list completes it.
    pub fn set_netblocks(&mut self, specs: &[NetblockSpec]) -> Result<(), BpfError> {
        let mut wanted: Vec<(Cidr, &NetblockSpec)> = Vec::with_capacity(specs.len());
        let mut seen = BTreeSet::new();
        for s in specs {
            let addr = masked(s.cidr.addr, s.cidr.prefix).ok_or(BpfError::InvalidPrefix {
                addr: s.cidr.addr,
                prefix: s.cidr.prefix,
            })?;
            let cidr = Cidr {
                addr,
                prefix: s.cidr.prefix,
            };
            if !seen.insert(cidr) {
                return Err(BpfError::DuplicateNetblock {
                    addr,
                    prefix: cidr.prefix,
                });
            }
            wanted.push((cidr, s));
        }
        let local = self.read_local()?;
        let mut next: BTreeMap<Cidr, Assigned> = BTreeMap::new();
        let mut taken: BTreeSet<u32> = wanted
            .iter()
            .filter_map(|(c, _)| self.netblocks.get(c).map(|a| a.id))
            .collect();
        let mut fresh = Vec::new();
        for (cidr, _) in &wanted {
            let id = match self.netblocks.get(cidr) {
                Some(a) => a.id,
                None => {
                    let id = (1..MAX_NETBLOCKS)
                        .find(|id| {
                            !taken.contains(id) && local.get(*id as usize).copied() == Some(0)
                        })
                        .ok_or(BpfError::TooManyNetblocks {
                            requested: wanted.len(),
                            max: MAX_NETBLOCKS - 1,
                        })?;
                    taken.insert(id);
                    fresh.push(id);
                    id
                }
            };
            next.insert(*cidr, Assigned { id });
        }
        // 1. Removed prefixes leave the tries.
        let removed: Vec<(Cidr, Assigned)> = self
            .netblocks
            .iter()
            .filter(|(c, _)| !next.contains_key(*c))
            .map(|(c, a)| (*c, *a))
            .collect();
        for (c, _) in &removed {
            self.lpm_remove(c)?;
            self.netblocks.remove(c);
        }
        // Sources cached into a removed prefix re-classify before its id can be reused.
        if !removed.is_empty() {
            self.bump_netblock_gen()?;
        }
        // 2. New ids start from zero.
        for id in &fresh {
            let zeros = PerCpuValues::try_from(vec![NetblockStats::default(); self.cpus]).map_err(
                |source| BpfError::MapSyscall {
                    map: names::NB_STATS,
                    op: "build zero value",
                    source,
                },
            )?;
            self.nb_stats
                .set(*id, zeros, 0)
                .map_err(map_err(names::NB_STATS, "reset"))?;
            self.remote
                .set(*id, 0, 0)
                .map_err(map_err(names::REMOTE, "reset"))?;
        }
        // 3. Limits for all wanted ids, then 4. their prefixes.
        for (cidr, spec) in &wanted {
            let id = next[cidr].id;
            let limit = NetblockLimit {
                limit: spec.max_connections.unwrap_or(0),
                action: match spec.action {
                    NetblockAction::Drop => ACTION_DROP,
                    NetblockAction::Count => ACTION_COUNT,
                },
                _pad: 0,
            };
            self.limits
                .set(id, limit, 0)
                .map_err(map_err(names::LIMITS, "set"))?;
        }
        for (cidr, _) in &wanted {
            self.lpm_insert(cidr, next[cidr].id)?;
        }
        // 5. Removed ids that nobody reuses lose their limit.
        for (_, a) in &removed {
            if !taken.contains(&a.id) {
                self.limits
                    .set(a.id, NetblockLimit::default(), 0)
                    .map_err(map_err(names::LIMITS, "clear"))?;
            }
        }
        self.netblocks = next;
        self.bump_netblock_gen()
    }

    /// The id of each configured netblock.
    pub fn netblock_ids(&self) -> Vec<(Cidr, u32)> {
        self.netblocks.iter().map(|(c, a)| (*c, a.id)).collect()
    }

    fn lpm_insert(&mut self, c: &Cidr, id: u32) -> Result<(), BpfError> {
        let prefix = u32::from(c.prefix);
        match c.addr {
            IpAddr::V4(a) => self
                .nb_v4
                .insert(&Key::new(prefix, a.octets()), id, 0)
                .map_err(map_err(names::NETBLOCKS_V4, "insert")),
            IpAddr::V6(a) => self
                .nb_v6
                .insert(&Key::new(prefix, a.octets()), id, 0)
                .map_err(map_err(names::NETBLOCKS_V6, "insert")),
        }
    }

    fn lpm_remove(&mut self, c: &Cidr) -> Result<(), BpfError> {
        let prefix = u32::from(c.prefix);
        let r = match c.addr {
            IpAddr::V4(a) => self.nb_v4.remove(&Key::new(prefix, a.octets())),
            IpAddr::V6(a) => self.nb_v6.remove(&Key::new(prefix, a.octets())),
        };
        match r {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(BpfError::Map {
                source: Box::new(source),
                map: if c.addr.is_ipv4() {
                    names::NETBLOCKS_V4
                } else {
                    names::NETBLOCKS_V6
                },
                op: "remove",
            }),
        }
    }

    /// Writes the other nodes' current total for netblock `id` (replication).
    pub fn set_remote(&mut self, id: u32, count: u64) -> Result<(), BpfError> {
        if id >= MAX_NETBLOCKS {
            return Err(BpfError::NetblockIdOutOfRange {
                id,
                max: MAX_NETBLOCKS,
            });
        }
        self.remote
            .set(id, count, 0)
            .map_err(map_err(names::REMOTE, "set"))
    }

    /// Global counters summed over CPUs.
    pub fn read_stats(&self) -> Result<StatsSnapshot, BpfError> {
        let per_cpu = self
            .stats
            .get(&0, 0)
            .map_err(map_err(names::STATS, "lookup"))?;
        let mut counters = [0u64; STAT_COUNT];
        for block in per_cpu.iter() {
            for (c, v) in counters.iter_mut().zip(block.counters.iter()) {
                *c += v;
            }
        }
        Ok(StatsSnapshot { counters })
    }

    fn layout<K, V>(&self, percpu: bool) -> Layout {
        Layout {
            key_size: size_of::<K>(),
            value_size: size_of::<V>(),
            percpu,
            cpus: self.cpus,
        }
    }

    fn dump(
        &mut self,
        map: &'static str,
        fd: BorrowedFd<'_>,
        l: &Layout,
    ) -> Result<batch::Dump, BpfError> {
        let d = batch::dump(fd, l, self.batch_ok).map_err(|source| BpfError::MapSyscall {
            map,
            op: "BPF_MAP_LOOKUP_BATCH",
            source,
        })?;
        if !d.batched && self.batch_ok {
            tracing::info!(
                map,
                "kernel refused BPF_MAP_LOOKUP_BATCH; reading maps key by key"
            );
            self.batch_ok = false;
        }
        Ok(d)
    }

    /// The whole LOCAL array (open flows per netblock id), in one batch.
    fn read_local(&mut self) -> Result<Vec<u64>, BpfError> {
        let name = names::LOCAL;
        let l = self.layout::<u32, u64>(false);
        let fd = dup_fd(self.local.map(), name)?;
        let d = self.dump(name, fd.as_fd(), &l)?;
        let mut out = vec![0u64; MAX_NETBLOCKS as usize];
        for (k, v) in d.entries(&l) {
            if let (Ok(k), Ok(v)) = (u32::read_from_bytes(k), u64::read_from_bytes(v))
                && let Some(slot) = out.get_mut(k as usize)
            {
                *slot = v;
            }
        }
        Ok(out)
    }

    /// Current and cumulative counts of id 0, every configured netblock, and every removed
    /// id that still holds open flows.
    pub fn read_netblocks(&mut self) -> Result<Vec<NetblockCounters>, BpfError> {
        self.refresh_clock()?;
        // LOCAL is dumped whole (a removed netblock may still hold flows); REMOTE only
        // matters for the ids listed, so it is read per id (the poller runs this every
        // poll_interval: a whole-array copy of REMOTE was a measurable share of an idle
        // node's CPU in `cargo xtask profile perf`).
        let local = self.read_local()?;
        let by_id: BTreeMap<u32, Cidr> = self.netblocks.iter().map(|(c, a)| (a.id, *c)).collect();
        let ids: BTreeSet<u32> = std::iter::once(0)
            .chain(by_id.keys().copied())
            .chain((0..MAX_NETBLOCKS).filter(|i| local[*i as usize] != 0))
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let lim = self
                .limits
                .get(&id, 0)
                .map_err(map_err(names::LIMITS, "lookup"))?;
            let per_cpu = self
                .nb_stats
                .get(&id, 0)
                .map_err(map_err(names::NB_STATS, "lookup"))?;
            let mut stats = NetblockStats::default();
            for s in per_cpu.iter() {
                add_nb(&mut stats, s);
            }
            out.push(NetblockCounters {
                id,
                cidr: by_id.get(&id).copied(),
                limit: lim.limit,
                action: if lim.action == ACTION_DROP {
                    NetblockAction::Drop
                } else {
                    NetblockAction::Count
                },
                local: local[id as usize],
                remote: self
                    .remote
                    .get(&id, 0)
                    .map_err(map_err(names::REMOTE, "lookup"))?,
                stats,
            });
        }
        Ok(out)
    }

    /// LOCAL count of one netblock id (open flows on this node).
    pub fn local(&self, id: u32) -> Result<u64, BpfError> {
        self.local
            .get(&id, 0)
            .map_err(map_err(names::LOCAL, "lookup"))
    }

    /// Per-source counts of every source that opened a connection since its slot was
    /// claimed (one batch read of the whole table; a source claimed on two CPUs at once may
    /// hold two slots, which are summed here).
    pub fn read_sources(&mut self) -> Result<Vec<SourceCount>, BpfError> {
        self.refresh_clock()?;
        let name = names::SOURCES;
        let l = self.layout::<u32, SourceSet>(false);
        let fd = dup_fd(self.sources.map(), name)?;
        let d = self.dump(name, fd.as_fd(), &l)?;
        // (family, address, opened, closed, current) per live slot; sorted and merged
        // below (a sort of a flat Vec is several times cheaper than a tree of 64k keys).
        let mut rows: Vec<(u8, [u8; 16], u64, u64, u64)> = Vec::new();
        for (_, v) in d.entries(&l) {
            let Ok(set) = SourceSet::ref_from_bytes(v) else {
                continue;
            };
            for slot in &set.slots {
                let current = slot.state & SOURCE_CURRENT_MASK;
                if slot.state == 0 || slot.state == SOURCE_PENDING {
                    continue;
                }
                if slot.opened == 0 && current == 0 {
                    continue;
                }
                let k = slot.key;
                rows.push((k.family, k.addr, slot.opened, slot.closed, current));
            }
        }
        rows.sort_unstable_by_key(|r| (r.0, r.1));
        let mut out: Vec<SourceCount> = Vec::with_capacity(rows.len());
        let mut last: Option<(u8, [u8; 16])> = None;
        for (family, addr, opened, closed, current) in rows {
            if last == Some((family, addr))
                && let Some(e) = out.last_mut()
            {
                e.opened += opened;
                e.closed += closed;
                e.current += current;
                continue;
            }
            last = Some((family, addr));
            out.push(SourceCount {
                addr: key_addr(family, &addr),
                opened,
                closed,
                current,
            });
        }
        Ok(out)
    }

    /// Counts per address of a per-CPU LRU keyed by [`SourceKey`] (SOURCES, and
    /// DESTINATIONS for egress), summed over CPUs.
    fn read_address_counts(
        &mut self,
        name: &'static str,
        fd: std::os::fd::OwnedFd,
    ) -> Result<Vec<SourceCount>, BpfError> {
        let l = self.layout::<SourceKey, SourceCounts>(true);
        let d = self.dump(name, fd.as_fd(), &l)?;
        let mut out = Vec::with_capacity(d.count);
        for (k, v) in d.entries(&l) {
            let Ok(k) = SourceKey::read_from_bytes(k) else {
                continue;
            };
            let c = sum_percpu::<SourceCounts>(
                v,
                |a, b| {
                    a.opened += b.opened;
                    a.closed += b.closed;
                },
                SourceCounts::default(),
            );
            out.push(SourceCount {
                addr: key_addr(k.family, &k.addr),
                opened: c.opened,
                closed: c.closed,
                current: c.opened.saturating_sub(c.closed),
            });
        }
        Ok(out)
    }

    /// Every open flow, IPv4 then IPv6 (batch reads of both tables; slots being written
    /// at that instant are skipped).
    pub fn read_flows(&mut self) -> Result<Vec<FlowEntry>, BpfError> {
        self.refresh_clock()?;
        let mut out = Vec::new();
        let l4 = self.layout::<u32, FlowSetV4>(false);
        let fd = dup_fd(self.flows_v4.map(), names::FLOWS_V4)?;
        let d4 = self.dump(names::FLOWS_V4, fd.as_fd(), &l4)?;
        for (_, v) in d4.entries(&l4) {
            let Ok(set) = FlowSetV4::ref_from_bytes(v) else {
                continue;
            };
            for f in set.slots.iter().filter(|f| live_flow(f.state)) {
                out.push(FlowEntry {
                    src: IpAddr::V4(Ipv4Addr::from(f.key.saddr)),
                    sport: f.key.sport,
                    dst: IpAddr::V4(Ipv4Addr::from(f.key.daddr)),
                    dport: f.key.dport,
                    netblock: f.netblock,
                    opened_ns: f.opened_ns,
                });
            }
        }
        let l6 = self.layout::<u32, FlowSetV6>(false);
        let fd = dup_fd(self.flows_v6.map(), names::FLOWS_V6)?;
        let d6 = self.dump(names::FLOWS_V6, fd.as_fd(), &l6)?;
        for (_, v) in d6.entries(&l6) {
            let Ok(set) = FlowSetV6::ref_from_bytes(v) else {
                continue;
            };
            for f in set.slots.iter().filter(|f| live_flow(f.state)) {
                out.push(FlowEntry {
                    src: IpAddr::V6(Ipv6Addr::from(f.key.saddr)),
                    sport: f.key.sport,
                    dst: IpAddr::V6(Ipv6Addr::from(f.key.daddr)),
                    dport: f.key.dport,
                    netblock: f.netblock,
                    opened_ns: f.opened_ns,
                });
            }
        }
        Ok(out)
    }

    /// The entries of a v4/v6 flow map pair (FLOWS_*, OUT_FLOWS_*), addresses widened.
    fn read_flow_maps(
        &mut self,
        map_names: [&'static str; 2],
        [fd4, fd6]: [std::os::fd::OwnedFd; 2],
    ) -> Result<Vec<RawFlow>, BpfError> {
        let l4 = self.layout::<FlowKeyV4, FlowValue>(false);
        let d4 = self.dump(map_names[0], fd4.as_fd(), &l4)?;
        let l6 = self.layout::<FlowKeyV6, FlowValue>(false);
        let d6 = self.dump(map_names[1], fd6.as_fd(), &l6)?;
        let mut out = Vec::with_capacity(d4.count + d6.count);
        for (k, v) in d4.entries(&l4) {
            if let (Ok(k), Ok(value)) =
                (FlowKeyV4::read_from_bytes(k), FlowValue::read_from_bytes(v))
            {
                out.push(RawFlow {
                    saddr: IpAddr::V4(Ipv4Addr::from(k.saddr)),
                    sport: k.sport,
                    daddr: IpAddr::V4(Ipv4Addr::from(k.daddr)),
                    dport: k.dport,
                    value,
                });
            }
        }
        for (k, v) in d6.entries(&l6) {
            if let (Ok(k), Ok(value)) =
                (FlowKeyV6::read_from_bytes(k), FlowValue::read_from_bytes(v))
            {
                out.push(RawFlow {
                    saddr: IpAddr::V6(Ipv6Addr::from(k.saddr)),
                    sport: k.sport,
                    daddr: IpAddr::V6(Ipv6Addr::from(k.daddr)),
                    dport: k.dport,
                    value,
                });
            }
        }
        Ok(out)
    }

    /// Expires flows opened more than `older_than` ago; returns how many this call closed.
    ///
    /// The program does not watch established traffic (that would cost every packet a
    /// hash lookup), so "idle" here means "opened before": a session longer than the
    /// timeout is expired too and its eventual FIN counts as `fin_rst_no_flow`.
    ///
    /// Each expiry runs a synthetic client RST, marked by [`duraplane_common::ExpireMeta`]
    /// XDP metadata, through `BPF_PROG_TEST_RUN`: the kernel's own close path deletes the
    /// flow and, only if that delete succeeded, decrements LOCAL atomically and counts the
    /// close per source and netblock on the current CPU. A real FIN racing with expiry
    /// therefore still closes exactly once, and per-CPU counters are never written from
    /// userspace.
    pub fn expire_flows(&mut self, older_than: Duration) -> Result<u64, BpfError> {
        let older = u64::try_from(older_than.as_nanos()).unwrap_or(u64::MAX);
        self.refresh_clock()?;
        let cutoff = self.runtime.clock_ns.saturating_sub(older);
        self.expire_opened_before(cutoff)
    }

    /// Expires flows whose `opened_ns` ≤ `cutoff_ns` (CLOCK_MONOTONIC; flows are stamped
    /// with userspace's clock as of its last refresh, at most one poll interval behind).
    pub fn expire_opened_before(&mut self, cutoff_ns: u64) -> Result<u64, BpfError> {
        let flows = self.read_flows()?;
        let before = self.read_stats()?.get(Stat::Expired);
        let meta = EXPIRE_MAGIC.to_ne_bytes();
        for f in flows {
            if f.opened_ns > cutoff_ns {
                continue;
            }
            let frame =
                frames::Frame::tcp(f.src, f.sport, f.dst, f.dport, frames::tcp_flags::RST).build();
            testrun::run_xdp_with_meta(self.program()?, &meta, &frame, 1)?;
        }
        Ok(self.read_stats()?.get(Stat::Expired) - before)
    }

    /// Takes up to `max` pending drop events from the ring buffer without blocking.
    pub fn poll_drop_events(&mut self, max: usize) -> Vec<DropRecord> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = self.drop_events.next() else {
                break;
            };
            if let Ok((e, _)) = DropEvent::read_from_prefix(&item) {
                out.push(DropRecord {
                    ts_ns: e.ts_ns,
                    addr: key_addr(e.family, &e.saddr),
                    netblock: e.netblock,
                    dport: e.dport,
                });
            }
        }
        out
    }

    /// The ring buffer's fd, readable when drop events are pending (for epoll/io_uring).
    pub fn drop_events_fd(&self) -> BorrowedFd<'_> {
        self.drop_events.as_fd()
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let ifaces: Vec<String> = self
            .attachments
            .iter()
            .map(|a| a.interface.clone())
            .collect();
        for i in ifaces {
            if let Err(e) = self.detach(&i) {
                tracing::warn!(interface = %i, error = %e, "detaching XDP on shutdown failed");
            }
        }
        for i in self.egress_attachments() {
            if let Err(e) = self.detach_egress(&i) {
                tracing::warn!(interface = %i, error = %e, "detaching TC egress on shutdown failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking() {
        let a: IpAddr = "192.0.2.77".parse().unwrap();
        assert_eq!(masked(a, 24), Some("192.0.2.0".parse().unwrap()));
        assert_eq!(masked(a, 0), Some("0.0.0.0".parse().unwrap()));
        assert_eq!(masked(a, 32), Some(a));
        assert_eq!(masked(a, 33), None);
        let b: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        assert_eq!(masked(b, 48), Some("2001:db8:1::".parse().unwrap()));
        assert_eq!(masked(b, 129), None);
    }

    /// Needs root (loads the program): the batch reader and the per-key fallback must see
    /// the same entries, for the set-associative arrays and a per-CPU array.
    #[test]
    fn batch_and_per_key_reads_agree() {
        let mut dp = Datapath::load(&DatapathConfig::default()).unwrap();
        let d4: IpAddr = "203.0.113.1".parse().unwrap();
        let d6: IpAddr = "2001:db8:ffff::1".parse().unwrap();
        for i in 0..600u16 {
            let (src, dst) = if i.is_multiple_of(2) {
                (IpAddr::from([198, 51, 100, (i / 4) as u8]), d4)
            } else {
                (
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)),
                    d6,
                )
            };
            let fr = frames::Frame::tcp(src, 1000 + i, dst, 25, frames::tcp_flags::SYN).build();
            assert_eq!(dp.test_run(&fr, 1).unwrap().verdict, testrun::Verdict::Pass);
        }
        let cases: [(&MapData, Layout); 4] = [
            (dp.flows_v4.map(), dp.layout::<u32, FlowSetV4>(false)),
            (dp.flows_v6.map(), dp.layout::<u32, FlowSetV6>(false)),
            (dp.sources.map(), dp.layout::<u32, SourceSet>(false)),
            (dp.nb_stats.map(), dp.layout::<u32, NetblockStats>(true)),
        ];
        for (map, l) in cases {
            let fd = map.fd().as_fd();
            let b = batch::dump(fd, &l, true).unwrap();
            assert!(b.batched);
            let k = batch::dump(fd, &l, false).unwrap();
            assert!(!k.batched);
            let mut be: Vec<_> = b.entries(&l).collect();
            let mut ke: Vec<_> = k.entries(&l).collect();
            be.sort();
            ke.sort();
            assert_eq!(be.len(), ke.len());
            assert!(be == ke);
        }
        assert_eq!(dp.read_flows().unwrap().len(), 600);
        let sources = dp.read_sources().unwrap();
        // 150 IPv4 sources with 2 flows each, 300 IPv6 sources with one.
        assert_eq!(sources.len(), 450);
        assert_eq!(sources.iter().map(|s| s.current).sum::<u64>(), 600);
    }

    #[test]
    fn percpu_sum_uses_8_byte_stride() {
        // Two CPUs of a 4-byte value: 8 bytes each.
        let bytes = [
            1u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
        ];
        let s = sum_percpu::<u32>(&bytes, |a, b| *a += b, 0);
        assert_eq!(s, 3);
    }
}
