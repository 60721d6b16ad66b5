//! Replication as a daemon capability: reads the `Replicate` scopes, loads the cluster
//! key, starts the shared port-4802 engine ([`ClusterEngine`]: replication and the log
//! service) on the ECCluster_Listener, links
//! it to the bus (peers, live set) and to the inbound data plane (local counts in, remote
//! totals into the kernel), and registers `cluster info` lines and metrics.
//!
//! It never stops the daemon: without a usable key or listener it says why, loudly, and
//! the node enforces with local counts only.

use std::{net::SocketAddr, sync::Arc, thread::JoinHandle};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::{
    INBOUND_CIDR, InboundLink, ObjectSpec, PeerView, ReplicationConfig, ReplicationHandle, ViewFn,
    remote_applier, replication,
};
use crate::{
    bus::BusService,
    config::{Config, ReplicateKind},
    daemon::Services,
    engine::{
        ClusterKey, Engine, EngineConfig, EngineHandle, Service, ServiceId, listeners_from_config,
    },
    inbound::InboundService,
    localapi::SharedObjects,
};

/// The `Replicate` scopes this version replicates, and warnings for the others.
pub fn objects_from_config(cfg: &Config) -> (Vec<ObjectSpec>, Vec<String>) {
    let mut objects = Vec::new();
    let mut warnings = Vec::new();
    for r in &cfg.cluster.replicate {
        match r.kind {
            ReplicateKind::InboundCidr => objects.push(ObjectSpec {
                name: INBOUND_CIDR.to_owned(),
                max_delay: r.max_delay,
                max_pending: r.max_pending,
            }),
            // Gauge tables, throttles and caches: the local API's objects (localapi).
            ReplicateKind::OutboundDomains
            | ReplicateKind::OutboundBindingDomains
            | ReplicateKind::SharedNamedThrottles
            | ReplicateKind::Cache => objects.push(ObjectSpec {
                name: match r.kind {
                    ReplicateKind::OutboundDomains => super::gauge::OUTBOUND_DOMAINS.to_owned(),
                    ReplicateKind::OutboundBindingDomains => {
                        super::gauge::OUTBOUND_BINDING_DOMAINS.to_owned()
                    }
                    ReplicateKind::SharedNamedThrottles => {
                        super::throttle::SHARED_NAMED_THROTTLES.to_owned()
                    }
                    _ => r.name.clone(),
                },
                max_delay: r.max_delay,
                max_pending: r.max_pending,
            }),
            ReplicateKind::OutboundCidr => objects.push(ObjectSpec {
                name: super::OUTBOUND_CIDR.to_owned(),
                max_delay: r.max_delay,
                max_pending: r.max_pending,
            }),
            ReplicateKind::EccmgrMetrics => warnings.push(format!(
                "Replicate \"{}\" (eccmgr_metrics) is not implemented by Duraplane: it feeds Momentum's cluster manager (eccmgr), which Duraplane has no equivalent of; use the metrics endpoint (duraplane.metrics) instead",
                r.name
            )),
            ReplicateKind::Metrics => warnings.push(format!(
                "Replicate \"{}\" ({:?}) is not implemented by Duraplane: Momentum's metrics replication keeps per-IP time series of MTA events (connect, delivery, transfail, permfail, reception, rejection, audit series, gauge caches) that a data plane never sees; current connection counts are replicated by inbound_cidr/outbound_cidr, gauge tables by the local API",
                r.name, r.kind
            )),
            _ => warnings.push(format!(
                "Replicate \"{}\" ({:?}) is not replicated by this version of Duraplane yet",
                r.name, r.kind
            )),
        }
    }
    (objects, warnings)
}

