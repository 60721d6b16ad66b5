//! Shared named throttles (`shared_named_throttles`, Momentum's `ec_shared_throttle_*`):
//! "X per Y seconds" across the cluster.
//!
//! Windows are fixed and aligned on the wall clock (`floor(unix_secs / Y)`), so nodes with
//! synchronised clocks agree on them. Each node counts its own consumption in the current
//! window; that count is its slot (key `name ‖ 0 ‖ window u64 BE`). `seen` is the sum of
//! the live remote slots for the current window.
//!
//! The rule (see `docs/local-api.md` for the bound): a node takes `n` iff
//! `seen + local + n <= X` **and** `round_used + n <= round_budget`, where a *round* is the
//! time between two passages of information around the cluster (it ends once every live
//! peer has delivered a frame of this object since the round began; with no peers it ends
//! at once) and `round_budget = max(1, floor(epsilon * (X - seen - local) / nodes))`,
//! fixed at the start of the round (`nodes` = this node + live peers). A single node thus
//! never exceeds X; across nodes the overshoot of a window is at most `nodes - 1` when
//! each round's frames arrive before the next round starts.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{ReplicationHandle, slots::Key};

/// The object name (Momentum's `Replicate "shared_named_throttles" {}`).
pub const SHARED_NAMED_THROTTLES: &str = "shared_named_throttles";
/// Momentum's default epsilon.
pub const DEFAULT_EPSILON: f64 = 0.95;
/// Longest throttle name.
pub const MAX_NAME: usize = 200;
/// Most throttles one node keeps (a runaway client cannot grow memory without bound).
pub const MAX_THROTTLES: usize = 10_000;

/// Why a throttle request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ThrottleError {
    #[error(
        "bad throttle rate '{input}': {reason} (expected \"X/Y\": X per Y seconds, or \"X\": per second)"
    )]
    BadRate { input: String, reason: &'static str },
    #[error("bad epsilon {value}: it must be a number with 0 < epsilon < 1")]
    BadEpsilon { value: f64 },
    #[error("throttle name must be 1..={max} bytes without NUL or control characters")]
    BadName { max: usize },
    #[error("no throttle named '{name}' (create it first)")]
    Unknown { name: String },
    #[error("too many throttles (limit {max})")]
    TooMany { max: usize },
    #[error("consume count must be at least 1 (got {n})")]
    BadCount { n: u64 },
}

/// X per Y seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub max: u64,
    pub per_secs: u64,
}

/// Parses `"X/Y"` (X per Y seconds) or `"X"` (per second), as Momentum's throttles.
pub fn parse_rate(input: &str) -> Result<Rate, ThrottleError> {
    let bad = |reason| ThrottleError::BadRate {
        input: input.to_owned(),
        reason,
    };
    let (x, y) = match input.trim().split_once('/') {
        Some((x, y)) => (x.trim(), y.trim()),
        None => (input.trim(), "1"),
    };
    let max = x
        .parse::<u64>()
        .map_err(|_| bad("X is not a whole number"))?;
    let per_secs = y
        .parse::<u64>()
        .map_err(|_| bad("Y is not a whole number"))?;
    if per_secs == 0 {
        return Err(bad("Y must be at least 1 second"));
    }
    if per_secs > 366 * 86_400 {
        return Err(bad("Y is longer than a year"));
    }
    Ok(Rate { max, per_secs })
}

pub fn check_epsilon(value: f64) -> Result<f64, ThrottleError> {
    if value > 0.0 && value < 1.0 {
        Ok(value)
    } else {
        Err(ThrottleError::BadEpsilon { value })
    }
}

/// What a node knows when it asks: the others' consumption in the window, how many nodes
/// share the throttle, and whether the current round is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub window: u64,
    /// Sum of the live remote slots for this window.
    pub seen: u64,
    /// This node plus the live peers (≥ 1).
    pub nodes: u64,
    pub round_over: bool,
}

/// The answer to a check or consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// `X - seen - local` after the request (what the cluster has left, as far as known).
    pub remaining: u64,
    /// This node's consumption in the window.
    pub local: u64,
}

/// One throttle's arithmetic on one node (pure: tested without a cluster).
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleState {
    pub rate: Rate,
    pub epsilon: f64,
    pub window: u64,
    pub local: u64,
    round_budget: Option<u64>,
    round_used: u64,
}

impl ThrottleState {
    pub fn new(rate: Rate, epsilon: f64) -> Self {
        ThrottleState {
            rate,
            epsilon,
            window: 0,
            local: 0,
            round_budget: None,
            round_used: 0,
        }
    }

