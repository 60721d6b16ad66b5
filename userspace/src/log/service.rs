//! The log service on port 4802 (engine service [`ServiceId::LOG`]): a subscriber (the
//! manager) lists the streams a node publishes, subscribes to one under a named
//! subscriber, receives every record after that subscriber's durable checkpoint, and
//! checkpoints what it has made durable on its side. Protocol: `docs/logs.md`.
//!
//! Each subscription has its own worker thread (reads and checkpoints touch the disk,
//! and the reactor must never block); it sends through the [`EngineHandle`] and stops
//! sending when `window` bytes are unacknowledged, so a log is never buffered whole.

use std::{
    any::Any,
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::Duration,
};

use super::{EntryRef, Offset, Record, Stream, frame::frame_len};
use crate::engine::{
    CloseReason, ClusterKey, ConnId, ConnInfo, Ctx, EngineHandle, Frame, OutGauge, Service,
    ServiceId,
    client::{Client, ClientError},
};

/// Message kinds of the log service.
pub mod kind {
    /// C→S, empty: which logs do you publish?
    pub const LIST: u8 = 1;
    /// S→C: `u16 count, count × (u16 len, name)`.
    pub const LOGS: u8 = 2;
    /// C→S: `u16 len, log, u16 len, subscriber, u32 window` (0 = default).
    pub const SUBSCRIBE: u8 = 3;
    /// S→C: `u64 next, u64 end`: records from `next` follow.
    pub const SUBSCRIBED: u8 = 4;
    /// S→C: records back to back, each `u64 offset, u64 timestamp_ns, u32 len, payload`.
    pub const RECORDS: u8 = 5;
    /// C→S: `u64 offset`: everything up to and including the record at `offset` is consumed.
    pub const CHECKPOINT: u8 = 6;
    /// S→C: `u64 offset, u64 next`: the checkpoint is durable on the node.
    pub const CHECKPOINTED: u8 = 7;
    /// S→C: `u16 code, message`: the request was refused (the connection stays open).
    pub const ERROR: u8 = 8;
    /// S→C: `u64 from, u64 to`: records lost to the `drop_oldest` disk policy.
    pub const GAP: u8 = 9;
    /// C→S, empty: which nodes are in the cluster (live members that announced)?
    pub const MEMBERS: u8 = 10;
    /// S→C: `u16 count, count × (str nodename, str ECCluster_Listener address)`.
    pub const MEMBER_LIST: u8 = 11;
}

/// Frame flags of the log service.
pub mod flags {
    /// On RECORDS: the node had nothing more to send when it sent this frame (the
    /// subscriber is caught up; a bulk subscriber may pace itself).
    pub const CAUGHT_UP: u8 = 1;
}

/// Error codes in an [`kind::ERROR`] frame.
pub mod code {
    pub const UNKNOWN_LOG: u16 = 1;
    pub const UNKNOWN_SUBSCRIBER: u16 = 2;
    pub const ALREADY_SUBSCRIBED: u16 = 3;
    pub const STORAGE: u16 = 4;
    pub const RECORD_TOO_LARGE: u16 = 5;
    pub const NOT_READY: u16 = 6;
    /// A reload stopped publishing the log a subscription was reading.
    pub const UNPUBLISHED: u16 = 7;
}

/// Default unacknowledged bytes in flight per subscription.
pub const DEFAULT_WINDOW: u32 = 8 << 20;
/// Window bounds (a client asking for more or less is clamped).
pub const MIN_WINDOW: u32 = 64 << 10;
pub const MAX_WINDOW: u32 = 64 << 20;
// A full window, and the frame past it, fit in a connection's default output limit: a
// subscriber reading within its window is never closed as slow.
const _: () = assert!(
    MAX_WINDOW as usize + 2 * crate::engine::DEFAULT_MAX_FRAME as usize
        <= crate::engine::DEFAULT_MAX_OUT_BUFFER
);
/// Largest RECORDS payload the service builds (below the engine's 1 MiB frame limit).
pub const BATCH_BYTES: usize = 768 << 10;
/// Per-record overhead in a RECORDS payload.
const REC_HDR: usize = 20;

/// Counters of the log service (shown by `cluster info` and the metrics).
#[derive(Debug, Default)]
pub struct LogServiceCounters {
    pub subscriptions: AtomicU64,
    pub records_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Malformed requests; each closed its connection.
    pub malformed: AtomicU64,
    pub refused: AtomicU64,
}

/// Why a request payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed log service message (kind {kind}): {why}")]
pub struct WireError {
    pub kind: u8,
    pub why: &'static str,
}

struct Cur<'a> {
    b: &'a [u8],
    kind: u8,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError {
                kind: self.kind,
                why: "truncated",
            });
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn str(&mut self) -> Result<String, WireError> {
        let n = self.u16()? as usize;
        let kind = self.kind;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| WireError {
            kind,
            why: "name is not UTF-8",
        })
    }
    fn end(&self) -> Result<(), WireError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(WireError {
                kind: self.kind,
                why: "trailing bytes",
            })
        }
    }
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    v.extend_from_slice(&(b.len() as u16).to_be_bytes());
    v.extend_from_slice(b);
}

fn frame(kind: u8, payload: Vec<u8>) -> Frame {
    Frame::new(ServiceId::LOG, kind, payload)
}

fn error_frame(code: u16, msg: &str) -> Frame {
    let mut v = code.to_be_bytes().to_vec();
    v.extend_from_slice(msg.as_bytes());
    frame(kind::ERROR, v)
}

