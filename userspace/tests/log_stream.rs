//! Durable log streams on real files: round trips, group commit, pipelined appends,
//! subscribers, checkpoints, segment deletion, lag, `cluster show logs`.
//!
//! The I/O path follows `DURAPLANE_LOG_IO` (`io_uring`, `blocking`, default auto): run this
//! file once with each forced to cover both.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use duraplane::log::{
    DiskPolicy, Entry, EntryRef, LOG_IO_ENV, LogError, LogIo, Record, StartAt, Stream,
    StreamOptions, render_show_logs,
};

fn opts(subs: &[&str]) -> StreamOptions {
    StreamOptions {
        subscribers: subs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn small(subs: &[&str], segment_size: u64) -> StreamOptions {
    StreamOptions {
        segment_size: Some(segment_size),
        ..opts(subs)
    }
}

fn records(s: &Stream, sub: &str) -> Vec<Record> {
    s.read_from(sub)
        .unwrap()
        .map(|e| match e.unwrap() {
            Entry::Record(r) => r,
            Entry::Gap { from, to } => panic!("unexpected gap {from}..{to}"),
        })
        .collect()
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mainlog.cluster");
    let s = Stream::open(&dir, &opts(&["master"])).unwrap();
    let mut offs = Vec::new();
    for i in 0..100u32 {
        offs.push(s.append(format!("record {i}").as_bytes()).unwrap());
    }
    let bulk: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; i as usize]).collect();
    offs.extend(s.append_batch(&bulk).unwrap());
    assert!(offs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(offs[0], 0);
    let got = records(&s, "master");
    assert_eq!(got.len(), 110);
    assert_eq!(got[7].payload, b"record 7");
    assert_eq!(got[105].payload, vec![5u8; 5]);
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), offs);
    drop(s);
    let s = Stream::open(&dir, &opts(&["master"])).unwrap();
    assert_eq!(records(&s, "master"), got);
    // The next append continues after the recovered end.
    let next = s.append(b"after reopen").unwrap();
    assert_eq!(next, s.bounds().1 - 32 - 12);
    assert!(next > *offs.last().unwrap());
}

#[test]
fn second_open_is_refused_while_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stream::open(tmp.path().join("l"), &opts(&[])).unwrap();
    let err = Stream::open(tmp.path().join("l"), &opts(&[])).unwrap_err();
    assert!(matches!(err, LogError::Locked { .. }), "{err}");
    drop(s);
    Stream::open(tmp.path().join("l"), &opts(&[])).unwrap();
    let err = Stream::open(
        tmp.path().join("missing"),
        &StreamOptions {
            create: false,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, LogError::NotAStream { .. }), "{err}");
}

#[test]
fn group_commit_64_producers() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Arc::new(Stream::open(tmp.path().join("g"), &small(&["master"], 256 << 10)).unwrap());
    const PER: usize = 150;
    let handles: Vec<_> = (0..64)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                (0..PER)
                    .map(|i| {
                        let p = format!("t{t:02}-{i:04}-{}", "x".repeat(i % 50));
                        (s.append(p.as_bytes()).unwrap(), p)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked = BTreeMap::new();
    for h in handles {
        let v = h.join().unwrap();
        assert!(
            v.windows(2).all(|w| w[0].0 < w[1].0),
            "one producer's offsets increase"
        );
        for (off, p) in v {
            assert!(
                acked.insert(off, p).is_none(),
                "offset {off} handed out twice"
            );
        }
    }
    assert_eq!(acked.len(), 64 * PER);
    let got = records(&s, "master");
    assert_eq!(got.len(), acked.len());
    for r in &got {
        assert_eq!(acked[&r.offset].as_bytes(), &r.payload[..]);
    }
    let st = s.stats();
    assert_eq!(st.records, (64 * PER) as u64);
    eprintln!(
        "group commit: {} records in {} fdatasyncs ({:.1} per sync)",
        st.records,
        st.syncs,
        st.records as f64 / st.syncs as f64
    );
    assert!(st.syncs < st.records, "producers shared fdatasyncs: {st:?}");
}

#[test]
fn checkpoints_are_durable_and_never_redeliver() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let s = Stream::open(&dir, &opts(&["master", "mgr2"])).unwrap();
    let offs: Vec<_> = (0..20)
        .map(|i| s.append(format!("r{i}").as_bytes()).unwrap())
        .collect();
    let got = records(&s, "master");
    assert_eq!(got.len(), 20);
    s.checkpoint("master", offs[9]).unwrap();
    // Lower or equal checkpoints are ignored, never moving back.
    s.checkpoint("master", offs[3]).unwrap();
    s.checkpoint("master", offs[9]).unwrap();
    let err = s.checkpoint("master", offs[12] + 1).unwrap_err();
    assert!(matches!(err, LogError::BadCheckpointOffset { .. }), "{err}");
    let err = s.checkpoint("nobody", offs[1]).unwrap_err();
    assert!(matches!(err, LogError::NoSubscriber { .. }), "{err}");
    drop(s);
    // Reopen without naming the subscribers: they persist.
    let s = Stream::open(&dir, &opts(&[])).unwrap();
    assert_eq!(
        s.subscribers(),
        vec!["master".to_string(), "mgr2".to_string()]
    );
    let again = records(&s, "master");
    assert_eq!(again.first().unwrap().payload, b"r10");
    assert_eq!(again.len(), 10);
    assert!(again.iter().all(|r| r.offset > offs[9]));
    assert_eq!(records(&s, "mgr2").len(), 20);
    s.checkpoint("master", offs[19]).unwrap();
    drop(s);
    let s = Stream::open(&dir, &opts(&[])).unwrap();
    assert!(records(&s, "master").is_empty());
    let lag = s.lag("master").unwrap();
    assert_eq!((lag.bytes, lag.oldest_unconsumed_ns), (0, None));
}

