//! Builds the eBPF object (`ebpf/duraplane-ebpf`) for `bpfel-unknown-none` and leaves it in
//! `OUT_DIR/duraplane-ebpf`, so building the daemon is one command.
//!
//! The eBPF crate needs `-Z build-std=core`, i.e. a toolchain with library sources that accepts
//! unstable flags. `cargo xtask setup` provides one; this script picks, in order:
//! `DURAPLANE_BPF_TOOLCHAIN`, a rustup `nightly` that has `rust-src`, then `duraplane-bpf`
//! (Debian's rustc-web linked into rustup by `cargo xtask setup`).

use std::{env, fs, path::PathBuf, process::Command};

fn toolchain_works(name: &str, need_src: bool) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", name, "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    if !need_src {
        return true;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    PathBuf::from(sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
}

/// Exposes the commit for `duraplane_build_info` and `duraplane version` (absent outside git).
/// Asks git where HEAD and the refs live: in a worktree (`cargo xtask bench-ab`) `.git` is
/// a file, and watching a path that does not exist would rebuild every time.
fn git_commit() {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let (Some(dir), Some(common)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) else {
        return;
    };
    println!("cargo:rerun-if-changed={dir}/HEAD");
    println!("cargo:rerun-if-changed={common}/refs/heads");
    if let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) {
        println!("cargo:rustc-env=DURAPLANE_GIT_COMMIT={commit}");
    }
}

fn main() {
    git_commit();
    println!("cargo:rerun-if-env-changed=DURAPLANE_BPF_TOOLCHAIN");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("duraplane-ebpf");

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Lets `cargo clippy`/docs work without the eBPF toolchain; loading then fails with a
        // clear error at run time.
        if !object.exists() {
            fs::write(&object, b"").expect("write empty eBPF placeholder");
        }
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return;
    }

    let toolchain = if let Ok(t) = env::var("DURAPLANE_BPF_TOOLCHAIN") {
        t
    } else if toolchain_works("nightly", true) {
        "nightly".to_owned()
    } else if toolchain_works("duraplane-bpf", true) {
        "duraplane-bpf".to_owned()
    } else {
        panic!(
            "no toolchain can build the eBPF programs: need a rustup `nightly` with rust-src, or \
             the `duraplane-bpf` toolchain. Run `cargo xtask setup` (installs Debian's rustc-web + \
             rust-web-src and links them as `duraplane-bpf`), or set DURAPLANE_BPF_TOOLCHAIN."
        );
    };
    // Debian's rustc-web is a stable compiler: -Z build-std needs RUSTC_BOOTSTRAP.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };

    let ebpf = aya_build::Package {
        name: "duraplane-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/duraplane-ebpf"),
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(&toolchain)) {
        panic!(
            "building the eBPF programs with toolchain `{toolchain}` failed: {e:#}\n\
             hint: `cargo xtask setup` installs bpf-linker and the toolchain"
        );
    }
}
