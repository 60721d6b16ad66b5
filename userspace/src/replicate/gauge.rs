//! Gauge tables (`outbound_domains`, `outbound_binding_domains`): a count per string key
//! (a domain, or `binding::domain`) that local programs raise and lower through the local
//! API. This node's counts are its slot; the cluster figure is the sum over the live
//! slots, so a departed node's connections stop counting at the view change.
//!
//! Keys on the wire are the UTF-8 key bytes; the domain part is lower-cased so every node
//! counts `AOL.com` and `aol.com` together.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use super::{ReplicationHandle, slots::Key};

/// Momentum's gauge table of outbound connections per destination domain.
pub const OUTBOUND_DOMAINS: &str = "outbound_domains";
/// Per `binding::domain` (for `cluster_scope_max_outbound_connections`).
pub const OUTBOUND_BINDING_DOMAINS: &str = "outbound_binding_domains";
/// The kind shown by `cluster shared list`.
pub const LIST_KIND: &str = "lazy, gauge table w/ snapshots";
/// Longest key accepted (the wire allows 1024 bytes).
pub const MAX_KEY: usize = 512;

/// Why a gauge operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GaugeError {
    #[error("gauge key must be 1..={max} bytes without control characters (got {len} bytes)")]
    BadKey { len: usize, max: usize },
    #[error("gauge '{key}' of '{table}' is {current}: decrementing by {by} would make it negative")]
    Underflow {
        table: String,
        key: String,
        current: i64,
        by: i64,
    },
    #[error("gauge '{key}' of '{table}' would overflow")]
    Overflow { table: String, key: String },
}

/// Normalises a key: the domain (after the last `::`) lower-cased.
pub fn normalize_key(key: &str) -> Result<String, GaugeError> {
    let key = key.trim();
    if key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control) {
        return Err(GaugeError::BadKey {
            len: key.len(),
            max: MAX_KEY,
        });
    }
    Ok(match key.rsplit_once("::") {
        Some((binding, domain)) => format!("{binding}::{}", domain.to_ascii_lowercase()),
        None => key.to_ascii_lowercase(),
    })
}

/// Converts replicated values (key bytes → count) into displayable ones; non-UTF-8 keys
/// (from a newer or broken peer) are skipped.
pub fn decode_table(values: &HashMap<Key, i64>) -> BTreeMap<String, i64> {
    values
        .iter()
        .filter(|(_, v)| **v != 0)
        .filter_map(|(k, v)| String::from_utf8(k.clone()).ok().map(|s| (s, *v)))
        .collect()
}

/// Momentum's `cluster shared show outbound_domain` format: header, then
/// `domain:  count` right-aligned (key in 60 columns, count in 13).
pub fn render(name: &str, view: &str, values: &BTreeMap<String, i64>) -> String {
    let mut out = format!("lazy, snapped gauge table '{name}', view '{view}'\n");
    for (k, v) in values {
        out.push_str(&format!("{k:>60}:{v:>13}\n"));
    }
    out
}

/// One gauge table: this node's counts, published as its slot on every change.
#[derive(Debug)]
pub struct GaugeTable {
    name: String,
    local: Mutex<BTreeMap<String, i64>>,
    repl: Option<ReplicationHandle>,
}

