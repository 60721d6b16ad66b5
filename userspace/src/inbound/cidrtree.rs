//! Momentum's `cidrtree`: current connections per source address, with the covering
//! prefixes, as printed by `cluster shared show inbound_cidr`.
//!
//! # Shape (the rule we implement)
//!
//! A path-compressed binary trie per address family, where:
//! * every address ever set is a leaf (/32, /128) — also after its count drops to 0;
//! * a node exists at every *branch point* (the longest common prefix of two leaves in
//!   different halves), and nodes are never merged away by counts dropping to 0, only by
//!   [`CidrTree::prune`];
//! * every leaf also has nodes at fixed levels: /8 and /24 for IPv4, /32 and /64 for IPv6
//!   (our choice for v6, by analogy: allocation block and subnet).
//!
//! Printing is pre-order (lower half first) and shows every node whose subtree holds a
//! non-zero count. Momentum's sample (reference/momentum.md §3.1) is reproduced exactly:
//! its /8 and /24 lines are the fixed levels, and its 10.0.0.0/25, 10.0.0.160/27 and
//! 10.0.0.176/29 lines are branch points left by addresses whose connections have all
//! closed (count 0, hence not printed) — they cannot be branch points of the three
//! printed leaves alone, so Momentum too must keep zero-count structure.

use std::net::IpAddr;

use super::{InboundError, cidr, from_bits, mask, to_bits};
use crate::config::Cidr;

const V4_LEVELS: &[u8] = &[8, 24];
const V6_LEVELS: &[u8] = &[32, 64];

#[derive(Debug, Clone)]
struct Node {
    /// Prefix bits, masked to `len`, in the family's width.
    key: u128,
    len: u8,
    /// Connections of this exact address (leaves only).
    count: u64,
    /// Sum of `count` over the subtree.
    sum: u64,
    children: [Option<Box<Node>>; 2],
}

impl Node {
    fn new(key: u128, len: u8) -> Self {
        Node {
            key,
            len,
            count: 0,
            sum: 0,
            children: [None, None],
        }
    }
}

fn bit(key: u128, index: u8, w: u8) -> usize {
    ((key >> (w - 1 - index)) & 1) as usize
}

/// Length of the common prefix of `a` and `b`, at most `limit` bits.
fn common_len(a: u128, b: u128, limit: u8, w: u8) -> u8 {
    let diff = (a ^ b) << (128 - u32::from(w));
    let lz = diff.leading_zeros();
    lz.min(u32::from(limit)) as u8
}

#[derive(Debug, Clone)]
struct Trie {
    w: u8,
    levels: &'static [u8],
    root: Option<Box<Node>>,
}

impl Trie {
    fn new(w: u8, levels: &'static [u8]) -> Self {
        Trie {
            w,
            levels,
            root: None,
        }
    }

    /// Make sure a node for `key/len` exists (keeping the sums right).
    fn ensure(slot: &mut Option<Box<Node>>, key: u128, len: u8, w: u8) {
        match slot {
            None => *slot = Some(Box::new(Node::new(key, len))),
            Some(n) => {
                let common = common_len(n.key, key, n.len.min(len), w);
                if common == n.len {
                    if n.len != len {
                        let b = bit(key, n.len, w);
                        Self::ensure(&mut n.children[b], key, len, w);
                    }
                    return;
                }
                let Some(old) = slot.take() else { return };
                let mut new = Box::new(Node::new(key & mask(w, common), common));
                new.sum = old.sum;
                let ob = bit(old.key, common, w);
                if common != len {
                    new.children[1 - ob] = Some(Box::new(Node::new(key, len)));
                }
                new.children[ob] = Some(old);
                *slot = Some(new);
            }
        }
    }

    fn find(&self, key: u128, len: u8) -> Option<&Node> {
        let mut cur = self.root.as_deref();
        while let Some(n) = cur {
            if n.len > len || common_len(n.key, key, n.len, self.w) < n.len {
                return None;
            }
            if n.len == len {
                return Some(n);
            }
            cur = n.children[bit(key, n.len, self.w)].as_deref();
        }
        None
    }

