//! Whole-map reads through the raw bpf(2) syscall: `BPF_MAP_LOOKUP_BATCH` (kernel ≥ 5.6 for
//! hash maps, 5.7 for arrays; about 3× cheaper per key than one-by-one lookups), falling
//! back to `BPF_MAP_GET_NEXT_KEY` + `BPF_MAP_LOOKUP_ELEM` when the kernel or map type says
//! EINVAL/ENOTSUP. aya 0.14 has no batch API.
//!
//! Value layout, as the kernel copies it: per-CPU maps give `round_up(value_size, 8)` bytes
//! per possible CPU; other maps give `value_size` bytes.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel-internal `ENOTSUPP`, which leaks to userspace from some map types.
const ENOTSUPP: i32 = 524;

/// `union bpf_attr`, the `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr`, the map element member.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: `attr` is a properly laid-out prefix of `union bpf_attr`; the kernel reads and
    // writes at most `size_of::<T>()` bytes of it and the buffers it points to are sized by
    // the caller for the counts it passes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Describes the map to read: sizes as created in the kernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub key_size: usize,
    pub value_size: usize,
    pub percpu: bool,
    /// Possible CPUs (only used when `percpu`).
    pub cpus: usize,
}

impl Layout {
    /// Bytes per element in a value buffer.
    pub fn stride(&self) -> usize {
        if self.percpu {
            self.value_size.next_multiple_of(8) * self.cpus
        } else {
            self.value_size
        }
    }
}

/// All entries of a map: flat key and value buffers (`count` entries each).
#[derive(Debug, Default)]
pub(crate) struct Dump {
    pub keys: Vec<u8>,
    pub values: Vec<u8>,
    pub count: usize,
    /// Whether the batch API was used (false: per-key fallback).
    pub batched: bool,
}

impl Dump {
    /// `(key bytes, value bytes)` of each entry.
    pub fn entries<'a>(&'a self, l: &Layout) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        let (ks, vs) = (l.key_size, l.stride());
        (0..self.count).map(move |i| {
            (
                &self.keys[i * ks..(i + 1) * ks],
                &self.values[i * vs..(i + 1) * vs],
            )
        })
    }
}

/// Reads every entry of the map behind `fd`.
pub(crate) fn dump(fd: BorrowedFd<'_>, l: &Layout, try_batch: bool) -> io::Result<Dump> {
    if try_batch {
        match dump_batch(fd, l) {
            Ok(d) => return Ok(d),
            Err(e) if is_unsupported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    dump_per_key(fd, l)
}

/// Whether an error means "this kernel/map has no batch lookup".
pub(crate) fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(ENOTSUPP)
    )
}

fn dump_batch(fd: BorrowedFd<'_>, l: &Layout) -> io::Result<Dump> {
    let (ks, vs) = (l.key_size, l.stride());
    // Hash maps use a u32 bucket cursor, arrays a key: big enough for both.
    let token_len = ks.max(8);
    let mut token = vec![0u8; token_len];
    let mut next = vec![0u8; token_len];
    let mut first = true;
    let mut chunk = 256usize;
    let mut out = Dump {
        batched: true,
        ..Dump::default()
    };
    loop {
        let mut keys = vec![0u8; chunk * ks];
        let mut values = vec![0u8; chunk * vs];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let r = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(chunk);
        out.keys.extend_from_slice(&keys[..n * ks]);
        out.values.extend_from_slice(&values[..n * vs]);
        out.count += n;
        match r {
            Ok(()) => {
                std::mem::swap(&mut token, &mut next);
                first = false;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            // A hash bucket holds more entries than `chunk`: retry it with more room.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 && chunk < 1 << 20 => {
                chunk *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

fn dump_per_key(fd: BorrowedFd<'_>, l: &Layout) -> io::Result<Dump> {
    let (ks, vs) = (l.key_size, l.stride());
    let mut out = Dump::default();
    let mut key = vec![0u8; ks];
    let mut next = vec![0u8; ks];
    let mut value = vec![0u8; vs];
    let mut first = true;
    loop {
        let mut attr = ElemAttr {
            map_fd: fd.as_raw_fd() as u32,
            key: if first { 0 } else { key.as_ptr() as u64 },
            value_or_next_key: next.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
        first = false;
        std::mem::swap(&mut key, &mut next);
        let mut attr = ElemAttr {
            map_fd: fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value_or_next_key: value.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        match sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(()) => {
                out.keys.extend_from_slice(&key);
                out.values.extend_from_slice(&value);
                out.count += 1;
            }
            // Deleted between the two calls: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
}
