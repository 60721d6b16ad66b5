//! `cargo xtask profile bpf`: run counts and cost per run of Duraplane's XDP programs, the
//! verifier's instruction counts, map fill, and the daemon's insert-failure/eviction counters.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    kernel::{self, Holders, Map, Prog, StatsGuard, StatsMethod},
    node::Node,
};

/// `inbound stats` counters that mean the program gave something up.
pub const LOSS_COUNTERS: &[&str] = &[
    "flow_map_full",
    "flow_insert_failed",
    "source_map_insert_failed",
    "source_evicted",
    "ringbuf_full",
    "local_underflow",
];

/// How often map entries are counted during the window (peak tracking).
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct MapReport {
    pub map: Map,
    /// Entries at the end of the window (hash/LRU/LPM maps only).
    pub entries: Option<u64>,
    /// Highest count seen while sampling.
    pub peak: Option<u64>,
}

impl MapReport {
    pub fn peak_fill(&self) -> Option<f64> {
        let p = self.peak.or(self.entries)?;
        (self.map.max_entries > 0).then(|| p as f64 / self.map.max_entries as f64)
    }
}

#[derive(Debug, Clone)]
pub struct ProgReport {
    pub prog: Prog,
    /// The process holding the program, and the demo/console node name if it is one.
    pub pid: Option<u32>,
    pub node: Option<String>,
    /// Runs and run time within the window.
    pub runs: u64,
    pub run_ns: u64,
    pub maps: Vec<MapReport>,
}

