//! `duraplane manager`: Momentum's log aggregator (eccmgr's logmove). Pulls every log each
//! node publishes over the port-4802 log service and appends it to consolidated files
//! named by the `Logs { logfile }` template of an eccluster.conf-style file.
//!
//! Exactly once in the consolidated file, at-least-once on the wire: per (node, log) a
//! small state file records the last offset written, the file it went to and that
//! file's committed length. Order per batch: append + fsync the data, then write the state
//! durably, then checkpoint on the node. After a crash, bytes beyond the committed length
//! are cut and re-fetched records at or below the last offset are skipped.
//! Configuration and behaviour: `docs/logs.md` ("The manager").

use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, File, OpenOptions},
    io::{self, IoSlice, Write},
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{
    Offset,
    service::{
        BATCH_BYTES, BatchDelivery, LogClient, LogClientError, MAX_WINDOW, RecordsBuf, Subscribed,
        code,
    },
};
use crate::config::parser::{Node, Scope, Tree, Value, ValueKind, parse_file};
use crate::engine::{ClusterKey, KeyError};

/// Errors of the manager.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {errors}")]
    Syntax { path: PathBuf, errors: String },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("cluster key: {0}")]
    Key(#[from] KeyError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ManagerError {
    /// The consolidated files' filesystem is out of space (or the quota is used up).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, ManagerError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
    }
}

fn ioe<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ManagerError + 'a {
    move |source| ManagerError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The `Logs { }` scope of the manager's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsConfig {
    pub logfile: String,
    pub file_mode: u32,
    pub dir_mode: u32,
    pub log_active_interval: Duration,
    pub log_idle_interval: Duration,
    /// `Max_Open`: consolidated files held open at once (least recently written closed).
    pub max_open: usize,
    /// `Max_Idle`: how long a consolidated file stays open without a new record.
    pub max_idle: Duration,
    /// `Manager "name" { Node "n" { Subscriber = (…) } }`: per manager, per node.
    pub managers: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// `duraplane { cluster_key_file }` (or `--key`).
    pub cluster_key_file: Option<PathBuf>,
}

impl LogsConfig {
    /// The subscriber names `manager` tries on `node`, in order: a `Node` rule, else
    /// (its own name, `master`), as Momentum does.
    pub fn subscribers(&self, manager: &str, node: &str) -> Vec<String> {
        match self.managers.get(manager).and_then(|m| m.get(node)) {
            Some(l) => l.clone(),
            None => vec![manager.to_owned(), "master".to_owned()],
        }
    }
}

fn scalar(v: &Value) -> Option<&str> {
    match &v.kind {
        ValueKind::Scalar { text, .. } => Some(text),
        _ => None,
    }
}

/// A duration option: seconds (`"1"`, `"0.25"`) or with a unit (`"250ms"`, `"2s"`).
fn duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v * mul))
}

fn scopes<'a>(nodes: &'a [Node], kw: &'a str) -> impl Iterator<Item = &'a Scope> + 'a {
    nodes.iter().filter_map(move |n| match n {
        Node::Scope(s) if s.keyword.is(kw) => Some(s),
        _ => None,
    })
}

fn assigns(nodes: &[Node]) -> impl Iterator<Item = (String, &Value)> {
    nodes.iter().filter_map(|n| match n {
        Node::Assign { key, value } => Some((key.lower(), value)),
        _ => None,
    })
}

/// Reads the manager's configuration from the parsed tree (the typed model is the node's).
pub fn logs_config(tree: &Tree, path: &Path) -> Result<LogsConfig, ManagerError> {
    let bad = |what: String| ManagerError::Invalid {
        path: path.to_owned(),
        what,
    };
    let mut c = LogsConfig {
        logfile: "/var/log/eccluster/%Y/%m/%d/%{l}/%{s}/%{n}".into(),
        file_mode: 0o640,
        dir_mode: 0o755,
        log_active_interval: Duration::from_secs(1),
        log_idle_interval: Duration::from_secs(10),
        max_open: 128,
        max_idle: Duration::from_secs(10),
        managers: BTreeMap::new(),
        cluster_key_file: None,
    };
    for d in scopes(&tree.nodes, "duraplane") {
        for (k, v) in assigns(&d.body) {
            if k == "cluster_key_file" {
                c.cluster_key_file = scalar(v).map(PathBuf::from);
            }
        }
    }
    let Some(logs) = scopes(&tree.nodes, "logs").next() else {
        return Err(bad("no Logs { } scope".into()));
    };
    for (k, v) in assigns(&logs.body) {
        let s = scalar(v).ok_or_else(|| bad(format!("Logs {k}: expected a single value")))?;
        let mode = |s: &str| {
            u32::from_str_radix(s, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| bad(format!("Logs {k} = {s:?}: not an octal mode")))
        };
        let dur =
            |s: &str| duration(s).ok_or_else(|| bad(format!("Logs {k} = {s:?}: not a duration")));
        match k.as_str() {
            "logfile" => c.logfile = s.to_owned(),
            "file_mode" => c.file_mode = mode(s)?,
            "dir_mode" => c.dir_mode = mode(s)?,
            "log_active_interval" => c.log_active_interval = dur(s)?,
            "log_idle_interval" => c.log_idle_interval = dur(s)?,
            "max_open" => {
                c.max_open = s
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad(format!("Logs max_open = {s:?}: not a count ≥ 1")))?
            }
            "max_idle" => c.max_idle = dur(s)?,
            // Momentum's other Logs options do not apply to this manager.
            _ => tracing::warn!(option = k, "Logs option ignored by duraplane manager"),
        }
    }
    for m in scopes(&logs.body, "manager") {
        let name = m
            .name
            .as_ref()
            .ok_or_else(|| bad("Manager without a name".into()))?;
        let rules = c.managers.entry(name.text.clone()).or_default();
        for n in scopes(&m.body, "node") {
            let node = n
                .name
                .as_ref()
                .ok_or_else(|| bad("Node without a name".into()))?;
            for (k, v) in assigns(&n.body) {
                if k != "subscriber" {
                    continue;
                }
                let subs = match &v.kind {
                    ValueKind::List(l) => l.iter().filter_map(scalar).map(str::to_owned).collect(),
                    ValueKind::Scalar { text, .. } => vec![text.clone()],
                    ValueKind::Dict(_) => {
                        return Err(bad(format!(
                            "Node {:?} Subscriber: expected a list",
                            node.text
                        )));
                    }
                };
                rules.insert(node.text.clone(), subs);
            }
        }
    }
    Ok(c)
}

