//! From the syntax tree to the typed [`Config`]: defaults, validation, provenance.
//!
//! Scopes Duraplane owns (`cluster`, `Replicate`, `Topology`, `ECCluster_Listener`/`Listen`,
//! `Security`, `duraplane`, `Netblock`) reject unknown options with a suggestion, because a
//! misspelt option there silently changes behaviour. Everything else in a Momentum file is
//! Momentum's business: Duraplane reads the few DuraVIP and logger options it needs and
//! warns about the rest so nothing is ignored silently. All errors are collected.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use super::{
    Diagnostic,
    lexer::Pos,
    model::*,
    parser::{Node, Scope, Spanned, Value, ValueKind},
    suggest::did_you_mean,
    values::{self, Bad},
};

/// Collected diagnostics and provenance while building the model.
#[derive(Default)]
pub struct Ctx {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
    pub origins: BTreeMap<String, Origin>,
}

fn origin(pos: &Pos) -> Origin {
    Origin::File {
        file: pos.file.as_ref().clone(),
        line: pos.line,
        col: pos.col,
    }
}

impl Ctx {
    fn err(&mut self, pos: &Pos, msg: impl Into<String>) {
        self.errors.push(pos.diag(msg));
    }
    fn err_s(&mut self, pos: &Pos, msg: impl Into<String>, suggestion: Option<String>) {
        let mut d = pos.diag(msg);
        d.suggestion = suggestion;
        self.errors.push(d);
    }
    fn warn(&mut self, pos: &Pos, msg: impl Into<String>) {
        self.warnings.push(pos.diag(msg));
    }
    /// A conversion failure of option `key`.
    fn bad(&mut self, pos: &Pos, key: &str, b: Bad) {
        self.err_s(pos, format!("`{key}`: {}", b.message), b.suggestion);
    }
    fn set(&mut self, key: impl Into<String>, pos: Option<&Pos>) {
        self.origins
            .insert(key.into(), pos.map(origin).unwrap_or(Origin::Default));
    }
}

/// What a scope accepts.
struct Spec {
    options: &'static [&'static str],
    scopes: &'static [&'static str],
    /// Momentum options Duraplane knows and deliberately ignores (warned).
    ignored: &'static [&'static str],
    /// Unknown names are errors (owned scope) or warnings (Momentum's scope).
    owned: bool,
    /// Other spellings read as a documented option: (alias, option).
    aliases: &'static [(&'static str, &'static str)],
}

impl Spec {
    /// A scope Duraplane owns: a misspelt name there would silently change behaviour.
    const fn owned(options: &'static [&'static str], scopes: &'static [&'static str]) -> Self {
        Spec {
            options,
            scopes,
            ignored: &[],
            owned: true,
            aliases: &[],
        }
    }
    /// A scope of Momentum's, of which Duraplane reads only a few names.
    const fn foreign(options: &'static [&'static str], scopes: &'static [&'static str]) -> Self {
        Spec {
            owned: false,
            ..Spec::owned(options, scopes)
        }
    }
}

/// The options and child scopes of one scope (or of several merged singleton scopes).
struct Opts<'a> {
    opts: BTreeMap<String, (&'a Spanned, &'a Value)>,
    scopes: Vec<&'a Scope>,
}

impl<'a> Opts<'a> {
    fn get(&self, name: &str) -> Option<(&'a Spanned, &'a Value)> {
        self.opts.get(name).copied()
    }
    fn scopes_named(&self, kw: &str) -> impl Iterator<Item = &'a Scope> + '_ {
        let kw = kw.to_owned();
        self.scopes
            .iter()
            .copied()
            .filter(move |s| s.keyword.is(&kw))
    }
}

fn scope_label(s: &Scope) -> String {
    match &s.name {
        Some(n) => format!("{} \"{}\"", s.keyword.text, n.text),
        None => s.keyword.text.clone(),
    }
}

/// Sorts the nodes of `bodies` by `spec`; `what` names the scope in messages
/// ("cluster", "Replicate \"x\"").
fn collect<'a>(ctx: &mut Ctx, bodies: &[&'a [Node]], what: &str, spec: &Spec) -> Opts<'a> {
    let mut out = Opts {
        opts: BTreeMap::new(),
        scopes: Vec::new(),
    };
    let candidates = || {
        spec.options
            .iter()
            .chain(spec.scopes)
            .chain(spec.ignored)
            .copied()
    };
    for body in bodies {
        for node in body.iter() {
            match node {
                Node::Assign { key, value } => {
                    let mut l = key.lower();
                    if let Some((a, o)) = spec.aliases.iter().find(|(a, _)| *a == l) {
                        ctx.warn(
                            &key.pos,
                            format!("`{}` is read as the documented `{o}`", key.text),
                        );
                        debug_assert!(!a.is_empty());
                        l = (*o).to_owned();
                    }
                    if spec.options.contains(&l.as_str()) {
                        if let Some((prev, _)) = out.opts.get(&l) {
                            let msg = format!(
                                "`{}` is set again in {} (first at {}:{}); the later value wins",
                                key.text, what, prev.pos.line, prev.pos.col
                            );
                            ctx.warn(&key.pos, msg);
                        }
                        out.opts.insert(l, (key, value));
                    } else if spec.ignored.contains(&l.as_str()) {
                        ctx.warn(
                            &key.pos,
                            format!(
                                "`{}` in {} is a Momentum option Duraplane does not use (ignored)",
                                key.text, what
                            ),
                        );
                    } else if spec.scopes.contains(&l.as_str()) {
                        ctx.err(
                            &key.pos,
                            format!(
                                "`{}` is a scope, not an option: write `{} \"name\" {{ … }}`",
                                key.text, key.text
                            ),
                        );
                    } else if spec.owned {
                        let known = CONFUSIONS
                            .iter()
                            .find(|(wrong, right)| *wrong == l && spec.options.contains(right))
                            .map(|(_, right)| format!("did you mean `{right}`?"));
                        ctx.err_s(
                            &key.pos,
                            format!("unknown option `{}` in {}", key.text, what),
                            known.or_else(|| did_you_mean(&l, candidates())),
                        );
                    } else {
                        let mut d = key.pos.diag(format!(
                            "option `{}` in {} is not used by Duraplane (ignored)",
                            key.text, what
                        ));
                        d.suggestion = did_you_mean(&l, candidates());
                        ctx.warnings.push(d);
                    }
                }
                Node::Scope(s) => {
                    let l = s.keyword.lower();
                    if spec.scopes.contains(&l.as_str()) {
                        out.scopes.push(s);
                    } else if spec.options.contains(&l.as_str()) {
                        ctx.err(
                            &s.keyword.pos,
                            format!(
                                "`{}` is an option, not a scope: write `{} = value`",
                                s.keyword.text, s.keyword.text
                            ),
                        );
                    } else if spec.owned {
                        ctx.err_s(
                            &s.keyword.pos,
                            format!("unknown scope `{}` in {}", scope_label(s), what),
                            did_you_mean(&l, candidates()),
                        );
                    } else {
                        ctx.warn(
                            &s.keyword.pos,
                            format!(
                                "scope `{}` in {} is not used by Duraplane (ignored)",
                                scope_label(s),
                                what
                            ),
                        );
                    }
                }
            }
        }
    }
    out
}

