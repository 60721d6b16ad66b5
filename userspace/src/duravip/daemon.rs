//! DuraVIP as a daemon capability: follows the bus, computes owners with [`assign`],
//! plumbs and announces what this node owns, answers the `cluster duravip …` and
//! `cluster arp show` commands and exports metrics. docs/duravip.md "Running it".
//!
//! Agreement. Every input of [`assign`] comes from agreed-order bus traffic: the view,
//! each member's declarations (its announce), and the current owners, which are the
//! latest `DuravipClaim` per address (members claim what they own after every view
//! change and every change of their set). A member only places unowned VIPs once every
//! live member has claimed since the last view ("settled"), so a newcomer never grabs a
//! VIP somebody still holds. Balancing is decided by the leader alone and multicast as
//! `DuravipMove { balance: true }`, so old and new owner switch on the same message.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};

use super::{
    announce::{PACE, PACE_VIPS, PacketSocket, Scheduler, Targets, frames},
    assign::{AssignInput, Assignment, MemberDecls, MoveReason, VipDecl, assign},
    decl::{DeclError, topology_for, validate},
    plumb::{PlumbError, Plumber, Reconciler, Trigger},
    show::{ShowContext, render},
};
use crate::{
    bpf::{AnnounceMethod, AttachedMode},
    bus::{
        BusService, ClusterHandle, ClusterNotice, MemberId, RingId,
        membership::{AnnouncedVip, BusMessage},
    },
    config::{Config, model::Topology},
    console::{ConsoleError, RegisterError},
    daemon::Services,
    inbound::InboundService,
};

/// Loop period: hung members and maturity are judged on the clock, not on events.
const TICK: Duration = Duration::from_millis(20);
/// A loop gap longer than this means this process was stopped: release-only for a while.
const STALL: Duration = Duration::from_millis(500);
const STALL_GRACE: Duration = Duration::from_secs(1);
/// Shortest NIC lease: renewals come from a loop that may lag by a tick or two under load,
/// and a lease that flaps would make the NIC drop ARP for a healthy owner.
const MIN_LEASE: Duration = Duration::from_millis(200);

