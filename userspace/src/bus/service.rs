//! The bus as a daemon capability: runs [`Membership`] from the real bus, announces this
//! node, heartbeats, answers `cluster membership` and `broadcast`, and feeds `cluster info`
//! and the metrics.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
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
    Bus, BusConfig, BusError, BusEvent, MemberId,
    membership::{Announce, AnnouncedVip, BusMessage, HeartbeatPolicy, Membership},
};
use crate::{
    config::Config,
    console::{ConsoleError, Membership as InfoMembership, WeakRegistry},
    daemon::{Services, commands::nodeaddr_text},
};

/// How long `broadcast` waits for the members' answers.
const BROADCAST_WAIT: Duration = Duration::from_secs(3);

/// Broadcast commands from other members waiting for the command thread; more are
/// answered "busy" at once rather than queued without bound.
const COMMAND_QUEUE: usize = 16;

/// A `broadcast` command another member asked this node to run: (request id, asker,
/// command line).
type Job = (u64, MemberId, String);

type Reply = (MemberId, String, bool, String);

struct Shared {
    membership: RwLock<Membership>,
    bus: Mutex<Bus>,
    cluster_group: String,
    control_group: String,
    /// What this member says about itself; a reload that changes it re-announces.
    announce: RwLock<Announce>,
    pending: Mutex<HashMap<u64, mpsc::Sender<Reply>>>,
    next_id: AtomicU64,
    stop: AtomicBool,
    watchers: Mutex<Vec<mpsc::Sender<ClusterNotice>>>,
    /// `log_group` and the paniclog lines queued for it (Momentum's paniclog broadcast).
    log_group: Option<(String, Mutex<Receiver<String>>)>,
}

/// Paniclog lines waiting for `log_group`; set once, by the daemon's bus.
static PANICLOG: std::sync::OnceLock<mpsc::SyncSender<String>> = std::sync::OnceLock::new();

/// Queues a paniclog line for broadcast on `log_group` when one is configured. Never
/// blocks the caller (a logging layer): a full queue drops the line.
pub fn broadcast_paniclog(line: &str) {
    if let Some(tx) = PANICLOG.get() {
        let _ = tx.try_send(line.to_owned());
    }
}

/// Whether paniclog lines are broadcast (a `log_group` is configured and the bus runs).
pub fn paniclog_broadcast_enabled() -> bool {
    PANICLOG.get().is_some()
}

/// What a watcher of `cluster_group` (DuraVIP) is told, in delivery order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterNotice {
    /// A new `cluster_group` view (a barrier for messages sent before it).
    View,
    /// An announce, quorum or the connection changed: re-read the membership.
    Changed,
    /// A DuraVIP message (`DuravipMove`, `DuravipClaim`) on `cluster_group`.
    Duravip { from: MemberId, msg: BusMessage },
}

/// Read access to the membership, sending on `cluster_group`, and change notices: what
/// DuraVIP needs from the bus without owning it.
#[derive(Clone)]
pub struct ClusterHandle(Arc<Shared>);

