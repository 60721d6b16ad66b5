//! Issue 4: replication staleness — from a change of node A's slot to the new total in
//! node B's kernel REMOTE map (what B's XDP program enforces with), p50/p99/p999, at rest
//! and under 100k updates/s of churn on A; goal p99 ≤ 20 ms at defaults
//! (max_delay 10 ms, max_pending 100).
//!
//! Two replication services on two engines over loopback TCP in this process, with the
//! daemon's code paths: A's `publish` (what the poller calls), engine frames, B's slot
//! merge, B's applier thread writing the REMOTE map of a loaded `xdp_ingress`. The reader
//! polls that map through its own fd (the kernel value, not a userspace copy). The time
//! the poller takes to notice a kernel change (`poll_interval`, 100 ms default) comes on
//! top and is not part of this figure. Peer in the same run: the raw engine frame round
//! trip (an authenticated client echoing a frame through an engine service).
//!
//! Free of coordinated omission: the probed changes and the churner's batches both follow
//! schedules fixed in advance (intended times); a late one goes out at once, and the probe's
//! staleness and the churner's lateness are measured from the intended time, so a stall
//! shows in the figures instead of thinning the offered load.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::maps::{Array, Map, MapData};
use duraplane::{
    bpf::{Datapath, DatapathConfig},
    config::NetblockAction,
    engine::{
        ClusterKey, Ctx, Engine, EngineConfig, Frame, ListenerSpec, Service, ServiceId, client,
    },
    replicate::{
        INBOUND_CIDR, Key, ObjectSpec, PeerView, ReplicationConfig, ReplicationHandle,
        inbound::{netblock_key, source_key},
        remote_applier, replication,
    },
};
use duraplane_common::map_names;
use hdrhistogram::Histogram;

use super::util::{Rng, latency_histogram, netblock};
use crate::harness::{Better, Goal, Outcome, Scenario};

pub struct ReplicationStaleness;

const NAME: &str = "replication_staleness";
const KEY: &[u8] = b"bench-replication-key-0123456789";
const NET: &str = "198.51.100.0/24";

/// Echoes every frame back: the peer measurement (engine frame round trip).
struct Echo;

impl Service for Echo {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: duraplane::engine::ConnId, frame: Frame) {
        ctx.send(conn, &frame);
    }
}

fn listener() -> ListenerSpec {
    ListenerSpec {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        backlog: 128,
        recv_buffer: None,
        send_buffer: None,
        nodelay: true,
    }
}

fn spec() -> ObjectSpec {
    ObjectSpec {
        name: INBOUND_CIDR.into(),
        max_delay: Duration::from_millis(10),
        max_pending: 100,
    }
}

type Views = Arc<Mutex<Vec<PeerView>>>;

fn start_node(
    name: &str,
    views: &Views,
    sink: Option<duraplane::replicate::Sink>,
) -> Result<(Engine, ReplicationHandle)> {
    let v = Arc::clone(views);
    let (mut svc, h) = replication(
        ReplicationConfig::new(name, vec![spec()]),
        Arc::new(move || v.lock().map(|g| g.clone()).unwrap_or_default()),
        Vec::new(),
    );
    if let Some(s) = sink {
        svc.add_sink(INBOUND_CIDR, s);
    }
    let key = ClusterKey::from_bytes(KEY).context("key")?;
    let mut ec = EngineConfig::new(name, key);
    ec.listeners = vec![listener()];
    let e = Engine::start(ec, vec![(ServiceId::REPLICATION, Box::new(svc))])?;
    h.attach(e.handle());
    Ok((e, h))
}

fn us_q(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Publishes A's whole slot (the poller's full local table) with `f` applied.
fn publish(
    a: &ReplicationHandle,
    table: &Mutex<HashMap<Key, i64>>,
    f: impl FnOnce(&mut HashMap<Key, i64>),
) {
    let snapshot = {
        let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut t);
        t.clone()
    };
    a.publish(INBOUND_CIDR, snapshot);
}

/// What one staleness sample needs: A's handle and table, B's REMOTE map and the key.
struct Probe<'a> {
    a: &'a ReplicationHandle,
    table: &'a Mutex<HashMap<Key, i64>>,
    remote: &'a Array<MapData, u64>,
    id: u32,
    nb: &'a Key,
}

