//! DuraVIP plumbing with rtnetlink in throwaway namespaces: add/remove (v4, v6 without
//! DAD), tagging and orphan removal, reconcile idempotence and damping, refusal outside
//! the Topology stanzas. Documentation addresses only.

use std::{collections::BTreeSet, net::IpAddr};

use duraplane::{
    config::model::{Cidr, DuravipDecl, DuravipSource, Topology},
    duravip::{
        decl::{DeclError, validate},
        plumb::{DURAVIP_PROTO, PlumbError, PlumbSpec, Plumber, Reconciler, Trigger, plan},
    },
    testbed::Testbed,
};

const V4: &str = "198.51.100.50";
const V4B: &str = "198.51.100.51";
const V6: &str = "2001:db8:1::50";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn topology() -> Vec<Topology> {
    vec![
        Topology {
            network: Cidr {
                addr: ip("198.51.100.0"),
                prefix: 24,
            },
            cidrmask: 32,
            interface: "eth0".into(),
        },
        Topology {
            network: Cidr {
                addr: ip("2001:db8:1::"),
                prefix: 64,
            },
            cidrmask: 128,
            interface: "eth0".into(),
        },
    ]
}

/// Host `a` with eth0 (main 198.51.100.1/24, 2001:db8:1::1/64) linked to host `b`, DAD
/// switched back on for eth0 so "no tentative flag" means something.
fn bed() -> Testbed {
    let mut tb = Testbed::new().unwrap();
    tb.add_host("a").unwrap();
    tb.add_host("b").unwrap();
    tb.veth_pair(
        "a",
        "b",
        &["198.51.100.1/24", "2001:db8:1::1/64"],
        &["198.51.100.2/24", "2001:db8:1::2/64"],
    )
    .unwrap();
    tb.exec("a", &["sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=1"])
        .unwrap();
    tb
}

fn ip_addr(tb: &Testbed) -> String {
    tb.exec("a", &["ip", "addr", "show", "dev", "eth0"])
        .unwrap()
}

#[test]
fn add_and_remove_v4_and_v6_tagged_without_dad() {
    let tb = bed();
    let topo = topology();
    let (added, listed) = tb
        .run_in("a", move || {
            let mut p = Plumber::new().unwrap();
            let s4 = plan(ip(V4), &topo).unwrap();
            let s6 = plan(ip(V6), &topo).unwrap();
            assert_eq!(s4.prefix, 32);
            assert_eq!(s6.prefix, 128);
            let added = (
                p.add(&s4).unwrap(),
                p.add(&s6).unwrap(),
                p.add(&s4).unwrap(),
            );
            (added, p.plumbed().unwrap())
        })
        .unwrap();
    assert_eq!(added, (true, true, false), "second add is a no-op");
    let mine: BTreeSet<IpAddr> = listed.iter().map(|a| a.addr).collect();
    assert_eq!(mine, BTreeSet::from([ip(V4), ip(V6)]));
    assert!(listed.iter().all(|a| a.proto == Some(DURAVIP_PROTO)));
    assert!(listed.iter().all(|a| !a.is_tentative()), "{listed:?}");

    // Control: the same kernel marks an address added without nodad tentative, so the
    // assertion above can fail.
    tb.exec(
        "a",
        &["ip", "addr", "add", "2001:db8:1::99/128", "dev", "eth0"],
    )
    .unwrap();
    let text = ip_addr(&tb);
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} missing in {text}"))
            .to_string()
    };
    assert!(line("2001:db8:1::99/128").contains("tentative"), "{text}");
    assert!(!line(&format!("{V6}/128")).contains("tentative"), "{text}");
    assert!(line(&format!("{V4}/32")).contains("eth0:dv"), "{text}");

    let gone = tb
        .run_in("a", move || {
            let mut p = Plumber::new().unwrap();
            let v4 = p.plumbed().unwrap();
            let mut n = 0;
            for a in &v4 {
                n += usize::from(p.remove(a).unwrap());
            }
            let again = p.remove(&v4[0]).unwrap();
            (n, again, p.plumbed().unwrap())
        })
        .unwrap();
    assert_eq!(gone.0, 2);
    assert!(!gone.1, "removing twice is a no-op");
    assert!(gone.2.is_empty());
    let text = ip_addr(&tb);
    assert!(!text.contains(V4) && !text.contains(V6), "{text}");
    assert!(
        text.contains("198.51.100.1/24"),
        "main address untouched: {text}"
    );
}

