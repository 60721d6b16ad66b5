//! `vip_scale` (issue 5, "4,096 VIPs handled"): what a node pays to own 4,096 DuraVIPs.
//!
//! - Takeover: from nothing plumbed to every VIP plumbed (rtnetlink, tagged, one round
//!   trip each), in `xdp_ingress`'s VIP table, and announced once (unsolicited NA as XDP
//!   live frames, AF_PACKET fallback), paced like the daemon ([`PACE_VIPS`] per [`PACE`]),
//!   on a veth in a test namespace whose peer runs in another. Release (unplumb + table
//!   removal) is timed too.
//! - Assignment: one `assign` of 4,096 VIPs declared by three nodes, fresh (nothing owned)
//!   and steady (current owners given): the daemon computes it on every loop turn.
//!
//! `--quick` uses 256 VIPs and one trial.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use duraplane::{
    bpf::{AnnounceMethod, Datapath, DatapathConfig, XdpMode},
    config::model::{Cidr, Topology},
    duravip::{
        announce::{PACE, PACE_VIPS, Scheduler, Targets, frames},
        assign::{AssignInput, MemberDecls, VipDecl, assign},
        plumb::{Plumber, Reconciler, Trigger},
    },
    testbed::Testbed,
};

use super::util::median;
use crate::harness::{Better, Goal, Outcome, Scenario};

pub struct VipScale;

const NAME: &str = "vip_scale";

fn vips(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|k| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 1, k as u16)))
        .collect()
}

/// (takeover ms, release ms, method) per trial, measured inside the "vip" namespace.
fn takeover(n: usize, trials: usize) -> Result<Vec<(f64, f64, AnnounceMethod)>> {
    let mut tb = Testbed::new()?;
    tb.add_host("vip")?;
    tb.add_host("peer")?;
    let pair = tb.veth_pair(
        "vip",
        "peer",
        &["192.0.2.1/24", "2001:db8:1::1/64"],
        &["192.0.2.2/24", "2001:db8:1::2/64"],
    )?;
    tb.enable_gro("peer", &pair.b_if)?;
    let a_if = pair.a_if.clone();
    let all = vips(n);
    tb.run_in("vip", move || -> Result<Vec<(f64, f64, AnnounceMethod)>> {
        let topology = vec![Topology {
            network: Cidr {
                addr: "2001:db8:1::".parse()?,
                prefix: 64,
            },
            cidrmask: 128,
            interface: a_if.clone(),
        }];
        let mut p = Plumber::new()?;
        let link = p.link(&a_if)?.context("veth missing")?;
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&link.mac);
        let mut dp = Datapath::load(&DatapathConfig::default())?;
        dp.attach(&a_if, XdpMode::Generic)?;
        dp.renew_lease(Duration::from_secs(600))?;
        let desired: BTreeSet<IpAddr> = all.iter().copied().collect();
        let mut rec = Reconciler::new(1);
        let mut out = Vec::new();
        for _ in 0..trials {
            let t0 = Instant::now();
            let r = rec.reconcile(&mut p, &desired, &topology, Trigger::Election)?;
            if r.added.len() != all.len() {
                return Err(anyhow!(
                    "plumbed {} of {}: {:?}",
                    r.added.len(),
                    all.len(),
                    r.refused.first()
                ));
            }
            for a in &all {
                dp.set_vip_on(*a, mac, Some(link.index))?;
            }
            let mut sched = Scheduler::new(None);
            for a in &all {
                sched.start(*a, t0);
            }
            let mut method = AnnounceMethod::LiveFrames;
            loop {
                let now = Instant::now();
                let due = sched.due_at_most(now.max(t0), PACE_VIPS);
                if due.is_empty() {
                    break;
                }
                for a in &due {
                    let fs = frames(mac, *a, &Targets::Broadcast);
                    method = dp.announce(link.index, &fs, 1)?;
                }
                if due.len() == PACE_VIPS && sched.next_deadline().is_some_and(|d| d <= t0) {
                    std::thread::sleep(PACE);
                }
            }
            let took = t0.elapsed();
            let t1 = Instant::now();
            let r = rec.reconcile(&mut p, &BTreeSet::new(), &topology, Trigger::Election)?;
            for a in &all {
                dp.remove_vip(*a)?;
            }
            let released = t1.elapsed();
            if r.removed.len() != all.len() {
                return Err(anyhow!("released {} of {}", r.removed.len(), all.len()));
            }
            out.push((
                took.as_secs_f64() * 1e3,
                released.as_secs_f64() * 1e3,
                method,
            ));
        }
        Ok(out)
    })?
}

