//! Lets LLVM emit one (possibly misaligned) load for `read_unaligned` of packet fields
//! instead of splitting it into byte loads. The kernel accepts misaligned packet and map
//! value accesses (the verifier is strict only about the stack, and only when the
//! architecture lacks efficient unaligned access or `BPF_F_STRICT_ALIGNMENT` is set). Needs a
//! bpf-linker built against LLVM ≥ 22, as installed by `cargo xtask setup`.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo::rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
    }
    println!("cargo::rerun-if-changed=build.rs");
}
