//! `Security { user group Capabilities }`: after privileged setup (sockets bound, BPF
//! loaded) the daemon becomes `user`/`group` and keeps only the listed capabilities plus
//! the ones it cannot work without (see [`REQUIRED`] and docs/operations.md).
//!
//! Capabilities are per thread on Linux, so [`apply`] must run before the daemon starts
//! any thread; every thread started afterwards inherits the reduced sets.

use crate::config::Security;
use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Group, Uid, User};
use std::str::FromStr;

/// Capabilities Duraplane adds to the configured list, and why:
/// - `CAP_BPF`: with `kernel.unprivileged_bpf_disabled` (the default) every bpf() call —
///   map lookups and updates on maps already open included — needs it;
/// - `CAP_NET_ADMIN`: netlink and XDP attach/detach on the configured interfaces, DuraVIP
///   address plumbing;
/// - `CAP_NET_RAW`: AF_PACKET for gratuitous ARP / neighbour advertisements;
/// - `CAP_PERFMON`: BPF programs that read kernel memory or use pointer arithmetic need it
///   in addition to CAP_BPF.
///
/// Momentum's default capability string lacks CAP_BPF (it predates it), so a Momentum
/// configuration would otherwise leave the data plane unable to read its own counters.
pub const REQUIRED: [Capability; 4] = [
    Capability::CAP_BPF,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_NET_RAW,
    Capability::CAP_PERFMON,
];

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("Security: unknown capability '{name}' in Capabilities")]
    UnknownCapability { name: String },
    #[error("Security: user '{user}' does not exist")]
    NoSuchUser { user: String },
    #[error("Security: group '{group}' does not exist")]
    NoSuchGroup { group: String },
    #[error("Security: cannot look up {what} '{name}': {source}")]
    Lookup {
        what: &'static str,
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error(
        "Security: switching to user {user} needs root (running as uid {uid}); start duraplane as root or remove the Security stanza"
    )]
    NotRoot { user: String, uid: u32 },
    #[error("Security: {step} failed: {source}")]
    Syscall {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("Security: {step} failed: {source}")]
    Caps {
        step: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error(
        "Security: after the privilege drop the effective capabilities are {got}, expected {expected}"
    )]
    Verify { got: String, expected: String },
}

/// The capability sets to keep: the configured ones plus [`REQUIRED`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityPlan {
    /// Sorted by capability number, no duplicates.
    pub keep: Vec<Capability>,
    /// Which of [`REQUIRED`] were not in the configuration (logged at the drop).
    pub added: Vec<Capability>,
}

/// Parses Momentum capability names (`cap_net_admin`, already stripped of `+ep`) and adds
/// what Duraplane needs.
pub fn capability_plan(listed: &[String]) -> Result<CapabilityPlan, SecurityError> {
    let mut keep: Vec<Capability> = Vec::new();
    for name in listed {
        let canonical = caps::to_canonical(name.trim());
        let cap =
            Capability::from_str(&canonical).map_err(|_| SecurityError::UnknownCapability {
                name: name.to_owned(),
            })?;
        if !keep.contains(&cap) {
            keep.push(cap);
        }
    }
    let added: Vec<Capability> = REQUIRED
        .iter()
        .copied()
        .filter(|c| !keep.contains(c))
        .collect();
    keep.extend(added.iter().copied());
    keep.sort_by_key(|c| c.index());
    Ok(CapabilityPlan { keep, added })
}

/// Bit mask of a capability set, as /proc/<pid>/status `CapEff:` shows it.
pub fn mask<'a>(set: impl IntoIterator<Item = &'a Capability>) -> u64 {
    set.into_iter().fold(0, |m, c| m | c.bitmask())
}

