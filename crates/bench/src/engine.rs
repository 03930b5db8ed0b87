//! Scenario `engine`: flush latency on Fluent Bit's engine thread, the output running
//! without `Workers` (as the shipped configs do), `buffer.sync on`.
//!
//! Without workers Fluent Bit runs every flush of the output on its one engine thread,
//! in a coroutine that cannot yield while the plugin's `FLBPluginFlushCtx` runs: the
//! proxy ABI gives the plugin no way to hand control back before it answers. Flushes
//! therefore never overlap, however many inputs there are; with N inputs each handing
//! the output a chunk per flush interval, the engine thread runs N flushes back to back
//! and everything else in Fluent Bit waits meanwhile. This scenario does exactly that
//! from one thread: rounds of N flushes, one per input (its own tag), interleaved on
//! that thread. The group commit never groups here, so each flush pays one
//! `fdatasync`.
//!
//! The baseline, timed interleaved with the flushes so both see the same disk: the same
//! chunk appended with `write(2)` + `fdatasync` to a plain file. Per row: the flush's
//! p50 and p99 against the baseline's, and a round (how long the engine thread is
//! busy with the N flushes) against N baseline writes.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fluent_bit_sys::FLB_OK;
use logferry_e2e::host::Host;

use crate::fixture::BenchChunk;
use crate::flush;
use crate::measure::Samples;
use crate::report::{self, Table};

/// The numbers of inputs, each one flush per round.
pub const INPUTS: [usize; 3] = [1, 4, 16];
/// Rounds before measuring, per row.
const WARMUP_ROUNDS: usize = 3;

/// One chunk at one number of inputs.
#[derive(Debug)]
pub struct Row {
    pub chunk: String,
    pub chunk_len: usize,
    pub inputs: usize,
    /// Each flush.
    pub flush: Samples,
    /// Each `write` + `fdatasync` of the same chunk.
    pub write: Samples,
    /// Each round: the N flushes, back to back.
    pub flush_round: Samples,
    /// Each round of N baseline writes.
    pub write_round: Samples,
    /// Flushes answered other than `FLB_OK`.
    pub not_ok: usize,
}

impl Row {
    /// Flush over baseline at percentile `p`, per flush and per round.
    pub fn ratios(&self, p: f64) -> (f64, f64) {
        let ratio = |a: &Samples, b: &Samples| {
            a.percentile(p).as_secs_f64() / b.percentile(p).as_secs_f64().max(1e-12)
        };
        (
            ratio(&self.flush, &self.write),
            ratio(&self.flush_round, &self.write_round),
        )
    }
}

#[derive(Debug)]
pub struct EngineResults {
    /// Flushes per row (rounds x inputs).
    pub flushes: usize,
    pub rows: Vec<Row>,
}

impl EngineResults {
    pub fn print(&self) {
        println!(
            "1b. Flush latency on Fluent Bit's engine thread (no Workers), buffer.sync on: \
             rounds of one flush per input, all from one thread (about {} flushes per row)",
            self.flushes
        );
        println!(
            "   baseline: write(2) + fdatasync of the same chunk to a plain file, interleaved \
             with the flushes; a round = the N flushes (writes) back to back"
        );
        let mut table = Table::new(&[
            "chunk",
            "inputs",
            "flush p50",
            "flush p99",
            "write+sync p50",
            "write+sync p99",
            "ratio p50",
            "ratio p99",
            "round p50",
            "round p99",
            "round ratio p50",
            "round ratio p99",
            "not FLB_OK",
        ]);
        for row in &self.rows {
            let (p50, round_p50) = row.ratios(50.0);
            let (p99, round_p99) = row.ratios(99.0);
            table.row(vec![
                format!("{} ({})", report::bytes(row.chunk_len as u64), row.chunk),
                row.inputs.to_string(),
                report::duration(row.flush.percentile(50.0)),
                report::duration(row.flush.percentile(99.0)),
                report::duration(row.write.percentile(50.0)),
                report::duration(row.write.percentile(99.0)),
                report::ratio(p50),
                report::ratio(p99),
                report::duration(row.flush_round.percentile(50.0)),
                report::duration(row.flush_round.percentile(99.0)),
                report::ratio(round_p50),
                report::ratio(round_p99),
                row.not_ok.to_string(),
            ]);
        }
        table.print();
    }
}

/// Runs every chunk at every number of inputs, about `flushes` flushes per row.
pub fn run(
    plugin: &Path,
    work_dir: &Path,
    chunks: &[BenchChunk],
    flushes: usize,
) -> Result<EngineResults> {
    let host = Host::load(plugin)?;
    let instance = flush::start(&host, &work_dir.join("spool-engine"), "on")?;
    let baseline = work_dir.join("engine-baseline");
    let mut rows = Vec::new();
    let mut stamp = 0;
    for chunk in chunks {
        for inputs in INPUTS {
            let mut chunk = chunk.clone();
            let rounds = flushes.div_ceil(inputs).max(10);
            let tags: Vec<String> = (0..inputs)
                .map(|i| format!("{}.in{i}", chunk.tag))
                .collect();
            let mut file = OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&baseline)
                .with_context(|| format!("creating {}", baseline.display()))?;
            flush::settle();
            let mut not_ok = 0;
            let (mut flush_times, mut write_times) = (Vec::new(), Vec::new());
            let (mut flush_rounds, mut write_rounds) = (Vec::new(), Vec::new());
            for round in 0..WARMUP_ROUNDS + rounds {
                let (mut flush_round, mut write_round) = (Duration::ZERO, Duration::ZERO);
                for tag in &tags {
                    stamp += 1;
                    chunk.stamp(stamp);
                    let started = Instant::now();
                    let rc = instance.flush(tag, &chunk.bytes);
                    let flushed = started.elapsed();

                    let started = Instant::now();
                    file.write_all(&chunk.bytes)?;
                    file.sync_data()?;
                    let written = started.elapsed();

                    if round < WARMUP_ROUNDS {
                        continue;
                    }
                    not_ok += usize::from(rc != FLB_OK);
                    flush_times.push(flushed);
                    write_times.push(written);
                    flush_round += flushed;
                    write_round += written;
                }
                if round >= WARMUP_ROUNDS {
                    flush_rounds.push(flush_round);
                    write_rounds.push(write_round);
                }
            }
            drop(file);
            std::fs::remove_file(&baseline)?;
            rows.push(Row {
                chunk: chunk.name.clone(),
                chunk_len: chunk.len(),
                inputs,
                flush: Samples::new(flush_times),
                write: Samples::new(write_times),
                flush_round: Samples::new(flush_rounds),
                write_round: Samples::new(write_rounds),
                not_ok,
            });
        }
    }
    // The exit waits out the plugin's drain deadline, since nothing can be sent.
    instance.exit();
    host.unload().context("unloading the plugin")?;
    Ok(EngineResults { flushes, rows })
}
