//! The engine serving port 4802: one reactor thread (io_uring, or mio where io_uring is
//! unavailable) that accepts and authenticates connections, keeps outbound peer links up,
//! runs timers, and hands frames to the services (replication, logs) registered on it.
//!
//! Wire format, handshake, limits and counters: `docs/engine.md`.

pub mod auth;
pub mod client;
mod core;
pub mod frame;
pub mod listen;
pub mod metrics;
mod mio_backend;
pub mod outflow;
pub mod select;
pub mod service;
pub mod stats;
mod uring_backend;

use std::{
    any::Any,
    net::SocketAddr,
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::Duration,
};

pub use auth::{ClusterKey, KeyError};
pub use frame::{DEFAULT_MAX_FRAME, Frame, FrameError, ServiceId};
pub use listen::{ListenerSpec, listeners_from_config};
pub use outflow::OutGauge;
pub use select::{BackendChoice, BackendKind, Selection};
pub use service::{CloseReason, ConnId, ConnInfo, ConnOrigin, Ctx, Service, TimerId};
pub use stats::{EngineStats, RejectCounts, RejectReason, UringStats};

use stats::StatsCell;

/// Limits that protect the daemon from hostile or broken clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload accepted.
    pub max_frame: u32,
    /// Connections open at once (inbound and outbound); more are accepted and closed.
    pub max_connections: usize,
    /// From accept/connect to a verified proof.
    pub auth_timeout: Duration,
    /// An authenticated connection silent this long is closed; keepalives go out every
    /// third of it, so a live peer never hits it.
    pub idle_timeout: Duration,
    /// Unsent output beyond this closes the connection as slow (it is not reading).
    pub max_out_buffer: usize,
}

/// Default unsent-output limit per connection: a log subscriber's largest window (64 MiB)
/// plus the record frame that overshoots it and one more, so a subscriber that reads slowly
/// but within its window is never closed as slow (`log::service` asserts this at compile
/// time).
pub const DEFAULT_MAX_OUT_BUFFER: usize = (64 << 20) + 2 * DEFAULT_MAX_FRAME as usize;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
            max_connections: 1024,
            auth_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_out_buffer: DEFAULT_MAX_OUT_BUFFER,
        }
    }
}

/// Reconnect pacing for peer links: `min` after the first failure, doubling to `max`,
/// ±25 % jitter; reset once a link authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// An outbound peer link: kept connected and authenticated until removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The owner's name for the peer (services see it in [`ConnOrigin::Peer`]).
    pub name: String,
    pub addr: SocketAddr,
}

/// What the reactor thread needs and never changes.
#[derive(Debug)]
pub struct EngineSettings {
    pub nodename: String,
    pub key: ClusterKey,
    pub limits: Limits,
    pub backoff: Backoff,
}

/// Everything needed to start an engine.
#[derive(Debug)]
pub struct EngineConfig {
    /// Sent in handshakes; peers see it as [`ConnInfo::remote_name`].
    pub nodename: String,
    pub key: ClusterKey,
    pub listeners: Vec<ListenerSpec>,
    /// Overridden by `DURAPLANE_ENGINE` when set.
    pub backend: BackendChoice,
    pub limits: Limits,
    pub backoff: Backoff,
    pub peers: Vec<PeerSpec>,
}

impl EngineConfig {
    pub fn new(nodename: impl Into<String>, key: ClusterKey) -> Self {
        EngineConfig {
            nodename: nodename.into(),
            key,
            listeners: Vec::new(),
            backend: BackendChoice::Auto,
            limits: Limits::default(),
            backoff: Backoff::default(),
            peers: Vec::new(),
        }
    }
}

/// Why the engine could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine backend: {0}")]
    Select(#[from] select::SelectError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("service id {id} is registered twice (or is the engine's own 0)")]
    ServiceId { id: u8 },
    #[error("engine {backend} backend setup failed ({what}): {source}")]
    Setup {
        backend: BackendKind,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("engine {backend} reactor failed ({what}): {source}")]
    Reactor {
        backend: BackendKind,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("engine thread: {what}")]
    Thread { what: String },
    #[error("the engine has stopped")]
    Stopped,
}

/// Requests from other threads, executed on the reactor.
pub(crate) enum Command {
    Send(ConnId, Frame),
    SendGauged(ConnId, Frame, Arc<OutGauge>),
    SendPeer(String, Frame),
    Close(ConnId),
    AddPeer(PeerSpec),
    RemovePeer(String),
    Post(ServiceId, Box<dyn Any + Send>),
    Stop,
}

/// Wakes the reactor out of its wait.
pub(crate) trait Wake: Send + Sync {
    fn wake(&self);
}

/// A cloneable, thread-safe remote control for the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    waker: Arc<dyn Wake>,
    stats: Arc<StatsCell>,
    backend: BackendKind,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("backend", &self.backend)
            .finish()
    }
}

impl EngineHandle {
    fn cmd(&self, c: Command) -> Result<(), EngineError> {
        self.tx.send(c).map_err(|_| EngineError::Stopped)?;
        self.waker.wake();
        Ok(())
    }

    /// Queues a frame on an authenticated connection (dropped if it is not open).
    pub fn send(&self, conn: ConnId, frame: Frame) -> Result<(), EngineError> {
        self.cmd(Command::Send(conn, frame))
    }

