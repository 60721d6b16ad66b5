//! Issue 3, goals 2 and 3: SYN flood through native XDP on a veth pair, against an empty
//! XDP program, the plain stack, and nftables enforcing the same per-source limit.
//!
//! Two throwaway namespaces joined by a veth pair: `gen` (192.0.2.1) and `mta`
//! (192.0.2.2). Load: `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` in `gen` runs
//! [`rawbpf::tx_random_source`] on a checksummed SYN to 192.0.2.2:25 and transmits each
//! copy out of `gen`'s veth with `XDP_TX`: 256 sources (198.51.100.0/24) × random source
//! ports, i.e. almost every SYN is a new flow. Bounded by packets and seconds per case.
//!
//! Policy, identical on both sides: at most K concurrent connections per source.
//! Duraplane: 256 netblocks `198.51.100.x/32 { max_connections K action drop }`.
//! nftables: `add @persrc { ip saddr ct count over K } drop` on SYNs to port 25 in
//! prerouting (conntrack needed); the local stack's RST answers are dropped before
//! conntrack sees them so accepted SYNs stay counted, as Duraplane counts them until the
//! client's FIN/RST. After the first 256 × K SYNs both drop every SYN.
//!
//! Packets handled are counted by the handler itself: xdp_ingress's STATS `packets`,
//! nft's named counter, the interface's `rx_packets` for the empty program and the plain
//! stack. Sender and receiver share one CPU (the test run flushes XDP_TX and the veth NAPI
//! runs in the softirq that follows, on the same CPU); the receiving side's CPU time is the
//! softirq time of /proc/stat over the case (tick-sampled at CONFIG_HZ, all CPUs).

