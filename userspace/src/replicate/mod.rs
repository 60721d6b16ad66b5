//! Cluster-wide counters (Momentum's `Replicate` objects): every node is the only writer
//! of its own slot, sends it to every peer over authenticated engine links (a snapshot
//! when a link comes up, then deltas of changed keys every `max_delay` or `max_pending`
//! changes), and sums the slots of the live members into totals. A departed member's slot
//! is dropped at the view change; a hung one is excluded until it heartbeats again.
//!
//! `slots` and `wire` are pure and generic (key bytes → i64), so gauge tables, throttles
//! and caches plug in as further objects; `inbound` and `outbound` map `inbound_cidr` and
//! `outbound_cidr` onto them.
//! Model, wire format and failure behaviour: `docs/replication.md`.

pub mod cache;
mod daemon;
pub mod gauge;
pub mod inbound;
pub mod outbound;
mod service;
pub mod slots;
pub mod throttle;
pub mod wire;

pub use daemon::{ClusterEngine, Replication, objects_from_config, view_from_bus};
pub use inbound::{INBOUND_CIDR, InboundLink, remote_applier};
pub use outbound::{OUTBOUND_CIDR, OutboundService};
pub use service::{
    CounterValues, ObjectSpec, PeerView, ReplicationConfig, ReplicationHandle, ReplicationService,
    Sink, SlotStatus, ViewFn, replication,
};
pub use slots::Key;