    /// [`EngineHandle::send`] for a sender that paces itself to the socket: `gauge` counts
    /// the frame now and the connection's writes from now on (see [`OutGauge`]).
    pub fn send_gauged(
        &self,
        conn: ConnId,
        frame: Frame,
        gauge: &Arc<OutGauge>,
    ) -> Result<(), EngineError> {
        gauge.posted(frame.wire_len());
        self.cmd(Command::SendGauged(conn, frame, gauge.clone()))
    }

    /// Queues a frame on the link to a configured peer (dropped if the link is down).
    pub fn send_to_peer(&self, peer: &str, frame: Frame) -> Result<(), EngineError> {
        self.cmd(Command::SendPeer(peer.to_owned(), frame))
    }

    pub fn close(&self, conn: ConnId) -> Result<(), EngineError> {
        self.cmd(Command::Close(conn))
    }

    /// Adds (or re-points) a peer link.
    pub fn add_peer(&self, peer: PeerSpec) -> Result<(), EngineError> {
        self.cmd(Command::AddPeer(peer))
    }

    /// Drops a peer link and stops reconnecting.
    pub fn remove_peer(&self, name: &str) -> Result<(), EngineError> {
        self.cmd(Command::RemovePeer(name.to_owned()))
    }

    /// Hands a message to a service's [`Service::on_message`] on the reactor thread.
    pub fn post(&self, service: ServiceId, msg: Box<dyn Any + Send>) -> Result<(), EngineError> {
        self.cmd(Command::Post(service, msg))
    }

    /// Closes every connection and ends the reactor thread.
    pub fn stop(&self) -> Result<(), EngineError> {
        self.cmd(Command::Stop)
    }

    pub fn stats(&self) -> EngineStats {
        self.stats.snapshot(self.backend)
    }

    pub fn backend(&self) -> BackendKind {
        self.backend
    }
}

/// A running engine. Dropping it stops the reactor and waits for it.
pub struct Engine {
    handle: EngineHandle,
    local_addrs: Vec<SocketAddr>,
    selection: Selection,
    thread: Option<JoinHandle<Result<(), EngineError>>>,
}

/// A backend's reactor, ready to run on the engine thread.
type Runner = Box<dyn FnOnce(Boot) -> Result<(), EngineError> + Send>;

/// Startup state handed to a backend.
pub(crate) struct Boot {
    pub listeners: Vec<(std::net::TcpListener, ListenerSpec)>,
    pub core: core::Core,
    pub rx: mpsc::Receiver<Command>,
}

impl Engine {
    /// Binds the listeners (so address errors come back here), picks the backend and
    /// starts the reactor thread.
    pub fn start(
        cfg: EngineConfig,
        services: Vec<(ServiceId, Box<dyn Service>)>,
    ) -> Result<Engine, EngineError> {
        let env = std::env::var(select::ENV_VAR).ok();
        let selection = select::select(cfg.backend, env.as_deref(), select::probe_system)?;
        tracing::info!(backend = %selection.kind, reason = %selection.reason, "engine: backend chosen");
        let mut seen = [false; 256];
        for (id, _) in &services {
            if id.0 == 0 || seen[id.0 as usize] {
                return Err(EngineError::ServiceId { id: id.0 });
            }
            seen[id.0 as usize] = true;
        }
        let mut listeners = Vec::new();
        let mut local_addrs = Vec::new();
        for spec in cfg.listeners {
            let l = listen::bind(&spec).map_err(|source| EngineError::Listen {
                addr: spec.addr,
                source,
            })?;
            let local = l.local_addr().map_err(|source| EngineError::Listen {
                addr: spec.addr,
                source,
            })?;
            local_addrs.push(local);
            let spec = ListenerSpec {
                addr: local,
                ..spec
            };
            listeners.push((l, spec));
        }
        let settings = Arc::new(EngineSettings {
            nodename: cfg.nodename,
            key: cfg.key,
            limits: cfg.limits,
            backoff: cfg.backoff,
        });
        let stats = Arc::new(StatsCell::default());
        let (tx, rx) = mpsc::channel();
        let kind = selection.kind;
        let (waker, runner): (Arc<dyn Wake>, Runner) = match kind {
            BackendKind::Mio => {
                let (w, r) = mio_backend::prepare()?;
                (w, Box::new(move |b| r.run(b)))
            }
            BackendKind::IoUring => {
                let (w, r) = uring_backend::prepare(stats.clone())?;
                (w, Box::new(move |b| r.run(b)))
            }
        };
        let peers = cfg.peers;
        let stats2 = stats.clone();
        let thread = std::thread::Builder::new()
            .name("duraplane-engine".into())
            .spawn(move || {
                let core = core::Core::new(settings, stats2, services, peers);
                runner(Boot {
                    listeners,
                    core,
                    rx,
                })
            })
            .map_err(|e| EngineError::Thread {
                what: format!("spawn: {e}"),
            })?;
        Ok(Engine {
            handle: EngineHandle {
                tx,
                waker,
                stats,
                backend: kind,
            },
            local_addrs,
            selection,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// The bound addresses, in listener order (ephemeral ports resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Which backend runs, and why.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    pub fn stats(&self) -> EngineStats {
        self.handle.stats()
    }

    /// Stops the reactor and waits for it.
    pub fn stop(mut self) -> Result<(), EngineError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), EngineError> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.handle.stop();
        t.join().map_err(|_| EngineError::Thread {
            what: "reactor thread panicked".into(),
        })?
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "engine: stopped with an error");
        }
    }
}
