//! The inbound accounting service of the daemon: owns the loaded data plane, polls its maps
//! every `poll_interval`, and answers the console, metrics and reloads from the latest
//! snapshot, so no console command or scrape ever touches the kernel maps directly.
//!
//! Data flows one way: kernel maps → [`InboundService::poll_once`] → snapshot → console,
//! metrics (and, with replication, the other nodes).

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use duraplane_common::Stat;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::{CidrTree, NetblockRow, SynRateCalculator, render_inbound_show, shared_list_line};
use crate::{
    bpf::{AttachedMode, BpfError, Datapath, DatapathConfig, NetblockCounters, StatsSnapshot},
    config::{Config, DuraplaneSettings},
    console::ConsoleError,
    daemon::Services,
};

/// Per-source series exported to Prometheus: the busiest sources only (bounded cardinality).
const METRIC_TOP_SOURCES: usize = 10;
/// Drop events logged per poll; the rest are summarised in one line.
const DROP_LOG_PER_POLL: usize = 20;
/// How often idle flows are expired (independent of the poll interval).
const EXPIRY_EVERY: Duration = Duration::from_secs(1);

/// The latest view of the kernel counters.
#[derive(Debug, Default)]
struct State {
    netblocks: Vec<NetblockCounters>,
    rows: Vec<NetblockRow>,
    rates: SynRateCalculator,
    tree: CidrTree,
    stats: Option<StatsSnapshot>,
    sources: usize,
    expired: u64,
    drop_events: u64,
    polls: u64,
    last_error: Option<String>,
}

struct Inner {
    datapath: Mutex<Datapath>,
    state: RwLock<State>,
    attachments: Vec<(String, AttachedMode)>,
    ports: RwLock<Vec<u16>>,
    poll_interval_ns: AtomicU64,
    flow_idle_timeout_ns: AtomicU64,
    stop: AtomicBool,
    last_expiry: Mutex<Option<Instant>>,
    /// Set once replication runs: gets each poll's local counts, answers the shared tree.
    replication: std::sync::OnceLock<crate::replicate::InboundLink>,
}

/// Inbound connection accounting at the NIC (issue 3), as a daemon capability.
#[derive(Clone)]
pub struct InboundService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InboundService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundService")
            .field("attachments", &self.inner.attachments)
            .finish()
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