#[test]
fn orphans_are_recognised_and_removed_but_not_foreign_addresses() {
    let tb = bed();
    let topo = topology();
    tb.run_in("a", move || {
        let mut p = Plumber::new().unwrap();
        p.add(&plan(ip(V4), &topo).unwrap()).unwrap();
        p.add(&plan(ip(V6), &topo).unwrap()).unwrap();
    })
    .unwrap();
    // Someone else's address in the same range.
    tb.exec(
        "a",
        &["ip", "addr", "add", "198.51.100.77/32", "dev", "eth0"],
    )
    .unwrap();
    // A "restarted daemon": a fresh socket finds its orphans by their tag.
    let (found, removed, left, main) = tb
        .run_in("a", || {
            let mut p = Plumber::new().unwrap();
            let found: BTreeSet<IpAddr> = p.plumbed().unwrap().iter().map(|a| a.addr).collect();
            let removed: BTreeSet<IpAddr> =
                p.remove_orphans().unwrap().iter().map(|a| a.addr).collect();
            (
                found,
                removed,
                p.plumbed().unwrap(),
                p.main_addresses().unwrap(),
            )
        })
        .unwrap();
    assert_eq!(found, BTreeSet::from([ip(V4), ip(V6)]));
    assert_eq!(removed, found);
    assert!(left.is_empty());
    assert!(
        ip_addr(&tb).contains("198.51.100.77/32"),
        "foreign address kept"
    );
    // The main address rule uses the same view of the node.
    assert!(
        main.contains(&(ip("198.51.100.1"), "eth0".to_string())),
        "{main:?}"
    );
    let decl = DuravipDecl {
        addr: ip("198.51.100.1"),
        source: DuravipSource::Binding { name: "b".into() },
        preference: None,
        follow: None,
    };
    let errs = validate(&[decl], &topology(), &main);
    assert!(
        matches!(errs.as_slice(), [DeclError::MainAddress { .. }]),
        "{errs:?}"
    );
}

#[test]
fn reconcile_is_idempotent_and_damps_maintenance() {
    let tb = bed();
    let topo = topology();
    let res = tb
        .run_in("a", move || {
            let mut p = Plumber::new().unwrap();
            let mut r = Reconciler::new(3);
            let want = BTreeSet::from([ip(V4), ip(V4B), ip(V6)]);
            let first = r
                .reconcile(&mut p, &want, &topo, Trigger::Election)
                .unwrap();
            let second = r
                .reconcile(&mut p, &want, &topo, Trigger::Election)
                .unwrap();
            let third = r
                .reconcile(&mut p, &want, &topo, Trigger::Maintenance)
                .unwrap();
            // Lose one VIP: removed at once.
            let want2 = BTreeSet::from([ip(V4), ip(V6)]);
            let fourth = r
                .reconcile(&mut p, &want2, &topo, Trigger::Election)
                .unwrap();
            (first, second, third, fourth, p.plumbed().unwrap())
        })
        .unwrap();
    let (first, second, third, fourth, left) = res;
    assert_eq!(first.added.len(), 3);
    assert!(
        !second.changed() && !third.changed(),
        "{second:?} {third:?}"
    );
    assert_eq!(fourth.removed.len(), 1);
    assert_eq!(fourth.removed[0].addr, ip(V4B));
    assert!(fourth.added.is_empty());
    assert_eq!(left.len(), 2);

    // Someone deletes a VIP behind our back: the maintenance check re-plumbs it only on
    // the third consecutive check (if_down_limit = 3); an election plumbs at once.
    tb.exec(
        "a",
        &["ip", "addr", "del", &format!("{V4}/32"), "dev", "eth0"],
    )
    .unwrap();
    let topo = topology();
    let steps = tb
        .run_in("a", move || {
            let mut p = Plumber::new().unwrap();
            let mut r = Reconciler::new(3);
            let want = BTreeSet::from([ip(V4), ip(V6)]);
            let mut steps = Vec::new();
            for _ in 0..3 {
                let x = r
                    .reconcile(&mut p, &want, &topo, Trigger::Maintenance)
                    .unwrap();
                steps.push((x.added.len(), x.pending.clone()));
            }
            steps
        })
        .unwrap();
    assert_eq!(steps[0], (0, vec![(ip(V4), 1)]));
    assert_eq!(steps[1], (0, vec![(ip(V4), 2)]));
    assert_eq!(steps[2], (1, vec![]));
    assert!(ip_addr(&tb).contains(&format!("{V4}/32")));
}

