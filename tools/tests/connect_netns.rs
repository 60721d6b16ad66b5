//! dp-connect opens real connections bound to chosen sources, holds and reports them.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use duraplane::testbed::{Stream, Testbed};

const CONNECT: &str = env!("CARGO_BIN_EXE_dp-connect");

struct Server {
    accepted: Arc<Mutex<Vec<(SocketAddr, TcpStream)>>>,
}

impl Server {
    fn start(tb: &Testbed, addr: &str) -> Server {
        let addr: SocketAddr = addr.parse().unwrap();
        // The listening socket is created inside the server namespace, then served from
        // here.
        let l = tb
            .run_in("server", move || TcpListener::bind(addr))
            .unwrap()
            .unwrap();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let acc = accepted.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { break };
                let peer = s.peer_addr().unwrap();
                acc.lock().unwrap().push((peer, s));
            }
        });
        Server { accepted }
    }

    fn by_source(&self, want: usize) -> HashMap<IpAddr, usize> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.accepted.lock().unwrap().len() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut m = HashMap::new();
        for (p, _) in self.accepted.lock().unwrap().iter() {
            *m.entry(p.ip()).or_insert(0) += 1;
        }
        m
    }
}

fn testbed() -> Testbed {
    let mut tb = Testbed::new().unwrap();
    tb.add_host("client").unwrap();
    tb.add_host("server").unwrap();
    let p = tb
        .veth_pair(
            "client",
            "server",
            &["192.0.2.10/24", "2001:db8:1::10/64"],
            &["192.0.2.1/24", "2001:db8:1::1/64"],
        )
        .unwrap();
    // The client also speaks from a second netblock on the same link.
    tb.add_addr("client", &p.a_if, "198.51.100.10/24").unwrap();
    tb.add_addr("client", &p.a_if, "198.51.100.11/24").unwrap();
    tb.add_route("server", "198.51.100.0/24", &p.b_if, None)
        .unwrap();
    tb
}

#[test]
fn connections_from_two_netblocks_held_until_eof() {
    let tb = testbed();
    let server = Server::start(&tb, "192.0.2.1:2525");
    let mut p = tb
        .spawn(
            "client",
            &[
                CONNECT,
                "--server",
                "192.0.2.1:2525",
                "--source",
                "192.0.2.10",
                "--source",
                "198.51.100.10",
                "--source",
                "198.51.100.11",
                "--count",
                "3",
                "--hold",
                "60",
                "--until-eof",
            ],
        )
        .unwrap();
    assert!(
        p.wait_for_line(Stream::Stdout, Duration::from_secs(10), |l| l
            .starts_with("connected")),
        "{:?}",
        p.lines(Stream::Stderr)
    );
    assert_eq!(
        p.lines(Stream::Stdout)[0],
        "connected ok=9 refused=0 timeout=0 failed=0"
    );
    let m = server.by_source(9);
    assert_eq!(m.get(&"192.0.2.10".parse().unwrap()), Some(&3));
    assert_eq!(m.get(&"198.51.100.10".parse().unwrap()), Some(&3));
    assert_eq!(m.get(&"198.51.100.11".parse().unwrap()), Some(&3));
    // Still held: nothing closed yet, the process is running.
    assert!(p.try_wait().unwrap().is_none());
    // The server closes them; then the client is told to stop.
    server.accepted.lock().unwrap().clear();
    std::thread::sleep(Duration::from_millis(200));
    p.close_stdin();
    let f = p.finish(Duration::from_secs(10)).unwrap();
    assert!(f.status.success(), "{}", f.stderr);
    assert!(f.stdout.ends_with("closed peer_closed=9"), "{}", f.stdout);
}

#[test]
fn ipv6_refused_and_timeouts() {
    let tb = testbed();
    let server = Server::start(&tb, "[2001:db8:1::1]:2525");
    let run = |args: &[&str]| {
        let mut cmd = vec![CONNECT];
        cmd.extend_from_slice(args);
        tb.exec("client", &cmd).unwrap()
    };
    let out = run(&[
        "-s",
        "[2001:db8:1::1]:2525",
        "-b",
        "2001:db8:1::10",
        "-c",
        "4",
        "--hold",
        "0",
    ]);
    assert!(
        out.starts_with("connected ok=4 refused=0 timeout=0 failed=0\n"),
        "{out}"
    );
    assert_eq!(
        server.by_source(4).get(&"2001:db8:1::10".parse().unwrap()),
        Some(&4)
    );
    // Nobody listens on 2526: the server's kernel answers RST.
    let out = run(&[
        "-s",
        "[2001:db8:1::1]:2526",
        "-b",
        "2001:db8:1::10",
        "-c",
        "2",
        "--hold",
        "0",
    ]);
    assert!(
        out.starts_with("connected ok=0 refused=2 timeout=0 failed=0\n"),
        "{out}"
    );
    // Nobody has 192.0.2.99: no answer at all within the connect timeout.
    let out = run(&[
        "-s",
        "192.0.2.99:25",
        "-b",
        "192.0.2.10",
        "-c",
        "2",
        "--hold",
        "0",
        "--connect-timeout-ms",
        "300",
    ]);
    assert!(
        out.starts_with("connected ok=0 refused=0 timeout=2 failed=0\n"),
        "{out}"
    );
}

#[test]
fn refuses_non_documentation_addresses() {
    for args in [
        ["-s", "10.0.0.1:25", "-b", "192.0.2.10"],
        ["-s", "192.0.2.1:25", "-b", "10.0.0.10"],
        ["-s", "192.0.2.1:25", "-b", "2001:db8::1"],
    ] {
        let o = std::process::Command::new(CONNECT)
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?}");
    }
}
