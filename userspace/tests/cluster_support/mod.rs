//! Shared multi-node testbed of the cluster tests: N namespaces `node1…nodeN`
//! (192.0.2.11… on one bridge) running corosync, and a `duraplane run` daemon in each,
//! with an ECCluster-style configuration per node that the test extends with its own
//! scopes. Everything started here is stopped by its own guard (by PID) and the
//! namespaces are removed when the [`Cluster`] drops, also when a test panics.
#![allow(dead_code)]

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use duraplane::{
    bus::{Bus, BusConfig, BusEvent},
    localapi::Client,
    testbed::{
        Testbed,
        corosync::{CorosyncCluster, CorosyncTiming},
        daemons::{DaemonNode, write_key},
    },
};
use nix::sys::signal::Signal;
use socket2::{Domain, SockAddr, Socket, Type};

pub const BIN: &str = env!("CARGO_BIN_EXE_duraplane");

/// Text added to one scope of node `i`'s (0-based) configuration; lines are indented
/// for the scope they go into.
pub type Hook = Box<dyn Fn(usize) -> String + Send + Sync>;

/// Polls `f` every 50 ms until it holds; panics naming `what` after `secs` seconds.
pub fn wait_until(what: &str, secs: u64, f: impl FnMut() -> bool) {
    wait_until_or(what, secs, f, String::new);
}

/// [`wait_until`], with what `diagnose` says at the time appended to the panic.
pub fn wait_until_or(
    what: &str,
    secs: u64,
    mut f: impl FnMut() -> bool,
    diagnose: impl Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            diagnose()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A bus of the test's own whose thread lives in `host`'s namespace (so it talks to that
/// host's corosync, or finds none).
pub fn bus_in(tb: &Testbed, host: &str, config: BusConfig) -> (Bus, Receiver<BusEvent>) {
    tb.run_in(host, || Bus::start(config))
        .expect("enter namespace")
        .expect("start bus")
}

/// The first event from `rx` matching `pred` (others are passed over); `Err` once `secs`
/// seconds have passed or the bus has ended.
pub fn next_event(
    rx: &Receiver<BusEvent>,
    secs: u64,
    mut pred: impl FnMut(&BusEvent) -> bool,
) -> Result<BusEvent, RecvTimeoutError> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = rx.recv_timeout(left)?;
        if pred(&ev) {
            return Ok(ev);
        }
    }
}

/// [`next_event`] that must arrive; panics naming `what`.
pub fn wait_event(
    rx: &Receiver<BusEvent>,
    what: &str,
    secs: u64,
    pred: impl FnMut(&BusEvent) -> bool,
) -> BusEvent {
    next_event(rx, secs, pred).unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_owned()
            } else {
                format!("  {l}\n")
            }
        })
        .collect()
}

/// The DuraVIP topology of the VIP tests (lines for `cluster { }`): VIPs in
/// 198.51.100.0/24 and 2001:db8:1::/64, one address each, on the nodes' `eth0`.
pub const VIP_TOPOLOGY: &str = r#"Topology "198.51.100.0/24" {
  cidrmask = "32"
  interface = "eth0"
}
Topology "2001:db8:1::/64" {
  cidrmask = "128"
  interface = "eth0"
}
"#;

/// A top-level DuraVIP `Binding` declaring `addr`, with an optional preferred node.
pub fn binding(k: usize, addr: &str, preference: Option<&str>) -> String {
    let pref = preference
        .map(|p| format!("  Duravip_Preference = \"{p}\"\n"))
        .unwrap_or_default();
    format!(
        "Binding \"vip{k}\" {{\n  Enable_Duravip = true\n  Bind_Address = \"{addr}\"\n{pref}}}\n"
    )
}