/// Encodes records as a RECORDS payload.
pub fn encode_records(recs: &[Record]) -> Vec<u8> {
    let mut v = Vec::with_capacity(recs.iter().map(|r| REC_HDR + r.payload.len()).sum());
    for r in recs {
        encode_record_into(&mut v, r.offset, r.timestamp_ns, &r.payload);
    }
    v
}

/// Appends one record to a RECORDS payload.
fn encode_record_into(v: &mut Vec<u8>, offset: Offset, timestamp_ns: u64, payload: &[u8]) {
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&timestamp_ns.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
}

/// Decodes a RECORDS payload.
pub fn decode_records(p: &[u8]) -> Result<Vec<Record>, WireError> {
    let mut c = Cur {
        b: p,
        kind: kind::RECORDS,
    };
    let mut out = Vec::new();
    while !c.b.is_empty() {
        let offset = c.u64()?;
        let timestamp_ns = c.u64()?;
        let n = c.u32()? as usize;
        out.push(Record {
            offset,
            timestamp_ns,
            payload: c.take(n)?.to_vec(),
        });
    }
    Ok(out)
}

/// A RECORDS payload kept whole, its records read in place: a bulk subscriber (the
/// manager) gets no allocation and no copy per record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordsBuf {
    payload: Vec<u8>,
    /// The frame carried [`flags::CAUGHT_UP`].
    caught_up: bool,
    /// Per record: offset, timestamp, payload start and length within `payload`.
    index: Vec<(Offset, u64, usize, usize)>,
}

/// One record of a [`RecordsBuf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub offset: Offset,
    pub timestamp_ns: u64,
    pub payload: &'a [u8],
}

impl RecordsBuf {
    /// Checks and indexes a RECORDS payload.
    pub fn parse(payload: Vec<u8>) -> Result<RecordsBuf, WireError> {
        let mut index = Vec::new();
        let mut c = Cur {
            b: &payload,
            kind: kind::RECORDS,
        };
        while !c.b.is_empty() {
            let offset = c.u64()?;
            let timestamp_ns = c.u64()?;
            let n = c.u32()? as usize;
            let start = payload.len() - c.b.len();
            c.take(n)?;
            index.push((offset, timestamp_ns, start, n));
        }
        Ok(RecordsBuf {
            payload,
            caught_up: false,
            index,
        })
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = RecordRef<'_>> + '_ {
        self.index
            .iter()
            .map(|&(offset, timestamp_ns, start, n)| RecordRef {
                offset,
                timestamp_ns,
                payload: &self.payload[start..start + n],
            })
    }

    pub fn last(&self) -> Option<RecordRef<'_>> {
        self.iter().next_back()
    }

    /// The frame's buffer, for [`LogClient::recycle`].
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }

    /// Whether the node had nothing more to send after these records.
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// Sum of the records' payload lengths.
    pub fn payload_bytes(&self) -> u64 {
        self.index.iter().map(|r| r.3 as u64).sum()
    }
}

/// What [`LogClient::poll_batch`] delivers: [`Delivery`] with records kept in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchDelivery {
    Records(RecordsBuf),
    Gap { from: Offset, to: Offset },
    Checkpointed { offset: Offset, next: Offset },
}

/// The published streams, by `logs` name.
pub type Published = Arc<BTreeMap<String, Stream>>;

/// The published set as the service sees it now: replaced whole on reload. `generation`
/// changes with every replacement, so a subscription checks its log only then.
#[derive(Debug)]
struct PublishedSet {
    logs: RwLock<Published>,
    generation: AtomicU64,
}

impl PublishedSet {
    fn get(&self) -> Published {
        self.logs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `log` is still published as the same stream (the same directory).
    fn serves(&self, log: &str, stream: &Stream) -> bool {
        self.get()
            .get(log)
            .is_some_and(|s| s.path() == stream.path())
    }
}

/// The cluster's live members as (nodename, listener address), from the bus.
pub type MembersFn = Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>;

enum WorkerMsg {
    Checkpoint(Offset),
}

struct Sub {
    tx: mpsc::Sender<WorkerMsg>,
    thread: Option<JoinHandle<()>>,
    /// The subscriber this connection holds (see [`LogService::holders`]).
    holds: Holder,
}

/// A subscriber of one stream: the stream's directory (one stream may be published under
/// two names) and the subscriber name.
type Holder = (PathBuf, String);

/// The engine service. Build it with [`LogService::new`], register it under
/// [`ServiceId::LOG`], then hand it the engine's handle with [`LogServiceHandle::attach`].
pub struct LogService {
    logs: Arc<PublishedSet>,
    members: Option<MembersFn>,
    handle: Arc<OnceLock<EngineHandle>>,
    counters: Arc<LogServiceCounters>,
    subs: HashMap<ConnId, Sub>,
    /// Which connection reads each subscriber now. One at a time: two readers of one
    /// subscriber (two managers configured with the same name) would each checkpoint
    /// what it stored, and one's checkpoint would move the position past records the
    /// other never received — lost for it once it reconnects.
    holders: HashMap<Holder, ConnId>,
    /// Connections whose subscription the node ended (ERROR sent): a CHECKPOINT the
    /// client sent before it read that ERROR is not malformed, and is ignored.
    ended: HashSet<ConnId>,
}

/// What the owner keeps: attach the engine, read the counters.
#[derive(Clone)]
pub struct LogServiceHandle {
    handle: Arc<OnceLock<EngineHandle>>,
    counters: Arc<LogServiceCounters>,
    logs: Arc<PublishedSet>,
}

impl LogServiceHandle {
    /// Gives the service the engine it runs on (subscriptions are refused until then).
    pub fn attach(&self, e: EngineHandle) {
        let _ = self.handle.set(e);
    }
    pub fn counters(&self) -> &LogServiceCounters {
        &self.counters
    }
    /// The logs published now.
    pub fn logs(&self) -> Published {
        self.logs.get()
    }

