//! Load aimed at the profiled daemon itself (`profile perf --load api|syn|log`), unlike
//! `--scenario`, whose bench starts daemons of its own. Open loop: operations go out at
//! their intended times at `--rate` (late ones at once, never skipped), bounded by `--count`
//! and the recording window, so the profile shows the daemon under the offered load.
//!
//! - `api`: local API gauge and throttle churn on `<dir of the control socket>/api.sock`.
//! - `syn`: `dp-syngen` SYNs at the daemon's `cluster nodeaddr` from the demo's client
//!   namespace (the one created with the daemon's, `dp<pid>-<n>-client`), spoofed from
//!   203.0.113.0/24 (the demo counts that netblock, never drops it).
//! - `log`: appends through the daemon's local log socket (`<stem>.log.sock` next to the
//!   control socket) to one of its `cluster://` streams.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::{fs::MetadataExt, net::UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::node::{self, Node};

/// What load to put on the profiled daemon.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadKind {
    /// Local API: gauge inc/dec and shared-throttle consume on the daemon's api.sock.
    Api,
    /// SYNs at the daemon's address from the demo's client namespace (dp-syngen).
    Syn,
    /// Appends through the daemon's local log socket to a `cluster://` stream.
    Log,
}

/// What a load run did (printed after the profile).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    pub what: String,
    pub sent: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Lateness of each operation's completion behind its intended time (µs): p50, p99,
    /// max. Absent for `syn` (dp-syngen reports its own).
    pub late_us: Option<(u64, u64, u64)>,
    pub first_error: Option<String>,
}

impl LoadReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "Load: {}: {} operations in {:.1} s ({:.0}/s), {} errors",
            self.what,
            self.sent,
            self.seconds,
            self.sent as f64 / self.seconds.max(1e-9),
            self.errors
        );
        if let Some((p50, p99, max)) = self.late_us {
            s.push_str(&format!(
                "; completion behind intended time p50 {:.2} / p99 {:.2} / max {:.2} ms",
                p50 as f64 / 1000.0,
                p99 as f64 / 1000.0,
                max as f64 / 1000.0
            ));
        }
        if let Some(e) = &self.first_error {
            s.push_str(&format!("\n  first error: {e}"));
        }
        s.push('\n');
        s
    }
}

/// Intended time of operation `i` at `rate` per second from `start`.
pub fn intended(start: Instant, rate: u64, i: u64) -> Instant {
    start + Duration::from_nanos(i.saturating_mul(1_000_000_000) / rate.max(1))
}

/// Nearest-rank quantile of sorted samples.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The request line of API operation `i`: gauge inc, gauge dec (of the same key, so it never
/// goes negative), throttle consume in turn, over 64 keys, so every request changes
/// replicated state.
pub fn api_request(i: u64) -> String {
    let key = format!("load-{}.example", (i / 3) % 64);
    match i % 3 {
        0 => format!(r#"{{"op":"gauge_inc","table":"outbound_domains","key":"{key}"}}"#),
        1 => format!(r#"{{"op":"gauge_dec","table":"outbound_domains","key":"{key}"}}"#),
        _ => r#"{"op":"throttle_consume","name":"xtask-load"}"#.to_owned(),
    }
}

/// One local log socket request (docs/logs.md "Local appends").
pub fn log_request(stream: &str, record: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + stream.len() + record.len());
    v.push(stream.len() as u8);
    v.extend_from_slice(stream.as_bytes());
    v.extend_from_slice(&(record.len() as u32).to_be_bytes());
    v.extend_from_slice(record);
    v
}

/// The local log socket of a daemon with this control socket (as the daemon names it).
pub fn log_socket(control: &Path) -> PathBuf {
    let stem = control
        .file_stem()
        .map_or_else(|| "duraplane".into(), |s| s.to_string_lossy().into_owned());
    control
        .parent()
        .unwrap_or(Path::new("/"))
        .join(format!("{stem}.log.sock"))
}

/// A running load: a thread for api/log, dp-syngen for syn.
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<LoadReport>>,
    child: Option<(Child, Instant, String)>,
}

