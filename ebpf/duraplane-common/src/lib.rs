//! The kernel/user contract of Duraplane.
//!
//! Every eBPF map key and value is defined here, once, `#[repr(C)]` with `zerocopy`
//! derives, and used by both the eBPF programs (`ebpf/duraplane-ebpf`) and the daemon
//! (`userspace`). Nothing on either side re-declares these layouts by hand.
#![no_std]
