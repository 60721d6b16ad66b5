//! Disk full on real, small filesystems mounted for the test, both policies: a tmpfs, and
//! an ext4 image on a loop device, where segments are zero-filled spares prepared in the
//! background (so the space runs out in the spare's preparation as well as in appends).
//! And the manager's side: its consolidated files' filesystem running full.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use duraplane::log::{DiskPolicy, Entry, LogError, Offset, Stream, StreamOptions};

/// A small filesystem mounted on a temporary directory; unmounted (and its image removed)
/// on drop, even on failure.
struct Mounted {
    dir: tempfile::TempDir,
    image: Option<PathBuf>,
}

impl Mounted {
    fn tmpfs(size: &str) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "duraplane-log-test",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs (needs root)");
        Mounted { dir, image: None }
    }

    /// ext4 with 1 KiB blocks and a 1 MiB journal in an image of `mib` MiB.
    fn ext4(mib: u64) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let image = std::env::temp_dir().join(format!(
            "duraplane-disk-full-{}-{}.img",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        ));
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .unwrap();
        let m = Mounted {
            dir,
            image: Some(image.clone()),
        };
        let st = Command::new("mkfs.ext4")
            .args([
                "-q", "-F", "-b", "1024", "-N", "64", "-J", "size=1", "-m", "0",
            ])
            .arg(&image)
            .status()
            .expect("mkfs.ext4 (e2fsprogs; `cargo xtask setup` installs it)");
        assert!(st.success(), "mkfs.ext4 {}", image.display());
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(m.dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount -o loop (needs root and a loop device)");
        m
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
        if let Some(i) = &self.image {
            let _ = std::fs::remove_file(i);
        }
    }
}

fn opts(policy: DiskPolicy) -> StreamOptions {
    StreamOptions {
        segment_size: Some(64 << 10),
        disk_policy: policy,
        subscribers: vec!["m".into()],
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
    stop_policy(&Mounted::tmpfs("512k"));
}

#[test]
fn stop_policy_on_ext4_with_zero_filled_spares() {
    stop_policy(&Mounted::ext4(4));
}

fn stop_policy(fs: &Mounted) {
    let dir = fs.path().join("mainlog.cluster");
    let s = Stream::open(&dir, &opts(DiskPolicy::Stop)).unwrap();
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
    let s = Stream::open(&dir, &opts(DiskPolicy::Stop)).unwrap();
    let got: Vec<_> = s.read_from("m").unwrap().map(|e| e.unwrap()).collect();
    assert!(matches!(got.last(), Some(Entry::Record(r)) if r.payload == b"after space came back"));
}

#[test]
fn drop_oldest_policy_keeps_appending_and_readers_see_the_gap() {
    drop_oldest_policy(&Mounted::tmpfs("512k"), 3000);
}

#[test]
fn drop_oldest_policy_on_ext4_with_zero_filled_spares() {
    drop_oldest_policy(&Mounted::ext4(4), 8000);
}

fn drop_oldest_policy(fs: &Mounted, records: usize) {
    let dir = fs.path().join("rejectlog.cluster");
    let s = Stream::open(&dir, &opts(DiskPolicy::DropOldest)).unwrap();
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
    let s = Stream::open(&dir, &opts(DiskPolicy::Stop)).unwrap();
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
    let s = Stream::open(&dir, &opts(DiskPolicy::Stop)).unwrap();
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
    let s = Stream::open(&dir, &opts(DiskPolicy::Stop)).unwrap();
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
    let s = Stream::open(&dir, &opts(DiskPolicy::Stop)).unwrap();
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

/// Fills `dir`'s filesystem to the last byte with a file named `ballast`.
fn fill_up(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("ballast");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0xa5u8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", p.display()),
        }
    }
    p
}

/// Waits up to 60 s for `f`, saying what it waited for when it gives up.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A manager thread, stopped and joined when dropped (also when a test fails, so its files
/// are closed before the filesystem is unmounted).
struct Stopping(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Option<std::thread::JoinHandle<Result<(), duraplane::log::manager::ManagerError>>>,
);

impl Stopping {
    fn finished(&self) -> bool {
        self.1.as_ref().is_none_or(|t| t.is_finished())
    }

