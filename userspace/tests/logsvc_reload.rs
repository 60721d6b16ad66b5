//! `config reload` of a running daemon's `cluster://` destinations: a destination that
//! stays keeps its stream (appends continue at the next offset), a new one opens (created
//! with its subscribers) and takes appends at once, a removed one is closed — its
//! directory's lock is released, so another process can open it — and every record
//! acknowledged before, during and after the reloads is in the stream, byte for byte.
//! The port-4802 log service publishes the reloaded `logs` set: new subscriptions see it
//! at once, a subscription to a log no longer published ends with an error frame.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use duraplane::{
    engine::ClusterKey,
    log::{
        Entry, Offset, Stream, StreamOptions,
        daemon::{LocalLogClient, LocalLogError, local_socket_path},
        service::{BatchDelivery, Delivery, LogClient, LogClientError, code},
    },
    testbed::{
        Testbed,
        daemons::{DaemonNode, solo_log_config, write_key},
    },
};

const BIN: &str = env!("CARGO_BIN_EXE_duraplane");

/// A daemon config whose ec_logger has `dests` (option, stream directory name).
fn config(dir: &Path, socket: &Path, dests: &[(&str, &str)]) -> String {
    let d = dir.display();
    let lines: String = dests
        .iter()
        .map(|(opt, name)| format!("  {opt} = \"cluster://{d}/logs/{name}.cluster=>master\"\n"))
        .collect();
    format!(
        r#"ec_logger "ec_logger" {{
{lines}}}
cluster {{
  nodename = "solo"
  nodeaddr = "192.0.2.1"
}}
duraplane {{
  control_socket = "{}"
  metrics = "off"
}}
"#,
        socket.display(),
    )
}

fn reload(n: &DaemonNode, dir: &Path, socket: &Path, dests: &[(&str, &str)]) {
    std::fs::write(&n.config, config(dir, socket, dests)).expect("write config");
    let out = n
        .console(Path::new(BIN), "config reload")
        .unwrap_or_else(|e| panic!("config reload: {e}"));
    assert!(out.contains("Configuration reloaded"), "{out}");
    assert!(!out.contains("error:"), "{out}");
}

/// Every record of the stream directory `dir`, opened by this process (so the daemon must
/// have closed it).
fn records(dir: &Path) -> Vec<(Offset, Vec<u8>)> {
    let s = Stream::open(dir, &StreamOptions::default())
        .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    s.read_at(0)
        .map(|e| match e.expect("read") {
            Entry::Record(r) => (r.offset, r.payload),
            Entry::Gap { from, to } => panic!("gap {from}..{to} in {}", dir.display()),
        })
        .collect()
}

type Acked = Arc<Mutex<BTreeMap<String, Vec<(Offset, Vec<u8>)>>>>;

fn append(c: &mut LocalLogClient, acked: &Acked, stream: &str, rec: String) {
    let off = c
        .append(stream, rec.as_bytes())
        .unwrap_or_else(|e| panic!("append to {stream}: {e}"));
    acked
        .lock()
        .unwrap()
        .entry(stream.into())
        .or_default()
        .push((off, rec.into_bytes()));
}

