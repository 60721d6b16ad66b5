//! Listening sockets from the ECCluster_Listener `Listen` scopes, with their options.

use std::{
    io,
    mem::size_of,
    net::{SocketAddr, TcpListener},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use crate::config::{Config, ListenAddr, Origin};

/// Momentum's documented default for `tcp_recv_buffer_size` / `tcp_send_buffer_size`.
/// 4 KiB is far too small for replication bursts and pins the TCP window, so when the
/// option is left at this default Duraplane does not set it and the kernel autotunes.
pub const MOMENTUM_DEFAULT_TCP_BUFFER: u32 = 4096;

/// One listening socket to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// `[::]` means `[*]`: opened IPV6_V6ONLY so `*:4802` and `[*]:4802` can coexist.
    pub addr: SocketAddr,
    /// `listen_backlog`.
    pub backlog: u32,
    /// `tcp_recv_buffer_size` when set explicitly (SO_RCVBUF); `None` = kernel autotuning.
    pub recv_buffer: Option<u32>,
    /// `tcp_send_buffer_size` when set explicitly (SO_SNDBUF); `None` = kernel autotuning.
    pub send_buffer: Option<u32>,
    /// `disable_nagle_algorithm` (TCP_NODELAY on accepted sockets).
    pub nodelay: bool,
}

impl ListenerSpec {
    /// A listener with Momentum's defaults except the buffer sizes (autotuned).
    pub fn new(addr: SocketAddr) -> Self {
        ListenerSpec {
            addr,
            backlog: 500,
            recv_buffer: None,
            send_buffer: None,
            nodelay: false,
        }
    }
}

