//! Real corosync clusters on one machine: one corosync per testbed host.
//!
//! Debian's corosync keeps its pid lock in `/run` and ring state in `/var/lib/corosync`, so
//! each instance runs in a private mount namespace with its own tmpfs on both. Its IPC
//! (libqb) uses abstract Unix sockets, which belong to the *network* namespace: anything
//! run in the host's network namespace (`Testbed::exec`, `Testbed::run_in`) talks to that
//! host's corosync.

use std::{
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use super::{ProcessGuard, Testbed, TestbedError};

/// Corosync timing; the defaults are the project's recommendation for a LAN (reasoning and
/// measurements: docs/corosync.md).
///
/// A crashed node leaves the view after about `token + consensus` — but only if
/// `token_coefficient` is 0: corosync otherwise adds `(nodes - 2) × token_coefficient`
/// (650 ms by default) to the token timeout, which was the unexplained ~600 ms of the old
/// `token 300` setting (runtime token 950 ms with three nodes).
#[derive(Debug, Clone, Copy)]
pub struct CorosyncTiming {
    pub token_ms: u32,
    pub consensus_ms: u32,
    pub join_ms: u32,
    /// Added to the token timeout per node beyond two; corosync's default is 650.
    pub token_coefficient_ms: u32,
    /// knet link heartbeat (`knet_ping_interval`, `knet_ping_timeout`); `None` lets
    /// corosync derive them from the token (interval token/4, timeout token/2).
    pub knet_ping: Option<(u32, u32)>,
}

impl Default for CorosyncTiming {
    fn default() -> Self {
        CorosyncTiming {
            token_ms: 200,
            consensus_ms: 240,
            join_ms: 50,
            token_coefficient_ms: 0,
            knet_ping: Some((100, 400)),
        }
    }
}

impl CorosyncTiming {
    /// Corosync's own defaults (Debian's corosync 3.1: token 1000 ms before the
    /// coefficient, consensus 1.2 × token), for comparison in benches.
    pub fn corosync_defaults() -> Self {
        CorosyncTiming {
            token_ms: 1000,
            consensus_ms: 1200,
            join_ms: 50,
            token_coefficient_ms: 650,
            knet_ping: None,
        }
    }
}

/// One node of the cluster as corosync knows it.
#[derive(Debug, Clone)]
pub struct CorosyncMember {
    pub nodeid: u32,
    pub name: String,
    pub addr: IpAddr,
}

/// A `corosync.conf` for `members` (knet, no crypto: test hosts only), with a
/// votequorum provider (two_node set automatically for two members).
pub fn corosync_conf(cluster_name: &str, members: &[CorosyncMember], t: CorosyncTiming) -> String {
    let mut s = format!(
        "totem {{\n  version: 2\n  cluster_name: {cluster_name}\n  transport: knet\n  \
         crypto_cipher: none\n  crypto_hash: none\n  token: {}\n  consensus: {}\n  join: {}\n  \
         token_coefficient: {}\n",
        t.token_ms, t.consensus_ms, t.join_ms, t.token_coefficient_ms
    );
    if let Some((interval, timeout)) = t.knet_ping {
        s.push_str(&format!(
            "  interface {{\n    linknumber: 0\n    knet_ping_interval: {interval}\n    \
             knet_ping_timeout: {timeout}\n  }}\n"
        ));
    }
    s.push_str("}\nnodelist {\n");
    for m in members {
        s.push_str(&format!(
            "  node {{\n    ring0_addr: {}\n    nodeid: {}\n    name: {}\n  }}\n",
            m.addr, m.nodeid, m.name
        ));
    }
    s.push_str("}\nquorum {\n  provider: corosync_votequorum\n");
    if members.len() == 2 {
        s.push_str("  two_node: 1\n");
    }
    s.push_str(
        "}\nlogging {\n  to_stderr: yes\n  to_logfile: no\n  to_syslog: no\n  timestamp: on\n}\n",
    );
    s
}

/// A cluster of corosync instances on testbed hosts `node1…nodeN`, bridged, with addresses
/// 192.0.2.11… . Instances are stopped by their guards (and by the testbed) on drop.
pub struct CorosyncCluster {
    pub members: Vec<CorosyncMember>,
    dir: PathBuf,
    procs: Vec<Option<ProcessGuard>>,
}

impl CorosyncCluster {
    /// Creates the hosts, plugs them into the testbed's bridge, writes the configs into
    /// `dir` and starts every corosync; returns once each sees all `n` members.
    pub fn start(
        tb: &mut Testbed,
        n: usize,
        dir: PathBuf,
        timing: CorosyncTiming,
    ) -> Result<Self, TestbedError> {
        let members: Vec<CorosyncMember> = (1..=n)
            .map(|i| CorosyncMember {
                nodeid: i as u32,
                name: format!("node{i}"),
                addr: IpAddr::from([192, 0, 2, 10 + i as u8]),
            })
            .collect();
        let conf = corosync_conf("duraplane", &members, timing);
        for m in &members {
            tb.add_host(&m.name)?;
            tb.attach(&m.name, &[&format!("{}/24", m.addr)])?;
            let d = dir.join(&m.name);
            std::fs::create_dir_all(&d).map_err(|e| TestbedError::Io {
                what: format!("create {}", d.display()),
                source: e,
            })?;
            let path = d.join("corosync.conf");
            std::fs::write(&path, &conf).map_err(|e| TestbedError::Io {
                what: format!("write {}", path.display()),
                source: e,
            })?;
        }
        let mut c = CorosyncCluster {
            members,
            dir,
            procs: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            c.start_node(tb, i)?;
        }
        for i in 0..n {
            c.wait_members(tb, i, n, Duration::from_secs(30))?;
        }
        Ok(c)
    }

    /// Starts (or restarts) corosync on node `i` (0-based).
    pub fn start_node(&mut self, tb: &Testbed, i: usize) -> Result<(), TestbedError> {
        let m = &self.members[i];
        let conf = self.dir.join(&m.name).join("corosync.conf");
        let script = format!(
            "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib/corosync && \
             exec corosync -f -c {}",
            conf.display()
        );
        let p = tb.spawn(
            &m.name,
            &[
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ],
        )?;
        self.procs[i] = Some(p);
        Ok(())
    }

    /// Kills node `i`'s corosync with `sig` (SIGKILL: a crash).
    pub fn kill_node(&mut self, i: usize, sig: Signal) -> Result<(), TestbedError> {
        if let Some(p) = self.procs[i].take() {
            let pid = p.pid();
            p.signal(sig)?;
            let _ = p.finish(Duration::from_secs(10));
            remove_ipc_leftovers(pid);
        }
        Ok(())
    }

    /// PID of node `i`'s running corosync.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].as_ref().map(ProcessGuard::pid)
    }

    /// Host name of node `i`.
    pub fn host(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// Waits until node `i`'s corosync reports `n` members (corosync-quorumtool).
    pub fn wait_members(
        &self,
        tb: &Testbed,
        i: usize,
        n: usize,
        timeout: Duration,
    ) -> Result<(), TestbedError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.member_count(tb, i) == Some(n) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestbedError::Timeout {
                    what: format!("{} to see {n} corosync members", self.members[i].name),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Members node `i`'s corosync currently sees, if it answers.
    pub fn member_count(&self, tb: &Testbed, i: usize) -> Option<usize> {
        let out = tb
            .exec_output(self.host(i), &["corosync-quorumtool", "-l"])
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Some(
            text.lines()
                .filter(|l| {
                    l.split_whitespace()
                        .next()
                        .is_some_and(|w| w.chars().all(|c| c.is_ascii_digit()))
                })
                .count(),
        )
    }
}

impl Drop for CorosyncCluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().filter_map(Option::take) {
            let pid = p.pid();
            drop(p); // SIGKILL and reap
            remove_ipc_leftovers(pid);
        }
    }
}

/// Removes what a killed corosync leaves behind: libqb's IPC rings
/// (`/dev/shm/qb-PID-CLIENT-…`, about 3 MiB each per client connection) and its blackbox
/// (`qb-corosync-PID-blackbox-*`, 8 MiB). Only a clean shutdown unlinks them, and tests stop
/// their corosyncs with SIGKILL: before this, a test run left gigabytes in `/dev/shm`
/// (RAM) and `/tmp`. `pid` is a corosync this testbed started (its spawn execs corosync).
pub fn remove_ipc_leftovers(pid: u32) {
    for path in ipc_leftovers(pid) {
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// The IPC rings and blackbox files of corosync `pid` in `/dev/shm` and `/tmp`.
pub fn ipc_leftovers(pid: u32) -> Vec<PathBuf> {
    let prefixes = [
        format!("qb-{pid}-"),
        format!("corosync-{pid}-blackbox-"),
        format!("qb-corosync-{pid}-blackbox-"),
    ];
    ["/dev/shm", "/tmp"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            prefixes.iter().any(|p| name.starts_with(p.as_str()))
        })
        .map(|e| e.path())
        .collect()
}
