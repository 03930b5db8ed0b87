//! Scenario `agent`: `logferry_agent::Agent` streaming to a real `logferry serve`
//! process over TLS, with zstd and fsync on both sides, until every seq is acked.
//!
//! The clock starts once the agent has its session (connecting is not counted) and
//! stops when the spool's acked cursor reaches the last seq flushed. Flushing runs
//! on this thread at the same time, as Fluent Bit's engine would. CPU time: this
//! process by `getrusage(RUSAGE_SELF)` (flushing + the agent's sender threads), the
//! backend by `/proc/<pid>/stat` (ingest + buffer, and its router, which decodes the
//! same batches and writes every record to the file sink meanwhile).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use logferry_agent::{Agent, AgentConfig, AgentHooks, AgentStats, FlushOutcome};

use crate::backend::Backend;
use crate::fixture::BenchChunk;
use crate::measure;
use crate::report::{self, MB, Table};

/// How long the agent may take to open its first session.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct EndToEnd {
    /// Whether the tenant sealed its batches (HPKE) or relied on TLS alone.
    pub sealed: bool,
    /// `Some(partitions)`: Kafka mode (ingest -> broker -> route); backend CPU then
    /// covers the three processes.
    pub kafka: Option<u32>,
    /// Kafka mode: `logferry route --consumers`.
    pub route_consumers: usize,
    pub chunk_len: usize,
    /// Batches in flight on the agent's stream.
    pub window: usize,
    pub chunks: u64,
    pub raw_bytes: u64,
    pub records: u64,
    /// From the first flush until the last flush returned.
    pub flushed: Duration,
    /// From the first flush until every seq was acked.
    pub acked: Duration,
    /// From the first flush until the file sink held every record (`None`: not
    /// waited for, or not reached in time).
    pub routed: Option<Duration>,
    pub routed_lines: u64,
    pub router_wait: Duration,
    pub agent_cpu: Duration,
    pub backend_cpu_acked: Duration,
    pub backend_cpu_routed: Option<Duration>,
    pub backend_peak_rss: Option<u64>,
    /// Bytes the backend caused to be written to storage while acking.
    pub backend_writes_acked: Option<u64>,
    /// Bytes this process (the spool) caused to be written to storage while acking.
    pub agent_writes: Option<u64>,
    pub full_retries: u64,
    pub duplicates: u64,
    pub stats: AgentStats,
}

impl EndToEnd {
    pub fn ack_mb_per_s(&self) -> f64 {
        report::mb_per_s(self.raw_bytes, self.acked)
    }

    /// Bytes per second the backend wrote to storage while acking.
    pub fn backend_write_mb_per_s(&self) -> Option<f64> {
        self.backend_writes_acked
            .map(|bytes| report::mb_per_s(bytes, self.acked))
    }

