//! Recovery on real files: torn tails cut at every byte position, mid-log corruption
//! refused with its position, sealed-segment damage found by `verify`, explicit `repair`.

use std::path::{Path, PathBuf};

use duraplane::log::{
    self, Entry, LogError, Offset, Record, SEGMENT_HEADER_LEN, Stream, StreamOptions,
};

const SEG: u64 = 64 << 10;

fn opts(seg: u64) -> StreamOptions {
    StreamOptions {
        segment_size: Some(seg),
        subscribers: vec!["m".into()],
        ..Default::default()
    }
}

fn all(s: &Stream) -> Vec<Record> {
    s.read_from("m")
        .unwrap()
        .map(|e| match e.unwrap() {
            Entry::Record(r) => r,
            Entry::Gap { .. } => panic!("gap"),
        })
        .collect()
}

/// After a repair: every record of `recs` in order, except `skipped`, read as one gap
/// from its offset to the next frame's (`to`).
fn assert_all_but(s: &Stream, recs: &[(Offset, Vec<u8>)], skipped: usize, to: Offset) {
    let got: Vec<Entry> = s.read_from("m").unwrap().map(|e| e.unwrap()).collect();
    assert_eq!(got.len(), recs.len(), "one entry per frame");
    for (i, (e, (off, p))) in got.iter().zip(recs).enumerate() {
        match e {
            Entry::Gap { from, to: t } if i == skipped => {
                assert_eq!((*from, *t), (*off, to), "the gap covers the damaged record")
            }
            Entry::Record(r) if i != skipped => {
                assert_eq!(r.offset, *off, "record {i} at its offset");
                assert!(r.payload == *p, "record {i} byte-equal");
            }
            other => panic!("entry {i}: {other:?}"),
        }
    }
}

/// A segment's first offset, from its file name.
fn first_of(p: &Path) -> u64 {
    u64::from_str_radix(&p.file_stem().unwrap().to_string_lossy(), 16).unwrap()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Writes `n` records one commit each; returns (offset, payload) and the stream dir.
fn fill(dir: &Path, n: usize, seg: u64) -> Vec<(Offset, Vec<u8>)> {
    let s = Stream::open(dir, &opts(seg)).unwrap();
    (0..n)
        .map(|i| {
            let p = format!("record-{i}-{}", "abc".repeat(i % 7)).into_bytes();
            (s.append(&p).unwrap(), p)
        })
        .collect()
}

fn flip(path: &Path, file_pos: u64, mask: u8) {
    let mut b = std::fs::read(path).unwrap();
    b[file_pos as usize] ^= mask;
    std::fs::write(path, b).unwrap();
}

#[test]
fn torn_tail_at_every_byte_of_the_last_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let recs = fill(&dir, 8, SEG);
    let seg = segments(&dir).pop().unwrap();
    let orig = std::fs::read(&seg).unwrap();
    let end = recs.last().map(|(o, p)| o + 32 + p.len() as u64).unwrap();
    let from = SEGMENT_HEADER_LEN + recs[5].0;
    let mut checked = 0;
    for k in from..=SEGMENT_HEADER_LEN + end {
        for zero_fill in [false, true] {
            let mut bytes = orig.clone();
            if zero_fill {
                bytes[k as usize..].fill(0);
            } else {
                bytes.truncate(k as usize);
            }
            std::fs::write(&seg, &bytes).unwrap();
            let s = Stream::open(&dir, &opts(SEG)).unwrap();
            let got = all(&s);
            let whole: Vec<_> = recs
                .iter()
                .filter(|(o, p)| SEGMENT_HEADER_LEN + o + 32 + p.len() as u64 <= k)
                .collect();
            assert_eq!(got.len(), whole.len(), "cut at file position {k}");
            for (r, (o, p)) in got.iter().zip(&whole) {
                assert_eq!((&r.offset, &r.payload), (o, p), "cut at {k}");
            }
            let cut_end = whole.last().map(|(o, p)| o + 32 + p.len() as u64).unwrap();
            assert_eq!(s.bounds().1, cut_end, "cut at {k}");
            checked += 1;
        }
    }
    assert!(checked > 200, "{checked}");
    // After a cut the stream appends where the valid data ended, and stays consistent.
    std::fs::write(
        &seg,
        &orig[..(SEGMENT_HEADER_LEN + recs[6].0 + 10) as usize],
    )
    .unwrap();
    let s = Stream::open(&dir, &opts(SEG)).unwrap();
    assert_eq!(s.append(b"new").unwrap(), recs[6].0);
    drop(s);
    let s = Stream::open(&dir, &opts(SEG)).unwrap();
    let got = all(&s);
    assert_eq!(got.len(), 7);
    assert_eq!(got[6].payload, b"new");
    assert!(log::verify(&dir).unwrap().is_ok());
}

