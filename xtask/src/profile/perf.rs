//! `cargo xtask profile perf`: a `perf record` of the running daemon rendered as a flame graph
//! (inferno), CPU time per thread, and the engine/pipeline counters over the same window.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::BufReader,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use inferno::collapse::Collapse as _;

use super::node::{self, Node};

/// Metric name prefixes of the userspace pipelines (engine, replication, log).
pub const PIPELINE_PREFIXES: &[&str] = &[
    "duraplane_engine_",
    "duraplane_replication_",
    "duraplane_log_",
];

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Privileges: perf needs root or CAP_PERFMON (+CAP_SYS_PTRACE for another \
    user's daemon); without them kernel.perf_event_paranoid must be ≤ 2 (user frames only) or ≤ 1 \
    (with kernel frames). Reading the daemon's metrics (--socket) needs root (setns into its \
    network namespace)."
)]
pub struct PerfArgs {
    /// The daemon's pid.
    #[arg(long, conflicts_with = "socket", required_unless_present = "socket")]
    pub pid: Option<u32>,
    /// The daemon's control socket (the pid is read from it; also enables the engine and
    /// pipeline counters from its metrics endpoint).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// How long to record.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Put load on while recording: run this bench scenario (`duraplane-bench --quick NAME`;
    /// see `cargo xtask bench -- --list`). Its load goes to daemons the bench starts itself;
    /// to load the profiled daemon use --load.
    #[arg(long, value_name = "NAME", conflicts_with = "load")]
    pub scenario: Option<String>,
    /// Put load on the profiled daemon itself while recording (needs --socket): `api`
    /// (local API gauge/throttle churn), `syn` (dp-syngen SYNs at its address from the
    /// demo's client namespace), `log` (appends through its local log socket). Open loop
    /// at --rate, bounded by --count and --seconds.
    #[arg(long, value_enum, requires = "socket")]
    pub load: Option<super::load::LoadKind>,
    /// Operations (or SYNs) per second of --load.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// At most this many operations of --load.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Where to write the flame graph.
    #[arg(long, default_value = "target/profile/flamegraph.svg")]
    pub out: PathBuf,
    /// Sampling frequency (Hz).
    #[arg(long, default_value_t = 999)]
    pub freq: u32,
    /// Stack unwinding (`perf record --call-graph`): `dwarf` sees through Rust code built
    /// without frame pointers (the release build); `fp` is cheaper but stops at libc.
    #[arg(long, default_value = "dwarf", value_parser = ["dwarf", "fp", "lbr"])]
    pub call_graph: String,
}

/// Samples in `perf script` output (one header line, flush left, per sample).
pub fn count_samples(script: &str) -> usize {
    script
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(char::is_whitespace))
        .count()
}

/// Whether perf may sample another process, given `perf_event_paranoid` and whether we hold
/// CAP_PERFMON or CAP_SYS_ADMIN. `Ok(Some(note))`: allowed with a limitation.
pub fn perf_access(paranoid: i32, privileged: bool) -> Result<Option<String>, String> {
    if privileged || paranoid <= 1 {
        return Ok(None);
    }
    if paranoid == 2 {
        return Ok(Some(
            "kernel.perf_event_paranoid=2: user-space frames only (kernel frames need ≤ 1, \
             root or CAP_PERFMON)"
                .into(),
        ));
    }
    Err(format!(
        "kernel.perf_event_paranoid={paranoid} forbids perf for unprivileged users: run as \
         root, grant CAP_PERFMON (setcap cap_perfmon,cap_sys_ptrace+ep $(command -v perf)), or \
         `sysctl kernel.perf_event_paranoid=1`"
    ))
}

fn privileged_for_perf() -> bool {
    use caps::{CapSet, Capability};
    [Capability::CAP_PERFMON, Capability::CAP_SYS_ADMIN]
        .iter()
        .any(|c| caps::has_cap(None, CapSet::Effective, *c).unwrap_or(false))
}

/// CPU time (user, system) in clock ticks of each thread of `pid`, by tid, with its name.
pub fn thread_times(pid: u32) -> BTreeMap<u32, (String, u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(v) = std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            out.insert(tid, v);
        }
    }
    out
}

