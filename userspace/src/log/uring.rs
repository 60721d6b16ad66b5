//! How a group commit reaches the disk: blocking `pwrite` + `fdatasync` from the committing
//! thread (the default, `auto`), or one io_uring submission of the batch's write linked
//! (`IOSQE_IO_LINK`) to an fdatasync (`IORING_FSYNC_DATASYNC`) when
//! `DURAPLANE_LOG_IO=io_uring` asks for it.
//!
//! Why `auto` is blocking: io_uring has no non-blocking fdatasync; the kernel always hands
//! it to an io-wq worker, so every commit pays a second thread wake-up (worker, then the
//! waiting committer) on top of the device flush. Measured here (issue 6, `log_appends`,
//! one producer, same run): io_uring 0.18–0.58 × F, blocking 0.28–1.00 × F, blocking ahead
//! in every run; the busier the CPUs, the wider the gap. The committer is a dedicated
//! thread either way, so blocking calls cost nothing else. Either way a commit is acknowledged only when both steps succeeded; any
//! failure (short write, `-ENOSPC`, `-EIO`, a cancelled link, a failed submission) is an
//! error the stream turns into poison — nothing is retried into false success.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use io_uring::{IoUring, opcode, squeue, types};

/// Environment variable forcing the append I/O path: `auto` (default), `io_uring`, `blocking`.
pub const LOG_IO_ENV: &str = "DURAPLANE_LOG_IO";

/// The append I/O path a stream uses (reported in [`super::AppendStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogIo {
    /// Write linked to fdatasync in one io_uring submission.
    IoUring,
    /// `pwrite` then `fdatasync` system calls.
    #[default]
    Blocking,
}

impl LogIo {
    pub fn as_str(self) -> &'static str {
        match self {
            LogIo::IoUring => "io_uring",
            LogIo::Blocking => "blocking",
        }
    }
}

impl std::fmt::Display for LogIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`LOG_IO_ENV`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Choice {
    Auto,
    IoUring,
    Blocking,
}

/// Parses [`LOG_IO_ENV`]'s value (`None`: unset, i.e. auto); `Err` carries the bad value.
pub(crate) fn parse_choice(v: Option<&str>) -> Result<Choice, String> {
    match v.map(str::trim) {
        None | Some("") | Some("auto") => Ok(Choice::Auto),
        Some("io_uring" | "io-uring" | "uring") => Ok(Choice::IoUring),
        Some("blocking" | "sync") => Ok(Choice::Blocking),
        Some(other) => Err(other.to_owned()),
    }
}

/// Ring entries: a commit uses two (write, fdatasync).
const RING_ENTRIES: u32 = 8;
const UD_WRITE: u64 = 1;
const UD_SYNC: u64 = 2;

/// The I/O engine of one stream's committer (used under the writer lock only).
pub(crate) enum Io {
    Uring(Box<IoUring>),
    Blocking,
}

impl Io {
    /// Sets up the path asked for; `Err(reason)` only when io_uring was forced and cannot
    /// be set up. Auto is blocking (see the module comment for why).
    pub(crate) fn new(choice: Choice) -> Result<Io, String> {
        match choice {
            Choice::Blocking | Choice::Auto => Ok(Io::Blocking),
            Choice::IoUring => IoUring::new(RING_ENTRIES)
                .map(|r| Io::Uring(Box::new(r)))
                .map_err(|e| format!("io_uring_setup failed: {e}")),
        }
    }

    pub(crate) fn kind(&self) -> LogIo {
        match self {
            Io::Uring(_) => LogIo::IoUring,
            Io::Blocking => LogIo::Blocking,
        }
    }

    /// Writes all of `buf` at `pos` and makes it durable (fdatasync). `Err((op, e))` names
    /// the step that failed; after an error nothing of `buf` may be acknowledged.
    pub(crate) fn write_sync(
        &mut self,
        file: &File,
        buf: &[u8],
        pos: u64,
    ) -> Result<(), (&'static str, io::Error)> {
        match self {
            Io::Blocking => {
                file.write_all_at(buf, pos).map_err(|e| ("write", e))?;
                file.sync_data().map_err(|e| ("fdatasync", e))
            }
            Io::Uring(ring) => uring_write_sync(ring, file, buf, pos),
        }
    }
}