#[test]
fn flipped_bit_mid_segment_followed_by_valid_frames_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mid");
    let recs = fill(&dir, 10, SEG);
    let seg = segments(&dir).pop().unwrap();
    let orig = std::fs::read(&seg).unwrap();
    let frame_len = 32 + recs[4].1.len() as u64;
    for byte in 0..frame_len {
        // Every byte of frame 4 (header and payload), a different bit each time.
        flip(&seg, SEGMENT_HEADER_LEN + recs[4].0 + byte, 1 << (byte % 8));
        let err = Stream::open(&dir, &opts(SEG)).unwrap_err();
        match &err {
            LogError::MidLogCorruption {
                path,
                offset,
                next_valid,
                ..
            } => {
                assert_eq!(path, &seg);
                assert_eq!(*offset, recs[4].0, "byte {byte}");
                assert_eq!(*next_valid, recs[5].0, "byte {byte}");
            }
            other => panic!("byte {byte}: {other}"),
        }
        assert!(err.to_string().contains(&format!("offset {}", recs[4].0)));
        std::fs::write(&seg, &orig).unwrap();
    }
    // Explicit repair turns the bad frame into a gap and loses nothing else.
    flip(&seg, SEGMENT_HEADER_LEN + recs[4].0 + 40, 0x80);
    let v = log::verify(&dir).unwrap();
    assert!(!v.is_ok());
    assert_eq!(v.problems[0].offset, recs[4].0);
    let rep = log::repair(&dir).unwrap();
    assert_eq!(rep.cut_at, None, "{rep:?}");
    assert_eq!(rep.skipped.len(), 1, "{rep:?}");
    assert_eq!(
        (&rep.skipped[0].path, rep.skipped[0].from, rep.skipped[0].to),
        (&seg, recs[4].0, recs[5].0)
    );
    assert!(log::verify(&dir).unwrap().is_ok());
    assert!(log::repair(&dir).unwrap().nothing_done(), "once is enough");
    let s = Stream::open(&dir, &opts(SEG)).unwrap();
    assert_all_but(&s, &recs, 4, recs[5].0);
    let old_end = recs[9].0 + 32 + recs[9].1.len() as u64;
    assert_eq!(s.append(b"after repair").unwrap(), old_end);
}

/// A bit flip in the last frame's payload or CRC: the frame was written whole (no zero
/// sector in it, a non-zero last byte), so it is damage to an acknowledged record, not a
/// torn tail: refused, reported by `verify`, dropped only by an explicit `repair`. The same
/// frame zero-filled from any byte on is a torn tail and cut, as before.
#[test]
fn flipped_bit_in_last_frame_is_damage_not_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("last");
    let recs = fill(&dir, 10, SEG);
    let seg = segments(&dir).pop().unwrap();
    let orig = std::fs::read(&seg).unwrap();
    let at = SEGMENT_HEADER_LEN + recs[9].0;
    let frame_len = 32 + recs[9].1.len() as u64;
    assert_ne!(recs[9].1.last(), Some(&0));
    // The CRC field (bytes 28..32) and every payload byte.
    for byte in 28..frame_len {
        flip(&seg, at + byte, 1 << (byte % 8));
        match Stream::open(&dir, &opts(SEG)).unwrap_err() {
            LogError::DamagedLastFrame {
                path,
                offset,
                file_pos,
                ..
            } => {
                assert_eq!(path, seg);
                assert_eq!((offset, file_pos), (recs[9].0, at), "byte {byte}");
            }
            other => panic!("byte {byte}: {other}"),
        }
        let v = log::verify(&dir).unwrap();
        assert!(!v.is_ok(), "byte {byte}: damage is not ok");
        assert!(v.torn_tail.is_none(), "byte {byte}: called torn");
        assert_eq!(v.problems[0].offset, recs[9].0);
        std::fs::write(&seg, &orig).unwrap();
    }
    // Zero fill from inside the frame is a torn write: cut on open, as before.
    let mut torn = orig.clone();
    torn[(at + frame_len - 3) as usize..].fill(0);
    std::fs::write(&seg, &torn).unwrap();
    let v = log::verify(&dir).unwrap();
    assert!(v.is_ok(), "a torn tail is not corruption");
    assert_eq!(v.torn_tail.unwrap().offset, recs[9].0);
    drop(Stream::open(&dir, &opts(SEG)).unwrap());
    // Damage is passed only after an explicit repair, which turns it into a gap.
    std::fs::write(&seg, &orig).unwrap();
    flip(&seg, at + 35, 0x04);
    let rep = log::repair(&dir).unwrap();
    assert_eq!(rep.cut_at, None, "{rep:?}");
    assert_eq!(
        rep.skipped
            .iter()
            .map(|k| (k.from, k.to))
            .collect::<Vec<_>>(),
        [(recs[9].0, recs[9].0 + frame_len)]
    );
    let s = Stream::open(&dir, &opts(SEG)).unwrap();
    assert_all_but(&s, &recs, 9, recs[9].0 + frame_len);
    assert_eq!(s.bounds().1, recs[9].0 + frame_len);
    assert!(log::verify(&dir).unwrap().is_ok());
}

