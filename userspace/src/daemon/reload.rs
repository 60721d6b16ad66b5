//! Configuration reload (SIGHUP and `config reload`): re-load and validate the file; on
//! error keep running with the old configuration; on success swap it in and let every
//! registered capability apply its part (e.g. new netblock limits into the XDP maps).

use crate::config::{self, Config, ConfigError, Diagnostic, Loaded};
use prometheus_client::metrics::{counter::Counter, family::Family};
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

/// The running configuration; clones share it. Readers take a cheap snapshot.
#[derive(Clone, Debug)]
pub struct ConfigHandle(Arc<RwLock<Arc<Loaded>>>);

impl ConfigHandle {
    pub fn new(loaded: Loaded) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(loaded))))
    }

    pub fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn replace(&self, loaded: Arc<Loaded>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = loaded;
    }
}

/// An error a capability reports when it cannot apply a new configuration.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// Called with (old, new) after a new configuration was validated and installed.
pub type ReloadCallback = Arc<dyn Fn(&Config, &Config) -> Result<(), HookError> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("configuration not reloaded, keeping the running one: {source}")]
    Load {
        #[source]
        source: ConfigError,
    },
}

/// What a successful reload did.
#[derive(Debug, Default)]
pub struct ReloadOutcome {
    pub path: PathBuf,
    pub warnings: Vec<Diagnostic>,
    /// (callback name, error) for capabilities that could not apply the change.
    pub hook_failures: Vec<(String, String)>,
    /// Settings that changed but only take effect at the next start.
    pub restart_required: Vec<&'static str>,
}

impl ReloadOutcome {
    /// The text `config reload` answers with.
    pub fn summary(&self) -> String {
        let mut s = format!("Configuration reloaded from {}.\n", self.path.display());
        for w in &self.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        for name in &self.restart_required {
            s.push_str(&format!(
                "note: {name} changed; takes effect after a restart\n"
            ));
        }
        for (name, e) in &self.hook_failures {
            s.push_str(&format!("error: {name} could not apply the change: {e}\n"));
        }
        s
    }
}

/// Reloads the file the daemon was started with; serialises concurrent reloads.
pub struct Reloader {
    path: PathBuf,
    handle: ConfigHandle,
    callbacks: Mutex<Vec<(String, ReloadCallback)>>,
    running: Mutex<()>,
    results: Family<Vec<(String, String)>, Counter>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    pub fn new(path: &Path, handle: ConfigHandle) -> Self {
        Self {
            path: path.to_owned(),
            handle,
            callbacks: Mutex::new(Vec::new()),
            running: Mutex::new(()),
            results: Family::default(),
        }
    }

    pub fn handle(&self) -> &ConfigHandle {
        &self.handle
    }

    /// Reload counts by `result` (`ok`, `error`), for the metrics registry.
    pub fn results(&self) -> Family<Vec<(String, String)>, Counter> {
        self.results.clone()
    }

    fn count(&self, result: &str) {
        self.results
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc();
    }

    /// Registers a capability's apply-on-reload callback; `name` appears in logs and replies.
    pub fn register(&self, name: &str, callback: ReloadCallback) {
        self.callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_owned(), callback));
    }

    /// Loads and validates the file again; logs the outcome either way.
    pub fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        tracing::info!(path = %self.path.display(), "reloading configuration");
        let new = match config::load(&self.path) {
            Ok(l) => Arc::new(l),
            Err(source) => {
                match &source {
                    ConfigError::Invalid(diags) => {
                        for d in diags {
                            tracing::error!("{d}");
                        }
                    }
                    other => tracing::error!("{other}"),
                }
                tracing::error!("configuration not reloaded; keeping the running configuration");
                self.count("error");
                return Err(ReloadError::Load { source });
            }
        };
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        let old = self.handle.current();
        let mut outcome = ReloadOutcome {
            path: self.path.clone(),
            warnings: new.warnings.clone(),
            restart_required: restart_required(&old.config, &new.config),
            ..ReloadOutcome::default()
        };
        for what in &outcome.restart_required {
            tracing::warn!("{what} changed; the change takes effect after a restart");
        }
        self.handle.replace(Arc::clone(&new));
        let callbacks = self
            .callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (name, cb) in callbacks {
            if let Err(e) = cb(&old.config, &new.config) {
                tracing::error!(capability = %name, error = %e, "cannot apply the reloaded configuration");
                outcome.hook_failures.push((name, e.to_string()));
            }
        }
        self.count("ok");
        tracing::info!("configuration reloaded");
        Ok(outcome)
    }
}

/// Settings fixed at start: identity, sockets, privileges (Momentum too requires a restart
/// for Security changes).
fn restart_required(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.security != new.security {
        out.push("Security");
    }
    if old.duraplane.control_socket != new.duraplane.control_socket {
        out.push("duraplane.control_socket");
    }
    if old.duraplane.metrics_listen != new.duraplane.metrics_listen {
        out.push("duraplane.metrics_listen");
    }
    if old.cluster.nodename != new.cluster.nodename {
        out.push("cluster.nodename");
    }
    if old.cluster.nodeaddr != new.cluster.nodeaddr {
        out.push("cluster.nodeaddr");
    }
    if old.listener != new.listener {
        out.push("ECCluster_Listener");
    }
    out
}
