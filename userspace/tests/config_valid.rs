//! Valid inputs: every verbatim example of reference/momentum.md §1–2 (as fixtures or
//! inline), every value form, case-insensitivity, defaults and provenance.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use duraplane::config::{
    Checked, Config, DuravipSource, ListenAddr, LogDestination, NetblockAction, Origin,
    ReplicateKind, XdpMode, check, check_bytes,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

fn ok(text: &str) -> (Config, Checked) {
    let c = check_bytes(text.as_bytes(), Path::new("/t/valid.conf"));
    assert!(c.errors.is_empty(), "{text}\n=> {:#?}", c.errors);
    (c.config.clone().unwrap(), c)
}

fn ok_file(name: &str) -> (Config, Checked) {
    let c = check(&fixture(name)).unwrap();
    assert!(c.errors.is_empty(), "{name} => {:#?}", c.errors);
    (c.config.clone().unwrap(), c)
}

#[test]
fn momentum_v4_default_verbatim() {
    let (c, chk) = ok_file("momentum-v4-default.conf");
    assert_eq!(c.cluster.replicate.len(), 5);
    assert_eq!(
        c.cluster
            .replicate
            .iter()
            .map(|r| r.kind.clone())
            .collect::<Vec<_>>(),
        vec![
            ReplicateKind::InboundCidr,
            ReplicateKind::OutboundCidr,
            ReplicateKind::OutboundDomains,
            ReplicateKind::OutboundBindingDomains,
            ReplicateKind::SharedNamedThrottles
        ]
    );
    assert_eq!(c.cluster.topology[0].network.to_string(), "10.1.1.0/24");
    assert_eq!(c.cluster.topology[0].cidrmask, 32);
    assert_eq!(c.cluster.logs.len(), 5);
    assert_eq!(
        c.loggers[0].destinations["mainlog"],
        LogDestination::Cluster {
            path: "/var/log/ecelerity/mainlog.cluster".into(),
            subscribers: vec!["master".into()]
        }
    );
    assert_eq!(c.loggers[1].module, "bounce_logger");
    assert_eq!(c.loggers[1].name, "bounce_logger_cluster");
    // Everything in the default file is something Duraplane reads: no warnings.
    assert!(chk.warnings.is_empty(), "{:#?}", chk.warnings);
}

#[test]
fn duravip_example_verbatim() {
    let (c, _) = ok_file("duravip-v4.conf");
    assert_eq!(c.duravips.len(), 2);
    let ip: IpAddr = "10.1.1.1".parse().unwrap();
    assert!(c.duravips.iter().all(|d| d.addr == ip));
    assert!(
        c.duravips
            .iter()
            .all(|d| d.preference.as_deref() == Some("nodename"))
    );
    assert!(
        matches!(&c.duravips[0].source, DuravipSource::Listen { listener, spec }
        if listener == "ESMTP_Listener" && spec == "10.1.1.1:25")
    );
    assert!(matches!(&c.duravips[1].source, DuravipSource::Binding { name } if name == "foo"));
}

#[test]
fn replication_examples_verbatim() {
    let (c, _) = ok_file("replication-1.conf");
    assert_eq!(c.cluster.replicate[0].kind, ReplicateKind::Metrics);
    assert_eq!(
        c.cluster.replicate[0].parameters,
        vec!["connect", "reception", "rejection"]
    );
    let (c, chk) = ok_file("replication-2.conf");
    assert_eq!(c.cluster.replicate[0].kind, ReplicateKind::Cache);
    assert_eq!(c.cluster.replicate[0].name, "mycache");
    assert!(
        chk.warnings
            .iter()
            .any(|w| w.message.contains("Datasource"))
    );
    let (c, _) = ok_file("replication-3.conf");
    assert_eq!(c.cluster.replicate[0].parameters, vec!["snapshot"]);
    let (c, _) = ok_file("replication-4.conf");
    assert_eq!(c.cluster.replicate[0].kind, ReplicateKind::Obtm);
    assert_eq!(c.cluster.replicate[1].kind, ReplicateKind::Obtc);
    let (c, _) = ok_file("replication-5.conf");
    assert_eq!(c.cluster.replicate[0].parameters, vec!["gauge_cache"]);
}

