//! Shared harness of the DuraVIP cluster tests: three `duraplane run` daemons on a real
//! corosync cluster (nodes 192.0.2.11–13 on one bridge), VIPs in 198.51.100.0/24 and
//! 2001:db8:1::/64 on each node's `eth0`, an observer namespace on the same bridge with an
//! address in both VIP networks, and a TCP service on 0.0.0.0:2525 / [::]:2525 in every
//! node that answers with its node name.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use duraplane::testbed::{
    ProcessGuard, Stream, Testbed,
    corosync::{CorosyncCluster, CorosyncTiming},
    daemons::DaemonNode,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_duraplane");
pub const OBS: &str = "obs";
pub const PORT: u16 = 2525;

/// One DuraVIP declaration of the test config: address and optional preferred node.
pub struct Vip {
    pub addr: &'static str,
    pub preference: Option<&'static str>,
}

fn config(i: usize, socket: &Path, vips: &[Vip]) -> String {
    let mut bindings = String::new();
    for (k, v) in vips.iter().enumerate() {
        let pref = v
            .preference
            .map(|p| format!("  Duravip_Preference = \"{p}\"\n"))
            .unwrap_or_default();
        bindings.push_str(&format!(
            "Binding \"vip{k}\" {{\n  Enable_Duravip = true\n  Bind_Address = \"{}\"\n{pref}}}\n",
            v.addr
        ));
    }
    format!(
        r#"ECCluster_Listener {{
  Listen "192.0.2.1{i}:4802" {{}}
}}
cluster {{
  nodename = "node{i}"
  nodeaddr = "192.0.2.1{i}"
  heartbeats_per_sec = 10
  heartbeat_start_delay = 0
  view_mature_time = 2
  view_balance_interval = 0.5
  duravip_balance_set_size = 1
  if_check_interval = 1
  Topology "198.51.100.0/24" {{
    cidrmask = "32"
    interface = "eth0"
  }}
  Topology "2001:db8:1::/64" {{
    cidrmask = "128"
    interface = "eth0"
  }}
}}
{bindings}duraplane {{
  control_socket = "{}"
  metrics = "off"
}}
"#,
        socket.display()
    )
}

/// Fields drop in order: daemons, then corosync, then the namespaces, then the files.
pub struct Cluster {
    pub nodes: Vec<DaemonNode>,
    pub corosync: CorosyncCluster,
    pub tb: Testbed,
    pub dir: tempfile::TempDir,
}

pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve(l: TcpListener, name: String) {
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(format!("{name}\n").as_bytes());
        }
    });
}

impl Cluster {
    pub fn start(vips: &[Vip]) -> Cluster {
        let mut tb = Testbed::new().expect("testbed");
        let dir = tempfile::tempdir().expect("tempdir");
        let corosync = CorosyncCluster::start(
            &mut tb,
            3,
            dir.path().to_path_buf(),
            CorosyncTiming::default(),
        )
        .expect("corosync");
        tb.add_host(OBS).expect("observer");
        tb.attach(
            OBS,
            &["192.0.2.100/24", "198.51.100.200/24", "2001:db8:1::200/64"],
        )
        .expect("attach observer");
        // GARP/NA may override an entry however recently it was confirmed.
        tb.exec(OBS, &["sysctl", "-qw", "net.ipv4.neigh.eth0.locktime=0"])
            .expect("locktime");
        for i in 1..=3 {
            let host = corosync.host(i - 1).to_owned();
            // Replies from a VIP to the observer leave on-link.
            tb.add_route(&host, "198.51.100.0/24", "eth0", None)
                .expect("route v4");
            tb.add_route(&host, "2001:db8:1::/64", "eth0", None)
                .expect("route v6");
            let name = format!("node{i}");
            let (l4, l6) = tb
                .run_in(&host, || {
                    let l4 = TcpListener::bind(("0.0.0.0", PORT)).expect("listen v4");
                    let l6 = socket2_v6only().expect("listen v6");
                    (l4, l6)
                })
                .expect("run_in");
            serve(l4, name.clone());
            serve(l6, name);
        }
        let nodes = (1..=3)
            .map(|i| {
                let socket = dir.path().join(format!("node{i}.sock"));
                DaemonNode::start(
                    &tb,
                    Path::new(BIN),
                    corosync.host(i - 1),
                    dir.path(),
                    socket.clone(),
                    &config(i, &socket, vips),
                )
                .expect("daemon")
            })
            .collect();
        Cluster {
            nodes,
            corosync,
            tb,
            dir,
        }
    }