/// The instance name of `s`, reported with `usage` (how to write one) when it is missing.
fn scope_name<'a>(ctx: &mut Ctx, s: &'a Scope, usage: &str) -> Option<&'a Spanned> {
    if s.name.is_none() {
        ctx.err(&s.keyword.pos, usage);
    }
    s.name.as_ref()
}

/// The options of `s`, a scope named `name`, shown as `kind "name"` in messages.
fn collect_named<'a>(
    ctx: &mut Ctx,
    s: &'a Scope,
    name: &Spanned,
    kind: &str,
    spec: &Spec,
) -> Opts<'a> {
    collect(ctx, &[&s.body], &format!("{kind} \"{}\"", name.text), spec)
}

/// A named scope's name and options; `None` (reported) when it has no name, so its body
/// is not read.
fn named<'a>(
    ctx: &mut Ctx,
    s: &'a Scope,
    kind: &str,
    usage: &str,
    spec: &Spec,
) -> Option<(&'a Spanned, Opts<'a>)> {
    let name = scope_name(ctx, s, usage)?;
    Some((name, collect_named(ctx, s, name, kind, spec)))
}

/// `text` read by `parse`; a failure is reported at `pos` as one of `key`.
fn parsed<T>(
    ctx: &mut Ctx,
    pos: &Pos,
    key: &str,
    text: &str,
    parse: impl FnOnce(&str) -> Result<T, Bad>,
) -> Option<T> {
    parse(text).map_err(|b| ctx.bad(pos, key, b)).ok()
}

/// Names people reach for that are too far from the real one for edit distance.
const CONFUSIONS: &[(&str, &str)] = &[
    // reference/momentum.md §1.3: there is no heartbeat_interval.
    ("heartbeat_interval", "heartbeats_per_sec"),
    ("unconditional_rebinding", "unconditional_rebind"),
];

// ---------------------------------------------------------------------------------------
// Value conversions with positions.

fn scalar<'v>(ctx: &mut Ctx, key: &Spanned, v: &'v Value) -> Option<&'v str> {
    match &v.kind {
        ValueKind::Scalar { text, .. } => Some(text),
        _ => {
            let msg = format!(
                "`{}` expects a single value, found {}",
                key.text,
                v.describe()
            );
            ctx.err(&v.pos, msg);
            None
        }
    }
}

fn c_nonempty(ctx: &mut Ctx, key: &Spanned, v: &Value) -> Option<String> {
    let s = scalar(ctx, key, v)?;
    if s.is_empty() {
        ctx.err(&v.pos, format!("`{}` must not be empty", key.text));
        return None;
    }
    Some(s.to_owned())
}

/// An optional text option: `Some` when set and not empty.
fn c_opt_nonempty(ctx: &mut Ctx, key: &Spanned, v: &Value) -> Option<Option<String>> {
    c_nonempty(ctx, key, v).map(Some)
}

fn c_abs_path(ctx: &mut Ctx, key: &Spanned, v: &Value) -> Option<PathBuf> {
    let s = c_nonempty(ctx, key, v)?;
    if !s.starts_with('/') {
        ctx.err(
            &v.pos,
            format!("`{}` must be an absolute path, found `{s}`", key.text),
        );
        return None;
    }
    Some(PathBuf::from(s))
}

fn c_bool(ctx: &mut Ctx, key: &Spanned, v: &Value) -> Option<bool> {
    let s = scalar(ctx, key, v)?;
    let b = values::parse_bool(s);
    if b.is_none() {
        ctx.err(
            &v.pos,
            format!(
                "`{}` expects a boolean (on/off, true/false, enabled/disabled, 1/0), found `{s}`",
                key.text
            ),
        );
    }
    b
}

fn c_u64(ctx: &mut Ctx, key: &Spanned, v: &Value) -> Option<u64> {
    let s = scalar(ctx, key, v)?;
    match s.parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => {
            ctx.err(
                &v.pos,
                format!("`{}` expects a non-negative integer, found `{s}`", key.text),
            );
            None
        }
    }
}

fn c_u32(ctx: &mut Ctx, key: &Spanned, v: &Value) -> Option<u32> {
    let n = c_u64(ctx, key, v)?;
    match u32::try_from(n) {
        Ok(n) => Some(n),
        Err(_) => {
            ctx.err(&v.pos, format!("`{}`: {n} is too large", key.text));
            None
        }
    }
}

fn c_u32_min1(ctx: &mut Ctx, key: &Spanned, v: &Value) -> Option<u32> {
    let n = c_u32(ctx, key, v)?;
    if n < 1 {
        ctx.err(
            &v.pos,
            format!("`{}` must be at least 1, found {n}", key.text),
        );
        return None;
    }
    Some(n)
}

/// A single value read by `parse`, its failure reported at the value.
fn c_parsed<T>(
    ctx: &mut Ctx,
    key: &Spanned,
    v: &Value,
    parse: impl FnOnce(&str) -> Result<T, Bad>,
) -> Option<T> {
    let s = scalar(ctx, key, v)?;
    parsed(ctx, &v.pos, &key.text, s, parse)
}

fn c_duration(ctx: &mut Ctx, key: &Spanned, v: &Value) -> Option<Duration> {
    c_parsed(ctx, key, v, values::parse_duration)
}

fn c_positive_duration(ctx: &mut Ctx, key: &Spanned, v: &Value) -> Option<Duration> {
    let d = c_duration(ctx, key, v)?;
    if d.is_zero() {
        ctx.err(&v.pos, format!("`{}` must be greater than 0", key.text));
        return None;
    }
    Some(d)
}

fn c_octal(ctx: &mut Ctx, key: &Spanned, v: &Value) -> Option<u32> {
    let s = scalar(ctx, key, v)?;
    match u32::from_str_radix(s, 8) {
        Ok(n) if n <= 0o7777 => Some(n),
        _ => {
            ctx.err(
                &v.pos,
                format!(
                    "`{}` expects an octal file mode such as `0660`, found `{s}`",
                    key.text
                ),
            );
            None
        }
    }
}

/// A list of scalars; a single scalar is accepted as a one-element list.
fn c_list(ctx: &mut Ctx, key: &Spanned, v: &Value) -> Option<Vec<(String, Pos)>> {
    match &v.kind {
        ValueKind::Scalar { text, .. } => Some(vec![(text.clone(), v.pos.clone())]),
        ValueKind::List(items) => {
            let mut out = Vec::new();
            let mut ok = true;
            for it in items {
                match &it.kind {
                    ValueKind::Scalar { text, .. } => out.push((text.clone(), it.pos.clone())),
                    _ => {
                        let msg = format!(
                            "`{}` expects a list of single values, found {} inside it",
                            key.text,
                            it.describe()
                        );
                        ctx.err(&it.pos, msg);
                        ok = false;
                    }
                }
            }
            ok.then_some(out)
        }
        ValueKind::Dict(_) => {
            let msg = format!(
                "`{}` expects a list `( … )`, found a dictionary `[ … ]`",
                key.text
            );
            ctx.err(&v.pos, msg);
            None
        }
    }
}

