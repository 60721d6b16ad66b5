//! A durable node-local stream: segments, group commit, recovery, subscribers, disk policy.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
};
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, IntoBytes};

use super::error::{LogError, Result};
use super::files::{self, SEGMENT_HEADER_LEN};
use super::frame::{self, Decoded, FRAME_HEADER_LEN, FrameHeader, MAX_PAYLOAD, ScanEnd};
use super::uring::{self, Io, LOG_IO_ENV, LogIo};

/// Logical position of a record: bytes of frames written before it (segment headers excluded).
pub type Offset = u64;

/// Environment variable for streams whose [`StreamOptions::zero_filled_segments`] is unset:
/// `1`/`on` zero-fills every segment, `0`/`off` none; unset, only streams that commit in
/// large writes get zero-filled spares ([`ZeroFill::Auto`]).
pub const LOG_PREZERO_ENV: &str = "DURAPLANE_LOG_PREZERO";

/// Which segments are written with zeros before use, so commits overwrite written blocks
/// instead of converting unwritten extents (each conversion makes that fdatasync a journal
/// commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZeroFill {
    /// Every segment: the first at creation, the next ones as spares.
    Always,
    /// None (the committer's zeros ahead of small commits still apply).
    Never,
    /// Spares only while the active segment's commits average [`BULK_COMMIT`] or more.
    /// A fast stream of small commits does better without: the spare's zeros, written
    /// while it commits, lengthen its fdatasyncs (issue 6, open loop of 550k records/s, 6
    /// alternating pairs: p99 1.1–1.7 ms without spares, 2.2–3.5 ms with), and the zeros
    /// ahead of its small commits already spare it the conversions. Bulk writers are the
    /// other way round: 1 MiB commits into unwritten extents ran at 0.67 × B against 0.96
    /// × B into zero-filled spares (4 alternating pairs of the full bench).
    Auto,
}

/// Average commit size from which [`ZeroFill::Auto`] prepares zero-filled spares: bulk
/// appends (the bench's are 1 MiB), well above a fast stream of small records (550k
/// records/s of 256 B: ~21 KB per commit on average, up to a few MB after a stall).
const BULK_COMMIT: u64 = ZERO_AHEAD as u64;

fn zero_fill_of(opt: Option<bool>) -> ZeroFill {
    let env = || match std::env::var(LOG_PREZERO_ENV)
        .ok()
        .as_deref()
        .map(str::trim)
    {
        Some("1" | "on" | "yes" | "true") => ZeroFill::Always,
        Some("0" | "off" | "no" | "false") => ZeroFill::Never,
        _ => ZeroFill::Auto,
    };
    match opt {
        Some(true) => ZeroFill::Always,
        Some(false) => ZeroFill::Never,
        None => env(),
    }
}

/// Default roll size, as jlog.
pub const DEFAULT_SEGMENT_SIZE: u64 = 4 << 20;

/// What an append does when the filesystem has no room for the next segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskPolicy {
    /// Refuse appends with [`LogError::DiskFull`]; nothing acknowledged is ever lost.
    #[default]
    Stop,
    /// Delete the oldest sealed segments even if unconsumed; readers see an [`Entry::Gap`].
    DropOldest,
}

impl std::str::FromStr for DiskPolicy {
    type Err = LogError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "stop" => Ok(DiskPolicy::Stop),
            "drop_oldest" => Ok(DiskPolicy::DropOldest),
            other => Err(LogError::InvalidOption {
                what: "disk_policy",
                reason: format!("{other:?} is not stop or drop_oldest"),
            }),
        }
    }
}

/// Where a new subscriber starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The oldest retained record.
    #[default]
    Oldest,
    /// After the last durable record.
    End,
}

/// Options for [`Stream::open`].
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Create the directory and metadata if missing (the writer's `cluster://` open).
    pub create: bool,
    /// Roll size for new segments; `None` keeps the stream's recorded size (default 4 MiB).
    pub segment_size: Option<u64>,
    pub disk_policy: DiskPolicy,
    /// Subscribers created (at the oldest record) if missing: `=>name`, `?subscribers=`.
    pub subscribers: Vec<String>,
    /// Also check every frame of sealed segments on open (normally trusted).
    pub verify_sealed: bool,
    /// `Some(true)`: write every segment with zeros before use (the first at creation, the
    /// next ones as spares prepared in the background), so commits overwrite written
    /// blocks; `Some(false)`: never. `None` ([`LOG_PREZERO_ENV`] unset): zero-filled
    /// spares only while the stream commits in large writes (bulk appends gain, a fast
    /// stream of small commits loses latency with them). Never on tmpfs.
    pub zero_filled_segments: Option<bool>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            create: true,
            segment_size: None,
            disk_policy: DiskPolicy::Stop,
            subscribers: Vec::new(),
            verify_sealed: false,
            zero_filled_segments: None,
        }
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    pub timestamp_ns: u64,
    pub payload: Vec<u8>,
}

/// What a reader yields: records, or a range no reader can return (dropped by the
/// `drop_oldest` policy, or damage `repair` wrapped as skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Record(Record),
    Gap { from: Offset, to: Offset },
}

/// jlog's `jlog_id {log, marker}`, printed `%08x:%08x`: here segment index : byte position
/// of the next unread frame inside that segment's data area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JlogPosition {
    pub log: u32,
    pub marker: u32,
}

impl std::fmt::Display for JlogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}:{:08x}", self.log, self.marker)
    }
}

/// How far behind a subscriber is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lag {
    /// First offset not yet consumed (durable checkpoint).
    pub next: Offset,
    /// Frame bytes between the checkpoint (or the oldest retained record) and the end.
    pub bytes: u64,
    /// Bytes lost to `drop_oldest` below the oldest retained record.
    pub lost_bytes: u64,
    /// Timestamp of the oldest unconsumed record; `None` when caught up.
    pub oldest_unconsumed_ns: Option<u64>,
    /// Now minus that timestamp.
    pub age: Option<Duration>,
}

/// A subscriber in a [`StreamSummary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberInfo {
    pub name: String,
    pub next: Offset,
    pub position: JlogPosition,
    pub lag_bytes: u64,
}

/// What `cluster show logs` and `dp-logctl list` print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    pub path: PathBuf,
    /// Retained frame bytes (end − oldest retained offset).
    pub data_bytes: u64,
    /// Bytes allocated on disk by all files (preallocation included).
    pub allocated_bytes: u64,
    pub start: Offset,
    pub end: Offset,
    pub segments: usize,
    pub segment_size: u64,
    pub subscribers: Vec<SubscriberInfo>,
    pub disk_full: bool,
    pub poisoned: Option<String>,
}

/// Counters and gauges of the append path (exported as `duraplane_log_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendStats {
    /// fdatasync calls that acknowledged records.
    pub syncs: u64,
    /// Records acknowledged.
    pub records: u64,
    /// Bytes dropped by the `drop_oldest` policy since open.
    pub dropped_bytes: u64,
    /// How commits reach the disk (io_uring write linked to fdatasync, or blocking calls).
    pub io: LogIo,
    /// Gauge: records waiting for the next commit (the pipeline's queue depth).
    pub queued_records: u64,
    /// Gauge: records in the commit now being written and synced (0 when idle).
    pub committing_records: u64,
    /// Records the last finished commit carried (its batch size).
    pub last_batch_records: u64,
    /// Largest batch one commit carried since open.
    pub max_batch_records: u64,
    /// Segment rolls (a new active segment started) since open.
    pub segment_rolls: u64,
    /// Configured segment (roll and preallocation) size in bytes.
    pub segment_bytes: u64,
}

#[derive(Debug)]
struct Seg {
    index: u32,
    path: PathBuf,
}

struct Meta {
    segments: BTreeMap<Offset, Seg>,
    /// Durable end: everything below was fdatasync'ed; readers never pass it.
    end: Offset,
    disk_full: bool,
}

impl Meta {
    fn start(&self) -> Offset {
        self.segments.keys().next().copied().unwrap_or(self.end)
    }

    /// Segment holding `off` and that segment's end.
    fn locate(&self, off: Offset) -> Option<(Offset, &Seg, Offset)> {
        let (first, seg) = self.segments.range(..=off).next_back()?;
        let seg_end = self
            .segments
            .range(first + 1..)
            .next()
            .map(|(f, _)| *f)
            .unwrap_or(self.end);
        Some((*first, seg, seg_end))
    }

    fn position(&self, next: Offset) -> JlogPosition {
        match self.locate(next.max(self.start())) {
            Some((first, seg, _)) => JlogPosition {
                log: seg.index,
                marker: (next.max(first) - first) as u32,
            },
            None => JlogPosition { log: 0, marker: 0 },
        }
    }
}

