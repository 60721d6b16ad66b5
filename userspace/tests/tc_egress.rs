//! `outbound_cidr` counting by `tc_egress`: BPF_PROG_TEST_RUN of every path (SYN counted
//! once, retransmit not, FIN/RST closes once, v4/v6, never drops), and real outbound TCP
//! connections from a namespace counted per destination.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use duraplane::{
    bpf::{
        Datapath, DatapathConfig, DestinationCount,
        frames::{Frame, tcp_flags as f},
    },
    testbed::Testbed,
};
use duraplane_common::Stat::{self, *};

const TC_ACT_OK: i32 = 0;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn run(dp: &mut Datapath, fr: Frame) {
    assert_eq!(dp.egress_test_run(&fr.build()).unwrap(), TC_ACT_OK);
}

fn stats(dp: &Datapath) -> Vec<(Stat, u64)> {
    dp.read_stats().unwrap().nonzero()
}

fn dest(dp: &mut Datapath, addr: IpAddr) -> Option<DestinationCount> {
    dp.read_destinations()
        .unwrap()
        .into_iter()
        .find(|d| d.addr == addr)
}

/// The counted ports of these tests: SMTP and the test servers' 2525.
fn cfg() -> DatapathConfig {
    DatapathConfig {
        ports: vec![25, 2525],
        ..DatapathConfig::default()
    }
}

#[test]
fn syn_opens_once_and_local_fin_closes_once_v4_v6() {
    for (local, remote) in [
        (ip("192.0.2.1"), ip("198.51.100.7")),
        (ip("2001:db8:1::1"), ip("2001:db8:2::7")),
    ] {
        let mut dp = Datapath::load(&cfg()).unwrap();
        // Only connections to the counted ports: a SYN, FIN and RST to another port
        // (e.g. the cluster's own 4802 links) are not looked at.
        run(&mut dp, Frame::tcp(local, 40002, remote, 4802, f::SYN));
        run(
            &mut dp,
            Frame::tcp(local, 40002, remote, 4802, f::FIN | f::ACK),
        );
        run(&mut dp, Frame::tcp(local, 40002, remote, 4802, f::RST));
        run(&mut dp, Frame::tcp(local, 40000, remote, 2525, f::SYN));
        run(&mut dp, Frame::tcp(local, 40000, remote, 2525, f::SYN)); // retransmit
        run(
            &mut dp,
            Frame::tcp(local, 40001, remote, 25, f::SYN).vlan(3),
        );
        // Not opens or closes: ACK, data, SYN+ACK (we are the server there).
        run(&mut dp, Frame::tcp(local, 40000, remote, 2525, f::ACK));
        run(
            &mut dp,
            Frame::tcp(local, 40000, remote, 2525, f::ACK | f::PSH),
        );
        run(
            &mut dp,
            Frame::tcp(local, 25, remote, 50000, f::SYN | f::ACK),
        );
        assert_eq!(
            stats(&dp),
            vec![(OutSyn, 3), (OutSynRetransmit, 1), (OutOpened, 2)]
        );
        let flows = dp.read_outbound_flows().unwrap();
        assert_eq!(flows.len(), 2);
        assert!(
            flows
                .iter()
                .all(|fl| fl.local == local && fl.remote == remote)
        );
        let d = dest(&mut dp, remote).unwrap();
        assert_eq!((d.opened, d.closed, d.current), (2, 0, 2));

        // Local FIN closes; its retransmit and the later RST find no flow.
        run(
            &mut dp,
            Frame::tcp(local, 40000, remote, 2525, f::FIN | f::ACK),
        );
        run(
            &mut dp,
            Frame::tcp(local, 40000, remote, 2525, f::FIN | f::ACK),
        );
        run(&mut dp, Frame::tcp(local, 40000, remote, 2525, f::RST));
        // RST closes the other one.
        run(
            &mut dp,
            Frame::tcp(local, 40001, remote, 25, f::RST).vlan(3),
        );
        assert_eq!(
            stats(&dp),
            vec![
                (OutSyn, 3),
                (OutSynRetransmit, 1),
                (OutOpened, 2),
                (OutClosed, 2),
                (OutFinRstNoFlow, 2)
            ]
        );
        let d = dest(&mut dp, remote).unwrap();
        assert_eq!((d.opened, d.closed, d.current), (2, 2, 0));
        assert!(dp.read_outbound_flows().unwrap().is_empty());
        // The inbound side saw nothing.
        assert_eq!(dp.read_stats().unwrap().get(Packets), 0);
    }
}

