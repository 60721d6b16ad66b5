//! GRO on/off through the legacy ethtool ioctl, so tests need no `ethtool` binary. Runs
//! in the calling thread's network namespace.

use std::os::fd::AsRawFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use super::TestbedError;

const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn ioctl(ifname: &str, op: &'static str, v: &mut EthtoolValue) -> Result<(), TestbedError> {
    let err = |errno| TestbedError::Ethtool {
        op,
        ifname: ifname.to_string(),
        errno,
    };
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(err(nix::Error::ENAMETOOLONG));
    }
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: v,
        _pad: [0; 16],
    };
    for (d, s) in req.name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCETHTOOL takes a struct ifreq whose data points at an ethtool_value;
    // both outlive the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if r < 0 {
        return Err(err(nix::Error::last()));
    }
    Ok(())
}

pub(super) fn set_gro(ifname: &str, on: bool) -> Result<(), TestbedError> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: u32::from(on),
    };
    ioctl(ifname, "set gro", &mut v)
}

pub(super) fn gro(ifname: &str) -> Result<bool, TestbedError> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_GGRO,
        data: 0,
    };
    ioctl(ifname, "get gro", &mut v)?;
    Ok(v.data != 0)
}