    /// Takes `n` if the rule allows it (`commit`), or only says whether it would.
    pub fn request(&mut self, o: Observed, n: u64, commit: bool) -> Outcome {
        if o.window != self.window {
            self.window = o.window;
            self.local = 0;
            self.round_budget = None;
        }
        let x = self.rate.max;
        let remaining = x.saturating_sub(o.seen.saturating_add(self.local));
        if o.round_over || self.round_budget.is_none() {
            let share = (self.epsilon * remaining as f64 / o.nodes.max(1) as f64).floor() as u64;
            self.round_budget = Some(if remaining == 0 { 0 } else { share.max(1) });
            self.round_used = 0;
        }
        let budget = self.round_budget.unwrap_or(0);
        let allowed = n <= remaining && self.round_used.saturating_add(n) <= budget;
        if allowed && commit {
            self.local += n;
            self.round_used += n;
        }
        Outcome {
            allowed,
            remaining: if allowed && commit {
                remaining - n
            } else {
                remaining
            },
            local: self.local,
        }
    }
}

fn key(name: &str, window: u64) -> Key {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k.extend(window.to_be_bytes());
    k
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Entry {
    state: ThrottleState,
    round_started: Instant,
}

/// This node's shared named throttles, published as its slot of
/// [`SHARED_NAMED_THROTTLES`].
#[derive(Default)]
pub struct Throttles {
    inner: Mutex<BTreeMap<String, Entry>>,
    repl: Option<ReplicationHandle>,
}

impl std::fmt::Debug for Throttles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Throttles")
    }
}

impl Throttles {
    pub fn new(repl: Option<ReplicationHandle>) -> Self {
        Throttles {
            inner: Mutex::new(BTreeMap::new()),
            repl,
        }
    }