/// The per-node configuration: the common identity, listener and heartbeat settings,
/// plus the test's own scopes. Kept by the [`Cluster`] so a test can change a hook and
/// rewrite a node's file before a reload.
pub struct NodeConfig {
    /// Lines inside `cluster { }` (Replicate, Topology, view settings …).
    pub cluster: Hook,
    /// Top-level scopes between `cluster` and `duraplane` (Binding …).
    pub top: Hook,
    /// Lines inside `duraplane { }` after the control socket and `metrics = "off"`.
    pub duraplane: Hook,
    /// The shared cluster key file, when the test has one.
    pub key: Option<PathBuf>,
}

impl NodeConfig {
    /// The configuration text of node `i` (0-based) with its control socket.
    pub fn text(&self, i: usize, socket: &Path) -> String {
        let n = i + 1;
        let key = self
            .key
            .as_ref()
            .map(|k| format!("  cluster_key_file = \"{}\"\n", k.display()))
            .unwrap_or_default();
        format!(
            r#"ECCluster_Listener {{
  Listen "192.0.2.1{n}:4802" {{}}
}}
cluster {{
  nodename = "node{n}"
  nodeaddr = "192.0.2.1{n}"
  heartbeats_per_sec = 10
  heartbeat_start_delay = 0
{}}}
{}duraplane {{
  control_socket = "{}"
  metrics = "off"
{}{key}}}
"#,
            indent(&(self.cluster)(i)),
            (self.top)(i),
            socket.display(),
            indent(&(self.duraplane)(i)),
        )
    }
}

/// Builds a [`Cluster`]: node count, corosync timing, key and configuration hooks.
pub struct ClusterBuilder {
    n: usize,
    timing: CorosyncTiming,
    key: Option<String>,
    cluster: Hook,
    top: Hook,
    duraplane: Hook,
}

impl ClusterBuilder {
    pub fn timing(mut self, t: CorosyncTiming) -> Self {
        self.timing = t;
        self
    }

    /// Writes `text` as the cluster key (mode 0600) and names it in every node's config.
    pub fn key(mut self, text: &str) -> Self {
        self.key = Some(text.to_owned());
        self
    }

    pub fn cluster(mut self, f: impl Fn(usize) -> String + Send + Sync + 'static) -> Self {
        self.cluster = Box::new(f);
        self
    }

    pub fn top(mut self, f: impl Fn(usize) -> String + Send + Sync + 'static) -> Self {
        self.top = Box::new(f);
        self
    }

    pub fn duraplane(mut self, f: impl Fn(usize) -> String + Send + Sync + 'static) -> Self {
        self.duraplane = Box::new(f);
        self
    }

    /// Namespaces, bridge and corosync on every node (all members seen); no daemons yet,
    /// so the test can add its own hosts, routes and listeners first.
    pub fn up(self) -> Cluster {
        let mut tb = Testbed::new().expect("testbed");
        let dir = tempfile::tempdir().expect("tempdir");
        let corosync =
            CorosyncCluster::start(&mut tb, self.n, dir.path().to_path_buf(), self.timing)
                .expect("corosync");
        let key = self.key.map(|text| {
            let key = dir.path().join("cluster.key");
            write_key(&key, format!("{text}\n").as_bytes()).expect("key");
            key
        });
        Cluster {
            nodes: Vec::new(),
            corosync,
            tb,
            dir,
            config: NodeConfig {
                cluster: self.cluster,
                top: self.top,
                duraplane: self.duraplane,
                key,
            },
        }
    }

    /// [`ClusterBuilder::up`], then a daemon on every node.
    pub fn start(self) -> Cluster {
        let mut c = self.up();
        c.start_daemons();
        c
    }
}

/// A running testbed. Fields drop in order: daemons, corosync, namespaces, files.
pub struct Cluster {
    /// The daemons started so far, in node order (`nodes[0]` runs on node1).
    pub nodes: Vec<DaemonNode>,
    pub corosync: CorosyncCluster,
    pub tb: Testbed,
    pub dir: tempfile::TempDir,
    pub config: NodeConfig,
}

