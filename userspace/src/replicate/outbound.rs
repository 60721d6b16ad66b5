//! `outbound_cidr` (Momentum's "replicate outbound SMTP connections", by remote IP): the
//! `tc_egress` classifier on the configured interfaces counts this node's outbound TCP
//! connections per destination; a poller reads the counts, expires idle flows and
//! publishes them as this node's slot; `cluster shared show outbound_cidr [from NODE]`
//! prints the cluster-wide CIDR tree in Momentum's format.
//!
//! Keys are `'S' ‖ addr(4|16)` (the destination address), the same shape as
//! `inbound_cidr`'s source keys, so the tree, its rendering and the local API's
//! "connections within this /24" are shared with inbound ([`super::inbound`]).
//!
//! The classifier runs from its own copy of the eBPF object (its own maps): the inbound
//! service owns the XDP copy, and outbound counting needs nothing from it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::{
    ReplicationHandle,
    inbound::{render_tree_show, source_key},
    slots::Key,
};
use crate::{
    bpf::{BpfError, Datapath, DatapathConfig, DestinationCount},
    config::{Config, DuraplaneSettings, ReplicateKind},
    console::{ConsoleError, RegisterError},
    daemon::Services,
    inbound::CidrTree,
};

/// The object name (Momentum's `Replicate "outbound_cidr" {}`).
pub const OUTBOUND_CIDR: &str = "outbound_cidr";
/// How often idle outbound flows are expired (independent of the poll interval).
const EXPIRY_EVERY: Duration = Duration::from_secs(1);
/// Capacity of the (unused) inbound maps of the egress copy of the object: small, since
/// only the outbound maps of this copy are ever written.
const UNUSED_CAPACITY: u32 = 1024;

const SHOW_HELP: &str = "cluster shared show outbound_cidr [from NODE]: the cluster-wide tree of outbound connections by destination, or one node's slot";

/// `[]` or `["from", NODE]`.
fn show_args<'a>(args: &[&'a str]) -> Result<Option<&'a str>, ConsoleError> {
    match args {
        [] => Ok(None),
        [kw, node] if kw.eq_ignore_ascii_case("from") => Ok(Some(*node)),
        _ => Err(ConsoleError::Usage {
            usage: "cluster shared show outbound_cidr [from NODE]".into(),
        }),
    }
}

/// `cluster shared show outbound_cidr [from NODE]` from replication: registered whenever
/// the object is replicated, also on a node that counts nothing itself (no interfaces).
pub fn register_show(services: &Services, repl: ReplicationHandle) -> Result<(), RegisterError> {
    services.console.register(
        &["cluster", "shared", "show", OUTBOUND_CIDR],
        SHOW_HELP,
        Arc::new(move |args| render_tree_show(&repl, OUTBOUND_CIDR, show_args(args)?)),
    )
}

/// Whether the configuration asks for `outbound_cidr`.
pub fn wanted(cfg: &Config) -> bool {
    cfg.cluster
        .replicate
        .iter()
        .any(|r| r.kind == ReplicateKind::OutboundCidr)
}

/// This node's slot from one poll: current connections per destination (zero = absent).
pub fn local_table(destinations: &[DestinationCount]) -> HashMap<Key, i64> {
    destinations
        .iter()
        .filter(|d| d.current > 0)
        .map(|d| {
            (
                source_key(&d.addr),
                i64::try_from(d.current).unwrap_or(i64::MAX),
            )
        })
        .collect()
}

/// Why the outbound service could not plug itself into the daemon.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("cannot register outbound_cidr console commands: {0}")]
    Register(#[from] RegisterError),
    #[error("cannot start the outbound poller thread: {source}")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Default)]
struct State {
    /// This node's destinations (for the view without replication).
    tree: CidrTree,
    destinations: usize,
    current: u64,
    expired: u64,
    polls: u64,
    last_expiry: Option<Instant>,
    last_error: Option<String>,
}

struct Inner {
    datapath: Mutex<Datapath>,
    /// Interface and how `tc_egress` got attached there (`tcx` or `clsact`).
    attachments: Vec<(String, String)>,
    poll_interval: Duration,
    flow_idle_timeout: Duration,
    stop: AtomicBool,
    state: RwLock<State>,
    replication: OnceLock<ReplicationHandle>,
    nodename: OnceLock<String>,
}

/// Outbound connection counting at the NIC's egress, as a daemon capability.
#[derive(Clone)]
pub struct OutboundService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OutboundService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundService")
            .field("attachments", &self.inner.attachments)
            .finish()
    }
}

