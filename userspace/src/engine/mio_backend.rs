//! The mio (epoll) backend: readiness-based, for kernels or sandboxes without io_uring.

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    os::fd::AsRawFd,
    sync::{Arc, mpsc::TryRecvError},
    time::Instant,
};

use mio::{Events, Interest, Poll, Registry, Token, net::TcpStream};

use super::{
    Boot, EngineError, Wake,
    core::Core,
    listen::{ListenerSpec, set_nodelay},
    select::BackendKind,
    service::ConnId,
};

const WAKE: Token = Token(usize::MAX);
/// Tokens below this are listeners; a connection's token is this plus its id.
const CONN_BASE: usize = 1 << 16;
const READ_CHUNK: usize = 64 * 1024;

struct MioWake(mio::Waker);

impl Wake for MioWake {
    fn wake(&self) {
        if let Err(e) = self.0.wake() {
            tracing::warn!(error = %e, "engine: waking the mio reactor failed");
        }
    }
}

pub(crate) struct MioRunner {
    poll: Poll,
}

fn setup(what: &'static str) -> impl FnOnce(io::Error) -> EngineError {
    move |source| EngineError::Setup {
        backend: BackendKind::Mio,
        what,
        source,
    }
}

pub(crate) fn prepare() -> Result<(Arc<dyn Wake>, MioRunner), EngineError> {
    let poll = Poll::new().map_err(setup("epoll_create"))?;
    let waker = mio::Waker::new(poll.registry(), WAKE).map_err(setup("eventfd"))?;
    Ok((Arc::new(MioWake(waker)), MioRunner { poll }))
}

struct MConn {
    stream: TcpStream,
    /// Bytes taken from the core and not yet written.
    chunk: Vec<u8>,
    pos: usize,
    connecting: bool,
}

fn token(id: ConnId) -> Token {
    Token(CONN_BASE + id.0 as usize)
}

impl MioRunner {
    pub(crate) fn run(mut self, boot: Boot) -> Result<(), EngineError> {
        let Boot {
            listeners,
            mut core,
            rx,
        } = boot;
        let mut ls: Vec<(mio::net::TcpListener, ListenerSpec)> = Vec::new();
        for (i, (l, spec)) in listeners.into_iter().enumerate() {
            l.set_nonblocking(true)
                .map_err(setup("listener nonblocking"))?;
            let mut ml = mio::net::TcpListener::from_std(l);
            self.poll
                .registry()
                .register(&mut ml, Token(i), Interest::READABLE)
                .map_err(setup("register listener"))?;
            ls.push((ml, spec));
        }
        let mut conns: HashMap<ConnId, MConn> = HashMap::new();
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            loop {
                match rx.try_recv() {
                    Ok(cmd) => core.command(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        core.command(super::Command::Stop);
                        break;
                    }
                }
            }
            core.run_timers();
            sync(&mut core, &mut conns, self.poll.registry());
            if core.finished() {
                return Ok(());
            }
            let timeout = core
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(EngineError::Reactor {
                    backend: BackendKind::Mio,
                    what: "epoll_wait",
                    source: e,
                });
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKE => {}
                    Token(i) if i < CONN_BASE => {
                        if let Some((l, spec)) = ls.get(i) {
                            accept_all(&mut core, &mut conns, self.poll.registry(), l, spec);
                        }
                    }
                    Token(t) => {
                        let id = ConnId((t - CONN_BASE) as u64);
                        conn_event(&mut core, &mut conns, id, ev, &mut buf);
                    }
                }
            }
        }
    }
}

