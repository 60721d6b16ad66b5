//! One replicated object as a set of slots: this node's own slot (it is the only writer)
//! and one copy of every other node's slot, plus the running sum over the *live* remote
//! slots. Pure state: every merge rule is unit- and property-tested here.
//!
//! Rules: values are absolute per key (0 = absent); a snapshot replaces a slot; a delta
//! applies only on top of the slot's previous frame (same incarnation, `seq + 1`); older
//! frames are duplicates and change nothing; a gap means the link lost sync and must be
//! reset (the sender then starts over with a snapshot).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

use super::wire::{FLAG_FIRST, FLAG_LAST, Message, MsgKind};
use crate::engine::ConnId;

/// A replicated key (opaque bytes: an address, a CIDR, a domain …).
pub type Key = Vec<u8>;

/// This node's own slot: current values and the keys changed since the last delta.
#[derive(Debug, Default, Clone)]
pub struct OwnSlot {
    values: HashMap<Key, i64>,
    pending: BTreeSet<Key>,
    /// Sequence number of the last delta built (snapshots carry it unchanged).
    pub seq: u64,
}

impl OwnSlot {
    /// Makes the slot equal `next` (the poller's full local table); returns how many keys
    /// changed. Zero values are absent.
    pub fn replace_all(&mut self, next: HashMap<Key, i64>) -> usize {
        let mut changed = 0;
        for (k, v) in &next {
            if *v != 0 && self.values.get(k) != Some(v) {
                self.pending.insert(k.clone());
                changed += 1;
            }
        }
        for k in self.values.keys() {
            if next.get(k).is_none_or(|v| *v == 0) {
                self.pending.insert(k.clone());
                changed += 1;
            }
        }
        self.values = next.into_iter().filter(|(_, v)| *v != 0).collect();
        changed
    }

    /// Sets one key (for objects fed key by key).
    pub fn set(&mut self, key: Key, value: i64) {
        let old = self.values.get(&key).copied().unwrap_or(0);
        if old != value {
            if value == 0 {
                self.values.remove(&key);
            } else {
                self.values.insert(key.clone(), value);
            }
            self.pending.insert(key);
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The changed keys with their current values; `None` when nothing changed and
    /// `keepalive` is false (then an empty delta still goes out).
    pub fn take_delta(&mut self, keepalive: bool) -> Option<Vec<(Key, i64)>> {
        if self.pending.is_empty() && !keepalive {
            return None;
        }
        let entries = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|k| {
                let v = self.values.get(&k).copied().unwrap_or(0);
                (k, v)
            })
            .collect();
        Some(entries)
    }

    /// The sequence number for the next delta frame.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Every non-zero key (a snapshot at [`seq`](Self::seq)).
    pub fn entries(&self) -> Vec<(Key, i64)> {
        let mut v: Vec<(Key, i64)> = self.values.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort();
        v
    }

    pub fn values(&self) -> &HashMap<Key, i64> {
        &self.values
    }
}

/// Another node's slot as last received.
#[derive(Debug, Clone)]
pub struct RemoteSlot {
    pub boot: u64,
    pub seq: u64,
    pub values: HashMap<Key, i64>,
    /// When the last frame of this slot was applied (staleness).
    pub last_frame: Instant,
    /// Sender clock → our clock at the last frame (same-host clocks only mean anything).
    pub lag: Duration,
    /// The link the slot's current stream arrives on; `None` once it closed.
    pub conn: Option<ConnId>,
}

/// A snapshot arriving in chunks.
#[derive(Debug)]
struct Staging {
    conn: ConnId,
    boot: u64,
    seq: u64,
    values: HashMap<Key, i64>,
}

/// What applying a frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The slot changed (or a chunk was staged).
    Ok,
    /// An old or repeated frame: ignored.
    Duplicate,
}

