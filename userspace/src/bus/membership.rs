//! Membership as the daemon sees it: Corosync's agreed views of `cluster_group`, what each
//! member announced about itself, and which members stopped heartbeating.
//!
//! Pure state driven by [`BusEvent`]s and the clock, so every rule is unit-tested without
//! corosync; `service.rs` feeds it from the real bus.
//!
//! Heartbeats ("byzantine" detection): a member whose corosync is alive but whose daemon is
//! hung (SIGSTOP, a deadlock) stays in Corosync's view; it is excluded from the *effective*
//! view used for ownership once it has been silent for [`HeartbeatPolicy::hung_after`]
//! while the bus kept delivering, and readmitted by its next heartbeat.
//!
//! Silence is measured on the *bus clock* (when the latest `cluster_group` message was
//! delivered), not the local clock: when any node's corosync dies, the token stops and
//! nobody's heartbeats are delivered until the ring re-forms, so by the local clock every
//! survivor would judge every other member hung (and itself too) at once. A stalled ring is
//! Corosync's to judge; heartbeats only judge a daemon that is silent while others talk.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{BusEvent, LeaveReason, MemberId, RingId};

/// Heartbeat intervals a member may miss before it is considered hung…
pub const MISSED_HEARTBEATS: u32 = 3;

/// …plus this much more: a daemon stalled this long (a 300 ms SIGSTOP, a long page-fault
/// or scheduling hiccup on a loaded box) plus delivery jitter must never be judged hung,
/// or its VIPs move for nothing. At 10 heartbeats/s the threshold is 700 ms: a 300 ms stall
/// shows as a gap of at most one interval + 300 ms, leaving 300 ms for jitter.
pub const STALL_TOLERANCE: Duration = Duration::from_millis(400);

/// What a daemon says about itself when a view changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub nodename: String,
    /// The ECCluster_Listener address peers reach it on (`ip:port`).
    pub addr: String,
    pub version: String,
    /// Digest of the replication-relevant configuration: members with different digests
    /// are flagged, never silently mixed.
    pub config_digest: String,
    /// This member's DuraVIP declarations (absent in messages from older daemons).
    #[serde(default)]
    pub vips: Vec<AnnouncedVip>,
}

/// One DuraVIP as a member declares it on the bus (mirrors `duravip::VipDecl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnouncedVip {
    pub addr: IpAddr,
    #[serde(default)]
    pub bindings: Vec<String>,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub preference: Option<String>,
    #[serde(default)]
    pub follow: Option<String>,
}

/// Messages the daemons exchange over the bus (JSON: small, rare, versioned by field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum BusMessage {
    Announce(Announce),
    Heartbeat {
        seq: u64,
    },
    /// Run a console command on every member of `control_group`.
    Broadcast {
        id: u64,
        command: String,
    },
    BroadcastReply {
        id: u64,
        /// The member that asked.
        to: MemberId,
        nodename: String,
        ok: bool,
        output: String,
    },
    /// `cluster duravip move ADDR to NODE` (pinned there), or a balancing move sent by
    /// the leader (`balance`); every member applies it in agreed order.
    DuravipMove {
        addr: IpAddr,
        to: String,
        #[serde(default)]
        balance: bool,
    },
    /// The DuraVIPs the sender owns now; sent after each view change and each change of
    /// its set, so members (and newcomers) agree on the current owners.
    DuravipClaim {
        owned: Vec<IpAddr>,
    },
}

impl BusMessage {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<BusMessage> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Heartbeat settings (`heartbeats_per_sec`, `heartbeat_start_delay`).
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatPolicy {
    pub per_sec: u32,
    pub start_delay: Duration,
}

impl HeartbeatPolicy {
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.per_sec.max(1)))
    }

    /// How long a member may be silent on a moving bus before it is judged hung.
    pub fn hung_after(&self) -> Duration {
        self.interval() * MISSED_HEARTBEATS + STALL_TOLERANCE
    }
}

/// One member as shown by `cluster membership`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: MemberId,
    pub announce: Option<Announce>,
    pub groups: Vec<String>,
    pub hung: bool,
}

