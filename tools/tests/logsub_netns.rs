//! dp-logsub against a real `duraplane run` in a namespace: it lists the published logs,
//! replays a log as a named subscriber, checkpoints what it printed (durably on the node:
//! the next run starts after it), stops at the end unless following, and fails clearly on
//! an unknown subscriber or a wrong key.

use std::{path::Path, process::Output};

use duraplane::{
    log::daemon::{LocalLogClient, local_socket_path},
    testbed::{
        Testbed,
        daemons::{DaemonNode, solo_log_config, write_key},
    },
};

mod support;
use support::duraplane_bin;

const LOGSUB: &str = env!("CARGO_BIN_EXE_dp-logsub");
const KEY: &[u8] = b"dp-logsub-test-key-0123456789abcdef";

fn config(dir: &Path, socket: &Path, key: &Path) -> String {
    let d = dir.display();
    solo_log_config(
        &format!(
            "bounce_logger \"bounce_logger\" {{\n  bouncelog = \"cluster://{d}/logs/bouncelog.cluster=>master\"\n}}\n"
        ),
        &format!("    bouncelog = \"{d}/logs/bouncelog.cluster\"\n"),
        socket,
        key,
    )
}

fn logsub(tb: &Testbed, key: &Path, args: &[&str]) -> Output {
    let key = key.to_string_lossy();
    let mut cmd = vec![LOGSUB, "--node", "192.0.2.1:4802", "--key", &key];
    cmd.extend_from_slice(args);
    tb.exec_output("solo", &cmd).expect("run dp-logsub")
}

fn lines(o: &Output) -> Vec<(u64, String)> {
    assert!(
        o.status.success(),
        "dp-logsub failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            let off = f.next().and_then(|v| v.parse().ok()).expect("offset");
            let _ts: u64 = f.next().and_then(|v| v.parse().ok()).expect("timestamp");
            (off, f.next().expect("text").to_owned())
        })
        .collect()
}

#[test]
fn dp_logsub_lists_replays_checkpoints_and_refuses() {
    let bin = duraplane_bin();
    let mut tb = Testbed::new().expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    tb.add_host("solo").expect("host");
    tb.attach("solo", &["192.0.2.1/24"]).expect("attach");
    let key = dir.path().join("cluster.key");
    write_key(&key, KEY).expect("key");
    let socket = dir.path().join("solo.sock");
    let _node = DaemonNode::start(
        &tb,
        &bin,
        "solo",
        dir.path(),
        socket.clone(),
        &config(dir.path(), &socket, &key),
    )
    .expect("daemon");

    let mut lc = LocalLogClient::connect(&local_socket_path(&socket)).expect("log.sock");
    let mut offsets = Vec::new();
    for i in 0..10 {
        offsets.push(
            lc.append("bouncelog", format!("bounce {i}").as_bytes())
                .expect("append"),
        );
    }

    let o = logsub(&tb, &key, &["list"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "bouncelog\n");

    // A look without checkpointing: the first three, and nothing is consumed.
    let got = lines(&logsub(
        &tb,
        &key,
        &["tail", "bouncelog", "-s", "master", "-n", "3"],
    ));
    assert_eq!(
        got,
        (0..3)
            .map(|i| (offsets[i], format!("bounce {i}")))
            .collect::<Vec<_>>()
    );

    // Replay with checkpoints: all ten, in order; the run ends by itself at the end.
    let got = lines(&logsub(
        &tb,
        &key,
        &["tail", "bouncelog", "-s", "master", "--checkpoint"],
    ));
    assert_eq!(
        got,
        (0..10)
            .map(|i| (offsets[i], format!("bounce {i}")))
            .collect::<Vec<_>>()
    );
    // The checkpoint is durable on the node: the next run sees only what came after.
    assert!(lines(&logsub(&tb, &key, &["tail", "bouncelog", "-s", "master"])).is_empty());
    let later = lc.append("bouncelog", b"later").expect("append");
    assert_eq!(
        lines(&logsub(&tb, &key, &["tail", "bouncelog", "-s", "master"])),
        vec![(later, "later".to_owned())]
    );

    // Refusals: an unknown subscriber (never created by asking), a wrong key.
    let o = logsub(&tb, &key, &["tail", "bouncelog", "-s", "nobody"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("code 2"), "{err}");
    let wrong = dir.path().join("wrong.key");
    write_key(&wrong, b"a-completely-different-key-000000").expect("key");
    let o = logsub(&tb, &wrong, &["list"]);
    assert!(!o.status.success(), "a wrong key is refused");
}