    pub fn print(&self) {
        let path = match self.kafka {
            None => "`logferry serve` process (backend buffer fsync on)".to_string(),
            Some(partitions) => format!(
                "`logferry ingest` -> tansu (Kafka protocol, SQLite storage, {partitions} \
                 partitions) -> `logferry route --consumers {}`; backend CPU is the three \
                 processes",
                self.route_consumers
            ),
        };
        println!(
            "2. Agent -> backend: logferry_agent::Agent -> {path} (TLS, zstd, {}, \
             buffer.sync on)",
            if self.sealed {
                "HPKE-sealed batches"
            } else {
                "no payload encryption"
            }
        );
        println!(
            "   {} chunks of {} ({} records each), flushed back to back; batch.max_bytes \
             4M = one chunk per batch, window {}",
            self.chunks,
            report::bytes(self.chunk_len as u64),
            self.records / self.chunks.max(1),
            self.window
        );
        let secs = self.acked.as_secs_f64();
        let mut table = Table::new(&["figure", "value"]).left_aligned();
        let mut row = |name: &str, value: String| table.row(vec![name.to_string(), value]);
        row(
            "raw chunk bytes acked",
            format!(
                "{} in {}",
                report::bytes(self.raw_bytes),
                report::duration(self.acked)
            ),
        );
        row(
            "ack throughput (raw bytes)",
            report::rate(self.ack_mb_per_s()),
        );
        row(
            "records/s (acked)",
            format!("{:.0}", self.records as f64 / secs.max(1e-9)),
        );
        row(
            "flush side (spool append, sync on)",
            format!(
                "{} ({} in {})",
                report::rate(report::mb_per_s(self.raw_bytes, self.flushed)),
                report::bytes(self.raw_bytes),
                report::duration(self.flushed)
            ),
        );
        row(
            "on the wire (zstd)",
            format!(
                "{} ({:.1}% of raw, {} batches)",
                report::bytes(self.stats.wire_bytes_sent),
                100.0 * self.stats.wire_bytes_sent as f64 / self.stats.raw_bytes_sent.max(1) as f64,
                self.stats.batches_sent
            ),
        );
        row(
            "mean ack latency",
            report::duration(self.stats.mean_ack_latency),
        );
        row(
            "agent CPU (flush + sender)",
            format!(
                "{:.2} s = {}",
                self.agent_cpu.as_secs_f64(),
                report::cpu_per_gb(self.agent_cpu, self.raw_bytes)
            ),
        );
        row(
            "backend CPU until acked",
            format!(
                "{:.2} s = {} (incl. router work done meanwhile)",
                self.backend_cpu_acked.as_secs_f64(),
                report::cpu_per_gb(self.backend_cpu_acked, self.raw_bytes)
            ),
        );
        if let Some(cpu) = self.backend_cpu_routed {
            row(
                "backend CPU until routed",
                format!(
                    "{:.2} s = {}",
                    cpu.as_secs_f64(),
                    report::cpu_per_gb(cpu, self.raw_bytes)
                ),
            );
        }
        row(
            "backend peak RSS (VmHWM)",
            self.backend_peak_rss
                .map_or_else(|| "n/a".to_string(), report::bytes),
        );
        if let Some(bytes) = self.agent_writes {
            row(
                "agent storage writes (spool)",
                format!(
                    "{} = {}",
                    report::bytes(bytes),
                    report::rate(report::mb_per_s(bytes, self.acked))
                ),
            );
        }
        if let Some(bytes) = self.backend_writes_acked {
            row(
                "backend storage writes until acked",
                format!(
                    "{} = {} (buffer + file sink + checkpoints)",
                    report::bytes(bytes),
                    report::rate(report::mb_per_s(bytes, self.acked))
                ),
            );
        }
        let expected = self.records;
        row(
            "router file sink",
            match self.routed {
                Some(routed) => format!(
                    "all {expected} records after {} ({:.0} records/s, {} raw)",
                    report::duration(routed),
                    expected as f64 / routed.as_secs_f64().max(1e-9),
                    report::rate(report::mb_per_s(self.raw_bytes, routed))
                ),
                None if self.router_wait.is_zero() => "not waited for".to_string(),
                None => format!(
                    "{} of {expected} lines after waiting {}",
                    self.routed_lines,
                    report::duration(self.router_wait)
                ),
            },
        );
        row(
            "agent sessions / send errors",
            format!("{} / {}", self.stats.sessions, self.stats.send_errors),
        );
        row(
            "spool full retries / duplicates",
            format!("{} / {}", self.full_retries, self.duplicates),
        );
        table.print();
    }
}

