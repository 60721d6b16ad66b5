//! The on-disk frame: a fixed 32-byte little-endian header followed by the payload.
//!
//! The CRC32C covers the header without its CRC field and the payload, so a torn or
//! bit-flipped frame is detected; the header carries its own logical offset so a stale
//! frame left at the wrong place (after a cut) is never taken for a live one.

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `"DPLG"` read as a little-endian u32; never zero, so preallocated zero fill is no frame.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"DPLG");
/// Size of [`FrameHeader`] in bytes.
pub const FRAME_HEADER_LEN: usize = 32;
/// A frame that is no record: a damaged span `repair` wrapped in a valid frame (the
/// damaged bytes kept as its payload, for whoever investigates), so readers report a gap
/// there and go on, instead of the log being cut at the damage.
pub const FLAG_SKIPPED: u32 = 1;
/// Largest payload accepted (a frame must also fit in one segment).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Header of one record frame.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct FrameHeader {
    pub magic: U32,
    /// Payload length in bytes.
    pub len: U32,
    /// Logical offset of this frame (see `docs/logs.md`).
    pub offset: U64,
    /// Append time, nanoseconds since the Unix epoch.
    pub timestamp_ns: U64,
    /// Zero for a record; [`FLAG_SKIPPED`] for a span cut out by `repair`.
    pub flags: U32,
    /// CRC32C of the header bytes before this field, then the payload.
    pub crc32c: U32,
}

const _: () = assert!(size_of::<FrameHeader>() == FRAME_HEADER_LEN);

fn frame_crc(header_prefix: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_prefix), payload)
}

/// Total bytes a payload of `len` bytes occupies on disk.
pub fn frame_len(len: usize) -> u64 {
    (FRAME_HEADER_LEN + len) as u64
}

/// The header of a frame at `offset` carrying `payload`, its CRC filled in.
fn header(offset: u64, timestamp_ns: u64, flags: u32, payload: &[u8]) -> FrameHeader {
    let mut h = FrameHeader {
        magic: U32::new(FRAME_MAGIC),
        len: U32::new(payload.len() as u32),
        offset: U64::new(offset),
        timestamp_ns: U64::new(timestamp_ns),
        flags: U32::new(flags),
        crc32c: U32::new(0),
    };
    h.crc32c = U32::new(frame_crc(&h.as_bytes()[..FRAME_HEADER_LEN - 4], payload));
    h
}

/// Appends the encoded frame to `out`.
pub fn encode_into(out: &mut Vec<u8>, offset: u64, timestamp_ns: u64, payload: &[u8]) {
    let at = out.len();
    encode_unplaced_into(out, payload);
    place(&mut out[at..], offset, timestamp_ns);
}

/// Appends a frame whose place is not known yet: magic, length and flags are set, offset,
/// timestamp and CRC are left zero for [`place`]. Producers frame their own records this way,
/// on their own threads, so the single committer only stamps and checksums them.
pub fn encode_unplaced_into(out: &mut Vec<u8>, payload: &[u8]) {
    let h = FrameHeader {
        magic: U32::new(FRAME_MAGIC),
        len: U32::new(payload.len() as u32),
        offset: U64::new(0),
        timestamp_ns: U64::new(0),
        flags: U32::new(0),
        crc32c: U32::new(0),
    };
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(payload);
}

/// Stamps the frames of `frames` (made by [`encode_unplaced_into`], back to back) with their
/// offsets — the first at `first`, each next one right after the previous — and
/// `timestamp_ns`, and fills in their CRCs. Returns how many frames it placed.
///
/// # Panics
/// If `frames` is not a sequence of whole frames (a bug in the caller, not bad input: the
/// bytes never left this process).
pub fn place(frames: &mut [u8], first: u64, timestamp_ns: u64) -> usize {
    let mut at = 0;
    let mut n = 0;
    while at < frames.len() {
        let (h, rest) = FrameHeader::mut_from_prefix(&mut frames[at..])
            .unwrap_or_else(|_| panic!("place: no whole frame header at byte {at}"));
        let len = h.len.get() as usize;
        h.offset = U64::new(first + at as u64);
        h.timestamp_ns = U64::new(timestamp_ns);
        let payload = rest
            .get(..len)
            .unwrap_or_else(|| panic!("place: frame at byte {at} cut short"));
        let crc = frame_crc(&h.as_bytes()[..FRAME_HEADER_LEN - 4], payload);
        h.crc32c = U32::new(crc);
        at += FRAME_HEADER_LEN + len;
        n += 1;
    }
    n
}

