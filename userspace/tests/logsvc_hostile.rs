//! The port-4802 log service (engine service 2) against hostile and faulty clients, with
//! real streams on disk and the real service on loopback: malformed frames of every kind,
//! checkpoints that make no sense, one subscriber read from two connections, a subscriber
//! that never reads its socket, and a bit flip in a sealed segment under a subscriber.
//! Whatever a client does, the service never panics, keeps serving well-behaved clients,
//! and never moves a durable position past what that subscriber was sent, nor backwards.

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use duraplane::{
    engine::{
        ClusterKey, Engine, Frame, Limits, RejectReason, ServiceId,
        client::{Client, ClientError},
    },
    log::{
        LogError, Offset, Record, Stream, StreamOptions,
        frame::frame_len,
        service::{
            self, Delivery, LogClient, LogClientError, LogServiceHandle, MAX_WINDOW, MIN_WINDOW,
            code, flags, kind, serve_loopback_with,
        },
    },
};

mod corrupt_support;

const KEY: &[u8] = b"logsvc-hostile-test-key-0123456789abcdef";
/// Bound on every wait; only reached when something is broken.
const T: Duration = Duration::from_secs(10);

fn key() -> ClusterKey {
    ClusterKey::from_bytes(KEY).unwrap()
}

/// The log service alone on a loopback port, publishing `logs`.
struct Node {
    engine: Engine,
    addr: SocketAddr,
    handle: LogServiceHandle,
}

impl Node {
    fn start(logs: &[(&str, &Stream)], limits: Limits) -> Node {
        let l = serve_loopback_with("node", logs, &key(), limits).unwrap();
        Node {
            engine: l.engine,
            addr: l.addr,
            handle: l.handle,
        }
    }

    fn serve(logs: &[(&str, &Stream)]) -> Node {
        Node::start(logs, Limits::default())
    }

    fn malformed(&self) -> u64 {
        self.handle.counters().malformed.load(Ordering::Relaxed)
    }

    fn raw(&self) -> Raw {
        Raw::new(Client::connect(self.addr, &key(), "hostile", T).unwrap())
    }

    /// A raw client with a small receive buffer (64 KiB), so the kernel holds little of
    /// what the node sends it.
    fn raw_small_buffer(&self, name: &str) -> Raw {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(64 << 10).unwrap();
        sock.connect_timeout(&self.addr.into(), T).unwrap();
        let stream: TcpStream = sock.into();
        stream.set_read_timeout(Some(T)).unwrap();
        Raw::new(Client::handshake(stream, &key(), name).unwrap())
    }

    fn client(&self) -> LogClient {
        LogClient::connect(self.addr, &key(), "mgr-node", T).unwrap()
    }

    /// The node still answers a well-behaved client on a new connection.
    fn assert_lists(&self, want: &[&str]) {
        assert_eq!(self.client().list().unwrap(), want);
    }
}

