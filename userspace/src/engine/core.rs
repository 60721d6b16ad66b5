//! The backend-independent half of the reactor: connection state, handshakes, framing,
//! deadlines, peer links, timers and service dispatch. Backends move bytes and report
//! events; everything they must do next is left in `State::{dirty, closed, connects}`.

use std::{
    any::Any,
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    Command, EngineSettings, PeerSpec,
    auth::{Handshake, Role, Step, kind},
    frame::{Frame, FrameDecoder, FrameError, ServiceId},
    outflow::OutGauge,
    service::{CloseReason, ConnId, ConnInfo, ConnOrigin, Ctx, Service, TimerId},
    stats::{RejectReason, StatsCell},
};

/// How fast the remembered peak of a connection's output decays: by 1/PEAK_DECAY per
/// buffer written (see [`swap_out`]).
const PEAK_DECAY: usize = 256;

/// Largest output buffer a connection keeps once quiet for a keepalive interval (see
/// [`Core::take_out`]): a frame of the largest size, and its header, fit.
const KEEP_IDLE_OUT: usize = 2 << 20;

/// Frames from other threads with at least this much payload go out from their own
/// buffer instead of being copied into the connection's output: for a log subscription
/// that copy took more CPU than the kernel's own copy into the socket (issue 6, `perf`).
const ZERO_COPY_MIN: usize = 64 << 10;

enum Stage {
    Connecting,
    Handshaking(Handshake),
    Open,
}

struct Conn {
    info: ConnInfo,
    stage: Stage,
    dec: FrameDecoder,
    out: Vec<u8>,
    /// Buffers that go out before `out`, each written as it is: the payloads of large
    /// frames (not copied, see [`ZERO_COPY_MIN`]) and the output queued before them.
    sealed: VecDeque<Vec<u8>>,
    /// Bytes in `sealed`.
    sealed_bytes: usize,
    /// Recent largest output taken at once, decaying (see [`swap_out`]).
    out_peak: usize,
    /// The sender pacing itself to this socket, told of every write (see [`OutGauge`]).
    gauge: Option<Arc<OutGauge>>,
    in_dirty: bool,
    deadline: Instant,
    /// When its one pending deadline check is due (older heap entries are stale).
    check_at: Option<Instant>,
    last_rx: Instant,
    last_tx: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Conn(ConnId),
    User(TimerId),
    Peer(String),
}

struct UserTimer {
    service: ServiceId,
    every: Option<Duration>,
}

struct Peer {
    addr: SocketAddr,
    conn: Option<ConnId>,
    backoff: Duration,
}

/// Everything but the services, so a service callback can borrow it through [`Ctx`].
pub(crate) struct State {
    pub(crate) settings: Arc<EngineSettings>,
    pub(crate) now: Instant,
    pub(crate) stats: Arc<StatsCell>,
    conns: HashMap<ConnId, Conn>,
    next_id: u64,
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    user_timers: HashMap<TimerId, UserTimer>,
    next_timer: u64,
    peers: HashMap<String, Peer>,
    registered: [bool; 256],
    pending_open: Vec<ConnId>,
    pending_close: Vec<(ConnId, CloseReason)>,
    /// Connections with output to write (backend drains).
    pub(crate) dirty: Vec<ConnId>,
    /// Connections whose sockets the backend must drop.
    pub(crate) closed: Vec<ConnId>,
    /// Outbound connects the backend must start.
    pub(crate) connects: Vec<(ConnId, SocketAddr)>,
    pub(crate) stopping: bool,
}

pub(crate) struct Core {
    pub(crate) st: State,
    services: Vec<Option<Box<dyn Service>>>,
}

