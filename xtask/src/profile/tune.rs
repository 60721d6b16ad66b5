//! `cargo xtask profile tune`: reads a node's figures (map fill, loss counters, drop rate,
//! corosync timing, pipeline metrics) and says what to change, each with its reason and the
//! figure behind it. The rules ([`suggest`]) are a pure function over [`Figures`].

use std::{collections::BTreeMap, fmt::Write as _, sync::atomic::AtomicBool};

use anyhow::Result;

use super::{
    bpf,
    kernel::StatsMethod,
    node::{self, Node},
};

/// One hash-like map of the node's program, with its peak over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct MapFigure {
    pub name: String,
    pub max_entries: u64,
    pub peak: u64,
    /// Bytes per entry as the kernel charges them (memlock / max_entries).
    pub bytes_per_entry: Option<u64>,
}

/// Everything the rules look at, for one node.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub node: String,
    pub seconds: f64,
    pub maps: Vec<MapFigure>,
    /// `inbound stats` now, and their increase over the window.
    pub counters: BTreeMap<String, u64>,
    pub window: BTreeMap<String, u64>,
    /// xdp_ingress average cost per run in the window.
    pub avg_ns: Option<f64>,
    pub poll_interval_ms: Option<u64>,
    pub corosync_token_ms: Option<u64>,
    /// The token corosync runs with (token + (nodes − 2) × token_coefficient).
    pub corosync_runtime_token_ms: Option<u64>,
    /// `Replicate { max_delay max_pending }` of the node's configuration (first block).
    pub max_delay_ms: Option<u64>,
    pub max_pending: Option<u64>,
    /// Metrics at the end of the window, and their increase over it.
    pub metrics: BTreeMap<String, f64>,
    pub metrics_window: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Change this.
    Change,
    /// Probably fine for a test, worth a look in production.
    Check,
    /// Fine as it is.
    Ok,
    /// The daemon does not export the figure this needs.
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Advice {
    pub verdict: Verdict,
    /// What the advice is about (`FLOWS_V4`, `corosync token`, …).
    pub area: String,
    pub text: String,
    /// The figure(s) behind it.
    pub reason: String,
}

