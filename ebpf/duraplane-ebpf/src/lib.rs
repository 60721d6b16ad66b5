//! Empty library target: lets `userspace/build.rs` depend on this crate so cargo rebuilds
//! the eBPF object when its sources change. The programs are in `main.rs`.
#![no_std]
