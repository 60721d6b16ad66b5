//! Durable node-local `cluster://` log streams (Momentum's jlog, redone with checksummed
//! frames, group commit and honest recovery). Format and guarantees: `docs/logs.md`.
//!
//! A [`Stream`] is a directory of preallocated segments named by their first offset, a
//! `metadata` file and one two-slot checkpoint file per subscriber. Appends return only
//! after fdatasync; a failed write or fdatasync poisons the stream for good.

pub mod daemon;
mod error;
mod files;
pub mod frame;
pub mod manager;
mod ops;
pub mod service;
mod stream;
mod uring;

pub use error::{LogError, Result};
pub use files::{SEGMENT_HEADER_LEN, checkpoint_name, segment_name};
pub use ops::{Problem, RepairReport, VerifyReport, render_show_logs, repair, verify};
pub use stream::{
    AppendStats, AppendTicket, DEFAULT_SEGMENT_SIZE, DiskPolicy, Entry, EntryRef, JlogPosition,
    Lag, Offset, Reader, Record, StartAt, Stream, StreamOptions, StreamSummary, SubscriberInfo,
    valid_subscriber_name,
};
pub use uring::{LOG_IO_ENV, LogIo};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<Stream>();
        is::<LogError>();
    }

    #[test]
    fn show_logs_matches_momentum() {
        let s = StreamSummary {
            path: "/x".into(),
            data_bytes: 1604005,
            allocated_bytes: 0,
            start: 0,
            end: 1604005,
            segments: 1,
            segment_size: DEFAULT_SEGMENT_SIZE,
            subscribers: vec![SubscriberInfo {
                name: "master".into(),
                next: 0xa43a,
                position: JlogPosition {
                    log: 0,
                    marker: 0xa43a,
                },
                lag_bytes: 0,
            }],
            disk_full: false,
            poisoned: None,
        };
        let out = render_show_logs([("mainlog", Some(&s)), ("bouncealllog", None)]);
        assert_eq!(
            out,
            "mainlog\n\t[on disk: 1604005 bytes]\n\t[subscriber: 'master' @ 00000000:0000a43a]\nbouncealllog\n\t[on disk: 0 bytes]\n"
        );
    }

    #[test]
    fn checkpoint_names_are_hex_like_jlog() {
        assert_eq!(checkpoint_name("master"), "cp.6d6173746572");
        assert_eq!(
            files::parse_checkpoint_name("cp.6d6173746572").as_deref(),
            Some("master")
        );
        assert_eq!(segment_name(0x1234), "0000000000001234.seg");
    }
}
