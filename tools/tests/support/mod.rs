//! Shared by the tools' namespace tests.

use std::path::{Path, PathBuf};

/// The `duraplane` binary of the same build (target/<profile>/duraplane): the tools'
/// tests run it as the daemon, and cargo only names binaries of the package under test.
pub fn duraplane_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("duraplane");
    assert!(
        bin.exists(),
        "{} missing: build it first (`cargo build -p duraplane`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}