fn open(dir: &Path, subs: &[&str], segment_size: u64) -> Stream {
    Stream::open(
        dir,
        &StreamOptions {
            segment_size: Some(segment_size),
            subscribers: subs.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Appends `n` records of `size` bytes (each distinct); returns them as written.
fn fill(s: &Stream, n: usize, size: usize) -> Vec<(Offset, Vec<u8>)> {
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut p: Vec<u8> = (0..size).map(|k| (k * 31 + i * 7) as u8).collect();
            p[..8].copy_from_slice(&(i as u64).to_be_bytes());
            p
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for chunk in payloads.chunks(20) {
        let offs = s.append_batch(chunk).unwrap();
        out.extend(offs.into_iter().zip(chunk.iter().cloned()));
    }
    out
}

fn frame(k: u8, payload: Vec<u8>) -> Frame {
    Frame::new(ServiceId::LOG, k, payload)
}

fn put_name(v: &mut Vec<u8>, b: &[u8]) {
    v.extend_from_slice(&(b.len() as u16).to_be_bytes());
    v.extend_from_slice(b);
}

/// A SUBSCRIBE frame with raw name bytes (they need not be UTF-8).
fn subscribe(log: &[u8], sub: &[u8], window: u32) -> Frame {
    let mut v = Vec::new();
    put_name(&mut v, log);
    put_name(&mut v, sub);
    v.extend_from_slice(&window.to_be_bytes());
    frame(kind::SUBSCRIBE, v)
}

fn checkpoint(off: u64) -> Frame {
    frame(kind::CHECKPOINT, off.to_be_bytes().to_vec())
}

/// What the service answered, records of a live subscription aside.
#[derive(Debug, PartialEq)]
enum Answer {
    Closed,
    Error(u16, String),
    Subscribed { next: Offset },
    Checkpointed { offset: Offset, next: Offset },
    Other(Frame),
}

/// A raw engine client speaking the log service by hand; keeps every record it is sent.
struct Raw {
    c: Client,
    got: Vec<Record>,
    /// The last RECORDS frame carried CAUGHT_UP.
    caught_up: bool,
}

impl Raw {
    fn new(c: Client) -> Raw {
        Raw {
            c,
            got: Vec::new(),
            caught_up: false,
        }
    }

    fn send(&mut self, f: &Frame) {
        self.c.send(f).unwrap();
    }

    /// Subscribes, asking again while the subscriber is still held: the previous
    /// connection's close is handled on the node's reactor and may not be through yet.
    /// Gives the last answer after `T`.
    fn subscribe_when_free(&mut self, log: &[u8], sub: &[u8], window: u32) -> Answer {
        let deadline = Instant::now() + T;
        loop {
            match self.ask(&subscribe(log, sub, window)) {
                Answer::Error(code::ALREADY_SUBSCRIBED, _) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                a => return a,
            }
        }
    }

    /// Sends `f` and returns the answer (see [`Raw::answer`]).
    fn ask(&mut self, f: &Frame) -> Answer {
        // A write after the node closed can fail; the read below says what happened.
        let _ = self.c.send(f);
        self.answer()
    }

    /// The next frame that is not RECORDS (those are kept in `got`), or the close.
    /// Panics if nothing comes within `T`.
    fn answer(&mut self) -> Answer {
        loop {
            if let Some(a) = self.next() {
                return a;
            }
        }
    }

    /// The next frame: `None` for RECORDS (kept in `got`), else what it was.
    fn next(&mut self) -> Option<Answer> {
        {
            let f = match self.c.recv() {
                Ok(f) => f,
                Err(ClientError::Closed { .. }) => return Some(Answer::Closed),
                Err(ClientError::Io { source, .. })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Some(Answer::Closed);
                }
                Err(e) => panic!("no answer: {e}"),
            };
            assert_eq!(f.service, ServiceId::LOG, "{f:?}");
            let mut u64s = f
                .payload
                .chunks(8)
                .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0xff; 8])));
            Some(match f.kind {
                kind::RECORDS => {
                    self.caught_up = f.flags & flags::CAUGHT_UP != 0;
                    self.got
                        .extend(service::decode_records(&f.payload).unwrap());
                    return None;
                }
                kind::ERROR => Answer::Error(
                    u16::from_be_bytes([f.payload[0], f.payload[1]]),
                    String::from_utf8(f.payload[2..].to_vec()).unwrap(),
                ),
                kind::SUBSCRIBED if f.payload.len() == 16 => Answer::Subscribed {
                    next: u64s.next().unwrap(),
                },
                kind::CHECKPOINTED if f.payload.len() == 16 => Answer::Checkpointed {
                    offset: u64s.next().unwrap(),
                    next: u64s.next().unwrap(),
                },
                _ => Answer::Other(f),
            })
        }
    }

    /// Reads until at least `bytes` of frames (from the first record's offset) arrived.
    fn read_at_least(&mut self, bytes: u64) {
        let first = self.got.first().map_or(0, |r| r.offset);
        while self.sent_end().saturating_sub(first) < bytes {
            if let Some(a) = self.next() {
                panic!("after {} records: {a:?}", self.got.len());
            }
        }
    }

    /// Reads until the node says it has nothing more (CAUGHT_UP).
    fn read_until_caught_up(&mut self) {
        self.caught_up = false;
        while !self.caught_up {
            if let Some(a) = self.next() {
                panic!("after {} records: {a:?}", self.got.len());
            }
        }
    }

    /// Reads to `end`, checkpointing each frame's records as they come (as a manager
    /// does), so the window never holds delivery back.
    fn read_to_checkpointing(&mut self, end: Offset) {
        while self.sent_end() < end {
            match self.next() {
                None => self.send(&checkpoint(self.got.last().unwrap().offset)),
                Some(Answer::Checkpointed { next, .. }) => assert!(next <= self.sent_end()),
                Some(a) => panic!("after {} records: {a:?}", self.got.len()),
            }
        }
    }

    /// End of the last record received (what the subscriber was sent).
    fn sent_end(&self) -> Offset {
        self.got
            .last()
            .map_or(0, |r| r.offset + frame_len(r.payload.len()))
    }
}

/// `got` is exactly the records of `want` from offset `from` on (as many as `got` holds).
fn assert_records(got: &[Record], want: &[(Offset, Vec<u8>)], from: Offset) {
    let start = want.iter().position(|(o, _)| *o == from).unwrap();
    assert!(got.len() <= want.len() - start, "more records than written");
    for (g, (o, p)) in got.iter().zip(&want[start..]) {
        assert_eq!(g.offset, *o, "records out of order or missing");
        assert!(g.payload == *p, "record at {o} differs");
    }
}

