//! The DuraVIP ownership function: a pure, deterministic map from (agreed view, every
//! member's declarations, previous owners, maturity, balance budget, quorum) to one owner
//! per VIP.
//!
//! Every member runs it on the same input (Corosync delivers the same views and messages
//! in the same order), so every member computes the same owners without an extra round of
//! messages. Momentum's election algorithm is not public; this one is ours (docs/duravip.md):
//!
//! 1. No quorum → nobody owns anything.
//! 2. A VIP keeps its owner while that owner is in the view and still declares it.
//! 3. Unowned VIPs (new, or their owner departed or hung) are given out at once, no
//!    maturity wait: to the preferred node when it can take it, else to the least loaded
//!    candidate, ties broken by rendezvous hashing of (vip, nodename).
//! 4. Only when the view is mature, and at most `balance_moves` times per call: failback
//!    to preferred nodes, then moves from nodes above ⌈V/N⌉ to nodes below it. Nothing else
//!    moves, so joins and leaves move as few VIPs as possible and nothing churns.
//! 5. A follower (a listener with `Duravip_Follow`) goes wherever the VIP it follows goes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

/// One VIP as one member declared it (all of its `Listen`/`Binding` scopes for that
/// address folded together, see [`super::decl::declarations`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipDecl {
    pub addr: IpAddr,
    /// `Binding "name"`s with this address: must agree across members (else BROKEN).
    pub bindings: BTreeSet<String>,
    /// Services that use the address (`Binding`, `ESMTP_Listener`, …): members that
    /// disagree make the VIP UNSAFE (shown, still managed).
    pub services: BTreeSet<String>,
    /// `Duravip_Preference`: the node that should own it when online and the view mature.
    pub preference: Option<String>,
    /// `Duravip_Follow`: binding name or address whose owner this listener VIP follows.
    pub follow: Option<String>,
}

/// One member of the effective view with what it declared (from its announce).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberDecls {
    pub nodename: String,
    pub vips: Vec<VipDecl>,
}

/// Everything the function needs; the caller (the daemon) tracks time and the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignInput {
    /// The agreed effective view (hung members removed). Order does not matter.
    pub members: Vec<MemberDecls>,
    /// Owners from the previous assignment.
    pub current: BTreeMap<IpAddr, String>,
    /// The view has been unchanged for `view_mature_time`.
    pub mature: bool,
    /// Failback/rebalance moves allowed in this call (`duravip_balance_set_size` per
    /// `view_balance_interval`, 0 between intervals).
    pub balance_moves: u32,
    /// The partition has quorum (Corosync's quorum service).
    pub quorate: bool,
}

/// Whether the members that declare a VIP agree about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Safety {
    Safe,
    /// Service sets differ between members: managed, flagged for the administrator.
    Unsafe,
    /// Binding name ↔ address disagree across members: refused, nobody owns it.
    Broken,
}

/// The state of one VIP after an assignment, for `cluster duravip show` and plumbing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipState {
    pub addr: IpAddr,
    /// Binding names (union over the members that declare it).
    pub bindings: Vec<String>,
    /// Members of the view that declare it, in view order (sorted by nodename).
    pub participants: Vec<String>,
    pub owner: Option<String>,
    pub safety: Safety,
    /// Two members name different preferred nodes: preference ignored.
    pub conflict: bool,
    /// The preferred node, when there is exactly one.
    pub preferred: Option<String>,
    /// The VIP whose owner this one follows.
    pub follows: Option<IpAddr>,
}

/// Why an owner changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MoveReason {
    /// It had no (valid) owner: new, owner departed, hung, or stopped declaring it.
    Unowned,
    /// Back to its preferred node (mature view).
    Failback,
    /// From a node above ⌈V/N⌉ (mature view).
    Rebalance,
    /// It follows another VIP.
    Follow,
    /// No quorum, BROKEN, or no member declares it any more.
    Released,
}

/// One owner change, for logs and the daemon's plumbing/announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub addr: IpAddr,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: MoveReason,
}

