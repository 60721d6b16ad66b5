//! `duraplane run` with XDP on a real veth, real TCP clients from two netblocks in another
//! namespace: exact counts, limits enforced at the NIC, counts back to zero on close, and a
//! reload that changes a limit without detaching or losing counts.

mod daemon_support;

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use daemon_support::{BIN, console, stdout};
use duraplane::testbed::{ProcessGuard, Testbed};
use socket2::{Domain, SockAddr, Socket, Type};

const SERVER: &str = "192.0.2.1";

/// Opens a TCP connection to `server` from the local address `src` (inside the current
/// network namespace).
fn connect_from(src: IpAddr, server: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(server), Type::STREAM, None)?;
    s.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    s.connect_timeout(&SockAddr::from(server), timeout)?;
    Ok(s.into())
}

struct Setup {
    tb: Testbed,
    daemon: Option<ProcessGuard>,
    socket: std::path::PathBuf,
    config: std::path::PathBuf,
    _listener: TcpListener,
    _dir: tempfile::TempDir,
}

fn config_text(socket: &Path, iface: &str, limit_a: u64) -> String {
    format!(
        r#"cluster {{
  nodename = "srv"
  nodeaddr = "{SERVER}"
}}
ECCluster_Listener {{
  Listen "{SERVER}:4802" {{}}
}}
duraplane {{
  control_socket = "{}"
  metrics = "off"
  interfaces = ( "{iface}" )
  ports = ( 25 )
  poll_interval = "20ms"
  Netblock "198.51.100.0/24" {{
    max_connections = {limit_a}
    action = "drop"
  }}
  Netblock "203.0.113.0/24" {{
  }}
}}
"#,
        socket.display()
    )
}

