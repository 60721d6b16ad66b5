//! Hostile input is closed and counted, and never disturbs other connections.

mod engine_support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use duraplane::engine::{
    BackendChoice, ClusterKey, Frame, RejectReason, ServiceId,
    auth::{Handshake, NONCE_LEN, Role, Step, kind},
    client::{Client, ClientError},
    frame::{FrameHeader, HEADER_LEN},
};
use engine_support::*;
use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};
use zerocopy::FromBytes;

/// Reads until the engine closes the connection; panics if it stays open.
fn assert_closed(mut s: TcpStream) {
    s.set_read_timeout(Some(EVENTUALLY)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("connection still open after {EVENTUALLY:?}")
            }
            Err(_) => return, // reset
        }
    }
}

fn raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    s
}

fn count(e: &duraplane::engine::Engine, r: RejectReason) -> u64 {
    e.stats().rejected.get(r)
}

fn wrong_key_is_rejected_and_counted(b: BackendChoice) {
    let (engine, seen) = start_echo(config(b, "server", &[v4()]));
    let addr = engine.local_addrs()[0];
    let err = Client::connect(addr, &other_key(), "intruder", Duration::from_secs(10)).unwrap_err();
    // The client notices the server's proof does not verify under its key.
    assert!(
        matches!(err, ClientError::Auth { .. } | ClientError::Closed { .. }),
        "{err}"
    );
    eventually("bad_auth counted", || {
        count(&engine, RejectReason::BadAuth) == 1
    });
    assert_eq!(engine.stats().authenticated, 0);
    assert!(seen.lock().unwrap().opened.is_empty());
    assert_echo(addr);
    engine.stop().unwrap();
}

fn unauthenticated_frame_is_rejected(b: BackendChoice) {
    let (engine, seen) = start_echo(config(b, "server", &[v4()]));
    let addr = engine.local_addrs()[0];
    let s = raw(addr, &Frame::new(ECHO, 1, b"let me in".to_vec()).encode());
    assert_closed(s);
    eventually("unauthenticated counted", || {
        count(&engine, RejectReason::Unauthenticated) == 1
    });
    // A service frame between HELLO and PROOF is just as unauthenticated.
    let (_hs, hello) = Handshake::start(Role::Initiator, "x");
    let mut bytes = hello.encode();
    bytes.extend(Frame::new(ECHO, 1, vec![]).encode());
    assert_closed(raw(addr, &bytes));
    eventually("second unauthenticated", || {
        count(&engine, RejectReason::Unauthenticated) == 2
    });
    assert!(seen.lock().unwrap().frames.is_empty());
    engine.stop().unwrap();
}

fn bad_frames_are_rejected_while_a_good_connection_works(b: BackendChoice) {
    let mut cfg = config(b, "server", &[v4()]);
    cfg.limits.max_frame = 64 * 1024;
    let (engine, _seen) = start_echo(cfg);
    let addr = engine.local_addrs()[0];
    let mut good = client(addr);
    let ping = |c: &mut Client| {
        let f = Frame::new(ECHO, 5, b"good".to_vec());
        c.send(&f).unwrap();
        assert_eq!(c.recv().unwrap(), f);
    };
    ping(&mut good);

    // Oversized: only the header is sent; the engine must not wait for the payload.
    let mut hdr = Frame::new(ServiceId::ENGINE, kind::HELLO, vec![]).encode();
    hdr[8..12].copy_from_slice(&(64 * 1024 + 1u32).to_be_bytes());
    assert_closed(raw(addr, &hdr));
    eventually("oversized", || count(&engine, RejectReason::Oversized) == 1);
    ping(&mut good);

    // Bad magic (an SMTP client on the wrong port), bad version.
    assert_closed(raw(addr, b"EHLO mail.example.com\r\n"));
    let mut v = Frame::new(ServiceId::ENGINE, kind::HELLO, vec![]).encode();
    v[4] = 0xee;
    assert_closed(raw(addr, &v));
    // Malformed handshake: short HELLO, wrong role, PROOF before HELLO, bad name length.
    assert_closed(raw(
        addr,
        &Frame::new(ServiceId::ENGINE, kind::HELLO, vec![1, 2, 3]).encode(),
    ));
    let (_h, mut hello) = Handshake::start(Role::Acceptor, "same-role");
    assert_closed(raw(addr, &hello.encode()));
    assert_closed(raw(
        addr,
        &Frame::new(ServiceId::ENGINE, kind::PROOF, vec![0; 32]).encode(),
    ));
    hello.payload[NONCE_LEN] = Role::Initiator as u8;
    hello.payload[NONCE_LEN + 1] = 200;
    assert_closed(raw(addr, &hello.encode()));
    eventually("malformed", || count(&engine, RejectReason::Malformed) == 6);

    // After authentication: an unknown service and a bad engine message are malformed too.
    let mut c = client(addr);
    c.send(&Frame::new(ServiceId(99), 1, vec![])).unwrap();
    assert!(c.recv().is_err());
    let mut c = client(addr);
    c.send(&Frame::new(ServiceId::ENGINE, kind::HELLO, vec![]))
        .unwrap();
    assert!(c.recv().is_err());
    eventually("malformed after auth", || {
        count(&engine, RejectReason::Malformed) == 8
    });

    ping(&mut good);
    let s = engine.stats();
    assert_eq!(s.rejected.total(), 9, "{s:?}");
    assert_eq!(s.authenticated, 3);
    engine.stop().unwrap();
}

