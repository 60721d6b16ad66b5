//! The Corosync side of the bus: one thread owns every handle.
//!
//! rust-corosync callbacks are plain function pointers, not closures, so they find their
//! way back to the right [`Bus`](super::Bus) through a static table keyed by the handle's
//! context value (set with `context_set`; the `context` argument of `initialize` is not
//! passed through correctly by rust-corosync 3.2.0).

use std::{
    collections::{HashMap, VecDeque},
    io::{Read, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    sync::{
        LazyLock, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, Sender, TryRecvError},
    },
    time::Duration,
};

use rust_corosync::{CsError, DispatchFlags, NodeId, cpg as rcpg, quorum as rq};

use super::{BusEvent, LeaveReason, MemberId, RingId};

/// Requests from [`Bus`](super::Bus) to the bus thread.
pub(super) enum Outgoing {
    Send { group: String, payload: Vec<u8> },
    Stop,
}

/// Most messages held while corosync applies flow control; beyond it the oldest are
/// dropped and counted.
const MAX_PENDING: usize = 10_000;

static ROUTES: LazyLock<Mutex<HashMap<u64, Sender<BusEvent>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
static NEXT_CONTEXT: AtomicU64 = AtomicU64::new(1);

fn route(context: u64, event: BusEvent) {
    if let Ok(routes) = ROUTES.lock()
        && let Some(tx) = routes.get(&context)
    {
        let _ = tx.send(event);
    }
}

fn member(a: &rcpg::Address) -> MemberId {
    MemberId {
        nodeid: u32::from(a.nodeid),
        pid: a.pid,
    }
}

fn deliver_cb(h: &rcpg::Handle, group: String, nodeid: NodeId, pid: u32, msg: &[u8], _len: usize) {
    if let Ok(ctx) = rcpg::context_get(h) {
        route(
            ctx,
            BusEvent::Message {
                group,
                from: MemberId {
                    nodeid: u32::from(nodeid),
                    pid,
                },
                payload: msg.to_vec(),
            },
        );
    }
}

fn confchg_cb(
    h: &rcpg::Handle,
    group: &str,
    members: Vec<rcpg::Address>,
    left: Vec<rcpg::Address>,
    joined: Vec<rcpg::Address>,
) {
    let Ok(ctx) = rcpg::context_get(h) else {
        return;
    };
    let mut members: Vec<MemberId> = members.iter().map(member).collect();
    members.sort();
    route(
        ctx,
        BusEvent::View {
            group: group.to_owned(),
            members,
            joined: joined.iter().map(member).collect(),
            left: left
                .iter()
                .map(|a| {
                    let reason = match a.reason {
                        rcpg::Reason::Leave => LeaveReason::Left,
                        rcpg::Reason::NodeDown => LeaveReason::NodeDown,
                        rcpg::Reason::ProcDown => LeaveReason::ProcDown,
                        _ => LeaveReason::Other,
                    };
                    (member(a), reason)
                })
                .collect(),
        },
    );
}

/// The group whose connection reports totem ring changes, per context (the callback only
/// gets the handle, and only the cluster group's handle registers it).
static RING_GROUP: LazyLock<Mutex<HashMap<u64, String>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn totem_cb(h: &rcpg::Handle, ring: rcpg::RingId, nodes: Vec<NodeId>) {
    let Ok(ctx) = rcpg::context_get(h) else {
        return;
    };
    let Some(group) = RING_GROUP.lock().ok().and_then(|g| g.get(&ctx).cloned()) else {
        return;
    };
    let mut nodes: Vec<u32> = nodes.into_iter().map(u32::from).collect();
    nodes.sort_unstable();
    route(
        ctx,
        BusEvent::Ring {
            group,
            ring: RingId {
                seq: ring.seq,
                rep: u32::from(ring.nodeid),
            },
            nodes,
        },
    );
}

fn quorum_cb(h: &rq::Handle, quorate: bool, ring: rq::RingId, nodes: Vec<NodeId>) {
    if let Ok(ctx) = rq::context_get(h) {
        let mut nodes: Vec<u32> = nodes.into_iter().map(u32::from).collect();
        nodes.sort_unstable();
        let ring = RingId {
            seq: ring.seq,
            rep: u32::from(ring.nodeid),
        };
        route(
            ctx,
            BusEvent::Quorum {
                quorate,
                ring: Some(ring),
                nodes,
            },
        );
    }
}