    fn join(mut self) -> Result<(), duraplane::log::manager::ManagerError> {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.1.take() {
            Some(t) => t.join().expect("the manager thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Stopping {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

/// The manager's own disk runs full: from its start (not even its state file fits), then
/// part-way through a pull. It keeps trying, never checkpoints on the node what is not in
/// its consolidated file, and once space returns the file holds every record exactly once,
/// in order.
#[test]
fn manager_output_disk_full_loses_nothing_and_resumes() {
    use duraplane::engine::ClusterKey;
    use duraplane::log::manager::{self, ManagerOptions};
    use duraplane::log::service::serve_loopback;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::{Arc, atomic::AtomicBool};

    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let node_dir = tempfile::tempdir().unwrap();
    let out = Mounted::tmpfs("4m");
    // 1,500 records of 1–4 KiB, each a line naming itself: about 3.7 MB, more than fits
    // beside the ballast once it is cut back below.
    let line = |i: usize| -> Vec<u8> {
        let mut l = format!("record {i:05} ").into_bytes();
        l.resize(1000 + (i * 37) % 3000, b'a' + (i % 26) as u8);
        l.push(b'\n');
        l
    };
    let s = Stream::open(
        node_dir.path().join("mainlog.cluster"),
        &StreamOptions {
            create: true,
            subscribers: vec!["mgr".into()],
            ..StreamOptions::default()
        },
    )
    .unwrap();
    let all: Vec<Vec<u8>> = (0..1500).map(line).collect();
    let batch: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
    s.append_batch(&batch).unwrap();
    let (_, end) = s.bounds();

    let key_bytes = b"manager-disk-full-key-0123456789abcdef";
    let key_file = node_dir.path().join("cluster.key");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&key_file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, key_bytes))
        .unwrap();
    let key = ClusterKey::from_bytes(key_bytes).unwrap();
    let (engine, addr) = serve_loopback("n1", "mainlog", &s, &key).unwrap();

    let ballast = fill_up(out.path());
    let conf = node_dir.path().join("eccluster.conf");
    std::fs::write(
        &conf,
        format!(
            "Logs {{\n  logfile = \"{}/%{{l}}/%{{n}}\"\n  log_idle_interval = 1\n  Manager \"mgr\" {{\n  }}\n}}\nduraplane {{\n  cluster_key_file = \"{}\"\n}}\n",
            out.path().display(),
            key_file.display()
        ),
    )
    .unwrap();
    let opts = ManagerOptions {
        config: conf,
        name: "mgr".into(),
        nodes: vec![("n1".into(), addr)],
        key_file: None,
        seeds: Vec::new(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let manager = Stopping(
        stop.clone(),
        Some(std::thread::spawn(move || manager::run(&opts, st))),
    );
    let consolidated = out.path().join("mainlog/n1");
    let want: Vec<u8> = all.concat();
    // Whatever the node counts as consumed is already in the consolidated file.
    let check = || {
        let pos = s.position("mgr").unwrap();
        let have = std::fs::read(&consolidated).unwrap_or_default();
        let consumed: usize = s
            .read_at(0)
            .map(|e| match e.unwrap() {
                Entry::Record(r) => (r.offset, r.payload.len()),
                Entry::Gap { .. } => panic!("gap"),
            })
            .take_while(|(off, _)| *off < pos)
            .map(|(_, n)| n)
            .sum();
        assert!(
            have.len() >= consumed && have[..consumed] == want[..consumed],
            "checkpointed up to {pos}: {consumed} bytes consumed, the file holds {} (or differs)",
            have.len()
        );
        pos
    };

    // Full from the start: nothing can be written, so nothing may be checkpointed.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(check(), 0, "checkpointed with nothing written");
    assert!(!manager.finished(), "the manager gave up on a full disk");

    // Room for about half: it gets part-way and stops there, still consistent.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&ballast)
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(2 << 20)).unwrap();
    drop(f);
    wait_for("progress once 2 MiB are free", || check() > 0);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let part = check();
    assert!(part < end, "3.7 MB cannot fit in 2 MiB");
    assert!(!manager.finished(), "the manager gave up on a full disk");

    // Space back: it finishes, every record once.
    std::fs::remove_file(&ballast).unwrap();
    wait_for("the whole log once the disk has room", || check() >= end);
    manager.join().unwrap();
    engine.stop().unwrap();
    let have = std::fs::read(&consolidated).unwrap();
    assert_eq!(have.len(), want.len(), "every record once");
    assert!(have == want, "the consolidated file differs from the log");
}
