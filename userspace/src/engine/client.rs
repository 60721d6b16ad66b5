//! A blocking client for port 4802 (tools, tests, the log subscriber): connect,
//! authenticate as initiator, then send and receive frames.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use super::{
    auth::{AuthError, ClusterKey, Handshake, Role, Step, kind},
    frame::{DEFAULT_MAX_FRAME, Frame, FrameDecoder, FrameError, ServiceId},
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("I/O with {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("from {addr}: {source}")]
    Frame {
        addr: SocketAddr,
        #[source]
        source: FrameError,
    },
    #[error("authenticating with {addr}: {source}")]
    Auth {
        addr: SocketAddr,
        #[source]
        source: AuthError,
    },
    #[error("{addr} closed the connection")]
    Closed { addr: SocketAddr },
}

/// An authenticated connection to an engine.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    dec: FrameDecoder,
    peer_name: String,
}

impl Client {
    /// Connects and authenticates; `timeout` bounds the connect and each read.
    pub fn connect(
        addr: SocketAddr,
        key: &ClusterKey,
        nodename: &str,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| ClientError::Connect { addr, source })?;
        let io = |source| ClientError::Io { addr, source };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        Client::handshake(stream, key, nodename)
    }

    /// Authenticates over an already connected stream.
    pub fn handshake(
        stream: TcpStream,
        key: &ClusterKey,
        nodename: &str,
    ) -> Result<Client, ClientError> {
        let addr = stream.peer_addr().map_err(|source| ClientError::Connect {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let mut c = Client {
            stream,
            addr,
            dec: FrameDecoder::new(DEFAULT_MAX_FRAME),
            peer_name: String::new(),
        };
        let (mut hs, hello) = Handshake::start(Role::Initiator, nodename);
        c.send(&hello)?;
        loop {
            let f = c.recv_raw()?;
            match hs.on_frame(key, &f) {
                Ok(Step::Send(reply)) => c.send(&reply)?,
                Ok(Step::Done { peer_name }) => {
                    c.peer_name = peer_name;
                    return Ok(c);
                }
                Err(source) => return Err(ClientError::Auth { addr, source }),
            }
        }
    }

    /// The engine's nodename, as it authenticated.
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn send(&mut self, f: &Frame) -> Result<(), ClientError> {
        self.stream
            .write_all(&f.encode())
            .map_err(|source| ClientError::Io {
                addr: self.addr,
                source,
            })
    }

    /// Keeps the engine's idle deadline from closing a quiet client.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        self.send(&Frame::new(ServiceId::ENGINE, kind::PING, Vec::new()))
    }

    /// The next service frame (engine keepalives are skipped).
    pub fn recv(&mut self) -> Result<Frame, ClientError> {
        loop {
            let f = self.recv_raw()?;
            if f.service == ServiceId::ENGINE && f.kind == kind::PING {
                continue;
            }
            return Ok(f);
        }
    }

    fn recv_raw(&mut self) -> Result<Frame, ClientError> {
        let addr = self.addr;
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(f) = self
                .dec
                .next_frame()
                .map_err(|source| ClientError::Frame { addr, source })?
            {
                return Ok(f);
            }
            let n = match self.stream.read(&mut buf) {
                Ok(0) => return Err(ClientError::Closed { addr }),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Err(ClientError::Closed { addr });
                }
                Err(source) => return Err(ClientError::Io { addr, source }),
            };
            self.dec.extend(&buf[..n]);
        }
    }
}
