use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn ip(i: u8) -> IpAddr {
    IpAddr::from([198, 51, 100, i])
}

fn vip(i: u8) -> VipDecl {
    VipDecl {
        addr: ip(i),
        bindings: BTreeSet::from([format!("b{i}")]),
        services: BTreeSet::from(["Binding".to_owned()]),
        preference: None,
        follow: None,
    }
}

fn member(name: &str, vips: &[u8]) -> MemberDecls {
    MemberDecls {
        nodename: name.into(),
        vips: vips.iter().map(|i| vip(*i)).collect(),
    }
}

fn input(members: Vec<MemberDecls>) -> AssignInput {
    AssignInput {
        members,
        current: BTreeMap::new(),
        mature: false,
        balance_moves: 0,
        quorate: true,
    }
}

fn loads(a: &Assignment) -> BTreeMap<String, usize> {
    let mut l = BTreeMap::new();
    for o in a.owners.values() {
        *l.entry(o.clone()).or_default() += 1;
    }
    l
}

const ALL: [u8; 6] = [1, 2, 3, 4, 5, 6];

#[test]
fn fresh_cluster_spreads_evenly_and_only_to_declarers() {
    let a = assign(&input(vec![
        member("n1", &ALL),
        member("n2", &ALL),
        member("n3", &ALL),
    ]));
    assert_eq!(a.owners.len(), 6);
    assert!(loads(&a).values().all(|l| *l == 2), "{:?}", loads(&a));
    assert!(a.moves.iter().all(|m| m.reason == MoveReason::Unowned));
    // Disjoint: only n1 declares .9.
    let a = assign(&input(vec![member("n1", &[9]), member("n2", &[1])]));
    assert_eq!(a.owners[&ip(9)], "n1");
    assert_eq!(a.owners[&ip(1)], "n2");
}

#[test]
fn no_quorum_no_owner_and_releases() {
    let mut i = input(vec![member("n1", &ALL), member("n2", &ALL)]);
    let first = assign(&i);
    i.current = first.owners;
    i.quorate = false;
    let a = assign(&i);
    assert!(a.owners.is_empty());
    assert_eq!(a.moves.len(), 6);
    assert!(a.moves.iter().all(|m| m.reason == MoveReason::Released));
}

#[test]
fn departure_is_reassigned_at_once_without_maturity() {
    let mut i = input(vec![
        member("n1", &ALL),
        member("n2", &ALL),
        member("n3", &ALL),
    ]);
    let first = assign(&i);
    i.current = first.owners.clone();
    i.members.retain(|m| m.nodename != "n2");
    let a = assign(&i);
    assert_eq!(a.owners.len(), 6);
    for (v, o) in &first.owners {
        if o != "n2" {
            assert_eq!(&a.owners[v], o, "a survivor's VIP moved");
        } else {
            assert_ne!(a.owners[v], "n2");
        }
    }
    assert!(loads(&a).values().all(|l| *l == 3));
}

#[test]
fn join_waits_for_maturity_then_moves_batch_by_batch() {
    let mut i = input(vec![member("n1", &ALL), member("n2", &ALL)]);
    i.current = assign(&i).owners;
    i.members.push(member("n3", &ALL));
    // Not mature: nothing moves, but not balanced.
    let a = assign(&i);
    assert_eq!(a.owners, i.current);
    assert!(a.moves.is_empty() && !a.balanced);
    // Mature, one move per interval.
    i.mature = true;
    i.balance_moves = 1;
    let a = assign(&i);
    assert_eq!(a.moves.len(), 1);
    assert_eq!(a.moves[0].to.as_deref(), Some("n3"));
    assert_eq!(a.moves[0].reason, MoveReason::Rebalance);
    i.current = a.owners;
    let a = assign(&i);
    assert_eq!(a.moves.len(), 1);
    assert!(a.balanced);
    i.current = a.owners;
    assert!(loads(&assign(&i)).values().all(|l| *l == 2));
    // Converged: nothing more, even with budget.
    i.balance_moves = 10;
    let a = assign(&i);
    assert!(a.moves.is_empty() && a.balanced);
}

