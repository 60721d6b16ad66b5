//! Disk full on real, small filesystems mounted for the test, both policies: a tmpfs, and
//! an ext4 image on a loop device, with preallocated segments (the default) and with
//! zero-filled spares prepared in the background (where the space also runs out in the
//! spare's preparation).
//! The manager's side (its consolidated files' filesystem running full) is in
//! `manager_faults.rs`.

use std::collections::BTreeMap;

use duraplane::log::{DiskPolicy, Entry, LogError, Offset, Stream, StreamOptions};

mod mount_support;
use mount_support::Mounted;

/// `zero_fill`: segments written with zeros before use (spares prepared in the background,
/// where space also runs out), or only preallocated (the default).
fn opts(policy: DiskPolicy, zero_fill: bool) -> StreamOptions {
    StreamOptions {
        segment_size: Some(64 << 10),
        disk_policy: policy,
        subscribers: vec!["m".into()],
        zero_filled_segments: Some(zero_fill),
        ..Default::default()
    }
}

fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("rec {i:08} ").into_bytes();
    p.resize(1000, b'a' + (i % 26) as u8);
    p
}

#[test]
fn stop_policy_refuses_appends_and_loses_nothing() {
    stop_policy(&Mounted::tmpfs("512k"), false);
}

#[test]
fn stop_policy_on_ext4_with_zero_filled_spares() {
    stop_policy(&Mounted::ext4(4), true);
}

#[test]
fn stop_policy_on_ext4_with_preallocated_segments() {
    stop_policy(&Mounted::ext4(4), false);
}