/// (comm, utime, stime) of a `/proc/…/stat` line (comm may contain spaces and parentheses).
pub fn parse_stat(s: &str) -> Option<(String, u64, u64)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    // After ")": state(3) ppid(4) … utime(14) stime(15): indexes 11 and 12 of the rest.
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    Some((
        comm,
        rest.get(11)?.parse().ok()?,
        rest.get(12)?.parse().ok()?,
    ))
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Per-thread CPU over the window, busiest first.
pub fn render_threads(
    before: &BTreeMap<u32, (String, u64, u64)>,
    after: &BTreeMap<u32, (String, u64, u64)>,
    seconds: f64,
    tck: f64,
) -> String {
    let mut rows: Vec<(u32, &str, f64, f64)> = after
        .iter()
        .map(|(tid, (name, u, s))| {
            let (u0, s0) = before.get(tid).map(|b| (b.1, b.2)).unwrap_or((0, 0));
            let ms = |a: u64, b: u64| a.saturating_sub(b) as f64 * 1000.0 / tck;
            (*tid, name.as_str(), ms(*u, u0), ms(*s, s0))
        })
        .collect();
    rows.sort_by(|a, b| (b.2 + b.3).total_cmp(&(a.2 + a.3)).then(a.0.cmp(&b.0)));
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:>8}  {:<16} {:>9} {:>9} {:>7}",
        "TID", "THREAD", "USER ms", "SYS ms", "CPU %"
    );
    for (tid, name, u, s) in rows {
        let _ = writeln!(
            o,
            "{tid:>8}  {name:<16} {u:>9.0} {s:>9.0} {:>6.1}%",
            (u + s) / 10.0 / seconds.max(1e-9)
        );
    }
    o
}

/// The pipeline metrics (engine, replication, log) at the end of the window, with the rate of
/// counters and the derived io_uring ratios. Says so when the daemon exports none.
pub fn render_pipelines(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    seconds: f64,
) -> String {
    let mut o = String::new();
    let ours: Vec<_> = after
        .iter()
        .filter(|(k, _)| PIPELINE_PREFIXES.iter().any(|p| k.starts_with(p)))
        .collect();
    if ours.is_empty() {
        let _ = writeln!(
            o,
            "  none exported by this daemon yet (looked for {}*; see docs/profiling.md for the \
             names this command reads)",
            PIPELINE_PREFIXES.join("*, ")
        );
        return o;
    }
    for (k, v) in ours {
        if k.contains("_total") {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            let _ = writeln!(o, "  {k} {v} (+{d}, {:.1}/s)", d / seconds.max(1e-9));
        } else {
            let _ = writeln!(o, "  {k} {v}");
        }
    }
    let delta =
        |k: &str| -> Option<f64> { Some(after.get(k)? - before.get(k).copied().unwrap_or(0.0)) };
    let ratio = |a: &str, b: &str| -> Option<f64> {
        let (a, b) = (delta(a)?, delta(b)?);
        (b > 0.0).then_some(a / b)
    };
    if let Some(r) = ratio(
        "duraplane_engine_uring_submissions_total",
        "duraplane_engine_uring_enters_total",
    ) {
        let _ = writeln!(
            o,
            "  => io_uring submissions per enter (batch size): {r:.2}"
        );
    }
    if let Some(r) = ratio(
        "duraplane_engine_uring_completions_total",
        "duraplane_engine_uring_wakeups_total",
    ) {
        let _ = writeln!(o, "  => io_uring completions per wake-up: {r:.2}");
    }
    o
}

/// The hottest functions by self samples, from folded stacks (`a;b;c 12`).
pub fn top_functions(folded: &str, n: usize) -> Vec<(String, u64)> {
    let mut by: BTreeMap<&str, u64> = BTreeMap::new();
    for l in folded.lines() {
        let Some((stack, count)) = l.rsplit_once(' ') else {
            continue;
        };
        let leaf = stack.rsplit(';').next().unwrap_or(stack);
        *by.entry(leaf).or_default() += count.parse::<u64>().unwrap_or(0);
    }
    let mut v: Vec<(String, u64)> = by.into_iter().map(|(k, c)| (k.to_owned(), c)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// Folded stacks and an SVG from `perf script` output.
pub fn flamegraph(perf_script: &[u8], title: &str, svg: &Path) -> Result<String> {
    let mut folded = Vec::new();
    inferno::collapse::perf::Folder::default()
        .collapse(BufReader::new(perf_script), &mut folded)
        .context("collapsing perf script output")?;
    let folded = String::from_utf8_lossy(&folded).into_owned();
    if folded.trim().is_empty() {
        bail!("perf recorded no samples (the daemon was idle, or perf could not read its stacks)");
    }
    if let Some(d) = svg.parent() {
        std::fs::create_dir_all(d)?;
    }
    let f =
        std::fs::File::create(svg).with_context(|| format!("cannot create {}", svg.display()))?;
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_owned();
    inferno::flamegraph::from_lines(&mut opts, folded.lines(), std::io::BufWriter::new(f))
        .context("rendering the flame graph")?;
    Ok(folded)
}

fn start_scenario(name: &str) -> Result<Child> {
    let root = crate::root();
    crate::run_cmd(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "build",
            "--release",
            "-p",
            "duraplane-benches",
        ]),
    )?;
    let log = root.join("target/profile/bench.log");
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d)?;
    }
    let out = std::fs::File::create(&log)?;
    eprintln!(
        "xtask: load: duraplane-bench --quick {name} (output in {})",
        log.display()
    );
    Command::new(root.join("target/release/duraplane-bench"))
        .args(["--quick", name, "--json", "target/profile/bench.json"])
        .current_dir(&root)
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("cannot start duraplane-bench")
}

