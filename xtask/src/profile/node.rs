//! One Duraplane node as seen from outside: its control socket, its process, its configuration
//! and its metrics endpoint (inside its network namespace).
//!
//! Everything here reads what the daemon already exposes; nothing links the `duraplane`
//! crate (see `xtask/src/main.rs`).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// Where dp-demo puts its control sockets (`/tmp/duraplane-demo-XXXX/nodeN.sock`).
const DEMO_GLOB_DIR: &str = "/tmp";
const DEMO_PREFIX: &str = "duraplane-demo-";
/// `duraplane.metrics` when the configuration does not set it.
const DEFAULT_METRICS: &str = "127.0.0.1:9480";
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A daemon reached through its control socket.
#[derive(Debug, Clone)]
pub struct Node {
    /// `cluster nodename`, or the socket's file stem when the daemon does not answer it.
    pub name: String,
    pub socket: PathBuf,
    /// The process that listens on the socket (SO_PEERCRED).
    pub pid: u32,
}

impl Node {
    /// Connects once to learn the daemon's pid and name.
    pub fn open(socket: &Path) -> Result<Node> {
        let pid = peer_pid(socket)?;
        let name = match console(socket, "cluster nodename") {
            Ok(n) if !n.trim().is_empty() => n.trim().to_owned(),
            _ => socket
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "?".into()),
        };
        Ok(Node {
            name,
            socket: socket.to_path_buf(),
            pid,
        })
    }

    /// `inbound stats` as `name → value`.
    pub fn inbound_stats(&self) -> Result<BTreeMap<String, u64>> {
        Ok(parse_kv(&console(&self.socket, "inbound stats")?))
    }

    /// The daemon's configuration file (`-c PATH` / `--config PATH` on its command line).
    pub fn config_path(&self) -> Option<PathBuf> {
        let raw = std::fs::read(format!("/proc/{}/cmdline", self.pid)).ok()?;
        config_from_cmdline(&raw)
    }

    /// `corosync.conf` next to a demo node's files, else the system one.
    pub fn corosync_conf(&self) -> Option<PathBuf> {
        let dir = self.socket.parent();
        let demo = dir.map(|d| d.join(&self.name).join("corosync.conf"));
        let own_dir = dir.map(|d| d.join("corosync.conf"));
        [
            demo,
            own_dir,
            Some(PathBuf::from("/etc/corosync/corosync.conf")),
        ]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
    }

    /// The Prometheus text of the node's metrics endpoint, fetched from inside the daemon's
    /// network namespace (the demo binds 127.0.0.1 there). Needs CAP_SYS_ADMIN (setns).
    pub fn metrics(&self) -> Result<String> {
        let conf = self
            .config_path()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let addr = metrics_addr(&conf).unwrap_or_else(|| DEFAULT_METRICS.to_owned());
        let mut addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("metrics address {addr:?} is not ADDR:PORT"))?;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let pid = self.pid;
        std::thread::spawn(move || -> Result<String> {
            enter_netns(pid)?;
            http_get(addr, "/metrics")
        })
        .join()
        .map_err(|_| anyhow::anyhow!("metrics thread panicked"))?
        .with_context(|| format!("scraping http://{addr}/metrics in pid {pid}'s namespace"))
    }
}

/// The nodes named by `--socket` (one) or `--demo` (every running demo node).
pub fn resolve(socket: Option<&Path>, demo: bool) -> Result<Vec<Node>> {
    let sockets = match (socket, demo) {
        (Some(s), _) => vec![s.to_path_buf()],
        (None, true) => {
            let s = demo_sockets();
            if s.is_empty() {
                bail!(
                    "no demo is running (no {DEMO_GLOB_DIR}/{DEMO_PREFIX}*/node*/node*.sock): start one with \
                     `cargo xtask run` or `cargo xtask run -- --duration 120`"
                );
            }
            s
        }
        (None, false) => return Ok(Vec::new()),
    };
    sockets.iter().map(|s| Node::open(s)).collect()
}

/// Every `/tmp/duraplane-demo-*/node*/node*.sock`, sorted.
pub fn demo_sockets() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(DEMO_GLOB_DIR) else {
        return out;
    };
    for d in dirs.flatten() {
        if !d.file_name().to_string_lossy().starts_with(DEMO_PREFIX) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(d.path()) else {
            continue;
        };
        for f in files.flatten() {
            let n = f.file_name().to_string_lossy().into_owned();
            if !n.starts_with("node") {
                continue;
            }
            if n.ends_with(".sock") {
                out.push(f.path());
            } else {
                // Each node's own directory (its local API socket is `<dir>/api.sock`).
                let s = f.path().join(format!("{n}.sock"));
                if s.exists() {
                    out.push(s);
                }
            }
        }
    }
    out.sort();
    out
}

