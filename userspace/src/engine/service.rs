//! What services (replication, logs) see: connection ids and infos, the [`Service`]
//! trait the reactor calls, and [`Ctx`], through which a service acts on the reactor.

use std::{
    any::Any,
    fmt,
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{core::State, frame::Frame, frame::ServiceId, stats::RejectReason};

/// A connection, unique for the life of the engine (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// How a connection came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnOrigin {
    /// Accepted on this listener.
    Inbound { listener: SocketAddr },
    /// Our outbound link to a configured peer.
    Peer { name: String },
}

/// What a service knows about an authenticated connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub id: ConnId,
    pub origin: ConnOrigin,
    pub remote: SocketAddr,
    /// The nodename the remote gave in its (authenticated) HELLO; empty before.
    pub remote_name: String,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The engine closed it for misbehaving (and counted it).
    Rejected(RejectReason),
    /// The remote closed it.
    RemoteClosed,
    /// A socket error.
    Io { error: String },
    /// An outbound connect failed or timed out.
    ConnectFailed { error: String },
    /// A service or a handle asked for it.
    Local,
    /// The peer was removed from the engine.
    PeerRemoved,
    /// The engine is stopping.
    Stopping,
}

/// A service timer, owned by the service that set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId(pub u64);

/// A protocol served over port 4802 after authentication. All calls happen on the
/// reactor thread: keep them short and never block.
pub trait Service: Send + 'static {
    /// Called once when the engine starts (set periodic timers here).
    fn on_start(&mut self, _ctx: &mut Ctx<'_>) {}
    /// A connection (inbound or peer link) finished its handshake: the link is up.
    fn on_open(&mut self, _ctx: &mut Ctx<'_>, _conn: &ConnInfo) {}
    /// A frame with this service's id arrived on an authenticated connection.
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, frame: Frame);
    /// An authenticated connection closed: the link is down.
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, _conn: &ConnInfo, _reason: &CloseReason) {}
    /// A timer set with [`Ctx::set_timer`] fired.
    fn on_timer(&mut self, _ctx: &mut Ctx<'_>, _timer: TimerId) {}
    /// A message posted from another thread with [`super::EngineHandle::post`].
    fn on_message(&mut self, _ctx: &mut Ctx<'_>, _msg: Box<dyn Any + Send>) {}
}

/// A service's view of the reactor during a callback.
pub struct Ctx<'a> {
    pub(crate) st: &'a mut State,
    pub(crate) service: ServiceId,
}

impl Ctx<'_> {
    /// Queues a frame on an authenticated connection; `false` if it is not open (closed,
    /// or still authenticating). A connection whose unsent output exceeds the limit is
    /// closed as slow.
    pub fn send(&mut self, conn: ConnId, frame: &Frame) -> bool {
        self.st.send(conn, frame)
    }

    /// Closes a connection (pending output is discarded).
    pub fn close(&mut self, conn: ConnId) {
        self.st.request_close(conn, CloseReason::Local);
    }

    /// A timer firing after `after`, then every `every` if given.
    pub fn set_timer(&mut self, after: Duration, every: Option<Duration>) -> TimerId {
        self.st.set_timer(self.service, after, every)
    }

    pub fn cancel_timer(&mut self, t: TimerId) {
        self.st.cancel_timer(t);
    }

    /// An authenticated connection's info.
    pub fn conn(&self, id: ConnId) -> Option<&ConnInfo> {
        self.st.open_info(id)
    }

    /// All authenticated connections.
    pub fn open_conns(&self) -> Vec<ConnInfo> {
        self.st.open_infos()
    }

    /// The authenticated link to a configured peer, if up.
    pub fn peer_conn(&self, name: &str) -> Option<ConnId> {
        self.st.peer_conn(name)
    }

    /// This node's name, as sent in handshakes.
    pub fn nodename(&self) -> &str {
        &self.st.settings.nodename
    }

    /// The reactor's clock for this callback.
    pub fn now(&self) -> Instant {
        self.st.now
    }

    /// The service this context belongs to.
    pub fn service(&self) -> ServiceId {
        self.service
    }
}