struct Writer {
    file: File,
    path: PathBuf,
    index: u32,
    /// Write position in the file (segment header included).
    pos: u64,
    /// Logical offset of the next frame.
    end: Offset,
    /// Records encoded in the commit buffer, not yet written.
    buffered_records: u64,
    /// File position up to which this writer has written zeros ahead of the data.
    zeroed: u64,
    /// io_uring or blocking; kept across segment rolls.
    io: Io,
    /// The commit buffer, kept between commits (and rolls): a fresh multi-megabyte `Vec`
    /// per commit was an mmap, page faults and regrowth copies on every commit.
    buf: Vec<u8>,
    /// When this writer started on its segment, and at which position: the append rate
    /// that paces the next spare ([`Writer::spare_pace`]).
    since: (Instant, u64),
    /// Commits written into this segment since `since`: their average size decides
    /// [`ZeroFill::Auto`].
    commits: u64,
}

/// Longest a spare's zero fill is spread over (a slow stream still gets it in seconds).
const MAX_SPARE_PACE: Duration = Duration::from_secs(5);

impl Writer {
    /// How long the next spare's zero fill may take: half the time this segment will
    /// still take to fill at its rate so far, so the spare is ready at the roll with room
    /// to spare while the disk sees a steady trickle of zeros rather than a burst.
    fn spare_pace(&self, segment_size: u64) -> Duration {
        let (t0, p0) = self.since;
        spare_pace(
            self.pos.saturating_sub(p0),
            t0.elapsed(),
            segment_size.saturating_sub(self.pos),
        )
    }
}

/// [`Writer::spare_pace`] from `written` bytes in `elapsed` and `left` bytes to go.
fn spare_pace(written: u64, elapsed: Duration, left: u64) -> Duration {
    if written == 0 || elapsed.is_zero() {
        return Duration::ZERO;
    }
    let to_roll = elapsed.as_secs_f64() * left as f64 / written as f64;
    Duration::from_secs_f64(to_roll / 2.0).min(MAX_SPARE_PACE)
}

/// Largest commit buffer kept for the next commit (a bigger one is freed after use).
const KEEP_BUF: usize = 8 << 20;

/// Zero fill written ahead of the data, in the preallocated (unwritten) part of a segment.
/// Writing into unwritten extents makes every fdatasync commit an extent conversion to the
/// journal; converting 256 KiB at once makes the next ~14 commits plain overwrites
/// (measured here: 18 KiB write + fdatasync 188 µs into unwritten extents, 117 µs over
/// written zeros). The zeros are what the unwritten extents already read as, so recovery
/// sees exactly the same bytes whether or not they reached the disk.
const ZERO_AHEAD: usize = 256 << 10;
static ZEROS: [u8; ZERO_AHEAD] = [0; ZERO_AHEAD];

/// The next segment, made ready off the commit path: a spare written with zeros and
/// synced ([`files::prepare_spare`]) that a roll renames into place, so a segment's
/// appends never write into unwritten extents (whose conversion makes every fdatasync a
/// journal commit). Measured here, interleaved (`compare_prezero`): 180 KB commits mean
/// 697 µs against 885 µs, and 964 against 1332 µs on a busier disk.
#[derive(Default)]
struct SpareState {
    ready: Option<(File, PathBuf)>,
    /// A thread is preparing one.
    preparing: bool,
    /// The last preparation failed (e.g. no space): not retried before the next roll.
    failed: bool,
    /// The last preparing thread, joined on close so no spare outlives the stream.
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Sub {
    file: File,
    path: PathBuf,
    next: Offset,
    seq: u64,
}

/// Where a producer's result is delivered. Each waiting producer sleeps on its own
/// thread (`park`), so a commit wakes exactly the producers whose records it made durable
/// (no thundering herd on a shared condvar) plus, at most, the next committer.
struct Slot {
    result: Mutex<Option<(Result<Offset>, Wake)>>,
    thread: std::thread::Thread,
}

/// The wake-up tree of one commit: the committer unparks slots 0 and 1, and the owner of
/// slot `i`, once it has taken its result, unparks `2i + 2` and `2i + 3`. Both cores share
/// the wake-ups instead of the committer issuing them one by one. Every slot is reached:
/// each owner takes its result (it loops until it has one) and then wakes its children.
struct Wake {
    list: Arc<[Arc<Slot>]>,
    at: usize,
}

impl Wake {
    fn children(self) {
        for c in [2 * self.at + 2, 2 * self.at + 3] {
            if let Some(s) = self.list.get(c) {
                s.thread.unpark();
            }
        }
    }
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot {
            result: Mutex::new(None),
            thread: std::thread::current(),
        })
    }

    /// The result once published; wakes this slot's children in the tree. Taking it also
    /// drops the slot's reference to the tree (no cycle outlives the commit).
    fn take(&self) -> Option<Result<Offset>> {
        let (r, wake) = lock(&self.result).take()?;
        wake.children();
        Some(r)
    }

    /// Publishes results (owners are woken through the tree, an unpark before a park is
    /// kept), then wakes the two roots.
    fn complete_all(results: Vec<(Arc<Slot>, Result<Offset>)>) {
        let list: Arc<[Arc<Slot>]> = results.iter().map(|(s, _)| s.clone()).collect();
        for (at, (slot, r)) in results.into_iter().enumerate() {
            let wake = Wake {
                list: list.clone(),
                at,
            };
            *lock(&slot.result) = Some((r, wake));
        }
        for s in list.iter().take(2) {
            s.thread.unpark();
        }
    }
}

/// Result cell of one [`Stream::append_async`]: filled by the committer; its owner is
/// woken only if it is actually waiting (a pipelining producer usually is not, so a commit
/// of hundreds of asynchronous records costs no wake-ups at all).
#[derive(Default)]
struct AsyncSlot {
    state: Mutex<AsyncState>,
}

#[derive(Default)]
struct AsyncState {
    result: Option<Result<Offset>>,
    /// When the committer published the result (the durable acknowledgement).
    done_at: Option<Instant>,
    waiter: Option<std::thread::Thread>,
}

impl AsyncSlot {
    fn complete(&self, r: Result<Offset>, at: Instant) {
        let waiter = {
            let mut st = lock(&self.state);
            st.result = Some(r);
            st.done_at = Some(at);
            st.waiter.take()
        };
        if let Some(t) = waiter {
            t.unpark();
        }
    }
}

/// Who gets a ticket's result.
enum Waiter {
    /// A producer blocked in `append`/`append_batch` (it may also lead the next commit).
    Sync(Arc<Slot>),
    /// An [`AppendTicket`]; the stream's committer thread leads commits for it.
    Async(Arc<AsyncSlot>),
}

struct Ticket {
    waiter: Waiter,
    frames: Framed,
}

/// A ticket's records, framed by the producer on its own thread into one buffer (one
/// allocation per ticket, however many records); the committer only stamps them with
/// offsets, time and CRC ([`frame::place`]). At 550k records/s on two vCPUs, a `Vec` per
/// record allocated by 64 producers and freed by the committer cost more CPU than the
/// CRCs (issue 6, `perf record` of the open loop: malloc and free ~13 % of all samples).
struct Framed {
    bytes: Vec<u8>,
    records: usize,
}

impl Framed {
    fn of<P: AsRef<[u8]>>(payloads: &[P]) -> Framed {
        let len: u64 = payloads
            .iter()
            .map(|p| frame::frame_len(p.as_ref().len()))
            .sum();
        let mut bytes = Vec::with_capacity(len as usize);
        for p in payloads {
            frame::encode_unplaced_into(&mut bytes, p.as_ref());
        }
        Framed {
            bytes,
            records: payloads.len(),
        }
    }
}

/// A pipelined append in flight ([`Stream::append_async`]): the record is acknowledged —
/// [`AppendTicket::wait`] returns its offset — only once it is durable. Tickets of one
/// producer complete in the order they were taken. Dropping a ticket does not cancel the
/// append; it is still written while the stream is open.
#[must_use = "an append is acknowledged only through its ticket"]
pub struct AppendTicket {
    /// Keeps the stream (and its committer) alive until the result is in.
    _stream: Stream,
    slot: Arc<AsyncSlot>,
}

impl AppendTicket {
    /// The result if the commit carrying this record has finished (durable `Ok(offset)`, or
    /// the error that stopped acknowledgements); `None` while it is still in flight.
    pub fn poll(&self) -> Option<Result<Offset>> {
        lock(&self.slot.state).result.clone()
    }

    /// When the record was acknowledged (its commit finished), for latency accounting that
    /// does not depend on when the producer looked; `None` while in flight.
    pub fn completed_at(&self) -> Option<Instant> {
        lock(&self.slot.state).done_at
    }

    /// Blocks until the record is durable (its offset) or its commit failed.
    pub fn wait(self) -> Result<Offset> {
        loop {
            {
                let mut st = lock(&self.slot.state);
                if let Some(r) = st.result.take() {
                    return r;
                }
                st.waiter = Some(std::thread::current());
            }
            std::thread::park();
        }
    }
}

impl std::fmt::Debug for AppendTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendTicket")
            .field("done", &self.poll().is_some())
            .finish()
    }
}