    /// Creates (or re-defines, keeping this window's count) a throttle. Every node that
    /// uses it creates it with the same rate.
    pub fn create(
        &self,
        name: &str,
        rate: &str,
        epsilon: Option<f64>,
    ) -> Result<(), ThrottleError> {
        if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(ThrottleError::BadName { max: MAX_NAME });
        }
        let rate = parse_rate(rate)?;
        let epsilon = check_epsilon(epsilon.unwrap_or(DEFAULT_EPSILON))?;
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = m.get_mut(name) {
            if e.state.rate != rate || e.state.epsilon != epsilon {
                let (w, l) = (e.state.window, e.state.local);
                e.state = ThrottleState::new(rate, epsilon);
                e.state.window = w;
                e.state.local = l;
            }
            return Ok(());
        }
        if m.len() >= MAX_THROTTLES {
            return Err(ThrottleError::TooMany { max: MAX_THROTTLES });
        }
        m.insert(
            name.to_owned(),
            Entry {
                state: ThrottleState::new(rate, epsilon),
                round_started: Instant::now(),
            },
        );
        Ok(())
    }

    /// Would `n` more be allowed cluster-wide now? (`commit` = take them if so.)
    pub fn request(&self, name: &str, n: u64, commit: bool) -> Result<Outcome, ThrottleError> {
        if n == 0 {
            return Err(ThrottleError::BadCount { n });
        }
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.get_mut(name).ok_or_else(|| ThrottleError::Unknown {
            name: name.to_owned(),
        })?;
        let window = unix_secs() / e.state.rate.per_secs;
        let (seen, nodes, round_over) = self.observe(name, window, e.round_started);
        let before = e.state.round_budget;
        let out = e.state.request(
            Observed {
                window,
                seen,
                nodes,
                round_over,
            },
            n,
            commit,
        );
        if round_over || before.is_none() {
            e.round_started = Instant::now();
        }
        if commit && out.allowed {
            self.publish(&m);
        }
        Ok(out)
    }

    /// `(seen, nodes, round over)` from the replicated slots.
    fn observe(&self, name: &str, window: u64, round_started: Instant) -> (u64, u64, bool) {
        let Some(r) = &self.repl else {
            return (0, 1, true);
        };
        let seen = r
            .remote_total(SHARED_NAMED_THROTTLES)
            .and_then(|t| t.get(&key(name, window)).copied())
            .unwrap_or(0)
            .max(0) as u64;
        let since = round_started.elapsed();
        let live: Vec<Duration> = r
            .slots()
            .into_iter()
            .filter(|s| s.object == SHARED_NAMED_THROTTLES && s.live)
            .map(|s| s.age)
            .collect();
        let round_over = live.iter().all(|age| *age < since);
        (seen, 1 + live.len() as u64, round_over)
    }

    fn publish(&self, m: &BTreeMap<String, Entry>) {
        if let Some(r) = &self.repl {
            let table: HashMap<Key, i64> = m
                .iter()
                .filter(|(_, e)| e.state.local > 0)
                .map(|(n, e)| {
                    (
                        key(n, e.state.window),
                        i64::try_from(e.state.local).unwrap_or(i64::MAX),
                    )
                })
                .collect();
            r.publish(SHARED_NAMED_THROTTLES, table);
        }
    }

    /// Names with rate and this node's window count, for display.
    pub fn list(&self) -> Vec<(String, Rate, f64, u64)> {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .map(|(n, e)| (n.clone(), e.state.rate, e.state.epsilon, e.state.local))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rates_parse() {
        assert_eq!(
            parse_rate("10/60").unwrap(),
            Rate {
                max: 10,
                per_secs: 60
            }
        );
        assert_eq!(
            parse_rate("5").unwrap(),
            Rate {
                max: 5,
                per_secs: 1
            }
        );
        for bad in ["", "x/5", "5/0", "5/y", "-1/5", "5/99999999999"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert!(check_epsilon(1.0).is_err());
        assert!(check_epsilon(0.0).is_err());
        assert!(check_epsilon(f64::NAN).is_err());
        assert!(check_epsilon(0.5).is_ok());
    }

    fn obs(window: u64, seen: u64, nodes: u64, round_over: bool) -> Observed {
        Observed {
            window,
            seen,
            nodes,
            round_over,
        }
    }

    #[test]
    fn alone_takes_exactly_x_per_window() {
        let mut t = ThrottleState::new(parse_rate("10/60").unwrap(), 0.95);
        let taken = (0..50)
            .filter(|_| t.request(obs(1, 0, 1, true), 1, true).allowed)
            .count();
        assert_eq!(taken, 10);
        assert!(t.request(obs(2, 0, 1, true), 1, true).allowed, "new window");
    }

    #[test]
    fn a_round_limits_what_one_node_takes() {
        let mut t = ThrottleState::new(parse_rate("100/60").unwrap(), 0.5);
        // Two nodes, nothing seen: share = floor(0.5 * 100 / 2) = 25 until the round ends.
        let taken = (0..100)
            .filter(|_| t.request(obs(1, 0, 2, false), 1, true).allowed)
            .count();
        assert_eq!(taken, 25);
        let check = t.request(obs(1, 0, 2, false), 1, false);
        assert!(!check.allowed);
        assert!(t.request(obs(1, 10, 2, true), 1, true).allowed);
    }

    proptest! {
        /// One node never exceeds X in a window, whatever it is told.
        #[test]
        fn one_node_never_exceeds_x(
            x in 0u64..50, eps in 0.05f64..0.99,
            ops in prop::collection::vec((0u64..3, 1u64..4, 1u64..5, any::<bool>(), any::<bool>()), 1..200),
        ) {
            let mut t = ThrottleState::new(Rate { max: x, per_secs: 60 }, eps);
            for (w, n, nodes, over, commit) in ops {
                let before = if w == t.window { t.local } else { 0 };
                let out = t.request(obs(w, 0, nodes, over), n, commit);
                prop_assert_eq!(t.local, before + if out.allowed && commit { n } else { 0 });
                prop_assert!(t.local <= x);
            }
        }

        /// Several nodes in synchronous rounds (every frame of a round arrives before the
        /// next round): the cluster takes at most X + nodes - 1 in a window.
        #[test]
        fn cluster_overshoot_is_bounded(
            x in 0u64..200, eps in 0.05f64..0.99, nodes in 1u64..6,
            demand in prop::collection::vec(prop::collection::vec(0u64..30, 1..6), 1..30),
        ) {
            let rate = Rate { max: x, per_secs: 60 };
            let mut st: Vec<ThrottleState> = (0..nodes).map(|_| ThrottleState::new(rate, eps)).collect();
            for round in demand {
                let seen_all: Vec<u64> = st.iter().map(|s| s.local).collect();
                let total: u64 = seen_all.iter().sum();
                for (i, s) in st.iter_mut().enumerate() {
                    let seen = total - seen_all[i];
                    let want = round.get(i).copied().unwrap_or(0);
                    for j in 0..want {
                        s.request(obs(1, seen, nodes, j == 0), 1, true);
                    }
                }
            }
            let total: u64 = st.iter().map(|s| s.local).sum();
            prop_assert!(total < x + nodes, "took {total} of {x} on {nodes} nodes");
        }
    }
}
