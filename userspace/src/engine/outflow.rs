//! How far a sending thread is ahead of a connection's socket.
//!
//! A thread that produces frames faster than the socket drains them (a log subscription
//! replaying a backlog) would otherwise queue up to the connection's whole output limit
//! in the engine: megabytes per connection, held twice while buffers go round
//! (`docs/engine.md`), and each byte cold in memory by the time it is written. With an
//! [`OutGauge`] the sender sees the bytes it handed over that the socket has not taken yet
//! and waits, parked, while they exceed what it wants ahead; the engine wakes it as writes
//! complete.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread::Thread,
    time::Duration,
};

/// Bytes handed to the engine through [`super::EngineHandle::send_gauged`] versus bytes
/// the engine wrote to the connection's socket since. Shared by one sending thread and
/// the reactor.
#[derive(Debug)]
pub struct OutGauge {
    /// Wire bytes of the frames sent through the gauge.
    posted: AtomicU64,
    /// Bytes written to the socket (any frame) since the gauge's first frame was queued,
    /// plus the frames the engine dropped because the connection was no longer open.
    written: AtomicU64,
    /// The connection is gone: nothing more will be written.
    closed: AtomicBool,
    /// The sender is parked (or about to park) in [`OutGauge::wait_until_below`].
    waiting: AtomicBool,
    sender: Thread,
}

impl OutGauge {
    /// A gauge whose waiter is the calling thread (the only one that may call
    /// [`OutGauge::wait_until_below`]).
    pub fn for_this_thread() -> OutGauge {
        OutGauge {
            posted: AtomicU64::new(0),
            written: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            sender: std::thread::current(),
        }
    }

    /// Bytes handed over and not yet written. Small frames the engine sends on its own
    /// (keepalives) count as written, so this may run a little low, never high.
    pub fn unsent(&self) -> u64 {
        self.posted
            .load(Ordering::SeqCst)
            .saturating_sub(self.written.load(Ordering::SeqCst))
    }

    /// Whether the engine let go of the connection.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Parks the sender while more than `limit` bytes are unsent, for at most `timeout`
    /// (so it can look at its other work). `true` once at or below the limit, `false` on
    /// timeout or when the connection closed.
    pub fn wait_until_below(&self, limit: u64, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let below = loop {
            // Announce the wait before looking, so a write completing in between wakes us
            // (the unpark token is kept until the park).
            self.waiting.store(true, Ordering::SeqCst);
            if self.unsent() <= limit {
                break true;
            }
            let now = std::time::Instant::now();
            if self.is_closed() || now >= deadline {
                break false;
            }
            std::thread::park_timeout(deadline - now);
        };
        self.waiting.store(false, Ordering::SeqCst);
        below
    }

    /// Wakes the sender if it waits (a checkpoint or other work for it arrived).
    pub fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) {
            self.sender.unpark();
        }
    }

    pub(crate) fn posted(&self, n: usize) {
        self.posted.fetch_add(n as u64, Ordering::SeqCst);
    }

    /// The engine wrote `n` bytes of the connection's output (or dropped a gauged frame).
    pub(crate) fn wrote(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::SeqCst);
        self.wake();
    }

    /// The connection is gone; a waiting sender returns.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.sender.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::Arc, time::Instant};

    #[test]
    fn a_sender_waits_until_the_socket_takes_its_bytes() {
        let g = Arc::new(OutGauge::for_this_thread());
        g.posted(10 << 20);
        assert_eq!(g.unsent(), 10 << 20);
        // Nothing written: the wait times out.
        assert!(!g.wait_until_below(4 << 20, Duration::from_millis(20)));
        let writer = {
            let g = g.clone();
            std::thread::spawn(move || {
                for _ in 0..8 {
                    std::thread::sleep(Duration::from_millis(5));
                    g.wrote(1 << 20);
                }
            })
        };
        let t = Instant::now();
        assert!(g.wait_until_below(4 << 20, Duration::from_secs(30)));
        assert!(g.unsent() <= 4 << 20, "woke with {} unsent", g.unsent());
        assert!(t.elapsed() < Duration::from_secs(30));
        writer.join().expect("writer");
    }

    #[test]
    fn a_closed_connection_ends_the_wait() {
        let g = Arc::new(OutGauge::for_this_thread());
        g.posted(1 << 20);
        let closer = {
            let g = g.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                g.close();
            })
        };
        assert!(!g.wait_until_below(0, Duration::from_secs(30)));
        assert!(g.is_closed());
        closer.join().expect("closer");
    }

    #[test]
    fn other_frames_written_never_make_the_count_negative() {
        let g = OutGauge::for_this_thread();
        g.wrote(100);
        g.posted(50);
        assert_eq!(g.unsent(), 0);
    }
}
