//! `cargo xtask bench-ab`: the same bench scenarios run alternately from two builds — a base
//! revision (A, built in a git worktree) and the working tree (B) — many times, in ABBA order,
//! so a tuning change is judged by medians and pair wins instead of one noisy before/after run.
//!
//! Everything it leaves behind lives in `target/ab/`: `target-base/` (A's own target directory,
//! kept so the next base build is incremental), `bin-a/` and `bin-b/` (the binaries the runs
//! used, copied so a rebuild of the shared `target/` by someone else cannot swap B mid-run),
//! `run-<a|b>-<pair>.{json,out,err}` and `report.md`.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::{cargo, root, target_dir};

/// The binaries each side needs: the harness, and the daemon the `failover` scenario starts
/// from the harness's own directory.
const BINS: &[&str] = &["duraplane-bench", "duraplane"];

#[derive(clap::Args, Debug)]
pub struct AbArgs {
    /// The base revision (A): a commit id, branch, tag or `HEAD~3`. `--base HEAD` on a clean
    /// tree is an A/A run: it shows how much the machine alone moves the figures.
    #[arg(long, value_name = "REV")]
    base: String,
    /// How many A/B pairs to run. With 6, only "6 of 6" (or "0 of 6") is significant by the
    /// sign test (p < 0.05); more pairs resolve smaller differences.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    pairs: u32,
    /// Pass `--quick` to every harness run (shorter runs, noisier figures).
    #[arg(long)]
    quick: bool,
    /// Keep the base revision's worktree (target/ab/base-<rev>) afterwards.
    #[arg(long)]
    keep: bool,
    /// Scenarios to compare (`duraplane-bench --list` names them).
    #[arg(required = true, value_name = "SCENARIO")]
    scenarios: Vec<String>,
    /// Extra arguments for every harness run, after `--` (not `--json` or `--append`).
    #[arg(last = true, value_name = "HARNESS_ARGS")]
    harness_args: Vec<String>,
}

/// Which build a run comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Side {
    fn letter(self) -> &'static str {
        match self {
            Side::A => "A",
            Side::B => "B",
        }
    }

    fn file_tag(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Side::A => "base revision",
            Side::B => "working tree",
        }
    }
}

/// Run order: pair 1 is A then B, pair 2 B then A, … (ABBA), so a slow drift of the machine
/// during the session favours neither side.
fn run_order(pairs: usize) -> Vec<(usize, Side)> {
    (0..pairs)
        .flat_map(|i| {
            if i % 2 == 0 {
                [(i, Side::A), (i, Side::B)]
            } else {
                [(i, Side::B), (i, Side::A)]
            }
        })
        .collect()
}

// --- the harness's JSON (benches/src/harness.rs, `write_json`) ---------------------------

#[derive(Deserialize)]
struct DocJson {
    outcomes: Vec<OutcomeJson>,
}

#[derive(Deserialize)]
struct OutcomeJson {
    scenario: String,
    metric: String,
    #[serde(default)]
    unit: String,
    /// serde_json writes NaN and infinities as `null`.
    value: Option<f64>,
    /// `[name, value]` of the baseline or peer measured in the same run.
    #[serde(default)]
    baseline: Option<(String, Option<f64>)>,
    #[serde(default)]
    goal: Option<GoalJson>,
}

#[derive(Deserialize)]
struct GoalJson {
    /// "higher" or "lower".
    #[serde(default)]
    better: Option<String>,
}

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Higher,
    Lower,
    Unknown,
}

/// Where the direction came from (shown in the report, so a guess is visible as one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The row's goal says `better: higher|lower`.
    Goal,
    /// Guessed from the unit: rates are better higher, times lower.
    Unit,
    /// A same-run baseline: not judged, it gauges the machine.
    Reference,
    None,
}

/// What a table row is of one harness outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Kind {
    /// Duraplane's figure.
    Value,
    /// Duraplane's figure ÷ the named baseline of the same run.
    Ratio(String),
    /// The named baseline itself.
    Baseline(String),
}

/// Identifies a row across runs; `nth` separates outcomes a run reports twice under one name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    scenario: String,
    metric: String,
    kind: Kind,
    nth: usize,
}

impl Key {
    fn label(&self) -> String {
        let nth = if self.nth > 0 {
            format!(" #{}", self.nth + 1)
        } else {
            String::new()
        };
        match &self.kind {
            Kind::Value => format!("{}: {}{nth}", self.scenario, self.metric),
            Kind::Ratio(b) => format!("↳ ÷ {b} (same run){nth}"),
            Kind::Baseline(b) => format!("↳ {b} (same-run baseline){nth}"),
        }
    }
}