/// Longest a committer waits for more producers before its write + fdatasync; also capped
/// by the previous fdatasync's duration (see [`Stream::gather`]).
const MAX_GATHER: Duration = Duration::from_micros(500);

#[derive(Default)]
struct AppendState {
    pending: Vec<Ticket>,
    /// Records in `pending` (a bulk ticket counts all its records).
    pending_records: usize,
    committing: bool,
    /// Set while the committer waits for `gather_target` pending records.
    gatherer: Option<std::thread::Thread>,
    gather_target: usize,
    /// Records and duration of the previous commit: the adaptive gather's inputs.
    last_records: usize,
    last_sync: Duration,
    /// Records in the commit being written (the gauge `committing_records`).
    in_commit: usize,
    max_records: usize,
    poisoned: Option<LogError>,
}

struct Inner {
    dir: PathBuf,
    segment_size: u64,
    policy: DiskPolicy,
    _lock: File,
    append: Mutex<AppendState>,
    writer: Mutex<Writer>,
    meta: RwLock<Meta>,
    subs: Mutex<BTreeMap<String, Sub>>,
    syncs: AtomicU64,
    records: AtomicU64,
    dropped: AtomicU64,
    rolls: AtomicU64,
    io: LogIo,
    /// The thread leading commits for asynchronous appends, started by the first one.
    committer: OnceLock<std::thread::Thread>,
    /// Which segments are written with zeros before use (`Never` on tmpfs, where that
    /// buys nothing).
    zero_fill: ZeroFill,
    spare: Mutex<SpareState>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The committer holds only a weak reference: woken, it finds the stream gone and ends.
        if let Some(t) = self.committer.get() {
            t.unpark();
        }
        // Still under the directory lock (`_lock` is dropped after this body). A spare
        // being prepared is abandoned at its next chunk (its thread sees no strong
        // reference) and removed by that thread; wait for it, unless this is that thread.
        let (ready, thread) = {
            let mut sp = lock(&self.spare);
            (sp.ready.take(), sp.thread.take())
        };
        if let Some(t) = thread
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
        if let Some((_, p)) = ready {
            let _ = fs::remove_file(p);
        }
    }
}

/// A handle on an open stream; cheap to clone, `Send + Sync`. The directory is locked
/// (flock) for the lifetime of the last handle: one owning process at a time.
#[derive(Clone)]
pub struct Stream {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// Subscriber names become file names (hex): keep them short and NUL-free.
pub fn valid_subscriber_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 || name.contains('\0') {
        return Err(LogError::InvalidSubscriberName { name: name.into() });
    }
    Ok(())
}

/// A segment file as found in the directory.
pub(crate) struct FoundSegment {
    pub first: Offset,
    pub index: u32,
    pub path: PathBuf,
}

/// Segments of `dir` in offset order, headers checked; removes leftover temporary files.
pub(crate) fn list_segments(dir: &Path, clean_tmp: bool) -> Result<Vec<FoundSegment>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| LogError::io(dir, "read directory", e))?;
    for ent in rd {
        let ent = ent.map_err(|e| LogError::io(dir, "read directory", e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if clean_tmp && name.starts_with('.') && name.ends_with(".tmp") {
            let _ = fs::remove_file(ent.path());
            continue;
        }
        let Some(first) = files::parse_segment_name(&name) else {
            continue;
        };
        let path = ent.path();
        let f = File::open(&path).map_err(|e| LogError::io(&path, "open", e))?;
        let h = files::read_segment_header(&path, &f)?;
        if h.first_offset.get() != first {
            return Err(LogError::BadFile {
                path,
                what: "segment header",
                reason: format!(
                    "first offset {} does not match the name",
                    h.first_offset.get()
                ),
            });
        }
        out.push(FoundSegment {
            first,
            index: h.index.get(),
            path,
        });
    }
    out.sort_by_key(|s| s.first);
    Ok(out)
}

pub(crate) fn read_data(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = fs::read(path).map_err(|e| LogError::io(path, "read", e))?;
    bytes.drain(..(SEGMENT_HEADER_LEN as usize).min(bytes.len()));
    Ok(bytes)
}

/// Cuts a segment's data at `valid_len`: everything after becomes zero fill again.
pub(crate) fn cut_segment(path: &Path, valid_len: u64, prealloc: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| LogError::io(path, "open", e))?;
    f.set_len(SEGMENT_HEADER_LEN + valid_len)
        .map_err(|e| LogError::io(path, "truncate", e))?;
    files::preallocate(&f, prealloc.max(SEGMENT_HEADER_LEN + valid_len))
        .map_err(|e| LogError::io(path, "fallocate", e))?;
    f.sync_all().map_err(|e| LogError::io(path, "fsync", e))
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(files::LOCK_FILE);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| LogError::io(&path, "open", e))?;
    // SAFETY: flock on an owned descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(LogError::Locked { path: dir.into() });
        }
        return Err(LogError::io(&path, "flock", e));
    }
    Ok(f)
}

/// Opens `dir` locked for maintenance (repair), requiring it to be a stream.
pub(crate) fn lock_existing(dir: &Path) -> Result<(File, u64)> {
    if !dir.join(files::METADATA_FILE).exists() {
        return Err(LogError::NotAStream { path: dir.into() });
    }
    let l = lock_dir(dir)?;
    let m = files::read_metadata(dir)?;
    Ok((l, m.segment_size.get()))
}

impl Stream {
    /// Opens (or creates) the stream in `dir` and recovers it: sealed segments trusted,
    /// the active one scanned, a torn tail cut, mid-log corruption refused.
    pub fn open(dir: impl AsRef<Path>, opts: &StreamOptions) -> Result<Stream> {
        let dir = dir.as_ref().to_path_buf();
        for s in &opts.subscribers {
            valid_subscriber_name(s)?;
        }
        if let Some(sz) = opts.segment_size
            && !(4096..=u32::MAX as u64).contains(&sz)
        {
            return Err(LogError::InvalidOption {
                what: "segment_size",
                reason: format!("{sz} is not within 4096..=4294967295"),
            });
        }
        let choice =
            uring::parse_choice(std::env::var(LOG_IO_ENV).ok().as_deref()).map_err(|value| {
                LogError::BadIoChoice {
                    env: LOG_IO_ENV,
                    value,
                }
            })?;
        let io = Io::new(choice).map_err(|reason| LogError::IoUringUnavailable {
            path: dir.clone(),
            env: LOG_IO_ENV,
            reason,
        })?;
        let io_kind = io.kind();
        let mut held = None;
        if !dir.join(files::METADATA_FILE).exists() {
            if !opts.create {
                return Err(LogError::NotAStream { path: dir });
            }
            fs::create_dir_all(&dir).map_err(|e| LogError::io(&dir, "create directory", e))?;
            if let Some(parent) = dir.parent() {
                let _ = files::fsync_dir(parent);
            }
            held = Some(lock_dir(&dir)?);
            files::write_metadata(&dir, opts.segment_size.unwrap_or(DEFAULT_SEGMENT_SIZE))?;
        }
        // Keep the creator's lock rather than unlocking and locking again: a child forked
        // meanwhile by another thread holds a copy of the descriptor (and so the flock)
        // until it execs, which made the second lock fail with `Locked` (seen in tests).
        let lock_file = match held {
            Some(l) => l,
            None => lock_dir(&dir)?,
        };
        let mut segment_size = files::read_metadata(&dir)?.segment_size.get();
        if let Some(sz) = opts.segment_size
            && sz != segment_size
        {
            files::write_metadata(&dir, sz)?;
            segment_size = sz;
        }

        let zero_fill = if files::zero_fill_helps(&dir) {
            zero_fill_of(opts.zero_filled_segments)
        } else {
            ZeroFill::Never
        };
        let mut found = list_segments(&dir, true)?;
        let mut fresh = false;
        if found.is_empty() {
            // A new stream's first segment is written with zeros at once (see `SpareState`);
            // if that fails, a plain preallocated one reports the real problem or works.
            let spare = if zero_fill == ZeroFill::Always {
                files::prepare_spare(&dir, segment_size, Duration::ZERO, || true)
                    .ok()
                    .flatten()
            } else {
                None
            };
            let made = match spare {
                Some(sp) => {
                    fresh = true;
                    files::install_spare(&dir, sp, 0, 0)
                }
                None => files::create_segment(&dir, 0, 0, segment_size),
            };
            let (_f, path) = made.map_err(|(p, e)| LogError::io(p, "create segment", e))?;
            found.push(FoundSegment {
                first: 0,
                index: 0,
                path,
            });
        }
        if opts.verify_sealed {
            for w in found.windows(2) {
                check_sealed(&w[0], w[1].first)?;
            }
        }
        let active = found
            .last()
            .ok_or_else(|| LogError::NotAStream { path: dir.clone() })?;
        let data = read_data(&active.path)?;
        let scan = frame::scan(&data, active.first);
        match scan.end {
            ScanEnd::Clean => {}
            ScanEnd::Torn { pos, reason } => {
                tracing::warn!(
                    path = %active.path.display(),
                    offset = active.first + pos as u64,
                    reason,
                    "log stream: cutting torn tail (never acknowledged)"
                );
                cut_segment(&active.path, pos as u64, segment_size)?;
            }
            ScanEnd::Damaged { pos, reason, .. } => {
                return Err(LogError::DamagedLastFrame {
                    path: active.path.clone(),
                    offset: active.first + pos as u64,
                    file_pos: SEGMENT_HEADER_LEN + pos as u64,
                    reason,
                });
            }
            ScanEnd::Corrupt {
                pos,
                next_valid,
                reason,
            } => {
                return Err(LogError::MidLogCorruption {
                    path: active.path.clone(),
                    offset: active.first + pos as u64,
                    file_pos: SEGMENT_HEADER_LEN + pos as u64,
                    next_valid: active.first + next_valid as u64,
                    reason,
                });
            }
        }
        let end = active.first + scan.valid_len as u64;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&active.path)
            .map_err(|e| LogError::io(&active.path, "open", e))?;
        let writer = Writer {
            file,
            path: active.path.clone(),
            index: active.index,
            pos: SEGMENT_HEADER_LEN + scan.valid_len as u64,
            end,
            buffered_records: 0,
            buf: Vec::new(),
            zeroed: if fresh {
                segment_size
            } else {
                SEGMENT_HEADER_LEN + scan.valid_len as u64
            },
            io,
            since: (Instant::now(), SEGMENT_HEADER_LEN + scan.valid_len as u64),
            commits: 0,
        };
        let segments: BTreeMap<Offset, Seg> = found
            .into_iter()
            .map(|s| {
                (
                    s.first,
                    Seg {
                        index: s.index,
                        path: s.path,
                    },
                )
            })
            .collect();
        let meta = Meta {
            segments,
            end,
            disk_full: false,
        };
        let start = meta.start();

