//! Small real filesystems for disk-full tests (tmpfs, or ext4 on a loop device).
//! Each test crate that includes it uses a part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A small filesystem mounted on a temporary directory; unmounted (and its image removed)
/// on drop, even on failure.
pub struct Mounted {
    dir: tempfile::TempDir,
    image: Option<PathBuf>,
}

impl Mounted {
    pub fn tmpfs(size: &str) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "duraplane-log-test",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs (needs root)");
        Mounted { dir, image: None }
    }

    /// ext4 with 1 KiB blocks and a 1 MiB journal in an image of `mib` MiB.
    pub fn ext4(mib: u64) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let image = std::env::temp_dir().join(format!(
            "duraplane-disk-full-{}-{}.img",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        ));
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .unwrap();
        let m = Mounted {
            dir,
            image: Some(image.clone()),
        };
        let st = Command::new("mkfs.ext4")
            .args([
                "-q", "-F", "-b", "1024", "-N", "64", "-J", "size=1", "-m", "0",
            ])
            .arg(&image)
            .status()
            .expect("mkfs.ext4 (e2fsprogs; `cargo xtask setup` installs it)");
        assert!(st.success(), "mkfs.ext4 {}", image.display());
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(m.dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount -o loop (needs root and a loop device)");
        m
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
        if let Some(i) = &self.image {
            let _ = std::fs::remove_file(i);
        }
    }
}
