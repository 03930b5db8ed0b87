//! Scenario `flush`: the cost of one `FLBPluginFlushCtx` through the real plugin,
//! driven by the host emulator exactly as Fluent Bit drives it, against a copy of the
//! same chunk.
//!
//! The plugin points at an endpoint that refuses connections, so a flush measures
//! only what Fluent Bit waits for: the spool append (hash, CRC, write, and with
//! `buffer.sync on` the fdatasync). The sender sits in its backoff sleep and takes
//! no CPU or disk away from the flushes. `buffer.max_size` is far above what the run
//! spools, so no flush answers `FLB_RETRY` for a full spool.
//!
//! Baselines, on the same chunk: a memcpy into a reused buffer, a `to_vec`, and what
//! any file-backed spool pays at least: `write(2)` appending to a fresh file in the
//! same directory, without sync (the floor of `sync=off`) and followed by
//! `fdatasync` (the floor of `sync=on`).

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fluent_bit_sys::FLB_OK;
use logferry_e2e::host::{Host, Instance};

use crate::fixture::BenchChunk;
use crate::measure::Samples;
use crate::report::{self, Table};

/// An address nothing listens on: connecting is refused at once.
pub const UNREACHABLE: &str = "https://127.0.0.1:1";
/// Flushes of each chunk before measuring, to open the segment and warm caches.
const WARMUP: usize = 5;

/// One row of the table.
#[derive(Debug)]
pub struct Row {
    pub case: &'static str,
    pub chunk: String,
    pub chunk_len: usize,
    pub samples: Samples,
    /// Answers other than `FLB_OK`, by code.
    pub not_ok: Vec<(i32, usize)>,
}

impl Row {
    pub fn mb_per_s(&self) -> f64 {
        report::mb_per_s(self.chunk_len as u64, self.samples.mean())
    }
}

/// Every row, per chunk: the two copies first, then the two flushes.
#[derive(Debug)]
pub struct FlushResults {
    pub plugin: PathBuf,
    pub iterations: usize,
    pub rows: Vec<Row>,
}

impl FlushResults {
    fn find(&self, case: &str, chunk: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|row| row.case == case && row.chunk == chunk)
    }

    /// Mean of `case` over mean of `baseline` for the same chunk.
    pub fn ratio(&self, case: &str, baseline: &str, chunk: &str) -> Option<f64> {
        self.ratio_by(case, baseline, chunk, Samples::mean)
    }

    /// `statistic` of `case` over `statistic` of `baseline` for the same chunk.
    pub fn ratio_by(
        &self,
        case: &str,
        baseline: &str,
        chunk: &str,
        statistic: impl Fn(&Samples) -> Duration,
    ) -> Option<f64> {
        let case = statistic(&self.find(case, chunk)?.samples).as_secs_f64();
        let baseline = statistic(&self.find(baseline, chunk)?.samples).as_secs_f64();
        Some(case / baseline.max(1e-12))
    }

    pub fn print(&self) {
        println!(
            "1. Plugin flush: host emulator -> FLBPluginFlushCtx of the real .so -> spool \
             append ({} flushes per row)",
            self.iterations
        );
        println!("   plugin: {}", self.plugin.display());
        println!(
            "   endpoint {UNREACHABLE} refuses connections: the sender only backs off, so \
             the figures are the flush path alone"
        );
        println!(
            "   (hash + CRC + write into the spool segment, and fdatasync with sync=on; \
             buffer.max_size=64G, a fresh spool per mode)"
        );
        let mut table = Table::new(&[
            "case",
            "chunk",
            "mean",
            "p50",
            "p99",
            "max",
            "MB/s",
            "vs memcpy",
            "vs write(2)",
            "not FLB_OK",
        ]);
        for row in &self.rows {
            let versus = self
                .ratio(row.case, COPY_WARM, &row.chunk)
                .map_or_else(String::new, report::ratio);
            let floor = match row.case {
                SYNC_OFF => Some(WRITE),
                SYNC_ON => Some(WRITE_SYNC),
                _ => None,
            };
            let versus_write = floor
                .and_then(|floor| self.ratio(row.case, floor, &row.chunk))
                .map_or_else(String::new, report::ratio);
            let not_ok = if row.not_ok.is_empty() {
                "0".to_string()
            } else {
                row.not_ok
                    .iter()
                    .map(|(code, count)| format!("{count}x rc={code}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            table.row(vec![
                row.case.to_string(),
                format!("{} ({})", report::bytes(row.chunk_len as u64), row.chunk),
                report::duration(row.samples.mean()),
                report::duration(row.samples.percentile(50.0)),
                report::duration(row.samples.percentile(99.0)),
                report::duration(row.samples.max()),
                report::rate(row.mb_per_s()),
                versus,
                versus_write,
                if row.case.starts_with("flush") {
                    not_ok
                } else {
                    String::new()
                },
            ]);
        }
        table.print();
        println!(
            "   memcpy = copy_from_slice into a reused buffer; Vec copy = chunk.to_vec() \
             (allocation + copy);"
        );
        println!(
            "   write(2) = append the chunk to a fresh file beside the spools (+ fdatasync), \
             interleaved with the flushes: the floor under flush sync=off (sync=on)"
        );
    }
}

