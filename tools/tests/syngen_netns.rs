//! dp-syngen really puts SYNs on a veth: a capture in the peer namespace counts them.

use std::time::{Duration, Instant};

use duraplane::testbed::{ProcessGuard, Stream, Testbed};
use nix::sys::signal::Signal;

const SYNGEN: &str = env!("CARGO_BIN_EXE_dp-syngen");

fn pair() -> Testbed {
    let mut tb = Testbed::new().unwrap();
    tb.add_host("gen").unwrap();
    tb.add_host("sink").unwrap();
    tb.veth_pair(
        "gen",
        "sink",
        &["192.0.2.1/24", "2001:db8:1::1/64"],
        &["192.0.2.2/24", "2001:db8:1::2/64"],
    )
    .unwrap();
    tb
}

fn capture(tb: &Testbed) -> ProcessGuard {
    let p = tb
        .spawn(
            "sink",
            &[
                "tcpdump",
                "-i",
                "eth0",
                "-n",
                "-l",
                "-p",
                "--immediate-mode",
                // Small snaplen: the capture ring holds snaplen-sized frames, and with
                // the default (256 KiB) a burst overflows it.
                "-s",
                "128",
                "-B",
                "8192",
                "tcp dst port 25",
            ],
        )
        .unwrap();
    assert!(
        p.wait_for_line(Stream::Stderr, Duration::from_secs(10), |l| l
            .contains("listening on")),
        "tcpdump did not start: {:?}",
        p.lines(Stream::Stderr)
    );
    p
}

/// Wait until `want` matching lines arrived (or 5 s), then stop the capture and return
/// every captured line.
fn collect(p: ProcessGuard, want: usize, flag: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && p.lines(Stream::Stdout)
            .iter()
            .filter(|l| l.contains(flag))
            .count()
            < want
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let f = p.stop(Signal::SIGINT, Duration::from_secs(5)).unwrap();
    assert!(
        f.stderr.lines().any(|l| l == "0 packets dropped by kernel"),
        "{}",
        f.stderr
    );
    f.stdout.lines().map(str::to_string).collect()
}

/// Runs dp-syngen in "gen" with `args` (split on whitespace); its stdout.
fn syngen(tb: &Testbed, args: &str) -> String {
    let mut cmd = vec![SYNGEN];
    cmd.extend(args.split_whitespace());
    tb.exec("gen", &cmd).unwrap()
}

/// Runs dp-syngen in "gen" with `args`, which it must refuse; its stderr.
fn syngen_refused(tb: &Testbed, args: &str) -> String {
    let mut cmd = vec![SYNGEN];
    cmd.extend(args.split_whitespace());
    let o = tb.exec_output("gen", &cmd).unwrap();
    assert!(!o.status.success(), "accepted: {args}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn ipv4_syns_arrive_from_spoofed_sources() {
    let tb = pair();
    let cap = capture(&tb);
    let out = syngen(
        &tb,
        "-i eth0 -d 192.0.2.2 -s 198.51.100.0/24 --src-mode random -c 200 --rate 0",
    );
    assert!(out.starts_with("sent=200 failed=0 "), "{out}");
    let lines = collect(cap, 200, "Flags [S]");
    let syns: Vec<_> = lines.iter().filter(|l| l.contains("Flags [S]")).collect();
    assert_eq!(syns.len(), 200, "{lines:?}");
    for l in &syns {
        // "... IP 198.51.100.x.port > 192.0.2.2.25: Flags [S], ..."
        assert!(l.contains(" IP 198.51.100."), "{l}");
        assert!(l.contains(" > 192.0.2.2.25: "), "{l}");
    }
    // tcpdump validated nothing; make sure the kernel did not see bad checksums either.
    let snmp = tb.exec("sink", &["cat", "/proc/net/snmp"]).unwrap();
    let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let (names, vals) = (tcp[0].split_whitespace(), tcp[1].split_whitespace());
    let csum = names
        .zip(vals)
        .find(|(n, _)| *n == "InCsumErrors")
        .unwrap()
        .1;
    assert_eq!(csum, "0");
}

#[test]
fn ipv6_rst_and_fin() {
    let tb = pair();
    let cap = capture(&tb);
    let out = syngen(
        &tb,
        "-i eth0 -d 2001:db8:1::2 -s 2001:db8:77::/64 -c 30 --kind rst --rate 5000",
    );
    assert!(out.starts_with("sent=30 failed=0 "), "{out}");
    let lines = collect(cap, 30, "Flags [R]");
    let rsts = lines.iter().filter(|l| l.contains("Flags [R]")).count();
    assert_eq!(rsts, 30, "{lines:?}");
    assert!(
        lines.iter().all(|l| l.contains("IP6 2001:db8:77::")),
        "{lines:?}"
    );

    let cap = capture(&tb);
    let out = syngen(
        &tb,
        "-i eth0 -d 2001:db8:1::2 -s 2001:db8:77::/64 -c 5 --kind fin",
    );
    assert!(out.starts_with("sent=5 "), "{out}");
    let lines = collect(cap, 5, "Flags [F.]");
    assert_eq!(lines.iter().filter(|l| l.contains("Flags [F.]")).count(), 5);
}

#[test]
fn bounded_by_duration_and_count() {
    let tb = pair();
    // 100 pps for 0.3 s: stops on duration long before the count.
    let out = syngen(
        &tb,
        "-i eth0 -d 192.0.2.2 --dst-mac 02:00:00:00:00:02 -s 203.0.113.0/28 -c 100000 --rate 100 --duration 0.3",
    );
    let sent: u64 = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sent="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent > 0 && sent < 100000, "{out}");
    // A zero count and a run longer than the 600 s bound are refused.
    syngen_refused(&tb, "-i eth0 -d 192.0.2.2 -s 203.0.113.0/28 -c 0");
    syngen_refused(&tb, "-i eth0 -d 192.0.2.2 -s 203.0.113.0/28 --duration 601");
}

#[test]
fn refuses_non_documentation_addresses() {
    let tb = pair();
    let cap = capture(&tb);
    for (dst, src) in [
        ("10.0.0.2", "198.51.100.0/24"),
        ("192.0.2.2", "10.0.0.0/24"),
        ("192.0.2.2", "198.51.0.0/16"),
        ("192.168.1.1", "192.0.2.0/24"),
        ("2001:db8:1::2", "fd00::/64"),
        ("fe80::1", "2001:db8::/64"),
    ] {
        let err = syngen_refused(
            &tb,
            &format!("-i eth0 -d {dst} -s {src} --dst-mac 02:00:00:00:00:02"),
        );
        assert!(err.contains("documentation ranges"), "{err}");
    }
    // One valid SYN as a marker: it must be the only packet the capture saw.
    let out = syngen(&tb, "-i eth0 -d 192.0.2.2 -s 203.0.113.7/32 -c 1");
    assert!(out.starts_with("sent=1 "), "{out}");
    let lines = collect(cap, 1, "Flags");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(" IP 203.0.113.7."), "{lines:?}");
}

#[test]
fn help_lists_flags() {
    let o = std::process::Command::new(SYNGEN)
        .arg("--help")
        .output()
        .unwrap();
    assert!(o.status.success());
    let h = String::from_utf8_lossy(&o.stdout);
    for f in [
        "--interface",
        "--dst",
        "--dst-mac",
        "--src",
        "--src-mode",
        "--rate",
        "--count",
        "--duration",
        "--kind",
    ] {
        assert!(h.contains(f), "{f} missing from help");
    }
}
