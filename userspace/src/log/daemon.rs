//! Logs as a daemon capability: opens every `cluster://` destination of `ec_logger` /
//! `bounce_logger` at startup, writes the daemon's own `paniclog` (error lines),
//! `rejectlog` (SYNs dropped at the NIC, tracing target `rejectlog`) and `mainlog`
//! (cluster events) into them, serves the local append socket, `cluster show logs`, and
//! provides the port-4802 log service for the shared engine.
//!
//! Local socket protocol and record format: `docs/logs.md` ("Local appends").

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::{self, Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixListener, net::UnixStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};
use tracing::{Event, Level, Subscriber, field::Field};
use tracing_subscriber::{Layer, layer::Context};

use super::{
    AppendTicket, Offset, Stream, StreamOptions, frame,
    service::{LogService, LogServiceHandle, Published},
};
use crate::{
    config::{Config, LogDestination},
    daemon::Services,
    engine::{EngineHandle, Service, ServiceId},
};

/// Largest record accepted on the local socket.
pub const MAX_LOCAL_RECORD: u32 = 16 << 20;
/// Local connections served at once; more are answered with an error and closed.
const MAX_LOCAL_CONNS: usize = 256;

/// Errors of the local append client and server.
#[derive(Debug, thiserror::Error)]
pub enum LocalLogError {
    #[error("log socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("log socket {path}: the daemon refused the append to {stream:?}: {message}")]
    Refused {
        path: PathBuf,
        stream: String,
        message: String,
    },
    #[error("stream name {name:?} is empty or longer than 255 bytes")]
    BadName { name: String },
    #[error("record of {len} bytes exceeds the local limit of {MAX_LOCAL_RECORD} bytes")]
    TooLarge { len: usize },
    #[error("no cluster:// stream is configured")]
    NoStreams,
}

/// Where the local socket of a daemon with this control socket lives: next to it, named
/// after it (`control.sock` → `control.log.sock`), so daemons whose control sockets share
/// a directory never share a log socket.
pub fn local_socket_path(control_socket: &Path) -> PathBuf {
    let stem = control_socket
        .file_stem()
        .map_or_else(|| "duraplane".into(), |s| s.to_string_lossy().into_owned());
    control_socket
        .parent()
        .unwrap_or(Path::new("/"))
        .join(format!("{stem}.log.sock"))
}

/// A connection to the daemon's local log socket (an MTA logging into `cluster://`).
#[derive(Debug)]
pub struct LocalLogClient {
    s: UnixStream,
    /// Answers, read through a buffer (a pipeline's answers arrive many per read).
    answers: io::BufReader<UnixStream>,
    path: PathBuf,
}

