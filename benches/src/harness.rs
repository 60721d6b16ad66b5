//! The harness: runs scenarios, prints one table, writes JSON, appends to BENCHMARKS.md.
//!
//! Every scenario measures Duraplane *and* its baseline or peer in the same run, so a figure
//! is always read next to what the same machine does without us (or with a peer) right now.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context, Result};
use serde::Serialize;

/// Whether a larger or a smaller figure is better; decides how the goal is checked.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// A goal from an issue: "≤ 5 ns added", "≥ 5 Mpps", "≥ 5× nftables".
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// Human text, as the issue states it.
    pub text: String,
    /// The threshold applied to `Outcome::value` (or to the ratio when `on_ratio`).
    pub threshold: f64,
    pub better: Better,
    /// Check the ratio ours/baseline instead of the raw value.
    pub on_ratio: bool,
}

/// One measured line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: String,
    /// What was measured, e.g. "ns added per non-SYN packet".
    pub metric: String,
    pub unit: String,
    /// Duraplane's figure.
    pub value: f64,
    /// The baseline or peer measured in the same run, with its name.
    pub baseline: Option<(String, f64)>,
    pub goal: Option<Goal>,
    /// Extra facts worth keeping (percentiles, packet counts, settings).
    pub notes: String,
}

impl Outcome {
    pub fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .filter(|(_, b)| *b != 0.0)
            .map(|(_, b)| self.value / b)
    }

    /// `None` when the scenario states no goal.
    pub fn goal_holds(&self) -> Option<bool> {
        let g = self.goal.as_ref()?;
        let v = if g.on_ratio {
            self.ratio()?
        } else {
            self.value
        };
        Some(match g.better {
            Better::Higher => v >= g.threshold,
            Better::Lower => v <= g.threshold,
        })
    }
}

/// A benchmark scenario.
pub trait Scenario {
    /// Short stable name used on the command line.
    fn name(&self) -> &'static str;
    /// One line: what it measures and against what.
    fn describe(&self) -> &'static str;
    /// Runs it; `quick` bounds it to a smoke test of a few seconds (no goal is judged then).
    fn run(&self, quick: bool) -> Result<Vec<Outcome>>;
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The table as Markdown (also readable on a terminal).
pub fn table(outcomes: &[Outcome], quick: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| scenario | metric | baseline / peer (same run) | Duraplane | ratio | goal | holds |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for o in outcomes {
        let base = o
            .baseline
            .as_ref()
            .map(|(n, v)| format!("{n}: {} {}", fmt_num(*v), o.unit))
            .unwrap_or_else(|| "—".into());
        let ratio = o
            .ratio()
            .map(|r| format!("{r:.2}×"))
            .unwrap_or_else(|| "—".into());
        let goal = o
            .goal
            .as_ref()
            .map(|g| g.text.clone())
            .unwrap_or_else(|| "—".into());
        let holds = if quick {
            "(quick: not judged)".to_owned()
        } else {
            match o.goal_holds() {
                Some(true) => "yes".into(),
                Some(false) => "**no**".into(),
                None => "—".into(),
            }
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} {} | {} | {} | {} |",
            o.scenario,
            o.metric,
            base,
            fmt_num(o.value),
            o.unit,
            ratio,
            goal,
            holds
        );
    }
    s
}

/// Facts about where and when the run happened.
#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub date_utc: String,
    pub commit: String,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub quick: bool,
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl RunInfo {
    pub fn collect(quick: bool) -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        RunInfo {
            date_utc: sh("date", &["-u", "+%Y-%m-%d %H:%M:%S"]),
            commit: sh("git", &["rev-parse", "--short", "HEAD"]),
            kernel: sh("uname", &["-r"]),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            quick,
        }
    }
}

/// Writes `{ run, outcomes }` as pretty JSON.
pub fn write_json(path: &Path, info: &RunInfo, outcomes: &[Outcome]) -> Result<()> {
    #[derive(Serialize)]
    struct Doc<'a> {
        run: &'a RunInfo,
        outcomes: &'a [Outcome],
    }
    let text = serde_json::to_string_pretty(&Doc {
        run: info,
        outcomes,
    })?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Appends a dated section with the command and the table to BENCHMARKS.md.
pub fn append_markdown(
    path: &Path,
    info: &RunInfo,
    command: &str,
    outcomes: &[Outcome],
) -> Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## {} — commit {}\n\nCommand: `{}`  \nMachine: {} × {}, kernel {}{}\n",
        info.date_utc,
        info.commit,
        command,
        info.cpus,
        info.cpu_model,
        info.kernel,
        if info.quick {
            " (quick mode: smoke test, not a measurement)"
        } else {
            ""
        }
    );
    s.push_str(&table(outcomes, info.quick));
    let notes: Vec<_> = outcomes
        .iter()
        .filter(|o| !o.notes.is_empty())
        .map(|o| format!("- {} / {}: {}", o.scenario, o.metric, o.notes))
        .collect();
    if !notes.is_empty() {
        s.push_str("\nNotes:\n");
        for n in notes {
            let _ = writeln!(s, "{n}");
        }
    }
    f.write_all(s.as_bytes())
        .with_context(|| format!("cannot append to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(value: f64, base: Option<f64>, goal: Option<Goal>) -> Outcome {
        Outcome {
            scenario: "s".into(),
            metric: "m".into(),
            unit: "ns".into(),
            value,
            baseline: base.map(|b| ("empty".into(), b)),
            goal,
            notes: String::new(),
        }
    }

    #[test]
    fn goals_are_judged_in_the_right_direction() {
        let lower = |t| Goal {
            text: "≤ t".into(),
            threshold: t,
            better: Better::Lower,
            on_ratio: false,
        };
        assert_eq!(
            outcome(4.0, None, Some(lower(5.0))).goal_holds(),
            Some(true)
        );
        assert_eq!(
            outcome(6.0, None, Some(lower(5.0))).goal_holds(),
            Some(false)
        );
        let ratio = Goal {
            text: "≥ 5×".into(),
            threshold: 5.0,
            better: Better::Higher,
            on_ratio: true,
        };
        assert_eq!(
            outcome(50.0, Some(10.0), Some(ratio.clone())).goal_holds(),
            Some(true)
        );
        assert_eq!(
            outcome(40.0, Some(10.0), Some(ratio.clone())).goal_holds(),
            Some(false)
        );
        assert_eq!(outcome(40.0, None, Some(ratio)).goal_holds(), None);
        assert_eq!(outcome(1.0, None, None).goal_holds(), None);
    }

    #[test]
    fn table_has_one_row_per_outcome_and_marks_quick_runs() {
        let rows = vec![outcome(1.0, Some(2.0), None), outcome(3.0, None, None)];
        let t = table(&rows, true);
        assert_eq!(t.lines().count(), 4);
        assert!(t.contains("0.50×"));
        let full = table(&rows, false);
        assert!(!full.contains("quick"));
    }
}
