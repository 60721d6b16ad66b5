//! `cargo xtask profile …`: where Duraplane spends its time and what to tune (docs/profiling.md).
//!
//! Works against the README's demo (`--demo`: every `/tmp/duraplane-demo-*/node*/node*.sock`) or
//! one daemon (`--socket PATH`); eBPF figures also without either (programs are global).

pub mod bpf;
pub mod kernel;
pub mod load;
pub mod node;
pub mod perf;
pub mod tune;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
};

use anyhow::{Result, bail};
use caps::{CapSet, Capability};

use kernel::StatsMethod;

const BPF_PRIVILEGES: &str = "Privileges: root, or CAP_SYS_ADMIN (listing every BPF program and \
    map and switching run-time statistics on need it; CAP_BPF alone is not enough). Reading a \
    daemon's control socket needs root or membership of the socket's group; reading its metrics \
    enters its network namespace (CAP_SYS_ADMIN).";

#[derive(clap::Args, Debug)]
pub struct ProfileArgs {
    #[command(subcommand)]
    cmd: ProfileCmd,
}

/// Which daemons to read (none: eBPF figures only).
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// One daemon, by its control socket.
    #[arg(long, value_name = "PATH", conflicts_with = "demo")]
    socket: Option<PathBuf>,
    /// Every node of the running demo (`cargo xtask run`): /tmp/duraplane-demo-*/node*/node*.sock.
    #[arg(long)]
    demo: bool,
}

#[derive(clap::Subcommand, Debug)]
enum ProfileCmd {
    /// eBPF: runs and ns per run of each program, verifier instruction counts, map fill,
    /// insert failures and evictions.
    #[command(after_help = BPF_PRIVILEGES)]
    Bpf {
        #[command(flatten)]
        target: Target,
        /// Measurement window (run-time statistics are on only for this long).
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// How statistics are switched on: `fd` (BPF_ENABLE_STATS; the kernel switches them
        /// off when we exit, however we exit) or `sysctl` (kernel.bpf_stats_enabled, restored
        /// afterwards, also on error and Ctrl-C).
        #[arg(long, value_enum, default_value_t = StatsMethod::Fd)]
        stats_method: StatsMethod,
    },
    /// Userspace: perf record of the daemon → flame graph (SVG), CPU per thread, engine and
    /// pipeline counters.
    Perf(perf::PerfArgs),
    /// Read a node's figures and say what to change (map sizes, replication, log segments,
    /// corosync token, io_uring), each with its reason.
    #[command(after_help = BPF_PRIVILEGES)]
    Tune {
        #[command(flatten)]
        target: Target,
        /// Observation window.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// See `profile bpf --help`.
        #[arg(long, value_enum, default_value_t = StatsMethod::Fd)]
        stats_method: StatsMethod,
    },
}

/// Fails with what is missing and how to get it, before anything is touched.
fn require_bpf_privileges() -> Result<()> {
    let has = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    if !has(Capability::CAP_SYS_ADMIN) {
        bail!(
            "this command needs root or CAP_SYS_ADMIN (effective); run it with sudo.\n{BPF_PRIVILEGES}"
        );
    }
    Ok(())
}

/// Set by SIGINT/SIGTERM so that measurements stop and restore what they changed.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

pub fn run(args: &ProfileArgs) -> Result<()> {
    let stop = stop_flag()?;
    match &args.cmd {
        ProfileCmd::Bpf {
            target,
            seconds,
            stats_method,
        } => {
            require_bpf_privileges()?;
            let nodes = node::resolve(target.socket.as_deref(), target.demo)?;
            let r = bpf::measure(&nodes, *seconds, *stats_method, &stop)?;
            print!("{}", bpf::render(&r));
            Ok(())
        }
        ProfileCmd::Perf(a) => perf::run(a, &stop),
        ProfileCmd::Tune {
            target,
            seconds,
            stats_method,
        } => {
            require_bpf_privileges()?;
            if target.socket.is_none() && !target.demo {
                bail!("give --socket PATH or --demo: tuning reads the daemon's counters");
            }
            let nodes = node::resolve(target.socket.as_deref(), target.demo)?;
            tune::run(&nodes, *seconds, *stats_method, &stop)
        }
    }
}