/// Streams `total_bytes` (rounded up to whole chunks) of `chunk` through the agent to
/// a backend started from `backend_bin`.
pub fn run(
    backend_bin: &Path,
    work_dir: &Path,
    chunk: &BenchChunk,
    total_bytes: u64,
    router_wait: Duration,
    window: Option<usize>,
    sealed: bool,
) -> Result<EndToEnd> {
    let work_dir = work_dir.join(if sealed { "sealed" } else { "tls-only" });
    let data_dir = work_dir.join("backend");
    if !sealed {
        // `serve` creates an encrypting development tenant unless a registry exists;
        // this one has the same shape without `encryption`.
        std::fs::create_dir_all(&data_dir)?;
        std::fs::write(
            data_dir.join("tenants.yaml"),
            "tenants:\n  - name: dev\n    access_keys:\n      - key: ak_bench\n",
        )?;
    }
    let backend = Backend::start(backend_bin, &data_dir)?;
    let result = stream(
        &backend,
        &[],
        &work_dir,
        chunk,
        total_bytes,
        router_wait,
        window,
    )
    .map(|run| EndToEnd { sealed, ..run });
    let stopped = backend.stop();
    let result = result?;
    stopped?;
    Ok(result)
}

pub(crate) fn stream(
    backend: &Backend,
    extra_pids: &[u32],
    work_dir: &Path,
    chunk: &BenchChunk,
    total_bytes: u64,
    router_wait: Duration,
    window: Option<usize>,
) -> Result<EndToEnd> {
    let chunks = total_bytes.div_ceil(chunk.len() as u64).max(1);
    let raw_bytes = chunks * chunk.len() as u64;
    let credentials = &backend.credentials;
    let spool_dir = work_dir.join("agent-spool");
    let properties: HashMap<&str, String> = HashMap::from([
        ("endpoint", credentials.endpoint.clone()),
        ("access_key", credentials.access_key.clone()),
        ("access_token", credentials.access_token.clone()),
        ("tls.ca_file", credentials.ca_file.display().to_string()),
        ("buffer.path", spool_dir.display().to_string()),
        // Room for everything, should the sender fall behind the flushes.
        ("buffer.max_size", (raw_bytes * 2 + (1 << 30)).to_string()),
        ("buffer.sync", "on".to_string()),
        ("compress", "zstd".to_string()),
    ]);
    let mut config = AgentConfig::from_properties(|key| properties.get(key).cloned())?;
    if let Some(window) = window {
        config.window = window;
    }
    let window = config.window;
    let agent = Agent::start(config, AgentHooks::default())?;

    let connecting = Instant::now();
    while agent.stats().sessions == 0 {
        if connecting.elapsed() > CONNECT_TIMEOUT {
            bail!(
                "the agent did not connect to {} within {CONNECT_TIMEOUT:?} ({} failed \
                 attempts); backend stderr:\n{}",
                credentials.endpoint,
                agent.stats().send_errors,
                backend.stderr_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    let pid = backend.pid();
    let agent_cpu_start = measure::self_cpu();
    let cpu = || -> Result<Duration> {
        let mut total = measure::process_cpu(pid)?;
        for &other in extra_pids {
            total += measure::process_cpu(other)?;
        }
        Ok(total)
    };
    let backend_cpu_start = cpu()?;
    let agent_writes_start = measure::storage_writes(None);
    let backend_writes_start = measure::storage_writes(Some(pid));
    let started = Instant::now();

    let mut chunk = chunk.clone();
    let mut full_retries = 0;
    let mut duplicates = 0;
    for n in 0..chunks {
        chunk.stamp(n + 1);
        loop {
            match agent.flush(&chunk.tag, &chunk.bytes) {
                FlushOutcome::Stored { .. } => break,
                FlushOutcome::Duplicate { .. } => {
                    duplicates += 1;
                    break;
                }
                FlushOutcome::Full => {
                    full_retries += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                FlushOutcome::Failed(reason) => bail!("flush {n} failed: {reason}"),
            }
        }
    }
    let flushed = started.elapsed();

    // Generous: 2 MB/s is far below anything this machine should do.
    let ack_timeout = Duration::from_secs(60 + raw_bytes / 2_000_000);
    while agent.acked_seq() < agent.last_seq() {
        if started.elapsed() > ack_timeout {
            bail!(
                "only seq {} of {} acked after {:?}; agent: {:?}; backend stderr:\n{}",
                agent.acked_seq(),
                agent.last_seq(),
                started.elapsed(),
                agent.stats(),
                backend.stderr_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let acked = started.elapsed();
    let agent_cpu = measure::self_cpu().saturating_sub(agent_cpu_start);
    let backend_cpu_acked = cpu()?.saturating_sub(backend_cpu_start);
    let agent_writes = measure::storage_writes(None)
        .zip(agent_writes_start)
        .map(|(end, start)| end.saturating_sub(start));
    let backend_writes_acked = measure::storage_writes(Some(pid))
        .zip(backend_writes_start)
        .map(|(end, start)| end.saturating_sub(start));
    let stats = agent.stats();
    let report = agent.shutdown(Duration::from_secs(5));
    if !report.drained {
        eprintln!("bench: agent shutdown: {report}");
    }

    let records = chunks * chunk.records;
    let mut lines = LineCounter::new(backend.data_dir.join("files"));
    let mut routed = None;
    let mut backend_cpu_routed = None;
    if !router_wait.is_zero() {
        let waiting = Instant::now();
        loop {
            if lines.count() >= records {
                routed = Some(started.elapsed());
                backend_cpu_routed = Some(cpu()?.saturating_sub(backend_cpu_start));
                break;
            }
            if waiting.elapsed() > router_wait {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(EndToEnd {
        sealed: true,
        kafka: None,
        route_consumers: 1,
        chunk_len: chunk.len(),
        window,
        chunks,
        raw_bytes,
        records,
        flushed,
        acked,
        routed,
        routed_lines: lines.count(),
        router_wait,
        agent_cpu,
        backend_cpu_acked,
        backend_cpu_routed,
        backend_peak_rss: measure::peak_rss(pid),
        backend_writes_acked,
        agent_writes,
        full_retries,
        duplicates,
        stats,
    })
}

/// Counts the lines of every `*.jsonl` file under a directory, reading only what was
/// appended since the last call.
pub(crate) struct LineCounter {
    root: PathBuf,
    files: HashMap<PathBuf, (u64, u64)>,
}

impl LineCounter {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self {
            root,
            files: HashMap::new(),
        }
    }

    pub(crate) fn count(&mut self) -> u64 {
        let mut paths = Vec::new();
        collect_jsonl(&self.root, &mut paths);
        for path in paths {
            let (offset, lines) = self.files.entry(path.clone()).or_default();
            if let Ok(appended) = count_from(&path, offset) {
                *lines += appended;
            }
        }
        self.files.values().map(|(_, lines)| lines).sum()
    }
}

fn collect_jsonl(dir: &Path, paths: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_jsonl(&path, paths);
        } else if path.extension().is_some_and(|ext| ext == "jsonl") {
            paths.push(path);
        }
    }
}

/// Newlines in `path` from `*offset` on; advances `*offset` past the last one, so a
/// line being written is counted once it is complete.
fn count_from(path: &Path, offset: &mut u64) -> Result<u64> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(*offset))?;
    let mut buffer = vec![0; (4.0 * MB) as usize];
    let mut lines = 0;
    let mut complete = *offset;
    let mut position = *offset;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        for (i, byte) in buffer[..read].iter().enumerate() {
            if *byte == b'\n' {
                lines += 1;
                complete = position + i as u64 + 1;
            }
        }
        position += read as u64;
    }
    *offset = complete;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_complete_appended_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a").join("a.jsonl");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "{}\n{}\n{").unwrap();
        let mut counter = LineCounter::new(dir.path().to_path_buf());
        assert_eq!(counter.count(), 2);
        std::fs::write(&file, "{}\n{}\n{}\n{}\n").unwrap();
        assert_eq!(counter.count(), 4);
    }
}
