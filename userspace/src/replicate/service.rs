//! Replication as an engine service (service id 1): owns the [`Table`]s, sends this
//! node's slot to every peer link (a snapshot when the link comes up, then deltas every
//! `max_delay` or after `max_pending` changes), applies the peers' slots, follows the
//! membership (peer links, live set, dropped slots) and reports changed remote totals to
//! the object's sink (inbound: the kernel REMOTE map).
//!
//! Everything runs on the engine's reactor thread except [`ReplicationHandle`] calls,
//! which take the state lock briefly (console, metrics, the poller's `publish`).

use std::{
    any::Any,
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{
    slots::{Applied, Key, Table},
    wire::{self, CHUNK_BYTES, MsgKind},
};
use crate::engine::{
    CloseReason, ConnId, ConnInfo, ConnOrigin, Ctx, EngineHandle, Frame, PeerSpec, Service,
    ServiceId, TimerId,
};

/// One replicated object and its Replicate options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    pub name: String,
    /// Longest a change waits before it is sent.
    pub max_delay: Duration,
    /// Changed keys that trigger an immediate send.
    pub max_pending: u32,
}

/// One member of the cluster view as replication needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub nodename: String,
    /// Its ECCluster_Listener address (from its announce).
    pub addr: Option<SocketAddr>,
    /// Momentum's private name `#<nodeid>-<pid>#<nodename>`: changes when the daemon
    /// restarts, so a restarted node's old slot is dropped.
    pub member: String,
    /// In the effective view (heartbeating): its slot counts.
    pub live: bool,
}

/// Reads the current cluster view (members of `cluster_group` with their announces).
pub type ViewFn = Arc<dyn Fn() -> Vec<PeerView> + Send + Sync>;
/// Receives the keys whose remote total (sum over live remote slots) changed. Called on
/// the reactor thread: must not block (hand work to another thread).
pub type Sink = Box<dyn FnMut(Vec<(Key, i64)>) + Send>;

/// Static settings of the replication service.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    pub nodename: String,
    pub objects: Vec<ObjectSpec>,
    /// How often the membership is re-read (hung members change without events).
    pub view_interval: Duration,
    /// An empty delta goes out after this long without frames, so staleness is visible.
    pub keepalive: Duration,
}

impl ReplicationConfig {
    pub fn new(nodename: impl Into<String>, objects: Vec<ObjectSpec>) -> Self {
        ReplicationConfig {
            nodename: nodename.into(),
            objects,
            view_interval: Duration::from_millis(20),
            keepalive: Duration::from_secs(1),
        }
    }
}

/// Counters (monotonic) exported as metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub snapshots_out: AtomicU64,
    pub snapshots_in: AtomicU64,
    pub malformed: AtomicU64,
    pub resyncs: AtomicU64,
    pub duplicates: AtomicU64,
    pub unknown_object: AtomicU64,
    pub dropped_slots: AtomicU64,
    pub view_changes: AtomicU64,
}

/// A plain copy of [`Counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterValues {
    pub frames_out: u64,
    pub bytes_out: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub snapshots_out: u64,
    pub snapshots_in: u64,
    pub malformed: u64,
    pub resyncs: u64,
    pub duplicates: u64,
    pub unknown_object: u64,
    pub dropped_slots: u64,
    pub view_changes: u64,
}

/// One remote slot's state, for status and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotStatus {
    pub object: String,
    pub node: String,
    pub live: bool,
    pub connected: bool,
    pub keys: usize,
    pub seq: u64,
    /// Since its last frame (staleness).
    pub age: Duration,
    /// Sender clock → applied, at the last frame.
    pub lag: Duration,
}

struct State {
    tables: BTreeMap<String, Table>,
    specs: Vec<ObjectSpec>,
    /// Peers we keep links to: name → (addr, member).
    peers: HashMap<String, (SocketAddr, String)>,
    /// Members of the last view (name → private name), this node included.
    view: BTreeMap<String, PeerView>,
}