    /// Replaces the published set (configuration reload): new subscriptions see `logs`
    /// at once; a running subscription to a log no longer published (or now published
    /// from another directory) ends with an [`code::UNPUBLISHED`] error frame.
    pub fn publish(&self, logs: Published) {
        *self.logs.logs.write().unwrap_or_else(|p| p.into_inner()) = logs;
        self.logs.generation.fetch_add(1, Ordering::Release);
    }
}

impl LogService {
    pub fn new(logs: Published) -> (LogService, LogServiceHandle) {
        let handle = Arc::new(OnceLock::new());
        let counters = Arc::new(LogServiceCounters::default());
        let logs = Arc::new(PublishedSet {
            logs: RwLock::new(logs),
            generation: AtomicU64::new(0),
        });
        (
            LogService {
                logs: logs.clone(),
                members: None,
                handle: handle.clone(),
                counters: counters.clone(),
                subs: HashMap::new(),
                holders: HashMap::new(),
                ended: HashSet::new(),
            },
            LogServiceHandle {
                handle,
                counters,
                logs,
            },
        )
    }

    /// Lets subscribers ask this node for the cluster's members (the manager's discovery).
    pub fn with_members(mut self, f: MembersFn) -> LogService {
        self.members = Some(f);
        self
    }

    fn malformed(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, e: &WireError) {
        self.counters.malformed.fetch_add(1, Ordering::Relaxed);
        let peer = ctx
            .conn(conn)
            .map(|c| format!("{} {}", c.remote_name, c.remote))
            .unwrap_or_default();
        tracing::warn!(%conn, peer, error = %e, "log service: malformed request, closing");
        self.drop_sub(conn);
        ctx.close(conn);
    }

    fn refuse(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, code: u16, msg: &str) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        ctx.send(conn, &error_frame(code, msg));
    }

    fn drop_sub(&mut self, conn: ConnId) {
        if let Some(mut s) = self.subs.remove(&conn) {
            if self.holders.get(&s.holds) == Some(&conn) {
                self.holders.remove(&s.holds);
            }
            drop(s.tx);
            // The worker notices the closed channel within one poll; never join on the
            // reactor (it may be in a read or an fdatasync).
            s.thread.take();
        }
    }

    fn subscribe(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, p: &[u8]) -> Result<(), WireError> {
        let mut c = Cur {
            b: p,
            kind: kind::SUBSCRIBE,
        };
        let log = c.str()?;
        let sub = c.str()?;
        let window = c.u32()?;
        c.end()?;
        self.ended.remove(&conn);
        if self.subs.contains_key(&conn) {
            self.refuse(
                ctx,
                conn,
                code::ALREADY_SUBSCRIBED,
                "one subscription per connection",
            );
            return Ok(());
        }
        let generation = self.logs.generation.load(Ordering::Acquire);
        let Some(stream) = self.logs.get().get(&log).cloned() else {
            self.refuse(
                ctx,
                conn,
                code::UNKNOWN_LOG,
                &format!("log {log:?} is not published"),
            );
            return Ok(());
        };
        let next = match stream.position(&sub) {
            Ok(n) => n,
            Err(_) => {
                self.refuse(
                    ctx,
                    conn,
                    code::UNKNOWN_SUBSCRIBER,
                    &format!("log {log:?} has no subscriber {sub:?}"),
                );
                return Ok(());
            }
        };
        let holds: Holder = (stream.path().to_path_buf(), sub.clone());
        if let Some(&other) = self.holders.get(&holds) {
            let peer = ctx
                .conn(other)
                .map(|c| format!("{} {}", c.remote_name, c.remote))
                .unwrap_or_else(|| other.to_string());
            self.refuse(
                ctx,
                conn,
                code::ALREADY_SUBSCRIBED,
                &format!(
                    "subscriber {sub:?} of log {log:?} is already being read by {peer}; one reader per subscriber (two readers would checkpoint past each other's records)"
                ),
            );
            return Ok(());
        }
        let Some(engine) = self.handle.get().cloned() else {
            self.refuse(ctx, conn, code::NOT_READY, "log service starting");
            return Ok(());
        };
        let window = if window == 0 {
            DEFAULT_WINDOW
        } else {
            window.clamp(MIN_WINDOW, MAX_WINDOW)
        } as u64;
        let mut ok = next.to_be_bytes().to_vec();
        ok.extend_from_slice(&stream.bounds().1.to_be_bytes());
        ctx.send(conn, &frame(kind::SUBSCRIBED, ok));
        let (tx, rx) = mpsc::channel();
        let counters = self.counters.clone();
        let (wlog, wsub, published) = (log.clone(), sub.clone(), self.logs.clone());
        let thread = std::thread::Builder::new()
            .name(format!("log-sub-{}", conn.0))
            .spawn(move || {
                Worker {
                    stream,
                    log: wlog,
                    sub: wsub,
                    conn,
                    engine,
                    rx,
                    window,
                    counters,
                    published,
                    generation,
                    // On the worker's thread: the engine wakes this thread.
                    gauge: Arc::new(OutGauge::for_this_thread()),
                }
                .run()
            });
        match thread {
            Ok(t) => {
                self.counters.subscriptions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%conn, log, subscriber = sub, next, "log service: subscribed");
                self.holders.insert(holds.clone(), conn);
                self.subs.insert(
                    conn,
                    Sub {
                        tx,
                        thread: Some(t),
                        holds,
                    },
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "log service: cannot start a subscription thread");
                self.refuse(ctx, conn, code::STORAGE, "cannot start a subscription");
            }
        }
        Ok(())
    }
}

