//! Choosing the reactor backend: io_uring where the kernel lets us, mio (epoll) where it
//! does not (`kernel.io_uring_disabled = 2`, seccomp filters returning EPERM/ENOSYS,
//! old kernels), forceable by `DURAPLANE_ENGINE` or the API/config option.

use std::{fmt, str::FromStr};

/// Environment variable that forces a backend; it wins over the configured choice so an
/// operator can switch without editing the file.
pub const ENV_VAR: &str = "DURAPLANE_ENGINE";

/// The backend actually running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    IoUring,
    Mio,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::IoUring => "io_uring",
            BackendKind::Mio => "mio",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// io_uring if usable, else mio.
    #[default]
    Auto,
    IoUring,
    Mio,
}

/// A backend name that is none of `auto`, `io_uring`, `mio`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown engine backend {value:?}: expected auto, io_uring or mio")]
pub struct BadBackendName {
    pub value: String,
}

impl FromStr for BackendChoice {
    type Err = BadBackendName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(BackendChoice::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(BackendChoice::IoUring),
            "mio" | "epoll" => Ok(BackendChoice::Mio),
            _ => Err(BadBackendName {
                value: s.to_owned(),
            }),
        }
    }
}

/// What the system allows, gathered by [`probe_system`] (or made up by tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conditions {
    /// `/proc/sys/kernel/io_uring_disabled` (absent on kernels before 6.6).
    pub io_uring_disabled: Option<u32>,
    /// Result of a trial `io_uring_setup`: `Err(errno)` on failure.
    pub setup: Result<(), i32>,
    /// The ring supports `IORING_FEAT_EXT_ARG` (5.11+), which the reactor needs to wait
    /// with a timeout.
    pub ext_arg: bool,
}

/// The decision and why, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub kind: BackendKind,
    pub reason: String,
}

/// The backend could not be chosen as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("{ENV_VAR}: {0}")]
    BadEnv(BadBackendName),
    #[error(
        "io_uring was forced ({source_of_choice}) but is unavailable: {reason}; use {ENV_VAR}=mio or leave it on auto"
    )]
    IoUringUnavailable {
        source_of_choice: &'static str,
        reason: String,
    },
}

/// Why io_uring cannot be used, or `None` if it can.
fn unavailable(c: &Conditions) -> Option<String> {
    if c.io_uring_disabled == Some(2) {
        return Some("kernel.io_uring_disabled = 2".into());
    }
    match c.setup {
        Err(e) if e == libc::EPERM || e == libc::EACCES => Some(format!(
            "io_uring_setup denied ({}; io_uring_disabled = {:?}, seccomp or an LSM)",
            std::io::Error::from_raw_os_error(e),
            c.io_uring_disabled
        )),
        Err(e) if e == libc::ENOSYS => Some("io_uring_setup is not implemented (ENOSYS)".into()),
        Err(e) => Some(format!(
            "io_uring_setup failed: {}",
            std::io::Error::from_raw_os_error(e)
        )),
        Ok(()) if !c.ext_arg => Some("kernel lacks IORING_FEAT_EXT_ARG (needs 5.11+)".into()),
        Ok(()) => None,
    }
}

/// Decides the backend. `env` is the value of [`ENV_VAR`] if set; `probe` is called only
/// when the decision depends on the system.
pub fn select(
    configured: BackendChoice,
    env: Option<&str>,
    probe: impl FnOnce() -> Conditions,
) -> Result<Selection, SelectError> {
    let (choice, source) = match env {
        Some(v) => (
            v.parse::<BackendChoice>().map_err(SelectError::BadEnv)?,
            ENV_VAR,
        ),
        None => (configured, "configuration"),
    };
    match choice {
        BackendChoice::Mio => Ok(Selection {
            kind: BackendKind::Mio,
            reason: format!("forced by {source}"),
        }),
        BackendChoice::IoUring => match unavailable(&probe()) {
            None => Ok(Selection {
                kind: BackendKind::IoUring,
                reason: format!("forced by {source}"),
            }),
            Some(reason) => Err(SelectError::IoUringUnavailable {
                source_of_choice: source,
                reason,
            }),
        },
        BackendChoice::Auto => match unavailable(&probe()) {
            None => Ok(Selection {
                kind: BackendKind::IoUring,
                reason: "auto: io_uring available".into(),
            }),
            Some(reason) => Ok(Selection {
                kind: BackendKind::Mio,
                reason: format!("auto: {reason}"),
            }),
        },
    }
}

/// Looks at the running system.
pub fn probe_system() -> Conditions {
    let io_uring_disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if io_uring_disabled == Some(2) {
        return Conditions {
            io_uring_disabled,
            setup: Err(libc::EPERM),
            ext_arg: false,
        };
    }
    match io_uring::IoUring::new(4) {
        Ok(r) => Conditions {
            io_uring_disabled,
            setup: Ok(()),
            ext_arg: r.params().is_feature_ext_arg(),
        },
        Err(e) => Conditions {
            io_uring_disabled,
            setup: Err(e.raw_os_error().unwrap_or(libc::EIO)),
            ext_arg: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Conditions {
        Conditions {
            io_uring_disabled: Some(0),
            setup: Ok(()),
            ext_arg: true,
        }
    }

    #[test]
    fn auto_prefers_io_uring() {
        let s = select(BackendChoice::Auto, None, ok).unwrap();
        assert_eq!(s.kind, BackendKind::IoUring);
    }

    #[test]
    fn auto_falls_back_when_disabled_or_denied() {
        let disabled = || Conditions {
            io_uring_disabled: Some(2),
            ..ok()
        };
        assert_eq!(
            select(BackendChoice::Auto, None, disabled).unwrap().kind,
            BackendKind::Mio
        );
        for errno in [libc::EPERM, libc::ENOSYS, libc::ENOMEM] {
            let s = select(BackendChoice::Auto, None, || Conditions {
                setup: Err(errno),
                ..ok()
            })
            .unwrap();
            assert_eq!(s.kind, BackendKind::Mio, "errno {errno}");
            assert!(s.reason.starts_with("auto: "));
        }
        let old = || Conditions {
            ext_arg: false,
            ..ok()
        };
        assert_eq!(
            select(BackendChoice::Auto, None, old).unwrap().kind,
            BackendKind::Mio
        );
    }

    #[test]
    fn env_overrides_configuration() {
        let s = select(BackendChoice::IoUring, Some("mio"), || panic!("no probe")).unwrap();
        assert_eq!(s.kind, BackendKind::Mio);
        assert!(s.reason.contains(ENV_VAR));
        let s = select(BackendChoice::Mio, Some("io_uring"), ok).unwrap();
        assert_eq!(s.kind, BackendKind::IoUring);
        assert!(matches!(
            select(BackendChoice::Auto, Some("kqueue"), ok),
            Err(SelectError::BadEnv(_))
        ));
    }

    #[test]
    fn forced_io_uring_fails_loudly_when_unavailable() {
        let e = select(BackendChoice::IoUring, None, || Conditions {
            setup: Err(libc::ENOSYS),
            ..ok()
        })
        .unwrap_err();
        assert!(matches!(e, SelectError::IoUringUnavailable { .. }));
        assert!(e.to_string().contains("ENOSYS"));
    }

    #[test]
    fn forced_mio_never_probes() {
        let s = select(BackendChoice::Mio, None, || panic!("no probe")).unwrap();
        assert_eq!(s.kind, BackendKind::Mio);
    }
}
