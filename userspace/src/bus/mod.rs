//! The cluster bus: membership views and agreed-order messages from Corosync CPG.
//!
//! Momentum used Spread (extended virtual synchrony); Corosync 3's CPG is its maintained
//! successor with the same guarantees: every member sees the same sequence of views and the
//! same messages in the same order. The daemon joins `cluster_group` (views, DuraVIP),
//! `control_group` (cluster-wide console commands) and, when set, `log_group` (paniclog
//! broadcast), each on its own CPG handle.
//!
//! Corosync may be absent, stop or restart: the bus then reports [`BusEvent::Disconnected`]
//! and keeps retrying once a second; the daemon keeps counting with what it knows and never
//! needs a restart for it.

mod cpg;
pub mod membership;
mod service;

pub use service::{
    BusService, ClusterHandle, ClusterNotice, ServiceError, broadcast_paniclog,
    paniclog_broadcast_enabled,
};

use std::{
    fmt,
    sync::mpsc::{Receiver, Sender},
    time::Duration,
};

/// One process in a CPG group: Corosync's node id and the process id on that node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct MemberId {
    pub nodeid: u32,
    pub pid: u32,
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.nodeid, self.pid)
    }
}

/// Corosync's totem ring id: names one ring configuration. A new one is formed on every
/// ring change (a node lost or joined, a partition, a heal); a daemon leaving its group
/// while its corosync lives is *not* a ring change. CPG (totem confchg) and the quorum
/// service tag what they report with it, which is how the two notifications of one ring
/// change are paired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RingId {
    /// The ring sequence number (grows with every ring formed).
    pub seq: u64,
    /// The node id of the ring's representative.
    pub rep: u32,
}

impl fmt::Display for RingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.rep, self.seq)
    }
}

/// Why a member left a group, as Corosync reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The process left or exited while its corosync lived: reported at once.
    Left,
    /// Its node (or the link to it) is gone: reported after token + consensus timeouts.
    NodeDown,
    /// The process died.
    ProcDown,
    Other,
}

/// What the bus tells the daemon, in the order Corosync delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// Connected to the local corosync; `nodeid` is this node's id.
    Connected { nodeid: u32 },
    /// A new view of `group`: the same sequence of views at every member.
    View {
        group: String,
        members: Vec<MemberId>,
        joined: Vec<MemberId>,
        left: Vec<(MemberId, LeaveReason)>,
    },
    /// A message multicast to `group`, in agreed order.
    Message {
        group: String,
        from: MemberId,
        payload: Vec<u8>,
    },
    /// A totem ring configuration, as seen on `group`'s CPG connection (only the
    /// cluster group's connection reports them). Corosync delivers it after the group
    /// views of the same ring change, so once it is here the view is the ring's.
    Ring {
        group: String,
        ring: RingId,
        nodes: Vec<u32>,
    },
    /// Corosync's quorum state changed (or was first read); `ring` is the ring the
    /// verdict is about (`None` when corosync did not say, e.g. a plain `getquorate`).
    Quorum {
        quorate: bool,
        ring: Option<RingId>,
        nodes: Vec<u32>,
    },
    /// Lost (or could not reach) the local corosync; retrying.
    Disconnected { reason: String },
}

/// Which groups to join.
#[derive(Debug, Clone)]
pub struct BusConfig {
    pub cluster_group: String,
    pub control_group: String,
    pub log_group: Option<String>,
    /// How long to wait between reconnection attempts.
    pub retry_interval: Duration,
}

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("not connected to corosync")]
    NotConnected,
    #[error("group `{group}` is not one the bus joined")]
    UnknownGroup { group: String },
    #[error("message of {len} bytes exceeds the bus limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("the bus thread has stopped")]
    Stopped,
    #[error("cannot start the bus thread: {source}")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
}

/// Largest payload the bus accepts. Sized for the largest agreed-order message the daemon
/// sends: a member's `Announce` with 4,096 IPv6 DuraVIP declarations is about 400 KiB
/// (libcpg fragments large messages; corosync ≥ 2.3.5 carries them). Bulk data (counters,
/// logs) goes point to point over port 4802, never over the ring.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// A running bus: a thread that owns the Corosync handles.
pub struct Bus {
    outgoing: Sender<cpg::Outgoing>,
    waker: cpg::Waker,
    thread: Option<std::thread::JoinHandle<()>>,
    groups: Vec<String>,
}

impl Bus {
    /// Starts the bus thread; events arrive on the returned receiver.
    pub fn start(config: BusConfig) -> Result<(Bus, Receiver<BusEvent>), BusError> {
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        let (out_tx, out_rx) = std::sync::mpsc::channel();
        let mut groups = vec![config.cluster_group.clone(), config.control_group.clone()];
        if let Some(g) = &config.log_group {
            groups.push(g.clone());
        }
        let thread_groups = groups.clone();
        let retry = config.retry_interval;
        let (waker, wake_rx) = cpg::waker_pair().map_err(|source| BusError::Spawn { source })?;
        let thread = std::thread::Builder::new()
            .name("bus".into())
            .spawn(move || cpg::run(thread_groups, retry, events_tx, out_rx, wake_rx))
            .map_err(|source| BusError::Spawn { source })?;
        Ok((
            Bus {
                outgoing: out_tx,
                waker,
                thread: Some(thread),
                groups,
            },
            events_rx,
        ))
    }

    /// Multicasts `payload` to `group` in agreed order. Queued if corosync applies flow
    /// control; dropped (and logged) if the bus is disconnected when it is sent.
    pub fn send(&self, group: &str, payload: Vec<u8>) -> Result<(), BusError> {
        if !self.groups.iter().any(|g| g == group) {
            return Err(BusError::UnknownGroup {
                group: group.to_owned(),
            });
        }
        if payload.len() > MAX_MESSAGE {
            return Err(BusError::TooLarge {
                len: payload.len(),
                max: MAX_MESSAGE,
            });
        }
        self.outgoing
            .send(cpg::Outgoing::Send {
                group: group.to_owned(),
                payload,
            })
            .map_err(|_| BusError::Stopped)?;
        self.waker.wake();
        Ok(())
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.outgoing.send(cpg::Outgoing::Stop);
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
