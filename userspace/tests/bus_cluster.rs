//! The bus against a real three-node corosync cluster in network namespaces.

mod cluster_support;

use std::{sync::mpsc::Receiver, time::Duration};

use cluster_support::{Cluster, bus_in, wait_event};
use duraplane::{
    bus::{Bus, BusConfig, BusEvent, LeaveReason, MAX_MESSAGE},
    testbed::{Testbed, corosync::ipc_leftovers},
};
use nix::sys::signal::Signal;

const GROUP: &str = "ec_cluster";
const CONTROL: &str = "ec_console";

fn config() -> BusConfig {
    BusConfig {
        cluster_group: GROUP.into(),
        control_group: CONTROL.into(),
        log_group: None,
        retry_interval: Duration::from_millis(200),
    }
}

/// Waits (30 s) for the first event matching `pred`, returning it.
fn wait_for(rx: &Receiver<BusEvent>, what: &str, pred: impl FnMut(&BusEvent) -> bool) -> BusEvent {
    wait_event(rx, what, 30, pred)
}

fn view_size(ev: &BusEvent, group: &str) -> Option<usize> {
    match ev {
        BusEvent::View {
            group: g, members, ..
        } if g == group => Some(members.len()),
        _ => None,
    }
}

#[test]
fn three_nodes_agree_on_views_and_message_order_and_survive_corosync_restart() {
    // Corosync on three nodes, no daemons: the test's own buses are the members.
    let mut c = Cluster::builder(3).up();

    let mut buses: Vec<(Bus, Receiver<BusEvent>)> = (0..3).map(|i| c.bus(i, config())).collect();
    let mut nodeids = Vec::new();
    for (_, rx) in &buses {
        match wait_for(rx, "connected", |e| matches!(e, BusEvent::Connected { .. })) {
            BusEvent::Connected { nodeid } => nodeids.push(nodeid),
            _ => unreachable!(),
        }
    }
    nodeids.sort_unstable();
    assert_eq!(
        nodeids,
        vec![1, 2, 3],
        "each bus sees its own corosync node id"
    );

    // Everyone eventually sees a view of both groups with all three daemons.
    for (_, rx) in &buses {
        wait_for(rx, "3-member cluster view", |e| {
            view_size(e, GROUP) == Some(3)
        });
    }

    // Agreed order: messages sent concurrently from every node arrive in one order everywhere.
    for round in 0..20u32 {
        for (i, (bus, _)) in buses.iter().enumerate() {
            bus.send(GROUP, format!("m{round}-{i}").into_bytes())
                .expect("send");
        }
    }
    let mut orders = Vec::new();
    for (_, rx) in &buses {
        let mut got = Vec::new();
        while got.len() < 60 {
            if let BusEvent::Message { group, payload, .. } =
                wait_for(rx, "messages", |e| matches!(e, BusEvent::Message { .. }))
            {
                assert_eq!(group, GROUP);
                got.push(String::from_utf8(payload).expect("utf8"));
            }
        }
        orders.push(got);
    }
    assert_eq!(orders[0], orders[1], "node 1 and 2 agree on the order");
    assert_eq!(orders[0], orders[2], "node 1 and 3 agree on the order");

    // A daemon that stops (corosync alive) leaves the group at once, reason Left.
    let (bus3, rx3) = buses.pop().expect("bus 3");
    drop(bus3);
    drop(rx3);
    for (_, rx) in &buses {
        let ev = wait_for(rx, "view without daemon 3", |e| {
            view_size(e, GROUP) == Some(2)
        });
        if let BusEvent::View { left, .. } = ev {
            assert_eq!(left.len(), 1);
            assert_eq!(left[0].0.nodeid, 3);
            assert_eq!(left[0].1, LeaveReason::Left);
        }
    }

    // Node 2's corosync crashes: its bus reports the loss, node 1 sees node 2 leave.
    let pid = c.corosync.pid(1).expect("corosync 2 runs");
    assert!(
        !ipc_leftovers(pid).is_empty(),
        "corosync 2 keeps its blackbox and client rings in /dev/shm while it runs"
    );
    c.corosync
        .kill_node(1, Signal::SIGKILL)
        .expect("kill corosync 2");
    assert_eq!(
        ipc_leftovers(pid),
        Vec::<std::path::PathBuf>::new(),
        "the testbed removes a killed corosync's IPC rings"
    );
    wait_for(&buses[1].1, "disconnected", |e| {
        matches!(e, BusEvent::Disconnected { .. })
    });
    let ev = wait_for(&buses[0].1, "view without node 2", |e| {
        view_size(e, GROUP) == Some(1)
    });
    if let BusEvent::View { left, .. } = ev {
        assert_eq!(left[0].0.nodeid, 2);
        assert_ne!(left[0].1, LeaveReason::Left, "a crash is not a clean leave");
    }

    // Corosync comes back: the bus reconnects by itself and rejoins.
    c.corosync.start_node(&c.tb, 1).expect("restart corosync 2");
    wait_for(&buses[1].1, "reconnected", |e| {
        matches!(e, BusEvent::Connected { nodeid: 2 })
    });
    wait_for(&buses[0].1, "node 2 back in the view", |e| {
        view_size(e, GROUP) == Some(2)
    });
    wait_for(&buses[1].1, "node 2 sees both", |e| {
        view_size(e, GROUP) == Some(2)
    });
}

#[test]
fn bus_without_corosync_reports_disconnected_and_refuses_unknown_groups() {
    let mut tb = Testbed::new().expect("testbed");
    tb.add_host("lonely").expect("host");
    let (bus, rx) = bus_in(&tb, "lonely", config());
    let ev = wait_for(&rx, "disconnected", |e| {
        matches!(e, BusEvent::Disconnected { .. })
    });
    if let BusEvent::Disconnected { reason } = ev {
        assert!(
            reason.contains("corosync"),
            "reason names corosync: {reason}"
        );
    }
    assert!(bus.send("no_such_group", b"x".to_vec()).is_err());
    assert!(
        bus.send(GROUP, vec![0; MAX_MESSAGE + 1]).is_err(),
        "oversized refused"
    );
    assert!(
        bus.send(GROUP, b"dropped while disconnected".to_vec())
            .is_ok()
    );
}