fn uring_write_sync(
    ring: &mut IoUring,
    file: &File,
    buf: &[u8],
    pos: u64,
) -> Result<(), (&'static str, io::Error)> {
    let len = u32::try_from(buf.len()).map_err(|_| {
        (
            "write",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "commit larger than 4 GiB in one write",
            ),
        )
    })?;
    let fd = types::Fd(file.as_raw_fd());
    let write = opcode::Write::new(fd, buf.as_ptr(), len)
        .offset(pos)
        .build()
        .flags(squeue::Flags::IO_LINK)
        .user_data(UD_WRITE);
    let sync = opcode::Fsync::new(fd)
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data(UD_SYNC);
    // SAFETY: `buf` and `file` outlive the operations: this function does not return
    // before both CQEs are reaped (or the ring is unusable, in which case the stream is
    // poisoned and the ring dropped with the writer only after the kernel let go of it).
    unsafe {
        let mut sq = ring.submission();
        if sq.push(&write).is_err() || sq.push(&sync).is_err() {
            return Err((
                "io_uring submit",
                io::Error::other("submission queue full (a previous commit left entries)"),
            ));
        }
    }
    let mut write_res: Option<i32> = None;
    let mut sync_res: Option<i32> = None;
    let mut submitted = false;
    while write_res.is_none() || sync_res.is_none() {
        let want = usize::from(write_res.is_none()) + usize::from(sync_res.is_none());
        let r = if submitted {
            ring.submitter().submit_and_wait(want)
        } else {
            ring.submit_and_wait(want)
        };
        match r {
            Ok(_) => submitted = true,
            // Interrupted or busy waits are retried; the operations themselves are never
            // resubmitted, and the buffer stays borrowed until both completions are in.
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) =>
            {
                submitted = ring.submission().is_empty();
            }
            Err(e) => return Err(("io_uring_enter", e)),
        }
        for cqe in ring.completion() {
            match cqe.user_data() {
                UD_WRITE => write_res = Some(cqe.result()),
                UD_SYNC => sync_res = Some(cqe.result()),
                _ => {}
            }
        }
    }
    let (w, s) = (
        write_res.unwrap_or(-libc::EIO),
        sync_res.unwrap_or(-libc::EIO),
    );
    if w < 0 {
        return Err(("write", io::Error::from_raw_os_error(-w)));
    }
    let done = w as usize;
    if done != buf.len() {
        // The linked fdatasync was cancelled; the commit fails whatever happens next. A
        // write of the rest only finds the cause to report (typically ENOSPC), as the
        // blocking path's retry loop would.
        let cause = match buf.get(done..) {
            Some(rest) => file.write_all_at(rest, pos + done as u64).err(),
            None => None,
        };
        return Err((
            "write",
            cause.unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {done} of {} bytes", buf.len()),
                )
            }),
        ));
    }
    if s < 0 {
        return Err(("fdatasync", io::Error::from_raw_os_error(-s)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_parses_like_the_engine_switch() {
        assert_eq!(parse_choice(None), Ok(Choice::Auto));
        assert_eq!(parse_choice(Some("auto")), Ok(Choice::Auto));
        assert_eq!(parse_choice(Some("io_uring")), Ok(Choice::IoUring));
        assert_eq!(parse_choice(Some("blocking")), Ok(Choice::Blocking));
        assert_eq!(parse_choice(Some("fast")), Err("fast".into()));
    }

    /// Both paths leave the same bytes on disk.
    #[test]
    fn both_paths_write_and_sync() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mut io = Io::new(Choice::Blocking).unwrap();
        io.write_sync(&f, b"hello ", 0).unwrap();
        if let Ok(mut u) = Io::new(Choice::IoUring) {
            assert_eq!(u.kind(), LogIo::IoUring);
            u.write_sync(&f, b"world", 6).unwrap();
            u.write_sync(&f, b"!", 11).unwrap();
        } else {
            io.write_sync(&f, b"world!", 6).unwrap();
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"hello world!");
    }

    /// A write the kernel refuses (descriptor opened read-only) fails the commit on the
    /// io_uring path too, and the linked fdatasync does not turn it into success.
    #[test]
    fn failed_write_is_an_error_on_both_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ro");
        std::fs::write(&p, b"x").unwrap();
        let ro = File::open(&p).unwrap();
        let mut b = Io::new(Choice::Blocking).unwrap();
        assert_eq!(b.write_sync(&ro, b"data", 0).unwrap_err().0, "write");
        if let Ok(mut u) = Io::new(Choice::IoUring) {
            let (op, e) = u.write_sync(&ro, b"data", 0).unwrap_err();
            assert_eq!(op, "write");
            assert_eq!(e.raw_os_error(), Some(libc::EBADF));
            // The ring is still usable afterwards (both CQEs were reaped).
            let rw = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            u.write_sync(&rw, b"y", 0).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), b"y");
        }
    }
}

/// Not a test: `cargo test -p duraplane --release --lib log::uring::compare_paths --
/// --ignored --nocapture` prints the cost of one small write + fdatasync on each path,
/// interleaved so both see the same disk load (`DURAPLANE_BENCH_DIR`, default /var/tmp).
#[cfg(test)]
#[test]
#[ignore = "measurement, prints timings"]
fn compare_paths() {
    let base = std::env::var_os("DURAPLANE_BENCH_DIR").unwrap_or_else(|| "/var/tmp".into());
    let dir = tempfile::tempdir_in(base).unwrap();
    let p = dir.path().join("f");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.write_all_at(&vec![0u8; 8 << 20], 0).unwrap();
    f.sync_all().unwrap();
    let buf = [0x41u8; 300];
    let deferred = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(RING_ENTRIES)
        .unwrap();
    let mut paths = [
        ("blocking", Io::new(Choice::Blocking).unwrap(), 0.0f64, 0u32),
        ("io_uring", Io::new(Choice::IoUring).unwrap(), 0.0, 0),
        (
            "io_uring single issuer + defer taskrun",
            Io::Uring(Box::new(deferred)),
            0.0,
            0,
        ),
    ];
    let mut pos = 0u64;
    for _round in 0..10 {
        for (_, io, total, n) in paths.iter_mut() {
            let t = std::time::Instant::now();
            for _ in 0..200 {
                io.write_sync(&f, &buf, pos).unwrap();
                pos += buf.len() as u64;
            }
            *total += t.elapsed().as_secs_f64();
            *n += 200;
        }
    }
    for (name, _, total, n) in &paths {
        eprintln!(
            "{name}: {:.1} µs per write + fdatasync",
            total / *n as f64 * 1e6
        );
    }
}
