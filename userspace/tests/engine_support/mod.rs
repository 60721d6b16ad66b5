//! Shared by the engine_* tests: keys, configs, an echo service, polling helpers, and a
//! macro that runs a test body once per backend.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use duraplane::engine::{
    BackendChoice, BackendKind, CloseReason, ClusterKey, ConnId, ConnInfo, Ctx, Engine,
    EngineConfig, Frame, ListenerSpec, Service, ServiceId, client::Client,
};

pub const ECHO: ServiceId = ServiceId(7);
/// Generous bound for "eventually"; never a timing assertion.
pub const EVENTUALLY: Duration = Duration::from_secs(20);

pub fn key() -> ClusterKey {
    ClusterKey::from_bytes(b"test-cluster-key-0123456789abcdef").unwrap()
}

pub fn other_key() -> ClusterKey {
    ClusterKey::from_bytes(b"another-cluster-key-987654321zyx").unwrap()
}

pub fn v4() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub fn v6() -> SocketAddr {
    "[::1]:0".parse().unwrap()
}

pub fn config(backend: BackendChoice, name: &str, listen: &[SocketAddr]) -> EngineConfig {
    let mut c = EngineConfig::new(name, key());
    c.backend = backend;
    c.listeners = listen.iter().map(|a| ListenerSpec::new(*a)).collect();
    c
}

pub fn expected(backend: BackendChoice) -> BackendKind {
    match backend {
        BackendChoice::Mio => BackendKind::Mio,
        _ => BackendKind::IoUring,
    }
}

/// What the echo service saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub opened: Vec<ConnInfo>,
    pub closed: Vec<(ConnInfo, CloseReason)>,
    pub frames: Vec<(ConnId, Frame)>,
    pub timers: u64,
}

/// Echoes every frame back; kind 200 asks for a periodic "tick" (kind 201) every 20 ms
/// on that connection, kind 202 for a one-shot (kind 203) after 20 ms.
pub struct Echo {
    pub seen: Arc<Mutex<Seen>>,
    ticks: Vec<(duraplane::engine::TimerId, ConnId, u8)>,
}

impl Echo {
    pub fn new() -> (Echo, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        (
            Echo {
                seen: seen.clone(),
                ticks: Vec::new(),
            },
            seen,
        )
    }
}

impl Service for Echo {
    fn on_open(&mut self, _ctx: &mut Ctx<'_>, conn: &ConnInfo) {
        self.seen.lock().unwrap().opened.push(conn.clone());
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, frame: Frame) {
        match frame.kind {
            200 => {
                let t = ctx.set_timer(Duration::from_millis(20), Some(Duration::from_millis(20)));
                self.ticks.push((t, conn, 201));
            }
            202 => {
                let t = ctx.set_timer(Duration::from_millis(20), None);
                self.ticks.push((t, conn, 203));
            }
            _ => {
                ctx.send(conn, &frame);
            }
        }
        self.seen.lock().unwrap().frames.push((conn, frame));
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, conn: &ConnInfo, reason: &CloseReason) {
        for (t, c, _) in &self.ticks {
            if *c == conn.id {
                ctx.cancel_timer(*t);
            }
        }
        self.ticks.retain(|(_, c, _)| *c != conn.id);
        self.seen
            .lock()
            .unwrap()
            .closed
            .push((conn.clone(), reason.clone()));
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: duraplane::engine::TimerId) {
        self.seen.lock().unwrap().timers += 1;
        if let Some((_, conn, kind)) = self.ticks.iter().find(|(t, _, _)| *t == timer) {
            ctx.send(*conn, &Frame::new(ECHO, *kind, b"tick".to_vec()));
        }
    }
}

pub fn start_echo(cfg: EngineConfig) -> (Engine, Arc<Mutex<Seen>>) {
    let (echo, seen) = Echo::new();
    let e = Engine::start(cfg, vec![(ECHO, Box::new(echo))]).unwrap();
    (e, seen)
}

pub fn client(addr: SocketAddr) -> Client {
    Client::connect(addr, &key(), "client", Duration::from_secs(10)).unwrap()
}

/// Polls `f` until true or [`EVENTUALLY`] passes.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + EVENTUALLY;
    while Instant::now() < until {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("not within {EVENTUALLY:?}: {what}");
}

/// Asserts an echo round trip on a fresh authenticated client.
pub fn assert_echo(addr: SocketAddr) {
    let mut c = client(addr);
    let f = Frame::new(ECHO, 1, b"still alive".to_vec());
    c.send(&f).unwrap();
    assert_eq!(c.recv().unwrap(), f);
}

/// Instantiates `fn $name(backend: BackendChoice)` once per backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod mio {
            $( #[test] fn $name() { super::$name(duraplane::engine::BackendChoice::Mio) } )*
        }
        mod io_uring {
            $( #[test] fn $name() { super::$name(duraplane::engine::BackendChoice::IoUring) } )*
        }
    };
}
