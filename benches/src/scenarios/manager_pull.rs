//! Issue 6: the manager's pull — "≥ 0.9 of what the link and disk allow".
//!
//! A node publishes one stream of 4 KiB records on its 4802 log service (loopback). The
//! project's manager (`log::manager::run`, the code behind `duraplane manager`, with the
//! documented defaults `log_active_interval = 1`, `log_idle_interval = 10`) pulls it as
//! subscriber `mgrN`, writes the consolidated file and checkpoints only after its own write
//! is durable. Figure: payload bytes ÷ time from the manager's start until its durable
//! checkpoint reaches the last record.
//!
//! Same-run baseline, "what the link and disk allow": the lower of (a) a raw subscriber
//! reading the same stream over the same service without writing anything (the link) and
//! (b) sequential write + fdatasync bandwidth of the output directory's disk (B: the
//! best of plain buffered writes, writes that drop behind (see [`DROP_CHUNK`]) and
//! direct writes, the way the manager writes), taken in
//! rounds of (link, B, manager) so each pull is judged against conditions of the same
//! moment; the figures are medians over the rounds. jlog's
//! pacing (one 4 MB segment per `log_active_interval`) would cap the same pull at 4 MB/s.

use std::{
    fs::OpenOptions,
    io::Write,
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use duraplane::{
    engine::ClusterKey,
    log::{
        Stream, StreamOptions,
        manager::{self, ManagerOptions},
        service::{BatchDelivery, LogClient, MAX_WINDOW, serve_loopback},
    },
};

use super::logs::{Seq, base_dir, sequential_write};
use super::util::median;
use crate::harness::{Better, Goal, Outcome, Scenario};

pub struct ManagerPull;

const NAME: &str = "manager_pull";
const KEY: &[u8] = b"manager-bench-key-0123456789abcdef";
const RECORD: usize = 4096;
/// A pull that makes no progress for this long is a failure, not a figure.
const STALL: Duration = Duration::from_secs(30);

/// The published stream, filled with `bytes` of 4 KiB records; subscribers for the raw
/// reader, the manager and the raw reader running beside the disk writer.
fn fill(dir: &Path, bytes: u64, rounds: usize) -> Result<Stream> {
    let p = dir.join("node/mainlog.cluster");
    let s = Stream::open(
        &p,
        &StreamOptions {
            create: true,
            segment_size: Some(64 << 20),
            subscribers: (0..rounds)
                .flat_map(|i| {
                    [format!("raw{i}"), format!("mgr{i}")]
                        .into_iter()
                        .chain((0..DISK_MODES.len()).map(move |k| format!("both{i}-{k}")))
                })
                .collect(),
            ..StreamOptions::default()
        },
    )
    .with_context(|| format!("open {}", p.display()))?;
    let mut rec = vec![b'x'; RECORD];
    rec[RECORD - 1] = b'\n';
    let batch: Vec<&[u8]> = vec![&rec; 256];
    let mut written = 0u64;
    while written < bytes {
        s.append_batch(&batch)?;
        written += (batch.len() * RECORD) as u64;
    }
    Ok(s)
}

/// Unacknowledged bytes after which the raw subscriber checkpoints: a quarter of the
/// window keeps the window open without a node-side fdatasync per frame (checkpointing
/// every 768 KiB frame made the "link" a measure of the node's checkpoint fsyncs).
const RAW_CHECKPOINT_EVERY: u64 = MAX_WINDOW as u64 / 4;

/// The link: a subscriber that only reads (through the same in-place receive path as the
/// manager), checkpointing often enough to keep the window open.
fn raw_pull(addr: SocketAddr, key: &ClusterKey, end: u64, sub: &str) -> Result<f64> {
    let mut c = LogClient::connect(addr, key, "bench-raw", Duration::from_secs(5))?;
    let start = Instant::now();
    c.subscribe("mainlog", sub, MAX_WINDOW)?;
    let (mut bytes, mut last_end, mut acked) = (0u64, 0u64, 0u64);
    while last_end < end {
        match c.poll_batch(Duration::from_secs(5))? {
            Some(BatchDelivery::Records(r)) => {
                if let Some(l) = r.last() {
                    last_end = l.offset + 32 + l.payload.len() as u64;
                    bytes += r.payload_bytes();
                    if last_end - acked >= RAW_CHECKPOINT_EVERY || last_end >= end {
                        c.send_checkpoint(l.offset)?;
                        acked = last_end;
                    }
                }
                c.recycle(r);
            }
            Some(_) => {}
            None => bail!("raw pull stalled at {last_end} of {end}"),
        }
    }
    Ok(bytes as f64 / start.elapsed().as_secs_f64())
}

/// The manager's pull: bytes/s until its durable checkpoint covers the last record.
/// `name` is the manager's name, hence its subscriber on the node.
fn manager_pull(
    dir: &Path,
    addr: SocketAddr,
    key_file: &Path,
    s: &Stream,
    name: &str,
) -> Result<f64> {
    let out = dir.join(format!("consolidated-{name}"));
    let conf = dir.join(format!("eccluster-{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "Logs {{\n  logfile = \"{}/%{{l}}/%{{s}}/%{{n}}\"\n  Manager \"{name}\" {{\n  }}\n}}\nduraplane {{\n  cluster_key_file = \"{}\"\n}}\n",
            out.display(),
            key_file.display()
        ),
    )?;
    let (_, end) = s.bounds();
    let payload = end / (32 + RECORD) as u64 * RECORD as u64;
    let opts = ManagerOptions {
        config: conf,
        name: name.into(),
        nodes: vec![("bench-node".into(), addr)],
        key_file: None,
        seeds: Vec::new(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let start = Instant::now();
    let t = std::thread::spawn(move || manager::run(&opts, st));
    let mut progress = (0, Instant::now());
    let r = loop {
        let pos = s.position(name)?;
        // `position` is the first offset not consumed: the end once the last record is in.
        if pos >= end {
            break Ok(payload as f64 / start.elapsed().as_secs_f64());
        }
        if pos > progress.0 {
            progress = (pos, Instant::now());
        } else if progress.1.elapsed() > STALL || t.is_finished() {
            break Err(anyhow::anyhow!(
                "the manager stopped making progress at {pos} of {end}"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    stop.store(true, Ordering::Relaxed);
    match t.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e).context("manager"),
        Err(_) => bail!("the manager thread panicked"),
    }
    // Its output is not needed, and must not weigh on the next round's disk figures.
    let _ = std::fs::remove_dir_all(&out);
    r
}

/// Drop-behind chunk of the disk calibration: every 16 MiB written back and dropped from
/// the page cache. On this VM plain buffered writes are at times mostly the cost of
/// first-touching new page-cache pages (most of their samples in
/// `copy_folio_from_iter_atomic`), a cost a writer that drops behind does not pay.
const DROP_CHUNK: u64 = 16 << 20;

/// The ways of writing the disk is calibrated with; "what the disk allows" is the best.
const DISK_MODES: [Seq; 3] = [Seq::Plain, Seq::DropBehind(DROP_CHUNK), Seq::Direct];

impl Scenario for ManagerPull {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> &'static str {
        "duraplane manager pulling a node's cluster:// log over the 4802 log service vs what the link (raw subscriber) and disk (write + fdatasync) allow"
    }

    fn run(&self, quick: bool) -> Result<Vec<Outcome>> {
        let dir = base_dir().join(format!("duraplane-bench-mgr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let r = run_in(&dir, quick);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }
}

/// Rounds of (link, disk, manager), each measured right after the other: on a shared
/// machine the load changes from second to second, so a yardstick taken once, before
/// everything else, says little about the conditions of a later pull.
const ROUNDS: usize = 3;

fn run_in(dir: &Path, quick: bool) -> Result<Vec<Outcome>> {
    let bytes: u64 = if quick { 16 << 20 } else { 512 << 20 };
    let rounds = if quick { 1 } else { ROUNDS };
    let key_file = dir.join("cluster.key");
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&key_file)?
        .write_all(KEY)?;
    let key = ClusterKey::from_bytes(KEY).context("bench key")?;
    let s = fill(dir, bytes, rounds)?;
    let (engine, addr) = serve_loopback("bench-node", "mainlog", &s, &key)?;
    let (_, end) = s.bounds();
    let mut per_round = Vec::new();
    let mut disk_parts: Vec<[f64; 3]> = Vec::new();
    let mut both = Vec::new();
    for i in 0..rounds {
        // Both pulls read from page cache: warm it (again: it may have been reclaimed).
        for e in s.read_at(0) {
            e?;
        }
        let link = raw_pull(addr, &key, end, &format!("raw{i}"))?;
        let mut parts = [0f64; 3];
        for (r, how) in parts.iter_mut().zip(DISK_MODES) {
            *r = sequential_write(dir, bytes, how)?;
        }
        let b = parts.iter().copied().fold(0f64, f64::max);
        let mgr = manager_pull(dir, addr, &key_file, &s, &format!("mgr{i}"))?;
        per_round.push((link, b, mgr));
        disk_parts.push(parts);
        let mut round = Vec::new();
        for (k, how) in DISK_MODES.into_iter().enumerate() {
            round.push(link_beside_disk(
                dir,
                addr,
                &key,
                end,
                bytes,
                &format!("both{i}-{k}"),
                how,
            )?);
        }
        both.push(round);
    }
    engine.stop()?;
    drop(s);
    let mb = |v: f64| v / 1e6;
    let link = median(&per_round.iter().map(|r| r.0).collect::<Vec<_>>());
    let b = median(&per_round.iter().map(|r| r.1).collect::<Vec<_>>());
    let allowed = median(&per_round.iter().map(|r| r.0.min(r.1)).collect::<Vec<_>>());
    let mgr = median(&per_round.iter().map(|r| r.2).collect::<Vec<_>>());
    let which = if link <= b { "link" } else { "disk" };
    let rounds_note: Vec<String> = per_round
        .iter()
        .zip(&disk_parts)
        .map(|((l, b, m), [plain, behind, direct])| {
            format!(
                "link {:.0} / disk {:.0} (plain {:.0}, drop-behind {:.0}, direct {:.0}) / manager {:.0} ({:.2}×)",
                mb(*l),
                mb(*b),
                mb(*plain),
                mb(*behind),
                mb(*direct),
                mb(*m),
                m / l.min(*b)
            )
        })
        .collect();
    // Per round, the best way of writing while the link runs.
    let together = median(
        &both
            .iter()
            .map(|r| r.iter().map(|(l, d, _)| l.min(*d)).fold(0f64, f64::max))
            .collect::<Vec<_>>(),
    );
    let both_note: Vec<String> = both
        .iter()
        .map(|r| {
            r.iter()
                .map(|(l, d, how)| format!("link {:.0} ∥ disk {:.0} {how:?}", mb(*l), mb(*d)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    let beside = Outcome {
        scenario: NAME.into(),
        metric: "manager pull vs link and disk working at once (raw pull ∥ disk writes of the same bytes, the best of three ways of writing)".into(),
        unit: "MB/s".into(),
        value: mb(mgr),
        baseline: Some((
            "min(link, disk) while both run together, best writing mode per round, median".into(),
            mb(together),
        )),
        // The goal read as "what the link and disk allow" when the machine does
        // both at once, as the manager must; the row above keeps the reading with each
        // measured alone.
        goal: Some(Goal {
            text: "≥ 0.9 × what link and disk allow together".into(),
            threshold: 0.9,
            better: Better::Higher,
            on_ratio: true,
        }),
        notes: format!(
            "per round: [{}]; the manager receives and writes at once on the same {} CPUs, so the yardsticks measured one at a time overstate what it can reach together",
            both_note.join("; "),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
    };
    Ok(vec![Outcome {
        scenario: NAME.into(),
        metric: "manager pull of a node's log (4 KiB records, consolidated + fdatasync'd before each checkpoint)".into(),
        unit: "MB/s".into(),
        value: mb(mgr),
        baseline: Some((
            format!(
                "what the {which} allows: median of min(link, disk B) per round (medians: link {:.0}, disk B {:.0})",
                mb(link),
                mb(b)
            ),
            mb(allowed),
        )),
        goal: Some(Goal {
            text: "≥ 0.9 × min(link, disk)".into(),
            threshold: 0.9,
            better: Better::Higher,
            on_ratio: true,
        }),
        notes: format!(
            "{} MiB pulled per round, medians of {rounds} rounds [{}]; link = raw subscriber over the same loopback service and receive path, page cache, checkpointing every quarter window; B = the best of sequential 1 MiB writes + fdatasync in the output directory through the page cache (log_appends' calibration), with drop-behind every 16 MiB, and with O_DIRECT (as the manager writes whole blocks), measured between the two pulls; manager defaults (log_active_interval 1 s, log_idle_interval 10 s); jlog's pacing (one 4 MB segment per log_active_interval) would cap this at 4 MB/s",
            bytes >> 20,
            rounds_note.join("; ")
        ),
    }, beside])
}

/// Link and disk at once: the raw subscriber `sub` pulls the log while a writer writes as
/// many bytes into the output directory the way `how` says; (link, disk) rates in bytes/s.
fn link_beside_disk(
    dir: &Path,
    addr: SocketAddr,
    key: &ClusterKey,
    end: u64,
    bytes: u64,
    sub: &str,
    how: Seq,
) -> Result<(f64, f64, Seq)> {
    std::thread::scope(|sc| {
        let pull = sc.spawn(|| raw_pull(addr, key, end, sub));
        let disk = sequential_write(dir, bytes, how);
        let link = pull
            .join()
            .map_err(|_| anyhow::anyhow!("the raw pull panicked"))?;
        Ok((link?, disk?, how))
    })
}
