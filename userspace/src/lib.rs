//! Duraplane: a cluster data plane for fleets of mail servers.
//!
//! One folder per capability, each owning its state; data flows one way:
//! kernel maps → poller → replication → cluster totals → kernel maps.

pub mod bpf;
pub mod bus;
pub mod config;
pub mod console;
pub mod daemon;
pub mod duravip;
pub mod engine;
pub mod inbound;
pub mod localapi;
pub mod log;
pub mod metrics;
pub mod replicate;
pub mod security;
pub mod testbed;

/// The compiled eBPF object (all programs), built by `build.rs`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/duraplane-ebpf"));
