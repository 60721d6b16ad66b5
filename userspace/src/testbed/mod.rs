//! Throwaway hosts for tests, benches and the demo: network namespaces joined by veth
//! pairs or by a bridge living in its own namespace.
//!
//! * Addresses: only the documentation ranges (192.0.2.0/24, 198.51.100.0/24,
//!   203.0.113.0/24, 2001:db8::/32); anything else is refused with
//!   [`TestbedError::NotDocumentation`], so no test can route real traffic.
//! * Cleanup: [`Testbed`]'s `Drop` kills every process still running from
//!   [`Testbed::spawn`] (its process group, by id) and deletes every namespace; links die
//!   with their namespace because they are created *inside* the namespaces, never in the
//!   host's. `Drop` runs during a panic's unwinding too. Namespaces left by a test that
//!   was SIGKILLed are removed by the next [`Testbed::new`] (see [`sweep_stale`]).
//! * Names: namespaces are `dp<pid>-<n>-<host>`, unique per process and testbed, so
//!   parallel tests never collide; interface names are per namespace (`eth0`, `eth1`, …
//!   and bridge ports `p0`, `p1`, …), far below the 15-character limit.
//! * Mechanism: `ip` (iproute2) sets namespaces and links up; commands run inside a host
//!   with `ip netns exec` (it `exec`s the command, so the PID we hold is the command's);
//!   in-process work runs on a thread that `setns`'d, see [`Testbed::run_in`].
//! * IPv6 DAD is off in every namespace (`accept_dad=0` and `nodad` on each address) so
//!   v6 addresses are usable at once.

mod addr;
pub mod corosync;
pub mod daemons;
mod ethtool;
mod process;

pub use addr::{
    DOCUMENTATION_NETS, IfAddr, check_documentation, is_documentation, is_documentation_net,
};
pub use process::{Finished, ProcessGuard, Stream};

use std::{
    collections::HashSet,
    fs::File,
    net::IpAddr,
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use nix::{sched::CloneFlags, sys::signal::Signal, unistd::Pid};

/// Errors of the testbed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error(
        "{addr} is outside the documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32)"
    )]
    NotDocumentation { addr: String },
    #[error("`{input}` is not an address of the form ip[/prefix]")]
    BadAddress { input: String },
    #[error("host name `{name}` must be 1-12 characters of [a-z0-9]")]
    BadHostName { name: String },
    #[error("host `{name}` already exists in this testbed")]
    DuplicateHost { name: String },
    #[error("no host `{name}` in this testbed")]
    UnknownHost { name: String },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setns into {netns}: {errno}")]
    Setns { netns: String, errno: nix::Error },
    #[error("signal to process group {pid}: {errno}")]
    Signal { pid: u32, errno: nix::Error },
    #[error("`{what}` did not finish within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("ethtool {op} on {ifname}: {errno}")]
    Ethtool {
        op: &'static str,
        ifname: String,
        errno: nix::Error,
    },
    #[error("thread running inside {netns} panicked")]
    ThreadPanicked { netns: String },
}

static NEXT_TESTBED: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
struct Host {
    name: String,
    netns: String,
    next_if: u32,
}

/// The two ends of a veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    /// Interface name inside the first host.
    pub a_if: String,
    /// Interface name inside the second host.
    pub b_if: String,
}

/// A set of namespaces (hosts) and links; everything is removed on drop.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    hosts: Vec<Host>,
    /// Namespace of the bridge, once [`bridge`](Self::bridge) was called.
    bridge_ns: Option<String>,
    next_port: u32,
    live: Arc<Mutex<HashSet<u32>>>,
}

/// Bridge device name inside the bridge namespace.
pub const BRIDGE_IF: &str = "br0";

fn cmd_string(args: &[&str]) -> String {
    args.join(" ")
}

