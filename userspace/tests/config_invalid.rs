//! Invalid inputs: each must produce an error at the exact line:col with the message
//! fragment and, for misspellings and fixable values, the exact suggestion.

use std::path::Path;

use duraplane::config::{ConfigError, Diagnostic, check_bytes, load_str};

struct Case {
    text: &'static str,
    line: u32,
    col: u32,
    fragment: &'static str,
    suggestion: Option<&'static str>,
}

const fn e(text: &'static str, line: u32, col: u32, fragment: &'static str) -> Case {
    Case {
        text,
        line,
        col,
        fragment,
        suggestion: None,
    }
}

const fn s(
    text: &'static str,
    line: u32,
    col: u32,
    fragment: &'static str,
    suggestion: &'static str,
) -> Case {
    Case {
        text,
        line,
        col,
        fragment,
        suggestion: Some(suggestion),
    }
}

const CASES: &[Case] = &[
    // ---- lexical and syntax
    e("a = \"abc", 1, 5, "unterminated string"),
    e("a = 1 /* never", 1, 7, "unterminated `/*` comment"),
    e("a = 'x'", 1, 5, "single quotes"),
    e("cluster {\n  nodename = n\n", 1, 9, "unclosed `{`"),
    e("}", 1, 1, "unexpected `}`"),
    e(
        "cluster { nodename \"x\" }",
        1,
        20,
        "expected `=` after `nodename`",
    ),
    e(
        "logs [ a = \"b\" ]",
        1,
        6,
        "expected `=` or `{` after `logs`, found `[`",
    ),
    e("x = ( a b", 1, 5, "unclosed `(`"),
    e("x = [ a = b", 1, 5, "unclosed `[`"),
    e(
        "x = [ a b ]",
        1,
        7,
        "expected `=` after the dictionary key `a`",
    ),
    e("x =", 1, 3, "expected a value for `x`"),
    e("x = }", 1, 5, "expected a value for `x`, found `}`"),
    e("\"quoted\" = 1", 1, 1, "found the quoted string \"quoted\""),
    e(
        "= 1",
        1,
        1,
        "expected an option or scope keyword, found `=`",
    ),
    e("include = \"x.conf\"", 1, 9, "takes a path without `=`"),
    e("include", 1, 1, "`include` needs a path"),
    e(
        "\n  include \"missing.conf\"",
        2,
        11,
        "cannot include `missing.conf`",
    ),
    e(
        "readonly_include missing-too.conf",
        1,
        18,
        "cannot include `missing-too.conf`",
    ),
    e("include \"eccmgr://host/x.conf\"", 1, 9, "only local files"),
    e(
        "cluster { = }",
        1,
        11,
        "expected an option or scope keyword, found `=`",
    ),
    e("a = ( b ] )", 1, 9, "expected a list item or `)`"),
    e("a = [ = ]", 1, 7, "expected a dictionary key or `]`"),
    e("x = 1 \u{1} y = 2", 1, 7, "control character"),
    e("x\n", 1, 1, "`x` at the end of the file"),
    // ---- cluster { }
    s(
        "cluster { view_matur_time = 5 }",
        1,
        11,
        "unknown option `view_matur_time` in cluster",
        "did you mean `view_mature_time`?",
    ),
    s(
        "cluster { heartbeat_interval = 1 }",
        1,
        11,
        "unknown option `heartbeat_interval`",
        "did you mean `heartbeats_per_sec`?",
    ),
    s(
        "cluster { nodadr = 192.0.2.1 }",
        1,
        11,
        "unknown option `nodadr`",
        "did you mean `nodeaddr`?",
    ),
    e(
        "cluster {\n  nodeaddr = 127.0.0.1\n}",
        2,
        14,
        "must not be a loopback",
    ),
    e(
        "cluster { nodeaddr = ::1 }",
        1,
        22,
        "must not be a loopback",
    ),
    e("cluster { nodeaddr = 0.0.0.0 }", 1, 22, "unspecified"),
    e(
        "cluster { nodeaddr = node1.example.com }",
        1,
        22,
        "expects an IP address",
    ),
    e(
        "cluster { duravip_balance_set_size = 0 }",
        1,
        38,
        "must be at least 1",
    ),
    e(
        "cluster { heartbeats_per_sec = -1 }",
        1,
        32,
        "expects a non-negative integer",
    ),
    e(
        "cluster { heartbeats_per_sec = 99999999999 }",
        1,
        32,
        "too large",
    ),
    e(
        "cluster { arp_all_hosts = maybe }",
        1,
        27,
        "expects a boolean",
    ),
    e(
        "cluster { view_mature_time = ( 1 2 ) }",
        1,
        30,
        "expects a single value, found a list",
    ),
    e(
        "cluster { cluster_group = [ a = b ] }",
        1,
        27,
        "found a dictionary",
    ),
    e(
        "cluster { logs = \"/var/log\" }",
        1,
        18,
        "expects a dictionary",
    ),
    e(
        "cluster { logs = [ mainlog = relative/path ] }",
        1,
        30,
        "must be an absolute path",
    ),
    e(
        "cluster { view_mature_time = 5x }",
        1,
        30,
        "is not a duration",
    ),
    e(
        "cluster { if_check_interval = 0 }",
        1,
        31,
        "must be greater than 0",
    ),
    e(
        "cluster { cluster_group = \"\" }",
        1,
        27,
        "must not be empty",
    ),
    e(
        "cluster { Replicate { } }",
        1,
        11,
        "`Replicate` needs a name",
    ),
    e("cluster \"main\" { }", 1, 9, "takes no instance name"),
    e(
        "cluster { replicate = \"inbound_cidr\" }",
        1,
        11,
        "is a scope, not an option",
    ),
    e(
        "cluster { nodename { } }",
        1,
        11,
        "is an option, not a scope",
    ),
    s(
        "cluster { Replcate \"inbound_cidr\" {} }",
        1,
        11,
        "unknown scope `Replcate \"inbound_cidr\"` in cluster",
        "did you mean `replicate`?",
    ),
    // ---- Replicate
    s(
        "cluster {\n  Replicate \"mycache\" {}\n}",
        2,
        13,
        "`mycache` is not a replication type",
        "did you mean `cache`?",
    ),
    s(
        "cluster {\n  Replicate \"x\" { type = \"inbound_cdir\" }\n}",
        2,
        26,
        "unknown replication type `inbound_cdir`",
        "did you mean `inbound_cidr`?",
    ),
    s(
        "cluster { Replicate \"x\" { class = \"obtx\" } }",
        1,
        35,
        "unknown replication type `obtx`",
        "did you mean `OBTM`?",
    ),
    s(
        "cluster { Replicate \"inbound_cidr\" { max_dealy = 1 } }",
        1,
        38,
        "unknown option `max_dealy` in Replicate \"inbound_cidr\"",
        "did you mean `max_delay`?",
    ),
    s(
        "cluster { Replicate \"metrics\" { parameters = \"connect;recepton\" } }",
        1,
        46,
        "unknown replication parameter `recepton`",
        "did you mean `reception`?",
    ),
    e(
        "cluster { Replicate \"inbound_cidr\" { max_pending = 0 } }",
        1,
        52,
        "must be at least 1",
    ),
    e(
        "cluster { Replicate \"c1\" { type = cache max_size = -2 } }",
        1,
        52,
        "expects -1 (unlimited)",
    ),
    e(
        "cluster { Replicate \"inbound_cidr\" {} Replicate \"inbound_cidr\" {} }",
        1,
        49,
        "duplicate `Replicate \"inbound_cidr\"`",
    ),
    e(
        "cluster { Replicate \"inbound_cidr\" { max_delay = -1 } }",
        1,
        50,
        "is not a duration",
    ),
    e(
        "cluster { Replicate \"inbound_cidr\" { type = ( a ) } }",
        1,
        45,
        "expects a single value",
    ),
    // ---- Topology
    s(
        "cluster { Topology \"10.1.1.1/24\" { interface = eth1 } }",
        1,
        20,
        "`10.1.1.1/24` has host bits set",
        "did you mean `10.1.1.0/24`?",
    ),
    e(
        "cluster { Topology \"\" { interface = eth1 } }",
        1,
        20,
        "empty network",
    ),
    e(
        "cluster { Topology \"10.1.1.0/40\" { interface = eth1 } }",
        1,
        20,
        "prefix length `40`",
    ),
    e(
        "cluster { Topology \"eth1\" { interface = eth1 } }",
        1,
        20,
        "is not a CIDR network",
    ),
    e(
        "cluster { Topology \"10.1.1.0/24\" { cidrmask = 33 interface = eth1 } }",
        1,
        47,
        "between 0 and 32",
    ),
    e(
        "cluster { Topology \"10.1.1.0/24\" { cidrmask = 32 } }",
        1,
        20,
        "needs `interface",
    ),
    s(
        "cluster { Topology \"10.1.1.0/24\" { interfce = eth1 } }",
        1,
        36,
        "unknown option `interfce`",
        "did you mean `interface`?",
    ),
    e(
        "cluster { Topology \"10.1.1.0/24\" { interface = \"eth1/0\" } }",
        1,
        48,
        "not a valid interface name",
    ),
    e(
        "cluster {\n Topology \"192.0.2.0/24\" { interface = a }\n Topology \"192.0.2.0/24\" { interface = b }\n}",
        3,
        11,
        "duplicate `Topology \"192.0.2.0/24\"`",
    ),
    e(
        "cluster { Topology { interface = eth1 } }",
        1,
        11,
        "`Topology` needs a network",
    ),
    // ---- ECCluster_Listener / Listen (§1.8, §1.9)
    s(
        "ECCluster_Listener {\n  Listen \"2001:db8::1:4802\" {}\n}",
        2,
        10,
        "must be enclosed in square brackets",
        "write `[2001:db8::1]:4802`",
    ),
    s(
        "ECCluster_Listener { Listen \"::1:4802\" {} }",
        1,
        29,
        "square brackets",
        "write `[::1]:4802`",
    ),
    e(
        "ECCluster_Listener { Listen \"*:70000\" {} }",
        1,
        29,
        "port `70000` in `*:70000` is out of range",
    ),
    e(
        "ECCluster_Listener { Listen \"*:0\" {} }",
        1,
        29,
        "out of range",
    ),
    e(
        "ECCluster_Listener { Listen \"*:smtp\" {} }",
        1,
        29,
        "is not a port number",
    ),
    e(
        "ECCluster_Listener { Listen \"host.example:4802\" {} }",
        1,
        29,
        "host names are not accepted",
    ),
    s(
        "ECCluster_Listener { Listen \"[2001:db8::1]\" {} }",
        1,
        29,
        "a port is required",
        "write `[2001:db8::1]:PORT`",
    ),
    s(
        "ECCluster_Listener { Listen \"192.0.2.1\" {} }",
        1,
        29,
        "needs a port",
        "write `192.0.2.1:PORT`",
    ),
    e(
        "ECCluster_Listener { Listen \"[192.0.2.1]:4802\" {} }",
        1,
        29,
        "brackets are for IPv6 only",
    ),
    s(
        "ECCluster_Listener { Listen \"*:4802\" { listen_backlg = 5 } }",
        1,
        40,
        "unknown option `listen_backlg` in Listen \"*:4802\"",
        "did you mean `listen_backlog`?",
    ),
    s(
        "ECCluster_Listener { concurency = 4 }",
        1,
        22,
        "unknown option `concurency` in ECCluster_Listener",
        "did you mean `concurrency`?",
    ),
    e(
        "ECCluster_Listener { Listen \"*:4802\" { enable = perhaps } }",
        1,
        49,
        "expects a boolean",
    ),
    e(
        "ECCluster_Listener { Listen \"*:4802\" { file_mode = 0999 } }",
        1,
        52,
        "octal file mode",
    ),
    e(
        "ECCluster_Listener { Listen \"*:4802\" {} Listen \":4802\" {} }",
        1,
        48,
        "duplicate `Listen \"*:4802\"`",
    ),
    e(
        "ECCluster_Listener { Listen {} }",
        1,
        22,
        "`Listen` needs an address",
    ),
    e(
        "ECCluster_Listener \"x\" { }",
        1,
        20,
        "takes no instance name",
    ),
    e(
        "ECCluster_Listener { listen_backlog = ( 1 ) }",
        1,
        39,
        "expects a single value",
    ),
    e(
        "ECCluster_Listener { Listen \"*:4802\" { pool_name = \"\" } }",
        1,
        52,
        "must not be empty",
    ),
    // ---- Security
    s(
        "Security { Capabilities = \"cap_net_admn+ep\" }",
        1,
        27,
        "unknown capability `cap_net_admn`",
        "did you mean `cap_net_admin`?",
    ),
    s(
        "Security { usr = ecuser }",
        1,
        12,
        "unknown option `usr` in Security",
        "did you mean `user`?",
    ),
    s(
        "Security { Capabilities = \"cap_net_admin\" }",
        1,
        27,
        "has no operator",
        "write `cap_net_admin+ep`",
    ),
    e(
        "Security { Capabilities = \"cap_net_admin+eq\" }",
        1,
        27,
        "`q` is not a flag",
    ),
    e("Security \"x\" { }", 1, 10, "takes no instance name"),
    // ---- loggers
    s(
        "ec_logger \"x\" { mainlog = \"cluster://var/log/x\" }",
        1,
        27,
        "the jlog path must be absolute",
        "write `cluster:///var/log/x`",
    ),
    e(
        "ec_logger \"x\" { mainlog = \"cluster:///x?subs=a\" }",
        1,
        27,
        "unknown parameter `subs=a`",
    ),
    e(
        "ec_logger \"x\" { } ec_logger \"x\" { }",
        1,
        19,
        "duplicate `ec_logger \"x\"` instance",
    ),
    // ---- DuraVIP (§1.6)
    e(
        "ESMTP_Listener {\n  Listen \"192.0.2.1:25\" {\n    Enable_Duravip = true\n    Duravip_Follow = \"b\"\n  }\n}",
        4,
        5,
        "cannot be both Enable_Duravip and Duravip_Follow",
    ),
    e(
        "ESMTP_Listener { Listen \"192.0.2.1:25\" { Duravip_Follow = b Duravip_Preference = n } }",
        1,
        42,
        "Duravip_Follow and Duravip_Preference cannot be combined",
    ),
    e(
        "Binding \"b\" { Bind_Address = 192.0.2.5 Enable_Duravip = true Duravip_Follow = x }",
        1,
        62,
        "Bindings cannot follow listeners",
    ),
    e(
        "Binding \"b\" { Enable_Duravip = true }",
        1,
        9,
        "has Enable_Duravip but no Bind_Address",
    ),
    e(
        "Binding \"b\" { Enable_Duravip = yes-ish Bind_Address = 192.0.2.5 }",
        1,
        32,
        "expects a boolean",
    ),
    e(
        "ESMTP_Listener { Listen \"*:25\" { Enable_Duravip = true } }",
        1,
        25,
        "needs a specific IP address",
    ),
    e(
        "ESMTP_Listener { Listen \"[::]:25\" { Enable_Duravip = true } }",
        1,
        25,
        "needs a specific IP address",
    ),
    s(
        "ESMTP_Listener { Listen \"::1:25\" {} }",
        1,
        25,
        "square brackets",
        "write `[::1]:25`",
    ),
    e(
        "Binding \"b\" { Bind_Address = \"not-an-ip\" Enable_Duravip = on }",
        1,
        30,
        "expects an IP address",
    ),
    e(
        "Binding \"b\" { Bind_Address = 127.0.0.2 Enable_Duravip = on }",
        1,
        9,
        "cannot be a DuraVIP",
    ),
    e(
        "Binding_Group \"g\" { Binding \"a b\" { } }",
        1,
        29,
        "must not contain spaces",
    ),
    e(
        "Binding \"b\" { Bind_Address = 192.0.2.5 Enable_Duravip = 1 }\nESMTP_Listener { Listen \"192.0.2.5:25\" { Duravip_Follow = b } }",
        2,
        42,
        "must use a different address",
    ),
    e(
        "Binding { Enable_Duravip = 1 }",
        1,
        1,
        "`Binding` needs a name",
    ),
    // ---- duraplane { }
    s(
        "duraplane { pors = ( 25 ) }",
        1,
        13,
        "unknown option `pors` in duraplane",
        "did you mean `ports`?",
    ),
    s(
        "duraplane { netblok \"198.51.100.0/24\" { } }",
        1,
        13,
        "unknown scope",
        "did you mean `netblock`?",
    ),
    e(
        "duraplane { ports = ( 25 70000 ) }",
        1,
        26,
        "port `70000` is out of range",
    ),
    e(
        "duraplane { ports = ( 0 ) }",
        1,
        23,
        "port `0` is out of range",
    ),
    e(
        "duraplane { ports = ( smtp ) }",
        1,
        23,
        "`smtp` is not a port number",
    ),
    e(
        "duraplane { ports = [ a = 1 ] }",
        1,
        21,
        "expects a list `( … )`, found a dictionary",
    ),
    e(
        "duraplane { ports = ( ( 25 ) ) }",
        1,
        23,
        "expects a list of single values",
    ),
    s(
        "duraplane { xdp_mode = nativ }",
        1,
        24,
        "must be `auto`, `native` or `generic`",
        "did you mean `native`?",
    ),
    e(
        "duraplane { metrics = \"localhost:9480\" }",
        1,
        23,
        "expects `address:port`",
    ),
    s(
        "duraplane { metrics = \"::1:9480\" }",
        1,
        23,
        "expects `address:port`",
        "write `[::1]:9480`",
    ),
    s(
        "duraplane { Netblock \"198.51.100.7/24\" { max_connections = 10 } }",
        1,
        22,
        "`198.51.100.7/24` has host bits set",
        "did you mean `198.51.100.0/24`?",
    ),
    s(
        "duraplane { Netblock \"2001:db8::1/32\" { } }",
        1,
        22,
        "has host bits set",
        "did you mean `2001:db8::/32`?",
    ),
    e(
        "duraplane {\n Netblock \"198.51.100.0/24\" {}\n Netblock \"198.51.100.0/24\" {}\n}",
        3,
        11,
        "duplicate `Netblock \"198.51.100.0/24\"`",
    ),
    s(
        "duraplane { Netblock \"198.51.100.0/24\" { max_conections = 10 } }",
        1,
        42,
        "unknown option `max_conections`",
        "did you mean `max_connections`?",
    ),
    s(
        "duraplane { Netblock \"198.51.100.0/24\" { action = \"dropp\" max_connections = 1 } }",
        1,
        51,
        "must be `drop` or `count`",
        "did you mean `drop`?",
    ),
    e(
        "duraplane { Netblock \"198.51.100.0/24\" { action = drop } }",
        1,
        42,
        "`action = drop` needs `max_connections`",
    ),
    e(
        "duraplane { Netblock \"198.51.100.0/24\" { Netblock \"203.0.113.0/24\" {} } }",
        1,
        51,
        "is not a smaller network inside `198.51.100.0/24`",
    ),
    e(
        "duraplane { poll_interval = 0 }",
        1,
        29,
        "must be greater than 0",
    ),
    e(
        "duraplane { flow_idle_timeout = \"5 m\" }",
        1,
        33,
        "is not a duration",
    ),
    e(
        "duraplane { control_socket = relative.sock }",
        1,
        30,
        "must be an absolute path",
    ),
    e(
        "duraplane { state_dir = ( /a /b ) }",
        1,
        25,
        "expects a single value",
    ),
    e(
        "duraplane { interfaces = ( \"this-name-is-way-too-long\" ) }",
        1,
        28,
        "is not a valid interface name",
    ),
    e(
        "duraplane { Netblock { } }",
        1,
        13,
        "`Netblock` needs a network",
    ),
    e(
        "duraplane { Netblock \"2001:db8::/129\" {} }",
        1,
        22,
        "prefix length `129`",
    ),
    e(
        "duraplane { Netblock \"198.51.100.0/24\" { max_connections = -5 } }",
        1,
        60,
        "non-negative integer",
    ),
    e("duraplane \"x\" { }", 1, 11, "takes no instance name"),
    e(
        "duraplane { max_connections = 5 }",
        1,
        13,
        "unknown option `max_connections` in duraplane",
    ),
];

