//! The daemon's built-in console commands, in Momentum's output formats
//! (reference/momentum.md §3.1) where Momentum documents one.

use super::{Services, identity::Identity, reload::ReloadError};
use crate::{
    config::{EcclusterListener, ListenAddr},
    console::{ConsoleError, Handler, RegisterError, Registry},
};
use std::{net::SocketAddr, sync::Arc, time::Instant};

/// Momentum's cluster service port when no ECCluster_Listener is configured.
pub const DEFAULT_CLUSTER_PORT: u16 = 4802;

/// The port of the first TCP `Listen` of the ECCluster_Listener.
pub fn cluster_port(listener: &EcclusterListener) -> u16 {
    listener
        .listens
        .iter()
        .find_map(|l| match &l.addr {
            ListenAddr::AnyV4(p) | ListenAddr::AnyV6(p) => Some(*p),
            ListenAddr::Inet(sa) => Some(sa.port()),
            ListenAddr::Unix(_) => None,
        })
        .unwrap_or(DEFAULT_CLUSTER_PORT)
}

/// `ADDR:PORT`, IPv6 in brackets, as `cluster nodeaddr` prints it.
pub fn nodeaddr_text(identity: &Identity, listener: &EcclusterListener) -> String {
    SocketAddr::new(identity.nodeaddr, cluster_port(listener)).to_string()
}

fn no_args(
    usage: &'static str,
    f: impl Fn() -> Result<String, ConsoleError> + Send + Sync + 'static,
) -> Handler {
    Arc::new(move |args: &[&str]| {
        if args.is_empty() {
            f()
        } else {
            Err(ConsoleError::Usage {
                usage: usage.to_owned(),
            })
        }
    })
}

fn list(registry: &Registry, group: Option<&str>) -> String {
    let cmds: Vec<(String, String)> = registry
        .commands()
        .into_iter()
        .filter(|(c, _)| group.is_none_or(|g| c.split(' ').next() == Some(g)))
        .collect();
    let width = cmds.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    cmds.iter()
        .map(|(c, h)| format!("{c:width$}  {h}\n"))
        .collect()
}

/// Registers `help`, `version`, `config reload` and `cluster help|nodename|nodeaddr|info`.
pub fn register(s: &Services) -> Result<(), RegisterError> {
    let reg = &s.console;

    let weak = reg.downgrade();
    reg.register(
        &["help"],
        "Display all available console commands.",
        no_args("help", move || {
            Ok(weak.upgrade().map(|r| list(&r, None)).unwrap_or_default())
        }),
    )?;
    let weak = reg.downgrade();
    reg.register(
        &["cluster", "help"],
        "Display the available console commands.",
        no_args("cluster help", move || {
            Ok(weak
                .upgrade()
                .map(|r| list(&r, Some("cluster")))
                .unwrap_or_default())
        }),
    )?;
    reg.register(
        &["version"],
        "Show the Duraplane version.",
        no_args("version", || {
            Ok(format!("duraplane {}\n", env!("CARGO_PKG_VERSION")))
        }),
    )?;

    let id = Arc::clone(&s.identity);
    reg.register(
        &["cluster", "nodename"],
        "Show the name of the local node.",
        no_args("cluster nodename", move || Ok(format!("{}\n", id.nodename))),
    )?;

    let (id, cfg) = (Arc::clone(&s.identity), s.config.clone());
    reg.register(
        &["cluster", "nodeaddr"],
        "Show the cluster protocol service address.",
        no_args("cluster nodeaddr", move || {
            Ok(format!(
                "{}\n",
                nodeaddr_text(&id, &cfg.current().config.listener)
            ))
        }),
    )?;

    let (id, cfg, info, started) = (
        Arc::clone(&s.identity),
        s.config.clone(),
        s.info.clone(),
        s.started,
    );
    reg.register(
        &["cluster", "info"],
        "Display the current operating status and parameters.",
        no_args("cluster info", move || {
            let loaded = cfg.current();
            let c = &loaded.config;
            let m = info.membership();
            let leader = match &m.leader {
                Some(l) => format!("({l} is leader)"),
                None => format!("(no membership: {})", m.no_leader_reason),
            };
            let mut out = format!(
                "Daemon: {}\nControl Group: {}\nCluster Group: {} {leader}\nLogger Group: {}\n",
                m.daemon,
                c.cluster.control_group,
                c.cluster.cluster_group,
                c.cluster.log_group.as_deref().unwrap_or("none"),
            );
            out.push_str(&format!(
                "Node: {} {}\nVersion: duraplane {}\nUptime: {} seconds\n",
                id.nodename,
                nodeaddr_text(&id, &c.listener),
                env!("CARGO_PKG_VERSION"),
                Instant::now().duration_since(started).as_secs(),
            ));
            out.push_str(&info.render_sections());
            Ok(out)
        }),
    )?;

    let reloader = Arc::clone(&s.reloader);
    reg.register(
        &["config", "reload"],
        "Reload the configuration file and apply it (as SIGHUP does).",
        no_args("config reload", move || match reloader.reload() {
            Ok(outcome) => Ok(outcome.summary()),
            Err(ReloadError::Load { source }) => Err(ConsoleError::Failed {
                message: format!(
                    "Configuration not reloaded; keeping the running configuration.\n{source}"
                ),
            }),
        }),
    )?;

    // Placeholder until the XDP capability replaces the "xdp" section with the real status.
    let cfg = s.config.clone();
    s.info.set_section(
        "xdp",
        Arc::new(move || {
            let ifs = &cfg.current().config.duraplane.interfaces;
            if ifs.is_empty() {
                "XDP: not attached (no duraplane { interfaces } configured)".to_owned()
            } else {
                format!("XDP: not attached (configured: {})", ifs.join(", "))
            }
        }),
    );
    Ok(())
}