/// Reads and parses the manager's file.
pub fn load(path: &Path) -> Result<LogsConfig, ManagerError> {
    let (tree, diags) = parse_file(path).map_err(|source| ManagerError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !diags.is_empty() {
        return Err(ManagerError::Syntax {
            path: path.to_owned(),
            errors: diags
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    logs_config(&tree, path)
}

/// UTC civil date from days since the epoch (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Expands the logfile template: `%{l}` log, `%{n}` node, `%{s}` subcluster, and the
/// strftime macros `%Y %m %d %H %M %S %y %j %%` for `unix_secs` in UTC.
pub fn expand(template: &str, log: &str, node: &str, sub: &str, unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let (y, mo, d) = civil(days);
    let sod = unix_secs % 86_400;
    let jan1 = {
        // Day of year: days since Jan 1 of the same year.
        let mut lo = days - 366;
        while civil(lo).0 < y {
            lo += 1;
        }
        days - lo + 1
    };
    let mut out = String::with_capacity(template.len() + 32);
    let mut it = template.chars().peekable();
    while let Some(ch) = it.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        match it.next() {
            Some('{') => {
                let name: String = it.by_ref().take_while(|c| *c != '}').collect();
                match name.as_str() {
                    "l" => out.push_str(log),
                    "n" => out.push_str(node),
                    "s" => out.push_str(sub),
                    other => {
                        out.push_str("%{");
                        out.push_str(other);
                        out.push('}');
                    }
                }
            }
            Some('Y') => out.push_str(&format!("{y:04}")),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{mo:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('H') => out.push_str(&format!("{:02}", sod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", sod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", sod % 60)),
            Some('j') => out.push_str(&format!("{jan1:03}")),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Where the per-(node, log) state lives: `.duraplane-manager/` in the template's fixed
/// directory prefix (the part before the first macro).
pub fn state_dir(template: &str) -> PathBuf {
    let fixed = &template[..template.find('%').unwrap_or(template.len())];
    let p = Path::new(fixed);
    let base = if fixed.ends_with('/') {
        p
    } else {
        p.parent().unwrap_or(Path::new("."))
    };
    base.join(".duraplane-manager")
}

/// The durable "last offset written" of one (node, log).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct State {
    /// Records at or below this offset are already in the consolidated file.
    last: Option<Offset>,
    /// The file last written and its length once that write was committed.
    file: Option<PathBuf>,
    len: u64,
}

impl State {
    fn encode(&self) -> String {
        format!(
            "duraplane-manager-state 1\nlast {}\nlen {}\nfile {}\n",
            self.last.map_or("-".to_owned(), |o| o.to_string()),
            self.len,
            self.file
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        )
    }

    fn decode(s: &str) -> Option<State> {
        let mut st = State::default();
        let mut lines = s.lines();
        if lines.next()? != "duraplane-manager-state 1" {
            return None;
        }
        for l in lines {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            match k {
                "last" if v != "-" => st.last = Some(v.parse().ok()?),
                "len" => st.len = v.parse().ok()?,
                "file" if !v.is_empty() => st.file = Some(PathBuf::from(v)),
                _ => {}
            }
        }
        Some(st)
    }
}

fn fsync_dir(dir: &Path) -> Result<(), ManagerError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ioe("fsync directory", dir))
}

/// Bytes per state slot (the encoded state, with its path, must fit).
const STATE_SLOT: u64 = 8192;
const STATE_MAGIC: &[u8; 4] = b"DPMS";
/// Slot header: magic, `u64 seq`, `u32 len`, `u32 crc32c(seq, len, text)`.
const SLOT_HDR: usize = 20;

/// The per-(node, log) state file: two alternating slots, so a save after every batch is
/// one in-place write + fdatasync (no new file, rename and directory fsync each time); a
/// torn write spoils only the slot being written and the other keeps the previous state.
/// The first save (and one after a file in the older single-text format) writes a new
/// file and renames it into place.
#[derive(Debug)]
struct StateFile {
    path: PathBuf,
    file: Option<File>,
    seq: u64,
}

fn state_slot(seq: u64, st: &State) -> Option<Vec<u8>> {
    let text = st.encode();
    if text.len() > STATE_SLOT as usize - SLOT_HDR {
        return None;
    }
    let mut v = Vec::with_capacity(SLOT_HDR + text.len());
    v.extend_from_slice(STATE_MAGIC);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&(text.len() as u32).to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&v[4..16]), text.as_bytes());
    v.extend_from_slice(&crc.to_be_bytes());
    v.extend_from_slice(text.as_bytes());
    Some(v)
}

fn parse_slot(b: &[u8]) -> Option<(u64, State)> {
    if b.len() < SLOT_HDR || &b[..4] != STATE_MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(b[4..12].try_into().ok()?);
    let n = u32::from_be_bytes(b[12..16].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(b[16..20].try_into().ok()?);
    let text = b.get(SLOT_HDR..SLOT_HDR.checked_add(n)?)?;
    if crc32c::crc32c_append(crc32c::crc32c(&b[4..16]), text) != crc {
        return None;
    }
    Some((seq, State::decode(std::str::from_utf8(text).ok()?)?))
}

impl StateFile {
    fn load(path: &Path) -> Result<(StateFile, State), ManagerError> {
        let unreadable = || ManagerError::Invalid {
            path: path.to_owned(),
            what: "unreadable manager state (delete it to re-fetch from the node's checkpoint)"
                .into(),
        };
        let mut sf = StateFile {
            path: path.to_owned(),
            file: None,
            seq: 0,
        };
        let b = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((sf, State::default())),
            Err(e) => return Err(ioe("read", path)(e)),
        };
        if b.starts_with(b"duraplane-manager-state ") {
            // The single-text format; the next save converts it.
            let st = std::str::from_utf8(&b)
                .ok()
                .and_then(State::decode)
                .ok_or_else(unreadable)?;
            return Ok((sf, st));
        }
        let slot = |i: u64| {
            let at = (i * STATE_SLOT) as usize;
            b.get(at..b.len().min(at + STATE_SLOT as usize))
                .and_then(parse_slot)
        };
        let (seq, st) = match (slot(0), slot(1)) {
            (Some(a), Some(b)) => {
                if a.0 >= b.0 {
                    a
                } else {
                    b
                }
            }
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return Err(unreadable()),
        };
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(ioe("open", path))?;
        sf.file = Some(f);
        sf.seq = seq;
        Ok((sf, st))
    }

    /// Makes `st` the durable state.
    fn save(&mut self, st: &State) -> Result<(), ManagerError> {
        use std::os::unix::fs::FileExt;
        let seq = self.seq + 1;
        let slot = state_slot(seq, st).ok_or_else(|| ManagerError::Invalid {
            path: self.path.clone(),
            what: "manager state too long (consolidated file path)".into(),
        })?;
        let at = (seq % 2) * STATE_SLOT;
        match &self.file {
            Some(f) => f
                .write_all_at(&slot, at)
                .and_then(|_| f.sync_data())
                .map_err(ioe("write", &self.path))?,
            None => {
                let tmp = self.path.with_extension("tmp");
                let f = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&tmp)
                    .map_err(ioe("create", &tmp))?;
                f.set_len(2 * STATE_SLOT)
                    .and_then(|_| f.write_all_at(&slot, at))
                    .and_then(|_| f.sync_all())
                    .map_err(ioe("write", &tmp))?;
                fs::rename(&tmp, &self.path).map_err(ioe("rename", &self.path))?;
                fsync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
                self.file = Some(f);
            }
        }
        self.seq = seq;
        Ok(())
    }
}

/// Creates the missing directories of `dir` with `mode` (exactly, whatever the umask).
fn make_dirs(dir: &Path, mode: u32) -> Result<(), ManagerError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(p) = dir.parent() {
        make_dirs(p, mode)?;
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                .map_err(ioe("chmod", dir))?;
            if let Some(p) = dir.parent() {
                fsync_dir(p)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(ioe("create directory", dir)(e)),
    }
}

/// The consolidated files held open between batches, shared by every puller: at most
/// `max_open` (a new one closes the least recently written), none longer than `max_idle`
/// without a write (so yesterday's files, and those of a node that went quiet, are closed).
/// A file is taken out while a puller writes it, so no lock is held across an fsync.
#[derive(Debug)]
pub struct OpenFiles {
    max_open: usize,
    max_idle: Duration,
    files: Mutex<HashMap<PathBuf, (Out, Instant)>>,
}

/// One consolidated file held open: its append handle and, when asked for and the
/// filesystem takes it, a direct-I/O handle for whole blocks (see [`DirectWrite`]).
#[derive(Debug)]
struct Out {
    file: File,
    direct: Option<File>,
}

impl OpenFiles {
    pub fn new(max_open: usize, max_idle: Duration) -> OpenFiles {
        OpenFiles {
            max_open: max_open.max(1),
            max_idle,
            files: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Out, Instant)>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open handles of `path`, taken out of the cache, or fresh ones (created with
    /// `file_mode`, its directories with `dir_mode`); with `direct`, also a direct-I/O
    /// handle where the filesystem supports one.
    /// A cached handle is used only while `path` still names its file: one moved away
    /// or removed (log rotation) is closed, and the path opened (created) anew.
    fn take(&self, path: &Path, cfg: &LogsConfig, direct: bool) -> Result<Out, ManagerError> {
        if let Some((f, _)) = self.lock().remove(path) {
            let same =
                |a: &fs::Metadata, b: &fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
            match (fs::metadata(path), f.file.metadata()) {
                (Ok(now), Ok(open)) if same(&now, &open) => return Ok(f),
                _ => {
                    tracing::info!(file = %path.display(), "manager: the consolidated file was moved or removed; writing a new one")
                }
            }
        }
        if let Some(d) = path.parent() {
            make_dirs(d, cfg.dir_mode)?;
        }
        let existed = path.exists();
        // Readable too: the direct path reads back the partial last block.
        let f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(cfg.file_mode)
            .open(path)
            .map_err(ioe("open", path))?;
        if !existed {
            f.set_permissions(fs::Permissions::from_mode(cfg.file_mode))
                .map_err(ioe("chmod", path))?;
            if let Some(d) = path.parent() {
                fsync_dir(d)?;
            }
        }
        let direct = if direct {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::debug!(file = %path.display(), error = %e, "manager: no direct I/O here, writing through the page cache");
                    None
                }
            }
        } else {
            None
        };
        Ok(Out { file: f, direct })
    }

    /// Puts a handle back after a write; closes the least recently written files beyond
    /// `max_open` and any idle longer than `max_idle`.
    fn put(&self, path: PathBuf, f: Out) {
        let mut files = self.lock();
        files.entry(path).or_insert((f, Instant::now())).1 = Instant::now();
        Self::close_idle(&mut files, self.max_idle);
        while files.len() > self.max_open {
            let Some(oldest) = files
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(p, _)| p.clone())
            else {
                break;
            };
            files.remove(&oldest);
            tracing::debug!(file = %oldest.display(), "manager: max_open reached, closed the least recently written file");
        }
    }

    fn close_idle(files: &mut HashMap<PathBuf, (Out, Instant)>, max_idle: Duration) -> usize {
        let before = files.len();
        files.retain(|p, (_, t)| {
            let keep = t.elapsed() <= max_idle;
            if !keep {
                tracing::debug!(file = %p.display(), "manager: closed a file idle longer than max_idle");
            }
            keep
        });
        before - files.len()
    }

    /// Closes the files idle longer than `max_idle`; returns how many.
    pub fn sweep(&self) -> usize {
        Self::close_idle(&mut self.lock(), self.max_idle)
    }

    /// The files open now (for `cluster show`-style reports and tests).
    pub fn open_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }
}

/// One (node, log) consolidation: the output ([`Appender`]) and the state file.
struct Sink {
    appender: Appender,
    state: StateFile,
}

/// Appends batches to the consolidated file (without syncing them).
struct Appender {
    cfg: Arc<LogsConfig>,
    files: Arc<OpenFiles>,
    node: String,
    log: String,
    /// The state once everything appended so far is committed: ahead of the state file
    /// while a batch is being made durable.
    st: State,
    /// Whole blocks go to the disk by direct I/O (the file is this puller's alone);
    /// cleared for good when a filesystem refuses it.
    direct: bool,
    /// Set by a [`DirectWrite`] the filesystem refused (it wrote through the page cache).
    refused: Arc<AtomicBool>,
    /// The partial last block `st.file` will end in once every staged batch is written:
    /// the next batch's start, while earlier ones are still being written.
    carry: Option<Carry>,
    /// The inode the last batch went to (not kept across restarts): a file moved away
    /// and created anew is a switch, like a new path, so the state names its length
    /// before anything is written to it.
    ino: Option<u64>,
}

/// The end of the last staged batch (see [`Appender::carry`]); the file and its length
/// are the appender's `st.file` and `st.len`.
struct Carry {
    /// The file's inode: a file moved away and created anew starts afresh.
    ino: u64,
    /// The bytes of the last, partial block (`st.len % BLOCK` of them).
    tail: Vec<u8>,
}

/// An appended batch, to be made durable and then committed as `st`.
struct Pending {
    /// The file's handle (a duplicate of the cached one), and the range appended.
    data: Option<(PathBuf, File, u64, u64)>,
    st: State,
    last: Offset,
}

/// What the appender asks of the committer, in order.
enum Job {
    Commit(Pending),
    /// Switching files: the new file and its current length must be the committed state
    /// before a byte goes to it (a crash mid-write then cuts exactly our part).
    Switch(State, std::sync::mpsc::SyncSender<Result<(), ManagerError>>),
}