/// A [`c_list`] whose items `item` converts (reporting failures); an item listed again is
/// warned about (`twice` says which) and dropped.
fn c_list_of<T: PartialEq>(
    ctx: &mut Ctx,
    key: &Spanned,
    v: &Value,
    mut item: impl FnMut(&mut Ctx, String, &Pos) -> Option<T>,
    twice: impl Fn(&T) -> String,
) -> Option<Vec<T>> {
    let mut out: Vec<T> = Vec::new();
    let mut ok = true;
    for (text, pos) in c_list(ctx, key, v)? {
        match item(ctx, text, &pos) {
            None => ok = false,
            Some(x) if out.contains(&x) => ctx.warn(&pos, twice(&x)),
            Some(x) => out.push(x),
        }
    }
    ok.then_some(out)
}

/// Reads `name` from `set` with `conv`, recording its origin under `key`.
fn opt<T>(
    ctx: &mut Ctx,
    set: &Opts<'_>,
    name: &str,
    key: &str,
    default: T,
    conv: impl FnOnce(&mut Ctx, &Spanned, &Value) -> Option<T>,
) -> T {
    match set.get(name) {
        Some((k, v)) => match conv(ctx, k, v) {
            Some(x) => {
                ctx.set(key, Some(&k.pos));
                x
            }
            None => {
                ctx.set(key, None);
                default
            }
        },
        None => {
            ctx.set(key, None);
            default
        }
    }
}

/// [`opt`] for each `field: conversion`, the option named like the field of `$out` it sets,
/// its default `$default.field`, its origin recorded as `$scope.field`.
macro_rules! read_fields {
    ($ctx:ident, $set:ident, $scope:literal, $out:ident, $default:ident, {
        $($field:ident: $conv:expr),* $(,)?
    }) => {
        $(
            $out.$field = opt(
                $ctx,
                &$set,
                stringify!($field),
                concat!($scope, ".", stringify!($field)),
                $default.$field,
                $conv,
            );
        )*
    };
}

// ---------------------------------------------------------------------------------------
// Defaults.

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            cluster_group: "ec_cluster".into(),
            control_group: "ec_console".into(),
            log_group: None,
            logs: default_logs(),
            log_active_interval: Duration::from_secs(1),
            log_idle_interval: Duration::from_secs(10),
            nodename: None,
            nodeaddr: None,
            heartbeat_start_delay: Duration::from_secs(15),
            heartbeats_per_sec: 1,
            if_check_interval: Duration::from_secs(30),
            if_down_limit: 4,
            arp_all_hosts: true,
            duravip_balance_set_size: 1,
            view_mature_time: Duration::from_secs(5),
            view_balance_interval: Duration::from_secs(10),
            view_broadcast_interval: Duration::ZERO,
            unconditional_rebind: true,
            enabled: true,
            debug_level: "error".into(),
            replicate: Vec::new(),
            topology: Vec::new(),
        }
    }
}

/// The five streams of the documented default `logs` dictionary (§1.2).
fn default_logs() -> BTreeMap<String, PathBuf> {
    ["rejectlog", "paniclog", "mainlog", "acctlog", "bouncelog"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                PathBuf::from(format!("/var/log/ecelerity/{n}.cluster")),
            )
        })
        .collect()
}

impl Default for DuraplaneSettings {
    fn default() -> Self {
        DuraplaneSettings {
            control_socket: PathBuf::from("/run/duraplane/control.sock"),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9480))),
            interfaces: Vec::new(),
            xdp_mode: XdpMode::Auto,
            ports: vec![25, 465, 587],
            netblocks: Vec::new(),
            flow_idle_timeout: Duration::from_secs(300),
            cluster_key_file: PathBuf::from("/etc/duraplane/cluster.key"),
            state_dir: PathBuf::from("/var/lib/duraplane"),
            poll_interval: Duration::from_millis(100),
        }
    }
}

impl Replicate {
    /// Duraplane's default `max_delay`: 10 ms, deliberately tighter than Momentum's 1.0 s so
    /// cluster-wide counters converge within a connection's lifetime.
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(10);
    pub const DEFAULT_MAX_PENDING: u32 = 100;
}

impl Listen {
    /// A Listen with every option at its documented default (§1.8).
    pub fn with_defaults(addr: ListenAddr) -> Self {
        Listen {
            addr,
            enable: true,
            listen_backlog: 500,
            accept_queue_backlog: 0,
            concurrency: 0,
            disable_nagle_algorithm: false,
            events_per_iter: 0,
            file_mode: 0o660,
            pool_name: None,
            tcp_recv_buffer_size: 4096,
            tcp_send_buffer_size: 4096,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: PathBuf::new(),
            cluster: ClusterConfig::default(),
            listener: EcclusterListener {
                listens: Vec::new(),
            },
            security: None,
            loggers: Vec::new(),
            duravips: Vec::new(),
            duraplane: DuraplaneSettings::default(),
            origins: BTreeMap::new(),
        }
    }
}

impl XdpMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

impl NetblockAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            NetblockAction::Drop => "drop",
            NetblockAction::Count => "count",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Option tables.

pub const CLUSTER_OPTIONS: &[&str] = &[
    "cluster_group",
    "control_group",
    "log_group",
    "logs",
    "log_active_interval",
    "log_idle_interval",
    "nodename",
    "nodeaddr",
    "heartbeat_start_delay",
    "heartbeats_per_sec",
    "if_check_interval",
    "if_down_limit",
    "arp_all_hosts",
    "duravip_balance_set_size",
    "view_mature_time",
    "view_balance_interval",
    "view_broadcast_interval",
    "unconditional_rebind",
    "enabled",
    "debug_level",
];
const CLUSTER_IGNORED: &[&str] = &["mbus_daemon", "subcluster", "cluster_listener"];
pub const REPLICATE_OPTIONS: &[&str] = &[
    "type",
    "class",
    "parameters",
    "max_delay",
    "max_pending",
    "max_size",
    "binding_group",
];
pub const REPLICATE_PARAMETERS: &[&str] = &[
    "snapshot",
    "connect",
    "delivery",
    "transfail",
    "permfail",
    "reception",
    "rejection",
    "audit_series",
    "gauge_cache",
];
pub const TOPOLOGY_OPTIONS: &[&str] = &["cidrmask", "interface"];
pub const LISTENER_OPTIONS: &[&str] = &[
    "enable",
    "listen_backlog",
    "accept_queue_backlog",
    "concurrency",
    "disable_nagle_algorithm",
    "events_per_iter",
    "file_mode",
    "pool_name",
    "tcp_recv_buffer_size",
    "tcp_send_buffer_size",
];
const DURAVIP_LISTEN_OPTIONS: &[&str] = &["enable_duravip", "duravip_preference", "duravip_follow"];
pub const SECURITY_OPTIONS: &[&str] = &["user", "group", "capabilities"];
pub const DURAPLANE_OPTIONS: &[&str] = &[
    "control_socket",
    "metrics",
    "interfaces",
    "xdp_mode",
    "ports",
    "flow_idle_timeout",
    "cluster_key_file",
    "state_dir",
    "poll_interval",
];
pub const NETBLOCK_OPTIONS: &[&str] = &["max_connections", "action"];
/// Top-level scopes Duraplane owns or reads; used to suggest fixes for misspelt keywords.
const TOP_SCOPES: &[&str] = &[
    "cluster",
    "security",
    "eccluster_listener",
    "duraplane",
    "ec_logger",
    "bounce_logger",
    "binding",
    "binding_group",
];