/// The membership as replication reads it, from the bus.
pub fn view_from_bus(bus: &BusService) -> ViewFn {
    let members = bus.cluster_members();
    Arc::new(move || {
        members()
            .into_iter()
            .filter_map(|m| {
                let a = m.announce?;
                Some(PeerView {
                    member: format!("#{}-{}#{}", m.id.nodeid, m.id.pid, a.nodename),
                    addr: a.addr.parse::<SocketAddr>().ok(),
                    nodename: a.nodename,
                    live: !m.hung,
                })
            })
            .collect()
    })
}

/// The running capability (its engine is the shared [`ClusterEngine`]).
pub struct Replication {
    handle: ReplicationHandle,
    applier: Option<JoinHandle<()>>,
    objects: SharedObjects,
}

/// Replication's engine service before the shared engine starts.
struct Prepared {
    service: Box<dyn Service>,
    handle: ReplicationHandle,
    applier: Option<JoinHandle<()>>,
    objects: SharedObjects,
}

/// Says loudly that replication is off and why (in the log and in `cluster info`).
fn replication_off(services: &Services, why: String) {
    tracing::error!("replication is OFF: {why}; this node enforces with its local counts only");
    services.info.set_section(
        "replication",
        Arc::new(move || format!("Replication: off ({why})")),
    );
}

impl Replication {
    /// Builds the replication service if the configuration asks for it; `None` (with the
    /// reason logged and shown in `cluster info`) when it is not configured or cannot run.
    fn prepare(
        services: &Services,
        cfg: &Config,
        bus: &BusService,
        inbound: Option<&InboundService>,
    ) -> Option<Prepared> {
        let (objects, warnings) = objects_from_config(cfg);
        for w in &warnings {
            tracing::warn!("{w}");
        }
        if objects.is_empty() {
            return None;
        }
        let nodename = services.identity.nodename.clone();
        let (mut service, handle) = replication(
            ReplicationConfig::new(nodename, objects),
            view_from_bus(bus),
            Vec::new(),
        );
        let objects = SharedObjects::new(cfg, &services.identity.nodename, Some(handle.clone()));
        for (name, sink) in objects.sinks() {
            service.add_sink(&name, sink);
        }
        let mut applier = None;
        if let Some(inb) = inbound
            && handle.objects().iter().any(|o| o == INBOUND_CIDR)
        {
            let i = inb.clone();
            match remote_applier(move |totals| {
                if let Err(e) = i.apply_remote(totals) {
                    tracing::warn!(error = %e, "replication: writing remote totals into the kernel failed");
                }
            }) {
                Ok((sink, t)) => {
                    service.add_sink(INBOUND_CIDR, sink);
                    applier = Some(t);
                }
                Err(e) => {
                    replication_off(services, format!("cannot start the applier thread: {e}"));
                    return None;
                }
            }
        }
        Some(Prepared {
            service: Box::new(service),
            handle,
            applier,
            objects,
        })
    }

    /// Links a prepared replication to the running engine.
    fn attach(
        handle: ReplicationHandle,
        applier: Option<JoinHandle<()>>,
        objects: SharedObjects,
        services: &Services,
        engine: &Engine,
        inbound: Option<&InboundService>,
    ) -> Replication {
        handle.attach(engine.handle());
        match inbound {
            Some(inb) => inb.set_replication(InboundLink::new(handle.clone())),
            // No data plane here: the shared objects are still shown (the others' slots).
            None => {
                if let Err(e) = register_shared(services, InboundLink::new(handle.clone())) {
                    tracing::warn!(error = %e, "replication: cannot register cluster shared commands");
                }
            }
        }
        tracing::info!(
            listen = ?engine.local_addrs(),
            backend = %engine.selection().kind,
            objects = ?handle.objects(),
            "replication running"
        );
        register(services, &handle, engine.handle());
        if handle.objects().iter().any(|o| o == super::OUTBOUND_CIDR)
            && let Err(e) = super::outbound::register_show(services, handle.clone())
        {
            tracing::warn!(error = %e, "replication: cannot register cluster shared show outbound_cidr");
        }
        Replication {
            handle,
            applier,
            objects,
        }
    }

