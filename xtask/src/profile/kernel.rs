//! What the kernel knows about Duraplane's eBPF programs and maps: `bpftool … --json`, the
//! verifier's instruction count, entry counts, run-time statistics and who holds what.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Program names of Duraplane's eBPF object (`duraplane_common::program_names`; xtask cannot
/// depend on the crates that need the eBPF toolchain).
pub const PROGRAMS: &[&str] = &["xdp_ingress", "xdp_pass"];
/// The kernel's switch for run-time statistics.
pub const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// One entry of `bpftool prog show --json`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Prog {
    pub id: u32,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    /// Present only while run-time statistics are (or were) enabled.
    pub run_time_ns: Option<u64>,
    pub run_cnt: Option<u64>,
    pub bytes_xlated: Option<u64>,
    pub bytes_jited: Option<u64>,
    /// Newer bpftool prints it; filled from `bpf_prog_info` otherwise.
    pub verified_insns: Option<u64>,
    #[serde(default)]
    pub map_ids: Vec<u32>,
}

impl Prog {
    /// Translated length in BPF instructions (8 bytes each).
    pub fn xlated_insns(&self) -> Option<u64> {
        self.bytes_xlated.map(|b| b / 8)
    }
}

/// One entry of `bpftool map show --json`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Map {
    pub id: u32,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    pub bytes_key: u32,
    pub bytes_value: u32,
    pub max_entries: u64,
    pub bytes_memlock: Option<u64>,
}

impl Map {
    /// Maps whose entries come and go (so a fill ratio means something).
    pub fn is_hash_like(&self) -> bool {
        self.kind.contains("hash") || self.kind == "lpm_trie"
    }
}

pub fn parse_progs(json: &str) -> Result<Vec<Prog>> {
    serde_json::from_str(json).context("cannot parse `bpftool prog show --json`")
}

pub fn parse_maps(json: &str) -> Result<Vec<Map>> {
    serde_json::from_str(json).context("cannot parse `bpftool map show --json`")
}

fn bpftool(args: &[&str]) -> Result<String> {
    let out = Command::new("bpftool").args(args).output().map_err(|e| {
        anyhow::anyhow!(
            "cannot run bpftool ({e}): install it with `cargo xtask setup` (Debian package bpftool)"
        )
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "bpftool {} failed: {} (listing BPF objects needs root, or CAP_SYS_ADMIN)",
            args.join(" "),
            err.trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Duraplane's loaded programs (every namespace: BPF objects are global), sorted by id, with
/// the verifier's instruction count filled in.
pub fn duraplane_progs() -> Result<Vec<Prog>> {
    let mut progs: Vec<Prog> = parse_progs(&bpftool(&["prog", "show", "--json"])?)?
        .into_iter()
        .filter(|p| PROGRAMS.contains(&p.name.as_str()))
        .collect();
    progs.sort_by_key(|p| p.id);
    let verified = verified_insns();
    for p in &mut progs {
        if p.verified_insns.is_none() {
            p.verified_insns = verified.get(&p.id).copied();
        }
    }
    Ok(progs)
}

/// Every map, by id.
pub fn maps() -> Result<BTreeMap<u32, Map>> {
    Ok(parse_maps(&bpftool(&["map", "show", "--json"])?)?
        .into_iter()
        .map(|m| (m.id, m))
        .collect())
}

/// `verified_insns` of `bpf_prog_info` (kernel ≥ 5.16) by program id; bpftool 7.1 does not
/// print it.
fn verified_insns() -> BTreeMap<u32, u64> {
    aya::programs::loaded_programs()
        .flatten()
        .filter_map(|p| Some((p.id(), u64::from(p.verified_instruction_count()?))))
        .collect()
}

/// How run-time statistics get switched on for the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatsMethod {
    /// `BPF_ENABLE_STATS`: on while our file descriptor is open; the kernel switches it off
    /// when the fd closes, even if this process is killed. The sysctl is never touched.
    Fd,
    /// Write 1 to kernel.bpf_stats_enabled and restore the previous value afterwards (also on
    /// error and Ctrl-C; not on SIGKILL). For kernels without BPF_ENABLE_STATS (< 5.8).
    Sysctl,
}

/// Keeps run-time statistics on; dropping it undoes exactly what it did (the values are
/// held only for their `Drop`).
#[derive(Debug)]
#[allow(dead_code)]
pub enum StatsGuard {
    Fd(OwnedFd),
    Sysctl(SysctlGuard),
}

impl StatsGuard {
    pub fn enable(method: StatsMethod) -> Result<StatsGuard> {
        match method {
            StatsMethod::Fd => aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .map(StatsGuard::Fd)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "BPF_ENABLE_STATS failed: {e} (needs CAP_SYS_ADMIN; kernels < 5.8 lack it: \
                         use --stats-method sysctl)"
                    )
                }),
            StatsMethod::Sysctl => {
                SysctlGuard::set(Path::new(BPF_STATS_SYSCTL), "1").map(StatsGuard::Sysctl)
            }
        }
    }
}

