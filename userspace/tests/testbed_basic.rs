//! The testbed really creates and removes namespaces, links and processes.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Mutex,
    time::Duration,
};

use duraplane::testbed::{Stream, Testbed, TestbedError, list_netns};
use nix::sys::signal::Signal;

fn pid_alive(pid: u32) -> bool {
    // A reaped child has no /proc entry; a zombie would still show `Z`.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.contains(") Z "),
        Err(_) => false,
    }
}

#[test]
fn create_and_destroy() {
    let names;
    {
        let mut tb = Testbed::new().unwrap();
        tb.add_host("a").unwrap();
        tb.add_host("b").unwrap();
        let p = tb
            .veth_pair("a", "b", &["192.0.2.1/24"], &["192.0.2.2/24"])
            .unwrap();
        assert_eq!((p.a_if.as_str(), p.b_if.as_str()), ("eth0", "eth0"));
        names = tb.namespaces();
        assert_eq!(names.len(), 2);
        let listed = list_netns().unwrap();
        for n in &names {
            assert!(listed.contains(n), "{n} not in {listed:?}");
            assert!(n.starts_with(&format!("dp{}-", std::process::id())));
        }
        let links = tb
            .exec("a", &["ip", "-br", "addr", "show", "dev", "eth0"])
            .unwrap();
        assert!(links.contains("192.0.2.1/24"), "{links}");
        assert!(matches!(
            tb.add_host("a"),
            Err(TestbedError::DuplicateHost { .. })
        ));
        assert!(matches!(
            tb.add_host("Bad-Name"),
            Err(TestbedError::BadHostName { .. })
        ));
    }
    let listed = list_netns().unwrap();
    for n in &names {
        assert!(!listed.contains(n), "{n} still exists");
    }
}