        let mut subs = BTreeMap::new();
        let rd = fs::read_dir(&dir).map_err(|e| LogError::io(&dir, "read directory", e))?;
        for ent in rd {
            let ent = ent.map_err(|e| LogError::io(&dir, "read directory", e))?;
            let fname = ent.file_name().to_string_lossy().into_owned();
            let Some(name) = files::parse_checkpoint_name(&fname) else {
                continue;
            };
            let path = ent.path();
            let slot = files::read_checkpoint(&path)?;
            let next = slot.next.get();
            if next > end {
                return Err(LogError::BadFile {
                    path,
                    what: "checkpoint",
                    reason: format!("position {next} is beyond the end of the log ({end})"),
                });
            }
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| LogError::io(&path, "open", e))?;
            subs.insert(
                name,
                Sub {
                    file,
                    path,
                    next,
                    seq: slot.seq.get(),
                },
            );
        }
        let inner = Arc::new(Inner {
            dir,
            segment_size,
            policy: opts.disk_policy,
            _lock: lock_file,
            append: Mutex::new(AppendState::default()),
            writer: Mutex::new(writer),
            meta: RwLock::new(meta),
            subs: Mutex::new(subs),
            syncs: AtomicU64::new(0),
            records: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            rolls: AtomicU64::new(0),
            io: io_kind,
            committer: OnceLock::new(),
            zero_fill,
            spare: Mutex::new(SpareState::default()),
        });
        let stream = Stream { inner };
        for s in &opts.subscribers {
            if !lock(&stream.inner.subs).contains_key(s) {
                stream.add_subscriber_at(s, start)?;
            }
        }
        stream.collect()?;
        Ok(stream)
    }

    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    pub fn segment_size(&self) -> u64 {
        self.inner.segment_size
    }

    /// Appends one record; returns its offset once it is on disk (fdatasync).
    pub fn append(&self, payload: &[u8]) -> Result<Offset> {
        self.check_sizes(&[payload])?;
        self.append_framed(Framed::of(&[payload]))
    }

    /// Appends one record without waiting: the returned ticket yields its offset once it is
    /// durable. A producer may keep many tickets in flight (pipelining); they share commits
    /// with every other producer and complete in the order taken. Commits for them are led
    /// by the stream's committer thread, started by the first call.
    pub fn append_async(&self, payload: &[u8]) -> Result<AppendTicket> {
        self.check_sizes(&[payload])?;
        self.enqueue_async(Framed::of(&[payload]))
    }

    /// [`Stream::append_async`] for several records at once: one ticket, which yields the
    /// offset of the first once all are durable (the others follow it, contiguous and in
    /// order: a ticket never spans segments). For a producer with several records ready,
    /// one ticket, one slot and one completion instead of one per record — at 550k
    /// records/s on two vCPUs the per-record costs were most of the CPU time.
    /// `InvalidOption` for an empty batch (it would have no offset to give).
    pub fn append_batch_async<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<AppendTicket> {
        self.check_sizes(payloads)?;
        if payloads.is_empty() {
            return Err(LogError::InvalidOption {
                what: "append_batch_async",
                reason: "no records to append".into(),
            });
        }
        self.enqueue_async(Framed::of(payloads))
    }

    /// Queues one asynchronous ticket and wakes the committer if idle.
    fn enqueue_async(&self, frames: Framed) -> Result<AppendTicket> {
        let inner = &*self.inner;
        let committer = self.committer()?;
        let slot = Arc::new(AsyncSlot::default());
        let mut st = lock(&inner.append);
        if let Some(p) = &st.poisoned {
            return Err(p.clone());
        }
        st.pending_records += frames.records;
        st.pending.push(Ticket {
            waiter: Waiter::Async(slot.clone()),
            frames,
        });
        let gatherer = if st.pending_records >= st.gather_target {
            st.gatherer.take()
        } else {
            None
        };
        let idle = !st.committing;
        drop(st);
        if let Some(g) = gatherer {
            g.unpark();
        }
        if idle {
            committer.unpark();
        }
        Ok(AppendTicket {
            _stream: self.clone(),
            slot,
        })
    }

    /// The committer thread for asynchronous appends (started on first use). It holds only
    /// a weak reference, so dropping the last handle still closes the stream.
    fn committer(&self) -> Result<&std::thread::Thread> {
        let inner = &*self.inner;
        if let Some(t) = inner.committer.get() {
            return Ok(t);
        }
        let weak = Arc::downgrade(&self.inner);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::Builder::new()
            .name("dp-log-commit".into())
            .spawn(move || {
                // Wait until the handle is published so the first wake-up is not lost.
                if rx.recv().is_ok() {
                    committer_loop(weak)
                }
            })
            .map_err(|e| LogError::io(&inner.dir, "spawn the log committer thread", e))?;
        let t = h.thread().clone();
        if inner.committer.set(t).is_err() {
            // Another producer won the race: ours ends as soon as it starts.
            drop(tx);
        } else {
            let _ = tx.send(());
        }
        inner.committer.get().ok_or_else(|| {
            LogError::io(
                &inner.dir,
                "start the log committer thread",
                std::io::Error::other("no committer"),
            )
        })
    }

    fn check_sizes<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<()> {
        let max = MAX_PAYLOAD
            .min((self.inner.segment_size - SEGMENT_HEADER_LEN) as usize - FRAME_HEADER_LEN);
        for p in payloads {
            if p.as_ref().len() > max {
                return Err(LogError::RecordTooLarge {
                    path: self.inner.dir.clone(),
                    len: p.as_ref().len(),
                    max,
                });
            }
        }
        Ok(())
    }

    /// Appends records in order, all in one segment and one commit; returns their offsets
    /// once durable. Concurrent callers share write + fdatasync calls (group commit).
    pub fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Vec<Offset>> {
        self.check_sizes(payloads)?;
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        let first = self.append_framed(Framed::of(payloads))?;
        // The records follow the first contiguously (one ticket, one segment).
        Ok(payloads
            .iter()
            .scan(first, |off, p| {
                let at = *off;
                *off += frame::frame_len(p.as_ref().len());
                Some(at)
            })
            .collect())
    }

    /// Queues one blocking ticket, leads commits while it is pending and nobody else does,
    /// and returns the offset of its first record once durable.
    fn append_framed(&self, frames: Framed) -> Result<Offset> {
        let inner = &*self.inner;
        let slot = Slot::new();
        let mut st = lock(&inner.append);
        if let Some(p) = &st.poisoned {
            return Err(p.clone());
        }
        st.pending_records += frames.records;
        st.pending.push(Ticket {
            waiter: Waiter::Sync(slot.clone()),
            frames,
        });
        if st.pending_records >= st.gather_target
            && let Some(g) = st.gatherer.take()
        {
            g.unpark();
        }
        loop {
            if !st.committing && !st.pending.is_empty() {
                self.lead(st, true);
            } else {
                drop(st);
                std::thread::park();
            }
            if let Some(r) = slot.take() {
                return r;
            }
            st = lock(&inner.append);
        }
    }

    /// Runs one group commit as the committer (`st.committing` is false, `pending` is not
    /// empty), delivers every result, and hands the committer role to the oldest producer
    /// still pending.
    ///
    /// Correctness: a ticket's `Ok` result is published only after `commit` returned it,
    /// i.e. after the pwrite of its frames completed and a later fdatasync of that file
    /// returned success; only one commit runs at a time, so fdatasync calls never overlap
    /// and each failure is reported to exactly the commit whose data it concerns, which then
    /// poisons the stream before any later ticket can be committed.
    ///
    /// `gather`: wait for blocking producers on their way back first ([`Stream::gather`]).
    /// The committer thread leading `append_async` tickets does not: pipelined producers
    /// are not waiting on this commit to send more, and the wait only delays the records
    /// already pending (issue 6, open loop at 550k/s on a calm disk: ack p99 1.25–1.31 ms
    /// without it, 1.61–1.99 ms with it).
    fn lead<'a>(&'a self, mut st: MutexGuard<'a, AppendState>, gather: bool) {
        let inner = &*self.inner;
        st.committing = true;
        if gather {
            st = self.gather(st);
        }
        let batch = std::mem::take(&mut st.pending);
        st.in_commit = std::mem::take(&mut st.pending_records);
        drop(st);
        let t0 = Instant::now();
        let (results, records) = self.commit(batch);
        let took = t0.elapsed();
        let mut st = lock(&inner.append);
        st.committing = false;
        st.last_records = records;
        st.last_sync = took;
        st.max_records = st.max_records.max(st.last_records);
        for (_, r) in &results {
            if let Err(e @ LogError::Poisoned { .. }) = r {
                st.poisoned.get_or_insert_with(|| e.clone());
            }
        }
        let mut failed = Vec::new();
        if let Some(p) = st.poisoned.clone() {
            st.pending_records = 0;
            failed = std::mem::take(&mut st.pending)
                .into_iter()
                .map(|t| (t.waiter, Err(p.clone())))
                .collect();
        }
        let next = st.pending.first().and_then(|t| match &t.waiter {
            Waiter::Sync(s) => Some(s.thread.clone()),
            Waiter::Async(_) => inner.committer.get().cloned(),
        });
        st.in_commit = 0;
        drop(st);
        if let Some(t) = next {
            t.unpark();
        }
        let mut sync = Vec::new();
        let done_at = Instant::now();
        for (w, r) in results.into_iter().chain(failed) {
            match w {
                Waiter::Sync(s) => sync.push((s, r)),
                Waiter::Async(a) => a.complete(r, done_at),
            }
        }
        if !sync.is_empty() {
            Slot::complete_all(sync);
        }
    }

    /// Adaptive gathering: when the previous commit acknowledged more records than are
    /// pending now, its producers are probably on their way back (on few cores, woken
    /// threads need a moment); wait for them, at most `MAX_GATHER` and at most the previous
    /// commit's own duration, so one commit carries them all. A lone producer (previous
    /// commit: one record, now one pending) never waits.
    fn gather<'a>(&'a self, mut st: MutexGuard<'a, AppendState>) -> MutexGuard<'a, AppendState> {
        let target = st.last_records;
        if st.pending_records >= target {
            return st;
        }
        let deadline = Instant::now() + st.last_sync.min(MAX_GATHER);
        st.gather_target = target;
        while st.pending_records < target {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st.gatherer = Some(std::thread::current());
            drop(st);
            std::thread::park_timeout(deadline - now);
            st = lock(&self.inner.append);
        }
        st.gatherer = None;
        st.gather_target = 0;
        st
    }

    /// Writes a batch of tickets: one write + one fdatasync per segment touched. Returns each
    /// ticket's result (the offset of its first record) and how many records were made
    /// durable.
    fn commit(&self, batch: Vec<Ticket>) -> (Vec<(Waiter, Result<Offset>)>, usize) {
        let inner = &*self.inner;
        let mut w = lock(&inner.writer);
        let mut out: Vec<(Waiter, Result<Offset>)> = Vec::with_capacity(batch.len());
        let mut buf = std::mem::take(&mut w.buf);
        buf.clear();
        let bytes: usize = batch.iter().map(|t| t.frames.bytes.len()).sum();
        buf.reserve(bytes.min(inner.segment_size as usize));
        // Tickets in `out` whose frames are in `buf`, and their records.
        let (mut unflushed, mut unflushed_records) = (0usize, 0usize);
        let mut records = 0usize;
        let ts = files::now_ns();
        let mut failed: Option<LogError> = None;
        for t in batch {
            if let Some(e) = &failed {
                out.push((t.waiter, Err(e.clone())));
                continue;
            }
            let total = t.frames.bytes.len() as u64;
            let buffered = buf.len() as u64;
            if w.pos + buffered + total > inner.segment_size
                && w.pos + buffered > SEGMENT_HEADER_LEN
            {
                if let Err(e) = self.flush(&mut w, &mut buf) {
                    fail_last(&mut out, unflushed, &e);
                    records -= unflushed_records;
                    failed = Some(e.clone());
                    out.push((t.waiter, Err(e)));
                    continue;
                }
                (unflushed, unflushed_records) = (0, 0);
                if let Err(e) = self.roll(&mut w) {
                    failed = Some(e.clone());
                    out.push((t.waiter, Err(e)));
                    continue;
                }
            }
            let at = buf.len();
            let first = w.end + at as u64;
            buf.extend_from_slice(&t.frames.bytes);
            frame::place(&mut buf[at..], first, ts);
            w.buffered_records += t.frames.records as u64;
            records += t.frames.records;
            out.push((t.waiter, Ok(first)));
            unflushed += 1;
            unflushed_records += t.frames.records;
        }
        if let Err(e) = self.flush(&mut w, &mut buf) {
            fail_last(&mut out, unflushed, &e);
            records -= unflushed_records;
        }
        if buf.capacity() <= KEEP_BUF {
            buf.clear();
            w.buf = buf;
        }
        (out, records)
    }

    /// Writes `buf` at the write position and fdatasyncs; a failure poisons the stream.
    fn flush(&self, w: &mut Writer, buf: &mut Vec<u8>) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let inner = &*self.inner;
        let data_end = w.pos + buf.len() as u64;
        // Only for small commits: a bulk write converts its extents at once anyway.
        if buf.len() <= ZERO_AHEAD / 8 && data_end > w.zeroed && data_end < inner.segment_size {
            let n = (inner.segment_size - data_end).min(ZERO_AHEAD as u64) as usize;
            // Best effort: a failure here changes nothing on disk but zeros; real write
            // and writeback errors surface in the data write and fdatasync below.
            let _ = w.file.write_all_at(&ZEROS[..n], data_end);
            w.zeroed = data_end + n as u64;
        }
        let res = w.io.write_sync(&w.file, buf, w.pos);
        if let Err((op, e)) = res {
            tracing::error!(path = %w.path.display(), op, error = %e, "log stream poisoned");
            return Err(LogError::Poisoned {
                path: w.path.clone(),
                op,
                cause: Arc::new(e),
            });
        }
        let n = buf.len() as u64;
        let records = std::mem::take(&mut w.buffered_records);
        w.pos += n;
        w.end += n;
        buf.clear();
        inner.syncs.fetch_add(1, Ordering::Relaxed);
        inner.records.fetch_add(records, Ordering::Relaxed);
        {
            let mut m = write(&inner.meta);
            m.end = w.end;
            m.disk_full = false;
        }
        w.commits += 1;
        let spares = match inner.zero_fill {
            ZeroFill::Always => true,
            ZeroFill::Never => false,
            ZeroFill::Auto => w.pos.saturating_sub(w.since.1) / w.commits >= BULK_COMMIT,
        };
        if spares && w.pos >= inner.segment_size / 4 {
            self.kick_spare(w.spare_pace(inner.segment_size));
        }
        Ok(())
    }

    /// Starts preparing the next segment's spare in the background, its zeros spread over
    /// `pace`, unless one is ready, being prepared, or the last attempt failed (retried
    /// after the next roll).
    fn kick_spare(&self, pace: Duration) {
        let inner = &*self.inner;
        {
            let mut sp = lock(&inner.spare);
            if sp.preparing || sp.failed || sp.ready.is_some() {
                return;
            }
            sp.preparing = true;
        }
        let weak = Arc::downgrade(&self.inner);
        let (dir, len) = (inner.dir.clone(), inner.segment_size);
        let spawned = std::thread::Builder::new()
            .name("dp-log-spare".into())
            .spawn(move || {
                let r = files::prepare_spare(&dir, len, pace, || weak.strong_count() > 0);
                let Some(inner) = weak.upgrade() else {
                    if let Ok(Some((_, p))) = r {
                        let _ = fs::remove_file(p);
                    }
                    return;
                };
                let mut sp = lock(&inner.spare);
                sp.preparing = false;
                match r {
                    Ok(Some(spare)) => sp.ready = Some(spare),
                    Ok(None) => {}
                    Err(e) => {
                        sp.failed = true;
                        tracing::debug!(path = %dir.display(), error = %e,
                            "log stream: no zero-filled spare segment (the next roll preallocates)");
                    }
                }
            });
        let mut sp = lock(&inner.spare);
        match spawned {
            // The previous thread (if any) has finished: detaching it is fine.
            Ok(t) => sp.thread = Some(t),
            Err(_) => {
                sp.preparing = false;
                sp.failed = true;
            }
        }
    }

    /// Seals the active segment and starts the next at the current end, applying the disk
    /// policy when there is no room for it.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let inner = &*self.inner;
        let index = w.index.wrapping_add(1);
        let spare = {
            let mut sp = lock(&inner.spare);
            sp.failed = false;
            sp.ready.take()
        };
        if let Some(spare) = spare {
            match files::install_spare(&inner.dir, spare, index, w.end) {
                Ok(made) => return self.rolled(w, index, made, true),
                Err((p, e)) => {
                    tracing::debug!(path = %p.display(), error = %e,
                        "log stream: spare segment not installed, preallocating instead");
                }
            }
        }
        loop {
            match files::create_segment(&inner.dir, index, w.end, inner.segment_size) {
                Ok(made) => return self.rolled(w, index, made, false),
                Err((_, e)) if files::is_enospc(&e) => {
                    if inner.policy == DiskPolicy::DropOldest && self.drop_oldest()? {
                        continue;
                    }
                    write(&inner.meta).disk_full = true;
                    tracing::warn!(path = %inner.dir.display(), "log stream: disk full, appends refused");
                    return Err(LogError::DiskFull {
                        path: inner.dir.clone(),
                    });
                }
                Err((p, e)) => return Err(LogError::io(p, "create segment", e)),
            }
        }
    }

    /// Makes the new segment `(file, path)` the active one; `prezeroed`: its whole data
    /// area was written with zeros (no zero-ahead needed).
    fn rolled(
        &self,
        w: &mut Writer,
        index: u32,
        (file, path): (File, PathBuf),
        prezeroed: bool,
    ) -> Result<()> {
        let inner = &*self.inner;
        {
            let mut m = write(&inner.meta);
            m.segments.insert(
                w.end,
                Seg {
                    index,
                    path: path.clone(),
                },
            );
            m.disk_full = false;
        }
        let io = std::mem::replace(&mut w.io, Io::Blocking);
        let buf = std::mem::take(&mut w.buf);
        *w = Writer {
            file,
            path,
            index,
            pos: SEGMENT_HEADER_LEN,
            end: w.end,
            buffered_records: 0,
            buf,
            zeroed: if prezeroed {
                inner.segment_size
            } else {
                SEGMENT_HEADER_LEN
            },
            io,
            since: (Instant::now(), SEGMENT_HEADER_LEN),
            commits: 0,
        };
        inner.rolls.fetch_add(1, Ordering::Relaxed);
        self.collect()
    }

    /// `drop_oldest`: deletes the oldest sealed segment; false when only the active is left.
    fn drop_oldest(&self) -> Result<bool> {
        let inner = &*self.inner;
        let mut m = write(&inner.meta);
        if m.segments.len() < 2 {
            return Ok(false);
        }
        let Some((first, seg)) = m.segments.pop_first() else {
            return Ok(false);
        };
        let to = m.start();
        drop(m);
        fs::remove_file(&seg.path).map_err(|e| LogError::io(&seg.path, "remove", e))?;
        files::fsync_dir(&inner.dir)?;
        inner.dropped.fetch_add(to - first, Ordering::Relaxed);
        tracing::warn!(
            path = %inner.dir.display(), from = first, to,
            "log stream: disk full, dropped the oldest segment (gap for readers behind it)"
        );
        Ok(true)
    }

    /// Deletes sealed segments every subscriber has checkpointed past (all sealed ones when
    /// there is no subscriber, like jlog).
    fn collect(&self) -> Result<()> {
        let inner = &*self.inner;
        let subs = lock(&inner.subs);
        let min_next = subs.values().map(|s| s.next).min();
        let mut removed = Vec::new();
        {
            let mut m = write(&inner.meta);
            loop {
                let mut it = m.segments.keys();
                let (Some(&first), Some(&second)) = (it.next(), it.next()) else {
                    break;
                };
                if min_next.is_some_and(|n| n < second) {
                    break;
                }
                if let Some(seg) = m.segments.remove(&first) {
                    removed.push(seg.path);
                }
            }
        }
        drop(subs);
        for p in &removed {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io(p, "remove", e)),
            }
        }
        if !removed.is_empty() {
            files::fsync_dir(&inner.dir)?;
        }
        Ok(())
    }

    /// Adds a subscriber with a durable checkpoint file.
    pub fn add_subscriber(&self, name: &str, start: StartAt) -> Result<()> {
        let at = {
            let m = read(&self.inner.meta);
            match start {
                StartAt::Oldest => m.start(),
                StartAt::End => m.end,
            }
        };
        self.add_subscriber_at(name, at)
    }

    fn add_subscriber_at(&self, name: &str, next: Offset) -> Result<()> {
        valid_subscriber_name(name)?;
        let inner = &*self.inner;
        let mut subs = lock(&inner.subs);
        if subs.contains_key(name) {
            return Err(LogError::SubscriberExists {
                path: inner.dir.clone(),
                name: name.into(),
            });
        }
        files::create_checkpoint(&inner.dir, name, next)?;
        let path = inner.dir.join(files::checkpoint_name(name));
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, "open", e))?;
        subs.insert(
            name.into(),
            Sub {
                file,
                path,
                next,
                seq: 0,
            },
        );
        Ok(())
    }

    /// Removes a subscriber (its checkpoint file); segments only it held back are freed.
    pub fn remove_subscriber(&self, name: &str) -> Result<()> {
        let inner = &*self.inner;
        let sub = lock(&inner.subs)
            .remove(name)
            .ok_or_else(|| self.no_sub(name))?;
        fs::remove_file(&sub.path).map_err(|e| LogError::io(&sub.path, "remove", e))?;
        files::fsync_dir(&inner.dir)?;
        self.collect()
    }

    pub fn subscribers(&self) -> Vec<String> {
        lock(&self.inner.subs).keys().cloned().collect()
    }

    fn no_sub(&self, name: &str) -> LogError {
        LogError::NoSubscriber {
            path: self.inner.dir.clone(),
            name: name.into(),
        }
    }

    /// First offset `name` has not consumed (its durable checkpoint).
    pub fn position(&self, name: &str) -> Result<Offset> {
        lock(&self.inner.subs)
            .get(name)
            .map(|s| s.next)
            .ok_or_else(|| self.no_sub(name))
    }

    /// jlog-style position of `name`'s checkpoint.
    pub fn jlog_position(&self, name: &str) -> Result<JlogPosition> {
        let next = self.position(name)?;
        Ok(read(&self.inner.meta).position(next))
    }

    /// Records after `name`'s durable checkpoint, up to the durable end (re-checked on
    /// every `next`, so a drained reader yields more once more is appended).
    pub fn read_from(&self, name: &str) -> Result<Reader> {
        let next = self.position(name)?;
        Ok(self.read_at(next))
    }

    /// Reads from a raw offset (a record boundary), without any subscriber.
    pub fn read_at(&self, offset: Offset) -> Reader {
        Reader::new(self.inner.clone(), offset)
    }

    /// Marks everything up to and including the record at `offset` consumed by `name`,
    /// durably (slot write + fdatasync) before returning. Offsets below the checkpoint are
    /// accepted and ignored: a checkpoint never moves back.
    pub fn checkpoint(&self, name: &str, offset: Offset) -> Result<()> {
        let inner = &*self.inner;
        {
            let mut subs = lock(&inner.subs);
            let sub = subs.get_mut(name).ok_or_else(|| self.no_sub(name))?;
            if offset < sub.next {
                return Ok(());
            }
            let bad = |reason: String| LogError::BadCheckpointOffset {
                path: inner.dir.clone(),
                name: name.into(),
                offset,
                reason,
            };
            let header = read_header_at(inner, offset).map_err(|e| bad(e.to_string()))?;
            let next = offset + frame::frame_len(header.len.get() as usize);
            let seq = sub.seq + 1;
            let slot = files::checkpoint_slot(seq, next);
            let at = (seq % 2) * files::CHECKPOINT_SLOT_STRIDE;
            sub.file
                .write_all_at(slot.as_bytes(), at)
                .and_then(|_| sub.file.sync_data())
                .map_err(|e| LogError::io(&sub.path, "write checkpoint", e))?;
            sub.seq = seq;
            sub.next = next;
        }
        self.collect()
    }

    /// Lag of `name` in bytes and age of its oldest unconsumed record.
    pub fn lag(&self, name: &str) -> Result<Lag> {
        let next = self.position(name)?;
        let (start, end) = {
            let m = read(&self.inner.meta);
            (m.start(), m.end)
        };
        let from = next.max(start);
        let oldest = if from < end {
            Some(read_header_at(&self.inner, from)?.timestamp_ns.get())
        } else {
            None
        };
        Ok(Lag {
            next,
            bytes: end - from,
            lost_bytes: start.saturating_sub(next),
            oldest_unconsumed_ns: oldest,
            age: oldest.map(|t| Duration::from_nanos(files::now_ns().saturating_sub(t))),
        })
    }

    pub fn stats(&self) -> AppendStats {
        let (queued, committing, last, max) = {
            let st = lock(&self.inner.append);
            (
                st.pending_records,
                st.in_commit,
                st.last_records,
                st.max_records,
            )
        };
        AppendStats {
            syncs: self.inner.syncs.load(Ordering::Relaxed),
            records: self.inner.records.load(Ordering::Relaxed),
            dropped_bytes: self.inner.dropped.load(Ordering::Relaxed),
            io: self.inner.io,
            queued_records: queued as u64,
            committing_records: committing as u64,
            last_batch_records: last as u64,
            max_batch_records: max as u64,
            segment_rolls: self.inner.rolls.load(Ordering::Relaxed),
            segment_bytes: self.inner.segment_size,
        }
    }

    /// How this stream's commits reach the disk.
    pub fn io_path(&self) -> LogIo {
        self.inner.io
    }

    /// Oldest retained offset and durable end.
    pub fn bounds(&self) -> (Offset, Offset) {
        let m = read(&self.inner.meta);
        (m.start(), m.end)
    }

    /// True while the `stop` policy refuses appends for lack of space.
    pub fn is_disk_full(&self) -> bool {
        read(&self.inner.meta).disk_full
    }

    pub fn poisoned(&self) -> Option<LogError> {
        lock(&self.inner.append).poisoned.clone()
    }

    /// Sizes, segments and subscriber positions.
    pub fn summary(&self) -> Result<StreamSummary> {
        let inner = &*self.inner;
        let subs: Vec<(String, Offset)> = lock(&inner.subs)
            .iter()
            .map(|(n, s)| (n.clone(), s.next))
            .collect();
        let m = read(&inner.meta);
        let (start, end) = (m.start(), m.end);
        let subscribers = subs
            .into_iter()
            .map(|(name, next)| SubscriberInfo {
                position: m.position(next),
                lag_bytes: end - next.max(start),
                name,
                next,
            })
            .collect();
        let segments = m.segments.len();
        drop(m);
        Ok(StreamSummary {
            path: inner.dir.clone(),
            data_bytes: end - start,
            allocated_bytes: allocated_bytes(&inner.dir)?,
            start,
            end,
            segments,
            segment_size: inner.segment_size,
            subscribers,
            disk_full: self.is_disk_full(),
            poisoned: self.poisoned().map(|e| e.to_string()),
        })
    }
}

