//! The shipped example configurations load without errors, and `render_effective` output
//! is itself a configuration that loads back to the same model.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use duraplane::config::{
    self, Config, DuravipSource, ListenAddr, LogDestination, NetblockAction, Origin, ReplicateKind,
    load, load_str, render_effective,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn load_ok(p: &Path) -> config::Loaded {
    match load(p) {
        Ok(l) => l,
        Err(e) => panic!("{}: {e}", p.display()),
    }
}

/// Everything but provenance and the source path.
fn same_model(a: &Config, b: &Config) {
    assert_eq!(format!("{:?}", a.cluster), format!("{:?}", b.cluster));
    assert_eq!(a.listener, b.listener);
    assert_eq!(a.security, b.security);
    assert_eq!(a.loggers, b.loggers);
    assert_eq!(a.duraplane, b.duraplane);
    let mut da = a.duravips.clone();
    let mut db = b.duravips.clone();
    let key = |d: &config::DuravipDecl| format!("{d:?}");
    da.sort_by_key(key);
    db.sort_by_key(key);
    assert_eq!(da, db);
}

fn round_trip(l: &config::Loaded) {
    let text = render_effective(l);
    let again = load_str(&text, Path::new("/rendered.conf"))
        .unwrap_or_else(|e| panic!("rendered output does not load: {e}\n{text}"));
    same_model(&l.config, &again.config);
}

#[test]
fn ecelerity_cluster_example_loads() {
    let p = repo().join("examples/ecelerity-cluster.conf");
    let l = load_ok(&p);
    let c = &l.config;
    assert_eq!(c.cluster.cluster_group, "ec_cluster");
    assert_eq!(c.cluster.replicate.len(), 5);
    assert!(
        c.cluster
            .replicate
            .iter()
            .all(|r| r.max_delay == Duration::from_millis(10))
    );
    assert_eq!(c.cluster.topology.len(), 1);
    assert_eq!(c.cluster.topology[0].interface, "eth1");
    assert_eq!(c.cluster.topology[0].cidrmask, 32);
    assert_eq!(c.listener.listens.len(), 1);
    assert_eq!(c.listener.listens[0].addr, ListenAddr::AnyV4(4802));
    let sec = c.security.as_ref().unwrap();
    assert_eq!(sec.user.as_deref(), Some("ecuser"));
    assert_eq!(sec.capabilities.len(), 4);
    assert_eq!(c.loggers.len(), 2);
    assert_eq!(c.duraplane.interfaces, vec!["eth1".to_string()]);
    assert_eq!(c.duraplane.netblocks.len(), 2);
    assert_eq!(c.duraplane.netblocks[0].action, NetblockAction::Drop);
    assert_eq!(c.duraplane.netblocks[0].max_connections, Some(100));
    assert_eq!(c.duraplane.netblocks[1].action, NetblockAction::Count);
    assert!(c.duraplane.netblocks[1].cidr.addr.is_ipv6());
    // The Solaris Privileges line is accepted with a warning naming it.
    assert!(
        l.warnings.iter().any(|w| w.message.contains("Privileges")),
        "{:?}",
        l.warnings
    );
    round_trip(&l);
}

#[test]
fn three_node_examples_load() {
    for n in 1..=3u8 {
        let p = repo().join(format!("examples/cluster-3node/node{n}.conf"));
        let l = load_ok(&p);
        let c = &l.config;
        assert_eq!(
            c.cluster.nodename.as_deref(),
            Some(format!("node{n}").as_str())
        );
        let addr: IpAddr = format!("192.0.2.1{n}").parse().unwrap();
        assert_eq!(c.cluster.nodeaddr, Some(addr));
        assert_eq!(
            c.listener.listens[0].addr,
            ListenAddr::Inet(format!("192.0.2.1{n}:4802").parse().unwrap())
        );
        assert_eq!(
            c.duraplane.control_socket,
            PathBuf::from(format!("/run/duraplane/node{n}.sock"))
        );
        assert_eq!(
            c.duraplane.metrics_listen,
            Some(format!("127.0.0.1:948{n}").parse().unwrap())
        );
        // Three bindings, one listener, one follower.
        assert_eq!(c.duravips.len(), 5);
        let b1 = c
            .duravips
            .iter()
            .find(|d| matches!(&d.source, DuravipSource::Binding { name } if name == "vip-1"))
            .unwrap();
        assert_eq!(b1.preference.as_deref(), Some("node1"));
        let f = c.duravips.iter().find(|d| d.follow.is_some()).unwrap();
        assert_eq!(f.follow.as_deref(), Some("vip-1"));
        assert!(matches!(
            c.loggers[0].destinations.get("mainlog"),
            Some(LogDestination::Cluster { subscribers, .. }) if subscribers == &["master".to_string()]
        ));
        assert_eq!(c.cluster.replicate[0].kind, ReplicateKind::InboundCidr);
        assert!(matches!(
            c.origins.get("cluster.nodeaddr"),
            Some(Origin::File { line: 22, .. })
        ));
        round_trip(&l);
    }
}

#[test]
fn render_shows_values_and_provenance() {
    let p = repo().join("examples/ecelerity-cluster.conf");
    let l = load_ok(&p);
    let text = render_effective(&l);
    let line = |needle: &str| -> String {
        text.lines()
            .find(|l| l.trim_start().starts_with(needle))
            .unwrap_or_else(|| panic!("no line `{needle}` in\n{text}"))
            .to_owned()
    };
    let l1 = line("view_mature_time = 5");
    assert!(l1.ends_with("# default"), "{l1}");
    let l2 = line("cluster_group = \"ec_cluster\"");
    assert!(l2.ends_with(&format!("# {}:36:3", p.display())), "{l2}");
    assert!(line("max_delay = 10ms").ends_with("# default"));
    assert!(line("ports = ( 25 465 587 )").contains("ecelerity-cluster.conf:62:3"));
    assert!(line("duravip_balance_set_size = 1").ends_with("# default"));
    assert!(text.contains("Topology \"192.0.2.0/24\" {"));
    assert!(text.contains("Netblock \"198.51.100.0/24\" {"));
    assert!(text.contains("metrics = \"127.0.0.1:9480\""));
}

#[test]
#[ignore = "prints the rendering for eyeballing"]
fn print_render() {
    let p = repo().join("examples/cluster-3node/node1.conf");
    let l = load_ok(&p);
    println!("{}", render_effective(&l));
    for w in &l.warnings {
        println!("WARN {w}");
    }
}
