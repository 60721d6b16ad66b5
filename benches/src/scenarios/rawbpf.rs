//! The few raw bpf(2) calls the benches need and the project's API does not offer:
//! loading tiny hand-assembled XDP programs (the empty baseline, a traffic source for live
//! frames), `BPF_PROG_TEST_RUN` on any program fd (also with `BPF_F_TEST_XDP_LIVE_FRAMES`),
//! native XDP attachment through a bpf_link (detached when the fd closes), and one-key-at-a-
//! time map reads (the baseline the batch reader is compared with).
//!
//! The eBPF object has no empty XDP program, so the baseline is assembled here: two
//! instructions, `r0 = verdict; exit`, exactly what an empty `#[xdp]` function compiles to.

use std::{
    ffi::c_void,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{Context, Result, bail};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// `r0 = verdict; exit`: the empty XDP program.
pub fn const_verdict(verdict: i32) -> Vec<Insn> {
    vec![insn(0xb7, 0, 0, 0, verdict), insn(0x95, 0, 0, 0, 0)]
}

/// Frame offsets the traffic source rewrites (Ethernet + IPv4 without options + TCP).
pub mod off {
    /// Low byte of the IPv4 identification (compensates the source octet in the IP sum).
    pub const IP_ID_LO: usize = 19;
    /// Last octet of the IPv4 source address.
    pub const SADDR_LAST: usize = 29;
    pub const SPORT: usize = 34;
    /// High 16 bits of the sequence number (compensates the source port in the TCP sum).
    pub const SEQ_HI: usize = 38;
    /// Low byte of the acknowledgment number (compensates the source octet in the TCP sum;
    /// ignored by receivers of a SYN).
    pub const ACK_LO: usize = 45;
    pub const MIN_LEN: usize = 54;
}

/// An `XDP_TX` program that gives every frame a random source port and a random last
/// source octet, keeping both checksums valid: the base frame has zero in those fields and
/// all-ones in the compensating fields, each pair is rewritten to `(x, ones − x)`, so every
/// 16-bit ones'-complement sum is unchanged. Used with live frames to send a SYN flood
/// from 256 sources × 65,536 ports out of a veth.
pub fn tx_random_source() -> Vec<Insn> {
    let o = |v: usize| v as i16;
    vec![
        insn(0x61, 2, 1, 0, 0),                   // r2 = ctx->data
        insn(0x61, 3, 1, 4, 0),                   // r3 = ctx->data_end
        insn(0xbf, 4, 2, 0, 0),                   // r4 = r2
        insn(0x07, 4, 0, 0, off::MIN_LEN as i32), // r4 += 54
        insn(0x2d, 4, 3, 13, 0),                  // if r4 > r3 goto tx
        insn(0xbf, 6, 2, 0, 0),                   // r6 = r2
        insn(0x85, 0, 0, 0, 7),                   // call bpf_get_prandom_u32
        insn(0x6b, 6, 0, o(off::SPORT), 0),       // *(u16 *)(r6 + sport) = r0
        insn(0xb7, 7, 0, 0, 0xffff),              // r7 = 0xffff
        insn(0x1f, 7, 0, 0, 0),                   // r7 -= r0 (low 16 bits: ~sport)
        insn(0x6b, 6, 7, o(off::SEQ_HI), 0),      // *(u16 *)(r6 + seq_hi) = r7
        insn(0x77, 0, 0, 0, 16),                  // r0 >>= 16
        insn(0x57, 0, 0, 0, 0xff),                // r0 &= 0xff
        insn(0x73, 6, 0, o(off::SADDR_LAST), 0),  // *(u8 *)(r6 + saddr[3]) = r0
        insn(0xb7, 7, 0, 0, 0xff),                // r7 = 0xff
        insn(0x1f, 7, 0, 0, 0),                   // r7 -= r0
        insn(0x73, 6, 7, o(off::IP_ID_LO), 0),    // *(u8 *)(r6 + id_lo) = r7
        insn(0x73, 6, 7, o(off::ACK_LO), 0),      // *(u8 *)(r6 + ack_lo) = r7
        // tx:
        insn(0xb7, 0, 0, 0, 3), // r0 = XDP_TX
        insn(0x95, 0, 0, 0, 0), // exit
    ]
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-padded prefix of `union bpf_attr` for `cmd`; the buffers it
    // points to live for the duration of the call and are sized as the attr says.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 8],
}

/// Loads an XDP program (verifier included); the fd owns it.
pub fn load_xdp(name: &str, insns: &[Insn]) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        expected_attach_type: BPF_XDP,
        ..ProgLoadAttr::default()
    };
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a new fd the kernel just gave us.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            bail!(
                "BPF_PROG_LOAD `{name}`: {e}; verifier log:\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `BPF_PROG_TEST_RUN` of `frame` `repeat` times: (return value, kernel's mean ns per run).
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> Result<(u32, u32)> {
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: repeat.max(1),
        ..TestAttr::default()
    };
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN")?;
    Ok((attr.retval, attr.duration))
}

