//! `cargo xtask setup`: installs, idempotently, everything Duraplane needs on a Debian machine
//! that has only the Rust toolchain.
//!
//! What and why (see ../shared/DESIGN.md, "Toolchain facts"):
//! - The eBPF crate builds for `bpfel-unknown-none` with `-Z build-std=core`, which needs a
//!   compiler with library sources. A rustup `nightly` with `rust-src` is used when present;
//!   otherwise Debian's `rustc-web` + `rust-web-src` + `cargo-web` (1.96, LLVM 22) linked into
//!   rustup as the toolchain `duraplane-bpf`.
//! - `bpf-linker`, built from crates.io against Debian's LLVM 22.
//! - corosync and its client libraries (the cluster bus), iproute2/bpftool (namespaces,
//!   inspection), and the tools tests and benches drive (tcpdump, hping3, nftables,
//!   keepalived, perf).

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::run_cmd;

/// Debian packages, each with the reason it is needed.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "eBPF toolchain: rustc 1.96 with LLVM 22"),
    (
        "rust-web-src",
        "eBPF toolchain: core sources for -Z build-std",
    ),
    (
        "cargo-web",
        "eBPF toolchain: cargo for the linked toolchain",
    ),
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    ("libpolly-22-dev", "bpf-linker links against LLVM 22"),
    ("zlib1g-dev", "bpf-linker (LLVM) link dependency"),
    ("libzstd-dev", "bpf-linker (LLVM) link dependency"),
    ("pkg-config", "native library discovery"),
    ("corosync", "cluster membership and ordered messages"),
    ("libcpg-dev", "corosync CPG client library"),
    ("libcfg-dev", "corosync CFG client library"),
    ("libcmap-dev", "corosync CMAP client library"),
    ("libquorum-dev", "corosync quorum client library"),
    ("libvotequorum-dev", "corosync votequorum client library"),
    ("iproute2", "network namespaces and veth test hosts"),
    ("iputils-ping", "reachability checks in tests"),
    ("bpftool", "inspecting programs and maps"),
    ("tcpdump", "packet captures in tests"),
    ("hping3", "SYN floods in tests and benches"),
    ("nftables", "peer benchmark: per-source limits in nftables"),
    ("keepalived", "peer benchmark: VRRP failover"),
    ("linux-perf", "cargo xtask profile"),
    ("procps", "process inspection in tests"),
    ("e2fsprogs", "disk-full tests on a small ext4 image"),
    ("mount", "tmpfs and loop-device filesystems in tests"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_TOOLCHAIN: &str = "duraplane-bpf";

#[derive(clap::Args, Clone, Debug)]
pub struct SetupArgs {
    /// Do not install anything: only report what is missing (exit non-zero if anything is).
    #[arg(long)]
    pub check: bool,
    /// Skip the whole setup step (when you know the machine is ready).
    #[arg(long)]
    pub no_setup: bool,
}

pub fn run(args: &SetupArgs) -> Result<()> {
    if args.no_setup {
        return Ok(());
    }
    let t0 = Instant::now();
    eprintln!(
        "xtask setup: checking this machine (re-run any time; it only installs what is missing)"
    );
    check_debian()?;
    apt(args.check)?;
    let toolchain = bpf_toolchain(args.check)?;
    bpf_linker(args.check)?;
    kernel_report();
    eprintln!(
        "xtask setup: ready (eBPF toolchain `{toolchain}`, bpf-linker {BPF_LINKER_VERSION}) in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn check_debian() -> Result<()> {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let is_debian = os.lines().any(|l| {
        let l = l.trim();
        (l.starts_with("ID=") && l.trim_start_matches("ID=").trim_matches('"') == "debian")
            || (l.starts_with("ID_LIKE=") && l.contains("debian"))
    });
    if !is_debian {
        bail!(
            "this is not a Debian system (/etc/os-release); install by hand:\n  \
             packages: {}\n  \
             a nightly Rust with rust-src (`rustup toolchain install nightly --component rust-src`)\n  \
             bpf-linker: `cargo install bpf-linker` (needs LLVM development files)\n\
             then build with `cargo build`",
            APT_PACKAGES
                .iter()
                .map(|(p, _)| *p)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}

fn installed_packages(names: &[&str]) -> Result<BTreeSet<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\\n"])
        .args(names)
        .stderr(Stdio::null())
        .output()
        .context("cannot run dpkg-query")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?;
            let status = it.next()?;
            (status == "ii").then(|| name.split(':').next().unwrap_or(name).to_owned())
        })
        .collect())
}

