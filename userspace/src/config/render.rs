//! `check-config` output: the effective configuration, every option Duraplane reads with
//! its value and where it came from. The output is itself a valid configuration that loads
//! back to the same [`Config`] (a test holds it to that), so an operator can copy it.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{Loaded, model::*, values::format_duration};

/// Column where the provenance comment starts, when the line is short enough.
const COMMENT_COL: usize = 44;

/// Renders the effective configuration in Momentum's syntax, one option per line, each
/// followed by `# default` or `# file:line:col`.
pub fn render_effective(loaded: &Loaded) -> String {
    let c = &loaded.config;
    let mut r = Renderer {
        out: String::new(),
        origins: &c.origins,
        indent: 0,
    };
    let _ = writeln!(
        r.out,
        "# Effective Duraplane configuration loaded from {}",
        c.source.display()
    );
    r.out.push_str(
        "# `# default` = not set in the file (documented default); otherwise where it was set.\n",
    );
    if !loaded.warnings.is_empty() {
        let _ = writeln!(
            r.out,
            "# {} warning(s); see check-config output.",
            loaded.warnings.len()
        );
    }
    r.out.push('\n');

    match &c.security {
        Some(s) => {
            r.open("Security");
            r.opt_str("user", s.user.as_deref(), "security.user");
            r.opt_str("group", s.group.as_deref(), "security.group");
            let caps: Vec<String> = s.capabilities.iter().map(|c| format!("{c}+ep")).collect();
            r.line(
                "Capabilities",
                &quote(&caps.join(" ")),
                "security.capabilities",
            );
            r.close();
        }
        None => r
            .out
            .push_str("# Security: not configured (privileges are left as started)\n\n"),
    }

    for l in &c.loggers {
        r.open(&format!("{} {}", l.module, quote(&l.name)));
        for (k, d) in &l.destinations {
            let v = match d {
                LogDestination::File(p) => p.display().to_string(),
                LogDestination::Cluster { path, subscribers } => match subscribers.len() {
                    0 => format!("cluster://{}", path.display()),
                    1 => format!("cluster://{}=>{}", path.display(), subscribers[0]),
                    _ => format!(
                        "cluster://{}?subscribers={}",
                        path.display(),
                        subscribers.join(",")
                    ),
                },
            };
            r.line(k, &quote(&v), &format!("{}.{}.{}", l.module, l.name, k));
        }
        r.close();
    }

    r.open("ECCluster_Listener");
    if c.listener.listens.is_empty() {
        r.comment("no Listen: the log service and message moves are not offered");
    }
    for l in &c.listener.listens {
        let spec = l.addr.to_string();
        let p = format!("eccluster_listener.listen.{spec}");
        r.open(&format!("Listen {}", quote(&spec)));
        r.line("enable", &l.enable.to_string(), &format!("{p}.enable"));
        r.line(
            "listen_backlog",
            &l.listen_backlog.to_string(),
            &format!("{p}.listen_backlog"),
        );
        r.line(
            "accept_queue_backlog",
            &l.accept_queue_backlog.to_string(),
            &format!("{p}.accept_queue_backlog"),
        );
        r.line(
            "concurrency",
            &l.concurrency.to_string(),
            &format!("{p}.concurrency"),
        );
        r.line(
            "disable_nagle_algorithm",
            &l.disable_nagle_algorithm.to_string(),
            &format!("{p}.disable_nagle_algorithm"),
        );
        r.line(
            "events_per_iter",
            &l.events_per_iter.to_string(),
            &format!("{p}.events_per_iter"),
        );
        r.line(
            "file_mode",
            &format!("\"{:04o}\"", l.file_mode),
            &format!("{p}.file_mode"),
        );
        r.opt_str(
            "pool_name",
            l.pool_name.as_deref(),
            &format!("{p}.pool_name"),
        );
        r.line(
            "tcp_recv_buffer_size",
            &l.tcp_recv_buffer_size.to_string(),
            &format!("{p}.tcp_recv_buffer_size"),
        );
        r.line(
            "tcp_send_buffer_size",
            &l.tcp_send_buffer_size.to_string(),
            &format!("{p}.tcp_send_buffer_size"),
        );
        for d in &c.duravips {
            if let DuravipSource::Listen { listener, spec: s } = &d.source
                && listener.eq_ignore_ascii_case("eccluster_listener")
                && crate::config::values::parse_listen(s).ok().as_ref() == Some(&l.addr)
            {
                r.duravip_opts(d);
            }
        }
        r.close();
    }
    r.close();

    let k = &c.cluster;
    r.open("cluster");
    r.line(
        "cluster_group",
        &quote(&k.cluster_group),
        "cluster.cluster_group",
    );
    r.line(
        "control_group",
        &quote(&k.control_group),
        "cluster.control_group",
    );
    r.opt_str("log_group", k.log_group.as_deref(), "cluster.log_group");
    r.open_value("logs = [");
    for (name, path) in &k.logs {
        let _ = writeln!(
            r.out,
            "{}{} = {}",
            "  ".repeat(r.indent),
            quote(name),
            quote(&path.display().to_string())
        );
    }
    r.indent -= 1;
    r.line_raw("]", "cluster.logs");
    r.dur(
        "log_active_interval",
        k.log_active_interval,
        "cluster.log_active_interval",
    );
    r.dur(
        "log_idle_interval",
        k.log_idle_interval,
        "cluster.log_idle_interval",
    );
    match &k.nodename {
        Some(n) => r.line("nodename", &quote(n), "cluster.nodename"),
        None => {
            r.comment("nodename: not set (EC_NODE_NAME, else the hostname up to the first '.')")
        }
    }
    match &k.nodeaddr {
        Some(a) => r.line("nodeaddr", &quote(&a.to_string()), "cluster.nodeaddr"),
        None => r.comment("nodeaddr: not set (resolved from the nodename at start-up)"),
    }
    r.dur(
        "heartbeat_start_delay",
        k.heartbeat_start_delay,
        "cluster.heartbeat_start_delay",
    );
    r.line(
        "heartbeats_per_sec",
        &k.heartbeats_per_sec.to_string(),
        "cluster.heartbeats_per_sec",
    );
    r.dur(
        "if_check_interval",
        k.if_check_interval,
        "cluster.if_check_interval",
    );
    r.line(
        "if_down_limit",
        &k.if_down_limit.to_string(),
        "cluster.if_down_limit",
    );
    r.line(
        "arp_all_hosts",
        &k.arp_all_hosts.to_string(),
        "cluster.arp_all_hosts",
    );
    r.line(
        "duravip_balance_set_size",
        &k.duravip_balance_set_size.to_string(),
        "cluster.duravip_balance_set_size",
    );
    r.dur(
        "view_mature_time",
        k.view_mature_time,
        "cluster.view_mature_time",
    );
    r.dur(
        "view_balance_interval",
        k.view_balance_interval,
        "cluster.view_balance_interval",
    );
    r.dur(
        "view_broadcast_interval",
        k.view_broadcast_interval,
        "cluster.view_broadcast_interval",
    );
    r.line(
        "unconditional_rebind",
        &k.unconditional_rebind.to_string(),
        "cluster.unconditional_rebind",
    );
    r.line("enabled", &k.enabled.to_string(), "cluster.enabled");
    r.line("debug_level", &quote(&k.debug_level), "cluster.debug_level");
    for rep in &k.replicate {
        let p = format!("replicate.{}", rep.name);
        r.open(&format!("Replicate {}", quote(&rep.name)));
        r.line("type", &quote(rep.kind.as_str()), &format!("{p}.type"));
        r.opt_str("class", rep.class.as_deref(), &format!("{p}.class"));
        if rep.parameters.is_empty() {
            r.comment("parameters: none");
        } else {
            r.line(
                "parameters",
                &quote(&rep.parameters.join(";")),
                &format!("{p}.parameters"),
            );
        }
        r.dur("max_delay", rep.max_delay, &format!("{p}.max_delay"));
        r.line(
            "max_pending",
            &rep.max_pending.to_string(),
            &format!("{p}.max_pending"),
        );
        let size = rep
            .max_size
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-1".into());
        r.line("max_size", &size, &format!("{p}.max_size"));
        r.opt_str(
            "binding_group",
            rep.binding_group.as_deref(),
            &format!("{p}.binding_group"),
        );
        r.close();
    }
    for t in &k.topology {
        let p = format!("topology.{}", t.network);
        r.open(&format!("Topology {}", quote(&t.network.to_string())));
        r.line(
            "cidrmask",
            &t.cidrmask.to_string(),
            &format!("{p}.cidrmask"),
        );
        r.line("interface", &quote(&t.interface), &format!("{p}.interface"));
        r.close();
    }
    r.close();

    // DuraVIP declarations outside ECCluster_Listener, grouped as they were declared.
    let mut by_listener: BTreeMap<&str, Vec<&DuravipDecl>> = BTreeMap::new();
    for d in &c.duravips {
        match &d.source {
            DuravipSource::Binding { name } => {
                r.open(&format!("Binding {}", quote(name)));
                r.line(
                    "Bind_Address",
                    &quote(&d.addr.to_string()),
                    &format!("duravip.{}", d.addr),
                );
                r.duravip_opts(d);
                r.close();
            }
            DuravipSource::Listen { listener, .. }
                if !listener.eq_ignore_ascii_case("eccluster_listener") =>
            {
                by_listener.entry(listener.as_str()).or_default().push(d);
            }
            DuravipSource::Listen { .. } => {}
        }
    }
    for (listener, decls) in by_listener {
        r.open(listener);
        for d in decls {
            if let DuravipSource::Listen { spec, .. } = &d.source {
                r.open(&format!("Listen {}", quote(spec)));
                r.duravip_opts(d);
                r.close();
            }
        }
        r.close();
    }

    let o = &c.duraplane;
    r.open("duraplane");
    r.line(
        "control_socket",
        &quote(&o.control_socket.display().to_string()),
        "duraplane.control_socket",
    );
    let metrics = o
        .metrics_listen
        .map(|a| a.to_string())
        .unwrap_or_else(|| "off".into());
    r.line("metrics", &quote(&metrics), "duraplane.metrics");
    let ifs: Vec<String> = o.interfaces.iter().map(|i| quote(i)).collect();
    r.line("interfaces", &list(&ifs), "duraplane.interfaces");
    r.line(
        "xdp_mode",
        &quote(o.xdp_mode.as_str()),
        "duraplane.xdp_mode",
    );
    let ports: Vec<String> = o.ports.iter().map(|p| p.to_string()).collect();
    r.line("ports", &list(&ports), "duraplane.ports");
    r.dur(
        "flow_idle_timeout",
        o.flow_idle_timeout,
        "duraplane.flow_idle_timeout",
    );
    r.line(
        "cluster_key_file",
        &quote(&o.cluster_key_file.display().to_string()),
        "duraplane.cluster_key_file",
    );
    r.line(
        "state_dir",
        &quote(&o.state_dir.display().to_string()),
        "duraplane.state_dir",
    );
    r.dur("poll_interval", o.poll_interval, "duraplane.poll_interval");
    for n in &o.netblocks {
        let p = format!("duraplane.netblock.{}", n.cidr);
        r.open(&format!("Netblock {}", quote(&n.cidr.to_string())));
        match n.max_connections {
            Some(m) => r.line(
                "max_connections",
                &m.to_string(),
                &format!("{p}.max_connections"),
            ),
            None => r.comment("max_connections: none (count only)"),
        }
        r.line("action", &quote(n.action.as_str()), &format!("{p}.action"));
        r.close();
    }
    r.close();
    r.out
}