/// Why a frame cannot be applied: the link is out of sync and is reset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("delta seq {seq} from {node} does not follow {have:?}: resync needed")]
    Gap {
        node: String,
        seq: u64,
        have: Option<u64>,
    },
    #[error("snapshot chunk from {node} without a first chunk, or interleaved")]
    Chunk { node: String },
}

/// One replicated object: own slot, remote slots, live set and remote totals.
#[derive(Debug)]
pub struct Table {
    pub name: String,
    pub own: OwnSlot,
    remotes: BTreeMap<String, RemoteSlot>,
    staging: HashMap<String, Staging>,
    /// Nodes whose slots count (the effective view, minus this node).
    live: HashSet<String>,
    remote_total: HashMap<Key, i64>,
    dirty: HashSet<Key>,
    /// Slots dropped because their node left the view (or restarted).
    pub dropped_slots: u64,
}

impl Table {
    pub fn new(name: &str) -> Self {
        Table {
            name: name.to_owned(),
            own: OwnSlot::default(),
            remotes: BTreeMap::new(),
            staging: HashMap::new(),
            live: HashSet::new(),
            remote_total: HashMap::new(),
            dirty: HashSet::new(),
            dropped_slots: 0,
        }
    }

    fn bump(&mut self, node: &str, key: &Key, old: i64, new: i64) {
        if old != new && self.live.contains(node) {
            let t = self.remote_total.entry(key.clone()).or_insert(0);
            *t += new - old;
            if *t == 0 {
                self.remote_total.remove(key);
            }
            self.dirty.insert(key.clone());
        }
    }

    fn replace_slot(&mut self, node: &str, slot: RemoteSlot) {
        let old = self
            .remotes
            .remove(node)
            .map(|s| s.values)
            .unwrap_or_default();
        for (k, v) in &old {
            let new = slot.values.get(k).copied().unwrap_or(0);
            self.bump(node, k, *v, new);
        }
        for (k, v) in &slot.values {
            if !old.contains_key(k) {
                self.bump(node, k, 0, *v);
            }
        }
        self.remotes.insert(node.to_owned(), slot);
    }

    /// Applies a decoded frame from `node` (the authenticated peer name) on `conn`.
    pub fn apply(
        &mut self,
        node: &str,
        conn: ConnId,
        m: Message,
        now: Instant,
        lag: Duration,
    ) -> Result<Applied, ApplyError> {
        match m.kind {
            MsgKind::Snapshot => {
                if m.flags & FLAG_FIRST != 0 {
                    self.staging.insert(
                        node.to_owned(),
                        Staging {
                            conn,
                            boot: m.boot,
                            seq: m.seq,
                            values: HashMap::new(),
                        },
                    );
                }
                let st = match self.staging.get_mut(node) {
                    Some(st) if st.conn == conn && st.boot == m.boot && st.seq == m.seq => st,
                    _ => {
                        self.staging.remove(node);
                        return Err(ApplyError::Chunk {
                            node: node.to_owned(),
                        });
                    }
                };
                for (k, v) in m.entries {
                    if v != 0 {
                        st.values.insert(k, v);
                    } else {
                        st.values.remove(&k);
                    }
                }
                if m.flags & FLAG_LAST == 0 {
                    return Ok(Applied::Ok);
                }
                let Some(st) = self.staging.remove(node) else {
                    return Ok(Applied::Ok);
                };
                if let Some(cur) = self.remotes.get(node)
                    && (st.boot, st.seq) < (cur.boot, cur.seq)
                {
                    return Ok(Applied::Duplicate);
                }
                self.replace_slot(
                    node,
                    RemoteSlot {
                        boot: st.boot,
                        seq: st.seq,
                        values: st.values,
                        last_frame: now,
                        lag,
                        conn: Some(conn),
                    },
                );
                Ok(Applied::Ok)
            }
            MsgKind::Delta => {
                let gap = |have| ApplyError::Gap {
                    node: node.to_owned(),
                    seq: m.seq,
                    have,
                };
                let Some(cur) = self.remotes.get_mut(node) else {
                    return Err(gap(None));
                };
                if m.boot < cur.boot || (m.boot == cur.boot && m.seq <= cur.seq) {
                    return Ok(Applied::Duplicate);
                }
                if m.boot != cur.boot || m.seq != cur.seq + 1 {
                    return Err(gap(Some(cur.seq)));
                }
                cur.seq = m.seq;
                cur.last_frame = now;
                cur.lag = lag;
                cur.conn = Some(conn);
                let mut changes = Vec::with_capacity(m.entries.len());
                for (k, v) in m.entries {
                    let old = if v == 0 {
                        cur.values.remove(&k).unwrap_or(0)
                    } else {
                        cur.values.insert(k.clone(), v).unwrap_or(0)
                    };
                    changes.push((k, old, v));
                }
                for (k, old, new) in changes {
                    self.bump(node, &k, old, new);
                }
                Ok(Applied::Ok)
            }
        }
    }