#[test]
fn reload_opens_and_closes_streams_without_losing_acknowledged_records() {
    let mut tb = Testbed::new().expect("testbed");
    tb.add_host("solo").expect("host");
    tb.attach("solo", &["192.0.2.1/24"]).expect("attach");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let socket = d.join("solo.sock");
    let node = DaemonNode::start(
        &tb,
        Path::new(BIN),
        "solo",
        d,
        socket.clone(),
        &config(d, &socket, &[("custlog", "cust"), ("acctlog", "acct")]),
    )
    .expect("daemon");
    let log_sock = local_socket_path(&socket);
    let acked: Acked = Arc::default();

    // A writer keeps appending to custlog (which every config keeps; not an own log, so only our records) across the reloads.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, acked, log_sock) = (stop.clone(), acked.clone(), log_sock.clone());
        std::thread::spawn(move || {
            let mut c = LocalLogClient::connect(&log_sock).expect("connect");
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) || i < 200 {
                append(&mut c, &acked, "custlog", format!("cust {i}"));
                i += 1;
            }
        })
    };
    let mut c = LocalLogClient::connect(&log_sock).expect("connect");
    for i in 0..50 {
        append(&mut c, &acked, "acctlog", format!("acct {i}"));
    }

    // Reload 1: acctlog removed, bouncelog added.
    reload(
        &node,
        d,
        &socket,
        &[("custlog", "cust"), ("bouncelog", "bounce")],
    );
    for i in 0..50 {
        append(&mut c, &acked, "bouncelog", format!("bounce {i}"));
    }
    match c.append("acctlog", b"after removal") {
        Err(LocalLogError::Refused { message, .. }) => {
            assert!(message.contains("no cluster:// stream"), "{message}")
        }
        other => panic!("append to a removed destination: {other:?}"),
    }
    // Closed: this process can take the directory's lock and finds every acknowledged
    // record, byte-equal.
    let acct = records(&d.join("logs/acct.cluster"));
    assert_eq!(acct, acked.lock().unwrap()["acctlog"]);
    assert_eq!(acct.len(), 50);

    // Reload 2: acctlog back (same directory: continues after its last offset).
    reload(
        &node,
        d,
        &socket,
        &[
            ("custlog", "cust"),
            ("bouncelog", "bounce"),
            ("acctlog", "acct"),
        ],
    );
    for i in 50..80 {
        append(&mut c, &acked, "acctlog", format!("acct {i}"));
    }
    let acct_offs: Vec<Offset> = acked.lock().unwrap()["acctlog"]
        .iter()
        .map(|(o, _)| *o)
        .collect();
    assert!(acct_offs.windows(2).all(|w| w[0] < w[1]), "{acct_offs:?}");

    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    drop(c);
    drop(node); // the daemon stops; every stream closes

    let acked = acked.lock().unwrap();
    for (stream, name) in [
        ("custlog", "cust"),
        ("acctlog", "acct"),
        ("bouncelog", "bounce"),
    ] {
        let got = records(&PathBuf::from(d).join(format!("logs/{name}.cluster")));
        assert_eq!(got, acked[stream], "{stream}");
    }
    assert!(acked["custlog"].len() >= 200);
}

const KEY: &[u8] = b"log-reload-test-key-0123456789abcdef";

/// A daemon config with a 4802 listener, destinations custlog and acctlog, and `logs`
/// publishing `published` (names among those two).
fn published_config(dir: &Path, socket: &Path, key: &Path, published: &[&str]) -> String {
    let d = dir.display();
    let logs: String = published
        .iter()
        .map(|name| {
            let stream = if *name == "custlog" { "cust" } else { "acct" };
            format!("    {name} = \"{d}/logs/{stream}.cluster\"\n")
        })
        .collect();
    solo_log_config(
        &format!(
            r#"ec_logger "ec_logger" {{
  custlog = "cluster://{d}/logs/cust.cluster=>master"
  acctlog = "cluster://{d}/logs/acct.cluster=>master"
}}
"#
        ),
        &logs,
        socket,
        key,
    )
}

/// A log client connected from inside the daemon's namespace (the socket stays there, so
/// the client can be used from this thread afterwards).
fn connect(tb: &Testbed) -> LogClient {
    tb.run_in("solo", || {
        let key = ClusterKey::from_bytes(KEY).expect("key");
        let addr: SocketAddr = "192.0.2.1:4802".parse().expect("addr");
        LogClient::connect(addr, &key, "mgr1", Duration::from_secs(5))
    })
    .expect("netns")
    .expect("connect to the log service")
}

/// The payloads delivered until `n` arrived; any other delivery or error fails the test.
fn receive(c: &mut LogClient, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records",
            got.len()
        );
        match c.poll(Duration::from_millis(200)).expect("poll") {
            Some(Delivery::Records(r)) => got.extend(r.into_iter().map(|r| r.payload)),
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    got
}