fn find<'a>(errors: &'a [Diagnostic], c: &Case) -> Option<&'a Diagnostic> {
    errors
        .iter()
        .find(|d| d.line == c.line && d.col == c.col && d.message.contains(c.fragment))
}

#[test]
fn every_invalid_input_is_reported_precisely() {
    let mut failures = Vec::new();
    for c in CASES {
        let chk = check_bytes(c.text.as_bytes(), Path::new("/t/bad.conf"));
        assert!(chk.config.is_none(), "no config expected for {:?}", c.text);
        match find(&chk.errors, c) {
            Some(d) if d.suggestion.as_deref() == c.suggestion => {}
            Some(d) => failures.push(format!(
                "{:?}: suggestion {:?}, want {:?}",
                c.text, d.suggestion, c.suggestion
            )),
            None => failures.push(format!(
                "{:?}: want {}:{} `{}`, got {:#?}",
                c.text, c.line, c.col, c.fragment, chk.errors
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    assert!(CASES.len() >= 100, "{}", CASES.len());
}

#[test]
fn all_errors_are_collected_not_just_the_first() {
    let text = "cluster {\n  view_matur_time = 5\n  nodeaddr = 127.0.0.1\n}\nduraplane {\n  ports = ( 70000 )\n  Netblock \"198.51.100.1/24\" {}\n}\nSecurity { Capabilities = \"cap_bogus+ep\" }\n";
    let err = load_str(text, Path::new("/t/many.conf")).unwrap_err();
    let ConfigError::Invalid(d) = err else {
        panic!()
    };
    let at: Vec<(u32, u32)> = d.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(
        at,
        vec![(2, 3), (3, 14), (6, 13), (7, 12), (9, 27)],
        "{d:#?}"
    );
    // The ConfigError lists each as FILE:LINE:COL: message.
    let shown = ConfigError::Invalid(d).to_string();
    assert!(shown.starts_with("5 error(s)"));
    assert!(shown.contains("/t/many.conf:2:3: unknown option `view_matur_time` in cluster (did you mean `view_mature_time`?)"));
}

#[test]
fn include_loop_is_reported_with_the_chain() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/include/loop/a.conf");
    let err = duraplane::config::load(&p).unwrap_err();
    let ConfigError::Invalid(d) = err else {
        panic!()
    };
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(d[0].file.ends_with("loop/b.conf"));
    assert_eq!((d[0].line, d[0].col), (2, 9));
    assert!(d[0].message.starts_with("include loop: "));
    assert!(d[0].message.contains("a.conf -> "));
    assert!(d[0].message.ends_with("a.conf"));
    assert!(d[0].message.contains("b.conf -> "));
}

#[test]
fn unreadable_top_level_file_is_an_io_error() {
    let err = duraplane::config::load(Path::new("/nonexistent/duraplane.conf")).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }), "{err}");
}

#[test]
fn nesting_depth_is_capped() {
    let mut text = String::new();
    for i in 0..100 {
        text.push_str(&format!("s{i} {{\n"));
    }
    let chk = check_bytes(text.as_bytes(), Path::new("/t/deep.conf"));
    let d = chk
        .errors
        .iter()
        .find(|d| d.message.contains("nesting deeper than 64"))
        .expect("depth error");
    assert_eq!((d.line, d.col), (65, 5));
}
