//! Wire framing on port 4802: a fixed 12-byte header (zerocopy, network byte order)
//! followed by `length` bytes of payload.
//!
//! The header is validated before any payload is buffered, so a hostile length is
//! refused after 12 bytes instead of after the engine has allocated for it.

use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned, byteorder::big_endian::U32,
};

/// `"DPLN"`: lets a stray client (HTTP, SMTP, a port scanner) be told apart from a
/// peer speaking another version.
pub const MAGIC: u32 = 0x4450_4C4E;
/// Bumped on any incompatible change of the header or the handshake.
pub const VERSION: u8 = 1;
/// Default largest payload accepted: a replication snapshot chunk or a log batch fits;
/// anything larger is a bug or an attack.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;

/// The fixed frame header, exactly as on the wire.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct FrameHeader {
    pub magic: U32,
    pub version: u8,
    /// Which service the frame belongs to ([`ServiceId`]); 0 is the engine itself.
    pub service: u8,
    /// Message type within the service.
    pub kind: u8,
    /// Service-defined; the engine passes them through.
    pub flags: u8,
    /// Payload length in bytes (header excluded).
    pub length: U32,
}

/// Size of [`FrameHeader`] on the wire.
pub const HEADER_LEN: usize = size_of::<FrameHeader>();

/// A service number carried in the header; services register under one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId(pub u8);

impl ServiceId {
    /// The engine's own messages (handshake, keepalive). Not registrable.
    pub const ENGINE: ServiceId = ServiceId(0);
    /// Counter replication (later work).
    pub const REPLICATION: ServiceId = ServiceId(1);
    /// The log service (later work).
    pub const LOG: ServiceId = ServiceId(2);
}

/// One frame: header fields plus an owned payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub service: ServiceId,
    pub kind: u8,
    pub flags: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(service: ServiceId, kind: u8, payload: Vec<u8>) -> Self {
        Frame {
            service,
            kind,
            flags: 0,
            payload,
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.encode_header_into(out);
        out.extend_from_slice(&self.payload);
    }

    /// Appends the frame's header alone (its payload follows on the wire).
    pub fn encode_header_into(&self, out: &mut Vec<u8>) {
        let hdr = FrameHeader {
            magic: U32::new(MAGIC),
            version: VERSION,
            service: self.service.0,
            kind: self.kind,
            flags: self.flags,
            length: U32::new(self.payload.len() as u32),
        };
        out.extend_from_slice(hdr.as_bytes());
    }

    /// The encoded frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_into(&mut v);
        v
    }

    /// Wire size.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Why a byte stream is not a valid frame sequence. Any of these closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad frame magic {found:#010x} (expected {MAGIC:#010x}): not a Duraplane peer")]
    BadMagic { found: u32 },
    #[error("unsupported frame version {found} (this node speaks {VERSION})")]
    BadVersion { found: u8 },
    #[error("frame payload of {length} bytes exceeds the limit of {max} bytes")]
    Oversized { length: u32, max: u32 },
}

/// Validates a header.
pub fn check_header(hdr: &FrameHeader, max_frame: u32) -> Result<(), FrameError> {
    if hdr.magic.get() != MAGIC {
        return Err(FrameError::BadMagic {
            found: hdr.magic.get(),
        });
    }
    if hdr.version != VERSION {
        return Err(FrameError::BadVersion { found: hdr.version });
    }
    if hdr.length.get() > max_frame {
        return Err(FrameError::Oversized {
            length: hdr.length.get(),
            max: max_frame,
        });
    }
    Ok(())
}

/// A frame being received straight into its payload ([`FrameDecoder::take_partial`]).
#[derive(Debug)]
pub struct PartialFrame {
    /// Its payload holds the bytes received so far (capacity for all of them).
    pub frame: Frame,
    /// The payload's full length.
    pub len: usize,
}

/// Incremental decoder: feed bytes as they arrive, take whole frames out.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    pos: usize,
    max_frame: u32,
}