/// A well-behaved subscriber (`LogClient`) reads `sub` to the end and checkpoints it all.
fn drain(addr: SocketAddr, log: &str, sub: &str, want: &[(Offset, Vec<u8>)]) {
    let mut c = LogClient::connect(addr, &key(), "good-mgr", T).unwrap();
    // 1 MiB: below the 4 MiB output limit of the stalled-subscriber test, so a reading
    // client is never taken for a slow one there.
    let from = c.subscribe(log, sub, 1 << 20).unwrap();
    drain_on(&mut c, from, want);
}

/// The rest of [`drain`], on a client subscribed at `from`.
fn drain_on(c: &mut LogClient, from: Offset, want: &[(Offset, Vec<u8>)]) {
    let end = want.last().map_or(0, |(o, p)| o + frame_len(p.len()));
    let mut got = Vec::new();
    let mut confirmed = from;
    let deadline = Instant::now() + 3 * T;
    while confirmed < end {
        assert!(Instant::now() < deadline, "only {} records", got.len());
        match c.poll(T).unwrap() {
            Some(Delivery::Records(r)) => {
                c.send_checkpoint(r.last().unwrap().offset).unwrap();
                got.extend(r);
            }
            Some(Delivery::Checkpointed { next, .. }) => confirmed = next,
            Some(other) => panic!("{other:?}"),
            None => {}
        }
    }
    assert_eq!(confirmed, end);
    assert_records(&got, want, from);
    assert_eq!(got.len(), want.iter().filter(|(o, _)| *o >= from).count());
}

/// What a malformed or odd request must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Closed and counted as malformed by the service.
    Closed,
    /// Closed by the engine below the service (oversized frame).
    ClosedByEngine,
    /// An ERROR with this code; the connection stays usable.
    Refused(u16),
}