/// What a Listen of ECCluster_Listener accepts: the listener's options and the DuraVIP ones.
const LISTEN_ALL: &[&str] = &{
    const N: usize = LISTENER_OPTIONS.len() + DURAVIP_LISTEN_OPTIONS.len();
    let mut all = [""; N];
    let mut i = 0;
    while i < N {
        all[i] = if i < LISTENER_OPTIONS.len() {
            LISTENER_OPTIONS[i]
        } else {
            DURAVIP_LISTEN_OPTIONS[i - LISTENER_OPTIONS.len()]
        };
        i += 1;
    }
    all
};

// ---------------------------------------------------------------------------------------
// The build.

/// Builds the typed configuration from parsed top-level nodes. Returns the configuration
/// (meaningful only if `ctx.errors` stays empty).
pub fn build(nodes: &[Node], source: PathBuf, ctx: &mut Ctx) -> Config {
    let mut cfg = Config {
        source,
        ..Config::default()
    };
    let mut cluster_bodies: Vec<&[Node]> = Vec::new();
    let mut security_bodies: Vec<&[Node]> = Vec::new();
    let mut eccl_bodies: Vec<&[Node]> = Vec::new();
    let mut duraplane_bodies: Vec<&[Node]> = Vec::new();
    let mut bindings: Vec<&Scope> = Vec::new();

    for node in nodes {
        match node {
            Node::Assign { key, .. } => {
                let mut d = key.pos.diag(format!(
                    "global option `{}` is not used by Duraplane (ignored)",
                    key.text
                ));
                d.suggestion = did_you_mean(&key.lower(), TOP_SCOPES.iter().copied());
                ctx.warnings.push(d);
            }
            Node::Scope(s) => {
                let kw = s.keyword.lower();
                let singleton = |ctx: &mut Ctx, s: &Scope| {
                    if let Some(n) = &s.name {
                        ctx.err(
                            &n.pos,
                            format!(
                                "`{}` takes no instance name: write `{} {{ … }}`",
                                s.keyword.text, s.keyword.text
                            ),
                        );
                    }
                };
                match kw.as_str() {
                    "cluster" => {
                        singleton(ctx, s);
                        cluster_bodies.push(&s.body);
                    }
                    "security" => {
                        singleton(ctx, s);
                        security_bodies.push(&s.body);
                    }
                    "eccluster_listener" => {
                        singleton(ctx, s);
                        eccl_bodies.push(&s.body);
                    }
                    "duraplane" => {
                        singleton(ctx, s);
                        duraplane_bodies.push(&s.body);
                    }
                    "ec_logger" | "bounce_logger" => logger(ctx, s, &mut cfg),
                    "binding" => bindings.push(s),
                    "binding_group" => {
                        let spec = Spec::foreign(&[], &["binding"]);
                        let set = collect(ctx, &[&s.body], &scope_label(s), &spec);
                        bindings.extend(set.scopes_named("binding"));
                    }
                    _ if kw.ends_with("_listener") => other_listener(ctx, s, &mut cfg),
                    _ => {
                        let mut d = s.keyword.pos.diag(format!(
                            "scope `{}` is not used by Duraplane (ignored)",
                            scope_label(s)
                        ));
                        d.suggestion = did_you_mean(&kw, TOP_SCOPES.iter().copied());
                        ctx.warnings.push(d);
                    }
                }
            }
        }
    }

    cluster(ctx, &cluster_bodies, &mut cfg);
    security(ctx, &security_bodies, &mut cfg);
    eccluster_listener(ctx, &eccl_bodies, &mut cfg);
    for b in bindings {
        binding(ctx, b, &mut cfg);
    }
    duraplane(ctx, &duraplane_bodies, &mut cfg);
    check_follows(ctx, &cfg);
    check_logs_published(ctx, &cfg);
    cfg.origins = std::mem::take(&mut ctx.origins);
    cfg
}

fn cluster(ctx: &mut Ctx, bodies: &[&[Node]], cfg: &mut Config) {
    let spec = Spec {
        ignored: CLUSTER_IGNORED,
        // changelog #4620 spells it `unconditional_rebinding`.
        aliases: &[("unconditional_rebinding", "unconditional_rebind")],
        ..Spec::owned(CLUSTER_OPTIONS, &["replicate", "topology"])
    };
    let set = collect(ctx, bodies, "cluster", &spec);
    let d = ClusterConfig::default();
    let c = &mut cfg.cluster;
    read_fields!(ctx, set, "cluster", c, d, {
        cluster_group: c_nonempty,
        control_group: c_nonempty,
        log_group: c_opt_nonempty,
        logs: logs_dict,
        log_active_interval: c_duration,
        log_idle_interval: c_duration,
        nodename: c_opt_nonempty,
        nodeaddr: nodeaddr,
        heartbeat_start_delay: c_duration,
        heartbeats_per_sec: c_u32_min1,
        if_check_interval: c_positive_duration,
        if_down_limit: c_u32,
        arp_all_hosts: c_bool,
        duravip_balance_set_size: c_u32_min1,
        view_mature_time: c_duration,
        view_balance_interval: c_positive_duration,
        view_broadcast_interval: c_duration,
        unconditional_rebind: c_bool,
        enabled: c_bool,
        debug_level: c_nonempty,
    });

    for s in set.scopes_named("replicate") {
        if let Some(r) = replicate(ctx, s) {
            if let Some(prev) = c.replicate.iter().find(|p| p.name == r.name) {
                let msg = format!("duplicate `Replicate \"{}\"`", prev.name);
                if let Some(n) = &s.name {
                    ctx.err(&n.pos, msg);
                }
            } else {
                c.replicate.push(r);
            }
        }
    }
    for s in set.scopes_named("topology") {
        if let Some(t) = topology(ctx, s) {
            if c.topology.iter().any(|p| p.network == t.network) {
                if let Some(n) = &s.name {
                    ctx.err(&n.pos, format!("duplicate `Topology \"{}\"`", t.network));
                }
            } else {
                c.topology.push(t);
            }
        }
    }
}

