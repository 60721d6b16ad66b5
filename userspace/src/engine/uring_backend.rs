//! The io_uring backend: completion-based. Every socket operation (accept, connect,
//! recv, send) and the cross-thread wake-up (a read on an eventfd) is an SQE; the reactor
//! waits in one `io_uring_enter` with the next timer as its timeout (EXT_ARG).
//!
//! Buffer safety: an operation's buffer (a connection's receive buffer, its send chunk,
//! its connect address, the eventfd word) is owned by the reactor and never moved, freed
//! or reused until the operation's completion has been reaped. A closing connection is
//! shut down and its operations cancelled; it is dropped only when none is in flight.

use std::{
    collections::HashMap,
    io,
    net::TcpListener,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{Arc, atomic::Ordering::Relaxed, mpsc::TryRecvError},
    time::{Duration, Instant},
};

use io_uring::{IoUring, opcode, squeue, types};

use super::{
    Boot, Command, EngineError, Wake,
    core::Core,
    listen::{ListenerSpec, set_nodelay, sockaddr, tcp_socket},
    select::BackendKind,
    service::ConnId,
    stats::StatsCell,
};

const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_CONNECT: u64 = 4;
const OP_WAKE: u64 = 5;
const OP_CANCEL: u64 = 6;
const ID_MASK: u64 = (1 << 56) - 1;
const RING_ENTRIES: u32 = 256;
const READ_CHUNK: usize = 64 * 1024;
/// Pause before re-arming an accept that failed (EMFILE would otherwise spin).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long a stopping reactor waits for cancelled operations to complete.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

fn ud(op: u64, id: u64) -> u64 {
    (op << 56) | (id & ID_MASK)
}

struct EventFd(OwnedFd);

impl Wake for EventFd {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a local u64 to our eventfd.
        let r = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if r != 8 {
            tracing::warn!(error = %io::Error::last_os_error(), "engine: waking the io_uring reactor failed");
        }
    }
}

pub(crate) struct UringRunner {
    ring: Ring,
    efd: Arc<EventFd>,
}

fn setup(what: &'static str) -> impl FnOnce(io::Error) -> EngineError {
    move |source| EngineError::Setup {
        backend: BackendKind::IoUring,
        what,
        source,
    }
}

fn reactor(what: &'static str) -> impl FnOnce(io::Error) -> EngineError {
    move |source| EngineError::Reactor {
        backend: BackendKind::IoUring,
        what,
        source,
    }
}

pub(crate) fn prepare(stats: Arc<StatsCell>) -> Result<(Arc<dyn Wake>, UringRunner), EngineError> {
    let ring = IoUring::builder()
        .setup_cqsize(RING_ENTRIES * 8)
        .build(RING_ENTRIES)
        .map_err(setup("io_uring_setup"))?;
    if !ring.params().is_feature_ext_arg() {
        return Err(setup("IORING_FEAT_EXT_ARG")(io::Error::from_raw_os_error(
            libc::ENOSYS,
        )));
    }
    // Blocking on purpose: io_uring completes a read on an O_NONBLOCK file with EAGAIN
    // instead of waiting for it.
    // SAFETY: eventfd(2) returns a new fd that we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(setup("eventfd")(io::Error::last_os_error()));
    }
    // SAFETY: fd is valid and owned by nobody else.
    let efd = Arc::new(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }));
    Ok((
        efd.clone(),
        UringRunner {
            ring: Ring {
                ring,
                stats,
                in_flight: 0,
            },
            efd,
        },
    ))
}

/// The ring plus queue-depth bookkeeping (one CQE per SQE: no multishot operations).
struct Ring {
    ring: IoUring,
    stats: Arc<StatsCell>,
    in_flight: u64,
}

impl Ring {
    /// Queues an SQE.
    ///
    /// # Safety
    /// Every buffer the entry points to must stay valid and unmoved until its completion
    /// is reaped.
    unsafe fn push(&mut self, e: squeue::Entry) -> Result<(), EngineError> {
        loop {
            // SAFETY: forwarded to the caller.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                break;
            }
            // Submission queue full: hand what is queued to the kernel and retry.
            let n = self.ring.submission().len();
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    self.reap_into(&mut Vec::new());
                }
                Err(e) => return Err(reactor("io_uring_enter (submit)")(e)),
            }
            StatsCell::add(&self.stats.enters, 1);
            StatsCell::add(&self.stats.submissions, n as u64);
        }
        self.in_flight += 1;
        self.stats.in_flight.store(self.in_flight, Relaxed);
        self.stats.in_flight_max.fetch_max(self.in_flight, Relaxed);
        Ok(())
    }

    /// Submits and waits for at least one completion or the timeout.
    fn enter(&mut self, timeout: Option<Duration>) -> Result<(), EngineError> {
        let n = self.ring.submission().len();
        let res = match timeout {
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        StatsCell::add(&self.stats.enters, 1);
        StatsCell::add(&self.stats.submissions, n as u64);
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(reactor("io_uring_enter")(e)),
        }
    }

    fn reap_into(&mut self, out: &mut Vec<(u64, i32)>) {
        let before = out.len();
        out.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        let n = (out.len() - before) as u64;
        if n > 0 {
            self.in_flight = self.in_flight.saturating_sub(n);
            self.stats.in_flight.store(self.in_flight, Relaxed);
            StatsCell::add(&self.stats.wakeups, 1);
            StatsCell::add(&self.stats.completions, n);
        }
    }
}