/// Leads commits while asynchronous tickets are pending and nobody else leads; parks
/// otherwise. Ends once the stream is gone.
fn committer_loop(weak: Weak<Inner>) {
    raise_committer_priority();
    loop {
        {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let stream = Stream { inner };
            let st = lock(&stream.inner.append);
            if !st.committing && !st.pending.is_empty() {
                stream.lead(st, false);
                continue;
            }
        }
        std::thread::park();
    }
}

/// Scheduling weight of the committer thread. Every asynchronous producer's
/// acknowledgement waits for this one thread; at the default weight, on a busy machine it
/// got one share among dozens of runnable threads and the whole pipeline queued behind it
/// (issue 6, 64 producers open loop at 550k/s on 2 shared cores, alternating runs: p99
/// 27–65 ms at −10 against 170–850 ms at 0, the disk probe quiet in both).
const COMMITTER_NICE: libc::c_int = -10;

/// Best effort: raising a thread's priority needs CAP_SYS_NICE (or RLIMIT_NICE); without
/// it the committer keeps the default weight and works as before.
fn raise_committer_priority() {
    // SAFETY: gettid has no preconditions; setpriority on this thread's own id.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, COMMITTER_NICE)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(),
            "log committer: priority not raised (no CAP_SYS_NICE); default weight");
    }
}