impl Load {
    /// Starts `kind` against `node` for at most `seconds` and `count` operations at `rate`.
    pub fn start(kind: LoadKind, node: &Node, rate: u64, count: u64, seconds: u64) -> Result<Load> {
        if rate == 0 || count == 0 {
            bail!("--rate and --count must be at least 1");
        }
        let stop = Arc::new(AtomicBool::new(false));
        // A little past the recording, so the load covers all of it (and its threads are
        // still there when per-thread CPU is read); `finish` stops it right after.
        let deadline = Duration::from_secs(seconds.max(1) + 2);
        match kind {
            LoadKind::Api => {
                let path = node
                    .socket
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("api.sock");
                same_daemon(&path, node)?;
                let s = UnixStream::connect(&path)
                    .with_context(|| format!("cannot connect to {}", path.display()))?;
                let mut r = BufReader::new(s.try_clone()?);
                let mut w = s;
                // Creating the throttle is idempotent (a redefinition with the same rate).
                send_line(
                    &mut w,
                    &mut r,
                    r#"{"op":"throttle_create","name":"xtask-load","rate":"1000000/1"}"#,
                )?;
                let st = stop.clone();
                let what = format!("local API churn on {}", path.display());
                let thread = std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let run = open_loop(t0, rate, count, deadline, &st, |i| {
                        send_line(&mut w, &mut r, &api_request(i)).map(|_| ())
                    });
                    report(what, t0, vec![run])
                });
                Ok(Load {
                    stop,
                    thread: Some(thread),
                    child: None,
                })
            }
            LoadKind::Log => {
                let path = log_socket(&node.socket);
                same_daemon(&path, node)?;
                let stream = log_stream(node)?;
                // Several connections, like several MTA processes: the daemon serves each
                // in order, so one connection would measure one fdatasync per record.
                let conns = LOG_CONNECTIONS.min(count) as usize;
                let mut socks = Vec::with_capacity(conns);
                for _ in 0..conns {
                    let s = UnixStream::connect(&path)
                        .with_context(|| format!("cannot connect to {}", path.display()))?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    socks.push(s);
                }
                let st = stop.clone();
                let what = format!(
                    "appends of 200-byte records to {stream} via {} ({conns} connections)",
                    path.display()
                );
                let thread = std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let n = socks.len() as u64;
                    let producers: Vec<_> = socks
                        .into_iter()
                        .enumerate()
                        .map(|(k, mut s)| {
                            let (st, stream) = (st.clone(), stream.clone());
                            // Producer k takes every n-th slot of the global schedule.
                            let start = intended(t0, rate, k as u64);
                            let each = (count + n - 1 - k as u64) / n;
                            let rate_k = (rate / n).max(1);
                            std::thread::spawn(move || {
                                open_loop(start, rate_k, each, deadline, &st, |i| {
                                    append_one(&mut s, &stream, i * n + k as u64)
                                })
                            })
                        })
                        .collect();
                    let runs = producers
                        .into_iter()
                        .map(|p| {
                            p.join().unwrap_or_else(|_| Run {
                                errors: 1,
                                first_error: Some("a producer thread panicked".into()),
                                ..Run::default()
                            })
                        })
                        .collect();
                    report(what, t0, runs)
                });
                Ok(Load {
                    stop,
                    thread: Some(thread),
                    child: None,
                })
            }
            LoadKind::Syn => {
                let ns = client_netns(node.pid)?;
                let answer = node::console(&node.socket, "cluster nodeaddr")?;
                let addr = node_ip(&answer).with_context(|| {
                    format!("`cluster nodeaddr` answered {answer:?}, not an address")
                })?;
                let bin = crate::root().join("target/release/dp-syngen");
                if !bin.exists() {
                    bail!(
                        "{} not found: `cargo build --release -p duraplane-tools`",
                        bin.display()
                    );
                }
                let count = count.min(10_000_000);
                let args: Vec<String> = [
                    "netns",
                    "exec",
                    &ns,
                    &bin.to_string_lossy(),
                    "--interface",
                    "eth0",
                    "--dst",
                    &addr,
                    "--src",
                    "203.0.113.0/24",
                    "--src-mode",
                    "random",
                    "--rate",
                    &rate.to_string(),
                    "--count",
                    &count.to_string(),
                    "--duration",
                    &(seconds + 2).clamp(1, 600).to_string(),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let what =
                    format!("dp-syngen SYNs from 203.0.113.0/24 at {addr}:25 in namespace {ns}");
                eprintln!("xtask: load: ip {}", args.join(" "));
                let child = Command::new("ip")
                    .args(&args)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("cannot start dp-syngen")?;
                Ok(Load {
                    stop,
                    thread: None,
                    child: Some((child, Instant::now(), what)),
                })
            }
        }
    }

    /// Stops the load (at once for api/log; dp-syngen is bounded by its own count and
    /// seconds, and stopped by pid if it outlives them) and reports what it did.
    pub fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            return t.join().unwrap_or_else(|_| LoadReport {
                what: "load thread".into(),
                first_error: Some("the load thread panicked".into()),
                ..LoadReport::default()
            });
        }
        let Some((mut child, t0, what)) = self.child.take() else {
            return LoadReport::default();
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
        let seconds = t0.elapsed().as_secs_f64();
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let status = child.wait().ok();
        LoadReport {
            what,
            sent: syngen_field(&out, "sent"),
            errors: syngen_field(&out, "failed") + u64::from(!status.is_some_and(|s| s.success())),
            seconds,
            late_us: None,
            first_error: (!err.trim().is_empty()).then(|| err.trim().to_owned()),
        }
    }
}

