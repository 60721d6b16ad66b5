//! Free-space check before the test suite: a full `cargo xtask test` writes several GiB
//! (debug and check builds, the eBPF objects once per profile, the release build for the
//! bench smoke test). Running out half-way fails in rustc with ENOSPC after minutes of
//! work and says nothing about how much was missing; this says it before starting.

use std::{ffi::CString, os::unix::ffi::OsStrExt, path::Path};

use anyhow::{Result, bail};

/// What a cold `cargo xtask test` leaves in the target directory, with headroom: 3.6 GiB
/// measured from a fresh clone on 2026-11-25 (12 GiB before debug builds kept only line
/// tables and incremental state was turned off).
const COLD_BUILD_BYTES: u64 = 5 << 30;
/// Whatever is already built, a run still writes test binaries, logs and temporary files.
const MIN_FREE_BYTES: u64 = 1 << 30;

/// Fails when the filesystem holding `target` has clearly too little room for the suite.
/// `DURAPLANE_SKIP_DISK_CHECK=1` skips the check.
pub fn preflight(target: &Path) -> Result<()> {
    if std::env::var_os("DURAPLANE_SKIP_DISK_CHECK").is_some_and(|v| v == "1") {
        return Ok(());
    }
    let probe = target
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let Some(free) = free_bytes(probe) else {
        eprintln!(
            "xtask: warning: cannot tell the free space under {}",
            probe.display()
        );
        return Ok(());
    };
    let built = dir_bytes(target);
    let need = COLD_BUILD_BYTES.saturating_sub(built).max(MIN_FREE_BYTES);
    if free < need {
        bail!(
            "not enough disk space for the test suite: {} free under {}, about {} needed \
             ({} already built). Free space (`cargo clean` removes old builds), or point \
             CARGO_TARGET_DIR at a larger disk; DURAPLANE_SKIP_DISK_CHECK=1 skips this check",
            gib(free),
            probe.display(),
            gib(need),
            gib(built),
        );
    }
    eprintln!(
        "xtask: disk: {} free under {}, about {} needed",
        gib(free),
        probe.display(),
        gib(need)
    );
    Ok(())
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

fn free_bytes(path: &Path) -> Option<u64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is written by the call on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail * st.f_frsize)
}

/// Bytes allocated under `dir` (0 when it does not exist); symlinks are not followed.
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_under_a_directory() {
        let d = tempfile_dir();
        std::fs::write(d.join("a"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/b"), vec![1u8; 64 * 1024]).unwrap();
        let n = dir_bytes(&d);
        assert!((128 * 1024..=160 * 1024).contains(&n), "{n}");
        assert_eq!(dir_bytes(&d.join("missing")), 0);
        assert!(free_bytes(&d).is_some_and(|f| f > 0));
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-disk-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
