//! Many real TCP connections at once, each bound to a chosen source address before
//! connecting, so one client host can appear as several netblocks. Connects run in
//! parallel (non-blocking + poll), so a dropped SYN costs one timeout, not one per socket.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, getsockopt, socket, sockopt,
};

use crate::ToolError;

/// What happened to one connection attempt.
#[derive(Debug)]
pub enum Outcome {
    Connected(TcpStream),
    /// The server (or something on the path) answered with RST.
    Refused,
    /// No answer within the timeout (e.g. the SYN was dropped).
    TimedOut,
    /// Any other error (errno).
    Failed(nix::Error),
}

/// One attempt: from which source, and what came of it.
#[derive(Debug)]
pub struct Attempt {
    pub source: IpAddr,
    pub outcome: Outcome,
}

/// Counts of outcomes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub ok: usize,
    pub refused: usize,
    pub timeout: usize,
    pub failed: usize,
}

impl Summary {
    pub fn of(attempts: &[Attempt]) -> Self {
        let mut s = Summary::default();
        for a in attempts {
            match a.outcome {
                Outcome::Connected(_) => s.ok += 1,
                Outcome::Refused => s.refused += 1,
                Outcome::TimedOut => s.timeout += 1,
                Outcome::Failed(_) => s.failed += 1,
            }
        }
        s
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok={} refused={} timeout={} failed={}",
            self.ok, self.refused, self.timeout, self.failed
        )
    }
}

fn start(source: IpAddr, server: SocketAddr) -> Result<Option<OwnedFd>, nix::Error> {
    let fam = if server.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        fam,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(source, 0)),
    )?;
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(server)) {
        Ok(()) | Err(nix::Error::EINPROGRESS) => Ok(Some(fd)),
        Err(e) => Err(e),
    }
}

/// Open `per_source` connections from each of `sources` to `server`, all at once; wait
/// at most `timeout` for them to complete. Connected streams are returned open (blocking
/// mode) so the caller decides how long to hold them.
pub fn connect_many(
    sources: &[IpAddr],
    per_source: usize,
    server: SocketAddr,
    timeout: Duration,
) -> Result<Vec<Attempt>, ToolError> {
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut pending: Vec<(usize, OwnedFd)> = Vec::new();
    for &src in sources {
        for _ in 0..per_source {
            let idx = attempts.len();
            attempts.push(Attempt {
                source: src,
                outcome: Outcome::TimedOut,
            });
            match start(src, server) {
                Ok(Some(fd)) => pending.push((idx, fd)),
                Ok(None) => {}
                Err(nix::Error::ECONNREFUSED) => attempts[idx].outcome = Outcome::Refused,
                Err(e) => attempts[idx].outcome = Outcome::Failed(e),
            }
        }
    }
    let deadline = Instant::now() + timeout;
    while !pending.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            break; // the rest stay TimedOut; their sockets close here
        }
        let ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut pfds: Vec<libc::pollfd> = pending
            .iter()
            .map(|(_, fd)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        // SAFETY: pfds is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = nix::Error::last();
            if e == nix::Error::EINTR {
                continue;
            }
            return Err(ToolError::Sys {
                what: "poll connecting sockets".to_string(),
                errno: e,
            });
        }
        let mut still = Vec::with_capacity(pending.len());
        for ((idx, fd), p) in pending.into_iter().zip(&pfds) {
            if p.revents == 0 {
                still.push((idx, fd));
                continue;
            }
            let err = getsockopt(&fd, sockopt::SocketError).unwrap_or(libc::EIO);
            attempts[idx].outcome = match err {
                0 => {
                    let s = TcpStream::from(fd);
                    match s.set_nonblocking(false) {
                        Ok(()) => Outcome::Connected(s),
                        Err(e) => Outcome::Failed(nix::Error::from_raw(
                            e.raw_os_error().unwrap_or(libc::EIO),
                        )),
                    }
                }
                libc::ECONNREFUSED => Outcome::Refused,
                libc::ETIMEDOUT => Outcome::TimedOut,
                e => Outcome::Failed(nix::Error::from_raw(e)),
            };
        }
        pending = still;
    }
    Ok(attempts)
}

/// How many of the held streams the peer has closed (EOF or reset) by now.
pub fn peer_closed(attempts: &[Attempt]) -> usize {
    let mut n = 0;
    for a in attempts {
        if let Outcome::Connected(s) = &a.outcome {
            if s.set_nonblocking(true).is_err() {
                continue;
            }
            let mut b = [0u8; 1];
            match s.peek(&mut b) {
                Ok(0) => n += 1,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => n += 1,
            }
            let _ = s.set_nonblocking(false);
        }
    }
    n
}
