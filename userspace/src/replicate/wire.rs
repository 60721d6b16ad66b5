//! Replication messages inside engine frames (service 1): a versioned fixed header
//! (zerocopy, big-endian), the object name, then `count` entries of
//! `key_len u16 ‖ key ‖ value i64`. Values are absolute (never increments), so a frame
//! applied twice or late changes nothing; the per-slot sequence number tells duplicates
//! and gaps apart. Layout table: `docs/replication.md`.

use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned,
    byteorder::big_endian::{I64, U16, U32, U64},
};

use crate::engine::{Frame, ServiceId};

/// Bumped on any incompatible change of [`ReplHeader`] or the entry layout.
pub const WIRE_VERSION: u8 = 1;
/// Frame kind: a full copy of the sender's slot (possibly in chunks).
pub const KIND_SNAPSHOT: u8 = 1;
/// Frame kind: the keys that changed since the previous frame of the slot.
pub const KIND_DELTA: u8 = 2;
/// Snapshot flag: first chunk (starts a fresh staging copy).
pub const FLAG_FIRST: u8 = 1;
/// Snapshot flag: last chunk (the staged copy replaces the slot).
pub const FLAG_LAST: u8 = 2;
/// Longest object name (`inbound_cidr`, a cache name …).
pub const MAX_NAME: usize = 64;
/// Longest key: a source address is 17 bytes, a domain fits easily.
pub const MAX_KEY: usize = 1024;
/// Payload budget of one frame; snapshots are cut into chunks below the engine's limit.
pub const CHUNK_BYTES: usize = 512 * 1024;

/// The fixed replication header at the start of every payload.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ReplHeader {
    pub version: u8,
    pub flags: u8,
    pub name_len: U16,
    pub count: U32,
    /// The sender's incarnation (start time in ns): a restarted daemon's slot replaces
    /// the old one, never mixes with it.
    pub boot: U64,
    pub seq: U64,
    /// Sender's wall clock when the frame was built (lag metric only, never trusted).
    pub sent_ns: U64,
}

/// Size of [`ReplHeader`] on the wire.
pub const REPL_HEADER_LEN: usize = size_of::<ReplHeader>();

/// Snapshot or delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgKind {
    Snapshot,
    Delta,
}

/// One decoded replication message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: MsgKind,
    pub flags: u8,
    pub object: String,
    pub boot: u64,
    pub seq: u64,
    pub sent_ns: u64,
    pub entries: Vec<(Vec<u8>, i64)>,
}

/// Why a replication frame is malformed; the link that sent it is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unknown replication frame kind {kind}")]
    Kind { kind: u8 },
    #[error("replication payload of {len} bytes is shorter than its {need}-byte header")]
    Short { len: usize, need: usize },
    #[error("unsupported replication wire version {found} (this node speaks {WIRE_VERSION})")]
    Version { found: u8 },
    #[error("object name of {len} bytes is empty, too long (max {MAX_NAME}) or not UTF-8")]
    Name { len: usize },
    #[error("entry {index}: {reason}")]
    Entry { index: u32, reason: &'static str },
    #[error("{extra} bytes after the last of {count} entries")]
    Trailing { extra: usize, count: u32 },
    #[error("flags {flags:#04x} are not valid for a {kind:?}")]
    Flags { flags: u8, kind: MsgKind },
}

/// Builds frames. `entries` must fit one frame: use [`encode_snapshot`] for whole slots.
pub fn encode(
    kind: MsgKind,
    flags: u8,
    object: &str,
    boot: u64,
    seq: u64,
    sent_ns: u64,
    entries: &[(&[u8], i64)],
) -> Frame {
    let name = &object.as_bytes()[..object.len().min(MAX_NAME)];
    let size: usize = entries.iter().map(|(k, _)| 10 + k.len()).sum();
    let mut p = Vec::with_capacity(REPL_HEADER_LEN + name.len() + size);
    let hdr = ReplHeader {
        version: WIRE_VERSION,
        flags,
        name_len: U16::new(name.len() as u16),
        count: U32::new(entries.len() as u32),
        boot: U64::new(boot),
        seq: U64::new(seq),
        sent_ns: U64::new(sent_ns),
    };
    p.extend_from_slice(hdr.as_bytes());
    p.extend_from_slice(name);
    for (k, v) in entries {
        let k = &k[..k.len().min(MAX_KEY)];
        p.extend_from_slice(U16::new(k.len() as u16).as_bytes());
        p.extend_from_slice(k);
        p.extend_from_slice(I64::new(*v).as_bytes());
    }
    let kind = match kind {
        MsgKind::Snapshot => KIND_SNAPSHOT,
        MsgKind::Delta => KIND_DELTA,
    };
    Frame::new(ServiceId::REPLICATION, kind, p)
}