/// Malformed frames of every log-service kind: each one closes its connection (counted
/// as malformed) or is refused with an ERROR that leaves the connection usable — never a
/// panic. Some hit a connection with a live subscription. Meanwhile no durable position
/// moves, and afterwards a well-behaved client still lists, subscribes and gets
/// everything.
#[test]
fn malformed_frames_close_or_refuse_and_move_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("mainlog"), &["mgr", "spare"], 4 << 20);
    let want = fill(&s, 200, 1000);
    // A position that is not the start, so a reset to 0 would show too.
    s.checkpoint("mgr", want[9].0).unwrap();
    let base = [("mgr", want[10].0), ("spare", 0)];
    let node = Node::serve(&[("mainlog", &s)]);

    let good_sub = subscribe(b"mainlog", b"spare", 0).payload;
    let mut trailing = good_sub.clone();
    trailing.push(0);
    let mut no_window = Vec::new();
    put_name(&mut no_window, b"mainlog");
    put_name(&mut no_window, b"spare");
    let mut short_window = no_window.clone();
    short_window.extend_from_slice(&[0, 1]);
    let mut long_name_claim = Vec::new();
    long_name_claim.extend_from_slice(&u16::MAX.to_be_bytes());
    long_name_claim.extend_from_slice(b"mainlog");
    let huge_name = vec![b'a'; u16::MAX as usize];

    use Expect::*;
    let mut cases: Vec<(&str, Frame, Expect, bool)> = vec![
        (
            "LIST with a payload",
            frame(kind::LIST, vec![0]),
            Closed,
            false,
        ),
        (
            "LIST with 64 KiB payload",
            frame(kind::LIST, vec![7; 64 << 10]),
            Closed,
            true,
        ),
        (
            "MEMBERS with a payload",
            frame(kind::MEMBERS, vec![1, 2]),
            Closed,
            false,
        ),
        (
            "SUBSCRIBE empty",
            frame(kind::SUBSCRIBE, vec![]),
            Closed,
            false,
        ),
        (
            "SUBSCRIBE one byte",
            frame(kind::SUBSCRIBE, vec![0]),
            Closed,
            false,
        ),
        (
            "SUBSCRIBE name longer than the frame",
            frame(kind::SUBSCRIBE, long_name_claim),
            Closed,
            false,
        ),
        (
            "SUBSCRIBE without window",
            frame(kind::SUBSCRIBE, no_window),
            Closed,
            false,
        ),
        (
            "SUBSCRIBE with a 2-byte window",
            frame(kind::SUBSCRIBE, short_window),
            Closed,
            false,
        ),
        (
            "SUBSCRIBE with a trailing byte",
            frame(kind::SUBSCRIBE, trailing),
            Closed,
            false,
        ),
        (
            "SUBSCRIBE log name not UTF-8",
            subscribe(&[0xff, 0xfe, b'x'], b"spare", 0),
            Closed,
            false,
        ),
        (
            "SUBSCRIBE subscriber name not UTF-8",
            subscribe(b"mainlog", &[b's', 0xc3], 0),
            Closed,
            false,
        ),
        (
            "SUBSCRIBE surrogate in UTF-8",
            subscribe(b"mainlog", &[0xed, 0xa0, 0x80], 0),
            Closed,
            false,
        ),
        (
            "SUBSCRIBE empty log name",
            subscribe(b"", b"spare", 0),
            Refused(code::UNKNOWN_LOG),
            false,
        ),
        (
            "SUBSCRIBE 65535-byte log name",
            subscribe(&huge_name, b"spare", 0),
            Refused(code::UNKNOWN_LOG),
            false,
        ),
        (
            "SUBSCRIBE empty subscriber",
            subscribe(b"mainlog", b"", 0),
            Refused(code::UNKNOWN_SUBSCRIBER),
            false,
        ),
        (
            "SUBSCRIBE subscriber with NUL",
            subscribe(b"mainlog", b"mgr\0", 0),
            Refused(code::UNKNOWN_SUBSCRIBER),
            false,
        ),
        (
            "SUBSCRIBE 65535-byte subscriber",
            subscribe(b"mainlog", &huge_name, 0),
            Refused(code::UNKNOWN_SUBSCRIBER),
            false,
        ),
        (
            "SUBSCRIBE again on a subscribed connection",
            subscribe(b"mainlog", b"mgr", 0),
            Refused(code::ALREADY_SUBSCRIBED),
            true,
        ),
        (
            "CHECKPOINT empty",
            frame(kind::CHECKPOINT, vec![]),
            Closed,
            true,
        ),
        (
            "CHECKPOINT 7 bytes",
            frame(kind::CHECKPOINT, vec![0; 7]),
            Closed,
            true,
        ),
        (
            "CHECKPOINT 9 bytes",
            frame(kind::CHECKPOINT, vec![0; 9]),
            Closed,
            true,
        ),
        (
            "CHECKPOINT 7 bytes, unsubscribed",
            frame(kind::CHECKPOINT, vec![0; 7]),
            Closed,
            false,
        ),
        (
            "oversized frame (engine limit + 1)",
            frame(kind::LIST, vec![0; (1 << 20) + 1]),
            ClosedByEngine,
            false,
        ),
    ];
    // Unknown kinds, and every kind only the node may send.
    for k in [
        0u8,
        12,
        99,
        255,
        kind::LOGS,
        kind::SUBSCRIBED,
        kind::RECORDS,
        kind::CHECKPOINTED,
        kind::ERROR,
        kind::GAP,
        kind::MEMBER_LIST,
    ] {
        for (payload, subscribed) in [(vec![], false), (vec![0; 16], true)] {
            cases.push((
                "kind sent by a client",
                frame(k, payload),
                Closed,
                subscribed,
            ));
        }
    }

    let mut malformed = 0;
    for (what, f, expect, subscribed) in cases {
        let what = format!("{what} (kind {}, subscribed {subscribed})", f.kind);
        let mut c = node.raw();
        if subscribed {
            let a = c.ask(&subscribe(b"mainlog", b"spare", MIN_WINDOW));
            assert!(matches!(a, Answer::Subscribed { next: 0 }), "{what}: {a:?}");
        }
        let a = c.ask(&f);
        match expect {
            Closed => {
                assert!(matches!(a, Answer::Closed), "{what}: {a:?}");
                malformed += 1;
            }
            ClosedByEngine => assert!(matches!(a, Answer::Closed), "{what}: {a:?}"),
            Refused(want) => {
                let Answer::Error(code, msg) = &a else {
                    panic!("{what}: {a:?}")
                };
                assert_eq!(*code, want, "{what}: {msg}");
                assert!(!msg.is_empty(), "{what}: an ERROR says why");
                // The connection is still usable.
                let a = c.ask(&frame(kind::LIST, vec![]));
                assert!(
                    matches!(&a, Answer::Other(f) if f.kind == kind::LOGS),
                    "{what}: after the refusal: {a:?}"
                );
            }
        }
        assert_eq!(node.malformed(), malformed, "{what}");
        // Whatever was sent on the connection, nothing was checkpointed.
        for (sub, pos) in base {
            assert_eq!(s.position(sub).unwrap(), pos, "{what}: {sub} moved");
        }
        // Gone before the next case subscribes `spare` again.
        drop(c);
        if subscribed && matches!(expect, Refused(_)) {
            wait_subscribable(&node, "spare");
            malformed += 1;
        }
    }
    assert_eq!(
        node.engine.stats().rejected.get(RejectReason::Oversized),
        1,
        "the oversized frame was the engine's to refuse"
    );

    // The service still serves a well-behaved client: lists, delivers and checkpoints.
    node.assert_lists(&["mainlog"]);
    drain(node.addr, "mainlog", "mgr", &want);
    assert_eq!(s.position("spare").unwrap(), 0);
}

