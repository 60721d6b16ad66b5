//! Conversions from the text of a value to typed values: booleans, durations, CIDRs,
//! Listen addresses, capability strings, log destinations. Pure functions returning
//! messages, so the model builder can attach positions and collect every error.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use super::model::{Cidr, ListenAddr, LogDestination, ReplicateKind};

/// A conversion failure: the message and, where one exists, a suggested fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    pub message: String,
    pub suggestion: Option<String>,
}

impl Bad {
    fn new(message: impl Into<String>) -> Self {
        Bad {
            message: message.into(),
            suggestion: None,
        }
    }
    fn with(message: impl Into<String>, suggestion: impl Into<String>) -> Self {
        Bad {
            message: message.into(),
            suggestion: Some(suggestion.into()),
        }
    }
}

/// `ec_atobool`: on/off, true/false, enabled/disabled, 1/0 (case-insensitive).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "enabled" | "1" => Some(true),
        "off" | "false" | "disabled" | "0" => Some(false),
        _ => None,
    }
}

/// Seconds as Momentum writes them (`5`, `1.0`), or with a unit: `10ms`, `2s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, Bad> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let shape_ok = !num.is_empty()
        && num.chars().all(|c| c.is_ascii_digit() || c == '.')
        && num.chars().filter(|&c| c == '.').count() <= 1
        && num.chars().any(|c| c.is_ascii_digit());
    let bad = || {
        Bad::new(format!(
            "`{s}` is not a duration (seconds such as `5` or `0.5`, or `10ms`, `2s`, `5m`, `1h`)"
        ))
    };
    if !shape_ok {
        return Err(bad());
    }
    let v: f64 = num.parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(v * mult)
        .ok()
        .filter(|d| d.as_secs() <= 100 * 365 * 86400)
        .ok_or_else(|| Bad::new(format!("duration `{s}` is too large")))
}

/// Formats a duration so that [`parse_duration`] reads it back exactly.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}", d.as_secs_f64())
    }
}

impl Cidr {
    /// `addr/prefix`, or a bare address meaning a single host. The address must have no
    /// host bits set: `192.0.2.1/24` is refused with "did you mean 192.0.2.0/24".
    pub fn parse(s: &str) -> Result<Cidr, Bad> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| {
            if a.is_empty() {
                Bad::new("empty network: expected a CIDR such as `192.0.2.0/24`".to_string())
            } else {
                Bad::new(format!(
                    "`{s}` is not a CIDR network (expected e.g. `192.0.2.0/24` or `2001:db8::/32`)"
                ))
            }
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(Bad::new(format!(
                        "`{s}`: prefix length `{p}` is not between 0 and {max}"
                    )));
                }
            },
        };
        let net = Cidr {
            addr: mask(addr, prefix),
            prefix,
        };
        if net.addr != addr {
            return Err(Bad::with(
                format!("`{s}` has host bits set"),
                format!("did you mean `{net}`?"),
            ));
        }
        Ok(net)
    }

    /// Whether `other` lies entirely inside this network.
    pub fn contains(&self, other: &Cidr) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && other.prefix >= self.prefix
            && mask(other.addr, self.prefix) == self.addr
    }

    /// Whether the address lies inside this network.
    pub fn contains_addr(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.addr.is_ipv4() && mask(a, self.prefix) == self.addr
    }
}

fn mask(a: IpAddr, prefix: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let bits = u32::from(v);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v) => {
            let bits = u128::from(v);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn parse_port(p: &str, spec: &str) -> Result<u16, Bad> {
    match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(_) => Err(Bad::new(format!(
            "port `{p}` in `{spec}` is out of range (1-65535)"
        ))),
        Err(_) => Err(Bad::new(format!("`{p}` in `{spec}` is not a port number"))),
    }
}

/// A port for `ports = ( … )` and the like.
pub fn parse_port_value(p: &str) -> Result<u16, Bad> {
    match p.parse::<i64>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(_) => Err(Bad::new(format!("port `{p}` is out of range (1-65535)"))),
        Err(_) => Err(Bad::new(format!("`{p}` is not a port number"))),
    }
}

