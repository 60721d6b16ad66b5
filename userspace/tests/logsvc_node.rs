//! One `duraplane run` daemon in its own namespace with `cluster://` streams: a local
//! program appends through the local socket and gets durable offsets back; `cluster show
//! logs` prints Momentum's format; the port-4802 log service lists, subscribes, delivers,
//! checkpoints, resumes after the checkpoint on reconnect without redelivering at or below
//! it, refuses a wrong key and unknown subscribers, and closes and counts malformed
//! requests.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use duraplane::{
    engine::{ClusterKey, Frame, ServiceId},
    log::{
        Record,
        daemon::{LocalLogClient, local_socket_path},
        service::{Delivery, LogClient, LogClientError, code},
    },
    testbed::{
        Testbed,
        daemons::{DaemonNode, solo_log_config, write_key},
    },
};

const BIN: &str = env!("CARGO_BIN_EXE_duraplane");
const KEY: &[u8] = b"log-service-test-key-0123456789abcdef";

fn config(dir: &Path, socket: &Path, key: &Path) -> String {
    let d = dir.display();
    solo_log_config(
        &format!(
            r#"ec_logger "ec_logger" {{
  mainlog = "cluster://{d}/logs/mainlog.cluster=>master"
  paniclog = "cluster://{d}/logs/paniclog.cluster=>master"
  rejectlog = "cluster://{d}/logs/rejectlog.cluster=>master"
}}
bounce_logger "bounce_logger" {{
  bouncelog = "cluster://{d}/logs/bouncelog.cluster?subscribers=master,mgr1"
}}
"#
        ),
        &format!(
            "    mainlog = \"{d}/logs/mainlog.cluster\"\n    bouncelog = \"{d}/logs/bouncelog.cluster\"\n"
        ),
        socket,
        key,
    )
}