/// Waits until `sub` of `mainlog` can be subscribed again (its previous connection's
/// close reached the service), then leaves it free again with a malformed request (one
/// more counted).
fn wait_subscribable(node: &Node, sub: &str) {
    let mut c = node.raw();
    let a = c.subscribe_when_free(b"mainlog", sub.as_bytes(), MIN_WINDOW);
    assert!(matches!(a, Answer::Subscribed { .. }), "{sub}: {a:?}");
    // Released synchronously by a malformed request.
    let a = c.ask(&frame(0, vec![]));
    assert!(matches!(a, Answer::Closed), "{a:?}");
}

/// The windows a client may ask for: 0 is the default (8 MiB: everything here arrives
/// without a checkpoint), 1 is clamped up to 64 KiB (the node sends one window, at most
/// one record more, then waits for a checkpoint), u32::MAX is clamped down to 64 MiB.
#[test]
fn window_zero_tiny_and_huge_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("mainlog"), &["a", "b", "c"], 4 << 20);
    let want = fill(&s, 200, 1000);
    let node = Node::serve(&[("mainlog", &s)]);
    let end = want.last().map(|(o, p)| o + frame_len(p.len())).unwrap();

    for (sub, window) in [("a", 0u32), ("c", u32::MAX)] {
        let mut c = node.raw();
        let a = c.ask(&subscribe(b"mainlog", sub.as_bytes(), window));
        assert!(matches!(a, Answer::Subscribed { next: 0 }), "{a:?}");
        c.read_until_caught_up();
        assert_eq!(c.sent_end(), end, "window {window}");
        assert_records(&c.got, &want, 0);
    }

    let mut c = node.raw();
    let a = c.ask(&subscribe(b"mainlog", b"b", 1));
    assert!(matches!(a, Answer::Subscribed { next: 0 }), "{a:?}");
    c.read_at_least(u64::from(MIN_WINDOW));
    let last = c.got.last().unwrap().offset;
    let a = c.ask(&checkpoint(last));
    // Everything before CHECKPOINTED was sent before the checkpoint freed the window.
    let sent = c.sent_end();
    assert!(
        sent >= u64::from(MIN_WINDOW) && sent < u64::from(MIN_WINDOW) + frame_len(1000),
        "window 1 sent {sent} bytes before a checkpoint"
    );
    let Answer::Checkpointed { offset, next } = a else {
        panic!("{a:?}")
    };
    assert_eq!((offset, next), (last, sent));
    assert_eq!(s.position("b").unwrap(), sent);
    // The checkpoint freed the window: the rest follows, one window per checkpoint.
    c.read_to_checkpointing(end);
    assert_eq!(c.sent_end(), end);
    assert_records(&c.got, &want, 0);
}