/// A sysctl (or any one-value file) set for a while; `Drop` writes the previous value back.
#[derive(Debug)]
pub struct SysctlGuard {
    path: PathBuf,
    previous: String,
}

impl SysctlGuard {
    pub fn set(path: &Path, value: &str) -> Result<SysctlGuard> {
        let previous = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .trim()
            .to_owned();
        std::fs::write(path, value)
            .with_context(|| format!("cannot write {} (needs root)", path.display()))?;
        Ok(SysctlGuard {
            path: path.to_path_buf(),
            previous,
        })
    }

    #[cfg(test)]
    pub fn previous(&self) -> &str {
        &self.previous
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.path, &self.previous) {
            eprintln!(
                "xtask: WARNING: could not restore {} to {}: {e}; do it by hand",
                self.path.display(),
                self.previous
            );
        }
    }
}

/// Counts a map's entries by walking its keys (`BPF_MAP_GET_NEXT_KEY`; no values are
/// copied), stopping at `bound`. Works for hash, LRU and LPM-trie maps.
pub fn count_entries(map_id: u32, key_size: u32, bound: u64) -> Result<u64> {
    let info = aya::maps::MapInfo::from_id(map_id)
        .with_context(|| format!("cannot open map {map_id} (needs root or CAP_SYS_ADMIN)"))?;
    let fd = info
        .fd()
        .with_context(|| format!("cannot open map {map_id}"))?;
    let fd = fd.as_fd().as_raw_fd();
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut n = 0;
    let mut first = true;
    while n < bound {
        // union bpf_attr for BPF_MAP_*_ELEM: map_fd u32 (+pad), key u64, next_key u64, flags.
        let mut attr = [0u64; 4];
        attr[0] = fd as u32 as u64;
        attr[1] = if first { 0 } else { key.as_ptr() as u64 };
        attr[2] = next.as_mut_ptr() as u64;
        // SAFETY: attr points at 32 valid bytes; key/next are key_size bytes each and outlive
        // the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                4, /* BPF_MAP_GET_NEXT_KEY */
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                break;
            }
            bail!("BPF_MAP_GET_NEXT_KEY on map {map_id}: {e}");
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
    Ok(n)
}

/// Which process holds each BPF program and map (from `/proc/*/fdinfo`): `prog_id`/`map_id`
/// → pid. Programs loaded by several processes list the lowest pid.
#[derive(Debug, Default)]
pub struct Holders {
    pub progs: BTreeMap<u32, u32>,
    pub maps: BTreeMap<u32, u32>,
}

impl Holders {
    pub fn scan() -> Holders {
        let mut h = Holders::default();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return h;
        };
        let mut pids: Vec<u32> = procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort();
        for pid in pids {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let t = target.to_string_lossy();
                let table = match t.as_ref() {
                    "anon_inode:bpf-prog" => &mut h.progs,
                    "anon_inode:bpf-map" => &mut h.maps,
                    _ => continue,
                };
                let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
                if let Some(id) = std::fs::read_to_string(info)
                    .ok()
                    .and_then(|s| fdinfo_id(&s))
                {
                    table.entry(id).or_insert(pid);
                }
            }
        }
        h
    }
}