fn names<'a>(set: impl IntoIterator<Item = &'a Capability>) -> String {
    set.into_iter()
        .map(|c| c.to_string().to_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// Who to become and what to keep, resolved before anything is changed.
#[derive(Debug, Clone)]
pub struct PrivilegePlan {
    /// `(name, uid)`; `None` when `Security` names no user (stay uid 0, reduce capabilities).
    pub user: Option<(String, Uid)>,
    /// Explicit group, else the user's primary group.
    pub group: Option<(String, Gid)>,
    pub caps: CapabilityPlan,
}

impl PrivilegePlan {
    /// Resolves names against the user/group database; a missing user or group is an error
    /// here, before any privileged setup.
    pub fn resolve(sec: &Security) -> Result<Self, SecurityError> {
        let caps = capability_plan(&sec.capabilities)?;
        let user = match &sec.user {
            None => None,
            Some(name) => {
                let u = lookup_user(name)?;
                Some((name.clone(), u.uid, u.gid))
            }
        };
        let group = match (&sec.group, &user) {
            (Some(g), _) => Some((g.clone(), lookup_group(g)?)),
            (None, Some((_, _, primary))) => {
                let name = Group::from_gid(*primary)
                    .ok()
                    .flatten()
                    .map(|g| g.name)
                    .unwrap_or_else(|| primary.to_string());
                Some((name, *primary))
            }
            (None, None) => None,
        };
        Ok(Self {
            user: user.map(|(n, uid, _)| (n, uid)),
            group,
            caps,
        })
    }

    pub fn uid(&self) -> Option<u32> {
        self.user.as_ref().map(|(_, u)| u.as_raw())
    }

    pub fn gid(&self) -> Option<u32> {
        self.group.as_ref().map(|(_, g)| g.as_raw())
    }
}

fn lookup_user(name: &str) -> Result<User, SecurityError> {
    match User::from_name(name) {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(SecurityError::NoSuchUser {
            user: name.to_owned(),
        }),
        Err(source) => Err(SecurityError::Lookup {
            what: "user",
            name: name.to_owned(),
            source,
        }),
    }
}

fn lookup_group(name: &str) -> Result<Gid, SecurityError> {
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(SecurityError::NoSuchGroup {
            group: name.to_owned(),
        }),
        Err(source) => Err(SecurityError::Lookup {
            what: "group",
            name: name.to_owned(),
            source,
        }),
    }
}

fn caps_err(step: &'static str) -> impl FnOnce(caps::errors::CapsError) -> SecurityError {
    move |source| SecurityError::Caps { step, source }
}

fn sys_err(step: &'static str) -> impl FnOnce(nix::Error) -> SecurityError {
    move |source| SecurityError::Syscall { step, source }
}

/// Drops privileges as planned and returns the capabilities actually kept. Order matters:
/// keep-caps on, shrink the bounding set while CAP_SETPCAP is still there, change
/// groups/gid/uid, then set permitted/effective to exactly the kept set and clear
/// inheritable/ambient (Duraplane executes no helper programs).
///
/// A planned capability this process was started without (a container runtime or a systemd
/// `CapabilityBoundingSet` may withhold some) cannot be kept: it is left out with a warning
/// rather than failing the start.
pub fn apply(plan: &PrivilegePlan) -> Result<Vec<Capability>, SecurityError> {
    let euid = nix::unistd::geteuid();
    let switching = plan.user.as_ref().is_some_and(|(_, u)| *u != euid)
        || plan
            .group
            .as_ref()
            .is_some_and(|(_, g)| *g != nix::unistd::getegid());
    if switching && !euid.is_root() {
        return Err(SecurityError::NotRoot {
            user: plan
                .user
                .as_ref()
                .map(|(n, _)| n.clone())
                .unwrap_or_default(),
            uid: euid.as_raw(),
        });
    }
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_err("reading permitted"))?;
    let (kept, missing): (Vec<Capability>, Vec<Capability>) = plan
        .caps
        .keep
        .iter()
        .copied()
        .partition(|c| permitted.contains(c));
    if !missing.is_empty() {
        tracing::warn!(
            "Security: this process was started without {}, so it cannot keep it (check the container runtime or systemd CapabilityBoundingSet); continuing without it",
            names(&missing)
        );
    }
    let keep: CapsHashSet = kept.iter().copied().collect();

    caps::securebits::set_keepcaps(true).map_err(caps_err("PR_SET_KEEPCAPS"))?;
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::runtime::thread_all_supported() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(caps_err("dropping from the bounding set"))?;
            }
        }
    }
    if let Some((_, gid)) = &plan.group {
        if switching {
            nix::unistd::setgroups(&[*gid]).map_err(sys_err("setgroups"))?;
        }
        nix::unistd::setgid(*gid).map_err(sys_err("setgid"))?;
    }
    if let Some((_, uid)) = &plan.user {
        nix::unistd::setuid(*uid).map_err(sys_err("setuid"))?;
    }
    caps::set(None, CapSet::Effective, &keep).map_err(caps_err("setting effective"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(caps_err("setting permitted"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("clearing inheritable"))?;
    // Ambient capabilities may be unsupported (old kernels); nothing to clear then.
    if caps::runtime::ambient_set_supported().is_ok() {
        caps::clear(None, CapSet::Ambient).map_err(caps_err("clearing ambient"))?;
    }
    caps::securebits::set_keepcaps(false).map_err(caps_err("PR_SET_KEEPCAPS off"))?;

    let got = caps::read(None, CapSet::Effective).map_err(caps_err("reading effective"))?;
    if mask(&got) != mask(&kept) {
        let mut got: Vec<Capability> = got.into_iter().collect();
        got.sort_by_key(|c| c.index());
        return Err(SecurityError::Verify {
            got: names(&got),
            expected: names(&kept),
        });
    }
    Ok(kept)
}

/// Resolves, applies and logs the privilege drop for the configured `Security` stanza.
/// Without one, the daemon keeps the identity it was started with and says so.
pub fn drop_privileges(plan: Option<&PrivilegePlan>) -> Result<(), SecurityError> {
    let Some(plan) = plan else {
        let uid = nix::unistd::geteuid();
        if uid.is_root() {
            tracing::warn!(
                "no Security stanza: staying root (uid 0) with all capabilities; configure Security {{ user group Capabilities }} to drop privileges"
            );
        } else {
            tracing::info!(uid = uid.as_raw(), "no Security stanza: running as started");
        }
        return Ok(());
    };
    if !plan.caps.added.is_empty() {
        let added = &plan.caps.added;
        tracing::info!(
            "Security: keeping {} in addition to the configured Capabilities; Duraplane needs them after the privilege drop (Momentum's default capability string lacks CAP_BPF, which every bpf() call including map reads needs; CAP_NET_ADMIN for XDP/netlink, CAP_NET_RAW for ARP/NA, CAP_PERFMON for BPF programs)",
            names(added)
        );
    }
    let kept = apply(plan)?;
    tracing::info!(
        user = plan.user.as_ref().map(|(n, _)| n.as_str()).unwrap_or("root"),
        uid = nix::unistd::getuid().as_raw(),
        gid = nix::unistd::getgid().as_raw(),
        capabilities = %names(&kept),
        "privileges dropped"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn momentum_default_string_gets_bpf_added() {
        let listed: Vec<String> = [
            "cap_net_admin",
            "cap_net_bind_service",
            "cap_net_raw",
            "cap_sys_resource",
        ]
        .map(String::from)
        .to_vec();
        let p = capability_plan(&listed).unwrap();
        assert_eq!(p.added, vec![Capability::CAP_BPF, Capability::CAP_PERFMON]);
        assert_eq!(p.keep.len(), 6);
        assert!(p.keep.contains(&Capability::CAP_SYS_RESOURCE));
        let expected = (1u64 << 12) | (1 << 10) | (1 << 13) | (1 << 24) | (1 << 38) | (1 << 39);
        assert_eq!(mask(&p.keep), expected);
    }

    #[test]
    fn unknown_capability_is_an_error() {
        let e = capability_plan(&["cap_fly".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Security: unknown capability 'cap_fly' in Capabilities"
        );
    }

    #[test]
    fn missing_user_and_group_are_errors() {
        let sec = Security {
            user: Some("no-such-user-duraplane".into()),
            group: None,
            capabilities: vec![],
        };
        assert!(matches!(
            PrivilegePlan::resolve(&sec),
            Err(SecurityError::NoSuchUser { .. })
        ));
        let sec = Security {
            user: Some("root".into()),
            group: Some("no-such-group-duraplane".into()),
            capabilities: vec![],
        };
        assert!(matches!(
            PrivilegePlan::resolve(&sec),
            Err(SecurityError::NoSuchGroup { .. })
        ));
    }
}
