//! Engine counters: written by the reactor thread only (relaxed atomics), read as a
//! consistent-enough snapshot by metrics, the console and `cargo xtask profile`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::select::BackendKind;

/// Why a connection was closed by the engine for misbehaving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// A service frame before the handshake completed.
    Unauthenticated,
    /// Bad magic/version, malformed handshake or engine message, unknown service.
    Malformed,
    /// A header announcing more than the frame limit.
    Oversized,
    /// Missed the auth deadline, idle too long, or not reading what it is sent.
    Slow,
    /// Handshake proof failed: wrong key, replay, reflection.
    BadAuth,
    /// Accepted beyond the connection cap.
    OverCapacity,
}

impl RejectReason {
    pub const ALL: [RejectReason; 6] = [
        RejectReason::Unauthenticated,
        RejectReason::Malformed,
        RejectReason::Oversized,
        RejectReason::Slow,
        RejectReason::BadAuth,
        RejectReason::OverCapacity,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unauthenticated => "unauthenticated",
            RejectReason::Malformed => "malformed",
            RejectReason::Oversized => "oversized",
            RejectReason::Slow => "slow",
            RejectReason::BadAuth => "bad_auth",
            RejectReason::OverCapacity => "over_capacity",
        }
    }
}

/// Rejections by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectCounts {
    pub unauthenticated: u64,
    pub malformed: u64,
    pub oversized: u64,
    pub slow: u64,
    pub bad_auth: u64,
    pub over_capacity: u64,
}

impl RejectCounts {
    pub fn get(&self, r: RejectReason) -> u64 {
        match r {
            RejectReason::Unauthenticated => self.unauthenticated,
            RejectReason::Malformed => self.malformed,
            RejectReason::Oversized => self.oversized,
            RejectReason::Slow => self.slow,
            RejectReason::BadAuth => self.bad_auth,
            RejectReason::OverCapacity => self.over_capacity,
        }
    }

    pub fn total(&self) -> u64 {
        RejectReason::ALL.iter().map(|r| self.get(*r)).sum()
    }
}

/// io_uring figures (all zero on the mio backend).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UringStats {
    /// `io_uring_enter` calls.
    pub enters: u64,
    /// SQEs submitted over all enters.
    pub submissions: u64,
    /// Times the reactor woke with completions to reap.
    pub wakeups: u64,
    /// CQEs reaped.
    pub completions: u64,
    /// Operations in flight now (queue depth).
    pub in_flight: u64,
    /// Highest queue depth seen.
    pub in_flight_max: u64,
}

impl UringStats {
    pub fn submissions_per_enter(&self) -> f64 {
        ratio(self.submissions, self.enters)
    }
    pub fn completions_per_wakeup(&self) -> f64 {
        ratio(self.completions, self.wakeups)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// A snapshot of the engine's counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineStats {
    pub backend: BackendKind,
    /// Inbound connections accepted (including those then refused over capacity).
    pub accepted: u64,
    /// Outbound peer-link connections established (TCP level).
    pub connected: u64,
    /// Handshakes completed, both directions.
    pub authenticated: u64,
    pub rejected: RejectCounts,
    /// Connections open now (any stage).
    pub open: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub uring: UringStats,
}

/// The live counters behind [`EngineStats`].
#[derive(Debug, Default)]
pub(crate) struct StatsCell {
    pub accepted: AtomicU64,
    pub connected: AtomicU64,
    pub authenticated: AtomicU64,
    pub rejected: [AtomicU64; 6],
    pub open: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub enters: AtomicU64,
    pub submissions: AtomicU64,
    pub wakeups: AtomicU64,
    pub completions: AtomicU64,
    pub in_flight: AtomicU64,
    pub in_flight_max: AtomicU64,
}

impl StatsCell {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn reject(&self, r: RejectReason) {
        let i = RejectReason::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.rejected[i].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self, backend: BackendKind) -> EngineStats {
        let r = |i: usize| self.rejected[i].load(Relaxed);
        EngineStats {
            backend,
            accepted: self.accepted.load(Relaxed),
            connected: self.connected.load(Relaxed),
            authenticated: self.authenticated.load(Relaxed),
            rejected: RejectCounts {
                unauthenticated: r(0),
                malformed: r(1),
                oversized: r(2),
                slow: r(3),
                bad_auth: r(4),
                over_capacity: r(5),
            },
            open: self.open.load(Relaxed),
            frames_in: self.frames_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            uring: UringStats {
                enters: self.enters.load(Relaxed),
                submissions: self.submissions.load(Relaxed),
                wakeups: self.wakeups.load(Relaxed),
                completions: self.completions.load(Relaxed),
                in_flight: self.in_flight.load(Relaxed),
                in_flight_max: self.in_flight_max.load(Relaxed),
            },
        }
    }
}
