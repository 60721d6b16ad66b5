//! What `dp-logctl LOG tail` (a stream on this host) and `dp-logsub tail` (a node's log over
//! the network) share: their options and the lines they print, so a script can switch
//! between the two.

use std::io::{self, Write};

/// Options of a subscriber's tail.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// The subscriber whose checkpoint the records follow (it must exist).
    #[arg(short, long)]
    pub subscriber: String,
    /// Keep waiting for new records.
    #[arg(short, long)]
    pub follow: bool,
    /// Checkpoint what was printed, durably, so the subscriber consumes it (without it the
    /// next run prints the same records again).
    #[arg(long)]
    pub checkpoint: bool,
    /// Stop after this many records.
    #[arg(short = 'n', long)]
    pub max: Option<u64>,
}

impl TailArgs {
    /// True once `printed` records reach `--max`.
    pub fn done(&self, printed: u64) -> bool {
        self.max.is_some_and(|m| printed >= m)
    }
}

/// One record: `offset<TAB>timestamp_ns<TAB>text`, a trailing newline of the payload
/// dropped (one line per record).
pub fn write_record(
    out: &mut impl Write,
    offset: u64,
    ts_ns: u64,
    payload: &[u8],
) -> io::Result<()> {
    let text = String::from_utf8_lossy(payload);
    writeln!(
        out,
        "{offset}\t{ts_ns}\t{}",
        text.strip_suffix('\n').unwrap_or(&text)
    )
}

/// Offsets no reader can return: dropped by the `drop_oldest` disk policy, or damage `repair` skipped.
pub fn write_gap(out: &mut impl Write, from: u64, to: u64) -> io::Result<()> {
    writeln!(
        out,
        "# gap: offsets {from}..{to} not readable (dropped by the drop_oldest disk policy, or damage skipped by dp-logctl repair)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_record() {
        let mut v = Vec::new();
        write_record(&mut v, 42, 7, b"hello\n").unwrap();
        write_record(&mut v, 43, 8, b"no newline").unwrap();
        write_gap(&mut v, 1, 2).unwrap();
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "42\t7\thello\n43\t8\tno newline\n# gap: offsets 1..2 not readable (dropped by the drop_oldest disk policy, or damage skipped by dp-logctl repair)\n"
        );
    }
}
