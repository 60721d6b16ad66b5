//! Running an XDP program on a frame with `BPF_PROG_TEST_RUN`: verdict tests, benches
//! (the kernel reports the mean duration per run) and the daemon's flow expiry.

use std::time::Duration;

use aya::{
    TestRun, TestRunAttrs, TestRunOptions,
    programs::{ProgramError, SchedClassifier, Xdp},
};

use super::BpfError;

/// The kernel's minimum `data_size_in` for XDP test runs (an Ethernet header).
const ETH_HLEN: usize = 14;
/// The kernel accepts at most 32 bytes of XDP metadata, in 4-byte units.
const MAX_META: usize = 32;

/// What the program returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    /// A value outside `enum xdp_action`.
    Other(u32),
}

impl From<u32> for Verdict {
    fn from(v: u32) -> Self {
        match v {
            0 => Verdict::Aborted,
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            3 => Verdict::Tx,
            4 => Verdict::Redirect,
            v => Verdict::Other(v),
        }
    }
}

/// Result of one `BPF_PROG_TEST_RUN` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    pub verdict: Verdict,
    /// Mean time per repetition as measured by the kernel (ns resolution).
    pub duration: Duration,
}

/// Runs `prog` on `frame` `repeat` times (≥ 1; the map side effects happen every time).
///
/// The kernel refuses frames shorter than an Ethernet header (14 bytes), with or without
/// XDP metadata in front (checked on 6.18), and drivers never hand XDP such runts; those
/// lengths give [`BpfError::TestRunFrame`] without a syscall. That the program survives
/// them anyway is the verifier's guarantee: every packet access is bounds-checked.
pub fn run_xdp(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<RunOutcome, BpfError> {
    run_xdp_with_meta(prog, &[], frame, repeat)
}

/// Runs `prog` on `frame` with `meta` as XDP metadata (`data_meta..data`); `meta.len()`
/// must be a multiple of 4 and at most 32, and `frame` at least 14 bytes (kernel limits).
pub fn run_xdp_with_meta(
    prog: &Xdp,
    meta: &[u8],
    frame: &[u8],
    repeat: u32,
) -> Result<RunOutcome, BpfError> {
    if !meta.len().is_multiple_of(4) || meta.len() > MAX_META || frame.len() < ETH_HLEN {
        return Err(BpfError::TestRunFrame {
            frame_len: frame.len(),
            meta_len: meta.len(),
        });
    }
    let mut data = Vec::with_capacity(meta.len() + frame.len());
    data.extend_from_slice(meta);
    data.extend_from_slice(frame);
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex }: offsets relative to the start of data_in.
    let mut ctx = [0u8; 24];
    ctx[0..4].copy_from_slice(&(meta.len() as u32).to_ne_bytes());
    ctx[4..8].copy_from_slice(&(data.len() as u32).to_ne_bytes());
    let opts = TestRunOptions {
        data_in: Some(&data),
        ctx_in: if meta.is_empty() { None } else { Some(&ctx) },
        repeat: repeat.max(1),
        ..TestRunOptions::default()
    };
    let r = prog
        .test_run(opts)
        .map_err(|source: ProgramError| BpfError::TestRun {
            frame_len: frame.len(),
            source: Box::new(source),
        })?;
    Ok(RunOutcome {
        verdict: r.return_value.into(),
        duration: r.duration,
    })
}

/// Runs `prog` once on `frame` and returns the verdict with the frame as the program left
/// it (rewritten, grown or trimmed), e.g. the ARP reply or NA `xdp_ingress` transmits.
pub fn run_xdp_output(prog: &Xdp, frame: &[u8]) -> Result<(Verdict, Vec<u8>), BpfError> {
    if frame.len() < ETH_HLEN {
        return Err(BpfError::TestRunFrame {
            frame_len: frame.len(),
            meta_len: 0,
        });
    }
    // Room for growth by bpf_xdp_adjust_tail.
    let mut out = vec![0u8; frame.len() + 512];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: 1,
        ..TestRunOptions::default()
    };
    let r = prog
        .test_run(opts)
        .map_err(|source: ProgramError| BpfError::TestRun {
            frame_len: frame.len(),
            source: Box::new(source),
        })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value.into(), out))
}

/// Runs `prog` on `repeat` copies of `frame` as if received on `ifindex` (in the calling
/// thread's network namespace) with `BPF_F_TEST_XDP_LIVE_FRAMES` (kernel ≥ 5.18): what the
/// program returns `XDP_TX` for is really transmitted out of `ifindex`.
pub fn run_xdp_live(
    prog: &Xdp,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> Result<(), ProgramError> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let opts = TestRunOptions {
        data_in: Some(frame),
        ctx_in: Some(&ctx),
        repeat: repeat.max(1),
        attrs: TestRunAttrs::new().xdp_live_frames(0),
        ..TestRunOptions::default()
    };
    prog.test_run(opts).map(|_| ())
}

/// Runs a TC classifier on `frame` (from its Ethernet header) once; returns its `TC_ACT_*`.
pub fn run_tc(prog: &SchedClassifier, frame: &[u8]) -> Result<i32, BpfError> {
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat: 1,
        ..TestRunOptions::default()
    };
    let r = prog
        .test_run(opts)
        .map_err(|source: ProgramError| BpfError::TestRun {
            frame_len: frame.len(),
            source: Box::new(source),
        })?;
    Ok(r.return_value as i32)
}