    /// A link closed: forget half-received snapshots that came on it.
    pub fn link_closed(&mut self, conn: ConnId) {
        self.staging.retain(|_, s| s.conn != conn);
        for s in self.remotes.values_mut() {
            if s.conn == Some(conn) {
                s.conn = None;
            }
        }
    }

    /// Sets which remote nodes count; totals are recomputed and every affected key marked.
    pub fn set_live(&mut self, live: HashSet<String>) {
        if live == self.live {
            return;
        }
        self.live = live;
        let mut next: HashMap<Key, i64> = HashMap::new();
        for (n, s) in &self.remotes {
            if self.live.contains(n) {
                for (k, v) in &s.values {
                    *next.entry(k.clone()).or_insert(0) += v;
                }
            }
        }
        next.retain(|_, v| *v != 0);
        for k in self.remote_total.keys().chain(next.keys()) {
            if self.remote_total.get(k) != next.get(k) {
                self.dirty.insert(k.clone());
            }
        }
        self.remote_total = next;
    }

    /// Forgets a node's slot (it left the view, or restarted as a new member).
    pub fn drop_slot(&mut self, node: &str) -> bool {
        self.staging.remove(node);
        let Some(s) = self.remotes.remove(node) else {
            return false;
        };
        if self.live.contains(node) {
            for (k, v) in &s.values {
                self.bump(node, k, *v, 0);
            }
        }
        self.dropped_slots += 1;
        true
    }

    /// Keys whose remote total changed since the last call, with their totals.
    pub fn take_dirty(&mut self) -> Vec<(Key, i64)> {
        let mut v: Vec<(Key, i64)> = self
            .dirty
            .drain()
            .map(|k| {
                let t = self.remote_total.get(&k).copied().unwrap_or(0);
                (k, t)
            })
            .collect();
        v.sort();
        v
    }

    /// Sum over the live remote slots (this node excluded): what enforcement adds.
    pub fn remote_total(&self) -> &HashMap<Key, i64> {
        &self.remote_total
    }

    /// The cluster-wide value: own slot plus live remote slots.
    pub fn global(&self) -> HashMap<Key, i64> {
        let mut g = self.remote_total.clone();
        for (k, v) in self.own.values() {
            *g.entry(k.clone()).or_insert(0) += v;
        }
        g.retain(|_, v| *v != 0);
        g
    }

    pub fn remote(&self, node: &str) -> Option<&RemoteSlot> {
        self.remotes.get(node)
    }

    pub fn remotes(&self) -> impl Iterator<Item = (&String, &RemoteSlot)> {
        self.remotes.iter()
    }

