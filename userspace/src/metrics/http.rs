//! The scrape endpoint: `GET /metrics` only, one short-lived connection per scrape.
//!
//! Deliberately a small server on std sockets rather than tiny_http: tiny_http 0.12 has no
//! read/write timeouts and starts a thread per connection without a bound, so a slow or
//! hostile client could pile up threads in the daemon. Here every connection has a
//! deadline, requests are bounded in size, and concurrent connections are capped.

use super::Metrics;
use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// Concurrent scrape connections; more are closed at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Whole-request deadline and write timeout.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest accepted request head.
pub const MAX_HEAD_BYTES: usize = 8192;
/// The OpenMetrics text content type prometheus-client produces.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the metrics thread: {source}")]
    Spawn {
        #[source]
        source: io::Error,
    },
}

/// A bound metrics listener, not yet serving (bound before the privilege drop).
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsServer {
    pub fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(Self { listener, addr })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn spawn(self, metrics: Metrics) -> Result<MetricsServerHandle, MetricsError> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let listener = self.listener;
        let thread = thread::Builder::new()
            .name("metrics-accept".into())
            .spawn(move || accept_loop(listener, metrics, thread_stop))
            .map_err(|source| MetricsError::Spawn { source })?;
        Ok(MetricsServerHandle {
            addr: self.addr,
            stop,
            thread: Some(thread),
        })
    }
}

/// A running metrics endpoint; stops on `stop()` or drop.
#[derive(Debug)]
pub struct MetricsServerHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl MetricsServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the blocking accept() with a connection to ourselves.
        let mut target = self.addr;
        if target.ip().is_unspecified() {
            target.set_ip(match target {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        let woke = TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok();
        if let Some(t) = self.thread.take()
            && woke
        {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: TcpListener, metrics: Metrics, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let conn = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match conn {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped: closed at once
        }
        let slot = Slot(Arc::clone(&active));
        let metrics = metrics.clone();
        let spawned = thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve(stream, &metrics);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a metrics connection thread");
        }
    }
}

enum Head {
    Complete(String),
    TooLarge,
    Incomplete,
}

fn read_head(stream: &mut TcpStream) -> Head {
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Head::Complete(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Head::TooLarge;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Head::Incomplete;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Head::Incomplete,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Head::Incomplete,
        }
    }
}

fn respond(stream: &mut TcpStream, status: &str, extra: &str, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush());
}

/// Reads (bounded) what the client still sends after an early answer, so closing does not
/// turn into a reset that could destroy the answer before the client reads it.
fn drain(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = Read::take(&mut *stream, 1 << 20).read_to_end(&mut Vec::new());
}

fn serve(mut stream: TcpStream, metrics: &Metrics) {
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let text = "text/plain; charset=utf-8";
    let head = match read_head(&mut stream) {
        Head::Complete(h) => h,
        Head::TooLarge => {
            respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "",
                text,
                b"",
            );
            return drain(&mut stream);
        }
        Head::Incomplete => return respond(&mut stream, "408 Request Timeout", "", text, b""),
    };
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return respond(
            &mut stream,
            "400 Bad Request",
            "",
            text,
            b"bad request line\n",
        );
    };
    if !version.starts_with("HTTP/1.") {
        return respond(&mut stream, "400 Bad Request", "", text, b"HTTP/1.x only\n");
    }
    if method != "GET" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "Allow: GET\r\n",
            text,
            b"only GET\n",
        );
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return respond(&mut stream, "404 Not Found", "", text, b"try /metrics\n");
    }
    match metrics.encode() {
        Ok(body) => respond(&mut stream, "200 OK", "", CONTENT_TYPE, body.as_bytes()),
        Err(_) => respond(
            &mut stream,
            "500 Internal Server Error",
            "",
            text,
            b"encoding failed\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_404_405_and_stops() {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let h = server.spawn(Metrics::new()).unwrap();
        let addr = h.local_addr();
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE));
        assert!(ok.contains("duraplane_build_info{"));
        assert!(get(addr, b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let post = get(addr, b"POST /metrics HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET"));
        let big = vec![b'a'; MAX_HEAD_BYTES + 2048];
        assert!(get(addr, &big).starts_with("HTTP/1.1 431"));
        h.stop();
        assert!(TcpStream::connect(addr).is_err());
    }
}