#[test]
fn cleanup_after_panic() {
    let seen: Mutex<(Vec<String>, u32)> = Mutex::new((Vec::new(), 0));
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut tb = Testbed::new().unwrap();
        tb.add_host("x").unwrap();
        tb.add_host("y").unwrap();
        tb.attach("x", &["198.51.100.1/24"]).unwrap();
        tb.attach("y", &["198.51.100.2/24"]).unwrap();
        // Leaked on purpose: only the testbed's own Drop may clean this one up.
        let p = tb.spawn("x", &["sleep", "60"]).unwrap();
        let pid = p.pid();
        std::mem::forget(p);
        *seen.lock().unwrap() = (tb.namespaces(), pid);
        panic!("test failure inside a testbed");
    }));
    assert!(r.is_err());
    let (names, pid) = seen.lock().unwrap().clone();
    assert_eq!(names.len(), 3, "two hosts and the bridge");
    let listed = list_netns().unwrap();
    for n in &names {
        assert!(!listed.contains(n), "{n} survived the panic");
    }
    // Killed; the leaked Child is never reaped here, so it is at most a zombie.
    let mut dead = false;
    for _ in 0..100 {
        if !pid_alive(pid) {
            dead = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(dead, "process {pid} still running");
}

#[test]
fn refuses_non_documentation_addresses() {
    let mut tb = Testbed::new().unwrap();
    tb.add_host("a").unwrap();
    tb.add_host("b").unwrap();
    for bad in [
        "10.0.0.1/24",
        "192.168.1.1/24",
        "172.16.0.1/12",
        "8.8.8.8",
        "fd00::1/64",
    ] {
        let e = tb
            .veth_pair("a", "b", &[bad], &["192.0.2.2/24"])
            .unwrap_err();
        assert!(
            matches!(e, TestbedError::NotDocumentation { .. }),
            "{bad}: {e}"
        );
    }
    // A documentation address with a prefix that would cover other space.
    assert!(matches!(
        tb.veth_pair("a", "b", &["192.0.2.1/16"], &[]),
        Err(TestbedError::NotDocumentation { .. })
    ));
    // Nothing was created by the refused calls.
    let links = tb.exec("a", &["ip", "-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    let p = tb
        .veth_pair("a", "b", &["192.0.2.1/24"], &["192.0.2.2/24"])
        .unwrap();
    assert!(tb.add_addr("a", &p.a_if, "10.1.2.3/32").is_err());
    assert!(tb.add_route("a", "0.0.0.0/0", &p.a_if, None).is_err());
    assert!(
        tb.add_route(
            "a",
            "203.0.113.0/24",
            &p.a_if,
            Some("10.0.0.1".parse().unwrap())
        )
        .is_err()
    );
    tb.add_route("a", "203.0.113.0/24", &p.a_if, None).unwrap();
}

#[test]
fn ping_v4_and_v6_over_veth_and_bridge() {
    let mut tb = Testbed::new().unwrap();
    for h in ["a", "b", "c"] {
        tb.add_host(h).unwrap();
    }
    tb.veth_pair(
        "a",
        "b",
        &["192.0.2.1/24", "2001:db8:1::1/64"],
        &["192.0.2.2/24", "2001:db8:1::2/64"],
    )
    .unwrap();
    // No DAD wait: v6 works immediately.
    tb.exec("a", &["ping", "-c", "1", "-W", "2", "192.0.2.2"])
        .unwrap();
    tb.exec("a", &["ping", "-6", "-c", "1", "-W", "2", "2001:db8:1::2"])
        .unwrap();
    // A host on the bridge is not reachable from a (no link, no route).
    tb.attach("b", &["203.0.113.2/24", "2001:db8:2::2/64"])
        .unwrap();
    tb.attach("c", &["203.0.113.3/24", "2001:db8:2::3/64"])
        .unwrap();
    tb.exec("c", &["ping", "-c", "1", "-W", "2", "203.0.113.2"])
        .unwrap();
    tb.exec("c", &["ping", "-6", "-c", "1", "-W", "2", "2001:db8:2::2"])
        .unwrap();
    let out = tb
        .exec_output("a", &["ping", "-c", "1", "-W", "1", "203.0.113.3"])
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn spawn_guard_and_output() {
    let mut tb = Testbed::new().unwrap();
    tb.add_host("a").unwrap();
    let p = tb
        .spawn(
            "a",
            &["sh", "-c", "echo ready; ip -br link show lo; sleep 30"],
        )
        .unwrap();
    assert!(p.wait_for_line(Stream::Stdout, Duration::from_secs(5), |l| l == "ready"));
    assert!(
        p.wait_for_line(Stream::Stdout, Duration::from_secs(5), |l| l
            .starts_with("lo"))
    );
    let pid = p.pid();
    assert!(pid_alive(pid));
    let f = p.stop(Signal::SIGTERM, Duration::from_secs(5)).unwrap();
    assert!(!f.status.success());
    assert!(f.stdout.starts_with("ready\nlo"), "{}", f.stdout);
    assert!(!pid_alive(pid));
    // Drop kills a running one.
    let p = tb.spawn("a", &["sleep", "30"]).unwrap();
    let pid = p.pid();
    drop(p);
    assert!(!pid_alive(pid));
    // finish() on a process that exits by itself.
    let f = tb
        .spawn("a", &["true"])
        .unwrap()
        .finish(Duration::from_secs(5))
        .unwrap();
    assert!(f.status.success());
    let e = tb
        .spawn("a", &["sleep", "30"])
        .unwrap()
        .finish(Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(e, TestbedError::Timeout { .. }));
}

#[test]
fn gro_and_run_in() {
    let mut tb = Testbed::new().unwrap();
    tb.add_host("a").unwrap();
    tb.add_host("b").unwrap();
    let p = tb
        .veth_pair("a", "b", &["192.0.2.1/24"], &["192.0.2.2/24"])
        .unwrap();
    assert!(!tb.gro_enabled("b", &p.b_if).unwrap());
    tb.enable_gro("b", &p.b_if).unwrap();
    assert!(tb.gro_enabled("b", &p.b_if).unwrap());
    assert!(tb.enable_gro("b", "nosuchif").is_err());
    // A socket made inside the host sees the host's addresses.
    let bound = tb
        .run_in("a", || std::net::UdpSocket::bind("192.0.2.1:0").is_ok())
        .unwrap();
    assert!(bound);
    let bound_b = tb
        .run_in("b", || std::net::UdpSocket::bind("192.0.2.1:0").is_ok())
        .unwrap();
    assert!(!bound_b);
}