/// A [`FLAG_SKIPPED`] frame at `offset` covering `span` exactly (at least a header long):
/// a new header over its first bytes, the rest kept as the payload.
pub fn encode_skipped(offset: u64, span: &[u8]) -> Vec<u8> {
    assert!(
        span.len() >= FRAME_HEADER_LEN,
        "a skipped span holds a header"
    );
    let payload = &span[FRAME_HEADER_LEN..];
    let mut out = header(offset, 0, FLAG_SKIPPED, payload).as_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// What sits at a position of a segment's data area.
const CRC_MISMATCH: &str = "crc32c mismatch";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, valid frame.
    Frame {
        header: FrameHeader,
        payload: &'a [u8],
    },
    /// Only zero bytes up to the end of the buffer or a whole zero header: no more data.
    Zero,
    /// The buffer ends inside a frame (header or payload cut short).
    Incomplete,
    /// Something that is not a valid frame at this offset.
    Invalid(&'static str),
}

/// Decodes the frame at the start of `buf`, expected to carry `expected_offset`.
pub fn decode(buf: &[u8], expected_offset: u64) -> Decoded<'_> {
    if buf.len() < FRAME_HEADER_LEN {
        return if buf.iter().all(|b| *b == 0) {
            Decoded::Zero
        } else {
            Decoded::Incomplete
        };
    }
    let Ok((header, rest)) = FrameHeader::read_from_prefix(buf) else {
        return Decoded::Incomplete;
    };
    if header.as_bytes().iter().all(|b| *b == 0) {
        return Decoded::Zero;
    }
    if header.magic.get() != FRAME_MAGIC {
        return Decoded::Invalid("bad magic");
    }
    let len = header.len.get() as usize;
    if len > MAX_PAYLOAD {
        return Decoded::Invalid("length too large");
    }
    if header.offset.get() != expected_offset {
        return Decoded::Invalid("offset field does not match position");
    }
    if rest.len() < len {
        return Decoded::Incomplete;
    }
    let payload = &rest[..len];
    if frame_crc(&buf[..FRAME_HEADER_LEN - 4], payload) != header.crc32c.get() {
        return Decoded::Invalid(CRC_MISMATCH);
    }
    Decoded::Frame { header, payload }
}

/// How a scan of a segment's data area ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// Zero fill or end of buffer right after the last frame.
    Clean,
    /// An incomplete or invalid frame at `pos` with nothing valid after it: a torn tail.
    Torn { pos: usize, reason: &'static str },
    /// An invalid frame at `pos` followed by a valid frame at `next_valid`: corruption.
    Corrupt {
        pos: usize,
        next_valid: usize,
        reason: &'static str,
    },
    /// The last frame, at `pos`, fails its CRC although it was written whole (see
    /// [`written_whole`]): an acknowledged record damaged after the fact, not a torn tail.
    Damaged {
        pos: usize,
        /// The damaged frame's length (its header is intact).
        len: usize,
        reason: &'static str,
    },
}

/// What is atomic on a disk: a torn write leaves whole sectors of this size unwritten.
const SECTOR: u64 = 512;

