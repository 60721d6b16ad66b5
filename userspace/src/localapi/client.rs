//! A small blocking client for local programs (and `dp-api`).

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::protocol::{ErrorKind, MAX_LINE, Request, Response};

/// Why a local API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the local API at {path}: {source} (is the daemon running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("local API I/O: {source}")]
    Io {
        #[source]
        source: io::Error,
    },
    #[error("the daemon closed the connection without replying")]
    Closed,
    #[error("unreadable reply from the daemon: {reason}")]
    BadReply { reason: String },
    #[error("{message}")]
    Refused { kind: ErrorKind, message: String },
}

/// Outcome of a throttle check or consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleAnswer {
    pub allowed: bool,
    pub remaining: u64,
    pub local: i64,
}

/// One connection to the daemon's local API.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let io = |source| ClientError::Io { source };
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        let writer = s.try_clone().map_err(io)?;
        Ok(Client {
            reader: BufReader::new(s),
            writer,
        })
    }

    /// Sends one request and returns the reply, `ok` or not.
    pub fn raw(&mut self, req: &Request) -> Result<Response, ClientError> {
        let mut line = serde_json::to_string(req).map_err(|e| ClientError::BadReply {
            reason: e.to_string(),
        })?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| ClientError::Io { source })?;
        let mut buf = String::new();
        let n = (&mut self.reader)
            .take_line(&mut buf)
            .map_err(|source| ClientError::Io { source })?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        serde_json::from_str(buf.trim_end()).map_err(|e| ClientError::BadReply {
            reason: e.to_string(),
        })
    }

    /// Sends one request; an error reply becomes [`ClientError::Refused`].
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let r = self.raw(req)?;
        if r.ok {
            Ok(r)
        } else {
            Err(ClientError::Refused {
                kind: r.error.unwrap_or(ErrorKind::BadRequest),
                message: r.message.unwrap_or_default(),
            })
        }
    }

    pub fn ping(&mut self) -> Result<String, ClientError> {
        Ok(self.call(&Request::Ping)?.node.unwrap_or_default())
    }

    /// Returns `(local, cluster)` after the change.
    pub fn gauge_inc(&mut self, table: &str, key: &str, n: i64) -> Result<(i64, i64), ClientError> {
        let r = self.call(&Request::GaugeInc {
            table: table.into(),
            key: key.into(),
            n: Some(n),
        })?;
        Ok((r.local.unwrap_or(0), r.cluster.unwrap_or(0)))
    }

    pub fn gauge_dec(&mut self, table: &str, key: &str, n: i64) -> Result<(i64, i64), ClientError> {
        let r = self.call(&Request::GaugeDec {
            table: table.into(),
            key: key.into(),
            n: Some(n),
        })?;
        Ok((r.local.unwrap_or(0), r.cluster.unwrap_or(0)))
    }

    /// `(local, cluster)`.
    pub fn gauge_get(&mut self, table: &str, key: &str) -> Result<(i64, i64), ClientError> {
        let r = self.call(&Request::GaugeGet {
            table: table.into(),
            key: key.into(),
        })?;
        Ok((r.local.unwrap_or(0), r.cluster.unwrap_or(0)))
    }

    pub fn throttle_create(
        &mut self,
        name: &str,
        rate: &str,
        epsilon: Option<f64>,
    ) -> Result<(), ClientError> {
        self.call(&Request::ThrottleCreate {
            name: name.into(),
            rate: rate.into(),
            epsilon,
        })
        .map(drop)
    }

    fn throttle_answer(r: Response) -> ThrottleAnswer {
        ThrottleAnswer {
            allowed: r.allowed.unwrap_or(false),
            remaining: r.remaining.unwrap_or(0),
            local: r.local.unwrap_or(0),
        }
    }

    pub fn throttle_check(&mut self, name: &str) -> Result<ThrottleAnswer, ClientError> {
        let r = self.call(&Request::ThrottleCheck { name: name.into() })?;
        Ok(Self::throttle_answer(r))
    }

    pub fn throttle_consume(&mut self, name: &str, n: u64) -> Result<ThrottleAnswer, ClientError> {
        let r = self.call(&Request::ThrottleConsume {
            name: name.into(),
            n: Some(n),
        })?;
        Ok(Self::throttle_answer(r))
    }

    pub fn cache_get(&mut self, cache: &str, key: &str) -> Result<Option<String>, ClientError> {
        let r = self.call(&Request::CacheGet {
            cache: cache.into(),
            key: key.into(),
        })?;
        Ok(r.value)
    }

    pub fn cache_set(
        &mut self,
        cache: &str,
        key: &str,
        value: &str,
        ttl: &str,
    ) -> Result<(), ClientError> {
        self.call(&Request::CacheSet {
            cache: cache.into(),
            key: key.into(),
            value: value.into(),
            ttl: Some(ttl.into()),
        })
        .map(drop)
    }

    /// True if a live value was deleted.
    pub fn cache_delete(&mut self, cache: &str, key: &str) -> Result<bool, ClientError> {
        let r = self.call(&Request::CacheDelete {
            cache: cache.into(),
            key: key.into(),
        })?;
        Ok(r.deleted.unwrap_or(false))
    }

    pub fn inbound_count(&mut self, cidr: &str, addr: Option<&str>) -> Result<u64, ClientError> {
        let r = self.call(&Request::InboundCount {
            cidr: cidr.into(),
            addr: addr.map(Into::into),
        })?;
        Ok(r.count.unwrap_or(0))
    }

    /// Current outbound connections from the cluster to `cidr` ("/24" with `addr`,
    /// "addr/len", or an address).
    pub fn outbound_cidr_count(
        &mut self,
        cidr: &str,
        addr: Option<&str>,
    ) -> Result<u64, ClientError> {
        let r = self.call(&Request::OutboundCidrCount {
            cidr: cidr.into(),
            addr: addr.map(Into::into),
        })?;
        Ok(r.count.unwrap_or(0))
    }

    pub fn outbound_count(&mut self, domain: &str) -> Result<u64, ClientError> {
        let r = self.call(&Request::OutboundCount {
            domain: domain.into(),
        })?;
        Ok(r.count.unwrap_or(0))
    }
}

/// Reads one reply line, bounded (a broken daemon cannot make the client grow).
trait TakeLine {
    fn take_line(self, buf: &mut String) -> io::Result<usize>;
}

impl TakeLine for &mut BufReader<UnixStream> {
    fn take_line(self, buf: &mut String) -> io::Result<usize> {
        use std::io::Read;
        let mut bytes = Vec::new();
        let n = self
            .take(4 * MAX_LINE as u64)
            .read_until(b'\n', &mut bytes)?;
        *buf =
            String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(n)
    }
}
