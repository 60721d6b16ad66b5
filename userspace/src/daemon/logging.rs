//! Structured logs on stderr: text for people, JSON for collectors; `DURAPLANE_LOG` takes an
//! env-filter directive (`info`, `duraplane=debug`, …).

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber. A bad `DURAPLANE_LOG` falls back to `info` with a note,
/// rather than leaving the daemon silent. Calling it twice is harmless.
pub fn init(format: LogFormat) {
    let (filter, bad) = match std::env::var("DURAPLANE_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new("info"), Some(format!("{v:?}: {e}"))),
        },
        _ => (EnvFilter::new("info"), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Some(why) = bad {
        tracing::warn!("ignoring invalid DURAPLANE_LOG {why}; using 'info'");
    }
}