fn stop_policy(fs: &Mounted, zero_fill: bool) {
    let dir = fs.path().join("mainlog.cluster");
    let s = Stream::open(&dir, &opts(DiskPolicy::Stop, zero_fill)).unwrap();
    let mut acked: BTreeMap<Offset, Vec<u8>> = BTreeMap::new();
    let mut err = None;
    for i in 0..20_000 {
        match s.append(&payload(i)) {
            Ok(o) => {
                acked.insert(o, payload(i));
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("the small filesystem fills up");
    assert!(matches!(err, LogError::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(s.is_disk_full());
    assert!(s.summary().unwrap().disk_full);
    assert!(s.poisoned().is_none(), "disk full is not a write failure");
    assert!(s.append(&payload(0)).unwrap_err().is_disk_full());
    assert!(acked.len() > 100);

    let got: Vec<_> = s.read_from("m").unwrap().map(|e| e.unwrap()).collect();
    assert_eq!(got.len(), acked.len());
    for (e, (o, p)) in got.iter().zip(&acked) {
        match e {
            Entry::Record(r) => assert_eq!((&r.offset, &r.payload), (o, p)),
            Entry::Gap { .. } => panic!("gap under the stop policy"),
        }
    }
    // Consuming frees segments; appends resume.
    let last = *acked.keys().last().unwrap();
    s.checkpoint("m", last).unwrap();
    let o = s.append(b"after space came back").unwrap();
    assert!(o > last);
    assert!(!s.is_disk_full());
    drop(s);
    let s = Stream::open(&dir, &opts(DiskPolicy::Stop, false)).unwrap();
    let got: Vec<_> = s.read_from("m").unwrap().map(|e| e.unwrap()).collect();
    assert!(matches!(got.last(), Some(Entry::Record(r)) if r.payload == b"after space came back"));
}

#[test]
fn drop_oldest_policy_keeps_appending_and_readers_see_the_gap() {
    drop_oldest_policy(&Mounted::tmpfs("512k"), 3000, false);
}

#[test]
fn drop_oldest_policy_on_ext4_with_zero_filled_spares() {
    drop_oldest_policy(&Mounted::ext4(4), 8000, true);
}

#[test]
fn drop_oldest_policy_on_ext4_with_preallocated_segments() {
    drop_oldest_policy(&Mounted::ext4(4), 8000, false);
}

fn drop_oldest_policy(fs: &Mounted, records: usize, zero_fill: bool) {
    let dir = fs.path().join("rejectlog.cluster");
    let s = Stream::open(&dir, &opts(DiskPolicy::DropOldest, zero_fill)).unwrap();
    let mut acked: BTreeMap<Offset, Vec<u8>> = BTreeMap::new();
    for i in 0..records {
        acked.insert(s.append(&payload(i)).unwrap(), payload(i));
    }
    let (start, end) = s.bounds();
    assert!(start > 0, "oldest segments were dropped");
    assert_eq!(s.stats().dropped_bytes, start);
    assert!(!s.is_disk_full());
    let lag = s.lag("m").unwrap();
    assert_eq!((lag.lost_bytes, lag.bytes), (start, end - start));

    let mut r = s.read_from("m").unwrap();
    assert_eq!(
        r.next().unwrap().unwrap(),
        Entry::Gap { from: 0, to: start }
    );
    let rest: Vec<_> = r.map(|e| e.unwrap()).collect();
    let want: Vec<_> = acked.range(start..).collect();
    assert_eq!(rest.len(), want.len());
    for (e, (o, p)) in rest.iter().zip(want) {
        match e {
            Entry::Record(rec) => assert_eq!((&rec.offset, &rec.payload), (o, p)),
            Entry::Gap { .. } => panic!("second gap"),
        }
    }
}

#[test]
fn failed_write_poisons_the_stream_for_good() {
    let fs = Mounted::tmpfs("256k");
    let dir = fs.path().join("paniclog.cluster");
    let s = Stream::open(&dir, &opts(DiskPolicy::Stop, false)).unwrap();
    let first = s.append(b"acknowledged").unwrap();
    // One batch larger than the free space: the write itself hits ENOSPC.
    let big: Vec<Vec<u8>> = (0..30).map(|i| vec![i as u8; 10_000]).collect();
    let err = s.append_batch(&big).unwrap_err();
    match &err {
        LogError::Poisoned { path, op, cause } => {
            assert!(path.starts_with(&dir), "{err}");
            assert_eq!(*op, "write");
            assert_eq!(cause.raw_os_error(), Some(libc::ENOSPC));
        }
        other => panic!("{other}"),
    }
    // Never retried into success: every later append fails the same way, even tiny ones.
    for _ in 0..3 {
        let e = s.append(b"x").unwrap_err();
        assert!(matches!(e, LogError::Poisoned { .. }), "{e}");
        assert!(e.to_string().contains("paniclog.cluster"), "{e}");
    }
    // Pipelined appends are refused the same way.
    let e = s.append_async(b"x").unwrap_err();
    assert!(matches!(e, LogError::Poisoned { .. }), "{e}");
    assert!(s.poisoned().is_some());
    assert!(s.summary().unwrap().poisoned.is_some());
    drop(s);
    // A restart recovers from what is on disk: the acknowledged record is there.
    let s = Stream::open(&dir, &opts(DiskPolicy::Stop, false)).unwrap();
    let mut r = s.read_from("m").unwrap();
    match r.next().unwrap().unwrap() {
        Entry::Record(rec) => assert_eq!(
            (rec.offset, &rec.payload[..]),
            (first, &b"acknowledged"[..])
        ),
        Entry::Gap { .. } => panic!("gap"),
    }
}

/// Pipelined appends into a filling tmpfs (a subscriber that never checkpoints holds every
/// segment): once one commit fails, no later ticket is acknowledged, and every
/// acknowledged record survives a restart.
#[test]
fn failed_write_fails_every_later_ticket() {
    let fs = Mounted::tmpfs("256k");
    let dir = fs.path().join("rejectlog.cluster");
    let s = Stream::open(&dir, &opts(DiskPolicy::Stop, false)).unwrap();
    let tickets: Vec<_> = (0..400)
        .map_while(|i| s.append_async(&payload(i)).ok().map(|t| (i, t)))
        .collect();
    let mut acked = Vec::new();
    let mut failed = false;
    for (i, t) in tickets {
        match t.wait() {
            Ok(off) => {
                assert!(!failed, "ticket {i} acknowledged after a failed commit");
                acked.push((off, payload(i)));
            }
            Err(e) => {
                assert!(
                    matches!(e, LogError::Poisoned { .. } | LogError::DiskFull { .. }),
                    "{e}"
                );
                failed = true;
            }
        }
    }
    assert!(failed, "256 KiB cannot hold 400 KB");
    drop(s);
    let s = Stream::open(&dir, &opts(DiskPolicy::Stop, false)).unwrap();
    let on_disk: BTreeMap<Offset, Vec<u8>> = s
        .read_from("m")
        .unwrap()
        .map(|e| match e.unwrap() {
            Entry::Record(r) => (r.offset, r.payload),
            Entry::Gap { .. } => panic!("gap"),
        })
        .collect();
    for (off, p) in &acked {
        assert_eq!(on_disk.get(off), Some(p), "acknowledged offset {off}");
    }
}