#[test]
fn sealed_segment_corruption_found_by_verify_and_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sealed");
    let recs = fill(&dir, 400, 4096);
    let segs = segments(&dir);
    assert!(segs.len() >= 5, "{segs:?}");
    let (s1, s2) = (first_of(&segs[1]), first_of(&segs[2]));
    let victim = recs.iter().position(|(o, _)| *o > s1 && *o < s2).unwrap();
    let (voff, _) = &recs[victim];
    flip(&segs[1], SEGMENT_HEADER_LEN + (voff - s1) + 33, 0x01);

    // Sealed segments are trusted on a normal open…
    drop(Stream::open(&dir, &opts(4096)).unwrap());
    // …and checked when asked.
    let err = Stream::open(
        &dir,
        &StreamOptions {
            verify_sealed: true,
            ..opts(4096)
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, LogError::BadFrame { path, offset, .. } if path == &segs[1] && offset == voff),
        "{err}"
    );
    let v = log::verify(&dir).unwrap();
    assert_eq!(v.problems.len(), 1, "{v:?}");
    assert_eq!(
        (v.problems[0].path.clone(), v.problems[0].offset),
        (segs[1].clone(), *voff)
    );

    // Repair wraps the damaged record as a gap: no segment goes, nothing after it is lost.
    let end = Stream::open(&dir, &opts(4096)).unwrap().bounds().1;
    let rep = log::repair(&dir).unwrap();
    assert_eq!(rep.cut_at, None, "{rep:?}");
    assert_eq!(rep.removed_segments, Vec::<PathBuf>::new());
    let next = recs[victim + 1].0;
    assert_eq!(
        rep.skipped
            .iter()
            .map(|k| (k.path.clone(), k.from, k.to))
            .collect::<Vec<_>>(),
        [(segs[1].clone(), *voff, next)]
    );
    assert!(log::verify(&dir).unwrap().is_ok());
    assert!(
        Stream::open(
            &dir,
            &StreamOptions {
                verify_sealed: true,
                ..opts(4096)
            },
        )
        .is_ok(),
        "a checked open passes the wrapped span"
    );
    let s = Stream::open(&dir, &opts(4096)).unwrap();
    assert_all_but(&s, &recs, victim, next);
    assert_eq!(s.append(b"after repair").unwrap(), end);
    // Only the repaired segment is marked: readers before the skipped flag refuse it
    // (they accept version 1 only) instead of returning its damage as a record.
    for p in segments(&dir) {
        let want = if p == segs[1] { 2 } else { 1 };
        assert_eq!(segment_version(&p), want, "{}", p.display());
    }
}

fn segment_version(path: &Path) -> u32 {
    let b = std::fs::read(path).unwrap();
    u32::from_le_bytes(b[4..8].try_into().unwrap())
}

/// Rewrites a segment header's version, sealed with a valid CRC32C (as a newer duraplane
/// would write it).
fn set_segment_version(path: &Path, version: u32) {
    let mut b = std::fs::read(path).unwrap();
    b[4..8].copy_from_slice(&version.to_le_bytes());
    let crc = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_segment_of_an_unknown_format_version_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("newer");
    fill(&dir, 100, 4096);
    let segs = segments(&dir);
    assert!(segs.len() >= 2, "{segs:?}");
    let before = std::fs::read(&segs[0]).unwrap();
    set_segment_version(&segs[0], 3);
    let err = Stream::open(&dir, &opts(4096)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&segs[0].display().to_string()) && msg.contains("format version 3"),
        "{msg}"
    );
    assert!(log::verify(&dir).is_err(), "verify refuses it too");
    assert!(log::repair(&dir).is_err(), "repair does not rewrite it");
    // Refusing changed nothing: restored, the log opens with every record.
    set_segment_version(&segs[0], 1);
    assert_eq!(std::fs::read(&segs[0]).unwrap(), before);
    assert_eq!(all(&Stream::open(&dir, &opts(4096)).unwrap()).len(), 100);
}