#[test]
fn logs_complex_example_is_warned_not_rejected() {
    let (_, chk) = ok_file("logs-complex.conf");
    assert_eq!(chk.warnings.len(), 1, "{:#?}", chk.warnings);
    assert!(chk.warnings[0].message.contains("scope `Logs`"));
}

#[test]
fn eccluster_conf_verbatim_only_fails_on_its_missing_readonly_include() {
    let c = check(&fixture("eccluster-v4.conf")).unwrap();
    assert_eq!(c.errors.len(), 1, "{:#?}", c.errors);
    let e = &c.errors[0];
    assert_eq!((e.line, e.col), (33, 18));
    assert!(
        e.message
            .contains("cannot include `/opt/msys/etc/installer/eccmgr.d/ecdb.conf`")
    );
    // The ec_logger with its brace on the next line was still read.
    assert!(
        c.warnings.iter().any(|w| w.message.contains("heartbeat")),
        "{:#?}",
        c.warnings
    );
}

#[test]
fn ipv6_listen_forms() {
    let (c, _) = ok_file("ipv6-listeners.conf");
    let l = &c.listener.listens;
    assert_eq!(l.len(), 2);
    assert_eq!(
        l[0].addr,
        ListenAddr::Inet("[2001:db8::11]:4802".parse().unwrap())
    );
    // Listener-scope value over default, Listen-scope value over listener scope.
    assert_eq!(l[0].concurrency, 4);
    assert_eq!(l[0].listen_backlog, 500);
    assert_eq!(l[1].listen_backlog, 100);
    assert_eq!(l[1].tcp_recv_buffer_size, 8192);
    assert_eq!(l[1].tcp_send_buffer_size, 4096);
    assert!(matches!(
        c.origins
            .get("eccluster_listener.listen.192.0.2.11:4802.listen_backlog"),
        Some(Origin::File {
            line: 16,
            col: 30,
            ..
        })
    ));
    assert!(matches!(
        c.origins
            .get("eccluster_listener.listen.192.0.2.11:4802.concurrency"),
        Some(Origin::File {
            line: 17,
            col: 3,
            ..
        })
    ));
    assert_eq!(
        c.origins
            .get("eccluster_listener.listen.192.0.2.11:4802.enable"),
        Some(&Origin::Default)
    );
}

#[test]
fn defaults_when_everything_is_absent() {
    let (c, chk) = ok("");
    assert!(chk.warnings.is_empty());
    let k = &c.cluster;
    assert_eq!(k.cluster_group, "ec_cluster");
    assert_eq!(k.control_group, "ec_console");
    assert_eq!(k.log_group, None);
    assert_eq!(k.logs.len(), 5);
    assert_eq!(k.log_active_interval, Duration::from_secs(1));
    assert_eq!(k.log_idle_interval, Duration::from_secs(10));
    assert_eq!(k.heartbeat_start_delay, Duration::from_secs(15));
    assert_eq!(k.heartbeats_per_sec, 1);
    assert_eq!(k.if_check_interval, Duration::from_secs(30));
    assert_eq!(k.if_down_limit, 4);
    assert!(k.arp_all_hosts);
    assert_eq!(k.duravip_balance_set_size, 1);
    assert_eq!(k.view_mature_time, Duration::from_secs(5));
    assert_eq!(k.view_balance_interval, Duration::from_secs(10));
    assert_eq!(k.view_broadcast_interval, Duration::ZERO);
    assert!(k.unconditional_rebind);
    assert!(k.enabled);
    assert_eq!(k.debug_level, "error");
    assert!(c.security.is_none());
    let d = &c.duraplane;
    assert_eq!(
        d.control_socket,
        PathBuf::from("/run/duraplane/control.sock")
    );
    assert_eq!(d.metrics_listen, Some("127.0.0.1:9480".parse().unwrap()));
    assert!(d.interfaces.is_empty());
    assert_eq!(d.xdp_mode, XdpMode::Auto);
    assert_eq!(d.ports, vec![25, 465, 587]);
    assert_eq!(d.flow_idle_timeout, Duration::from_secs(300));
    assert_eq!(
        d.cluster_key_file,
        PathBuf::from("/etc/duraplane/cluster.key")
    );
    assert_eq!(d.state_dir, PathBuf::from("/var/lib/duraplane"));
    assert_eq!(d.poll_interval, Duration::from_millis(100));
    for key in [
        "cluster.view_mature_time",
        "cluster.duravip_balance_set_size",
        "duraplane.ports",
        "duraplane.metrics",
    ] {
        assert_eq!(c.origins.get(key), Some(&Origin::Default), "{key}");
    }
}