impl ProgReport {
    pub fn avg_ns(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_ns as f64 / self.runs as f64)
    }

    pub fn holder(&self) -> String {
        match (&self.node, self.pid) {
            (Some(n), Some(p)) => format!("{n} (pid {p})"),
            (None, Some(p)) => format!("{} (pid {p})", kernel::comm(p)),
            _ => "-".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeCounters {
    pub node: String,
    pub before: BTreeMap<String, u64>,
    pub after: BTreeMap<String, u64>,
}

impl NodeCounters {
    pub fn delta(&self, k: &str) -> u64 {
        let a = self.after.get(k).copied().unwrap_or(0);
        a.saturating_sub(self.before.get(k).copied().unwrap_or(0))
    }
}

#[derive(Debug, Clone)]
pub struct BpfReport {
    pub seconds: f64,
    pub method: StatsMethod,
    pub progs: Vec<ProgReport>,
    pub counters: Vec<NodeCounters>,
}

/// Measures for `seconds` with run-time statistics on, then switches them back off (the
/// guard), also when interrupted (`stop`) or on error.
pub fn measure(
    nodes: &[Node],
    seconds: f64,
    method: StatsMethod,
    stop: &AtomicBool,
) -> Result<BpfReport> {
    let holders = Holders::scan();
    let mut progs = kernel::duraplane_progs()?;
    if !nodes.is_empty() {
        progs.retain(|p| {
            holders
                .progs
                .get(&p.id)
                .is_some_and(|pid| nodes.iter().any(|n| n.pid == *pid))
        });
    }
    if progs.is_empty() {
        bail!(
            "no Duraplane eBPF program ({}) is loaded{}: start the demo (`cargo xtask run -- \
             --duration 120`) or a daemon with `duraplane {{ interfaces = (…) }}`",
            kernel::PROGRAMS.join(", "),
            if nodes.is_empty() {
                String::new()
            } else {
                " by the given daemon(s)".into()
            }
        );
    }
    let all_maps = kernel::maps()?;
    let counters_before: Vec<_> = nodes.iter().map(|n| n.inbound_stats()).collect();

    let guard = StatsGuard::enable(method)?;
    let start = snapshot(&progs)?;
    let mut peaks: BTreeMap<u32, u64> = BTreeMap::new();
    let t0 = Instant::now();
    let window = Duration::from_secs_f64(seconds);
    loop {
        sample_maps(&progs, &all_maps, &mut peaks);
        if t0.elapsed() >= window {
            break;
        }
        let mut slept = Duration::ZERO;
        while slept < SAMPLE_EVERY && t0.elapsed() < window {
            if stop.load(Ordering::Relaxed) {
                drop(guard);
                bail!("interrupted; BPF run-time statistics switched back off");
            }
            std::thread::sleep(Duration::from_millis(50));
            slept += Duration::from_millis(50);
        }
    }
    let end = snapshot(&progs)?;
    let elapsed = t0.elapsed().as_secs_f64();
    drop(guard);

    let mut reports = Vec::new();
    for p in progs {
        let (r0, n0) = start.get(&p.id).copied().unwrap_or_default();
        let (r1, n1) = end.get(&p.id).copied().unwrap_or_default();
        let pid = holders.progs.get(&p.id).copied();
        let node = pid.and_then(|pid| nodes.iter().find(|n| n.pid == pid).map(|n| n.name.clone()));
        let maps = p
            .map_ids
            .iter()
            .filter_map(|id| all_maps.get(id))
            .map(|m| {
                let entries = m
                    .is_hash_like()
                    .then(|| kernel::count_entries(m.id, m.bytes_key, m.max_entries).ok())
                    .flatten();
                let peak = peaks.get(&m.id).copied().max(entries);
                MapReport {
                    map: m.clone(),
                    entries,
                    peak: if m.is_hash_like() { peak } else { None },
                }
            })
            .collect();
        reports.push(ProgReport {
            prog: p,
            pid,
            node,
            runs: r1.saturating_sub(r0),
            run_ns: n1.saturating_sub(n0),
            maps,
        });
    }
    let counters = nodes
        .iter()
        .zip(counters_before)
        .map(|(n, before)| NodeCounters {
            node: n.name.clone(),
            before: before.unwrap_or_default(),
            after: n.inbound_stats().unwrap_or_default(),
        })
        .collect();
    Ok(BpfReport {
        seconds: elapsed,
        method,
        progs: reports,
        counters,
    })
}

/// (run_cnt, run_time_ns) per program id, as bpftool shows them now.
fn snapshot(progs: &[Prog]) -> Result<BTreeMap<u32, (u64, u64)>> {
    let now = kernel::duraplane_progs()?;
    Ok(now
        .into_iter()
        .filter(|p| progs.iter().any(|q| q.id == p.id))
        .map(|p| (p.id, (p.run_cnt.unwrap_or(0), p.run_time_ns.unwrap_or(0))))
        .collect())
}

fn sample_maps(progs: &[Prog], maps: &BTreeMap<u32, Map>, peaks: &mut BTreeMap<u32, u64>) {
    for id in progs.iter().flat_map(|p| &p.map_ids) {
        let Some(m) = maps.get(id).filter(|m| m.is_hash_like()) else {
            continue;
        };
        if let Ok(n) = kernel::count_entries(m.id, m.bytes_key, m.max_entries) {
            let e = peaks.entry(m.id).or_insert(0);
            *e = (*e).max(n);
        }
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The report as the tables `profile bpf` prints.
pub fn render(r: &BpfReport) -> String {
    let mut o = String::new();
    let how = match r.method {
        StatsMethod::Fd => "BPF_ENABLE_STATS, off again when done",
        StatsMethod::Sysctl => "kernel.bpf_stats_enabled, restored when done",
    };
    let _ = writeln!(
        o,
        "eBPF programs, measured for {:.1} s (run-time statistics via {how})\n",
        r.seconds
    );
    let _ = writeln!(
        o,
        "{:>6}  {:<12} {:<22} {:>10} {:>10} {:>8} {:>9} {:>7} {:>7}",
        "ID", "PROGRAM", "HELD BY", "RUNS", "RUNS/S", "AVG NS", "VERIFIED", "XLATED", "JITED B"
    );
    for p in &r.progs {
        let _ = writeln!(
            o,
            "{:>6}  {:<12} {:<22} {:>10} {:>10.1} {:>8} {:>9} {:>7} {:>7}",
            p.prog.id,
            p.prog.name,
            p.holder(),
            p.runs,
            p.runs as f64 / r.seconds.max(1e-9),
            opt(p.avg_ns().map(|v| format!("{v:.0}"))),
            opt(p.prog.verified_insns),
            opt(p.prog.xlated_insns()),
            opt(p.prog.bytes_jited),
        );
    }
    let _ = writeln!(
        o,
        "(VERIFIED: instructions the verifier processed; XLATED: program length in \
         instructions after rewriting)"
    );
    for p in &r.progs {
        let _ = writeln!(o, "\nMaps of program {} ({}):", p.prog.id, p.holder());
        let _ = writeln!(
            o,
            "{:>6}  {:<13} {:<16} {:>9} {:>8} {:>8} {:>7}",
            "ID", "NAME", "TYPE", "MAX", "ENTRIES", "PEAK", "FILL"
        );
        for m in &p.maps {
            let fill = m
                .peak_fill()
                .map(|f| format!("{:.1}%", f * 100.0))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                o,
                "{:>6}  {:<13} {:<16} {:>9} {:>8} {:>8} {:>7}",
                m.map.id,
                m.map.name,
                m.map.kind,
                m.map.max_entries,
                opt(m.entries),
                opt(m.peak),
                fill
            );
        }
    }
    if r.progs
        .iter()
        .any(|p| p.maps.iter().any(|m| !m.map.is_hash_like()))
    {
        let _ = writeln!(
            o,
            "(arrays are always full by construction and the ring buffer has no entries: \
             no fill shown; ring buffer loss is ringbuf_full below)"
        );
    }
    if r.counters.is_empty() {
        let _ = writeln!(
            o,
            "\nInsert failures and evictions: pass --socket PATH or --demo to read the \
             daemon's counters (inbound stats)."
        );
    }
    for c in &r.counters {
        let _ = writeln!(
            o,
            "\nInsert failures and evictions on {} (inbound stats; total, +during the window):",
            c.node
        );
        for k in LOSS_COUNTERS {
            match c.after.get(*k) {
                Some(v) => {
                    let _ = writeln!(o, "  {k:>26}: {v} (+{})", c.delta(k));
                }
                None => {
                    let _ = writeln!(o, "  {k:>26}: - (not reported by this daemon)");
                }
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::kernel::{parse_maps, parse_progs};

    #[test]
    fn render_lists_programs_maps_and_counters() {
        let progs = parse_progs(include_str!("testdata/prog_stats.json")).unwrap();
        let maps = parse_maps(include_str!("testdata/map.json")).unwrap();
        let flows = maps.iter().find(|m| m.name == "FLOWS_V4").unwrap().clone();
        let stats = maps.iter().find(|m| m.name == "STATS").unwrap().clone();
        let mut prog = progs[1].clone();
        prog.verified_insns = Some(1834);
        let r = BpfReport {
            seconds: 2.0,
            method: StatsMethod::Fd,
            progs: vec![ProgReport {
                prog,
                pid: Some(42),
                node: Some("node1".into()),
                runs: 1000,
                run_ns: 175_000,
                maps: vec![
                    MapReport {
                        map: flows,
                        entries: Some(65_536),
                        peak: Some(131_072),
                    },
                    MapReport {
                        map: stats,
                        entries: None,
                        peak: None,
                    },
                ],
            }],
            counters: vec![NodeCounters {
                node: "node1".into(),
                before: [("flow_map_full".to_owned(), 10)].into(),
                after: [("flow_map_full".to_owned(), 25)].into(),
            }],
        };
        let out = render(&r);
        assert!(out.contains("xdp_ingress"), "{out}");
        assert!(out.contains("node1 (pid 42)"), "{out}");
        assert!(out.contains(" 175 "), "avg ns per run: {out}");
        assert!(out.contains(" 1834 "), "{out}");
        assert!(out.contains("100.0%"), "{out}");
        assert!(out.contains("flow_map_full: 25 (+15)"), "{out}");
        assert!(out.contains("ringbuf_full: - (not reported"), "{out}");
    }
}
