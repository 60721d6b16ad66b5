//! `duraplane run`: the daemon's life cycle.
//!
//! Order matters and is fixed here: resolve identity → privileged setup (bind the control
//! socket and metrics port, load and attach XDP) → privilege drop (before any thread
//! exists, since capabilities are per thread) → start servers → wait for signals. SIGHUP and
//! `config reload` re-load the file; SIGTERM/SIGINT shut down and remove the socket.
//!
//! Capabilities plug in through [`Services`]: console commands ([`crate::console::Registry`]),
//! `cluster info` sections ([`crate::console::InfoRegistry`]), metrics
//! ([`crate::metrics::Metrics`]) and reload callbacks ([`reload::Reloader::register`]).

pub mod commands;
pub mod identity;
pub mod logging;
pub mod reload;

use crate::{
    config::Loaded,
    console::{ControlServer, ControlSocketError, InfoRegistry, RegisterError, Registry},
    metrics::{Metrics, MetricsError, MetricsServer},
    security::{self, PrivilegePlan, SecurityError},
};
use identity::{Identity, IdentityError};
use reload::{ConfigHandle, Reloader};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::{
    io::{self, Read, Write},
    os::fd::OwnedFd,
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    ControlSocket(#[from] ControlSocketError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error("cannot register built-in console commands: {0}")]
    Register(#[from] RegisterError),
    #[error("cannot install signal handlers: {source}")]
    Signals {
        #[source]
        source: io::Error,
    },
    #[error("XDP data plane: {0}")]
    Datapath(#[from] crate::bpf::BpfError),
    #[error(transparent)]
    Inbound(#[from] crate::inbound::ServiceError),
    #[error("cluster bus: {0}")]
    Bus(#[from] crate::bus::ServiceError),
    #[error(transparent)]
    Duravip(#[from] crate::duravip::daemon::DuravipError),
    #[error("cannot daemonize ({step}): {source}")]
    Daemonize {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// What every capability gets to plug itself into the daemon.
#[derive(Clone)]
pub struct Services {
    pub console: Registry,
    pub info: InfoRegistry,
    pub metrics: Metrics,
    pub reloader: Arc<Reloader>,
    pub config: ConfigHandle,
    pub identity: Arc<Identity>,
    pub started: Instant,
}

/// How `run` was asked to behave.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config_path: PathBuf,
}

/// Runs the daemon until SIGTERM/SIGINT. `loaded` is the already validated configuration
/// (the caller prints load errors in check-config format).
pub fn run(
    opts: &RunOptions,
    loaded: Loaded,
    mut ready: Option<ReadyNotifier>,
) -> Result<(), DaemonError> {
    let result = run_inner(opts, loaded, &mut ready);
    if let (Err(e), Some(r)) = (&result, ready.take()) {
        r.failed(&e.to_string());
    }
    result
}

fn run_inner(
    opts: &RunOptions,
    loaded: Loaded,
    ready: &mut Option<ReadyNotifier>,
) -> Result<(), DaemonError> {
    let started = Instant::now();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %opts.config_path.display(),
        pid = std::process::id(),
        "starting"
    );
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let cfg = &loaded.config;
    let identity = identity::resolve(
        cfg.cluster.nodename.as_deref(),
        cfg.cluster.nodeaddr,
        &identity::SystemHost,
    )?;
    tracing::info!(
        nodename = %identity.nodename,
        nodename_from = ?identity.nodename_source,
        nodeaddr = %identity.nodeaddr,
        nodeaddr_from = ?identity.nodeaddr_source,
        "node identity"
    );
    let plan = cfg
        .security
        .as_ref()
        .map(PrivilegePlan::resolve)
        .transpose()?;

    // Privileged setup.
    let control = ControlServer::bind(&cfg.duraplane.control_socket)?;
    // The local API is optional: without it the daemon still runs (said loudly).
    let api_path = crate::localapi::socket_path(&cfg.duraplane.control_socket);
    let api = crate::localapi::LocalApiServer::bind(&api_path)
        .inspect_err(|e| tracing::error!(error = %e, "local API is OFF"))
        .ok();
    let metrics_server = cfg
        .duraplane
        .metrics_listen
        .map(MetricsServer::bind)
        .transpose()?;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|source| DaemonError::Signals { source })?;
    if let Some((uid, gid)) = plan.as_ref().and_then(|p| p.uid().zip(p.gid())) {
        control.chown(uid, gid)?;
        if let Some(Err(e)) = api.as_ref().map(|a| a.chown(uid, gid)) {
            tracing::warn!(error = %e, "local API socket keeps root's owner");
        }
    }
    let inbound = if cfg.duraplane.interfaces.is_empty() {
        tracing::info!("no duraplane.interfaces configured: XDP accounting is off");
        None
    } else {
        Some(crate::inbound::InboundService::setup(&cfg.duraplane)?)
    };
    // `Replicate "outbound_cidr"`: TC egress on the same interfaces (privileged, so here).
    // Never fatal: without it the node still counts inbound and replicates the rest.
    let outbound = if !crate::replicate::outbound::wanted(cfg) {
        None
    } else if cfg.duraplane.interfaces.is_empty() {
        tracing::warn!(
            "Replicate \"outbound_cidr\" needs duraplane.interfaces to count on: this node counts no outbound connections (it still shows the others')"
        );
        None
    } else {
        crate::replicate::OutboundService::setup(&cfg.duraplane)
            .inspect_err(
                |e| tracing::error!(error = %e, "outbound_cidr counting (TC egress) is OFF"),
            )
            .ok()
    };

    // A clean slate (orphaned DuraVIPs removed) and a valid DuraVIP configuration.
    let duravip_prepared = crate::duravip::daemon::Prepared::new(cfg)?;

    // No thread may exist before this point (capabilities are per thread).
    security::drop_privileges(plan.as_ref())?;

    let handle = ConfigHandle::new(loaded.clone());
    let services = Services {
        console: Registry::new(),
        info: InfoRegistry::new(),
        metrics: Metrics::new(),
        reloader: Arc::new(Reloader::new(&opts.config_path, handle.clone())),
        config: handle,
        identity: Arc::new(identity),
        started,
    };
    commands::register(&services)?;
    services.metrics.register(
        "duraplane_config_reloads",
        "Configuration reloads (SIGHUP, config reload) by result (ok, error)",
        services.reloader.results(),
    );

    let poller = inbound.as_ref().map(|i| i.start(&services)).transpose()?;
    let bus = crate::bus::BusService::start(&services, &loaded.config)?;
    let duravip = duravip_prepared
        .map(|p| {
            crate::duravip::daemon::DuravipService::start(
                p,
                &services,
                &loaded.config,
                &bus,
                inbound.as_ref(),
            )
        })
        .transpose()?;
    let mut logs = crate::log::daemon::LogDaemon::start(&services, &loaded.config, Some(&bus));
    // One port-4802 engine for replication (service 1) and the log service (service 2).
    let cluster_engine = crate::replicate::ClusterEngine::start(
        &services,
        &loaded.config,
        &bus,
        inbound.as_ref(),
        logs.services(),
    );
    logs.attach(cluster_engine.handle());
    if let (Some(o), Some(r)) = (&outbound, cluster_engine.replication()) {
        o.set_replication(r.handle().clone());
    }
    let outbound_poller = outbound.as_ref().and_then(|o| {
        o.start(&services)
            .inspect_err(|e| tracing::error!(error = %e, "outbound_cidr counting is OFF"))
            .ok()
    });
    let objects = cluster_engine
        .replication()
        .map(|r| r.objects().clone())
        .unwrap_or_else(|| {
            crate::localapi::SharedObjects::new(cfg, &services.identity.nodename, None)
        });
    objects.register_console(&services);
    let api = api.and_then(|a| {
        a.spawn(objects)
            .inspect_err(|e| tracing::error!(error = %e, "local API is OFF"))
            .ok()
    });

    let control = control.spawn(services.console.clone())?;
    let metrics = metrics_server
        .map(|m| m.spawn(services.metrics.clone()))
        .transpose()?;
    tracing::info!(
        control_socket = %control.path().display(),
        metrics = %metrics.as_ref().map(|m| format!("http://{}/metrics", m.local_addr())).unwrap_or_else(|| "off".into()),
        "ready"
    );
    if let Some(r) = ready.take() {
        r.ready();
    }

    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                let _ = services.reloader.reload();
            }
            other => {
                let name = if other == SIGINT { "SIGINT" } else { "SIGTERM" };
                tracing::info!(signal = name, "shutting down");
                break;
            }
        }
    }
    control.stop();
    if let Some(a) = api {
        a.stop();
    }
    cluster_engine.stop();
    logs.stop();
    if let Some(d) = duravip {
        d.stop();
    }
    bus.stop();
    if let Some(m) = metrics {
        m.stop();
    }
    if let Some(i) = &inbound {
        i.stop();
    }
    if let Some(p) = poller {
        let _ = p.join();
    }
    if let Some(o) = &outbound {
        o.stop();
    }
    if let Some(p) = outbound_poller {
        let _ = p.join();
    }
    // Dropping the last handle of a data plane detaches XDP / TC egress from every interface.
    drop(inbound);
    if let Some(o) = outbound {
        let ifaces: Vec<String> = o.attachments().iter().map(|(i, _)| i.clone()).collect();
        drop(o);
        tracing::info!(interfaces = ?ifaces, "TC egress detached");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The child's end of the daemonize pipe: tells the waiting parent "ready" or why not.
#[derive(Debug)]
pub struct ReadyNotifier(OwnedFd);

impl ReadyNotifier {
    fn ready(self) {
        let mut f = std::fs::File::from(self.0);
        let _ = f.write_all(b"R");
    }

    fn failed(self, why: &str) {
        let mut f = std::fs::File::from(self.0);
        let _ = f.write_all(format!("E{why}").as_bytes());
    }
}

/// Detaches from the terminal. The parent waits until the child is ready (exit 0) or has
/// failed (its error on stderr, exit 1), so `duraplane run` without `--foreground` still
/// reports startup errors. Must be called before any thread exists. stderr is kept (logs).
pub fn daemonize() -> Result<ReadyNotifier, DaemonError> {
    use nix::unistd::{ForkResult, fork, pipe, setsid};
    let err = |step| move |source| DaemonError::Daemonize { step, source };
    let (r, w) = pipe().map_err(err("pipe"))?;
    // SAFETY: single-threaded at this point (documented precondition); the child continues
    // with ordinary Rust code and the parent only reads a pipe and exits.
    match unsafe { fork() }.map_err(err("fork"))? {
        ForkResult::Parent { .. } => {
            drop(w);
            let mut msg = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut msg);
            if msg == "R" {
                std::process::exit(0);
            }
            let why = msg
                .strip_prefix('E')
                .unwrap_or("the daemon exited during startup");
            eprintln!("duraplane: startup failed: {why}");
            std::process::exit(1);
        }
        ForkResult::Child => {
            drop(r);
            setsid().map_err(err("setsid"))?;
            redirect_stdio_to_null();
            Ok(ReadyNotifier(w))
        }
    }
}

fn redirect_stdio_to_null() {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in [0, 1] {
            // SAFETY: dup2 onto the standard descriptors, which we own; failure leaves them as they were.
            unsafe {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}