use std::{
    os::fd::AsFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use duraplane::{
    bpf::{Datapath, DatapathConfig, NetblockAction, XdpMode},
    testbed::Testbed,
};
use duraplane_common::Stat;

use super::{rawbpf, util};
use crate::harness::{Better, Goal, Outcome, Scenario};

pub struct VethFlood;

const NAME: &str = "veth_syn_flood";
/// Per-source connection limit of both policies.
const K: u64 = 4;
const MTA_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// One bounded load: how many packets the handler counted and what it cost.
#[derive(Debug, Clone, Copy)]
struct Measured {
    sent: u64,
    handled: u64,
    secs: f64,
    softirq_secs: f64,
    sender_cpu_secs: f64,
}

impl Measured {
    fn mpps(&self) -> f64 {
        self.handled as f64 / self.secs / 1e6
    }

    /// Packets per second of receiving-side CPU (softirq) time, in millions.
    fn mpps_per_cpu(&self) -> f64 {
        if self.softirq_secs <= 0.0 {
            return f64::NAN;
        }
        self.handled as f64 / self.softirq_secs / 1e6
    }

    fn describe(&self) -> String {
        format!(
            "{} sent, {} handled in {:.2} s = {:.2} Mpps wall; receiving softirq {:.2} CPU-s ({:.2} Mpps per vCPU); sender thread incl. inline softirq {:.2} CPU-s",
            self.sent,
            self.handled,
            self.secs,
            self.mpps(),
            self.softirq_secs,
            self.mpps_per_cpu(),
            self.sender_cpu_secs
        )
    }
}

/// Counters of one interface inside a host, from `ip -s -j link`.
fn if_counters(tb: &Testbed, host: &str, ifname: &str) -> Result<(u64, u64)> {
    let out = tb.exec(host, &["ip", "-s", "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j output")?;
    let rx = &v[0]["stats64"]["rx"];
    Ok((
        rx["packets"].as_u64().unwrap_or(0),
        rx["dropped"].as_u64().unwrap_or(0),
    ))
}

fn nft_counter(tb: &Testbed, name: &str) -> Result<u64> {
    let out = tb.exec(
        "mta",
        &["nft", "-j", "list", "counter", "ip", "dpbench", name],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing nft -j output")?;
    v["nftables"]
        .as_array()
        .and_then(|a| a.iter().find_map(|o| o["counter"]["packets"].as_u64()))
        .with_context(|| format!("no nft counter {name} in {out}"))
}

struct Load {
    max_packets: u64,
    max_secs: f64,
}

/// Sends the flood from `gen` and returns (sent, seconds, sender CPU seconds).
fn send(tb: &Testbed, ifname: &str, load: &Load) -> Result<(u64, f64, f64)> {
    let frame = util::flood_syn(
        MTA_MAC,
        GEN_MAC,
        "198.51.100.0".parse()?,
        "192.0.2.2".parse()?,
    );
    let ifname = ifname.to_owned();
    let (max_packets, max_secs) = (load.max_packets, load.max_secs);
    tb.run_in("gen", move || -> Result<(u64, f64, f64)> {
        let prog = rawbpf::load_xdp("bench_tx_rand", &rawbpf::tx_random_source())?;
        let ifindex = rawbpf::ifindex(&ifname)?;
        let chunk = 65_536u32;
        let cpu0 = rawbpf::thread_cpu();
        let t0 = Instant::now();
        let mut sent = 0u64;
        while sent < max_packets && t0.elapsed().as_secs_f64() < max_secs {
            let n = (max_packets - sent).min(u64::from(chunk)) as u32;
            rawbpf::live_frames(prog.as_fd(), &frame, ifindex, n, 64)?;
            sent += u64::from(n);
        }
        let secs = t0.elapsed().as_secs_f64();
        Ok((sent, secs, (rawbpf::thread_cpu() - cpu0).as_secs_f64()))
    })?
}

/// Runs one bounded load; `count` reads the handler's own counter.
fn measure(
    tb: &Testbed,
    gen_if: &str,
    load: &Load,
    count: &dyn Fn() -> Result<u64>,
) -> Result<Measured> {
    let c0 = count()?;
    let s0 = rawbpf::softirq_seconds();
    let (sent, secs, sender_cpu_secs) = send(tb, gen_if, load)?;
    // Let the last NAPI polls finish before reading.
    std::thread::sleep(Duration::from_millis(50));
    let softirq_secs = rawbpf::softirq_seconds() - s0;
    let handled = count()? - c0;
    Ok(Measured {
        sent,
        handled,
        secs,
        softirq_secs,
        sender_cpu_secs,
    })
}

fn nft_ruleset() -> String {
    format!(
        r#"table ip dpbench {{
  counter syns {{ }}
  counter over {{ }}
  set persrc {{ type ipv4_addr; size 65535; flags dynamic; }}
  chain pre {{
    type filter hook prerouting priority filter; policy accept;
    tcp dport 25 tcp flags & (syn | ack) == syn counter name "syns" add @persrc {{ ip saddr ct count over {K} }} counter name "over" drop
  }}
  chain out {{
    type filter hook output priority raw - 10; policy accept;
    tcp sport 25 tcp flags & rst == rst drop
  }}
}}
"#
    )
}

impl Scenario for VethFlood {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> &'static str {
        "SYN flood over a veth: native XDP xdp_ingress vs empty XDP, plain stack and nftables ct count (same per-source limit)"
    }

    fn run(&self, quick: bool) -> Result<Vec<Outcome>> {
        let load = if quick {
            Load {
                max_packets: 1_000_000,
                max_secs: 0.3,
            }
        } else {
            Load {
                max_packets: 40_000_000,
                max_secs: 4.0,
            }
        };
        let mut tb = Testbed::new()?;
        tb.add_host("gen")?;
        tb.add_host("mta")?;
        let pair = tb.veth_pair("gen", "mta", &["192.0.2.1/24"], &["192.0.2.2/24"])?;
        let (gen_if, mta_if) = (pair.a_if.clone(), pair.b_if.clone());
        tb.exec(
            "mta",
            &[
                "ip",
                "link",
                "set",
                "dev",
                &mta_if,
                "address",
                "02:00:00:00:00:02",
            ],
        )?;
        tb.exec(
            "gen",
            &[
                "ip",
                "link",
                "set",
                "dev",
                &gen_if,
                "address",
                "02:00:00:00:00:01",
            ],
        )?;
        tb.add_route(
            "mta",
            "198.51.100.0/24",
            &mta_if,
            Some("192.0.2.1".parse()?),
        )?;
        let rx = |tb: &Testbed| if_counters(tb, "mta", &mta_if).map(|(p, _)| p);

        // 1. Empty XDP_DROP program, native, on mta's veth: the ceiling of the veth XDP path.
        let empty = {
            let prog = rawbpf::load_xdp("bench_drop", &rawbpf::const_verdict(rawbpf::XDP_DROP))?;
            let prog2 = prog.try_clone()?;
            let ifn = mta_if.clone();
            let link = tb.run_in("mta", move || -> Result<_> {
                rawbpf::attach_native(prog2.as_fd(), rawbpf::ifindex(&ifn)?)
            })??;
            let m = measure(&tb, &gen_if, &load, &|| rx(&tb))?;
            drop(link);
            drop(prog);
            m
        };
        eprintln!("bench: {NAME}: empty XDP_DROP: {}", empty.describe());

        // 2. xdp_ingress, native, with the per-source limit as 256 /32 netblocks.
        let (ours, ours_dropped) = {
            let netblocks = (0..=255u8)
                .map(|i| {
                    util::netblock(&format!("198.51.100.{i}/32"), Some(K), NetblockAction::Drop)
                })
                .collect();
            let dp = Datapath::load(&DatapathConfig {
                netblocks,
                ..DatapathConfig::default()
            })
            .context("loading xdp_ingress")?;
            let ifn = mta_if.clone();
            let dp = tb.run_in("mta", move || -> Result<Datapath> {
                let mut dp = dp;
                let mode = dp.attach(&ifn, XdpMode::Native)?;
                if mode != duraplane::bpf::AttachedMode::Native {
                    bail!("xdp_ingress attached in {mode:?} mode, not native");
                }
                Ok(dp)
            })??;
            let d0 = dp.read_stats()?.get(Stat::Dropped);
            let m = measure(&tb, &gen_if, &load, &|| {
                Ok(dp.read_stats()?.get(Stat::Packets))
            })?;
            let st = dp.read_stats()?;
            let dropped = st.get(Stat::Dropped) - d0;
            eprintln!(
                "bench: {NAME}: xdp_ingress: {}; stats {:?}",
                m.describe(),
                st.nonzero()
            );
            drop(dp);
            (m, dropped)
        };

        // 3. No XDP program: GRO on so veth delivers XDP_TX frames, the stack answers RST.
        tb.enable_gro("mta", &mta_if)?;
        let stack = measure(&tb, &gen_if, &load, &|| rx(&tb))?;
        eprintln!("bench: {NAME}: no XDP (stack): {}", stack.describe());

        // 4. nftables peer, same per-source limit.
        let rules = std::env::temp_dir().join(format!("dpbench-{}.nft", std::process::id()));
        std::fs::write(&rules, nft_ruleset())?;
        let loaded = tb.exec("mta", &["nft", "-f", &rules.to_string_lossy()]);
        let _ = std::fs::remove_file(&rules);
        loaded.context("loading the nftables ruleset")?;
        let nft = (|| -> Result<(Measured, u64)> {
            let o0 = nft_counter(&tb, "over")?;
            let m = measure(&tb, &gen_if, &load, &|| nft_counter(&tb, "syns"))?;
            Ok((m, nft_counter(&tb, "over")? - o0))
        })();
        let _ = tb.exec("mta", &["nft", "delete", "table", "ip", "dpbench"]);
        let (nft, nft_over) = nft?;
        eprintln!("bench: {NAME}: nftables: {}", nft.describe());
        drop(tb);

        let per_cpu_note = |m: &Measured| m.describe();
        Ok(vec![
            Outcome {
                scenario: NAME.into(),
                metric: "SYN flood handled by xdp_ingress (native XDP, veth), Mpps per vCPU".into(),
                unit: "Mpps".into(),
                value: ours.mpps_per_cpu(),
                baseline: Some(("empty XDP_DROP".into(), empty.mpps_per_cpu())),
                goal: Some(Goal {
                    text: "≥ 5 Mpps per vCPU".into(),
                    threshold: 5.0,
                    better: Better::Higher,
                    on_ratio: false,
                }),
                notes: format!(
                    "xdp_ingress: {}; {ours_dropped} dropped over the limit (K={K} per source). Empty XDP_DROP: {}",
                    per_cpu_note(&ours),
                    per_cpu_note(&empty)
                ),
            },
            Outcome {
                scenario: NAME.into(),
                metric: "SYN flood, no XDP program (plain stack, GRO on), Mpps per vCPU".into(),
                unit: "Mpps".into(),
                value: ours.mpps_per_cpu(),
                baseline: Some(("stack, no XDP".into(), stack.mpps_per_cpu())),
                goal: None,
                notes: format!(
                    "what the same veth delivers to the stack without any XDP program (rx_packets): {}",
                    per_cpu_note(&stack)
                ),
            },
            Outcome {
                scenario: NAME.into(),
                metric: format!(
                    "per-source limit (K={K}) under a SYN flood: Mpps per vCPU, Duraplane vs nftables ct count"
                ),
                unit: "Mpps".into(),
                value: ours.mpps_per_cpu(),
                baseline: Some(("nftables ct count".into(), nft.mpps_per_cpu())),
                goal: Some(Goal {
                    text: "≥ 5× nftables".into(),
                    threshold: 5.0,
                    better: Better::Higher,
                    on_ratio: true,
                }),
                notes: format!(
                    "nftables (prerouting, conntrack, dynamic set with ct count): {}; {nft_over} over the limit dropped. Wall-clock ratio {:.2}×",
                    per_cpu_note(&nft),
                    ours.mpps() / nft.mpps()
                ),
            },
        ])
    }
}