/// One request over the control socket (docs/console.md): a line out, `OK|ERR <len>\n` + body
/// back.
pub fn console(socket: &Path, request: &str) -> Result<String> {
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to the control socket {} (is the daemon running? root or the \
             socket's group is needed)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(format!("{request}\n").as_bytes())?;
    let mut r = BufReader::new(s);
    let mut header = String::new();
    r.read_line(&mut header)
        .with_context(|| format!("no reply on {}", socket.display()))?;
    let (ok, len) = parse_header(&header)
        .with_context(|| format!("bad reply header {header:?} on {}", socket.display()))?;
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if !ok {
        bail!(
            "{request:?} failed on {}: {}",
            socket.display(),
            body.trim()
        );
    }
    Ok(body)
}

fn parse_header(h: &str) -> Option<(bool, usize)> {
    let (word, len) = h.trim_end().split_once(' ')?;
    let ok = match word {
        "OK" => true,
        "ERR" => false,
        _ => return None,
    };
    Some((ok, len.parse().ok()?))
}

/// The pid of the process listening on a Unix socket (SO_PEERCRED of a fresh connection).
pub fn peer_pid(socket: &Path) -> Result<u32> {
    let s = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 || cred.pid <= 0 {
        bail!(
            "cannot learn the daemon pid behind {}: {}",
            socket.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(cred.pid as u32)
}

/// `-c PATH`, `--config PATH` or `--config=PATH` from a NUL-separated command line.
pub fn config_from_cmdline(raw: &[u8]) -> Option<PathBuf> {
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    for (i, a) in args.iter().enumerate() {
        if a == "-c" || a == "--config" {
            return args.get(i + 1).map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// The value of `metrics = "ADDR:PORT"` in a Duraplane configuration.
pub fn metrics_addr(conf: &str) -> Option<String> {
    setting(conf, "metrics")
}

/// The first `key = value` (quotes removed) of a configuration, comments ignored.
pub fn setting(conf: &str, key: &str) -> Option<String> {
    conf.lines().find_map(|l| {
        let l = l.split('#').next()?.trim();
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| {
            v.trim()
                .trim_end_matches(';')
                .trim()
                .trim_matches('"')
                .to_owned()
        })
    })
}

/// `token: N` (ms) of a corosync.conf; corosync's default 3000 ms when absent.
pub fn corosync_token_ms(conf: &str) -> u64 {
    conf.lines()
        .find_map(|l| {
            let (k, v) = l.split('#').next()?.split_once(':')?;
            (k.trim() == "token").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(3000)
}

/// The token corosync really runs with: with a nodelist of n > 2 nodes it adds
/// (n − 2) × `token_coefficient` (650 ms unless set) to `token`
/// (`runtime.config.totem.token`); with three nodes a `token: 200` is 850 ms.
pub fn corosync_runtime_token_ms(conf: &str) -> u64 {
    let value = |key: &str| {
        conf.lines().find_map(|l| {
            let (k, v) = l.split('#').next()?.split_once(':')?;
            (k.trim() == key).then(|| v.trim().parse::<u64>().ok())?
        })
    };
    let nodes = conf
        .lines()
        .filter(|l| {
            l.split('#')
                .next()
                .unwrap_or("")
                .trim()
                .starts_with("ring0_addr")
        })
        .count() as u64;
    let coefficient = value("token_coefficient").unwrap_or(650);
    corosync_token_ms(conf) + nodes.saturating_sub(2) * coefficient
}

/// `name: value` lines (the `inbound stats` format); lines that are not are skipped.
pub fn parse_kv(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Prometheus/OpenMetrics text as `name{labels} → value` (comments skipped).
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Moves the calling thread into `pid`'s network namespace (only this thread).
fn enter_netns(pid: u32) -> Result<()> {
    let path = format!("/proc/{pid}/ns/net");
    let f = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
    // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread's namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns({path}) failed: {} (needs CAP_SYS_ADMIN: run as root)",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .context("HTTP reply without a header end")?;
    if !head.starts_with("HTTP/1.") || head.split(' ').nth(1).is_none_or(|c| c != "200") {
        bail!(
            "HTTP error: {}",
            head.lines().next().unwrap_or_default().trim()
        );
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_stats_parse() {
        let m = parse_kv(include_str!("testdata/stats.txt"));
        assert_eq!(m["packets"], 22);
        assert_eq!(m["flow_map_full"], 0);
        assert_eq!(m["tracked_sources"], 2);
        assert_eq!(m.len(), 25);
    }

    #[test]
    fn prometheus_parse() {
        let m = parse_prometheus(include_str!("testdata/metrics.txt"));
        assert_eq!(m["process_threads"], 5.0);
        assert_eq!(
            m["duraplane_inbound_dropped_syns_total{netblock=\"198.51.100.0/24\"}"],
            1.0
        );
        assert_eq!(m["duraplane_xdp_events_total{event=\"packets\"}"], 27.0);
    }

    #[test]
    fn reply_header() {
        assert_eq!(parse_header("OK 16\n"), Some((true, 16)));
        assert_eq!(parse_header("ERR 3\n"), Some((false, 3)));
        assert_eq!(parse_header("HELLO 3\n"), None);
        assert_eq!(parse_header("OK x\n"), None);
    }

    #[test]
    fn cmdline_config() {
        let raw = b"/x/duraplane\0run\0--foreground\0-c\0/tmp/d/node1/duraplane.conf\0";
        assert_eq!(
            config_from_cmdline(raw),
            Some(PathBuf::from("/tmp/d/node1/duraplane.conf"))
        );
        assert_eq!(
            config_from_cmdline(b"duraplane\0run\0--config=/etc/d.conf\0"),
            Some(PathBuf::from("/etc/d.conf"))
        );
        assert_eq!(config_from_cmdline(b"duraplane\0run\0"), None);
    }

    #[test]
    fn settings() {
        let conf =
            "duraplane {\n  control_socket = \"/s\"\n  metrics = \"127.0.0.1:9480\" # x\n}\n";
        assert_eq!(metrics_addr(conf).as_deref(), Some("127.0.0.1:9480"));
        assert_eq!(metrics_addr("duraplane {}\n"), None);
        assert_eq!(
            corosync_token_ms("totem {\n  token: 300\n  consensus: 360\n}"),
            300
        );
        assert_eq!(corosync_token_ms("totem {\n}"), 3000);
    }
}