impl LocalLogClient {
    pub fn connect(path: &Path) -> Result<LocalLogClient, LocalLogError> {
        let io = |source| LocalLogError::Io {
            path: path.to_owned(),
            source,
        };
        let s = UnixStream::connect(path).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io)?;
        let answers = io::BufReader::new(s.try_clone().map_err(io)?);
        Ok(LocalLogClient {
            s,
            answers,
            path: path.to_owned(),
        })
    }

    /// Appends one record to the named stream; returns its offset once it is durable.
    pub fn append(&mut self, stream: &str, record: &[u8]) -> Result<Offset, LocalLogError> {
        let mut req = Vec::new();
        encode_request(&mut req, stream, record)?;
        self.send(&req)?;
        self.answer(stream)
    }

    /// Appends `records` in order with up to [`LOCAL_CLIENT_WINDOW`] of them in flight, so
    /// they share the daemon's commits; one result per record, in order, each `Ok` only
    /// once that record is durable.
    pub fn append_pipelined<R: AsRef<[u8]>>(
        &mut self,
        stream: &str,
        records: &[R],
    ) -> Result<Vec<Result<Offset, LocalLogError>>, LocalLogError> {
        // Checked before anything is sent: a refusal half-way would leave answers unread.
        check_request(stream, 0)?;
        for r in records {
            check_request(stream, r.as_ref().len())?;
        }
        let mut out = Vec::with_capacity(records.len());
        let mut sent = 0;
        let mut req = Vec::new();
        while out.len() < records.len() {
            // Refilled by half a window at a time, in one write: the daemon appends the
            // requests that arrive together as one batch.
            if sent - out.len() <= LOCAL_CLIENT_WINDOW / 2 {
                req.clear();
                while sent < records.len() && sent - out.len() < LOCAL_CLIENT_WINDOW {
                    encode_request(&mut req, stream, records[sent].as_ref())?;
                    sent += 1;
                }
                if !req.is_empty() {
                    self.send(&req)?;
                }
            }
            match self.answer(stream) {
                Err(LocalLogError::Io { path, source }) => {
                    return Err(LocalLogError::Io { path, source });
                }
                r => out.push(r),
            }
        }
        Ok(out)
    }

    fn send(&mut self, req: &[u8]) -> Result<(), LocalLogError> {
        self.s.write_all(req).map_err(|source| LocalLogError::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn answer(&mut self, stream: &str) -> Result<Offset, LocalLogError> {
        let io = |source| LocalLogError::Io {
            path: self.path.clone(),
            source,
        };
        let mut st = [0u8; 1];
        self.answers.read_exact(&mut st).map_err(io)?;
        if st[0] == 0 {
            let mut o = [0u8; 8];
            self.answers.read_exact(&mut o).map_err(io)?;
            return Ok(u64::from_be_bytes(o));
        }
        let mut l = [0u8; 2];
        self.answers.read_exact(&mut l).map_err(io)?;
        let mut m = vec![0u8; u16::from_be_bytes(l) as usize];
        self.answers.read_exact(&mut m).map_err(io)?;
        Err(LocalLogError::Refused {
            path: self.path.clone(),
            stream: stream.into(),
            message: String::from_utf8_lossy(&m).into(),
        })
    }
}

/// A name and record length the local socket accepts.
fn check_request(stream: &str, len: usize) -> Result<(), LocalLogError> {
    if stream.is_empty() || stream.len() > 255 {
        return Err(LocalLogError::BadName {
            name: stream.into(),
        });
    }
    if len > MAX_LOCAL_RECORD as usize {
        return Err(LocalLogError::TooLarge { len });
    }
    Ok(())
}

/// Appends one request (`[name length u8][name][record length u32 BE][record]`) to `req`.
fn encode_request(req: &mut Vec<u8>, stream: &str, record: &[u8]) -> Result<(), LocalLogError> {
    check_request(stream, record.len())?;
    req.push(stream.len() as u8);
    req.extend_from_slice(stream.as_bytes());
    req.extend_from_slice(&(record.len() as u32).to_be_bytes());
    req.extend_from_slice(record);
    Ok(())
}

/// Records a [`LocalLogClient`] keeps in flight in [`LocalLogClient::append_pipelined`]:
/// below the daemon's per-connection window, so neither side ever blocks the other.
pub const LOCAL_CLIENT_WINDOW: usize = 64;

/// One-shot helper: connect, append, return the durable offset.
pub fn append_local(socket: &Path, stream: &str, record: &[u8]) -> Result<Offset, LocalLogError> {
    LocalLogClient::connect(socket)?.append(stream, record)
}

/// The daemon's own logs, by the `ec_logger` option that names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Own {
    Panic,
    Reject,
    Main,
}

struct TapLine {
    own: Own,
    line: String,
}

/// Filled once the streams are open; lines logged before that are not kept.
static TAP: OnceLock<SyncSender<TapLine>> = OnceLock::new();
static TAP_DROPPED: AtomicU64 = AtomicU64::new(0);

/// The tracing layer feeding `paniclog`, `rejectlog` and `mainlog`. Install it at start
/// (see [`init_logging`]); it forwards nothing until [`LogDaemon::start`] opened streams.
#[derive(Debug, Default, Clone, Copy)]
pub struct TapLayer;

/// Which daemon events are cluster events (mainlog): membership and replication links.
fn is_cluster_event(target: &str) -> bool {
    target.starts_with("duraplane::bus")
        || target.starts_with("duraplane::replicate")
        || target.starts_with("duraplane::duravip")
}