/// A whole slot as one or more snapshot frames (FIRST on the first, LAST on the last;
/// an empty slot is one frame with both).
pub fn encode_snapshot(
    object: &str,
    boot: u64,
    seq: u64,
    sent_ns: u64,
    entries: &[(&[u8], i64)],
) -> Vec<Frame> {
    let mut chunks: Vec<&[(&[u8], i64)]> = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (k, _)) in entries.iter().enumerate() {
        let sz = 10 + k.len();
        if bytes + sz > CHUNK_BYTES && i > start {
            chunks.push(&entries[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += sz;
    }
    chunks.push(&entries[start..]);
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut flags = 0;
            if i == 0 {
                flags |= FLAG_FIRST;
            }
            if i + 1 == n {
                flags |= FLAG_LAST;
            }
            encode(MsgKind::Snapshot, flags, object, boot, seq, sent_ns, c)
        })
        .collect()
}

/// Parses a frame of the replication service; anything inconsistent is an error, never
/// a partial message.
pub fn decode(frame: &Frame) -> Result<Message, WireError> {
    let kind = match frame.kind {
        KIND_SNAPSHOT => MsgKind::Snapshot,
        KIND_DELTA => MsgKind::Delta,
        k => return Err(WireError::Kind { kind: k }),
    };
    let p = &frame.payload;
    let Ok((hdr, rest)) = ReplHeader::read_from_prefix(p) else {
        return Err(WireError::Short {
            len: p.len(),
            need: REPL_HEADER_LEN,
        });
    };
    if hdr.version != WIRE_VERSION {
        return Err(WireError::Version { found: hdr.version });
    }
    let flags = hdr.flags;
    let bad_flags = match kind {
        MsgKind::Delta => flags != 0,
        MsgKind::Snapshot => flags & !(FLAG_FIRST | FLAG_LAST) != 0,
    };
    if bad_flags {
        return Err(WireError::Flags { flags, kind });
    }
    let nl = usize::from(hdr.name_len.get());
    let name = rest
        .get(..nl)
        .filter(|n| !n.is_empty() && n.len() <= MAX_NAME)
        .and_then(|n| std::str::from_utf8(n).ok())
        .ok_or(WireError::Name { len: nl })?;
    let mut rest = &rest[nl..];
    let count = hdr.count.get();
    // Each entry takes at least 11 bytes: a hostile count cannot make us allocate.
    if (count as usize).saturating_mul(11) > rest.len() {
        return Err(WireError::Entry {
            index: 0,
            reason: "count exceeds the payload",
        });
    }
    let mut entries = Vec::with_capacity(count as usize);
    for index in 0..count {
        let Ok((kl, r)) = U16::read_from_prefix(rest) else {
            return Err(WireError::Entry {
                index,
                reason: "truncated key length",
            });
        };
        let kl = usize::from(kl.get());
        if kl == 0 || kl > MAX_KEY {
            return Err(WireError::Entry {
                index,
                reason: "key length is 0 or over the limit",
            });
        }
        let Some(key) = r.get(..kl) else {
            return Err(WireError::Entry {
                index,
                reason: "truncated key",
            });
        };
        let Ok((v, r)) = I64::read_from_prefix(&r[kl..]) else {
            return Err(WireError::Entry {
                index,
                reason: "truncated value",
            });
        };
        entries.push((key.to_vec(), v.get()));
        rest = r;
    }
    if !rest.is_empty() {
        return Err(WireError::Trailing {
            extra: rest.len(),
            count,
        });
    }
    Ok(Message {
        kind,
        flags,
        object: name.to_owned(),
        boot: hdr.boot.get(),
        seq: hdr.seq.get(),
        sent_ns: hdr.sent_ns.get(),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn refs(e: &[(Vec<u8>, i64)]) -> Vec<(&[u8], i64)> {
        e.iter().map(|(k, v)| (k.as_slice(), *v)).collect()
    }

    #[test]
    fn layout_is_fixed() {
        assert_eq!(REPL_HEADER_LEN, 32);
        let f = encode(MsgKind::Delta, 0, "ab", 1, 2, 3, &[(b"k", -1)]);
        assert_eq!(f.kind, KIND_DELTA);
        assert_eq!(f.service, ServiceId::REPLICATION);
        let p = &f.payload;
        assert_eq!(p[0], WIRE_VERSION);
        assert_eq!(&p[2..4], &[0, 2]);
        assert_eq!(&p[4..8], &[0, 0, 0, 1]);
        assert_eq!(&p[32..34], b"ab");
        assert_eq!(&p[34..36], &[0, 1]);
        assert_eq!(p[36], b'k');
        assert_eq!(&p[37..45], &(-1i64).to_be_bytes());
        assert_eq!(p.len(), 45);
    }

    #[test]
    fn snapshots_are_chunked_below_the_frame_limit() {
        let entries: Vec<(Vec<u8>, i64)> = (0..100_000u32)
            .map(|i| (i.to_be_bytes().to_vec(), i64::from(i)))
            .collect();
        let frames = encode_snapshot("obj", 7, 9, 0, &refs(&entries));
        assert!(frames.len() > 1);
        let mut got = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            assert!(f.payload.len() <= CHUNK_BYTES + 128);
            let m = decode(f).unwrap();
            assert_eq!(m.flags & FLAG_FIRST != 0, i == 0);
            assert_eq!(m.flags & FLAG_LAST != 0, i + 1 == frames.len());
            got.extend(m.entries);
        }
        assert_eq!(got, entries);
        let empty = encode_snapshot("obj", 7, 9, 0, &[]);
        assert_eq!(empty.len(), 1);
        assert_eq!(decode(&empty[0]).unwrap().flags, FLAG_FIRST | FLAG_LAST);
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let good = encode(MsgKind::Delta, 0, "obj", 1, 1, 0, &[(b"key", 5)]);
        let mut f = good.clone();
        f.kind = 9;
        assert_eq!(decode(&f), Err(WireError::Kind { kind: 9 }));
        let mut f = good.clone();
        f.payload[0] = 2;
        assert_eq!(decode(&f), Err(WireError::Version { found: 2 }));
        let mut f = good.clone();
        f.payload[1] = FLAG_FIRST;
        assert!(matches!(decode(&f), Err(WireError::Flags { .. })));
        let mut f = good.clone();
        f.payload.push(0);
        assert!(matches!(
            decode(&f),
            Err(WireError::Trailing { extra: 1, .. })
        ));
        let mut f = good.clone();
        f.payload.truncate(f.payload.len() - 1);
        assert!(matches!(decode(&f), Err(WireError::Entry { .. })));
        let mut f = good.clone();
        f.payload[7] = 200;
        assert!(matches!(decode(&f), Err(WireError::Entry { index: 0, .. })));
        let mut f = good.clone();
        f.payload[3] = 0;
        assert!(matches!(decode(&f), Err(WireError::Name { len: 0 })));
        let mut f = good;
        f.payload.truncate(10);
        assert!(matches!(decode(&f), Err(WireError::Short { .. })));
    }

    proptest! {
        /// Every message decodes to itself; arbitrary payloads never panic and a
        /// decoded message always re-encodes to the same bytes.
        #[test]
        fn roundtrip_and_garbage(
            snap in any::<bool>(),
            name in "[a-z_]{1,20}",
            boot in any::<u64>(), seq in any::<u64>(),
            entries in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 1..40), any::<i64>()), 0..50),
            garbage in proptest::collection::vec(any::<u8>(), 0..300),
            gkind in 0u8..4,
        ) {
            let kind = if snap { MsgKind::Snapshot } else { MsgKind::Delta };
            let flags = if snap { FLAG_FIRST | FLAG_LAST } else { 0 };
            let f = encode(kind, flags, &name, boot, seq, 5, &refs(&entries));
            let m = decode(&f).unwrap();
            prop_assert_eq!(&m.entries, &entries);
            prop_assert_eq!((m.boot, m.seq, m.object.as_str()), (boot, seq, name.as_str()));
            let g = Frame::new(ServiceId::REPLICATION, gkind, garbage);
            if let Ok(m) = decode(&g) {
                let again = encode(m.kind, m.flags, &m.object, m.boot, m.seq, m.sent_ns, &refs(&m.entries));
                prop_assert_eq!(again.payload, g.payload);
            }
        }
    }
}
