//! The engine's counters as Prometheus metrics (`duraplane_engine_*`), read at scrape time
//! from [`EngineHandle::stats`]; `cargo xtask profile perf|tune` reads the same names.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::{EngineHandle, stats::RejectReason};

/// Scrape-time view of one running engine.
pub struct EngineCollector(pub EngineHandle);

impl std::fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineCollector")
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = self.0.stats();
        let e = &mut enc;
        counter(
            e,
            "duraplane_engine_accepted",
            "Inbound connections accepted on port 4802",
            s.accepted,
        )?;
        counter(
            e,
            "duraplane_engine_connected",
            "Outbound peer links established",
            s.connected,
        )?;
        counter(
            e,
            "duraplane_engine_authenticated",
            "Cluster-key handshakes completed",
            s.authenticated,
        )?;
        gauge(
            e,
            "duraplane_engine_open_connections",
            "Connections open now, any stage",
            s.open,
        )?;
        counter(
            e,
            "duraplane_engine_frames_in",
            "Frames received",
            s.frames_in,
        )?;
        counter(
            e,
            "duraplane_engine_frames_out",
            "Frames queued for sending",
            s.frames_out,
        )?;
        counter(e, "duraplane_engine_bytes_in", "Bytes received", s.bytes_in)?;
        counter(
            e,
            "duraplane_engine_bytes_out",
            "Bytes written",
            s.bytes_out,
        )?;
        {
            let c = ConstCounter::new(0u64);
            let mut me = e.encode_descriptor(
                "duraplane_engine_rejected",
                "Connections closed for hostile or broken input, by reason",
                None,
                c.metric_type(),
            )?;
            for r in RejectReason::ALL {
                let labels = [("reason".to_owned(), r.as_str().to_owned())];
                ConstCounter::new(s.rejected.get(r)).encode(me.encode_family(&labels)?)?;
            }
        }
        let u = &s.uring;
        counter(
            e,
            "duraplane_engine_uring_enters",
            "io_uring_enter calls (io_uring backend)",
            u.enters,
        )?;
        counter(
            e,
            "duraplane_engine_uring_submissions",
            "SQEs submitted",
            u.submissions,
        )?;
        counter(
            e,
            "duraplane_engine_uring_wakeups",
            "Reactor wake-ups with completions to reap",
            u.wakeups,
        )?;
        counter(
            e,
            "duraplane_engine_uring_completions",
            "CQEs reaped",
            u.completions,
        )?;
        gauge(
            e,
            "duraplane_engine_uring_in_flight",
            "Operations in flight (queue depth)",
            u.in_flight,
        )?;
        gauge(
            e,
            "duraplane_engine_uring_in_flight_max",
            "Highest queue depth seen",
            u.in_flight_max,
        )?;
        Ok(())
    }
}