impl Service for LogService {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, f: Frame) {
        let r = match f.kind {
            kind::LIST => {
                if f.payload.is_empty() {
                    let logs = self.logs.get();
                    let mut v = (logs.len() as u16).to_be_bytes().to_vec();
                    for name in logs.keys() {
                        put_str(&mut v, name);
                    }
                    ctx.send(conn, &frame(kind::LOGS, v));
                    Ok(())
                } else {
                    Err(WireError {
                        kind: kind::LIST,
                        why: "LIST has no payload",
                    })
                }
            }
            kind::MEMBERS if !f.payload.is_empty() => Err(WireError {
                kind: kind::MEMBERS,
                why: "MEMBERS has no payload",
            }),
            kind::MEMBERS => {
                let list = self.members.as_ref().map(|m| m()).unwrap_or_default();
                let mut v = (list.len() as u16).to_be_bytes().to_vec();
                for (n, a) in &list {
                    put_str(&mut v, n);
                    put_str(&mut v, a);
                }
                ctx.send(conn, &frame(kind::MEMBER_LIST, v));
                Ok(())
            }
            kind::SUBSCRIBE => self.subscribe(ctx, conn, &f.payload),
            kind::CHECKPOINT => {
                let mut c = Cur {
                    b: &f.payload,
                    kind: kind::CHECKPOINT,
                };
                match (c.u64(), c.end()) {
                    (Ok(off), Ok(())) => match self.subs.get(&conn) {
                        Some(s) => {
                            let _ = s.tx.send(WorkerMsg::Checkpoint(off));
                            // It may be parked waiting for its socket (see `Worker::run`).
                            if let Some(t) = &s.thread {
                                t.thread().unpark();
                            }
                            Ok(())
                        }
                        None if self.ended.contains(&conn) => {
                            tracing::debug!(%conn, offset = off, "log service: checkpoint after the subscription ended, ignored");
                            Ok(())
                        }
                        None => Err(WireError {
                            kind: kind::CHECKPOINT,
                            why: "CHECKPOINT before SUBSCRIBE",
                        }),
                    },
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
            other => Err(WireError {
                kind: other,
                why: "unknown message kind",
            }),
        };
        if let Err(e) = r {
            self.malformed(ctx, conn, &e);
        }
    }

    fn on_close(&mut self, _ctx: &mut Ctx<'_>, conn: &ConnInfo, _reason: &CloseReason) {
        self.drop_sub(conn.id);
        self.ended.remove(&conn.id);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Box<dyn Any + Send>) {
        // A subscription ended by itself (its log is no longer published, or storage
        // failed).
        let msg = match msg.downcast::<SubEnded>() {
            Ok(m) => {
                // Forgotten and answered in one step on the reactor: the client, once it
                // reads the error, may subscribe again on the connection, and a
                // checkpoint it sent before reading it does not close the connection
                // (which could drop the error still queued).
                let SubEnded { conn, error } = *m;
                self.drop_sub(conn);
                if ctx.conn(conn).is_some() {
                    self.ended.insert(conn);
                    ctx.send(conn, &error);
                }
                return;
            }
            Err(other) => other,
        };
        // A worker found a bad checkpoint (not an offset it sent): count and close.
        if let Ok(m) = msg.downcast::<BadCheckpoint>() {
            self.malformed(
                ctx,
                m.0,
                &WireError {
                    kind: kind::CHECKPOINT,
                    why: "checkpoint at an offset that was not sent",
                },
            );
        }
    }
}

struct BadCheckpoint(ConnId);

/// A subscription ended by itself; `error` tells the client why.
struct SubEnded {
    conn: ConnId,
    error: Frame,
}

/// A RECORDS payload being built, and how many records it holds.
struct Batch {
    wire: Vec<u8>,
    records: u64,
}

/// A subscription's flow state: durable position, end of what was sent, offsets in flight.
struct Flow {
    acked: Offset,
    sent_end: Offset,
    in_flight: VecDeque<Offset>,
}

struct Worker {
    stream: Stream,
    log: String,
    sub: String,
    conn: ConnId,
    engine: EngineHandle,
    rx: mpsc::Receiver<WorkerMsg>,
    window: u64,
    counters: Arc<LogServiceCounters>,
    published: Arc<PublishedSet>,
    /// The published set's generation this subscription last checked its log against.
    generation: u64,
    /// What the connection's socket has not taken yet of what this worker sent.
    gauge: Arc<OutGauge>,
}

/// How often a caught-up subscription looks for new records.
const TAIL_POLL: Duration = Duration::from_millis(10);

/// Bytes a subscription reads ahead of its socket. The window bounds what the subscriber
/// has not acknowledged; this bounds what sits in this node's memory: without it a
/// subscription replaying a backlog queued up to its whole window (64 MiB) in the engine,
/// per connection, and every byte was cold in memory by the time it was written.
const SOCKET_AHEAD: u64 = 4 << 20;

impl Worker {
    /// `false` (after the error frame) once a reload stopped publishing this log.
    fn still_published(&mut self) -> bool {
        let g = self.published.generation.load(Ordering::Acquire);
        if g == self.generation {
            return true;
        }
        self.generation = g;
        if self.published.serves(&self.log, &self.stream) {
            return true;
        }
        tracing::info!(
            log = self.log,
            subscriber = self.sub,
            "log service: log no longer published, ending its subscription"
        );
        let msg = format!(
            "log {:?} is no longer published (configuration reload)",
            self.log
        );
        self.end_with_error(code::UNPUBLISHED, &msg);
        false
    }