/// Checkpoints that make no sense. What the service answers:
/// - CHECKPOINT before SUBSCRIBE: closes the connection (malformed, counted).
/// - an offset beyond what this connection was sent (a real record the window held back,
///   or u64::MAX): closes (malformed), position unchanged.
/// - an offset inside a record that was sent (not a record boundary): closes, unchanged.
/// - going backwards (a sent record below the durable position, or any offset below it):
///   CHECKPOINTED with that offset and the unchanged position; nothing moves back.
///
/// The position never passes what the subscriber was sent, and what was confirmed is on
/// disk (the stream reopened shows it).
#[test]
fn nonsense_checkpoints_never_move_a_position_wrongly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mainlog");
    let s = open(&path, &["mgr"], 4 << 20);
    let want = fill(&s, 100, 4000);
    let node = Node::serve(&[("mainlog", &s)]);
    let pos = || s.position("mgr").unwrap();
    let mut malformed = 0;

    // Before SUBSCRIBE.
    let mut c = node.raw();
    assert!(matches!(c.ask(&checkpoint(want[0].0)), Answer::Closed));
    malformed += 1;
    assert_eq!(node.malformed(), malformed);
    assert_eq!(pos(), 0);

    // Beyond what was sent: a record the 64 KiB window held back, and u64::MAX.
    for beyond in [want[50].0, u64::MAX] {
        let mut c = node.raw();
        let a = c.ask(&subscribe(b"mainlog", b"mgr", MIN_WINDOW));
        assert!(matches!(a, Answer::Subscribed { next: 0 }), "{a:?}");
        c.read_at_least(u64::from(MIN_WINDOW));
        assert!(c.sent_end() <= want[50].0, "the window held record 50 back");
        assert!(
            matches!(c.ask(&checkpoint(beyond)), Answer::Closed),
            "{beyond}"
        );
        malformed += 1;
        assert_eq!(node.malformed(), malformed);
        assert_eq!(pos(), 0, "checkpoint at {beyond}, beyond what was sent");
    }

    // Not a record boundary, inside records that were sent (header and payload).
    for inside in [want[3].0 + 1, want[3].0 + 8, want[3].0 + 40, want[4].0 - 1] {
        let mut c = node.raw();
        let a = c.ask(&subscribe(b"mainlog", b"mgr", MIN_WINDOW));
        assert!(matches!(a, Answer::Subscribed { next: 0 }), "{a:?}");
        c.read_at_least(u64::from(MIN_WINDOW));
        assert!(
            matches!(c.ask(&checkpoint(inside)), Answer::Closed),
            "{inside}"
        );
        malformed += 1;
        assert_eq!(node.malformed(), malformed);
        assert_eq!(pos(), 0, "checkpoint at {inside}, inside a record");
    }

    // A sensible one, then backwards.
    let mut c = node.raw();
    let a = c.ask(&subscribe(b"mainlog", b"mgr", MIN_WINDOW));
    assert!(matches!(a, Answer::Subscribed { next: 0 }), "{a:?}");
    c.read_at_least(u64::from(MIN_WINDOW));
    let a = c.ask(&checkpoint(want[5].0));
    assert!(
        matches!(a, Answer::Checkpointed { offset, next } if offset == want[5].0 && next == want[6].0),
        "{a:?}"
    );
    assert_eq!(pos(), want[6].0);
    for back in [want[2].0, want[0].0, 1, want[5].0] {
        let a = c.ask(&checkpoint(back));
        assert!(
            matches!(a, Answer::Checkpointed { offset, next } if offset == back && next == want[6].0),
            "backwards to {back}: {a:?}"
        );
        assert_eq!(pos(), want[6].0, "moved back to {back}");
    }
    assert!(pos() <= c.sent_end());
    assert_eq!(node.malformed(), malformed, "going back is not malformed");
    drop(c);

    // A new subscription starts at the durable position; what it was not sent is still
    // refused.
    let mut c = node.raw();
    let a = c.subscribe_when_free(b"mainlog", b"mgr", MIN_WINDOW);
    assert!(
        matches!(a, Answer::Subscribed { next } if next == want[6].0),
        "{a:?}"
    );
    c.read_at_least(u64::from(MIN_WINDOW));
    assert_records(&c.got, &want, want[6].0);
    assert!(matches!(c.ask(&checkpoint(want[60].0)), Answer::Closed));
    assert_eq!(pos(), want[6].0);

    // The confirmed checkpoint is durable: the stream reopened shows it.
    drop(node);
    drop(s);
    let deadline = Instant::now() + T;
    let s = loop {
        match Stream::open(&path, &StreamOptions::default()) {
            Ok(s) => break s,
            // Subscription workers let go of the stream within a second.
            Err(LogError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(s.position("mgr").unwrap(), want[6].0);
}

/// One subscriber read from two connections at once (two managers configured with one
/// name): each would checkpoint what it stored, and one's checkpoint would move the
/// position past records the other never received — lost for it. The service refuses
/// the second reader with ALREADY_SUBSCRIBED naming the subscriber while the first is
/// open, and accepts it once the first closed (it then resumes at the first's durable
/// position). Another subscriber of the same log, and a second SUBSCRIBE on one
/// connection (refused, the first subscription keeps working), are covered too.
///
/// Bug found by this test (fixed in service.rs): the second connection was accepted and
/// both were sent the same records and could checkpoint past each other.
#[test]
fn one_reader_per_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("mainlog"), &["mgr", "other"], 4 << 20);
    let want = fill(&s, 200, 1000);
    let node = Node::serve(&[("mainlog", &s)]);

    let mut a = node.raw();
    let r = a.ask(&subscribe(b"mainlog", b"mgr", MIN_WINDOW));
    assert!(matches!(r, Answer::Subscribed { next: 0 }), "{r:?}");
    a.read_at_least(u64::from(MIN_WINDOW));

    // A second reader of `mgr`, with the well-behaved client.
    let mut b = node.client();
    match b.subscribe("mainlog", "mgr", 0) {
        Err(LogClientError::Refused { code, message, .. }) => {
            assert_eq!(code, code::ALREADY_SUBSCRIBED, "{message}");
            assert!(
                message.contains("\"mgr\"") && message.contains("mainlog"),
                "{message}"
            );
        }
        other => panic!("a second reader of mgr: {other:?}"),
    }
    assert_eq!(
        b.list().unwrap(),
        ["mainlog"],
        "the refusal leaves it usable"
    );
    // Another subscriber of the same log is not affected.
    drain(node.addr, "mainlog", "other", &want);

    // A second SUBSCRIBE on the first connection: refused, and the first subscription
    // still delivers and checkpoints.
    let r = a.ask(&subscribe(b"mainlog", b"other", 0));
    assert!(
        matches!(&r, Answer::Error(code::ALREADY_SUBSCRIBED, m) if m.contains("one subscription")),
        "{r:?}"
    );
    let last = a.got.last().unwrap().offset;
    let r = a.ask(&checkpoint(last));
    assert!(
        matches!(r, Answer::Checkpointed { offset, next } if offset == last && next == a.sent_end()),
        "{r:?}"
    );
    a.read_at_least(2 * u64::from(MIN_WINDOW));
    assert_records(&a.got, &want, 0);
    let first_pos = s.position("mgr").unwrap();
    assert!(first_pos > 0);

    // Still refused while `a` is open; accepted once it closed.
    assert!(matches!(
        b.subscribe("mainlog", "mgr", 0),
        Err(LogClientError::Refused {
            code: code::ALREADY_SUBSCRIBED,
            ..
        })
    ));
    drop(a);
    let deadline = Instant::now() + T;
    let next = loop {
        match b.subscribe("mainlog", "mgr", 1 << 20) {
            Ok(n) => break n,
            Err(LogClientError::Refused {
                code: code::ALREADY_SUBSCRIBED,
                ..
            }) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("after the first reader closed: {e}"),
        }
    };
    assert_eq!(next, first_pos);
    // Delivered from there, to the end.
    drain_on(&mut b, next, &want);
}