impl Cluster {
    /// `n` nodes with the common configuration only.
    pub fn builder(n: usize) -> ClusterBuilder {
        ClusterBuilder {
            n,
            timing: CorosyncTiming::default(),
            key: None,
            cluster: Box::new(|_| String::new()),
            top: Box::new(|_| String::new()),
            duraplane: Box::new(|_| String::new()),
        }
    }

    pub fn len(&self) -> usize {
        self.corosync.members.len()
    }

    /// Host (namespace) name of node `i` (0-based).
    pub fn host(&self, i: usize) -> String {
        self.corosync.host(i).to_owned()
    }

    /// Node `i`'s address on the bridge (192.0.2.1x).
    pub fn addr(&self, i: usize) -> IpAddr {
        self.corosync.members[i].addr
    }

    /// Node `i`'s control socket; its local API socket is `api.sock` next to it.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("node{}", i + 1))
            .join("control.sock")
    }

    /// Starts the daemon of the next node not yet running one; returns once it answers.
    pub fn start_daemon(&mut self) {
        let i = self.nodes.len();
        assert!(i < self.len(), "every node already has its daemon");
        let socket = self.socket(i);
        let text = self.config.text(i, &socket);
        let node = DaemonNode::start(
            &self.tb,
            Path::new(BIN),
            self.corosync.host(i),
            self.dir.path(),
            socket,
            &text,
        )
        .expect("daemon");
        self.nodes.push(node);
    }

    /// Starts the daemons of every node not yet running one.
    pub fn start_daemons(&mut self) {
        while self.nodes.len() < self.len() {
            self.start_daemon();
        }
    }

    /// Rewrites node `i`'s configuration file from the (possibly changed) hooks.
    pub fn write_config(&self, i: usize) {
        let n = &self.nodes[i];
        std::fs::write(&n.config, self.config.text(i, &n.socket)).expect("write config");
    }

    /// Restarts node `i`'s daemon (after a kill or a stop) and waits until it answers.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i]
            .restart(&self.tb, Path::new(BIN))
            .expect("restart");
    }

    pub fn signal(&self, i: usize, sig: Signal) {
        self.nodes[i]
            .signal(sig)
            .unwrap_or_else(|e| panic!("{sig} to node{}: {e}", i + 1));
    }

    /// kill -9 of node `i`'s daemon (a crash).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// One console command on node `i`; `Err` carries the daemon's error text.
    pub fn console(&self, i: usize, cmd: &str) -> Result<String, String> {
        self.nodes[i].console(Path::new(BIN), cmd)
    }

    /// One console command on node `i` that must succeed.
    pub fn ask(&self, i: usize, cmd: &str) -> String {
        self.console(i, cmd).unwrap_or_else(|e| {
            panic!(
                "{cmd} on node{}: {e}\nlog tail (newest first):\n{}",
                i + 1,
                self.log_tail(i)
            )
        })
    }

    /// The last 30 lines of node `i`'s daemon log, newest first.
    pub fn log_tail(&self, i: usize) -> String {
        let log = self.nodes[i].log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        tail.join("\n")
    }

    /// Every running node's `cluster info` and log tail: what a wait that timed out
    /// shows, so a failure in CI can be read without reproducing it.
    pub fn diagnosis(&self) -> String {
        let mut out = String::new();
        for i in 0..self.nodes.len() {
            let info = self
                .console(i, "cluster info")
                .unwrap_or_else(|e| format!("(no answer: {e})"));
            out += &format!(
                "--- node{n}: cluster info\n{info}\n--- node{n}: log tail (newest first)\n{}\n",
                self.log_tail(i),
                n = i + 1
            );
        }
        out
    }

    /// Node `i`'s local API socket.
    pub fn api_path(&self, i: usize) -> PathBuf {
        self.socket(i).with_file_name("api.sock")
    }

    /// A bus of the test's own in node `i`'s namespace, on that node's corosync.
    pub fn bus(&self, i: usize, config: BusConfig) -> (Bus, Receiver<BusEvent>) {
        bus_in(&self.tb, self.corosync.host(i), config)
    }

    /// A local API client of node `i`.
    pub fn api(&self, i: usize) -> Client {
        Client::connect(&self.api_path(i)).expect("local API")
    }

    /// Waits (30 s) until every running daemon has replication links to `peers` live peers.
    pub fn wait_linked(&self, peers: usize) {
        for i in 0..self.nodes.len() {
            self.wait_node_linked(i, peers);
        }
    }

    /// Waits (30 s) until node `i` has replication links to `peers` live peers.
    pub fn wait_node_linked(&self, i: usize, peers: usize) {
        wait_until_or(
            &format!("node{} linked to {peers} peers", i + 1),
            30,
            || self.ask(i, "cluster info").matches("(linked, live").count() == peers,
            || self.diagnosis(),
        );
    }

    /// Waits (30 s) until every running daemon's view has all nodes, all live.
    pub fn wait_view(&self) {
        let n = self.len();
        let want = format!("View: {n} members ({n} live)");
        for i in 0..self.nodes.len() {
            wait_until_or(
                &format!("node{}: {want}", i + 1),
                30,
                || self.ask(i, "cluster info").contains(&want),
                || self.diagnosis(),
            );
        }
    }

    /// Adds host `name` on the bridge with `addrs`; returns its interface.
    pub fn add_peer(&mut self, name: &str, addrs: &[&str]) -> String {
        self.tb.add_host(name).expect("host");
        self.tb.attach(name, addrs).expect("attach to the bridge")
    }

    /// [`Cluster::add_peer`] with a route to the nodes' 192.0.2.0/24 (for a peer whose
    /// addresses are all in another network).
    pub fn add_client(&mut self, name: &str, addrs: &[&str]) -> String {
        let ifname = self.add_peer(name, addrs);
        self.tb
            .add_route(name, "192.0.2.0/24", &ifname, None)
            .expect("route");
        ifname
    }

    /// Routes `net` on-link through every node's eth0 (replies to peers in it).
    pub fn route_on_nodes(&self, net: &str) {
        for i in 0..self.len() {
            self.tb
                .add_route(&self.host(i), net, "eth0", None)
                .expect("route");
        }
    }

    /// A listening (never accepting) TCP socket on every node's 192.0.2.1x:`port`; the
    /// kernel completes handshakes into the backlog.
    pub fn listen_on_nodes(&self, port: u16) -> Vec<TcpListener> {
        (0..self.len())
            .map(|i| {
                let addr = SocketAddr::new(self.addr(i), port);
                self.tb
                    .run_in(&self.host(i), move || TcpListener::bind(addr))
                    .expect("netns")
                    .expect("listen")
            })
            .collect()
    }

    /// A TCP connection from `src` in host `from` to node `i`'s `port` (1.5 s timeout).
    pub fn connect_from(
        &self,
        from: &str,
        src: &str,
        i: usize,
        port: u16,
    ) -> std::io::Result<TcpStream> {
        let src: IpAddr = src.parse().expect("ip");
        let dst = SocketAddr::new(self.addr(i), port);
        self.tb
            .run_in(from, move || {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                s.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
                s.connect_timeout(&SockAddr::from(dst), Duration::from_millis(1500))?;
                Ok(s.into())
            })
            .expect("netns")
    }

    /// Puts node `i`'s bridge port down (`up = false`) or up: a partition of that node.
    pub fn set_port(&mut self, i: usize, up: bool) {
        let iflink = self
            .tb
            .exec(&self.host(i), &["cat", "/sys/class/net/eth0/iflink"])
            .expect("iflink");
        let br = self.tb.bridge().expect("bridge ns");
        let links = exec_root(&["ip", "-n", &br, "-o", "link", "show"]).expect("bridge links");
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
        exec_root(&[
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

    /// MAC address of `host`'s eth0.
    pub fn mac_of(&self, host: &str) -> String {
        self.tb
            .exec(host, &["cat", "/sys/class/net/eth0/address"])
            .expect("mac")
            .trim()
            .to_owned()
    }
}

fn exec_root(cmd: &[&str]) -> Result<String, String> {
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
