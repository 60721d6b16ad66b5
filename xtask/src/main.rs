//! `cargo xtask …`: Duraplane's project commands.
//!
//! xtask deliberately does not depend on the `duraplane` crate: building that crate needs the
//! eBPF toolchain, which `cargo xtask setup` is what installs.

mod ab;
mod disk;
mod profile;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Duraplane project commands: set up the machine, run the demo, run the tests.",
    long_about = "Duraplane project commands.\n\n\
        The two commands that matter on a fresh Debian machine:\n  \
        cargo xtask run    set everything up, then run the built-in demo\n  \
        cargo xtask test   set everything up, then run the whole test suite"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install (idempotently) every package, the eBPF toolchain and corosync.
    Setup(setup::SetupArgs),
    /// Set up, build, and run the main job: a demo in network namespaces on this machine.
    Run {
        #[command(flatten)]
        setup: setup::SetupArgs,
        /// Arguments passed to the demo (see `dp-demo --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run formatting and lint checks and the whole test suite.
    Test {
        #[command(flatten)]
        setup: setup::SetupArgs,
        /// Skip `cargo fmt --check` and `cargo clippy -D warnings`.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Formatting and lint checks only.
    Lint,
    /// Run the benchmark scenarios (see `duraplane-bench --help`).
    Bench {
        /// Arguments for the harness (see `duraplane-bench --help`), e.g. `--quick`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A/B-compare the bench harness built from a base revision and from the working tree.
    ///
    /// On this machine one run of a scenario swings by ±20 % from the next, so a single
    /// before/after run misleads; bench-ab runs both builds alternately (ABBA), many times, and
    /// reports per figure the medians, ranges and in how many pairs B beat A
    /// (target/ab/report.md; docs/bench-ab.md).
    BenchAb(ab::AbArgs),
    /// Profile a running node or the demo: eBPF cost and map fill, perf flame graphs, tuning
    /// advice (docs/profiling.md).
    Profile(profile::ProfileArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup(args) => setup::run(&args),
        Cmd::Run { setup: s, args } => setup::run(&s).and_then(|()| demo(&args)),
        Cmd::Test {
            setup: s,
            no_lint,
            args,
        } => setup::run(&s).and_then(|()| test(no_lint, &args)),
        Cmd::Lint => lint(),
        Cmd::Bench { args } => bench(&args),
        Cmd::BenchAb(args) => ab::run(&args),
        Cmd::Profile(args) => profile::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command in the workspace root, streaming its output; fails if it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: $ {}", shown.replace('"', ""));
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Set by `test`: its cargo runs build everything once, so incremental state is waste.
static ONE_SHOT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    if ONE_SHOT.load(std::sync::atomic::Ordering::Relaxed)
        && std::env::var_os("CARGO_INCREMENTAL").is_none()
    {
        c.env("CARGO_INCREMENTAL", "0");
    }
    c
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target"))
}

/// Integration suites whose daemons serve port 4802 (replication, logs).
/// Test binaries run a second time with `DURAPLANE_LOG_IO=io_uring` (the default, `auto`,
/// commits with blocking pwrite + fdatasync, measured faster here; io_uring stays tested).
const URING_LOG_SUITES: &[&str] = &["log_stream", "log_crash", "log_recovery", "log_disk_full"];

const MIO_SUITES: &[&str] = &[
    "replicate_cluster",
    "replicate_hostile",
    "logsvc_node",
    "logsvc_cluster",
    "logsvc_hostile",
    "engine_metrics",
];

fn lint() -> Result<()> {
    run_cmd(cargo().args(["fmt", "--all", "--check"]))?;
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

fn test(no_lint: bool, args: &[String]) -> Result<()> {
    disk::preflight(&target_dir())?;
    // A one-shot full build gains nothing from incremental state (~2 GB on disk).
    ONE_SHOT.store(true, std::sync::atomic::Ordering::Relaxed);
    run_cmd(cargo().args(["build", "--workspace", "--all-targets"]))?;
    if !no_lint {
        lint()?;
    }
    // Network-namespace tests are independent (unique names), but the machine has two cores:
    // let cargo pick the thread count.
    run_cmd(
        cargo()
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(args),
    )?;
    if args.is_empty() {
        // The engine has two backends: the daemon-level suites that use port 4802 run again
        // with the mio backend forced (the engine's own suite covers both already).
        run_cmd(
            cargo()
                .args(["test", "-p", "duraplane", "--no-fail-fast"])
                .args(MIO_SUITES.iter().flat_map(|t| ["--test", t]))
                .env("DURAPLANE_ENGINE", "mio"),
        )?;
        // The log suites again on the io_uring append path (the default is blocking).
        run_cmd(
            cargo()
                .args(["test", "-p", "duraplane", "--no-fail-fast"])
                .args(URING_LOG_SUITES.iter().flat_map(|t| ["--test", t]))
                .env("DURAPLANE_LOG_IO", "io_uring"),
        )?;
        // The bench harness's smoke test: every scenario for a few seconds, no goals judged.
        bench(&["--quick".into()])?;
    }
    Ok(())
}

fn demo(args: &[String]) -> Result<()> {
    run_cmd(cargo().args(["build", "--release", "--workspace", "--bins"]))?;
    run_cmd(
        cargo()
            .args([
                "run",
                "--release",
                "-p",
                "duraplane-tools",
                "--bin",
                "dp-demo",
                "--",
            ])
            .args(args),
    )
}

fn bench(args: &[String]) -> Result<()> {
    run_cmd(
        cargo()
            .args(["run", "--release", "-p", "duraplane-benches", "--"])
            .args(args),
    )
}
