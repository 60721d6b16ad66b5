//! Issue 3, goal 1: nanoseconds `xdp_ingress` adds per packet over an empty XDP program,
//! as measured by the kernel in `BPF_PROG_TEST_RUN`.
//!
//! Two methods, each with its own same-run baseline (the object's own `xdp_pass` program,
//! `return XDP_PASS` — the same two instructions as [`rawbpf::const_verdict`] — loaded from
//! the same object by aya and run on the same frame the same way):
//!
//! * repeat: one call with `repeat = R`, the kernel reports the mean; medians of several
//!   interleaved rounds. Used where every repetition takes the same path: a non-SYN to a
//!   counted port, and a hot SYN (the same 5-tuple every time, so every run after the
//!   first is a *retransmit*: one flow-set scan that hits).
//! * single: `repeat = 1` per call, kernel-reported durations averaged over many calls,
//!   each paired with one baseline call. Used where the map state must change between
//!   packets: a hot SYN that is really counted every time (SYN then client RST of the same
//!   flow, alternating), and SYNs of 1M distinct flows (new flow and source slots each
//!   time).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd,
};

use anyhow::{Context, Result, bail};
use duraplane::bpf::{
    Datapath, DatapathConfig, NetblockAction,
    frames::{Frame, tcp_flags},
};
use duraplane_common::Stat;

use super::{
    rawbpf,
    util::{Rng, median, netblock},
};
use crate::harness::{Better, Goal, Outcome, Scenario};

pub struct PacketCost;

const NAME: &str = "xdp_packet_cost";

fn goal_le(ns: f64) -> Goal {
    Goal {
        text: format!("≤ {ns} ns added"),
        threshold: ns,
        better: Better::Lower,
        on_ratio: false,
    }
}

fn config(flows: u32) -> DatapathConfig {
    DatapathConfig {
        ports: vec![25, 465, 587],
        netblocks: vec![
            netblock("198.51.100.0/24", Some(1 << 40), NetblockAction::Drop),
            netblock("192.0.2.0/24", Some(1 << 40), NetblockAction::Drop),
            netblock("203.0.113.0/25", Some(1 << 40), NetblockAction::Count),
            netblock("2001:db8::/32", Some(1 << 40), NetblockAction::Drop),
        ],
        flow_capacity: flows,
        source_capacity: flows,
    }
}

struct Ctx {
    base: std::os::fd::OwnedFd,
}

impl Ctx {
    /// Kernel mean ns of the empty program and of `dp` on `frame`, `rounds` interleaved
    /// calls of `repeat` each; medians.
    fn repeat_pair(
        &self,
        dp: &Datapath,
        frame: &[u8],
        repeat: u32,
        rounds: usize,
    ) -> Result<(f64, f64)> {
        let prog = dp.program()?;
        let fd = prog.fd()?.as_fd();
        let (mut b, mut o) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            b.push(f64::from(
                rawbpf::test_run(self.base.as_fd(), frame, repeat)?.1,
            ));
            o.push(f64::from(rawbpf::test_run(fd, frame, repeat)?.1));
        }
        Ok((median(&b), median(&o)))
    }

    fn single(&self, frame: &[u8]) -> Result<u64> {
        Ok(u64::from(rawbpf::test_run(self.base.as_fd(), frame, 1)?.1))
    }
}

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED))
}