    fn run(mut self) {
        let (mut reader, acked) = match self
            .stream
            .read_from(&self.sub)
            .and_then(|r| Ok((r, self.stream.position(&self.sub)?)))
        {
            Ok(x) => x,
            Err(e) => return self.fail(code::STORAGE, &e.to_string()),
        };
        let mut st = Flow {
            acked,
            sent_end: acked,
            in_flight: VecDeque::new(),
        };
        loop {
            if !self.still_published() {
                return;
            }
            // Checkpoints first: they free the window. A full window waits for one.
            let msg = if st.sent_end.saturating_sub(st.acked) >= self.window {
                match self.rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match self.rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            };
            if let Some(WorkerMsg::Checkpoint(off)) = msg {
                if !self.on_checkpoint(off, &mut st) {
                    return;
                }
                continue;
            }
            if self.gauge.unsent() > SOCKET_AHEAD {
                // The socket has not taken what was sent: wait for it (the service wakes
                // this thread for a checkpoint, and the loop takes it first).
                if !self.gauge.wait_until_below(SOCKET_AHEAD, TAIL_POLL) && self.gauge.is_closed() {
                    return;
                }
                continue;
            }
            // Records are encoded straight from the reader's read-ahead into the frame.
            let mut batch = Batch {
                wire: Vec::with_capacity(BATCH_BYTES),
                records: 0,
            };
            let mut drained = false;
            while st.sent_end.saturating_sub(st.acked) < self.window
                && batch.wire.len() < BATCH_BYTES
            {
                let (offset, timestamp_ns, payload) = match reader.peek() {
                    Ok(None) => {
                        drained = true;
                        break;
                    }
                    Err(e) => {
                        // The records read before the bad one still go out (they
                        // used to go down with the batch, never delivered).
                        if !self.flush(&mut batch, false) {
                            return;
                        }
                        return self.stuck(code::STORAGE, &e.to_string(), &mut st);
                    }
                    Ok(Some(EntryRef::Gap { from, to })) => {
                        reader.consume();
                        if !self.flush(&mut batch, false) {
                            return;
                        }
                        let mut v = from.to_be_bytes().to_vec();
                        v.extend_from_slice(&to.to_be_bytes());
                        if self.engine.send(self.conn, frame(kind::GAP, v)).is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(Some(EntryRef::Record {
                        offset,
                        timestamp_ns,
                        payload,
                    })) => (offset, timestamp_ns, payload),
                };
                let sz = REC_HDR + payload.len();
                if sz > BATCH_BYTES {
                    let len = payload.len();
                    // What came before it is still delivered (it used to go down with
                    // the batch, so those records never reached the subscriber).
                    if !self.flush(&mut batch, false) {
                        return;
                    }
                    return self.stuck(
                        code::RECORD_TOO_LARGE,
                        &format!(
                            "record at offset {offset} ({len} bytes) exceeds the service's frame size"
                        ),
                        &mut st,
                    );
                }
                if batch.wire.len() + sz > BATCH_BYTES {
                    // Left for the next batch (the reader stays on it).
                    break;
                }
                encode_record_into(&mut batch.wire, offset, timestamp_ns, payload);
                batch.records += 1;
                st.sent_end = offset + frame_len(payload.len());
                st.in_flight.push_back(offset);
                reader.consume();
            }
            if !self.flush(&mut batch, drained) {
                return;
            }
            if drained {
                match self.rx.recv_timeout(TAIL_POLL) {
                    Ok(WorkerMsg::Checkpoint(off)) => {
                        if !self.on_checkpoint(off, &mut st) {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    /// The reader cannot get past a record (bad on disk, or too large for a frame): the
    /// client gets the ERROR after every record before it, and nothing more is sent. The
    /// subscription stays open for checkpoints of what was sent, until the client closes
    /// the connection, so the subscriber's position can reach the record. That is where
    /// `dp-logctl verify` points, and the segments before it can go. The subscriber stays
    /// held meanwhile (one reader at a time).
    fn stuck(&mut self, c: u16, msg: &str, st: &mut Flow) {
        tracing::error!(
            log = self.log,
            subscriber = self.sub,
            error = msg,
            "log service: the subscription cannot go on (checkpoints of what was sent are still taken)"
        );
        if self.engine.send(self.conn, error_frame(c, msg)).is_err() {
            return;
        }
        while self.still_published() {
            match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(WorkerMsg::Checkpoint(off)) => {
                    if !self.on_checkpoint(off, st) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Makes a checkpoint durable and confirms it; `false` ends the subscription.
    fn on_checkpoint(&self, off: Offset, st: &mut Flow) -> bool {
        if off >= st.acked && st.in_flight.binary_search(&off).is_err() {
            let _ = self
                .engine
                .post(ServiceId::LOG, Box::new(BadCheckpoint(self.conn)));
            return false;
        }
        if let Err(e) = self.stream.checkpoint(&self.sub, off) {
            self.fail(code::STORAGE, &e.to_string());
            return false;
        }
        while st.in_flight.front().is_some_and(|&o| o <= off) {
            st.in_flight.pop_front();
        }
        st.acked = self.stream.position(&self.sub).unwrap_or(st.acked);
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        let mut v = off.to_be_bytes().to_vec();
        v.extend_from_slice(&st.acked.to_be_bytes());
        self.engine
            .send(self.conn, frame(kind::CHECKPOINTED, v))
            .is_ok()
    }

    /// Sends `batch` as one RECORDS frame, flagged [`flags::CAUGHT_UP`] if the reader
    /// had nothing after it.
    fn flush(&self, batch: &mut Batch, caught_up: bool) -> bool {
        if batch.records == 0 {
            return true;
        }
        let p = std::mem::take(&mut batch.wire);
        self.counters
            .records_sent
            .fetch_add(std::mem::take(&mut batch.records), Ordering::Relaxed);
        self.counters
            .bytes_sent
            .fetch_add(p.len() as u64, Ordering::Relaxed);
        let mut f = frame(kind::RECORDS, p);
        if caught_up {
            f.flags |= flags::CAUGHT_UP;
        }
        self.engine.send_gauged(self.conn, f, &self.gauge).is_ok()
    }

    fn fail(&self, c: u16, msg: &str) {
        tracing::error!(
            log = self.log,
            subscriber = self.sub,
            error = msg,
            "log service: subscription failed"
        );
        self.end_with_error(c, msg);
    }

    /// Ends the subscription with an ERROR: the service forgets it and sends the error,
    /// and the connection stays open. Closing it dropped the error frame still queued
    /// (and a close with unread input is a reset), so the client saw a bare disconnect
    /// instead of the reason.
    fn end_with_error(&self, c: u16, msg: &str) {
        let _ = self.engine.post(
            ServiceId::LOG,
            Box::new(SubEnded {
                conn: self.conn,
                error: error_frame(c, msg),
            }),
        );
    }
}

/// A node's log service alone on a loopback port the kernel picks. For tests, benchmarks
/// and tools that need the 4802 service without a daemon around it.
pub struct Loopback {
    pub engine: crate::engine::Engine,
    pub addr: SocketAddr,
    /// The service's handle (its counters, the published set).
    pub handle: LogServiceHandle,
}

/// [`Loopback`] publishing each `(log, stream)` of `logs`, with the engine's `limits`.
pub fn serve_loopback_with(
    nodename: &str,
    logs: &[(&str, &Stream)],
    key: &ClusterKey,
    limits: crate::engine::Limits,
) -> Result<Loopback, crate::engine::EngineError> {
    use crate::engine::{Engine, EngineConfig, ListenerSpec};
    let published: BTreeMap<String, Stream> = logs
        .iter()
        .map(|(log, s)| ((*log).to_owned(), (*s).clone()))
        .collect();
    let (svc, handle) = LogService::new(Arc::new(published));
    let mut ec = EngineConfig::new(nodename, key.clone());
    ec.limits = limits;
    ec.listeners = vec![ListenerSpec {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        backlog: 16,
        recv_buffer: None,
        send_buffer: None,
        nodelay: true,
    }];
    let engine = Engine::start(ec, vec![(ServiceId::LOG, Box::new(svc))])?;
    handle.attach(engine.handle());
    let addr = engine.local_addrs()[0];
    Ok(Loopback {
        engine,
        addr,
        handle,
    })
}

/// The service publishing `stream` as `log`, default limits: the engine and its address.
pub fn serve_loopback(
    nodename: &str,
    log: &str,
    stream: &Stream,
    key: &ClusterKey,
) -> Result<(crate::engine::Engine, SocketAddr), crate::engine::EngineError> {
    let l = serve_loopback_with(nodename, &[(log, stream)], key, Default::default())?;
    Ok((l.engine, l.addr))
}

/// Errors of the blocking [`LogClient`].
#[derive(Debug, thiserror::Error)]
pub enum LogClientError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{addr}: {source}")]
    Wire {
        addr: SocketAddr,
        #[source]
        source: WireError,
    },
    #[error("{addr} refused: {message} (code {code})")]
    Refused {
        addr: SocketAddr,
        code: u16,
        message: String,
    },
    #[error("{addr} sent an unexpected message (service {service}, kind {kind})")]
    Unexpected {
        addr: SocketAddr,
        service: u8,
        kind: u8,
    },
}

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Records(Vec<Record>),
    Gap {
        from: Offset,
        to: Offset,
    },
    /// `offset` is durably checkpointed; `next` is the subscriber's new position.
    Checkpointed {
        offset: Offset,
        next: Offset,
    },
}

/// Where a subscription starts: records in `next..end` were already in the log when it
/// began (the backlog), later ones follow as they are appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The subscriber's durable position: the first record delivered is at or after it.
    pub next: Offset,
    /// The log's end when the node answered.
    pub end: Offset,
}

/// A blocking subscriber (the manager, tests, tools).
#[derive(Debug)]
pub struct LogClient {
    c: Client,
    addr: SocketAddr,
    pending: VecDeque<Delivery>,
}

impl LogClient {
    /// Connects and authenticates with the cluster key, as `nodename`.
    pub fn connect(
        addr: SocketAddr,
        key: &ClusterKey,
        nodename: &str,
        timeout: Duration,
    ) -> Result<LogClient, LogClientError> {
        Ok(LogClient {
            c: Client::connect(addr, key, nodename, timeout)?,
            addr,
            pending: VecDeque::new(),
        })
    }

    /// The node's name, as it authenticated.
    pub fn node(&self) -> &str {
        self.c.peer_name()
    }

    fn recv(&mut self) -> Result<Frame, LogClientError> {
        let f = self.c.recv()?;
        if f.service != ServiceId::LOG {
            return Err(LogClientError::Unexpected {
                addr: self.addr,
                service: f.service.0,
                kind: f.kind,
            });
        }
        if f.kind == kind::ERROR {
            let code = f
                .payload
                .get(..2)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            return Err(LogClientError::Refused {
                addr: self.addr,
                code,
                message: String::from_utf8_lossy(f.payload.get(2..).unwrap_or_default()).into(),
            });
        }
        Ok(f)
    }

    fn wire(&self, source: WireError) -> LogClientError {
        LogClientError::Wire {
            addr: self.addr,
            source,
        }
    }

    /// The logs the node publishes.
    pub fn list(&mut self) -> Result<Vec<String>, LogClientError> {
        self.c.send(&frame(kind::LIST, Vec::new()))?;
        let f = self.recv()?;
        if f.kind != kind::LOGS {
            return Err(self.unexpected(&f));
        }
        let mut c = Cur {
            b: &f.payload,
            kind: kind::LOGS,
        };
        let n = c.u16().map_err(|e| self.wire(e))?;
        (0..n).map(|_| c.str().map_err(|e| self.wire(e))).collect()
    }

    /// The cluster's live members as the node sees them: (nodename, listener address).
    pub fn members(&mut self) -> Result<Vec<(String, String)>, LogClientError> {
        self.c.send(&frame(kind::MEMBERS, Vec::new()))?;
        let f = self.recv()?;
        if f.kind != kind::MEMBER_LIST {
            return Err(self.unexpected(&f));
        }
        let mut c = Cur {
            b: &f.payload,
            kind: kind::MEMBER_LIST,
        };
        let n = c.u16().map_err(|e| self.wire(e))?;
        (0..n)
            .map(|_| {
                let name = c.str()?;
                Ok((name, c.str()?))
            })
            .collect::<Result<_, WireError>>()
            .map_err(|e| self.wire(e))
    }

    fn unexpected(&self, f: &Frame) -> LogClientError {
        LogClientError::Unexpected {
            addr: self.addr,
            service: f.service.0,
            kind: f.kind,
        }
    }

    /// Subscribes; returns the subscriber's durable position (records from there follow).
    pub fn subscribe(
        &mut self,
        log: &str,
        subscriber: &str,
        window: u32,
    ) -> Result<Offset, LogClientError> {
        self.subscribe_backlog(log, subscriber, window)
            .map(|s| s.next)
    }

    /// Subscribes, and says how much was already waiting: a consumer that knows a backlog
    /// is coming can get ready for it while the first records arrive.
    pub fn subscribe_backlog(
        &mut self,
        log: &str,
        subscriber: &str,
        window: u32,
    ) -> Result<Subscribed, LogClientError> {
        let mut v = Vec::new();
        put_str(&mut v, log);
        put_str(&mut v, subscriber);
        v.extend_from_slice(&window.to_be_bytes());
        self.c.send(&frame(kind::SUBSCRIBE, v))?;
        let f = self.recv()?;
        if f.kind != kind::SUBSCRIBED || f.payload.len() != 16 {
            return Err(self.unexpected(&f));
        }
        let mut c = Cur {
            b: &f.payload,
            kind: kind::SUBSCRIBED,
        };
        let next = c.u64().map_err(|e| self.wire(e))?;
        let end = c.u64().map_err(|e| self.wire(e))?;
        Ok(Subscribed { next, end })
    }

    /// The next delivery, waiting at most `timeout`; `None` when nothing came (a keepalive
    /// is then sent so the node does not close an idle subscriber).
    pub fn poll(&mut self, timeout: Duration) -> Result<Option<Delivery>, LogClientError> {
        if let Some(d) = self.pending.pop_front() {
            return Ok(Some(d));
        }
        match self.recv_within(timeout)? {
            Some(f) => self.decode(f).map(Some),
            None => Ok(None),
        }
    }

    /// The next frame within `timeout`; `None` (after a keepalive) when none came.
    fn recv_within(&mut self, timeout: Duration) -> Result<Option<Frame>, LogClientError> {
        let io = |source| {
            LogClientError::Client(ClientError::Io {
                addr: self.addr,
                source,
            })
        };
        self.c
            .stream()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(io)?;
        match self.recv() {
            Ok(f) => Ok(Some(f)),
            Err(LogClientError::Client(ClientError::Io { source, .. }))
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                self.c.ping()?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// [`LogClient::poll`] for bulk subscribers: each RECORDS frame as one [`RecordsBuf`].
    pub fn poll_batch(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<BatchDelivery>, LogClientError> {
        let d = match self.pending.pop_front() {
            Some(d) => d,
            None => match self.recv_within(timeout)? {
                None => return Ok(None),
                Some(f) if f.kind == kind::RECORDS => {
                    let caught_up = f.flags & flags::CAUGHT_UP != 0;
                    let mut b = RecordsBuf::parse(f.payload).map_err(|e| self.wire(e))?;
                    b.caught_up = caught_up;
                    return Ok(Some(BatchDelivery::Records(b)));
                }
                Some(f) => self.decode(f)?,
            },
        };
        Ok(Some(match d {
            // Only records a blocking `checkpoint` held back arrive here decoded.
            Delivery::Records(r) => BatchDelivery::Records(
                RecordsBuf::parse(encode_records(&r)).map_err(|e| self.wire(e))?,
            ),
            Delivery::Gap { from, to } => BatchDelivery::Gap { from, to },
            Delivery::Checkpointed { offset, next } => BatchDelivery::Checkpointed { offset, next },
        }))
    }

    fn decode(&self, f: Frame) -> Result<Delivery, LogClientError> {
        match f.kind {
            kind::RECORDS => Ok(Delivery::Records(
                decode_records(&f.payload).map_err(|e| self.wire(e))?,
            )),
            kind::GAP | kind::CHECKPOINTED => {
                let mut c = Cur {
                    b: &f.payload,
                    kind: f.kind,
                };
                let a = c.u64().map_err(|e| self.wire(e))?;
                let b = c.u64().map_err(|e| self.wire(e))?;
                Ok(if f.kind == kind::GAP {
                    Delivery::Gap { from: a, to: b }
                } else {
                    Delivery::Checkpointed { offset: a, next: b }
                })
            }
            _ => Err(self.unexpected(&f)),
        }
    }

    /// Hands back records that are done with: their buffer receives a later frame.
    pub fn recycle(&mut self, records: RecordsBuf) {
        self.c.recycle(records.into_payload());
    }

    /// Sends a checkpoint without waiting for its confirmation.
    pub fn send_checkpoint(&mut self, offset: Offset) -> Result<(), LogClientError> {
        self.c
            .send(&frame(kind::CHECKPOINT, offset.to_be_bytes().to_vec()))?;
        Ok(())
    }

    /// Checkpoints and waits until the node says it is durable; records arriving meanwhile
    /// are kept for the next [`LogClient::poll`]. Returns the subscriber's next offset.
    pub fn checkpoint(
        &mut self,
        offset: Offset,
        timeout: Duration,
    ) -> Result<Offset, LogClientError> {
        self.send_checkpoint(offset)?;
        let deadline = std::time::Instant::now() + timeout;
        let mut held = VecDeque::new();
        let r = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break Err(LogClientError::Client(ClientError::Io {
                    addr: self.addr,
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no checkpoint confirmation",
                    ),
                }));
            }
            let saved = std::mem::take(&mut self.pending);
            let d = self.poll(left);
            self.pending = saved;
            match d {
                Ok(Some(Delivery::Checkpointed { offset: o, next })) if o == offset => {
                    break Ok(next);
                }
                Ok(Some(other)) => held.push_back(other),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
        };
        self.pending.extend(held);
        r
    }

    /// Sends raw bytes (tests of the hostile path).
    pub fn send_raw(&mut self, f: &Frame) -> Result<(), LogClientError> {
        Ok(self.c.send(f)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_buf_reads_records_in_place() {
        let recs = vec![
            Record {
                offset: 0,
                timestamp_ns: 5,
                payload: b"one\n".to_vec(),
            },
            Record {
                offset: 36,
                timestamp_ns: 6,
                payload: Vec::new(),
            },
            Record {
                offset: 68,
                timestamp_ns: 7,
                payload: b"three".to_vec(),
            },
        ];
        let wire = encode_records(&recs);
        let b = RecordsBuf::parse(wire.clone()).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b.payload_bytes(), 9);
        let got: Vec<Record> = b
            .iter()
            .map(|r| Record {
                offset: r.offset,
                timestamp_ns: r.timestamp_ns,
                payload: r.payload.to_vec(),
            })
            .collect();
        assert_eq!(got, decode_records(&wire).unwrap());
        assert_eq!(got, recs);
        assert_eq!(b.last().map(|r| r.offset), Some(68));
        // A record running past the frame is refused, as by `decode_records`.
        let err = RecordsBuf::parse(wire[..wire.len() - 1].to_vec()).unwrap_err();
        assert_eq!(err.why, "truncated");
        assert!(RecordsBuf::parse(Vec::new()).unwrap().is_empty());
    }

    /// Records of every size up to the largest a RECORDS frame takes arrive whole,
    /// byte-equal and in order over several frames (each full frame leaves a record over
    /// for the next); a record one byte too large is refused with RECORD_TOO_LARGE after
    /// everything before it arrived.
    #[test]
    fn records_of_every_size_cross_frames_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = Stream::open(
            dir.path().join("mainlog"),
            &crate::log::StreamOptions {
                segment_size: Some(4 << 20),
                subscribers: vec!["mgr".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let largest = BATCH_BYTES - REC_HDR;
        let sizes = [
            0,
            1,
            100,
            5_000,
            200_000,
            largest,
            3,
            largest - 1,
            700_000,
            17,
        ];
        let payloads: Vec<Vec<u8>> = (0..40)
            .map(|i| {
                let n = sizes[i % sizes.len()];
                (0..n).map(|k| (k * 7 + i) as u8).collect()
            })
            .collect();
        for p in &payloads {
            s.append(p).unwrap();
        }
        s.append(&vec![b'x'; largest + 1]).unwrap();
        let key = ClusterKey::from_bytes(b"svc-test-key-0123456789abcdef-0123").unwrap();
        let (engine, addr) = serve_loopback("node", "mainlog", &s, &key).unwrap();
        let mut c = LogClient::connect(addr, &key, "mgr", Duration::from_secs(5)).unwrap();
        c.subscribe("mainlog", "mgr", MAX_WINDOW).unwrap();
        let (mut got, mut frames) = (Vec::new(), 0);
        let refused = loop {
            match c.poll_batch(Duration::from_secs(5)) {
                Ok(Some(BatchDelivery::Records(r))) => {
                    frames += 1;
                    assert!(!r.is_empty());
                    got.extend(r.iter().map(|x| (x.offset, x.payload.to_vec())));
                }
                Ok(Some(other)) => panic!("unexpected {other:?}"),
                Ok(None) => panic!("nothing within 5 s after {} records", got.len()),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                refused,
                LogClientError::Refused {
                    code: code::RECORD_TOO_LARGE,
                    ..
                }
            ),
            "{refused}"
        );
        assert_eq!(got.len(), payloads.len());
        let mut off = 0;
        for ((o, p), want) in got.iter().zip(&payloads) {
            assert_eq!(*o, off);
            assert!(
                p == want,
                "record at {o}: {} bytes, want {}",
                p.len(),
                want.len()
            );
            off += frame_len(want.len());
        }
        assert!(frames >= 8, "only {frames} frames");
        engine.stop().unwrap();
    }
}