impl FrameDecoder {
    pub fn new(max_frame: u32) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            pos: 0,
            max_frame,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// A frame of at least `min` payload bytes whose header is in but whose payload is
    /// not: taken out of this buffer with the payload bytes received so far, so that the
    /// caller reads the rest straight into the payload (bulk frames then skip two copies,
    /// through a read buffer and through this one). The payload goes into one of
    /// `spares` when there is one (its contents are dropped): a consumer that hands its
    /// buffers back does not fault in fresh memory for every frame. `Ok(None)`: no such
    /// frame.
    pub fn take_partial(
        &mut self,
        min: usize,
        spares: &mut Vec<Vec<u8>>,
    ) -> Result<Option<PartialFrame>, FrameError> {
        let avail = &self.buf[self.pos..];
        let Ok((hdr, rest)) = FrameHeader::read_from_prefix(avail) else {
            return Ok(None);
        };
        check_header(&hdr, self.max_frame)?;
        let len = hdr.length.get() as usize;
        if len < min || rest.len() >= len {
            return Ok(None);
        }
        let mut payload = spares.pop().unwrap_or_default();
        payload.clear();
        payload.reserve_exact(len);
        payload.extend_from_slice(rest);
        self.buf.clear();
        self.pos = 0;
        Ok(Some(PartialFrame {
            frame: Frame {
                service: ServiceId(hdr.service),
                kind: hdr.kind,
                flags: hdr.flags,
                payload,
            },
            len,
        }))
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed. A header is checked as
    /// soon as its 12 bytes are in, before its payload arrives.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let avail = &self.buf[self.pos..];
        let Ok((hdr, rest)) = FrameHeader::read_from_prefix(avail) else {
            return Ok(None);
        };
        check_header(&hdr, self.max_frame)?;
        let len = hdr.length.get() as usize;
        if rest.len() < len {
            return Ok(None);
        }
        let payload = rest[..len].to_vec();
        self.pos += HEADER_LEN + len;
        Ok(Some(Frame {
            service: ServiceId(hdr.service),
            kind: hdr.kind,
            flags: hdr.flags,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_12_bytes_big_endian() {
        let f = Frame::new(ServiceId(7), 3, vec![1, 2, 3]);
        let b = f.encode();
        assert_eq!(HEADER_LEN, 12);
        assert_eq!(&b[..4], b"DPLN");
        assert_eq!(b[4], VERSION);
        assert_eq!(b[5], 7);
        assert_eq!(b[6], 3);
        assert_eq!(&b[8..12], &[0, 0, 0, 3]);
        assert_eq!(&b[12..], &[1, 2, 3]);
    }

    #[test]
    fn decoder_handles_split_and_coalesced_input() {
        let a = Frame::new(ServiceId(1), 1, vec![9; 100]);
        let b = Frame::new(ServiceId(2), 2, vec![]);
        let mut wire = a.encode();
        wire.extend(b.encode());
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut got = Vec::new();
        for chunk in wire.chunks(5) {
            d.extend(chunk);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![a, b]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn decoder_rejects_bad_headers_before_payload() {
        let mut d = FrameDecoder::new(16);
        d.extend(&Frame::new(ServiceId(1), 1, vec![0; 17]).encode()[..HEADER_LEN]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::Oversized {
                length: 17,
                max: 16
            })
        );
        let mut d = FrameDecoder::new(16);
        d.extend(b"GET / HTTP/1.1\r\n");
        assert!(matches!(d.next_frame(), Err(FrameError::BadMagic { .. })));
        let mut bytes = Frame::new(ServiceId(1), 1, vec![]).encode();
        bytes[4] = 9;
        let mut d = FrameDecoder::new(16);
        d.extend(&bytes);
        assert_eq!(d.next_frame(), Err(FrameError::BadVersion { found: 9 }));
    }

    proptest::proptest! {
        /// Any frame sequence, cut anywhere, decodes to itself; arbitrary bytes never
        /// panic the decoder and never yield a frame over the limit.
        #[test]
        fn decode_roundtrip_and_garbage(
            frames in proptest::collection::vec(
                (0u8..=255, 0u8..=255, 0u8..=255, proptest::collection::vec(0u8..=255, 0..300)),
                0..8,
            ),
            cut in 1usize..64,
            garbage in proptest::collection::vec(0u8..=255, 0..512),
        ) {
            let frames: Vec<Frame> = frames
                .into_iter()
                .map(|(s, k, fl, p)| Frame { service: ServiceId(s), kind: k, flags: fl, payload: p })
                .collect();
            let wire: Vec<u8> = frames.iter().flat_map(|f| f.encode()).collect();
            let mut d = FrameDecoder::new(300);
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                d.extend(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            proptest::prop_assert_eq!(got, frames);
            let mut d = FrameDecoder::new(100);
            d.extend(&garbage);
            while let Ok(Some(f)) = d.next_frame() {
                proptest::prop_assert!(f.payload.len() <= 100);
            }
        }
    }
}