struct Renderer<'a> {
    out: String,
    origins: &'a BTreeMap<String, Origin>,
    indent: usize,
}

impl Renderer<'_> {
    fn pad(&self) -> String {
        "  ".repeat(self.indent)
    }
    fn open(&mut self, head: &str) {
        let _ = writeln!(self.out, "{}{head} {{", self.pad());
        self.indent += 1;
    }
    fn open_value(&mut self, head: &str) {
        let _ = writeln!(self.out, "{}{head}", self.pad());
        self.indent += 1;
    }
    fn close(&mut self) {
        self.indent = self.indent.saturating_sub(1);
        let _ = writeln!(self.out, "{}}}", self.pad());
        if self.indent == 0 {
            self.out.push('\n');
        }
    }
    fn comment(&mut self, text: &str) {
        let _ = writeln!(self.out, "{}# {text}", self.pad());
    }
    fn provenance(&self, key: &str) -> String {
        match self.origins.get(key) {
            Some(Origin::File { file, line, col }) => {
                format!("{}:{line}:{col}", file.display())
            }
            Some(Origin::Derived(how)) => format!("derived: {how}"),
            Some(Origin::Default) | None => "default".into(),
        }
    }
    fn line_raw(&mut self, text: &str, key: &str) {
        let body = format!("{}{text}", self.pad());
        let width = body.chars().count();
        let gap = if width + 3 > COMMENT_COL {
            3
        } else {
            COMMENT_COL - width
        };
        let _ = writeln!(
            self.out,
            "{body}{}# {}",
            " ".repeat(gap),
            self.provenance(key)
        );
    }
    fn line(&mut self, name: &str, value: &str, key: &str) {
        self.line_raw(&format!("{name} = {value}"), key);
    }
    fn opt_str(&mut self, name: &str, value: Option<&str>, key: &str) {
        match value {
            Some(v) => self.line(name, &quote(v), key),
            None => self.comment(&format!("{name}: not set")),
        }
    }
    fn dur(&mut self, name: &str, d: std::time::Duration, key: &str) {
        self.line(name, &format_duration(d), key);
    }
    fn duravip_opts(&mut self, d: &DuravipDecl) {
        let key = format!("duravip.{}", d.addr);
        match &d.follow {
            Some(f) => self.line("Duravip_Follow", &quote(f), &key),
            None => {
                self.line("Enable_Duravip", "true", &key);
                if let Some(p) = &d.preference {
                    self.line("Duravip_Preference", &quote(p), &key);
                }
            }
        }
    }
}

/// A double-quoted string with `"` and `\` escaped (the escapes the lexer understands).
fn quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        if ch == '"' || ch == '\\' {
            o.push('\\');
        }
        o.push(ch);
    }
    o.push('"');
    o
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "()".into()
    } else {
        format!("( {} )", items.join(" "))
    }
}