/// Run a command, returning stdout; non-zero exit is an error with its stderr.
fn run(args: &[&str]) -> Result<String, TestbedError> {
    let out = run_output(args)?;
    if !out.status.success() {
        return Err(TestbedError::Command {
            cmd: cmd_string(args),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_output(args: &[&str]) -> Result<Output, TestbedError> {
    let (prog, rest) = args.split_first().ok_or_else(|| TestbedError::BadAddress {
        input: String::new(),
    })?;
    Command::new(prog)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TestbedError::Io {
            what: format!("run `{}`", cmd_string(args)),
            source: e,
        })
}

/// Names of the network namespaces `ip netns list` shows.
pub fn list_netns() -> Result<Vec<String>, TestbedError> {
    Ok(run(&["ip", "netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Delete namespaces named like ours (`dp<pid>-<n>-…`) whose creating process is gone —
/// what a SIGKILLed test leaves behind. Returns the names removed.
pub fn sweep_stale() -> Result<Vec<String>, TestbedError> {
    let mut removed = Vec::new();
    for ns in list_netns()? {
        let Some(rest) = ns.strip_prefix("dp") else {
            continue;
        };
        let mut parts = rest.splitn(3, '-');
        let (Some(pid), Some(n), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), n.parse::<u32>()) else {
            continue;
        };
        if pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            run(&["ip", "netns", "del", &ns])?;
            removed.push(ns);
        }
    }
    Ok(removed)
}

impl Testbed {
    /// An empty testbed. Also sweeps namespaces left by dead test processes.
    pub fn new() -> Result<Self, TestbedError> {
        sweep_stale()?;
        let n = NEXT_TESTBED.fetch_add(1, Ordering::Relaxed);
        Ok(Testbed {
            prefix: format!("dp{}-{}", std::process::id(), n),
            hosts: Vec::new(),
            bridge_ns: None,
            next_port: 0,
            live: Arc::default(),
        })
    }

    fn host(&self, name: &str) -> Result<&Host, TestbedError> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| TestbedError::UnknownHost {
                name: name.to_string(),
            })
    }

    fn host_mut(&mut self, name: &str) -> Result<&mut Host, TestbedError> {
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .ok_or_else(|| TestbedError::UnknownHost {
                name: name.to_string(),
            })
    }

    /// Create a namespace, bring `lo` up and switch IPv6 DAD off in it.
    fn create_netns(netns: &str) -> Result<(), TestbedError> {
        run(&["ip", "netns", "add", netns])?;
        let setup = (|| {
            run(&["ip", "-n", netns, "link", "set", "lo", "up"])?;
            run(&[
                "ip",
                "netns",
                "exec",
                netns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ])?;
            Ok(())
        })();
        if setup.is_err() {
            let _ = run(&["ip", "netns", "del", netns]);
        }
        setup
    }

    /// A new host (network namespace). `name`: 1–12 of `[a-z0-9]`.
    pub fn add_host(&mut self, name: &str) -> Result<(), TestbedError> {
        if name.is_empty()
            || name.len() > 12
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(TestbedError::BadHostName {
                name: name.to_string(),
            });
        }
        if self.hosts.iter().any(|h| h.name == name) || name == "br" {
            return Err(TestbedError::DuplicateHost {
                name: name.to_string(),
            });
        }
        let netns = format!("{}-{}", self.prefix, name);
        Self::create_netns(&netns)?;
        self.hosts.push(Host {
            name: name.to_string(),
            netns,
            next_if: 0,
        });
        Ok(())
    }

    /// The namespace name of a host (for `ip netns exec`, aya attach via [`run_in`](Self::run_in), …).
    pub fn netns(&self, host: &str) -> Result<&str, TestbedError> {
        Ok(&self.host(host)?.netns)
    }

    /// `/run/netns/<name>`: open it and `setns` to enter the host.
    pub fn netns_path(&self, host: &str) -> Result<PathBuf, TestbedError> {
        Ok(PathBuf::from("/run/netns").join(self.netns(host)?))
    }

    fn next_if(&mut self, host: &str) -> Result<(String, String), TestbedError> {
        let h = self.host_mut(host)?;
        let ifname = format!("eth{}", h.next_if);
        h.next_if += 1;
        Ok((h.netns.clone(), ifname))
    }

    fn parse_addrs(addrs: &[&str]) -> Result<Vec<IfAddr>, TestbedError> {
        addrs.iter().map(|a| IfAddr::parse(a)).collect()
    }

    /// Add an address (documentation space only) to an interface of a host.
    pub fn add_addr(&self, host: &str, ifname: &str, addr: &str) -> Result<(), TestbedError> {
        let a = IfAddr::parse(addr)?;
        Self::add_ifaddr(self.netns(host)?, ifname, &a)
    }

    fn add_ifaddr(netns: &str, ifname: &str, a: &IfAddr) -> Result<(), TestbedError> {
        let s = a.to_string();
        let mut args = vec!["ip", "-n", netns, "addr", "add", &s, "dev", ifname];
        if a.ip.is_ipv6() {
            args.push("nodad");
        }
        run(&args).map(|_| ())
    }

    /// Join two hosts with a veth pair, bring both ends up and give them addresses.
    pub fn veth_pair(
        &mut self,
        host_a: &str,
        host_b: &str,
        a_addrs: &[&str],
        b_addrs: &[&str],
    ) -> Result<VethPair, TestbedError> {
        let (aa, ba) = (Self::parse_addrs(a_addrs)?, Self::parse_addrs(b_addrs)?);
        if host_a == host_b {
            return Err(TestbedError::DuplicateHost {
                name: host_a.to_string(),
            });
        }
        let (ns_a, if_a) = self.next_if(host_a)?;
        let (ns_b, if_b) = self.next_if(host_b)?;
        run(&[
            "ip", "-n", &ns_a, "link", "add", &if_a, "type", "veth", "peer", "name", &if_b,
            "netns", &ns_b,
        ])?;
        for (ns, ifn, addrs) in [(&ns_a, &if_a, &aa), (&ns_b, &if_b, &ba)] {
            for a in addrs {
                Self::add_ifaddr(ns, ifn, a)?;
            }
            run(&["ip", "-n", ns, "link", "set", ifn, "up"])?;
        }
        for (ns, ifn) in [(&ns_a, &if_a), (&ns_b, &if_b)] {
            Self::wait_carrier(ns, ifn)?;
        }
        Ok(VethPair {
            a_if: if_a,
            b_if: if_b,
        })
    }

    /// Create (once) the bridge namespace with [`BRIDGE_IF`] in it; returns its namespace.
    pub fn bridge(&mut self) -> Result<String, TestbedError> {
        if let Some(ns) = &self.bridge_ns {
            return Ok(ns.clone());
        }
        let ns = format!("{}-br", self.prefix);
        Self::create_netns(&ns)?;
        self.bridge_ns = Some(ns.clone());
        run(&["ip", "-n", &ns, "link", "add", BRIDGE_IF, "type", "bridge"])?;
        run(&["ip", "-n", &ns, "link", "set", BRIDGE_IF, "up"])?;
        Ok(ns)
    }

    /// Plug a host into the bridge (created if needed) with a new veth; returns the
    /// interface name inside the host.
    pub fn attach(&mut self, host: &str, addrs: &[&str]) -> Result<String, TestbedError> {
        let addrs = Self::parse_addrs(addrs)?;
        let br = self.bridge()?;
        let (ns, ifname) = self.next_if(host)?;
        let port = format!("p{}", self.next_port);
        self.next_port += 1;
        run(&[
            "ip", "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", &ifname,
            "netns", &ns,
        ])?;
        run(&[
            "ip", "-n", &br, "link", "set", &port, "master", BRIDGE_IF, "up",
        ])?;
        for a in &addrs {
            Self::add_ifaddr(&ns, &ifname, a)?;
        }
        run(&["ip", "-n", &ns, "link", "set", &ifname, "up"])?;
        Self::wait_carrier(&ns, &ifname)?;
        Self::wait_carrier(&br, &port)?;
        Ok(ifname)
    }

    /// Waits until `ifname` in `ns` has its carrier (`LOWER_UP`): a veth's carrier comes
    /// up through the kernel's link-watch work, after `link set up` returns, and until
    /// then frames are dropped (a test's first IPv6 ping over a new pair failed in CI).
    fn wait_carrier(ns: &str, ifname: &str) -> Result<(), TestbedError> {
        const WITHIN: Duration = Duration::from_secs(5);
        let start = Instant::now();
        loop {
            if run(&["ip", "-n", ns, "-o", "link", "show", "dev", ifname])?.contains("LOWER_UP") {
                return Ok(());
            }
            if start.elapsed() > WITHIN {
                return Err(TestbedError::Timeout {
                    what: format!("carrier on {ifname} in {ns}"),
                    after: WITHIN,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// An on-link route in `host` to `dest` (documentation space only) out of `ifname`,
    /// optionally via a gateway.
    pub fn add_route(
        &self,
        host: &str,
        dest: &str,
        ifname: &str,
        via: Option<IpAddr>,
    ) -> Result<(), TestbedError> {
        let d = IfAddr::parse(dest)?;
        let ns = self.netns(host)?;
        let d = d.to_string();
        let via_s = via.map(|v| v.to_string());
        let mut args = vec!["ip", "-n", ns, "route", "add", &d, "dev", ifname];
        if let (Some(v), Some(vs)) = (via, via_s.as_deref()) {
            check_documentation(&v)?;
            args.extend(["via", vs]);
        }
        run(&args).map(|_| ())
    }

    /// Turn GRO on for an interface in `host`. Frames sent into a veth through
    /// `ndo_xdp_xmit` (live frames, XDP_REDIRECT) reach a peer with GRO on; native-mode
    /// XDP_TX replies on 6.18 are only delivered when the peer has an XDP program of its
    /// own (`veth_xdp_flush` wakes the peer's NAPI only then; docs/duravip.md).
    pub fn enable_gro(&self, host: &str, ifname: &str) -> Result<(), TestbedError> {
        let ifname = ifname.to_string();
        self.run_in(host, move || ethtool::set_gro(&ifname, true))?
    }

    /// Whether GRO is on for an interface in `host`.
    pub fn gro_enabled(&self, host: &str, ifname: &str) -> Result<bool, TestbedError> {
        let ifname = ifname.to_string();
        self.run_in(host, move || ethtool::gro(&ifname))?
    }

    /// Run `f` on a fresh thread that entered `host`'s network namespace (sockets, aya
    /// attach by ifindex, ioctls then act inside the host). The calling thread is not
    /// moved.
    pub fn run_in<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, TestbedError> {
        let path = self.netns_path(host)?;
        let netns = self.netns(host)?.to_string();
        let file = File::open(&path).map_err(|e| TestbedError::Io {
            what: format!("open {}", path.display()),
            source: e,
        })?;
        let ns2 = netns.clone();
        std::thread::spawn(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|errno| TestbedError::Setns { netns: ns2, errno })?;
            Ok(f())
        })
        .join()
        .map_err(|_| TestbedError::ThreadPanicked { netns })?
    }

    /// Run a command inside `host` and wait for it; non-zero exit is an error. Returns
    /// stdout.
    pub fn exec(&self, host: &str, cmd: &[&str]) -> Result<String, TestbedError> {
        let ns = self.netns(host)?;
        let mut args = vec!["ip", "netns", "exec", ns];
        args.extend_from_slice(cmd);
        run(&args)
    }

    /// Like [`exec`](Self::exec) but returns the raw output whatever the exit status.
    pub fn exec_output(&self, host: &str, cmd: &[&str]) -> Result<Output, TestbedError> {
        let ns = self.netns(host)?;
        let mut args = vec!["ip", "netns", "exec", ns];
        args.extend_from_slice(cmd);
        run_output(&args)
    }

    /// Start a command inside `host` in its own process group, stdin/stdout/stderr piped.
    /// The guard kills the group on drop; the testbed kills leftovers before it deletes
    /// the namespaces.
    pub fn spawn(&self, host: &str, cmd: &[&str]) -> Result<ProcessGuard, TestbedError> {
        use std::os::unix::process::CommandExt;
        let ns = self.netns(host)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| TestbedError::Io {
                what: format!("spawn `{}` in {ns}", cmd_string(cmd)),
                source: e,
            })?;
        Ok(ProcessGuard::new(
            child,
            self.live.clone(),
            format!("{} (in {host})", cmd_string(cmd)),
        ))
    }

    /// Every namespace this testbed created, hosts first, bridge last.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.hosts.iter().map(|h| h.netns.clone()).collect();
        v.extend(self.bridge_ns.clone());
        v
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Ok(live) = self.live.lock() {
            for pid in live.iter() {
                // Still owned (unreaped) by a ProcessGuard, so the id is still ours.
                let _ = nix::sys::signal::killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            }
        }
        for ns in self.namespaces() {
            if let Err(e) = run(&["ip", "netns", "del", &ns]) {
                eprintln!("testbed: could not delete namespace {ns}: {e}");
            }
        }
    }
}