/// Which own log an event goes to: `rejectlog` by target, errors to `paniclog`, cluster
/// events at info and above to `mainlog`; everything else to none.
fn classify(target: &str, level: Level) -> Option<Own> {
    if target == "rejectlog" {
        Some(Own::Reject)
    } else if level == Level::ERROR {
        Some(Own::Panic)
    } else if level <= Level::INFO && is_cluster_event(target) {
        Some(Own::Main)
    } else {
        None
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            let _ = write!(self.0, "{v:?}");
        } else {
            let _ = write!(self.0, " {}={v:?}", f.name());
        }
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        if f.name() == "message" {
            self.0.push_str(v);
        } else {
            let _ = write!(self.0, " {}={v}", f.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for TapLayer {
    fn on_event(&self, ev: &Event<'_>, _ctx: Context<'_, S>) {
        let m = ev.metadata();
        let Some(own) = classify(m.target(), *m.level()) else {
            return;
        };
        let tap = TAP.get();
        let bcast = own == Own::Panic && crate::bus::paniclog_broadcast_enabled();
        if tap.is_none() && !bcast {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut f = Fields(format!(
            "{}.{:03}:{}: ",
            now.as_secs(),
            now.subsec_millis(),
            m.level()
        ));
        ev.record(&mut f);
        if bcast {
            crate::bus::broadcast_paniclog(&f.0);
        }
        if let Some(tx) = tap
            && tx.try_send(TapLine { own, line: f.0 }).is_err()
        {
            TAP_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Installs the daemon's subscriber: `daemon::logging`'s stderr output (same filter and
/// formats) plus the [`TapLayer`] with its own fixed filter, so `DURAPLANE_LOG=warn` does
/// not empty `mainlog`.
pub fn init_logging(format: crate::daemon::logging::LogFormat) {
    use tracing_subscriber::{EnvFilter, filter::LevelFilter, prelude::*};
    let (filter, bad) = match std::env::var("DURAPLANE_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new("info"), Some(format!("{v:?}: {e}"))),
        },
        _ => (EnvFilter::new("info"), None),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let fmt: Box<dyn Layer<_> + Send + Sync> = match format {
        crate::daemon::logging::LogFormat::Text => Box::new(fmt.with_filter(filter)),
        crate::daemon::logging::LogFormat::Json => {
            Box::new(fmt.json().flatten_event(true).with_filter(filter))
        }
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(TapLayer.with_filter(LevelFilter::INFO))
        .try_init();
    if let Some(why) = bad {
        tracing::warn!("ignoring invalid DURAPLANE_LOG {why}; using 'info'");
    }
}

/// Errors applying a reloaded configuration to the log streams.
#[derive(Debug, thiserror::Error)]
pub enum LogReloadError {
    /// Some new destinations could not open; the others were applied, the failed ones are
    /// absent until the next reload succeeds in opening them.
    #[error("cannot open {count} cluster:// destination(s), the rest applied: {details}")]
    Open { count: usize, details: String },
}

/// The streams as the current configuration names them. Replaced as a whole on reload;
/// appenders take a snapshot per request, so an append in flight keeps its stream open
/// until it is acknowledged even if a reload removed that destination meanwhile.
#[derive(Default)]
struct Streams {
    /// One handle per directory: the stream's flock is per open, so a destination that
    /// stays across a reload must keep its handle, never open the directory again.
    by_path: BTreeMap<PathBuf, Stream>,
    /// By the name an appender may use (`logs` keys and logger option names).
    named: Arc<BTreeMap<String, Stream>>,
    /// Where the daemon's own paniclog, rejectlog and mainlog lines go.
    own: Arc<Vec<(Own, Stream)>>,
    /// The `logs` entries whose stream is open (what the port-4802 service may publish).
    published: BTreeMap<String, Stream>,
}

type Shared = Arc<RwLock<Streams>>;

fn read_streams(s: &Shared) -> std::sync::RwLockReadGuard<'_, Streams> {
    s.read().unwrap_or_else(|p| p.into_inner())
}

/// Opens (or, from `prev`, reuses) every `cluster://` destination of `cfg`'s loggers and
/// every published log; returns the streams and, for each failure, a line saying which.
fn resolve(cfg: &Config, prev: &BTreeMap<PathBuf, Stream>) -> (Streams, Vec<String>) {
    let mut by_path: BTreeMap<PathBuf, Stream> = BTreeMap::new();
    let mut named: BTreeMap<String, Stream> = BTreeMap::new();
    let mut own: Vec<(Own, Stream)> = Vec::new();
    let mut published: BTreeMap<String, Stream> = BTreeMap::new();
    let mut failed = Vec::new();
    for l in &cfg.loggers {
        for (opt, dest) in &l.destinations {
            let LogDestination::Cluster { path, subscribers } = dest else {
                continue;
            };
            let s = match by_path.get(path).or_else(|| prev.get(path)) {
                Some(s) => s.clone(),
                None => match open_stream(path, subscribers) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(logger = l.name, option = opt, error = %e, "cannot open cluster:// log stream");
                        failed.push(format!("{} {opt}: {e}", l.name));
                        continue;
                    }
                },
            };
            by_path.insert(path.clone(), s.clone());
            named.entry(opt.clone()).or_insert_with(|| s.clone());
            if l.module.eq_ignore_ascii_case("ec_logger") {
                match opt.to_ascii_lowercase().as_str() {
                    "paniclog" => own.push((Own::Panic, s)),
                    "rejectlog" => own.push((Own::Reject, s)),
                    "mainlog" => own.push((Own::Main, s)),
                    _ => {}
                }
            }
        }
    }
    for (name, path) in &cfg.cluster.logs {
        let s = match by_path.get(path).or_else(|| prev.get(path)) {
            Some(s) => Some(s.clone()),
            None => match Stream::open(
                path,
                &StreamOptions {
                    create: false,
                    ..StreamOptions::default()
                },
            ) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(log = name, path = %path.display(), error = %e, "published log is not an open cluster:// stream (no logger writes it)");
                    None
                }
            },
        };
        if let Some(s) = s {
            by_path.insert(path.clone(), s.clone());
            named.insert(name.clone(), s.clone());
            published.insert(name.clone(), s);
        }
    }
    (
        Streams {
            by_path,
            named: Arc::new(named),
            own: Arc::new(own),
            published,
        },
        failed,
    )
}

/// The running capability.
pub struct LogDaemon {
    shared: Shared,
    service: Option<LogService>,
    handle: LogServiceHandle,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// The local socket's path once it serves (it starts with the first stream, also when
    /// a reload adds that stream).
    socket: Arc<Mutex<Option<PathBuf>>>,
}

impl LogDaemon {
    /// Opens the streams and starts the local writers. Never fails the daemon: a stream
    /// that cannot open is reported (log, `cluster show logs` shows it empty).
    pub fn start(
        services: &Services,
        cfg: &Config,
        bus: Option<&crate::bus::BusService>,
    ) -> LogDaemon {
        let (streams, _failed) = resolve(cfg, &BTreeMap::new());
        // What the port-4802 service publishes; a reload replaces it (`apply_reload`).
        let published: Published = Arc::new(streams.published.clone());
        let (mut service, handle) = LogService::new(published);
        if let Some(b) = bus {
            let members = b.cluster_members();
            service = service.with_members(Arc::new(move || {
                members()
                    .into_iter()
                    .filter(|m| !m.hung)
                    .filter_map(|m| m.announce.map(|a| (a.nodename, a.addr)))
                    .collect()
            }));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let shared: Shared = Arc::new(RwLock::new(streams));
        let threads = Arc::new(Mutex::new(Vec::new()));
        // The own-log writer always runs (a reload may add paniclog/rejectlog/mainlog);
        // lines for a log that has no stream are not kept.
        let (tx, rx) = mpsc::sync_channel(8192);
        if TAP.set(tx).is_ok() {
            let (st, sh) = (stop.clone(), shared.clone());
            match std::thread::Builder::new()
                .name("log-own".into())
                .spawn(move || own_writer(rx, sh, st))
            {
                Ok(t) => lock(&threads).push(t),
                Err(e) => tracing::error!(error = %e, "cannot start the own-log writer"),
            }
        }
        let d = LogDaemon {
            shared,
            service: Some(service),
            handle,
            stop,
            threads,
            socket: Arc::new(Mutex::new(None)),
        };
        d.ensure_socket(cfg);
        d.register(services, cfg);
        d
    }

    /// Starts the local socket if it is not serving yet and there is a stream to append to.
    fn ensure_socket(&self, cfg: &Config) {
        ensure_socket(
            &self.shared,
            &self.socket,
            &self.threads,
            &self.stop,
            &local_socket_path(&cfg.duraplane.control_socket),
        );
    }

    /// Applies a reloaded configuration: destinations that stay keep their open stream,
    /// new ones open (created with their subscribers), removed ones are closed once the
    /// last append in flight on them is acknowledged. Nothing acknowledged is lost: a
    /// record is acknowledged only once durable, and closing never truncates.
    fn apply_reload(
        shared: &Shared,
        service: &LogServiceHandle,
        new: &Config,
    ) -> Result<(usize, usize), LogReloadError> {
        let prev = read_streams(shared).by_path.clone();
        // Streams the service still serves (subscriptions end once the new set is
        // published) must be reused, never opened again (their directory is locked).
        let mut held = prev.clone();
        for s in service.logs().values() {
            held.entry(s.path().to_owned()).or_insert_with(|| s.clone());
        }
        let (streams, failed) = resolve(new, &held);
        drop(held);
        let now: BTreeMap<&String, &Path> = streams
            .published
            .iter()
            .map(|(k, s)| (k, s.path()))
            .collect();
        let published = service.logs();
        let served: BTreeMap<&String, &Path> =
            published.iter().map(|(k, s)| (k, s.path())).collect();
        if now != served {
            tracing::info!(logs = ?now.keys().collect::<Vec<_>>(), "cluster logs changed: the port-4802 log service publishes the new set");
            service.publish(Arc::new(streams.published.clone()));
        }
        drop(published);
        let opened = streams
            .by_path
            .keys()
            .filter(|p| !prev.contains_key(*p))
            .count();
        let closed = prev
            .keys()
            .filter(|p| !streams.by_path.contains_key(*p))
            .count();
        let old = std::mem::replace(
            &mut *shared.write().unwrap_or_else(|p| p.into_inner()),
            streams,
        );
        // Our handles on removed streams go here; appenders holding a snapshot finish.
        drop(old);
        drop(prev);
        tracing::info!(opened, closed, "log streams reloaded");
        if failed.is_empty() {
            Ok((opened, closed))
        } else {
            Err(LogReloadError::Open {
                count: failed.len(),
                details: failed.join("; "),
            })
        }
    }

    /// The log service for the shared engine (once).
    pub fn services(&mut self) -> Vec<(ServiceId, Box<dyn Service>)> {
        match self.service.take() {
            Some(s) => vec![(ServiceId::LOG, Box::new(s) as Box<dyn Service>)],
            None => Vec::new(),
        }
    }

    /// Gives the service its engine (`None`: the engine is off, subscribers cannot connect).
    pub fn attach(&self, engine: Option<EngineHandle>) {
        if let Some(e) = engine {
            self.handle.attach(e);
        }
    }

    /// Open streams by name (logs keys and logger option names), as configured now.
    pub fn streams(&self) -> Arc<BTreeMap<String, Stream>> {
        read_streams(&self.shared).named.clone()
    }

    fn register(&self, services: &Services, cfg: &Config) {
        // The `logs` dictionary's names as configured now (a reload replaces them); each
        // shown with the stream the log service publishes under that name, if any.
        let names: Arc<RwLock<Vec<String>>> =
            Arc::new(RwLock::new(cfg.cluster.logs.keys().cloned().collect()));
        let (n2, h2) = (names.clone(), self.handle.clone());
        if let Err(e) = services.console.register(
            &["cluster", "show", "logs"],
            "Show the published cluster:// logs, their size and subscribers' positions",
            Arc::new(move |_| {
                let published = h2.logs();
                let logs: Vec<(String, Option<Stream>)> = n2
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|k| (k.clone(), published.get(k).cloned()))
                    .collect();
                Ok(render(&logs))
            }),
        ) {
            tracing::warn!(error = %e, "cannot register cluster show logs");
        }
        let service = self.handle.clone();
        let (shared, sock, threads, stop) = (
            self.shared.clone(),
            self.socket.clone(),
            self.threads.clone(),
            self.stop.clone(),
        );
        services.reloader.register(
            "logs",
            Arc::new(move |_old, new| {
                LogDaemon::apply_reload(&shared, &service, new)?;
                *names.write().unwrap_or_else(|p| p.into_inner()) =
                    new.cluster.logs.keys().cloned().collect();
                ensure_socket(
                    &shared,
                    &sock,
                    &threads,
                    &stop,
                    &local_socket_path(&new.duraplane.control_socket),
                );
                Ok(())
            }),
        );
        services
            .metrics
            .register_collector(Box::new(LogCollector(self.shared.clone())));
        let h = self.handle.clone();
        let sock = self.socket.clone();
        let streams = self.shared.clone();
        services.info.set_section(
            "logs",
            Arc::new(move || {
                let c = h.counters();
                // How commits reach the disk (DURAPLANE_LOG_IO), as the open streams use it.
                let io: BTreeSet<&str> = read_streams(&streams)
                    .by_path
                    .values()
                    .map(|s| s.io_path().as_str())
                    .collect();
                let io = if io.is_empty() {
                    "none open".to_owned()
                } else {
                    io.into_iter().collect::<Vec<_>>().join("+")
                };
                format!(
                    "Logs: {} published; local socket {}; commits {io}\nLog service: {} subscriptions, {} records sent, {} checkpoints, {} malformed requests, {} refused; own lines dropped {}",
                    h.logs().len(),
                    lock(&sock)
                        .as_ref()
                        .map_or("off".to_owned(), |p| p.display().to_string()),
                    c.subscriptions.load(Ordering::Relaxed),
                    c.records_sent.load(Ordering::Relaxed),
                    c.checkpoints.load(Ordering::Relaxed),
                    c.malformed.load(Ordering::Relaxed),
                    c.refused.load(Ordering::Relaxed),
                    TAP_DROPPED.load(Ordering::Relaxed),
                )
            }),
        );
    }

    /// Stops the socket and the own-log writer (after flushing what it holds).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let socket = lock(&self.socket).clone();
        if let Some(p) = &socket {
            let _ = UnixStream::connect(p);
        }
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        if let Some(p) = &socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The append pipelines' counters and queue depths at scrape time, one series per open
/// stream (label `stream`: its directory), for `cargo xtask profile perf` and dashboards.
#[derive(Debug)]
struct LogCollector(Shared);

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("paths", &self.by_path.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Collector for LogCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats: Vec<(String, super::AppendStats)> = read_streams(&self.0)
            .by_path
            .iter()
            .map(|(p, s)| (p.display().to_string(), s.stats()))
            .collect();
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        type Pick = fn(&super::AppendStats) -> u64;
        let gauges: [(&str, &str, Pick); 5] = [
            (
                "duraplane_log_queued_records",
                "Records waiting for the next group commit (queue depth)",
                |s| s.queued_records,
            ),
            (
                "duraplane_log_committing_records",
                "Records in the commit being written and synced now",
                |s| s.committing_records,
            ),
            (
                "duraplane_log_last_batch_records",
                "Records the last finished commit carried",
                |s| s.last_batch_records,
            ),
            (
                "duraplane_log_max_batch_records",
                "Largest number of records one commit carried since open",
                |s| s.max_batch_records,
            ),
            (
                "duraplane_log_segment_bytes",
                "Configured segment size: a segment rolls when the next frame would not fit",
                |s| s.segment_bytes,
            ),
        ];
        for (name, help, pick) in gauges {
            let mut me =
                enc.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
            for (path, st) in &stats {
                let labels = [("stream".to_owned(), path.clone())];
                ConstGauge::new(clamp(pick(st))).encode(me.encode_family(&labels)?)?;
            }
        }
        let counters: [(&str, &str, Pick); 4] = [
            (
                "duraplane_log_syncs",
                "fdatasyncs that acknowledged records",
                |s| s.syncs,
            ),
            (
                "duraplane_log_records",
                "Records acknowledged (durable)",
                |s| s.records,
            ),
            (
                "duraplane_log_dropped_bytes",
                "Bytes dropped by the drop_oldest disk policy",
                |s| s.dropped_bytes,
            ),
            (
                "duraplane_log_segment_rolls",
                "Segment rolls since the stream opened (each seals, fsyncs and opens a file)",
                |s| s.segment_rolls,
            ),
        ];
        for (name, help, pick) in counters {
            let mut me =
                enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
            for (path, st) in &stats {
                let labels = [("stream".to_owned(), path.clone())];
                ConstCounter::new(pick(st)).encode(me.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves the local socket at `path` unless it already serves or there is no stream.
fn ensure_socket(
    shared: &Shared,
    socket: &Mutex<Option<PathBuf>>,
    threads: &Mutex<Vec<JoinHandle<()>>>,
    stop: &Arc<AtomicBool>,
    path: &Path,
) {
    let mut sock = lock(socket);
    if sock.is_some() || read_streams(shared).named.is_empty() {
        return;
    }
    match serve_local(path, shared.clone(), stop.clone()) {
        Ok(t) => {
            lock(threads).push(t);
            tracing::info!(socket = %path.display(), "local log socket");
            *sock = Some(path.to_owned());
        }
        Err(e) => tracing::error!(error = %e, "local log socket is OFF"),
    }
}

fn render(logs: &[(String, Option<Stream>)]) -> String {
    let sums: Vec<(String, Option<super::StreamSummary>)> = logs
        .iter()
        .map(|(n, s)| (n.clone(), s.as_ref().and_then(|s| s.summary().ok())))
        .collect();
    super::render_show_logs(sums.iter().map(|(n, s)| (n.as_str(), s.as_ref())))
}

fn open_stream(path: &Path, subscribers: &[String]) -> super::Result<Stream> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| super::LogError::io(parent, "create directory", e))?;
    }
    Stream::open(
        path,
        &StreamOptions {
            create: true,
            subscribers: subscribers.to_vec(),
            ..StreamOptions::default()
        },
    )
}

fn own_writer(rx: mpsc::Receiver<TapLine>, shared: Shared, stop: Arc<AtomicBool>) {
    let mut pending: Vec<TapLine> = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => pending.push(l),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while pending.len() < 4096 {
            match rx.try_recv() {
                Ok(l) => pending.push(l),
                Err(_) => break,
            }
        }
        let own = read_streams(&shared).own.clone();
        for (which, stream) in own.iter() {
            let batch: Vec<&[u8]> = pending
                .iter()
                .filter(|l| l.own == *which)
                .map(|l| l.line.as_bytes())
                .collect();
            if !batch.is_empty()
                && let Err(e) = stream.append_batch(&batch)
            {
                // Not through tracing at error level: that would loop into paniclog.
                eprintln!("duraplane: own log {which:?} append failed: {e}");
            }
        }
        pending.clear();
        if stop.load(Ordering::Relaxed) && rx.try_recv().is_err() {
            return;
        }
    }
}

fn serve_local(
    path: &Path,
    shared: Shared,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, LocalLogError> {
    let io = |source| LocalLogError::Io {
        path: path.to_owned(),
        source,
    };
    if std::fs::symlink_metadata(path).is_ok() {
        // A stale socket of a previous run (the control socket's directory is ours).
        std::fs::remove_file(path).map_err(io)?;
    }
    let l = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("log-local".into())
        .spawn(move || {
            for conn in l.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut c) = conn else { continue };
                if active.load(Ordering::Relaxed) >= MAX_LOCAL_CONNS {
                    let _ = reply_err(&mut c, "too many local log connections");
                    continue;
                }
                active.fetch_add(1, Ordering::Relaxed);
                let (n, a, s) = (shared.clone(), active.clone(), stop.clone());
                let spawned = std::thread::Builder::new()
                    .name("log-local-conn".into())
                    .spawn(move || {
                        serve_conn(c, &n, &s);
                        a.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::Relaxed);
                }
            }
        })
        .map_err(io)
}

fn reply_err(c: &mut UnixStream, msg: &str) -> io::Result<()> {
    let mut v = Vec::new();
    refusals(&mut v, msg, 1);
    c.write_all(&v)
}

/// Reads what the client has sent (at least one byte) into `buf`'s spare room, waking every
/// second to notice a stop; `Ok(false)` on EOF.
fn read_some(c: &mut UnixStream, buf: &mut Vec<u8>, stop: &AtomicBool) -> io::Result<bool> {
    let len = buf.len();
    if buf.capacity() - len < LOCAL_READ {
        buf.reserve(LOCAL_READ);
    }
    buf.resize(buf.capacity(), 0);
    loop {
        match c.read(&mut buf[len..]) {
            Ok(n) => {
                buf.truncate(len + n);
                return Ok(n > 0);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    buf.truncate(len);
                    return Err(e);
                }
            }
            Err(e) => {
                buf.truncate(len);
                return Err(e);
            }
        }
    }
}

/// Bytes asked of the socket per read: a pipelining client's requests arrive many per read.
const LOCAL_READ: usize = 64 << 10;

/// Appends a connection may have in flight before its reader waits for the oldest answer:
/// enough for a producer's pipeline to share fdatasyncs, bounded so a client that never
/// reads its answers cannot pin unbounded memory. Counted in batches ([`LOCAL_BATCH`]
/// records at most each).
const LOCAL_IN_FLIGHT: usize = 256;

/// Most records of one connection appended as one ticket: consecutive requests for the
/// same stream that arrived together (a pipelining client's) are one
/// [`Stream::append_batch_async`], one slot and one completion instead of one per record —
/// the per-record ticket costs were most of the commit path's CPU at high rates (issue 6).
const LOCAL_BATCH: usize = 64;
/// Most payload bytes in one such batch.
const LOCAL_BATCH_BYTES: usize = 1 << 20;

/// Answers owed to the client, in request order.
enum Owed {
    /// Records appended as one ticket: their lengths, to give each its offset.
    Durable(AppendTicket, Vec<u32>),
    /// `n` requests refused with the same reason.
    Refused(String, usize),
}

/// Serves one local producer. Requests are read and appended as they arrive (pipelined:
/// each record is acknowledged only once durable, answers go back in request order), so
/// a producer that writes ahead shares commits instead of paying one fdatasync per record.
fn serve_conn(c: UnixStream, shared: &Shared, stop: &AtomicBool) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
    let Ok(mut out) = c.try_clone() else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Owed>(LOCAL_IN_FLIGHT);
    let answers = std::thread::spawn(move || {
        let mut v = Vec::new();
        for owed in rx {
            v.clear();
            match owed {
                Owed::Durable(t, lens) => match t.wait() {
                    Ok(first) => {
                        // The batch's records follow the first contiguously.
                        let mut off = first;
                        for len in lens {
                            v.push(0u8);
                            v.extend_from_slice(&off.to_be_bytes());
                            off += frame::frame_len(len as usize);
                        }
                    }
                    Err(e) => refusals(&mut v, &e.to_string(), lens.len()),
                },
                Owed::Refused(msg, n) => refusals(&mut v, &msg, n),
            }
            if out.write_all(&v).is_err() {
                // The client is gone; stop reading its requests too.
                let _ = out.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    });
    read_requests(c, shared, stop, &tx);
    drop(tx);
    let _ = answers.join();
}

/// `n` error answers carrying `msg`, appended to `v`.
fn refusals(v: &mut Vec<u8>, msg: &str, n: usize) {
    let m = &msg.as_bytes()[..msg.len().min(u16::MAX as usize)];
    for _ in 0..n {
        v.push(1u8);
        v.extend_from_slice(&(m.len() as u16).to_be_bytes());
        v.extend_from_slice(m);
    }
}

/// One request parsed from the front of a buffer.
enum Request<'a> {
    Append { name: &'a [u8], record: &'a [u8] },
    TooLarge,
}

/// The request at the front of `buf` and its length in bytes, `None` while incomplete.
fn parse_request(buf: &[u8]) -> Option<(Request<'_>, usize)> {
    let n = *buf.first()? as usize;
    let len_at = 1 + n;
    let len = u32::from_be_bytes(buf.get(len_at..len_at + 4)?.try_into().ok()?);
    if len > MAX_LOCAL_RECORD {
        return Some((Request::TooLarge, 0));
    }
    let at = len_at + 4;
    let record = buf.get(at..at + len as usize)?;
    Some((
        Request::Append {
            name: &buf[1..len_at],
            record,
        },
        at + len as usize,
    ))
}

/// The request side of [`serve_conn`]: returns on EOF, a framing error, a stop or a
/// refused oversized record (answered, then the connection ends).
fn read_requests(mut c: UnixStream, shared: &Shared, stop: &AtomicBool, tx: &SyncSender<Owed>) {
    let mut buf: Vec<u8> = Vec::with_capacity(LOCAL_READ);
    loop {
        match read_some(&mut c, &mut buf, stop) {
            Ok(true) => {}
            _ => return,
        }
        let mut used = 0;
        loop {
            // Consecutive complete requests for one stream, as one batch.
            let mut batch: Vec<&[u8]> = Vec::new();
            let mut batch_name: &[u8] = &[];
            let mut bytes = 0;
            let mut too_large = false;
            // A complete request is left for the next batch.
            let mut more = false;
            while let Some((req, len)) = parse_request(&buf[used..]) {
                let Request::Append { name, record } = req else {
                    too_large = true;
                    break;
                };
                if !batch.is_empty()
                    && (name != batch_name
                        || batch.len() == LOCAL_BATCH
                        || bytes + record.len() > LOCAL_BATCH_BYTES)
                {
                    more = true;
                    break;
                }
                batch_name = name;
                bytes += record.len();
                batch.push(record);
                used += len;
            }
            if !batch.is_empty() && !send_batch(shared, batch_name, &batch, tx) {
                return;
            }
            if too_large {
                let _ = tx.send(Owed::Refused("record too large".to_owned(), 1));
                return;
            }
            if !more {
                break;
            }
        }
        buf.drain(..used);
    }
}

/// Appends one batch of records for the stream `name` (one ticket; record by record if the
/// batch as a whole is refused, so each record gets its own reason); `false` once the
/// answering side is gone.
fn send_batch(shared: &Shared, name: &[u8], batch: &[&[u8]], tx: &SyncSender<Owed>) -> bool {
    let name = String::from_utf8_lossy(name);
    // A snapshot per batch: a reload between batches takes effect at once, and the ticket
    // keeps the stream it went to open until its answers are sent.
    let stream = read_streams(shared).named.get(name.as_ref()).cloned();
    let Some(s) = stream else {
        let msg = format!("no cluster:// stream named {name:?}");
        return tx.send(Owed::Refused(msg, batch.len())).is_ok();
    };
    let lens = || batch.iter().map(|r| r.len() as u32).collect::<Vec<_>>();
    if let Ok(t) = s.append_batch_async(batch) {
        return tx.send(Owed::Durable(t, lens())).is_ok();
    }
    for r in batch {
        let owed = match s.append_async(r) {
            Ok(t) => Owed::Durable(t, vec![r.len() as u32]),
            Err(e) => Owed::Refused(e.to_string(), 1),
        };
        if tx.send(owed).is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_logs_take_the_right_events() {
        assert_eq!(classify("rejectlog", Level::WARN), Some(Own::Reject));
        assert_eq!(
            classify("duraplane::inbound::service", Level::ERROR),
            Some(Own::Panic)
        );
        assert_eq!(
            classify("duraplane::bus::service", Level::INFO),
            Some(Own::Main)
        );
        assert_eq!(
            classify("duraplane::replicate::service", Level::WARN),
            Some(Own::Main)
        );
        assert_eq!(classify("duraplane::bus::service", Level::DEBUG), None);
        assert_eq!(classify("duraplane::engine::core", Level::INFO), None);
    }

    #[test]
    fn local_socket_is_next_to_the_control_socket() {
        assert_eq!(
            local_socket_path(Path::new("/run/duraplane/control.sock")),
            PathBuf::from("/run/duraplane/control.log.sock")
        );
    }

    #[test]
    fn append_pipeline_is_exported_per_stream() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("main.cluster");
        let s = open_stream(&p, &["master".into()]).unwrap();
        s.append_batch(&[b"a".as_slice(), b"b"]).unwrap();
        let want_size = s.segment_size();
        assert!(want_size > 0);
        let mut streams = Streams::default();
        streams.by_path.insert(p.clone(), s);
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(LogCollector(Arc::new(RwLock::new(streams)))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        let series = format!("{{stream=\"{}\"}}", p.display());
        assert!(
            text.contains(&format!("duraplane_log_records_total{series} 2")),
            "{text}"
        );
        assert!(
            text.contains(&format!("duraplane_log_segment_rolls_total{series} 0")),
            "{text}"
        );
        let size = segment_bytes(&text, &series);
        assert_eq!(size, want_size, "{text}");
        for g in [
            "queued_records",
            "committing_records",
            "last_batch_records",
            "max_batch_records",
        ] {
            assert!(
                text.contains(&format!("duraplane_log_{g}{series} ")),
                "{g}: {text}"
            );
        }
    }

    fn segment_bytes(text: &str, series: &str) -> u64 {
        let key = format!("duraplane_log_segment_bytes{series} ");
        let line = text.lines().find(|l| l.starts_with(&key)).unwrap();
        line[key.len()..].trim().parse().unwrap()
    }
}