    /// Set the leaf `key` to `count`, adjusting sums along its path.
    fn set(&mut self, key: u128, count: u64) -> u64 {
        let w = self.w;
        for &l in self.levels {
            Self::ensure(&mut self.root, key & mask(w, l), l, w);
        }
        Self::ensure(&mut self.root, key, w, w);
        let old = self.find(key, w).map_or(0, |n| n.count);
        let mut cur = self.root.as_deref_mut();
        while let Some(n) = cur {
            n.sum = n.sum - old + count;
            if n.len == w {
                n.count = count;
                break;
            }
            cur = n.children[bit(key, n.len, w)].as_deref_mut();
        }
        old
    }

    fn count_within(&self, key: u128, len: u8) -> u64 {
        let mut cur = self.root.as_deref();
        while let Some(n) = cur {
            let common = common_len(n.key, key, n.len.min(len), self.w);
            if common < n.len.min(len) {
                return 0;
            }
            if n.len >= len {
                return n.sum;
            }
            cur = n.children[bit(key, n.len, self.w)].as_deref();
        }
        0
    }

    fn walk<'a>(&'a self, f: &mut dyn FnMut(&'a Node)) {
        fn go<'a>(n: &'a Node, f: &mut dyn FnMut(&'a Node)) {
            f(n);
            for c in n.children.iter().flatten() {
                go(c, f);
            }
        }
        if let Some(r) = self.root.as_deref() {
            go(r, f);
        }
    }

    fn prune(&mut self) {
        fn go(slot: &mut Option<Box<Node>>, w: u8, levels: &[u8]) {
            let Some(n) = slot else { return };
            if n.len == w {
                if n.count == 0 {
                    *slot = None;
                }
                return;
            }
            go(&mut n.children[0], w, levels);
            go(&mut n.children[1], w, levels);
            let kids = n.children.iter().flatten().count();
            if kids == 0 {
                *slot = None;
            } else if kids == 1 && !levels.contains(&n.len) {
                let [a, b] = std::mem::take(&mut n.children);
                *slot = a.or(b);
            }
        }
        go(&mut self.root, self.w, self.levels);
    }
}

/// Current connections per source address, IPv4 and IPv6, with covering-prefix sums.
#[derive(Debug, Clone)]
pub struct CidrTree {
    v4: Trie,
    v6: Trie,
}

impl Default for CidrTree {
    fn default() -> Self {
        Self::new()
    }
}

impl CidrTree {
    /// The object description `cluster shared list` shows for a cidrtree.
    pub const LIST_KIND: &'static str = "lazy, cidrtree w/ snapshots";

    pub fn new() -> Self {
        CidrTree {
            v4: Trie::new(32, V4_LEVELS),
            v6: Trie::new(128, V6_LEVELS),
        }
    }

    fn trie(&self, ip: &IpAddr) -> &Trie {
        if ip.is_ipv4() { &self.v4 } else { &self.v6 }
    }