impl ClusterHandle {
    /// Runs `f` on the membership under its read lock.
    pub fn read<R>(&self, f: impl FnOnce(&Membership) -> R) -> R {
        f(&self.0.membership.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Multicasts `msg` on `cluster_group` (agreed order with views and announces).
    pub fn send(&self, msg: &BusMessage) -> Result<(), BusError> {
        let bus = self.0.bus.lock().unwrap_or_else(|p| p.into_inner());
        bus.send(&self.0.cluster_group, msg.encode())
    }

    /// A new receiver of [`ClusterNotice`]s.
    pub fn watch(&self) -> mpsc::Receiver<ClusterNotice> {
        let (tx, rx) = mpsc::channel();
        self.0
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }
}

fn notify(shared: &Shared, n: &ClusterNotice) {
    shared
        .watchers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|w| w.send(n.clone()).is_ok());
}

/// The running bus capability; [`BusService::stop`] leaves the groups cleanly.
pub struct BusService {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Runs other members' `broadcast` commands, so a slow command never delays this
    /// node's heartbeats (which would make it look hung).
    commands: Option<JoinHandle<()>>,
}

/// A short stable digest of what members must agree on (replication and DuraVIP
/// declarations), shown in announcements so mismatches are visible.
fn config_digest(cfg: &Config) -> String {
    let text = format!("{:?}{:?}", cfg.cluster.replicate, cfg.duravips);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl BusService {
    /// Starts the bus thread and registers the console commands, `cluster info` lines and
    /// metrics. Corosync need not be running: the bus keeps retrying.
    pub fn start(services: &Services, cfg: &Config) -> Result<BusService, ServiceError> {
        let (bus, events) = Bus::start(BusConfig {
            cluster_group: cfg.cluster.cluster_group.clone(),
            control_group: cfg.cluster.control_group.clone(),
            log_group: cfg.cluster.log_group.clone(),
            retry_interval: Duration::from_secs(1),
        })?;
        let policy = HeartbeatPolicy {
            per_sec: cfg.cluster.heartbeats_per_sec,
            start_delay: cfg.cluster.heartbeat_start_delay,
        };
        let log_group = cfg.cluster.log_group.clone().and_then(|g| {
            let (tx, rx) = mpsc::sync_channel(1024);
            PANICLOG.set(tx).ok().map(|()| (g, Mutex::new(rx)))
        });
        let shared = Arc::new(Shared {
            membership: RwLock::new(Membership::new(
                &cfg.cluster.cluster_group,
                policy,
                Instant::now(),
            )),
            bus: Mutex::new(bus),
            cluster_group: cfg.cluster.cluster_group.clone(),
            control_group: cfg.cluster.control_group.clone(),
            announce: RwLock::new(Announce {
                nodename: services.identity.nodename.clone(),
                addr: nodeaddr_text(&services.identity, &cfg.listener),
                version: env!("CARGO_PKG_VERSION").into(),
                config_digest: config_digest(cfg),
                vips: announced_vips(cfg),
            }),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            watchers: Mutex::new(Vec::new()),
            log_group,
        });
        register(services, &shared)?;
        let (jobs, queue) = mpsc::sync_channel::<Job>(COMMAND_QUEUE);
        let s = Arc::clone(&shared);
        let console = services.console.downgrade();
        let commands = std::thread::Builder::new()
            .name("broadcast-cmd".into())
            .spawn(move || run_commands(&s, &queue, &console))
            .map_err(|source| ServiceError::Spawn { source })?;
        let s = Arc::clone(&shared);
        let thread = match std::thread::Builder::new()
            .name("membership".into())
            .spawn(move || run(&s, &events, &jobs, policy.interval()))
        {
            Ok(t) => t,
            Err(source) => {
                shared.stop.store(true, Ordering::Relaxed);
                let _ = commands.join();
                return Err(ServiceError::Spawn { source });
            }
        };
        Ok(BusService {
            shared,
            thread: Some(thread),
            commands: Some(commands),
        })
    }

    /// Members of `cluster_group`'s view with their announces and hung flags, read on the
    /// caller's schedule (replication: peer links, live slots).
    pub fn cluster_members(
        &self,
    ) -> impl Fn() -> Vec<super::membership::MemberInfo> + Send + Sync + 'static {
        let s = Arc::clone(&self.shared);
        move || {
            let ms = s.membership.read().unwrap_or_else(|p| p.into_inner());
            ms.members(Instant::now())
                .into_iter()
                .filter(|m| m.groups.contains(&s.cluster_group))
                .collect()
        }
    }

    /// The membership handle DuraVIP follows.
    pub fn cluster_handle(&self) -> ClusterHandle {
        ClusterHandle(Arc::clone(&self.shared))
    }

    /// Stops the thread and leaves the groups (the others see a clean leave at once).
    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in [self.thread.take(), self.commands.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
    }
}

/// This node's DuraVIP declarations as announced.
fn announced_vips(cfg: &Config) -> Vec<AnnouncedVip> {
    crate::duravip::decl::declarations(&cfg.duravips)
        .into_iter()
        .map(|d| AnnouncedVip {
            addr: d.addr,
            bindings: d.bindings.into_iter().collect(),
            services: d.services.into_iter().collect(),
            preference: d.preference,
            follow: d.follow,
        })
        .collect()
}

fn send(shared: &Shared, group: &str, msg: &BusMessage) {
    let bus = shared.bus.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = bus.send(group, msg.encode()) {
        tracing::debug!(error = %e, "bus: send failed");
    }
}

/// Runs the queued `broadcast` commands of other members, one at a time, and answers each.
fn run_commands(shared: &Shared, queue: &Receiver<Job>, console: &WeakRegistry) {
    while !shared.stop.load(Ordering::Relaxed) {
        let (id, to, command) = match queue.recv_timeout(Duration::from_millis(200)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Run outside every lock: the command may read the membership itself.
        let (ok, output) = match console.upgrade() {
            Some(reg) => match reg.dispatch(&command) {
                Ok(out) => (true, out),
                Err(e) => (false, e.to_string()),
            },
            None => (false, "console not available".into()),
        };
        reply(shared, id, to, ok, output);
    }
}

fn reply(shared: &Shared, id: u64, to: MemberId, ok: bool, output: String) {
    send(
        shared,
        &shared.control_group,
        &BusMessage::BroadcastReply {
            id,
            to,
            nodename: announce_of(shared).nodename,
            ok,
            output,
        },
    );
}

fn run(
    shared: &Shared,
    events: &Receiver<BusEvent>,
    jobs: &mpsc::SyncSender<Job>,
    heartbeat: Duration,
) {
    let pid = std::process::id();
    let mut next_hb = Instant::now() + heartbeat;
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let wait = next_hb
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        match events.recv_timeout(wait) {
            Ok(ev) => handle(shared, &ev, pid, jobs),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Some((group, rx)) = &shared.log_group {
            let lines: Vec<String> = {
                let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                std::iter::from_fn(|| rx.try_recv().ok())
                    .take(256)
                    .collect()
            };
            let bus = shared.bus.lock().unwrap_or_else(|p| p.into_inner());
            for l in lines {
                // Plain text, as Momentum's spuser listeners expect; dropped while
                // disconnected (the line is still in the local paniclog).
                let _ = bus.send(group, l.into_bytes());
            }
        }
        let now = Instant::now();
        if now >= next_hb {
            next_hb = now + heartbeat;
            let connected = shared
                .membership
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .connected();
            if connected {
                seq += 1;
                send(
                    shared,
                    &shared.cluster_group,
                    &BusMessage::Heartbeat { seq },
                );
            }
        }
    }
}

fn handle(shared: &Shared, ev: &BusEvent, pid: u32, jobs: &mpsc::SyncSender<Job>) {
    if let BusEvent::Message {
        group,
        from,
        payload,
    } = ev
        && *group == shared.control_group
    {
        match BusMessage::decode(payload) {
            Some(BusMessage::Broadcast { id, command }) => {
                if let Err(mpsc::TrySendError::Full((id, to, _))) =
                    jobs.try_send((id, *from, command))
                {
                    reply(
                        shared,
                        id,
                        to,
                        false,
                        format!("busy: {COMMAND_QUEUE} broadcast commands already queued here"),
                    );
                }
            }
            Some(BusMessage::BroadcastReply {
                id,
                to,
                nodename,
                ok,
                output,
            }) => {
                let local = shared
                    .membership
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .local();
                if local == Some(to)
                    && let Some(tx) = shared
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&id)
                {
                    let _ = tx.send((*from, nodename, ok, output));
                }
            }
            _ => {}
        }
        return;
    }
    let now = Instant::now();
    let announce = {
        let mut ms = shared.membership.write().unwrap_or_else(|p| p.into_inner());
        let again = ms.on_event(ev, pid, now);
        match ev {
            BusEvent::View { group, members, .. } if *group == shared.cluster_group => {
                tracing::info!(
                    members = ?members.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "cluster view changed"
                );
            }
            BusEvent::Quorum { quorate, .. } => {
                tracing::info!(quorate, "corosync quorum");
            }
            _ => {}
        }
        again
    };
    let notice = match ev {
        BusEvent::Message {
            group,
            from,
            payload,
        } if *group == shared.cluster_group => match BusMessage::decode(payload) {
            Some(msg @ (BusMessage::DuravipMove { .. } | BusMessage::DuravipClaim { .. })) => {
                Some(ClusterNotice::Duravip { from: *from, msg })
            }
            Some(BusMessage::Announce(_)) => Some(ClusterNotice::Changed),
            _ => None,
        },
        BusEvent::Message { .. } => None,
        BusEvent::View { group, .. } if *group == shared.cluster_group => Some(ClusterNotice::View),
        _ => Some(ClusterNotice::Changed),
    };
    if let Some(n) = notice {
        notify(shared, &n);
    }
    if announce {
        send(
            shared,
            &shared.cluster_group,
            &BusMessage::Announce(announce_of(shared)),
        );
    }
}

fn broadcast(shared: &Shared, words: &[&str]) -> Result<String, ConsoleError> {
    if words.is_empty() {
        return Err(ConsoleError::Usage {
            usage: "broadcast COMMAND…".into(),
        });
    }
    if words[0].eq_ignore_ascii_case("broadcast") {
        return Err(ConsoleError::Failed {
            message: "broadcast cannot broadcast itself".into(),
        });
    }
    let (expected, names) = {
        let ms = shared.membership.read().unwrap_or_else(|p| p.into_inner());
        if !ms.connected() {
            return Err(ConsoleError::Failed {
                message: format!(
                    "broadcast needs the cluster bus: not connected to corosync ({})",
                    ms.disconnected_reason().unwrap_or("starting")
                ),
            });
        }
        let members: Vec<MemberId> = ms
            .members(Instant::now())
            .into_iter()
            .filter(|m| m.groups.contains(&shared.control_group))
            .map(|m| m.id)
            .collect();
        let names: HashMap<MemberId, String> =
            members.iter().map(|m| (*m, ms.private_name(m))).collect();
        (members, names)
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel();
    shared
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, tx);
    send(
        shared,
        &shared.control_group,
        &BusMessage::Broadcast {
            id,
            command: words.join(" "),
        },
    );
    let deadline = Instant::now() + BROADCAST_WAIT;
    let mut replies: Vec<Reply> = Vec::new();
    while replies.len() < expected.len() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(r) => {
                if !replies.iter().any(|x| x.0 == r.0) {
                    replies.push(r);
                }
            }
            Err(_) => break,
        }
    }
    shared
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    replies.sort_by(|a, b| a.1.cmp(&b.1));
    let mut out = String::new();
    for (_, node, ok, text) in &replies {
        out.push_str(&format!("{node}:{}\n", if *ok { "" } else { " (error)" }));
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|m| !replies.iter().any(|r| r.0 == **m))
        .map(|m| names.get(m).cloned().unwrap_or_else(|| m.to_string()))
        .collect();
    if !missing.is_empty() {
        out.push_str(&format!(
            "({} of {} members did not answer within {} s: {})\n",
            missing.len(),
            expected.len(),
            BROADCAST_WAIT.as_secs(),
            missing.join(", ")
        ));
    }
    Ok(out)
}