/// One figure of one run.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    key: Key,
    unit: String,
    dir: Direction,
    source: Source,
    value: Option<f64>,
}

const TIME_UNITS: &[&str] = &[
    "ns", "µs", "μs", "us", "ms", "s", "sec", "secs", "second", "seconds", "cycles",
];

/// Rates ("Mpps", "MB/s", "appends/s") are better higher; times ("ns", "ms", "ns/packet")
/// lower; anything else (counts such as "trials") cannot be told from the unit.
fn direction_from_unit(unit: &str) -> Option<Direction> {
    let u = unit.trim().to_lowercase();
    if u.ends_with("/s")
        || u.ends_with("/sec")
        || u.contains("per second")
        || u.ends_with("pps")
        || u.ends_with("bps")
    {
        return Some(Direction::Higher);
    }
    let head = u.split('/').next().unwrap_or_default().trim();
    TIME_UNITS.contains(&head).then_some(Direction::Lower)
}

/// The goal's `better` decides; without a goal the unit; else unknown.
fn direction(goal: Option<&str>, unit: &str) -> (Direction, Source) {
    match goal {
        Some("higher") => (Direction::Higher, Source::Goal),
        Some("lower") => (Direction::Lower, Source::Goal),
        _ => match direction_from_unit(unit) {
            Some(d) => (d, Source::Unit),
            None => (Direction::Unknown, Source::None),
        },
    }
}

/// The rows of one run's JSON: each outcome's figure, and when it has a baseline, the figure
/// ÷ the baseline (the machine's speed of the moment largely cancels in it) and the baseline.
/// A baseline's name without the parts that carry this run's numbers: "what the disk
/// allows: median of min(link, disk B) per round (medians: link 2072, disk B 1837)" names
/// the same baseline in every run, so its rows must pair up across runs.
fn stable_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(open) = rest.find('(') {
        let Some(len) = rest[open..].find(')') else {
            break;
        };
        let group = &rest[open..open + len + 1];
        out.push_str(&rest[..open]);
        if !group.chars().any(|c| c.is_ascii_digit()) {
            out.push_str(group);
        }
        rest = &rest[open + len + 1..];
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn parse_run(text: &str) -> Result<Vec<Row>> {
    let doc: DocJson = serde_json::from_str(text).context("not the harness's results JSON")?;
    let mut seen: HashMap<(String, String, Kind), usize> = HashMap::new();
    let mut key = |scenario: &str, metric: &str, kind: Kind| {
        let n = seen
            .entry((scenario.to_owned(), metric.to_owned(), kind.clone()))
            .or_insert(0);
        *n += 1;
        Key {
            scenario: scenario.to_owned(),
            metric: metric.to_owned(),
            kind,
            nth: *n - 1,
        }
    };
    let mut rows = Vec::new();
    for o in doc.outcomes {
        let goal = o.goal.as_ref().and_then(|g| g.better.as_deref());
        let (dir, source) = direction(goal, &o.unit);
        rows.push(Row {
            key: key(&o.scenario, &o.metric, Kind::Value),
            unit: o.unit.clone(),
            dir,
            source,
            value: o.value,
        });
        if let Some((name, Some(base))) = o.baseline {
            let name = stable_name(&name);
            // Dividing by a negative baseline would turn the direction round: not judged then.
            let (rdir, rsource) = if base > 0.0 {
                (dir, source)
            } else {
                (Direction::Unknown, Source::None)
            };
            rows.push(Row {
                key: key(&o.scenario, &o.metric, Kind::Ratio(name.clone())),
                unit: "×".into(),
                dir: rdir,
                source: rsource,
                value: o.value.filter(|_| base != 0.0).map(|v| v / base),
            });
            rows.push(Row {
                key: key(&o.scenario, &o.metric, Kind::Baseline(name)),
                unit: o.unit,
                dir: Direction::Unknown,
                source: Source::Reference,
                value: Some(base),
            });
        }
    }
    Ok(rows)
}

// --- statistics --------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(values: &[f64]) -> Option<Stats> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Stats {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// How the pairs (A, B) of one row split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Wins {
    b_higher: usize,
    b_lower: usize,
    ties: usize,
}

impl Wins {
    fn of(pairs: &[(f64, f64)]) -> Self {
        let mut w = Wins::default();
        for &(a, b) in pairs {
            if b > a {
                w.b_higher += 1;
            } else if b < a {
                w.b_lower += 1;
            } else {
                w.ties += 1;
            }
        }
        w
    }