    fn trie_mut(&mut self, ip: &IpAddr) -> &mut Trie {
        if ip.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        }
    }

    /// Set the current connection count of one source address; returns the previous
    /// count. A count of 0 keeps the address's place in the tree (see the module docs).
    pub fn set(&mut self, ip: IpAddr, count: u64) -> u64 {
        self.trie_mut(&ip).set(to_bits(&ip), count)
    }

    /// Add `delta` (saturating at 0 and `u64::MAX`); returns the new count.
    pub fn add(&mut self, ip: IpAddr, delta: i64) -> u64 {
        let new = self.get(ip).saturating_add_signed(delta);
        self.set(ip, new);
        new
    }

    /// Current connections of one address.
    pub fn get(&self, ip: IpAddr) -> u64 {
        let t = self.trie(&ip);
        t.find(to_bits(&ip), t.w).map_or(0, |n| n.count)
    }

    /// Current connections from sources inside `net` (e.g. "this /24").
    pub fn count_within(&self, net: &Cidr) -> u64 {
        let t = self.trie(&net.addr);
        if net.prefix > t.w {
            return 0;
        }
        t.count_within(to_bits(&net.addr) & mask(t.w, net.prefix), net.prefix)
    }

    /// Like [`count_within`](Self::count_within), for the `/len` around `ip` — the form
    /// Momentum's `audit_service "inbound_cidr" "/24"` uses.
    pub fn count_around(&self, ip: IpAddr, len: u8) -> Result<u64, InboundError> {
        Ok(self.count_within(&cidr(ip, len)?))
    }

    /// All connections, both families.
    pub fn total(&self) -> u64 {
        let s = |t: &Trie| t.root.as_ref().map_or(0, |r| r.sum);
        s(&self.v4) + s(&self.v6)
    }

    /// Addresses with a non-zero count, in address order (IPv4 first).
    pub fn leaves(&self) -> Vec<(IpAddr, u64)> {
        let mut out = Vec::new();
        for t in [&self.v4, &self.v6] {
            t.walk(&mut |n| {
                if n.len == t.w && n.count > 0 {
                    out.push((from_bits(t.w == 32, n.key), n.count));
                }
            });
        }
        out
    }

    /// The `n` addresses with the most connections (ties by address).
    pub fn top(&self, n: usize) -> Vec<(IpAddr, u64)> {
        let mut l = self.leaves();
        l.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        l.truncate(n);
        l
    }

    /// Add every address of `other` (including its zero-count ones, so the shape follows)
    /// — how the cluster-wide view is summed from the nodes' trees.
    pub fn merge(&mut self, other: &CidrTree) {
        for t in [&other.v4, &other.v6] {
            let mut leaves = Vec::new();
            t.walk(&mut |n| {
                if n.len == t.w {
                    leaves.push((from_bits(t.w == 32, n.key), n.count));
                }
            });
            for (ip, c) in leaves {
                let cur = self.get(ip);
                self.set(ip, cur.saturating_add(c));
            }
        }
    }

    /// Forget addresses at 0 and the branch points only they held up.
    pub fn prune(&mut self) {
        self.v4.prune();
        self.v6.prune();
    }

    /// `cluster shared show <name>` output, in Momentum's format: a header line, then
    /// `%7d`, 25 spaces and the prefix per non-zero node, each line `\n`-terminated.
    pub fn render(&self, name: &str, view: &str) -> String {
        let mut out = format!("lazy, snapped cidrtree '{name}', view '{view}'\n");
        for t in [&self.v4, &self.v6] {
            t.walk(&mut |n| {
                if n.sum > 0 {
                    let addr = from_bits(t.w == 32, n.key);
                    out.push_str(&format!("{:>7}{:25}{}/{}\n", n.sum, "", addr, n.len));
                }
            });
        }
        out
    }
}