#[test]
fn replicate_defaults_and_overrides() {
    let (c, _) = ok(r#"cluster {
  Replicate "inbound_cidr" {}
  Replicate "slow" { type = inbound_cidr max_delay = 1.0 max_pending = 7 }
  Replicate "outbound_cidr_foo" { class = "outbound_cidr" binding_group = "foo" }
  Replicate "mycache" { type = cache max_size = 1024 }
  Replicate "c2" { type = cache max_size = -1 }
}"#);
    let r = &c.cluster.replicate;
    assert_eq!(r[0].max_delay, Duration::from_millis(10));
    assert_eq!(r[0].max_pending, 100);
    assert_eq!(r[0].max_size, None);
    assert_eq!(r[1].max_delay, Duration::from_secs(1));
    assert_eq!(r[1].max_pending, 7);
    assert_eq!(r[2].kind, ReplicateKind::OutboundCidr);
    assert_eq!(r[2].class.as_deref(), Some("outbound_cidr"));
    assert_eq!(r[2].binding_group.as_deref(), Some("foo"));
    assert_eq!(r[3].max_size, Some(1024));
    assert_eq!(r[4].max_size, None);
    assert_eq!(
        c.origins.get("replicate.inbound_cidr.max_delay"),
        Some(&Origin::Default)
    );
    assert_eq!(
        c.origins.get("replicate.slow.max_delay"),
        Some(&Origin::File {
            file: "/t/valid.conf".into(),
            line: 3,
            col: 42
        })
    );
}

#[test]
fn case_insensitive_keywords_case_sensitive_names() {
    let (c, _) = ok(r#"CLUSTER {
  VIEW_MATURE_TIME = 7
  replicate "MyCache" { TYPE = "CACHE" }
  topology "192.0.2.0/24" { Interface = eth1 CIDRMASK = 32 }
}
ecclUSTER_listener { LISTEN "*:4802" { Enable = FALSE } }
DuraPlane { PORTS = ( 25 ) XDP_Mode = NATIVE }
binding "Vip-A" { ENABLE_DURAVIP = "TRUE" bind_address = 192.0.2.20 }"#);
    assert_eq!(c.cluster.view_mature_time, Duration::from_secs(7));
    assert_eq!(c.cluster.replicate[0].name, "MyCache");
    assert_eq!(c.cluster.replicate[0].kind, ReplicateKind::Cache);
    assert!(!c.listener.listens[0].enable);
    assert_eq!(c.duraplane.ports, vec![25]);
    assert_eq!(c.duraplane.xdp_mode, XdpMode::Native);
    assert!(matches!(&c.duravips[0].source, DuravipSource::Binding { name } if name == "Vip-A"));
}