/// Whether `frame` (starting at file position `file_pos`) was written whole. A torn write
/// (power lost mid-commit) leaves whole sectors unwritten, and unwritten space in a
/// segment reads as zeros (segments are zero-filled, preallocated or sparse). So a frame
/// that ends in a non-zero byte and has no all-zero sector inside it reached the disk
/// whole. Not decidable (and taken as torn): a frame whose payload ends in a zero byte,
/// or holds 512 aligned zero bytes.
pub fn written_whole(frame: &[u8], file_pos: u64) -> bool {
    if frame.last().is_none_or(|b| *b == 0) {
        return false;
    }
    let end = file_pos + frame.len() as u64;
    let mut s = file_pos.next_multiple_of(SECTOR);
    while s + SECTOR <= end {
        let i = (s - file_pos) as usize;
        if frame[i..i + SECTOR as usize].iter().all(|b| *b == 0) {
            return false;
        }
        s += SECTOR;
    }
    true
}

/// Result of scanning a data area whose first byte has logical offset `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Bytes of valid frames from the start.
    pub valid_len: usize,
    pub frames: u64,
    /// Timestamp of the last valid frame.
    pub last_timestamp_ns: Option<u64>,
    pub end: ScanEnd,
}

/// Walks frames from the start of `data` (a segment's data area, at file position
/// `SEGMENT_HEADER_LEN`); on a bad frame, searches the rest for any valid frame (at the
/// offset its position implies) to tell a torn tail from mid-log corruption, and a last
/// frame that fails only its CRC is checked for having been written whole (damage).
pub fn scan(data: &[u8], base: u64) -> Scan {
    let mut pos = 0usize;
    let mut frames = 0u64;
    let mut last_ts = None;
    loop {
        let reason = match decode(&data[pos..], base + pos as u64) {
            Decoded::Frame { header, payload } => {
                frames += 1;
                last_ts = Some(header.timestamp_ns.get());
                pos += FRAME_HEADER_LEN + payload.len();
                continue;
            }
            Decoded::Zero if data[pos..].iter().all(|b| *b == 0) => {
                return Scan {
                    valid_len: pos,
                    frames,
                    last_timestamp_ns: last_ts,
                    end: ScanEnd::Clean,
                };
            }
            Decoded::Zero => "zero header followed by data",
            Decoded::Incomplete => "incomplete frame",
            Decoded::Invalid(r) => r,
        };
        let end = match find_valid_after(data, base, pos + 1) {
            Some(next_valid) => ScanEnd::Corrupt {
                pos,
                next_valid,
                reason,
            },
            None if let Some(len) = (reason == CRC_MISMATCH)
                .then(|| FrameHeader::read_from_prefix(&data[pos..]).ok())
                .flatten()
                .map(|(h, _)| FRAME_HEADER_LEN + h.len.get() as usize)
                .filter(|&len| {
                    written_whole(
                        &data[pos..pos + len],
                        crate::log::files::SEGMENT_HEADER_LEN + pos as u64,
                    )
                }) =>
            {
                ScanEnd::Damaged {
                    pos,
                    len,
                    reason: "crc32c mismatch in a frame written whole (damaged after it was written, not a torn write)",
                }
            }
            None => ScanEnd::Torn { pos, reason },
        };
        return Scan {
            valid_len: pos,
            frames,
            last_timestamp_ns: last_ts,
            end,
        };
    }
}