/// A `Listen` address (§1.9): `*:25`, `:25`, `[*]:25`, `192.0.2.1:25`, `[2001:db8::1]:25`,
/// or a Unix socket path. IPv6 addresses must be bracketed; the error shows how.
pub fn parse_listen(s: &str) -> Result<ListenAddr, Bad> {
    if s.starts_with('/') {
        return Ok(ListenAddr::Unix(PathBuf::from(s)));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(Bad::new(format!("`{s}`: missing `]`")));
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err(Bad::with(
                format!("`{s}`: a port is required after the bracketed address"),
                format!("write `[{host}]:PORT`"),
            ));
        };
        let port = parse_port(port, s)?;
        if host == "*" {
            return Ok(ListenAddr::AnyV6(port));
        }
        return match host.parse::<Ipv6Addr>() {
            Ok(a) => Ok(ListenAddr::Inet(SocketAddr::new(IpAddr::V6(a), port))),
            Err(_) => Err(Bad::new(format!(
                "`{host}` in `{s}` is not an IPv6 address (brackets are for IPv6 only)"
            ))),
        };
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        if s.parse::<IpAddr>().is_ok() {
            return Err(Bad::with(
                format!("`{s}`: a Listen needs a port"),
                format!("write `{s}:PORT`"),
            ));
        }
        return Err(Bad::new(format!(
            "`{s}` is not a Listen address (expected `address:port`, `*:port`, `[v6]:port` or a socket path)"
        )));
    };
    if host.contains(':') {
        if host.parse::<Ipv6Addr>().is_ok() {
            return Err(Bad::with(
                format!("IPv6 address in `{s}` must be enclosed in square brackets"),
                format!("write `[{host}]:{port}`"),
            ));
        }
        return Err(Bad::with(
            format!(
                "IPv6 address in `{s}` must be enclosed in square brackets, followed by `:port`"
            ),
            format!("write `[{s}]:PORT`"),
        ));
    }
    let port = parse_port(port, s)?;
    if host.is_empty() || host == "*" {
        return Ok(ListenAddr::AnyV4(port));
    }
    match host.parse::<Ipv4Addr>() {
        Ok(a) => Ok(ListenAddr::Inet(SocketAddr::new(IpAddr::V4(a), port))),
        Err(_) => Err(Bad::new(format!(
            "`{host}` in `{s}` is not an IP address (host names are not accepted in a Listen)"
        ))),
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::AnyV4(p) => write!(f, "*:{p}"),
            ListenAddr::AnyV6(p) => write!(f, "[*]:{p}"),
            ListenAddr::Inet(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Linux capability names, as `cap_from_text(3)` spells them.
pub const CAPABILITIES: &[&str] = &[
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

/// The capability names a `cap_from_text` string leaves in the permitted/effective sets:
/// `"cap_net_admin+ep cap_net_raw+ep"` → `[cap_net_admin, cap_net_raw]`. `all` (or an
/// empty name list, as in `=ep`) means every capability; `-` and `=` without flags drop.
pub fn parse_capabilities(s: &str) -> Result<Vec<String>, Bad> {
    let mut set: Vec<String> = Vec::new();
    for clause in s.split_whitespace() {
        let Some(op_at) = clause.find(['+', '-', '=']) else {
            return Err(Bad::with(
                format!("capability clause `{clause}` has no operator"),
                format!("write `{clause}+ep`"),
            ));
        };
        let (names, mut ops) = clause.split_at(op_at);
        let mut names_v: Vec<String> = Vec::new();
        if names.is_empty() || names.eq_ignore_ascii_case("all") {
            names_v.extend(CAPABILITIES.iter().map(|c| c.to_string()));
        } else {
            for n in names.split(',') {
                let l = n.to_ascii_lowercase();
                if !CAPABILITIES.contains(&l.as_str()) {
                    let mut b = Bad::new(format!("unknown capability `{n}`"));
                    b.suggestion = super::suggest::did_you_mean(&l, CAPABILITIES.iter().copied());
                    return Err(b);
                }
                names_v.push(l);
            }
        }
        let mut granted = None;
        while let Some(op) = ops.chars().next() {
            let rest = &ops[1..];
            let end = rest.find(['+', '-', '=']).unwrap_or(rest.len());
            let flags = &rest[..end];
            if let Some(bad) = flags.chars().find(|c| !matches!(c, 'e' | 'i' | 'p')) {
                return Err(Bad::new(format!(
                    "capability clause `{clause}`: `{bad}` is not a flag (e, i, p)"
                )));
            }
            granted = Some(match op {
                '-' => false,
                '=' => !flags.is_empty(),
                _ => !flags.is_empty() || granted.unwrap_or(false),
            });
            ops = &rest[end..];
        }
        for n in names_v {
            let present = set.contains(&n);
            match granted {
                Some(true) if !present => set.push(n),
                Some(false) => set.retain(|x| *x != n),
                _ => {}
            }
        }
    }
    Ok(set)
}

/// A log destination, if the value is one: `cluster:///path=>sub`,
/// `cluster:///path?subscribers=a,b` (also `jlog://`), `file:///path` or a plain path.
pub fn parse_log_destination(s: &str) -> Option<Result<LogDestination, Bad>> {
    for scheme in ["cluster://", "jlog://"] {
        if s.len() >= scheme.len() && s[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &s[scheme.len()..];
            let (path, subs): (&str, Vec<String>) = if let Some((p, q)) = rest.split_once('?') {
                let mut subs = Vec::new();
                for kv in q.split('&') {
                    match kv.split_once('=') {
                        Some((k, v)) if k.eq_ignore_ascii_case("subscribers") => {
                            subs.extend(v.split(',').filter(|x| !x.is_empty()).map(str::to_owned))
                        }
                        _ => {
                            return Some(Err(Bad::new(format!(
                                "`{s}`: unknown parameter `{kv}` (only `subscribers=a,b` is known)"
                            ))));
                        }
                    }
                }
                (p, subs)
            } else if let Some((p, sub)) = rest.split_once("=>") {
                (
                    p,
                    sub.split(',')
                        .filter(|x| !x.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            } else {
                (rest, Vec::new())
            };
            if !path.starts_with('/') {
                return Some(Err(Bad::with(
                    format!("`{s}`: the jlog path must be absolute"),
                    format!("write `{scheme}/{path}`"),
                )));
            }
            return Some(Ok(LogDestination::Cluster {
                path: PathBuf::from(path),
                subscribers: subs,
            }));
        }
    }
    if let Some(p) = s.strip_prefix("file://") {
        return Some(Ok(LogDestination::File(PathBuf::from(p))));
    }
    if s.starts_with('/') {
        return Some(Ok(LogDestination::File(PathBuf::from(s))));
    }
    None
}

/// The replication types of §1.5, case-insensitively (`OBTM`, `obtm`).
pub fn parse_replicate_kind(s: &str) -> Option<ReplicateKind> {
    Some(match s.to_ascii_lowercase().as_str() {
        "inbound_cidr" => ReplicateKind::InboundCidr,
        "outbound_cidr" => ReplicateKind::OutboundCidr,
        "outbound_domains" => ReplicateKind::OutboundDomains,
        "outbound_binding_domains" => ReplicateKind::OutboundBindingDomains,
        "shared_named_throttles" => ReplicateKind::SharedNamedThrottles,
        "cache" => ReplicateKind::Cache,
        "obtm" => ReplicateKind::Obtm,
        "obtc" => ReplicateKind::Obtc,
        "metrics" => ReplicateKind::Metrics,
        "eccmgr_metrics" => ReplicateKind::EccmgrMetrics,
        _ => return None,
    })
}

/// Every replication type name, as the documentation writes them.
pub const REPLICATE_KINDS: &[&str] = &[
    "inbound_cidr",
    "outbound_cidr",
    "outbound_domains",
    "outbound_binding_domains",
    "shared_named_throttles",
    "cache",
    "OBTM",
    "OBTC",
    "metrics",
    "eccmgr_metrics",
];

impl ReplicateKind {
    /// The type name as written in a configuration file.
    pub fn as_str(&self) -> &'static str {
        match self {
            ReplicateKind::InboundCidr => "inbound_cidr",
            ReplicateKind::OutboundCidr => "outbound_cidr",
            ReplicateKind::OutboundDomains => "outbound_domains",
            ReplicateKind::OutboundBindingDomains => "outbound_binding_domains",
            ReplicateKind::SharedNamedThrottles => "shared_named_throttles",
            ReplicateKind::Cache => "cache",
            ReplicateKind::Obtm => "OBTM",
            ReplicateKind::Obtc => "OBTC",
            ReplicateKind::Metrics => "metrics",
            ReplicateKind::EccmgrMetrics => "eccmgr_metrics",
        }
    }
}

impl fmt::Display for ReplicateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans() {
        for t in ["on", "TRUE", "Enabled", "1"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["off", "false", "DISABLED", "0"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("yes please"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1.0").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in [
            "",
            "-1",
            "1e3",
            "inf",
            "NaN",
            "1.2.3",
            "ms",
            "5 m",
            "99999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        for d in [
            Duration::from_secs(7),
            Duration::from_millis(10),
            Duration::from_micros(1500),
        ] {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("192.0.2.0/24").unwrap();
        assert_eq!(c.to_string(), "192.0.2.0/24");
        let e = Cidr::parse("192.0.2.1/24").unwrap_err();
        assert!(e.message.contains("host bits"));
        assert_eq!(
            e.suggestion.as_deref(),
            Some("did you mean `192.0.2.0/24`?")
        );
        assert_eq!(Cidr::parse("2001:db8::/32").unwrap().prefix, 32);
        assert_eq!(Cidr::parse("2001:db8::1").unwrap().prefix, 128);
        assert!(Cidr::parse("192.0.2.0/33").is_err());
        assert!(Cidr::parse("").is_err());
        assert!(Cidr::parse("example.com/24").is_err());
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().prefix, 0);
        let outer = Cidr::parse("198.51.100.0/24").unwrap();
        assert!(outer.contains(&Cidr::parse("198.51.100.128/25").unwrap()));
        assert!(!outer.contains(&Cidr::parse("198.51.0.0/16").unwrap()));
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("*:4802").unwrap(), ListenAddr::AnyV4(4802));
        assert_eq!(parse_listen(":25").unwrap(), ListenAddr::AnyV4(25));
        assert_eq!(parse_listen("[*]:25").unwrap(), ListenAddr::AnyV6(25));
        assert_eq!(
            parse_listen("[::]:25").unwrap(),
            ListenAddr::Inet("[::]:25".parse().unwrap())
        );
        assert_eq!(
            parse_listen("/tmp/2025").unwrap(),
            ListenAddr::Unix("/tmp/2025".into())
        );
        let e = parse_listen("2001:db8::1:4802").unwrap_err();
        assert!(e.message.contains("square brackets"));
        assert_eq!(e.suggestion.as_deref(), Some("write `[2001:db8::1]:4802`"));
        assert!(
            parse_listen("192.0.2.1:70000")
                .unwrap_err()
                .message
                .contains("out of range")
        );
        assert!(parse_listen("192.0.2.1:0").is_err());
        assert!(parse_listen("mail.example.com:25").is_err());
        assert!(parse_listen("[192.0.2.1]:25").is_err());
        assert!(parse_listen("192.0.2.1").is_err());
    }

    #[test]
    fn capabilities() {
        assert_eq!(
            parse_capabilities(
                "cap_net_admin+ep cap_net_bind_service+ep cap_net_raw+ep cap_sys_resource+ep"
            )
            .unwrap(),
            vec![
                "cap_net_admin",
                "cap_net_bind_service",
                "cap_net_raw",
                "cap_sys_resource"
            ]
        );
        assert_eq!(
            parse_capabilities("CAP_NET_ADMIN,cap_net_raw=ep").unwrap(),
            vec!["cap_net_admin", "cap_net_raw"]
        );
        assert_eq!(parse_capabilities("=ep").unwrap().len(), CAPABILITIES.len());
        assert_eq!(
            parse_capabilities("all+ep cap_bpf-ep").unwrap().len(),
            CAPABILITIES.len() - 1
        );
        let e = parse_capabilities("cap_net_admn+ep").unwrap_err();
        assert_eq!(
            e.suggestion.as_deref(),
            Some("did you mean `cap_net_admin`?")
        );
        assert!(parse_capabilities("cap_net_admin").is_err());
        assert!(parse_capabilities("cap_net_admin+xz").is_err());
        assert_eq!(parse_capabilities("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn log_destinations() {
        assert_eq!(
            parse_log_destination("cluster:///var/log/ecelerity/mainlog.cluster=>master"),
            Some(Ok(LogDestination::Cluster {
                path: "/var/log/ecelerity/mainlog.cluster".into(),
                subscribers: vec!["master".into()]
            }))
        );
        assert_eq!(
            parse_log_destination("jlog:///var/x?subscribers=mgr1,mgr2,mgr3"),
            Some(Ok(LogDestination::Cluster {
                path: "/var/x".into(),
                subscribers: vec!["mgr1".into(), "mgr2".into(), "mgr3".into()]
            }))
        );
        assert_eq!(
            parse_log_destination("/var/log/ecelerity/mainlog.ec"),
            Some(Ok(LogDestination::File(
                "/var/log/ecelerity/mainlog.ec".into()
            )))
        );
        assert!(matches!(
            parse_log_destination("cluster://relative"),
            Some(Err(_))
        ));
        assert_eq!(parse_log_destination("60"), None);
    }
}