    fn pairs(&self) -> usize {
        self.b_higher + self.b_lower + self.ties
    }

    /// (pairs B won, pairs A won), or `None` when the direction is unknown.
    fn b_better(&self, dir: Direction) -> Option<(usize, usize)> {
        match dir {
            Direction::Higher => Some((self.b_higher, self.b_lower)),
            Direction::Lower => Some((self.b_lower, self.b_higher)),
            Direction::Unknown => None,
        }
    }
}

/// Two-sided exact sign test: the chance of a split at least this uneven between `k` and
/// `n - k` if neither side were better (ties are left out of `n` by the caller).
fn sign_test_p(k: usize, n: usize) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let tail_k = k.min(n - k);
    let mut c = 1.0f64; // C(n, 0)
    let mut tail = 0.0;
    for i in 0..=tail_k {
        tail += c;
        c = c * (n - i) as f64 / (i + 1) as f64;
    }
    (2.0 * tail / 2f64.powi(n as i32)).min(1.0)
}

/// The runs of one pair; a side is `None` when it failed or was never run.
#[derive(Debug, Clone, Default)]
struct PairRuns {
    a: Option<Vec<Row>>,
    b: Option<Vec<Row>>,
}

/// One line of the report.
#[derive(Debug, Clone)]
struct Summary {
    key: Key,
    unit: String,
    dir: Direction,
    source: Source,
    /// Every run of each side (also one whose partner failed).
    a: Vec<f64>,
    b: Vec<f64>,
    /// (A, B) of the pairs where both sides have the figure.
    pairs: Vec<(f64, f64)>,
}

/// Gathers the rows of every run by key, in the order they first appear.
fn summarize(runs: &[PairRuns]) -> Vec<Summary> {
    let mut order: Vec<Summary> = Vec::new();
    let mut index: HashMap<Key, usize> = HashMap::new();
    let mut slot = |row: &Row, order: &mut Vec<Summary>| -> usize {
        *index.entry(row.key.clone()).or_insert_with(|| {
            order.push(Summary {
                key: row.key.clone(),
                unit: row.unit.clone(),
                dir: row.dir,
                source: row.source,
                a: Vec::new(),
                b: Vec::new(),
                pairs: Vec::new(),
            });
            order.len() - 1
        })
    };
    let finite = |r: &Row| r.value.filter(|v| v.is_finite());
    for p in runs {
        for r in p.a.iter().flatten() {
            let i = slot(r, &mut order);
            if let Some(v) = finite(r) {
                order[i].a.push(v);
            }
        }
        for r in p.b.iter().flatten() {
            let i = slot(r, &mut order);
            let Some(vb) = finite(r) else { continue };
            order[i].b.push(vb);
            let va =
                p.a.iter()
                    .flatten()
                    .find(|ra| ra.key == r.key)
                    .and_then(finite);
            if let Some(va) = va {
                order[i].pairs.push((va, vb));
            }
        }
    }
    order
}

// --- rendering ---------------------------------------------------------------------------

/// Three significant digits (at least two decimals below 10), k/M above 10,000.
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        let decimals = (2 - a.log10().floor() as i32).clamp(1, 6) as usize;
        format!("{v:.decimals$}")
    }
}

fn fmt_stats(s: Option<Stats>, unit: &str) -> String {
    match s {
        None => "—".into(),
        Some(s) => {
            let unit = if unit.is_empty() || unit == "×" {
                unit.to_owned()
            } else {
                format!(" {unit}")
            };
            format!(
                "{}{unit} [{}–{}]",
                fmt_num(s.median),
                fmt_num(s.min),
                fmt_num(s.max)
            )
        }
    }
}

fn fmt_ratio(a: Option<Stats>, b: Option<Stats>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.median != 0.0 => {
            let r = b.median / a.median;
            let pct = (r - 1.0) * 100.0;
            let sign = if pct < 0.0 { "−" } else { "+" };
            format!("{r:.3}× ({sign}{:.1} %)", pct.abs())
        }
        _ => "—".into(),
    }
}

fn fmt_better(dir: Direction, source: Source) -> &'static str {
    match (dir, source) {
        (_, Source::Reference) => "reference",
        (Direction::Higher, Source::Goal) => "higher (goal)",
        (Direction::Lower, Source::Goal) => "lower (goal)",
        (Direction::Higher, _) => "higher (unit)",
        (Direction::Lower, _) => "lower (unit)",
        (Direction::Unknown, _) => "direction unknown",
    }
}

