//! Scenario `buffer`: the backend's write path against the disk limit for the bytes it
//! stores. Ingest appends each batch (the zstd payload of one chunk, as the agent sends
//! it) to the embedded buffer and acks after `fdatasync`; one agent stream appends one
//! batch at a time. The baseline writes the same payloads to a plain file with
//! `write` + `fdatasync` each. The two alternate in rounds so that drifts of the
//! virtual disk hit both alike.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use logferry_buffer::{EmbeddedLog, LogConfig, RecordMeta};

use crate::fixture::BenchChunk;
use crate::report::{self, Table};

/// Rounds the scenario is split into, alternating buffer and baseline.
const ROUNDS: u64 = 4;

#[derive(Debug)]
pub struct BufferResults {
    /// zstd payload size of one batch.
    pub payload_bytes: u64,
    pub appends: u64,
    pub buffer: Duration,
    pub baseline: Duration,
}

impl BufferResults {
    fn bytes(&self) -> u64 {
        self.payload_bytes * self.appends
    }

    pub fn buffer_mb_per_s(&self) -> f64 {
        report::mb_per_s(self.bytes(), self.buffer)
    }

    pub fn baseline_mb_per_s(&self) -> f64 {
        report::mb_per_s(self.bytes(), self.baseline)
    }

    pub fn print(&self) {
        println!(
            "4. Backend write path: EmbeddedLog::append + fdatasync per batch (one stream), \
             vs write + fdatasync of the same payloads to a plain file"
        );
        println!(
            "   payload: the fixture chunk compressed with zstd level 1, {} per batch",
            report::bytes(self.payload_bytes)
        );
        let mut table = Table::new(&["case", "bytes", "appends", "elapsed", "MB/s", "per append"]);
        for (case, elapsed) in [
            ("write + fdatasync (disk limit)", self.baseline),
            ("buffer append (fsync on)", self.buffer),
        ] {
            table.row(vec![
                case.to_string(),
                report::bytes(self.bytes()),
                self.appends.to_string(),
                report::duration(elapsed),
                report::rate(report::mb_per_s(self.bytes(), elapsed)),
                report::duration(elapsed / self.appends.max(1) as u32),
            ]);
        }
        table.print();
    }
}

/// Appends the compressed payloads of `total_bytes` of raw chunks (rounded up to whole
/// chunks) to a fresh buffer and, in alternating rounds, to a plain file.
pub fn run(work_dir: &Path, chunk: &BenchChunk, total_bytes: u64) -> Result<BufferResults> {
    let chunks = total_bytes.div_ceil(chunk.len() as u64).max(ROUNDS);
    let payload = zstd::bulk::compress(&chunk.bytes, 1).context("compressing the chunk")?;
    let dir = work_dir.join("buffer-bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (log, _) = EmbeddedLog::open(LogConfig::new(dir.join("buffer")))
        .context("opening a buffer for the benchmark")?;
    let plain = dir.join("plain.bin");
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&plain)
        .with_context(|| format!("creating {}", plain.display()))?;
    let mut meta = RecordMeta {
        tenant: "bench".to_string(),
        access_key: "ak_bench".to_string(),
        agent_id: [7; 16],
        first_seq: 0,
        last_seq: 0,
        key_id: 0,
        compression: 1,
        chunk_count: 1,
        raw_bytes: chunk.len() as u64,
        received_unix_ms: 0,
    };
    let per_round = chunks / ROUNDS;
    let (mut buffer, mut baseline) = (Duration::ZERO, Duration::ZERO);
    let mut seq = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..per_round {
            file.write_all(&payload)?;
            file.sync_data()?;
        }
        baseline += started.elapsed();
        let started = Instant::now();
        for _ in 0..per_round {
            seq += 1;
            meta.first_seq = seq;
            meta.last_seq = seq;
            log.append(&meta, &payload)?;
        }
        buffer += started.elapsed();
    }
    drop(log);
    drop(file);
    std::fs::remove_dir_all(&dir)?;
    Ok(BufferResults {
        payload_bytes: payload.len() as u64,
        appends: per_round * ROUNDS,
        buffer,
        baseline,
    })
}