#[test]
fn subscribers_add_remove_and_start_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stream::open(tmp.path().join("s"), &opts(&["master"])).unwrap();
    s.append(b"one").unwrap();
    s.add_subscriber("late", StartAt::End).unwrap();
    s.add_subscriber("all", StartAt::Oldest).unwrap();
    let err = s.add_subscriber("all", StartAt::Oldest).unwrap_err();
    assert!(matches!(err, LogError::SubscriberExists { .. }), "{err}");
    assert!(matches!(
        s.add_subscriber("", StartAt::End).unwrap_err(),
        LogError::InvalidSubscriberName { .. }
    ));
    s.append(b"two").unwrap();
    assert_eq!(records(&s, "late").len(), 1);
    assert_eq!(records(&s, "all").len(), 2);
    assert!(tmp.path().join("s").join("cp.6c617465").exists());
    s.remove_subscriber("late").unwrap();
    assert!(!tmp.path().join("s").join("cp.6c617465").exists());
    assert!(matches!(
        s.read_from("late").unwrap_err(),
        LogError::NoSubscriber { .. }
    ));
}

#[test]
fn segments_deleted_only_after_every_subscriber_passed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Stream::open(&dir, &small(&["a", "b"], 4096)).unwrap();
    let payload = vec![7u8; 400];
    let offs: Vec<_> = (0..60).map(|_| s.append(&payload).unwrap()).collect();
    let segs = segment_files(&dir);
    assert!(segs.len() >= 6, "{segs:?}");
    let st = s.stats();
    assert_eq!(st.segment_bytes, 4096);
    // Nothing was collected yet (both subscribers are at 0): one roll per file after the first.
    assert_eq!(st.segment_rolls, segs.len() as u64 - 1, "{st:?}");
    s.checkpoint("a", *offs.last().unwrap()).unwrap();
    assert_eq!(segment_files(&dir), segs, "b still needs everything");
    // b passes the first two segments: exactly those go.
    let second_end = u64::from_str_radix(&segs[2][..16], 16).unwrap();
    let last_in_second = *offs.iter().rfind(|o| **o < second_end).unwrap();
    s.checkpoint("b", last_in_second).unwrap();
    assert_eq!(segment_files(&dir), segs[2..].to_vec());
    assert_eq!(s.bounds().0, second_end);
    assert_eq!(records(&s, "b").first().unwrap().offset, second_end);
    // Removing b frees all sealed segments (a is at the end).
    s.remove_subscriber("b").unwrap();
    assert_eq!(segment_files(&dir), vec![segs.last().unwrap().clone()]);
}