/// Subscribers that never read their sockets, one with the largest window and one with
/// the smallest. The node reads only a little ahead of each socket (the big one used to
/// get more than the engine's output limit queued and be closed as slow), so both stay
/// open with bounded output. Meanwhile another subscriber of the same log gets
/// everything, the node keeps answering, nothing is checkpointed for either stalled
/// subscriber, and each, once it reads, gets its records from the start, in order.
#[test]
fn subscribers_that_never_read_do_not_stall_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        &dir.path().join("mainlog"),
        &["good", "stall_big", "stall_small"],
        4 << 20,
    );
    // 24 MB: several times what the node reads ahead plus what the two socket buffers
    // hold.
    let want = fill(&s, 3000, 8 << 10);
    let node = Node::start(
        &[("mainlog", &s)],
        Limits {
            // Above what a subscription reads ahead of its socket (4 MiB and a frame),
            // far below its window.
            max_out_buffer: 8 << 20,
            idle_timeout: Duration::from_secs(300),
            ..Limits::default()
        },
    );

    let mut big = node.raw_small_buffer("stall-big");
    big.send(&subscribe(b"mainlog", b"stall_big", u32::MAX));
    let mut small = node.raw();
    small.send(&subscribe(b"mainlog", b"stall_small", MIN_WINDOW));

    drain(node.addr, "mainlog", "good", &want);
    node.assert_lists(&["mainlog"]);
    assert_eq!(s.position("stall_big").unwrap(), 0);
    assert_eq!(s.position("stall_small").unwrap(), 0);
    assert_eq!(
        node.engine.stats().rejected.get(RejectReason::Slow),
        0,
        "a subscriber within its window was closed as slow"
    );

    // Both are still open and served in order from the start.
    for (c, window) in [(&mut big, 16u64 << 20), (&mut small, u64::from(MIN_WINDOW))] {
        let r = c.answer();
        assert!(matches!(r, Answer::Subscribed { next: 0 }), "{r:?}");
        c.read_at_least(window);
        let (last, upto) = (c.got.last().unwrap().offset, c.sent_end());
        // (More records may come before the answer: the big window is far from full.)
        let r = c.ask(&checkpoint(last));
        assert!(
            matches!(r, Answer::Checkpointed { offset, next } if offset == last && next == upto),
            "{r:?}"
        );
        assert_records(&c.got, &want, 0);
    }
}

/// A subscriber with the largest window whose socket takes nothing for a while: the node
/// reads only a few MiB ahead of the socket (it used to queue the whole 64 MiB window in
/// its memory, per connection), and once the subscriber reads, everything arrives in
/// order.
#[test]
fn a_subscription_reads_only_a_little_ahead_of_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("mainlog"), &["slow"], 64 << 20);
    // 72 MiB: more than the largest window.
    let want = fill(&s, 9 * 1024, 8 << 10);
    let end = want.last().map(|(o, p)| o + frame_len(p.len())).unwrap();
    let node = Node::serve(&[("mainlog", &s)]);

    let mut c = node.raw_small_buffer("slow");
    c.send(&subscribe(b"mainlog", b"slow", u32::MAX));

    // Everything the node sends before the client reads anything.
    let sent = || node.handle.counters().bytes_sent.load(Ordering::Relaxed);
    let (mut last, mut since) = (sent(), Instant::now());
    let deadline = Instant::now() + T;
    while last == 0 || since.elapsed() < Duration::from_millis(500) {
        assert!(Instant::now() < deadline, "the node never stopped sending");
        std::thread::sleep(Duration::from_millis(20));
        let now = sent();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    // The socket buffers (up to 4 MiB sending on this kernel, 64 KiB receiving), what the
    // node reads ahead (4 MiB) and the frame that crosses it: well under a window.
    assert!(
        last <= 16 << 20,
        "the node read {last} bytes ahead of a socket that took nothing"
    );

    let r = c.answer();
    assert!(matches!(r, Answer::Subscribed { next: 0 }), "{r:?}");
    c.read_to_checkpointing(end);
    assert_eq!(c.got.len(), want.len());
    assert_records(&c.got, &want, 0);
}