fn setup(limit_a: u64) -> Setup {
    let mut tb = Testbed::new().expect("testbed");
    tb.add_host("client").expect("client");
    tb.add_host("server").expect("server");
    let pair = tb
        .veth_pair(
            "client",
            "server",
            &[
                "198.51.100.10/24",
                "198.51.100.11/24",
                "198.51.100.12/24",
                "203.0.113.10/24",
                "203.0.113.11/24",
            ],
            &["192.0.2.1/24"],
        )
        .expect("veth");
    tb.add_route("client", "192.0.2.0/24", &pair.a_if, None)
        .expect("route");
    tb.add_route("server", "198.51.100.0/24", &pair.b_if, None)
        .expect("route");
    tb.add_route("server", "203.0.113.0/24", &pair.b_if, None)
        .expect("route");
    let listener = tb
        .run_in("server", || TcpListener::bind((SERVER, 25)))
        .expect("netns")
        .expect("listen on :25");
    listener.set_nonblocking(true).expect("nonblocking");

    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("control.sock");
    let config = dir.path().join("duraplane.conf");
    std::fs::write(&config, config_text(&socket, &pair.b_if, limit_a)).expect("config");
    let cfg = config.to_string_lossy().into_owned();
    let daemon = tb
        .spawn("server", &[BIN, "run", "--foreground", "-c", &cfg])
        .expect("spawn daemon");
    let s = Setup {
        tb,
        daemon: Some(daemon),
        socket,
        config,
        _listener: listener,
        _dir: dir,
    };
    wait_until("daemon answers", || {
        console(&s.socket, &["cluster", "info"]).status.success()
    });
    s
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ask(s: &Setup, words: &[&str]) -> String {
    let out = console(&s.socket, words);
    assert!(
        out.status.success(),
        "console {words:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// The `current` column of `inbound show` for a netblock.
fn current_of(show: &str, netblock: &str) -> Option<u64> {
    show.lines()
        .find(|l| l.split_whitespace().next() == Some(netblock))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn dropped_of(show: &str, netblock: &str) -> Option<u64> {
    show.lines()
        .find(|l| l.split_whitespace().next() == Some(netblock))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}

fn open(s: &Setup, sources: &[&str]) -> Vec<std::io::Result<TcpStream>> {
    let srcs: Vec<IpAddr> = sources.iter().map(|a| a.parse().expect("ip")).collect();
    s.tb.run_in("client", move || {
        srcs.into_iter()
            .map(|src| {
                connect_from(
                    src,
                    SocketAddr::new(SERVER.parse().expect("ip"), 25),
                    Duration::from_millis(1500),
                )
            })
            .collect()
    })
    .expect("netns")
}

#[test]
fn counts_are_exact_limits_drop_at_the_nic_and_close_returns_to_zero() {
    let mut s = setup(3);
    let info = ask(&s, &["cluster", "info"]);
    assert!(
        info.contains("XDP: eth"),
        "cluster info shows the attachment: {info}"
    );
    assert!(info.contains("native"), "veth takes native XDP: {info}");

    // Three from netblock A (two from one address), two from netblock B.
    let conns = open(
        &s,
        &[
            "198.51.100.10",
            "198.51.100.10",
            "198.51.100.11",
            "203.0.113.10",
            "203.0.113.10",
        ],
    );
    let mut held: Vec<TcpStream> = conns
        .into_iter()
        .map(|c| c.expect("connect under the limit"))
        .collect();
    wait_until("counts", || {
        let show = ask(&s, &["inbound", "show"]);
        current_of(&show, "198.51.100.0/24") == Some(3)
            && current_of(&show, "203.0.113.0/24") == Some(2)
    });
    let tree = ask(&s, &["cluster", "shared", "show", "inbound_cidr"]);
    assert!(
        tree.starts_with("lazy, snapped cidrtree 'inbound_cidr', view 'global'"),
        "{tree}"
    );
    let line = |prefix: &str| {
        tree.lines()
            .find(|l| l.trim_end().ends_with(prefix))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(line(" 198.51.100.10/32"), Some(2), "{tree}");
    assert_eq!(line(" 198.51.100.11/32"), Some(1), "{tree}");
    assert_eq!(line(" 203.0.113.10/32"), Some(2), "{tree}");

    // Netblock A is at its limit: the next SYN is dropped at the NIC, so the client's
    // connect times out; netblock B still connects.
    let more = open(&s, &["198.51.100.12", "203.0.113.11"]);
    assert!(
        more[0].is_err(),
        "4th connection from 198.51.100.0/24 must fail"
    );
    let b = more.into_iter().nth(1).expect("two results");
    held.push(b.expect("netblock B is not limited"));
    wait_until("drop counted", || {
        let show = ask(&s, &["inbound", "show"]);
        dropped_of(&show, "198.51.100.0/24").is_some_and(|d| d >= 1)
            && current_of(&show, "203.0.113.0/24") == Some(3)
    });
    let show = ask(&s, &["inbound", "show"]);
    assert_eq!(current_of(&show, "198.51.100.0/24"), Some(3), "{show}");
    assert_eq!(dropped_of(&show, "203.0.113.0/24"), Some(0), "{show}");

    // Raise the limit with a reload: in place, counts kept, the next connection passes.
    let text = std::fs::read_to_string(&s.config).expect("config");
    std::fs::write(
        &s.config,
        text.replace("max_connections = 3", "max_connections = 4"),
    )
    .expect("rewrite");
    let reload = ask(&s, &["config", "reload"]);
    assert!(!reload.to_lowercase().contains("error"), "{reload}");
    let show = ask(&s, &["inbound", "show"]);
    assert_eq!(
        current_of(&show, "198.51.100.0/24"),
        Some(3),
        "counts survive reload: {show}"
    );
    let again = open(&s, &["198.51.100.12"]);
    held.push(
        again
            .into_iter()
            .next()
            .expect("one")
            .expect("limit 4 admits a 4th connection"),
    );

    // Close everything from the client side: FINs bring every count back to zero.
    drop(held);
    wait_until("back to zero", || {
        let show = ask(&s, &["inbound", "show"]);
        current_of(&show, "198.51.100.0/24") == Some(0)
            && current_of(&show, "203.0.113.0/24") == Some(0)
    });
    let tree = ask(&s, &["cluster", "shared", "show", "inbound_cidr"]);
    assert_eq!(tree.lines().count(), 1, "only the header remains: {tree}");

    // SIGTERM detaches XDP and exits cleanly.
    let d = s.daemon.take().expect("daemon");
    let fin = d
        .stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10))
        .expect("daemon exits");
    assert!(fin.status.success(), "daemon exit status {:?}", fin.status);
    let links =
        s.tb.exec("server", &["ip", "-d", "link", "show"])
            .expect("ip link");
    assert!(!links.contains("prog/xdp"), "XDP detached on exit: {links}");
}
