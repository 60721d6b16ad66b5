//! dp-logctl on a real stream directory: append, tail (with and without checkpoints, with
//! --max), position, add/remove a subscriber, verify (clean and with a damaged record) and
//! repair.

use std::{path::Path, process::Command};

const LOGCTL: &str = env!("CARGO_BIN_EXE_dp-logctl");

/// Runs `dp-logctl DIR ARGS…`; (success, stdout, stderr).
fn logctl(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(LOGCTL)
        .arg(dir)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run dp-logctl");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (good, out, err) = logctl(dir, args);
    assert!(good, "dp-logctl {args:?} failed: {err}");
    out
}

/// The texts of `tail` output lines (offset and timestamp checked to be numbers).
fn texts(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(3, '\t').collect();
            assert_eq!(f.len(), 3, "{l:?}");
            assert!(
                f[0].parse::<u64>().is_ok() && f[1].parse::<u64>().is_ok(),
                "{l:?}"
            );
            f[2].to_owned()
        })
        .collect()
}

#[test]
fn dp_logctl_appends_tails_checkpoints_verifies_and_repairs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("mainlog.cluster");

    let offsets = ok(
        &dir,
        &["append", "one", "two\n", "three", "--create-with", "m"],
    );
    let offsets: Vec<u64> = offsets
        .lines()
        .map(|l| l.parse().expect("offset"))
        .collect();
    assert_eq!(offsets.len(), 3);
    assert_eq!(offsets[0], 0);

    // Without --checkpoint nothing is consumed; a payload's own newline is not doubled.
    assert_eq!(
        texts(&ok(&dir, &["tail", "-s", "m"])),
        ["one", "two", "three"]
    );
    assert_eq!(texts(&ok(&dir, &["tail", "-s", "m", "-n", "1"])), ["one"]);
    // --checkpoint consumes what was printed, durably: the next run starts after it.
    assert_eq!(
        texts(&ok(&dir, &["tail", "-s", "m", "-n", "2", "--checkpoint"])),
        ["one", "two"]
    );
    assert_eq!(texts(&ok(&dir, &["tail", "-s", "m"])), ["three"]);
    let pos = ok(&dir, &["position", "m"]);
    assert!(
        pos.starts_with(&format!("subscriber 'm': next offset {}", offsets[2])),
        "{pos}"
    );

    // Subscribers: added at the oldest record, listed, removed; unknown ones refused.
    assert!(ok(&dir, &["add", "audit"]).starts_with("added 'audit' @ "));
    assert_eq!(texts(&ok(&dir, &["tail", "-s", "audit"])).len(), 3);
    let list = ok(&dir, &["list"]);
    assert!(
        list.contains("subscriber 'm'") && list.contains("subscriber 'audit'"),
        "{list}"
    );
    assert_eq!(ok(&dir, &["remove", "audit"]), "removed 'audit'\n");
    let (good, _, err) = logctl(&dir, &["tail", "-s", "audit"]);
    assert!(!good && err.contains("audit"), "{err}");

    assert!(ok(&dir, &["verify"]).ends_with("ok\n"));

    // A damaged record with a valid one after it (corruption, not a torn tail): verify
    // says where and fails; repair turns the damaged record into a gap and says so;
    // afterwards the stream verifies, readers report the gap and every other record
    // remains.
    let (seg, mut bytes, at) = std::fs::read_dir(&dir)
        .expect("stream dir")
        .flatten()
        .map(|e| e.path())
        .find_map(|p| {
            let bytes = std::fs::read(&p).ok()?;
            let at = bytes.windows(3).position(|w| w == b"two")?;
            Some((p, bytes, at))
        })
        .expect("segment holding the records");
    bytes[at] ^= 0x20;
    std::fs::write(&seg, &bytes).expect("damage");
    let (good, out, err) = logctl(&dir, &["verify"]);
    assert!(!good, "verify fails on a damaged record: {out}");
    assert!(
        out.contains(&format!("at offset {}", offsets[1])) && err.contains("repair"),
        "{out}{err}"
    );
    let repaired = ok(&dir, &["repair"]);
    assert!(
        repaired.starts_with(&format!("skipped offsets {}..{} (", offsets[1], offsets[2]))
            && !repaired.contains("cut at"),
        "{repaired}"
    );
    assert!(ok(&dir, &["verify"]).ends_with("ok\n"));
    assert_eq!(ok(&dir, &["repair"]), "nothing to repair\n");
    ok(&dir, &["add", "again"]);
    let tail = ok(&dir, &["tail", "-s", "again"]);
    assert!(
        tail.contains(&format!("# gap: offsets {}..{}", offsets[1], offsets[2])),
        "{tail}"
    );
    let records: String = tail
        .lines()
        .filter(|l| !l.starts_with("# "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(texts(&records), ["one", "three"], "{tail}");
}
