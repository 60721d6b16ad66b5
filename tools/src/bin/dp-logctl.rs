//! dp-logctl: inspect and maintain a Duraplane `cluster://` log stream (a directory), like
//! Momentum's jlogctl. Opening a stream takes its lock: run it while no daemon holds it.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use duraplane::log::{self, Entry, StartAt, Stream, StreamOptions};
use duraplane_tools::tail::{TailArgs, write_gap, write_record};

/// Inspect and maintain a cluster:// log stream directory (jlogctl for Duraplane).
#[derive(Debug, Parser)]
#[command(name = "dp-logctl", version)]
struct Args {
    /// The stream directory, e.g. /var/log/ecelerity/mainlog.cluster.
    log: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Sizes, segments and subscribers with positions and lag (jlogctl -l / -s).
    List,
    /// One subscriber's checkpoint, jlog position and lag (jlogctl -p).
    Position { subscriber: String },
    /// Add a subscriber (jlogctl -a); it starts at the oldest retained record.
    Add {
        subscriber: String,
        /// Start after the current end instead.
        #[arg(long)]
        end: bool,
    },
    /// Remove a subscriber (jlogctl -e); segments only it held back are deleted.
    Remove { subscriber: String },
    /// Check every frame of every segment and the checkpoints; exit status 1 on corruption.
    Verify,
    /// Make the log readable past damage (jlogctl -r), offline: each damaged span is
    /// wrapped as a gap that readers report and pass, every other record stays; damage too
    /// short to wrap is cut, reporting what is lost.
    Repair,
    /// Print records after a subscriber's checkpoint: `offset<TAB>timestamp_ns<TAB>text`
    /// (over the network, while a daemon holds the stream: `dp-logsub tail`).
    Tail(TailArgs),
    /// Append each TEXT as one record (durable on return); prints the offsets.
    Append {
        #[arg(required = true)]
        text: Vec<String>,
        /// Create the stream if missing, with this subscriber (repeatable).
        #[arg(long = "create-with")]
        create_with: Vec<String>,
    },
}

fn open(args: &Args, create: bool, subscribers: Vec<String>) -> Result<Stream> {
    let opts = StreamOptions {
        create,
        subscribers,
        ..Default::default()
    };
    Stream::open(&args.log, &opts).with_context(|| format!("opening {}", args.log.display()))
}

fn age(ns: Option<u64>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    match ns {
        Some(t) => format!(
            "{:.3}s",
            Duration::from_nanos(now.saturating_sub(t)).as_secs_f64()
        ),
        None => "-".into(),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut out = std::io::stdout().lock();
    match &args.cmd {
        Cmd::List => {
            let s = open(&args, false, vec![])?;
            let sum = s.summary()?;
            let st = s.stats();
            writeln!(out, "{}", sum.path.display())?;
            writeln!(
                out,
                "\tdata: {} bytes [{}..{}) in {} segment(s) of {} bytes; allocated on disk: {} bytes",
                sum.data_bytes,
                sum.start,
                sum.end,
                sum.segments,
                sum.segment_size,
                sum.allocated_bytes
            )?;
            if st.dropped_bytes > 0 {
                writeln!(out, "\tdropped (drop_oldest): {} bytes", st.dropped_bytes)?;
            }
            for sub in &sum.subscribers {
                let lag = s.lag(&sub.name)?;
                writeln!(
                    out,
                    "\tsubscriber '{}' @ {} (offset {}), lag {} bytes, oldest unconsumed age {}",
                    sub.name,
                    sub.position,
                    sub.next,
                    lag.bytes,
                    age(lag.oldest_unconsumed_ns)
                )?;
            }
        }
        Cmd::Position { subscriber } => {
            let s = open(&args, false, vec![])?;
            let lag = s.lag(subscriber)?;
            let (start, end) = s.bounds();
            writeln!(
                out,
                "subscriber '{subscriber}': next offset {} ({}), end {end}, oldest {start}, lag {} bytes, lost {} bytes, oldest unconsumed age {}",
                lag.next,
                s.jlog_position(subscriber)?,
                lag.bytes,
                lag.lost_bytes,
                age(lag.oldest_unconsumed_ns)
            )?;
        }
        Cmd::Add { subscriber, end } => {
            let s = open(&args, false, vec![])?;
            s.add_subscriber(
                subscriber,
                if *end { StartAt::End } else { StartAt::Oldest },
            )?;
            writeln!(
                out,
                "added '{subscriber}' @ {}",
                s.jlog_position(subscriber)?
            )?;
        }
        Cmd::Remove { subscriber } => {
            open(&args, false, vec![])?.remove_subscriber(subscriber)?;
            writeln!(out, "removed '{subscriber}'")?;
        }
        Cmd::Verify => {
            let r = log::verify(&args.log)?;
            writeln!(
                out,
                "{} segment(s), {} frame(s), offsets [{}..{})",
                r.segments, r.frames, r.start, r.end
            )?;
            if let Some(t) = &r.torn_tail {
                writeln!(
                    out,
                    "torn tail at offset {} in {} ({}): never acknowledged, cut on next open",
                    t.offset,
                    t.path.display(),
                    t.reason
                )?;
            }
            for p in &r.problems {
                writeln!(
                    out,
                    "CORRUPT {} at offset {}: {}",
                    p.path.display(),
                    p.offset,
                    p.reason
                )?;
            }
            if !r.is_ok() {
                bail!(
                    "{} problem(s); `dp-logctl {} repair` turns each damaged span into a gap readers pass",
                    r.problems.len(),
                    args.log.display()
                );
            }
            writeln!(out, "ok")?;
        }
        Cmd::Repair => {
            let r = log::repair(&args.log)?;
            if r.nothing_done() {
                writeln!(out, "nothing to repair")?;
            }
            for k in &r.skipped {
                writeln!(
                    out,
                    "skipped offsets {}..{} ({}) in {}: readers see a gap there; the records around it stay",
                    k.from,
                    k.to,
                    k.reason,
                    k.path.display()
                )?;
            }
            if let Some(at) = r.cut_at {
                writeln!(
                    out,
                    "cut at offset {at} ({}): lost {} bytes, {} valid frame(s) after the damage",
                    r.reason.as_deref().unwrap_or("?"),
                    r.lost_bytes,
                    r.lost_frames
                )?;
                for p in &r.removed_segments {
                    writeln!(out, "removed segment {}", p.display())?;
                }
                for s in &r.clamped_subscribers {
                    writeln!(out, "subscriber '{s}' moved back to offset {at}")?;
                }
            }
        }
        Cmd::Tail(t) => {
            let s = open(&args, false, vec![])?;
            let mut reader = s.read_from(&t.subscriber)?;
            let mut n = 0u64;
            loop {
                for e in reader.by_ref() {
                    match e? {
                        Entry::Record(r) => {
                            write_record(&mut out, r.offset, r.timestamp_ns, &r.payload)?;
                            out.flush()?;
                            if t.checkpoint {
                                s.checkpoint(&t.subscriber, r.offset)?;
                            }
                            n += 1;
                        }
                        Entry::Gap { from, to } => write_gap(&mut out, from, to)?,
                    }
                    if t.done(n) {
                        return Ok(());
                    }
                }
                if !t.follow {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Cmd::Append { text, create_with } => {
            let s = open(&args, !create_with.is_empty(), create_with.clone())?;
            for off in s.append_batch(text)? {
                writeln!(out, "{off}")?;
            }
        }
    }
    Ok(())
}