    pub fn handle(&self) -> &ReplicationHandle {
        &self.handle
    }

    /// The local API's objects, replicated through this handle.
    pub fn objects(&self) -> &SharedObjects {
        &self.objects
    }

    /// Waits for the applier (call after the engine stopped: that ends its input).
    fn stop(mut self) {
        if let Some(t) = self.applier.take() {
            let _ = t.join();
        }
    }
}

/// The one port-4802 engine of the daemon, shared by replication (service 1) and the
/// log service (service 2), so both use one listener, one key and one reactor.
pub struct ClusterEngine {
    engine: Option<Engine>,
    replication: Option<Replication>,
}

impl ClusterEngine {
    /// Starts the engine with replication (if configured) and the `others` services.
    /// Never fails the daemon: without a usable key or listener it says why and runs
    /// without (no engine at all when no service needs one).
    pub fn start(
        services: &Services,
        cfg: &Config,
        bus: &BusService,
        inbound: Option<&InboundService>,
        others: Vec<(ServiceId, Box<dyn Service>)>,
    ) -> ClusterEngine {
        let prepared = Replication::prepare(services, cfg, bus, inbound);
        let none = ClusterEngine {
            engine: None,
            replication: None,
        };
        if prepared.is_none() && others.is_empty() {
            return none;
        }
        let off = |why: String| {
            if prepared.is_some() {
                replication_off(services, why.clone());
            }
            if !others.is_empty() {
                tracing::error!("cluster engine (port 4802) is OFF: {why}; logs are not served");
            }
        };
        let key = match ClusterKey::load(&cfg.duraplane.cluster_key_file) {
            Ok(k) => k,
            Err(e) => {
                off(format!("cluster key: {e}"));
                return none;
            }
        };
        let (listeners, lw) = listeners_from_config(cfg);
        for w in lw {
            tracing::warn!("{w}");
        }
        if listeners.is_empty() {
            tracing::warn!(
                "no ECCluster_Listener Listen: peers cannot connect to this node, it only sends"
            );
        }
        let mut ec = EngineConfig::new(services.identity.nodename.clone(), key);
        ec.listeners = listeners;
        let mut svcs: Vec<(ServiceId, Box<dyn Service>)> = Vec::new();
        let rest = prepared.map(|p| {
            svcs.push((ServiceId::REPLICATION, p.service));
            (p.handle, p.applier, p.objects)
        });
        let others_named = !others.is_empty();
        svcs.extend(others);
        let engine = match Engine::start(ec, svcs) {
            Ok(e) => e,
            Err(e) => {
                let why = format!("engine: {e}");
                if rest.is_some() {
                    replication_off(services, why.clone());
                }
                if others_named {
                    tracing::error!(
                        "cluster engine (port 4802) is OFF: {why}; logs are not served"
                    );
                }
                return none;
            }
        };
        services
            .metrics
            .register_collector(Box::new(crate::engine::metrics::EngineCollector(
                engine.handle(),
            )));
        let h = engine.handle();
        services.info.set_section(
            "engine",
            std::sync::Arc::new(move || {
                let s = h.stats();
                let rejected: u64 = crate::engine::stats::RejectReason::ALL
                    .iter()
                    .map(|r| s.rejected.get(*r))
                    .sum();
                format!(
                    "Cluster engine (4802): {} backend, {} connections open, {} authenticated, {} rejected",
                    s.backend.as_str(),
                    s.open,
                    s.authenticated,
                    rejected
                )
            }),
        );
        let replication =
            rest.map(|(h, a, o)| Replication::attach(h, a, o, services, &engine, inbound));
        ClusterEngine {
            engine: Some(engine),
            replication,
        }
    }

    /// The running engine's handle (`None` when it is off).
    pub fn handle(&self) -> Option<EngineHandle> {
        self.engine.as_ref().map(Engine::handle)
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.engine
            .as_ref()
            .map(|e| e.local_addrs().to_vec())
            .unwrap_or_default()
    }