struct UConn {
    sock: OwnedFd,
    rbuf: Box<[u8]>,
    recv: bool,
    send: bool,
    chunk: Vec<u8>,
    pos: usize,
    /// The connect address, pinned while the connect is in flight.
    addr: Option<Box<(libc::sockaddr_storage, libc::socklen_t)>>,
    connecting: bool,
    closing: bool,
}

impl UConn {
    fn new(sock: OwnedFd) -> Self {
        UConn {
            sock,
            rbuf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            recv: false,
            send: false,
            chunk: Vec::new(),
            pos: 0,
            addr: None,
            connecting: false,
            closing: false,
        }
    }

    fn idle(&self) -> bool {
        !self.recv && !self.send && !self.connecting
    }
}

struct Listener {
    sock: TcpListener,
    spec: ListenerSpec,
    armed: bool,
    retry_at: Option<Instant>,
}

struct Reactor {
    ring: Ring,
    conns: HashMap<ConnId, UConn>,
    listeners: Vec<Listener>,
    efd: Arc<EventFd>,
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
    stopping: bool,
}

impl UringRunner {
    pub(crate) fn run(self, boot: Boot) -> Result<(), EngineError> {
        let Boot {
            listeners,
            mut core,
            rx,
        } = boot;
        let mut r = Reactor {
            ring: self.ring,
            conns: HashMap::new(),
            listeners: Vec::new(),
            efd: self.efd,
            wake_buf: Box::new([0u8; 8]),
            wake_armed: false,
            stopping: false,
        };
        for (sock, spec) in listeners {
            // Blocking, for the same reason as the eventfd.
            sock.set_nonblocking(false)
                .map_err(setup("listener blocking mode"))?;
            r.listeners.push(Listener {
                sock,
                spec,
                armed: false,
                retry_at: None,
            });
        }
        let result = r.main_loop(&mut core, &rx);
        r.drain();
        result
    }
}

impl Reactor {
    fn main_loop(
        &mut self,
        core: &mut Core,
        rx: &std::sync::mpsc::Receiver<Command>,
    ) -> Result<(), EngineError> {
        let mut cqes = Vec::with_capacity(256);
        loop {
            loop {
                match rx.try_recv() {
                    Ok(cmd) => core.command(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        core.command(Command::Stop);
                        break;
                    }
                }
            }
            core.run_timers();
            self.sync(core)?;
            if core.finished() {
                return Ok(());
            }
            self.arm_background()?;
            let now = Instant::now();
            let mut deadline = core.next_deadline();
            for l in &self.listeners {
                if let Some(t) = l.retry_at {
                    deadline = Some(deadline.map_or(t, |d| d.min(t)));
                }
            }
            self.ring
                .enter(deadline.map(|d| d.saturating_duration_since(now)))?;
            cqes.clear();
            self.ring.reap_into(&mut cqes);
            for &(ud, res) in &cqes {
                self.complete(core, ud, res)?;
            }
        }
    }