/// The handles of one connection to the local corosync.
struct Connection {
    groups: Vec<(String, rcpg::Handle)>,
    quorum: Option<rq::Handle>,
}

fn connect(groups: &[String], ctx: u64) -> Result<(Connection, u32), String> {
    // Only the cluster group's connection reports totem ring changes: they pair its views
    // with the quorum verdicts (DuraVIP), and ordering only holds within one connection.
    // rust-corosync 3.2.0 passes no model flags, so CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF
    // is unavailable: the first ring id arrives with the first ring change after joining.
    let model_for = |ring: bool| {
        rcpg::ModelData::ModelV1(rcpg::Model1Data {
            flags: rcpg::Model1Flags::None,
            deliver_fn: Some(deliver_cb),
            confchg_fn: Some(confchg_cb),
            totem_confchg_fn: if ring { Some(totem_cb) } else { None },
        })
    };
    if let (Some(g), Ok(mut rg)) = (groups.first(), RING_GROUP.lock()) {
        rg.insert(ctx, g.clone());
    }
    let mut conn = Connection {
        groups: Vec::new(),
        quorum: None,
    };
    let mut nodeid = 0;
    for (i, g) in groups.iter().enumerate() {
        let h = rcpg::initialize(&model_for(i == 0), ctx)
            .map_err(|e| format!("cpg initialize: {e} (is corosync running?)"))?;
        rcpg::context_set(&h, ctx).map_err(|e| format!("cpg context_set: {e}"))?;
        nodeid = rcpg::local_get(&h)
            .map(u32::from)
            .map_err(|e| format!("cpg local_get: {e}"))?;
        rcpg::join(&h, g).map_err(|e| format!("cpg join `{g}`: {e}"))?;
        conn.groups.push((g.clone(), h));
    }
    let qmodel = rq::ModelData::ModelV1(rq::Model1Data {
        flags: rq::Model1Flags::None,
        quorum_notification_fn: Some(quorum_cb),
        nodelist_notification_fn: None,
    });
    // Quorum is optional (corosync without votequorum): the bus works without it.
    // Tracking changes also delivers the current state (with its ring id) at once.
    if let Ok((qh, _)) = rq::initialize(&qmodel, ctx)
        && rq::context_set(&qh, ctx).is_ok()
        && rq::trackstart(&qh, rust_corosync::TrackFlags::Changes).is_ok()
    {
        if let Ok(q) = rq::getquorate(&qh) {
            route(
                ctx,
                BusEvent::Quorum {
                    quorate: q,
                    ring: None,
                    nodes: Vec::new(),
                },
            );
        }
        conn.quorum = Some(qh);
    }
    Ok((conn, nodeid))
}

enum Ended {
    Stop,
    Lost(String),
}

/// Wakes the bus thread when [`Bus::send`](super::Bus::send) queued something.
pub(super) struct Waker(UnixStream);

impl Waker {
    pub(super) fn wake(&self) {
        let _ = (&self.0).write(&[1]);
    }
}

pub(super) fn waker_pair() -> std::io::Result<(Waker, UnixStream)> {
    let (a, b) = UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((Waker(a), b))
}

fn poll_fds(fds: &mut [libc::pollfd], timeout: Duration) -> bool {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a valid slice of pollfd for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    n > 0
}