/// The result: owners, per-VIP state and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub owners: BTreeMap<IpAddr, String>,
    pub states: BTreeMap<IpAddr, VipState>,
    pub moves: Vec<Move>,
    /// Failback/rebalance moves used from `balance_moves`.
    pub balance_moves_used: u32,
    /// Nothing more would move with an unlimited budget: the daemon may stop its balance
    /// timer.
    pub balanced: bool,
}

impl Assignment {
    /// VIPs `nodename` owns, the set it must plumb and announce.
    pub fn owned_by(&self, nodename: &str) -> BTreeSet<IpAddr> {
        self.owners
            .iter()
            .filter(|(_, o)| o.as_str() == nodename)
            .map(|(a, _)| *a)
            .collect()
    }
}

/// Rendezvous score of (vip, node): stable across versions and platforms (FNV-1a then a
/// splitmix64 finaliser), unlike std's hashers.
pub fn rendezvous(addr: &IpAddr, nodename: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    match addr {
        IpAddr::V4(a) => a.octets().iter().for_each(|b| eat(*b)),
        IpAddr::V6(a) => a.octets().iter().for_each(|b| eat(*b)),
    }
    eat(0xff);
    nodename.bytes().for_each(&mut eat);
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Per-VIP facts gathered from all declarations.
#[derive(Debug, Default)]
struct Facts {
    /// Candidates (members that declare it), sorted by nodename.
    candidates: Vec<String>,
    bindings: BTreeSet<String>,
    service_sets: BTreeSet<BTreeSet<String>>,
    binding_sets: BTreeSet<BTreeSet<String>>,
    preferences: BTreeSet<String>,
    follow: Option<String>,
}

/// Normalised view: members sorted and deduplicated by nodename (first in full order wins).
fn normalise(members: &[MemberDecls]) -> Vec<MemberDecls> {
    let mut ms: Vec<MemberDecls> = members
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.vips.sort();
            m.vips.dedup_by(|a, b| a.addr == b.addr);
            m
        })
        .collect();
    ms.sort();
    ms.dedup_by(|a, b| a.nodename == b.nodename);
    ms
}

fn gather(members: &[MemberDecls]) -> BTreeMap<IpAddr, Facts> {
    let mut facts: BTreeMap<IpAddr, Facts> = BTreeMap::new();
    for m in members {
        for v in &m.vips {
            let f = facts.entry(v.addr).or_default();
            f.candidates.push(m.nodename.clone());
            f.bindings.extend(v.bindings.iter().cloned());
            f.service_sets.insert(v.services.clone());
            f.binding_sets.insert(v.bindings.clone());
            if let Some(p) = &v.preference {
                f.preferences.insert(p.clone());
            }
            if f.follow.is_none() {
                f.follow.clone_from(&v.follow);
            }
        }
    }
    facts
}

/// Addresses whose binding names disagree across members, or whose binding name is used
/// for different addresses.
fn broken(members: &[MemberDecls], facts: &BTreeMap<IpAddr, Facts>) -> BTreeSet<IpAddr> {
    let mut out: BTreeSet<IpAddr> = facts
        .iter()
        .filter(|(_, f)| f.binding_sets.len() > 1)
        .map(|(a, _)| *a)
        .collect();
    let mut by_name: BTreeMap<&str, BTreeSet<IpAddr>> = BTreeMap::new();
    for m in members {
        for v in &m.vips {
            for b in &v.bindings {
                by_name.entry(b.as_str()).or_default().insert(v.addr);
            }
        }
    }
    for addrs in by_name.values().filter(|s| s.len() > 1) {
        out.extend(addrs.iter().copied());
    }
    out
}

/// Resolve a follow target (address or binding name) to a VIP address.
fn resolve_follow(target: &str, facts: &BTreeMap<IpAddr, Facts>) -> Option<IpAddr> {
    if let Ok(a) = target.parse::<IpAddr>() {
        return facts.contains_key(&a).then_some(a);
    }
    facts
        .iter()
        .find(|(_, f)| f.bindings.contains(target))
        .map(|(a, _)| *a)
}