    /// Keeps one accept per listener and one eventfd read armed.
    fn arm_background(&mut self) -> Result<(), EngineError> {
        if self.stopping {
            return Ok(());
        }
        let now = Instant::now();
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if l.armed || l.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            l.retry_at = None;
            let e = opcode::Accept::new(
                types::Fd(l.sock.as_raw_fd()),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud(OP_ACCEPT, i as u64));
            // SAFETY: no buffers; the listener outlives the ring's use of it (drain()).
            unsafe { self.ring.push(e)? };
            l.armed = true;
        }
        if !self.wake_armed {
            let e = opcode::Read::new(
                types::Fd(self.efd.0.as_raw_fd()),
                self.wake_buf.as_mut_ptr(),
                8,
            )
            .build()
            .user_data(ud(OP_WAKE, 0));
            // SAFETY: wake_buf is boxed and lives until drain() has reaped this read.
            unsafe { self.ring.push(e)? };
            self.wake_armed = true;
        }
        Ok(())
    }

    fn arm_recv(ring: &mut Ring, id: ConnId, c: &mut UConn) -> Result<(), EngineError> {
        if c.recv || c.closing || c.connecting {
            return Ok(());
        }
        let e = opcode::Recv::new(
            types::Fd(c.sock.as_raw_fd()),
            c.rbuf.as_mut_ptr(),
            c.rbuf.len() as u32,
        )
        .build()
        .user_data(ud(OP_RECV, id.0));
        // SAFETY: rbuf is boxed, untouched while `recv` is set, and the connection is
        // kept until this completion is reaped.
        unsafe { ring.push(e)? };
        c.recv = true;
        Ok(())
    }

    fn arm_send(
        ring: &mut Ring,
        core: &mut Core,
        id: ConnId,
        c: &mut UConn,
    ) -> Result<(), EngineError> {
        if c.send || c.closing || c.connecting {
            return Ok(());
        }
        if c.pos >= c.chunk.len() {
            c.chunk = core.take_out(id, std::mem::take(&mut c.chunk));
            c.pos = 0;
            if c.chunk.is_empty() {
                return Ok(());
            }
        }
        let rest = &c.chunk[c.pos..];
        let e = opcode::Send::new(
            types::Fd(c.sock.as_raw_fd()),
            rest.as_ptr(),
            rest.len().min(u32::MAX as usize) as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(ud(OP_SEND, id.0));
        // SAFETY: chunk is neither modified nor replaced while `send` is set.
        unsafe { ring.push(e)? };
        c.send = true;
        Ok(())
    }

    /// Starts closing a connection's socket; it is dropped once nothing is in flight.
    fn begin_close(&mut self, id: ConnId) -> Result<(), EngineError> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        c.closing = true;
        if c.idle() {
            self.conns.remove(&id);
            return Ok(());
        }
        // SAFETY: shutdown(2) on our socket; wakes any pending recv/send.
        unsafe { libc::shutdown(c.sock.as_raw_fd(), libc::SHUT_RDWR) };
        let ops = [
            (c.recv, OP_RECV),
            (c.send, OP_SEND),
            (c.connecting, OP_CONNECT),
        ];
        for (inflight, op) in ops {
            if inflight {
                let e = opcode::AsyncCancel::new(ud(op, id.0))
                    .build()
                    .user_data(ud(OP_CANCEL, id.0));
                // SAFETY: no buffers.
                unsafe { self.ring.push(e)? };
            }
        }
        Ok(())
    }

    /// Carries out what the core decided.
    fn sync(&mut self, core: &mut Core) -> Result<(), EngineError> {
        loop {
            let mut progressed = false;
            for id in std::mem::take(&mut core.st.closed) {
                progressed = true;
                self.begin_close(id)?;
            }
            for (id, addr) in std::mem::take(&mut core.st.connects) {
                progressed = true;
                let sock = match tcp_socket(&addr, false) {
                    Ok(s) => s,
                    Err(e) => {
                        core.connect_done(id, Err(e));
                        continue;
                    }
                };
                let mut c = UConn::new(sock);
                let boxed = Box::new(sockaddr(&addr));
                let e = opcode::Connect::new(
                    types::Fd(c.sock.as_raw_fd()),
                    (&boxed.0 as *const libc::sockaddr_storage).cast(),
                    boxed.1,
                )
                .build()
                .user_data(ud(OP_CONNECT, id.0));
                c.addr = Some(boxed);
                // SAFETY: the address is boxed in the connection and kept until the
                // connect completes.
                unsafe { self.ring.push(e)? };
                c.connecting = true;
                self.conns.insert(id, c);
            }
            for id in std::mem::take(&mut core.st.dirty) {
                progressed = true;
                core.st.undirty(id);
                if let Some(c) = self.conns.get_mut(&id) {
                    Self::arm_send(&mut self.ring, core, id, c)?;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    fn complete(&mut self, core: &mut Core, ud: u64, res: i32) -> Result<(), EngineError> {
        let op = ud >> 56;
        let idv = ud & ID_MASK;
        match op {
            OP_ACCEPT => self.accepted(core, idv as usize, res),
            OP_WAKE => {
                self.wake_armed = false;
                Ok(())
            }
            OP_CANCEL => Ok(()),
            OP_RECV | OP_SEND | OP_CONNECT => {
                let id = ConnId(idv);
                let Some(c) = self.conns.get_mut(&id) else {
                    return Ok(());
                };
                match op {
                    OP_RECV => c.recv = false,
                    OP_SEND => c.send = false,
                    _ => {
                        c.connecting = false;
                        c.addr = None;
                    }
                }
                if c.closing {
                    if c.idle() {
                        self.conns.remove(&id);
                    }
                    return Ok(());
                }
                let err = (res < 0).then(|| io::Error::from_raw_os_error(-res));
                match op {
                    OP_RECV => match res {
                        0 => core.io_closed(id, None),
                        n if n > 0 => {
                            core.data(id, &c.rbuf[..n as usize]);
                            if core.is_live(id) {
                                Self::arm_recv(&mut self.ring, id, c)?;
                            }
                        }
                        _ if matches!(-res, libc::EAGAIN | libc::EINTR) => {
                            Self::arm_recv(&mut self.ring, id, c)?;
                        }
                        _ => core.io_closed(id, err),
                    },
                    OP_SEND => {
                        if res >= 0 {
                            c.pos += res as usize;
                            core.wrote(id, res as usize);
                            Self::arm_send(&mut self.ring, core, id, c)?;
                        } else if matches!(-res, libc::EAGAIN | libc::EINTR) {
                            Self::arm_send(&mut self.ring, core, id, c)?;
                        } else {
                            core.io_closed(id, err);
                        }
                    }
                    _ => match err {
                        None => {
                            let _ = set_nodelay(c.sock.as_raw_fd());
                            core.connect_done(id, Ok(()));
                            if core.is_live(id) {
                                Self::arm_recv(&mut self.ring, id, c)?;
                            }
                        }
                        Some(e) => core.connect_done(id, Err(e)),
                    },
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn accepted(&mut self, core: &mut Core, i: usize, res: i32) -> Result<(), EngineError> {
        let Some(l) = self.listeners.get_mut(i) else {
            return Ok(());
        };
        l.armed = false;
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            if !matches!(
                -res,
                libc::ECANCELED | libc::EINTR | libc::EAGAIN | libc::ECONNABORTED
            ) {
                tracing::warn!(listener = %l.spec.addr, error = %e, "engine: accept failed");
                l.retry_at = Some(Instant::now() + ACCEPT_RETRY);
            }
            return Ok(());
        }
        // SAFETY: the kernel returned a new fd that we now own.
        let sock = unsafe { OwnedFd::from_raw_fd(res) };
        let stream = std::net::TcpStream::from(sock);
        let Ok(remote) = stream.peer_addr() else {
            return Ok(());
        };
        let listener = l.spec.addr;
        let nodelay = l.spec.nodelay;
        let Some(id) = core.accept(listener, remote) else {
            return Ok(()); // over capacity: dropping closes it
        };
        if nodelay && let Err(e) = set_nodelay(stream.as_raw_fd()) {
            tracing::debug!(error = %e, "engine: TCP_NODELAY");
        }
        let mut c = UConn::new(OwnedFd::from(stream));
        Self::arm_recv(&mut self.ring, id, &mut c)?;
        self.conns.insert(id, c);
        // The HELLO queued by accept() is written by the next sync().
        Ok(())
    }

    /// On the way out: cancel everything and wait (bounded) for the kernel to let go of
    /// our buffers; what is still in flight after that is leaked rather than freed.
    fn drain(&mut self) {
        self.stopping = true;
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if self.begin_close(id).is_err() {
                break;
            }
        }
        for i in 0..self.listeners.len() {
            if self.listeners[i].armed {
                let e = opcode::AsyncCancel::new(ud(OP_ACCEPT, i as u64))
                    .build()
                    .user_data(ud(OP_CANCEL, 0));
                // SAFETY: no buffers.
                if unsafe { self.ring.push(e) }.is_err() {
                    break;
                }
            }
        }
        if self.wake_armed {
            // The eventfd read is not cancellable on every kernel; a write completes it.
            self.efd.wake();
        }
        let until = Instant::now() + DRAIN_LIMIT;
        let mut cqes = Vec::new();
        while self.ring.in_flight > 0 && Instant::now() < until {
            if self.ring.enter(Some(Duration::from_millis(50))).is_err() {
                break;
            }
            cqes.clear();
            self.ring.reap_into(&mut cqes);
            for &(ud, _) in &cqes {
                let op = ud >> 56;
                let id = ConnId(ud & ID_MASK);
                match op {
                    OP_WAKE => self.wake_armed = false,
                    OP_ACCEPT => {
                        if let Some(l) = self.listeners.get_mut((ud & ID_MASK) as usize) {
                            l.armed = false;
                        }
                    }
                    OP_RECV | OP_SEND | OP_CONNECT => {
                        if let Some(c) = self.conns.get_mut(&id) {
                            match op {
                                OP_RECV => c.recv = false,
                                OP_SEND => c.send = false,
                                _ => c.connecting = false,
                            }
                            if c.idle() {
                                self.conns.remove(&id);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if self.ring.in_flight > 0 {
            tracing::warn!(
                in_flight = self.ring.in_flight,
                "engine: io_uring operations still in flight at stop; leaking their buffers"
            );
            for (_, c) in self.conns.drain() {
                std::mem::forget(c);
            }
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new([0; 8])));
        }
    }
}