impl OutboundService {
    /// Privileged part: loads the egress copy of the object and attaches `tc_egress` to
    /// every configured interface. Call before the privilege drop and before any thread.
    /// On an error nothing stays attached (the datapath detaches on drop).
    pub fn setup(settings: &DuraplaneSettings) -> Result<Self, BpfError> {
        let mut dp = Datapath::load(&DatapathConfig {
            ports: settings.ports.clone(),
            netblocks: Vec::new(),
            flow_capacity: UNUSED_CAPACITY,
            source_capacity: UNUSED_CAPACITY,
        })?;
        let mut attachments = Vec::new();
        for iface in &settings.interfaces {
            let mode = dp.attach_egress(iface)?;
            tracing::info!(interface = %iface, mode = %mode, "TC egress attached: counting outbound connections (outbound_cidr)");
            attachments.push((iface.clone(), mode.to_string()));
        }
        Ok(OutboundService {
            inner: Arc::new(Inner {
                datapath: Mutex::new(dp),
                attachments,
                poll_interval: settings.poll_interval.max(Duration::from_millis(1)),
                flow_idle_timeout: settings.flow_idle_timeout,
                stop: AtomicBool::new(false),
                state: RwLock::new(State::default()),
                replication: OnceLock::new(),
                nodename: OnceLock::new(),
            }),
        })
    }

    /// Publishes every poll's counts to replication from now on.
    pub fn set_replication(&self, repl: ReplicationHandle) {
        let _ = self.inner.replication.set(repl);
    }

    /// Interfaces `tc_egress` is attached to, with the attach mode.
    pub fn attachments(&self) -> &[(String, String)] {
        &self.inner.attachments
    }

    /// Reads the destination counts once (expiring idle flows at most once a second) and
    /// hands them to replication.
    pub fn poll_once(&self) -> Result<(), BpfError> {
        let now = Instant::now();
        let expire_due = {
            let st = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
            st.last_expiry
                .is_none_or(|t| now.duration_since(t) >= EXPIRY_EVERY)
        };
        let (destinations, expired) = {
            let mut dp = self
                .inner
                .datapath
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let idle = self.inner.flow_idle_timeout;
            let expired = if expire_due && !idle.is_zero() {
                dp.expire_outbound_flows(idle)?
            } else {
                0
            };
            (dp.read_destinations()?, expired)
        };
        if let Some(r) = self.inner.replication.get() {
            r.publish(OUTBOUND_CIDR, local_table(&destinations));
        }
        let mut tree = CidrTree::new();
        let mut tracked = 0;
        let mut current = 0u64;
        for d in &destinations {
            if d.current > 0 {
                tree.set(d.addr, d.current);
                tracked += 1;
                current = current.saturating_add(d.current);
            }
        }
        let mut st = self.inner.state.write().unwrap_or_else(|p| p.into_inner());
        if expire_due {
            st.last_expiry = Some(now);
        }
        st.tree = tree;
        st.destinations = tracked;
        st.current = current;
        st.expired += expired;
        st.polls += 1;
        st.last_error = None;
        Ok(())
    }

