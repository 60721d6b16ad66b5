//! The control socket server: one thread accepting, one thread per connection, a cap on
//! concurrent connections, deadlines on every request so a slow or hostile client only ever
//! costs its own thread.

use super::{
    Registry,
    protocol::{MAX_REQUEST_BYTES, REQUEST_TIMEOUT, Reply},
};
use std::{
    fs,
    io::{self, Read},
    os::unix::{
        fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Instant,
};

/// Concurrent console connections; beyond it a client gets an error reply at once.
pub const MAX_CONNECTIONS: usize = 32;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlSocketError {
    #[error("cannot create the control socket directory {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another duraplane is already answering on {path}; stop it first or choose another \
         duraplane {{ control_socket }}"
    )]
    AlreadyRunning { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot remove the stale control socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set mode/owner of {path}: {source}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the control socket thread: {source}")]
    Spawn {
        #[source]
        source: io::Error,
    },
}

/// A bound control socket, not yet serving (bound during privileged setup, served after the
/// privilege drop).
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// `None` once handed to the serving thread.
    listener: Option<UnixListener>,
    /// The parent directory, if this process created it (so its owner may be handed over).
    created_dir: Option<PathBuf>,
}

impl ControlServer {
    /// Creates the parent directory (0755) if missing, removes a stale socket only when
    /// nothing answers on it, binds, and sets mode 0660.
    pub fn bind(path: &Path) -> Result<Self, ControlSocketError> {
        let mut created_dir = None;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(|source| ControlSocketError::CreateDir {
                        dir: dir.to_owned(),
                        source,
                    })?;
                created_dir = Some(dir.to_owned());
            }
        }
        if let Ok(meta) = fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ControlSocketError::NotASocket {
                    path: path.to_owned(),
                });
            }
            match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ControlSocketError::AlreadyRunning {
                        path: path.to_owned(),
                    });
                }
                Err(_) => {
                    tracing::info!(path = %path.display(), "removing stale control socket (nothing answers on it)");
                    fs::remove_file(path).map_err(|source| ControlSocketError::RemoveStale {
                        path: path.to_owned(),
                        source,
                    })?;
                }
            }
        }
        let listener = UnixListener::bind(path).map_err(|source| ControlSocketError::Bind {
            path: path.to_owned(),
            source,
        })?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(|source| {
            ControlSocketError::Permissions {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(Self {
            path: path.to_owned(),
            listener: Some(listener),
            created_dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands the socket (and the directory, if we created it) to the user the daemon drops
    /// to, so that user's group can connect and the daemon can remove the socket at exit.
    pub fn chown(&self, uid: u32, gid: u32) -> Result<(), ControlSocketError> {
        let mut paths = vec![self.path.clone()];
        paths.extend(self.created_dir.clone());
        for p in paths {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                .map_err(|source| ControlSocketError::Permissions { path: p, source })?;
        }
        Ok(())
    }

    /// Starts serving `registry`. The returned handle stops the server and removes the socket.
    pub fn spawn(mut self, registry: Registry) -> Result<ControlServerHandle, ControlSocketError> {
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let Some(listener) = self.listener.take() else {
            return Err(ControlSocketError::Spawn {
                source: io::Error::other("control socket already served"),
            });
        };
        let thread_stop = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("console-accept".into())
            .spawn(move || accept_loop(listener, registry, thread_stop, active))
            .map_err(|source| ControlSocketError::Spawn { source })?;
        Ok(ControlServerHandle {
            path: self.path.clone(),
            stop,
            thread: Some(thread),
        })
    }
}

/// A socket bound but never served (startup failed later) is removed, so it does not linger
/// as a stale file.
impl Drop for ControlServer {
    fn drop(&mut self) {
        if self.listener.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A running control server.
#[derive(Debug)]
pub struct ControlServerHandle {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ControlServerHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting and removes the socket file. Connections in progress finish on their
    /// own threads (bounded by the request deadline).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the blocking accept() by connecting to ourselves.
        let woke = UnixStream::connect(&self.path).is_ok();
        if let Some(t) = self.thread.take()
            && woke
        {
            let _ = t.join();
        }
        match fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!(path = %self.path.display(), "control socket removed"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the control socket")
            }
        }
    }
}

impl Drop for ControlServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Decrements the active-connection count however the connection thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: UnixListener,
    registry: Registry,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
) {
    loop {
        let conn = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match conn {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                // EMFILE and the like: do not spin.
                thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            let _slot = Slot(Arc::clone(&active));
            let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
            let _ = Reply::err(format!(
                "too many console connections (limit {MAX_CONNECTIONS}); try again later"
            ))
            .write_to(&mut stream);
            continue;
        }
        let slot = Slot(Arc::clone(&active));
        let registry = registry.clone();
        let spawned = thread::Builder::new()
            .name("console-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve_connection(stream, &registry);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a console connection thread");
        }
    }
}

enum ReadOutcome {
    Line(Vec<u8>),
    /// EOF or idle timeout with nothing pending: close quietly.
    Closed,
    TooLong,
    TimedOut,
}

/// Reads request lines with a per-request deadline; keeps what follows a newline.
struct LineReader {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl LineReader {
    fn next_line(&mut self) -> io::Result<ReadOutcome> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() > MAX_REQUEST_BYTES {
                    return Ok(ReadOutcome::TooLong);
                }
                return Ok(ReadOutcome::Line(line));
            }
            if self.buf.len() > MAX_REQUEST_BYTES {
                return Ok(ReadOutcome::TooLong);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(self.timed_out());
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(ReadOutcome::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(self.timed_out());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn timed_out(&self) -> ReadOutcome {
        if self.buf.is_empty() {
            ReadOutcome::Closed
        } else {
            ReadOutcome::TimedOut
        }
    }
}

fn serve_connection(stream: UnixStream, registry: &Registry) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot clone a console connection");
            return;
        }
    };
    let _ = writer.set_write_timeout(Some(REQUEST_TIMEOUT));
    let mut reader = LineReader {
        stream,
        buf: Vec::new(),
    };
    loop {
        let reply = match reader.next_line() {
            Ok(ReadOutcome::Line(bytes)) => match String::from_utf8(bytes) {
                Ok(line) => run_command(registry, &line),
                Err(_) => Reply::err("request is not valid UTF-8"),
            },
            Ok(ReadOutcome::Closed) | Err(_) => return,
            Ok(ReadOutcome::TooLong) => {
                let _ = Reply::err(format!(
                    "request line too long (limit {MAX_REQUEST_BYTES} bytes)"
                ))
                .write_to(&mut writer);
                return;
            }
            Ok(ReadOutcome::TimedOut) => {
                let _ = Reply::err(format!(
                    "request not completed within {} s",
                    REQUEST_TIMEOUT.as_secs()
                ))
                .write_to(&mut writer);
                return;
            }
        };
        if reply.write_to(&mut writer).is_err() {
            return;
        }
    }
}

fn run_command(registry: &Registry, line: &str) -> Reply {
    tracing::debug!(command = line, "console command");
    match catch_unwind(AssertUnwindSafe(|| registry.dispatch(line))) {
        Ok(Ok(out)) => Reply::ok(out),
        Ok(Err(e)) => Reply::err(e.to_string()),
        Err(_) => {
            tracing::error!(command = line, "console command handler panicked");
            Reply::err("internal error: the command handler failed; see the daemon log")
        }
    }
}