impl State {
    /// `max_pending` of `object`'s Replicate scope (at least 1; unknown: never by count).
    fn max_pending(&self, object: &str) -> u32 {
        self.specs
            .iter()
            .find(|s| s.name == object)
            .map_or(u32::MAX, |s| s.max_pending.max(1))
    }
}

struct Shared {
    cfg: ReplicationConfig,
    boot: u64,
    state: Mutex<State>,
    counters: Counters,
    engine: OnceLock<EngineHandle>,
}

/// Posted to the service to send pending changes now (`max_pending` reached).
struct FlushNow;

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

fn add(c: &AtomicU64, v: u64) {
    c.fetch_add(v, Ordering::Relaxed);
}

/// Creates the service (register it on the engine as [`ServiceId::REPLICATION`]) and the
/// handle the rest of the daemon uses. Call [`ReplicationHandle::attach`] once the engine
/// runs.
pub fn replication(
    cfg: ReplicationConfig,
    view: ViewFn,
    sinks: Vec<(String, Sink)>,
) -> (ReplicationService, ReplicationHandle) {
    let tables = cfg
        .objects
        .iter()
        .map(|o| (o.name.clone(), Table::new(&o.name)))
        .collect();
    let shared = Arc::new(Shared {
        boot: wall_ns(),
        state: Mutex::new(State {
            tables,
            specs: cfg.objects.clone(),
            peers: HashMap::new(),
            view: BTreeMap::new(),
        }),
        cfg,
        counters: Counters::default(),
        engine: OnceLock::new(),
    });
    (
        ReplicationService {
            shared: Arc::clone(&shared),
            view,
            sinks: sinks.into_iter().collect(),
            flush_timer: None,
            view_timer: None,
            last_sent: None,
        },
        ReplicationHandle { shared },
    )
}

/// The engine service. Created by [`replication`].
pub struct ReplicationService {
    shared: Arc<Shared>,
    view: ViewFn,
    sinks: HashMap<String, Sink>,
    flush_timer: Option<TimerId>,
    view_timer: Option<TimerId>,
    last_sent: Option<Instant>,
}

fn peer_links(ctx: &Ctx<'_>) -> Vec<ConnId> {
    ctx.open_conns()
        .into_iter()
        .filter(|c| matches!(c.origin, ConnOrigin::Peer { .. }))
        .map(|c| c.id)
        .collect()
}