fn accept_all(
    core: &mut Core,
    conns: &mut HashMap<ConnId, MConn>,
    reg: &Registry,
    l: &mio::net::TcpListener,
    spec: &ListenerSpec,
) {
    loop {
        match l.accept() {
            Ok((mut stream, remote)) => {
                let Some(id) = core.accept(spec.addr, remote) else {
                    continue; // over capacity: dropping closes it
                };
                if spec.nodelay
                    && let Err(e) = set_nodelay(stream.as_raw_fd())
                {
                    tracing::debug!(error = %e, "engine: TCP_NODELAY");
                }
                if let Err(e) = reg.register(
                    &mut stream,
                    token(id),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    core.io_closed(id, Some(e));
                    continue;
                }
                conns.insert(
                    id,
                    MConn {
                        stream,
                        chunk: Vec::new(),
                        pos: 0,
                        connecting: false,
                    },
                );
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and friends: try again on the next readiness event.
                tracing::warn!(listener = %spec.addr, error = %e, "engine: accept failed");
                return;
            }
        }
    }
}

fn conn_event(
    core: &mut Core,
    conns: &mut HashMap<ConnId, MConn>,
    id: ConnId,
    ev: &mio::event::Event,
    buf: &mut [u8],
) {
    let Some(c) = conns.get_mut(&id) else {
        return;
    };
    if c.connecting {
        match c.stream.take_error() {
            Ok(Some(e)) | Err(e) => {
                core.connect_done(id, Err(e));
                return;
            }
            Ok(None) => {}
        }
        match c.stream.peer_addr() {
            Ok(_) => {
                c.connecting = false;
                let _ = set_nodelay(c.stream.as_raw_fd());
                core.connect_done(id, Ok(()));
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                if ev.is_error() || ev.is_write_closed() {
                    core.connect_done(id, Err(e));
                }
                return;
            }
            Err(e) => {
                core.connect_done(id, Err(e));
                return;
            }
        }
    }
    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
        loop {
            let Some(c) = conns.get_mut(&id) else {
                return;
            };
            match c.stream.read(buf) {
                Ok(0) => {
                    core.io_closed(id, None);
                    return;
                }
                Ok(n) => {
                    core.data(id, &buf[..n]);
                    if !core.is_live(id) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    core.io_closed(id, Some(e));
                    return;
                }
            }
        }
    }
    if ev.is_writable() {
        flush(core, conns, id);
    }
}

fn flush(core: &mut Core, conns: &mut HashMap<ConnId, MConn>, id: ConnId) {
    let Some(c) = conns.get_mut(&id) else {
        return;
    };
    if c.connecting {
        return;
    }
    loop {
        if c.pos >= c.chunk.len() {
            c.chunk = core.take_out(id, std::mem::take(&mut c.chunk));
            c.pos = 0;
            if c.chunk.is_empty() {
                return;
            }
        }
        match c.stream.write(&c.chunk[c.pos..]) {
            Ok(n) => {
                c.pos += n;
                core.wrote(id, n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                core.io_closed(id, Some(e));
                return;
            }
        }
    }
}

/// Carries out what the core decided: drop closed sockets, start connects, write output.
fn sync(core: &mut Core, conns: &mut HashMap<ConnId, MConn>, reg: &Registry) {
    loop {
        let mut progressed = false;
        for id in std::mem::take(&mut core.st.closed) {
            progressed = true;
            if let Some(mut c) = conns.remove(&id) {
                let _ = reg.deregister(&mut c.stream);
            }
        }
        for (id, addr) in std::mem::take(&mut core.st.connects) {
            progressed = true;
            let started = TcpStream::connect(addr).and_then(|mut s| {
                reg.register(&mut s, token(id), Interest::READABLE | Interest::WRITABLE)?;
                Ok(s)
            });
            match started {
                Ok(stream) => {
                    conns.insert(
                        id,
                        MConn {
                            stream,
                            chunk: Vec::new(),
                            pos: 0,
                            connecting: true,
                        },
                    );
                }
                Err(e) => core.connect_done(id, Err(e)),
            }
        }
        for id in std::mem::take(&mut core.st.dirty) {
            progressed = true;
            core.st.undirty(id);
            flush(core, conns, id);
        }
        if !progressed {
            return;
        }
    }
}
