//! Offline checks (`verify`), explicit repair, and the `cluster show logs` renderer.

use std::path::{Path, PathBuf};

use super::error::{LogError, Result};
use super::files;
use super::frame::{self, ScanEnd};
use super::stream::{self, Offset, StreamSummary};

/// A problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub offset: Offset,
    pub reason: String,
}

/// Result of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub segments: usize,
    pub frames: u64,
    /// Oldest retained offset and the end of valid data.
    pub start: Offset,
    pub end: Offset,
    /// Corruption: repair would lose data here.
    pub problems: Vec<Problem>,
    /// A torn tail of the active segment (never acknowledged; cut on the next open).
    pub torn_tail: Option<Problem>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every frame of every segment (sealed ones included) without modifying anything.
/// Run it on a stream no process is writing, or expect the active tail to be in flux.
pub fn verify(dir: impl AsRef<Path>) -> Result<VerifyReport> {
    let dir = dir.as_ref();
    files::read_metadata(dir)?;
    let segs = stream::list_segments(dir, false)?;
    let mut rep = VerifyReport {
        segments: segs.len(),
        start: segs.first().map(|s| s.first).unwrap_or(0),
        ..Default::default()
    };
    for (i, seg) in segs.iter().enumerate() {
        if let Some(next) = segs.get(i + 1) {
            match stream::check_sealed_segment(&seg.path, seg.first, next.first) {
                Ok(n) => rep.frames += n,
                Err(LogError::BadFrame {
                    path,
                    offset,
                    reason,
                }) => rep.problems.push(Problem {
                    path,
                    offset,
                    reason: reason.into(),
                }),
                Err(e) => return Err(e),
            }
            continue;
        }
        let data = stream::read_data(&seg.path)?;
        let s = frame::scan(&data, seg.first);
        rep.frames += s.frames;
        rep.end = seg.first + s.valid_len as u64;
        match s.end {
            ScanEnd::Clean => {}
            ScanEnd::Torn { pos, reason } => {
                rep.torn_tail = Some(Problem {
                    path: seg.path.clone(),
                    offset: seg.first + pos as u64,
                    reason: reason.into(),
                })
            }
            ScanEnd::Damaged { pos, reason, .. } => rep.problems.push(Problem {
                path: seg.path.clone(),
                offset: seg.first + pos as u64,
                reason: reason.into(),
            }),
            ScanEnd::Corrupt {
                pos,
                next_valid,
                reason,
            } => rep.problems.push(Problem {
                path: seg.path.clone(),
                offset: seg.first + pos as u64,
                reason: format!(
                    "{reason}; valid frames follow at offset {}",
                    seg.first + next_valid as u64
                ),
            }),
        }
    }
    for ent in std::fs::read_dir(dir)
        .map_err(|e| LogError::io(dir, "read directory", e))?
        .flatten()
    {
        let name = ent.file_name().to_string_lossy().into_owned();
        if files::parse_checkpoint_name(&name).is_some() {
            match files::read_checkpoint(&ent.path()) {
                Ok(cp) if cp.next.get() > rep.end => rep.problems.push(Problem {
                    path: ent.path(),
                    offset: cp.next.get(),
                    reason: "checkpoint beyond the end of valid data".into(),
                }),
                Ok(_) => {}
                Err(e) => rep.problems.push(Problem {
                    path: ent.path(),
                    offset: 0,
                    reason: e.to_string(),
                }),
            }
        }
    }
    Ok(rep)
}

/// What [`repair`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Damaged spans wrapped in skipped frames: readers report each as a gap and go on;
    /// every record around them stays, at its offset.
    pub skipped: Vec<Skipped>,
    /// Where the log was cut, when damage could not be wrapped (a span shorter than a
    /// frame header): the log now ends there. `None` if nothing was cut.
    pub cut_at: Option<Offset>,
    pub reason: Option<String>,
    /// Frame bytes after the cut that are gone (valid or not).
    pub lost_bytes: u64,
    /// Valid frames found after the cut (lost with it).
    pub lost_frames: u64,
    pub removed_segments: Vec<PathBuf>,
    /// Subscribers whose checkpoint pointed past the new end, moved back to it.
    pub clamped_subscribers: Vec<String>,
}

