//! What the benchmarks read from the OS: CPU time, peak RSS, bytes written, and the
//! machine's CPUs; plus latency samples and their summary.

use std::time::Duration;

use anyhow::{Context, Result, bail};

/// User + system CPU time of this whole process so far (`getrusage(RUSAGE_SELF)`).
pub fn self_cpu() -> Duration {
    // SAFETY: all-zero is a valid `rusage` (plain integers).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage` for the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
}

/// User + system CPU time of process `pid`, from `/proc/<pid>/stat` (fields 14 and 15,
/// in clock ticks).
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces; fields after it follow the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        bail!("{path} has no command name");
    };
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> Result<u64> {
        fields
            .get(index - 3)
            .and_then(|field| field.parse().ok())
            .with_context(|| format!("{path}: field {index} is not a number"))
    };
    let total = ticks(14)? + ticks(15)?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Ok(Duration::from_secs_f64(total as f64 / hz as f64))
}

/// Peak resident set size of `pid` in bytes (`VmHWM` in `/proc/<pid>/status`).
pub fn peak_rss(pid: u32) -> Option<u64> {
    proc_field(&format!("/proc/{pid}/status"), "VmHWM:").map(|kib| kib * 1024)
}

/// Bytes `pid` (or this process) caused to be written to storage so far
/// (`write_bytes` in `/proc/<pid>/io`; counted when pages are dirtied).
pub fn storage_writes(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/io"),
        None => "/proc/self/io".to_string(),
    };
    proc_field(&path, "write_bytes:")
}

/// The first number after `key` in a `/proc` file of `key value [unit]` lines.
fn proc_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

/// `N CPUs (model)`, from the scheduler and `/proc/cpuinfo`.
pub fn cpu_summary() -> String {
    let count = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown model".to_string());
    format!("{count} CPUs ({model})")
}

/// Durations of repeated operations.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    sorted: Vec<Duration>,
}

impl Samples {
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self { sorted: samples }
    }

    pub fn mean(&self) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        self.sorted.iter().sum::<Duration>() / self.sorted.len() as u32
    }

    /// The nearest-rank percentile, `p` in 0..=100.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p / 100.0 * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    pub fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples = Samples::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(samples.percentile(50.0), Duration::from_millis(50));
        assert_eq!(samples.percentile(99.0), Duration::from_millis(99));
        assert_eq!(samples.max(), Duration::from_millis(100));
        assert_eq!(samples.mean(), Duration::from_micros(50_500));
    }

    #[test]
    fn this_process_is_readable() {
        assert!(process_cpu(std::process::id()).is_ok());
        assert!(peak_rss(std::process::id()).is_some_and(|rss| rss > 0));
    }
}