fn advice(verdict: Verdict, area: &str, text: String, reason: String) -> Advice {
    Advice {
        verdict,
        area: area.to_owned(),
        text,
        reason,
    }
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 * 100.0 / b as f64
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Capacity with room for twice `peak`, never below twice the current one when it overflowed.
fn grown(max: u64, peak: u64, overflowed: bool) -> u64 {
    let want = (peak.saturating_mul(2)).max(if overflowed { max * 2 } else { max + 1 });
    want.next_power_of_two()
}

/// The rules. Every figure yields a verdict, so the report also says what is fine.
pub fn suggest(f: &Figures) -> Vec<Advice> {
    let mut out = Vec::new();
    let c = |k: &str| f.counters.get(k).copied().unwrap_or(0);
    let w = |k: &str| f.window.get(k).copied().unwrap_or(0);

    for m in &f.maps {
        let fill = pct(m.peak, m.max_entries);
        let (full_ctr, what, key) = if m.name.starts_with("FLOWS") {
            ("flow_map_full", "flow", "flow_capacity")
        } else if m.name == "SOURCES" {
            ("source_evicted", "source", "source_capacity")
        } else {
            continue;
        };
        let lost = c(full_ctr)
            + if what == "source" {
                c("source_map_insert_failed")
            } else {
                0
            };
        // Both tables are 8-way set-associative with two candidate sets: a few inserts find
        // both sets full from about half load (counted as flow_map_full /
        // source_map_insert_failed), hence the advice to keep them under half full.
        let threshold = 50.0;
        if lost > 0 || fill >= threshold {
            let new = grown(m.max_entries, m.peak, lost > 0);
            let mem = m
                .bytes_per_entry
                .map(|b| format!(" (about {} of kernel memory)", mib(b * new)))
                .unwrap_or_default();
            let consequence = if what == "flow" {
                "SYNs that find it full pass uncounted, so limits are not enforced for them"
            } else {
                "new sources that find both their sets full are counted per netblock but not per source"
            };
            out.push(advice(
                Verdict::Change,
                &m.name,
                format!("raise the {what} capacity from {} to {new}{mem} (duraplane {{ {key} }})", m.max_entries),
                format!(
                    "{} is {fill:.0}% full at peak ({} of {}) and {full_ctr}={} (+{} in {:.0} s): {consequence}",
                    m.name,
                    m.peak,
                    m.max_entries,
                    c(full_ctr),
                    w(full_ctr),
                    f.seconds
                ),
            ));
        } else {
            out.push(advice(
                Verdict::Ok,
                &m.name,
                "no change".into(),
                format!(
                    "peak {} of {} ({fill:.1}%), {full_ctr}={}",
                    m.peak,
                    m.max_entries,
                    c(full_ctr)
                ),
            ));
        }
    }

    let rb = c("ringbuf_full");
    if rb > 0 {
        let poll = f.poll_interval_ms.unwrap_or(100);
        out.push(advice(
            Verdict::Change,
            "DROP_EVENTS",
            format!(
                "lower duraplane.poll_interval from {poll} ms to {} ms, or double the drop-event ring (256 KiB)",
                (poll / 2).max(10)
            ),
            format!(
                "ringbuf_full={rb} (+{} in {:.0} s): drop events were lost before userspace read them",
                w("ringbuf_full"),
                f.seconds
            ),
        ));
    } else if f.counters.contains_key("ringbuf_full") {
        out.push(advice(
            Verdict::Ok,
            "DROP_EVENTS",
            "no change".into(),
            "ringbuf_full=0".into(),
        ));
    }
    if c("flow_insert_failed") > 0 {
        out.push(advice(
            Verdict::Change,
            "FLOWS",
            "look at kernel memory pressure (the flow map could not allocate)".into(),
            format!(
                "flow_insert_failed={}: inserts failed for a reason other than a full map (ENOMEM)",
                c("flow_insert_failed")
            ),
        ));
    }
    if c("local_underflow") > 0 {
        out.push(advice(
            Verdict::Change,
            "LOCAL",
            "report a bug (with `inbound stats` and the daemon log)".into(),
            format!(
                "local_underflow={}: a connection count went below zero and was clamped",
                c("local_underflow")
            ),
        ));
    }

    let (syn, dropped) = (w("syn"), w("dropped"));
    if syn >= 100 && dropped * 2 > syn {
        out.push(advice(
            Verdict::Check,
            "netblock limits",
            "if these sources are legitimate, raise their netblock's max_connections (see `inbound show`)".into(),
            format!(
                "{:.0}% of SYNs in the window were dropped at the NIC (dropped={dropped} of syn={syn})",
                pct(dropped, syn)
            ),
        ));
    }
    if let Some(ns) = f.avg_ns.filter(|ns| *ns > 1000.0) {
        out.push(advice(
            Verdict::Check,
            "xdp_ingress",
            "profile the program (cargo xtask bench -- xdp_packet_cost); check for generic (skb) XDP mode".into(),
            format!("{ns:.0} ns per run on average in the window"),
        ));
    }

    if let Some(token) = f.corosync_token_ms {
        let churn = f
            .metrics_window
            .iter()
            .filter(|(k, _)| k.starts_with("duraplane_cluster_views_total"))
            .map(|(_, v)| *v)
            .sum::<f64>();
        if churn > 0.0 {
            out.push(advice(
                Verdict::Change,
                "corosync token",
                format!(
                    "raise totem.token from {token} ms to {} ms (consensus 1.2 × token)",
                    token * 2
                ),
                format!(
                    "the membership changed {churn:.0} times in {:.0} s: a token this short mistakes pauses for failures",
                    f.seconds
                ),
            ));
        } else if let Some(runtime) = f.corosync_runtime_token_ms
            && runtime > token
        {
            out.push(advice(
                Verdict::Change,
                "corosync token",
                format!("set totem.token_coefficient: 0 (or lower token) if you meant a {token} ms token"),
                format!(
                    "corosync adds (nodes − 2) × token_coefficient (650 ms by default) to token with a nodelist: it runs with {runtime} ms, so a crashed node is noticed about {} ms later than token {token} suggests (docs/corosync.md)",
                    runtime - token
                ),
            ));
        } else if token < 200 {
            out.push(advice(
                Verdict::Check,
                "corosync token",
                format!("raise totem.token from {token} ms to at least 200 ms"),
                format!(
                    "token {token} ms is below what the project measured as free of spurious membership changes on a loaded 2-core machine (200 ms, consensus 240, docs/corosync.md)"
                ),
            ));
        } else {
            out.push(advice(
                Verdict::Ok,
                "corosync token",
                "no change".into(),
                format!("token {token} ms, no membership change in the window"),
            ));
        }
    }

    let m = |k: &str| f.metrics.get(k).copied();
    let dm = |k: &str| f.metrics_window.get(k).copied();
    match (m("duraplane_replication_pending_max"), f.max_pending) {
        (Some(peak), Some(maxp)) if peak >= 0.8 * maxp as f64 => out.push(advice(
            Verdict::Change,
            "replication",
            format!("raise Replicate.max_pending from {maxp} to {}", maxp * 2),
            format!(
                "the queue reached {peak:.0} of max_pending={maxp}: batches are cut by size, not by max_delay"
            ),
        )),
        (Some(peak), maxp) => out.push(advice(
            Verdict::Ok,
            "replication",
            "no change".into(),
            format!(
                "queue peak {peak:.0}, max_pending={}",
                maxp.map(|v| v.to_string()).unwrap_or_else(|| "default".into())
            ),
        )),
        (None, _) => out.push(advice(
            Verdict::Unknown,
            "replication",
            format!(
                "cannot judge max_delay={} / max_pending={}",
                f.max_delay_ms
                    .map(|v| format!("{v} ms"))
                    .unwrap_or_else(|| "10 ms (default)".into()),
                f.max_pending
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "100 (default)".into())
            ),
            "the daemon does not export duraplane_replication_pending_max yet".into(),
        )),
    }
    // Sender clock → applied, per remote slot (duraplane_replication_lag_seconds{object,node}).
    let lag = f
        .metrics
        .iter()
        .filter(|(k, _)| k.starts_with("duraplane_replication_lag_seconds"))
        .map(|(_, v)| *v)
        .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
    if let Some(lag) = lag {
        let delay = f.max_delay_ms.unwrap_or(10);
        let lag_ms = lag * 1000.0;
        if lag_ms > 2.0 * delay as f64 + 50.0 {
            out.push(advice(
                Verdict::Check,
                "replication lag",
                format!(
                    "updates arrive much later than max_delay={delay} ms: look at the engine \
                     (profile perf) and the peer links; raising max_delay would not help"
                ),
                format!(
                    "the largest duraplane_replication_lag_seconds is {lag_ms:.0} ms (clocks \
                     must be synchronised for this figure)"
                ),
            ));
        } else {
            out.push(advice(
                Verdict::Ok,
                "replication lag",
                "no change".into(),
                format!("largest lag {lag_ms:.0} ms with max_delay={delay} ms"),
            ));
        }
    }

    // One series per stream (label `stream`): judge the stream that rolls most often.
    const ROLLS: &str = "duraplane_log_segment_rolls_total";
    let busiest = f
        .metrics_window
        .iter()
        .filter_map(|(k, v)| {
            let labels = k.strip_prefix(ROLLS)?;
            (labels.is_empty() || labels.starts_with('{')).then_some((labels, *v))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1));
    match busiest.map(|(labels, rolls)| {
        let size = m(&format!("duraplane_log_segment_bytes{labels}"));
        (labels, rolls, size)
    }) {
        Some((labels, rolls, Some(size))) if rolls * 60.0 / f.seconds.max(1e-9) > 6.0 => out
            .push(advice(
                Verdict::Change,
                "log segments",
                format!(
                    "raise the log segment size from {} to {}",
                    mib(size as u64),
                    mib(size as u64 * 4)
                ),
                format!(
                    "{rolls:.0} segment rolls in {:.0} s (> 6 a minute) on {}: each roll fsyncs and opens a file",
                    f.seconds,
                    if labels.is_empty() { "the stream" } else { labels }
                ),
            )),
        Some((_, rolls, _)) => out.push(advice(
            Verdict::Ok,
            "log segments",
            "no change".into(),
            format!("at most {rolls:.0} segment rolls per stream in {:.0} s", f.seconds),
        )),
        None => out.push(advice(
            Verdict::Unknown,
            "log segments",
            "cannot judge the segment size".into(),
            "no cluster:// stream is open on this node (no duraplane_log_segment_rolls_total)"
                .into(),
        )),
    }

    match (
        m("duraplane_engine_uring_in_flight_max"),
        m("duraplane_engine_uring_entries"),
    ) {
        (Some(depth), Some(entries)) if depth >= 0.9 * entries => out.push(advice(
            Verdict::Change,
            "io_uring",
            format!(
                "raise the ring size from {entries:.0} to {:.0} entries",
                entries * 2.0
            ),
            format!(
                "the queue depth reached {depth:.0} of {entries:.0}: submissions wait for room"
            ),
        )),
        (Some(depth), _) => out.push(advice(
            Verdict::Ok,
            "io_uring",
            "no change".into(),
            format!("queue depth peak {depth:.0}"),
        )),
        (None, _) => out.push(advice(
            Verdict::Unknown,
            "io_uring",
            "cannot judge the ring size or batching".into(),
            "the daemon does not export duraplane_engine_uring_* yet".into(),
        )),
    }
    if let (Some(sub), Some(enters)) = (
        dm("duraplane_engine_uring_submissions_total"),
        dm("duraplane_engine_uring_enters_total"),
    ) && enters / f.seconds.max(1e-9) > 1000.0
        && sub / enters < 1.5
    {
        out.push(advice(
            Verdict::Check,
            "io_uring",
            "batch more per io_uring_enter (the reactor submits almost one SQE per syscall)".into(),
            format!(
                "{:.2} submissions per enter at {:.0} enters/s",
                sub / enters,
                enters / f.seconds
            ),
        ));
    }
    out
}