fn logs_dict(ctx: &mut Ctx, key: &Spanned, v: &Value) -> Option<BTreeMap<String, PathBuf>> {
    let ValueKind::Dict(entries) = &v.kind else {
        ctx.err(
            &v.pos,
            format!(
                "`{}` expects a dictionary `[ name = \"/path\" … ]`, found {}",
                key.text,
                v.describe()
            ),
        );
        return None;
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, val) in entries {
        match c_abs_path(ctx, k, val) {
            Some(p) => {
                if out.insert(k.text.clone(), p).is_some() {
                    ctx.warn(
                        &k.pos,
                        format!(
                            "log `{}` listed twice in `logs`; the later path wins",
                            k.text
                        ),
                    );
                }
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn nodeaddr(ctx: &mut Ctx, key: &Spanned, v: &Value) -> Option<Option<IpAddr>> {
    let s = scalar(ctx, key, v)?;
    let t = s.trim_start_matches('[').trim_end_matches(']');
    let Ok(a) = t.parse::<IpAddr>() else {
        ctx.err(
            &v.pos,
            format!("`{}` expects an IP address, found `{s}`", key.text),
        );
        return None;
    };
    if a.is_loopback() || a.is_unspecified() {
        ctx.err(
            &v.pos,
            format!(
                "`{}` must not be a loopback or unspecified address (`{a}`): it must be routable via the cluster network",
                key.text
            ),
        );
        return None;
    }
    Some(Some(a))
}

fn replicate(ctx: &mut Ctx, s: &Scope) -> Option<Replicate> {
    const USAGE: &str = "`Replicate` needs a name: `Replicate \"inbound_cidr\" { }`";
    let spec = Spec::owned(REPLICATE_OPTIONS, &[]);
    let (name, set) = named(ctx, s, "Replicate", USAGE, &spec)?;
    let p = format!("replicate.{}", name.text);
    // The type: `type`, else `class`, else the scope name.
    let (kind_text, kind_pos, from) = if let Some((k, v)) = set.get("type") {
        (scalar(ctx, k, v)?.to_owned(), v.pos.clone(), "type")
    } else if let Some((k, v)) = set.get("class") {
        (scalar(ctx, k, v)?.to_owned(), v.pos.clone(), "class")
    } else {
        (name.text.clone(), name.pos.clone(), "name")
    };
    let kind = match values::parse_replicate_kind(&kind_text) {
        Some(k) => k,
        None => {
            let sugg = did_you_mean(&kind_text, values::REPLICATE_KINDS.iter().copied());
            let msg = if from == "name" {
                format!(
                    "`{kind_text}` is not a replication type; name the type with `type = \"…\"` \
                     (one of {})",
                    values::REPLICATE_KINDS.join(", ")
                )
            } else {
                format!(
                    "unknown replication type `{kind_text}` (one of {})",
                    values::REPLICATE_KINDS.join(", ")
                )
            };
            ctx.err_s(&kind_pos, msg, sugg);
            return None;
        }
    };
    ctx.set(format!("{p}.type"), Some(&kind_pos));
    let class = opt(
        ctx,
        &set,
        "class",
        &format!("{p}.class"),
        None,
        c_opt_nonempty,
    );
    let parameters = opt(
        ctx,
        &set,
        "parameters",
        &format!("{p}.parameters"),
        Vec::new(),
        |ctx, k, v| {
            let s = scalar(ctx, k, v)?;
            let mut out = Vec::new();
            for part in s.split(';').map(str::trim).filter(|x| !x.is_empty()) {
                if !REPLICATE_PARAMETERS.contains(&part.to_ascii_lowercase().as_str()) {
                    ctx.err_s(
                        &v.pos,
                        format!("unknown replication parameter `{part}` in `{}`", k.text),
                        did_you_mean(part, REPLICATE_PARAMETERS.iter().copied()),
                    );
                    return None;
                }
                out.push(part.to_owned());
            }
            Some(out)
        },
    );
    let max_delay = opt(
        ctx,
        &set,
        "max_delay",
        &format!("{p}.max_delay"),
        Replicate::DEFAULT_MAX_DELAY,
        c_duration,
    );
    let max_pending = opt(
        ctx,
        &set,
        "max_pending",
        &format!("{p}.max_pending"),
        Replicate::DEFAULT_MAX_PENDING,
        c_u32_min1,
    );
    let max_size = opt(
        ctx,
        &set,
        "max_size",
        &format!("{p}.max_size"),
        None,
        |ctx, k, v| {
            let s = scalar(ctx, k, v)?;
            match s.parse::<i64>() {
                Ok(-1) => Some(None),
                Ok(n) if n >= 0 => Some(Some(n as u64)),
                _ => {
                    ctx.err(
                        &v.pos,
                        format!("`{}` expects -1 (unlimited) or a size, found `{s}`", k.text),
                    );
                    None
                }
            }
        },
    );
    if let Some((k, _)) = set.get("max_size")
        && kind != ReplicateKind::Cache
    {
        ctx.warn(
            &k.pos,
            format!("`max_size` is only meaningful for caches, not `{kind}`"),
        );
    }
    let binding_group = opt(
        ctx,
        &set,
        "binding_group",
        &format!("{p}.binding_group"),
        None,
        c_opt_nonempty,
    );
    if let Some((k, _)) = set.get("binding_group")
        && !matches!(
            kind,
            ReplicateKind::OutboundCidr | ReplicateKind::OutboundDomains
        )
    {
        ctx.warn(
            &k.pos,
            format!(
                "`binding_group` is only valid for outbound_cidr and outbound_domains, not `{kind}`"
            ),
        );
    }
    Some(Replicate {
        name: name.text.clone(),
        kind,
        parameters,
        max_delay,
        max_pending,
        max_size,
        binding_group,
        class,
    })
}

fn topology(ctx: &mut Ctx, s: &Scope) -> Option<Topology> {
    const USAGE: &str =
        "`Topology` needs a network: `Topology \"192.0.2.0/24\" { interface = \"eth1\" }`";
    let spec = Spec::owned(TOPOLOGY_OPTIONS, &[]);
    let (name, set) = named(ctx, s, "Topology", USAGE, &spec)?;
    let network = parsed(ctx, &name.pos, "Topology", &name.text, Cidr::parse)?;
    let p = format!("topology.{network}");
    let max: u8 = if network.addr.is_ipv4() { 32 } else { 128 };
    let cidrmask = opt(
        ctx,
        &set,
        "cidrmask",
        &format!("{p}.cidrmask"),
        max,
        |ctx, k, v| {
            let n = c_u32(ctx, k, v)?;
            if n > u32::from(max) {
                ctx.err(
                    &v.pos,
                    format!("`{}` must be between 0 and {max}, found {n}", k.text),
                );
                return None;
            }
            Some(n as u8)
        },
    );
    let Some((ik, iv)) = set.get("interface") else {
        ctx.err(
            &name.pos,
            format!("`Topology \"{}\"` needs `interface = \"…\"`", name.text),
        );
        return None;
    };
    let interface = interface_name(ctx, ik, iv)?;
    ctx.set(format!("{p}.interface"), Some(&ik.pos));
    Some(Topology {
        network,
        cidrmask,
        interface,
    })
}

fn interface_name(ctx: &mut Ctx, key: &Spanned, v: &Value) -> Option<String> {
    let s = scalar(ctx, key, v)?;
    check_ifname(ctx, &key.text, s, &v.pos).then(|| s.to_owned())
}

fn check_ifname(ctx: &mut Ctx, key: &str, s: &str, pos: &Pos) -> bool {
    let ok = !s.is_empty()
        && s.len() < 16
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control());
    if !ok {
        ctx.err(
            pos,
            format!(
                "`{key}`: `{s}` is not a valid interface name (1-15 characters, no `/` or spaces)"
            ),
        );
    }
    ok
}

fn security(ctx: &mut Ctx, bodies: &[&[Node]], cfg: &mut Config) {
    if bodies.is_empty() {
        return;
    }
    let spec = Spec {
        ignored: &["privileges"],
        ..Spec::owned(SECURITY_OPTIONS, &[])
    };
    let set = collect(ctx, bodies, "Security", &spec);
    let user = opt(ctx, &set, "user", "security.user", None, c_opt_nonempty);
    let group = opt(ctx, &set, "group", "security.group", None, c_opt_nonempty);
    let capabilities = opt(
        ctx,
        &set,
        "capabilities",
        "security.capabilities",
        Vec::new(),
        |ctx, k, v| c_parsed(ctx, k, v, values::parse_capabilities),
    );
    cfg.security = Some(Security {
        user,
        group,
        capabilities,
    });
}

/// Calls `$m!(field, conversion)` for each option a Listen inherits from its listener.
macro_rules! listen_options {
    ($m:ident) => {
        $m!(enable, c_bool);
        $m!(listen_backlog, c_u32);
        $m!(accept_queue_backlog, c_u32);
        $m!(concurrency, c_u32);
        $m!(disable_nagle_algorithm, c_bool);
        $m!(events_per_iter, c_u32);
        $m!(file_mode, c_octal);
        $m!(pool_name, c_opt_nonempty);
        $m!(tcp_recv_buffer_size, c_u32);
        $m!(tcp_send_buffer_size, c_u32);
    };
}

fn eccluster_listener(ctx: &mut Ctx, bodies: &[&[Node]], cfg: &mut Config) {
    let spec = Spec::owned(LISTENER_OPTIONS, &["listen"]);
    let set = collect(ctx, bodies, "ECCluster_Listener", &spec);
    // Listener-scope values (validated once, even without any Listen) are the fallback
    // of every Listen: Listen scope over listener scope over default.
    let mut base = Listen::with_defaults(ListenAddr::AnyV4(0));
    macro_rules! listener_level {
        ($field:ident, $conv:expr) => {{
            let key = format!("eccluster_listener.{}", stringify!($field));
            base.$field = opt(
                ctx,
                &set,
                stringify!($field),
                &key,
                base.$field.clone(),
                $conv,
            );
        }};
    }
    listen_options!(listener_level);
    const USAGE: &str = "`Listen` needs an address: `Listen \"*:4802\" { }`";
    let lspec = Spec::owned(LISTEN_ALL, &[]);
    for s in set.scopes_named("listen") {
        let Some((name, lset)) = named(ctx, s, "Listen", USAGE, &lspec) else {
            continue;
        };
        let Some(addr) = parsed(ctx, &name.pos, "Listen", &name.text, values::parse_listen) else {
            continue;
        };
        duravip_from_listen(
            ctx,
            &s.keyword.text,
            name,
            &addr,
            &lset,
            cfg,
            "ECCluster_Listener",
        );
        if let Some(prev) = cfg.listener.listens.iter().find(|l| l.addr == addr) {
            let msg = format!("duplicate `Listen \"{}\"` in ECCluster_Listener", prev.addr);
            ctx.err(&name.pos, msg);
            continue;
        }
        let p = format!("eccluster_listener.listen.{addr}");
        let mut l = Listen {
            addr,
            ..base.clone()
        };
        macro_rules! resolve {
            ($field:ident, $conv:expr) => {{
                let name = stringify!($field);
                let key = format!("{p}.{name}");
                if lset.get(name).is_some() {
                    l.$field = opt(ctx, &lset, name, &key, l.$field.clone(), $conv);
                } else {
                    let o = ctx
                        .origins
                        .get(&format!("eccluster_listener.{name}"))
                        .cloned()
                        .unwrap_or(Origin::Default);
                    ctx.origins.insert(key, o);
                }
            }};
        }
        listen_options!(resolve);
        cfg.listener.listens.push(l);
    }
}

/// DuraVIP options of a `Listen` (any listener): Enable_Duravip, Duravip_Preference,
/// Duravip_Follow, with the documented exclusions.
fn duravip_from_listen(
    ctx: &mut Ctx,
    _kw: &str,
    name: &Spanned,
    addr: &ListenAddr,
    set: &Opts<'_>,
    cfg: &mut Config,
    listener: &str,
) {
    let enable = set.get("enable_duravip");
    let pref = set.get("duravip_preference");
    let follow = set.get("duravip_follow");
    if enable.is_none() && pref.is_none() && follow.is_none() {
        return;
    }
    let enabled = enable.and_then(|(k, v)| c_bool(ctx, k, v)).unwrap_or(false);
    let preference = pref.and_then(|(k, v)| c_nonempty(ctx, k, v));
    let follow_t = follow.and_then(|(k, v)| c_nonempty(ctx, k, v));
    let mut ok = true;
    if let (Some((fk, _)), true) = (follow, enabled) {
        ctx.err(
            &fk.pos,
            format!(
                "`Listen \"{}\"`: a listener cannot be both Enable_Duravip and Duravip_Follow",
                name.text
            ),
        );
        ok = false;
    }
    if let (Some((fk, _)), Some(_)) = (follow, pref) {
        ctx.err(
            &fk.pos,
            format!(
                "`Listen \"{}\"`: Duravip_Follow and Duravip_Preference cannot be combined \
                 (a follower goes wherever what it follows goes)",
                name.text
            ),
        );
        ok = false;
    }
    if !enabled && follow.is_none() {
        if let Some((pk, _)) = pref {
            ctx.warn(
                &pk.pos,
                format!(
                    "`Duravip_Preference` has no effect: `Listen \"{}\"` is not Enable_Duravip",
                    name.text
                ),
            );
        }
        return;
    }
    let ip = match addr {
        ListenAddr::Inet(sa) if !sa.ip().is_unspecified() => sa.ip(),
        _ => {
            ctx.err(
                &name.pos,
                format!(
                    "a DuraVIP Listen needs a specific IP address, not `{}`",
                    name.text
                ),
            );
            return;
        }
    };
    if !ok {
        return;
    }
    let at = enable.or(follow).map(|(k, _)| k.pos.clone());
    ctx.origins
        .entry(format!("duravip.{ip}"))
        .or_insert_with(|| at.as_ref().map(origin).unwrap_or(Origin::Default));
    cfg.duravips.push(DuravipDecl {
        addr: ip,
        source: DuravipSource::Listen {
            listener: listener.to_owned(),
            spec: name.text.clone(),
        },
        preference: if enabled { preference } else { None },
        follow: if enabled { None } else { follow_t },
    });
}

/// ESMTP_Listener, Control_Listener, … : Duraplane reads only DuraVIP options in their
/// Listen scopes (and checks Listen addresses, which Momentum would refuse anyway).
fn other_listener(ctx: &mut Ctx, s: &Scope, cfg: &mut Config) {
    let spec = Spec::foreign(&[], &["listen"]);
    let set = collect(ctx, &[&s.body], &scope_label(s), &spec);
    const USAGE: &str = "`Listen` needs an address: `Listen \"*:25\" { }`";
    let kind = format!("{} Listen", s.keyword.text);
    let lspec = Spec::foreign(DURAVIP_LISTEN_OPTIONS, &[]);
    for l in set.scopes_named("listen") {
        let Some((name, lset)) = named(ctx, l, &kind, USAGE, &lspec) else {
            continue;
        };
        if let Some(addr) = parsed(ctx, &name.pos, "Listen", &name.text, values::parse_listen) {
            let kw = &s.keyword.text;
            duravip_from_listen(ctx, kw, name, &addr, &lset, cfg, kw);
        }
    }
}

fn binding(ctx: &mut Ctx, s: &Scope, cfg: &mut Config) {
    let Some(name) = scope_name(ctx, s, "`Binding` needs a name: `Binding \"name\" { }`") else {
        return;
    };
    if name.text.chars().any(char::is_whitespace) {
        ctx.err(
            &name.pos,
            format!("binding name `{}` must not contain spaces", name.text),
        );
    }
    let spec = Spec::foreign(
        &[
            "bind_address",
            "enable_duravip",
            "duravip_preference",
            "duravip_follow",
        ],
        &[],
    );
    let set = collect_named(ctx, s, name, "Binding", &spec);
    if let Some((k, _)) = set.get("duravip_follow") {
        ctx.err(
            &k.pos,
            "Bindings cannot follow listeners: `Duravip_Follow` is valid only in a Listen",
        );
    }
    let enabled = set
        .get("enable_duravip")
        .and_then(|(k, v)| c_bool(ctx, k, v))
        .unwrap_or(false);
    let preference = set
        .get("duravip_preference")
        .and_then(|(k, v)| c_nonempty(ctx, k, v));
    let addr = match set.get("bind_address") {
        Some((k, v)) => match scalar(ctx, k, v) {
            Some(t) => match t
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                Ok(a) => Some(a),
                Err(_) => {
                    ctx.err(
                        &v.pos,
                        format!("`{}` expects an IP address, found `{t}`", k.text),
                    );
                    None
                }
            },
            None => None,
        },
        None => None,
    };
    if !enabled {
        if let Some((pk, _)) = set.get("duravip_preference") {
            ctx.warn(
                &pk.pos,
                format!(
                    "`Duravip_Preference` has no effect: `Binding \"{}\"` is not Enable_Duravip",
                    name.text
                ),
            );
        }
        return;
    }
    let Some(addr) = addr else {
        if set.get("bind_address").is_none() {
            ctx.err(
                &name.pos,
                format!(
                    "`Binding \"{}\"` has Enable_Duravip but no Bind_Address",
                    name.text
                ),
            );
        }
        return;
    };
    if addr.is_loopback() || addr.is_unspecified() {
        ctx.err(
            &name.pos,
            format!("`Binding \"{}\"`: `{addr}` cannot be a DuraVIP", name.text),
        );
        return;
    }
    if let Some((k, _)) = set.get("enable_duravip") {
        ctx.origins
            .entry(format!("duravip.{addr}"))
            .or_insert_with(|| origin(&k.pos));
    }
    cfg.duravips.push(DuravipDecl {
        addr,
        source: DuravipSource::Binding {
            name: name.text.clone(),
        },
        preference,
        follow: None,
    });
}

/// A follower must name a DuraVIP binding (or address) and sit on a different address.
fn check_follows(ctx: &mut Ctx, cfg: &Config) {
    for d in &cfg.duravips {
        let Some(t) = &d.follow else { continue };
        let target = cfg.duravips.iter().find(|x| {
            x.follow.is_none()
                && (matches!(&x.source, DuravipSource::Binding { name } if name == t)
                    || x.addr.to_string() == *t)
        });
        let pos = match ctx.origins.get(&format!("duravip.{}", d.addr)).cloned() {
            Some(Origin::File { file, line, col }) => Pos {
                file: std::sync::Arc::new(file),
                line,
                col,
            },
            _ => Pos {
                file: std::sync::Arc::new(cfg.source.clone()),
                line: 1,
                col: 1,
            },
        };
        match target {
            None => ctx.warn(
                &pos,
                format!("Duravip_Follow target `{t}` is not a DuraVIP binding or address in this configuration"),
            ),
            Some(x) if x.addr == d.addr => ctx.err(
                &pos,
                format!("a following listener must use a different address than `{t}` ({})", x.addr),
            ),
            Some(_) => {}
        }
    }
}

/// `cluster://` streams that `logs` does not publish just accumulate on disk (§1.4).
fn check_logs_published(ctx: &mut Ctx, cfg: &Config) {
    for l in &cfg.loggers {
        for (opt_name, dest) in &l.destinations {
            if let LogDestination::Cluster { path, .. } = dest
                && !cfg.cluster.logs.values().any(|p| p == path)
            {
                {
                    let key = format!("{}.{}.{}", l.module, l.name, opt_name);
                    if let Some(Origin::File { file, line, col }) = ctx.origins.get(&key).cloned() {
                        let pos = Pos {
                            file: std::sync::Arc::new(file),
                            line,
                            col,
                        };
                        ctx.warn(
                            &pos,
                            format!(
                                "`{}` writes the jlog `{}`, which cluster `logs` does not publish; it will only accumulate on disk",
                                opt_name,
                                path.display()
                            ),
                        );
                    }
                }
            }
        }
    }
}

fn logger(ctx: &mut Ctx, s: &Scope, cfg: &mut Config) {
    let module = s.keyword.lower();
    let name = s
        .name
        .as_ref()
        .map(|n| n.text.clone())
        .unwrap_or_else(|| module.clone());
    let mut inst = LoggerInstance {
        module: module.clone(),
        name: name.clone(),
        destinations: BTreeMap::new(),
    };
    for node in &s.body {
        match node {
            Node::Assign { key, value } => {
                let dest = match &value.kind {
                    ValueKind::Scalar { text, .. } => values::parse_log_destination(text),
                    _ => None,
                };
                match dest {
                    Some(Ok(d)) => {
                        ctx.set(format!("{module}.{name}.{}", key.lower()), Some(&key.pos));
                        inst.destinations.insert(key.lower(), d);
                    }
                    Some(Err(b)) => ctx.bad(&value.pos, &key.text, b),
                    None => ctx.warn(
                        &key.pos,
                        format!(
                            "option `{}` in {} \"{}\" is not used by Duraplane (ignored)",
                            key.text, s.keyword.text, name
                        ),
                    ),
                }
            }
            Node::Scope(c) => ctx.warn(
                &c.keyword.pos,
                format!(
                    "scope `{}` in {} \"{}\" is not used by Duraplane (ignored)",
                    scope_label(c),
                    s.keyword.text,
                    name
                ),
            ),
        }
    }
    if let Some(prev) = cfg
        .loggers
        .iter()
        .find(|l| l.module == module && l.name == name)
    {
        let msg = format!("duplicate `{} \"{}\"` instance", s.keyword.text, prev.name);
        ctx.err(&s.keyword.pos, msg);
        return;
    }
    cfg.loggers.push(inst);
}

fn duraplane(ctx: &mut Ctx, bodies: &[&[Node]], cfg: &mut Config) {
    let spec = Spec::owned(DURAPLANE_OPTIONS, &["netblock"]);
    let set = collect(ctx, bodies, "duraplane", &spec);
    let d = DuraplaneSettings::default();
    let o = &mut cfg.duraplane;
    read_fields!(ctx, set, "duraplane", o, d, { control_socket: c_abs_path });
    o.metrics_listen = opt(
        ctx,
        &set,
        "metrics",
        "duraplane.metrics",
        d.metrics_listen,
        c_metrics,
    );
    read_fields!(ctx, set, "duraplane", o, d, {
        interfaces: c_interfaces,
        xdp_mode: c_xdp_mode,
        ports: c_ports,
        flow_idle_timeout: c_positive_duration,
        cluster_key_file: c_abs_path,
        state_dir: c_abs_path,
        poll_interval: c_positive_duration,
    });
    let mut netblocks = Vec::new();
    for s in set.scopes_named("netblock") {
        netblock(ctx, s, None, &mut netblocks);
    }
    cfg.duraplane.netblocks = netblocks;
}

/// `address:port`, or `off` for no metrics endpoint.
fn c_metrics(ctx: &mut Ctx, k: &Spanned, v: &Value) -> Option<Option<SocketAddr>> {
    let s = scalar(ctx, k, v)?;
    if s.eq_ignore_ascii_case("off") || values::parse_bool(s) == Some(false) {
        return Some(None);
    }
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Some(Some(a)),
        _ => {
            let mut b = Bad {
                message: format!(
                    "expects `address:port` (e.g. `127.0.0.1:9480`) or `off`, found `{s}`"
                ),
                suggestion: None,
            };
            if let Err(e) = values::parse_listen(s) {
                b.suggestion = e.suggestion;
            }
            ctx.bad(&v.pos, &k.text, b);
            None
        }
    }
}

fn c_interfaces(ctx: &mut Ctx, k: &Spanned, v: &Value) -> Option<Vec<String>> {
    c_list_of(
        ctx,
        k,
        v,
        |ctx, i, pos| check_ifname(ctx, &k.text, &i, pos).then_some(i),
        |i| format!("interface `{i}` listed twice"),
    )
}

fn c_xdp_mode(ctx: &mut Ctx, k: &Spanned, v: &Value) -> Option<XdpMode> {
    let s = scalar(ctx, k, v)?;
    match s.to_ascii_lowercase().as_str() {
        "auto" => Some(XdpMode::Auto),
        "native" | "drv" => Some(XdpMode::Native),
        "generic" | "skb" => Some(XdpMode::Generic),
        _ => {
            ctx.err_s(
                &v.pos,
                format!(
                    "`{}` must be `auto`, `native` or `generic`, found `{s}`",
                    k.text
                ),
                did_you_mean(s, ["auto", "native", "generic"]),
            );
            None
        }
    }
}

fn c_ports(ctx: &mut Ctx, k: &Spanned, v: &Value) -> Option<Vec<u16>> {
    c_list_of(
        ctx,
        k,
        v,
        |ctx, p, pos| parsed(ctx, pos, &k.text, &p, values::parse_port_value),
        |n| format!("port {n} listed twice"),
    )
}

fn netblock(ctx: &mut Ctx, s: &Scope, parent: Option<&Cidr>, out: &mut Vec<Netblock>) {
    const USAGE: &str =
        "`Netblock` needs a network: `Netblock \"198.51.100.0/24\" { max_connections = 100 }`";
    let spec = Spec::owned(NETBLOCK_OPTIONS, &["netblock"]);
    let Some((name, set)) = named(ctx, s, "Netblock", USAGE, &spec) else {
        return;
    };
    let Some(cidr) = parsed(ctx, &name.pos, "Netblock", &name.text, Cidr::parse) else {
        return;
    };
    if let Some(p) = parent
        && (!p.contains(&cidr) || p.prefix >= cidr.prefix)
    {
        ctx.err(
            &name.pos,
            format!("nested `Netblock \"{cidr}\"` is not a smaller network inside `{p}`"),
        );
    }
    let key = format!("duraplane.netblock.{cidr}");
    if out.iter().any(|n: &Netblock| n.cidr == cidr) {
        ctx.err(&name.pos, format!("duplicate `Netblock \"{cidr}\"`"));
        return;
    }
    let max_connections = opt(
        ctx,
        &set,
        "max_connections",
        &format!("{key}.max_connections"),
        None,
        |ctx, k, v| c_u64(ctx, k, v).map(Some),
    );
    let default_action = if max_connections.is_some() {
        NetblockAction::Drop
    } else {
        NetblockAction::Count
    };
    let action = opt(
        ctx,
        &set,
        "action",
        &format!("{key}.action"),
        default_action,
        |ctx, k, v| {
            let t = scalar(ctx, k, v)?;
            match t.to_ascii_lowercase().as_str() {
                "drop" => Some(NetblockAction::Drop),
                "count" => Some(NetblockAction::Count),
                _ => {
                    ctx.err_s(
                        &v.pos,
                        format!("`{}` must be `drop` or `count`, found `{t}`", k.text),
                        did_you_mean(t, ["drop", "count"]),
                    );
                    None
                }
            }
        },
    );
    if action == NetblockAction::Drop
        && max_connections.is_none()
        && let Some((k, _)) = set.get("action")
    {
        ctx.err(
            &k.pos,
            format!("`Netblock \"{cidr}\"`: `action = drop` needs `max_connections`"),
        );
    }
    out.push(Netblock {
        cidr,
        max_connections,
        action,
    });
    for c in set.scopes_named("netblock") {
        netblock(ctx, c, Some(&cidr), out);
    }
}
