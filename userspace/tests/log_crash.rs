//! Crash loop: a child process (this test binary re-executed) appends from several threads
//! (two blocking, two pipelined through `append_async`) and prints every acknowledged
//! offset and every durable checkpoint; it is SIGKILLed at random points, also while
//! opening and rolling. After each kill, every acknowledged record must be present and
//! byte-equal, and the consumer must never be sent a record at or below its acknowledged
//! checkpoint. The records of each iteration are read back after its kill, every record
//! every `iters / 80` (at least 25) iterations and after the last. `DP_LOG_CRASH_ITERS`
//! sets the iteration count (default 2,000, about 50 s); `DP_LOG_CRASH_SEED` replays a
//! run. The child inherits `DURAPLANE_LOG_IO`: run once with `blocking` and once with
//! `io_uring` to cover both paths.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use duraplane::log::{Entry, Offset, Stream, StreamOptions};
use rand::{Rng, SeedableRng};

const DIR_ENV: &str = "DP_LOG_CRASH_CHILD_DIR";

fn opts() -> StreamOptions {
    StreamOptions {
        segment_size: Some(16 << 10),
        subscribers: vec!["keep".into(), "c".into()],
        ..Default::default()
    }
}

fn payload(tag: &str, t: usize, n: usize) -> String {
    format!("{tag}-t{t}-n{n}-{}", "z".repeat((n * 37 + t * 11) % 300))
}

/// The child: runs only when re-executed by `crash_loop` (ignored otherwise).
#[test]
#[ignore = "child process of crash_loop"]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let tag = std::env::var("DP_LOG_CRASH_TAG").unwrap();
    let s = Stream::open(&dir, &opts()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut threads = Vec::new();
    for t in 0..4 {
        let (s, tag) = (s.clone(), tag.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0;
            if t >= 2 {
                // Pipelined producers: up to 8 appends in flight, each printed only once
                // its ticket says it is durable.
                let mut window = std::collections::VecDeque::new();
                while Instant::now() < deadline {
                    let p = payload(&tag, t, n);
                    window.push_back((s.append_async(p.as_bytes()).unwrap(), p));
                    n += 1;
                    if window.len() >= 8
                        && let Some((tk, p)) = window.pop_front()
                    {
                        println!("ACK {} {p}", tk.wait().unwrap());
                    }
                }
                for (tk, p) in window {
                    println!("ACK {} {p}", tk.wait().unwrap());
                }
                return;
            }
            while Instant::now() < deadline {
                let p = payload(&tag, t, n);
                let off = s.append(p.as_bytes()).unwrap();
                println!("ACK {off} {p}");
                n += 1;
            }
        }));
    }
    // A consumer checkpointing as it goes.
    while Instant::now() < deadline {
        let last = s
            .read_from("c")
            .unwrap()
            .take(7)
            .filter_map(|e| match e.unwrap() {
                Entry::Record(r) => Some(r.offset),
                Entry::Gap { .. } => None,
            });
        if let Some(off) = last.last() {
            s.checkpoint("c", off).unwrap();
            println!("CP {off}");
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn crash_loop() {
    let iters: usize = std::env::var("DP_LOG_CRASH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let seed: u64 = std::env::var("DP_LOG_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("crash loop: {iters} iterations, DP_LOG_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("crash.cluster");
    let exe = std::env::current_exe().unwrap();
    let mut acked: BTreeMap<Offset, String> = BTreeMap::new();
    let mut checkpointed: Option<Offset> = None;
    let mut blind_kills = 0;
    let full_every = (iters / 80).max(25);
    let mut checked_end: Offset = 0;
    for it in 0..iters {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, &dir)
            .env("DP_LOG_CRASH_TAG", format!("it{it}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let want: usize = rng.random_range(0..60);
        if want == 0 || rng.random_bool(0.2) {
            // Kill while opening/recovering or at an arbitrary moment.
            blind_kills += 1;
            std::thread::sleep(Duration::from_micros(rng.random_range(0..20_000)));
        } else {
            let mut seen = 0;
            while seen < want {
                match lines.next() {
                    Some(Ok(l)) if l.starts_with("ACK ") || l.starts_with("CP ") => {
                        seen += 1;
                        record(&l, &mut acked, &mut checkpointed);
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
        }
        // SAFETY: kill(2) on the PID of the child this test spawned and has not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "iteration {it}: child ended on its own (seed {seed})"
        );
        // Lines already in the pipe were acknowledged before the kill.
        for l in lines.map_while(Result::ok) {
            record(&l, &mut acked, &mut checkpointed);
        }

        let s = Stream::open(&dir, &opts())
            .unwrap_or_else(|e| panic!("iteration {it}: reopen after SIGKILL: {e} (seed {seed})"));
        // Every acknowledged record is checked after every kill: those of this iteration
        // by reading from the first of them, all of them every `full_every` iterations
        // and after the last (reading the whole log each time made the loop quadratic).
        let full = it % full_every == 0 || it + 1 == iters;
        let from = if full {
            None
        } else {
            acked.range(checked_end..).next().map(|(o, _)| *o)
        };
        if full || from.is_some() {
            let start = from.unwrap_or(0);
            let reader = match from {
                Some(o) => s.read_at(o),
                None => s.read_from("keep").unwrap(),
            };
            let on_disk: BTreeMap<Offset, Vec<u8>> = reader
                .map(|e| match e.unwrap() {
                    Entry::Record(r) => (r.offset, r.payload),
                    Entry::Gap { from, to } => panic!("gap {from}..{to}"),
                })
                .collect();
            for (off, p) in acked.range(start..) {
                match on_disk.get(off) {
                    Some(got) => assert_eq!(
                        got,
                        p.as_bytes(),
                        "iteration {it}: offset {off} (seed {seed})"
                    ),
                    None => panic!("iteration {it}: acknowledged offset {off} lost (seed {seed})"),
                }
            }
            checked_end = acked.keys().next_back().map_or(0, |o| o + 1);
        }
        // Nothing acknowledged may be cut between full checks either.
        let last_end = acked
            .iter()
            .next_back()
            .map_or(0, |(o, p)| o + 32 + p.len() as u64);
        assert!(
            s.bounds().1 >= last_end,
            "iteration {it}: the log ends at {} below acknowledged data ending at {last_end} (seed {seed})",
            s.bounds().1
        );
        if let Some(cp) = checkpointed {
            let first = s.read_from("c").unwrap().next().transpose().unwrap();
            if let Some(Entry::Record(r)) = first {
                assert!(
                    r.offset > cp,
                    "iteration {it}: redelivered {} ≤ checkpoint {cp}",
                    r.offset
                );
            }
            assert!(s.position("c").unwrap() > cp);
        }
    }
    eprintln!(
        "crash loop: {} acknowledged records verified, last checkpoint {checkpointed:?}, {blind_kills} kills at random moments",
        acked.len()
    );
    assert!(acked.len() > iters, "the children acknowledged records");
}

fn record(line: &str, acked: &mut BTreeMap<Offset, String>, cp: &mut Option<Offset>) {
    let mut it = line.splitn(3, ' ');
    match (it.next(), it.next(), it.next()) {
        (Some("ACK"), Some(off), Some(p)) => {
            let off: Offset = off.parse().unwrap();
            assert!(
                acked.insert(off, p.to_string()).is_none(),
                "offset {off} acknowledged twice"
            );
        }
        (Some("CP"), Some(off), None) => {
            let off: Offset = off.parse().unwrap();
            *cp = Some(cp.map_or(off, |c| c.max(off)));
        }
        _ => {}
    }
}