/// The address in `cluster nodeaddr`'s answer (`192.0.2.11:4802`, `[2001:db8::1]:4802` or
/// a bare address).
pub fn node_ip(answer: &str) -> Option<String> {
    let a = answer.split_whitespace().next()?;
    a.parse::<std::net::SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| a.parse::<std::net::IpAddr>())
        .ok()
        .map(|ip| ip.to_string())
}

/// Connections `--load log` appends over.
const LOG_CONNECTIONS: u64 = 16;

/// One append over the local log socket; waits for its durable acknowledgement.
fn append_one(s: &mut UnixStream, stream: &str, i: u64) -> Result<()> {
    let mut rec = format!("xtask profile load record {i} ").into_bytes();
    rec.resize(200, b'.');
    s.write_all(&log_request(stream, &rec))?;
    let mut status = [0u8; 1];
    s.read_exact(&mut status)?;
    if status[0] == 0 {
        let mut off = [0u8; 8];
        s.read_exact(&mut off)?;
        return Ok(());
    }
    let mut l = [0u8; 2];
    s.read_exact(&mut l)?;
    let mut m = vec![0u8; u16::from_be_bytes(l) as usize];
    s.read_exact(&mut m)?;
    bail!("refused: {}", String::from_utf8_lossy(&m))
}

/// A `key=N` field of dp-syngen's summary line (`sent=… failed=… …`), 0 if absent.
pub fn syngen_field(out: &str, key: &str) -> u64 {
    out.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Refuses a socket served by another process than the profiled daemon (loading the
/// wrong daemon would make the profile meaningless).
fn same_daemon(path: &Path, node: &Node) -> Result<()> {
    let pid = node::peer_pid(path).with_context(|| {
        format!(
            "{} does not answer (is the daemon's local API / log socket on?)",
            path.display()
        )
    })?;
    if pid != node.pid {
        bail!(
            "{} is served by pid {pid}, not by the profiled daemon (pid {}); give each daemon its own control socket directory",
            path.display(),
            node.pid
        );
    }
    Ok(())
}

/// The stream to append to: the first `cluster://` destination of the daemon's config
/// whose option is not one of the daemon's own logs, else `mainlog`.
fn log_stream(node: &Node) -> Result<String> {
    let conf = node
        .config_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let names: Vec<String> = conf
        .lines()
        .filter(|l| l.contains("\"cluster://"))
        .filter_map(|l| l.split('=').next())
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    if names.is_empty() {
        bail!(
            "pid {}'s configuration has no cluster:// destination: nothing to append to",
            node.pid
        );
    }
    Ok(names
        .iter()
        .find(|n| !["paniclog", "rejectlog"].contains(&n.as_str()))
        .unwrap_or(&names[0])
        .clone())
}

/// The demo's client namespace next to the daemon's (`dp<pid>-<n>-client`), found by
/// matching the daemon's network namespace inode against `/run/netns/*`.
fn client_netns(pid: u32) -> Result<String> {
    let ino = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("cannot read pid {pid}'s network namespace"))?
        .ino();
    let mut mine = None;
    for e in std::fs::read_dir("/run/netns").context("no /run/netns: is the demo running?")? {
        let e = e?;
        if std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == ino) {
            mine = Some(e.file_name().to_string_lossy().into_owned());
        }
    }
    let mine = mine.with_context(|| {
        format!("pid {pid} is not in a named network namespace: --load syn needs the demo's")
    })?;
    let client = client_of(&mine)
        .with_context(|| format!("namespace {mine} is not a demo node's (dp<pid>-<n>-<host>)"))?;
    if !Path::new("/run/netns").join(&client).exists() {
        bail!("the demo's client namespace {client} does not exist");
    }
    Ok(client)
}

/// `dp123-4-node1` → `dp123-4-client` (the testbed's `dp<pid>-<n>-<host>`; host names
/// have no `-`).
pub fn client_of(ns: &str) -> Option<String> {
    let (prefix, _host) = ns.rsplit_once('-')?;
    (prefix.starts_with("dp") && prefix.contains('-')).then(|| format!("{prefix}-client"))
}

fn send_line(w: &mut UnixStream, r: &mut BufReader<UnixStream>, line: &str) -> Result<String> {
    w.write_all(line.as_bytes())?;
    w.write_all(b"\n")?;
    let mut reply = String::new();
    if r.read_line(&mut reply)? == 0 {
        bail!("the daemon closed the local API connection");
    }
    if !reply.contains("\"ok\":true") {
        bail!("refused: {}", reply.trim());
    }
    Ok(reply)
}

