//! Three `duraplane run` daemons on a real corosync cluster and a `duraplane manager` in its
//! own namespace: records appended on every node through the local socket arrive exactly
//! once in the manager's consolidated files, also when the manager and a node daemon are
//! killed with SIGKILL mid-transfer and restarted. The daemons' own mainlog (cluster
//! events) is consolidated too; files and directories get the configured modes. The
//! manager knows node1 statically and finds the others through a seed's membership.

mod cluster_support;

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use cluster_support::{BIN, Cluster, wait_until};
use duraplane::{
    log::daemon::{LocalLogClient, local_socket_path},
    testbed::{ProcessGuard, Testbed},
};
use nix::sys::signal::Signal;

/// Three nodes with a cluster key whose mainlog, paniclog and bouncelog are cluster logs
/// (kept under `dir/node<n>-logs`) with the manager's `master` as subscriber.
fn cluster_with_logs() -> Cluster {
    let mut c = Cluster::builder(3)
        .key("log-cluster-test-key-0123456789abcdef")
        .up();
    let dir = c.dir.path().to_owned();
    let logs = move |i: usize| dir.join(format!("node{}-logs", i + 1));
    let d = logs.clone();
    c.config.top = Box::new(move |i| {
        let d = d(i);
        let d = d.display();
        format!(
            r#"ec_logger "ec_logger" {{
  mainlog = "cluster://{d}/mainlog.cluster=>master"
  paniclog = "cluster://{d}/paniclog.cluster=>master"
}}
bounce_logger "bounce_logger" {{
  bouncelog = "cluster://{d}/bouncelog.cluster?subscribers=master"
}}
"#
        )
    });
    c.config.cluster = Box::new(move |i| {
        let d = logs(i);
        let d = d.display();
        format!(
            r#"logs = [
  mainlog = "{d}/mainlog.cluster"
  bouncelog = "{d}/bouncelog.cluster"
]
"#
        )
    });
    c.start_daemons();
    c
}

fn manager_config(out: &Path, key: &Path) -> String {
    format!(
        r#"Logs {{
  logfile = "{}/%Y/%m/%d/%{{l}}/%{{s}}/%{{n}}"
  file_mode = "0640"
  dir_mode = "0750"
  log_active_interval = "0.05"
  log_idle_interval = "0.2"
  Manager "mgr1" {{
  }}
}}
duraplane {{
  cluster_key_file = "{}"
}}
"#,
        out.display(),
        key.display()
    )
}

/// Starts the manager; `fault` is a crash point (`DURAPLANE_MANAGER_FAULT`), "" for none.
fn start_manager(tb: &Testbed, conf: &Path, fault: &str) -> ProcessGuard {
    let c = conf.to_string_lossy().into_owned();
    let f = format!("DURAPLANE_MANAGER_FAULT={fault}");
    tb.spawn(
        "mgr",
        &[
            "env",
            &f,
            BIN,
            "manager",
            "-c",
            &c,
            "--name",
            "mgr1",
            "--node",
            "node1=192.0.2.11:4802",
            // node2 and node3 are found through the cluster membership node2 knows.
            "--seed",
            "192.0.2.12:4802",
        ],
    )
    .expect("manager")
}

/// Every consolidated file for (log, node), whatever the date directories.
fn files_for(out: &Path, log: &str, node: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![out.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.ends_with(format!("{log}/default/{node}")) {
                found.push(p);
            }
        }
    }
    found
}