/// Splits entries into groups that each fit one frame.
fn chunks(entries: &[(Key, i64)]) -> Vec<&[(Key, i64)]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (k, _)) in entries.iter().enumerate() {
        let sz = 10 + k.len();
        if bytes + sz > CHUNK_BYTES && i > start {
            out.push(&entries[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += sz;
    }
    out.push(&entries[start..]);
    out
}

impl ReplicationService {
    /// Adds (or replaces) the sink of an object before the engine starts.
    pub fn add_sink(&mut self, object: &str, sink: Sink) {
        self.sinks.insert(object.to_owned(), sink);
    }

    fn send(&self, ctx: &mut Ctx<'_>, links: &[ConnId], frame: &Frame) {
        for c in links {
            if ctx.send(*c, frame) {
                add(&self.shared.counters.frames_out, 1);
                add(&self.shared.counters.bytes_out, frame.wire_len() as u64);
            }
        }
    }

    fn flush(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        let keepalive = self
            .last_sent
            .is_none_or(|t| now.duration_since(t) >= self.shared.cfg.keepalive);
        let links = peer_links(ctx);
        let mut frames = Vec::new();
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let sent = wall_ns();
            for t in st.tables.values_mut() {
                let Some(entries) = t.own.take_delta(keepalive) else {
                    continue;
                };
                for c in chunks(&entries) {
                    let seq = t.own.next_seq();
                    let refs: Vec<(&[u8], i64)> =
                        c.iter().map(|(k, v)| (k.as_slice(), *v)).collect();
                    frames.push(wire::encode(
                        MsgKind::Delta,
                        0,
                        &t.name,
                        self.shared.boot,
                        seq,
                        sent,
                        &refs,
                    ));
                }
            }
        }
        if !frames.is_empty() {
            self.last_sent = Some(now);
        }
        for f in &frames {
            self.send(ctx, &links, f);
        }
    }

    fn snapshot_to(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let frames: Vec<Frame> = {
            let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let sent = wall_ns();
            st.tables
                .values()
                .flat_map(|t| {
                    let e = t.own.entries();
                    let refs: Vec<(&[u8], i64)> =
                        e.iter().map(|(k, v)| (k.as_slice(), *v)).collect();
                    wire::encode_snapshot(&t.name, self.shared.boot, t.own.seq, sent, &refs)
                })
                .collect()
        };
        add(&self.shared.counters.snapshots_out, 1);
        self.send_all(ctx, conn, &frames);
    }

    fn run_sinks(&mut self, dirty: Vec<(String, Vec<(Key, i64)>)>) {
        for (name, keys) in dirty {
            if keys.is_empty() {
                continue;
            }
            if let Some(s) = self.sinks.get_mut(&name) {
                s(keys);
            }
        }
    }

    fn take_dirty(st: &mut State) -> Vec<(String, Vec<(Key, i64)>)> {
        st.tables
            .iter_mut()
            .map(|(n, t)| (n.clone(), t.take_dirty()))
            .collect()
    }

    /// Re-reads the membership: peer links for every announced member, slots of departed
    /// or restarted members dropped, the live set for the totals.
    fn follow_view(&mut self) {
        let view = (self.view)();
        let me = self.shared.cfg.nodename.clone();
        let mut add_peers = Vec::new();
        let mut remove_peers = Vec::new();
        let dirty = {
            let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let next: BTreeMap<String, PeerView> =
                view.into_iter().map(|p| (p.nodename.clone(), p)).collect();
            if next != st.view {
                add(&self.shared.counters.view_changes, 1);
            }
            // Departed, or the same name as a new member (restarted daemon): drop the slot.
            let gone: Vec<String> = st
                .view
                .iter()
                .filter(|(n, p)| next.get(*n).is_none_or(|q| q.member != p.member))
                .map(|(n, _)| n.clone())
                .collect();
            for n in &gone {
                let mut dropped = false;
                for t in st.tables.values_mut() {
                    dropped |= t.drop_slot(n);
                }
                if dropped {
                    add(&self.shared.counters.dropped_slots, 1);
                    tracing::info!(node = %n, "replication: slot dropped (left the view)");
                }
            }
            for (n, p) in &next {
                if *n == me {
                    continue;
                }
                if let Some(addr) = p.addr
                    && st.peers.get(n).map(|x| x.0) != Some(addr)
                {
                    st.peers.insert(n.clone(), (addr, p.member.clone()));
                    add_peers.push(PeerSpec {
                        name: n.clone(),
                        addr,
                    });
                }
            }
            let stale: Vec<String> = st
                .peers
                .keys()
                .filter(|n| !next.contains_key(*n))
                .cloned()
                .collect();
            for n in stale {
                st.peers.remove(&n);
                remove_peers.push(n);
            }
            let live: HashSet<String> = next
                .values()
                .filter(|p| p.live && p.nodename != me)
                .map(|p| p.nodename.clone())
                .collect();
            for t in st.tables.values_mut() {
                t.set_live(live.clone());
            }
            st.view = next;
            Self::take_dirty(&mut st)
        };
        if let Some(h) = self.shared.engine.get() {
            for p in add_peers {
                tracing::info!(peer = %p.name, addr = %p.addr, "replication: peer link");
                let _ = h.add_peer(p);
            }
            for n in remove_peers {
                let _ = h.remove_peer(&n);
            }
        }
        self.run_sinks(dirty);
    }
}

impl ReplicationService {
    /// Sends frames back to back on one link (snapshot chunks stay together).
    fn send_all(&self, ctx: &mut Ctx<'_>, conn: ConnId, frames: &[Frame]) {
        for f in frames {
            self.send(ctx, &[conn], f);
        }
    }
}

impl Service for ReplicationService {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        let min_delay = {
            let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            st.specs
                .iter()
                .map(|s| s.max_delay)
                .min()
                .unwrap_or(Duration::from_millis(10))
                .max(Duration::from_millis(1))
        };
        self.flush_timer = Some(ctx.set_timer(min_delay, Some(min_delay)));
        let vi = self.shared.cfg.view_interval;
        self.view_timer = Some(ctx.set_timer(Duration::ZERO, Some(vi)));
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: &ConnInfo) {
        if matches!(conn.origin, ConnOrigin::Peer { .. }) {
            tracing::info!(peer = %conn.remote_name, "replication: link up, sending snapshot");
            self.snapshot_to(ctx, conn.id);
        }
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, frame: Frame) {
        let c = &self.shared.counters;
        add(&c.frames_in, 1);
        add(&c.bytes_in, frame.wire_len() as u64);
        let Some(node) = ctx.conn(conn).map(|i| i.remote_name.clone()) else {
            return;
        };
        let msg = match wire::decode(&frame) {
            Ok(m) => m,
            Err(e) => {
                add(&c.malformed, 1);
                tracing::warn!(peer = %node, error = %e, "replication: malformed frame, closing the link");
                ctx.close(conn);
                return;
            }
        };
        if msg.kind == MsgKind::Snapshot && msg.flags & wire::FLAG_LAST != 0 {
            add(&c.snapshots_in, 1);
        }
        let lag = Duration::from_nanos(wall_ns().saturating_sub(msg.sent_ns));
        let now = ctx.now();
        let result = {
            let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            match st.tables.get_mut(&msg.object) {
                None => {
                    add(&c.unknown_object, 1);
                    return;
                }
                Some(t) => t
                    .apply(&node, conn, msg, now, lag)
                    .map(|a| (a, Self::take_dirty(&mut st))),
            }
        };
        match result {
            Ok((Applied::Ok, dirty)) => self.run_sinks(dirty),
            Ok((Applied::Duplicate, dirty)) => {
                add(&c.duplicates, 1);
                self.run_sinks(dirty);
            }
            Err(e) => {
                add(&c.resyncs, 1);
                tracing::info!(peer = %node, error = %e, "replication: link out of sync, resetting it");
                ctx.close(conn);
            }
        }
    }

    fn on_close(&mut self, _ctx: &mut Ctx<'_>, conn: &ConnInfo, _reason: &CloseReason) {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        for t in st.tables.values_mut() {
            t.link_closed(conn.id);
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: TimerId) {
        if Some(timer) == self.flush_timer {
            self.flush(ctx);
        } else if Some(timer) == self.view_timer {
            self.follow_view();
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Box<dyn Any + Send>) {
        if msg.is::<FlushNow>() {
            self.flush(ctx);
        }
    }
}

/// The daemon's side of replication: feed local values, read slots and totals.
#[derive(Clone)]
pub struct ReplicationHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ReplicationHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationHandle")
            .field("nodename", &self.shared.cfg.nodename)
            .finish()
    }
}

