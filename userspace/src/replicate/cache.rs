//! Named caches (`Replicate "NAME" { type = "cache" parameters = "snapshot" max_size = N }`):
//! key → string value with a TTL, last-writer-wins across nodes.
//!
//! Encoding on the generic slots (no new wire kind): every entry is one replicated *key*
//! `'C' ‖ key_len u16 ‖ key ‖ ts u64 ‖ expires u64 ‖ writer_len u8 ‖ writer ‖ tomb u8 ‖
//! value` with the replicated value 1 (present). A node's slot is its whole merged view
//! (the winning entry of every key it holds, deletions as tombstones), so a node that
//! links up receives everything any live member holds in the link-up snapshot, and a
//! write survives its writer leaving. Merging is last-writer-wins on `(ts, writer)`
//! (wall-clock nanoseconds, then the nodename as tiebreak); re-publishing an entry is
//! idempotent, so the fan-out stops after one hop.
//!
//! Without `parameters = "snapshot"` a node ignores entries written before it started
//! (Momentum: pre-existing pairs are not populated until they are updated).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{ReplicationHandle, Sink, slots::Key};

/// The wire's key limit, which bounds key + value + writer.
pub const MAX_ENCODED: usize = 1024;
/// Longest cache key.
pub const MAX_KEY: usize = 255;
/// Deletions are remembered this long (so a late, older write does not resurrect a key).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);
const FIXED: usize = 1 + 2 + 8 + 8 + 1 + 1;

/// Why a cache request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error(
        "bad ttl '{input}': {reason} (seconds, or a number ending in H or M; 0 = never expires)"
    )]
    BadTtl { input: String, reason: &'static str },
    #[error("cache key must be 1..={max} bytes without control characters (got {len})")]
    BadKey { len: usize, max: usize },
    #[error("entry too large: key + value + nodename = {len} bytes, at most {max}")]
    TooLarge { len: usize, max: usize },
    #[error("no cache named '{name}' (configure Replicate \"{name}\" {{ type = \"cache\" }})")]
    Unknown { name: String },
}

/// Parses Momentum's ttl string: seconds, or ending in `H`/`M` for hours/minutes; `0` =
/// never expires (`None`).
pub fn parse_ttl(input: &str) -> Result<Option<Duration>, CacheError> {
    let bad = |reason| CacheError::BadTtl {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'H' | 'h')) => (&s[..i], 3600),
        Some((i, 'M' | 'm')) => (&s[..i], 60),
        Some((i, 'S' | 's')) => (&s[..i], 1),
        Some(_) => (s, 1),
        None => return Err(bad("empty")),
    };
    let n = num
        .trim()
        .parse::<u64>()
        .map_err(|_| bad("not a whole number"))?;
    let secs = n.checked_mul(mult).ok_or_else(|| bad("too large"))?;
    if secs > 10 * 366 * 86_400 {
        return Err(bad("longer than ten years"));
    }
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

/// One cache entry as merged (the value `None` is a deletion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Option<String>,
    /// Write time, wall clock ns: the LWW order, then `writer`.
    pub ts: u64,
    /// Absolute expiry, wall clock ns; 0 = never.
    pub expires: u64,
    pub writer: String,
}

impl Entry {
    fn order(&self) -> (u64, &str) {
        (self.ts, &self.writer)
    }

    fn expired(&self, now: u64) -> bool {
        self.expires != 0 && self.expires <= now
    }

    /// The replicated key bytes.
    pub fn encode(&self) -> Key {
        let v = self.value.as_deref().unwrap_or("");
        let mut k = Vec::with_capacity(FIXED + self.key.len() + self.writer.len() + v.len());
        k.push(b'C');
        k.extend((self.key.len() as u16).to_be_bytes());
        k.extend(self.key.as_bytes());
        k.extend(self.ts.to_be_bytes());
        k.extend(self.expires.to_be_bytes());
        k.push(self.writer.len() as u8);
        k.extend(self.writer.as_bytes());
        k.push(u8::from(self.value.is_none()));
        k.extend(v.as_bytes());
        k
    }