fn announce_of(shared: &Shared) -> Announce {
    shared
        .announce
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn register(services: &Services, shared: &Arc<Shared>) -> Result<(), ServiceError> {
    // A reload that changes this member's DuraVIP declarations or its replication digest
    // announces again in agreed order, so every member recomputes ownership from the new
    // declarations (Momentum's "cluster duravip announce view" after a reload).
    let s = Arc::clone(shared);
    services.reloader.register(
        "cluster announce",
        Arc::new(move |_, new| {
            let changed = {
                let mut a = s.announce.write().unwrap_or_else(|p| p.into_inner());
                let vips = announced_vips(new);
                let digest = config_digest(new);
                let changed = a.vips != vips || a.config_digest != digest;
                a.vips = vips;
                a.config_digest = digest;
                changed
            };
            if changed {
                tracing::info!(
                    "configuration changed what this member announces: announcing again"
                );
                send(&s, &s.cluster_group, &BusMessage::Announce(announce_of(&s)));
            }
            Ok(())
        }),
    );
    let s = Arc::clone(shared);
    services.console.register(
        &["cluster", "membership"],
        "Show the private name, node name, type, version, address and groups of every member.",
        Arc::new(move |_| {
            Ok(s.membership
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .render(Instant::now()))
        }),
    )?;
    let s = Arc::clone(shared);
    services.console.register(
        &["broadcast"],
        "broadcast COMMAND: run a console command on every member and show each answer.",
        Arc::new(move |words| broadcast(&s, words)),
    )?;
    let s = Arc::clone(shared);
    services.info.set_membership(Arc::new(move || {
        let ms = s.membership.read().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match ms.local() {
            Some(local) if ms.connected() => InfoMembership {
                daemon: format!("corosync [m:{}]", ms.private_name(&local)),
                leader: ms
                    .leader(now)
                    .map(|l| ms.nodename(&l).map_or_else(|| l.to_string(), str::to_owned)),
                no_leader_reason: "no view yet".into(),
            },
            _ => InfoMembership {
                daemon: "corosync [not connected]".into(),
                leader: None,
                no_leader_reason: "corosync not connected".into(),
            },
        }
    }));
    let s = Arc::clone(shared);
    services.info.set_section(
        "membership",
        Arc::new(move || {
            let ms = s.membership.read().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let quorum = match ms.quorate() {
                Some(true) => "quorate",
                Some(false) => "NOT quorate",
                None => "unknown",
            };
            let hung: Vec<String> = ms.hung(now).iter().map(|m| ms.private_name(m)).collect();
            let bus = if ms.connected() {
                String::new()
            } else {
                format!(
                    "Bus: not connected to corosync ({}); counting and enforcing with local counts, retrying every second\n",
                    ms.disconnected_reason().unwrap_or("connecting")
                )
            };
            format!(
                "{bus}Quorum: {quorum}\nView: {} members ({} live), stable for {} seconds{}",
                ms.cluster_view().len(),
                ms.effective_view(now).len(),
                ms.view_age(now).as_secs(),
                if hung.is_empty() {
                    String::new()
                } else {
                    format!("\nHung (no heartbeat): {}", hung.join(", "))
                }
            )
        }),
    );
    services
        .metrics
        .register_collector(Box::new(BusCollector(Arc::clone(shared))));
    Ok(())
}

/// Why the bus capability could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot register cluster console commands: {0}")]
    Register(#[from] crate::console::RegisterError),
    #[error("cannot start the membership thread: {source}")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
}

struct BusCollector(Arc<Shared>);

impl std::fmt::Debug for BusCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusCollector")
    }
}

impl Collector for BusCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ms = self.0.membership.read().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let gauges: [(&str, &str, i64); 5] = [
            (
                "duraplane_bus_connected",
                "1 while connected to the local corosync",
                i64::from(ms.connected()),
            ),
            (
                "duraplane_cluster_members",
                "Members in corosync's agreed view of cluster_group",
                ms.cluster_view().len() as i64,
            ),
            (
                "duraplane_cluster_live_members",
                "Members of the view that heartbeat (used for ownership)",
                ms.effective_view(now).len() as i64,
            ),
            (
                "duraplane_cluster_quorate",
                "1 when corosync reports quorum, 0 when not, -1 when unknown",
                ms.quorate().map_or(-1, i64::from),
            ),
            (
                "duraplane_cluster_view_age_seconds",
                "Seconds since the cluster_group view last changed",
                ms.view_age(now).as_secs() as i64,
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let c = ConstCounter::new(ms.views_seen());
        c.encode(enc.encode_descriptor(
            "duraplane_cluster_views",
            "cluster_group views received",
            None,
            c.metric_type(),
        )?)?;
        Ok(())
    }
}
