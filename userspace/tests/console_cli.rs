//! `duraplane console` and the control socket protocol against a real daemon.

mod daemon_support;

use daemon_support::*;
use std::{
    fs,
    io::{BufReader, Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

fn read_reply(s: &mut UnixStream) -> (bool, String) {
    let r = duraplane::console::protocol::read_reply(&mut BufReader::new(s)).unwrap();
    (r.ok, r.body)
}

#[test]
fn one_shot_commands_and_exit_codes() {
    let d = Daemon::start("");

    let o = d.console(&["cluster", "inof"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Unknown command 'cluster inof'. Did you mean 'cluster info'? Try 'cluster help'.\n"
    );
    let o = d.console(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Unknown command 'frobnicate'. Try 'cluster help'.\n"
    );

    let o = d.console(&["cluster", "help"]);
    assert!(o.status.success());
    let help = stdout(&o);
    for c in [
        "cluster help",
        "cluster info",
        "cluster nodeaddr",
        "cluster nodename",
    ] {
        assert!(help.contains(c), "{help}");
    }
    assert!(!help.contains("config reload"), "{help}");
    let all = stdout(&d.console(&["help"]));
    assert!(
        all.contains("config reload") && all.contains("version"),
        "{all}"
    );

    let o = d.console(&["version"]);
    assert_eq!(
        stdout(&o),
        format!("duraplane {}\n", env!("CARGO_PKG_VERSION"))
    );

    let o = d.console(&["cluster", "nodename", "extra"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "usage: cluster nodename\n");
}

#[test]
fn unreachable_daemon_names_the_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("nobody-home.sock");
    let o = console(&sock, &["cluster", "info"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains(&sock.display().to_string()),
        "{}",
        stderr(&o)
    );
}

#[test]
fn stale_socket_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("stale.sock");
    drop(UnixListener::bind(&sock).unwrap()); // the file stays, nothing answers
    assert!(sock.exists());
    let mut d = Daemon::spawn_in(tmp.path(), &sock, "", &[]);
    d.wait_ready();
    assert!(d.log_text().contains("removing stale control socket"));
    assert_eq!(stdout(&d.console(&["cluster", "nodename"])), "testnode\n");
}

#[test]
fn second_daemon_on_the_same_socket_is_refused() {
    let first = Daemon::start("");
    let mut second = Daemon::spawn_in(&first.dir, &first.socket, "", &[]);
    let st = second.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(1));
    assert!(
        second
            .log_text()
            .contains("another duraplane is already answering"),
        "{}",
        second.log_text()
    );
    // The first one is untouched.
    assert_eq!(
        stdout(&first.console(&["cluster", "nodename"])),
        "testnode\n"
    );
}

#[test]
fn a_regular_file_at_the_socket_path_is_not_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("precious");
    fs::write(&path, "data").unwrap();
    let mut d = Daemon::spawn_in(tmp.path(), &path, "", &[]);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(1));
    assert!(d.log_text().contains("is not a socket"), "{}", d.log_text());
    assert_eq!(fs::read_to_string(&path).unwrap(), "data");
}

#[test]
fn bad_input_gets_error_replies_and_does_not_disturb_the_daemon() {
    let d = Daemon::start("");

    // Invalid UTF-8: an error, and the connection stays usable.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"cluster \xff\xfe\n").unwrap();
    let (ok, body) = read_reply(&mut s);
    assert!(!ok);
    assert_eq!(body, "request is not valid UTF-8");
    s.write_all(b"cluster nodename\r\n").unwrap();
    assert_eq!(read_reply(&mut s), (true, "testnode\n".to_owned()));

    // Over-long line: an error, then the daemon closes.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let long = vec![b'a'; 5000];
    s.write_all(&long).unwrap();
    let (ok, body) = read_reply(&mut s);
    assert!(!ok);
    assert!(body.contains("too long"), "{body}");

    // A client that never finishes its line gets a timeout error after the deadline.
    let mut slow = UnixStream::connect(&d.socket).unwrap();
    slow.write_all(b"cluster node").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (ok, body) = read_reply(&mut slow);
    assert!(!ok);
    assert!(body.contains("not completed"), "{body}");

    // Meanwhile and afterwards, others are served.
    assert_eq!(stdout(&d.console(&["cluster", "nodename"])), "testnode\n");
}

#[test]
fn connection_cap_answers_busy_and_recovers() {
    let d = Daemon::start("");
    // 32 connections, each answering a request before the next is opened. A slot may
    // still be held for a moment by a connection that just closed (the readiness probe's
    // thread finishing): such a connection is answered "busy" and closed, so retry it.
    let idle: Vec<UnixStream> = (0..32)
        .map(|_| {
            for _ in 0..50 {
                let mut s = UnixStream::connect(&d.socket).unwrap();
                if s.write_all(b"version\n").is_ok()
                    && duraplane::console::protocol::read_reply(&mut BufReader::new(&mut s))
                        .is_ok_and(|r| r.ok)
                {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("a console slot stayed busy");
        })
        .collect();
    let mut extra = UnixStream::connect(&d.socket).unwrap();
    let (ok, body) = read_reply(&mut extra);
    assert!(!ok);
    assert!(body.contains("too many console connections"), "{body}");
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = d.console(&["cluster", "nodename"]);
        if o.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", stderr(&o));
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn interactive_console_reads_commands_and_keeps_history() {
    let d = Daemon::start("");
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("console")
        .arg("--socket")
        .arg(&d.socket)
        .env("HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"cluster nodename\ncluster nodeaddr\nquit\n")
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success());
    assert!(out.contains("testnode\n"), "{out}");
    assert!(out.contains("192.0.2.10:4802\n"), "{out}");
    let hist = fs::read_to_string(home.path().join(".duraplane_history")).unwrap();
    assert!(hist.contains("cluster nodeaddr"), "{hist}");
}
