//! Typed errors of the log store; every variant names the path (and offset) an operator
//! needs. Cloneable because one failed group commit fails every waiting producer.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Errors of `cluster://` log streams.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {op}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: Arc<io::Error>,
    },
    #[error(
        "log stream {path} is poisoned: {op} failed ({cause}); no later append is acknowledged — restart to recover from the durable state",
        path = path.display()
    )]
    Poisoned {
        path: PathBuf,
        op: &'static str,
        cause: Arc<io::Error>,
    },
    #[error(
        "{env}={value:?}: expected auto, io_uring or blocking (how log appends reach the disk)"
    )]
    BadIoChoice { env: &'static str, value: String },
    #[error(
        "log stream {path}: io_uring was forced ({env}=io_uring) but is unavailable: {reason}; use {env}=blocking or auto",
        path = path.display()
    )]
    IoUringUnavailable {
        path: PathBuf,
        env: &'static str,
        reason: String,
    },
    #[error("log stream {path}: disk full, appends refused (disk policy stop); nothing acknowledged was lost", path = path.display())]
    DiskFull { path: PathBuf },
    #[error(
        "log stream {path}: corrupt frame at offset {offset} (file position {file_pos}: {reason}) followed by a valid frame at offset {next_valid}; refusing to open — run `dp-logctl verify` / `repair`",
        path = path.display()
    )]
    MidLogCorruption {
        path: PathBuf,
        offset: u64,
        file_pos: u64,
        next_valid: u64,
        reason: &'static str,
    },
    #[error(
        "log stream {path}: the last record, at offset {offset} (file position {file_pos}), is damaged ({reason}); refusing to open — run `dp-logctl verify` / `repair` (repair drops that record)",
        path = path.display()
    )]
    DamagedLastFrame {
        path: PathBuf,
        offset: u64,
        file_pos: u64,
        reason: &'static str,
    },
    #[error("{path}: bad frame at offset {offset}: {reason}", path = path.display())]
    BadFrame {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    #[error("{path}: bad {what}: {reason}", path = path.display())]
    BadFile {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{path}: not a log stream (no metadata file)", path = path.display())]
    NotAStream { path: PathBuf },
    #[error("{path}: in use by another process (lock held)", path = path.display())]
    Locked { path: PathBuf },
    #[error("log stream {path}: no subscriber '{name}'", path = path.display())]
    NoSubscriber { path: PathBuf, name: String },
    #[error("log stream {path}: subscriber '{name}' already exists", path = path.display())]
    SubscriberExists { path: PathBuf, name: String },
    #[error("invalid subscriber name {name:?}: 1..=128 bytes, no NUL")]
    InvalidSubscriberName { name: String },
    #[error("log stream {path}: cannot checkpoint '{name}' at offset {offset}: {reason}", path = path.display())]
    BadCheckpointOffset {
        path: PathBuf,
        name: String,
        offset: u64,
        reason: String,
    },
    #[error("log stream {path}: record of {len} bytes exceeds the maximum {max}", path = path.display())]
    RecordTooLarge {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("invalid option {what}: {reason}")]
    InvalidOption { what: &'static str, reason: String },
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        LogError::Io {
            path: path.into(),
            op,
            source: Arc::new(source),
        }
    }

    /// True for the typed "disk full, policy stop" refusal.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, LogError::DiskFull { .. })
    }
}

/// Result alias for the log store.
pub type Result<T, E = LogError> = std::result::Result<T, E>;