/// Turns the ECCluster_Listener scopes into listener specs, plus startup warnings for
/// options this engine does not act on.
pub fn listeners_from_config(cfg: &Config) -> (Vec<ListenerSpec>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for l in &cfg.listener.listens {
        if !l.enable {
            continue;
        }
        let addr = match &l.addr {
            ListenAddr::AnyV4(p) => SocketAddr::from(([0, 0, 0, 0], *p)),
            ListenAddr::AnyV6(p) => SocketAddr::from(([0u16; 8], *p)),
            ListenAddr::Inet(sa) => *sa,
            ListenAddr::Unix(p) => {
                warnings.push(format!(
                    "ECCluster_Listener: Listen \"{}\" is a Unix socket; peers connect over TCP, so it is ignored",
                    p.display()
                ));
                continue;
            }
        };
        let key = |opt: &str| format!("eccluster_listener.listen.{}.{opt}", l.addr);
        let explicit = |opt: &str, v: u32| {
            v != MOMENTUM_DEFAULT_TCP_BUFFER
                || matches!(cfg.origins.get(&key(opt)), Some(Origin::File { .. }))
        };
        let ignored = [
            ("concurrency", l.concurrency != 0),
            ("events_per_iter", l.events_per_iter != 0),
            ("accept_queue_backlog", l.accept_queue_backlog != 0),
            ("pool_name", l.pool_name.is_some()),
        ];
        for (name, set) in ignored {
            if set {
                warnings.push(format!(
                    "ECCluster_Listener: Listen \"{}\": `{name}` is ignored (Duraplane serves port 4802 from one reactor thread)",
                    l.addr
                ));
            }
        }
        out.push(ListenerSpec {
            addr,
            backlog: l.listen_backlog,
            recv_buffer: explicit("tcp_recv_buffer_size", l.tcp_recv_buffer_size)
                .then_some(l.tcp_recv_buffer_size),
            send_buffer: explicit("tcp_send_buffer_size", l.tcp_send_buffer_size)
                .then_some(l.tcp_send_buffer_size),
            nodelay: l.disable_nagle_algorithm,
        });
    }
    (out, warnings)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setopt(fd: RawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: fd is a valid socket; the option value is a c_int on the stack.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Sets TCP_NODELAY on a connected socket.
pub(crate) fn set_nodelay(fd: RawFd) -> io::Result<()> {
    setopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// A socket address in the kernel's form, for `bind`/`connect` (also io_uring's Connect,
/// which needs it to stay put until the operation completes).
pub(crate) fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// A new non-blocking, close-on-exec TCP socket of the address's family.
pub(crate) fn tcp_socket(addr: &SocketAddr, nonblocking: bool) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let mut ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    if nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain socket(2); the fd is owned immediately.
    let fd = cvt(unsafe { libc::socket(domain, ty, 0) })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens one listener with its options (buffer sizes before `listen` so accepted sockets
/// inherit them and the window scale is chosen accordingly).
pub(crate) fn bind(spec: &ListenerSpec) -> io::Result<TcpListener> {
    let fd = tcp_socket(&spec.addr, true)?;
    let raw = fd.as_raw_fd();
    setopt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if spec.addr.is_ipv6() {
        setopt(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    if let Some(n) = spec.recv_buffer {
        setopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            n.min(i32::MAX as u32) as i32,
        )?;
    }
    if let Some(n) = spec.send_buffer {
        setopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            n.min(i32::MAX as u32) as i32,
        )?;
    }
    if spec.nodelay {
        setopt(raw, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    }
    let (ss, len) = sockaddr(&spec.addr);
    // SAFETY: ss/len describe a valid sockaddr of the socket's family.
    cvt(unsafe { libc::bind(raw, (&ss as *const libc::sockaddr_storage).cast(), len) })?;
    let backlog = spec.backlog.clamp(1, i32::MAX as u32) as i32;
    // SAFETY: listen(2) on our socket.
    cvt(unsafe { libc::listen(raw, backlog) })?;
    Ok(TcpListener::from(fd))
}

/// Reads SO_RCVBUF/SO_SNDBUF (tests, check-config).
pub fn socket_buffer_sizes(fd: RawFd) -> io::Result<(u32, u32)> {
    let get = |name| -> io::Result<u32> {
        let mut v: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v/len are valid out-parameters for a c_int option.
        cvt(unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        Ok(v.max(0) as u32)
    };
    Ok((get(libc::SO_RCVBUF)?, get(libc::SO_SNDBUF)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EcclusterListener, Listen};

    #[test]
    fn config_maps_to_specs_with_warnings() {
        let mut cfg = Config::default();
        let mut a = Listen::with_defaults(ListenAddr::AnyV4(4802));
        a.concurrency = 4;
        a.disable_nagle_algorithm = true;
        let mut b = Listen::with_defaults(ListenAddr::AnyV6(4802));
        b.tcp_recv_buffer_size = 1 << 20;
        let mut c = Listen::with_defaults(ListenAddr::Inet("127.0.0.1:4803".parse().unwrap()));
        c.enable = false;
        cfg.listener = EcclusterListener {
            listens: vec![a, b, c],
        };
        // An explicit 4096 in the file is honoured.
        cfg.origins.insert(
            "eccluster_listener.listen.*:4802.tcp_send_buffer_size".into(),
            Origin::File {
                file: "x".into(),
                line: 1,
                col: 1,
            },
        );
        let (specs, warnings) = listeners_from_config(&cfg);
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].addr, "0.0.0.0:4802".parse().unwrap());
        assert!(specs[0].nodelay);
        assert_eq!(specs[0].recv_buffer, None);
        assert_eq!(specs[0].send_buffer, Some(4096));
        assert_eq!(specs[1].addr, "[::]:4802".parse().unwrap());
        assert_eq!(specs[1].recv_buffer, Some(1 << 20));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("concurrency"));
    }

    #[test]
    fn explicit_buffer_sizes_are_applied() {
        let mut s = ListenerSpec::new("127.0.0.1:0".parse().unwrap());
        s.recv_buffer = Some(65536);
        s.send_buffer = Some(32768);
        let l = bind(&s).unwrap();
        let (r, w) = socket_buffer_sizes(l.as_raw_fd()).unwrap();
        // Linux doubles the requested value for bookkeeping.
        assert!(r >= 65536, "rcvbuf {r}");
        assert!(w >= 32768, "sndbuf {w}");
    }
}