impl Sink {
    fn open(
        cfg: Arc<LogsConfig>,
        files: Arc<OpenFiles>,
        node: &str,
        log: &str,
    ) -> Result<Sink, ManagerError> {
        let dir = state_dir(&cfg.logfile);
        make_dirs(&dir, 0o700)?;
        let state_path = dir.join(format!("{node}.{log}.state"));
        let (state, st) = StateFile::load(&state_path)?;
        // Cut whatever was appended after the last committed state (a crash, or a failed
        // session, between a write and its commit): those records will be fetched again.
        if let Some(f) = &st.file
            && let Ok(m) = fs::metadata(f)
            && m.len() > st.len
        {
            let h = OpenOptions::new()
                .write(true)
                .open(f)
                .map_err(ioe("open", f))?;
            h.set_len(st.len)
                .and_then(|_| h.sync_all())
                .map_err(ioe("truncate", f))?;
            tracing::warn!(file = %f.display(), cut = m.len() - st.len, "manager: cut an uncommitted tail (will be re-fetched)");
        }
        let direct = private_files(&cfg.logfile);
        Ok(Sink {
            appender: Appender {
                cfg,
                files,
                node: node.into(),
                log: log.into(),
                st,
                direct,
                refused: Arc::new(AtomicBool::new(false)),
                carry: None,
                ino: None,
            },
            state,
        })
    }
}

/// A staged batch: what the flusher writes before passing `pending` on.
struct Staged {
    pending: Pending,
    /// The batch's bytes for direct I/O; `None` when it is already written (through the
    /// page cache) or empty.
    write: Option<DirectWrite>,
}

impl Appender {
    /// The file records written now go to.
    fn path_now(&self) -> PathBuf {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        PathBuf::from(expand(
            &self.cfg.logfile,
            &self.log,
            &self.node,
            "default",
            now,
        ))
    }

    /// Makes `path` (inode `ino`, `len` bytes long) the committed state's file before a
    /// byte goes to it, unless it already is.
    fn switch_to(
        &mut self,
        path: &Path,
        ino: u64,
        len: u64,
        switch: &mut dyn FnMut(&State) -> Result<(), ManagerError>,
    ) -> Result<(), ManagerError> {
        if self.st.file.as_deref() == Some(path) && self.ino == Some(ino) {
            return Ok(());
        }
        let mut st = self.st.clone();
        st.file = Some(path.to_owned());
        st.len = len;
        switch(&st)?;
        self.st = st;
        self.ino = Some(ino);
        Ok(())
    }

    /// Opens (creating) the file the next records go to and commits its starting state
    /// ahead of them: a pull with a backlog then creates and syncs directories, file and
    /// state while its first records arrive, not after. Only before the first batch
    /// (nothing staged, nothing carried).
    fn prepare(
        &mut self,
        switch: &mut dyn FnMut(&State) -> Result<(), ManagerError>,
    ) -> Result<(), ManagerError> {
        let path = self.path_now();
        let out = self.files.take(&path, &self.cfg, self.direct)?;
        let m = out.file.metadata().map_err(ioe("stat", &path))?;
        let r = self.switch_to(&path, m.ino(), m.len(), switch);
        self.files.put(path, out);
        r
    }

    /// Stages the new records (skipping any at or below the last appended offset),
    /// without syncing; `switch` commits a new file's starting state before its first
    /// write. Whole blocks are copied into a buffer from `pool` for the flusher to write
    /// by direct I/O while the next batch is staged; otherwise the batch is written here,
    /// through the page cache. `None` for an empty batch.
    fn stage(
        &mut self,
        frames: &[RecordsBuf],
        switch: &mut dyn FnMut(&State) -> Result<(), ManagerError>,
        pool: &mut Pool,
    ) -> Result<Option<Staged>, ManagerError> {
        let Some(last_off) = frames.iter().rev().find_map(|f| f.last()).map(|r| r.offset) else {
            return Ok(None);
        };
        if self.refused.load(Ordering::Relaxed) {
            self.direct = false;
        }
        let last = self.st.last;
        let mut fresh = frames
            .iter()
            .flat_map(|f| f.iter())
            .filter(|r| last.is_none_or(|l| r.offset > l))
            .peekable();
        let mut data = None;
        let mut write = None;
        if fresh.peek().is_some() {
            let path = self.path_now();
            let mut out = self.files.take(&path, &self.cfg, self.direct)?;
            let direct = self.direct && out.direct.is_some();
            let m = out.file.metadata().map_err(ioe("stat", &path))?;
            // While earlier batches of this file are still being written, it ends where
            // they will leave it; otherwise (another file, a file moved away and created
            // anew, or through the page cache) wait for them and ask the file.
            let carried = self.carry.take().filter(|c| {
                direct && self.st.file.as_ref() == Some(&path) && c.ino == m.ino() && pool.out > 0
            });
            let len = match &carried {
                Some(_) => self.st.len,
                None if pool.out == 0 => m.len(),
                None => {
                    pool.drain()?;
                    out.file.metadata().map_err(ioe("stat", &path))?.len()
                }
            };
            self.switch_to(&path, m.ino(), len, switch)?;
            // Gathered straight from the received frames: no copy of the batch.
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(8192);
            let mut total = 0u64;
            for r in fresh {
                slices.push(IoSlice::new(r.payload));
                total += r.payload.len() as u64;
                if !r.payload.ends_with(b"\n") {
                    slices.push(IoSlice::new(b"\n"));
                    total += 1;
                }
            }
            // On failure the handles are dropped (closed), never reused.
            if let (true, Some(d)) = (direct, &out.direct) {
                let w = DirectWrite::stage(
                    &path,
                    &out.file,
                    d,
                    pool.take()?,
                    len,
                    carried.as_ref().map(|c| c.tail.as_slice()),
                    &slices,
                    self.refused.clone(),
                )?;
                self.carry = Some(Carry {
                    ino: m.ino(),
                    tail: w.tail().to_vec(),
                });
                write = Some(w);
            } else {
                write_all_vectored(&mut out.file, &mut slices).map_err(ioe("write", &path))?;
                // Start writeback now: the disk works on this batch while the committer
                // still waits for the previous one, and its fdatasync finds less left to
                // write. A hint only (the fdatasync is what makes it durable).
                use std::os::fd::AsRawFd;
                // SAFETY: plain syscall on an open descriptor; no memory is passed.
                let _ = unsafe {
                    libc::sync_file_range(
                        out.file.as_raw_fd(),
                        len as libc::off64_t,
                        total as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WRITE,
                    )
                };
            }
            let dup = out
                .file
                .try_clone()
                .map_err(ioe("duplicate handle of", &path))?;
            self.files.put(path.clone(), out);
            self.st.len = len + total;
            data = Some((path, dup, len, total));
        }
        self.st.last = Some(self.st.last.map_or(last_off, |l| l.max(last_off)));
        Ok(Some(Staged {
            pending: Pending {
                data,
                st: self.st.clone(),
                last: last_off,
            },
            write,
        }))
    }
}

/// The staging buffers of one puller: one being written by the flusher while the next
/// batch is copied into another. Buffers come back from the flusher through `back`.
struct Pool {
    free: Vec<Staging>,
    back: std::sync::mpsc::Receiver<Staging>,
    /// Buffers handed out and not yet back.
    out: usize,
    cap: usize,
}

impl Pool {
    fn new(cap: usize) -> (Pool, std::sync::mpsc::Sender<Staging>) {
        let (tx, back) = std::sync::mpsc::channel();
        let pool = Pool {
            free: Vec::new(),
            back,
            out: 0,
            cap: cap.max(1),
        };
        (pool, tx)
    }

    fn gone() -> ManagerError {
        ManagerError::Invalid {
            path: PathBuf::from("manager"),
            what: "the consolidated-log flusher stopped".into(),
        }
    }

    /// A buffer: a free one, a new one while fewer than `cap` exist, else the next back.
    fn take(&mut self) -> Result<Staging, ManagerError> {
        while let Ok(b) = self.back.try_recv() {
            self.out -= 1;
            self.free.push(b);
        }
        if let Some(b) = self.free.pop() {
            self.out += 1;
            return Ok(b);
        }
        if self.out < self.cap {
            self.out += 1;
            return Ok(Staging::default());
        }
        self.back.recv().map_err(|_| Self::gone())
    }

    /// Faults in every buffer for batches of up to `n` bytes before the first batch (a
    /// backlog is coming): touching fresh pages otherwise doubled the first batch's copy.
    fn warm(&mut self, n: usize) {
        while self.out + self.free.len() < self.cap {
            let mut s = Staging::default();
            let b = s.get(n);
            for i in (0..b.len()).step_by(BLOCK) {
                b[i] = 0;
            }
            self.free.push(s);
        }
    }

    /// Waits until every buffer is back: nothing staged is left unwritten.
    fn drain(&mut self) -> Result<(), ManagerError> {
        while self.out > 0 {
            let b = self.back.recv().map_err(|_| Self::gone())?;
            self.out -= 1;
            self.free.push(b);
        }
        Ok(())
    }
}

/// Direct I/O's alignment of memory, file offsets and lengths: 4 KiB covers disks of
/// 512-byte and 4 KiB logical blocks.
const BLOCK: usize = 4096;

/// Whether `template` names one file per (log, node), so no other puller appends to it and
/// a batch may be written at the offsets this one computes.
fn private_files(template: &str) -> bool {
    template.contains("%{l}") && template.contains("%{n}")
}

/// The block-aligned staging buffer of direct writes. Batches of 2 MiB or more sit on
/// transparent huge pages where the kernel offers them (THP `madvise` mode, the default):
/// a direct write pins its memory page by page, 2 pages per 4 MiB instead of 1,024
/// (measured here: the manager's pull 1,070–1,130 MB/s with them, 940–1,010 without,
/// alternating runs). Reallocated when much larger than the batch needs for more than a
/// few batches in a row, so a puller of a trickle does not keep a backlog's 20 MiB, while
/// the small first batches of a session (see [`FIRST_BATCH`]) keep the buffer warmed for
/// the large ones that follow.
#[derive(Default)]
struct Staging {
    mem: Vec<u8>,
    /// Batches in a row for which `mem` was much larger than needed.
    oversized: u32,
}