/// The advice as text, changes first.
pub fn render(f: &Figures, advice: &[Advice]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Tuning {} (figures over {:.1} s):", f.node, f.seconds);
    let rank = |v: Verdict| match v {
        Verdict::Change => 0,
        Verdict::Check => 1,
        Verdict::Unknown => 2,
        Verdict::Ok => 3,
    };
    let mut sorted: Vec<&Advice> = advice.iter().collect();
    sorted.sort_by_key(|a| rank(a.verdict));
    for a in sorted {
        let tag = match a.verdict {
            Verdict::Change => "CHANGE",
            Verdict::Check => "check",
            Verdict::Ok => "ok",
            Verdict::Unknown => "n/a",
        };
        let _ = writeln!(o, "  [{tag:<6}] {}: {}", a.area, a.text);
        let _ = writeln!(o, "           because {}", a.reason);
    }
    o
}

/// Parses `10ms`, `1s`, `1.5s`, `250` (ms) as milliseconds.
pub fn parse_ms(v: &str) -> Option<u64> {
    let v = v.trim().trim_matches('"');
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    let x: f64 = num.trim().parse().ok()?;
    Some((x * scale).round() as u64)
}

fn diff(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// The program's flow and source tables (set-associative ARRAYs since the SYN fast path).
fn is_flow_or_source(name: &str) -> bool {
    name.starts_with("FLOWS") || name == "SOURCES"
}

/// Live entries of a flow or source table, from the daemon's own figures (0 if absent):
/// its tracked-sources gauge, and for the flow tables the flows still open by its counters
/// (opened − closed − expired; both families together, so an upper bound per table).
fn occupied(name: &str, metrics: &BTreeMap<String, f64>, counters: &BTreeMap<String, u64>) -> u64 {
    if name == "SOURCES" {
        return metrics
            .get("duraplane_inbound_tracked_sources")
            .copied()
            .unwrap_or(0.0)
            .max(0.0) as u64;
    }
    let c = |k: &str| counters.get(k).copied().unwrap_or(0);
    c("opened").saturating_sub(c("fin_rst_closed") + c("expired"))
}

/// Measures every node for `seconds` and prints its advice.
pub fn run(nodes: &[Node], seconds: f64, method: StatsMethod, stop: &AtomicBool) -> Result<()> {
    let metrics_before: Vec<_> = nodes.iter().map(|n| n.metrics().ok()).collect();
    let report = bpf::measure(nodes, seconds, method, stop)?;
    for (i, n) in nodes.iter().enumerate() {
        let conf = n
            .config_path()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let corosync_conf = n
            .corosync_conf()
            .and_then(|p| std::fs::read_to_string(p).ok());
        let prog = report.progs.iter().find(|p| p.pid == Some(n.pid));
        let counters = report.counters.iter().find(|c| c.node == n.name);
        let after = n
            .metrics()
            .map(|t| node::parse_prometheus(&t))
            .unwrap_or_else(|e| {
                eprintln!("xtask: {}: metrics not read: {e:#}", n.name);
                BTreeMap::new()
            });
        let before = metrics_before[i]
            .as_deref()
            .map(node::parse_prometheus)
            .unwrap_or_default();
        let f = Figures {
            node: format!("{} (pid {})", n.name, n.pid),
            seconds: report.seconds,
            maps: prog
                .map(|p| {
                    p.maps
                        .iter()
                        .filter(|m| m.map.is_hash_like() || is_flow_or_source(&m.map.name))
                        .map(|m| MapFigure {
                            name: m.map.name.clone(),
                            max_entries: m.map.max_entries,
                            // The flow and source tables are set-associative arrays: the
                            // kernel cannot count their live slots, the daemon can.
                            peak: m.peak.unwrap_or_else(|| {
                                occupied(
                                    &m.map.name,
                                    &after,
                                    counters.map(|c| &c.after).unwrap_or(&BTreeMap::new()),
                                )
                            }),
                            bytes_per_entry: m
                                .map
                                .bytes_memlock
                                .map(|b| b / m.map.max_entries.max(1)),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            counters: counters.map(|c| c.after.clone()).unwrap_or_default(),
            window: counters
                .map(|c| c.after.keys().map(|k| (k.clone(), c.delta(k))).collect())
                .unwrap_or_default(),
            avg_ns: prog.and_then(|p| p.avg_ns()),
            poll_interval_ms: node::setting(&conf, "poll_interval").and_then(|v| parse_ms(&v)),
            corosync_token_ms: corosync_conf.as_deref().map(node::corosync_token_ms),
            corosync_runtime_token_ms: corosync_conf
                .as_deref()
                .map(node::corosync_runtime_token_ms),
            max_delay_ms: node::setting(&conf, "max_delay").and_then(|v| parse_ms(&v)),
            max_pending: node::setting(&conf, "max_pending").and_then(|v| v.parse().ok()),
            metrics_window: diff(&before, &after),
            metrics: after,
        };
        print!("{}", render(&f, &suggest(&f)));
        if prog.is_none() {
            println!("  (no XDP program held by this daemon: map figures are missing)");
        }
        println!();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Figures {
        Figures {
            node: "node1".into(),
            seconds: 10.0,
            maps: vec![
                MapFigure {
                    name: "FLOWS_V4".into(),
                    max_entries: 131_072,
                    peak: 12,
                    bytes_per_entry: Some(120),
                },
                MapFigure {
                    name: "SOURCES".into(),
                    max_entries: 65_536,
                    peak: 3,
                    bytes_per_entry: Some(128),
                },
            ],
            counters: [
                ("flow_map_full", 0),
                ("source_evicted", 0),
                ("ringbuf_full", 0),
                ("syn", 20),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            corosync_token_ms: Some(3000),
            ..Figures::default()
        }
    }

    fn find<'a>(a: &'a [Advice], area: &str) -> Vec<&'a Advice> {
        a.iter().filter(|x| x.area == area).collect()
    }

    #[test]
    fn quiet_node_changes_nothing() {
        let a = suggest(&base());
        assert!(a.iter().all(|x| x.verdict != Verdict::Change), "{a:#?}");
        assert_eq!(find(&a, "FLOWS_V4")[0].verdict, Verdict::Ok);
        assert!(find(&a, "FLOWS_V4")[0].reason.contains("peak 12 of 131072"));
        // Pipelines the daemon does not export are said to be unknown, not fine.
        assert_eq!(find(&a, "replication")[0].verdict, Verdict::Unknown);
        assert_eq!(find(&a, "io_uring")[0].verdict, Verdict::Unknown);
    }

    #[test]
    fn full_flow_map_is_raised_with_its_figures() {
        let mut f = base();
        f.maps[0].peak = 121_900;
        f.counters.insert("flow_map_full".into(), 1200);
        f.window.insert("flow_map_full".into(), 300);
        let a = suggest(&f);
        let x = find(&a, "FLOWS_V4")[0];
        assert_eq!(x.verdict, Verdict::Change);
        assert!(x.text.contains("from 131072 to 262144"), "{}", x.text);
        assert!(x.reason.contains("93% full at peak"), "{}", x.reason);
        assert!(
            x.reason.contains("flow_map_full=1200 (+300"),
            "{}",
            x.reason
        );
        assert!(x.text.contains("30.0 MiB"), "{}", x.text);
    }

    #[test]
    fn nearly_full_without_overflow_still_raised() {
        let mut f = base();
        f.maps[0].peak = 110_000; // 84%
        let x = suggest(&f)
            .into_iter()
            .find(|a| a.area == "FLOWS_V4")
            .unwrap();
        assert_eq!(x.verdict, Verdict::Change);
        assert!(x.text.contains("to 262144"), "{}", x.text);
    }

    #[test]
    fn evictions_raise_sources() {
        let mut f = base();
        f.counters.insert("source_evicted".into(), 7);
        let x = suggest(&f)
            .into_iter()
            .find(|a| a.area == "SOURCES")
            .unwrap();
        assert_eq!(x.verdict, Verdict::Change);
        assert!(x.text.contains("from 65536 to 131072"), "{}", x.text);
        assert!(x.reason.contains("source_evicted=7"), "{}", x.reason);
    }

    #[test]
    fn ringbuf_loss_lowers_poll_interval() {
        let mut f = base();
        f.counters.insert("ringbuf_full".into(), 4);
        f.poll_interval_ms = Some(50);
        let x = suggest(&f)
            .into_iter()
            .find(|a| a.area == "DROP_EVENTS")
            .unwrap();
        assert_eq!(x.verdict, Verdict::Change);
        assert!(x.text.contains("from 50 ms to 25 ms"), "{}", x.text);
    }

    #[test]
    fn corosync_token_rules() {
        let mut f = base();
        f.corosync_token_ms = Some(150);
        let token = |f: &Figures| {
            suggest(f)
                .into_iter()
                .find(|a| a.area == "corosync token")
                .unwrap()
        };
        assert_eq!(token(&f).verdict, Verdict::Check);
        f.corosync_token_ms = Some(300);
        f.corosync_runtime_token_ms = Some(300);
        assert_eq!(token(&f).verdict, Verdict::Ok);
        // A nodelist of three with the default coefficient: really 950 ms.
        f.corosync_runtime_token_ms = Some(950);
        let x = token(&f);
        assert_eq!(x.verdict, Verdict::Change);
        assert!(x.text.contains("token_coefficient: 0"), "{}", x.text);
        assert!(x.reason.contains("runs with 950 ms"), "{}", x.reason);
        f.corosync_runtime_token_ms = Some(300);
        let x = suggest(&f)
            .into_iter()
            .find(|a| a.area == "corosync token")
            .unwrap();
        assert_eq!(x.verdict, Verdict::Ok);
        f.metrics_window
            .insert("duraplane_cluster_views_total".into(), 3.0);
        let x = suggest(&f)
            .into_iter()
            .find(|a| a.area == "corosync token")
            .unwrap();
        assert_eq!(x.verdict, Verdict::Change);
        assert!(x.text.contains("from 300 ms to 600 ms"), "{}", x.text);
        assert!(x.reason.contains("changed 3 times"), "{}", x.reason);
    }

    #[test]
    fn runtime_token_adds_the_coefficient_per_node_beyond_two() {
        let three = "totem {\n  token: 200\n}\nnodelist {\n  node {\n    ring0_addr: 192.0.2.1\n  }\n  node {\n    ring0_addr: 192.0.2.2\n  }\n  node {\n    ring0_addr: 192.0.2.3\n  }\n}\n";
        assert_eq!(node::corosync_runtime_token_ms(three), 850);
        let zero = three.replace("token: 200\n", "token: 200\n  token_coefficient: 0\n");
        assert_eq!(node::corosync_runtime_token_ms(&zero), 200);
        assert_eq!(
            node::corosync_runtime_token_ms("totem {\n token: 300\n}\n"),
            300
        );
    }

    #[test]
    fn replication_and_log_and_engine_from_metrics() {
        let mut f = base();
        f.max_pending = Some(100);
        f.metrics
            .insert("duraplane_replication_pending_max".into(), 95.0);
        let quiet = "{stream=\"/var/log/duraplane/reject.cluster\"}";
        let busy = "{stream=\"/var/log/duraplane/main.cluster\"}";
        f.metrics.insert(
            format!("duraplane_log_segment_bytes{busy}"),
            16.0 * 1048576.0,
        );
        f.metrics
            .insert(format!("duraplane_log_segment_bytes{quiet}"), 1048576.0);
        f.metrics_window
            .insert(format!("duraplane_log_segment_rolls_total{busy}"), 5.0);
        f.metrics_window
            .insert(format!("duraplane_log_segment_rolls_total{quiet}"), 1.0);
        f.metrics
            .insert("duraplane_engine_uring_in_flight_max".into(), 250.0);
        f.metrics
            .insert("duraplane_engine_uring_entries".into(), 256.0);
        f.metrics_window
            .insert("duraplane_engine_uring_enters_total".into(), 50_000.0);
        f.metrics_window
            .insert("duraplane_engine_uring_submissions_total".into(), 55_000.0);
        let a = suggest(&f);
        let r = find(&a, "replication")[0];
        assert_eq!(r.verdict, Verdict::Change);
        assert!(r.text.contains("from 100 to 200"), "{}", r.text);
        let l = find(&a, "log segments")[0];
        assert_eq!(l.verdict, Verdict::Change);
        assert!(l.text.contains("16.0 MiB to 64.0 MiB"), "{}", l.text);
        assert!(l.reason.contains("main.cluster"), "{}", l.reason);
        let e = find(&a, "io_uring");
        assert_eq!(e[0].verdict, Verdict::Change);
        assert!(e.iter().any(
            |x| x.verdict == Verdict::Check && x.reason.contains("1.10 submissions per enter")
        ));
    }

    #[test]
    fn replication_lag_against_max_delay() {
        let mut f = base();
        f.max_delay_ms = Some(10);
        f.metrics.insert(
            "duraplane_replication_lag_seconds{object=\"inbound_cidr\",node=\"node2\"}".into(),
            0.004,
        );
        let x = suggest(&f)
            .into_iter()
            .find(|a| a.area == "replication lag")
            .unwrap();
        assert_eq!(x.verdict, Verdict::Ok);
        assert!(x.reason.contains("largest lag 4 ms"), "{}", x.reason);
        f.metrics.insert(
            "duraplane_replication_lag_seconds{object=\"inbound_cidr\",node=\"node3\"}".into(),
            0.5,
        );
        let x = suggest(&f)
            .into_iter()
            .find(|a| a.area == "replication lag")
            .unwrap();
        assert_eq!(x.verdict, Verdict::Check);
        assert!(x.reason.contains("500 ms"), "{}", x.reason);
    }

    #[test]
    fn drops_and_slow_program_are_flagged() {
        let mut f = base();
        f.window.insert("syn".into(), 1000);
        f.window.insert("dropped".into(), 900);
        f.avg_ns = Some(2500.0);
        let a = suggest(&f);
        assert_eq!(find(&a, "netblock limits")[0].verdict, Verdict::Check);
        assert!(find(&a, "netblock limits")[0].reason.contains("90%"));
        assert_eq!(find(&a, "xdp_ingress")[0].verdict, Verdict::Check);
    }

    #[test]
    fn render_puts_changes_first() {
        let mut f = base();
        f.counters.insert("local_underflow".into(), 1);
        let out = render(&f, &suggest(&f));
        let first = out.lines().nth(1).unwrap();
        assert!(
            first.contains("[CHANGE]") && first.contains("LOCAL"),
            "{out}"
        );
        assert!(out.contains("because"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_ms("10ms"), Some(10));
        assert_eq!(parse_ms("\"1.5s\""), Some(1500));
        assert_eq!(parse_ms("250"), Some(250));
        assert_eq!(parse_ms("soon"), None);
    }
}