/// Median ms of `assign` for `n` VIPs on three nodes: (fresh, steady).
fn assignment(n: usize, runs: usize) -> (f64, f64) {
    let decls: Vec<VipDecl> = vips(n)
        .into_iter()
        .enumerate()
        .map(|(k, addr)| VipDecl {
            addr,
            bindings: BTreeSet::from([format!("vip{k}")]),
            services: BTreeSet::from(["Binding".to_owned()]),
            preference: None,
            follow: None,
        })
        .collect();
    let members: Vec<MemberDecls> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| MemberDecls {
            nodename: (*n).to_owned(),
            vips: decls.clone(),
        })
        .collect();
    let mut input = AssignInput {
        members,
        current: BTreeMap::new(),
        mature: true,
        balance_moves: 0,
        quorate: true,
    };
    let mut fresh = Vec::new();
    let mut a = None;
    for _ in 0..runs {
        let t = Instant::now();
        a = Some(assign(&input));
        fresh.push(t.elapsed().as_secs_f64() * 1e3);
    }
    input.current = a.map(|a| a.owners).unwrap_or_default();
    let mut steady = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let _ = assign(&input);
        steady.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (median(&fresh), median(&steady))
}

impl Scenario for VipScale {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> &'static str {
        "4,096 DuraVIPs: takeover (plumb + NIC table + first paced announcement) and assignment time"
    }

    fn run(&self, quick: bool) -> Result<Vec<Outcome>> {
        let (n, trials, runs) = if quick { (256, 1, 3) } else { (4096, 5, 20) };
        let t = takeover(n, trials)?;
        let mut take: Vec<f64> = t.iter().map(|x| x.0).collect();
        let rel: Vec<f64> = t.iter().map(|x| x.1).collect();
        let method = t.last().map_or("none", |x| x.2.name());
        take.sort_by(f64::total_cmp);
        let (fresh, steady) = assignment(n, runs);
        let pacing_floor =
            (n.div_ceil(PACE_VIPS).saturating_sub(1)) as f64 * PACE.as_secs_f64() * 1e3;
        let goal = |text: &str, threshold: f64| {
            (!quick).then(|| Goal {
                text: text.into(),
                threshold,
                better: Better::Lower,
                on_ratio: false,
            })
        };
        Ok(vec![
            Outcome {
                scenario: NAME.into(),
                metric: format!("take over {n} VIPs (plumb + VIPS + first announcement), median"),
                unit: "ms".into(),
                value: median(&take),
                baseline: None,
                goal: goal("4,096 VIPs taken over within 1 s", 1000.0),
                notes: format!(
                    "{trials} trials, min {:.1} max {:.1} ms; pacing {PACE_VIPS} VIPs per {} ms contributes ≥ {pacing_floor:.0} ms; announced with {method}; release (unplumb + VIPS removal) median {:.1} ms",
                    take.first().copied().unwrap_or(0.0),
                    take.last().copied().unwrap_or(0.0),
                    PACE.as_millis(),
                    median(&rel)
                ),
            },
            Outcome {
                scenario: NAME.into(),
                metric: format!("assign {n} VIPs on 3 nodes, fresh, median"),
                unit: "ms".into(),
                value: fresh,
                baseline: None,
                goal: None,
                notes: format!("{runs} runs"),
            },
            Outcome {
                scenario: NAME.into(),
                metric: format!("assign {n} VIPs on 3 nodes, steady (owners known), median"),
                unit: "ms".into(),
                value: steady,
                baseline: None,
                goal: goal("≤ 20 ms (one daemon loop tick)", 20.0),
                notes: format!("{runs} runs; computed on every DuraVIP loop turn (20 ms tick)"),
            },
        ])
    }
}