impl Scenario for PacketCost {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> &'static str {
        "ns added per packet by xdp_ingress over the object's empty xdp_pass program (BPF_PROG_TEST_RUN)"
    }

    fn run(&self, quick: bool) -> Result<Vec<Outcome>> {
        let (repeat, rounds, singles, randoms) = if quick {
            (100_000u32, 3usize, 20_000usize, 20_000usize)
        } else {
            (2_000_000, 7, 200_000, 1_000_000)
        };
        let mut out = Vec::new();
        let row = |metric: &str, base: f64, ours: f64, goal: Option<Goal>, notes: String| Outcome {
            scenario: NAME.into(),
            metric: metric.into(),
            unit: "ns".into(),
            value: ours - base,
            baseline: Some(("empty xdp_pass".into(), base)),
            goal,
            notes,
        };

        let dst = v4("192.0.2.2");
        let src = v4("198.51.100.7");

        // --- repeat method -----------------------------------------------------------
        let mut dp = Datapath::load(&config(1 << 17)).context("loading xdp_ingress")?;
        // The baseline outlives this Datapath through its own fd.
        let ctx = Ctx {
            base: dp
                .baseline_program()
                .context("loading xdp_pass")?
                .fd()?
                .as_fd()
                .try_clone_to_owned()?,
        };
        let ack = Frame::tcp(src, 40000, dst, 25, tcp_flags::ACK).build();
        let (verdict, _) = rawbpf::test_run(ctx.base.as_fd(), &ack, 1)?;
        if verdict != rawbpf::XDP_PASS as u32 {
            bail!("baseline xdp_pass returned {verdict}, not XDP_PASS");
        }
        let (b, o) = ctx.repeat_pair(&dp, &ack, repeat, rounds)?;
        out.push(row(
            "ns added per non-SYN (ACK) packet to a counted port",
            b,
            o,
            Some(goal_le(5.0)),
            format!(
                "repeat method: median of {rounds} calls × repeat {repeat}; xdp_ingress {o:.0} ns, empty {b:.0} ns; path: parse, TCP flags, pass (no map access)"
            ),
        ));
        let syn = Frame::tcp(src, 40001, dst, 25, tcp_flags::SYN).build();
        let (b, o) = ctx.repeat_pair(&dp, &syn, repeat, rounds)?;
        let st = dp.read_stats()?;
        if st.get(Stat::Opened) != 1 {
            bail!(
                "hot SYN: expected exactly one opened flow, stats {:?}",
                st.nonzero()
            );
        }
        out.push(row(
            "ns added per hot SYN, retransmit (same 5-tuple each run)",
            b,
            o,
            Some(goal_le(50.0)),
            format!(
                "repeat method; only the first of {} runs opens the flow, the rest find their flow slot (syn_retransmit={}); xdp_ingress {o:.0} ns, empty {b:.0} ns",
                u64::from(repeat) * rounds as u64,
                st.get(Stat::SynRetransmit)
            ),
        ));

        // --- single method: hot SYN counted every time (SYN, RST, SYN, RST, …) ----------
        let prog_fd = dp.program()?.fd()?.as_fd().try_clone_to_owned()?;
        let syn = Frame::tcp(src, 40002, dst, 25, tcp_flags::SYN).build();
        let rst = Frame::tcp(src, 40002, dst, 25, tcp_flags::RST).build();
        let before = dp.read_stats()?;
        let (mut sb, mut so, mut sr) = (0u64, 0u64, 0u64);
        for _ in 0..singles {
            sb += ctx.single(&syn)?;
            so += u64::from(rawbpf::test_run(prog_fd.as_fd(), &syn, 1)?.1);
            sr += u64::from(rawbpf::test_run(prog_fd.as_fd(), &rst, 1)?.1);
        }
        let after = dp.read_stats()?;
        let opened = after.get(Stat::Opened) - before.get(Stat::Opened);
        let closed = after.get(Stat::FinRstClosed) - before.get(Stat::FinRstClosed);
        if opened != singles as u64 || closed != singles as u64 {
            bail!("SYN/RST alternation: opened {opened}, closed {closed}, expected {singles}");
        }
        let n = singles as f64;
        let (b1, o1, r1) = (sb as f64 / n, so as f64 / n, sr as f64 / n);
        out.push(row(
            "ns added per hot SYN, counted each time (SYN/RST alternating)",
            b1,
            o1,
            Some(goal_le(50.0)),
            format!(
                "single method: {singles} × (empty, SYN, RST) with repeat=1, kernel durations averaged; every SYN opens (flow slot claimed by CAS, source count CAS, LOCAL atomic add), every RST closes (slot freed by CAS); xdp_ingress {o1:.1} ns, empty {b1:.1} ns (repeat=1 includes ~fixed per-call timer cost, cancelled by the pairing)"
            ),
        ));
        out.push(row(
            "ns added per client RST closing a hot flow",
            b1,
            r1,
            None,
            format!("single method, the RSTs of the row above; xdp_ingress {r1:.1} ns"),
        ));
        drop(prog_fd);
        drop(dp);

        // --- single method: distinct flows, new map entries each time ------------------
        let cap = ((randoms as u32) + randoms as u32 / 4).max(1 << 17);
        let mut rng = Rng::new(0x5eed_d0c5);
        for family in ["IPv6", "IPv4"] {
            let dp = Datapath::load(&config(cap)).context("loading xdp_ingress (large maps)")?;
            let fd = dp.program()?.fd()?.as_fd().try_clone_to_owned()?;
            let dst6 = IpAddr::V6("2001:db8:ffff::25".parse().unwrap_or(Ipv6Addr::UNSPECIFIED));
            let (mut tb, mut to) = (0u64, 0u64);
            for i in 0..randoms {
                let frame = if family == "IPv6" {
                    let r = u128::from(rng.next_u64()) << 32 | u128::from(rng.next_u64() as u32);
                    let a = (0x2001_0db8u128 << 96) | (r & ((1u128 << 96) - 1));
                    Frame::tcp(
                        IpAddr::V6(Ipv6Addr::from(a)),
                        40000,
                        dst6,
                        25,
                        tcp_flags::SYN,
                    )
                } else {
                    // A bijection of the 20-bit index: 256 sources × 4096 ports, all distinct.
                    let x = (i as u32).wrapping_mul(0x9e37_79b1) & 0xf_ffff;
                    Frame::tcp(
                        IpAddr::V4(Ipv4Addr::new(198, 51, 100, (x & 0xff) as u8)),
                        1024 + (x >> 8) as u16,
                        dst,
                        25,
                        tcp_flags::SYN,
                    )
                }
                .build();
                tb += ctx.single(&frame)?;
                to += u64::from(rawbpf::test_run(fd.as_fd(), &frame, 1)?.1);
            }
            let st = dp.read_stats()?;
            let n = randoms as f64;
            let (b, o) = (tb as f64 / n, to as f64 / n);
            let what = if family == "IPv6" {
                format!(
                    "{randoms} SYNs from {randoms} random sources in 2001:db8::/32 (distinct sources: a new flow slot and a new source slot each)"
                )
            } else {
                format!(
                    "{randoms} SYNs, 256 sources of 198.51.100.0/24 × 4096 ports, all flows distinct (a new flow slot each; source hits: a /24 has only 256 addresses)"
                )
            };
            out.push(row(
                &format!("ns added per SYN of a new flow, {family}, {randoms} distinct flows"),
                b,
                o,
                None,
                format!(
                    "single method (repeat=1 per frame, paired with the empty program on the same frame); {what}; maps sized {cap}; opened={} source_insert_failed={} flow_map_full={}; xdp_ingress {o:.1} ns, empty {b:.1} ns",
                    st.get(Stat::Opened),
                    st.get(Stat::SourceMapInsertFailed),
                    st.get(Stat::FlowMapFull)
                ),
            ));
        }
        Ok(out)
    }
}