/// First position at or after `from` holding a valid frame for its implied offset.
pub fn find_valid_after(data: &[u8], base: u64, from: usize) -> Option<usize> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut q = from;
    while q + FRAME_HEADER_LEN <= data.len() {
        if data[q..q + 4] == magic
            && matches!(decode(&data[q..], base + q as u64), Decoded::Frame { .. })
        {
            return Some(q);
        }
        q += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole: no all-zero aligned sector inside, non-zero last byte. Zeros that do not
    /// cover a whole sector are data.
    #[test]
    fn written_whole_looks_for_unwritten_sectors() {
        let at = 100u64; // the frame starts 100 bytes into the file
        let mut f = vec![0xaau8; 2000];
        assert!(written_whole(&f, at));
        // File sector [512, 1024) is frame bytes [412, 924).
        f[412..923].fill(0);
        assert!(written_whole(&f, at), "511 zero bytes are not a sector");
        f[923] = 0;
        assert!(
            !written_whole(&f, at),
            "an unwritten sector inside the frame"
        );
        let mut f = vec![0xaau8; 2000];
        // [0, 412) starts before the frame: not a sector inside it.
        f[..412].fill(0);
        assert!(written_whole(&f, at));
        *f.last_mut().unwrap() = 0;
        assert!(!written_whole(&f, at), "ends in zero: may be torn");
        assert!(!written_whole(&[], at));
    }
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
                      base in 0u64..1 << 40, ts in any::<u64>()) {
            let mut buf = Vec::new();
            let mut offs = Vec::new();
            for r in &records {
                let at = base + buf.len() as u64;
                offs.push(at);
                encode_into(&mut buf, at, ts, r);
            }
            buf.extend_from_slice(&[0u8; 100]);
            let s = scan(&buf, base);
            prop_assert_eq!(s.end, ScanEnd::Clean);
            prop_assert_eq!(s.frames, records.len() as u64);
            let mut pos = 0usize;
            for (r, off) in records.iter().zip(&offs) {
                match decode(&buf[pos..], *off) {
                    Decoded::Frame { header, payload } => {
                        prop_assert_eq!(payload, &r[..]);
                        prop_assert_eq!(header.timestamp_ns.get(), ts);
                        pos += FRAME_HEADER_LEN + payload.len();
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
        }

        /// The committer's path: frames made unplaced by producers, stamped as one run,
        /// are byte for byte what framing each record at its offset gives.
        #[test]
        fn placing_a_run_of_unplaced_frames_equals_framing_each(
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20),
            base in 0u64..1 << 40, ts in any::<u64>()) {
            let mut want = Vec::new();
            for r in &records {
                let at = base + want.len() as u64;
                encode_into(&mut want, at, ts, r);
            }
            let mut got = vec![0xeeu8; 5];
            for r in &records {
                encode_unplaced_into(&mut got, r);
            }
            prop_assert_eq!(place(&mut got[5..], base, ts), records.len());
            prop_assert_eq!(&got[..5], &[0xeeu8; 5][..], "bytes before the run untouched");
            prop_assert_eq!(&got[5..], &want[..]);
        }

        #[test]
        fn any_single_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..200),
                                           bit in any::<usize>()) {
            let mut buf = Vec::new();
            encode_into(&mut buf, 4096, 7, &payload);
            let bit = bit % (buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            let d = decode(&buf, 4096);
            prop_assert!(!matches!(d, Decoded::Frame { .. }), "flip at bit {} accepted", bit);
        }

        #[test]
        fn truncation_is_incomplete(payload in proptest::collection::vec(1u8.., 1..200), cut in any::<usize>()) {
            let mut buf = Vec::new();
            encode_into(&mut buf, 0, 1, &payload);
            let cut = cut % buf.len();
            let d = decode(&buf[..cut], 0);
            prop_assert!(matches!(d, Decoded::Incomplete | Decoded::Zero), "{:?}", d);
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), off in any::<u64>()) {
            let _ = decode(&data, off);
            let _ = scan(&data, off);
        }
    }

    #[test]
    fn corruption_followed_by_valid_frames_is_reported() {
        let mut buf = Vec::new();
        for i in 0..3u8 {
            let at = buf.len() as u64;
            encode_into(&mut buf, at, 1, &[i; 10]);
        }
        buf[FRAME_HEADER_LEN + 42 + 3] ^= 0x10;
        let s = scan(&buf, 0);
        assert_eq!(s.valid_len, 42);
        assert!(
            matches!(
                s.end,
                ScanEnd::Corrupt {
                    pos: 42,
                    next_valid: 84,
                    ..
                }
            ),
            "{s:?}"
        );
        // Nothing valid after it, written whole: damage, not a torn tail.
        buf[84 + 35] ^= 1;
        let s = scan(&buf, 0);
        assert!(
            matches!(
                s.end,
                ScanEnd::Damaged {
                    pos: 42,
                    len: 42,
                    ..
                }
            ),
            "{s:?}"
        );
        // Its end zero (never written): torn.
        buf[83] = 0;
        let s = scan(&buf, 0);
        assert!(matches!(s.end, ScanEnd::Torn { pos: 42, .. }), "{s:?}");
    }
}