#[test]
fn idle_subscriber_lags_and_disk_grows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("idle");
    let s = Stream::open(&dir, &small(&["busy", "dead"], 8192)).unwrap();
    let first = s.append(b"first").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut last = first;
    for i in 0..200 {
        last = s.append(format!("{i:0100}").as_bytes()).unwrap();
        s.checkpoint("busy", last).unwrap();
    }
    let (start, end) = s.bounds();
    assert_eq!(start, 0, "the dead subscriber holds every segment");
    let lag = s.lag("dead").unwrap();
    assert_eq!(lag.bytes, end);
    assert!(lag.oldest_unconsumed_ns.is_some());
    assert!(lag.age.unwrap() >= std::time::Duration::from_millis(20));
    assert_eq!(s.lag("busy").unwrap().bytes, 0);
    let sum = s.summary().unwrap();
    assert!(sum.segments >= 3);
    assert!(sum.allocated_bytes >= sum.segments as u64 * 8192);
    let dead = sum.subscribers.iter().find(|x| x.name == "dead").unwrap();
    assert_eq!((dead.position.log, dead.position.marker), (0, 0));
    let busy = sum.subscribers.iter().find(|x| x.name == "busy").unwrap();
    assert_eq!(busy.next, end);
    assert!(busy.position.log as usize == sum.segments - 1);
    let _ = last;
}

#[test]
fn show_logs_renders_real_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stream::open(tmp.path().join("mainlog.cluster"), &opts(&["master"])).unwrap();
    let a = s.append(b"hello").unwrap();
    s.append(b"world!").unwrap();
    s.checkpoint("master", a).unwrap();
    let sum = s.summary().unwrap();
    assert_eq!(sum.data_bytes, 32 + 5 + 32 + 6);
    let out = render_show_logs([("mainlog", Some(&sum)), ("bouncealllog", None)]);
    assert_eq!(
        out,
        "mainlog\n\t[on disk: 75 bytes]\n\t[subscriber: 'master' @ 00000000:00000025]\nbouncealllog\n\t[on disk: 0 bytes]\n"
    );
}

#[test]
fn oversized_records_and_empty_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stream::open(tmp.path().join("o"), &small(&["m"], 4096)).unwrap();
    let err = s.append(&vec![0u8; 5000]).unwrap_err();
    assert!(matches!(err, LogError::RecordTooLarge { .. }), "{err}");
    assert!(s.append_batch::<&[u8]>(&[]).unwrap().is_empty());
    // A batch bigger than a segment lands whole in one (grown) segment.
    let big: Vec<Vec<u8>> = (0..10).map(|_| vec![1u8; 1000]).collect();
    s.append(b"x").unwrap();
    let offs = s.append_batch(&big).unwrap();
    assert_eq!(offs.len(), 10);
    assert_eq!(records(&s, "m").len(), 11);
    let _ = DiskPolicy::Stop;
    let _: HashSet<u64> = offs.into_iter().collect();
}

#[test]
fn io_path_follows_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stream::open(tmp.path().join("io"), &opts(&[])).unwrap();
    let st = s.stats();
    assert_eq!(st.io, s.io_path());
    match std::env::var(LOG_IO_ENV).as_deref() {
        Ok("blocking") => assert_eq!(st.io, LogIo::Blocking),
        Ok("io_uring") => assert_eq!(st.io, LogIo::IoUring),
        _ => {}
    }
    eprintln!("log appends use {}", st.io);
    s.append(b"one").unwrap();
    assert_eq!(s.stats().records, 1);
    assert_eq!(s.stats().last_batch_records, 1);
}