fn fail_last(out: &mut [(Waiter, Result<Offset>)], n: usize, e: &LogError) {
    let len = out.len();
    for r in &mut out[len - n.min(len)..] {
        r.1 = Err(e.clone());
    }
}

fn allocated_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let rd = fs::read_dir(dir).map_err(|e| LogError::io(dir, "read directory", e))?;
    for ent in rd.flatten() {
        if let Ok(md) = ent.metadata() {
            total += md.blocks() * 512;
        }
    }
    Ok(total)
}

fn read_header_at(inner: &Inner, offset: Offset) -> Result<FrameHeader> {
    let (first, path, seg_end) = {
        let m = read(&inner.meta);
        if offset >= m.end || offset < m.start() {
            return Err(LogError::BadFrame {
                path: inner.dir.clone(),
                offset,
                reason: "outside the retained, durable range",
            });
        }
        let (first, seg, seg_end) = m.locate(offset).ok_or_else(|| LogError::BadFrame {
            path: inner.dir.clone(),
            offset,
            reason: "no segment",
        })?;
        (first, seg.path.clone(), seg_end)
    };
    let f = File::open(&path).map_err(|e| LogError::io(&path, "open", e))?;
    let mut buf = [0u8; FRAME_HEADER_LEN];
    f.read_exact_at(&mut buf, SEGMENT_HEADER_LEN + offset - first)
        .map_err(|e| LogError::io(&path, "read", e))?;
    let h = FrameHeader::read_from_bytes(&buf[..]).map_err(|_| LogError::BadFrame {
        path: path.clone(),
        offset,
        reason: "short header",
    })?;
    if h.magic.get() != frame::FRAME_MAGIC
        || h.offset.get() != offset
        || offset + frame::frame_len(h.len.get() as usize) > seg_end
    {
        return Err(LogError::BadFrame {
            path,
            offset,
            reason: "not a record boundary",
        });
    }
    Ok(h)
}