#[test]
fn addresses_outside_every_topology_are_refused() {
    let tb = bed();
    let topo = topology();
    let (r, add_err, planned) = tb
        .run_in("a", move || {
            let mut p = Plumber::new().unwrap();
            let mut rc = Reconciler::new(1);
            let want = BTreeSet::from([ip("203.0.113.9"), ip(V4)]);
            let r = rc
                .reconcile(&mut p, &want, &topo, Trigger::Election)
                .unwrap();
            let add_err = p
                .add(&PlumbSpec {
                    addr: ip(V4B),
                    prefix: 32,
                    ifname: "nosuch0".into(),
                })
                .unwrap_err();
            (r, add_err, plan(ip("203.0.113.9"), &topo))
        })
        .unwrap();
    assert_eq!(r.added.len(), 1, "the covered one is still plumbed");
    assert_eq!(r.refused.len(), 1);
    assert_eq!(r.refused[0].0, ip("203.0.113.9"));
    assert!(r.refused[0].1.contains("Topology"), "{}", r.refused[0].1);
    assert!(matches!(add_err, PlumbError::NoInterface { ref ifname, .. } if ifname == "nosuch0"));
    assert!(matches!(planned, Err(PlumbError::NoTopology { .. })));
    assert!(!ip_addr(&tb).contains("203.0.113.9"));
}

/// `n` IPv6 VIPs in 2001:db8:1::1:0/116 (distinct solicited-node groups, like a real range).
fn many_v6(n: u16) -> Vec<IpAddr> {
    (0..n)
        .map(|k| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 1, k)))
        .collect()
}

#[test]
fn batches_plumb_and_unplumb_many_across_windows() {
    // More than two windows, IPv4 and IPv6 mixed, one of them already present.
    let tb = bed();
    let topo = topology();
    let mut want = many_v6(300);
    want.push(ip(V4));
    want.push(ip(V4B));
    let n = want.len();
    let w = want.clone();
    let (first, again, listed, pre_removed) = tb
        .run_in("a", move || {
            let mut p = Plumber::new().unwrap();
            let ix = p.link("eth0").unwrap().unwrap().index;
            p.add(&plan(w[5], &topo).unwrap()).unwrap();
            let items: Vec<_> = w.iter().map(|a| (plan(*a, &topo).unwrap(), ix)).collect();
            let first = p.add_many(&items).unwrap();
            let again = p.add_many(&items).unwrap();
            let listed = p.plumbed().unwrap();
            // One removed behind our back: reported as already gone, not as an error.
            let gone = listed.iter().find(|a| a.addr == w[7]).unwrap().clone();
            let pre = p.remove(&gone).unwrap();
            (first, again, listed, pre)
        })
        .unwrap();
    assert!(pre_removed);
    assert_eq!(first.len(), n);
    assert!(!first[5], "already present is reported as such");
    assert_eq!(first.iter().filter(|x| **x).count(), n - 1);
    assert!(again.iter().all(|x| !x), "a second batch adds nothing");
    let got: BTreeSet<IpAddr> = listed.iter().map(|a| a.addr).collect();
    assert_eq!(got, want.iter().copied().collect::<BTreeSet<_>>());
    assert!(listed.iter().all(|a| a.proto == Some(DURAVIP_PROTO)));
    // A /128 gets its local route but no (redundant) prefix route; flags say so.
    let v6 = listed.iter().find(|a| a.addr == want[0]).unwrap();
    assert_eq!(v6.prefix, 128);
    assert_ne!(v6.flags & 0x200, 0, "IFA_F_NOPREFIXROUTE: {:#x}", v6.flags);
    let main = tb
        .exec("a", &["ip", "-6", "route", "show", "table", "main"])
        .unwrap();
    assert!(!main.contains("2001:db8:1::1:0 "), "{main}");
    let local = tb
        .exec("a", &["ip", "-6", "route", "show", "table", "local"])
        .unwrap();
    assert!(local.contains("local 2001:db8:1::1:0 "), "{local}");

    let (removed, left) = tb
        .run_in("a", || {
            let mut p = Plumber::new().unwrap();
            let removed = p.remove_orphans().unwrap();
            (removed, p.plumbed().unwrap())
        })
        .unwrap();
    assert_eq!(
        removed.len(),
        n - 1,
        "the one removed before is not counted"
    );
    assert!(left.is_empty(), "{left:?}");
    let local = tb
        .exec("a", &["ip", "-6", "route", "show", "table", "local"])
        .unwrap();
    assert!(
        !local.contains("2001:db8:1::1:"),
        "local routes left: {local}"
    );
    let addrs = ip_addr(&tb);
    assert!(addrs.contains("198.51.100.1/24") && addrs.contains("2001:db8:1::1/64"));
}

