//! Prometheus metrics: one shared registry every capability adds to, served as OpenMetrics
//! text on `duraplane { metrics_listen }` (see [`http`]).
//!
//! Help texts carry no final period (the encoder adds one). Names are used verbatim: capabilities use the `duraplane_` prefix (e.g.
//! `duraplane_xdp_syn_drops`); the standard `process_*` metrics are unprefixed by convention.

pub mod http;
pub mod process;

use prometheus_client::{
    collector::Collector,
    encoding::text::encode,
    metrics::info::Info,
    registry::{Metric, Registry},
};
use std::sync::{Arc, Mutex};

pub use http::{MetricsError, MetricsServer, MetricsServerHandle};

/// The version in `duraplane_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit in `duraplane_build_info`, when the build set `DURAPLANE_GIT_COMMIT`.
pub const COMMIT: Option<&str> = option_env!("DURAPLANE_GIT_COMMIT");

/// The daemon's metrics registry; clones share it.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with `duraplane_build_info` and the `process_*` metrics already in it.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let mut labels = vec![("version".to_owned(), VERSION.to_owned())];
        if let Some(c) = COMMIT {
            labels.push(("commit".to_owned(), c.to_owned()));
        }
        registry.register(
            "duraplane_build",
            "Duraplane build information (always 1)",
            Info::new(labels),
        );
        registry.register_collector(Box::new(process::ProcessCollector::new()));
        Self {
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    /// Registers a metric (a `Counter`, `Gauge`, `Family` … clone; the registry keeps its own
    /// handle, the caller keeps updating the other).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.with_registry(|r| r.register(name, help, metric));
    }

    /// Registers a collector that reads its values at scrape time (e.g. from kernel maps).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.with_registry(|r| r.register_collector(collector));
    }

    /// Direct access for what the two helpers above do not cover (units, sub-registries).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut r)
    }

    /// The OpenMetrics text exposition, `# EOF` included.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        self.with_registry(|r| encode(&mut out, r))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn exposition_has_build_info_process_and_registered() {
        let m = Metrics::new();
        let c: Counter = Counter::default();
        m.register("duraplane_test_events", "Test.", c.clone());
        c.inc_by(3);
        let text = m.encode().unwrap();
        assert!(
            text.contains(&format!("duraplane_build_info{{version=\"{VERSION}\"")),
            "{text}"
        );
        assert!(text.contains("duraplane_test_events_total 3"), "{text}");
        for name in [
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_start_time_seconds ",
            "process_threads ",
        ] {
            assert!(text.contains(name), "missing {name} in {text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
