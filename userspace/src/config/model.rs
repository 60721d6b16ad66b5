//! The typed configuration: every option of Momentum's cluster module that Duraplane reads,
//! with its documented default, plus Duraplane's own `duraplane { }` scope.
//!
//! Other capabilities read only these types; none of them looks at the syntax tree.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

/// Where an effective value came from, for `check-config` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Set in a file, at this position.
    File { file: PathBuf, line: u32, col: u32 },
    /// Not set: the documented default.
    Default,
    /// Derived at run time (e.g. nodename from the hostname).
    Derived(&'static str),
}

/// An IPv4 or IPv6 network in CIDR form; the address is stored masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// The whole configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from.
    pub source: PathBuf,
    pub cluster: ClusterConfig,
    pub listener: EcclusterListener,
    /// `Security { }`; `None` when absent (the daemon then keeps running as it was started).
    pub security: Option<Security>,
    /// `ec_logger` / `bounce_logger` instances and their destinations.
    pub loggers: Vec<LoggerInstance>,
    /// DuraVIP declarations gathered from `Listen` and `Binding` scopes.
    pub duravips: Vec<DuravipDecl>,
    pub duraplane: DuraplaneSettings,
    /// Effective value provenance, keyed by a path like `cluster.view_mature_time`.
    pub origins: BTreeMap<String, Origin>,
}

/// `cluster { }` — reference/momentum.md §1.3.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub cluster_group: String,
    pub control_group: String,
    pub log_group: Option<String>,
    /// `logs = [ name = "/path" … ]`: the streams this node publishes.
    pub logs: BTreeMap<String, PathBuf>,
    pub log_active_interval: Duration,
    pub log_idle_interval: Duration,
    /// Explicit `nodename`; resolution (env, hostname) happens at run time.
    pub nodename: Option<String>,
    /// Explicit `nodeaddr`; never loopback.
    pub nodeaddr: Option<IpAddr>,
    pub heartbeat_start_delay: Duration,
    pub heartbeats_per_sec: u32,
    pub if_check_interval: Duration,
    pub if_down_limit: u32,
    pub arp_all_hosts: bool,
    pub duravip_balance_set_size: u32,
    pub view_mature_time: Duration,
    pub view_balance_interval: Duration,
    pub view_broadcast_interval: Duration,
    pub unconditional_rebind: bool,
    pub enabled: bool,
    pub debug_level: String,
    pub replicate: Vec<Replicate>,
    pub topology: Vec<Topology>,
}

/// `Replicate "name" { }` — §1.5.
#[derive(Debug, Clone, PartialEq)]
pub struct Replicate {
    pub name: String,
    /// The effective type: `type`, else `class`, else the scope name.
    pub kind: ReplicateKind,
    /// `parameters = "a;b"`, split.
    pub parameters: Vec<String>,
    pub max_delay: Duration,
    pub max_pending: u32,
    /// `-1` in the file means unlimited: `None`.
    pub max_size: Option<u64>,
    pub binding_group: Option<String>,
    pub class: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicateKind {
    InboundCidr,
    OutboundCidr,
    OutboundDomains,
    OutboundBindingDomains,
    SharedNamedThrottles,
    Cache,
    Obtm,
    Obtc,
    Metrics,
    EccmgrMetrics,
}

/// `Topology "cidr" { cidrmask interface }` — §1.6.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub network: Cidr,
    pub cidrmask: u8,
    pub interface: String,
}

/// `ECCluster_Listener { Listen "…" { } }` — §1.8.
#[derive(Debug, Clone, PartialEq)]
pub struct EcclusterListener {
    pub listens: Vec<Listen>,
}

/// One `Listen` of the ECCluster_Listener, with its options resolved (Listen scope over
/// listener scope over default).
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub addr: ListenAddr,
    pub enable: bool,
    pub listen_backlog: u32,
    pub accept_queue_backlog: u32,
    pub concurrency: u32,
    pub disable_nagle_algorithm: bool,
    pub events_per_iter: u32,
    pub file_mode: u32,
    pub pool_name: Option<String>,
    pub tcp_recv_buffer_size: u32,
    pub tcp_send_buffer_size: u32,
}

/// A Listen address: `*:4802`, `:4802`, `[*]:4802`, `1.2.3.4:4802`, `[2001:db8::1]:4802`,
/// or a Unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    AnyV4(u16),
    AnyV6(u16),
    Inet(SocketAddr),
    Unix(PathBuf),
}

/// `Security { user group Capabilities }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    pub user: Option<String>,
    pub group: Option<String>,
    /// Capability names from the `cap_from_text` string, lower-case, without `+ep`.
    pub capabilities: Vec<String>,
}

/// One `ec_logger "name" { }` or `bounce_logger "name" { }` instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggerInstance {
    pub module: String,
    pub name: String,
    /// Option name (`mainlog`, `bouncelog`, …) → destination.
    pub destinations: BTreeMap<String, LogDestination>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogDestination {
    /// `cluster:///path=>sub` or `cluster:///path?subscribers=a,b` (also `jlog://`).
    Cluster {
        path: PathBuf,
        subscribers: Vec<String>,
    },
    /// A plain path (`file://`).
    File(PathBuf),
}

/// A DuraVIP from a `Listen` (any listener) or `Binding` scope with `Enable_Duravip`, or a
/// `Listen` with `Duravip_Follow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuravipDecl {
    pub addr: IpAddr,
    /// `Binding "name"`; for listeners, the listener keyword and Listen address.
    pub source: DuravipSource,
    pub preference: Option<String>,
    /// Binding name or address this listener follows.
    pub follow: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DuravipSource {
    Binding { name: String },
    Listen { listener: String, spec: String },
}

/// `duraplane { }`: Duraplane's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DuraplaneSettings {
    /// Default `/run/duraplane/control.sock`.
    pub control_socket: PathBuf,
    /// Prometheus text endpoint; default `127.0.0.1:9480`. `None` when `metrics = "off"`.
    pub metrics_listen: Option<SocketAddr>,
    /// Interfaces the XDP program is attached to. Default: none.
    pub interfaces: Vec<String>,
    /// `xdp_mode = "native" | "generic" | "auto"` (auto: native, falling back to generic).
    pub xdp_mode: XdpMode,
    /// Counted TCP destination ports. Default `(25 465 587)`.
    pub ports: Vec<u16>,
    /// Policy netblocks, in file order.
    pub netblocks: Vec<Netblock>,
    /// Flows idle this long are expired by userspace. Default 300 s.
    pub flow_idle_timeout: Duration,
    /// Cluster key for peers and clients. Default `/etc/duraplane/cluster.key`.
    pub cluster_key_file: PathBuf,
    /// Node-local state. Default `/var/lib/duraplane`.
    pub state_dir: PathBuf,
    /// How often userspace reads the kernel counters. Default 100 ms.
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Auto,
    Native,
    Generic,
}

/// `Netblock "cidr" { max_connections action }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netblock {
    pub cidr: Cidr,
    /// Cluster-wide limit on current connections; `None` = count only.
    pub max_connections: Option<u64>,
    pub action: NetblockAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetblockAction {
    /// Drop the SYN at the NIC when over the limit.
    Drop,
    /// Count (and report) only.
    Count,
}