/// Live frames: runs `prog` on `repeat` copies of `frame` as if received on `ifindex`
/// (of the calling thread's namespace) and really transmits what it returns `XDP_TX` for.
/// Returns the kernel-reported duration.
pub fn live_frames(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
    batch: u32,
) -> Result<Duration> {
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex }
    let mut ctx = [0u32; 6];
    ctx[1] = frame.len() as u32;
    ctx[3] = ifindex;
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: size_of_val(&ctx) as u32,
        ctx_in: ctx.as_ptr() as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..TestAttr::default()
    };
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN (live frames)")?;
    Ok(Duration::from_nanos(u64::from(attr.duration)))
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 6],
}

/// Attaches an XDP program natively to `ifindex` (of the calling thread's namespace); the
/// returned link fd detaches it when closed.
pub fn attach_native(prog: BorrowedFd<'_>, ifindex: u32) -> Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
        ..LinkCreateAttr::default()
    };
    let fd = sys_bpf(BPF_LINK_CREATE, &mut attr).context("BPF_LINK_CREATE (native XDP)")?;
    // SAFETY: a new fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

/// Reads every entry one key at a time (`BPF_MAP_GET_NEXT_KEY` + `BPF_MAP_LOOKUP_ELEM`):
/// what a reader without `BPF_MAP_LOOKUP_BATCH` does. Calls `each(key, value)`.
pub fn dump_per_key(
    map: BorrowedFd<'_>,
    key_size: usize,
    value_bytes: usize,
    mut each: impl FnMut(&[u8], &[u8]),
) -> Result<usize> {
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut value = vec![0u8; value_bytes];
    let mut first = true;
    let mut n = 0;
    loop {
        let mut attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            key: if first { 0 } else { key.as_ptr() as u64 },
            value_or_next_key: next.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
            Err(e) => return Err(e).context("BPF_MAP_GET_NEXT_KEY"),
        }
        first = false;
        std::mem::swap(&mut key, &mut next);
        let mut attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value_or_next_key: value.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        match sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => {
                each(&key, &value);
                n += 1;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e).context("BPF_MAP_LOOKUP_ELEM"),
        }
    }
}

/// `if_nametoindex` in the calling thread's namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface `{name}`: {}", io::Error::last_os_error());
    }
    Ok(i)
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Softirq time of all CPUs so far (/proc/stat, USER_HZ ticks converted to seconds).
pub fn softirq_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: f64 = stat
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks / hz
}

#[cfg(test)]
mod tests {
    fn csum(words: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in words.chunks(2) {
            s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn compensated_rewrite_keeps_the_sum() {
        // Same arithmetic as the program, on a little-endian host storing u16 natively.
        let mut h = [0u8; 16];
        h[4..6].copy_from_slice(&0xffffu16.to_ne_bytes());
        h[9] = 0xff;
        let before = csum(&h);
        let r: u32 = 0xdead_beef;
        h[0..2].copy_from_slice(&(r as u16).to_ne_bytes());
        h[4..6].copy_from_slice(&((0xffffu32.wrapping_sub(r)) as u16).to_ne_bytes());
        let b = ((r >> 16) & 0xff) as u8;
        h[3] = b;
        h[9] = 0xff - b;
        assert_eq!(csum(&h), before);
    }
}