#[test]
fn preference_fails_back_only_when_mature() {
    let mut decls = member("n1", &ALL);
    decls.vips[0].preference = Some("n2".into());
    let mut i = input(vec![decls.clone(), member("n3", &ALL)]);
    // n2 absent: normal election.
    i.current = assign(&i).owners;
    let owner_before = i.current[&ip(1)].clone();
    assert_ne!(owner_before, "n2");
    i.members.push(member("n2", &ALL));
    let a = assign(&i);
    assert_eq!(
        a.owners[&ip(1)],
        owner_before,
        "no failback before maturity"
    );
    i.mature = true;
    i.balance_moves = 1;
    let a = assign(&i);
    assert_eq!(a.owners[&ip(1)], "n2");
    assert_eq!(a.moves[0].reason, MoveReason::Failback);
    assert_eq!(a.states[&ip(1)].preferred.as_deref(), Some("n2"));
    // A fresh VIP goes to its preferred node at once.
    let i = input(vec![member("n3", &ALL), decls, member("n2", &ALL)]);
    assert_eq!(assign(&i).owners[&ip(1)], "n2");
}

#[test]
fn two_preferences_are_a_conflict_and_ignored() {
    let mut m1 = member("n1", &[1]);
    m1.vips[0].preference = Some("n1".into());
    let mut m2 = member("n2", &[1]);
    m2.vips[0].preference = Some("n2".into());
    let mut i = input(vec![m1, m2, member("n3", &[1])]);
    i.mature = true;
    i.balance_moves = 5;
    let a = assign(&i);
    let st = &a.states[&ip(1)];
    assert!(st.conflict);
    assert_eq!(st.preferred, None);
    // Normal election: the rendezvous winner among equals.
    let winner = ["n1", "n2", "n3"]
        .into_iter()
        .max_by_key(|n| rendezvous(&ip(1), n))
        .unwrap();
    assert_eq!(a.owners[&ip(1)], winner);
}

#[test]
fn follower_goes_with_its_binding() {
    let mk = |n: &str| {
        let mut m = member(n, &[1, 2, 3, 4]);
        let mut l = vip(50);
        l.bindings.clear();
        l.services = BTreeSet::from(["ESMTP_Listener".to_owned()]);
        l.follow = Some("b3".into());
        m.vips.push(l);
        m
    };
    let mut i = input(vec![mk("n1"), mk("n2")]);
    let a = assign(&i);
    assert_eq!(a.owners[&ip(50)], a.owners[&ip(3)]);
    assert_eq!(a.states[&ip(50)].follows, Some(ip(3)));
    // Followers do not count for balance: 4 balanced VIPs, 2 each.
    let l = loads(&a);
    assert!(l.values().all(|x| *x == 2 || *x == 3), "{l:?}");
    // Its binding's owner leaves: both move together.
    i.current = a.owners.clone();
    let gone = a.owners[&ip(3)].clone();
    i.members.retain(|m| m.nodename != gone);
    let b = assign(&i);
    assert_eq!(b.owners[&ip(50)], b.owners[&ip(3)]);
    assert!(
        b.moves
            .iter()
            .any(|m| m.addr == ip(50) && m.reason == MoveReason::Follow)
    );
}

#[test]
fn unsafe_and_broken_states() {
    let mut m1 = member("n1", &[1, 2]);
    let mut m2 = member("n2", &[1, 2]);
    m2.vips[0].services.insert("ESMTP_Listener".into());
    // Binding b2 names .2 on n1 but .3 on n2: both addresses are BROKEN.
    m2.vips[1].bindings = BTreeSet::from(["x".to_owned()]);
    m1.vips.push(vip(3));
    m1.vips[2].bindings = BTreeSet::from(["y".to_owned()]);
    let mut m2v3 = vip(3);
    m2v3.bindings = BTreeSet::from(["b2".to_owned()]);
    m2.vips.push(m2v3);
    let a = assign(&input(vec![m1, m2]));
    assert_eq!(a.states[&ip(1)].safety, Safety::Unsafe);
    assert!(a.owners.contains_key(&ip(1)), "UNSAFE is still managed");
    assert_eq!(a.states[&ip(2)].safety, Safety::Broken);
    assert_eq!(a.states[&ip(3)].safety, Safety::Broken);
    assert!(!a.owners.contains_key(&ip(2)) && !a.owners.contains_key(&ip(3)));
}

#[test]
fn owner_that_stops_declaring_loses_it() {
    let mut i = input(vec![member("n1", &[1]), member("n2", &[1])]);
    i.current = BTreeMap::from([(ip(1), "n1".to_owned())]);
    i.members[0].vips.clear();
    let a = assign(&i);
    assert_eq!(a.owners[&ip(1)], "n2");
}

