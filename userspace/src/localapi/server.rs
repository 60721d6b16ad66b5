//! The local API server: a Unix socket (mode 0660) next to the control socket, one thread
//! per connection under a cap, JSON lines with a length bound, idle timeout. A bad client
//! gets an error reply and at worst loses its own connection; it never reaches the daemon.

use std::{
    collections::HashMap,
    fs,
    io::{self, BufRead, BufReader, Read, Write},
    os::{
        fd::AsRawFd,
        unix::{
            fs::{FileTypeExt, PermissionsExt},
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use super::{
    objects::SharedObjects,
    protocol::{ErrorKind, MAX_LINE, Response, parse_request},
};

/// Most connections served at once; more get a `busy` reply and are closed.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection idle this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that does not read its replies for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the local API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    #[error("local API socket {path}: a live daemon already answers on it")]
    AlreadyRunning { path: PathBuf },
    #[error("local API socket {path} exists and is not a socket")]
    NotASocket { path: PathBuf },
    #[error("cannot remove the stale local API socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind the local API socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set owner or mode of the local API socket {path}: {source}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the local API thread: {source}")]
    Spawn {
        #[source]
        source: io::Error,
    },
}

/// `<dir of control_socket>/api.sock` (the configuration has no option for it).
pub fn socket_path(control_socket: &Path) -> PathBuf {
    control_socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
        .join("api.sock")
}

/// A bound, not yet serving, local API socket (bind before dropping privileges).
#[derive(Debug)]
pub struct LocalApiServer {
    listener: UnixListener,
    path: PathBuf,
}

impl LocalApiServer {
    pub fn bind(path: &Path) -> Result<Self, LocalApiError> {
        if let Ok(meta) = fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(LocalApiError::NotASocket {
                    path: path.to_owned(),
                });
            }
            if UnixStream::connect(path).is_ok() {
                return Err(LocalApiError::AlreadyRunning {
                    path: path.to_owned(),
                });
            }
            fs::remove_file(path).map_err(|source| LocalApiError::RemoveStale {
                path: path.to_owned(),
                source,
            })?;
        }
        let listener = UnixListener::bind(path).map_err(|source| LocalApiError::Bind {
            path: path.to_owned(),
            source,
        })?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(|source| {
            LocalApiError::Permissions {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(LocalApiServer {
            listener,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the socket to the daemon's user (the group reaches it with mode 0660).
    pub fn chown(&self, uid: u32, gid: u32) -> Result<(), LocalApiError> {
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid)).map_err(|source| {
            LocalApiError::Permissions {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// Starts serving `objects`.
    pub fn spawn(self, objects: SharedObjects) -> Result<LocalApiHandle, LocalApiError> {
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<HashMap<u64, UnixStream>>> = Arc::default();
        let (s, c) = (Arc::clone(&stop), Arc::clone(&conns));
        let listener = self.listener;
        let thread = thread::Builder::new()
            .name("local-api".into())
            .spawn(move || accept_loop(&listener, &s, &c, &objects))
            .map_err(|source| LocalApiError::Spawn { source })?;
        Ok(LocalApiHandle {
            path: self.path,
            stop,
            conns,
            thread: Some(thread),
        })
    }
}

fn accept_loop(
    listener: &UnixListener,
    stop: &AtomicBool,
    conns: &Arc<Mutex<HashMap<u64, UnixStream>>>,
    objects: &SharedObjects,
) {
    let next = AtomicU64::new(0);
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 200) };
        if n <= 0 {
            continue;
        }
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "local API: accept failed");
                continue;
            }
        };
        let id = next.fetch_add(1, Ordering::Relaxed);
        {
            let mut m = conns.lock().unwrap_or_else(|p| p.into_inner());
            if m.len() >= MAX_CONNECTIONS {
                let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
                let _ = stream.write_all(
                    Response::error(
                        ErrorKind::Busy,
                        format!("too many local API connections (limit {MAX_CONNECTIONS})"),
                    )
                    .to_line()
                    .as_bytes(),
                );
                continue;
            }
            match stream.try_clone() {
                Ok(c) => {
                    m.insert(id, c);
                }
                Err(_) => continue,
            }
        }
        let (c, o) = (Arc::clone(conns), objects.clone());
        let spawned = thread::Builder::new()
            .name("local-api-conn".into())
            .spawn(move || {
                serve(stream, &o);
                c.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            });
        if spawned.is_err() {
            conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
    }
}

/// Serves one connection until EOF, idle timeout, an oversized line or shutdown.
pub fn serve(stream: UnixStream, objects: &SharedObjects) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if line.last() != Some(&b'\n') {
            if n >= MAX_LINE {
                let _ = out.write_all(
                    Response::error(
                        ErrorKind::TooLong,
                        format!("request longer than {MAX_LINE} bytes; closing"),
                    )
                    .to_line()
                    .as_bytes(),
                );
            }
            // Too long, or EOF in the middle of a line: nothing sane to answer.
            return;
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let reply = match parse_request(body) {
            Ok(req) => objects.handle(req),
            Err(e) => e.into(),
        };
        if out.write_all(reply.to_line().as_bytes()).is_err() {
            return;
        }
    }
}

/// The running server; [`LocalApiHandle::stop`] closes every connection and removes the
/// socket.
#[derive(Debug)]
pub struct LocalApiHandle {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<HashMap<u64, UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl LocalApiHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for (_, c) in self.conns.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let _ = fs::remove_file(&self.path);
    }
}
