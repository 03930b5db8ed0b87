//! Scenario `disk`: the disk limit. The same bytes, in the same chunk size, appended
//! to a fresh file with `write` + `fdatasync`: once per chunk (the spool with
//! `buffer.sync on` and one flush per chunk; the backend's buffer, one fsync per
//! batch, is the same pattern with smaller compressed batches), and once per 64 MB
//! (about what the disk takes when syncs are rare, as with `buffer.sync off`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::fixture::BenchChunk;
use crate::report::{self, Table};

/// The spool's segment size.
const SEGMENT: u64 = 64 << 20;

#[derive(Debug)]
pub struct DiskRow {
    pub case: String,
    pub bytes: u64,
    pub syncs: u64,
    pub elapsed: Duration,
}

impl DiskRow {
    pub fn mb_per_s(&self) -> f64 {
        report::mb_per_s(self.bytes, self.elapsed)
    }
}

#[derive(Debug)]
pub struct DiskResults {
    pub rows: Vec<DiskRow>,
}

impl DiskResults {
    /// The row that syncs once per chunk.
    pub fn per_chunk(&self) -> Option<&DiskRow> {
        self.rows.first()
    }

    pub fn print(&self) {
        println!(
            "3a. Disk limit: write + fdatasync of the same bytes in the same chunk size, \
             to a fresh file in the work dir"
        );
        let mut table = Table::new(&["case", "bytes", "fdatasyncs", "elapsed", "MB/s"]);
        for row in &self.rows {
            table.row(vec![
                row.case.clone(),
                report::bytes(row.bytes),
                row.syncs.to_string(),
                report::duration(row.elapsed),
                report::rate(row.mb_per_s()),
            ]);
        }
        table.print();
    }
}

/// Writes `total_bytes` (rounded up to whole chunks) twice: synced per chunk, then
/// per 64 MB.
pub fn run(work_dir: &Path, chunk: &BenchChunk, total_bytes: u64) -> Result<DiskResults> {
    let chunks = total_bytes.div_ceil(chunk.len() as u64).max(1);
    let per_chunk = write(
        &work_dir.join("disk-per-chunk"),
        chunk,
        chunks,
        chunk.len() as u64,
    )?;
    let per_segment = write(&work_dir.join("disk-per-64mb"), chunk, chunks, SEGMENT)?;
    Ok(DiskResults {
        rows: vec![
            DiskRow {
                case: format!(
                    "fdatasync per chunk ({})",
                    report::bytes(chunk.len() as u64)
                ),
                ..per_chunk
            },
            DiskRow {
                case: "fdatasync per 64 MiB".to_string(),
                ..per_segment
            },
        ],
    })
}

/// Appends `chunks` copies of the chunk to a new file at `path`, syncing whenever
/// `sync_every` bytes have been written since the last sync, and at the end.
fn write(path: &Path, chunk: &BenchChunk, chunks: u64, sync_every: u64) -> Result<DiskRow> {
    // SAFETY: `sync` takes no arguments and only schedules and waits for writeback.
    unsafe { libc::sync() };
    let mut file: File = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let mut chunk = chunk.clone();
    let mut unsynced = 0;
    let mut syncs = 0;
    let started = Instant::now();
    for n in 0..chunks {
        chunk.stamp(n + 1);
        file.write_all(&chunk.bytes)?;
        unsynced += chunk.len() as u64;
        if unsynced >= sync_every || n + 1 == chunks {
            file.sync_data()?;
            syncs += 1;
            unsynced = 0;
        }
    }
    let elapsed = started.elapsed();
    drop(file);
    std::fs::remove_file(path)?;
    Ok(DiskRow {
        case: String::new(),
        bytes: chunks * chunk.len() as u64,
        syncs,
        elapsed,
    })
}