fn fmt_wins(s: &Summary) -> String {
    let w = Wins::of(&s.pairs);
    let n = w.pairs();
    if n == 0 {
        return "no complete pair".into();
    }
    let ties = match w.ties {
        0 => String::new(),
        1 => ", 1 tie".into(),
        t => format!(", {t} ties"),
    };
    match w.b_better(s.dir) {
        Some((k, lost)) => format!("{k} of {n} (p {:.2}{ties})", sign_test_p(k, k + lost)),
        None => {
            let what = if s.source == Source::Reference {
                "not judged"
            } else {
                "direction unknown"
            };
            format!(
                "{what}: B higher in {}, lower in {} of {n}{ties}",
                w.b_higher, w.b_lower
            )
        }
    }
}

/// The Markdown table: one line per row key.
fn table(summaries: &[Summary]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| metric | better | A median [min–max] | B median [min–max] | B/A | B better in k of n pairs |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|");
    for s in summaries {
        let (a, b) = (stats(&s.a), stats(&s.b));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} |",
            s.key.label().replace('|', "\\|"),
            fmt_better(s.dir, s.source),
            fmt_stats(a, &s.unit),
            fmt_stats(b, &s.unit),
            fmt_ratio(a, b),
            fmt_wins(s),
        );
    }
    t
}

const TABLE_NOTES: &str = "B/A is the ratio of the medians. \"B better in k of n\" counts the \
pairs (one A run and one B run back to back) in which B's figure was better; p is the two-sided \
sign test over the pairs that were not ties: with 6 pairs only 6 of 6 (or 0 of 6) gives \
p < 0.05, with 9 pairs 8 of 9 does. \"better\" says which way a figure improves and how that \
is known: the row's goal, or its unit (rates higher, times lower); with neither, both counts \
are shown and the direction is unknown. ↳ rows: the figure ÷ the baseline the harness measured \
in the same run (the machine's speed of the moment largely cancels in it), and that baseline \
(a gauge of the machine: a difference there is noise, or a change of the bench itself).";

/// A run's headline: its figures (not the ↳ rows), shortened.
fn headline(rows: &[Row]) -> String {
    let vals: Vec<String> = rows
        .iter()
        .filter(|r| r.key.kind == Kind::Value)
        .map(|r| match r.value {
            Some(v) if r.unit.is_empty() => fmt_num(v),
            Some(v) => format!("{} {}", fmt_num(v), r.unit),
            None => "NaN".into(),
        })
        .collect();
    if vals.len() > 8 {
        format!("{} · … ({} figures)", vals[..8].join(" · "), vals.len())
    } else {
        vals.join(" · ")
    }
}

fn fmt_dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 60.0 {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{s:.1} s")
    }
}

// --- git, building, running --------------------------------------------------------------

fn git(args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root())
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The base revision's worktree; removed on drop unless kept (also when the comparison fails).
struct Worktree {
    path: PathBuf,
    keep: bool,
}

impl Worktree {
    /// Reuses `path` when it already is a worktree at `rev`; creates it otherwise.
    fn at(path: &Path, rev: &str, keep: bool) -> Result<Self> {
        let shown = path.display().to_string();
        if path.exists() {
            let head = Command::new("git")
                .args(["rev-parse", "HEAD"])
                .current_dir(path)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
            if head.as_deref() != Some(rev) {
                bail!(
                    "{shown} exists but is not a worktree at {rev} (HEAD {}); remove it with \
                     `git worktree remove --force {shown}`",
                    head.as_deref().unwrap_or("unreadable")
                );
            }
            eprintln!("xtask: bench-ab: reusing worktree {shown}");
        } else {
            // --force: also when a worktree once registered at this path was deleted by hand.
            git(&["worktree", "add", "--force", "--detach", &shown, rev])?;
        }
        Ok(Worktree {
            path: path.to_path_buf(),
            keep,
        })
    }
}

impl Drop for Worktree {
    fn drop(&mut self) {
        let shown = self.path.display().to_string();
        if self.keep {
            eprintln!("xtask: bench-ab: kept worktree {shown}");
            return;
        }
        match git(&["worktree", "remove", "--force", &shown]) {
            Ok(_) => eprintln!("xtask: bench-ab: removed worktree {shown}"),
            Err(e) => eprintln!("xtask: bench-ab: could not remove worktree {shown}: {e:#}"),
        }
    }
}