/// The daemon's view of the cluster.
#[derive(Debug)]
pub struct Membership {
    cluster_group: String,
    policy: HeartbeatPolicy,
    started: Instant,
    local: Option<MemberId>,
    connected: bool,
    disconnected_reason: Option<String>,
    quorate: Option<bool>,
    /// The ring the quorum flag is about (`None` until corosync names one).
    quorum_ring: Option<RingId>,
    /// The latest totem ring seen on the `cluster_group` connection.
    ring: Option<RingId>,
    /// A `cluster_group` view lost a node (not just a daemon) since that ring: corosync
    /// delivers a ring change's views before its ring, so this view's ring is still to come.
    ring_pending: bool,
    views: BTreeMap<String, Vec<MemberId>>,
    announces: HashMap<MemberId, Announce>,
    last_heartbeat: HashMap<MemberId, Instant>,
    /// When the latest `cluster_group` message or view was delivered: the bus clock that
    /// silence is measured against.
    bus_progress: Instant,
    view_changed: Instant,
    views_seen: u64,
}

impl Membership {
    pub fn new(cluster_group: &str, policy: HeartbeatPolicy, now: Instant) -> Self {
        Membership {
            cluster_group: cluster_group.to_owned(),
            policy,
            started: now,
            local: None,
            connected: false,
            disconnected_reason: None,
            quorate: None,
            quorum_ring: None,
            ring: None,
            ring_pending: false,
            views: BTreeMap::new(),
            announces: HashMap::new(),
            last_heartbeat: HashMap::new(),
            bus_progress: now,
            view_changed: now,
            views_seen: 0,
        }
    }

    /// Applies one bus event. Returns `true` when this member should (re-)announce itself:
    /// after connecting and after every view change of `cluster_group`, so members that
    /// joined learn about everyone in agreed order.
    pub fn on_event(&mut self, ev: &BusEvent, pid: u32, now: Instant) -> bool {
        match ev {
            BusEvent::Connected { nodeid } => {
                self.connected = true;
                self.disconnected_reason = None;
                self.local = Some(MemberId {
                    nodeid: *nodeid,
                    pid,
                });
                false
            }
            BusEvent::Disconnected { reason } => {
                self.connected = false;
                self.disconnected_reason = Some(reason.clone());
                self.views.clear();
                self.announces.clear();
                self.last_heartbeat.clear();
                self.quorate = None;
                self.quorum_ring = None;
                self.ring = None;
                self.ring_pending = false;
                self.view_changed = now;
                false
            }
            BusEvent::Quorum { quorate, ring, .. } => {
                self.quorate = Some(*quorate);
                // A verdict without a ring id (the first `getquorate`) keeps the ring of
                // the previous one: it is about the same state until corosync says more.
                if ring.is_some() {
                    self.quorum_ring = *ring;
                }
                false
            }
            BusEvent::Ring { group, ring, .. } => {
                if *group == self.cluster_group {
                    self.ring = Some(*ring);
                    self.ring_pending = false;
                }
                false
            }
            BusEvent::View {
                group,
                members,
                left,
                ..
            } => {
                for (m, _) in left {
                    if !self.views.iter().any(|(g, v)| g != group && v.contains(m)) {
                        self.announces.remove(m);
                        self.last_heartbeat.remove(m);
                    }
                }
                let cluster_view = *group == self.cluster_group;
                for m in members {
                    if cluster_view {
                        // Every member of a new cluster view gets a full timeout of grace:
                        // while the ring re-forms nobody's heartbeats are delivered, and a
                        // member that rejoins after a partition still carries its last
                        // heartbeat from before it. Judging them at once made every
                        // survivor see the others hung right after a heal, and DuraVIP
                        // placed their VIPs elsewhere without waiting for maturity.
                        self.last_heartbeat.insert(*m, now);
                    } else {
                        self.last_heartbeat.entry(*m).or_insert(now);
                    }
                }
                self.views.insert(group.clone(), members.clone());
                if *group == self.cluster_group {
                    if left.iter().any(|(_, r)| *r == LeaveReason::NodeDown) {
                        self.ring_pending = true;
                    }
                    self.bus_progress = now;
                    self.view_changed = now;
                    self.views_seen += 1;
                    return true;
                }
                false
            }
            BusEvent::Message {
                group,
                from,
                payload,
            } => {
                if *group == self.cluster_group {
                    self.bus_progress = now;
                }
                match BusMessage::decode(payload) {
                    Some(BusMessage::Announce(a)) => {
                        self.announces.insert(*from, a);
                        self.last_heartbeat.insert(*from, now);
                    }
                    Some(BusMessage::Heartbeat { .. }) => {
                        self.last_heartbeat.insert(*from, now);
                    }
                    _ => {}
                }
                false
            }
        }
    }