/// Segment files of a stream, by first offset.
/// A bit flipped in a record of a sealed segment (bit rot; sealed segments are trusted
/// on open): the subscriber gets every record before it, then ERROR STORAGE naming the
/// offset; its checkpoints of those records are still taken, so its position reaches the
/// bad record and stops there; nothing at or past it is ever sent or checkpointed; once
/// the connection closes the subscriber can subscribe again (and meets the same error at
/// once); another log on the same service is unaffected.
///
/// Bugs found by this test (fixed in service.rs): the records read before the bad one in
/// the same batch were dropped with it, so the subscriber got the error and none of
/// them; and a checkpoint the client sent before it read the ERROR closed the connection
/// as malformed (CHECKPOINT before SUBSCRIBE), which could discard the ERROR queued.
#[test]
fn bit_flip_in_a_sealed_segment_is_reported_and_stops_the_subscriber_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mainlog");
    let s = open(&path, &["mgr"], 64 << 10);
    let want = fill(&s, 300, 1000);
    drop(s);
    let offsets: Vec<Offset> = want.iter().map(|(o, _)| *o).collect();
    let bad_i = corrupt_support::flip_a_bit_in_a_sealed_segment(&path, &offsets);
    let bad = want[bad_i].0;
    let s = open(&path, &["mgr"], 64 << 10);
    let other = open(&dir.path().join("other"), &["mgr"], 64 << 10);
    let other_want = fill(&other, 50, 500);
    let node = Node::serve(&[("mainlog", &s), ("other", &other)]);

    let mut c = node.raw();
    let r = c.ask(&subscribe(b"mainlog", b"mgr", MAX_WINDOW));
    assert!(matches!(r, Answer::Subscribed { next: 0 }), "{r:?}");
    let r = c.answer();
    let Answer::Error(code, msg) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(*code, code::STORAGE, "{msg}");
    assert!(msg.contains(&format!("offset {bad}")), "{msg}");
    assert_eq!(
        c.got.len(),
        bad_i,
        "every record before the bad one arrives"
    );
    assert_records(&c.got, &want, 0);
    assert_eq!(s.position("mgr").unwrap(), 0);
    // Nothing more is sent, but the subscription still takes checkpoints of what was
    // sent: the position can reach the bad record (where `dp-logctl verify` points).
    let r = c.ask(&checkpoint(want[bad_i - 1].0));
    assert_eq!(
        r,
        Answer::Checkpointed {
            offset: want[bad_i - 1].0,
            next: bad
        }
    );
    assert_eq!(s.position("mgr").unwrap(), bad);
    assert_eq!(c.got.len(), bad_i, "nothing sent after the ERROR");
    // The subscriber stays held while the connection is open.
    let mut other_c = node.raw();
    let r = other_c.ask(&subscribe(b"mainlog", b"mgr", MIN_WINDOW));
    assert!(
        matches!(r, Answer::Error(code::ALREADY_SUBSCRIBED, _)),
        "{r:?}"
    );
    // The bad record itself was never sent: checkpointing it is malformed (closed), and
    // moves nothing.
    let r = c.ask(&checkpoint(bad));
    assert_eq!(r, Answer::Closed);
    assert_eq!(s.position("mgr").unwrap(), bad);
    assert_eq!(node.malformed(), 1);

    // With the connection gone, subscribing again works: it starts at the bad record and
    // meets the same error at once, with nothing sent and the position unchanged.
    let mut c = node.raw();
    let r = c.subscribe_when_free(b"mainlog", b"mgr", MIN_WINDOW);
    assert!(
        matches!(r, Answer::Subscribed { next } if next == bad),
        "{r:?}"
    );
    let r = c.answer();
    assert!(matches!(r, Answer::Error(code::STORAGE, _)), "{r:?}");
    assert!(
        c.got.is_empty(),
        "nothing at or past the bad record is sent"
    );
    assert_eq!(s.position("mgr").unwrap(), bad);

    // Another log on the same service is unaffected.
    node.assert_lists(&["mainlog", "other"]);
    drain(node.addr, "other", "mgr", &other_want);
}