impl GaugeTable {
    /// `repl` = `None`: replication is off, the figures are this node's own.
    pub fn new(name: &str, repl: Option<ReplicationHandle>) -> Self {
        GaugeTable {
            name: name.to_owned(),
            local: Mutex::new(BTreeMap::new()),
            repl,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds `delta` (may be negative) to this node's count of `key`; returns the new local
    /// count. A count never goes below zero (a decrement without its increment is a bug
    /// in the caller, reported, not hidden).
    pub fn add(&self, key: &str, delta: i64) -> Result<i64, GaugeError> {
        let key = normalize_key(key)?;
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let current = local.get(&key).copied().unwrap_or(0);
        let next = current
            .checked_add(delta)
            .ok_or_else(|| GaugeError::Overflow {
                table: self.name.clone(),
                key: key.clone(),
            })?;
        if next < 0 {
            return Err(GaugeError::Underflow {
                table: self.name.clone(),
                key,
                current,
                by: -delta,
            });
        }
        if next == 0 {
            local.remove(&key);
        } else {
            local.insert(key, next);
        }
        // Published under the lock so slot updates keep the order of the changes.
        if let Some(r) = &self.repl {
            let table = local
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), *v))
                .collect();
            r.publish(&self.name, table);
        }
        Ok(next)
    }

    /// This node's count of `key`.
    pub fn local(&self, key: &str) -> Result<i64, GaugeError> {
        let key = normalize_key(key)?;
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        Ok(local.get(&key).copied().unwrap_or(0))
    }

    /// The cluster-wide count of `key`: this node's plus the live remote slots.
    pub fn cluster(&self, key: &str) -> Result<i64, GaugeError> {
        let key = normalize_key(key)?;
        Ok(self.totals().get(&key).copied().unwrap_or(0))
    }

    /// Every key's cluster-wide count.
    pub fn totals(&self) -> BTreeMap<String, i64> {
        match self.repl.as_ref().and_then(|r| r.global(&self.name)) {
            Some(g) => decode_table(&g),
            None => self.local.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// One node's slot (this node's own included); `None` if unknown.
    pub fn slot(&self, node: &str) -> Option<BTreeMap<String, i64>> {
        match &self.repl {
            Some(r) => r.slot(&self.name, node).map(|s| decode_table(&s)),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::{ObjectSpec, ReplicationConfig, replication};
    use std::{sync::Arc, time::Duration};

    #[test]
    fn keys_are_normalised_and_checked() {
        assert_eq!(normalize_key(" AOL.com ").unwrap(), "aol.com");
        assert_eq!(
            normalize_key("Bind-A::Hotmail.COM").unwrap(),
            "Bind-A::hotmail.com"
        );
        assert!(normalize_key("").is_err());
        assert!(normalize_key("a\nb").is_err());
        assert!(normalize_key(&"x".repeat(MAX_KEY + 1)).is_err());
    }

    #[test]
    fn render_matches_momentum_sample() {
        let mut m = BTreeMap::new();
        m.insert("aol.com".to_owned(), 10);
        m.insert("hotmail.com".to_owned(), 246);
        let text = render("outbound_domain", "global", &m);
        assert_eq!(
            text,
            "lazy, snapped gauge table 'outbound_domain', view 'global'\n\
             \x20                                                    aol.com:           10\n\
             \x20                                                hotmail.com:          246\n"
        );
    }

    #[test]
    fn local_only_counts_and_underflow() {
        let g = GaugeTable::new(OUTBOUND_DOMAINS, None);
        assert_eq!(g.add("aol.com", 2).unwrap(), 2);
        assert_eq!(g.add("AOL.COM", -1).unwrap(), 1);
        assert!(matches!(
            g.add("aol.com", -2),
            Err(GaugeError::Underflow { current: 1, .. })
        ));
        assert_eq!(g.cluster("aol.com").unwrap(), 1);
        assert_eq!(g.add("aol.com", -1).unwrap(), 0);
        assert!(g.totals().is_empty());
        assert!(matches!(
            g.add("x.com", i64::MAX).and_then(|_| g.add("x.com", 1)),
            Err(GaugeError::Overflow { .. })
        ));
    }

    #[test]
    fn published_into_the_own_slot() {
        let (_svc, h) = replication(
            ReplicationConfig::new(
                "n1",
                vec![ObjectSpec {
                    name: OUTBOUND_DOMAINS.into(),
                    max_delay: Duration::from_millis(10),
                    max_pending: 100,
                }],
            ),
            Arc::new(Vec::new),
            Vec::new(),
        );
        let g = GaugeTable::new(OUTBOUND_DOMAINS, Some(h.clone()));
        g.add("yahoo.com", 3).unwrap();
        g.add("aol.com", 1).unwrap();
        g.add("aol.com", -1).unwrap();
        let slot = g.slot("n1").unwrap();
        assert_eq!(slot.get("yahoo.com"), Some(&3));
        assert_eq!(slot.get("aol.com"), None);
        assert_eq!(g.cluster("yahoo.com").unwrap(), 3);
    }
}