impl RepairReport {
    /// Whether the log was sound (nothing skipped, nothing cut).
    pub fn nothing_done(&self) -> bool {
        self.skipped.is_empty() && self.cut_at.is_none()
    }
}

/// A damaged span [`repair`] wrapped: the offsets `from..to` of a segment read as a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub from: Offset,
    pub to: Offset,
    pub reason: String,
}

/// Makes the log readable past its damage, explicitly and offline (takes the stream's
/// lock). Each damaged span (a bad frame up to the next valid one, a damaged last frame,
/// missing data in a sealed segment) is wrapped in a valid frame flagged skipped, keeping
/// the damaged bytes as its payload: readers report a gap there and go on, and every
/// record before and after it stays, at its offset (checkpoints stay valid). Only damage
/// too short to hold a frame header is cut, as before: the log then ends there, and what
/// is lost is reported.
pub fn repair(dir: impl AsRef<Path>) -> Result<RepairReport> {
    let dir = dir.as_ref();
    let (_lock, segment_size) = stream::lock_existing(dir)?;
    let mut rep = RepairReport::default();
    'rescan: loop {
        let segs = stream::list_segments(dir, true)?;
        for (i, seg) in segs.iter().enumerate() {
            let data = stream::read_data(&seg.path)?;
            let limit = segs.get(i + 1).map(|n| (n.first - seg.first) as usize);
            let area = &data[..limit.unwrap_or(data.len()).min(data.len())];
            let s = frame::scan(area, seg.first);
            let short = limit.filter(|&l| s.valid_len < l);
            let span = match s.end {
                ScanEnd::Clean => {
                    short.map(|l| (s.valid_len, l, "zeros where sealed data should be"))
                }
                ScanEnd::Torn { reason, .. } => short.map(|l| (s.valid_len, l, reason)),
                ScanEnd::Corrupt {
                    pos,
                    next_valid,
                    reason,
                } => Some((pos, next_valid, reason)),
                ScanEnd::Damaged { pos, len, reason } => Some((pos, pos + len, reason)),
            };
            let Some((from, to, reason)) = span else {
                continue;
            };
            let at = seg.first + from as u64;
            if rep
                .skipped
                .iter()
                .any(|k| k.path == seg.path && k.from == at)
            {
                return Err(LogError::BadFrame {
                    path: seg.path.clone(),
                    offset: at,
                    reason: "still damaged after repair wrapped it",
                });
            }
            if to - from < frame::FRAME_HEADER_LEN {
                cut(dir, &segs, i, from as u64, reason, segment_size, &mut rep)?;
                return Ok(rep);
            }
            let mut bytes = data.get(from..to.min(data.len())).unwrap_or(&[]).to_vec();
            bytes.resize(to - from, 0);
            wrap(&seg.path, seg.first, from, &bytes)?;
            rep.skipped.push(Skipped {
                path: seg.path.clone(),
                from: at,
                to: seg.first + to as u64,
                reason: reason.into(),
            });
            continue 'rescan;
        }
        return Ok(rep);
    }
}

/// Writes `span` (starting `from` bytes into the data area of the segment whose first
/// offset is `first`) back as skipped frames, each at most the largest frame, durably.
fn wrap(path: &Path, first: Offset, from: usize, span: &[u8]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| LogError::io(path, "open", e))?;
    files::mark_skips(path, &f)?;
    let mut pos = 0;
    for n in skip_lengths(span.len(), frame::FRAME_HEADER_LEN + frame::MAX_PAYLOAD) {
        let at = from + pos;
        let bytes = frame::encode_skipped(first + at as u64, &span[pos..pos + n]);
        f.write_all_at(&bytes, files::SEGMENT_HEADER_LEN + at as u64)
            .map_err(|e| LogError::io(path, "write", e))?;
        pos += n;
    }
    f.sync_data()
        .map_err(|e| LogError::io(path, "fdatasync", e))
}

/// How a span of `len` bytes (at least a header) splits into skipped frames of at most
/// `most` bytes, each at least a header long.
fn skip_lengths(len: usize, most: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut rest = len;
    while rest > 0 {
        let mut n = rest.min(most);
        if rest - n > 0 && rest - n < frame::FRAME_HEADER_LEN {
            n -= frame::FRAME_HEADER_LEN;
        }
        v.push(n);
        rest -= n;
    }
    v
}