#[test]
fn a_failure_inside_a_batch_names_its_address_and_the_rest_is_plumbed() {
    let tb = bed();
    let topo = topology();
    let (err, listed) = tb
        .run_in("a", move || {
            let mut p = Plumber::new().unwrap();
            let ix = p.link("eth0").unwrap().unwrap().index;
            let mut items: Vec<_> = many_v6(200)
                .into_iter()
                .map(|a| (plan(a, &topo).unwrap(), ix))
                .collect();
            // No such interface index: the kernel NACKs this one message only.
            items[150].1 = 999_999;
            let err = p.add_many(&items).unwrap_err();
            (err, p.plumbed().unwrap())
        })
        .unwrap();
    let bad = many_v6(200)[150];
    assert!(
        matches!(&err, PlumbError::Kernel { addr, .. } if *addr == bad),
        "{err}"
    );
    assert_eq!(listed.len(), 199);
    assert!(listed.iter().all(|a| a.addr != bad));
}

#[test]
fn a_plumbed_v6_vip_answers_neighbour_solicitation() {
    // The /128 without a prefix route is still a real address: b resolves it (NS/NA by the
    // kernel) and gets an echo reply from it.
    let tb = bed();
    let topo = topology();
    tb.run_in("a", move || {
        let mut p = Plumber::new().unwrap();
        let mut r = Reconciler::new(1);
        r.reconcile(&mut p, &BTreeSet::from([ip(V6)]), &topo, Trigger::Election)
            .unwrap();
    })
    .unwrap();
    let out = tb
        .exec_output("b", &["ping", "-6", "-c", "1", "-W", "2", V6])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let neigh = tb.exec("b", &["ip", "-6", "neigh", "show", V6]).unwrap();
    assert!(neigh.contains("lladdr"), "{neigh}");
    // Released: b's next probe gets no answer.
    tb.run_in("a", || {
        let mut p = Plumber::new().unwrap();
        p.remove_orphans().unwrap();
    })
    .unwrap();
    let out = tb
        .exec_output("b", &["ping", "-6", "-c", "1", "-W", "1", V6])
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn releasing_a_v6_vip_with_a_shorter_cidrmask_keeps_the_main_address_routes() {
    // cidrmask 64: the VIP shares the /64 prefix route with the main address. Release
    // removes the VIP's own local route and address, nothing of the main address.
    let tb = bed();
    let mut topo = topology();
    topo[1].cidrmask = 64;
    let (added, removed) = tb
        .run_in("a", move || {
            let mut p = Plumber::new().unwrap();
            let mut r = Reconciler::new(1);
            let want = BTreeSet::from([ip(V6)]);
            let added = r
                .reconcile(&mut p, &want, &topo, Trigger::Election)
                .unwrap();
            let removed = r
                .reconcile(&mut p, &BTreeSet::new(), &topo, Trigger::Election)
                .unwrap();
            (added, removed)
        })
        .unwrap();
    assert_eq!(added.added.len(), 1);
    assert_eq!(added.added[0].prefix, 64);
    assert_eq!(removed.removed.len(), 1);
    assert!(!ip_addr(&tb).contains(V6));
    let local = tb
        .exec("a", &["ip", "-6", "route", "show", "table", "local"])
        .unwrap();
    assert!(!local.contains(V6), "{local}");
    assert!(local.contains("local 2001:db8:1::1 "), "{local}");
    let main = tb
        .exec("a", &["ip", "-6", "route", "show", "table", "main"])
        .unwrap();
    assert!(main.contains("2001:db8:1::/64"), "{main}");
    let out = tb
        .exec_output("b", &["ping", "-6", "-c", "1", "-W", "2", "2001:db8:1::1"])
        .unwrap();
    assert!(out.status.success(), "main address still reachable");
}