fn check_sealed(seg: &FoundSegment, next_first: Offset) -> Result<u64> {
    let data = read_data(&seg.path)?;
    let want = (next_first - seg.first) as usize;
    let Some(area) = data.get(..want) else {
        return Err(LogError::BadFrame {
            path: seg.path.clone(),
            offset: seg.first + data.len() as u64,
            reason: "sealed segment shorter than its successor's first offset",
        });
    };
    let s = frame::scan(area, seg.first);
    match s.end {
        ScanEnd::Clean if s.valid_len == want => Ok(s.frames),
        ScanEnd::Clean => Err(LogError::BadFrame {
            path: seg.path.clone(),
            offset: seg.first + s.valid_len as u64,
            reason: "zeros where sealed data should be",
        }),
        ScanEnd::Torn { pos, reason }
        | ScanEnd::Corrupt { pos, reason, .. }
        | ScanEnd::Damaged { pos, reason, .. } => Err(LogError::BadFrame {
            path: seg.path.clone(),
            offset: seg.first + pos as u64,
            reason,
        }),
    }
}

pub(crate) fn check_sealed_segment(path: &Path, first: Offset, next_first: Offset) -> Result<u64> {
    check_sealed(
        &FoundSegment {
            first,
            index: 0,
            path: path.into(),
        },
        next_first,
    )
}

/// Iterator over a stream's records from a position; see [`Stream::read_from`].
pub struct Reader {
    inner: Arc<Inner>,
    pos: Offset,
    /// The segment being read: its first offset, the open file and its path (for errors).
    file: Option<(Offset, File, PathBuf)>,
    /// Durable bytes of that segment read ahead: `chunk[..chunk_len]` holds offsets
    /// `chunk_at..chunk_at + chunk_len`, never past the durable end as it was when read.
    chunk: Vec<u8>,
    chunk_len: usize,
    chunk_at: Offset,
    /// Frame length of the entry [`peek`](Reader::peek) returned, for
    /// [`consume`](Reader::consume).
    peeked: Option<u64>,
}

/// A reader's next entry, borrowed from its read-ahead: a bulk reader (the log service)
/// encodes the payload where it is, with no allocation or copy per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryRef<'a> {
    Record {
        offset: Offset,
        timestamp_ns: u64,
        payload: &'a [u8],
    },
    Gap {
        from: Offset,
        to: Offset,
    },
}

/// Bytes a reader reads at once. One pread per chunk instead of two per record: per 4 KiB
/// record, the two preads cost more CPU than the copy they make (issue 6, `perf` of the
/// node side of a pull). It pays only with the engine reusing its output buffers: a
/// reader this fast runs ahead of the socket (docs/logs.md). 64 KiB did no better for the
/// manager's pull (A/B in BENCHMARKS.md, 2026-11-26).
const READ_CHUNK: usize = 256 << 10;

impl Reader {
    fn new(inner: Arc<Inner>, pos: Offset) -> Reader {
        Reader {
            inner,
            pos,
            file: None,
            chunk: Vec::new(),
            chunk_len: 0,
            chunk_at: 0,
            peeked: None,
        }
    }