impl Core {
    pub(crate) fn new(
        settings: Arc<EngineSettings>,
        stats: Arc<StatsCell>,
        services: Vec<(ServiceId, Box<dyn Service>)>,
        peers: Vec<PeerSpec>,
    ) -> Core {
        let mut slots: Vec<Option<Box<dyn Service>>> = (0..256).map(|_| None).collect();
        let mut registered = [false; 256];
        for (id, s) in services {
            registered[id.0 as usize] = true;
            slots[id.0 as usize] = Some(s);
        }
        let mut core = Core {
            st: State {
                settings,
                now: Instant::now(),
                stats,
                conns: HashMap::new(),
                next_id: 1,
                timers: BinaryHeap::new(),
                user_timers: HashMap::new(),
                next_timer: 1,
                peers: HashMap::new(),
                registered,
                pending_open: Vec::new(),
                pending_close: Vec::new(),
                dirty: Vec::new(),
                closed: Vec::new(),
                connects: Vec::new(),
                stopping: false,
            },
            services: slots,
        };
        for p in peers {
            core.st.add_peer(p);
        }
        for i in 0..256 {
            core.with_service(ServiceId(i as u8), |s, ctx| s.on_start(ctx));
        }
        core
    }

    fn with_service(&mut self, id: ServiceId, f: impl FnOnce(&mut dyn Service, &mut Ctx<'_>)) {
        let slot = id.0 as usize;
        if let Some(mut s) = self.services[slot].take() {
            f(
                s.as_mut(),
                &mut Ctx {
                    st: &mut self.st,
                    service: id,
                },
            );
            self.services[slot] = Some(s);
        }
    }

    fn each_service(&mut self, mut f: impl FnMut(&mut dyn Service, &mut Ctx<'_>)) {
        for i in 0..256usize {
            if self.st.registered[i] {
                self.with_service(ServiceId(i as u8), &mut f);
            }
        }
    }

    /// Runs the consequences of the last event: link-up and link-down notifications,
    /// which may themselves cause more.
    pub(crate) fn settle(&mut self) {
        loop {
            if let Some(id) = self.st.pending_open.pop() {
                if let Some(info) = self.st.open_info(id).cloned() {
                    self.each_service(|s, ctx| s.on_open(ctx, &info));
                }
                continue;
            }
            if let Some((id, reason)) = self.st.pending_close.pop() {
                if let Some((info, was_open)) = self.st.finish_close(id, &reason)
                    && was_open
                {
                    self.each_service(|s, ctx| s.on_close(ctx, &info, &reason));
                }
                continue;
            }
            break;
        }
    }

    /// An inbound connection; `None` (and counted) when over the cap.
    pub(crate) fn accept(&mut self, listener: SocketAddr, remote: SocketAddr) -> Option<ConnId> {
        self.st.now = Instant::now();
        StatsCell::add(&self.st.stats.accepted, 1);
        if self.st.stopping || self.st.conns.len() >= self.st.settings.limits.max_connections {
            self.st.stats.reject(RejectReason::OverCapacity);
            return None;
        }
        let id = self
            .st
            .new_conn(ConnOrigin::Inbound { listener }, remote, Stage::Connecting);
        self.st.begin_handshake(id, Role::Acceptor);
        Some(id)
    }

    /// An outbound connect finished.
    pub(crate) fn connect_done(&mut self, id: ConnId, res: std::io::Result<()>) {
        self.st.now = Instant::now();
        match res {
            Ok(()) => {
                StatsCell::add(&self.st.stats.connected, 1);
                self.st.begin_handshake(id, Role::Initiator);
            }
            Err(e) => self.st.request_close(
                id,
                CloseReason::ConnectFailed {
                    error: e.to_string(),
                },
            ),
        }
        self.settle();
    }

    /// Bytes arrived.
    pub(crate) fn data(&mut self, id: ConnId, bytes: &[u8]) {
        self.st.now = Instant::now();
        StatsCell::add(&self.st.stats.bytes_in, bytes.len() as u64);
        let frames = self.st.ingest(id, bytes);
        for f in frames {
            if !self.st.is_open(id) {
                break;
            }
            let svc = f.service;
            self.with_service(svc, |s, ctx| s.on_frame(ctx, id, f));
        }
        self.settle();
    }

    /// The remote closed, or the socket failed.
    pub(crate) fn io_closed(&mut self, id: ConnId, err: Option<std::io::Error>) {
        self.st.now = Instant::now();
        let reason = match err {
            None => CloseReason::RemoteClosed,
            Some(e) => CloseReason::Io {
                error: e.to_string(),
            },
        };
        self.st.request_close(id, reason);
        self.settle();
    }

    /// The backend wrote `n` bytes of the connection's output.
    pub(crate) fn wrote(&mut self, id: ConnId, n: usize) {
        StatsCell::add(&self.st.stats.bytes_out, n as u64);
        if let Some(g) = self.st.conns.get(&id).and_then(|c| c.gauge.as_ref()) {
            g.wrote(n);
        }
    }

    /// Takes the connection's queued output for writing: the next sealed buffer (a large
    /// frame's payload, or what was queued before it), else all that is queued, leaving
    /// `spare` (the buffer the backend finished writing) to queue into. Buffers go round instead of being dropped
    /// and grown again: a new buffer of megabytes costs a page fault, a zeroed page and
    /// later an unmap per 4 KiB, which took more CPU than the copy itself when a log
    /// subscription's reader ran ahead of the socket (issue 6: the raw pull fell from ~2.3
    /// to 1.2–1.5 GB/s, and dropping the buffer whenever the queue ran empty was not
    /// enough). What a connection keeps is bounded by its recent peak output
    /// ([`swap_out`]) and, once it is quiet for a keepalive interval, by [`KEEP_IDLE_OUT`].
    pub(crate) fn take_out(&mut self, id: ConnId, spare: Vec<u8>) -> Vec<u8> {
        let Some(c) = self.st.conns.get_mut(&id) else {
            return Vec::new();
        };
        match c.sealed.pop_front() {
            Some(next) => {
                c.sealed_bytes -= next.len();
                c.out_peak = next.len().max(c.out_peak - c.out_peak / PEAK_DECAY);
                adopt_spare(&mut c.out, c.out_peak, spare);
                next
            }
            None => swap_out(&mut c.out, &mut c.out_peak, spare),
        }
    }

    pub(crate) fn is_live(&self, id: ConnId) -> bool {
        self.st.conns.contains_key(&id)
    }

    pub(crate) fn command(&mut self, cmd: Command) {
        self.st.now = Instant::now();
        match cmd {
            Command::Send(id, f) => self.st.send_owned(id, f),
            Command::SendGauged(id, f, g) => self.st.send_gauged(id, f, g),
            Command::SendPeer(name, f) => {
                if let Some(id) = self.st.peer_conn(&name) {
                    self.st.send_owned(id, f);
                }
            }
            Command::Close(id) => self.st.request_close(id, CloseReason::Local),
            Command::AddPeer(p) => self.st.add_peer(p),
            Command::RemovePeer(name) => {
                if let Some(p) = self.st.peers.remove(&name)
                    && let Some(id) = p.conn
                {
                    self.st.request_close(id, CloseReason::PeerRemoved);
                }
            }
            Command::Post(svc, msg) => self.post(svc, msg),
            Command::Stop => {
                self.st.stopping = true;
                self.st.peers.clear();
                let ids: Vec<ConnId> = self.st.conns.keys().copied().collect();
                for id in ids {
                    self.st.request_close(id, CloseReason::Stopping);
                }
            }
        }
        self.settle();
    }

    fn post(&mut self, svc: ServiceId, msg: Box<dyn Any + Send>) {
        self.with_service(svc, |s, ctx| s.on_message(ctx, msg));
    }

    /// When the reactor must wake up next.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.st.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Fires every timer due by now.
    pub(crate) fn run_timers(&mut self) {
        let now = Instant::now();
        self.st.now = now;
        while let Some(Reverse((t, _))) = self.st.timers.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((due, key))) = self.st.timers.pop() else {
                break;
            };
            match key {
                TimerKey::Conn(id) => {
                    if let Some(c) = self.st.conns.get_mut(&id)
                        && c.check_at == Some(due)
                    {
                        c.check_at = None;
                        self.st.check_conn(id);
                    }
                }
                TimerKey::Peer(name) => self.st.retry_peer(&name),
                TimerKey::User(tid) => {
                    let Some(t) = self.st.user_timers.get(&tid) else {
                        continue;
                    };
                    let svc = t.service;
                    match t.every {
                        Some(every) => {
                            let next = (due + every).max(now);
                            self.st.timers.push(Reverse((next, TimerKey::User(tid))));
                        }
                        None => {
                            self.st.user_timers.remove(&tid);
                        }
                    }
                    self.with_service(svc, |s, ctx| s.on_timer(ctx, tid));
                }
            }
            self.settle();
        }
    }