#[test]
fn rendezvous_is_stable() {
    // Pinned values: a change here changes ownership across versions of the daemon.
    assert_eq!(rendezvous(&ip(1), "n1"), rendezvous(&ip(1), "n1"));
    assert_ne!(rendezvous(&ip(1), "n1"), rendezvous(&ip(1), "n2"));
    assert_eq!(rendezvous(&ip(1), "n1"), PINNED);
}

const PINNED: u64 = 11_643_581_146_565_640_881;

// ---- properties ----

/// A cluster: up to 6 nodes, up to 16 VIPs, each node declaring a subset (or all).
fn cluster(full: bool, prefs: bool) -> impl Strategy<Value = Vec<MemberDecls>> {
    (1usize..=6, 1u8..=16).prop_flat_map(move |(n, v)| {
        prop::collection::vec(
            (
                prop::collection::vec(any::<bool>(), v as usize),
                prop::collection::vec(prop::option::of(0usize..8), v as usize),
            ),
            n,
        )
        .prop_map(move |rows| {
            rows.into_iter()
                .enumerate()
                .map(|(k, (decl, pref))| MemberDecls {
                    nodename: format!("node{k}"),
                    vips: (1..=v)
                        .filter(|i| full || decl[usize::from(*i) - 1])
                        .map(|i| {
                            let mut d = vip(i);
                            if prefs {
                                d.preference = pref[usize::from(i) - 1].map(|p| format!("node{p}"));
                            }
                            d
                        })
                        .collect(),
                })
                .collect()
        })
    })
}

fn run_to_fixpoint(mut i: AssignInput) -> (AssignInput, Assignment) {
    for _ in 0..64 {
        let a = assign(&i);
        if a.owners == i.current {
            return (i, a);
        }
        i.current = a.owners;
    }
    panic!("no fixpoint");
}

fn invariants(i: &AssignInput, a: &Assignment) {
    for (v, o) in &a.owners {
        let m = i
            .members
            .iter()
            .find(|m| &m.nodename == o)
            .expect("owner in view");
        assert!(
            m.vips.iter().any(|d| d.addr == *v),
            "{o} owns {v} it did not declare"
        );
    }
    assert!(a.balance_moves_used <= i.balance_moves || !i.mature);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn permuted_input_same_answer(ms in cluster(false, true), seed in any::<u64>(), mature in any::<bool>(), budget in 0u32..4) {
        let mut i = input(ms);
        i.mature = mature;
        i.balance_moves = budget;
        let (i, _) = run_to_fixpoint(AssignInput { mature: false, ..i });
        let i = AssignInput { mature, ..i };
        let a = assign(&i);
        let mut p = i.clone();
        // Deterministic shuffle from the seed.
        let mut s = seed;
        for k in (1..p.members.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            p.members.swap(k, (s >> 33) as usize % (k + 1));
        }
        for m in &mut p.members {
            m.vips.reverse();
        }
        prop_assert_eq!(assign(&p), a);
    }

    #[test]
    fn one_declared_owner(ms in cluster(false, true), mature in any::<bool>(), budget in 0u32..4) {
        let mut i = input(ms);
        i.mature = mature;
        i.balance_moves = budget;
        let a = assign(&i);
        invariants(&i, &a);
        // Every VIP that somebody declares has an owner (none is BROKEN here).
        let declared: BTreeSet<IpAddr> = i.members.iter().flat_map(|m| m.vips.iter().map(|v| v.addr)).collect();
        prop_assert_eq!(a.owners.keys().copied().collect::<BTreeSet<_>>(), declared);
    }

    #[test]
    fn bounded_load_when_mature(ms in cluster(true, false)) {
        let mut i = input(ms);
        i.mature = true;
        i.balance_moves = u32::MAX;
        // Start from a skewed state: everything on node0.
        i.current = i.members[0].vips.iter().map(|v| (v.addr, "node0".to_owned())).collect();
        let a = assign(&i);
        let v = a.owners.len();
        let cap = v.div_ceil(i.members.len());
        prop_assert!(loads(&a).values().all(|l| *l <= cap), "{:?} cap {}", loads(&a), cap);
        prop_assert!(a.balanced);
    }

    #[test]
    fn departure_moves_only_departed_vips(ms in cluster(false, false), gone in 0usize..6) {
        let i = input(ms);
        let (mut i, before) = run_to_fixpoint(i);
        let gone = format!("node{}", gone % i.members.len());
        i.members.retain(|m| m.nodename != gone);
        let a = assign(&i);
        invariants(&i, &a);
        for m in &a.moves {
            prop_assert_eq!(before.owners.get(&m.addr), Some(&gone), "moved {:?}", m);
        }
    }

    #[test]
    fn join_moves_at_most_budget_and_only_when_mature(ms in cluster(false, false), mature in any::<bool>(), budget in 0u32..4) {
        let mut i = input(ms);
        let joiner = i.members.pop();
        let (mut i, before) = run_to_fixpoint(i);
        if let Some(j) = joiner { i.members.push(j); }
        i.mature = mature;
        i.balance_moves = budget;
        let a = assign(&i);
        let moved: Vec<_> = a.moves.iter().filter(|m| before.owners.contains_key(&m.addr)).collect();
        if mature {
            prop_assert!(moved.len() <= budget as usize);
        } else {
            prop_assert!(moved.is_empty(), "{:?}", moved);
        }
        for m in &moved {
            prop_assert_eq!(m.reason, MoveReason::Rebalance);
        }
    }

    #[test]
    fn idempotent(ms in cluster(false, true), mature in any::<bool>()) {
        let mut i = input(ms);
        i.mature = mature;
        i.balance_moves = if mature { u32::MAX } else { 0 };
        let a = assign(&i);
        i.current = a.owners.clone();
        let b = assign(&i);
        prop_assert_eq!(&b.owners, &a.owners);
        prop_assert!(b.moves.is_empty());
    }

    #[test]
    fn preference_respected_when_mature(ms in cluster(false, true)) {
        let mut i = input(ms);
        i.mature = true;
        i.balance_moves = 1;
        let (i, a) = run_to_fixpoint(i);
        for (v, st) in &a.states {
            if let Some(p) = &st.preferred
                && st.participants.contains(p)
            {
                prop_assert_eq!(a.owners.get(v), Some(p));
            }
        }
        invariants(&i, &a);
    }

    #[test]
    fn follow_honoured(ms in cluster(true, false)) {
        let mut i = input(ms);
        for m in &mut i.members {
            let mut l = vip(100);
            l.bindings.clear();
            l.follow = Some("b1".into());
            m.vips.push(l);
        }
        let a = assign(&i);
        prop_assert_eq!(a.owners.get(&ip(100)), a.owners.get(&ip(1)));
    }

    #[test]
    fn no_owner_without_quorum(ms in cluster(false, true), mature in any::<bool>()) {
        let mut i = input(ms);
        i.current = assign(&i).owners;
        i.quorate = false;
        i.mature = mature;
        i.balance_moves = 3;
        let a = assign(&i);
        prop_assert!(a.owners.is_empty());
        prop_assert!(a.states.values().all(|s| s.owner.is_none()));
    }
}