/// Why DuraVIP could not start.
#[derive(Debug, thiserror::Error)]
pub enum DuravipError {
    #[error("DuraVIP: cannot manage interface addresses: {source}")]
    Plumb {
        #[source]
        source: PlumbError,
    },
    #[error("DuraVIP configuration refused ({} error{}):\n{}", .errors.len(), if .errors.len() == 1 { "" } else { "s" }, .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid { errors: Vec<DeclError> },
    #[error("cannot register DuraVIP console commands: {0}")]
    Register(#[from] RegisterError),
    #[error("cannot start the DuraVIP thread: {source}")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
}

/// Startup work done before joining the cluster: a clean slate and a valid configuration.
pub struct Prepared {
    plumber: Plumber,
    /// Write end of the reaper's pipe: held for the life of the service (see [`spawn_reaper`]).
    reaper: Option<OwnedFd>,
}

/// Forks a small process that waits for this one to end and then removes every tagged
/// DuraVIP address of the namespace. After a kill -9 the XDP link closes with the daemon
/// (nothing answers at the NIC any more) but the kernel would keep answering ARP/NS for
/// the still-plumbed VIPs, claiming addresses another node has taken over. After a clean
/// stop there is nothing left to remove. Returns the pipe end to hold.
///
/// Must run before any thread exists (it forks). The child keeps only CAP_NET_ADMIN, closes
/// every other descriptor, and leaves the process group so a signal to the daemon's group
/// (a SIGSTOP of the daemon, a group kill) does not stop its cleanup.
fn spawn_reaper() -> std::io::Result<OwnedFd> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors we own.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fork; the child only makes plain syscalls, netlink requests and `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid > 0 {
        drop(rd);
        return Ok(wr);
    }
    // Child.
    drop(wr);
    let r = rd.as_raw_fd();
    // SAFETY: plain syscalls on descriptors this process owns; `_exit` never returns.
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        for fd in 0..r {
            if fd > 2 {
                libc::close(fd);
            }
        }
        libc::syscall(libc::SYS_close_range, r + 1, u32::MAX, 0);
        // Nor the daemon's stdio: whoever reads the daemon's output sees EOF when it ends.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
        let name = b"duraplane-vip\0";
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
    }
    let keep: caps::CapsHashSet = [caps::Capability::CAP_NET_ADMIN].into_iter().collect();
    let _ = caps::set(None, caps::CapSet::Effective, &keep);
    let _ = caps::set(None, caps::CapSet::Permitted, &keep);
    let _ = caps::set(None, caps::CapSet::Inheritable, &caps::CapsHashSet::new());
    let mut b = [0u8; 1];
    loop {
        // SAFETY: one-byte read into a valid buffer.
        let n = unsafe { libc::read(r, b.as_mut_ptr().cast(), 1) };
        if n == 0
            || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted)
        {
            break;
        }
    }
    if let Ok(mut p) = Plumber::new() {
        let _ = p.remove_orphans();
    }
    // SAFETY: ends the child without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(0) }
}

impl Prepared {
    /// Removes orphaned DuraVIP addresses (tagged ones a previous run left) and checks
    /// the node-level rules. Errors refuse the start; `None` when no DuraVIP is declared
    /// and netlink is unusable (DuraVIP then stays off).
    pub fn new(cfg: &Config) -> Result<Option<Prepared>, DuravipError> {
        let mut plumber = match Plumber::new() {
            Ok(p) => p,
            Err(e) if cfg.duravips.is_empty() => {
                tracing::info!(error = %e, "DuraVIP off: no netlink and no DuraVIP declared");
                return Ok(None);
            }
            Err(source) => return Err(DuravipError::Plumb { source }),
        };
        for a in plumber
            .remove_orphans()
            .map_err(|source| DuravipError::Plumb { source })?
        {
            tracing::info!(addr = %a.addr, ifindex = a.index, "DuraVIP: removed orphaned address");
        }
        let main = plumber
            .main_addresses()
            .map_err(|source| DuravipError::Plumb { source })?;
        let errors = validate(&cfg.duravips, &cfg.cluster.topology, &main);
        if !errors.is_empty() {
            return Err(DuravipError::Invalid { errors });
        }
        if let Some(advice) = super::decl::address_plan_advice(&cfg.duravips) {
            tracing::warn!("DuraVIP: {advice}");
        }
        let reaper = if cfg.duravips.is_empty() {
            None
        } else {
            spawn_reaper()
                .inspect_err(|e| tracing::warn!(error = %e, "DuraVIP: no reaper process: after a crash the VIPs stay plumbed until the next start"))
                .ok()
        };
        Ok(Some(Prepared { plumber, reaper }))
    }
}

#[derive(Clone)]
struct Settings {
    nodename: String,
    topology: Vec<Topology>,
    mature: Duration,
    balance_interval: Duration,
    balance_set: u32,
    check_interval: Duration,
    down_limit: u32,
    arp_all_hosts: bool,
    hb_timeout: Duration,
    /// How long the NIC answers ARP/NS for our VIPs without a renewal (see `start`).
    lease: Duration,
}

/// What `cluster info` and the metrics say about where DuraVIP meets the NIC.
#[derive(Default)]
struct NicStatus {
    /// Interfaces with `xdp_ingress` attached that are Topology interfaces.
    xdp_ifaces: Vec<String>,
    /// VIPs in the program's `VIPS` map (answered at the NIC while the lease is fresh).
    answered: usize,
    /// How the latest announcement left.
    method: Option<AnnounceMethod>,
    last_error: Option<String>,
}

#[derive(Default)]
struct ShowState {
    assignment: Option<Assignment>,
    view_order: Vec<String>,
    view_age: Duration,
    config_since: BTreeMap<IpAddr, Instant>,
}

#[derive(Clone, Default)]
struct Counters {
    owned: Gauge<i64, AtomicI64>,
    moves: Counter<u64, AtomicU64>,
    announcements: Counter<u64, AtomicU64>,
    plumb_errors: Counter<u64, AtomicU64>,
    /// Announcement frames by method (`xdp_live_frames`, `af_packet`).
    frames_by_method: Family<Vec<(String, String)>, Counter>,
    /// VIPs answered at the NIC (in `VIPS`).
    nic_vips: Gauge<i64, AtomicI64>,
    nic_errors: Counter<u64, AtomicU64>,
}

struct Shared {
    handle: ClusterHandle,
    set: Settings,
    show: Mutex<ShowState>,
    reannounce: AtomicBool,
    /// A configuration reload happened: re-announce and drop pins that no longer apply.
    reloaded: AtomicBool,
    stop: AtomicBool,
    counters: Counters,
    nic: Mutex<NicStatus>,
}

/// The running capability; [`DuravipService::stop`] unplumbs everything this node owns.
pub struct DuravipService {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl DuravipService {
    /// Starts following `bus`, registers the console commands and metrics. With `inbound`
    /// (the attached XDP datapath) VIPs on its interfaces are answered and announced at the
    /// NIC under a lease; without it the kernel answers and AF_PACKET announces.
    pub fn start(
        prepared: Prepared,
        services: &Services,
        cfg: &Config,
        bus: &BusService,
        inbound: Option<&InboundService>,
    ) -> Result<DuravipService, DuravipError> {
        let handle = bus.cluster_handle();
        let notices = handle.watch();
        let c = &cfg.cluster;
        // The same figure the membership judges silence by, so this node stops answering
        // at the NIC when the others may start taking its VIPs over, not before.
        let hb_timeout = crate::bus::membership::HeartbeatPolicy {
            per_sec: c.heartbeats_per_sec,
            start_delay: c.heartbeat_start_delay,
        }
        .hung_after();
        let set = Settings {
            nodename: services.identity.nodename.clone(),
            topology: c.topology.clone(),
            mature: c.view_mature_time,
            balance_interval: c.view_balance_interval.max(Duration::from_millis(100)),
            balance_set: c.duravip_balance_set_size.max(1),
            check_interval: c.if_check_interval.max(Duration::from_millis(100)),
            down_limit: c.if_down_limit,
            arp_all_hosts: c.arp_all_hosts,
            hb_timeout,
            // `hung_after` (three heartbeat intervals plus the stall tolerance): the time
            // after which the others judge this node hung and take its VIPs over. Shorter would make a loaded but healthy owner go
            // silent at the NIC before anyone replaces it; longer would leave two nodes
            // answering ARP after a takeover.
            lease: hb_timeout.max(MIN_LEASE),
        };
        let nic = inbound
            .map(|i| {
                let attached: BTreeMap<&str, AttachedMode> = i
                    .attachments()
                    .iter()
                    .map(|(n, m)| (n.as_str(), *m))
                    .collect();
                let ifaces: BTreeMap<String, AttachedMode> = c
                    .topology
                    .iter()
                    .filter_map(|t| {
                        attached
                            .get(t.interface.as_str())
                            .map(|m| (t.interface.clone(), *m))
                    })
                    .collect();
                (i.clone(), ifaces)
            })
            .filter(|(_, ifaces)| !ifaces.is_empty());
        let shared = Arc::new(Shared {
            handle,
            set: set.clone(),
            show: Mutex::new(ShowState::default()),
            reannounce: AtomicBool::new(false),
            reloaded: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            nic: Mutex::new(NicStatus {
                xdp_ifaces: nic
                    .as_ref()
                    .map(|(_, f)| f.keys().cloned().collect())
                    .unwrap_or_default(),
                ..NicStatus::default()
            }),
        });
        register(services, &shared)?;
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("duravip".into())
            .spawn(move || {
                // Held until this thread ends: the reaper cleans up only once it is gone.
                let _reaper = prepared.reaper;
                let mut w = Worker::new(s, prepared.plumber, notices);
                w.nic = nic.map(|(inbound, ifaces)| Nic {
                    inbound,
                    ifaces,
                    entries: BTreeMap::new(),
                    live_refused: BTreeSet::new(),
                    next_renew: Instant::now(),
                });
                w.run();
            })
            .map_err(|source| DuravipError::Spawn { source })?;
        Ok(DuravipService {
            shared,
            thread: Some(thread),
        })
    }

    /// Stops the thread after releasing every owned VIP (the others take them over).
    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn decl_from(a: &AnnouncedVip) -> VipDecl {
    VipDecl {
        addr: a.addr,
        bindings: a.bindings.iter().cloned().collect(),
        services: a.services.iter().cloned().collect(),
        preference: a.preference.clone(),
        follow: a.follow.clone(),
    }
}

/// One consistent read of the membership.
struct Snapshot {
    connected: bool,
    quorate: bool,
    local: Option<MemberId>,
    view: Vec<MemberId>,
    /// The view without hung members, announced or not yet.
    effective: Vec<MemberId>,
    live: Vec<(MemberId, String, Vec<AnnouncedVip>)>,
    leader: Option<MemberId>,
    view_age: Duration,
    rings: Rings,
}

fn snapshot(h: &ClusterHandle, now: Instant) -> Snapshot {
    h.read(|ms| {
        let eff = ms.effective_view(now);
        let live = ms
            .members(now)
            .into_iter()
            .filter(|m| eff.contains(&m.id))
            .filter_map(|m| m.announce.map(|a| (m.id, a.nodename, a.vips)))
            .collect();
        let effective = eff;
        Snapshot {
            connected: ms.connected(),
            // No quorum service (corosync without votequorum) counts as quorate.
            quorate: ms.connected() && ms.quorate() != Some(false),
            local: ms.local(),
            view: ms.cluster_view().to_vec(),
            effective,
            live,
            leader: ms.leader(now),
            view_age: ms.view_age(now),
            rings: Rings {
                ring: ms.ring(),
                pending: ms.ring_pending(),
                quorum_ring: ms.quorum_ring(),
                has_quorum: ms.quorate().is_some(),
            },
        }
    })
}

struct Worker {
    sh: Arc<Shared>,
    plumber: Plumber,
    rec: Reconciler,
    sched: Scheduler,
    notices: Receiver<ClusterNotice>,
    /// Latest claimer per address, in agreed order.
    claim_owner: BTreeMap<IpAddr, MemberId>,
    claims: BTreeMap<MemberId, BTreeSet<IpAddr>>,
    /// Members that claimed since the last view.
    fresh: BTreeSet<MemberId>,
    pins: BTreeMap<IpAddr, String>,
    owned: BTreeSet<IpAddr>,
    last_claim: Option<(BTreeSet<IpAddr>, Vec<MemberId>, u64)>,
    /// Views seen: members re-claim after each (the barrier `fresh` counts from).
    view_gen: u64,
    next_balance: Instant,
    next_check: Instant,
    stalled_until: Option<Instant>,
    sockets: BTreeMap<String, PacketSocket>,
    decls_seen: BTreeMap<IpAddr, Vec<VipDecl>>,
    /// The attached XDP datapath, when a Topology interface runs it.
    nic: Option<Nic>,
    /// Interface name → (MAC, ifindex), looked up once per interface.
    links: BTreeMap<String, ([u8; 6], u32)>,
    /// No announcement before this (pacing).
    next_pace: Instant,
    /// The latest `assign` input and answer (recomputed only when the input changes).
    last_assign: Option<(AssignInput, Assignment)>,
    /// Whether the view and the quorum verdict are about the same ring (else take nothing new).
    pairing: RingPairing,
}

/// How long the view and the quorum verdict may stay unpaired before DuraVIP trusts the
/// quorum flag anyway (and warns): corosync always sends both within milliseconds, so this
/// only guards against a ring id that never comes (a corosync that does not send it).
const RING_WAIT: Duration = Duration::from_secs(5);

/// What the membership knows about rings, read under one lock with the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Rings {
    /// The latest totem ring on the cluster group's CPG connection.
    ring: Option<RingId>,
    /// The current view lost a node after that ring: its own ring is still to come.
    pending: bool,
    /// The ring the quorum flag is about.
    quorum_ring: Option<RingId>,
    /// Whether corosync runs a quorum service at all (else there is nothing to pair).
    has_quorum: bool,
}

impl Rings {
    /// Whether the quorum flag is about the ring of the view being judged. Corosync reports
    /// a ring change through two connections: on the CPG one the views, then the totem
    /// ring; on the quorum one the verdict tagged with the same ring id; the two orders
    /// interleave freely. Before the CPG connection named any ring (rust-corosync cannot
    /// ask for the initial one) the view is taken to be of the quorum's ring. A daemon
    /// leaving or dying is no ring change: the view changes, the rings stay paired.
    fn paired(&self) -> bool {
        !self.has_quorum || (!self.pending && self.ring.or(self.quorum_ring) == self.quorum_ring)
    }
}

/// Pairs the view with the quorum verdict about the same ring (see [`Rings::paired`]).
/// While they are unpaired this node takes nothing new; a verdict of "not quorate" still
/// releases everything at once, whatever ring it is about.
#[derive(Debug, Default)]
struct RingPairing {
    /// Since when the view and the verdict have been unpaired.
    unpaired_since: Option<Instant>,
    warned: bool,
}

impl RingPairing {
    /// Whether the quorum flag may not be trusted for the view (take nothing new). Only
    /// after `wait` of being unpaired does the flag count anyway, with a warning.
    fn judge(&mut self, rings: Rings, now: Instant, wait: Duration) -> bool {
        let show = |r: Option<RingId>| r.map_or_else(|| "none".to_owned(), |r| r.to_string());
        if rings.paired() {
            if let Some(since) = self.unpaired_since.take() {
                tracing::info!(
                    ring = %show(rings.quorum_ring),
                    held_ms = now.saturating_duration_since(since).as_millis() as u64,
                    "DuraVIP: view and quorum verdict paired again"
                );
            }
            self.warned = false;
            return false;
        }
        let since = match self.unpaired_since {
            Some(t) => t,
            None => {
                tracing::info!(
                    view_ring = %show(rings.ring),
                    view_ring_pending = rings.pending,
                    quorum_ring = %show(rings.quorum_ring),
                    "DuraVIP: view and quorum verdict about different rings; taking nothing new"
                );
                *self.unpaired_since.insert(now)
            }
        };
        if now.saturating_duration_since(since) < wait {
            return true;
        }
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                view_ring = %show(rings.ring),
                view_ring_pending = rings.pending,
                quorum_ring = %show(rings.quorum_ring),
                waited_ms = wait.as_millis() as u64,
                "DuraVIP: corosync never paired the view with a quorum verdict; trusting the quorum flag as it is"
            );
        }
        false
    }
}

/// DuraVIP at the NIC: the inbound datapath answers ARP/NS for owned VIPs from `VIPS` while
/// the lease this loop renews is fresh, and transmits announcements as live frames.
struct Nic {
    inbound: InboundService,
    /// Topology interfaces the program is attached to, with the mode it got.
    ifaces: BTreeMap<String, AttachedMode>,
    /// What we put into `VIPS`: address → ifindex.
    entries: BTreeMap<IpAddr, u32>,
    /// Interfaces where the kernel refused live frames: AF_PACKET from then on.
    live_refused: BTreeSet<String>,
    next_renew: Instant,
}

impl Worker {
    fn new(sh: Arc<Shared>, plumber: Plumber, notices: Receiver<ClusterNotice>) -> Self {
        let now = Instant::now();
        Worker {
            rec: Reconciler::new(sh.set.down_limit),
            sched: Scheduler::new(Some(Duration::from_secs(30))),
            claim_owner: BTreeMap::new(),
            claims: BTreeMap::new(),
            fresh: BTreeSet::new(),
            pins: BTreeMap::new(),
            owned: BTreeSet::new(),
            last_claim: None,
            view_gen: 0,
            next_balance: now + sh.set.balance_interval,
            next_check: now + sh.set.check_interval,
            stalled_until: None,
            sockets: BTreeMap::new(),
            decls_seen: BTreeMap::new(),
            nic: None,
            links: BTreeMap::new(),
            next_pace: now,
            last_assign: None,
            pairing: RingPairing::default(),
            sh,
            plumber,
            notices,
        }
    }

    fn run(&mut self) {
        let mut last = Instant::now();
        while !self.sh.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self
                .sched
                .next_deadline()
                .map(|d| d.max(self.next_pace))
                .map_or(TICK, |d| d.saturating_duration_since(now).min(TICK));
            match self.notices.recv_timeout(wait) {
                Ok(n) => self.on_notice(n),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(n) = self.notices.try_recv() {
                self.on_notice(n);
            }
            let now = Instant::now();
            if now.duration_since(last) > STALL.max(self.sh.set.hb_timeout) {
                tracing::warn!(
                    gap_ms = now.duration_since(last).as_millis() as u64,
                    "DuraVIP: this process was stalled; only releasing for a moment"
                );
                self.stalled_until = Some(now + STALL_GRACE.max(self.sh.set.hb_timeout * 2));
            }
            last = now;
            self.step(now);
            self.renew_lease(now);
            self.announce_due(now);
        }
        // Orderly stop: release everything at once, and the NIC stops answering now
        // rather than when the lease runs out.
        self.apply(&BTreeSet::new(), Trigger::Election, Instant::now());
        if let Some(n) = &self.nic
            && let Err(e) = n.inbound.with_datapath(|dp| dp.revoke_lease())
        {
            tracing::warn!(error = %e, "DuraVIP: cannot revoke the NIC lease");
        }
        self.send(&BusMessage::DuravipClaim { owned: Vec::new() });
    }

    /// Keeps the NIC answering for our VIPs: renewed every quarter lease, never while this
    /// process is catching up after a stall (then its VIPs may already be someone else's;
    /// answers resume once the loop has re-decided what it owns).
    fn renew_lease(&mut self, now: Instant) {
        let stalled = self.stalled_until.is_some_and(|t| now < t);
        let lease = self.sh.set.lease;
        let Some(n) = &mut self.nic else { return };
        if stalled || now < n.next_renew {
            return;
        }
        n.next_renew = now + lease / 4;
        if let Err(e) = n.inbound.with_datapath(|dp| dp.renew_lease(lease)) {
            tracing::warn!(error = %e, "DuraVIP: cannot renew the NIC lease");
            self.sh.counters.nic_errors.inc();
        }
    }

    /// Interface MAC and ifindex, cached.
    fn link(&mut self, ifname: &str) -> Result<([u8; 6], u32), String> {
        if let Some(l) = self.links.get(ifname) {
            return Ok(*l);
        }
        let link = self
            .plumber
            .link(ifname)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no interface {ifname}"))?;
        let mut mac = [0u8; 6];
        if link.mac.len() == 6 {
            mac.copy_from_slice(&link.mac);
        }
        self.links.insert(ifname.to_owned(), (mac, link.index));
        Ok((mac, link.index))
    }

    /// Makes `VIPS` hold exactly the owned VIPs on XDP interfaces (interface MAC, ifindex).
    fn sync_nic(&mut self) {
        let Some(ifaces) = self.nic.as_ref().map(|n| n.ifaces.clone()) else {
            return;
        };
        let mut want: BTreeMap<IpAddr, ([u8; 6], u32)> = BTreeMap::new();
        for a in self.owned.clone() {
            let Some(t) = topology_for(&self.sh.set.topology, &a) else {
                continue;
            };
            if !ifaces.contains_key(&t.interface) {
                continue;
            }
            let ifname = t.interface.clone();
            match self.link(&ifname) {
                Ok(l) => {
                    want.insert(a, l);
                }
                Err(e) => tracing::warn!(addr = %a, error = %e, "DuraVIP: no NIC answers"),
            }
        }
        let Some(n) = &mut self.nic else { return };
        let c = &self.sh.counters;
        let mut errors = Vec::new();
        n.inbound.with_datapath(|dp| {
            let gone: Vec<IpAddr> = n
                .entries
                .keys()
                .filter(|a| !want.contains_key(a))
                .copied()
                .collect();
            for a in gone {
                match dp.remove_vip(a) {
                    Ok(_) => {
                        n.entries.remove(&a);
                    }
                    Err(e) => errors.push((a, e.to_string())),
                }
            }
            for (a, (mac, ix)) in &want {
                if n.entries.get(a) == Some(ix) {
                    continue;
                }
                match dp.set_vip_on(*a, *mac, Some(*ix)) {
                    Ok(()) => {
                        n.entries.insert(*a, *ix);
                    }
                    Err(e) => errors.push((*a, e.to_string())),
                }
            }
        });
        for (a, e) in &errors {
            tracing::warn!(addr = %a, error = %e, "DuraVIP: cannot update the NIC's VIP table");
            c.nic_errors.inc();
        }
        c.nic_vips.set(n.entries.len() as i64);
        let mut st = self.sh.nic.lock().unwrap_or_else(|p| p.into_inner());
        st.answered = n.entries.len();
        if let Some((a, e)) = errors.last() {
            st.last_error = Some(format!("{a}: {e}"));
        }
    }

    fn send(&self, msg: &BusMessage) {
        if let Err(e) = self.sh.handle.send(msg) {
            tracing::debug!(error = %e, "DuraVIP: bus send failed");
        }
    }

    fn on_notice(&mut self, n: ClusterNotice) {
        match n {
            ClusterNotice::View => {
                self.fresh.clear();
                self.view_gen += 1;
            }
            ClusterNotice::Changed => {}
            ClusterNotice::Duravip {
                from,
                msg: BusMessage::DuravipClaim { owned },
            } => {
                let owned: BTreeSet<IpAddr> = owned.into_iter().collect();
                if let Some(old) = self.claims.get(&from) {
                    for a in old.difference(&owned) {
                        if self.claim_owner.get(a) == Some(&from) {
                            self.claim_owner.remove(a);
                        }
                    }
                }
                for a in &owned {
                    self.claim_owner.insert(*a, from);
                }
                self.claims.insert(from, owned);
                self.fresh.insert(from);
            }
            ClusterNotice::Duravip {
                msg: BusMessage::DuravipMove { addr, to, balance },
                ..
            } => {
                let snap = snapshot(&self.sh.handle, Instant::now());
                let target = snap
                    .live
                    .iter()
                    .find(|(_, name, vips)| *name == to && vips.iter().any(|v| v.addr == addr));
                match target {
                    Some((id, _, _)) => {
                        tracing::info!(%addr, to = %to, balance, "DuraVIP: move");
                        self.claim_owner.insert(addr, *id);
                        if !balance {
                            self.pins.insert(addr, to);
                        }
                    }
                    None => {
                        tracing::warn!(%addr, to = %to, "DuraVIP: move ignored: target is not a live member declaring it");
                    }
                }
            }
            ClusterNotice::Duravip { .. } => {}
        }
    }

    /// Drops `duravip move` pins that no longer apply: no live member declares the VIP any
    /// more, or the pinned node is live and no longer declares it. Decided from agreed
    /// state only (the live declarations), so every node drops the same pins and the
    /// assignment stays identical everywhere; a reload thus clears the pins of VIPs it
    /// removed once the node's new declarations are on the bus.
    fn prune_pins(&mut self, snap: &Snapshot) {
        if self.pins.is_empty() {
            return;
        }
        let declared: BTreeSet<IpAddr> = snap
            .live
            .iter()
            .flat_map(|(_, _, vips)| vips.iter().map(|v| v.addr))
            .collect();
        self.pins.retain(|addr, to| {
            let target = snap.live.iter().find(|(_, name, _)| name == to);
            let keep = declared.contains(addr)
                && target.is_none_or(|(_, _, vips)| vips.iter().any(|v| v.addr == *addr));
            if !keep {
                tracing::info!(%addr, to = %to, "DuraVIP: move pin dropped: the VIP is no longer declared there");
            }
            keep
        });
    }

    fn step(&mut self, now: Instant) {
        let snap = snapshot(&self.sh.handle, now);
        let skew = self.pairing.judge(snap.rings, now, RING_WAIT);
        self.prune_pins(&snap);
        self.claims.retain(|id, _| snap.view.contains(id));
        self.claim_owner.retain(|_, id| snap.view.contains(id));
        let me = &self.sh.set.nodename;
        let local_live = snap
            .local
            .is_some_and(|l| snap.live.iter().any(|m| m.0 == l));
        let quorate = snap.quorate && local_live;

        // Declarations (pins act as preferences), one entry per nodename.
        let mut by_name: BTreeMap<String, MemberDecls> = BTreeMap::new();
        for (_, name, vips) in &snap.live {
            let vips = vips
                .iter()
                .map(|v| {
                    let mut d = decl_from(v);
                    if let Some(p) = self.pins.get(&v.addr) {
                        d.preference = Some(p.clone());
                    }
                    d
                })
                .collect();
            by_name.insert(
                name.clone(),
                MemberDecls {
                    nodename: name.clone(),
                    vips,
                },
            );
        }
        let members: Vec<MemberDecls> = by_name.into_values().collect();
        let names: BTreeMap<MemberId, &str> = snap
            .live
            .iter()
            .map(|(id, n, _)| (*id, n.as_str()))
            .collect();
        let current: BTreeMap<IpAddr, String> = self
            .claim_owner
            .iter()
            .filter_map(|(a, id)| names.get(id).map(|n| (*a, (*n).to_owned())))
            .collect();
        let mature = snap.view_age >= self.sh.set.mature;
        let input = AssignInput {
            members,
            current,
            mature,
            balance_moves: 0,
            quorate,
        };
        // Same input, same answer: with thousands of VIPs `assign` costs tens of ms, and
        // this runs on every 20 ms tick while inputs change only on bus events.
        let a = match &self.last_assign {
            Some((i, a)) if *i == input => a.clone(),
            _ => {
                let a = assign(&input);
                self.last_assign = Some((input.clone(), a.clone()));
                a
            }
        };
        // Every member of the effective view, not only those whose announce is already
        // here: after a heal the others re-announce one by one, and a member not yet
        // announced is missing from `current`, so its VIPs looked unowned (the rejoining
        // node took one of them, and its claim made the owner drop and retake it).
        let settled = snap.effective.iter().all(|id| {
            Some(*id) == snap.local || (self.fresh.contains(id) && names.contains_key(id))
        });
        let stalled = self.stalled_until.is_some_and(|t| now < t);
        // While the ring re-forms, corosync delivers nobody's heartbeats and every survivor
        // sees the others as hung: without a live majority of the view, take nothing new
        // (else each survivor would take every VIP).
        let majority = snap.live.len() * 2 > snap.view.len();
        let mine = a.owned_by(me);
        let desired = if !quorate {
            BTreeSet::new()
        } else if !settled || stalled || !majority || skew {
            // Keep what we hold and is still ours; take nothing new.
            self.owned.intersection(&mine).copied().collect()
        } else {
            mine
        };

        // Balancing: the leader decides, everyone applies the same message.
        if quorate && settled && majority && !skew && mature && now >= self.next_balance {
            self.next_balance = now + self.sh.set.balance_interval;
            if snap.leader.is_some() && snap.leader == snap.local {
                let b = assign(&AssignInput {
                    balance_moves: self.sh.set.balance_set,
                    ..input.clone()
                });
                for mv in &b.moves {
                    if matches!(mv.reason, MoveReason::Failback | MoveReason::Rebalance)
                        && let Some(to) = &mv.to
                    {
                        self.send(&BusMessage::DuravipMove {
                            addr: mv.addr,
                            to: to.clone(),
                            balance: true,
                        });
                    }
                }
            }
        }

        if desired != self.owned {
            self.apply(&desired, Trigger::Election, now);
        }
        if now >= self.next_check {
            self.next_check = now + self.sh.set.check_interval;
            let d = self.owned.clone();
            self.apply(&d, Trigger::Maintenance, now);
        }
        let reloaded = self.sh.reloaded.swap(false, Ordering::Relaxed);
        if self.sh.reannounce.swap(false, Ordering::Relaxed) || reloaded {
            for v in &self.owned {
                self.sched.start(*v, now);
            }
        }
        // Claim after every change of our set or of the live view.
        let live_ids: Vec<MemberId> = snap.live.iter().map(|m| m.0).collect();
        let claim = (self.owned.clone(), live_ids, self.view_gen);
        if snap.connected && self.last_claim.as_ref() != Some(&claim) {
            self.send(&BusMessage::DuravipClaim {
                owned: self.owned.iter().copied().collect(),
            });
            self.last_claim = Some(claim);
        }

        // Console state. Declarations grouped per address in one pass (thousands of VIPs).
        let mut by_addr: BTreeMap<IpAddr, Vec<VipDecl>> = BTreeMap::new();
        for m in &input.members {
            for v in &m.vips {
                by_addr.entry(v.addr).or_default().push(v.clone());
            }
        }
        let mut show = self.sh.show.lock().unwrap_or_else(|p| p.into_inner());
        for st in a.states.values() {
            let decls = by_addr.remove(&st.addr).unwrap_or_default();
            if self.decls_seen.get(&st.addr) != Some(&decls) {
                self.decls_seen.insert(st.addr, decls);
                show.config_since.insert(st.addr, now);
            }
        }
        show.view_order = snap
            .view
            .iter()
            .filter_map(|id| names.get(id).map(|n| (*n).to_owned()))
            .collect();
        show.view_age = snap.view_age;
        show.assignment = Some(a);
    }

    /// Plumbs/unplumbs to reach `desired` and starts/stops the announcements.
    fn apply(&mut self, desired: &BTreeSet<IpAddr>, trigger: Trigger, now: Instant) {
        let c = &self.sh.counters;
        match self
            .rec
            .reconcile(&mut self.plumber, desired, &self.sh.set.topology, trigger)
        {
            Ok(r) => {
                for s in &r.added {
                    tracing::info!(addr = %s.addr, ifname = %s.ifname, ?trigger, "DuraVIP: plumbed");
                    self.sched.start(s.addr, now);
                    c.moves.inc();
                }
                for a in &r.removed {
                    tracing::info!(addr = %a.addr, "DuraVIP: unplumbed");
                    self.sched.stop(&a.addr);
                    if !desired.contains(&a.addr) {
                        c.moves.inc();
                    }
                }
                for (a, why) in &r.refused {
                    tracing::warn!(addr = %a, reason = %why, "DuraVIP: cannot plumb");
                    c.plumb_errors.inc();
                }
                self.owned = desired
                    .iter()
                    .filter(|a| !r.refused.iter().any(|(x, _)| x == *a))
                    .copied()
                    .collect();
            }
            Err(e) => {
                tracing::warn!(error = %e, "DuraVIP: plumbing failed");
                c.plumb_errors.inc();
                // Never claim what may not be there; keep releases.
                self.owned = self.owned.intersection(desired).copied().collect();
            }
        }
        c.owned.set(self.owned.len() as i64);
        self.sync_nic();
    }

    fn announce_due(&mut self, now: Instant) {
        if now < self.next_pace {
            return;
        }
        let due = self.sched.due_at_most(now, PACE_VIPS);
        if due.len() == PACE_VIPS {
            self.next_pace = now + PACE;
        }
        for vip in due {
            if !self.owned.contains(&vip) {
                self.sched.stop(&vip);
                continue;
            }
            if let Err(e) = self.announce(vip) {
                tracing::warn!(%vip, error = %e, "DuraVIP: announcement failed");
            }
        }
    }

    /// Sends `vip`'s announcement frames: as XDP live frames through the inbound datapath
    /// when its interface runs it (AF_PACKET where the kernel refuses live frames), with
    /// an AF_PACKET socket otherwise.
    fn announce(&mut self, vip: IpAddr) -> Result<(), String> {
        let t =
            topology_for(&self.sh.set.topology, &vip).ok_or_else(|| "no Topology".to_owned())?;
        let ifname = t.interface.clone();
        let (mac, index) = self.link(&ifname)?;
        let targets = if self.sh.set.arp_all_hosts {
            Targets::Broadcast
        } else {
            Targets::Hosts(hosts_on(&ifname))
        };
        let fs = frames(mac, vip, &targets);
        if fs.is_empty() {
            return Ok(());
        }
        // Live frames only where the driver runs XDP natively: it then transmits XDP
        // frames (ndo_xdp_xmit). In generic mode the driver has no XDP; a veth, typically,
        // silently drops XDP frames unless its peer runs NAPI — AF_PACKET reaches the wire.
        // Once the kernel refused live frames here, announce through our own kept-open
        // socket: `Datapath::announce`'s fallback opens and closes one per call, and closing
        // a packet socket waits for an RCU grace period (tens of ms per VIP).
        let nic = self.nic.as_ref().filter(|n| {
            n.ifaces.get(&ifname) == Some(&AttachedMode::Native)
                && !n.live_refused.contains(&ifname)
        });
        let method = match nic {
            Some(n) => {
                let m = n
                    .inbound
                    .with_datapath(|dp| dp.announce(index, &fs, 1))
                    .map_err(|e| {
                        self.links.remove(&ifname);
                        e.to_string()
                    })?;
                if m == AnnounceMethod::Packet
                    && let Some(n) = &mut self.nic
                {
                    n.live_refused.insert(ifname.clone());
                }
                m
            }
            None => {
                if !self.sockets.contains_key(&ifname) {
                    let sock = PacketSocket::open(index, 0).map_err(|e| e.to_string())?;
                    self.sockets.insert(ifname.clone(), sock);
                }
                let Some(sock) = self.sockets.get(&ifname) else {
                    return Err("socket vanished".into());
                };
                for f in &fs {
                    if let Err(e) = sock.send(f) {
                        self.sockets.remove(&ifname);
                        self.links.remove(&ifname);
                        return Err(e.to_string());
                    }
                }
                AnnounceMethod::Packet
            }
        };
        let c = &self.sh.counters;
        let n = fs.len() as u64;
        c.announcements.inc_by(n);
        c.frames_by_method
            .get_or_create(&vec![("method".to_owned(), method.name().to_owned())])
            .inc_by(n);
        self.sh.nic.lock().unwrap_or_else(|p| p.into_inner()).method = Some(method);
        tracing::debug!(%vip, frames = fs.len(), method = method.name(), "DuraVIP: announced");
        Ok(())
    }
}

/// One neighbour table entry (`ip neigh`), for `cluster arp show` and `arp_all_hosts = false`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Neighbour {
    addr: IpAddr,
    mac: [u8; 6],
    ifindex: u32,
    /// Since the entry was last updated.
    age: Duration,
}

/// The neighbour tables (IPv4 then IPv6) over rtnetlink: usable entries with a MAC.
fn neighbours() -> std::io::Result<Vec<Neighbour>> {
    use netlink_packet_core::{
        NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    };
    use netlink_packet_route::{
        AddressFamily, RouteNetlinkMessage,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    };
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut out = Vec::new();
    for (seq, family) in [(1u32, AddressFamily::Inet), (2, AddressFamily::Inet6)] {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetNeighbour(msg)),
        );
        nl.finalize();
        let mut req = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut req);
        sock.send(&req, 0)?;
        let mut buf: Vec<u8> = Vec::new();
        'dump: loop {
            buf.clear();
            buf.reserve(1 << 16);
            sock.recv(&mut buf, 0)?;
            let mut off = 0usize;
            while off < buf.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..])
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let len = m.header.length as usize;
                if len == 0 {
                    break 'dump;
                }
                off += len.div_ceil(4) * 4;
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => break 'dump,
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                        let usable = matches!(
                            n.header.state,
                            NeighbourState::Reachable
                                | NeighbourState::Stale
                                | NeighbourState::Delay
                                | NeighbourState::Probe
                                | NeighbourState::Permanent
                        );
                        let mut addr = None;
                        let mut mac = None;
                        let mut age = Duration::ZERO;
                        for a in &n.attributes {
                            match a {
                                NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                                    addr = Some(IpAddr::V4(*v));
                                }
                                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                                    addr = Some(IpAddr::V6(*v));
                                }
                                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                                    let mut m = [0u8; 6];
                                    m.copy_from_slice(l);
                                    mac = Some(m);
                                }
                                // clock_t ticks (USER_HZ = 100).
                                NeighbourAttribute::CacheInfo(c) => {
                                    age = Duration::from_millis(u64::from(c.updated) * 10);
                                }
                                _ => {}
                            }
                        }
                        if let (true, Some(addr), Some(mac)) = (usable, addr, mac) {
                            out.push(Neighbour {
                                addr,
                                mac,
                                ifindex: n.header.ifindex,
                                age,
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(out)
}

fn ifindex(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Neighbours on `ifname` (unicast announcement targets for `arp_all_hosts = false`).
fn hosts_on(ifname: &str) -> Vec<(IpAddr, [u8; 6])> {
    let Some(ix) = ifindex(ifname) else {
        return Vec::new();
    };
    neighbours()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.ifindex == ix)
        .filter(|n| !matches!(n.addr, IpAddr::V6(v) if v.is_multicast()))
        .map(|n| (n.addr, n.mac))
        .collect()
}

/// `cluster arp show`: the neighbour entries (IPv4, then IPv6) of the Topology
/// interfaces in Momentum's format `ADDR    [mac]  AGEs` (age since last update).
fn arp_show(topology: &[Topology]) -> Result<String, ConsoleError> {
    let ixs: BTreeSet<u32> = topology
        .iter()
        .filter_map(|t| ifindex(&t.interface))
        .collect();
    let all = neighbours().map_err(|e| ConsoleError::Failed {
        message: format!("cannot read the neighbour table: {e}"),
    })?;
    let mut out = String::new();
    for n in all.iter().filter(|n| ixs.contains(&n.ifindex)) {
        let mac: Vec<String> = n.mac.iter().map(|b| format!("{b:02x}")).collect();
        out.push_str(&format!(
            "{:<16} [{}]  {}s\n",
            n.addr.to_string(),
            mac.join(":"),
            n.age.as_secs()
        ));
    }
    Ok(out)
}

fn duravip_command(sh: &Shared, words: &[&str]) -> Result<String, ConsoleError> {
    let usage = || ConsoleError::Usage {
        usage:
            "cluster duravip show | cluster duravip move IP to NODE | cluster duravip announce view"
                .into(),
    };
    match words {
        ["show"] => {
            let show = sh.show.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let config_stable = show
                .config_since
                .iter()
                .map(|(a, t)| (*a, now.duration_since(*t)))
                .collect();
            let Some(a) = &show.assignment else {
                return Ok("DuraVIP State:\n".into());
            };
            Ok(render(
                a,
                &ShowContext {
                    view_order: &show.view_order,
                    view_stable: show.view_age,
                    config_stable,
                },
            ))
        }
        ["move", ip, to_kw, node] if to_kw.eq_ignore_ascii_case("to") => {
            let addr: IpAddr = ip.parse().map_err(|_| ConsoleError::Failed {
                message: format!("`{ip}` is not an IP address"),
            })?;
            let declared = sh.handle.read(|ms| {
                let now = Instant::now();
                let eff = ms.effective_view(now);
                ms.members(now).into_iter().any(|m| {
                    eff.contains(&m.id)
                        && m.announce.as_ref().is_some_and(|a| {
                            a.nodename == *node && a.vips.iter().any(|v| v.addr == addr)
                        })
                })
            });
            if !declared {
                return Err(ConsoleError::Failed {
                    message: format!(
                        "cannot move {addr} to {node}: {node} is not a live member declaring {addr} as a DuraVIP"
                    ),
                });
            }
            sh.handle
                .send(&BusMessage::DuravipMove {
                    addr,
                    to: (*node).to_owned(),
                    balance: false,
                })
                .map_err(|e| ConsoleError::Failed {
                    message: format!("cannot send the move on the cluster bus: {e}"),
                })?;
            Ok(format!(
                "Moving {addr} to {node} (pinned there while {node} declares it).\n"
            ))
        }
        ["announce", "view"] => {
            sh.reannounce.store(true, Ordering::Relaxed);
            Ok("Re-announcing every DuraVIP this node owns.\n".into())
        }
        _ => Err(usage()),
    }
}

fn register(services: &Services, shared: &Arc<Shared>) -> Result<(), DuravipError> {
    let s = Arc::clone(shared);
    services.console.register(
        &["cluster", "duravip"],
        "cluster duravip show | move IP to NODE | announce view: DuraVIP state, an agreed move, a re-announce.",
        Arc::new(move |words| duravip_command(&s, words)),
    )?;
    let topo = shared.set.topology.clone();
    services.console.register(
        &["cluster", "arp", "show"],
        "Show the neighbour entries (address, MAC, age) of the DuraVIP Topology interfaces.",
        Arc::new(move |_| arp_show(&topo)),
    )?;
    let c = &shared.counters;
    let m = &services.metrics;
    m.register(
        "duraplane_duravip_owned",
        "DuraVIPs this node owns (plumbed)",
        c.owned.clone(),
    );
    m.register(
        "duraplane_duravip_moves",
        "DuraVIPs this node took or gave up",
        c.moves.clone(),
    );
    m.register(
        "duraplane_duravip_announcements",
        "Gratuitous ARP / unsolicited NA frames sent",
        c.announcements.clone(),
    );
    m.register(
        "duraplane_duravip_plumb_errors",
        "Failed or refused DuraVIP plumbing operations",
        c.plumb_errors.clone(),
    );
    m.register(
        "duraplane_duravip_announcement_frames",
        "Announcement frames sent, by method (xdp_live_frames, af_packet)",
        c.frames_by_method.clone(),
    );
    m.register(
        "duraplane_duravip_nic_vips",
        "Owned DuraVIPs answered at the NIC by xdp_ingress (VIPS map, under the lease)",
        c.nic_vips.clone(),
    );
    m.register(
        "duraplane_duravip_nic_errors",
        "Failed updates of the NIC's VIP table or lease",
        c.nic_errors.clone(),
    );
    let s = Arc::clone(shared);
    services
        .info
        .set_section("duravip", Arc::new(move || nic_info(&s)));
    let s = Arc::clone(shared);
    services.reloader.register(
        "duravip",
        Arc::new(move |_, _| {
            s.reloaded.store(true, Ordering::Relaxed);
            Ok(())
        }),
    );
    Ok(())
}

/// The `cluster info` line: how VIPs are answered and announced here.
fn nic_info(sh: &Shared) -> String {
    let st = sh.nic.lock().unwrap_or_else(|p| p.into_inner());
    let method = st.method.map_or("none yet", AnnounceMethod::name);
    let mut out = if st.xdp_ifaces.is_empty() {
        format!(
            "DuraVIP: {} owned; ARP/NS answered by the kernel (no XDP on the Topology interfaces); announcing with {method}\n",
            sh.counters.owned.get()
        )
    } else {
        format!(
            "DuraVIP: {} owned; ARP/NS answered at the NIC for {} (xdp_ingress on {}, lease {} ms); announcing with {method}\n",
            sh.counters.owned.get(),
            st.answered,
            st.xdp_ifaces.join(", "),
            sh.set.lease.as_millis()
        )
    };
    if let Some(e) = &st.last_error {
        out.push_str(&format!("DuraVIP: last NIC error: {e}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = RING_WAIT;

    fn r(seq: u64) -> Option<RingId> {
        Some(RingId { seq, rep: 1 })
    }

    /// The pairing as DuraVIP sees it while events arrive: a guard, a membership-like
    /// state and the quorum flag. `step` returns (skew, quorate).
    struct Sim {
        g: RingPairing,
        rings: Rings,
        quorate: bool,
        t: Instant,
    }

    impl Sim {
        /// Connected to a quorate ring 4; the CPG connection named it (a ring change seen).
        fn paired() -> Sim {
            let mut s = Sim {
                g: RingPairing::default(),
                rings: Rings {
                    ring: r(4),
                    pending: false,
                    quorum_ring: r(4),
                    has_quorum: true,
                },
                quorate: true,
                t: Instant::now(),
            };
            assert!(!s.skew());
            s
        }
        fn skew(&mut self) -> bool {
            self.t += Duration::from_millis(1);
            self.g.judge(self.rings, self.t, WAIT)
        }
        /// A view that lost a node (corosync's NodeDown): its ring follows.
        fn view_node_down(&mut self) -> bool {
            self.rings.pending = true;
            self.skew()
        }
        /// A view after a daemon's kill or leave, or a join: no ring change.
        fn view_daemon(&mut self) -> bool {
            self.skew()
        }
        fn ring(&mut self, seq: u64) -> bool {
            self.rings.ring = r(seq);
            self.rings.pending = false;
            self.skew()
        }
        fn quorum(&mut self, q: bool, seq: u64) -> bool {
            self.quorate = q;
            self.rings.quorum_ring = r(seq);
            self.skew()
        }
    }

    #[test]
    fn view_then_ring_then_quorum() {
        // What corosync 3.1.7 does (tests/duravip_ring.rs): isolated from a quorate ring,
        // the view {me} comes first while the flag still says quorate: hold, until the
        // verdict for the new ring.
        let mut s = Sim::paired();
        assert!(s.view_node_down(), "view without its ring: hold");
        assert!(s.quorate, "…while the old verdict still says quorate");
        assert!(s.ring(5), "ring 5 but the verdict is about ring 4: hold");
        assert!(!s.quorum(false, 5), "paired: not quorate, release");
        // The majority side: same order, stays quorate, proceeds once paired.
        let mut s = Sim::paired();
        assert!(s.view_node_down());
        assert!(s.ring(5));
        assert!(!s.quorum(true, 5));
    }

    #[test]
    fn quorum_before_view_and_ring() {
        // The quorum connection may be read first: a verdict for a ring the CPG connection
        // has not reported yet holds too, quorate or not.
        let mut s = Sim::paired();
        assert!(s.quorum(true, 5), "verdict for ring 5, view still ring 4's");
        assert!(s.view_node_down());
        assert!(!s.ring(5), "the view's ring arrived: paired");
        let mut s = Sim::paired();
        assert!(s.quorum(false, 5));
        assert!(!s.quorate, "not quorate releases even while unpaired");
        assert!(s.view_node_down());
        assert!(!s.ring(5));
        // A ring change no group member noticed (a node without a daemon left): no view,
        // the ring alone pairs.
        let mut s = Sim::paired();
        assert!(s.quorum(true, 5));
        assert!(!s.ring(5));
    }

    #[test]
    fn daemon_kill_without_ring_change_fails_over_at_once() {
        let mut s = Sim::paired();
        assert!(
            !s.view_daemon(),
            "a daemon's kill -9 or leave: no ring, no hold"
        );
        assert!(!s.view_daemon(), "its restart (a join): no hold");
        // Even right after connecting, before the CPG connection named any ring.
        let mut s = Sim::paired();
        s.rings.ring = None;
        assert!(!s.view_daemon());
        // And with no quorum service at all there is nothing to pair.
        let mut g = RingPairing::default();
        assert!(!g.judge(Rings::default(), Instant::now(), WAIT));
    }

    #[test]
    fn even_split_then_heal() {
        // 2|2 of four: both halves lose quorum; the old guard (less than half kept) did not
        // hold here. Each half holds from its view until its verdict, which releases.
        let mut s = Sim::paired();
        assert!(s.view_node_down());
        assert!(s.quorate);
        assert!(s.ring(8));
        assert!(!s.quorum(false, 8));
        assert!(!s.quorate);
        // Heal: the merged view (joins) comes under the old ring and the old verdict (not
        // quorate: nothing taken), then the ring, then the quorate verdict for it.
        assert!(!s.view_daemon());
        assert!(
            s.ring(12),
            "merged ring, verdict still about the split one: hold"
        );
        assert!(!s.quorum(true, 12), "paired and quorate again");
        // Verdict first on heal: quorate for ring 12 while the view is the split one.
        let mut s = Sim::paired();
        s.view_node_down();
        s.ring(8);
        s.quorum(false, 8);
        assert!(
            s.quorum(true, 12),
            "quorate for a ring whose view is not here: hold"
        );
        assert!(s.view_daemon());
        assert!(!s.ring(12));
    }

    #[test]
    fn first_ring_after_start_comes_from_the_quorum_connection() {
        // Connected: the CPG connection has named no ring yet, the quorum one has.
        let mut g = RingPairing::default();
        let t = Instant::now();
        let mut rings = Rings {
            ring: None,
            pending: false,
            quorum_ring: None,
            has_quorum: true,
        };
        assert!(
            !g.judge(rings, t, WAIT),
            "a plain getquorate: nothing to pair yet"
        );
        rings.quorum_ring = r(9);
        assert!(!g.judge(rings, t, WAIT));
        // The first ring change after start: pairs as usual.
        rings.pending = true;
        assert!(g.judge(rings, t, WAIT));
        rings.pending = false;
        rings.ring = r(13);
        assert!(g.judge(rings, t, WAIT));
        rings.quorum_ring = r(13);
        assert!(!g.judge(rings, t, WAIT));
    }

    #[test]
    fn a_ring_that_never_pairs_falls_back_to_the_flag_after_the_wait() {
        let mut g = RingPairing::default();
        let t0 = Instant::now();
        let rings = Rings {
            ring: r(5),
            pending: false,
            quorum_ring: r(4),
            has_quorum: true,
        };
        assert!(g.judge(rings, t0, WAIT));
        assert!(g.judge(rings, t0 + WAIT - Duration::from_millis(1), WAIT));
        assert!(!g.judge(rings, t0 + WAIT, WAIT), "waited long enough");
        assert!(!g.judge(rings, t0 + WAIT * 2, WAIT));
        // Paired again resets the clock: the next mismatch holds anew.
        let paired = Rings {
            quorum_ring: r(5),
            ..rings
        };
        assert!(!g.judge(paired, t0 + WAIT * 3, WAIT));
        let next = Rings {
            ring: r(6),
            ..paired
        };
        assert!(g.judge(next, t0 + WAIT * 3, WAIT));
    }
}