    pub fn is_live(&self, node: &str) -> bool {
        self.live.contains(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::wire::{decode, encode, encode_snapshot};
    use proptest::prelude::*;

    fn msg(kind: MsgKind, flags: u8, boot: u64, seq: u64, e: &[(&str, i64)]) -> Message {
        let e: Vec<(&[u8], i64)> = e.iter().map(|(k, v)| (k.as_bytes(), *v)).collect();
        decode(&encode(kind, flags, "t", boot, seq, 0, &e)).unwrap()
    }
    fn snap(boot: u64, seq: u64, e: &[(&str, i64)]) -> Message {
        msg(MsgKind::Snapshot, FLAG_FIRST | FLAG_LAST, boot, seq, e)
    }
    fn delta(boot: u64, seq: u64, e: &[(&str, i64)]) -> Message {
        msg(MsgKind::Delta, 0, boot, seq, e)
    }
    fn live(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }
    fn total(t: &Table, k: &str) -> i64 {
        t.remote_total().get(k.as_bytes()).copied().unwrap_or(0)
    }

    const C: ConnId = ConnId(1);

    #[test]
    fn totals_follow_snapshots_deltas_and_the_view() {
        let now = Instant::now();
        let z = Duration::ZERO;
        let mut t = Table::new("t");
        t.set_live(live(&["a", "b"]));
        t.apply("a", C, snap(1, 5, &[("x", 2), ("y", 1)]), now, z)
            .unwrap();
        t.apply("b", ConnId(2), snap(1, 0, &[("x", 3)]), now, z)
            .unwrap();
        assert_eq!(total(&t, "x"), 5);
        t.apply("a", C, delta(1, 6, &[("x", 0)]), now, z).unwrap();
        assert_eq!(total(&t, "x"), 3);
        // Duplicate and old frames change nothing.
        assert_eq!(
            t.apply("a", C, delta(1, 6, &[("x", 9)]), now, z),
            Ok(Applied::Duplicate)
        );
        assert_eq!(
            t.apply("a", C, snap(1, 4, &[("x", 9)]), now, z),
            Ok(Applied::Duplicate)
        );
        assert_eq!(total(&t, "x"), 3);
        // A gap is refused.
        assert!(matches!(
            t.apply("a", C, delta(1, 8, &[("x", 9)]), now, z),
            Err(ApplyError::Gap { .. })
        ));
        // Excluding b (hung) removes its share; readmitting restores it.
        let _ = t.take_dirty();
        t.set_live(live(&["a"]));
        assert_eq!(total(&t, "x"), 0);
        assert_eq!(t.take_dirty(), vec![(b"x".to_vec(), 0)]);
        t.set_live(live(&["a", "b"]));
        assert_eq!(total(&t, "x"), 3);
        // b leaves the view: its slot is dropped.
        assert!(t.drop_slot("b"));
        assert_eq!(total(&t, "x"), 0);
        assert_eq!(t.dropped_slots, 1);
        // A restarted a (new boot) replaces its slot whatever the seq.
        t.apply("a", C, snap(2, 0, &[("z", 4)]), now, z).unwrap();
        assert_eq!(total(&t, "y"), 0);
        assert_eq!(total(&t, "z"), 4);
        assert_eq!(
            t.apply("a", C, delta(1, 99, &[("z", 1)]), now, z),
            Ok(Applied::Duplicate)
        );
        // Delta before any snapshot: gap.
        assert!(t.apply("c", C, delta(1, 1, &[("z", 1)]), now, z).is_err());
        t.own.set(b"x".to_vec(), 10);
        assert_eq!(t.global().get(b"x".as_slice()), Some(&10));
    }

    #[test]
    fn chunked_snapshot_is_atomic() {
        let now = Instant::now();
        let z = Duration::ZERO;
        let mut t = Table::new("t");
        t.set_live(live(&["a"]));
        t.apply("a", C, snap(1, 1, &[("old", 1)]), now, z).unwrap();
        let e: Vec<(Vec<u8>, i64)> = (0..60_000u32)
            .map(|i| (i.to_be_bytes().to_vec(), 1))
            .collect();
        let refs: Vec<(&[u8], i64)> = e.iter().map(|(k, v)| (k.as_slice(), *v)).collect();
        let frames = encode_snapshot("t", 1, 2, 0, &refs);
        assert!(frames.len() > 1);
        for (i, f) in frames.iter().enumerate() {
            t.apply("a", C, decode(f).unwrap(), now, z).unwrap();
            if i + 1 < frames.len() {
                assert_eq!(total(&t, "old"), 1, "slot unchanged until the last chunk");
            }
        }
        assert_eq!(total(&t, "old"), 0);
        assert_eq!(t.remote_total().len(), 60_000);
        // A chunk without its first part is refused.
        assert!(matches!(
            t.apply("a", C, decode(&frames[1]).unwrap(), now, z),
            Err(ApplyError::Chunk { .. })
        ));
    }

    #[test]
    fn own_slot_sends_changed_keys_once() {
        let mut o = OwnSlot::default();
        let m = |e: &[(&str, i64)]| -> HashMap<Key, i64> {
            e.iter().map(|(k, v)| (k.as_bytes().to_vec(), *v)).collect()
        };
        assert_eq!(o.replace_all(m(&[("a", 1), ("b", 2)])), 2);
        let d = o.take_delta(false).unwrap();
        assert_eq!((o.next_seq(), d.len()), (1, 2));
        assert!(o.take_delta(false).is_none());
        assert_eq!(o.replace_all(m(&[("a", 1), ("b", 0), ("c", 3)])), 2);
        let d = o.take_delta(false).unwrap();
        assert_eq!(o.next_seq(), 2);
        assert_eq!(d, vec![(b"b".to_vec(), 0), (b"c".to_vec(), 3)]);
        assert_eq!(o.take_delta(true).unwrap(), vec![]);
        assert_eq!(o.entries().len(), 2);
    }

    proptest! {
        /// Whatever the interleaving of updates, duplicates and replays, a receiver
        /// that applies the sender's frames ends with exactly the sender's slot, and the
        /// remote total equals the sum of the live slots.
        #[test]
        fn receiver_converges_despite_duplicates(
            ops in proptest::collection::vec((0u8..6, 0i64..5), 1..200),
            dup_every in 1usize..7,
        ) {
            let now = Instant::now();
            let z = Duration::ZERO;
            let mut own = OwnSlot::default();
            let mut rx = Table::new("t");
            rx.set_live(live(&["a"]));
            rx.apply("a", C, snap(1, 0, &[]), now, z).unwrap();
            let mut sent: Vec<Message> = Vec::new();
            for (i, (k, v)) in ops.iter().enumerate() {
                own.set(vec![*k], *v);
                if i % 3 == 0
                    && let Some(e) = own.take_delta(false)
                {
                    let seq = own.next_seq();
                    let refs: Vec<(&[u8], i64)> = e.iter().map(|(k, v)| (k.as_slice(), *v)).collect();
                    let m = decode(&encode(MsgKind::Delta, 0, "t", 1, seq, 0, &refs)).unwrap();
                    rx.apply("a", C, m.clone(), now, z).unwrap();
                    sent.push(m);
                    if i % dup_every == 0 {
                        // Replays of anything already applied are harmless.
                        for old in &sent {
                            prop_assert_eq!(rx.apply("a", C, old.clone(), now, z), Ok(Applied::Duplicate));
                        }
                    }
                }
            }
            if let Some(e) = own.take_delta(false) {
                let seq = own.next_seq();
                let refs: Vec<(&[u8], i64)> = e.iter().map(|(k, v)| (k.as_slice(), *v)).collect();
                rx.apply("a", C, decode(&encode(MsgKind::Delta, 0, "t", 1, seq, 0, &refs)).unwrap(), now, z).unwrap();
            }
            prop_assert_eq!(&rx.remote("a").unwrap().values, own.values());
            prop_assert_eq!(rx.remote_total(), own.values());
        }
    }
}