/// 16 producers keep up to 32 appends in flight each; every ticket yields a durable
/// offset, per-producer order holds, and the records read back are the ones acknowledged.
#[test]
fn pipelined_appends_keep_order_and_share_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stream::open(tmp.path().join("p"), &small(&["master"], 128 << 10)).unwrap();
    const PER: usize = 300;
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut window = std::collections::VecDeque::new();
                let mut out = Vec::new();
                for i in 0..PER {
                    let p = format!("p{t:02}-{i:04}-{}", "y".repeat(i % 70));
                    window.push_back((s.append_async(p.as_bytes()).unwrap(), p));
                    if window.len() >= 32 {
                        let (tk, p) = window.pop_front().unwrap();
                        out.push((tk.wait().unwrap(), p));
                    }
                }
                for (tk, p) in window {
                    out.push((tk.wait().unwrap(), p));
                }
                out
            })
        })
        .collect();
    let mut acked = BTreeMap::new();
    for h in handles {
        let v = h.join().unwrap();
        assert_eq!(v.len(), PER);
        assert!(
            v.windows(2).all(|w| w[0].0 < w[1].0),
            "one producer's offsets increase"
        );
        for (off, p) in v {
            assert!(acked.insert(off, p).is_none(), "offset {off} twice");
        }
    }
    let got = records(&s, "master");
    assert_eq!(got.len(), 16 * PER);
    for r in &got {
        assert_eq!(acked[&r.offset].as_bytes(), &r.payload[..]);
    }
    assert!(segment_files(s.path()).len() > 1, "rolled while pipelining");
    let st = s.stats();
    assert_eq!(st.records, (16 * PER) as u64);
    assert_eq!((st.queued_records, st.committing_records), (0, 0));
    assert!(st.max_batch_records > 1, "commits were shared: {st:?}");
    eprintln!(
        "pipelined: {} records in {} fdatasyncs, largest batch {}",
        st.records, st.syncs, st.max_batch_records
    );
}

/// Tickets complete without anyone calling `wait` (the committer thread leads), blocking
/// and pipelined appends mix, and dropping the stream after async use releases its lock.
#[test]
fn tickets_complete_on_their_own_and_the_stream_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let s = Stream::open(&dir, &opts(&["m"])).unwrap();
    let tickets: Vec<_> = (0..50)
        .map(|i| s.append_async(format!("a{i}").as_bytes()).unwrap())
        .collect();
    let sync_off = s.append(b"blocking").unwrap();
    for tk in &tickets {
        let mut spins = 0u32;
        while tk.poll().is_none() {
            spins += 1;
            assert!(spins < 600_000, "ticket never completed without wait()");
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }
    let offs: Vec<_> = tickets.into_iter().map(|t| t.wait().unwrap()).collect();
    assert!(offs.windows(2).all(|w| w[0] < w[1]));
    assert!(
        offs.iter().all(|&o| o < sync_off),
        "taken before the blocking append"
    );
    let got = records(&s, "m");
    assert_eq!(got.len(), 51);
    assert_eq!(got[49].payload, b"a49");
    assert_eq!(got[50].payload, b"blocking");
    let too_big = vec![0u8; 2 << 20];
    let small_s = Stream::open(tmp.path().join("small"), &small(&[], 64 << 10)).unwrap();
    assert!(matches!(
        small_s.append_async(&too_big).unwrap_err(),
        LogError::RecordTooLarge { .. }
    ));
    drop(s);
    // The committer thread holds no strong reference: the lock is free again.
    let s = Stream::open(&dir, &opts(&["m"])).unwrap();
    assert_eq!(records(&s, "m").len(), 51);
}

/// True when `dir` is on tmpfs (no unwritten extents there, so no zero fill either).
fn on_tmpfs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated path and a zeroed out-parameter of the right type.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    #[allow(clippy::unnecessary_cast)]
    let kind = st.f_type as i64;
    kind == 0x0102_1994
}

/// Whether the file has written data at `at`: an extent that is neither a hole nor
/// unwritten (preallocated). Asked with FIEMAP after a sync: `SEEK_DATA` reports ext4's
/// unwritten extents as data on this kernel, so it cannot tell them apart.
fn written_at(path: &Path, at: u64) -> bool {
    use std::os::unix::io::AsRawFd;
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    #[derive(Default)]
    struct Fiemap {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [Extent; 1],
    }
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    let f = std::fs::File::open(path).unwrap();
    let mut m = Fiemap {
        start: at,
        length: 1,
        flags: FIEMAP_FLAG_SYNC,
        extent_count: 1,
        ..Fiemap::default()
    };
    // SAFETY: FS_IOC_FIEMAP on an open descriptor with a `struct fiemap` followed by room
    // for `extent_count` extents, as the kernel's uapi lays them out.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, &mut m as *mut Fiemap) };
    assert_eq!(
        rc,
        0,
        "FIEMAP {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    let e = m.extents[0];
    m.mapped_extents == 1
        && e.logical <= at
        && at < e.logical + e.length
        && e.flags & FIEMAP_EXTENT_UNWRITTEN == 0
}

fn spare_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".spare-"))
        .collect()
}