    /// True once stopping and every connection is gone.
    pub(crate) fn finished(&self) -> bool {
        self.st.stopping && self.st.conns.is_empty()
    }
}

impl State {
    fn new_conn(&mut self, origin: ConnOrigin, remote: SocketAddr, stage: Stage) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        let deadline = self.now + self.settings.limits.auth_timeout;
        self.conns.insert(
            id,
            Conn {
                info: ConnInfo {
                    id,
                    origin,
                    remote,
                    remote_name: String::new(),
                },
                stage,
                dec: FrameDecoder::new(self.settings.limits.max_frame),
                out: Vec::new(),
                sealed: VecDeque::new(),
                sealed_bytes: 0,
                out_peak: 0,
                gauge: None,
                in_dirty: false,
                deadline,
                check_at: None,
                last_rx: self.now,
                last_tx: self.now,
            },
        );
        self.schedule_check(id, deadline);
        StatsCell::add(&self.stats.open, 1);
        id
    }

    fn begin_handshake(&mut self, id: ConnId, role: Role) {
        let (hs, hello) = Handshake::start(role, &self.settings.nodename);
        let deadline = self.now + self.settings.limits.auth_timeout;
        if let Some(c) = self.conns.get_mut(&id) {
            c.stage = Stage::Handshaking(hs);
            c.deadline = deadline;
        }
        self.schedule_check(id, deadline);
        self.write(id, &hello);
    }

    /// Appends an encoded frame to a connection's output (any stage).
    fn write(&mut self, id: ConnId, f: &Frame) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        f.encode_into(&mut c.out);
        self.queued(id);
    }

    /// [`State::write`] for a frame the engine owns: a large payload is not copied but
    /// queued as it is, after the header.
    fn write_owned(&mut self, id: ConnId, f: Frame) {
        if f.payload.len() < ZERO_COPY_MIN {
            return self.write(id, &f);
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        f.encode_header_into(&mut c.out);
        let head = std::mem::take(&mut c.out);
        c.sealed_bytes += head.len() + f.payload.len();
        c.sealed.push_back(head);
        c.sealed.push_back(f.payload);
        self.queued(id);
    }

    /// Bookkeeping after a frame was queued on `id`.
    fn queued(&mut self, id: ConnId) {
        let max = self.settings.limits.max_out_buffer;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.last_tx = self.now;
        StatsCell::add(&self.stats.frames_out, 1);
        if !c.in_dirty {
            c.in_dirty = true;
            self.dirty.push(id);
        }
        if c.out.len() + c.sealed_bytes > max {
            self.reject(id, RejectReason::Slow);
        }
    }

    pub(crate) fn send(&mut self, id: ConnId, f: &Frame) -> bool {
        if !self.is_open(id) {
            return false;
        }
        self.write(id, f);
        true
    }

    /// [`State::send`] of a frame the engine owns (see [`State::write_owned`]).
    fn send_owned(&mut self, id: ConnId, f: Frame) {
        if self.is_open(id) {
            self.write_owned(id, f);
        }
    }

    /// [`State::send`] for a sender pacing itself with `g`: the connection tells `g` of
    /// its writes from now on (a later sender's gauge replaces an earlier one's). A frame
    /// for a connection that is not open is dropped and counted as gone, so its sender
    /// never waits for it.
    fn send_gauged(&mut self, id: ConnId, f: Frame, g: Arc<OutGauge>) {
        if !self.is_open(id) {
            g.wrote(f.wire_len());
            g.close();
            return;
        }
        if let Some(c) = self.conns.get_mut(&id)
            && !c.gauge.as_ref().is_some_and(|old| Arc::ptr_eq(old, &g))
        {
            let old = c.gauge.replace(g);
            if let Some(old) = old {
                old.close();
            }
        }
        self.write_owned(id, f);
    }

    /// Marks a dirty entry consumed (the backend took it off `dirty`).
    pub(crate) fn undirty(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.in_dirty = false;
        }
    }

    fn is_open(&self, id: ConnId) -> bool {
        matches!(
            self.conns.get(&id),
            Some(Conn {
                stage: Stage::Open,
                ..
            })
        )
    }

    pub(crate) fn open_info(&self, id: ConnId) -> Option<&ConnInfo> {
        match self.conns.get(&id) {
            Some(
                c @ Conn {
                    stage: Stage::Open, ..
                },
            ) => Some(&c.info),
            _ => None,
        }
    }

    pub(crate) fn open_infos(&self) -> Vec<ConnInfo> {
        let mut v: Vec<ConnInfo> = self
            .conns
            .values()
            .filter(|c| matches!(c.stage, Stage::Open))
            .map(|c| c.info.clone())
            .collect();
        v.sort_by_key(|i| i.id);
        v
    }

    pub(crate) fn peer_conn(&self, name: &str) -> Option<ConnId> {
        self.peers
            .get(name)
            .and_then(|p| p.conn)
            .filter(|id| self.is_open(*id))
    }

    fn reject(&mut self, id: ConnId, r: RejectReason) {
        if self.conns.contains_key(&id) && !self.pending_close.iter().any(|(x, _)| *x == id) {
            self.stats.reject(r);
        }
        self.request_close(id, CloseReason::Rejected(r));
    }

    pub(crate) fn request_close(&mut self, id: ConnId, reason: CloseReason) {
        if self.conns.contains_key(&id) && !self.pending_close.iter().any(|(x, _)| *x == id) {
            self.pending_close.push((id, reason));
        }
    }

    /// Removes a connection; returns its info and whether services knew it.
    fn finish_close(&mut self, id: ConnId, reason: &CloseReason) -> Option<(ConnInfo, bool)> {
        let c = self.conns.remove(&id)?;
        if let Some(g) = &c.gauge {
            g.close();
        }
        self.stats
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.closed.push(id);
        tracing::debug!(conn = %id, remote = %c.info.remote, ?reason, "engine: connection closed");
        if let ConnOrigin::Peer { name } = &c.info.origin
            && let Some(p) = self.peers.get_mut(name)
            && p.conn == Some(id)
        {
            p.conn = None;
            let wait = jitter(p.backoff);
            p.backoff = (p.backoff * 2).min(self.settings.backoff.max);
            self.timers
                .push(Reverse((self.now + wait, TimerKey::Peer(name.clone()))));
        }
        Some((c.info, matches!(c.stage, Stage::Open)))
    }

    /// Decodes and handles received bytes; returns service frames to deliver.
    fn ingest(&mut self, id: ConnId, bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        let now = self.now;
        let Some(c) = self.conns.get_mut(&id) else {
            return out;
        };
        c.dec.extend(bytes);
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return out;
            };
            let f = match c.dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return out,
                Err(e) => {
                    let r = match e {
                        FrameError::Oversized { .. } => RejectReason::Oversized,
                        FrameError::BadMagic { .. } | FrameError::BadVersion { .. } => {
                            RejectReason::Malformed
                        }
                    };
                    tracing::debug!(conn = %id, remote = %c.info.remote, error = %e, "engine: rejecting");
                    self.reject(id, r);
                    return Vec::new();
                }
            };
            StatsCell::add(&self.stats.frames_in, 1);
            c.last_rx = now;
            match &mut c.stage {
                Stage::Connecting => {
                    self.reject(id, RejectReason::Malformed);
                    return Vec::new();
                }
                Stage::Handshaking(hs) => match hs.on_frame(&self.settings.key, &f) {
                    Ok(Step::Send(reply)) => self.write(id, &reply),
                    Ok(Step::Done { peer_name }) => {
                        c.stage = Stage::Open;
                        c.info.remote_name = peer_name;
                        StatsCell::add(&self.stats.authenticated, 1);
                        if let ConnOrigin::Peer { name } = &c.info.origin
                            && let Some(p) = self.peers.get_mut(name)
                        {
                            p.backoff = self.settings.backoff.min;
                        }
                        self.pending_open.push(id);
                    }
                    Err(e) => {
                        use super::auth::AuthError;
                        let r = match e {
                            AuthError::Unauthenticated { .. } => RejectReason::Unauthenticated,
                            AuthError::Malformed { .. } => RejectReason::Malformed,
                            AuthError::BadProof => RejectReason::BadAuth,
                        };
                        tracing::debug!(conn = %id, remote = %c.info.remote, error = %e, "engine: handshake failed");
                        self.reject(id, r);
                        return Vec::new();
                    }
                },
                Stage::Open => {
                    if f.service == ServiceId::ENGINE {
                        if f.kind != kind::PING || !f.payload.is_empty() {
                            self.reject(id, RejectReason::Malformed);
                            return Vec::new();
                        }
                    } else if !self.registered[f.service.0 as usize] {
                        self.reject(id, RejectReason::Malformed);
                        return Vec::new();
                    } else {
                        out.push(f);
                    }
                }
            }
        }
    }

    /// A connection's deadline check: auth deadline, idle deadline, keepalive.
    fn check_conn(&mut self, id: ConnId) {
        let now = self.now;
        let idle = self.settings.limits.idle_timeout;
        let keepalive = idle / 3;
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        match c.stage {
            Stage::Connecting if now >= c.deadline => self.request_close(
                id,
                CloseReason::ConnectFailed {
                    error: "connect timed out".into(),
                },
            ),
            Stage::Handshaking(_) if now >= c.deadline => self.reject(id, RejectReason::Slow),
            Stage::Connecting | Stage::Handshaking(_) => {
                let d = c.deadline;
                self.schedule_check(id, d);
            }
            Stage::Open => {
                if now >= c.last_rx + idle {
                    self.reject(id, RejectReason::Slow);
                    return;
                }
                if now >= c.last_tx + keepalive {
                    if let Some(c) = self.conns.get_mut(&id) {
                        release_idle(&mut c.out, &mut c.out_peak);
                    }
                    self.write(id, &Frame::new(ServiceId::ENGINE, kind::PING, Vec::new()));
                }
                if let Some(c) = self.conns.get(&id) {
                    let next = (c.last_rx + idle).min(c.last_tx + keepalive).max(now);
                    self.schedule_check(id, next);
                }
            }
        }
    }

    /// Keeps one deadline check per connection, at the earliest time asked for.
    fn schedule_check(&mut self, id: ConnId, at: Instant) {
        if let Some(c) = self.conns.get_mut(&id)
            && c.check_at.is_none_or(|t| at < t)
        {
            c.check_at = Some(at);
            self.timers.push(Reverse((at, TimerKey::Conn(id))));
        }
    }

    fn add_peer(&mut self, p: PeerSpec) {
        if self.stopping {
            return;
        }
        if let Some(old) = self.peers.remove(&p.name)
            && let Some(id) = old.conn
        {
            self.request_close(id, CloseReason::PeerRemoved);
        }
        let name = p.name.clone();
        self.peers.insert(
            p.name,
            Peer {
                addr: p.addr,
                conn: None,
                backoff: self.settings.backoff.min,
            },
        );
        self.retry_peer(&name);
    }

    fn retry_peer(&mut self, name: &str) {
        let Some(p) = self.peers.get(name) else {
            return;
        };
        if p.conn.is_some() || self.stopping {
            return;
        }
        let addr = p.addr;
        let id = self.new_conn(
            ConnOrigin::Peer {
                name: name.to_owned(),
            },
            addr,
            Stage::Connecting,
        );
        if let Some(p) = self.peers.get_mut(name) {
            p.conn = Some(id);
        }
        self.connects.push((id, addr));
    }

    pub(crate) fn set_timer(
        &mut self,
        service: ServiceId,
        after: Duration,
        every: Option<Duration>,
    ) -> TimerId {
        let id = TimerId(self.next_timer);
        self.next_timer += 1;
        self.user_timers.insert(
            id,
            UserTimer {
                service,
                every: every.filter(|d| !d.is_zero()),
            },
        );
        self.timers
            .push(Reverse((self.now + after, TimerKey::User(id))));
        id
    }

    pub(crate) fn cancel_timer(&mut self, id: TimerId) {
        self.user_timers.remove(&id);
    }
}