    /// `None` for anything malformed (ignored, like unknown keys elsewhere).
    pub fn decode(b: &[u8]) -> Option<Entry> {
        let (tag, rest) = b.split_first()?;
        if *tag != b'C' {
            return None;
        }
        let (kl, rest) = rest.split_first_chunk::<2>()?;
        let kl = usize::from(u16::from_be_bytes(*kl));
        let (key, rest) = (rest.get(..kl)?, rest.get(kl..)?);
        let (ts, rest) = rest.split_first_chunk::<8>()?;
        let (ex, rest) = rest.split_first_chunk::<8>()?;
        let (wl, rest) = rest.split_first()?;
        let wl = usize::from(*wl);
        let (writer, rest) = (rest.get(..wl)?, rest.get(wl..)?);
        let (tomb, value) = rest.split_first()?;
        let value = match tomb {
            0 => Some(String::from_utf8(value.to_vec()).ok()?),
            1 if value.is_empty() => None,
            _ => return None,
        };
        let key = String::from_utf8(key.to_vec()).ok()?;
        if key.is_empty() {
            return None;
        }
        Some(Entry {
            key,
            value,
            ts: u64::from_be_bytes(*ts),
            expires: u64::from_be_bytes(*ex),
            writer: String::from_utf8(writer.to_vec()).ok()?,
        })
    }
}

/// Counters of one cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    /// Entries dropped because `max_size` was reached (oldest first).
    pub evicted: u64,
    /// Remote entries ignored: older than this node without `snapshot`.
    pub skipped_old: u64,
    pub expired: u64,
}

/// One cache's merged state on this node (pure; the LWW rules are tested here).
#[derive(Debug)]
pub struct CacheStore {
    pub nodename: String,
    pub snapshot: bool,
    pub max_size: Option<u64>,
    /// When this node started (wall ns): without `snapshot`, older remote writes are ignored.
    pub started: u64,
    entries: HashMap<String, Entry>,
    /// `(ts, writer, key)` for oldest-first eviction.
    order: BTreeSet<(u64, String, String)>,
    stats: CacheStats,
    /// Slot changes since the last [`take_changes`](Self::take_changes), in order: an
    /// entry's encoded key → 1 when it enters, → 0 when it is replaced, evicted or purged.
    changes: Vec<(Key, i64)>,
    /// Wall ns of the last purge (purging scans every entry: at most once a second).
    last_purge: u64,
}

impl CacheStore {
    pub fn new(nodename: &str, snapshot: bool, max_size: Option<u64>, started: u64) -> Self {
        CacheStore {
            nodename: nodename.to_owned(),
            snapshot,
            max_size,
            started,
            entries: HashMap::new(),
            order: BTreeSet::new(),
            stats: CacheStats::default(),
            changes: Vec::new(),
            last_purge: 0,
        }
    }

    fn insert(&mut self, e: Entry) {
        if let Some(old) = self.entries.remove(&e.key) {
            self.changes.push((old.encode(), 0));
            self.order.remove(&(old.ts, old.writer, old.key));
        }
        self.changes.push((e.encode(), 1));
        self.order.insert((e.ts, e.writer.clone(), e.key.clone()));
        self.entries.insert(e.key.clone(), e);
        if let Some(max) = self.max_size {
            while self.entries.len() as u64 > max {
                let Some((_, _, k)) = self.order.pop_first() else {
                    break;
                };
                if let Some(gone) = self.entries.remove(&k) {
                    self.changes.push((gone.encode(), 0));
                }
                self.stats.evicted += 1;
            }
        }
    }

    /// The slot changes since the last call (what [`Cache`] publishes key by key).
    pub fn take_changes(&mut self) -> Vec<(Key, i64)> {
        std::mem::take(&mut self.changes)
    }

    /// [`purge`](Self::purge), at most once a second.
    fn purge_due(&mut self, now: u64) {
        if now.saturating_sub(self.last_purge) >= 1_000_000_000 {
            self.last_purge = now;
            self.purge(now);
        }
    }

    /// Merges an entry (from a peer, or our own); true if it won and changed the store.
    pub fn merge(&mut self, e: Entry, now: u64) -> bool {
        if e.writer != self.nodename && !self.snapshot && e.ts < self.started {
            self.stats.skipped_old += 1;
            return false;
        }
        if e.expired(now) {
            return false;
        }
        if let Some(cur) = self.entries.get(&e.key)
            && cur.order() >= e.order()
        {
            return false;
        }
        self.insert(e);
        true
    }

