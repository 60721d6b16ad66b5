//! `cluster { log_group }`: the daemon's paniclog lines (error level) are broadcast on the
//! group, where any member (here a listener of the test's own) receives them.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use duraplane::{
    bus::{Bus, BusConfig, BusEvent},
    testbed::{
        Testbed,
        corosync::{CorosyncCluster, CorosyncTiming},
        daemons::DaemonNode,
    },
};

const BIN: &str = env!("CARGO_BIN_EXE_duraplane");
const LOG_GROUP: &str = "ec_paniclog";

#[test]
fn error_lines_reach_the_log_group() {
    let mut tb = Testbed::new().expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = CorosyncCluster::start(
        &mut tb,
        1,
        dir.path().to_path_buf(),
        CorosyncTiming::default(),
    )
    .expect("corosync");
    let host = cluster.host(0).to_owned();
    let socket = dir.path().join("node1.sock");
    let config = format!(
        "cluster {{\n  nodename = \"node1\"\n  nodeaddr = \"192.0.2.11\"\n  log_group = \"{LOG_GROUP}\"\n}}\nduraplane {{\n  control_socket = \"{}\"\n  metrics = \"off\"\n}}\n",
        socket.display()
    );
    let node =
        DaemonNode::start(&tb, Path::new(BIN), &host, dir.path(), socket, &config).expect("daemon");

    // A listener on the log group, talking to the same corosync.
    let (_listener, rx) = tb
        .run_in(&host, || {
            Bus::start(BusConfig {
                cluster_group: "listener_only".into(),
                control_group: "listener_only_ctl".into(),
                log_group: Some(LOG_GROUP.into()),
                retry_interval: Duration::from_millis(200),
            })
        })
        .expect("netns")
        .expect("bus");

    // A reload of a broken file logs errors (and keeps the running configuration).
    std::fs::write(&node.config, "cluster {\n  view_mature_tiem = 5\n}\n").expect("break");
    let out = node.console(Path::new(BIN), "config reload");
    assert!(out.is_err(), "reload of a broken file is an error reply");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(BusEvent::Message { group, payload, .. }) if group == LOG_GROUP => {
                let line = String::from_utf8_lossy(&payload).into_owned();
                if line.contains("view_mature_tiem") {
                    assert!(line.contains("ERROR"), "{line}");
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => panic!("no paniclog line on {LOG_GROUP}: {e}\n{}", node.log()),
        }
    }
}