#[test]
fn idle_outbound_flows_expire_through_the_close_path() {
    let mut dp = Datapath::load(&cfg()).unwrap();
    let (local, remote) = (ip("192.0.2.1"), ip("198.51.100.7"));
    run(&mut dp, Frame::tcp(local, 40000, remote, 25, f::SYN));
    run(&mut dp, Frame::tcp(local, 40001, remote, 25, f::SYN));
    let v6 = ip("2001:db8:2::7");
    run(
        &mut dp,
        Frame::tcp(ip("2001:db8:1::1"), 40002, v6, 25, f::SYN),
    );
    // Nothing is older than an hour.
    assert_eq!(
        dp.expire_outbound_flows(Duration::from_secs(3600)).unwrap(),
        0
    );
    assert_eq!(dp.read_outbound_flows().unwrap().len(), 3);
    // Everything opened up to now: closed as if an RST left, once each.
    assert_eq!(dp.expire_outbound_opened_before(u64::MAX).unwrap(), 3);
    assert!(dp.read_outbound_flows().unwrap().is_empty());
    let d = dest(&mut dp, remote).unwrap();
    assert_eq!((d.opened, d.closed, d.current), (2, 2, 0));
    assert_eq!(dest(&mut dp, v6).map(|d| d.current), Some(0));
    assert_eq!(dp.expire_outbound_opened_before(u64::MAX).unwrap(), 0);
    // The real close of an expired flow finds nothing to close (not counted twice).
    run(
        &mut dp,
        Frame::tcp(local, 40000, remote, 25, f::FIN | f::ACK),
    );
    assert_eq!(dest(&mut dp, remote).map(|d| d.closed), Some(2));
}

#[test]
fn non_tcp_and_short_frames_pass_uncounted() {
    let mut dp = Datapath::load(&cfg()).unwrap();
    let udp = Frame::udp(ip("192.0.2.1"), 1, ip("198.51.100.7"), 53).build();
    assert_eq!(dp.egress_test_run(&udp).unwrap(), TC_ACT_OK);
    let syn = Frame::tcp(ip("192.0.2.1"), 1, ip("198.51.100.7"), 25, f::SYN).build();
    assert_eq!(dp.egress_test_run(&syn[..40]).unwrap(), TC_ACT_OK);
    assert_eq!(stats(&dp), vec![]);
    assert!(dp.read_destinations().unwrap().is_empty());
}

#[test]
fn real_outbound_connections_are_counted_per_destination() {
    let mut tb = Testbed::new().unwrap();
    tb.add_host("mta").unwrap();
    tb.add_host("remote").unwrap();
    let pair = tb
        .veth_pair(
            "mta",
            "remote",
            &["192.0.2.1/24", "2001:db8:1::1/64"],
            &["192.0.2.2/24", "192.0.2.3/24", "2001:db8:1::2/64"],
        )
        .unwrap();
    let targets: Vec<SocketAddr> = ["192.0.2.2:25", "192.0.2.3:2525", "[2001:db8:1::2]:25"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let t2 = targets.clone();
    // Listeners live in the remote namespace; the kernel completes handshakes into the
    // backlog without accept().
    let listeners: Vec<TcpListener> = tb
        .run_in("remote", move || {
            t2.iter().map(|a| TcpListener::bind(a).unwrap()).collect()
        })
        .unwrap();
    let a_if = pair.a_if.clone();
    tb.run_in("mta", move || {
        let mut dp = Datapath::load(&cfg()).unwrap();
        dp.attach_egress(&a_if).unwrap();
        assert_eq!(dp.egress_attachments(), vec![a_if.clone()]);
        let connect =
            |a: &SocketAddr| TcpStream::connect_timeout(a, Duration::from_secs(5)).unwrap();
        let mut first: Vec<TcpStream> = (0..3).map(|_| connect(&targets[0])).collect();
        let _second = connect(&targets[1]);
        let _third: Vec<TcpStream> = (0..2).map(|_| connect(&targets[2])).collect();
        let want = |dp: &mut Datapath, addr: &str| {
            dest(dp, ip(addr)).map(|d| (d.opened, d.closed, d.current))
        };
        assert_eq!(want(&mut dp, "192.0.2.2"), Some((3, 0, 3)));
        assert_eq!(want(&mut dp, "192.0.2.3"), Some((1, 0, 1)));
        assert_eq!(want(&mut dp, "2001:db8:1::2"), Some((2, 0, 2)));
        assert_eq!(dp.read_outbound_flows().unwrap().len(), 6);

        // Two local closes: FIN leaves, each counted once (wait for it, bounded).
        first.truncate(1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while want(&mut dp, "192.0.2.2") != Some((3, 2, 1)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(want(&mut dp, "192.0.2.2"), Some((3, 2, 1)));
        let st = dp.read_stats().unwrap();
        assert_eq!(
            (
                st.get(OutOpened),
                st.get(OutClosed),
                st.get(OutSynRetransmit)
            ),
            (6, 2, 0),
            "{:?}",
            st.nonzero()
        );
        drop(dp);
        // Detached on drop: a new connection is not seen by anyone (nothing to read), but
        // the link is gone from the interface.
        let out = std::process::Command::new("bpftool")
            .args(["net", "show", "dev", &a_if])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("tc_egress"), "{text}");
    })
    .unwrap();
    drop(listeners);
}
