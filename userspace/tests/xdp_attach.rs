//! Attaching `xdp_ingress` to real interfaces: native on veth, generic on lo, errors,
//! detach on drop, and a real frame counted by the attached program.
//!
//! Everything happens in a network namespace private to the test thread (unshare of the
//! thread), so links disappear with the thread even if the test fails.

use std::{
    ffi::CString,
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use duraplane::bpf::{
    AttachedMode, BpfError, Datapath, DatapathConfig, XdpMode,
    frames::{Frame, tcp_flags as f},
};
use duraplane_common::Stat;

/// Runs `f` on a thread inside a fresh network namespace (destroyed when the thread
/// ends, with every link in it).
fn in_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall; affects only this thread.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

fn ip_cmd(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn xdp_prog_on(dev: &str) -> bool {
    ip_cmd(&["-d", "link", "show", "dev", dev]).contains("prog/xdp")
}

fn send_raw(dev: &str, frame: &[u8]) {
    let name = CString::new(dev).unwrap();
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0);
    // SAFETY: plain syscalls on a socket we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        let n = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n, frame.len() as isize, "sendto: {err}");
    }
}

#[test]
fn attach_native_generic_detach_and_count_real_frames() {
    in_netns(|| {
        ip_cmd(&["link", "set", "lo", "up"]);
        ip_cmd(&[
            "link", "add", "dpv0", "type", "veth", "peer", "name", "dpv1",
        ]);
        ip_cmd(&["link", "set", "dpv0", "up"]);
        ip_cmd(&["link", "set", "dpv1", "up"]);

        let mut dp = Datapath::load(&DatapathConfig::default()).unwrap();
        assert_eq!(
            dp.attach("dpv0", XdpMode::Auto).unwrap(),
            AttachedMode::Native
        );
        assert_eq!(
            dp.attach("lo", XdpMode::Generic).unwrap(),
            AttachedMode::Generic
        );
        assert!(xdp_prog_on("dpv0"));
        assert!(matches!(
            dp.attach("dpv0", XdpMode::Native),
            Err(BpfError::AlreadyAttached { .. })
        ));
        match dp.attach("nosuchdev0", XdpMode::Auto) {
            Err(BpfError::AttachFailed {
                interface,
                mode: AttachedMode::Generic,
                native_error: Some(_),
                ..
            }) => assert_eq!(interface, "nosuchdev0"),
            other => panic!("{other:?}"),
        }
        assert_eq!(dp.attachments().len(), 2);
        dp.detach("lo").unwrap();
        assert!(matches!(dp.detach("lo"), Err(BpfError::NotAttached { .. })));

        // A real SYN entering dpv0 (sent on its peer) is counted by the attached program.
        let s: IpAddr = "192.0.2.1".parse().unwrap();
        let d: IpAddr = "192.0.2.2".parse().unwrap();
        send_raw("dpv1", &Frame::tcp(s, 33000, d, 25, f::SYN).build());
        // Delivery is asynchronous (veth NAPI); wait for the effect, bounded.
        let deadline = Instant::now() + Duration::from_secs(5);
        while dp.read_stats().unwrap().get(Stat::Opened) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let flows = dp.read_flows().unwrap();
        assert_eq!(flows.len(), 1);
        assert_eq!(
            (flows[0].src, flows[0].sport, flows[0].dport),
            (s, 33000, 25)
        );

        drop(dp);
        assert!(!xdp_prog_on("dpv0"), "detached on drop");
    });
}