#[test]
fn torn_checkpoint_slot_falls_back_to_the_previous_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cp");
    let recs = fill(&dir, 5, SEG);
    let s = Stream::open(&dir, &opts(SEG)).unwrap();
    s.checkpoint("m", recs[1].0).unwrap(); // seq 1 → slot 1
    s.checkpoint("m", recs[3].0).unwrap(); // seq 2 → slot 0
    drop(s);
    let cp = dir.join(log::checkpoint_name("m"));
    flip(&cp, 20, 0xff); // damage slot 0 (the newest)
    let s = Stream::open(&dir, &opts(SEG)).unwrap();
    assert_eq!(
        s.position("m").unwrap(),
        recs[2].0,
        "older slot: redelivery, never loss"
    );
    assert_eq!(all(&s).len(), 3);
    drop(s);
    flip(&cp, 512 + 20, 0xff);
    let err = Stream::open(&dir, &opts(SEG)).unwrap_err();
    assert!(
        matches!(
            &err,
            LogError::BadFile {
                what: "checkpoint",
                ..
            }
        ),
        "{err}"
    );
}

/// A sealed segment whose successor starts 8 bytes past its last frame (a file named
/// and headed with an offset that is not a frame boundary, as no writer makes it): the
/// gap is too short for a skipped frame, so `repair` falls back to cutting the log where
/// the sound data ends. It deletes the later segment, reports the valid frames it held
/// as lost, and moves checkpoints past the new end back to it.
#[test]
fn damage_shorter_than_a_frame_header_is_cut_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("short");
    let recs = fill(&dir, 200, 4096);
    let segs = segments(&dir);
    assert!(segs.len() >= 3, "{segs:?}");
    let last = segs.last().unwrap().clone();
    let x = first_of(&last);
    {
        // "n" stays at the start and holds every segment; "m" read to the end.
        let s = Stream::open(
            &dir,
            &StreamOptions {
                subscribers: vec!["m".into(), "n".into()],
                ..opts(4096)
            },
        )
        .unwrap();
        s.checkpoint("m", recs.last().unwrap().0).unwrap();
    }
    // The last segment is replaced by one at x + 8 holding three frames of its own.
    std::fs::remove_file(&last).unwrap();
    let at = x + 8;
    let mut b = Vec::new();
    b.extend_from_slice(b"DPLS");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&(segs.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&at.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let mut off = at;
    for p in [&b"one"[..], b"two", b"three"] {
        log::frame::encode_into(&mut b, off, 1, p);
        off += log::frame::frame_len(p.len());
    }
    let forged = dir.join(log::segment_name(at));
    std::fs::write(&forged, &b).unwrap();

    let v = log::verify(&dir).unwrap();
    assert!(v.problems.iter().any(|p| p.offset == x), "{v:?}");
    let rep = log::repair(&dir).unwrap();
    assert_eq!(rep.cut_at, Some(x), "{rep:?}");
    assert!(rep.skipped.is_empty(), "{rep:?}");
    assert_eq!(rep.removed_segments, vec![forged.clone()]);
    assert_eq!(
        rep.lost_frames, 3,
        "the forged segment's frames are reported lost"
    );
    assert_eq!(rep.lost_bytes, off - x);
    assert_eq!(rep.clamped_subscribers, vec!["m".to_string()]);
    assert!(!forged.exists());
    assert!(log::verify(&dir).unwrap().is_ok());
    assert!(log::repair(&dir).unwrap().nothing_done(), "once is enough");

    let s = Stream::open(&dir, &opts(4096)).unwrap();
    let kept: Vec<(Offset, Vec<u8>)> = recs.iter().filter(|(o, _)| *o < x).cloned().collect();
    let got: Vec<(Offset, Vec<u8>)> = s
        .read_from("n")
        .unwrap()
        .map(|e| match e.unwrap() {
            Entry::Record(r) => (r.offset, r.payload),
            gap => panic!("{gap:?}"),
        })
        .collect();
    assert_eq!(got, kept, "everything before the cut, byte-equal");
    assert_eq!(
        s.position("m").unwrap(),
        x,
        "checkpoint moved back to the new end"
    );
    assert_eq!(s.append(b"after the cut").unwrap(), x);
}