/// The `prog_id:` or `map_id:` of a BPF fd's fdinfo.
pub fn fdinfo_id(fdinfo: &str) -> Option<u32> {
    fdinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        matches!(k.trim(), "prog_id" | "map_id")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

/// A process's command name.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progs_without_stats() {
        let p = parse_progs(include_str!("testdata/prog.json")).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "xdp_ingress");
        assert_eq!(p[0].kind, "xdp");
        assert_eq!(p[0].run_cnt, None);
        assert_eq!(p[0].xlated_insns(), Some(9808 / 8));
        assert_eq!(p[0].map_ids.len(), 11);
    }

    #[test]
    fn progs_with_stats() {
        let p = parse_progs(include_str!("testdata/prog_stats.json")).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].run_cnt, Some(516_965));
        assert_eq!(p[1].run_time_ns, Some(90_618_410));
        // A program without maps (not ours) parses too.
        assert_eq!(p[2].name, "bench_tx_rand");
        assert!(p[2].map_ids.is_empty());
    }

    #[test]
    fn maps_parse() {
        let m = parse_maps(include_str!("testdata/map.json")).unwrap();
        let flows = m.iter().find(|m| m.name == "FLOWS_V4").unwrap();
        assert_eq!(flows.kind, "hash");
        assert_eq!(flows.max_entries, 131_072);
        assert!(flows.is_hash_like());
        let rb = m.iter().find(|m| m.name == "DROP_EVENTS").unwrap();
        assert_eq!((rb.kind.as_str(), rb.bytes_key), ("ringbuf", 0));
        assert!(!rb.is_hash_like());
        assert!(m.iter().any(|m| m.kind == "lpm_trie" && m.is_hash_like()));
    }

    #[test]
    fn fdinfo() {
        let s = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t6\nprog_jited:\t1\nprog_tag:\ta4c364401df0d1a4\nmemlock:\t12288\nprog_id:\t562\n";
        assert_eq!(fdinfo_id(s), Some(562));
        assert_eq!(fdinfo_id("map_type:\t1\nmap_id:\t3550\n"), Some(3550));
        assert_eq!(fdinfo_id("pos:\t0\n"), None);
    }

    #[test]
    fn sysctl_guard_restores_on_drop_and_error() {
        let dir = std::env::temp_dir().join(format!("xtask-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bpf_stats_enabled");
        std::fs::write(&f, "0\n").unwrap();
        {
            let g = SysctlGuard::set(&f, "1").unwrap();
            assert_eq!(g.previous(), "0");
            assert_eq!(std::fs::read_to_string(&f).unwrap(), "1");
        }
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "0");
        // An error while the guard is held (the `?` path) restores too.
        let failing = || -> Result<()> {
            let _g = SysctlGuard::set(&f, "1")?;
            bail!("measurement failed")
        };
        assert!(failing().is_err());
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "0");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The real sysctl (root): set and restored to whatever it was.
    #[test]
    fn real_sysctl_restored() {
        let before = std::fs::read_to_string(BPF_STATS_SYSCTL).unwrap();
        {
            let _g = StatsGuard::enable(StatsMethod::Sysctl).unwrap();
            assert_eq!(
                std::fs::read_to_string(BPF_STATS_SYSCTL).unwrap().trim(),
                "1"
            );
        }
        assert_eq!(std::fs::read_to_string(BPF_STATS_SYSCTL).unwrap(), before);
    }

    /// BPF_ENABLE_STATS leaves the sysctl alone.
    #[test]
    fn fd_method_leaves_sysctl() {
        let before = std::fs::read_to_string(BPF_STATS_SYSCTL).unwrap();
        let g = StatsGuard::enable(StatsMethod::Fd).unwrap();
        assert!(matches!(g, StatsGuard::Fd(_)));
        assert_eq!(std::fs::read_to_string(BPF_STATS_SYSCTL).unwrap(), before);
        drop(g);
    }
}
