//! Bit rot on a stream's disk, for tests of what readers and subscribers do with it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use duraplane::log::{Offset, SEGMENT_HEADER_LEN, frame::FRAME_HEADER_LEN};

/// A stream directory's segment files, by first offset.
pub fn segments(dir: &Path) -> Vec<(Offset, PathBuf)> {
    let mut v: Vec<(Offset, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let first = p.file_name()?.to_str()?.strip_suffix(".seg")?.to_owned();
            Some((u64::from_str_radix(&first, 16).ok()?, p))
        })
        .collect();
    v.sort();
    v
}

/// Flips one bit in the payload of the third record of the third segment, which more
/// segments follow (sealed: trusted on open, so only a reader finds it). `offsets` are
/// the stream's records in order; returns the index of the spoiled one. The stream must
/// be closed, and is reopened afterwards.
pub fn flip_a_bit_in_a_sealed_segment(dir: &Path, offsets: &[Offset]) -> usize {
    let segs = segments(dir);
    assert!(segs.len() >= 4, "{segs:?}");
    let (first, seg) = &segs[2];
    let bad_i = offsets.iter().position(|o| o > first).unwrap() + 2;
    let bad = offsets[bad_i];
    assert!(bad < segs[3].0, "the spoiled record is in a sealed segment");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(seg)
        .unwrap();
    let at = SEGMENT_HEADER_LEN + (bad - first) + FRAME_HEADER_LEN as u64 + 100;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    f.sync_all().unwrap();
    bad_i
}