    pub fn replication(&self) -> Option<&Replication> {
        self.replication.as_ref()
    }

    /// Stops the engine (closing every link), then replication's applier.
    pub fn stop(mut self) {
        if let Some(e) = self.engine.take()
            && let Err(err) = e.stop()
        {
            tracing::warn!(error = %err, "cluster engine stopped with an error");
        }
        if let Some(r) = self.replication.take() {
            r.stop();
        }
    }
}

fn render_info(h: &ReplicationHandle, e: &EngineHandle) -> String {
    let slots = h.slots();
    let peers: Vec<String> = h
        .peers()
        .into_iter()
        .map(|(n, a)| {
            let s = slots.iter().find(|s| s.node == n);
            format!(
                "{n} {a} ({})",
                match s {
                    Some(s) => format!(
                        "{}, {}, {} keys, last frame {} ms ago",
                        if s.connected { "linked" } else { "no link" },
                        if s.live { "live" } else { "excluded" },
                        s.keys,
                        s.age.as_millis()
                    ),
                    None => "no slot yet".to_owned(),
                }
            )
        })
        .collect();
    let c = h.counters();
    let st = e.stats();
    format!(
        "Replication: {} over {} ({} peers){}\nReplication frames: {} out, {} in, {} malformed, {} resyncs, {} slots dropped, {} peers refused (bad key)",
        h.objects().join(", "),
        st.backend,
        peers.len(),
        if peers.is_empty() {
            String::new()
        } else {
            format!("\n  {}", peers.join("\n  "))
        },
        c.frames_out,
        c.frames_in,
        c.malformed,
        c.resyncs,
        c.dropped_slots,
        st.rejected.bad_auth,
    )
}

/// `cluster shared list|show` when the inbound service (which owns them) is not running.
fn register_shared(
    services: &Services,
    link: InboundLink,
) -> Result<(), crate::console::RegisterError> {
    let l = link.clone();
    services.console.register(
        &["cluster", "shared", "list"],
        "List the replicated (shared) objects this node manages",
        Arc::new(move |_| Ok(l.render_list())),
    )?;
    services.console.register(
        &["cluster", "shared", "show"],
        "cluster shared show OBJECT [from NODE]: show a shared object (inbound_cidr)",
        Arc::new(move |args| match args {
            [o] if *o == INBOUND_CIDR => link.render_show(None),
            [o, f, n] if *o == INBOUND_CIDR && f.eq_ignore_ascii_case("from") => {
                link.render_show(Some(n))
            }
            _ => Err(crate::console::ConsoleError::Usage {
                usage: "cluster shared show inbound_cidr [from NODE]".into(),
            }),
        }),
    )
}

fn register(services: &Services, h: &ReplicationHandle, e: EngineHandle) {
    let (h2, e2) = (h.clone(), e.clone());
    services
        .info
        .set_section("replication", Arc::new(move || render_info(&h2, &e2)));
    services
        .metrics
        .register_collector(Box::new(ReplCollector { h: h.clone(), e }));
}

struct ReplCollector {
    h: ReplicationHandle,
    e: EngineHandle,
}

impl std::fmt::Debug for ReplCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplCollector")
    }
}