    fn write(
        &mut self,
        key: &str,
        value: Option<String>,
        expires: u64,
        now: u64,
    ) -> Result<Entry, CacheError> {
        if key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control) {
            return Err(CacheError::BadKey {
                len: key.len(),
                max: MAX_KEY,
            });
        }
        // A local write always wins over what this node has seen (even with a slow clock).
        let ts = self
            .entries
            .get(key)
            .map_or(now, |c| now.max(c.ts.saturating_add(1)));
        let e = Entry {
            key: key.to_owned(),
            value,
            ts,
            expires,
            writer: self.nodename.clone(),
        };
        let len = e.encode().len();
        if len > MAX_ENCODED || self.nodename.len() > 255 {
            return Err(CacheError::TooLarge {
                len,
                max: MAX_ENCODED,
            });
        }
        self.insert(e.clone());
        Ok(e)
    }

    /// `ec_cluster_cache_set name key value ttl`.
    pub fn set(
        &mut self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
        now: u64,
    ) -> Result<Entry, CacheError> {
        let expires = ttl.map_or(0, |t| {
            now.saturating_add(t.as_nanos().min(u128::from(u64::MAX)) as u64)
        });
        self.write(key, Some(value.to_owned()), expires, now)
    }

    /// Deletes cluster-wide (a tombstone that wins like a write).
    pub fn delete(&mut self, key: &str, now: u64) -> Result<Entry, CacheError> {
        let expires = now.saturating_add(TOMBSTONE_TTL.as_nanos() as u64);
        self.write(key, None, expires, now)
    }

    /// The live value of `key`.
    pub fn get(&self, key: &str, now: u64) -> Option<&Entry> {
        self.entries
            .get(key)
            .filter(|e| e.value.is_some() && !e.expired(now))
    }

    /// Drops expired entries and tombstones; how many.
    pub fn purge(&mut self, now: u64) -> usize {
        let gone: Vec<Entry> = self
            .entries
            .values()
            .filter(|e| e.expired(now))
            .cloned()
            .collect();
        for e in &gone {
            self.entries.remove(&e.key);
            self.order.remove(&(e.ts, e.writer.clone(), e.key.clone()));
            self.changes.push((e.encode(), 0));
        }
        self.stats.expired += gone.len() as u64;
        gone.len()
    }

    /// This node's slot: every entry it holds, value 1.
    pub fn slot_table(&self, now: u64) -> HashMap<Key, i64> {
        self.entries
            .values()
            .filter(|e| !e.expired(now))
            .map(|e| (e.encode(), 1))
            .collect()
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.entries.len(),
            ..self.stats
        }
    }
}

pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

/// A named cache on this node: the store, published as this node's slot after changes.
#[derive(Debug)]
pub struct Cache {
    name: String,
    store: Mutex<CacheStore>,
    repl: Option<ReplicationHandle>,
}

