//! A process started inside a testbed host, killed (its whole process group, by id) when
//! the guard is dropped — also while a failing test unwinds.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader, Read},
    process::{Child, ChildStdin, ExitStatus},
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

use super::TestbedError;

/// Output lines collected by reader threads, so a chatty child never blocks on a full
/// pipe and tests can wait for a readiness line.
#[derive(Default)]
struct Lines {
    stdout: Vec<String>,
    stderr: Vec<String>,
    closed: usize,
}

type Shared = Arc<(Mutex<Lines>, Condvar)>;

/// Which output stream to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The result of a finished process.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Owns a child started by [`Testbed::spawn`](super::Testbed::spawn).
pub struct ProcessGuard {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Shared,
    readers: Vec<JoinHandle<()>>,
    /// Process groups of live children, shared with the testbed so it can kill
    /// leftovers before deleting namespaces.
    live: Arc<Mutex<HashSet<u32>>>,
    status: Option<ExitStatus>,
    cmd: String,
}

fn reader<R: Read + Send + 'static>(r: R, lines: Shared, which: Stream) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let (m, cv) = &*lines;
            if let Ok(mut g) = m.lock() {
                match which {
                    Stream::Stdout => g.stdout.push(line),
                    Stream::Stderr => g.stderr.push(line),
                }
                cv.notify_all();
            }
        }
        let (m, cv) = &*lines;
        if let Ok(mut g) = m.lock() {
            g.closed += 1;
            cv.notify_all();
        }
    })
}

impl ProcessGuard {
    pub(super) fn new(mut child: Child, live: Arc<Mutex<HashSet<u32>>>, cmd: String) -> Self {
        let lines: Shared = Arc::default();
        let mut readers = Vec::new();
        if let Some(o) = child.stdout.take() {
            readers.push(reader(o, lines.clone(), Stream::Stdout));
        }
        if let Some(e) = child.stderr.take() {
            readers.push(reader(e, lines.clone(), Stream::Stderr));
        }
        let stdin = child.stdin.take();
        if let Ok(mut l) = live.lock() {
            l.insert(child.id());
        }
        ProcessGuard {
            child,
            stdin,
            lines,
            readers,
            live,
            status: None,
            cmd,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdin (a pipe); drop it to signal "done" to tools that hold until EOF.
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.stdin.as_mut()
    }

    /// Close the child's stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Signal the child's process group.
    pub fn signal(&self, sig: Signal) -> Result<(), TestbedError> {
        if self.status.is_some() {
            return Ok(());
        }
        nix::sys::signal::killpg(Pid::from_raw(self.child.id() as i32), sig).map_err(|e| {
            TestbedError::Signal {
                pid: self.child.id(),
                errno: e,
            }
        })
    }

    /// Lines seen so far on a stream.
    pub fn lines(&self, which: Stream) -> Vec<String> {
        let (m, _) = &*self.lines;
        m.lock()
            .map(|g| match which {
                Stream::Stdout => g.stdout.clone(),
                Stream::Stderr => g.stderr.clone(),
            })
            .unwrap_or_default()
    }

    /// Wait until a line on `which` satisfies `pred`; false on timeout or when the
    /// stream closed without one.
    pub fn wait_for_line(
        &self,
        which: Stream,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.lines;
        let Ok(mut g) = m.lock() else { return false };
        loop {
            let v = match which {
                Stream::Stdout => &g.stdout,
                Stream::Stderr => &g.stderr,
            };
            if v.iter().any(|l| pred(l)) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || g.closed >= self.readers.len() {
                return false;
            }
            match cv.wait_timeout(g, deadline - now) {
                Ok((ng, _)) => g = ng,
                Err(_) => return false,
            }
        }
    }

    /// Exit status if the child has exited (reaps it).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, TestbedError> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let s = self.child.try_wait().map_err(|e| TestbedError::Io {
            what: format!("wait for `{}`", self.cmd),
            source: e,
        })?;
        if let Some(s) = s {
            self.reaped(s);
        }
        Ok(s)
    }

    fn reaped(&mut self, s: ExitStatus) {
        self.status = Some(s);
        if let Ok(mut l) = self.live.lock() {
            l.remove(&self.child.id());
        }
    }

    /// Wait up to `timeout` for the child to exit by itself; on timeout kill it and
    /// return [`TestbedError::Timeout`]. Collects all output.
    pub fn finish(mut self, timeout: Duration) -> Result<Finished, TestbedError> {
        self.close_stdin();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(self.collect(status));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(TestbedError::Timeout {
                    what: self.cmd.clone(),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send `sig`, then wait up to `timeout` (killing after that) and collect output.
    pub fn stop(self, sig: Signal, timeout: Duration) -> Result<Finished, TestbedError> {
        self.signal(sig)?;
        self.finish(timeout)
    }

    fn collect(&mut self, status: ExitStatus) -> Finished {
        self.join_readers(Duration::from_secs(2));
        Finished {
            status,
            stdout: self.lines(Stream::Stdout).join("\n"),
            stderr: self.lines(Stream::Stderr).join("\n"),
        }
    }

    /// Join the reader threads once the pipes closed; a descendant that left the process
    /// group may keep a pipe open, so give up (detach) after `grace`.
    fn join_readers(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let n = self.readers.len();
        let (m, cv) = &*self.lines;
        let all_closed = match m.lock() {
            Ok(mut g) => loop {
                if g.closed >= n {
                    break true;
                }
                let now = Instant::now();
                if now >= deadline {
                    break false;
                }
                match cv.wait_timeout(g, deadline - now) {
                    Ok((ng, _)) => g = ng,
                    Err(_) => break false,
                }
            },
            Err(_) => false,
        };
        let readers: Vec<_> = self.readers.drain(..).collect();
        if all_closed {
            for r in readers {
                let _ = r.join();
            }
        }
    }

    /// SIGKILL the process group and reap the child.
    fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        let _ = nix::sys::signal::killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        if let Ok(s) = self.child.wait() {
            self.reaped(s);
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.stdin = None;
        self.kill();
        self.join_readers(Duration::from_millis(500));
    }
}
