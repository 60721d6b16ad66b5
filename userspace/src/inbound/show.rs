//! `inbound show [--top N]`: one line per policy netblock with current connections, SYN
//! rate, drops, limit and action. The rate needs two samples of the kernel's running SYN
//! total, so a [`SynRateCalculator`] keeps the previous one per netblock.

use std::{collections::HashMap, time::Instant};

use super::cidr_string;
use crate::config::{Cidr, NetblockAction};

/// One netblock as the poller sees it after reading the kernel maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetblockRow {
    pub cidr: Cidr,
    /// Current connections (cluster-wide when the caller passes the aggregate).
    pub current: u64,
    /// Running total of counted SYNs since the program was loaded.
    pub syn_total: u64,
    /// Running total of SYNs dropped for being over the limit.
    pub dropped: u64,
    /// `None` = count only.
    pub limit: Option<u64>,
    pub action: NetblockAction,
}

/// SYNs per second per netblock, from the last two samples of `syn_total`.
#[derive(Debug, Default, Clone)]
pub struct SynRateCalculator {
    prev: HashMap<Cidr, (u64, Instant)>,
    rates: HashMap<Cidr, f64>,
}

impl SynRateCalculator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record one sample of every row taken at `at`. A total that went down (program
    /// reloaded, counter reset) or no elapsed time yields no rate rather than a bogus one.
    pub fn observe(&mut self, rows: &[NetblockRow], at: Instant) {
        for r in rows {
            if let Some((total, then)) = self.prev.get(&r.cidr) {
                let secs = at.saturating_duration_since(*then).as_secs_f64();
                if r.syn_total >= *total && secs > 0.0 {
                    self.rates
                        .insert(r.cidr, (r.syn_total - total) as f64 / secs);
                } else {
                    self.rates.remove(&r.cidr);
                }
            }
            self.prev.insert(r.cidr, (r.syn_total, at));
        }
        // Netblocks that left the configuration.
        self.prev.retain(|c, _| rows.iter().any(|r| r.cidr == *c));
        self.rates.retain(|c, _| rows.iter().any(|r| r.cidr == *c));
    }

    /// SYNs per second between the last two samples; `None` after only one sample.
    pub fn rate(&self, cidr: &Cidr) -> Option<f64> {
        self.rates.get(cidr).copied()
    }
}

/// Render the table. With `top`, only the `N` netblocks with the most current
/// connections (ties: higher SYN rate, then configuration order); otherwise all rows in
/// the given order. Unknown values print as `-`.
pub fn render_inbound_show(
    rows: &[NetblockRow],
    rates: &SynRateCalculator,
    top: Option<usize>,
) -> String {
    let mut idx: Vec<usize> = (0..rows.len()).collect();
    if let Some(n) = top {
        let rate = |i: usize| rates.rate(&rows[i].cidr).unwrap_or(0.0);
        idx.sort_by(|&a, &b| {
            rows[b]
                .current
                .cmp(&rows[a].current)
                .then(rate(b).total_cmp(&rate(a)))
                .then(a.cmp(&b))
        });
        idx.truncate(n);
    }
    let mut out = format!(
        "{:<43} {:>10} {:>10} {:>10} {:>10}  {}\n",
        "netblock", "current", "syn/s", "dropped", "limit", "action"
    );
    for i in idx {
        let r = &rows[i];
        let rate = rates
            .rate(&r.cidr)
            .map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        let limit = r.limit.map_or_else(|| "-".to_string(), |v| v.to_string());
        let action = match r.action {
            NetblockAction::Drop => "drop",
            NetblockAction::Count => "count",
        };
        out.push_str(&format!(
            "{:<43} {:>10} {:>10} {:>10} {:>10}  {}\n",
            cidr_string(&r.cidr),
            r.current,
            rate,
            r.dropped,
            limit,
            action
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::parse_cidr;
    use std::time::Duration;

    fn row(c: &str, current: u64, syn_total: u64, dropped: u64, limit: Option<u64>) -> NetblockRow {
        NetblockRow {
            cidr: parse_cidr(c).unwrap(),
            current,
            syn_total,
            dropped,
            limit,
            action: if limit.is_some() {
                NetblockAction::Drop
            } else {
                NetblockAction::Count
            },
        }
    }

    #[test]
    fn rate_needs_two_samples_and_handles_reset() {
        let t0 = Instant::now();
        let mut calc = SynRateCalculator::new();
        let a = parse_cidr("192.0.2.0/24").unwrap();
        calc.observe(&[row("192.0.2.0/24", 1, 100, 0, None)], t0);
        assert_eq!(calc.rate(&a), None);
        calc.observe(
            &[row("192.0.2.0/24", 1, 400, 0, None)],
            t0 + Duration::from_millis(1500),
        );
        assert_eq!(calc.rate(&a), Some(200.0));
        // Counter reset: no rate, and the next sample measures from the reset value.
        calc.observe(
            &[row("192.0.2.0/24", 1, 10, 0, None)],
            t0 + Duration::from_secs(2),
        );
        assert_eq!(calc.rate(&a), None);
        calc.observe(
            &[row("192.0.2.0/24", 1, 20, 0, None)],
            t0 + Duration::from_secs(3),
        );
        assert_eq!(calc.rate(&a), Some(10.0));
        // Same instant twice: no division by zero.
        calc.observe(
            &[row("192.0.2.0/24", 1, 30, 0, None)],
            t0 + Duration::from_secs(3),
        );
        assert_eq!(calc.rate(&a), None);
        // A netblock removed from the configuration is forgotten.
        calc.observe(&[], t0 + Duration::from_secs(4));
        assert_eq!(calc.rate(&a), None);
    }

    #[test]
    fn renders_table_and_top() {
        let t0 = Instant::now();
        let mut rows = vec![
            row("192.0.2.0/24", 3, 10, 0, None),
            row("198.51.100.0/24", 40, 100, 7, Some(40)),
            row("2001:db8::/32", 40, 50, 0, Some(1000)),
        ];
        let mut calc = SynRateCalculator::new();
        calc.observe(&rows, t0);
        rows[0].syn_total = 12;
        rows[1].syn_total = 150;
        rows[2].syn_total = 60;
        calc.observe(&rows, t0 + Duration::from_secs(2));
        let all = render_inbound_show(&rows, &calc, None);
        let expected = "\
netblock                                       current      syn/s    dropped      limit  action
192.0.2.0/24                                         3        1.0          0          -  count
198.51.100.0/24                                     40       25.0          7         40  drop
2001:db8::/32                                       40        5.0          0       1000  drop
";
        assert_eq!(all, expected);
        let top = render_inbound_show(&rows, &calc, Some(2));
        let lines: Vec<&str> = top.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("198.51.100.0/24 "));
        assert!(lines[2].starts_with("2001:db8::/32 "));
        // First sample only: rates unknown.
        let mut fresh = SynRateCalculator::new();
        fresh.observe(&rows, t0);
        assert!(render_inbound_show(&rows[..1], &fresh, None).contains("          -          0"));
    }
}