impl Collector for ReplCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = self.h.counters();
        let st = self.e.stats();
        let counters: [(&str, &str, u64); 11] = [
            (
                "duraplane_replication_frames_sent",
                "Replication frames sent",
                c.frames_out,
            ),
            (
                "duraplane_replication_bytes_sent",
                "Replication bytes sent (with headers)",
                c.bytes_out,
            ),
            (
                "duraplane_replication_frames_received",
                "Replication frames received",
                c.frames_in,
            ),
            (
                "duraplane_replication_bytes_received",
                "Replication bytes received",
                c.bytes_in,
            ),
            (
                "duraplane_replication_snapshots_sent",
                "Full snapshots sent (a peer link came up)",
                c.snapshots_out,
            ),
            (
                "duraplane_replication_snapshots_received",
                "Full snapshots applied or staged",
                c.snapshots_in,
            ),
            (
                "duraplane_replication_malformed_frames",
                "Malformed replication frames (the link was closed)",
                c.malformed,
            ),
            (
                "duraplane_replication_resyncs",
                "Links reset because a delta did not follow the slot",
                c.resyncs,
            ),
            (
                "duraplane_replication_duplicate_frames",
                "Old or repeated frames ignored",
                c.duplicates,
            ),
            (
                "duraplane_replication_dropped_slots",
                "Slots dropped because their node left the view or restarted",
                c.dropped_slots,
            ),
            (
                "duraplane_replication_refused_peers",
                "Connections on the cluster port refused for a wrong cluster key",
                st.rejected.bad_auth,
            ),
        ];
        for (name, help, v) in counters {
            let m = ConstCounter::new(v);
            m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)?;
        }
        let slots = self.h.slots();
        let g = ConstGauge::new(0.0f64);
        let mut age = enc.encode_descriptor(
            "duraplane_replication_slot_age_seconds",
            "Seconds since the last frame of each remote slot (staleness; keepalives every second)",
            None,
            g.metric_type(),
        )?;
        for s in &slots {
            let labels = [
                ("object".to_owned(), s.object.clone()),
                ("node".to_owned(), s.node.clone()),
            ];
            ConstGauge::new(s.age.as_secs_f64()).encode(age.encode_family(&labels)?)?;
        }
        let mut lag = enc.encode_descriptor(
            "duraplane_replication_lag_seconds",
            "Sender clock to applied, at each remote slot's last frame (needs synchronised clocks)",
            None,
            g.metric_type(),
        )?;
        for s in &slots {
            let labels = [
                ("object".to_owned(), s.object.clone()),
                ("node".to_owned(), s.node.clone()),
            ];
            ConstGauge::new(s.lag.as_secs_f64()).encode(lag.encode_family(&labels)?)?;
        }
        // Queue depth of the pipeline: changed keys waiting for the next flush (drains
        // every max_delay; growing = the reactor or the links cannot keep up).
        let mut pending = enc.encode_descriptor(
            "duraplane_replication_pending_keys",
            "Changed keys of this node's slot not sent yet, per object (drained every max_delay)",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (object, n) in self.h.pending_keys() {
            let labels = [("object".to_owned(), object)];
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
                .encode(pending.encode_family(&labels)?)?;
        }
        let live = ConstGauge::new(slots.iter().filter(|s| s.live).count() as i64);
        live.encode(enc.encode_descriptor(
            "duraplane_replication_live_slots",
            "Remote slots counted in the totals (their node is in the effective view)",
            None,
            live.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_cidr_is_replicated_and_metrics_is_reported_unimplemented() {
        let text = r#"cluster {
  Replicate "inbound_cidr" {}
  Replicate "outbound_cidr" { max_delay = 0.05 }
  Replicate "metrics" { parameters = "connect;reception;rejection" }
  Replicate "eccmgr_metrics" {}
  Replicate "OBTM" {}
}
"#;
        let loaded = crate::config::load_str(text, std::path::Path::new("test.conf")).unwrap();
        let (objects, warnings) = objects_from_config(&loaded.config);
        let names: Vec<&str> = objects.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["inbound_cidr", "outbound_cidr"]);
        assert_eq!(objects[1].max_delay, std::time::Duration::from_millis(50));
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0].contains("\"metrics\"")
                && warnings[0].contains("not implemented")
                && warnings[0].contains("data plane never sees"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("eccmgr") && warnings[1].contains("not implemented"),
            "{warnings:?}"
        );
        assert!(
            warnings[2].contains("not replicated by this version"),
            "{warnings:?}"
        );
    }
}
