//! Cluster key file checks: each failure names the file and the fix.

use std::{fs, os::unix::fs::PermissionsExt};

use duraplane::engine::{ClusterKey, KeyError};

fn write(dir: &tempfile::TempDir, name: &str, content: &[u8], mode: u32) -> std::path::PathBuf {
    let p = dir.path().join(name);
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[test]
fn good_key_loads_and_trailing_newline_is_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(&dir, "a", b"0123456789abcdef0123456789abcdef\n", 0o600);
    let b = write(&dir, "b", b"0123456789abcdef0123456789abcdef", 0o400);
    let ka = ClusterKey::load(&a).unwrap();
    let kb = ClusterKey::load(&b).unwrap();
    assert_eq!(format!("{ka:?}"), "ClusterKey(32 bytes)");
    // Same key after trimming: a handshake between them succeeds.
    use duraplane::engine::auth::{Handshake, Role, Step};
    let (mut x, hx) = Handshake::start(Role::Initiator, "x");
    let (mut y, hy) = Handshake::start(Role::Acceptor, "y");
    let Step::Send(px) = x.on_frame(&ka, &hy).unwrap() else {
        panic!()
    };
    let Step::Send(py) = y.on_frame(&kb, &hx).unwrap() else {
        panic!()
    };
    assert!(x.on_frame(&ka, &py).is_ok());
    assert!(y.on_frame(&kb, &px).is_ok());
}

#[test]
fn missing_file_names_path_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nope.key");
    let e = ClusterKey::load(&p).unwrap_err();
    assert!(matches!(e, KeyError::Read { .. }));
    let msg = e.to_string();
    assert!(msg.contains(&p.display().to_string()), "{msg}");
    assert!(msg.contains("chmod 600"), "{msg}");
}

#[test]
fn group_or_other_readable_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
        let p = write(&dir, "k", b"0123456789abcdef0123456789abcdef", mode);
        let e = ClusterKey::load(&p).unwrap_err();
        assert!(
            matches!(e, KeyError::Permissions { mode: m, .. } if m == mode),
            "{mode:o}: {e}"
        );
        let msg = e.to_string();
        assert!(msg.contains(&format!("chmod 600 {}", p.display())), "{msg}");
    }
}

#[test]
fn empty_or_short_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (content, len) in [
        (&b""[..], 0),
        (b"\n\n", 0),
        (b"short-key-15byte", 16),
        (b"fifteen-bytes!!", 15),
    ] {
        let p = write(&dir, "k", content, 0o600);
        match ClusterKey::load(&p) {
            Ok(_) => assert!(len >= 16, "{content:?} accepted"),
            Err(KeyError::TooShort { len: l, path }) => {
                assert_eq!(l, len);
                assert_eq!(path, p);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(ClusterKey::from_bytes(b"too short").is_none());
}