pub const COPY_WARM: &str = "memcpy (reused buffer)";
pub const COPY_VEC: &str = "Vec copy (to_vec)";
pub const WRITE: &str = "write(2)";
pub const WRITE_SYNC: &str = "write(2) + fdatasync";
pub const SYNC_OFF: &str = "flush sync=off";
pub const SYNC_ON: &str = "flush sync=on";

/// Runs the scenario for each chunk, `iterations` flushes per row.
pub fn run(
    plugin: &Path,
    work_dir: &Path,
    chunks: &[BenchChunk],
    iterations: usize,
) -> Result<FlushResults> {
    let host = Host::load(plugin)?;
    let sync_off = start(&host, &work_dir.join("spool-sync-off"), "off")?;
    let sync_on = start(&host, &work_dir.join("spool-sync-on"), "on")?;
    let mut rows = Vec::new();
    let mut stamp = 0;
    for chunk in chunks {
        let mut chunk = chunk.clone();
        settle();
        rows.push(copy_warm(&chunk, iterations));
        rows.push(copy_vec(&chunk, iterations));
        for mode in [(SYNC_OFF, &sync_off, false), (SYNC_ON, &sync_on, true)] {
            settle();
            rows.extend(flush_and_write(
                mode, work_dir, &mut chunk, iterations, &mut stamp,
            )?);
        }
    }
    // Each exit waits out the plugin's drain deadline, since nothing can be sent;
    // both wait at once.
    std::thread::scope(|scope| {
        scope.spawn(move || sync_off.exit());
        scope.spawn(move || sync_on.exit());
    });
    host.unload().context("unloading the plugin")?;
    Ok(FlushResults {
        plugin: plugin.to_path_buf(),
        iterations,
        rows,
    })
}

/// An instance spooling to `spool` with `buffer.sync` `sync`, pointed at [`UNREACHABLE`].
pub(crate) fn start<'h>(host: &'h Host, spool: &Path, sync: &str) -> Result<Instance<'h>> {
    let spool = spool.to_string_lossy();
    let instance = host.init(&[
        ("endpoint", UNREACHABLE),
        ("access_key", "bench"),
        ("access_token", "bench"),
        ("tls.verify", "off"),
        ("buffer.path", spool.as_ref()),
        ("buffer.max_size", "64G"),
        ("buffer.sync", sync),
        // Only errors: the sender's "cannot reach" warning is expected here.
        ("log_level", "error"),
    ])?;
    Ok(instance)
}

/// Writes dirty pages back so one row's writeback does not land in the next.
pub(crate) fn settle() {
    // SAFETY: `sync` takes no arguments and only schedules and waits for writeback.
    unsafe { libc::sync() };
}

/// Times `iterations` flushes through `instance` and, interleaved with them (so both
/// see the same disk weather), as many appends of the same chunk to a fresh file,
/// each followed by `fdatasync` when `sync`. Returns the flush row and the write row.
fn flush_and_write(
    (case, instance, sync): (&'static str, &Instance<'_>, bool),
    work_dir: &Path,
    chunk: &mut BenchChunk,
    iterations: usize,
    stamp: &mut u64,
) -> Result<[Row; 2]> {
    let path = work_dir.join("flush-baseline");
    let mut file: File = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let mut flushes = Vec::with_capacity(iterations);
    let mut writes = Vec::with_capacity(iterations);
    let mut not_ok: Vec<(i32, usize)> = Vec::new();
    for i in 0..WARMUP + iterations {
        *stamp += 1;
        chunk.stamp(*stamp);
        let started = Instant::now();
        let rc = instance.flush(&chunk.tag, &chunk.bytes);
        let flushed = started.elapsed();

        let started = Instant::now();
        file.write_all(&chunk.bytes)?;
        if sync {
            file.sync_data()?;
        }
        let written = started.elapsed();

        if i < WARMUP {
            continue;
        }
        flushes.push(flushed);
        writes.push(written);
        if rc != FLB_OK {
            match not_ok.iter_mut().find(|(code, _)| *code == rc) {
                Some((_, count)) => *count += 1,
                None => not_ok.push((rc, 1)),
            }
        }
    }
    drop(file);
    std::fs::remove_file(&path)?;
    let flush = Row {
        not_ok,
        ..copy_row(case, chunk, flushes)
    };
    let write = copy_row(if sync { WRITE_SYNC } else { WRITE }, chunk, writes);
    Ok([write, flush])
}

fn copy_warm(chunk: &BenchChunk, iterations: usize) -> Row {
    let mut target = vec![0u8; chunk.len()];
    let samples = time(iterations, || {
        target.copy_from_slice(black_box(&chunk.bytes));
        black_box(&mut target);
    });
    copy_row(COPY_WARM, chunk, samples)
}

fn copy_vec(chunk: &BenchChunk, iterations: usize) -> Row {
    let samples = time(iterations, || {
        black_box(black_box(&chunk.bytes).to_vec());
    });
    copy_row(COPY_VEC, chunk, samples)
}

fn copy_row(case: &'static str, chunk: &BenchChunk, samples: Vec<Duration>) -> Row {
    Row {
        case,
        chunk: chunk.name.clone(),
        chunk_len: chunk.len(),
        samples: Samples::new(samples),
        not_ok: Vec::new(),
    }
}

fn time(iterations: usize, mut op: impl FnMut()) -> Vec<Duration> {
    (0..WARMUP + iterations)
        .map(|_| {
            let started = Instant::now();
            op();
            started.elapsed()
        })
        .skip(WARMUP)
        .collect()
}
