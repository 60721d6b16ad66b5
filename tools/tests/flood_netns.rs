//! A bounded SYN flood from spoofed sources (dp-syngen) against `duraplane run` with XDP on a
//! veth: every SYN is accounted for (counted up to the limit, the rest dropped at the NIC),
//! and the daemon's memory does not grow with the flood.

use std::time::{Duration, Instant};

use duraplane::testbed::{Testbed, daemons::DaemonNode};

mod support;
use support::duraplane_bin;

const SYNGEN: &str = env!("CARGO_BIN_EXE_dp-syngen");
const LIMIT: u64 = 100;
const FLOOD: u64 = 20_000;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no `{name}` in:\n{stats}"))
}

#[test]
fn spoofed_syn_flood_is_counted_then_dropped_with_bounded_memory() {
    let bin = duraplane_bin();
    let mut tb = Testbed::new().expect("testbed");
    tb.add_host("gen").expect("gen");
    tb.add_host("mta").expect("mta");
    let pair = tb
        .veth_pair("gen", "mta", &["192.0.2.2/24"], &["192.0.2.1/24"])
        .expect("veth");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("mta.sock");
    let config = format!(
        r#"cluster {{
  nodename = "mta"
  nodeaddr = "192.0.2.1"
}}
duraplane {{
  control_socket = "{}"
  metrics = "off"
  interfaces = ( "{}" )
  ports = ( 25 )
  poll_interval = "20ms"
  Netblock "198.51.100.0/24" {{
    max_connections = {LIMIT}
    action = "drop"
  }}
}}
"#,
        socket.display(),
        pair.b_if
    );
    let daemon = DaemonNode::start(&tb, &bin, "mta", dir.path(), socket, &config).expect("daemon");
    let pid: u32 = tb
        .exec("mta", &["pgrep", "-n", "-f", "duraplane run"])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let rss_before = rss_kib(pid);

    // Sequential sources and ports: FLOOD distinct flows from 198.51.100.0/24.
    let out = tb
        .exec(
            "gen",
            &[
                SYNGEN,
                "-i",
                &pair.a_if,
                "-d",
                "192.0.2.1",
                "-p",
                "25",
                "-s",
                "198.51.100.0/24",
                "--src-mode",
                "sequential",
                "-r",
                "0",
                "-c",
                &FLOOD.to_string(),
                "--duration",
                "30",
            ],
        )
        .expect("dp-syngen");
    assert!(out.contains(&format!("sent={FLOOD}")), "{out}");

    // Every SYN the program saw is either a new counted flow, a retransmit of one, or a
    // drop; exactly LIMIT flows are open.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let s = daemon
            .console(&bin, "inbound stats")
            .expect("inbound stats");
        if stat(&s, "syn") >= FLOOD || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let syn = stat(&stats, "syn");
    assert_eq!(syn, FLOOD, "every SYN reached the program:\n{stats}");
    assert_eq!(stat(&stats, "opened"), LIMIT, "{stats}");
    assert_eq!(
        stat(&stats, "opened") + stat(&stats, "syn_retransmit") + stat(&stats, "dropped"),
        syn,
        "{stats}"
    );
    assert!(stat(&stats, "dropped") >= FLOOD - LIMIT - 256, "{stats}");
    assert_eq!(stat(&stats, "flow_map_full"), 0, "{stats}");
    let show = daemon.console(&bin, "inbound show").expect("inbound show");
    let row = show
        .lines()
        .find(|l| l.starts_with("198.51.100.0/24"))
        .unwrap_or_else(|| panic!("{show}"));
    assert_eq!(row.split_whitespace().nth(1), Some("100"), "{show}");

    // Kernel maps are fixed-size: the daemon's own memory must not follow the flood.
    let rss_after = rss_kib(pid);
    assert!(pid != 0 && rss_before > 0, "daemon pid/RSS readable");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "daemon RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}