    pub fn ask(&self, i: usize, cmd: &str) -> String {
        self.nodes[i]
            .console(Path::new(BIN), cmd)
            .unwrap_or_else(|e| panic!("{cmd} on node{}: {e}", i + 1))
    }

    pub fn host(&self, i: usize) -> String {
        self.corosync.host(i).to_owned()
    }

    /// Indexes (0-based) of the nodes whose `eth0` has `vip` plumbed.
    pub fn holders(&self, vip: &str) -> Vec<usize> {
        (0..3)
            .filter(|i| {
                let out = self
                    .tb
                    .exec(&self.host(*i), &["ip", "-o", "addr", "show", "dev", "eth0"])
                    .unwrap_or_default();
                out.split_whitespace()
                    .any(|w| w.split('/').next() == Some(vip))
            })
            .collect()
    }

    /// The single holder of `vip`, once there is exactly one.
    pub fn wait_single(&self, vip: &str, secs: u64) -> usize {
        let mut h = Vec::new();
        wait_until(&format!("exactly one holder of {vip}"), secs, || {
            h = self.holders(vip);
            h.len() == 1
        });
        h[0]
    }

    pub fn mac(&self, i: usize) -> String {
        self.tb
            .exec(&self.host(i), &["cat", "/sys/class/net/eth0/address"])
            .expect("mac")
            .trim()
            .to_owned()
    }

    /// A new TCP connection from the observer to `vip`:2525; the node name that answered.
    pub fn connect(&self, vip: &str) -> Option<String> {
        let addr: SocketAddr = SocketAddr::new(vip.parse().ok()?, PORT);
        self.tb
            .run_in(OBS, move || {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).ok()?;
                Some(out.trim().to_owned())
            })
            .ok()
            .flatten()
    }

    /// The observer's neighbour entry (MAC) for `vip`.
    pub fn observer_neigh(&self, vip: &str) -> Option<String> {
        let out = self
            .tb
            .exec(OBS, &["ip", "neigh", "show", vip, "dev", "eth0"])
            .ok()?;
        let mut w = out.split_whitespace();
        w.find(|x| *x == "lladdr")?;
        w.next().map(str::to_owned)
    }

    /// Starts tcpdump on the observer for ARP and ICMPv6 with link-level headers.
    pub fn capture(&self) -> ProcessGuard {
        let p = self
            .tb
            .spawn(
                OBS,
                &[
                    "tcpdump",
                    "-i",
                    "eth0",
                    "-n",
                    "-e",
                    "-l",
                    "-p",
                    "--immediate-mode",
                    "-s",
                    "128",
                    "-B",
                    "8192",
                    "arp or icmp6",
                ],
            )
            .expect("tcpdump");
        assert!(
            p.wait_for_line(Stream::Stderr, Duration::from_secs(10), |l| l
                .contains("listening on")),
            "tcpdump did not start: {:?}",
            p.lines(Stream::Stderr)
        );
        p
    }

    /// Puts node `i`'s bridge port down (`up = false`) or up: a partition of that node.
    pub fn set_port(&mut self, i: usize, up: bool) {
        let iflink = self
            .tb
            .exec(&self.host(i), &["cat", "/sys/class/net/eth0/iflink"])
            .expect("iflink");
        let br = self.tb.bridge().expect("bridge ns");
        let links = self
            .tb_exec_root(&["ip", "-n", &br, "-o", "link", "show"])
            .expect("bridge links");
        let prefix = format!("{}: ", iflink.trim());
        let line = links
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no bridge port {prefix}: {links}"));
        let port = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.trim_end_matches(':').split('@').next())
            .expect("port name")
            .to_owned();
        self.tb_exec_root(&[
            "ip",
            "-n",
            &br,
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ])
        .expect("set port");
    }

    fn tb_exec_root(&self, cmd: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

fn socket2_v6only() -> std::io::Result<TcpListener> {
    // std binds [::] dual-stack; the v4 listener already holds 0.0.0.0:2525.
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    s.set_only_v6(true)?;
    s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, PORT)).into())?;
    s.listen(64)?;
    Ok(s.into())
}

/// Owner per VIP as `cluster duravip show` on node `i` reports it (the `*` row).
pub fn shown_owners(show: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = None;
    for l in show.lines() {
        if let Some((head, _)) = l.split_once(": (") {
            cur = head.split('/').next().map(str::to_owned);
        } else if l.starts_with(" *")
            && let (Some(v), Some(n)) = (&cur, l.split_whitespace().nth(1))
        {
            out.push((v.clone(), n.to_owned()));
        }
    }
    out
}