/// Builds the harness and the daemon in release mode from `dir` into `target`, then copies
/// them to `bin` so the runs use exactly this build.
fn build(side: Side, desc: &str, dir: &Path, target: &Path, bin: &Path) -> Result<Duration> {
    eprintln!(
        "xtask: bench-ab: building {} ({}: {desc}) in {} → {}",
        side.letter(),
        side.what(),
        dir.display(),
        target.display()
    );
    let start = Instant::now();
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "-p",
        "duraplane-benches",
        "-p",
        "duraplane",
    ])
    .args(BINS.iter().flat_map(|b| ["--bin", b]))
    .env("CARGO_TARGET_DIR", target)
    .current_dir(dir);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!(
            "building {} ({}: {desc}) failed with {status}",
            side.letter(),
            side.what()
        );
    }
    let took = start.elapsed();
    fs::create_dir_all(bin).with_context(|| format!("cannot create {}", bin.display()))?;
    for b in BINS {
        let (from, to) = (target.join("release").join(b), bin.join(b));
        fs::copy(&from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    eprintln!(
        "xtask: bench-ab: built {} in {}",
        side.letter(),
        fmt_dur(took)
    );
    Ok(took)
}

/// The scenario names a harness binary knows (`--list`).
fn scenarios_of(bench: &Path) -> Result<Vec<String>> {
    let out = Command::new(bench)
        .arg("--list")
        .output()
        .with_context(|| format!("cannot run {} --list", bench.display()))?;
    if !out.status.success() {
        bail!("{} --list failed with {}", bench.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// The last `n` lines of a file, indented, for an error message.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect()
}

struct Runner<'a> {
    args: &'a AbArgs,
    ab: PathBuf,
}

impl Runner<'_> {
    /// One harness run; its stdout and stderr go to `run-<side>-<pair>.{out,err}`.
    fn run(&self, side: Side, pair: usize, bench: &Path, cwd: &Path) -> Result<Vec<Row>> {
        let stem = format!("run-{}-{}", side.file_tag(), pair + 1);
        let json = self.ab.join(format!("{stem}.json"));
        let (out_path, err_path) = (
            self.ab.join(format!("{stem}.out")),
            self.ab.join(format!("{stem}.err")),
        );
        let _ = fs::remove_file(&json);
        let out = File::create(&out_path)
            .with_context(|| format!("cannot create {}", out_path.display()))?;
        let err = File::create(&err_path)
            .with_context(|| format!("cannot create {}", err_path.display()))?;
        let mut cmd = Command::new(bench);
        if self.args.quick {
            cmd.arg("--quick");
        }
        cmd.arg("--json")
            .arg(&json)
            .args(&self.args.harness_args)
            .args(&self.args.scenarios)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let start = Instant::now();
        let status = cmd
            .status()
            .with_context(|| format!("cannot start {}", bench.display()))?;
        let took = start.elapsed();
        let what = format!(
            "pair {}/{}, {} ({})",
            pair + 1,
            self.args.pairs,
            side.letter(),
            side.what()
        );
        if !status.success() {
            bail!(
                "{what}: duraplane-bench failed after {} with {status}; last lines of its \
                 stderr ({}):\n{}",
                fmt_dur(took),
                err_path.display(),
                tail(&err_path, 15)
            );
        }
        let text = fs::read_to_string(&json).with_context(|| {
            format!("{what}: the run succeeded but wrote no {}", json.display())
        })?;
        let rows = parse_run(&text).with_context(|| format!("{what}: {}", json.display()))?;
        eprintln!(
            "xtask: bench-ab:   {} {:>7}  {}",
            side.letter(),
            fmt_dur(took),
            headline(&rows)
        );
        Ok(rows)
    }
}

fn date_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "(date unknown)".into())
}