impl Staging {
    const HUGE: usize = 2 << 20;
    /// Oversized batches in a row after which the buffer is reallocated to size.
    const SHRINK_AFTER: u32 = 4;

    /// Where `n` bytes start: on a block boundary, a 2 MiB one from 2 MiB on.
    fn align(n: usize) -> usize {
        if n >= Self::HUGE { Self::HUGE } else { BLOCK }
    }

    /// `n` bytes starting at [`align`](Self::align)`(n)`; contents unspecified.
    fn get(&mut self, n: usize) -> &mut [u8] {
        let align = Self::align(n);
        // Room to align the start anywhere in the first `align` bytes.
        let want = n.next_multiple_of(align) + align;
        self.oversized = if self.mem.len() > 4 * want {
            self.oversized + 1
        } else {
            0
        };
        if self.mem.len() < want || self.oversized > Self::SHRINK_AFTER {
            self.oversized = 0;
            self.mem = Vec::new();
            self.mem = vec![0u8; want];
            let at = self.mem.as_ptr().align_offset(align);
            if align == Self::HUGE {
                let len = (want - at) / Self::HUGE * Self::HUGE;
                // SAFETY: the range lies within `mem` (just allocated, not yet touched);
                // the advice only changes how the kernel backs those pages. A refusal
                // (no THP) leaves ordinary pages.
                let _ = unsafe {
                    libc::madvise(
                        self.mem.as_mut_ptr().add(at).cast(),
                        len,
                        libc::MADV_HUGEPAGE,
                    )
                };
            }
        }
        let at = self.mem.as_ptr().align_offset(align);
        &mut self.mem[at..at + n]
    }

    /// The `n` bytes the last [`get`](Self::get)`(n)` returned.
    fn staged(&self, n: usize) -> &[u8] {
        let at = self.mem.as_ptr().align_offset(Self::align(n));
        &self.mem[at..at + n]
    }
}

/// Direct writes go out this many bytes at a time (4 MiB writes measured faster here
/// than 16 MiB ones; 1–16 MiB made no difference to the manager's pull).
const DIRECT_CHUNK: usize = 4 << 20;

/// A batch copied into a block-aligned staging buffer, to be appended with every whole
/// block written by direct I/O: the batch is copied once, in user space, instead of into
/// new page-cache pages that the kernel then writes back, which on two CPUs was most of
/// what the manager competes with its own receiving for. The flusher writes it while the
/// writer stages the next batch (measured here: the copy was about a sixth of the
/// writer's time). The partial block the file ends in is written again whole, from the
/// previous batch's carry or read back; a tail shorter than a block goes through the
/// page cache (appended), so the file's length is always exactly its content.
/// Durability is still the committer's fdatasync (it flushes the disk's cache and the
/// new length).
struct DirectWrite {
    path: PathBuf,
    /// Duplicates of the append and direct-I/O handles.
    file: File,
    direct: File,
    buf: Staging,
    /// The file's length before this batch, and its block-aligned part.
    len: u64,
    start: u64,
    /// `len - start` bytes of the old partial block, then the batch: `need` in all.
    head: usize,
    need: usize,
    refused: Arc<AtomicBool>,
}

impl DirectWrite {
    /// Copies `parts` after the file's partial last block (`carry` when the previous
    /// batch is still being written, else read back from `file`). `buf` comes back from
    /// [`flush`](Self::flush).
    #[allow(clippy::too_many_arguments)]
    fn stage(
        path: &Path,
        file: &File,
        direct: &File,
        mut buf: Staging,
        len: u64,
        carry: Option<&[u8]>,
        parts: &[IoSlice<'_>],
        refused: Arc<AtomicBool>,
    ) -> Result<DirectWrite, ManagerError> {
        use std::os::unix::fs::FileExt;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let start = len - len % BLOCK as u64;
        let head = (len - start) as usize;
        let need = head + total;
        let b = buf.get(need);
        match carry {
            Some(c) if c.len() == head => b[..head].copy_from_slice(c),
            _ if head > 0 => file
                .read_exact_at(&mut b[..head], start)
                .map_err(ioe("read back the last block of", path))?,
            _ => {}
        }
        let mut p = head;
        for s in parts {
            b[p..p + s.len()].copy_from_slice(s);
            p += s.len();
        }
        let dup = |f: &File| f.try_clone().map_err(ioe("duplicate handle of", path));
        Ok(DirectWrite {
            path: path.to_owned(),
            file: dup(file)?,
            direct: dup(direct)?,
            buf,
            len,
            start,
            head,
            need,
            refused,
        })
    }

    /// The bytes written by direct I/O: every whole block.
    fn whole(&self) -> usize {
        self.need - self.need % BLOCK
    }

    /// The bytes of the last partial block once this batch is written.
    fn tail(&self) -> &[u8] {
        &self.buf.staged(self.need)[self.whole()..]
    }

    /// Writes the batch; the buffer comes back either way. An error may leave part of the
    /// batch written: it is uncommitted, cut on the next open. A filesystem that refuses
    /// the alignment (`EINVAL`, on the first write, before anything is written) gets the
    /// batch through the page cache, and [`Appender`] stops trying.
    fn flush(mut self) -> (Staging, Result<u64, ManagerError>) {
        let r = self.write();
        (self.buf, r)
    }

    fn write(&mut self) -> Result<u64, ManagerError> {
        use std::os::unix::fs::FileExt;
        let path = &self.path;
        let whole = self.whole();
        let buf = self.buf.staged(self.need);
        for (i, c) in buf[..whole].chunks(DIRECT_CHUNK).enumerate() {
            match self
                .direct
                .write_all_at(c, self.start + (i * DIRECT_CHUNK) as u64)
            {
                Ok(()) => {}
                Err(e) if i == 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(file = %path.display(), error = %e, "manager: direct I/O refused, writing through the page cache");
                    self.refused.store(true, Ordering::Relaxed);
                    self.file.set_len(self.len).map_err(ioe("truncate", path))?;
                    self.file
                        .write_all(&buf[self.head..])
                        .map_err(ioe("write", path))?;
                    return Ok(0);
                }
                Err(e) => return Err(ioe("write", path)(e)),
            }
        }
        // The rest goes where the file now ends: after the direct write (which ended past
        // `len`), or at `len` when the batch did not complete a block.
        let rest = whole.max(self.head);
        if rest < self.need {
            self.file
                .write_all(&buf[rest..])
                .map_err(ioe("write", path))?;
        }
        Ok(whole as u64)
    }
}