/// With zero-filled segments asked for, a new stream's first segment is written with zeros
/// to its end (not only preallocated: commits then overwrite written blocks, no extent
/// conversion per fdatasync); spares made in the background for later segments never
/// outlive the stream, and one left by a crash is removed on open.
#[test]
fn zero_filled_segments_and_no_spare_left_behind() {
    const SEG: u64 = 64 << 10;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("z");
    let zero_filled = StreamOptions {
        zero_filled_segments: Some(true),
        ..small(&["m"], SEG)
    };
    let s = Stream::open(&dir, &zero_filled).unwrap();
    let first = dir.join(&segment_files(&dir)[0]);
    if !on_tmpfs(tmp.path()) {
        assert!(
            written_at(&first, SEG - 4096),
            "the first segment's tail is written zeros, not an unwritten extent"
        );
    }
    let payload = vec![9u8; 1000];
    let offs: Vec<_> = (0..400).map(|_| s.append(&payload).unwrap()).collect();
    let st = s.stats();
    assert!(st.segment_rolls >= 5, "{st:?}");
    let segs = segment_files(&dir);
    assert_eq!(segs.len() as u64, st.segment_rolls + 1, "{segs:?}");
    drop(s);
    assert_eq!(
        spare_files(&dir),
        Vec::<String>::new(),
        "spare removed on close"
    );
    // A spare being prepared when the process died.
    std::fs::write(dir.join(".spare-4242-7.tmp"), vec![0u8; 8192]).unwrap();
    let s = Stream::open(&dir, &zero_filled).unwrap();
    assert_eq!(
        spare_files(&dir),
        Vec::<String>::new(),
        "leftover removed on open"
    );
    let got = records(&s, "m");
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), offs);
    assert!(got.iter().all(|r| r.payload == payload));
}

/// By default a stream of small commits gets preallocated segments only: no spare is
/// zero-filled beside its commits (those writes lengthened a fast stream's fdatasyncs),
/// the committer writes zeros just ahead of its commits instead, and records come back the
/// same across rolls.
#[test]
fn small_commits_get_no_zero_filled_segments_by_default() {
    const SEG: u64 = 1 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let s = Stream::open(&dir, &small(&["m"], SEG)).unwrap();
    let first = dir.join(&segment_files(&dir)[0]);
    let payload = vec![7u8; 1000];
    s.append(&payload).unwrap();
    if !on_tmpfs(tmp.path()) && std::env::var_os("DURAPLANE_LOG_PREZERO").is_none() {
        assert!(
            written_at(&first, 4096),
            "zeros written just ahead of the first commit"
        );
        assert!(
            !written_at(&first, SEG - 4096),
            "the segment's tail is still an unwritten extent (no zero fill of the whole)"
        );
    }
    let mut offs = vec![0];
    for _ in 0..3000 {
        offs.push(s.append(&payload).unwrap());
        assert_eq!(spare_files(&dir), Vec::<String>::new(), "no spare prepared");
    }
    assert!(s.stats().segment_rolls >= 2, "{:?}", s.stats());
    let got = records(&s, "m");
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), offs);
    assert!(got.iter().all(|r| r.payload == payload));
}

/// By default a stream committing in large writes (bulk appends) gets its next segments as
/// zero-filled spares: the segment after a roll is written to its end before use.
#[test]
fn bulk_commits_get_zero_filled_spares_by_default() {
    const SEG: u64 = 4 << 20;
    let tmp = tempfile::tempdir().unwrap();
    if on_tmpfs(tmp.path()) || std::env::var_os("DURAPLANE_LOG_PREZERO").is_some() {
        return;
    }
    let dir = tmp.path().join("b");
    let s = Stream::open(&dir, &small(&["m"], SEG)).unwrap();
    let batch: Vec<Vec<u8>> = (0..128).map(|i| vec![i as u8; 4000]).collect(); // ~0.5 MB
    for _ in 0..3 {
        s.append_batch(&batch).unwrap();
    }
    // Past a quarter of the segment in 0.5 MB commits: a spare is being zero-filled.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let spare = loop {
        let ready = spare_files(&dir)
            .into_iter()
            .map(|n| dir.join(n))
            .find(|p| written_at(p, SEG - 4096));
        if let Some(p) = ready {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "no zero-filled spare");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Its last zeros are written; give its thread time to sync and hand it over.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut offs = Vec::new();
    while s.stats().segment_rolls == 0 {
        offs.extend(s.append_batch(&batch).unwrap());
    }
    assert!(!spare.exists(), "the spare was renamed in at the roll");
    let segs = segment_files(&dir);
    assert_eq!(segs.len(), 2, "{segs:?}");
    let second = dir.join(&segs[1]);
    assert!(
        written_at(&second, SEG - 4096),
        "the segment after the roll is written zeros to its end, not an unwritten extent"
    );
    let got = records(&s, "m");
    assert_eq!(got.len(), 3 * 128 + offs.len());
    assert_eq!(
        got[3 * 128..].iter().map(|r| r.offset).collect::<Vec<_>>(),
        offs
    );
}