fn ask(n: &DaemonNode, cmd: &str) -> String {
    n.console(Path::new(BIN), cmd)
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` with a log client connected from inside the daemon's namespace.
fn with_client<T: Send + 'static>(
    tb: &Testbed,
    key: &'static [u8],
    f: impl FnOnce(Result<LogClient, LogClientError>) -> T + Send + 'static,
) -> T {
    tb.run_in("solo", move || {
        let key = ClusterKey::from_bytes(key).expect("key");
        let addr: SocketAddr = "192.0.2.1:4802".parse().expect("addr");
        f(LogClient::connect(
            addr,
            &key,
            "mgr1",
            Duration::from_secs(2),
        ))
    })
    .expect("netns")
}

/// Receives until `n` records arrived (or 10 s passed).
fn receive(c: &mut LogClient, n: usize) -> Vec<Record> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < n && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)).expect("poll") {
            Some(Delivery::Records(r)) => got.extend(r),
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    got
}

/// Requests written all at once (the daemon appends consecutive requests for one stream
/// that arrive together as one batch): one answer per request, in request order; records
/// of one stream in one write get consecutive frame positions; an unknown stream and a
/// record too large for the stream's segments refuse only themselves; a record over the
/// socket's limit is refused and ends the connection.
fn raw_requests_in_one_write(lsock: &Path) {
    use std::io::{Read, Write};
    fn put(req: &mut Vec<u8>, name: &str, len: u32, rec: &[u8]) {
        req.push(name.len() as u8);
        req.extend_from_slice(name.as_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(rec);
    }
    let rec = |i: usize| format!("raw {i:03}").into_bytes();
    let big = vec![0x5au8; 5 << 20]; // over the 4 MiB segments, under the socket's 16 MiB
    let mut req = Vec::new();
    for i in 0..150 {
        put(&mut req, "mainlog", 7, &rec(i));
    }
    put(&mut req, "nosuchlog", 1, b"x");
    put(&mut req, "nosuchlog", 1, b"y");
    put(&mut req, "bouncelog", 7, &rec(0));
    put(&mut req, "bouncelog", 7, &rec(1));
    put(&mut req, "mainlog", big.len() as u32, &big);
    put(&mut req, "mainlog", 7, &rec(150));
    put(&mut req, "mainlog", (16 << 20) + 1, b"");
    let mut c = std::os::unix::net::UnixStream::connect(lsock).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let writer = {
        let mut c = c.try_clone().expect("clone");
        std::thread::spawn(move || c.write_all(&req))
    };
    let mut answers = Vec::new();
    c.read_to_end(&mut answers)
        .expect("answers, then the daemon closes");
    writer.join().expect("writer").expect("requests written");
    // Parse: [0][offset u64] or [1][len u16][message].
    let mut got: Vec<Result<u64, String>> = Vec::new();
    let mut a = &answers[..];
    while let Some((&st, rest)) = a.split_first() {
        if st == 0 {
            got.push(Ok(u64::from_be_bytes(rest[..8].try_into().expect("8"))));
            a = &rest[8..];
        } else {
            let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            got.push(Err(String::from_utf8_lossy(&rest[2..2 + n]).into_owned()));
            a = &rest[2 + n..];
        }
    }
    assert_eq!(got.len(), 157, "one answer per request: {got:?}");
    let main: Vec<u64> = got[..150]
        .iter()
        .map(|r| r.clone().expect("mainlog record durable"))
        .collect();
    assert!(
        main.windows(2).all(|w| w[1] == w[0] + 32 + 7),
        "consecutive frame positions: {main:?}"
    );
    for r in &got[150..152] {
        let e = r.as_ref().expect_err("unknown stream refused");
        assert!(
            e.contains("no cluster:// stream named \"nosuchlog\""),
            "{e}"
        );
    }
    let (b0, b1) = (got[152].clone(), got[153].clone());
    assert_eq!(b0.expect("bouncelog") + 32 + 7, b1.expect("bouncelog"));
    let e = got[154].as_ref().expect_err("over the segment size");
    assert!(e.contains("exceeds the maximum"), "{e}");
    assert!(got[155].as_ref().expect("after the refused one") > &main[149]);
    assert_eq!(got[156], Err("record too large".to_owned()));
}

fn start(tb: &mut Testbed, dir: &Path) -> (DaemonNode, PathBuf) {
    tb.add_host("solo").expect("host");
    tb.attach("solo", &["192.0.2.1/24"]).expect("attach");
    let key = dir.join("cluster.key");
    write_key(&key, KEY).expect("key");
    let socket = dir.join("solo.sock");
    let node = DaemonNode::start(
        tb,
        Path::new(BIN),
        "solo",
        dir,
        socket.clone(),
        &config(dir, &socket, &key),
    )
    .expect("daemon");
    (node, socket)
}

#[test]
fn local_appends_show_logs_and_the_log_service() {
    let mut tb = Testbed::new().expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, socket) = start(&mut tb, dir.path());
    for s in ["mainlog", "paniclog", "rejectlog", "bouncelog"] {
        assert!(
            dir.path()
                .join(format!("logs/{s}.cluster/metadata"))
                .exists(),
            "{s} stream created at startup"
        );
    }

    // A local program appends through the local socket; offsets are frame positions.
    let lsock = local_socket_path(&socket);
    let mode = std::fs::metadata(&lsock).expect("log.sock").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o660
    );
    let mut lc = LocalLogClient::connect(&lsock).expect("connect log.sock");
    let mut offsets = Vec::new();
    for i in 0..100 {
        offsets.push(
            lc.append("bouncelog", format!("bounce {i:03}").as_bytes())
                .expect("append"),
        );
    }
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 32 + 10));
    let err = lc.append("nosuchlog", b"x").expect_err("unknown stream");
    assert!(err.to_string().contains("no cluster:// stream"), "{err}");

    // cluster show logs: Momentum's format, published logs in dictionary order.
    let shown = ask(&node, "cluster show logs");
    assert!(
        shown.starts_with(
            "bouncelog\n\t[on disk: 4200 bytes]\n\t[subscriber: 'master' @ 00000000:00000000]\n\t[subscriber: 'mgr1' @ 00000000:00000000]\nmainlog\n\t[on disk: "
        ),
        "{shown}"
    );

    // The service: list, subscribe, receive everything in order, checkpoint the 50th.
    let (cp, first) = with_client(&tb, KEY, |c| {
        let mut c = c.expect("right key");
        assert_eq!(c.node(), "solo");
        assert_eq!(c.list().expect("list"), vec!["bouncelog", "mainlog"]);
        // No corosync in this namespace: no announced members.
        assert_eq!(
            c.members().expect("members"),
            Vec::<(String, String)>::new()
        );
        let err = c
            .subscribe("bouncelog", "nobody", 0)
            .expect_err("unknown sub");
        assert!(
            matches!(
                err,
                LogClientError::Refused {
                    code: code::UNKNOWN_SUBSCRIBER,
                    ..
                }
            ),
            "{err}"
        );
        assert!(matches!(
            c.subscribe("paniclog", "master", 0),
            Err(LogClientError::Refused {
                code: code::UNKNOWN_LOG,
                ..
            })
        ));
        assert_eq!(c.subscribe("bouncelog", "master", 0).expect("subscribe"), 0);
        let got = receive(&mut c, 100);
        assert_eq!(got.len(), 100);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.payload, format!("bounce {i:03}").as_bytes());
        }
        let next = c
            .checkpoint(got[49].offset, Duration::from_secs(5))
            .expect("cp");
        assert_eq!(next, got[50].offset);
        (got[49].offset, got[50].offset)
    });
    wait_until("checkpoint shown", || {
        ask(&node, "cluster show logs")
            .contains(&format!("[subscriber: 'master' @ 00000000:{first:08x}]"))
    });

    // Reconnect: resumes after the checkpoint, nothing at or below it comes again, and
    // records appended meanwhile follow.
    lc.append("bouncelog", b"after reconnect").expect("append");
    with_client(&tb, KEY, move |c| {
        let mut c = c.expect("right key");
        assert_eq!(c.subscribe("bouncelog", "master", 0).expect("sub"), first);
        let got = receive(&mut c, 51);
        assert_eq!(got.len(), 51);
        assert!(got.iter().all(|r| r.offset > cp));
        assert_eq!(got[0].payload, b"bounce 050");
        assert_eq!(got[50].payload, b"after reconnect");
        // Nothing more.
        assert!(matches!(c.poll(Duration::from_millis(300)), Ok(None)));
    });

    // Pipelined: 500 records written ahead of their answers, one answer each, in order,
    // at consecutive frame positions; a refused record in the middle refuses only itself.
    let recs: Vec<Vec<u8>> = (0..500)
        .map(|i| format!("piped {i:04}").into_bytes())
        .collect();
    let res = lc.append_pipelined("mainlog", &recs).expect("pipelined");
    assert_eq!(res.len(), 500);
    let offs: Vec<u64> = res.into_iter().map(|r| r.expect("durable")).collect();
    assert!(offs.windows(2).all(|w| w[1] == w[0] + 32 + 10), "{offs:?}");
    let mixed: Vec<&[u8]> = vec![b"m1", b"m2"];
    let ok = lc.append_pipelined("mainlog", &mixed).expect("pipelined");
    assert_eq!(
        ok[0].as_ref().expect("m1") + 32 + 2,
        *ok[1].as_ref().expect("m2")
    );
    let bad = lc.append_pipelined("nosuchlog", &mixed).expect("pipelined");
    assert!(bad.iter().all(|r| r.is_err()));
    // The connection is still usable after refusals.
    lc.append("mainlog", b"still here")
        .expect("append after refusals");
    raw_requests_in_one_write(&lsock);

    // Wrong key: refused.
    assert!(with_client(
        &tb,
        b"a-completely-different-key-000000",
        |c| c.is_err()
    ));

    // Malformed requests close the connection and are counted.
    let closed = with_client(&tb, KEY, |c| {
        let mut c = c.expect("right key");
        c.send_raw(&Frame::new(ServiceId::LOG, 99, vec![1, 2, 3]))
            .expect("send");
        c.poll(Duration::from_secs(3)).is_err()
    });
    assert!(closed, "unknown kind closes the connection");
    let closed = with_client(&tb, KEY, |c| {
        let mut c = c.expect("right key");
        c.subscribe("bouncelog", "mgr1", 0).expect("sub");
        let _ = receive(&mut c, 101);
        // A checkpoint at an offset that was never sent.
        c.send_checkpoint(7).expect("send");
        let mut closed = false;
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if c.poll(Duration::from_millis(200)).is_err() {
                closed = true;
                break;
            }
        }
        closed
    });
    assert!(closed, "a bad checkpoint closes the connection");
    wait_until("malformed counted", || {
        ask(&node, "cluster info").contains("2 malformed requests")
    });
    // mgr1's checkpoint did not move.
    assert!(ask(&node, "cluster show logs").contains("[subscriber: 'mgr1' @ 00000000:00000000]"));

    // A record damaged on disk (one payload byte flipped under the daemon): the
    // subscription ends with a storage error that reaches the client — the connection
    // stays usable — and nothing after the damage is delivered as if it were whole.
    let seg_dir = dir.path().join("logs/bouncelog.cluster");
    let (seg, at) = std::fs::read_dir(&seg_dir)
        .expect("segments")
        .flatten()
        .map(|e| e.path())
        .find_map(|p| {
            let at = find(&std::fs::read(&p).ok()?, b"bounce 000")?;
            Some((p, at))
        })
        .expect("segment with the first record");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open segment");
        f.write_all_at(b"X", at as u64).expect("damage");
    }
    with_client(&tb, KEY, |c| {
        let mut c = c.expect("right key");
        c.subscribe("bouncelog", "mgr1", 0).expect("sub");
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = loop {
            match c.poll(Duration::from_millis(200)) {
                Ok(Some(Delivery::Records(r))) => panic!("damaged records delivered: {r:?}"),
                Ok(_) => assert!(Instant::now() < deadline, "no storage error"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                &err,
                LogClientError::Refused {
                    code: code::STORAGE,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            c.list().expect("the connection is still open"),
            vec!["bouncelog".to_string(), "mainlog".to_string()]
        );
    });
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The daemon's own loggers: an error line (replication off: no key file) lands in
/// paniclog; the streams are readable once the daemon has stopped.
#[test]
fn own_error_lines_reach_paniclog() {
    let mut tb = Testbed::new().expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    tb.add_host("solo").expect("host");
    tb.attach("solo", &["192.0.2.1/24"]).expect("attach");
    let socket = dir.path().join("solo.sock");
    let missing = dir.path().join("no-such.key");
    let text = config(dir.path(), &socket, &missing)
        .replace("  logs = [", "  Replicate \"inbound_cidr\" {}\n  logs = [");
    let mut node = DaemonNode::start(
        &tb,
        Path::new(BIN),
        "solo",
        dir.path(),
        socket.clone(),
        &text,
    )
    .expect("daemon");
    wait_until("replication off", || {
        ask(&node, "cluster info").contains("Replication: off")
    });
    // The own-log writer commits within a fraction of a second; stop the daemon cleanly.
    std::thread::sleep(Duration::from_millis(500));
    node.signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    wait_until("daemon stopped", || {
        node.console(Path::new(BIN), "cluster nodename").is_err()
    });
    node.kill();
    let s = duraplane::log::Stream::open(
        dir.path().join("logs/paniclog.cluster"),
        &duraplane::log::StreamOptions {
            create: false,
            ..Default::default()
        },
    )
    .expect("open paniclog");
    let lines: Vec<String> = s
        .read_at(0)
        .filter_map(|e| match e.expect("read") {
            duraplane::log::Entry::Record(r) => Some(String::from_utf8_lossy(&r.payload).into()),
            _ => None,
        })
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(":ERROR: replication is OFF: cluster key")),
        "{lines:?}"
    );
}
