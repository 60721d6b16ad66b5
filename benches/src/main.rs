//! `duraplane-bench`: Duraplane's bench harness (`cargo xtask bench`).
//!
//! Runs every scenario (or the named ones), prints one table — scenario, the baseline or peer
//! measured in the same run, Duraplane's figure, the ratio, the goal and whether it holds —
//! and writes the same results as JSON; `--append` adds them to BENCHMARKS.md.

mod harness;
mod scenarios;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "duraplane-bench",
    about = "Run Duraplane's benchmark scenarios and compare each with its baseline or peer."
)]
struct Cli {
    /// Short mode: every scenario for a few seconds, as a smoke test (goals are not judged).
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// Append the table to this Markdown file (e.g. BENCHMARKS.md).
    #[arg(long)]
    append: Option<PathBuf>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Scenarios to run (default: all).
    scenarios: Vec<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let all = scenarios::all();
    if cli.list {
        for s in &all {
            println!("{:<24} {}", s.name(), s.describe());
        }
        return Ok(());
    }
    for wanted in &cli.scenarios {
        if !all.iter().any(|s| s.name() == wanted) {
            bail!(
                "unknown scenario `{wanted}`; known: {}",
                all.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let info = harness::RunInfo::collect(cli.quick);
    let mut outcomes = Vec::new();
    let mut failed = Vec::new();
    for s in all
        .iter()
        .filter(|s| cli.scenarios.is_empty() || cli.scenarios.iter().any(|w| w == s.name()))
    {
        eprintln!("bench: running {} — {}", s.name(), s.describe());
        match s.run(cli.quick) {
            Ok(mut o) => outcomes.append(&mut o),
            Err(e) => {
                eprintln!("bench: {} failed: {e:#}", s.name());
                failed.push(s.name());
            }
        }
    }
    println!("{}", harness::table(&outcomes, cli.quick));
    if let Some(dir) = cli.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    harness::write_json(&cli.json, &info, &outcomes)?;
    eprintln!("bench: results written to {}", cli.json.display());
    if let Some(md) = &cli.append {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        harness::append_markdown(md, &info, &command, &outcomes)?;
        eprintln!("bench: table appended to {}", md.display());
    }
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}