/// The least loaded candidate; ties → highest rendezvous score.
fn least_loaded<'a>(
    addr: &IpAddr,
    candidates: impl Iterator<Item = &'a String>,
    load: &BTreeMap<String, u32>,
) -> Option<String> {
    candidates
        .min_by_key(|c| {
            (
                load.get(*c).copied().unwrap_or(0),
                std::cmp::Reverse(rendezvous(addr, c)),
            )
        })
        .cloned()
}

/// Compute the owners. Pure: same input → same output on every member.
pub fn assign(input: &AssignInput) -> Assignment {
    let members = normalise(&input.members);
    let facts = gather(&members);
    let broken = broken(&members, &facts);

    // Preferences and followers.
    let mut preferred: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut conflict: BTreeSet<IpAddr> = BTreeSet::new();
    for (a, f) in &facts {
        match f.preferences.len() {
            0 => {}
            1 => {
                if let Some(p) = f.preferences.iter().next() {
                    preferred.insert(*a, p.clone());
                }
            }
            _ => {
                conflict.insert(*a);
            }
        }
    }
    let mut follows: BTreeMap<IpAddr, IpAddr> = BTreeMap::new();
    for (a, f) in &facts {
        let Some(t) = f.follow.as_deref().and_then(|t| resolve_follow(t, &facts)) else {
            continue;
        };
        // One level only: the target must itself be independent and manageable.
        let target_follows = facts
            .get(&t)
            .and_then(|tf| tf.follow.as_deref())
            .and_then(|x| resolve_follow(x, &facts))
            .is_some();
        if t != *a && !target_follows && !broken.contains(&t) {
            follows.insert(*a, t);
        }
    }

    let mut owners: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut moves: Vec<Move> = Vec::new();
    let mut used = 0u32;

    // Balanced VIPs: independent (not followers) and manageable.
    let balanced_vips: Vec<IpAddr> = facts
        .keys()
        .filter(|a| !broken.contains(a) && !follows.contains_key(a))
        .copied()
        .collect();
    let nodes: BTreeSet<&String> = balanced_vips
        .iter()
        .filter_map(|a| facts.get(a))
        .flat_map(|f| f.candidates.iter())
        .collect();
    let cap = if nodes.is_empty() {
        0
    } else {
        u32::try_from(balanced_vips.len().div_ceil(nodes.len())).unwrap_or(u32::MAX)
    };
    let mut load: BTreeMap<String, u32> = nodes.iter().map(|n| ((*n).clone(), 0)).collect();

    let mut fully_balanced = true;
    if input.quorate {
        // Keep valid owners.
        for a in &balanced_vips {
            if let (Some(o), Some(f)) = (input.current.get(a), facts.get(a))
                && f.candidates.contains(o)
            {
                owners.insert(*a, o.clone());
                *load.entry(o.clone()).or_default() += 1;
            }
        }
        // Unowned: at once, preferred node first, else least loaded.
        for a in &balanced_vips {
            if owners.contains_key(a) {
                continue;
            }
            let Some(f) = facts.get(a) else { continue };
            let to = preferred
                .get(a)
                .filter(|p| f.candidates.contains(p))
                .cloned()
                .or_else(|| least_loaded(a, f.candidates.iter(), &load));
            if let Some(to) = to {
                *load.entry(to.clone()).or_default() += 1;
                owners.insert(*a, to.clone());
                moves.push(Move {
                    addr: *a,
                    from: input.current.get(a).cloned(),
                    to: Some(to),
                    reason: MoveReason::Unowned,
                });
            }
        }
        let pinned = |a: &IpAddr, owner: &str| preferred.get(a).is_some_and(|p| p == owner);
        // Failback, then rebalance: mature view only, within the budget.
        let failbacks: Vec<(IpAddr, String)> = balanced_vips
            .iter()
            .filter_map(|a| {
                let p = preferred.get(a)?;
                let f = facts.get(a)?;
                (f.candidates.contains(p) && owners.get(a) != Some(p)).then(|| (*a, p.clone()))
            })
            .collect();
        for (a, p) in failbacks {
            if !input.mature || used >= input.balance_moves {
                fully_balanced = false;
                break;
            }
            let from = owners.insert(a, p.clone());
            if let Some(fr) = &from
                && let Some(l) = load.get_mut(fr)
            {
                *l = l.saturating_sub(1);
            }
            *load.entry(p.clone()).or_default() += 1;
            used += 1;
            moves.push(Move {
                addr: a,
                from,
                to: Some(p),
                reason: MoveReason::Failback,
            });
        }
        loop {
            // The best move: from the most loaded overloaded node, a VIP not pinned to it,
            // to its least loaded candidate below the cap.
            let mut best: Option<(u32, u64, IpAddr, String, String)> = None;
            for a in &balanced_vips {
                let (Some(o), Some(f)) = (owners.get(a), facts.get(a)) else {
                    continue;
                };
                let ol = load.get(o).copied().unwrap_or(0);
                if ol <= cap || pinned(a, o) {
                    continue;
                }
                let under = f
                    .candidates
                    .iter()
                    .filter(|c| load.get(*c).copied().unwrap_or(0) < cap);
                let Some(to) = least_loaded(a, under, &load) else {
                    continue;
                };
                let score = rendezvous(a, &to);
                let better = best
                    .as_ref()
                    .is_none_or(|(bl, bs, ..)| (ol, score) > (*bl, *bs));
                if better {
                    best = Some((ol, score, *a, o.clone(), to));
                }
            }
            let Some((_, _, a, from, to)) = best else {
                break;
            };
            if !input.mature || used >= input.balance_moves {
                fully_balanced = false;
                break;
            }
            if let Some(l) = load.get_mut(&from) {
                *l = l.saturating_sub(1);
            }
            *load.entry(to.clone()).or_default() += 1;
            owners.insert(a, to.clone());
            used += 1;
            moves.push(Move {
                addr: a,
                from: Some(from),
                to: Some(to),
                reason: MoveReason::Rebalance,
            });
        }
        // Followers: with their target's owner when it declares them, else kept or elected.
        for (a, t) in &follows {
            let Some(f) = facts.get(a) else { continue };
            let to = owners
                .get(t)
                .filter(|o| f.candidates.contains(o))
                .or_else(|| input.current.get(a).filter(|o| f.candidates.contains(o)))
                .cloned()
                .or_else(|| {
                    f.candidates
                        .iter()
                        .max_by_key(|c| rendezvous(a, c))
                        .cloned()
                });
            if let Some(to) = to {
                if input.current.get(a) != Some(&to) {
                    moves.push(Move {
                        addr: *a,
                        from: input.current.get(a).cloned(),
                        to: Some(to.clone()),
                        reason: MoveReason::Follow,
                    });
                }
                owners.insert(*a, to);
            }
        }
    }
    // Everything that had an owner and lost it without a new one.
    for (a, o) in &input.current {
        if !owners.contains_key(a) {
            moves.push(Move {
                addr: *a,
                from: Some(o.clone()),
                to: None,
                reason: MoveReason::Released,
            });
        }
    }
    moves.sort_by_key(|m| (m.addr, m.reason));

    let states = facts
        .iter()
        .map(|(a, f)| {
            let safety = if broken.contains(a) {
                Safety::Broken
            } else if f.service_sets.len() > 1 {
                Safety::Unsafe
            } else {
                Safety::Safe
            };
            let st = VipState {
                addr: *a,
                bindings: f.bindings.iter().cloned().collect(),
                participants: f.candidates.clone(),
                owner: owners.get(a).cloned(),
                safety,
                conflict: conflict.contains(a),
                preferred: preferred.get(a).cloned(),
                follows: follows.get(a).copied(),
            };
            (*a, st)
        })
        .collect();
    Assignment {
        owners,
        states,
        moves,
        balance_moves_used: used,
        balanced: fully_balanced,
    }
}

#[cfg(test)]
mod tests;