/// ±25 % so peers that lost the same node do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let f: f64 = 0.75 + rand::random::<f64>() * 0.5;
    d.mul_f64(f)
}

/// [`Core::take_out`] on a connection's queue `out`: what to write now. `spare` (the
/// written buffer) becomes the queue's buffer unless the queue already has a larger one,
/// or it is more than four times `peak` (and over [`KEEP_IDLE_OUT`]): `peak` follows the
/// largest output taken at once, decaying by 1/[`PEAK_DECAY`] per take, so a busy
/// connection whose burst is over (a subscription tailing the log after pulling a
/// backlog) lets its burst-sized buffers go instead of keeping two of them for good.
fn swap_out(out: &mut Vec<u8>, peak: &mut usize, mut spare: Vec<u8>) -> Vec<u8> {
    *peak = out.len().max(*peak - *peak / PEAK_DECAY);
    spare.clear();
    if !worth_keeping(&spare, *peak) {
        spare = Vec::new();
    }
    if out.is_empty() {
        if out.capacity() < spare.capacity() {
            *out = spare;
        }
        return Vec::new();
    }
    std::mem::replace(out, spare)
}

/// `spare` (a written buffer) becomes the buffer frames are queued into when `out` holds
/// nothing and is smaller, within [`swap_out`]'s bound; otherwise it is dropped.
fn adopt_spare(out: &mut Vec<u8>, peak: usize, mut spare: Vec<u8>) {
    if out.is_empty() && spare.capacity() > out.capacity() && worth_keeping(&spare, peak) {
        spare.clear();
        *out = spare;
    }
}