impl Cache {
    pub fn new(
        name: &str,
        nodename: &str,
        snapshot: bool,
        max_size: Option<u64>,
        repl: Option<ReplicationHandle>,
    ) -> Arc<Self> {
        Arc::new(Cache {
            name: name.to_owned(),
            store: Mutex::new(CacheStore::new(nodename, snapshot, max_size, wall_ns())),
            repl,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends what changed (entries in, replaced, evicted, expired) key by key: a write
    /// costs O(changed keys), not O(entries).
    fn publish(&self, st: &mut CacheStore, now: u64) {
        st.purge_due(now);
        let changes = st.take_changes();
        if let Some(r) = &self.repl {
            r.publish_keys(&self.name, changes);
        }
    }

    pub fn set(&self, key: &str, value: &str, ttl: &str) -> Result<(), CacheError> {
        let ttl = parse_ttl(ttl)?;
        let now = wall_ns();
        let mut st = self.store.lock().unwrap_or_else(|p| p.into_inner());
        st.set(key, value, ttl, now)?;
        self.publish(&mut st, now);
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let st = self.store.lock().unwrap_or_else(|p| p.into_inner());
        st.get(key, wall_ns()).and_then(|e| e.value.clone())
    }

    /// True if a live value was deleted.
    pub fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let now = wall_ns();
        let mut st = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let had = st.get(key, now).is_some();
        st.delete(key, now)?;
        self.publish(&mut st, now);
        Ok(had)
    }

    pub fn stats(&self) -> CacheStats {
        self.store.lock().unwrap_or_else(|p| p.into_inner()).stats()
    }

    /// The replication sink: merges the entries peers hold and re-publishes this node's
    /// slot when one won (runs on the reactor thread; only brief locks).
    pub fn sink(self: &Arc<Self>) -> Sink {
        let me = Arc::clone(self);
        Box::new(move |keys| {
            let now = wall_ns();
            let mut st = me.store.lock().unwrap_or_else(|p| p.into_inner());
            let mut changed = false;
            for (k, total) in keys {
                if total > 0
                    && let Some(e) = Entry::decode(&k)
                {
                    changed |= st.merge(e, now);
                }
            }
            if changed {
                me.publish(&mut st, now);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("0").unwrap(), None);
        assert_eq!(parse_ttl("30").unwrap(), Some(Duration::from_secs(30)));
        assert_eq!(parse_ttl("2H").unwrap(), Some(Duration::from_secs(7200)));
        assert_eq!(parse_ttl("5M").unwrap(), Some(Duration::from_secs(300)));
        assert_eq!(parse_ttl(" 7m ").unwrap(), Some(Duration::from_secs(420)));
        assert_eq!(parse_ttl("0H").unwrap(), None);
        for bad in [
            "",
            "H",
            "-1",
            "1.5",
            "10D",
            "99999999999999999999",
            "999999999H",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    fn entry(key: &str, value: Option<&str>, ts: u64, writer: &str) -> Entry {
        Entry {
            key: key.into(),
            value: value.map(Into::into),
            ts,
            expires: 0,
            writer: writer.into(),
        }
    }

    #[test]
    fn encoding_roundtrips_and_rejects_garbage() {
        for e in [
            entry("k", Some("v"), 5, "n1"),
            entry("k ü", Some(""), u64::MAX, ""),
            entry("x", None, 1, "node-3"),
        ] {
            assert_eq!(Entry::decode(&e.encode()), Some(e));
        }
        let good = entry("key", Some("val"), 9, "n").encode();
        for cut in 0..good.len() - 3 {
            assert_eq!(Entry::decode(&good[..cut]), None, "cut {cut}");
        }
        let mut tomb_with_value = entry("k", None, 1, "n").encode();
        tomb_with_value.push(b'x');
        assert_eq!(Entry::decode(&tomb_with_value), None);
        assert_eq!(Entry::decode(b"Xabc"), None);
    }

    #[test]
    fn last_writer_wins_with_nodename_tiebreak() {
        let mut s = CacheStore::new("n1", true, None, 0);
        assert!(s.merge(entry("k", Some("a"), 10, "n2"), 1));
        assert!(!s.merge(entry("k", Some("old"), 9, "n3"), 1));
        assert!(
            s.merge(entry("k", Some("b"), 10, "n3"), 1),
            "same ts: higher name wins"
        );
        assert!(!s.merge(entry("k", Some("c"), 10, "n2"), 1));
        assert_eq!(s.get("k", 1).unwrap().value.as_deref(), Some("b"));
        assert!(s.merge(entry("k", None, 11, "n2"), 1));
        assert!(s.get("k", 1).is_none(), "tombstone hides the key");
        // A local write after what was seen wins, even with a clock behind.
        s.set("k", "mine", None, 5).unwrap();
        assert_eq!(s.get("k", 6).unwrap().value.as_deref(), Some("mine"));
    }

    #[test]
    fn ttl_expiry_and_purge() {
        let mut s = CacheStore::new("n1", true, None, 0);
        s.set("a", "1", Some(Duration::from_secs(1)), 0).unwrap();
        s.set("b", "2", None, 0).unwrap();
        assert!(s.get("a", 999_999_999).is_some());
        assert!(s.get("a", 1_000_000_000).is_none());
        assert_eq!(s.purge(1_000_000_000), 1);
        assert_eq!(s.slot_table(1_000_000_000).len(), 1);
    }

    #[test]
    fn without_snapshot_older_remote_writes_are_ignored() {
        let mut s = CacheStore::new("n3", false, None, 100);
        assert!(!s.merge(entry("old", Some("x"), 99, "n1"), 200));
        assert!(s.merge(entry("new", Some("y"), 150, "n1"), 200));
        assert_eq!(s.stats().skipped_old, 1);
    }

    #[test]
    fn max_size_evicts_oldest_and_counts() {
        let mut s = CacheStore::new("n1", true, Some(2), 0);
        s.merge(entry("a", Some("1"), 1, "n2"), 0);
        s.merge(entry("b", Some("2"), 3, "n2"), 0);
        s.merge(entry("c", Some("3"), 2, "n2"), 0);
        assert!(s.get("a", 0).is_none());
        assert!(s.get("b", 0).is_some() && s.get("c", 0).is_some());
        assert_eq!(s.stats().evicted, 1);
        assert_eq!(s.stats().entries, 2);
    }

    #[test]
    fn oversized_entries_are_refused() {
        let mut s = CacheStore::new("n1", true, None, 0);
        assert!(matches!(
            s.set("k", &"v".repeat(MAX_ENCODED), None, 0),
            Err(CacheError::TooLarge { .. })
        ));
        assert!(matches!(
            s.set("", "v", None, 0),
            Err(CacheError::BadKey { .. })
        ));
    }

    /// What a cache publishes key by key keeps its slot equal to its whole merged view,
    /// and one write after many costs two keys (the old entry out, the new one in).
    #[test]
    fn per_key_changes_keep_the_slot_equal_to_the_view() {
        use crate::replicate::slots::OwnSlot;
        let mut s = CacheStore::new("n1", true, Some(50), 0);
        let mut slot = OwnSlot::default();
        let sync = |s: &mut CacheStore, slot: &mut OwnSlot| {
            for (k, v) in s.take_changes() {
                slot.set(k, v);
            }
        };
        for i in 0..60u64 {
            s.set(
                &format!("k{i}"),
                "v",
                Some(Duration::from_secs(1 + i % 3)),
                i,
            )
            .unwrap();
            s.merge(entry(&format!("r{i}"), Some("x"), i, "n2"), i);
        }
        s.delete("k59", 100).unwrap();
        sync(&mut s, &mut slot);
        assert_eq!(slot.values(), &s.slot_table(100));
        let _ = slot.take_delta(false);
        s.set("k58", "new", None, 200).unwrap();
        sync(&mut s, &mut slot);
        assert_eq!(
            slot.pending(),
            2,
            "one write = old entry out + new entry in"
        );
        // Expiry (purge) goes out key by key too.
        s.purge(3_000_000_000);
        sync(&mut s, &mut slot);
        assert_eq!(slot.values(), &s.slot_table(3_000_000_000));
        assert!(
            s.stats().evicted > 0 && s.stats().expired > 0,
            "{:?}",
            s.stats()
        );
    }

    proptest! {
        /// Any delivery order of the same writes converges to the same store.
        #[test]
        fn merge_converges(writes in prop::collection::vec(
            (0u8..4, 0u64..20, 0u8..3), 1..40),
            seed in any::<u64>())
        {
            // One writer writes a key at most once per timestamp: the value follows.
            let es: Vec<Entry> = writes.iter().map(|(k, ts, w)| Entry {
                key: format!("k{k}"),
                value: ((ts + u64::from(*w)) % 3 != 0).then(|| format!("v{ts}-{w}")),
                ts: *ts,
                expires: 0,
                writer: format!("n{w}"),
            }).collect();
            let mut a = CacheStore::new("x", true, None, 0);
            let mut b = CacheStore::new("y", true, None, 0);
            for e in &es { a.merge(e.clone(), 0); }
            let mut shuffled = es.clone();
            let n = shuffled.len();
            for i in 0..n {
                let j = (seed.wrapping_mul(i as u64 + 7) % n as u64) as usize;
                shuffled.swap(i, j);
            }
            for e in shuffled { b.merge(e, 0); }
            for k in 0..4 {
                let key = format!("k{k}");
                prop_assert_eq!(a.entries.get(&key), b.entries.get(&key));
            }
        }
    }
}