fn serve(
    conn: &Connection,
    wake_rx: &mut UnixStream,
    out: &Receiver<Outgoing>,
    pending: &mut VecDeque<(String, Vec<u8>)>,
) -> Ended {
    let mut fds: Vec<libc::pollfd> = Vec::new();
    for (g, h) in &conn.groups {
        match rcpg::fd_get(h) {
            Ok(fd) => fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            }),
            Err(e) => return Ended::Lost(format!("cpg fd for `{g}`: {e}")),
        }
    }
    let quorum_fd = conn.quorum.as_ref().and_then(|q| rq::fd_get(q).ok());
    if let Some(fd) = quorum_fd {
        fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    fds.push(libc::pollfd {
        fd: wake_rx.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        for f in fds.iter_mut() {
            f.revents = 0;
        }
        // With messages held back by flow control, retry them soon.
        let timeout = if pending.is_empty() {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(5)
        };
        poll_fds(&mut fds, timeout);
        for (i, (g, h)) in conn.groups.iter().enumerate() {
            let rev = fds[i].revents;
            if rev & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                return Ended::Lost(format!("corosync closed the connection for `{g}`"));
            }
            if rev & libc::POLLIN != 0
                && let Err(e) = rcpg::dispatch(h, DispatchFlags::All)
            {
                return Ended::Lost(format!("cpg dispatch for `{g}`: {e}"));
            }
        }
        if let (Some(q), Some(_)) = (&conn.quorum, quorum_fd) {
            let rev = fds[conn.groups.len()].revents;
            if rev & libc::POLLIN != 0 {
                let _ = rq::dispatch(q, DispatchFlags::All);
            }
        }
        let mut buf = [0u8; 256];
        while matches!(wake_rx.read(&mut buf), Ok(n) if n > 0) {}
        loop {
            match out.try_recv() {
                Ok(Outgoing::Send { group, payload }) => {
                    if pending.len() >= MAX_PENDING {
                        pending.pop_front();
                        tracing::warn!(
                            "bus: flow-control backlog full, dropped the oldest message"
                        );
                    }
                    pending.push_back((group, payload));
                }
                Ok(Outgoing::Stop) | Err(TryRecvError::Disconnected) => return Ended::Stop,
                Err(TryRecvError::Empty) => break,
            }
        }
        while let Some((group, payload)) = pending.front() {
            let Some((_, h)) = conn.groups.iter().find(|(g, _)| g == group) else {
                pending.pop_front();
                continue;
            };
            match rcpg::mcast_joined(h, rcpg::Guarantee::TypeAgreed, payload) {
                Ok(()) => {
                    pending.pop_front();
                }
                Err(CsError::CsErrTryAgain) => break,
                Err(e) => return Ended::Lost(format!("cpg send to `{group}`: {e}")),
            }
        }
    }
}

/// The bus thread: connect, serve until lost, retry; until told to stop.
pub(super) fn run(
    groups: Vec<String>,
    retry: Duration,
    events: Sender<BusEvent>,
    out: Receiver<Outgoing>,
    mut wake_rx: UnixStream,
) {
    let ctx = NEXT_CONTEXT.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut r) = ROUTES.lock() {
        r.insert(ctx, events.clone());
    }
    let mut pending = VecDeque::new();
    let mut last_error: Option<String> = None;
    loop {
        match connect(&groups, ctx) {
            Ok((conn, nodeid)) => {
                last_error = None;
                tracing::info!(nodeid, groups = ?groups, "bus: connected to corosync");
                let _ = events.send(BusEvent::Connected { nodeid });
                let ended = serve(&conn, &mut wake_rx, &out, &mut pending);
                if matches!(ended, Ended::Stop) {
                    // A clean leave tells the others at once that this was deliberate.
                    for (g, h) in &conn.groups {
                        let _ = rcpg::leave(h, g);
                    }
                }
                drop(conn);
                match ended {
                    Ended::Stop => break,
                    Ended::Lost(reason) => {
                        tracing::warn!(%reason, "bus: lost corosync; retrying");
                        let _ = events.send(BusEvent::Disconnected { reason });
                    }
                }
            }
            Err(reason) => {
                if last_error.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(%reason, "bus: cannot connect to corosync; retrying");
                    let _ = events.send(BusEvent::Disconnected {
                        reason: reason.clone(),
                    });
                    last_error = Some(reason);
                }
            }
        }
        // While disconnected, messages cannot be ordered with the cluster: drop them.
        let deadline = std::time::Instant::now() + retry;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match out.recv_timeout(left) {
                Ok(Outgoing::Send { group, .. }) => {
                    tracing::debug!(%group, "bus: disconnected, message dropped");
                }
                Ok(Outgoing::Stop) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    forget(ctx);
                    return;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
            }
        }
        pending.clear();
    }
    forget(ctx);
}

/// Drops the bus's routes when its thread ends.
fn forget(ctx: u64) {
    if let Ok(mut r) = ROUTES.lock() {
        r.remove(&ctx);
    }
    if let Ok(mut r) = RING_GROUP.lock() {
        r.remove(&ctx);
    }
}