impl InboundService {
    /// Privileged part: loads the program and attaches it to every configured interface
    /// (native mode, generic as a logged fallback). Call before the privilege drop and
    /// before any thread exists.
    pub fn setup(settings: &DuraplaneSettings) -> Result<Self, BpfError> {
        let mut dp = Datapath::load(&DatapathConfig::from(settings))?;
        let mut attachments = Vec::new();
        for iface in &settings.interfaces {
            let mode = dp.attach(iface, settings.xdp_mode)?;
            match mode {
                AttachedMode::Native => {
                    tracing::info!(interface = %iface, "XDP attached in native mode")
                }
                AttachedMode::Generic => tracing::warn!(
                    interface = %iface,
                    "XDP attached in generic mode: the driver has no native XDP, expect ~10x lower packet rates"
                ),
            }
            attachments.push((iface.clone(), mode));
        }
        Ok(InboundService {
            inner: Arc::new(Inner {
                datapath: Mutex::new(dp),
                state: RwLock::new(State::default()),
                attachments,
                ports: RwLock::new(settings.ports.clone()),
                poll_interval_ns: AtomicU64::new(nanos(settings.poll_interval)),
                flow_idle_timeout_ns: AtomicU64::new(nanos(settings.flow_idle_timeout)),
                stop: AtomicBool::new(false),
                last_expiry: Mutex::new(None),
                replication: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Hands local counts to replication from now on, and shows its cluster-wide tree.
    pub fn set_replication(&self, link: crate::replicate::InboundLink) {
        let _ = self.inner.replication.set(link);
    }

    /// Writes the other nodes' totals per netblock into the kernel (absent = 0).
    pub fn apply_remote(&self, totals: &[(crate::config::Cidr, u64)]) -> Result<(), BpfError> {
        let mut dp = self
            .inner
            .datapath
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (cidr, id) in dp.netblock_ids() {
            let v = totals
                .iter()
                .find(|(c, _)| *c == cidr)
                .map_or(0, |(_, v)| *v);
            dp.set_remote(id, v)?;
        }
        Ok(())
    }

    /// Runs `f` with the loaded data plane locked: DuraVIP fills `VIPS`, renews the lease
    /// and announces through the very program the interfaces run.
    pub fn with_datapath<R>(&self, f: impl FnOnce(&mut Datapath) -> R) -> R {
        let mut dp = self
            .inner
            .datapath
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f(&mut dp)
    }

    /// Interfaces and the XDP mode each got.
    pub fn attachments(&self) -> &[(String, AttachedMode)] {
        &self.inner.attachments
    }

    /// Reads the kernel maps once and refreshes the snapshot; also expires idle flows (at
    /// most once a second) and logs SYNs dropped at the NIC.
    pub fn poll_once(&self) -> Result<(), BpfError> {
        let now = Instant::now();
        let idle = Duration::from_nanos(self.inner.flow_idle_timeout_ns.load(Ordering::Relaxed));
        let (netblocks, sources, stats, drops, expired) = {
            let mut dp = self
                .inner
                .datapath
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let expire_due = {
                let mut last = self
                    .inner
                    .last_expiry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let due = last.is_none_or(|t| now.duration_since(t) >= EXPIRY_EVERY);
                if due {
                    *last = Some(now);
                }
                due
            };
            let expired = if expire_due && !idle.is_zero() {
                dp.expire_flows(idle)?
            } else {
                0
            };
            (
                dp.read_netblocks()?,
                dp.read_sources()?,
                dp.read_stats()?,
                dp.poll_drop_events(4096),
                expired,
            )
        };
        if let Some(r) = self.inner.replication.get() {
            r.publish_local(&netblocks, &sources);
        }
        for d in drops.iter().take(DROP_LOG_PER_POLL) {
            tracing::warn!(
                target: "rejectlog",
                source = %d.addr,
                netblock = d.netblock,
                dport = d.dport,
                "SYN dropped at the NIC: netblock over its cluster-wide limit"
            );
        }
        if drops.len() > DROP_LOG_PER_POLL {
            tracing::warn!(
                target: "rejectlog",
                more = drops.len() - DROP_LOG_PER_POLL,
                "further SYNs dropped at the NIC in this poll"
            );
        }
        let rows: Vec<NetblockRow> = netblocks
            .iter()
            .filter_map(|nb| {
                Some(NetblockRow {
                    cidr: nb.cidr?,
                    current: nb.local + nb.remote,
                    syn_total: nb.stats.syn,
                    dropped: nb.stats.dropped,
                    limit: (nb.limit > 0).then_some(nb.limit),
                    action: nb.action,
                })
            })
            .collect();
        let mut tree = CidrTree::new();
        let mut tracked = 0;
        for s in &sources {
            if s.current > 0 {
                tree.set(s.addr, s.current);
                tracked += 1;
            }
        }
        let mut st = self.inner.state.write().unwrap_or_else(|p| p.into_inner());
        st.rates.observe(&rows, now);
        st.netblocks = netblocks;
        st.rows = rows;
        st.tree = tree;
        st.stats = Some(stats);
        st.sources = tracked;
        st.expired += expired;
        st.drop_events += drops.len() as u64;
        st.polls += 1;
        st.last_error = None;
        Ok(())
    }

    /// Applies a reloaded configuration: netblocks and ports change in place (no detach,
    /// no lost counts); interfaces and XDP mode need a restart and say so.
    pub fn apply(&self, old: &Config, new: &Config) -> Result<(), BpfError> {
        let (o, n) = (&old.duraplane, &new.duraplane);
        {
            let mut dp = self
                .inner
                .datapath
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if o.netblocks != n.netblocks {
                dp.set_netblocks(&n.netblocks)?;
                tracing::info!(netblocks = n.netblocks.len(), "netblocks reloaded");
            }
            if o.ports != n.ports {
                dp.set_ports(&n.ports)?;
                *self.inner.ports.write().unwrap_or_else(|p| p.into_inner()) = n.ports.clone();
                tracing::info!(ports = ?n.ports, "counted ports reloaded");
            }
        }
        if o.interfaces != n.interfaces || o.xdp_mode != n.xdp_mode {
            tracing::warn!(
                "duraplane.interfaces / xdp_mode changed: takes effect at the next restart"
            );
        }
        self.inner
            .poll_interval_ns
            .store(nanos(n.poll_interval), Ordering::Relaxed);
        self.inner
            .flow_idle_timeout_ns
            .store(nanos(n.flow_idle_timeout), Ordering::Relaxed);
        // Refresh the snapshot so the console shows the new netblocks at once.
        self.poll_once()
    }

    /// Starts the poller thread and plugs console commands, `cluster info`, metrics and
    /// the reload hook into the daemon.
    pub fn start(&self, services: &Services) -> Result<JoinHandle<()>, ServiceError> {
        self.register(services)?;
        if let Err(e) = self.poll_once() {
            tracing::error!(error = %e, "first read of the XDP counters failed");
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("inbound-poll".into())
            .spawn(move || me.poll_loop())
            .map_err(|source| ServiceError::Spawn { source })
    }

    fn poll_loop(&self) {
        while !self.inner.stop.load(Ordering::Relaxed) {
            let interval =
                Duration::from_nanos(self.inner.poll_interval_ns.load(Ordering::Relaxed))
                    .max(Duration::from_millis(1));
            std::thread::sleep(interval);
            if let Err(e) = self.poll_once() {
                let msg = e.to_string();
                let mut st = self.inner.state.write().unwrap_or_else(|p| p.into_inner());
                if st.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!(error = %msg, "reading the XDP counters failed");
                }
                st.last_error = Some(msg);
            }
        }
    }

    /// Stops the poller (the caller joins it); the program detaches when the last clone of
    /// the service is dropped.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }

    fn register(&self, services: &Services) -> Result<(), ServiceError> {
        let nodename = services.identity.nodename.clone();
        let me = self.clone();
        services.console.register(
            &["cluster", "shared", "list"],
            "List the replicated (shared) objects this node manages",
            Arc::new(move |_args| Ok(me.render_shared_list())),
        )?;
        let me = self.clone();
        services.console.register(
            &["cluster", "shared", "show"],
            "cluster shared show OBJECT [from NODE]: show a shared object (inbound_cidr)",
            Arc::new(move |args| me.render_shared_show(args, &nodename)),
        )?;
        let me = self.clone();
        services.console.register(
            &["inbound", "show"],
            "inbound show [--top N]: per-netblock connections, SYN rate, drops and limits",
            Arc::new(move |args| me.render_show(args)),
        )?;
        let me = self.clone();
        services.console.register(
            &["inbound", "stats"],
            "inbound stats: every XDP program counter (map full, evictions, drops …)",
            Arc::new(move |_args| Ok(me.render_stats())),
        )?;
        let me = self.clone();
        services
            .info
            .set_section("xdp", Arc::new(move || me.render_info()));
        services
            .metrics
            .register_collector(Box::new(InboundCollector(self.clone())));
        let me = self.clone();
        services.reloader.register(
            "inbound",
            Arc::new(move |old, new| me.apply(old, new).map_err(|e| e.into())),
        );
        Ok(())
    }

    fn render_shared_list(&self) -> String {
        if let Some(r) = self.inner.replication.get() {
            return r.render_list();
        }
        format!(
            "Currently managed objects:\n{}\n",
            shared_list_line("inbound_cidr", CidrTree::LIST_KIND)
        )
    }

    fn render_shared_show(&self, args: &[&str], nodename: &str) -> Result<String, ConsoleError> {
        let usage = || ConsoleError::Usage {
            usage: "cluster shared show inbound_cidr [from NODE]".into(),
        };
        let (object, from) = match args {
            [object] => (*object, None),
            [object, from_kw, node] if from_kw.eq_ignore_ascii_case("from") => {
                (*object, Some(*node))
            }
            _ => return Err(usage()),
        };
        if object != "inbound_cidr" {
            return Err(ConsoleError::Failed {
                message: format!(
                    "no shared object '{object}' on this node (try 'cluster shared list')"
                ),
            });
        }
        if let Some(r) = self.inner.replication.get() {
            return r.render_show(from);
        }
        let view = match from {
            None => "global".to_owned(),
            Some(n) if n == nodename => nodename.to_owned(),
            Some(n) => {
                return Err(ConsoleError::Failed {
                    message: format!(
                        "no view from node '{n}': only this node's ('{nodename}') counts are known until replication runs"
                    ),
                });
            }
        };
        let st = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
        Ok(st.tree.render("inbound_cidr", &view))
    }

    fn render_show(&self, args: &[&str]) -> Result<String, ConsoleError> {
        let top = match args {
            [] => None,
            ["--top", n] => Some(n.parse::<usize>().map_err(|_| ConsoleError::Usage {
                usage: "inbound show [--top N]".into(),
            })?),
            _ => {
                return Err(ConsoleError::Usage {
                    usage: "inbound show [--top N]".into(),
                });
            }
        };
        let st = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
        let mut out = render_inbound_show(&st.rows, &st.rates, top);
        if let Some(unclassified) = st.netblocks.iter().find(|n| n.id == 0) {
            out.push_str(&format!(
                "(outside every netblock: {} current, {} SYNs)\n",
                unclassified.local, unclassified.stats.syn
            ));
        }
        Ok(out)
    }

    fn render_stats(&self) -> String {
        let st = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        if let Some(s) = &st.stats {
            for (stat, v) in s.iter() {
                out.push_str(&format!("{:>28}: {v}\n", stat.name()));
            }
        }
        out.push_str(&format!(
            "{:>28}: {}\n{:>28}: {}\n{:>28}: {}\n",
            "tracked_sources",
            st.sources,
            "userspace_polls",
            st.polls,
            "drop_events",
            st.drop_events
        ));
        out
    }

    fn render_info(&self) -> String {
        let att: Vec<String> = self
            .inner
            .attachments
            .iter()
            .map(|(i, m)| {
                format!(
                    "{i} ({})",
                    match m {
                        AttachedMode::Native => "native",
                        AttachedMode::Generic => "generic",
                    }
                )
            })
            .collect();
        let st = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
        let ports = self.inner.ports.read().unwrap_or_else(|p| p.into_inner());
        let mut s = format!(
            "XDP: {}\nCounted ports: {}\nNetblocks: {} configured, {} current connections, {} SYNs dropped at the NIC",
            if att.is_empty() {
                "not attached".to_owned()
            } else {
                att.join(", ")
            },
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            st.rows.len(),
            st.netblocks.iter().map(|n| n.local).sum::<u64>(),
            st.stats.as_ref().map_or(0, |s| s.get(Stat::Dropped)),
        );
        if let Some(e) = &st.last_error {
            s.push_str(&format!("\nXDP counters: last read failed: {e}"));
        }
        s
    }
}

/// Why the service could not plug itself into the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot register inbound console commands: {0}")]
    Register(#[from] crate::console::RegisterError),
    #[error("cannot start the inbound poller thread: {source}")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
}

/// Exports the snapshot on each scrape: configured netblocks and the top sources only.
struct InboundCollector(InboundService);

impl std::fmt::Debug for InboundCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InboundCollector")
    }
}

fn gauge_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(String, i64)],
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(0i64);
    let mut me = enc.encode_descriptor(name, help, None, g.metric_type())?;
    for (l, v) in values {
        let labels = [(label.to_owned(), l.clone())];
        ConstGauge::new(*v).encode(me.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(String, u64)],
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(0u64);
    let mut me = enc.encode_descriptor(name, help, None, c.metric_type())?;
    for (l, v) in values {
        let labels = [(label.to_owned(), l.clone())];
        ConstCounter::new(*v).encode(me.encode_family(&labels)?)?;
    }
    Ok(())
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for InboundCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.0.inner.state.read().unwrap_or_else(|p| p.into_inner());
        let nb = |f: &dyn Fn(&NetblockRow) -> u64| -> Vec<(String, u64)> {
            st.rows
                .iter()
                .map(|r| (super::cidr_string(&r.cidr), f(r)))
                .collect()
        };
        let current: Vec<(String, i64)> = nb(&|r| r.current)
            .into_iter()
            .map(|(k, v)| (k, clamp(v)))
            .collect();
        gauge_family(
            &mut enc,
            "duraplane_inbound_current_connections",
            "Current inbound connections per configured netblock (this node plus replicated remote counts)",
            "netblock",
            &current,
        )?;
        let limits: Vec<(String, i64)> = st
            .rows
            .iter()
            .filter_map(|r| Some((super::cidr_string(&r.cidr), clamp(r.limit?))))
            .collect();
        gauge_family(
            &mut enc,
            "duraplane_inbound_limit_connections",
            "Configured cluster-wide connection limit per netblock",
            "netblock",
            &limits,
        )?;
        counter_family(
            &mut enc,
            "duraplane_inbound_syns",
            "SYNs seen per configured netblock",
            "netblock",
            &nb(&|r| r.syn_total),
        )?;
        counter_family(
            &mut enc,
            "duraplane_inbound_dropped_syns",
            "SYNs dropped at the NIC per configured netblock (over the limit, action drop)",
            "netblock",
            &nb(&|r| r.dropped),
        )?;
        let top: Vec<(String, i64)> = st
            .tree
            .top(METRIC_TOP_SOURCES)
            .into_iter()
            .map(|(ip, v): (IpAddr, u64)| (ip.to_string(), clamp(v)))
            .collect();
        gauge_family(
            &mut enc,
            "duraplane_inbound_top_source_connections",
            "Current connections of the busiest sources (top 10 only: bounded cardinality)",
            "source",
            &top,
        )?;
        if let Some(s) = &st.stats {
            let events: Vec<(String, u64)> =
                s.iter().map(|(k, v)| (k.name().to_owned(), v)).collect();
            counter_family(
                &mut enc,
                "duraplane_xdp_events",
                "XDP program events (packets, SYNs, map full, evictions, drops …)",
                "event",
                &events,
            )?;
        }
        let g = ConstGauge::new(clamp(st.sources as u64));
        g.encode(enc.encode_descriptor(
            "duraplane_inbound_tracked_sources",
            "Distinct source addresses with open connections",
            None,
            g.metric_type(),
        )?)?;
        let c = ConstCounter::new(st.expired);
        c.encode(enc.encode_descriptor(
            "duraplane_inbound_flows_expired",
            "Flows expired by userspace after flow_idle_timeout",
            None,
            c.metric_type(),
        )?)?;
        Ok(())
    }
}