/// One line of `cluster shared list` ("Currently managed objects:" follows as header).
pub fn shared_list_line(name: &str, kind: &str) -> String {
    format!("{name:>30} [{kind}]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::{cidr_contains, parse_cidr};
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const SAMPLE_GLOBAL: &str = "\
lazy, snapped cidrtree 'inbound_cidr', view 'global'
     31                         10.0.0.0/8
     31                         10.0.0.0/24
      4                         10.0.0.0/25
      4                         10.0.0.103/32
     27                         10.0.0.160/27
     27                         10.0.0.176/29
     27                         10.0.0.180/31
     14                         10.0.0.180/32
     13                         10.0.0.181/32
";

    const SAMPLE_RELAY: &str = "\
lazy, snapped cidrtree 'inbound_cidr', view '#ec1-12137#relay-0-1'
      5                         10.0.0.0/8
      5                         10.0.0.0/24
      5                         10.0.0.160/27
      5                         10.0.0.176/29
      5                         10.0.0.180/31
      4                         10.0.0.180/32
      1                         10.0.0.181/32
";

    /// The sample's leaves plus three sources that connected earlier and are gone now.
    fn sample_tree(c103: u64, c180: u64, c181: u64) -> CidrTree {
        let mut t = CidrTree::new();
        for gone in ["10.0.0.1", "10.0.0.170", "10.0.0.176"] {
            t.add(ip(gone), 1);
            t.add(ip(gone), -1);
        }
        t.set(ip("10.0.0.103"), c103);
        t.set(ip("10.0.0.180"), c180);
        t.set(ip("10.0.0.181"), c181);
        t
    }

    #[test]
    fn momentum_sample_byte_for_byte() {
        let t = sample_tree(4, 14, 13);
        assert_eq!(t.render("inbound_cidr", "global"), SAMPLE_GLOBAL);
        let r = sample_tree(0, 4, 1);
        assert_eq!(
            r.render("inbound_cidr", "#ec1-12137#relay-0-1"),
            SAMPLE_RELAY
        );
    }

    #[test]
    fn merge_of_node_trees_gives_global_view() {
        let mut global = CidrTree::new();
        global.merge(&sample_tree(0, 4, 1));
        global.merge(&sample_tree(4, 10, 12));
        assert_eq!(global.render("inbound_cidr", "global"), SAMPLE_GLOBAL);
    }

    #[test]
    fn without_history_only_levels_and_branch_points() {
        let mut t = sample_tree(4, 14, 13);
        t.prune();
        assert_eq!(
            t.render("inbound_cidr", "global"),
            "\
lazy, snapped cidrtree 'inbound_cidr', view 'global'
     31                         10.0.0.0/8
     31                         10.0.0.0/24
      4                         10.0.0.103/32
     27                         10.0.0.180/31
     14                         10.0.0.180/32
     13                         10.0.0.181/32
"
        );
        assert_eq!(t.total(), 31);
    }

    #[test]
    fn empty_and_zero_entries_not_shown() {
        let mut t = CidrTree::new();
        assert_eq!(t.render("x", "v"), "lazy, snapped cidrtree 'x', view 'v'\n");
        t.set(ip("192.0.2.1"), 0);
        assert_eq!(t.render("x", "v"), "lazy, snapped cidrtree 'x', view 'v'\n");
        assert!(t.leaves().is_empty());
    }

    #[test]
    fn ipv6_and_mixed_families() {
        let mut t = CidrTree::new();
        t.set(ip("2001:db8::1"), 2);
        t.set(ip("2001:db8::3"), 5);
        t.set(ip("2001:db8:0:1::9"), 1);
        t.set(ip("192.0.2.9"), 7);
        assert_eq!(
            t.render("inbound_cidr", "global"),
            "\
lazy, snapped cidrtree 'inbound_cidr', view 'global'
      7                         192.0.0.0/8
      7                         192.0.2.0/24
      7                         192.0.2.9/32
      8                         2001:db8::/32
      8                         2001:db8::/63
      7                         2001:db8::/64
      7                         2001:db8::/126
      2                         2001:db8::1/128
      5                         2001:db8::3/128
      1                         2001:db8:0:1::/64
      1                         2001:db8:0:1::9/128
"
        );
        assert_eq!(t.count_within(&parse_cidr("2001:db8::/64").unwrap()), 7);
        assert_eq!(t.count_within(&parse_cidr("::/0").unwrap()), 8);
        assert_eq!(t.count_within(&parse_cidr("0.0.0.0/0").unwrap()), 7);
        assert_eq!(t.count_around(ip("2001:db8::77"), 64).unwrap(), 7);
        assert_eq!(t.total(), 15);
    }

    #[test]
    fn add_saturates_and_get_top() {
        let mut t = CidrTree::new();
        assert_eq!(t.add(ip("198.51.100.1"), -3), 0);
        assert_eq!(t.add(ip("198.51.100.1"), 3), 3);
        assert_eq!(t.add(ip("198.51.100.2"), 9), 9);
        assert_eq!(t.add(ip("203.0.113.5"), 3), 3);
        assert_eq!(t.get(ip("198.51.100.1")), 3);
        assert_eq!(t.get(ip("198.51.100.3")), 0);
        assert_eq!(
            t.top(2),
            vec![(ip("198.51.100.2"), 9), (ip("198.51.100.1"), 3)]
        );
        assert_eq!(t.count_around(ip("198.51.100.200"), 24).unwrap(), 12);
        assert_eq!(t.count_around(ip("198.51.101.0"), 24).unwrap(), 0);
        assert!(t.count_around(ip("198.51.100.1"), 40).is_err());
    }

    #[test]
    fn shared_list_format() {
        assert_eq!(
            shared_list_line("inbound_cidr", CidrTree::LIST_KIND),
            "                  inbound_cidr [lazy, cidrtree w/ snapshots]"
        );
        assert_eq!(
            shared_list_line("outbound_cidr", CidrTree::LIST_KIND),
            "                 outbound_cidr [lazy, cidrtree w/ snapshots]"
        );
    }

    fn arb_v4() -> impl Strategy<Value = IpAddr> {
        // A small space so leaves share prefixes and branch a lot.
        (0u32..4, 0u32..4, any::<u8>())
            .prop_map(|(a, b, c)| IpAddr::from([10 + a as u8, 0, b as u8, c]))
    }

    fn arb_v6() -> impl Strategy<Value = IpAddr> {
        (0u16..3, 0u16..3, any::<u8>())
            .prop_map(|(a, b, c)| IpAddr::from([0x2001, 0xdb8 + a, 0, b, 0, 0, 0, u16::from(c)]))
    }

    proptest! {
        #[test]
        fn sums_and_queries_match_brute_force(
            ops in prop::collection::vec(
                (prop_oneof![arb_v4(), arb_v6()], 0u64..50), 0..60),
            probes in prop::collection::vec((prop_oneof![arb_v4(), arb_v6()], 0u8..=128), 1..20),
            prune in any::<bool>(),
        ) {
            let mut t = CidrTree::new();
            let mut brute = std::collections::BTreeMap::new();
            for (a, c) in &ops {
                t.set(*a, *c);
                brute.insert(*a, *c);
            }
            if prune {
                t.prune();
            }
            let total: u64 = brute.values().sum();
            prop_assert_eq!(t.total(), total);
            let leaves: Vec<_> = brute.iter().filter(|(_, c)| **c > 0).map(|(a, c)| (*a, *c)).collect();
            prop_assert_eq!(t.leaves(), leaves);
            for (a, c) in &brute {
                prop_assert_eq!(t.get(*a), *c);
            }
            for (a, len) in probes {
                let len = len.min(if a.is_ipv4() { 32 } else { 128 });
                let net = cidr(a, len).unwrap();
                let want: u64 = brute.iter().filter(|(ip, _)| cidr_contains(&net, ip)).map(|(_, c)| c).sum();
                prop_assert_eq!(t.count_within(&net), want);
            }
            // Every printed line's count equals the brute-force count of its prefix,
            // and the root line of each family equals that family's total.
            let text = t.render("inbound_cidr", "global");
            let mut first_v4 = None;
            let mut first_v6 = None;
            for line in text.lines().skip(1) {
                prop_assert_eq!(&line[7..32], " ".repeat(25));
                let n: u64 = line[..7].trim().parse().unwrap();
                let net = parse_cidr(&line[32..]).unwrap();
                let want: u64 = brute.iter().filter(|(ip, _)| cidr_contains(&net, ip)).map(|(_, c)| c).sum();
                prop_assert_eq!(n, want);
                prop_assert!(n > 0);
                if net.addr.is_ipv4() { first_v4.get_or_insert(n); } else { first_v6.get_or_insert(n); }
            }
            let fam = |v4: bool| brute.iter().filter(|(ip, _)| ip.is_ipv4() == v4).map(|(_, c)| c).sum::<u64>();
            // Leaves of one family may span several /8 (/32) roots; the first line is
            // then a branch point above them, still the family total.
            if let Some(n) = first_v4 { prop_assert_eq!(n, fam(true)); }
            if let Some(n) = first_v6 { prop_assert_eq!(n, fam(false)); }
        }
    }
}
