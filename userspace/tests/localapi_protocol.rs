//! The local API server in-process on a real Unix socket (no cluster: every figure is this
//! node's own): each request kind, malformed and oversized input, the connection cap, the
//! socket mode, and that a bad client never disturbs the others.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::Path,
    time::Duration,
};

use duraplane::{
    config::load_str,
    localapi::{
        Client, ClientError, ErrorKind, LocalApiHandle, LocalApiServer, Response, SharedObjects,
        protocol::MAX_LINE, server::MAX_CONNECTIONS, socket_path,
    },
};

const CONFIG: &str = r#"
cluster {
  nodename = "n1"
  Replicate "outbound_domains" {}
  Replicate "shared_named_throttles" {}
  Replicate "mycache" {
    type = "cache"
    max_size = 2
  }
}
"#;

fn start(dir: &Path) -> LocalApiHandle {
    let loaded = load_str(CONFIG, Path::new("test.conf")).expect("config");
    let objects = SharedObjects::new(&loaded.config, "n1", None);
    let path = socket_path(&dir.join("control.sock"));
    LocalApiServer::bind(&path)
        .expect("bind")
        .spawn(objects)
        .expect("spawn")
}

fn raw(s: &mut UnixStream, line: &[u8]) -> Response {
    s.write_all(line).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut out = String::new();
    r.read_line(&mut out).unwrap();
    serde_json::from_str(out.trim_end()).unwrap_or_else(|e| panic!("{out}: {e}"))
}

