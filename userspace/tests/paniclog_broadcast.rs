//! `cluster { log_group }`: the daemon's paniclog lines (error level) are broadcast on the
//! group, where any member (here a listener of the test's own) receives them.

mod cluster_support;

use std::time::Duration;

use cluster_support::{Cluster, next_event};
use duraplane::bus::{BusConfig, BusEvent};

const LOG_GROUP: &str = "ec_paniclog";

#[test]
fn error_lines_reach_the_log_group() {
    let c = Cluster::builder(1)
        .cluster(|_| format!("log_group = \"{LOG_GROUP}\"\n"))
        .start();

    // A listener on the log group, talking to the same corosync.
    let (_listener, rx) = c.bus(
        0,
        BusConfig {
            cluster_group: "listener_only".into(),
            control_group: "listener_only_ctl".into(),
            log_group: Some(LOG_GROUP.into()),
            retry_interval: Duration::from_millis(200),
        },
    );

    // A reload of a broken file logs errors (and keeps the running configuration).
    std::fs::write(&c.nodes[0].config, "cluster {\n  view_mature_tiem = 5\n}\n").expect("break");
    let out = c.console(0, "config reload");
    assert!(out.is_err(), "reload of a broken file is an error reply");

    let ev = next_event(&rx, 20, |e| match e {
        BusEvent::Message { group, payload, .. } => {
            group == LOG_GROUP && String::from_utf8_lossy(payload).contains("view_mature_tiem")
        }
        _ => false,
    })
    .unwrap_or_else(|e| panic!("no paniclog line on {LOG_GROUP}: {e}\n{}", c.nodes[0].log()));
    let BusEvent::Message { payload, .. } = ev else {
        unreachable!("next_event returns a matching event")
    };
    let line = String::from_utf8_lossy(&payload);
    assert!(line.contains("ERROR"), "{line}");
}