    /// Whether heartbeats are being judged yet (`heartbeat_start_delay` after start).
    pub fn heartbeats_active(&self, now: Instant) -> bool {
        now.duration_since(self.started) >= self.policy.start_delay
    }

    /// Members of `cluster_group` whose daemon stopped heartbeating while the bus kept
    /// delivering (silence is counted up to the latest delivery, not up to `now`).
    pub fn hung(&self, now: Instant) -> Vec<MemberId> {
        if !self.heartbeats_active(now) {
            return Vec::new();
        }
        let timeout = self.policy.hung_after();
        let bus_now = self.bus_progress.min(now);
        self.cluster_view()
            .iter()
            .filter(|m| {
                self.last_heartbeat
                    .get(m)
                    .is_none_or(|t| bus_now.saturating_duration_since(*t) > timeout)
            })
            .copied()
            .collect()
    }

    /// Corosync's agreed view of `cluster_group` (sorted).
    pub fn cluster_view(&self) -> &[MemberId] {
        self.views
            .get(&self.cluster_group)
            .map_or(&[][..], Vec::as_slice)
    }

    /// The view used for ownership: Corosync's view without hung members.
    pub fn effective_view(&self, now: Instant) -> Vec<MemberId> {
        let hung = self.hung(now);
        self.cluster_view()
            .iter()
            .filter(|m| !hung.contains(m))
            .copied()
            .collect()
    }

    /// The leader: the member with the lowest (nodeid, pid) of the effective view — the
    /// same answer at every member, since they share views and heartbeats.
    pub fn leader(&self, now: Instant) -> Option<MemberId> {
        self.effective_view(now).into_iter().min()
    }

    /// The nodename a member announced.
    pub fn nodename(&self, m: &MemberId) -> Option<&str> {
        self.announces.get(m).map(|a| a.nodename.as_str())
    }

    pub fn local(&self) -> Option<MemberId> {
        self.local
    }

    pub fn connected(&self) -> bool {
        self.connected
    }

    pub fn disconnected_reason(&self) -> Option<&str> {
        self.disconnected_reason.as_deref()
    }

    pub fn quorate(&self) -> Option<bool> {
        self.quorate
    }

    /// The ring id the quorum flag is about (`None` until corosync named one).
    pub fn quorum_ring(&self) -> Option<RingId> {
        self.quorum_ring
    }

    /// The latest totem ring id seen on the `cluster_group` connection: corosync delivers
    /// it after that ring change's views, so the current view belongs to it.
    pub fn ring(&self) -> Option<RingId> {
        self.ring
    }

    /// Whether the current `cluster_group` view lost a node since [`Self::ring`]: it belongs
    /// to a ring corosync has not named yet (its totem ring follows on the connection).
    pub fn ring_pending(&self) -> bool {
        self.ring_pending
    }

    /// How long the `cluster_group` view has been unchanged.
    pub fn view_age(&self, now: Instant) -> Duration {
        now.duration_since(self.view_changed)
    }

    pub fn views_seen(&self) -> u64 {
        self.views_seen
    }

    /// Every member of any joined group, with what it announced.
    pub fn members(&self, now: Instant) -> Vec<MemberInfo> {
        let hung = self.hung(now);
        let mut all: BTreeMap<MemberId, Vec<String>> = BTreeMap::new();
        for (g, v) in &self.views {
            for m in v {
                all.entry(*m).or_default().push(g.clone());
            }
        }
        all.into_iter()
            .map(|(id, groups)| MemberInfo {
                id,
                announce: self.announces.get(&id).cloned(),
                groups,
                hung: hung.contains(&id),
            })
            .collect()
    }

    /// Momentum's private-name form for a member: `#<nodeid>-<pid>#<nodename>`.
    pub fn private_name(&self, m: &MemberId) -> String {
        format!(
            "#{}-{}#{}",
            m.nodeid,
            m.pid,
            self.nodename(m).unwrap_or("(Null)")
        )
    }