/// Staleness samples free of coordinated omission. Change k is published at its intended
/// time (a schedule fixed in advance: mean 5 ms apart, jittered against the flush timer),
/// whether or not earlier changes have arrived, and its staleness runs from that intended
/// time until B's map shows a value ≥ k (the values only grow, so a later value proves the
/// earlier change arrived). A stall therefore counts against every change scheduled behind
/// it, as a user would see it, instead of quietly delaying the next sample.
fn measure(p: &Probe<'_>, samples: usize, next: &mut i64, rng: &mut Rng) -> Result<Histogram<u64>> {
    let mut h = latency_histogram()?;
    let base = *next;
    *next += samples as i64;
    let start = Instant::now() + Duration::from_millis(5);
    let mut at = Duration::ZERO;
    let intended: Vec<Instant> = (0..samples)
        .map(|_| {
            at += Duration::from_micros(3000 + rng.next_u64() % 4000);
            start + at
        })
        .collect();
    let a = p.a.clone();
    let (table, nb) = (p.table, p.nb);
    let intended_ref = &intended;
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            for (k, t) in intended_ref.iter().enumerate() {
                let now = Instant::now();
                if *t > now {
                    std::thread::sleep(*t - now);
                }
                let want = base + 1 + k as i64;
                publish(&a, table, |tb| {
                    tb.insert(nb.clone(), want);
                });
            }
        });
        let mut done = 0usize;
        let give_up = *intended.last().unwrap_or(&start) + Duration::from_secs(5);
        while done < samples {
            let seen = p.remote.get(&p.id, 0)? as i64;
            let now = Instant::now();
            while done < samples && seen >= base + 1 + done as i64 {
                let late = now.saturating_duration_since(intended[done]);
                h.record(late.as_micros().max(1) as u64)?;
                done += 1;
            }
            if now > give_up {
                bail!(
                    "B's REMOTE map never showed {} (shows {seen})",
                    base + 1 + done as i64
                );
            }
            std::hint::spin_loop();
        }
        Ok(())
    })?;
    Ok(h)
}