impl ReplicationHandle {
    /// Gives the service the running engine (peer links, flush requests).
    pub fn attach(&self, engine: EngineHandle) {
        let _ = self.shared.engine.set(engine);
    }

    pub fn nodename(&self) -> &str {
        &self.shared.cfg.nodename
    }

    /// Replaces this node's slot of `object` with `values` (the full local table; zero or
    /// missing = absent). Changed keys go out within `max_delay`, or at once when
    /// `max_pending` keys are waiting. Returns how many keys changed.
    pub fn publish(&self, object: &str, values: HashMap<Key, i64>) -> usize {
        let (changed, flush) = {
            let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let max_pending = st.max_pending(object);
            let Some(t) = st.tables.get_mut(object) else {
                return 0;
            };
            let changed = t.own.replace_all(values);
            (changed, t.own.pending() >= max_pending as usize)
        };
        if flush && let Some(h) = self.shared.engine.get() {
            let _ = h.post(ServiceId::REPLICATION, Box::new(FlushNow));
        }
        changed
    }

    /// Sets single keys of this node's slot of `object`, in order (the rest unchanged; 0 =
    /// absent): for objects that know what changed (caches), so a write costs O(changed
    /// keys), not a diff of the whole table. Sent like [`publish`](Self::publish).
    /// Returns how many keys are now waiting to be sent.
    pub fn publish_keys(&self, object: &str, changes: Vec<(Key, i64)>) -> usize {
        if changes.is_empty() {
            return 0;
        }
        let (pending, flush) = {
            let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let max_pending = st.max_pending(object);
            let Some(t) = st.tables.get_mut(object) else {
                return 0;
            };
            for (k, v) in changes {
                t.own.set(k, v);
            }
            let pending = t.own.pending();
            (pending, pending >= max_pending as usize)
        };
        if flush && let Some(h) = self.shared.engine.get() {
            let _ = h.post(ServiceId::REPLICATION, Box::new(FlushNow));
        }
        pending
    }