/// Records from 1 byte to 1 MB, straddling segment ends, come back byte-equal and in order,
/// and a reader at the end picks up records appended after it got there.
#[test]
fn readers_return_every_record_across_segment_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stream::open(tmp.path().join("ra"), &small(&["m"], 2 << 20)).unwrap();
    let sizes = [
        1usize, 100, 4000, 300_000, 262_112, 262_113, 1_000_000, 7, 65_536,
    ];
    let payload = |i: usize, n: usize| -> Vec<u8> { (0..n).map(|k| (k * 7 + i) as u8).collect() };
    let mut want = Vec::new();
    for i in 0..30 {
        let p = payload(i, sizes[i % sizes.len()]);
        s.append(&p).unwrap();
        want.push(p);
    }
    let segs = segment_files(&tmp.path().join("ra"));
    assert!(segs.len() > 2, "{segs:?}");
    let mut r = s.read_from("m").unwrap();
    let mut got = Vec::new();
    for e in r.by_ref() {
        match e.unwrap() {
            Entry::Record(rec) => got.push(rec.payload),
            Entry::Gap { from, to } => panic!("unexpected gap {from}..{to}"),
        }
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "a record came back different");
    // At the end: later appends are read by the same reader.
    for i in 30..34 {
        let p = payload(i, sizes[i % sizes.len()]);
        s.append(&p).unwrap();
        want.push(p);
    }
    for e in r {
        match e.unwrap() {
            Entry::Record(rec) => got.push(rec.payload),
            Entry::Gap { from, to } => panic!("unexpected gap {from}..{to}"),
        }
    }
    assert!(
        got == want,
        "records appended after the reader reached the end"
    );
}

/// A reader that keeps up with a growing stream, a few records behind or right at the end,
/// gets every record once and byte-equal: what it read ahead never hides a later append,
/// frames that end exactly at, just past or far past its read-ahead come back whole, and
/// segment ends in between change nothing.
#[test]
fn a_reader_following_appends_gets_each_record_once() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stream::open(tmp.path().join("follow"), &small(&["m"], 1 << 20)).unwrap();
    // Payloads whose 32-byte-framed sizes sit on and around 64 KiB and the reader's
    // 256 KiB chunk, tiny ones, big ones.
    let sizes = [
        65_504usize,
        1,
        65_505,
        4064,
        70_000,
        32_736,
        32_737,
        200_000,
        0,
        262_112,
        9,
        262_113,
        262_111,
    ];
    let payload = |i: usize| -> Vec<u8> {
        let n = sizes[i % sizes.len()];
        (0..n).map(|k| (k * 31 + i * 7) as u8).collect()
    };
    let mut r = s.read_from("m").unwrap();
    let (mut appended, mut got) = (0usize, Vec::new());
    let mut last_offset = None;
    for step in 0..120 {
        // Append 0–3 records, then read 0–2 or everything there is.
        for _ in 0..(step % 4) {
            s.append(&payload(appended)).unwrap();
            appended += 1;
        }
        let take = if step % 5 == 4 { usize::MAX } else { step % 3 };
        for e in r.by_ref().take(take) {
            match e.unwrap() {
                Entry::Record(rec) => {
                    assert!(last_offset < Some(rec.offset), "offsets must grow");
                    last_offset = Some(rec.offset);
                    assert!(
                        rec.payload == payload(got.len()),
                        "record {} came back different ({} bytes)",
                        got.len(),
                        rec.payload.len()
                    );
                    got.push(rec.offset);
                }
                Entry::Gap { from, to } => panic!("unexpected gap {from}..{to}"),
            }
        }
        assert!(got.len() <= appended);
    }
    for e in r {
        match e.unwrap() {
            Entry::Record(rec) => {
                assert!(rec.payload == payload(got.len()), "record {}", got.len());
                got.push(rec.offset);
            }
            Entry::Gap { from, to } => panic!("unexpected gap {from}..{to}"),
        }
    }
    assert_eq!(got.len(), appended, "every appended record, once");
    assert!(segment_files(&tmp.path().join("follow")).len() > 3);
}