/// Writes every slice, `IOV_MAX` at a time, resuming after short writes.
fn write_all_vectored(f: &mut File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    while !slices.is_empty() {
        let n = slices.len().min(IOV_MAX);
        match f.write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => IoSlice::advance_slices(&mut slices, w),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes appended batches durable, then the last one's state; returns the offset to
/// checkpoint. Each file is synced once, with the handle of its last batch (batches of
/// one file follow each other: a new file is a [`Job::Switch`] between them).
fn commit(state: &mut StateFile, ps: Vec<Pending>) -> Result<Offset, ManagerError> {
    let Some(last) = ps.last().map(|p| (p.st.clone(), p.last)) else {
        return Err(ManagerError::Invalid {
            path: state.path.clone(),
            what: "nothing to commit".into(),
        });
    };
    let files: Vec<_> = ps.iter().filter_map(|p| p.data.as_ref()).collect();
    for (i, (path, f, _, _)) in files.iter().enumerate() {
        if files.get(i + 1).is_some_and(|n| n.0 == *path) {
            continue;
        }
        f.sync_data().map_err(ioe("write", path))?;
    }
    for (_, f, at, n) in &files {
        // The consolidated files are write-once: once durable, their pages are only
        // cache pollution. Dropping them hands the next batch recently freed pages
        // instead of new ones (which on a VM can cost more than the write itself).
        // Advice only; a failure changes nothing for correctness.
        let _ = nix::fcntl::posix_fadvise(
            f,
            *at as libc::off_t,
            *n as libc::off_t,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }
    if !files.is_empty() {
        fault(Fault::BeforeState);
    }
    state.save(&last.0)?;
    Ok(last.1)
}

/// How the manager is run.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    pub config: PathBuf,
    /// The manager's name (subscriber and engine nodename); default the hostname.
    pub name: String,
    /// Static nodes: (nodename, ECCluster_Listener address).
    pub nodes: Vec<(String, SocketAddr)>,
    /// Overrides `duraplane { cluster_key_file }`.
    pub key_file: Option<PathBuf>,
    /// Nodes asked for the cluster's membership (their live, announced members are
    /// pulled from too), every `log_idle_interval` (at least 1 s).
    pub seeds: Vec<SocketAddr>,
}

/// Runs until `stop` is set: one puller per (node, log).
pub fn run(opts: &ManagerOptions, stop: Arc<AtomicBool>) -> Result<(), ManagerError> {
    let cfg = Arc::new(load(&opts.config)?);
    let key_file = opts
        .key_file
        .clone()
        .or_else(|| cfg.cluster_key_file.clone())
        .ok_or_else(|| ManagerError::Invalid {
            path: opts.config.clone(),
            what: "no cluster key: give --key or duraplane { cluster_key_file }".into(),
        })?;
    let key = ClusterKey::load(&key_file)?;
    make_dirs(&state_dir(&cfg.logfile), 0o700)?;
    let files = Arc::new(OpenFiles::new(cfg.max_open, cfg.max_idle));
    tracing::info!(
        manager = opts.name,
        nodes = opts.nodes.len(),
        logfile = cfg.logfile,
        "manager running"
    );
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    // Closes idle files also while nothing is written.
    {
        let (files, stop) = (files.clone(), stop.clone());
        let every = (cfg.max_idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
        threads.push(
            std::thread::Builder::new()
                .name("mgr-idle".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(every);
                        files.sweep();
                    }
                })
                .map_err(ioe("spawn thread for", Path::new("max_idle")))?,
        );
    }
    let mut started: BTreeMap<String, SocketAddr> = BTreeMap::new();
    let spawn = |node: &str, addr: SocketAddr, threads: &mut Vec<JoinHandle<()>>| {
        let subs = cfg.subscribers(&opts.name, node);
        if subs.is_empty() {
            tracing::info!(
                node,
                "manager: Subscriber = () — not pulling from this node"
            );
            return Ok(());
        }
        tracing::info!(node, %addr, "manager: pulling from node");
        let p = NodePuller {
            cfg: cfg.clone(),
            files: files.clone(),
            key: key.clone(),
            me: opts.name.clone(),
            node: node.to_owned(),
            addr,
            subs,
            stop: stop.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("mgr-{node}"))
                .spawn(move || p.run())
                .map_err(ioe("spawn thread for", Path::new(node)))?,
        );
        Ok::<(), ManagerError>(())
    };
    for (node, addr) in &opts.nodes {
        if started.insert(node.clone(), *addr).is_none() {
            spawn(node, *addr, &mut threads)?;
        }
    }
    // Discovery: members the seeds know (live, announced) that we do not pull yet.
    let every = cfg.log_idle_interval.max(Duration::from_secs(1));
    while !opts.seeds.is_empty() && !stop.load(Ordering::Relaxed) {
        for seed in &opts.seeds {
            let members = LogClient::connect(*seed, &key, &opts.name, Duration::from_secs(5))
                .and_then(|mut c| c.members());
            match members {
                Ok(list) => {
                    for (node, addr) in list {
                        if started.contains_key(&node) {
                            continue;
                        }
                        match addr.parse::<SocketAddr>() {
                            Ok(a) => {
                                started.insert(node.clone(), a);
                                spawn(&node, a, &mut threads)?;
                            }
                            Err(_) => {
                                tracing::warn!(
                                    node,
                                    addr,
                                    "manager: member announces an unusable address"
                                );
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(seed = %seed, error = %e, "manager: cannot ask the seed for members")
                }
            }
        }
        let end = std::time::Instant::now() + every;
        while std::time::Instant::now() < end && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

#[derive(Clone)]
struct NodePuller {
    cfg: Arc<LogsConfig>,
    files: Arc<OpenFiles>,
    key: ClusterKey,
    me: String,
    node: String,
    addr: SocketAddr,
    subs: Vec<String>,
    stop: Arc<AtomicBool>,
}

impl NodePuller {
    fn sleep(&self, d: Duration) {
        let end = std::time::Instant::now() + d;
        while !self.stop.load(Ordering::Relaxed) {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }

    /// Lists the node's logs, pulls each on its own connection, and lists again every
    /// `log_idle_interval` (at least 1 s): a log a reload publishes is pulled from then
    /// on; the puller of one no longer published ends, and starts again if it returns.
    fn run(self) {
        let mut pulling: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
        while !self.stop.load(Ordering::Relaxed) {
            match LogClient::connect(self.addr, &self.key, &self.me, Duration::from_secs(5))
                .and_then(|mut c| c.list())
            {
                Ok(logs) => {
                    for log in logs {
                        if pulling.get(&log).is_some_and(|t| !t.is_finished()) {
                            continue;
                        }
                        if let Some(t) = pulling.remove(&log) {
                            let _ = t.join();
                        }
                        let p = self.clone();
                        let l = log.clone();
                        match std::thread::Builder::new()
                            .name(format!("mgr-{}-{log}", self.node))
                            .spawn(move || p.pull(&l))
                        {
                            Ok(t) => {
                                pulling.insert(log, t);
                            }
                            Err(e) => {
                                tracing::error!(node = self.node, log, error = %e, "manager: cannot start a puller thread")
                            }
                        }
                    }
                    self.sleep(self.cfg.log_idle_interval.max(Duration::from_secs(1)));
                }
                Err(e) => {
                    tracing::warn!(node = self.node, addr = %self.addr, error = %e, "manager: cannot list the node's logs");
                    self.sleep(self.cfg.log_idle_interval.max(Duration::from_millis(200)));
                }
            }
        }
        for t in pulling.into_values() {
            let _ = t.join();
        }
    }

    /// Opens the consolidated log's state, retrying (and saying so) until it opens or
    /// the manager stops: a full disk or a wrong permission is mended by the operator
    /// while the manager runs, and the puller must still be there when it is.
    fn open_sink(&self, log: &str) -> Option<Sink> {
        while !self.stop.load(Ordering::Relaxed) {
            match Sink::open(self.cfg.clone(), self.files.clone(), &self.node, log) {
                Ok(s) => return Some(s),
                Err(e) => {
                    tracing::error!(node = self.node, log, error = %e, "manager: cannot open the consolidated log state (retrying)");
                    self.sleep(self.cfg.log_idle_interval.max(Duration::from_millis(200)));
                }
            }
        }
        None
    }

    /// Pulls one log until stopped or the node no longer publishes it, reconnecting
    /// after failures.
    fn pull(&self, log: &str) {
        let Some(mut sink) = self.open_sink(log) else {
            return;
        };
        // Bytes per batch: `BATCH`, cut on a full disk so that what still fits is
        // written and checkpointed (a batch larger than the free space would fail whole,
        // again and again), and doubled back after each batch that commits.
        let mut batch = BATCH;
        while !self.stop.load(Ordering::Relaxed) {
            match self.session(log, &mut sink, &mut batch) {
                Ok(()) => {}
                Err(SessionError::Client(LogClientError::Refused {
                    code: code::UNKNOWN_LOG | code::UNPUBLISHED,
                    ..
                })) => {
                    tracing::info!(
                        node = self.node,
                        log,
                        "manager: the node no longer publishes this log"
                    );
                    return;
                }
                Err(e) => {
                    if matches!(&e, SessionError::Manager(m) if m.is_disk_full()) {
                        batch = (batch / 4).max(MIN_BATCH);
                        tracing::error!(node = self.node, log, error = %e, batch,
                            "manager: the consolidated log's disk is full; nothing unwritten is checkpointed, retrying with smaller batches");
                    } else {
                        tracing::warn!(node = self.node, log, error = %e, "manager: log session ended");
                    }
                    self.sleep(self.cfg.log_idle_interval.max(Duration::from_millis(200)));
                    // Start again from the committed state: a batch appended but not
                    // committed is cut, and fetched again.
                    drop(sink);
                    match self.open_sink(log) {
                        Some(s) => sink = s,
                        None => return,
                    }
                }
            }
        }
    }

    fn session(&self, log: &str, sink: &mut Sink, batch: &mut u64) -> Result<(), SessionError> {
        let mut c = LogClient::connect(self.addr, &self.key, &self.me, Duration::from_secs(5))?;
        let mut subscribed = None;
        for s in &self.subs {
            match c.subscribe_backlog(log, s, MAX_WINDOW) {
                Ok(at) => {
                    subscribed = Some((s.clone(), at));
                    break;
                }
                Err(LogClientError::Refused {
                    code: code::UNKNOWN_SUBSCRIBER,
                    ..
                }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let Some((sub, Subscribed { next, end })) = subscribed else {
            tracing::warn!(node = self.node, log, subscribers = ?self.subs, "manager: none of our subscribers exists on this log");
            self.sleep(self.cfg.log_idle_interval.max(Duration::from_secs(1)) * 6);
            return Ok(());
        };
        tracing::info!(
            node = self.node,
            log,
            subscriber = sub,
            next,
            end,
            "manager: pulling"
        );
        // A backlog is coming: the writer opens the file and faults in its buffers while
        // the first records arrive, instead of after.
        let backlog = end > next;
        // Receiving, copying, writing and syncing overlap: a writer thread stages a batch
        // (copies it into a staging buffer) while a flusher writes the previous one to
        // the disk, a committer makes the one before durable (fdatasync, then the state)
        // and the next arrives; a checkpoint goes out only for a committed batch, in
        // order. Everything the writer asks passes through the flusher, so the committer
        // sees it in order. At most `IN_FLIGHT` batches of ≤ `BATCH` bytes are out, plus
        // the one arriving: the node's window never closes while the disk keeps up.
        let (batches, for_writer) = std::sync::mpsc::sync_channel::<Vec<RecordsBuf>>(1);
        // Frames the writer is done with go back to the receiver, to receive later ones.
        let (done_with, returned) = std::sync::mpsc::channel::<Vec<RecordsBuf>>();
        let (to_flusher, for_flusher) =
            std::sync::mpsc::sync_channel::<(Option<DirectWrite>, Job)>(1);
        // Room for every batch out, so the flusher never waits on the committer.
        let (jobs, for_committer) = std::sync::mpsc::sync_channel::<Job>(IN_FLIGHT);
        let (written, results) = std::sync::mpsc::channel::<Result<Option<Offset>, ManagerError>>();
        let (mut pool, back) = Pool::new(2);
        let Sink { appender, state } = sink;
        // Named, so `top -H` and `perf` show which stage of a pull is busy.
        let stage = |name: &str| std::thread::Builder::new().name(format!("mgr-{name}"));
        let started = |e| ioe("start a thread for log", Path::new(log))(e);
        std::thread::scope(|scope| {
            let w = written.clone();
            stage("commit")
                .spawn_scoped(scope, move || {
                    let mut held = None;
                    while let Some(job) = held.take().or_else(|| for_committer.recv().ok()) {
                        match job {
                            Job::Commit(p) => {
                                // Batches that queued up while the last commit ran are
                                // made durable with this one: one fdatasync and one state
                                // save for all, when the disk is slower than the link.
                                let mut ps = vec![p];
                                while let Ok(j) = for_committer.try_recv() {
                                    match j {
                                        Job::Commit(p) => ps.push(p),
                                        other => {
                                            held = Some(other);
                                            break;
                                        }
                                    }
                                }
                                let n = ps.len();
                                match commit(state, ps) {
                                    // One answer per batch (the receiver counts them);
                                    // the last carries the checkpoint.
                                    Ok(last) => {
                                        for r in (1..n).map(|_| None).chain([Some(last)]) {
                                            if w.send(Ok(r)).is_err() {
                                                return;
                                            }
                                        }
                                    }
                                    Err(e) => {
                                        let _ = w.send(Err(e));
                                        return;
                                    }
                                }
                            }
                            Job::Switch(st, ack) => {
                                let r = state.save(&st);
                                let failed = r.is_err();
                                if ack.send(r).is_err() || failed {
                                    return;
                                }
                            }
                        }
                    }
                })
                .map_err(started)?;
            let w = written.clone();
            stage("flush")
                .spawn_scoped(scope, move || {
                    for (write, job) in for_flusher {
                        if let Some(d) = write {
                            let (buf, r) = d.flush();
                            // The writer may have stopped; the buffer is then just freed.
                            let _ = back.send(buf);
                            if let Err(e) = r {
                                let _ = w.send(Err(e));
                                return;
                            }
                        }
                        if jobs.send(job).is_err() {
                            return;
                        }
                    }
                })
                .map_err(started)?;
            stage("write")
                .spawn_scoped(scope, move || {
                    let mut switch = |st: &State| {
                        let (ack, done) = std::sync::mpsc::sync_channel(1);
                        let gone = || ManagerError::Invalid {
                            path: PathBuf::from(log),
                            what: "the consolidated-log committer stopped".into(),
                        };
                        to_flusher
                            .send((None, Job::Switch(st.clone(), ack)))
                            .map_err(|_| gone())?;
                        done.recv().map_err(|_| gone())?
                    };
                    // Getting ready for a backlog: a failure (a full disk, a committer
                    // that stopped) is the first batch's answer, which the receiver
                    // waits for; it is not retried into a different error.
                    let mut early = None;
                    if backlog {
                        match appender.prepare(&mut switch) {
                            Ok(()) => pool.warm(BATCH as usize + FRAME_SLACK),
                            Err(e) => early = Some(e),
                        }
                    }
                    for recs in for_writer {
                        let r = match early.take() {
                            Some(e) => Err(e),
                            None => appender.stage(&recs, &mut switch, &mut pool),
                        };
                        // Copied (or written): the frames are free for reuse.
                        let _ = done_with.send(recs);
                        match r {
                            Ok(Some(Staged { pending, write })) => {
                                if to_flusher.send((write, Job::Commit(pending))).is_err() {
                                    return;
                                }
                            }
                            Ok(None) => {
                                if written.send(Ok(None)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = written.send(Err(e));
                                return;
                            }
                        }
                    }
                })
                .map_err(started)?;
            let r = self.receive(log, &mut c, &batches, &results, &returned, batch);
            drop(batches);
            r
        })
    }

    /// The receiving side of [`session`](Self::session): batches to the writer,
    /// checkpoints for what it made durable.
    fn receive(
        &self,
        log: &str,
        c: &mut LogClient,
        batches: &std::sync::mpsc::SyncSender<Vec<RecordsBuf>>,
        results: &std::sync::mpsc::Receiver<Result<Option<Offset>, ManagerError>>,
        returned: &std::sync::mpsc::Receiver<Vec<RecordsBuf>>,
        batch: &mut u64,
    ) -> Result<(), SessionError> {
        let mut in_flight = 0usize;
        // A written batch: checkpointed on the node, and the next batches may be larger.
        let committed = |r: Result<Option<Offset>, ManagerError>,
                         c: &mut LogClient,
                         batch: &mut u64|
         -> Result<(), SessionError> {
            if let Some(off) = r? {
                fault(Fault::BeforeCheckpoint);
                c.send_checkpoint(off)?;
                *batch = (*batch * 2).min(BATCH);
            }
            Ok(())
        };
        let settle = |in_flight: &mut usize,
                      c: &mut LogClient,
                      batch: &mut u64,
                      block: bool|
         -> Result<(), SessionError> {
            while *in_flight > 0 {
                let r = if block {
                    match results.recv() {
                        Ok(r) => r,
                        Err(_) => return Ok(()),
                    }
                } else {
                    match results.try_recv() {
                        Ok(r) => r,
                        Err(_) => return Ok(()),
                    }
                };
                *in_flight -= 1;
                committed(r, c, batch)?;
            }
            Ok(())
        };
        // The first batches are small and each twice the last, up to `*batch`: the disk
        // starts on the first records while the next arrive, instead of idling until a
        // whole batch is in.
        let mut ramp = FIRST_BATCH;
        while !self.stop.load(Ordering::Relaxed) {
            settle(&mut in_flight, c, batch, false)?;
            for r in returned.try_iter().flatten() {
                c.recycle(r);
            }
            // Everything that is here now (up to a batch), then hand it over.
            let mut recs: Vec<RecordsBuf> = Vec::new();
            let (mut bytes, mut count, mut caught_up) = (0u64, 0usize, false);
            // Capped so a keepalive goes out well within the node's 30 s idle timeout;
            // short while a write is in flight, so its checkpoint goes out promptly.
            let wait = if in_flight > 0 {
                Duration::from_millis(1)
            } else {
                self.cfg
                    .log_idle_interval
                    .clamp(Duration::from_millis(10), Duration::from_secs(10))
            };
            // An error from the node (a bad record in its log, the log unpublished) ends
            // the session, but only after what arrived before it is written and
            // committed: dropping it would leave those records out of the file on every
            // retry, since the node stops at the same place each time.
            let mut ended = None;
            let mut poll = |c: &mut LogClient, wait| match c.poll_batch(wait) {
                Ok(d) => d,
                Err(e) => {
                    ended = Some(e);
                    None
                }
            };
            let mut d = poll(c, wait);
            while let Some(x) = d {
                match x {
                    BatchDelivery::Records(r) => {
                        bytes += r.payload_bytes() + 32 * r.len() as u64;
                        count += r.len();
                        caught_up = r.caught_up();
                        recs.push(r);
                    }
                    BatchDelivery::Gap { from, to } => {
                        tracing::warn!(
                            node = self.node,
                            log,
                            from,
                            to,
                            "manager: the node cannot return these offsets (dropped by its drop_oldest disk policy, or damage skipped by dp-logctl repair)"
                        );
                    }
                    BatchDelivery::Checkpointed { .. } => {}
                }
                if caught_up || count >= 65_536 || bytes >= ramp.min(*batch) {
                    break;
                }
                // A write that finished while this batch fills is checkpointed now, not
                // after the batch: the node makes it durable while records keep coming,
                // and its window reopens before it runs dry.
                settle(&mut in_flight, c, batch, false)?;
                d = poll(c, Duration::from_millis(1));
            }
            if let Some(e) = ended {
                if !recs.is_empty() && batches.send(recs).is_ok() {
                    in_flight += 1;
                }
                settle(&mut in_flight, c, batch, true)?;
                return Err(e.into());
            }
            if recs.is_empty() {
                continue;
            }
            // Pace only when caught up, as the node says (it flags the frame after which
            // it had nothing more): a backlog is pulled on at once, so it drains at what
            // the link and disk allow — jlog's "sleep between every segment" caps a pull
            // near one segment per log_active_interval. A short pause in delivery (a
            // busy machine) is not "caught up": taking it for one slept a second in the
            // middle of a backlog. A trickle of live records is paced as configured.
            let behind = !caught_up;
            if batches.send(recs).is_err() {
                // The writer stopped on an error: it is in `results`.
                settle(&mut in_flight, c, batch, true)?;
                return Ok(());
            }
            in_flight += 1;
            ramp = ramp.saturating_mul(2);
            if in_flight >= IN_FLIGHT {
                // Enough out: wait for the oldest before reading more.
                let r = results.recv().map_err(|_| ManagerError::Invalid {
                    path: PathBuf::from(log),
                    what: "the consolidated-log writer stopped".into(),
                })?;
                in_flight -= 1;
                committed(r, c, batch)?;
            }
            if !behind {
                settle(&mut in_flight, c, batch, true)?;
                self.sleep(self.cfg.log_active_interval);
            }
        }
        settle(&mut in_flight, c, batch, true)?;
        Ok(())
    }
}

/// Bytes per batch handed to the writer, and how many batches may be out (received, not
/// yet committed) before the receiver waits: an eighth of the window each, five out plus
/// one arriving (48 MiB of the node's 64 MiB window), so the window stays open while the
/// disk keeps up. Measured here, alternating pulls of 512 MiB in one run: 8 MiB × 5
/// pulled 1,256–1,280 MB/s (mean of 8), 16 MiB × 2 pulled 1,120 (the receiver sat
/// waiting for a commit while the disk had work: 35 % of its time), 8 MiB × 7 1,200 and
/// 4 MiB × 12 1,116 (more, smaller commits, each with its fdatasyncs).
const BATCH: u64 = MAX_WINDOW as u64 / 8;
const IN_FLIGHT: usize = 5;
/// A session's first batch (then 4, 8 MiB); the staging buffers warmed for `BATCH` are
/// kept through these (see [`Staging`]).
const FIRST_BATCH: u64 = 2 << 20;
/// How far past `BATCH` a batch may end: it is cut after the frame that reaches it.
const FRAME_SLACK: usize = BATCH_BYTES;
/// The smallest batch on a full disk: one frame from the node (a batch is never cut
/// below the frame it ends in).
const MIN_BATCH: u64 = 64 << 10;

/// Crash points for tests (`DURAPLANE_MANAGER_FAULT=before_state:N` or
/// `before_checkpoint:N`): the process aborts, as a kill -9 would, at the N-th batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    BeforeState,
    BeforeCheckpoint,
}

fn fault(at: Fault) {
    static PLAN: std::sync::OnceLock<Option<(Fault, u64)>> = std::sync::OnceLock::new();
    static SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let plan = PLAN.get_or_init(|| {
        let v = std::env::var("DURAPLANE_MANAGER_FAULT").ok()?;
        let (what, n) = v.split_once(':')?;
        let f = match what {
            "before_state" => Fault::BeforeState,
            "before_checkpoint" => Fault::BeforeCheckpoint,
            _ => return None,
        };
        Some((f, n.parse().ok()?))
    });
    if let Some((f, n)) = plan
        && *f == at
        && SEEN.fetch_add(1, Ordering::Relaxed) + 1 >= *n
    {
        eprintln!("duraplane manager: injected crash ({at:?})");
        std::process::abort();
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Client(#[from] LogClientError),
    #[error(transparent)]
    Manager(#[from] ManagerError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_momentum_macros() {
        // 2026-11-25 14:05:09 UTC
        let t = 1_795_615_509;
        assert_eq!(
            expand(
                "/v/%Y/%m/%d/%{l}/%{s}/%{n}.%H%M%S.%j%%",
                "mainlog",
                "n1",
                "default",
                t
            ),
            "/v/2026/11/25/mainlog/default/n1.140509.329%"
        );
        assert_eq!(expand("%Y-%m-%d", "", "", "", 0), "1970-01-01");
        assert_eq!(
            expand("%Y-%m-%d %j", "", "", "", 951_782_400),
            "2000-02-29 060"
        );
        assert_eq!(
            state_dir("/var/log/eccluster/%Y/x"),
            PathBuf::from("/var/log/eccluster/.duraplane-manager")
        );
    }

    #[test]
    fn state_round_trips() {
        let s = State {
            last: Some(42),
            file: Some("/a b/c".into()),
            len: 7,
        };
        assert_eq!(State::decode(&s.encode()), Some(s));
        assert_eq!(
            State::decode(&State::default().encode()),
            Some(State::default())
        );
        assert_eq!(State::decode("garbage"), None);
    }

    #[test]
    fn state_file_keeps_the_last_whole_slot() {
        let dir = tempfile::tempdir().unwrap();
        // A new state file, saved once (its first slot still empty), loads.
        let fresh = dir.path().join("fresh.state");
        let (mut sf, st) = StateFile::load(&fresh).unwrap();
        assert_eq!(st, State::default());
        let one = State {
            last: Some(1),
            file: None,
            len: 0,
        };
        sf.save(&one).unwrap();
        assert_eq!(StateFile::load(&fresh).unwrap().1, one);
        let p = dir.path().join("n.log.state");
        // The single-text format of earlier versions still loads.
        let old = State {
            last: Some(7),
            file: Some("/o".into()),
            len: 3,
        };
        fs::write(&p, old.encode()).unwrap();
        let (mut sf, st) = StateFile::load(&p).unwrap();
        assert_eq!(st, old);
        let at = |last: u64| State {
            last: Some(last),
            file: Some(dir.path().join("out")),
            len: last * 10,
        };
        for last in [10, 11, 12] {
            sf.save(&at(last)).unwrap();
        }
        drop(sf);
        assert_eq!(StateFile::load(&p).unwrap().1, at(12));
        // A torn write of the newest slot (seq 3: slot 1) leaves the one before it.
        {
            use std::os::unix::fs::FileExt;
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            f.write_all_at(b"garbage", STATE_SLOT + SLOT_HDR as u64 + 5)
                .unwrap();
        }
        let (mut sf, st) = StateFile::load(&p).unwrap();
        assert_eq!(st, at(11));
        // Saving goes on after the slot that survived, overwriting the torn one.
        sf.save(&at(13)).unwrap();
        assert_eq!(StateFile::load(&p).unwrap().1, at(13));
        // Both slots spoiled: refused, never silently reset to "nothing written".
        fs::write(&p, vec![0x44u8; 2 * STATE_SLOT as usize]).unwrap();
        assert!(matches!(
            StateFile::load(&p),
            Err(ManagerError::Invalid { .. })
        ));
    }

    fn frame(recs: &[(Offset, &[u8])]) -> RecordsBuf {
        let recs: Vec<crate::log::Record> = recs
            .iter()
            .map(|(offset, p)| crate::log::Record {
                offset: *offset,
                timestamp_ns: 1,
                payload: p.to_vec(),
            })
            .collect();
        RecordsBuf::parse(crate::log::service::encode_records(&recs)).unwrap()
    }

    /// Stages a batch and writes it at once (the writer's and the flusher's parts in
    /// turn); returns what the committer gets and the bytes written by direct I/O.
    fn append(
        a: &mut Appender,
        frames: &[RecordsBuf],
        switch: &mut dyn FnMut(&State) -> Result<(), ManagerError>,
    ) -> (Pending, u64) {
        let (mut pool, _back) = Pool::new(1);
        let Staged { pending, write } = a.stage(frames, switch, &mut pool).unwrap().unwrap();
        let direct = write.map_or(0, |w| w.flush().1.unwrap());
        (pending, direct)
    }

    /// The consolidation of log `mainlog` of node `n1` into `dir`, with its config and
    /// open-file cache.
    fn open_sink(dir: &Path) -> (Arc<LogsConfig>, Arc<OpenFiles>, Sink) {
        let c = Arc::new(cfg(dir));
        let files = Arc::new(OpenFiles::new(8, Duration::from_secs(3600)));
        let sink = Sink::open(c.clone(), files.clone(), "n1", "mainlog").unwrap();
        (c, files, sink)
    }

    #[test]
    fn appended_batches_are_lines_once_and_committed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (c, files, mut sink) = open_sink(dir.path());
        let mut switch = |_: &State| Ok(());
        // Two frames in one batch; a record without a newline gets one.
        let (a, _) = append(
            &mut sink.appender,
            &[frame(&[(0, b"a\n"), (40, b"b")]), frame(&[(80, b"c\n")])],
            &mut switch,
        );
        // Appended again (a redelivery overlapping what is written): only 120 is new.
        let (b, _) = append(
            &mut sink.appender,
            &[frame(&[(40, b"b"), (80, b"c\n"), (120, b"d")])],
            &mut switch,
        );
        let out = dir.path().join("mainlog/n1");
        assert_eq!(fs::read_to_string(&out).unwrap(), "a\nb\nc\nd\n");
        assert_eq!(commit(&mut sink.state, vec![a]).unwrap(), 80);
        // Committed only up to the first batch: a restart cuts the second and
        // fetches it again.
        drop(sink);
        files.sweep();
        let sink = Sink::open(
            c.clone(),
            Arc::new(OpenFiles::new(8, Duration::ZERO)),
            "n1",
            "mainlog",
        )
        .unwrap();
        assert_eq!(fs::read_to_string(&out).unwrap(), "a\nb\nc\n");
        assert_eq!(sink.appender.st.last, Some(80));
        drop(b);
        let mut sink = sink;
        let (p, _) = append(
            &mut sink.appender,
            &[frame(&[(80, b"c\n"), (120, b"d")])],
            &mut switch,
        );
        assert_eq!(commit(&mut sink.state, vec![p]).unwrap(), 120);
        assert_eq!(fs::read_to_string(&out).unwrap(), "a\nb\nc\nd\n");
        assert_eq!(StateFile::load(&sink.state.path).unwrap().1.last, Some(120));
    }

    /// Batches that queued behind a slow commit are committed as one: the state is the
    /// last batch's, and a restart keeps every one of them.
    #[test]
    fn queued_batches_commit_together_as_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let (c, files, mut sink) = open_sink(dir.path());
        let mut switch = |_: &State| Ok(());
        let (a, _) = append(&mut sink.appender, &[frame(&[(0, b"a\n")])], &mut switch);
        let (b, _) = append(&mut sink.appender, &[frame(&[(40, b"b\n")])], &mut switch);
        assert_eq!(commit(&mut sink.state, vec![a, b]).unwrap(), 40);
        drop(sink);
        files.sweep();
        let sink = Sink::open(
            c,
            Arc::new(OpenFiles::new(8, Duration::ZERO)),
            "n1",
            "mainlog",
        )
        .unwrap();
        assert_eq!(sink.appender.st.last, Some(40));
        let out = dir.path().join("mainlog/n1");
        assert_eq!(fs::read_to_string(out).unwrap(), "a\nb\n");
    }

    /// Ahead of a backlog the file is created and made the committed state's file before
    /// any record arrives; the first batch then needs no switch of its own.
    #[test]
    fn a_prepared_file_is_the_committed_state_before_the_first_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, mut sink) = open_sink(dir.path());
        let saved = std::cell::RefCell::new(Vec::new());
        let mut switch = |st: &State| {
            saved.borrow_mut().push(st.clone());
            Ok(())
        };
        sink.appender.prepare(&mut switch).unwrap();
        let out = dir.path().join("mainlog/n1");
        let first = State {
            last: None,
            file: Some(out.clone()),
            len: 0,
        };
        assert_eq!(*saved.borrow(), std::slice::from_ref(&first));
        assert_eq!(fs::metadata(&out).unwrap().len(), 0);
        let (p, _) = append(&mut sink.appender, &[frame(&[(0, b"a\n")])], &mut switch);
        assert_eq!(*saved.borrow(), [first]);
        assert_eq!(commit(&mut sink.state, vec![p]).unwrap(), 0);
        assert_eq!(fs::read_to_string(out).unwrap(), "a\n");
    }

    /// A buffer warmed for a full batch stays through a session's small first batches
    /// and a few more, and is cut to size once small batches go on (a trickle).
    #[test]
    fn a_staging_buffer_shrinks_only_after_several_small_batches() {
        let mut s = Staging::default();
        s.get(BATCH as usize + FRAME_SLACK);
        let (big, at) = (s.mem.len(), s.mem.as_ptr());
        for i in 0..Staging::SHRINK_AFTER {
            s.get(FIRST_BATCH as usize / 2);
            assert_eq!((s.mem.len(), s.mem.as_ptr()), (big, at), "small batch {i}");
        }
        s.get(FIRST_BATCH as usize / 2);
        assert!(
            s.mem.len() < big / 4,
            "still {} bytes for 1 MiB",
            s.mem.len()
        );
        // A large batch between small ones starts the count again.
        let mut s = Staging::default();
        s.get(BATCH as usize);
        let big = s.mem.len();
        for _ in 0..3 {
            for _ in 0..Staging::SHRINK_AFTER {
                s.get(4096);
            }
            s.get(BATCH as usize);
        }
        assert_eq!(s.mem.len(), big);
    }

    /// Log rotation by moving the consolidated file away (logrotate without
    /// `copytruncate`): the next batch goes to a new file at the path, not through the
    /// cached handle into the moved one; and a crash before that batch commits cuts it
    /// from the new file, so it is not there twice once fetched again.
    #[test]
    fn a_file_moved_away_is_followed_by_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(cfg(dir.path()));
        let files = Arc::new(OpenFiles::new(8, Duration::from_secs(3600)));
        let out = dir.path().join("mainlog/n1");
        let rotated = dir.path().join("mainlog/n1.1");
        let mut sink = Sink::open(c.clone(), files.clone(), "n1", "mainlog").unwrap();
        {
            let Sink { appender, state } = &mut sink;
            // The committer saves a switch before the batch is written; so here.
            let state = std::cell::RefCell::new(state);
            let mut switch = |st: &State| state.borrow_mut().save(st);
            let (p, _) = append(appender, &[frame(&[(0, b"a\n"), (40, b"b")])], &mut switch);
            assert_eq!(commit(&mut state.borrow_mut(), vec![p]).unwrap(), 40);
            fs::rename(&out, &rotated).unwrap();
            let (p, _) = append(appender, &[frame(&[(80, b"c\n")])], &mut switch);
            assert_eq!(fs::read_to_string(&rotated).unwrap(), "a\nb\n");
            assert_eq!(fs::read_to_string(&out).unwrap(), "c\n");
            // Crash: the batch is written, never committed.
            drop(p);
        }
        drop(sink);
        files.sweep();
        let files = Arc::new(OpenFiles::new(8, Duration::from_secs(3600)));
        let mut sink = Sink::open(c.clone(), files.clone(), "n1", "mainlog").unwrap();
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            "",
            "uncommitted batch cut"
        );
        let Sink { appender, state } = &mut sink;
        let state = std::cell::RefCell::new(state);
        let mut switch = |st: &State| state.borrow_mut().save(st);
        let (p, _) = append(
            appender,
            &[frame(&[(80, b"c\n"), (120, b"d")])],
            &mut switch,
        );
        assert_eq!(commit(&mut state.borrow_mut(), vec![p]).unwrap(), 120);
        assert_eq!(fs::read_to_string(&out).unwrap(), "c\nd\n");
        assert_eq!(fs::read_to_string(&rotated).unwrap(), "a\nb\n");
    }

    /// Batches that start and end anywhere within blocks, with records smaller and larger
    /// than a block: whole blocks go by direct I/O, the file holds exactly the lines in
    /// order after every batch, also across a reopen (the partial block read from disk).
    /// As in a session, each batch is staged while the previous one is still unwritten,
    /// so its start comes from the carried partial block, not from the file.
    #[test]
    fn direct_writes_keep_the_file_exact_at_every_block_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(cfg(dir.path()));
        assert!(private_files(&c.logfile));
        let probe = dir.path().join("probe");
        fs::write(&probe, b"").unwrap();
        let direct_here = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
            .is_ok();
        let out = dir.path().join("mainlog/n1");
        let mut want = Vec::new();
        let mut off: Offset = 0;
        let mut switch = |_: &State| Ok(());
        // The third batch spans more than one direct write (`DIRECT_CHUNK`).
        let sizes: [&[usize]; 8] = [
            &[1, 4094],
            &[4096, 4097, 3],
            &[5_000_000, 3_000_001, 17],
            &[4095, 4097],
            &[10_000, 70_000, 5],
            &[2],
            &[8191, 8192, 8193],
            &[4095],
        ];
        for round in 0..2 {
            let files = Arc::new(OpenFiles::new(8, Duration::from_secs(3600)));
            let mut sink = Sink::open(c.clone(), files.clone(), "n1", "mainlog").unwrap();
            let (mut pool, back) = Pool::new(2);
            let mut direct_bytes = 0;
            // The staged batch not yet written, and the file as it must be once it is.
            let mut unwritten: Option<(Staged, usize)> = None;
            let mut write = |s: Staged, upto: usize, want: &[u8], state: &mut StateFile| {
                let Staged { pending, write } = s;
                if let Some(w) = write {
                    let (buf, r) = w.flush();
                    direct_bytes += r.unwrap();
                    back.send(buf).unwrap();
                }
                let last = pending.last;
                assert_eq!(commit(state, vec![pending]).unwrap(), last);
                let got = fs::read(&out).unwrap();
                assert!(
                    got == want[..upto],
                    "round {round}: {} bytes, want {}",
                    got.len(),
                    upto
                );
            };
            for (i, batch) in sizes.iter().enumerate() {
                let recs: Vec<Vec<u8>> = batch
                    .iter()
                    .map(|&n| {
                        let mut r: Vec<u8> = (0..n)
                            .map(|k| b'a' + ((k + i + round) % 26) as u8)
                            .collect();
                        // Every other record brings its own newline.
                        if n % 2 == 0 {
                            r[n - 1] = b'\n';
                        }
                        r
                    })
                    .collect();
                let with_off: Vec<(Offset, &[u8])> = recs
                    .iter()
                    .map(|r| {
                        off += 32 + r.len() as u64;
                        (off, r.as_slice())
                    })
                    .collect();
                for (_, r) in &with_off {
                    want.extend_from_slice(r);
                    if !r.ends_with(b"\n") {
                        want.push(b'\n');
                    }
                }
                let staged = sink
                    .appender
                    .stage(&[frame(&with_off)], &mut switch, &mut pool)
                    .unwrap()
                    .unwrap();
                if let Some((s, upto)) = unwritten.replace((staged, want.len())) {
                    write(s, upto, &want, &mut sink.state);
                }
            }
            if let Some((s, upto)) = unwritten.take() {
                write(s, upto, &want, &mut sink.state);
            }
            if direct_here {
                assert!(direct_bytes > 0, "the direct path was not taken");
            }
        }
    }

    #[test]
    fn reads_the_logs_scope() {
        let text = br#"
Logs {
  logfile = "/x/%{l}/%{n}"
  file_mode = "0600"
  dir_mode = "0750"
  log_active_interval = "250ms"
  log_idle_interval = "2"
  Max_Open = "3"
  max_idle = "250ms"
  Manager "eastmgr" {
    Node "west1" { Subscriber = () }
    Node "east1" { Subscriber = ("a", "b") }
  }
}
duraplane { cluster_key_file = "/k" }
"#;
        let p = Path::new("/t.conf");
        let (tree, d) = crate::config::parser::parse_bytes(text, p);
        assert!(d.is_empty(), "{d:?}");
        let c = logs_config(&tree, p).unwrap();
        assert_eq!((c.file_mode, c.dir_mode), (0o600, 0o750));
        assert_eq!(c.log_active_interval, Duration::from_millis(250));
        assert_eq!(c.log_idle_interval, Duration::from_secs(2));
        assert_eq!((c.max_open, c.max_idle), (3, Duration::from_millis(250)));
        assert_eq!(c.cluster_key_file, Some(PathBuf::from("/k")));
        assert!(c.subscribers("eastmgr", "west1").is_empty());
        assert_eq!(c.subscribers("eastmgr", "east1"), vec!["a", "b"]);
        assert_eq!(c.subscribers("eastmgr", "east2"), vec!["eastmgr", "master"]);
        assert_eq!(c.subscribers("westmgr", "west1"), vec!["westmgr", "master"]);
    }

    /// Whether this process has a descriptor open on `path` (what `ls -l /proc/PID/fd`
    /// shows an operator).
    fn fd_open(path: &Path) -> bool {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .any(|e| fs::read_link(e.path()).is_ok_and(|t| t == path))
    }

    fn cfg(dir: &Path) -> LogsConfig {
        let mut c = logs_config(
            &crate::config::parser::parse_bytes(b"Logs { }", Path::new("/t")).0,
            Path::new("/t"),
        )
        .unwrap();
        c.logfile = format!("{}/%{{l}}/%{{n}}", dir.display());
        c
    }

    #[test]
    fn max_open_closes_the_least_recently_written_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let files = OpenFiles::new(2, Duration::from_secs(3600));
        assert_eq!(files.sweep(), 0);
        let p: Vec<PathBuf> = (0..3)
            .map(|i| dir.path().join(format!("log/n{i}")))
            .collect();
        for path in [&p[0], &p[1], &p[0], &p[2]] {
            let mut f = files.take(path, &c, false).unwrap();
            f.file.write_all(b"x\n").unwrap();
            files.put(path.clone(), f);
        }
        // n1 was written least recently when n2 opened.
        assert_eq!(files.open_paths(), vec![p[0].clone(), p[2].clone()]);
        assert!(fd_open(&p[0]) && fd_open(&p[2]));
        assert!(!fd_open(&p[1]), "n1 is still open");
        // Reopened on demand, appending after what was there.
        let mut f = files.take(&p[1], &c, false).unwrap();
        f.file.write_all(b"y\n").unwrap();
        files.put(p[1].clone(), f);
        assert_eq!(fs::read_to_string(&p[1]).unwrap(), "x\ny\n");
        assert_eq!(files.open_paths().len(), 2);
        assert_eq!(files.sweep(), 0, "nothing is idle for an hour");
        assert_eq!(
            fs::metadata(&p[1]).unwrap().permissions().mode() & 0o777,
            c.file_mode
        );
    }

    #[test]
    fn max_idle_closes_files_without_new_records() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let files = OpenFiles::new(128, Duration::from_millis(50));
        let a = dir.path().join("log/a");
        let f = files.take(&a, &c, true).unwrap();
        files.put(a.clone(), f);
        assert!(fd_open(&a));
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(files.sweep(), 1);
        assert!(files.open_paths().is_empty());
        assert!(!fd_open(&a), "idle file still open");
    }

    #[test]
    fn the_example_manager_config_loads() {
        let p =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster-3node/eccluster.conf");
        let c = load(&p).unwrap();
        assert_eq!(c.logfile, "/var/log/eccluster/%Y/%m/%d/%{l}/%{s}/%{n}");
        assert_eq!((c.file_mode, c.dir_mode), (0o640, 0o755));
        assert_eq!((c.max_open, c.max_idle), (128, Duration::from_secs(10)));
        assert_eq!(
            c.cluster_key_file,
            Some(PathBuf::from("/etc/duraplane/cluster.key"))
        );
        assert_eq!(c.subscribers("mgr", "node1"), vec!["mgr", "master"]);
    }
}