/// 4,096 VIPs declared by every one of three nodes: every VIP owned once, ⌈4096/3⌉ at
/// most per node, the same answer whatever the member order, and a departure moves only
/// the departed node's VIPs.
#[test]
fn four_thousand_and_ninety_six_vips_on_three_nodes() {
    let decls: Vec<VipDecl> = (0..4096u32)
        .map(|k| VipDecl {
            addr: IpAddr::V6(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 1, 0, 0, 0, 1, k as u16,
            )),
            bindings: BTreeSet::from([format!("b{k}")]),
            services: BTreeSet::from(["Binding".to_owned()]),
            preference: None,
            follow: None,
        })
        .collect();
    let m = |n: &str| MemberDecls {
        nodename: n.into(),
        vips: decls.clone(),
    };
    let a = assign(&input(vec![m("n1"), m("n2"), m("n3")]));
    assert_eq!(a.owners.len(), 4096);
    let l = loads(&a);
    assert_eq!(l.values().sum::<usize>(), 4096);
    assert!(l.values().all(|n| *n <= 4096usize.div_ceil(3)), "{l:?}");
    let b = assign(&input(vec![m("n3"), m("n1"), m("n2")]));
    assert_eq!(a.owners, b.owners, "same answer in any member order");

    // n2 leaves: only its VIPs move, at once.
    let gone: BTreeSet<IpAddr> = a.owned_by("n2");
    let mut i = input(vec![m("n1"), m("n3")]);
    i.current = a.owners.clone();
    let c = assign(&i);
    assert_eq!(c.owners.len(), 4096);
    for (addr, o) in &a.owners {
        if o != "n2" {
            assert_eq!(&c.owners[addr], o, "{addr} moved without reason");
        } else {
            assert!(gone.contains(addr));
        }
    }
    assert_eq!(c.moves.len(), gone.len());
}