fn apt(check_only: bool) -> Result<()> {
    let names: Vec<&str> = APT_PACKAGES.iter().map(|(p, _)| *p).collect();
    let have = installed_packages(&names)?;
    let missing: Vec<&(&str, &str)> = APT_PACKAGES
        .iter()
        .filter(|(p, _)| !have.contains(*p))
        .collect();
    if missing.is_empty() {
        eprintln!("xtask setup: Debian packages: all {} present", names.len());
        return Ok(());
    }
    for (p, why) in &missing {
        eprintln!("xtask setup: missing package {p} ({why})");
    }
    let list: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
    if check_only {
        bail!("missing packages: {}", list.join(" "));
    }
    if !nix_is_root() {
        bail!(
            "installing packages needs root: run as root, or install by hand:\n  \
             apt-get update && apt-get install -y --no-install-recommends {}",
            list.join(" ")
        );
    }
    run_cmd(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&list)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install failed (is this Debian 12 \"bookworm\" with its main archive?)")?;
    Ok(())
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn sysroot_has_core_src(toolchain: &str) -> bool {
    Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            Path::new(String::from_utf8_lossy(&o.stdout).trim())
                .join("lib/rustlib/src/rust/library/core")
                .is_dir()
        })
        .unwrap_or(false)
}

/// Returns the toolchain the eBPF crate will be built with (same order as userspace/build.rs).
fn bpf_toolchain(check_only: bool) -> Result<String> {
    if let Ok(t) = std::env::var("DURAPLANE_BPF_TOOLCHAIN") {
        eprintln!("xtask setup: eBPF toolchain from DURAPLANE_BPF_TOOLCHAIN: {t}");
        return Ok(t);
    }
    if sysroot_has_core_src("nightly") {
        eprintln!("xtask setup: eBPF toolchain: rustup nightly with rust-src");
        return Ok("nightly".into());
    }
    if sysroot_has_core_src(BPF_TOOLCHAIN) {
        eprintln!("xtask setup: eBPF toolchain: {BPF_TOOLCHAIN} (Debian rustc-web) linked");
        return Ok(BPF_TOOLCHAIN.into());
    }
    if check_only {
        bail!("no eBPF toolchain: `{BPF_TOOLCHAIN}` is not linked into rustup");
    }
    if !Path::new("/usr/lib/rustlib/src/rust/library/core").is_dir()
        || !Path::new("/usr/bin/cargo").exists()
    {
        bail!("rust-web-src / cargo-web are not installed; cannot link the eBPF toolchain");
    }
    run_cmd(Command::new("rustup").args(["toolchain", "link", BPF_TOOLCHAIN, "/usr"]))?;
    if !sysroot_has_core_src(BPF_TOOLCHAIN) {
        bail!("linked `{BPF_TOOLCHAIN}` but its sysroot has no core sources");
    }
    Ok(BPF_TOOLCHAIN.into())
}

fn bpf_linker(check_only: bool) -> Result<()> {
    let ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        eprintln!("xtask setup: bpf-linker present");
        return Ok(());
    }
    if check_only {
        bail!("bpf-linker is not installed");
    }
    eprintln!(
        "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes, once)"
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"),
    )
}

/// Prints the kernel facts Duraplane depends on; warns, never fails (CI kernels vary).
fn kernel_report() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let uring = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "absent".into());
    eprintln!(
        "xtask setup: kernel {} BTF={} io_uring_disabled={}",
        release.trim(),
        if btf {
            "yes"
        } else {
            "NO (CO-RE features unavailable)"
        },
        uring
    );
}
