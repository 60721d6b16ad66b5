//! `cluster info` is built from pieces other capabilities own: the membership line comes
//! from the cluster bus once it exists, and each capability may append its own section
//! (XDP attachment, replication, logs …) without the console knowing about it.

use std::sync::{Arc, RwLock};

/// Produces the text of one `cluster info` section (one or more lines) at request time.
pub type InfoProvider = Arc<dyn Fn() -> String + Send + Sync>;

/// Produces the membership part of `cluster info`.
pub type MembershipProvider = Arc<dyn Fn() -> Membership + Send + Sync>;

/// What Momentum's `Daemon:` and `Cluster Group:` lines say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Text after `Daemon: ` (Momentum shows the Spread daemon and its private names).
    pub daemon: String,
    /// The leader node of the current view, when there is one.
    pub leader: Option<String>,
    /// Why there is no leader (shown as `(no membership: …)`).
    pub no_leader_reason: String,
}

impl Default for Membership {
    fn default() -> Self {
        Self {
            daemon: "corosync [not connected]".into(),
            leader: None,
            no_leader_reason: "corosync not connected".into(),
        }
    }
}

/// Registered `cluster info` sections and the membership provider; shared by clone.
#[derive(Clone, Default)]
pub struct InfoRegistry {
    sections: Arc<RwLock<Vec<(String, InfoProvider)>>>,
    membership: Arc<RwLock<Option<MembershipProvider>>>,
}

impl InfoRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the section `key`, or replaces it in place if it exists (so a placeholder
    /// registered at startup keeps its position when the capability takes over).
    pub fn set_section(&self, key: &str, provider: InfoProvider) {
        let mut s = self.sections.write().unwrap_or_else(|e| e.into_inner());
        match s.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = provider,
            None => s.push((key.to_owned(), provider)),
        }
    }

    /// Installs the source of the membership lines (the cluster bus).
    pub fn set_membership(&self, provider: MembershipProvider) {
        *self.membership.write().unwrap_or_else(|e| e.into_inner()) = Some(provider);
    }

    pub fn membership(&self) -> Membership {
        let p = self
            .membership
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        p.map(|f| f()).unwrap_or_default()
    }

    /// The sections' text, in registration order, each ending in a newline.
    pub fn render_sections(&self) -> String {
        let providers: Vec<InfoProvider> = self
            .sections
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, p)| Arc::clone(p))
            .collect();
        let mut out = String::new();
        for p in providers {
            let text = p();
            if text.is_empty() {
                continue;
            }
            out.push_str(&text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_replace_in_place() {
        let r = InfoRegistry::new();
        r.set_section("xdp", Arc::new(|| "XDP: placeholder".into()));
        r.set_section("logs", Arc::new(|| "Logs: none\n".into()));
        r.set_section("xdp", Arc::new(|| "XDP: attached to eth0".into()));
        assert_eq!(r.render_sections(), "XDP: attached to eth0\nLogs: none\n");
        assert_eq!(r.membership(), Membership::default());
    }
}
