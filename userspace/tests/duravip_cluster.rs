//! DuraVIP failover on three real daemons: balanced ownership, kill -9 of an owner (one
//! survivor plumbs the VIP, the observer sees the GARP, its neighbour entry moves, a new
//! TCP connection succeeds), restart (nothing moves before maturity, then balanced).

mod duravip_cluster_support;

use std::time::{Duration, Instant};

use duraplane::testbed::Stream;
use duravip_cluster_support::{Cluster, Vip, shown_owners, wait_until};

const VIPS: [&str; 3] = ["198.51.100.1", "198.51.100.2", "198.51.100.3"];

#[test]
fn three_vips_balance_fail_over_and_rebalance() {
    let vips: Vec<Vip> = VIPS
        .iter()
        .map(|a| Vip {
            addr: a,
            preference: None,
        })
        .collect();
    let mut c = Cluster::start(&vips);

    // Each node owns exactly one VIP.
    wait_until("each node owns one VIP", 20, || {
        let mut owners: Vec<Vec<usize>> = VIPS.iter().map(|v| c.holders(v)).collect();
        owners.iter().all(|h| h.len() == 1) && {
            let mut o: Vec<usize> = owners.iter_mut().map(|h| h[0]).collect();
            o.sort_unstable();
            o == [0, 1, 2]
        }
    });
    // Every node's `cluster duravip show` agrees with the plumbing.
    let x = VIPS[0];
    let owner = c.wait_single(x, 5);
    wait_until("show agrees everywhere", 5, || {
        (0..3).all(|i| {
            let s = c.ask(i, "cluster duravip show");
            let o = shown_owners(&s);
            o.len() == 3
                && o.iter().all(|(v, n)| {
                    let h = c.holders(v);
                    h.len() == 1 && *n == format!("node{}", h[0] + 1)
                })
        })
    });
    let show = c.ask(owner, "cluster duravip show");
    eprintln!("node{}> cluster duravip show\n{show}", owner + 1);
    assert!(show.starts_with("DuraVIP State:\n"), "{show}");
    assert!(
        show.contains("198.51.100.1/vip0: (owned,safe) multivip"),
        "{show}"
    );

    // The observer reaches X on its owner (this also creates its neighbour entry).
    wait_until("observer reaches the owner", 5, || {
        c.connect(x) == Some(format!("node{}", owner + 1))
    });
    assert_eq!(c.observer_neigh(x), Some(c.mac(owner)));
    let arp = c.ask(owner, "cluster arp show");
    let line = arp
        .lines()
        .find(|l| l.starts_with("198.51.100.200 "))
        .unwrap_or_else(|| panic!("observer missing from cluster arp show: {arp}"));
    eprintln!("node{}> cluster arp show\n{arp}", owner + 1);
    let obs_mac =
        c.tb.exec("obs", &["cat", "/sys/class/net/eth0/address"])
            .unwrap();
    assert!(
        line.contains(&format!("[{}]", obs_mac.trim())) && line.ends_with('s'),
        "Momentum format ADDR [mac] AGEs: {line}"
    );

    // kill -9 the owner of X.
    let cap = c.capture();
    let killed_at = Instant::now();
    c.nodes[owner].kill();
    let mut survivor = usize::MAX;
    wait_until("a survivor plumbs X", 10, || {
        let h: Vec<usize> = c.holders(x).into_iter().filter(|i| *i != owner).collect();
        if h.len() == 1 {
            survivor = h[0];
        }
        h.len() == 1
    });
    let took = killed_at.elapsed();
    // Exactly one survivor has it (the killed node's kernel may still hold its copy until
    // its daemon restarts and removes orphans).
    let others: Vec<usize> = c.holders(x).into_iter().filter(|i| *i != owner).collect();
    assert_eq!(others, vec![survivor]);
    let new_mac = c.mac(survivor);
    wait_until("observer captured the GARP", 5, || {
        cap.lines(Stream::Stdout)
            .iter()
            .any(|l| l.starts_with_mac(&new_mac) && l.contains("198.51.100.1"))
    });
    let lines = cap.lines(Stream::Stdout);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Request who-has 198.51.100.1 tell 198.51.100.1")),
        "GARP request form: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("Reply 198.51.100.1 is-at")),
        "GARP reply form: {lines:?}"
    );
    wait_until("observer neighbour entry moved", 5, || {
        c.observer_neigh(x) == Some(new_mac.clone())
    });
    wait_until("new TCP connection to X served by the survivor", 5, || {
        c.connect(x) == Some(format!("node{}", survivor + 1))
    });
    eprintln!(
        "failover of {x}: plumbed on node{} after {took:?}",
        survivor + 1
    );
    eprintln!(
        "node{}> cluster duravip show\n{}",
        survivor + 1,
        c.ask(survivor, "cluster duravip show")
    );
    eprintln!(
        "observer capture:\n{}",
        cap.lines(Stream::Stdout).join("\n")
    );
    eprintln!(
        "observer$ ip neigh show {x}\n{}",
        c.tb.exec("obs", &["ip", "neigh", "show", x])
            .unwrap_or_default()
    );
    // The two survivors own everything, at most two each.
    for v in VIPS {
        let h: Vec<usize> = c.holders(v).into_iter().filter(|i| *i != owner).collect();
        assert_eq!(h.len(), 1, "{v}: {h:?}");
    }

    // Restart the killed node: it removes its orphan at once and takes nothing before
    // view_mature_time (2 s).
    let before: Vec<Vec<usize>> = VIPS.iter().map(|v| c.holders(v)).collect();
    let restarted = Instant::now();
    let tb = &c.tb;
    c.nodes[owner]
        .restart(tb, std::path::Path::new(duravip_cluster_support::BIN))
        .expect("restart");
    while restarted.elapsed() < Duration::from_millis(1500) {
        for (k, v) in VIPS.iter().enumerate() {
            let h = c.holders(v);
            assert!(
                !h.contains(&owner),
                "{v} moved to the restarted node before maturity"
            );
            assert_eq!(
                h.iter().filter(|i| **i != owner).collect::<Vec<_>>(),
                before[k]
                    .iter()
                    .filter(|i| **i != owner)
                    .collect::<Vec<_>>(),
                "{v} moved before maturity"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Then balanced again: one each.
    wait_until("balanced after rejoin", 15, || {
        let mut o = Vec::new();
        for v in VIPS {
            let h = c.holders(v);
            if h.len() != 1 {
                return false;
            }
            o.push(h[0]);
        }
        o.sort_unstable();
        o == [0, 1, 2]
    });
    drop(cap);
}

trait MacLine {
    fn starts_with_mac(&self, mac: &str) -> bool;
}

impl MacLine for String {
    /// tcpdump -e lines: `TIME SRC > DST, ethertype …`.
    fn starts_with_mac(&self, mac: &str) -> bool {
        self.split_whitespace().nth(1) == Some(mac)
    }
}
