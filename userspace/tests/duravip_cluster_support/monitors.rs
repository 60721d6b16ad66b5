//! Every address change in every node, recorded by `ip -ts -o monitor address` (one per
//! node), so no short-lived plumbing of a VIP is missed between samples: what the "at most
//! one owner at every moment" tests assert on; and the daemons' log lines that explain
//! those changes, for their failure messages. A submodule of `duravip_cluster_support`;
//! tests that build their cluster on `cluster_support` alone include this file through
//! `#[path]`. Either includer has the testbed's `Cluster` in scope, hence `super::Cluster`.
// Each includer uses a part (not every one reads every field of `Event`).
#![allow(dead_code)]

use std::time::Duration;

use duraplane::testbed::{ProcessGuard, Stream, daemons::DaemonNode};

use super::Cluster;

/// One VIP added or removed on a node, as `ip monitor` saw it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Event {
    /// `ip -ts` wall-clock stamp (ISO 8601, sorts as text).
    pub at: String,
    /// Index (0-based) of the node.
    pub node: usize,
    pub vip: String,
    /// Plumbed (`true`) or removed.
    pub added: bool,
}

/// `ip -ts -o monitor address` in every node of the cluster, stopped on drop.
pub struct Monitors(Vec<ProcessGuard>);

impl Monitors {
    pub fn start(c: &Cluster) -> Monitors {
        let m = (0..c.len())
            .map(|i| {
                c.tb.spawn(&c.host(i), &["ip", "-ts", "-o", "monitor", "address"])
                    .expect("ip monitor")
            })
            .collect();
        // Let every monitor subscribe (set-up only; a late one could miss events, never
        // invent them).
        std::thread::sleep(Duration::from_millis(300));
        Monitors(m)
    }

    /// Changes of the addresses in `vips` so far, in time order.
    pub fn events(&self, vips: &[&str]) -> Vec<Event> {
        let mut out = Vec::new();
        for (node, p) in self.0.iter().enumerate() {
            for l in p.lines(Stream::Stdout) {
                let Some((at, rest)) = l.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
                    continue;
                };
                let added = !rest.starts_with("Deleted ");
                let mut w = rest.split_whitespace();
                if !w.any(|x| x == "inet" || x == "inet6") {
                    continue;
                }
                let Some(addr) = w.next().and_then(|a| a.split('/').next()) else {
                    continue;
                };
                if vips.contains(&addr) {
                    out.push(Event {
                        at: at.to_owned(),
                        node,
                        vip: addr.to_owned(),
                        added,
                    });
                }
            }
        }
        out.sort();
        out
    }
}

/// The last `tail` DuraVIP, view and quorum lines of each daemon's log, under a
/// `--- nodeN ---` heading per node.
pub fn decision_logs(nodes: &[DaemonNode], tail: usize) -> String {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let l = n.log();
            let lines: Vec<&str> = l
                .lines()
                .filter(|l| l.contains("DuraVIP") || l.contains("view") || l.contains("quorum"))
                .collect();
            format!(
                "--- node{} ---\n{}",
                i + 1,
                lines[lines.len().saturating_sub(tail)..].join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