/// `peek` shows the next entry without moving (the log service leaves a record that does
/// not fit its batch for the next one), `consume` moves past it; at the end `peek` says
/// so and sees what is appended later; a record borrowed from the read-ahead is the record.
#[test]
fn peek_shows_the_same_entry_until_consumed() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stream::open(tmp.path().join("peek"), &small(&["m"], 1 << 20)).unwrap();
    let big: Vec<u8> = (0..300_000).map(|k| (k % 251) as u8).collect();
    let offs = s.append_batch(&[&b"one"[..], &big, b"three"]).unwrap();
    let mut r = s.read_from("m").unwrap();
    let expect = |e: Option<EntryRef<'_>>, off: u64, p: &[u8]| match e {
        Some(EntryRef::Record {
            offset, payload, ..
        }) => {
            assert_eq!(offset, off);
            assert!(payload == p, "payload at {off}");
        }
        other => panic!("at {off}: {other:?}"),
    };
    expect(r.peek().unwrap(), offs[0], b"one");
    expect(r.peek().unwrap(), offs[0], b"one");
    assert_eq!(r.position(), offs[0], "peek does not move");
    r.consume();
    expect(r.peek().unwrap(), offs[1], &big);
    r.consume();
    r.consume(); // nothing peeked since: no move
    expect(r.peek().unwrap(), offs[2], b"three");
    r.consume();
    assert_eq!(r.peek().unwrap(), None);
    let end = s.bounds().1;
    assert_eq!(r.position(), end);
    let four = s.append(b"four").unwrap();
    expect(r.peek().unwrap(), four, b"four");
    r.consume();
    assert_eq!(r.peek().unwrap(), None);
}

/// Batches through `append_batch_async`: each ticket's offset is its first record's, the
/// rest follow contiguously in order (a ticket never spans a segment, also when segments
/// are small enough that batches force rolls), and an empty batch is refused.
#[test]
fn batched_async_appends_are_contiguous_across_rolls() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stream::open(tmp.path().join("b"), &small(&["master"], 16 << 10)).unwrap();
    assert!(matches!(
        s.append_batch_async::<&[u8]>(&[]),
        Err(LogError::InvalidOption { .. })
    ));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut window = std::collections::VecDeque::new();
                let mut out = Vec::new();
                for b in 0..60 {
                    let batch: Vec<String> = (0..1 + (b * 7 + t) % 23)
                        .map(|i| format!("t{t}-b{b:02}-r{i:02}-{}", "z".repeat((b + i) % 90)))
                        .collect();
                    window.push_back((s.append_batch_async(&batch).unwrap(), batch));
                    if window.len() >= 8 {
                        let (tk, batch) = window.pop_front().unwrap();
                        out.push((tk.wait().unwrap(), batch));
                    }
                }
                for (tk, batch) in window {
                    out.push((tk.wait().unwrap(), batch));
                }
                out
            })
        })
        .collect();
    let acked: Vec<(u64, Vec<String>)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let got: BTreeMap<u64, Vec<u8>> = records(&s, "master")
        .into_iter()
        .map(|r| (r.offset, r.payload))
        .collect();
    let mut seen = 0;
    for (first, batch) in acked {
        let mut off = first;
        for p in &batch {
            assert_eq!(
                got.get(&off).map(Vec::as_slice),
                Some(p.as_bytes()),
                "record at {off} of the batch starting at {first}"
            );
            off += duraplane::log::frame::frame_len(p.len());
            seen += 1;
        }
    }
    assert_eq!(seen, got.len(), "every record read back belongs to a batch");
    assert!(segment_files(s.path()).len() > 3, "batches forced rolls");
}