fn refused_code(r: Result<Offset, LogClientError>) -> u16 {
    match r {
        Err(LogClientError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn reload_changes_what_the_log_service_publishes() {
    let mut tb = Testbed::new().expect("testbed");
    tb.add_host("solo").expect("host");
    tb.attach("solo", &["192.0.2.1/24"]).expect("attach");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let key = d.join("cluster.key");
    write_key(&key, KEY).expect("key");
    let socket = d.join("solo.sock");
    let node = DaemonNode::start(
        &tb,
        Path::new(BIN),
        "solo",
        d,
        socket.clone(),
        &published_config(d, &socket, &key, &["custlog"]),
    )
    .expect("daemon");
    let mut w = LocalLogClient::connect(&local_socket_path(&socket)).expect("local socket");
    for i in 0..3 {
        w.append("custlog", format!("cust {i}\n").as_bytes())
            .expect("append custlog");
        w.append("acctlog", format!("acct {i}\n").as_bytes())
            .expect("append acctlog");
    }

    // Before: only custlog is published.
    let show = node
        .console(Path::new(BIN), "cluster show logs")
        .expect("show logs");
    assert!(show.starts_with("custlog\n"), "{show}");
    assert!(!show.contains("acctlog"), "{show}");
    let info = node
        .console(Path::new(BIN), "cluster info")
        .expect("cluster info");
    assert!(
        info.contains("commits blocking") || info.contains("commits io_uring"),
        "the Logs line names the commit path: {info}"
    );
    let mut c = connect(&tb);
    assert_eq!(c.list().expect("list"), vec!["custlog"]);
    assert_eq!(
        refused_code(c.subscribe("acctlog", "master", 0)),
        code::UNKNOWN_LOG
    );
    let mut sub = connect(&tb);
    assert_eq!(sub.subscribe("custlog", "master", 0).expect("subscribe"), 0);
    assert_eq!(
        receive(&mut sub, 3),
        (0..3)
            .map(|i| format!("cust {i}\n").into_bytes())
            .collect::<Vec<_>>()
    );

    // Reload: acctlog published instead of custlog (custlog stays a destination).
    std::fs::write(
        &node.config,
        published_config(d, &socket, &key, &["acctlog"]),
    )
    .expect("write config");
    let out = node
        .console(Path::new(BIN), "config reload")
        .unwrap_or_else(|e| panic!("config reload: {e}"));
    assert!(out.contains("Configuration reloaded"), "{out}");
    assert!(!out.contains("error:"), "{out}");
    let show = node
        .console(Path::new(BIN), "cluster show logs")
        .expect("show logs");
    assert!(
        show.starts_with("acctlog\n"),
        "shows the reloaded set: {show}"
    );
    assert!(!show.contains("custlog"), "{show}");

    // The running custlog subscription ends with an error frame saying why.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ended = loop {
        assert!(
            Instant::now() < deadline,
            "custlog subscription still running"
        );
        match sub.poll(Duration::from_millis(200)) {
            Ok(None) => {}
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Err(e) => break e,
        }
    };
    match ended {
        LogClientError::Refused {
            code: c, message, ..
        } => {
            assert_eq!(c, code::UNPUBLISHED, "{message}");
            assert!(message.contains("custlog"), "{message}");
        }
        other => panic!("expected an UNPUBLISHED error frame, got {other}"),
    }

    // The connection stays usable: it can subscribe again (to what is published now).
    assert_eq!(
        refused_code(sub.subscribe("custlog", "master", 0)),
        code::UNKNOWN_LOG
    );

    // New subscriptions see the new set.
    let mut c = connect(&tb);
    assert_eq!(c.list().expect("list"), vec!["acctlog"]);
    assert_eq!(
        refused_code(c.subscribe("custlog", "master", 0)),
        code::UNKNOWN_LOG
    );
    let mut c = connect(&tb);
    assert_eq!(c.subscribe("acctlog", "master", 0).expect("subscribe"), 0);
    // Read as the manager does: the frame after which the node had nothing more says so
    // (the manager paces itself only then).
    let (mut got, mut caught_up) = (Vec::new(), false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 3 {
        assert!(Instant::now() < deadline, "only {} of 3 records", got.len());
        match c.poll_batch(Duration::from_millis(200)).expect("poll") {
            Some(BatchDelivery::Records(r)) => {
                got.extend(r.iter().map(|x| x.payload.to_vec()));
                caught_up = r.caught_up();
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    assert!(caught_up, "the last frame of a drained log is not flagged");
    assert_eq!(
        got,
        (0..3)
            .map(|i| format!("acct {i}\n").into_bytes())
            .collect::<Vec<_>>()
    );
    // custlog still takes appends locally: only its publication changed.
    w.append("custlog", b"cust after reload\n")
        .expect("append custlog after reload");
}
