//! The control-socket wire format (docs/console.md): one request line in, one framed reply
//! out. The frame header says where the reply ends and whether it is an error, so a client
//! never has to guess from the text.
//!
//! ```text
//! request:  <command words, UTF-8>\n                 (at most MAX_REQUEST_BYTES)
//! reply:    OK <len>\n<len bytes of UTF-8>   or   ERR <len>\n<len bytes of UTF-8>
//! ```

use std::{
    io::{self, BufRead, Read, Write},
    time::Duration,
};

/// Longest accepted request line, newline excluded.
pub const MAX_REQUEST_BYTES: usize = 4096;
/// Longest reply a client accepts (a sanity bound against a confused peer).
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;
/// A request must arrive complete within this time, and a reply be written within it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A framed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    pub body: String,
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Self {
        Self {
            ok: true,
            body: body.into(),
        }
    }

    pub fn err(body: impl Into<String>) -> Self {
        Self {
            ok: false,
            body: body.into(),
        }
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let tag = if self.ok { "OK" } else { "ERR" };
        let mut out = format!("{tag} {}\n", self.body.len()).into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }

    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())?;
        w.flush()
    }
}

/// Why a reply could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("connection error: {source}")]
    Io {
        #[from]
        source: io::Error,
    },
    #[error("the daemon closed the connection before replying")]
    Closed,
    #[error("malformed reply header {header:?}")]
    BadHeader { header: String },
    #[error("reply of {len} bytes exceeds the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("reply is not valid UTF-8")]
    NotUtf8,
}

/// Reads one framed reply.
pub fn read_reply(r: &mut impl BufRead) -> Result<Reply, ReplyError> {
    let mut header = Vec::new();
    // The header is short; bound it so garbage cannot make us buffer forever.
    let n = Read::take(&mut *r, 64).read_until(b'\n', &mut header)?;
    if n == 0 {
        return Err(ReplyError::Closed);
    }
    let text = String::from_utf8_lossy(&header).into_owned();
    let bad = || ReplyError::BadHeader {
        header: text.trim_end().to_owned(),
    };
    let line = text.strip_suffix('\n').ok_or_else(bad)?;
    let (tag, len) = line.split_once(' ').ok_or_else(bad)?;
    let ok = match tag {
        "OK" => true,
        "ERR" => false,
        _ => return Err(bad()),
    };
    let len: usize = len.parse().map_err(|_| bad())?;
    if len > MAX_REPLY_BYTES {
        return Err(ReplyError::TooLong {
            len,
            max: MAX_REPLY_BYTES,
        });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ReplyError::Closed
        } else {
            ReplyError::Io { source: e }
        }
    })?;
    let body = String::from_utf8(body).map_err(|_| ReplyError::NotUtf8)?;
    Ok(Reply { ok, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for reply in [Reply::ok("a\nb\n"), Reply::err(""), Reply::ok("héllo")] {
            let bytes = reply.encode();
            let got = read_reply(&mut &bytes[..]).unwrap();
            assert_eq!(got, reply);
        }
        assert_eq!(Reply::err("x").encode(), b"ERR 1\nx");
    }

    #[test]
    fn bad_headers() {
        assert!(matches!(
            read_reply(&mut &b"HELLO 3\nabc"[..]),
            Err(ReplyError::BadHeader { .. })
        ));
        assert!(matches!(
            read_reply(&mut &b"OK 10\nabc"[..]),
            Err(ReplyError::Closed)
        ));
        assert!(matches!(read_reply(&mut &b""[..]), Err(ReplyError::Closed)));
    }
}
