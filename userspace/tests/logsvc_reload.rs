//! `config reload` of a running daemon's `cluster://` destinations: a destination that
//! stays keeps its stream (appends continue at the next offset), a new one opens (created
//! with its subscribers) and takes appends at once, a removed one is closed — its
//! directory's lock is released, so another process can open it — and every record
//! acknowledged before, during and after the reloads is in the stream, byte for byte.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use duraplane::{
    log::{
        Entry, Offset, Stream, StreamOptions,
        daemon::{LocalLogClient, LocalLogError, local_socket_path},
    },
    testbed::{Testbed, daemons::DaemonNode},
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
