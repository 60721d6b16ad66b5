//! `vip_scale` (issue 5, "4,096 VIPs handled"): what a node pays to own 4,096 DuraVIPs.
//!
//! - Takeover: from nothing plumbed to every VIP plumbed (rtnetlink, tagged, pipelined
//!   batches), in `xdp_ingress`'s VIP table, and announced once (unsolicited NA as XDP
//!   live frames, AF_PACKET fallback), paced like the daemon ([`PACE_VIPS`] per [`PACE`]),
//!   on a veth in a test namespace whose peer runs in another; again announcing with a
//!   kept-open AF_PACKET socket (the daemon's path on generic-mode attachments); and for
//!   the 768 IPv4 addresses of the documentation ranges. Release (unplumb + table removal)
//!   is timed too, and the plumbing alone (one `reconcile`) separately: for IPv6 it is
//!   the kernel's O(n²) (every `RTM_NEWADDR` walks all the interface's multicast groups,
//!   one solicited-node group per VIP; docs/duravip.md, "Plumbing cost").
//! - Assignment: one `assign` of 4,096 VIPs declared by three nodes, fresh (nothing owned)
//!   and steady (current owners given): the daemon computes it on every loop turn.
//!
//! `--quick` uses 256 VIPs (of each family) and one trial.

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
        announce::{PACE, PACE_VIPS, PacketSocket, Scheduler, Targets, frames},
        assign::{AssignInput, MemberDecls, VipDecl, assign},
        plumb::{Plumber, Reconciler, Trigger},
    },
    testbed::Testbed,
};

use super::util::median;
use crate::harness::{Outcome, Scenario};

pub struct VipScale;

const NAME: &str = "vip_scale";

/// `n` IPv6 VIPs in 2001:db8:1::1:0/116.
fn vips(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|k| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 1, k as u16)))
        .collect()
}

/// `n` IPv6 VIPs in 2001:db8:1::/64 whose low 24 bits are all `00:0001`
/// (2001:db8:1:0:0:K:0:1): they share one solicited-node multicast group, so the kernel
/// joins one group for all of them instead of one per VIP.
fn vips_one_group(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|k| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, k as u16 + 1, 0, 1)))
        .collect()
}

/// One trial's times in ms, measured inside the "vip" namespace.
struct Trial {
    takeover: f64,
    /// The `reconcile` that plumbs, alone (part of `takeover`).
    plumb: f64,
    release: f64,
    method: AnnounceMethod,
}

/// Per trial, measured inside the "vip" namespace.
/// `packet`: announce with AF_PACKET (as the daemon does on generic-mode attachments)
/// instead of live frames (native attachments; here the veth peer runs NAPI, so they arrive).
/// Pause between a release and the next takeover. Removed IPv6 addresses leave their
/// solicited-node groups in the interface's MLD "tomb" until the change reports have been
/// retransmitted (about 2 s), and while it is full every new address makes the kernel walk
/// it once per group: 4,096 IPv6 adds (`ip -batch`, distinct groups) take 4.4 s on a fresh
/// veth, 78 s right after deleting the same 4,096, 5.1 s five seconds later. Back-to-back
/// trials measured that flap case (the 77–80 s medians of earlier runs); a failover takes
/// over addresses the node did not just release.
const MLD_SETTLE: Duration = Duration::from_secs(5);