/// Truncates the log at `valid` bytes into segment `i` (damage too short to wrap),
/// deleting later segments, and reports what is lost.
fn cut(
    dir: &Path,
    segs: &[stream::FoundSegment],
    i: usize,
    valid: u64,
    reason: &str,
    segment_size: u64,
    rep: &mut RepairReport,
) -> Result<()> {
    rep.cut_at = Some(segs[i].first + valid);
    rep.reason = Some(reason.into());
    let new_end = segs[i].first + valid;
    let mut old_end = new_end;
    // Valid frames after the cut, in the cut segment and every later one (each read once).
    for (j, seg) in segs.iter().enumerate().skip(i) {
        let data = stream::read_data(&seg.path)?;
        let (n, end) = loose_frames(
            &data,
            seg.first,
            if j == i { valid as usize + 1 } else { 0 },
        );
        rep.lost_frames += n;
        old_end = old_end.max(seg.first + end as u64);
    }
    rep.lost_bytes = old_end - new_end;
    for seg in segs[i + 1..].iter().rev() {
        std::fs::remove_file(&seg.path).map_err(|e| LogError::io(&seg.path, "remove", e))?;
        rep.removed_segments.push(seg.path.clone());
    }
    stream::cut_segment(&segs[i].path, valid, segment_size)?;
    for ent in std::fs::read_dir(dir)
        .map_err(|e| LogError::io(dir, "read directory", e))?
        .flatten()
    {
        let fname = ent.file_name().to_string_lossy().into_owned();
        let Some(name) = files::parse_checkpoint_name(&fname) else {
            continue;
        };
        if let Ok(cp) = files::read_checkpoint(&ent.path())
            && cp.next.get() > new_end
        {
            files::create_checkpoint(dir, &name, new_end)?;
            rep.clamped_subscribers.push(name);
        }
    }
    files::fsync_dir(dir)
}

/// Valid frames in `data` from `from`, skipping over damage, and the end of the last one
/// (for loss reports only).
fn loose_frames(data: &[u8], base: Offset, from: usize) -> (u64, usize) {
    let (mut n, mut pos, mut end) = (0, from, 0);
    while let Some(q) = frame::find_valid_after(data, base, pos) {
        n += 1;
        let len = u32::from_le_bytes([data[q + 4], data[q + 5], data[q + 6], data[q + 7]]) as usize;
        pos = q + frame::FRAME_HEADER_LEN + len;
        end = pos;
    }
    (n, end)
}

/// Renders `cluster show logs` as Momentum prints it: one block per published log (the
/// `logs` dictionary name), `[on disk: N bytes]` (retained frame bytes) and one line per
/// subscriber with its jlog-style position. A log not open or not on disk shows 0 bytes.
pub fn render_show_logs<'a, I>(logs: I) -> String
where
    I: IntoIterator<Item = (&'a str, Option<&'a StreamSummary>)>,
{
    let mut out = String::new();
    for (name, summary) in logs {
        out.push_str(name);
        out.push('\n');
        match summary {
            None => out.push_str("\t[on disk: 0 bytes]\n"),
            Some(s) => {
                out.push_str(&format!("\t[on disk: {} bytes]\n", s.data_bytes));
                for sub in &s.subscribers {
                    out.push_str(&format!(
                        "\t[subscriber: '{}' @ {}]\n",
                        sub.name, sub.position
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::skip_lengths;

    /// Every piece fits a frame and holds a header; together they cover the span.
    #[test]
    fn skipped_spans_split_into_whole_frames() {
        let most = 100;
        for len in 32..=400 {
            let v = skip_lengths(len, most);
            assert_eq!(v.iter().sum::<usize>(), len, "len {len}: {v:?}");
            assert!(
                v.iter().all(|&n| (32..=most).contains(&n)),
                "len {len}: {v:?}"
            );
        }
        assert_eq!(skip_lengths(100, 100), [100]);
        assert_eq!(skip_lengths(110, 100), [68, 42]);
    }
}