/// What one open-loop producer did.
#[derive(Debug, Default)]
pub struct Run {
    pub sent: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Completion behind intended time, µs, per operation.
    pub late: Vec<u64>,
}

/// Runs `op(i)` at intended times `start + i/rate` until `count`, `limit` or `stop`;
/// records how far each completion lags its intended time.
fn open_loop(
    start: Instant,
    rate: u64,
    count: u64,
    limit: Duration,
    stop: &AtomicBool,
    mut op: impl FnMut(u64) -> Result<()>,
) -> Run {
    let mut r = Run::default();
    while r.sent < count && start.elapsed() < limit && !stop.load(Ordering::Relaxed) {
        let t = intended(start, rate, r.sent);
        let now = Instant::now();
        if t > now {
            std::thread::sleep(t - now);
        }
        if let Err(e) = op(r.sent) {
            r.errors += 1;
            r.first_error.get_or_insert_with(|| format!("{e:#}"));
            if r.errors > 100 && r.errors > r.sent / 2 {
                break;
            }
        }
        r.late.push(t.elapsed().as_micros() as u64);
        r.sent += 1;
    }
    r
}

/// One report for the producers of a load that started at `start`.
fn report(what: String, start: Instant, runs: Vec<Run>) -> LoadReport {
    let mut late: Vec<u64> = runs.iter().flat_map(|r| r.late.iter().copied()).collect();
    late.sort_unstable();
    LoadReport {
        what,
        sent: runs.iter().map(|r| r.sent).sum(),
        errors: runs.iter().map(|r| r.errors).sum(),
        seconds: start.elapsed().as_secs_f64(),
        late_us: Some((
            quantile(&late, 0.5),
            quantile(&late, 0.99),
            late.last().copied().unwrap_or(0),
        )),
        first_error: runs.into_iter().find_map(|r| r.first_error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_by_intended_time() {
        let t0 = Instant::now();
        assert_eq!(intended(t0, 1000, 0), t0);
        assert_eq!(intended(t0, 1000, 1500), t0 + Duration::from_millis(1500));
        assert_eq!(intended(t0, 3, 1), t0 + Duration::from_nanos(333_333_333));
    }

    #[test]
    fn quantiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn requests_are_well_formed() {
        for i in 0..3 {
            let v: serde_json::Value = serde_json::from_str(&api_request(i)).unwrap();
            assert!(v["op"].is_string());
        }
        // A decrement always follows an increment of the same key.
        let key =
            |i| serde_json::from_str::<serde_json::Value>(&api_request(i)).unwrap()["key"].clone();
        assert_eq!(key(3), key(4));
        assert_ne!(key(0), key(3));
        assert_eq!(
            log_request("mainlog", b"ab"),
            [&[7u8][..], b"mainlog", &[0, 0, 0, 2], b"ab"].concat()
        );
        assert_eq!(
            log_socket(Path::new("/tmp/d/node1/node1.sock")),
            PathBuf::from("/tmp/d/node1/node1.log.sock")
        );
        let line = "sent=5000 failed=2 elapsed=1.000s rate=5000.0/s interface=eth0";
        assert_eq!(syngen_field(line, "sent"), 5000);
        assert_eq!(syngen_field(line, "failed"), 2);
        assert_eq!(syngen_field("nothing", "sent"), 0);
        assert_eq!(
            client_of("dp4242-0-node1").as_deref(),
            Some("dp4242-0-client")
        );
        assert_eq!(client_of("i5n1"), None);
        assert_eq!(node_ip("192.0.2.11:4802\n").as_deref(), Some("192.0.2.11"));
        assert_eq!(
            node_ip("[2001:db8::1]:4802").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(node_ip("192.0.2.11").as_deref(), Some("192.0.2.11"));
        assert_eq!(node_ip("nothing"), None);
    }

    #[test]
    fn open_loop_counts_and_bounds() {
        let stop = AtomicBool::new(false);
        let t0 = Instant::now();
        let r = open_loop(t0, 1_000_000, 50, Duration::from_secs(60), &stop, |i| {
            if i % 10 == 0 {
                bail!("boom {i}")
            }
            Ok(())
        });
        assert_eq!((r.sent, r.errors, r.late.len()), (50, 5, 50));
        assert_eq!(r.first_error.as_deref(), Some("boom 0"));
        let r2 = open_loop(t0, 1_000_000, 7, Duration::from_secs(60), &stop, |_| Ok(()));
        let rep = report("t".into(), t0, vec![r, r2]);
        assert_eq!((rep.sent, rep.errors), (57, 5));
        assert_eq!(rep.first_error.as_deref(), Some("boom 0"));
        stop.store(true, Ordering::Relaxed);
        let r = open_loop(t0, 1000, 50, Duration::from_secs(60), &stop, |_| Ok(()));
        assert_eq!(r.sent, 0);
    }
}