fn takeover(all: Vec<IpAddr>, trials: usize, packet: bool) -> Result<Vec<Trial>> {
    let mut tb = Testbed::new()?;
    tb.add_host("vip")?;
    tb.add_host("peer")?;
    let pair = tb.veth_pair("vip", "peer", &["2001:db8:1::1/64"], &["2001:db8:1::2/64"])?;
    tb.enable_gro("peer", &pair.b_if)?;
    let a_if = pair.a_if.clone();
    tb.run_in("vip", move || -> Result<Vec<Trial>> {
        let mut topology = vec![Topology {
            network: Cidr {
                addr: "2001:db8:1::".parse()?,
                prefix: 64,
            },
            cidrmask: 128,
            interface: a_if.clone(),
        }];
        for net in ["192.0.2.0", "198.51.100.0", "203.0.113.0"] {
            topology.push(Topology {
                network: Cidr {
                    addr: net.parse()?,
                    prefix: 24,
                },
                cidrmask: 32,
                interface: a_if.clone(),
            });
        }
        let mut p = Plumber::new()?;
        let link = p.link(&a_if)?.context("veth missing")?;
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&link.mac);
        let mut dp = Datapath::load(&DatapathConfig::default())?;
        dp.attach(&a_if, XdpMode::Generic)?;
        dp.renew_lease(Duration::from_secs(600))?;
        // The daemon's AF_PACKET path: one socket per interface, kept open (closing a packet
        // socket waits for an RCU grace period, tens of ms).
        let sock = if packet {
            Some(PacketSocket::open(link.index, 0)?)
        } else {
            None
        };
        let desired: BTreeSet<IpAddr> = all.iter().copied().collect();
        let mut rec = Reconciler::new(1);
        let mut out = Vec::new();
        for trial in 0..trials {
            if trial > 0 {
                // Let the previous release's MLD state clear (see MLD_SETTLE).
                std::thread::sleep(MLD_SETTLE);
            }
            let t0 = Instant::now();
            let r = rec.reconcile(&mut p, &desired, &topology, Trigger::Election)?;
            let plumb = t0.elapsed();
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
                    match &sock {
                        Some(s) => {
                            for f in &fs {
                                s.send(f)?;
                            }
                            method = AnnounceMethod::Packet;
                        }
                        None => method = dp.announce(link.index, &fs, 1)?,
                    }
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
            out.push(Trial {
                takeover: took.as_secs_f64() * 1e3,
                plumb: plumb.as_secs_f64() * 1e3,
                release: released.as_secs_f64() * 1e3,
                method,
            });
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
        let t = takeover(vips(n), trials, false)?;
        let mut take: Vec<f64> = t.iter().map(|x| x.takeover).collect();
        let mut plumb: Vec<f64> = t.iter().map(|x| x.plumb).collect();
        let mut rel: Vec<f64> = t.iter().map(|x| x.release).collect();
        let method = t.last().map_or("none", |x| x.method.name());
        take.sort_by(f64::total_cmp);
        plumb.sort_by(f64::total_cmp);
        rel.sort_by(f64::total_cmp);
        let p = takeover(vips(n), trials, true)?;
        let g = takeover(vips_one_group(n), trials, false)?;
        let mut take_g: Vec<f64> = g.iter().map(|x| x.takeover).collect();
        take_g.sort_by(f64::total_cmp);
        let rel_g: Vec<f64> = g.iter().map(|x| x.release).collect();
        // IPv4: every address of the three documentation /24s (768), the most a test may use.
        let n4 = if quick { 256 } else { 768 };
        let v4: Vec<IpAddr> = ["192.0.2", "198.51.100", "203.0.113"]
            .iter()
            .flat_map(|net| (0..=255u8).map(move |k| format!("{net}.{k}")))
            .take(n4)
            .filter_map(|a| a.parse().ok())
            .collect();
        let t4 = takeover(v4, trials, false)?;
        let take4: Vec<f64> = t4.iter().map(|x| x.takeover).collect();
        let rel4: Vec<f64> = t4.iter().map(|x| x.release).collect();
        let mut take_p: Vec<f64> = p.iter().map(|x| x.takeover).collect();
        take_p.sort_by(f64::total_cmp);
        let (fresh, steady) = assignment(n, runs);
        let pacing_floor =
            (n.div_ceil(PACE_VIPS).saturating_sub(1)) as f64 * PACE.as_secs_f64() * 1e3;
        Ok(vec![
            Outcome {
                scenario: NAME.into(),
                metric: format!(
                    "take over {n} VIPs (plumb + VIPS + first announcement, live frames), median"
                ),
                unit: "ms".into(),
                value: median(&take),
                baseline: None,
                goal: None,
                notes: format!(
                    "{trials} trials, min {:.1} max {:.1} ms; pacing {PACE_VIPS} VIPs per {} ms contributes ≥ {pacing_floor:.0} ms; announced with {method}; release (unplumb + VIPS removal) median {:.1} ms, max {:.1} ms",
                    take.first().copied().unwrap_or(0.0),
                    take.last().copied().unwrap_or(0.0),
                    PACE.as_millis(),
                    median(&rel),
                    rel.last().copied().unwrap_or(0.0),
                ),
            },
            Outcome {
                scenario: NAME.into(),
                metric: format!(
                    "plumb {n} IPv6 VIPs (one reconcile, part of the takeover), median"
                ),
                unit: "ms".into(),
                value: median(&plumb),
                baseline: None,
                goal: None,
                notes: format!(
                    "{trials} trials, min {:.1} max {:.1} ms; the kernel's part is O(n²) for IPv6 (each RTM_NEWADDR re-adds every multicast group of the interface, one solicited-node group per VIP); trials 5 s apart, since right after a release of the same VIPs the MLD tomb makes it ~15× slower (see MLD_SETTLE)",
                    plumb.first().copied().unwrap_or(0.0),
                    plumb.last().copied().unwrap_or(0.0),
                ),
            },
            Outcome {
                scenario: NAME.into(),
                metric: format!(
                    "take over {n} IPv6 VIPs sharing their low 24 bits (one solicited-node group), median"
                ),
                unit: "ms".into(),
                value: median(&take_g),
                baseline: Some(("distinct low 24 bits".into(), median(&take))),
                goal: None,
                notes: format!(
                    "{trials} trials, min {:.1} max {:.1} ms, release median {:.1} ms; baseline = the same takeover with distinct low 24 bits (first line), same run. Address plan advice in docs/duravip.md",
                    take_g.first().copied().unwrap_or(0.0),
                    take_g.last().copied().unwrap_or(0.0),
                    median(&rel_g),
                ),
            },
            Outcome {
                scenario: NAME.into(),
                metric: format!("take over {n} VIPs, announced with AF_PACKET, median"),
                unit: "ms".into(),
                value: median(&take_p),
                baseline: None,
                goal: None,
                notes: format!(
                    "{trials} trials, min {:.1} max {:.1} ms; the daemon's method on generic-mode XDP attachments",
                    take_p.first().copied().unwrap_or(0.0),
                    take_p.last().copied().unwrap_or(0.0),
                ),
            },
            Outcome {
                scenario: NAME.into(),
                metric: format!(
                    "take over {n4} IPv4 VIPs (live frames: GARP request + reply), median"
                ),
                unit: "ms".into(),
                value: median(&take4),
                baseline: None,
                goal: None,
                notes: format!(
                    "{trials} trials; release median {:.1} ms. IPv4 plumbing is linear in the kernel; IPv6 is not (see the plumb line)",
                    median(&rel4)
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
                goal: None,
                notes: format!(
                    "{runs} runs; the daemon recomputes only when the input changed (bus events)"
                ),
            },
        ])
    }
}