    /// Changed keys of this node's slots not sent yet, per object (the replication
    /// pipeline's queue depth: it drains every `max_delay`).
    pub fn pending_keys(&self) -> Vec<(String, usize)> {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.tables
            .iter()
            .map(|(n, t)| (n.clone(), t.own.pending()))
            .collect()
    }

    /// The cluster-wide values of `object`: this node's slot plus the live remote slots.
    pub fn global(&self, object: &str) -> Option<HashMap<Key, i64>> {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.tables.get(object).map(Table::global)
    }

    /// One node's slot of `object` (this node's own included); `None` if unknown.
    pub fn slot(&self, object: &str, node: &str) -> Option<HashMap<Key, i64>> {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let t = st.tables.get(object)?;
        if node == self.shared.cfg.nodename {
            return Some(t.own.values().clone());
        }
        t.remote(node).map(|s| s.values.clone())
    }

    /// Sum over the live remote slots of `object` (what enforcement adds to local).
    pub fn remote_total(&self, object: &str) -> Option<HashMap<Key, i64>> {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.tables.get(object).map(|t| t.remote_total().clone())
    }

    /// The member's private name (`#<nodeid>-<pid>#<nodename>`) from the last view.
    pub fn private_name(&self, node: &str) -> Option<String> {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.view.get(node).map(|p| p.member.clone())
    }

    /// Replicated object names, in order.
    pub fn objects(&self) -> Vec<String> {
        self.shared
            .cfg
            .objects
            .iter()
            .map(|o| o.name.clone())
            .collect()
    }

    /// Every remote slot's state.
    pub fn slots(&self) -> Vec<SlotStatus> {
        let now = Instant::now();
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for t in st.tables.values() {
            for (n, s) in t.remotes() {
                out.push(SlotStatus {
                    object: t.name.clone(),
                    node: n.clone(),
                    live: t.is_live(n),
                    connected: s.conn.is_some(),
                    keys: s.values.len(),
                    seq: s.seq,
                    age: now.saturating_duration_since(s.last_frame),
                    lag: s.lag,
                });
            }
        }
        out
    }

    /// Peer links wanted (announced members other than this node).
    pub fn peers(&self) -> Vec<(String, SocketAddr)> {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(String, SocketAddr)> =
            st.peers.iter().map(|(n, (a, _))| (n.clone(), *a)).collect();
        v.sort();
        v
    }

    pub fn counters(&self) -> CounterValues {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterValues {
            frames_out: g(&c.frames_out),
            bytes_out: g(&c.bytes_out),
            frames_in: g(&c.frames_in),
            bytes_in: g(&c.bytes_in),
            snapshots_out: g(&c.snapshots_out),
            snapshots_in: g(&c.snapshots_in),
            malformed: g(&c.malformed),
            resyncs: g(&c.resyncs),
            duplicates: g(&c.duplicates),
            unknown_object: g(&c.unknown_object),
            dropped_slots: g(&c.dropped_slots),
            view_changes: g(&c.view_changes),
        }
    }
}
