//! Link-layer addresses: the interface's own, and the destination's from the kernel
//! neighbour table (resolving it first by sending one UDP datagram, which makes the
//! kernel ARP / neighbour-solicit).

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use crate::{ToolError, parse_mac};

/// MAC address of a local interface.
pub fn interface_mac(ifname: &str) -> Result<[u8; 6], ToolError> {
    let path = format!("/sys/class/net/{ifname}/address");
    let s = std::fs::read_to_string(&path).map_err(|e| ToolError::Io {
        what: format!("read {path}"),
        source: e,
    })?;
    parse_mac(s.trim())
}

/// The `lladdr` of a usable (not FAILED/INCOMPLETE) entry in `ip neigh` output.
pub fn parse_neigh(output: &str) -> Option<[u8; 6]> {
    output.lines().find_map(|l| {
        if l.contains("FAILED") || l.contains("INCOMPLETE") {
            return None;
        }
        let mut it = l.split_whitespace();
        it.find(|w| *w == "lladdr")?;
        parse_mac(it.next()?).ok()
    })
}

fn lookup(addr: IpAddr, ifname: &str) -> Result<Option<[u8; 6]>, ToolError> {
    let a = addr.to_string();
    let out = Command::new("ip")
        .args(["neigh", "show", "to", &a, "dev", ifname])
        .output()
        .map_err(|e| ToolError::Io {
            what: "run `ip neigh show`".to_string(),
            source: e,
        })?;
    Ok(parse_neigh(&String::from_utf8_lossy(&out.stdout)))
}

/// Destination MAC for `addr` on `ifname`, waiting up to `timeout` for resolution.
pub fn resolve(addr: IpAddr, ifname: &str, timeout: Duration) -> Result<[u8; 6], ToolError> {
    if let Some(m) = lookup(addr, ifname)? {
        return Ok(m);
    }
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| ToolError::NoNeighbour {
            addr,
            ifname: ifname.to_string(),
        })?
    } else {
        "[::]:0".parse().map_err(|_| ToolError::NoNeighbour {
            addr,
            ifname: ifname.to_string(),
        })?
    };
    let io = |what: &str| {
        let what = what.to_string();
        move |e| ToolError::Io { what, source: e }
    };
    let sock = UdpSocket::bind(bind).map_err(io("bind UDP socket"))?;
    // Discard port: whatever answers (or not), the kernel resolves the neighbour first.
    sock.send_to(b"x", SocketAddr::new(addr, 9))
        .map_err(io("send UDP probe"))?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(m) = lookup(addr, ifname)? {
            return Ok(m);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(ToolError::NoNeighbour {
        addr,
        ifname: ifname.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_neigh_lines() {
        assert_eq!(
            parse_neigh("192.0.2.2 lladdr 02:aa:bb:cc:dd:ee REACHABLE\n"),
            Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee])
        );
        assert_eq!(
            parse_neigh("2001:db8::2 lladdr 02:aa:bb:cc:dd:ef router STALE"),
            Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xef])
        );
        assert_eq!(parse_neigh("192.0.2.2  INCOMPLETE"), None);
        assert_eq!(
            parse_neigh("192.0.2.2 lladdr 02:aa:bb:cc:dd:ee FAILED"),
            None
        );
        assert_eq!(parse_neigh(""), None);
    }
}