fn lines(out: &Path, log: &str, node: &str) -> Vec<String> {
    files_for(out, log, node)
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What one writer knows: records acknowledged, and those whose append failed (the
/// daemon died; they may or may not be in the stream).
#[derive(Default)]
struct Written {
    acked: Vec<String>,
    unsure: Vec<String>,
}

fn writer(socket: PathBuf, node: usize, stop: Arc<AtomicBool>, w: Arc<Mutex<Written>>) {
    let mut seq = 0u64;
    let mut client: Option<LocalLogClient> = None;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            client = LocalLogClient::connect(&socket).ok();
            if client.is_none() {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        let rec = format!("node{node} seq {seq:06}");
        seq += 1;
        let r = client
            .as_mut()
            .map(|c| c.append("bouncelog", rec.as_bytes()));
        let mut g = w.lock().unwrap();
        match r {
            Some(Ok(_)) => g.acked.push(rec),
            _ => {
                g.unsure.push(rec);
                client = None;
            }
        }
        drop(g);
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn logs_from_every_node_arrive_exactly_once_through_crashes() {
    let mut c = cluster_with_logs();
    c.add_peer("mgr", &["192.0.2.20/24"]);
    let key = c.config.key.clone().expect("cluster key");
    let out = c.dir.path().join("consolidated");
    let mconf = c.dir.path().join("eccluster.conf");
    std::fs::write(&mconf, manager_config(&out, &key)).expect("manager conf");

    // Writers on every node, the manager pulling.
    let stop = Arc::new(AtomicBool::new(false));
    let written: Vec<Arc<Mutex<Written>>> = (0..3).map(|_| Arc::default()).collect();
    let threads: Vec<_> = (0..3)
        .map(|i| {
            let s = local_socket_path(&c.socket(i));
            let (st, w) = (stop.clone(), written[i].clone());
            std::thread::spawn(move || writer(s, i + 1, st, w))
        })
        .collect();
    let mut mgr = start_manager(&c.tb, &mconf, "");
    let wait_some = |n: usize| {
        wait_until("records to arrive", 30, || {
            (1..=3).all(|i| lines(&out, "bouncelog", &format!("node{i}")).len() >= n)
        })
    };
    wait_some(100);

    // The manager crashes after writing a batch but before saving its state, then after
    // saving its state but before checkpointing on the node (both redeliver).
    for fault in ["before_state:3", "before_checkpoint:3"] {
        mgr.signal(Signal::SIGKILL).expect("kill -9 manager");
        let _ = mgr.finish(Duration::from_secs(5));
        mgr = start_manager(&c.tb, &mconf, fault);
        wait_until(&format!("injected crash {fault}"), 30, || {
            mgr.try_wait().expect("wait").is_some()
        });
        let _ = mgr.finish(Duration::from_secs(5));
        mgr = start_manager(&c.tb, &mconf, "");
        wait_some(100);
    }

    // The manager is killed at an arbitrary point and comes back.
    mgr.signal(Signal::SIGKILL).expect("kill -9 manager");
    let _ = mgr.finish(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let before = lines(&out, "bouncelog", "node1").len();
    mgr = start_manager(&c.tb, &mconf, "");
    wait_until("the manager to resume", 30, || {
        lines(&out, "bouncelog", "node1").len() >= before + 200
    });

    // A node daemon crashes mid-transfer and comes back (its writer reconnects).
    c.kill(1);
    std::thread::sleep(Duration::from_millis(300));
    c.restart(1);
    let before = lines(&out, "bouncelog", "node2").len();
    wait_until("node2 to resume", 30, || {
        lines(&out, "bouncelog", "node2").len() >= before + 200
    });

    // And the manager once more, then stop writing and let everything drain.
    mgr.signal(Signal::SIGKILL).expect("kill -9 manager");
    let _ = mgr.finish(Duration::from_secs(5));
    mgr = start_manager(&c.tb, &mconf, "");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("writer");
    }
    for i in 1..=3 {
        let node = format!("node{i}");
        let w = written[i - 1].lock().unwrap();
        let want: HashSet<&String> = w.acked.iter().collect();
        let unsure: HashSet<&String> = w.unsure.iter().collect();
        assert!(
            want.len() > 300,
            "{node}: only {} records written",
            want.len()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = lines(&out, "bouncelog", &node);
            let set: HashSet<&String> = got.iter().collect();
            if want.iter().all(|r| set.contains(r)) {
                let mut count: HashMap<&String, usize> = HashMap::new();
                for l in &got {
                    *count.entry(l).or_default() += 1;
                }
                let dups: Vec<_> = count.iter().filter(|(_, c)| **c > 1).collect();
                assert!(dups.is_empty(), "{node}: duplicated lines {dups:?}");
                let extra: Vec<_> = set
                    .iter()
                    .filter(|l| !want.contains(*l) && !unsure.contains(*l))
                    .collect();
                assert!(extra.is_empty(), "{node}: lines never written {extra:?}");
                // Per-node order is kept.
                let acked_order: Vec<&String> = got.iter().filter(|l| want.contains(l)).collect();
                assert!(
                    acked_order.windows(2).all(|p| p[0] < p[1]),
                    "{node}: out of order"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{node}: {} of {} acknowledged records consolidated",
                want.iter().filter(|r| set.contains(*r)).count(),
                want.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The daemon's own mainlog (cluster events) is consolidated too.
        let main = lines(&out, "mainlog", &node);
        assert!(!main.is_empty(), "{node}: mainlog consolidated");
        let f = &files_for(&out, "bouncelog", &node)[0];
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            std::fs::metadata(f.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o750
        );
    }
    // The nodes' master checkpoints have caught up with what was written.
    let shown = c.ask(0, "cluster show logs");
    assert!(shown.contains("bouncelog\n\t[on disk: "), "{shown}");
    let _ = mgr.stop(Signal::SIGTERM, Duration::from_secs(5));
}