/// `cargo xtask bench-ab`.
pub fn run(args: &AbArgs) -> Result<()> {
    for a in &args.harness_args {
        if a.starts_with("--json") || a.starts_with("--append") {
            bail!("bench-ab sets the harness's --json itself and never appends; drop `{a}`");
        }
    }
    let ab = target_dir().join("ab");
    fs::create_dir_all(&ab).with_context(|| format!("cannot create {}", ab.display()))?;

    let base = git(&[
        "rev-parse",
        "--verify",
        &format!("{}^{{commit}}", args.base),
    ])
    .with_context(|| format!("--base {}: not a revision of this repository", args.base))?;
    let base_short = git(&["rev-parse", "--short", &base])?;
    let mut base_subject = git(&["log", "-1", "--format=%s", &base])?;
    if let Some((cut, _)) = base_subject.char_indices().nth(100) {
        base_subject.truncate(cut);
        base_subject.push('…');
    }
    let head = git(&["rev-parse", "--short", "HEAD"])?;
    let b_desc = git(&["describe", "--always", "--dirty"])?;
    let date = date_utc();

    let (bin_a, bin_b) = (ab.join("bin-a"), ab.join("bin-b"));
    // B first: the working tree is where a compile error is likeliest, and its build is
    // incremental; no point spending minutes on A before finding it.
    let root = root();
    let b_took = build(Side::B, &b_desc, &root, &target_dir(), &bin_b)?;

    // A: the base revision in its own worktree and target directory. The working tree's
    // Cargo.lock (not in git here) goes with it, so both sides build the same dependencies.
    let wt = Worktree::at(&ab.join(format!("base-{base_short}")), &base, args.keep)?;
    let (lock, wt_lock) = (root.join("Cargo.lock"), wt.path.join("Cargo.lock"));
    if lock.exists() && fs::read(&lock).ok() != fs::read(&wt_lock).ok() {
        fs::copy(&lock, &wt_lock)
            .with_context(|| format!("cannot copy Cargo.lock into {}", wt.path.display()))?;
    }
    let a_took = build(
        Side::A,
        &base_short,
        &wt.path,
        &ab.join("target-base"),
        &bin_a,
    )?;

    let (bench_a, bench_b) = (bin_a.join(BINS[0]), bin_b.join(BINS[0]));
    for (side, bench) in [(Side::A, &bench_a), (Side::B, &bench_b)] {
        let known = scenarios_of(bench)?;
        let missing: Vec<_> = args
            .scenarios
            .iter()
            .filter(|s| !known.contains(s))
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} ({}) has no scenario {missing:?}; it knows: {}",
                side.letter(),
                side.what(),
                known.join(", ")
            );
        }
    }

    // Results of an earlier comparison must not be mistaken for this one's.
    for e in fs::read_dir(&ab)?.flatten() {
        if e.file_name().to_string_lossy().starts_with("run-") {
            let _ = fs::remove_file(e.path());
        }
    }

    let pairs = args.pairs as usize;
    let runner = Runner {
        args,
        ab: ab.clone(),
    };
    let mut runs = vec![PairRuns::default(); pairs];
    let mut failure = None;
    let start = Instant::now();
    for (i, side) in run_order(pairs) {
        if (side == Side::A) == (i % 2 == 0) {
            let order = if i % 2 == 0 { "A then B" } else { "B then A" };
            eprintln!("xtask: bench-ab: pair {}/{pairs} ({order})", i + 1);
        }
        let (bench, cwd) = match side {
            Side::A => (&bench_a, wt.path.as_path()),
            Side::B => (&bench_b, root.as_path()),
        };
        match runner.run(side, i, bench, cwd) {
            Ok(rows) => match side {
                Side::A => runs[i].a = Some(rows),
                Side::B => runs[i].b = Some(rows),
            },
            Err(e) => {
                eprintln!(
                    "xtask: bench-ab: pair {}/{pairs}, {} failed (details below); no more runs, \
                     the report keeps what was gathered",
                    i + 1,
                    side.letter()
                );
                failure = Some(e);
                break;
            }
        }
    }
    let ran = start.elapsed();

    let summaries = summarize(&runs);
    let complete = runs
        .iter()
        .filter(|p| p.a.is_some() && p.b.is_some())
        .count();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "# bench-ab: {} — {date}\n",
        args.scenarios.join(" ")
    );
    let _ = writeln!(report, "- A (base): `{base_short}` {base_subject}");
    let _ = writeln!(report, "- B (working tree): `{b_desc}` (HEAD `{head}`)");
    let _ = writeln!(
        report,
        "- {complete} of {pairs} pairs complete, ABBA order{}{}; runs took {}",
        if args.quick {
            ", --quick (short runs: noisier figures)"
        } else {
            ""
        },
        if args.harness_args.is_empty() {
            String::new()
        } else {
            format!(", harness args `{}`", args.harness_args.join(" "))
        },
        fmt_dur(ran)
    );
    let _ = writeln!(
        report,
        "- builds: A {}, B {}; each run's JSON, stdout and stderr: target/ab/run-<a|b>-<pair>.*\n",
        fmt_dur(a_took),
        fmt_dur(b_took)
    );
    if let Some(e) = &failure {
        let _ = writeln!(
            report,
            "**Incomplete** — a run failed; the figures are those gathered before it:\n\n```\n{e:#}\n```\n"
        );
    }
    report.push_str(&table(&summaries));
    let _ = writeln!(report, "\n{TABLE_NOTES}");
    println!("\n{report}");
    let report_path = ab.join("report.md");
    fs::write(&report_path, &report)
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    eprintln!(
        "xtask: bench-ab: report written to {}",
        report_path.display()
    );
    drop(wt);
    match failure {
        Some(e) => Err(e.context("bench-ab stopped early (report written with what it had)")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn baseline_names_drop_the_numbers_of_their_run() {
        use super::stable_name;
        let a = "what the disk allows: median of min(link, disk B) per round (medians: link 2072, disk B 1837)";
        let b = "what the disk allows: median of min(link, disk B) per round (medians: link 1849, disk B 1844)";
        assert_eq!(stable_name(a), stable_name(b));
        assert_eq!(
            stable_name(a),
            "what the disk allows: median of min(link, disk B) per round"
        );
        // Parentheses without numbers, and numbers outside parentheses, stay.
        let f = "F: fdatasync'd 4 KiB overwrites, interleaved (probe, same seconds)";
        assert_eq!(stable_name(f), f);
        assert_eq!(stable_name("unclosed (1"), "unclosed (1");
    }

    use super::*;

    /// The shape `harness::write_json` writes (trimmed): a latency row with a goal and a
    /// baseline, a rate row without a goal, a count row with neither goal nor known unit, and
    /// a row whose value was NaN (null).
    const RUN: &str = r#"{
      "run": { "date_utc": "2026-11-26 09:05:02", "commit": "043d31a", "quick": true },
      "outcomes": [
        { "scenario": "xdp_packet_cost", "metric": "ns added per ACK", "unit": "ns",
          "value": 2.0, "baseline": ["empty xdp_pass", 25.0],
          "goal": { "text": "≤ 5 ns added", "threshold": 5.0, "better": "lower", "on_ratio": false },
          "notes": "" },
        { "scenario": "veth_syn_flood", "metric": "SYN flood", "unit": "Mpps",
          "value": 1.5, "baseline": null, "goal": null, "notes": "" },
        { "scenario": "failover", "metric": "stalls", "unit": "trials",
          "value": 0.0, "baseline": null, "goal": null, "notes": "" },
        { "scenario": "failover", "metric": "stalls", "unit": "trials",
          "value": null, "baseline": null, "goal": null, "notes": "" }
      ]
    }"#;

    fn value_row(metric: &str, dir: Direction, v: f64) -> Row {
        Row {
            key: Key {
                scenario: "s".into(),
                metric: metric.into(),
                kind: Kind::Value,
                nth: 0,
            },
            unit: "ms".into(),
            dir,
            source: Source::Goal,
            value: Some(v),
        }
    }

    #[test]
    fn parses_rows_with_ratio_and_baseline_and_directions() {
        let rows = parse_run(RUN).unwrap();
        assert_eq!(rows.len(), 6, "{rows:#?}");
        assert_eq!(rows[0].key.kind, Kind::Value);
        assert_eq!(rows[0].value, Some(2.0));
        assert_eq!(
            (rows[0].dir, rows[0].source),
            (Direction::Lower, Source::Goal)
        );
        assert_eq!(rows[1].key.kind, Kind::Ratio("empty xdp_pass".into()));
        assert_eq!(rows[1].value, Some(2.0 / 25.0));
        assert_eq!(rows[1].dir, Direction::Lower);
        assert_eq!(rows[2].key.kind, Kind::Baseline("empty xdp_pass".into()));
        assert_eq!(rows[2].value, Some(25.0));
        assert_eq!(rows[2].source, Source::Reference);
        assert_eq!(
            (rows[3].dir, rows[3].source),
            (Direction::Higher, Source::Unit)
        );
        assert_eq!(rows[4].dir, Direction::Unknown);
        // The same name twice in one run: two keys, the second numbered.
        assert_eq!((rows[4].key.nth, rows[5].key.nth), (0, 1));
        assert_ne!(rows[4].key, rows[5].key);
        assert_eq!(rows[5].value, None);
        assert!(parse_run("{\"run\": {}}").is_err());
    }

    #[test]
    fn direction_comes_from_goal_then_unit() {
        assert_eq!(
            direction(Some("higher"), "ms"),
            (Direction::Higher, Source::Goal)
        );
        assert_eq!(
            direction(Some("lower"), "Mpps"),
            (Direction::Lower, Source::Goal)
        );
        assert_eq!(direction(None, "Mpps"), (Direction::Higher, Source::Unit));
        assert_eq!(direction(None, "MB/s"), (Direction::Higher, Source::Unit));
        assert_eq!(
            direction(None, "records/s"),
            (Direction::Higher, Source::Unit)
        );
        assert_eq!(direction(None, "ms"), (Direction::Lower, Source::Unit));
        assert_eq!(direction(None, "µs"), (Direction::Lower, Source::Unit));
        assert_eq!(
            direction(None, "ns/packet"),
            (Direction::Lower, Source::Unit)
        );
        assert_eq!(
            direction(None, "trials"),
            (Direction::Unknown, Source::None)
        );
        assert_eq!(
            direction(Some("sideways"), ""),
            (Direction::Unknown, Source::None)
        );
    }

    #[test]
    fn runs_alternate_abba() {
        use Side::{A, B};
        assert_eq!(
            run_order(3),
            vec![(0, A), (0, B), (1, B), (1, A), (2, A), (2, B)]
        );
    }

    #[test]
    fn medians_and_ranges() {
        let s = stats(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        let s = stats(&[4.0, 1.0, 3.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.5, 1.0, 10.0));
        assert_eq!(stats(&[]), None);
        assert_eq!(stats(&[f64::NAN]), None);
    }

    #[test]
    fn pair_wins_follow_the_direction() {
        // Latency: B lower in pairs 1 and 3, higher in 2, tie in 4.
        let pairs = [(10.0, 9.0), (10.0, 11.0), (10.0, 8.0), (10.0, 10.0)];
        let w = Wins::of(&pairs);
        assert_eq!(
            w,
            Wins {
                b_higher: 1,
                b_lower: 2,
                ties: 1
            }
        );
        assert_eq!(w.pairs(), 4);
        assert_eq!(w.b_better(Direction::Lower), Some((2, 1)));
        assert_eq!(w.b_better(Direction::Higher), Some((1, 2)));
        assert_eq!(w.b_better(Direction::Unknown), None);
    }

    #[test]
    fn sign_test() {
        assert!((sign_test_p(6, 6) - 0.03125).abs() < 1e-12);
        assert!((sign_test_p(0, 6) - 0.03125).abs() < 1e-12);
        assert!((sign_test_p(5, 6) - 0.21875).abs() < 1e-12);
        assert!((sign_test_p(7, 8) - 0.0703125).abs() < 1e-12);
        assert_eq!(sign_test_p(3, 6), 1.0);
        assert_eq!(sign_test_p(0, 0), 1.0);
    }

    #[test]
    fn summary_pairs_only_complete_pairs_and_keeps_every_run() {
        let run = |v: f64| Some(vec![value_row("lat", Direction::Lower, v)]);
        let runs = vec![
            PairRuns {
                a: run(10.0),
                b: run(8.0),
            },
            PairRuns {
                a: run(12.0),
                b: run(9.0),
            },
            PairRuns {
                a: run(11.0),
                b: run(13.0),
            },
            // B failed: A's figure counts in A's median but forms no pair.
            PairRuns {
                a: run(30.0),
                b: None,
            },
        ];
        let s = summarize(&runs);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].a, vec![10.0, 12.0, 11.0, 30.0]);
        assert_eq!(s[0].b, vec![8.0, 9.0, 13.0]);
        assert_eq!(s[0].pairs, vec![(10.0, 8.0), (12.0, 9.0), (11.0, 13.0)]);
        let t = table(&s);
        assert!(t.contains("| 2 of 3 (p 1.00) |"), "{t}");
        assert!(t.contains("11.5 ms [10.0–30.0]"), "{t}");
        assert!(t.contains("0.783× (−21.7 %)"), "{t}");
        assert!(t.contains("lower (goal)"), "{t}");
    }

    #[test]
    fn unknown_direction_prints_both_counts() {
        let run = |v: f64| Some(vec![value_row("count", Direction::Unknown, v)]);
        let runs = vec![
            PairRuns {
                a: run(1.0),
                b: run(2.0),
            },
            PairRuns {
                a: run(3.0),
                b: run(2.0),
            },
            PairRuns {
                a: run(3.0),
                b: run(4.0),
            },
        ];
        let t = table(&summarize(&runs));
        assert!(
            t.contains("direction unknown: B higher in 2, lower in 1 of 3"),
            "{t}"
        );
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(fmt_num(2.0), "2.00");
        assert_eq!(fmt_num(0.0770), "0.0770");
        assert_eq!(fmt_num(45.26), "45.3");
        assert_eq!(fmt_num(304.4), "304");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(52_000.0), "52.0k");
        assert_eq!(fmt_num(1_500_000.0), "1.50M");
    }
}