    /// `cluster membership` in Momentum's format (reference §3.1), one block per member.
    pub fn render(&self, now: Instant) -> String {
        let mut out = String::new();
        for m in self.members(now) {
            let a = m.announce.as_ref();
            out.push_str(&format!(
                "Private Name: {}\nNode Name: {}\nSubcluster: default\nNode Type: Duraplane{}\nVersion: {}\nAddress: {}\nGroups: {}\n\n",
                self.private_name(&m.id),
                a.map_or("(Null)", |a| a.nodename.as_str()),
                if m.hung { " (hung: no heartbeat)" } else { "" },
                a.map_or("(Null)", |a| a.version.as_str()),
                a.map_or("0.0.0.0:0", |a| a.addr.as_str()),
                m.groups.join(", "),
            ));
        }
        if out.is_empty() {
            out.push_str("No membership information: not connected to corosync.\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "ec_cluster";

    fn m(nodeid: u32) -> MemberId {
        MemberId {
            nodeid,
            pid: 100 + nodeid,
        }
    }

    fn view(members: &[u32], left: &[u32]) -> BusEvent {
        BusEvent::View {
            group: G.into(),
            members: members.iter().map(|n| m(*n)).collect(),
            joined: Vec::new(),
            left: left
                .iter()
                .map(|n| (m(*n), LeaveReason::NodeDown))
                .collect(),
        }
    }

    fn announce(n: u32) -> BusEvent {
        BusEvent::Message {
            group: G.into(),
            from: m(n),
            payload: BusMessage::Announce(Announce {
                nodename: format!("node{n}"),
                addr: format!("192.0.2.1{n}:4802"),
                version: "0.1.0".into(),
                config_digest: "d".into(),
                vips: Vec::new(),
            })
            .encode(),
        }
    }

    fn hb(n: u32) -> BusEvent {
        BusEvent::Message {
            group: G.into(),
            from: m(n),
            payload: BusMessage::Heartbeat { seq: 1 }.encode(),
        }
    }

    fn policy() -> HeartbeatPolicy {
        HeartbeatPolicy {
            per_sec: 10,
            start_delay: Duration::from_secs(1),
        }
    }

    #[test]
    fn views_announces_and_leader() {
        let t0 = Instant::now();
        let mut ms = Membership::new(G, policy(), t0);
        assert!(!ms.on_event(&BusEvent::Connected { nodeid: 2 }, 102, t0));
        assert_eq!(ms.local(), Some(m(2)));
        assert!(
            ms.on_event(&view(&[1, 2, 3], &[]), 102, t0),
            "view change → announce"
        );
        for n in 1..=3 {
            ms.on_event(&announce(n), 102, t0);
        }
        assert_eq!(ms.leader(t0), Some(m(1)));
        assert_eq!(ms.nodename(&m(3)), Some("node3"));
        let text = ms.render(t0);
        assert!(text.contains("Private Name: #1-101#node1\nNode Name: node1\nSubcluster: default\nNode Type: Duraplane\nVersion: 0.1.0\nAddress: 192.0.2.11:4802\nGroups: ec_cluster\n"), "{text}");

        // Node 1 leaves: its announce is forgotten, node 2 leads.
        ms.on_event(&view(&[2, 3], &[1]), 102, t0);
        assert_eq!(ms.leader(t0), Some(m(2)));
        assert_eq!(ms.nodename(&m(1)), None);
        assert_eq!(ms.views_seen(), 2);
    }

    /// Heartbeats from `who` every 100 ms in `(from, to]` (ms after `t0`).
    fn beat(ms: &mut Membership, t0: Instant, who: &[u32], from: u64, to: u64) {
        for t in (from + 100..=to).step_by(100) {
            for n in who {
                ms.on_event(&hb(*n), 101, t0 + Duration::from_millis(t));
            }
        }
    }

    #[test]
    fn a_member_without_heartbeats_is_excluded_then_readmitted() {
        let t0 = Instant::now();
        let mut ms = Membership::new(G, policy(), t0);
        ms.on_event(&BusEvent::Connected { nodeid: 1 }, 101, t0);
        ms.on_event(&view(&[1, 2, 3], &[]), 101, t0);
        // Before heartbeat_start_delay nobody is judged.
        let t_early = t0 + Duration::from_millis(900);
        assert!(ms.hung(t_early).is_empty());
        // Nodes 1 and 3 heartbeat; node 2 last did at 1000 ms.
        beat(&mut ms, t0, &[1, 2, 3], 900, 1000);
        beat(&mut ms, t0, &[1, 3], 1000, 1700);
        let at = |ms_after: u64| t0 + Duration::from_millis(ms_after);
        assert_eq!(policy().hung_after(), Duration::from_millis(700));
        assert!(
            ms.hung(at(1700)).is_empty(),
            "silent exactly 700 ms: not yet"
        );
        beat(&mut ms, t0, &[1, 3], 1700, 1800);
        assert_eq!(ms.hung(at(1800)), vec![m(2)]);
        assert_eq!(ms.effective_view(at(1800)), vec![m(1), m(3)]);
        assert!(
            ms.render(at(1800))
                .contains("Duraplane (hung: no heartbeat)")
        );
        // It heartbeats again: readmitted at once.
        ms.on_event(&hb(2), 101, at(1810));
        assert!(ms.hung(at(1810)).is_empty());
        assert_eq!(ms.effective_view(at(1810)).len(), 3);
    }

    #[test]
    fn a_300ms_daemon_stall_is_never_judged_hung() {
        let t0 = Instant::now();
        let mut ms = Membership::new(G, policy(), t0);
        ms.on_event(&BusEvent::Connected { nodeid: 1 }, 101, t0);
        ms.on_event(&view(&[1, 2, 3], &[]), 101, t0);
        beat(&mut ms, t0, &[1, 2, 3], 1000, 2000);
        // Worst case: node 2 is stopped right after its heartbeat at 2000 ms, for 300 ms,
        // just before its next one would have gone out (one interval late), and its first
        // heartbeat after SIGCONT is delayed by 250 ms more of scheduling and delivery.
        let resumed = 2000 + 100 + 300 + 250;
        for t in (2000..resumed).step_by(10) {
            if t % 100 == 0 && t > 2000 {
                ms.on_event(&hb(1), 101, t0 + Duration::from_millis(t));
                ms.on_event(&hb(3), 101, t0 + Duration::from_millis(t));
            }
            let now = t0 + Duration::from_millis(t);
            assert!(ms.hung(now).is_empty(), "judged hung {} ms after", t - 2000);
        }
        ms.on_event(&hb(2), 101, t0 + Duration::from_millis(resumed));
        assert!(ms.hung(t0 + Duration::from_millis(resumed)).is_empty());
        // A real hang (no heartbeat for a second while the others talk) is still caught.
        beat(&mut ms, t0, &[1, 3], resumed, resumed + 1000);
        assert_eq!(
            ms.hung(t0 + Duration::from_millis(resumed + 1000)),
            vec![m(2)]
        );
    }

    #[test]
    fn a_stalled_ring_judges_nobody() {
        // A node's corosync dies: the token stops and no member's heartbeats are delivered
        // until the ring re-forms. By the local clock every member (the local one too)
        // would be hung after 700 ms; on the bus clock nobody is, until the new view.
        let t0 = Instant::now();
        let mut ms = Membership::new(G, policy(), t0);
        ms.on_event(&BusEvent::Connected { nodeid: 1 }, 101, t0);
        ms.on_event(&view(&[1, 2, 3], &[]), 101, t0);
        beat(&mut ms, t0, &[1, 2], 1000, 2000);
        beat(&mut ms, t0, &[3], 1000, 1950);
        let stalled = t0 + Duration::from_millis(2000 + 3000);
        assert!(ms.hung(stalled).is_empty());
        assert_eq!(ms.effective_view(stalled).len(), 3);
        assert_eq!(ms.leader(stalled), Some(m(1)));
        // The new view drops node 3; the survivors are fresh.
        ms.on_event(&view(&[1, 2], &[3]), 101, stalled);
        assert_eq!(ms.effective_view(stalled), vec![m(1), m(2)]);
    }

    #[test]
    fn a_new_view_gives_every_member_a_fresh_grace_period() {
        let t0 = Instant::now();
        let mut ms = Membership::new(G, policy(), t0);
        ms.on_event(&BusEvent::Connected { nodeid: 1 }, 101, t0);
        ms.on_event(&view(&[1, 2, 3], &[]), 101, t0);
        // Node 3 is partitioned away for a while (no heartbeats), then the views merge.
        beat(&mut ms, t0, &[1, 2], 0, 5000);
        let t1 = t0 + Duration::from_secs(5);
        ms.on_event(&view(&[1, 2], &[3]), 101, t1);
        beat(&mut ms, t0, &[1, 2], 5000, 10_000);
        let t2 = t0 + Duration::from_secs(10);
        ms.on_event(&view(&[1, 2, 3], &[]), 101, t2);
        // Right after the merge nobody is hung, though node 3's last heartbeat is old…
        beat(&mut ms, t0, &[1, 2], 10_000, 10_100);
        assert!(ms.hung(t2 + Duration::from_millis(100)).is_empty());
        // …but it must heartbeat within one timeout like everyone else.
        beat(&mut ms, t0, &[1, 2], 10_100, 10_800);
        assert_eq!(ms.hung(t2 + Duration::from_millis(800)), vec![m(3)]);
    }

    #[test]
    fn disconnect_forgets_the_cluster_and_quorum() {
        let t0 = Instant::now();
        let mut ms = Membership::new(G, policy(), t0);
        ms.on_event(&BusEvent::Connected { nodeid: 1 }, 101, t0);
        ms.on_event(&view(&[1, 2], &[]), 101, t0);
        ms.on_event(
            &BusEvent::Quorum {
                quorate: true,
                ring: Some(RingId { seq: 8, rep: 1 }),
                nodes: vec![1, 2],
            },
            101,
            t0,
        );
        ms.on_event(
            &BusEvent::Ring {
                group: G.into(),
                ring: RingId { seq: 8, rep: 1 },
                nodes: vec![1, 2],
            },
            101,
            t0,
        );
        assert_eq!(ms.quorate(), Some(true));
        assert_eq!(ms.ring(), Some(RingId { seq: 8, rep: 1 }));
        assert_eq!(ms.quorum_ring(), ms.ring());
        ms.on_event(
            &BusEvent::Disconnected {
                reason: "gone".into(),
            },
            101,
            t0,
        );
        assert!(!ms.connected());
        assert!(ms.cluster_view().is_empty());
        assert_eq!(ms.quorate(), None);
        assert_eq!((ms.ring(), ms.quorum_ring()), (None, None));
        assert_eq!(ms.leader(t0), None);
        assert!(ms.render(t0).contains("not connected"));
    }

    fn ring(group: &str, seq: u64) -> BusEvent {
        BusEvent::Ring {
            group: group.into(),
            ring: RingId { seq, rep: 1 },
            nodes: Vec::new(),
        }
    }

    #[test]
    fn a_node_lost_leaves_the_view_waiting_for_its_ring_a_daemon_leaving_does_not() {
        let t0 = Instant::now();
        let mut ms = Membership::new(G, policy(), t0);
        ms.on_event(&BusEvent::Connected { nodeid: 1 }, 101, t0);
        ms.on_event(&view(&[1, 2, 3], &[]), 101, t0);
        ms.on_event(&ring(G, 4), 101, t0);
        assert_eq!(ms.ring(), Some(RingId { seq: 4, rep: 1 }));
        assert!(!ms.ring_pending());
        // A daemon killed (its corosync lives): no ring change follows.
        let killed = BusEvent::View {
            group: G.into(),
            members: vec![m(1), m(2)],
            joined: Vec::new(),
            left: vec![(m(3), LeaveReason::ProcDown)],
        };
        ms.on_event(&killed, 101, t0);
        assert!(!ms.ring_pending());
        // A node lost: its view comes first, then the ring on the same connection.
        ms.on_event(&view(&[1], &[2]), 101, t0);
        assert!(ms.ring_pending());
        // Another group's ring is not this connection's.
        ms.on_event(&ring("ec_console", 5), 101, t0);
        assert!(ms.ring_pending());
        ms.on_event(&ring(G, 5), 101, t0);
        assert!(!ms.ring_pending());
        assert_eq!(ms.ring(), Some(RingId { seq: 5, rep: 1 }));
        // A verdict without a ring id keeps the previous one's ring.
        for (q, r) in [(true, Some(RingId { seq: 5, rep: 1 })), (false, None)] {
            ms.on_event(
                &BusEvent::Quorum {
                    quorate: q,
                    ring: r,
                    nodes: Vec::new(),
                },
                101,
                t0,
            );
        }
        assert_eq!(ms.quorate(), Some(false));
        assert_eq!(ms.quorum_ring(), Some(RingId { seq: 5, rep: 1 }));
    }

    #[test]
    fn garbage_messages_are_ignored() {
        let t0 = Instant::now();
        let mut ms = Membership::new(G, policy(), t0);
        ms.on_event(&view(&[1], &[]), 101, t0);
        for junk in [
            &b""[..],
            b"{",
            b"\xff\xfe",
            br#"{"t":"announce"}"#,
            br#"{"t":"nope"}"#,
        ] {
            ms.on_event(
                &BusEvent::Message {
                    group: G.into(),
                    from: m(1),
                    payload: junk.to_vec(),
                },
                101,
                t0,
            );
        }
        assert_eq!(ms.nodename(&m(1)), None);
    }
}
