//! Accept, authenticate, and serve a service on both backends, over IPv4 and IPv6.

mod engine_support;

use std::time::Duration;

use duraplane::engine::{BackendChoice, ConnOrigin, Frame, ServiceId};
use engine_support::*;

fn round_trip_v4_v6(b: BackendChoice) {
    let (engine, seen) = start_echo(config(b, "server", &[v4(), v6()]));
    assert_eq!(engine.stats().backend, expected(b));
    let addrs = engine.local_addrs().to_vec();
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6());
    for addr in &addrs {
        let mut c = client(*addr);
        assert_eq!(c.peer_name(), "server");
        for i in 0..20u8 {
            let f = Frame::new(ECHO, i, vec![i; i as usize * 1000]);
            c.send(&f).unwrap();
            assert_eq!(c.recv().unwrap(), f);
        }
        // A frame at the size limit passes whole.
        let big = Frame::new(
            ECHO,
            99,
            vec![0xab; duraplane::engine::DEFAULT_MAX_FRAME as usize],
        );
        c.send(&big).unwrap();
        assert_eq!(c.recv().unwrap(), big);
    }
    // Byte counts are taken when the kernel reports a write done: eventually.
    eventually("bytes out counted", || engine.stats().bytes_out > 1 << 21);
    let s = engine.stats();
    assert_eq!(s.accepted, 2);
    assert_eq!(s.authenticated, 2);
    assert_eq!(s.rejected.total(), 0);
    assert!(s.frames_in >= 2 * 21 + 4, "{s:?}");
    assert!(s.bytes_in > 1 << 21, "{s:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.opened.len(), 2);
    assert_eq!(seen.opened[0].remote_name, "client");
    assert!(
        matches!(seen.opened[1].origin, ConnOrigin::Inbound { listener } if listener == addrs[1])
    );
    drop(seen);
    if b == BackendChoice::IoUring {
        assert!(
            s.uring.enters > 0 && s.uring.completions > 0,
            "{:?}",
            s.uring
        );
        assert!(s.uring.in_flight_max >= 1);
    }
    engine.stop().unwrap();
}

fn handle_pushes_frames_and_closes(b: BackendChoice) {
    let (engine, seen) = start_echo(config(b, "server", &[v4()]));
    let addr = engine.local_addrs()[0];
    let mut c = client(addr);
    // The service learns of the connection when authenticated.
    eventually("on_open", || seen.lock().unwrap().opened.len() == 1);
    let id = seen.lock().unwrap().opened[0].id;
    let h = engine.handle();
    let pusher = std::thread::spawn(move || {
        for i in 0..50u8 {
            h.send(id, Frame::new(ECHO, 50, vec![i])).unwrap();
        }
    });
    for i in 0..50u8 {
        assert_eq!(c.recv().unwrap(), Frame::new(ECHO, 50, vec![i]));
    }
    pusher.join().unwrap();
    // Frames to an unknown connection or service are dropped, not fatal.
    engine
        .handle()
        .send(
            duraplane::engine::ConnId(999_999),
            Frame::new(ECHO, 1, vec![]),
        )
        .unwrap();
    engine.handle().post(ServiceId(99), Box::new(1u32)).unwrap();
    engine.handle().close(id).unwrap();
    assert!(c.recv().is_err());
    eventually("on_close", || seen.lock().unwrap().closed.len() == 1);
    eventually("open count drops", || engine.stats().open == 0);
    engine.stop().unwrap();
}

fn timers_fire_periodic_and_one_shot(b: BackendChoice) {
    let (engine, seen) = start_echo(config(b, "server", &[v4()]));
    let mut c = client(engine.local_addrs()[0]);
    c.send(&Frame::new(ECHO, 202, vec![])).unwrap();
    c.send(&Frame::new(ECHO, 200, vec![])).unwrap();
    let mut one_shot = 0;
    let mut periodic = 0;
    while periodic < 5 {
        let f = c.recv().unwrap();
        match f.kind {
            201 => periodic += 1,
            203 => one_shot += 1,
            k => panic!("unexpected kind {k}"),
        }
    }
    assert_eq!(one_shot, 1);
    // Closing cancels the periodic timer: the count stops growing.
    drop(c);
    eventually("on_close", || seen.lock().unwrap().closed.len() == 1);
    let t = seen.lock().unwrap().timers;
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(seen.lock().unwrap().timers, t);
    engine.stop().unwrap();
}

fn stop_is_clean_with_open_connections(b: BackendChoice) {
    let (engine, seen) = start_echo(config(b, "server", &[v4()]));
    let addr = engine.local_addrs()[0];
    let mut clients: Vec<_> = (0..5).map(|_| client(addr)).collect();
    engine.stop().unwrap();
    for c in &mut clients {
        assert!(c.recv().is_err());
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.closed.len(), 5);
    assert!(
        seen.closed
            .iter()
            .all(|(_, r)| *r == duraplane::engine::CloseReason::Stopping)
    );
    // The port is free again.
    drop(std::net::TcpListener::bind(addr).unwrap());
}

both_backends!(
    round_trip_v4_v6,
    handle_pushes_frames_and_closes,
    timers_fire_periodic_and_one_shot,
    stop_is_clean_with_open_connections,
);