fn slow_clients_are_closed(b: BackendChoice) {
    let mut cfg = config(b, "server", &[v4()]);
    cfg.limits.auth_timeout = Duration::from_millis(300);
    cfg.limits.idle_timeout = Duration::from_millis(1500);
    let (engine, seen) = start_echo(cfg);
    let addr = engine.local_addrs()[0];
    // Connects and says nothing.
    let silent = TcpStream::connect(addr).unwrap();
    // Trickles a HELLO one byte at a time, slower than the deadline allows.
    let (_h, hello) = Handshake::start(Role::Initiator, "trickle");
    let mut trickle = TcpStream::connect(addr).unwrap();
    let bytes = hello.encode();
    let writer = std::thread::spawn(move || {
        for b in bytes {
            if trickle.write_all(&[b]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    assert_closed(silent);
    assert!(writer.join().unwrap(), "trickling client was never cut off");
    eventually("slow counted", || count(&engine, RejectReason::Slow) == 2);

    // Authenticated but silent past the idle deadline (server keepalives do not count).
    let mut idle = client(addr);
    assert!(matches!(idle.recv(), Err(ClientError::Closed { .. })));
    eventually("idle counted", || count(&engine, RejectReason::Slow) == 3);
    eventually("services told", || seen.lock().unwrap().closed.len() == 1);

    // A client that pings stays up past the idle deadline.
    let mut live = client(addr);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        live.ping().unwrap();
    }
    let f = Frame::new(ECHO, 1, b"alive".to_vec());
    live.send(&f).unwrap();
    assert_eq!(live.recv().unwrap(), f);
    engine.stop().unwrap();
}

fn connection_cap(b: BackendChoice) {
    let mut cfg = config(b, "server", &[v4()]);
    cfg.limits.max_connections = 2;
    let (engine, _seen) = start_echo(cfg);
    let addr = engine.local_addrs()[0];
    let mut a = client(addr);
    let _b = client(addr);
    let over = TcpStream::connect(addr).unwrap();
    assert_closed(over);
    eventually("over capacity", || {
        count(&engine, RejectReason::OverCapacity) == 1
    });
    let f = Frame::new(ECHO, 1, vec![1]);
    a.send(&f).unwrap();
    assert_eq!(a.recv().unwrap(), f);
    drop(a);
    eventually("slot freed", || engine.stats().open == 1);
    assert_echo(addr);
    engine.stop().unwrap();
}

fn slow_reader_is_cut_off_by_the_output_limit(b: BackendChoice) {
    let mut cfg = config(b, "server", &[v4()]);
    cfg.limits.max_out_buffer = 256 * 1024;
    let (engine, _seen) = start_echo(cfg);
    let addr = engine.local_addrs()[0];
    let mut c = client(addr);
    // Ask for echoes and never read them: kernel buffers fill, then the engine's queue.
    let f = Frame::new(ECHO, 1, vec![7; 60 * 1024]);
    let mut sent = 0;
    for _ in 0..2000 {
        if c.send(&f).is_err() {
            break;
        }
        sent += 1;
        if count(&engine, RejectReason::Slow) == 1 {
            break;
        }
    }
    eventually("slow reader counted", || {
        count(&engine, RejectReason::Slow) == 1
    });
    assert!(sent > 4);
    assert_echo(addr);
    engine.stop().unwrap();
}

/// Random bytes and random frame sequences, before and after authentication; the
/// engine stays up and a good client keeps working. Seeded, bounded.
fn fuzz_does_not_disturb_the_engine(b: BackendChoice) {
    let mut cfg = config(b, "server", &[v4()]);
    cfg.limits.max_frame = 4096;
    let (engine, _seen) = start_echo(cfg);
    let addr = engine.local_addrs()[0];
    let mut good = client(addr);
    let mut rng = StdRng::seed_from_u64(0x4802);
    let key: ClusterKey = key();
    for case in 0..150u32 {
        let mut bytes = Vec::new();
        let authenticate = case % 3 == 2;
        match case % 3 {
            0 => {
                let n = rng.random_range(0..3000);
                bytes.resize(n, 0);
                rng.fill_bytes(&mut bytes);
            }
            _ => {
                for _ in 0..rng.random_range(1..6) {
                    let service = ServiceId(rng.random_range(0..10));
                    let mut p = vec![0u8; rng.random_range(0..200)];
                    rng.fill_bytes(&mut p);
                    let mut enc = Frame::new(service, rng.random_range(0..5), p).encode();
                    if rng.random_bool(0.2) {
                        let i = rng.random_range(0..HEADER_LEN);
                        enc[i] = rng.random();
                    }
                    if rng.random_bool(0.1) {
                        enc.truncate(rng.random_range(0..enc.len()));
                    }
                    bytes.extend(enc);
                }
            }
        }
        let Ok(mut s) = TcpStream::connect(addr) else {
            panic!("engine stopped accepting at case {case}");
        };
        if authenticate {
            let (mut hs, hello) = Handshake::start(Role::Initiator, "fuzz");
            s.write_all(&hello.encode()).unwrap();
            s.set_read_timeout(Some(EVENTUALLY)).unwrap();
            let mut hdr = [0u8; HEADER_LEN];
            loop {
                s.read_exact(&mut hdr).unwrap();
                let h = FrameHeader::read_from_bytes(&hdr[..]).unwrap();
                let mut p = vec![0u8; h.length.get() as usize];
                s.read_exact(&mut p).unwrap();
                let f = Frame::new(ServiceId(h.service), h.kind, p);
                match hs.on_frame(&key, &f).unwrap() {
                    Step::Send(r) => s.write_all(&r.encode()).unwrap(),
                    Step::Done { .. } => break,
                }
            }
        }
        // The engine may close first: write errors are expected.
        let _ = s.write_all(&bytes);
        drop(s);
        if case % 25 == 0 {
            let f = Frame::new(ECHO, 3, case.to_be_bytes().to_vec());
            good.send(&f).unwrap();
            assert_eq!(
                good.recv().unwrap(),
                f,
                "good client disturbed at case {case}"
            );
        }
    }
    // Every fuzz connection is eventually gone; the good one remains.
    eventually("fuzz connections closed", || engine.stats().open == 1);
    let s = engine.stats();
    assert_eq!(s.accepted, 151);
    assert!(s.rejected.total() > 50, "{s:?}");
    assert_echo(addr);
    let f = Frame::new(ECHO, 3, b"end".to_vec());
    good.send(&f).unwrap();
    assert_eq!(good.recv().unwrap(), f);
    engine.stop().unwrap();
}

both_backends!(
    wrong_key_is_rejected_and_counted,
    unauthenticated_frame_is_rejected,
    bad_frames_are_rejected_while_a_good_connection_works,
    slow_clients_are_closed,
    connection_cap,
    slow_reader_is_cut_off_by_the_output_limit,
    fuzz_does_not_disturb_the_engine,
);