/// A written buffer is kept for reuse unless it is over [`KEEP_IDLE_OUT`] and over four
/// times the connection's recent peak output.
fn worth_keeping(buf: &Vec<u8>, peak: usize) -> bool {
    buf.capacity() <= KEEP_IDLE_OUT || buf.capacity() <= 4 * peak
}

/// A connection quiet for a keepalive interval lets a large kept buffer go, and forgets
/// its peak, so the backend's written buffer goes too when it comes back as the spare.
fn release_idle(out: &mut Vec<u8>, peak: &mut usize) {
    *peak = 0;
    if out.is_empty() && out.capacity() > KEEP_IDLE_OUT {
        *out = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Backoff, ClusterKey, Limits, frame::HEADER_LEN};

    /// A core with one open connection, nothing else.
    fn core_with_open_conn() -> (Core, ConnId) {
        let settings = EngineSettings {
            nodename: "t".into(),
            key: ClusterKey::from_bytes(b"core-unit-test-key-0123456789").expect("key"),
            limits: Limits::default(),
            backoff: Backoff::default(),
        };
        let mut core = Core::new(
            Arc::new(settings),
            Arc::new(StatsCell::default()),
            Vec::new(),
            Vec::new(),
        );
        let addr: SocketAddr = "192.0.2.1:4802".parse().expect("addr");
        let id = core
            .st
            .new_conn(ConnOrigin::Inbound { listener: addr }, addr, Stage::Open);
        (core, id)
    }

    /// Drains a connection's output as a backend does; the bytes and the buffers taken.
    fn drain(core: &mut Core, id: ConnId) -> (Vec<u8>, Vec<*const u8>) {
        let (mut wire, mut bufs, mut spare) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let b = core.take_out(id, std::mem::take(&mut spare));
            if b.is_empty() {
                return (wire, bufs);
            }
            wire.extend_from_slice(&b);
            bufs.push(b.as_ptr());
            spare = b;
        }
    }

    #[test]
    fn a_large_frame_goes_out_from_its_own_buffer_in_order() {
        let (mut core, id) = core_with_open_conn();
        let f = |kind: u8, len: usize| Frame::new(ServiceId::LOG, kind, vec![kind; len]);
        let frames = [
            f(1, 10),
            f(2, ZERO_COPY_MIN),
            f(3, ZERO_COPY_MIN - 1),
            f(4, 3 * ZERO_COPY_MIN),
            f(5, 0),
        ];
        let want: Vec<u8> = frames.iter().flat_map(|x| x.encode()).collect();
        let large: Vec<*const u8> = [&frames[1], &frames[3]]
            .iter()
            .map(|x| x.payload.as_ptr())
            .collect();
        for x in frames {
            core.command(Command::Send(id, x));
        }
        let (wire, bufs) = drain(&mut core, id);
        assert_eq!(wire.len(), want.len());
        assert!(wire == want, "bytes out of order or changed");
        for p in large {
            assert!(bufs.contains(&p), "a large payload was copied");
        }
        // Small frames queued after a large one follow it; nothing is left.
        assert!(drain(&mut core, id).0.is_empty());
        core.command(Command::Send(id, f(6, ZERO_COPY_MIN)));
        core.command(Command::Send(id, f(7, 5)));
        let (wire, _) = drain(&mut core, id);
        assert_eq!(wire.len(), 2 * HEADER_LEN + ZERO_COPY_MIN + 5);
        assert_eq!(wire[wire.len() - 5..], [7u8; 5]);
    }

    #[test]
    fn written_buffers_are_reused_and_let_go_once_quiet() {
        let big = 48 << 20;
        let mut peak = 0;
        // Output queued: it goes out, and the written buffer (any size) takes its place.
        let mut out = vec![7u8; big / 2];
        let mut written = Vec::with_capacity(big);
        written.extend_from_slice(&[1, 2, 3]);
        let ptr = written.as_ptr();
        let got = swap_out(&mut out, &mut peak, written);
        assert_eq!(got.len(), big / 2);
        assert!(out.is_empty(), "the reused buffer starts empty");
        assert_eq!(
            out.as_ptr(),
            ptr,
            "the written buffer itself, no new allocation"
        );
        // Nothing queued: nothing to write, and the larger buffer stays for the next burst.
        let got = swap_out(&mut out, &mut peak, got);
        assert!(got.is_empty());
        assert_eq!(out.as_ptr(), ptr);
        let mut small = Vec::with_capacity(64);
        let mut small_peak = 0;
        assert!(swap_out(&mut small, &mut small_peak, Vec::with_capacity(1 << 20)).is_empty());
        assert!(
            small.capacity() >= 1 << 20,
            "up to KEEP_IDLE_OUT is kept regardless"
        );
        // Quiet for a keepalive interval: only a small buffer stays, and the backend's
        // written buffer goes when it comes back with the next frame (a PING).
        release_idle(&mut out, &mut peak);
        assert_eq!(out.capacity(), 0);
        out.extend_from_slice(b"ping");
        let sent = swap_out(&mut out, &mut peak, Vec::with_capacity(big));
        assert_eq!(sent, b"ping");
        assert!(out.capacity() <= KEEP_IDLE_OUT, "{}", out.capacity());
        release_idle(&mut small, &mut small_peak);
        assert!(small.capacity() >= 1 << 20, "up to KEEP_IDLE_OUT is kept");
        let mut busy = Vec::with_capacity(big);
        busy.push(1);
        release_idle(&mut busy, &mut peak);
        assert!(
            busy.capacity() >= big,
            "a buffer with queued output is never dropped"
        );
    }

    #[test]
    fn a_busy_connection_lets_its_burst_buffer_go_once_the_burst_is_over() {
        let (mut out, mut peak) = (Vec::new(), 0);
        let mut written = Vec::new();
        // A burst: 40 MiB taken at once, its buffer goes round.
        out.resize(40 << 20, 1);
        written = swap_out(&mut out, &mut peak, std::mem::take(&mut written));
        out.resize(40 << 20, 1);
        written = swap_out(&mut out, &mut peak, std::mem::take(&mut written));
        assert!(out.capacity() >= 40 << 20, "kept during the burst");
        // Then small frames, still busy: within ~1,000 takes the big buffers are gone.
        let mut most = 0;
        for i in 0..2000 {
            out.extend_from_slice(&[0u8; 1000]);
            written = swap_out(&mut out, &mut peak, std::mem::take(&mut written));
            if i >= 1500 {
                most = most.max(out.capacity()).max(written.capacity());
            }
        }
        assert!(most <= KEEP_IDLE_OUT, "{most}");
    }
}