#[test]
fn booleans_in_every_documented_spelling() {
    for (t, want) in [
        ("on", true),
        ("off", false),
        ("true", true),
        ("false", false),
        ("enabled", true),
        ("disabled", false),
        ("1", true),
        ("0", false),
        ("\"true\"", true),
        ("\"off\"", false),
        ("TRUE", true),
    ] {
        let (c, _) = ok(&format!("cluster {{ arp_all_hosts = {t} }}"));
        assert_eq!(c.cluster.arp_all_hosts, want, "{t}");
    }
}

#[test]
fn durations_in_every_accepted_form() {
    for (t, want) in [
        ("5", Duration::from_secs(5)),
        ("\"5\"", Duration::from_secs(5)),
        ("1.5", Duration::from_millis(1500)),
        ("10ms", Duration::from_millis(10)),
        ("2s", Duration::from_secs(2)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
        ("0", Duration::ZERO),
    ] {
        let (c, _) = ok(&format!("cluster {{ view_mature_time = {t} }}"));
        assert_eq!(c.cluster.view_mature_time, want, "{t}");
    }
}

#[test]
fn duravip_balance_set_size_one_is_accepted() {
    let (c, _) = ok("cluster { duravip_balance_set_size = 1 }");
    assert_eq!(c.cluster.duravip_balance_set_size, 1);
    let (c, _) = ok("cluster { duravip_balance_set_size = 16 }");
    assert_eq!(c.cluster.duravip_balance_set_size, 16);
}

#[test]
fn security_and_capabilities() {
    let (c, _) = ok(r#"Security {
  user = "ecuser"
  group = "ecuser"
  Capabilities = "cap_net_admin+ep cap_net_bind_service+ep cap_net_raw+ep cap_sys_resource+ep"
}"#);
    let s = c.security.unwrap();
    assert_eq!(s.user.as_deref(), Some("ecuser"));
    assert_eq!(
        s.capabilities,
        vec![
            "cap_net_admin",
            "cap_net_bind_service",
            "cap_net_raw",
            "cap_sys_resource"
        ]
    );
    let (c, _) = ok("Security { }");
    assert_eq!(c.security.unwrap().capabilities, Vec::<String>::new());
}

#[test]
fn logger_destinations() {
    let (c, chk) = ok(r#"ec_logger "ec_logger_cluster" {
  mainlog = "cluster:///var/log/ecelerity/mainlog.cluster?subscribers=mgr1,mgr2,mgr3"
  paniclog = "jlog:///var/log/ecelerity/paniclog.cluster=>westmgr"
  rejectlog = /var/log/ecelerity/rejectlog.ec
  acctlog = "file:///var/log/ecelerity/acctlog.ec"
  heartbeat = "0"
}
ec_logger "ec_logger1" { mainlog = /var/log/ecelerity1/mainlog.ec }"#);
    let d = &c.loggers[0].destinations;
    assert_eq!(
        d["mainlog"],
        LogDestination::Cluster {
            path: "/var/log/ecelerity/mainlog.cluster".into(),
            subscribers: vec!["mgr1".into(), "mgr2".into(), "mgr3".into()]
        }
    );
    assert_eq!(
        d["paniclog"],
        LogDestination::Cluster {
            path: "/var/log/ecelerity/paniclog.cluster".into(),
            subscribers: vec!["westmgr".into()]
        }
    );
    assert_eq!(
        d["rejectlog"],
        LogDestination::File("/var/log/ecelerity/rejectlog.ec".into())
    );
    assert_eq!(
        d["acctlog"],
        LogDestination::File("/var/log/ecelerity/acctlog.ec".into())
    );
    assert!(!d.contains_key("heartbeat"));
    assert!(
        chk.warnings
            .iter()
            .any(|w| w.message.contains("`heartbeat`"))
    );
    assert_eq!(c.loggers[1].name, "ec_logger1");
}

#[test]
fn unpublished_jlog_is_warned() {
    let (_, chk) = ok(r#"custom = 1
ec_logger "x" { mainlog = "cluster:///srv/unpublished.cluster=>master" }"#);
    assert!(
        chk.warnings
            .iter()
            .any(|w| w.message.contains("does not publish") && w.line == 2),
        "{:#?}",
        chk.warnings
    );
}

#[test]
fn duravip_declarations_everywhere() {
    let (c, _) = ok(r#"Binding_Group "grp" {
  Binding "b1" {
    Bind_Address = "192.0.2.21"
    Enable_Duravip = true
    Duravip_Preference = "node1"
  }
  Binding "b2" { Bind_Address = 192.0.2.22 Enable_Duravip = false }
}
Binding "b3" { Bind_Address = "2001:db8::23" Enable_Duravip = on }
ESMTP_Listener {
  Listen "192.0.2.30:25" { Duravip_Follow = "b1" }
  Listen "[2001:db8::31]:587" { Enable_Duravip = enabled Duravip_Preference = node2 }
  Listen "192.0.2.32:25" { Duravip_Follow = "192.0.2.21" }
}
ECCluster_Listener { Listen "192.0.2.40:4802" { Enable_Duravip = true } }"#);
    let v = &c.duravips;
    assert_eq!(v.len(), 6, "{v:#?}");
    let by_addr = |a: &str| {
        let ip: IpAddr = a.parse().unwrap();
        v.iter().find(|d| d.addr == ip).unwrap()
    };
    assert_eq!(by_addr("192.0.2.21").preference.as_deref(), Some("node1"));
    assert!(!v.iter().any(|d| d.addr.to_string() == "192.0.2.22"));
    assert!(by_addr("2001:db8::23").preference.is_none());
    assert_eq!(by_addr("192.0.2.30").follow.as_deref(), Some("b1"));
    assert_eq!(by_addr("2001:db8::31").preference.as_deref(), Some("node2"));
    assert_eq!(by_addr("192.0.2.32").follow.as_deref(), Some("192.0.2.21"));
    assert!(matches!(&by_addr("192.0.2.40").source,
        DuravipSource::Listen { listener, .. } if listener == "ECCluster_Listener"));
}

#[test]
fn duraplane_scope_full() {
    let (c, _) = ok(r#"duraplane {
  control_socket = /run/duraplane/n.sock
  metrics = off
  interfaces = ( eth0, "eth1" )
  xdp_mode = generic
  ports = ( 25, 587 )
  flow_idle_timeout = 5m
  cluster_key_file = "/etc/duraplane/k"
  state_dir = /var/lib/dp
  poll_interval = 50ms
  Netblock "198.51.100.0/24" {
    max_connections = 100
    Netblock "198.51.100.128/25" { max_connections = 10 action = count }
  }
  Netblock "2001:db8::/32" {}
  Netblock "203.0.113.0/24" { action = "drop" max_connections = 0 }
}"#);
    let d = &c.duraplane;
    assert_eq!(d.metrics_listen, None);
    assert_eq!(d.interfaces, vec!["eth0", "eth1"]);
    assert_eq!(d.xdp_mode, XdpMode::Generic);
    assert_eq!(d.ports, vec![25, 587]);
    assert_eq!(d.flow_idle_timeout, Duration::from_secs(300));
    assert_eq!(d.poll_interval, Duration::from_millis(50));
    let n = &d.netblocks;
    assert_eq!(n.len(), 4);
    assert_eq!(n[0].action, NetblockAction::Drop);
    assert_eq!(n[0].max_connections, Some(100));
    assert_eq!(n[1].cidr.to_string(), "198.51.100.128/25");
    assert_eq!(n[1].action, NetblockAction::Count);
    assert_eq!(n[2].action, NetblockAction::Count);
    assert_eq!(n[2].max_connections, None);
    assert_eq!(n[3].max_connections, Some(0));
    assert_eq!(
        c.origins.get("duraplane.netblock.198.51.100.0/24.action"),
        Some(&Origin::Default)
    );
    assert!(matches!(
        c.origins
            .get("duraplane.netblock.198.51.100.0/24.max_connections"),
        Some(Origin::File {
            line: 12,
            col: 5,
            ..
        })
    ));
}

#[test]
fn metrics_ipv6_and_single_scalar_list() {
    let (c, _) = ok(r#"duraplane { metrics = "[::1]:9480" interfaces = eth0 ports = 25 }"#);
    assert_eq!(
        c.duraplane.metrics_listen,
        Some("[::1]:9480".parse().unwrap())
    );
    assert_eq!(c.duraplane.interfaces, vec!["eth0"]);
    assert_eq!(c.duraplane.ports, vec![25]);
}

#[test]
fn unknown_momentum_things_are_warned_by_name() {
    let (_, chk) = ok(r#"Server_Name = mx.example.com
ESMTP_Listener {
  Listen ":25" { Enable_Authentication = false }
  SMTP_Extensions = ( "ENHANCEDSTATUSCODES" "AUTH LOGIN" )
}
cluster { mbus_daemon = 4803 subcluster = east cluster_listener = "*:4802" }
Security { Privileges = "basic" }
Domain yahoo.com { Max_Outbound_Connections = 10 }
mbus_daemon = 4803"#);
    let w: Vec<String> = chk.warnings.iter().map(|w| w.to_string()).collect();
    for name in [
        "Server_Name",
        "Enable_Authentication",
        "SMTP_Extensions",
        "mbus_daemon",
        "subcluster",
        "cluster_listener",
        "Privileges",
        "Domain \"yahoo.com\"",
    ] {
        assert!(
            w.iter().any(|x| x.contains(name)),
            "{name} not warned: {w:#?}"
        );
    }
    assert_eq!(w.len(), 9, "{w:#?}");
    assert!(w[0].starts_with("/t/valid.conf:1:1: "));
}

#[test]
fn unconditional_rebinding_alias_and_repeated_option() {
    let (c, chk) = ok(
        "cluster {\n unconditional_rebinding = false\n view_mature_time = 1\n view_mature_time = 2\n}",
    );
    assert!(!c.cluster.unconditional_rebind);
    assert_eq!(c.cluster.view_mature_time, Duration::from_secs(2));
    assert!(
        chk.warnings
            .iter()
            .any(|w| w.message.contains("unconditional_rebind"))
    );
    assert!(
        chk.warnings
            .iter()
            .any(|w| w.line == 4 && w.message.contains("set again"))
    );
}

/// Every value and scope form of §2.2, the comment forms of §2.1 and the bare-word
/// examples, each as its own small file: none may produce an error.
#[test]
fn syntax_forms_of_section_2() {
    let cases: &[&str] = &[
        // scalars
        r#"cluster { cluster_group = "ec_cluster" }"#,
        "Topology_x { cidrmask = \"32\" }",
        "ec_logger { heartbeat = 60 }",
        // bare words (§2.1)
        "Binding x { Bind_Address = 192.168.0.51 }",
        "cluster { cluster_group = ec_cluster }",
        "Domain yahoo.com { }",
        "x { File_Mode = 0666 }",
        "cluster { debug_level = DEBUG }",
        r#"ec_logger "ec_logger1" { mainlog = /var/log/ecelerity1/mainlog.ec }"#,
        "importlog = /var/log/ecelerity/importlog.ec",
        "script = /path/to/script",
        // lists
        r#"SMTP_Extensions = ( "ENHANCEDSTATUSCODES" "AUTH LOGIN" )"#,
        r#"SMTP_Extensions = ("AUTH LOGIN" XREMOTEIP XCLIENT)"#,
        r#"headerlist = ("from", "to", "subject")"#,
        "Subscriber = ()",
        r#"server = ( "127.0.0.1:4809" )"#,
        r#"uri = ("odbc:DSN=sqlserver;UID=user;PWD=pass")"#,
        "ERROR = (TIME FD SMTP ALL)",
        "multi = (\n  a\n  b,\n  \"c\"\n)",
        "empty_multi = (\n)",
        // dictionaries
        r#"peers = [ node1 = "192.168.0.10" node2 = "192.168.0.11" ]"#,
        r#"AuthDigestMD5Parameters = [ uri = "ecauth://" ]"#,
        "Context = [ name = value ]",
        r#"code = [ "0" = "250 ok" ]"#,
        r#"code = [ 100 = "550 command failed" ]"#,
        r#"map = [ yahoo.net = "yahoo.com" ]"#,
        "commas = [ a = 1, b = 2, ]",
        "empty = [ ]",
        "nested = [ a = ( 1 2 ) b = [ c = d ] ]",
        // scopes
        "Logs { } Debug_Flags { } msgc_server { }",
        r#"Replicate_x "inbound_cidr" {}"#,
        r#"Listen_x "*:4802" {}"#,
        r#"Binding "duravip-1" { }"#,
        "Binding example { }",
        "Host edge.omniti.com { }",
        r#"Peer "10.0.0.0/16" { }"#,
        r#"Logs { Manager "eastmgr" { Node "west1" { Subscriber = () } } }"#,
        "ThreadPool accept-pool { }",
        r#"Datasource "mycache" { }"#,
        "bounce_logger \"bounce_logger1\"\n{\n}",
        "inbound_audit { monitors = (\"300,6\") }",
        r#"domain "/(?:^|[.])example[.](com|co[.]uk)$/" { }"#,
        "ESMTP_Listener { Listen \":25\" { Peer \"10.0.0.0/16\" { Listener_Sessions = 5 } } }",
        "Binding_Group g { Binding b { Domain d { } } }",
        // comments (§2.1)
        "Subscriber = () # don't pull anything from west1",
        "Listen_Backlog = 500       # new default",
        "/* a C comment\n spanning lines */ a = 1 /* trailing */",
        "a = 1 /* not /* nested */",
        "# only a comment",
        "a=1 b=2 c { d=3 }",
        "a = \"with \\\"escaped\\\" quotes and a \\\\ backslash\"",
        "a = \"# not a comment\" b = \"/* nor this */\"",
        "\u{feff}".trim_start_matches('\u{feff}'),
        "a = 1\r\nb = 2\r\n",
        "x = \"unicode é ü 日本\"",
    ];
    for c in cases {
        ok(c);
    }
}

#[test]
fn readonly_and_plain_includes() {
    let (c, chk) = ok_file("include/main.conf");
    // cluster.d: a.conf then b.conf; the hidden file and the sub-directory are skipped.
    assert_eq!(c.cluster.replicate.len(), 2);
    assert_eq!(c.cluster.replicate[0].name, "inbound_cidr");
    assert_eq!(c.cluster.replicate[1].max_delay, Duration::from_millis(500));
    // node-local.conf, a bare relative name, resolved against main.conf's directory.
    assert_eq!(
        c.duraplane.control_socket,
        PathBuf::from("/run/duraplane/included.sock")
    );
    // conf.d in lexical order: 20-second.conf is read last and wins.
    assert_eq!(c.duraplane.poll_interval, Duration::from_secs(2));
    let Some(Origin::File { file, line, col }) = c.origins.get("duraplane.poll_interval") else {
        panic!()
    };
    assert!(file.ends_with("conf.d/20-second.conf"));
    assert_eq!((*line, *col), (1, 13));
    let ro: Vec<bool> = chk.files.iter().map(|f| f.readonly).collect();
    assert_eq!(chk.files.len(), 6);
    assert_eq!(ro, vec![false, false, false, false, true, true]);
    // The replicate origin names the included file.
    let Some(Origin::File { file, .. }) = c.origins.get("replicate.outbound_cidr.max_delay") else {
        panic!()
    };
    assert!(file.ends_with("cluster.d/b.conf"));
}
