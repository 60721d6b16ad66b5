//! `dp-logsub`: a subscriber of a node's `cluster://` logs over the network, through the
//! log service on the node's ECCluster_Listener (port 4802). It lists the published logs
//! and the members, and tails or replays a log as a named subscriber, checkpointing what
//! it printed. The local form (a stream directory on this host) is `dp-logctl LOG tail`.

use std::{
    io::Write,
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use duraplane::{
    engine::ClusterKey,
    log::service::{BatchDelivery, LogClient},
};
use duraplane_tools::tail::{TailArgs, write_gap, write_record};

/// Subscribe to a node's cluster:// logs over the network (port 4802 log service).
#[derive(Debug, Parser)]
#[command(name = "dp-logsub", version)]
struct Args {
    /// The node's ECCluster_Listener address.
    #[arg(long, default_value = "127.0.0.1:4802")]
    node: String,
    /// The cluster key file (the daemons' `cluster_key_file`).
    #[arg(long, default_value = "/etc/duraplane/cluster.key")]
    key: PathBuf,
    /// Name this client authenticates with.
    #[arg(long, default_value = "dp-logsub")]
    name: String,
    /// Seconds to wait for the node (connect, answers, checkpoint confirmations).
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The logs the node publishes (its `logs` dictionary).
    List,
    /// The cluster members the node sees: nodename and ECCluster_Listener address.
    Members,
    /// Print the records after SUBSCRIBER's checkpoint, `offset<TAB>timestamp_ns<TAB>text`,
    /// until caught up (or forever with --follow). The subscriber must exist on the node's
    /// stream (`dp-logctl LOG add NAME` there, or the logger's `=>NAME`).
    Tail {
        /// The log's name in the node's `logs` dictionary (e.g. mainlog).
        log: String,
        #[command(flatten)]
        t: TailArgs,
    },
}

fn resolve(node: &str) -> Result<SocketAddr> {
    node.to_socket_addrs()
        .with_context(|| format!("resolving --node {node}"))?
        .next()
        .with_context(|| format!("--node {node}: no address"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let addr = resolve(&args.node)?;
    // The error names the file and how to create it.
    let key = ClusterKey::load(&args.key)?;
    let mut c = LogClient::connect(addr, &key, &args.name, timeout)
        .with_context(|| format!("connecting to the log service at {addr}"))?;
    let mut out = std::io::stdout().lock();
    match &args.cmd {
        Cmd::List => {
            for l in c.list()? {
                writeln!(out, "{l}")?;
            }
        }
        Cmd::Members => {
            for (name, listener) in c.members()? {
                writeln!(out, "{name}\t{listener}")?;
            }
        }
        Cmd::Tail { log, t } => {
            let subscriber = &t.subscriber;
            let next = c.subscribe(log, subscriber, 0)?;
            eprintln!("dp-logsub: {log} at {addr} as '{subscriber}', from offset {next}");
            let mut printed = 0u64;
            let mut last = None;
            let mut quiet_since = Instant::now();
            while !t.done(printed) {
                let Some(d) = c.poll_batch(Duration::from_millis(500))? else {
                    // Not following: nothing for `timeout` means caught up (the node
                    // flags the last frame it had, but records held back while waiting
                    // for a checkpoint confirmation lose that flag).
                    if !t.follow && quiet_since.elapsed() >= timeout {
                        break;
                    }
                    continue;
                };
                quiet_since = Instant::now();
                let caught_up = match d {
                    BatchDelivery::Records(b) => {
                        for r in b.iter() {
                            if t.done(printed) {
                                break;
                            }
                            write_record(&mut out, r.offset, r.timestamp_ns, r.payload)?;
                            last = Some(r.offset);
                            printed += 1;
                        }
                        b.caught_up()
                    }
                    BatchDelivery::Gap { from, to } => {
                        write_gap(&mut out, from, to)?;
                        false
                    }
                    BatchDelivery::Checkpointed { .. } => false,
                };
                out.flush()?;
                if t.checkpoint
                    && let Some(off) = last.take()
                {
                    c.checkpoint(off, timeout)
                        .with_context(|| format!("checkpointing offset {off}"))?;
                }
                if caught_up && !t.follow {
                    break;
                }
            }
            eprintln!("dp-logsub: {printed} records");
        }
    }
    Ok(())
}
