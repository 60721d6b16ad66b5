//! A blocking client for port 4802 (tools, tests, the log subscriber): connect,
//! authenticate as initiator, then send and receive frames.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use super::{
    auth::{AuthError, ClusterKey, Handshake, Role, Step, kind},
    frame::{DEFAULT_MAX_FRAME, Frame, FrameDecoder, FrameError, PartialFrame, ServiceId},
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
    /// A large frame whose payload is being read straight from the socket; kept across
    /// a read timeout, so a slow sender never desynchronises the stream.
    partial: Option<PartialFrame>,
    /// Payload buffers handed back ([`Client::recycle`]) for the next large frames.
    spares: Vec<Vec<u8>>,
    peer_name: String,
}

/// Payloads at least this large are read straight into their frame.
const DIRECT_PAYLOAD: usize = 64 << 10;
/// At most this many payload buffers are kept for reuse.
const MAX_SPARES: usize = 16;

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
            partial: None,
            spares: Vec::new(),
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

    /// Hands back a received frame's payload, for the payload of a later large frame: a
    /// consumer that keeps up reads into the same few buffers instead of fresh memory
    /// for every frame (whose page faults were a quarter of a manager's receiving).
    /// Small buffers, and more than a few, are just dropped.
    pub fn recycle(&mut self, mut payload: Vec<u8>) {
        if payload.capacity() >= DIRECT_PAYLOAD && self.spares.len() < MAX_SPARES {
            payload.clear();
            self.spares.push(payload);
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
        let closed_or_io = |e: io::Error| {
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ) {
                ClientError::Closed { addr }
            } else {
                ClientError::Io { addr, source: e }
            }
        };
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(p) = &mut self.partial {
                let missing = (p.len - p.frame.payload.len()) as u64;
                // Bytes read before an error (a timeout) stay in the payload.
                match (&self.stream)
                    .take(missing)
                    .read_to_end(&mut p.frame.payload)
                {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(closed_or_io(e)),
                }
                match self.partial.take_if(|p| p.frame.payload.len() == p.len) {
                    Some(p) => return Ok(p.frame),
                    // End of stream before the frame's end.
                    None => return Err(ClientError::Closed { addr }),
                }
            }
            if let Some(f) = self
                .dec
                .next_frame()
                .map_err(|source| ClientError::Frame { addr, source })?
            {
                return Ok(f);
            }
            self.partial = self
                .dec
                .take_partial(DIRECT_PAYLOAD, &mut self.spares)
                .map_err(|source| ClientError::Frame { addr, source })?;
            if self.partial.is_some() {
                continue;
            }
            let n = match self.stream.read(&mut buf) {
                Ok(0) => return Err(ClientError::Closed { addr }),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(closed_or_io(e)),
            };
            self.dec.extend(&buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// The server side of a test: accepts one client and authenticates it.
    fn accept(l: &TcpListener, key: &ClusterKey) -> TcpStream {
        let (mut s, _) = l.accept().unwrap();
        let (mut hs, hello) = Handshake::start(Role::Acceptor, "srv");
        s.write_all(&hello.encode()).unwrap();
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut buf = [0u8; 4096];
        while !hs.is_done() {
            let f = loop {
                if let Some(f) = dec.next_frame().unwrap() {
                    break f;
                }
                let n = s.read(&mut buf).unwrap();
                dec.extend(&buf[..n]);
            };
            if let Step::Send(r) = hs.on_frame(key, &f).unwrap() {
                s.write_all(&r.encode()).unwrap();
            }
        }
        s
    }

    /// A payload handed back receives the next large frame (no fresh memory per frame),
    /// and that frame arrives whole and unmixed with the old contents.
    #[test]
    fn a_recycled_payload_receives_the_next_large_frame() {
        let key = ClusterKey::from_bytes(b"client-test-key-0123456789abcdef").unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let first = Frame::new(ServiceId(9), 4, vec![0xaa; 300_000]);
        let second = Frame::new(ServiceId(9), 4, (0..200_000u32).map(|i| i as u8).collect());
        let (a, b, k) = (first.clone(), second.clone(), key.clone());
        let server = std::thread::spawn(move || {
            let mut s = accept(&l, &k);
            s.write_all(&a.encode()).unwrap();
            // The second only once the first is in and handed back.
            let mut go = [0u8; 1];
            s.read_exact(&mut go).unwrap();
            s.write_all(&b.encode()).unwrap();
            let _ = s.read(&mut go);
        });
        let mut c = Client::connect(addr, &key, "cli", Duration::from_secs(5)).unwrap();
        let got = c.recv().unwrap();
        assert_eq!(got, first);
        let at = got.payload.as_ptr();
        c.recycle(got.payload);
        c.stream().write_all(b"g").unwrap();
        let got = c.recv().unwrap();
        assert_eq!(got, second);
        // A fresh buffer would hold exactly the 200,000 bytes.
        assert!(
            got.payload.capacity() >= 300_000,
            "a fresh buffer, not the handed-back one"
        );
        assert_eq!(got.payload.as_ptr(), at, "the handed-back buffer was used");
        drop(c);
        server.join().unwrap();
    }

    /// A large frame that arrives in two parts, with a pause longer than the client's read
    /// timeout between them: the first `recv` times out, the second returns the frame
    /// whole, and the frame after it is intact (the stream stays in step).
    #[test]
    fn large_frame_survives_a_read_timeout_mid_payload() {
        let key = ClusterKey::from_bytes(b"client-test-key-0123456789abcdef").unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let big = Frame::new(ServiceId(9), 4, (0..300_000u32).map(|i| i as u8).collect());
        let small = Frame::new(ServiceId(9), 5, b"after".to_vec());
        let (b, sm, k) = (big.clone(), small.clone(), key.clone());
        let server = std::thread::spawn(move || {
            let mut s = accept(&l, &k);
            let mut buf = [0u8; 4096];
            let wire = b.encode();
            s.write_all(&wire[..100_000]).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            s.write_all(&wire[100_000..]).unwrap();
            s.write_all(&sm.encode()).unwrap();
            // Held open until the client has read everything.
            let _ = s.read(&mut buf);
        });
        let mut c = Client::connect(addr, &key, "cli", Duration::from_secs(5)).unwrap();
        c.stream()
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        match c.recv() {
            Err(ClientError::Io { source, .. }) => assert!(
                matches!(
                    source.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "{source}"
            ),
            other => panic!("expected a timeout mid-frame, got {other:?}"),
        }
        assert!(c.partial.is_some(), "the part received is kept");
        c.stream()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(c.recv().unwrap(), big);
        assert_eq!(c.recv().unwrap(), small);
        drop(c);
        server.join().unwrap();
    }
}