#[test]
fn requests_limits_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let api = start(dir.path());
    assert_eq!(api.path(), dir.path().join("api.sock"));
    let mode = std::fs::metadata(api.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);

    let mut c = Client::connect(api.path()).unwrap();
    assert_eq!(c.ping().unwrap(), "n1");

    // Gauges.
    assert_eq!(
        c.gauge_inc("outbound_domains", "AOL.com", 2).unwrap(),
        (2, 2)
    );
    assert_eq!(
        c.gauge_dec("outbound_domains", "aol.com", 1).unwrap(),
        (1, 1)
    );
    assert_eq!(c.gauge_get("outbound_domains", "aol.com").unwrap(), (1, 1));
    assert_eq!(c.outbound_count("aol.com").unwrap(), 1);
    match c.gauge_dec("outbound_domains", "aol.com", 5) {
        Err(ClientError::Refused { kind, message }) => {
            assert_eq!(kind, ErrorKind::Invalid);
            assert!(message.contains("negative"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.gauge_inc("nope", "a", 1),
        Err(ClientError::Refused {
            kind: ErrorKind::Unknown,
            ..
        })
    ));
    assert!(matches!(
        c.gauge_inc("outbound_domains", "a", 0),
        Err(ClientError::Refused {
            kind: ErrorKind::Invalid,
            ..
        })
    ));

    // Throttles: alone, exactly X per window.
    c.throttle_create("t", "3/3600", None).unwrap();
    assert!(c.throttle_check("t").unwrap().allowed);
    let taken = (0..10)
        .filter(|_| c.throttle_consume("t", 1).unwrap().allowed)
        .count();
    assert_eq!(taken, 3);
    assert!(!c.throttle_check("t").unwrap().allowed);
    assert!(c.throttle_create("u", "3/0", None).is_err());
    assert!(c.throttle_create("u", "3/60", Some(1.5)).is_err());
    assert!(matches!(
        c.throttle_check("missing"),
        Err(ClientError::Refused {
            kind: ErrorKind::Unknown,
            ..
        })
    ));

    // Caches: set/get/delete, TTL forms, max_size = 2 evicts the oldest.
    c.cache_set("mycache", "k1", "v 1\nwith newline", "5M")
        .unwrap();
    assert_eq!(
        c.cache_get("mycache", "k1").unwrap().as_deref(),
        Some("v 1\nwith newline")
    );
    assert!(c.cache_set("mycache", "k", "v", "10D").is_err());
    c.cache_set("mycache", "k2", "v2", "0").unwrap();
    c.cache_set("mycache", "k3", "v3", "1H").unwrap();
    assert_eq!(c.cache_get("mycache", "k1").unwrap(), None, "evicted");
    assert!(c.cache_delete("mycache", "k3").unwrap());
    assert_eq!(c.cache_get("mycache", "k3").unwrap(), None);
    assert!(!c.cache_delete("mycache", "k3").unwrap());
    assert!(c.cache_get("other", "k").is_err());

    // inbound_count needs replicated inbound_cidr.
    assert!(matches!(
        c.inbound_count("/24", Some("198.51.100.7")),
        Err(ClientError::Refused {
            kind: ErrorKind::Unavailable,
            ..
        })
    ));
    // outbound_cidr_count likewise needs replicated outbound_cidr.
    assert!(matches!(
        c.outbound_cidr_count("198.51.100.0/24", None),
        Err(ClientError::Refused {
            kind: ErrorKind::Unavailable,
            ..
        })
    ));

    {
        // Malformed lines get bad_request and the connection stays usable.
        let mut s = UnixStream::connect(api.path()).unwrap();
        for bad in [
            &b"garbage\n"[..],
            b"{\"op\":\"explode\"}\n",
            b"{\"op\":\"gauge_inc\",\"table\":1,\"key\":\"a\"}\n",
            b"\xff\xfe\n",
        ] {
            let r = raw(&mut s, bad);
            assert!(!r.ok);
            assert_eq!(r.error, Some(ErrorKind::BadRequest), "{bad:?}");
        }
        // Blank lines are skipped; the next request is answered.
        assert!(raw(&mut s, b"\n\r\n{\"op\":\"ping\"}\r\n").ok);
    }
    // An oversized line: too_long, then the connection is closed.
    let mut s = UnixStream::connect(api.path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let big = vec![b'x'; MAX_LINE + 10];
    let _ = s.write_all(&big);
    let mut out = String::new();
    let mut r = BufReader::new(s.try_clone().unwrap());
    r.read_line(&mut out).unwrap();
    let reply: Response = serde_json::from_str(out.trim_end()).unwrap();
    assert_eq!(reply.error, Some(ErrorKind::TooLong));
    let mut rest = Vec::new();
    assert_eq!(r.read_to_end(&mut rest).unwrap_or(0), 0, "closed");

    // Connection cap: with `c` open, at most MAX_CONNECTIONS - 1 more are served (closed
    // connections above may still be winding down), then a `busy` reply.
    let mut held = Vec::new();
    let mut busy_at = None;
    for i in 0..MAX_CONNECTIONS + 5 {
        let mut s = UnixStream::connect(api.path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"{\"op\":\"ping\"}\n");
        let mut out = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut out)
            .unwrap();
        let r: Response = serde_json::from_str(out.trim_end()).unwrap();
        if r.ok {
            held.push(s);
        } else {
            assert_eq!(r.error, Some(ErrorKind::Busy), "{out}");
            busy_at = Some(i);
            break;
        }
    }
    let busy_at = busy_at.expect("the cap refuses a connection");
    assert!(
        (MAX_CONNECTIONS - 3..MAX_CONNECTIONS).contains(&busy_at),
        "busy after {busy_at} extra connections"
    );
    drop(held);
    // The established client is unaffected throughout.
    assert_eq!(c.gauge_get("outbound_domains", "aol.com").unwrap(), (1, 1));
    drop(c);

    let path = api.path().to_owned();
    api.stop();
    assert!(!path.exists(), "socket removed on stop");
}

#[test]
fn a_live_socket_is_not_stolen_and_a_stale_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let api = start(dir.path());
    let path = api.path().to_owned();
    assert!(
        LocalApiServer::bind(&path).is_err(),
        "a live server answers"
    );
    api.stop();
    // A crashed daemon's socket: the file stays, nobody answers.
    let l = std::os::unix::net::UnixListener::bind(dir.path().join("stale.sock")).unwrap();
    drop(l);
    let stale = dir.path().join("stale.sock");
    let again = LocalApiServer::bind(&stale).expect("stale socket replaced");
    drop(again);
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    assert!(LocalApiServer::bind(&dir.path().join("file")).is_err());
}