    /// Registers the console command, `cluster info` section and metrics, and starts the
    /// poller thread.
    pub fn start(&self, services: &Services) -> Result<JoinHandle<()>, OutboundError> {
        let _ = self.inner.nodename.set(services.identity.nodename.clone());
        if self.inner.replication.get().is_none() {
            let me = self.clone();
            services.console.register(
                &["cluster", "shared", "show", OUTBOUND_CIDR],
                SHOW_HELP,
                Arc::new(move |args| me.render_show(args)),
            )?;
        }
        let me = self.clone();
        services
            .info
            .set_section("outbound", Arc::new(move || me.render_info()));
        services
            .metrics
            .register_collector(Box::new(OutboundCollector(self.clone())));
        if let Err(e) = self.poll_once() {
            tracing::error!(error = %e, "first read of the outbound (TC egress) counters failed");
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("outbound-poll".into())
            .spawn(move || me.poll_loop())
            .map_err(|source| OutboundError::Spawn { source })
    }

    fn poll_loop(&self) {
        while !self.inner.stop.load(Ordering::Relaxed) {
            std::thread::sleep(self.inner.poll_interval);
            if let Err(e) = self.poll_once() {
                let msg = e.to_string();
                let mut st = self.inner.state.write().unwrap_or_else(|p| p.into_inner());
                if st.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!(error = %msg, "reading the outbound (TC egress) counters failed");
                }
                st.last_error = Some(msg);
            }
        }
    }

    /// Stops the poller (the caller joins it); `tc_egress` detaches when the last clone
    /// of the service is dropped.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }

    /// The view without replication (with it, [`register_show`] answers).
    fn render_show(&self, args: &[&str]) -> Result<String, ConsoleError> {
        let from = show_args(args)?;
        // Replication off: only this node's counts are known.
        let me = self.inner.nodename.get().map_or("", String::as_str);
        let view = match from {
            None => "global",
            Some(n) if n == me => me,
            Some(n) => {
                return Err(ConsoleError::Failed {
                    message: format!(
                        "no view from node '{n}': replication is off, only this node's ('{me}') counts are known"
                    ),
                });
            }
        };
        let st = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
        Ok(st.tree.render(OUTBOUND_CIDR, view))
    }

    fn render_info(&self) -> String {
        let att: Vec<String> = self
            .inner
            .attachments
            .iter()
            .map(|(i, m)| format!("{i} ({m})"))
            .collect();
        let st = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
        let mut s = format!(
            "TC egress (outbound_cidr): {}; {} current outbound connections to {} destinations, {} idle flows expired",
            if att.is_empty() {
                "not attached".to_owned()
            } else {
                att.join(", ")
            },
            st.current,
            st.destinations,
            st.expired
        );
        if let Some(e) = &st.last_error {
            s.push_str(&format!("\nTC egress counters: last read failed: {e}"));
        }
        s
    }
}

/// This node's outbound figures on each scrape (the cluster-wide tree is in the console
/// and the local API; per-destination series would be unbounded).
struct OutboundCollector(OutboundService);

impl std::fmt::Debug for OutboundCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutboundCollector")
    }
}

impl Collector for OutboundCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.0.inner.state.read().unwrap_or_else(|p| p.into_inner());
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let g = ConstGauge::new(clamp(st.current));
        g.encode(enc.encode_descriptor(
            "duraplane_outbound_current_connections",
            "Current outbound TCP connections of this node (TC egress)",
            None,
            g.metric_type(),
        )?)?;
        let g = ConstGauge::new(clamp(st.destinations as u64));
        g.encode(enc.encode_descriptor(
            "duraplane_outbound_tracked_destinations",
            "Distinct destination addresses this node has open connections to",
            None,
            g.metric_type(),
        )?)?;
        let c = ConstCounter::new(st.expired);
        c.encode(enc.encode_descriptor(
            "duraplane_outbound_flows_expired",
            "Outbound flows closed by userspace after flow_idle_timeout (no FIN/RST seen)",
            None,
            c.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::inbound::tree_of;

    #[test]
    fn local_table_keys_destinations_like_inbound_sources() {
        let d = |a: &str, opened, closed, current| DestinationCount {
            addr: a.parse().unwrap(),
            opened,
            closed,
            current,
        };
        let t = local_table(&[
            d("198.51.100.7", 3, 1, 2),
            d("198.51.100.9", 1, 1, 0),
            d("2001:db8::7", 1, 0, 1),
        ]);
        assert_eq!(t.len(), 2, "closed destinations are absent");
        let tree = tree_of(&t);
        assert_eq!(tree.total(), 3);
        let text = tree.render(OUTBOUND_CIDR, "global");
        assert!(
            text.starts_with("lazy, snapped cidrtree 'outbound_cidr', view 'global'\n"),
            "{text}"
        );
        assert!(text.contains("198.51.100.7/32"), "{text}");
    }
}