    /// Offset of the next record this reader returns.
    pub fn position(&self) -> Offset {
        self.pos
    }

    /// The next entry, without moving past it (repeated, the same entry): the caller
    /// decides, then [`consume`](Reader::consume)s it. `None` at the durable end.
    pub fn peek(&mut self) -> Result<Option<EntryRef<'_>>> {
        self.peeked = None;
        loop {
            let (first, seg_end) = {
                let m = read(&self.inner.meta);
                let start = m.start();
                if self.pos < start {
                    self.peeked = Some(start - self.pos);
                    return Ok(Some(EntryRef::Gap {
                        from: self.pos,
                        to: start,
                    }));
                }
                if self.pos >= m.end {
                    return Ok(None);
                }
                let Some((first, seg, seg_end)) = m.locate(self.pos) else {
                    return Ok(None);
                };
                if self.file.as_ref().map(|(f, ..)| *f) != Some(first) {
                    self.chunk_len = 0;
                    match File::open(&seg.path) {
                        Ok(f) => self.file = Some((first, f, seg.path.clone())),
                        // Dropped under us by drop_oldest: the next round reports the gap.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            self.file = None;
                            continue;
                        }
                        Err(e) => return Err(LogError::io(&seg.path, "open", e)),
                    }
                }
                (first, seg_end)
            };
            let len = self.frame_in_chunk(first, seg_end)?;
            let Some((_, _, path)) = &self.file else {
                continue;
            };
            let at = (self.pos - self.chunk_at) as usize;
            let buf = &self.chunk[at..at + len];
            return match frame::decode(buf, self.pos) {
                Decoded::Frame { header, .. } if header.flags.get() & frame::FLAG_SKIPPED != 0 => {
                    self.peeked = Some(len as u64);
                    Ok(Some(EntryRef::Gap {
                        from: self.pos,
                        to: self.pos + len as u64,
                    }))
                }
                Decoded::Frame { header, payload } => {
                    self.peeked = Some(len as u64);
                    Ok(Some(EntryRef::Record {
                        offset: self.pos,
                        timestamp_ns: header.timestamp_ns.get(),
                        payload,
                    }))
                }
                Decoded::Invalid(reason) => Err(LogError::BadFrame {
                    path: path.clone(),
                    offset: self.pos,
                    reason,
                }),
                Decoded::Zero | Decoded::Incomplete => Err(LogError::BadFrame {
                    path: path.clone(),
                    offset: self.pos,
                    reason: "missing data below the durable end",
                }),
            };
        }
    }

    /// Moves past the entry [`peek`](Reader::peek) returned last (nothing if none).
    pub fn consume(&mut self) {
        if let Some(n) = self.peeked.take() {
            self.pos += n;
        }
    }

    /// Makes the chunk hold the frame at `pos` of segment `first` (durable up to
    /// `seg_end`), reading ahead when it does not; returns how many bytes to decode there:
    /// the whole frame, or what exists of it below `seg_end` (decode then says what is
    /// wrong with it).
    fn frame_in_chunk(&mut self, first: Offset, seg_end: Offset) -> Result<usize> {
        let avail = (seg_end - self.pos) as usize;
        // Bytes held from `pos`, and how many of them the frame there needs.
        let look = |r: &Reader| -> (usize, usize) {
            let end = r.chunk_at + r.chunk_len as u64;
            if r.pos < r.chunk_at || r.pos >= end {
                return (0, FRAME_HEADER_LEN.min(avail));
            }
            let at = (r.pos - r.chunk_at) as usize;
            let flen = match r.chunk[..r.chunk_len].get(at + 4..at + 8) {
                Some(&[a, b, c, d]) => match u32::from_le_bytes([a, b, c, d]) as usize {
                    len if len <= frame::MAX_PAYLOAD => FRAME_HEADER_LEN + len,
                    // Decode refuses it from the header alone.
                    _ => FRAME_HEADER_LEN,
                },
                _ => FRAME_HEADER_LEN,
            };
            ((end - r.pos) as usize, flen.min(avail))
        };
        let (held, need) = look(self);
        if held >= need {
            return Ok(need);
        }
        self.read_chunk(first, avail.min(READ_CHUNK.max(need)))?;
        let (held, need) = look(self);
        if held < need {
            // A frame larger than a chunk: read it whole.
            self.read_chunk(first, need)?;
        }
        Ok(look(self).1)
    }

    fn read_chunk(&mut self, first: Offset, n: usize) -> Result<()> {
        let Some((_, f, path)) = &self.file else {
            return Ok(());
        };
        if self.chunk.len() < n {
            self.chunk.resize(n, 0);
        } else if n <= READ_CHUNK && self.chunk.len() > READ_CHUNK {
            // Back to chunks after a record larger than one: let its buffer go.
            self.chunk.truncate(READ_CHUNK);
            self.chunk.shrink_to_fit();
        }
        self.chunk_len = 0;
        let at = SEGMENT_HEADER_LEN + self.pos - first;
        f.read_exact_at(&mut self.chunk[..n], at)
            .map_err(|e| LogError::io(path, "read", e))?;
        self.chunk_at = self.pos;
        self.chunk_len = n;
        Ok(())
    }

    fn next_entry(&mut self) -> Result<Option<Entry>> {
        let e = match self.peek()? {
            None => return Ok(None),
            Some(EntryRef::Gap { from, to }) => Entry::Gap { from, to },
            Some(EntryRef::Record {
                offset,
                timestamp_ns,
                payload,
            }) => Entry::Record(Record {
                offset,
                timestamp_ns,
                payload: payload.to_vec(),
            }),
        };
        self.consume();
        Ok(Some(e))
    }
}

impl Iterator for Reader {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("path", &self.inner.dir)
            .finish()
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.inner.dir)
            .field("pos", &self.pos)
            .finish()
    }
}

/// Not a test: `cargo test -p duraplane --release --lib log::stream::compare_prezero --
/// --ignored --nocapture` prints the cost of group commits of ~180 KB (640 × 256 B, as in
/// the 64-producer bench) into zero-filled segments (with the spare written in the
/// background) and into preallocated ones, interleaved in blocks so both see the same disk
/// load (`DURAPLANE_BENCH_DIR`, default /var/tmp).
#[cfg(test)]
#[test]
#[ignore = "measurement, prints timings"]
fn compare_prezero() {
    let base = std::env::var_os("DURAPLANE_BENCH_DIR").unwrap_or_else(|| "/var/tmp".into());
    let dir = tempfile::tempdir_in(base).unwrap();
    let open = |name: &str, zero_fill: bool| {
        Stream::open(
            dir.path().join(name),
            &StreamOptions {
                segment_size: Some(16 << 20),
                subscribers: vec!["keep".into()],
                zero_filled_segments: Some(zero_fill),
                ..StreamOptions::default()
            },
        )
        .unwrap()
    };
    let mut paths = [
        ("zero-filled", open("on", true), Vec::new()),
        ("preallocated", open("off", false), Vec::new()),
    ];
    let batch: Vec<[u8; 256]> = vec![[0x42; 256]; 640];
    for _round in 0..20 {
        for (_, s, lat) in paths.iter_mut() {
            for _ in 0..50 {
                let t = Instant::now();
                s.append_batch(&batch).unwrap();
                lat.push(t.elapsed());
            }
        }
    }
    for (name, s, lat) in paths.iter_mut() {
        lat.sort();
        let n = lat.len();
        let mean = lat.iter().sum::<Duration>() / n as u32;
        eprintln!(
            "{name}: {n} commits of 180 KB, mean {} µs, p50 {} µs, p90 {} µs, p99 {} µs ({} segments)",
            mean.as_micros(),
            lat[n / 2].as_micros(),
            lat[n * 9 / 10].as_micros(),
            lat[n * 99 / 100].as_micros(),
            s.summary().unwrap().segments
        );
    }
}

#[cfg(test)]
mod pace_tests {
    use super::*;

    #[test]
    fn a_spare_is_zeroed_over_half_the_time_left_to_the_roll() {
        // 16 MiB written in 100 ms, 48 MiB to go: the roll comes in 300 ms.
        let p = spare_pace(16 << 20, Duration::from_millis(100), 48 << 20);
        assert!(
            p > Duration::from_millis(149) && p < Duration::from_millis(151),
            "{p:?}"
        );
        // A trickle stream: capped, so the spare still comes in seconds.
        assert_eq!(
            spare_pace(1 << 10, Duration::from_secs(60), 64 << 20),
            MAX_SPARE_PACE
        );
        // Nothing written yet (or no time passed): no rate to go by, full speed.
        assert_eq!(
            spare_pace(0, Duration::from_secs(1), 1 << 20),
            Duration::ZERO
        );
        assert_eq!(spare_pace(1 << 20, Duration::ZERO, 1 << 20), Duration::ZERO);
    }
}
