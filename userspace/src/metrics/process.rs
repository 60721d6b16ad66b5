//! The standard Prometheus `process_*` metrics, read from /proc/self at scrape time.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};
use std::fs;

/// Reads /proc/self/{stat,fd} and /proc/stat on each scrape; a value that cannot be read
/// is left out rather than reported wrong.
#[derive(Debug)]
pub struct ProcessCollector {
    clk_tck: f64,
    page_size: f64,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// The fields of /proc/self/stat we export.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStat {
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub threads: u64,
    pub start_ticks: u64,
    pub vsize_bytes: u64,
    pub rss_pages: u64,
}

/// Parses /proc/<pid>/stat (the command name may contain spaces and parentheses, so fields
/// are counted from the last `)`).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state) of proc(5).
    let get = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        utime_ticks: get(14)?,
        stime_ticks: get(15)?,
        threads: get(20)?,
        start_ticks: get(22)?,
        vsize_bytes: get(23)?,
        rss_pages: get(24)?,
    })
}

fn boot_time() -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn sysconf(var: nix::unistd::SysconfVar, fallback: f64) -> f64 {
    match nix::unistd::sysconf(var) {
        Ok(Some(v)) if v > 0 => v as f64,
        _ => fallback,
    }
}

impl ProcessCollector {
    pub fn new() -> Self {
        Self {
            clk_tck: sysconf(nix::unistd::SysconfVar::CLK_TCK, 100.0),
            page_size: sysconf(nix::unistd::SysconfVar::PAGE_SIZE, 4096.0),
        }
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let me = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(me)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(st) = fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            let cpu = (st.utime_ticks + st.stime_ticks) as f64 / self.clk_tck;
            let c = ConstCounter::new(cpu);
            let me = enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                c.metric_type(),
            )?;
            c.encode(me)?;
            gauge(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                st.rss_pages as f64 * self.page_size,
            )?;
            gauge(
                &mut enc,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                st.vsize_bytes as f64,
            )?;
            gauge(
                &mut enc,
                "process_threads",
                "Number of OS threads in the process.",
                st.threads as f64,
            )?;
            if let Some(bt) = boot_time() {
                gauge(
                    &mut enc,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    bt as f64 + st.start_ticks as f64 / self.clk_tck,
                )?;
            }
        }
        if let Ok(dir) = fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of the entries.
            let n = dir.count().saturating_sub(1);
            gauge(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors.",
                n as f64,
            )?;
        }
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            gauge(
                &mut enc,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                soft as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0 \
                    4242 10485760 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let st = parse_stat(line).unwrap();
        assert_eq!(
            st,
            ProcStat {
                utime_ticks: 7,
                stime_ticks: 3,
                threads: 5,
                start_ticks: 4242,
                vsize_bytes: 10485760,
                rss_pages: 300
            }
        );
        assert!(parse_stat("garbage").is_none());
    }
}
