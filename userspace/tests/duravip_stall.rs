//! Stalls that must not look like failures: a node crash stops corosync's token, and with
//! it every member's heartbeats, until the ring re-forms. Survivors must keep judging each
//! other live through that stall (corosync alone decides who left), or they release and
//! re-take VIPs for nothing. Also: corosync really runs with the timing the project
//! recommends (a nodelist makes it add `token_coefficient` per node to the token).

mod cluster_support;

use std::time::Duration;

use cluster_support::Cluster;
use duraplane::testbed::{Testbed, corosync::CorosyncTiming};
use nix::sys::signal::Signal;

fn cmap(tb: &Testbed, host: &str, key: &str) -> Option<u32> {
    let out = tb.exec(host, &["corosync-cmapctl", "-g", key]).ok()?;
    out.rsplit('=').next()?.trim().parse().ok()
}

#[test]
fn corosync_runs_the_recommended_timing() {
    let t = CorosyncTiming::default();
    let c = Cluster::builder(3).timing(t).up();
    let tb = &c.tb;
    for i in 0..3 {
        let h = &c.host(i);
        assert_eq!(
            cmap(tb, h, "runtime.config.totem.token"),
            Some(t.token_ms),
            "{h}: runtime token (token_coefficient must not inflate it)"
        );
        assert_eq!(
            cmap(tb, h, "runtime.config.totem.consensus"),
            Some(t.consensus_ms)
        );
        if let Some((interval, timeout)) = t.knet_ping {
            assert_eq!(
                cmap(tb, h, "runtime.config.totem.interface.0.knet_ping_interval"),
                Some(interval)
            );
            assert_eq!(
                cmap(tb, h, "runtime.config.totem.interface.0.knet_ping_timeout"),
                Some(timeout)
            );
        }
    }
}

#[test]
fn survivors_stay_live_while_the_ring_re_forms() {
    // A slow token on purpose: the ring stays stalled for ~2 s after the crash, several
    // times the 700 ms hung threshold, so judging silence by the local clock would mark
    // every member hung long before corosync's new view.
    let timing = CorosyncTiming {
        token_ms: 1000,
        consensus_ms: 1200,
        ..CorosyncTiming::default()
    };
    let mut c = Cluster::builder(3).timing(timing).start();
    c.wait_view();

    // Node3 crashes: link down first (no FIN, RST or ICMP reaches the others), then its
    // daemon and corosync die.
    c.tb.exec(&c.host(2), &["ip", "link", "set", "eth0", "down"])
        .expect("link down");
    c.signal(2, Signal::SIGKILL);
    c.corosync
        .kill_node(2, Signal::SIGKILL)
        .expect("kill corosync");

    // Until corosync's new view, node1 keeps all three live (node3 too: that it is gone
    // is corosync's to say); then the view has the two survivors, both live.
    let mut polls = 0;
    loop {
        let info = c.ask(0, "cluster info");
        if info.contains("View: 2 members") {
            assert!(info.contains("View: 2 members (2 live)"), "{info}");
            break;
        }
        assert!(
            info.contains("View: 3 members (3 live)"),
            "a member was judged hung while the ring re-formed: {info}"
        );
        polls += 1;
        assert!(polls < 600, "no new view after the crash: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        polls > 10,
        "the ring stall was not observed ({polls} polls)"
    );
    let m = c.ask(1, "cluster membership");
    assert!(!m.contains("hung"), "{m}");
}