pub fn run(a: &PerfArgs, stop: &AtomicBool) -> Result<()> {
    let node = a.socket.as_deref().map(Node::open).transpose()?;
    let pid = match (&node, a.pid) {
        (Some(n), _) => n.pid,
        (None, Some(p)) => p,
        (None, None) => bail!("give --pid PID or --socket PATH"),
    };
    if !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("no process {pid}");
    }
    let paranoid: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(2);
    match perf_access(paranoid, privileged_for_perf()) {
        Ok(Some(note)) => eprintln!("xtask: note: {note}"),
        Ok(None) => {}
        Err(e) => bail!(e),
    }
    if Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        bail!("perf is not installed: `cargo xtask setup` (Debian package linux-perf)");
    }
    let root = crate::root();
    let data = root.join("target/profile/perf.data");
    std::fs::create_dir_all(root.join("target/profile"))?;
    let out = if a.out.is_absolute() {
        a.out.clone()
    } else {
        root.join(&a.out)
    };

    let mut load = a.scenario.as_deref().map(start_scenario).transpose()?;
    let own_load = match (a.load, &node) {
        (Some(kind), Some(n)) => {
            let l = super::load::Load::start(kind, n, a.rate, a.count, a.seconds)?;
            eprintln!(
                "xtask: load: {kind:?} on pid {} at {}/s, at most {} operations",
                n.pid, a.rate, a.count
            );
            Some(l)
        }
        (Some(_), None) => bail!("--load needs --socket (the daemon to load)"),
        (None, _) => None,
    };
    let metrics_before = node
        .as_ref()
        .map(|n| n.metrics().map(|t| node::parse_prometheus(&t)));
    let threads_before = thread_times(pid);
    let t0 = Instant::now();
    eprintln!(
        "xtask: recording pid {pid} ({}) for {} s at {} Hz",
        super::kernel::comm(pid),
        a.seconds,
        a.freq
    );
    let mut rec = Command::new("perf")
        .args(["record", "-q", "-F", &a.freq.to_string(), "--call-graph"])
        .arg(&a.call_graph)
        .arg("-p")
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .args(["--", "sleep", &a.seconds.to_string()])
        .spawn()
        .context("cannot start perf record")?;
    let status = loop {
        if let Some(s) = rec.try_wait()? {
            break s;
        }
        if stop.load(Ordering::Relaxed) {
            // perf got the same SIGINT from the terminal; give it time to write its file.
            break rec.wait()?;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let seconds = t0.elapsed().as_secs_f64();
    let threads_after = thread_times(pid);
    let metrics_after = node
        .as_ref()
        .map(|n| n.metrics().map(|t| node::parse_prometheus(&t)));
    if let Some(child) = load.as_mut() {
        finish_load(child);
    }
    let load_report = own_load.map(super::load::Load::finish);
    if !status.success() {
        bail!(
            "perf record failed ({status}): see its message above (kernel.perf_event_paranoid={paranoid})"
        );
    }
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(&data)
        .stderr(Stdio::null())
        .output()
        .context("cannot run perf script")?;
    if !script.status.success() {
        bail!("perf script failed ({})", script.status);
    }
    let title = format!(
        "duraplane pid {pid}, {:.0} s{}",
        seconds,
        a.scenario
            .as_deref()
            .map(|s| format!(", under bench scenario {s}"))
            .or_else(|| a
                .load
                .map(|l| format!(", under --load {l:?} at {}/s", a.rate)))
            .unwrap_or_default()
    );
    let folded = flamegraph(&script.stdout, &title, &out)?;
    // Folded counts are weighted by the event period (ns for cpu-clock): print shares.
    let weight: u64 = top_functions(&folded, usize::MAX).iter().map(|f| f.1).sum();
    if let Some(r) = &load_report {
        print!("{}", r.render());
    }
    println!(
        "Flame graph: {} ({} samples)",
        out.display(),
        count_samples(&String::from_utf8_lossy(&script.stdout))
    );
    println!("\nHottest functions (share of samples, self time):");
    for (f, c) in top_functions(&folded, 12) {
        println!("  {:>6.1}%  {f}", c as f64 * 100.0 / weight.max(1) as f64);
    }
    println!("\nCPU time per thread over {seconds:.1} s:");
    print!(
        "{}",
        render_threads(&threads_before, &threads_after, seconds, clk_tck())
    );
    println!("\nEngine, replication and log pipelines (metrics endpoint):");
    match (metrics_before, metrics_after) {
        (Some(Ok(b)), Some(Ok(a))) => print!("{}", render_pipelines(&b, &a, seconds)),
        (Some(Err(e)), _) | (_, Some(Err(e))) => println!("  cannot read the metrics: {e:#}"),
        _ => println!("  pass --socket PATH instead of --pid to read them"),
    }
    Ok(())
}

/// Waits (bounded) for the load generator we started, then stops it by its pid.
fn finish_load(child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("xtask: the bench scenario is still running after 120 s; stopping it");
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paranoid_levels() {
        assert_eq!(perf_access(3, true), Ok(None));
        assert_eq!(perf_access(1, false), Ok(None));
        assert!(
            perf_access(2, false)
                .unwrap()
                .unwrap()
                .contains("user-space")
        );
        let e = perf_access(3, false).unwrap_err();
        assert!(
            e.contains("CAP_PERFMON") && e.contains("perf_event_paranoid=1"),
            "{e}"
        );
    }

    #[test]
    fn stat_line() {
        let s = "2546 (dp worker (1)) S 2540 2546 2546 0 -1 4194560 1510 0 0 0 17 230 0 0 20 0 5 0 \
                 12 286785536 2073 18446744073709551615 1 1 0 0 0 0 0 4096 17610 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(s), Some(("dp worker (1)".into(), 17, 230)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_threads_are_read() {
        let me = thread_times(std::process::id());
        assert!(!me.is_empty());
    }

    #[test]
    fn threads_table() {
        let before = [
            (1, ("main".to_owned(), 10, 5)),
            (2, ("poller".to_owned(), 0, 0)),
        ]
        .into();
        let after = [
            (1, ("main".to_owned(), 20, 5)),
            (2, ("poller".to_owned(), 50, 50)),
            (3, ("new".to_owned(), 1, 0)),
        ]
        .into();
        let t = render_threads(&before, &after, 2.0, 100.0);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].contains("poller") && lines[1].contains("50.0%"),
            "{t}"
        );
        assert!(
            lines[2].contains("main") && lines[2].contains(" 100 "),
            "{t}"
        );
        assert!(lines[3].contains("new"), "{t}");
    }

    #[test]
    fn pipelines_absent_and_present() {
        let none = render_pipelines(
            &BTreeMap::new(),
            &[("process_threads".into(), 5.0)].into(),
            1.0,
        );
        assert!(none.contains("none exported"), "{none}");
        let b: BTreeMap<String, f64> = [
            ("duraplane_engine_uring_enters_total".into(), 100.0),
            ("duraplane_engine_uring_submissions_total".into(), 200.0),
        ]
        .into();
        let a: BTreeMap<String, f64> = [
            ("duraplane_engine_uring_enters_total".into(), 200.0),
            ("duraplane_engine_uring_submissions_total".into(), 600.0),
            ("duraplane_engine_uring_in_flight".into(), 7.0),
        ]
        .into();
        let s = render_pipelines(&b, &a, 2.0);
        assert!(
            s.contains("submissions per enter (batch size): 4.00"),
            "{s}"
        );
        assert!(s.contains("duraplane_engine_uring_in_flight 7"), "{s}");
        assert!(s.contains("(+100, 50.0/s)"), "{s}");
    }

    #[test]
    fn samples_counted() {
        let s = "a 1 [000] 1.0: 1 cpu-clock:\n\tffff f+0 (x)\n\nb 2 [000] 1.1: 1 cpu-clock:\n\tffff g+0 (x)\n";
        assert_eq!(count_samples(s), 2);
    }

    #[test]
    fn folded_top() {
        let f = "main;a;b 5\nmain;c;b 3\nmain;a 4\n";
        assert_eq!(top_functions(f, 2), vec![("b".into(), 8), ("a".into(), 4)]);
    }

    #[test]
    fn flamegraph_from_perf_script() {
        let script = "duraplane  2546 [000]  1000.000001:   1001001 cpu-clock:ppp: \n\
                      \t    55d0c0a01234 poll_maps+0x14 (/x/duraplane)\n\
                      \t    55d0c0a00000 main+0x10 (/x/duraplane)\n\n";
        let dir = std::env::temp_dir().join(format!("xtask-fg-{}", std::process::id()));
        let svg = dir.join("fg.svg");
        let folded = flamegraph(script.as_bytes(), "t", &svg).unwrap();
        assert!(folded.contains("main;poll_maps 1"), "{folded}");
        let s = std::fs::read_to_string(&svg).unwrap();
        assert!(s.starts_with("<?xml") && s.contains("poll_maps"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