impl Scenario for ReplicationStaleness {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> &'static str {
        "change on node A → total in node B's kernel REMOTE map (at rest, under 100k updates/s churn) vs engine frame round trip"
    }

    fn run(&self, quick: bool) -> Result<Vec<Outcome>> {
        let samples = if quick { 60 } else { 3000 };
        let dp = Datapath::load(&DatapathConfig {
            netblocks: vec![netblock(NET, Some(1_000_000), NetblockAction::Drop)],
            ..DatapathConfig::default()
        })
        .context("loading xdp_ingress")?;
        let (cidr, id) = *dp.netblock_ids().first().context("netblock id")?;
        let remote: Array<MapData, u64> = {
            let ids = dp.program()?.info()?.map_ids()?.unwrap_or_default();
            let mut found = None;
            for mid in ids {
                let info = aya::maps::MapInfo::from_id(mid)?;
                if info.name_as_str() == Some(map_names::REMOTE) {
                    found = Some(MapData::from_id(mid)?);
                }
            }
            Array::try_from(Map::Array(
                found.context("REMOTE not among xdp_ingress's maps")?,
            ))?
        };
        let dp = Arc::new(Mutex::new(dp));
        let (sink, applier) = {
            let dp = Arc::clone(&dp);
            remote_applier(move |totals| {
                let mut d = dp.lock().unwrap_or_else(|p| p.into_inner());
                let v = totals
                    .iter()
                    .find(|(c, _)| *c == cidr)
                    .map_or(0, |(_, v)| *v);
                let _ = d.set_remote(id, v);
            })?
        };
        let views: Views = Arc::new(Mutex::new(Vec::new()));
        let (ea, a) = start_node("a", &views, None)?;
        let (eb, b) = start_node("b", &views, Some(sink))?;
        {
            let mut v = views.lock().unwrap_or_else(|p| p.into_inner());
            for (n, e) in [("a", &ea), ("b", &eb)] {
                v.push(PeerView {
                    nodename: n.into(),
                    addr: e.local_addrs().first().copied(),
                    member: format!("#0-0#{n}"),
                    live: true,
                });
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !b
            .slots()
            .iter()
            .any(|s| s.node == "a" && s.connected && s.live)
        {
            if Instant::now() > deadline {
                bail!("replication link a → b did not come up");
            }
            std::thread::sleep(Duration::from_millis(10));
        }

        // Peer: engine frame round trip through an echo service.
        let echo = {
            let key = ClusterKey::from_bytes(KEY).context("key")?;
            let mut ec = EngineConfig::new("echo", key);
            ec.listeners = vec![listener()];
            Engine::start(ec, vec![(ServiceId(9), Box::new(Echo))])?
        };
        let key = ClusterKey::from_bytes(KEY).context("key")?;
        let addr = *echo.local_addrs().first().context("echo addr")?;
        let mut c = client::Client::connect(addr, &key, "bench", Duration::from_secs(2))?;
        let mut rtt = latency_histogram()?;
        let probe = Frame::new(ServiceId(9), 1, vec![0; 64]);
        for _ in 0..samples.max(1000) {
            let t = Instant::now();
            c.send(&probe)?;
            c.recv()?;
            rtt.record(t.elapsed().as_micros().max(1) as u64)?;
        }

        let table = Arc::new(Mutex::new(HashMap::new()));
        let nb = netblock_key(&cidr);
        let mut rng = Rng::new(4);
        let mut next = 0i64;
        let probe_a = Probe {
            a: &a,
            table: &table,
            remote: &remote,
            id,
            nb: &nb,
        };
        let rest = measure(&probe_a, samples, &mut next, &mut rng)?;

        // Churn: 100 source keys change every millisecond (100k updates/s offered). Each
        // batch has an intended time on a fixed schedule; a late batch is sent at once
        // (not skipped, not rescheduled) and its lateness — publish done minus intended
        // time — is recorded, so a churner that cannot keep up shows in its own figures
        // instead of silently offering less.
        let stop = Arc::new(AtomicBool::new(false));
        let updates = Arc::new(AtomicU64::new(0));
        let churner = {
            let (a, table, stop, updates) = (
                a.clone(),
                Arc::clone(&table),
                Arc::clone(&stop),
                Arc::clone(&updates),
            );
            std::thread::spawn(move || -> Result<Histogram<u64>> {
                let mut lateness = latency_histogram()?;
                let mut r = Rng::new(7);
                let mut tick = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if tick > now {
                        std::thread::sleep(tick - now);
                    }
                    publish(&a, &table, |t| {
                        for _ in 0..100 {
                            let i = r.next_u64() % 2000;
                            let ip = std::net::IpAddr::from([
                                203,
                                0,
                                113 + (i / 256) as u8 % 2,
                                (i % 256) as u8,
                            ]);
                            t.insert(source_key(&ip), (r.next_u64() % 9 + 1) as i64);
                        }
                    });
                    updates.fetch_add(100, Ordering::Relaxed);
                    lateness.record(tick.elapsed().as_micros().max(1) as u64)?;
                    tick += Duration::from_millis(1);
                }
                Ok(lateness)
            })
        };
        let t_churn = Instant::now();
        let churn = measure(&probe_a, samples, &mut next, &mut rng);
        let churn_secs = t_churn.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let lateness = match churner.join() {
            Ok(r) => r?,
            Err(_) => bail!("the churner thread panicked"),
        };
        let churn = churn?;
        let rate = updates.load(Ordering::Relaxed) as f64 / churn_secs.max(1e-9);
        let ca = a.counters();
        drop((ea, eb, echo));
        let _ = applier.join();

        let goal = Goal {
            text: "p99 ≤ 20 ms".into(),
            threshold: 20.0,
            better: Better::Lower,
            on_ratio: false,
        };
        let notes = |h: &Histogram<u64>, extra: &str| {
            format!(
                "{samples} changes on an open-loop schedule (mean 5 ms apart), staleness from each one's intended time; p50 {:.2} / p99 {:.2} / p999 {:.2} / max {:.2} ms; engine frame RTT p50 {:.3} / p99 {:.3} ms; max_delay 10 ms, max_pending 100, loopback TCP; poll_interval not included{extra}",
                us_q(h, 0.5),
                us_q(h, 0.99),
                us_q(h, 0.999),
                h.max() as f64 / 1000.0,
                us_q(&rtt, 0.5),
                us_q(&rtt, 0.99),
            )
        };
        Ok(vec![
            Outcome {
                scenario: NAME.into(),
                metric: "staleness A→B kernel map at rest, p99".into(),
                unit: "ms".into(),
                value: us_q(&rest, 0.99),
                baseline: Some(("engine frame round trip p99".into(), us_q(&rtt, 0.99))),
                goal: Some(goal.clone()),
                notes: notes(&rest, ""),
            },
            Outcome {
                scenario: NAME.into(),
                metric: "staleness A→B kernel map under churn, p99".into(),
                unit: "ms".into(),
                value: us_q(&churn, 0.99),
                baseline: Some(("engine frame round trip p99".into(), us_q(&rtt, 0.99))),
                goal: Some(goal),
                notes: notes(
                    &churn,
                    &format!(
                        "; churn offered 100000 updates/s, achieved {:.0}/s on A (batch lateness from its intended time p50 {:.2} / p99 {:.2} / max {:.2} ms); A sent {} frames / {} bytes in all",
                        rate,
                        us_q(&lateness, 0.5),
                        us_q(&lateness, 0.99),
                        lateness.max() as f64 / 1000.0,
                        ca.frames_out,
                        ca.bytes_out
                    ),
                ),
            },
        ])
    }
}
