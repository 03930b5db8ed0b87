//! `logferry-bench`: throughput, latency, CPU and RSS figures for this machine, each
//! next to a baseline measured in the same run on the same bytes.
//!
//! Scenarios (`--only` picks some):
//! - [`flush`]: one `FLBPluginFlushCtx` through the real plugin vs copying the chunk;
//! - [`engine`]: flush latency (p50, p99) on Fluent Bit's engine thread with no
//!   `Workers`, 1, 4 and 16 inputs, vs `write` + `fdatasync` of the same chunk;
//! - [`end_to_end`] (`agent`): the agent streaming to a real `logferry serve`;
//! - [`disk`]: fsync'd sequential writes of the same bytes, the disk limit;
//! - [`transport`]: a TLS gRPC stream to a discarding server, the transport limit;
//! - `kafka`: the agent load through `logferry ingest` -> a tansu broker -> `logferry
//!   route`, compared with the same load through `serve` (skipped without tansu);
//! - [`sinks`]: each sink draining the same backlog (`--sink-mb`), against the file
//!   sink;
//! - [`memory`]: the backend's peak RSS routing one hostile batch (markers, empty
//!   records) against ordinary records of the same raw size (`--memory-mb`).
//!
//! Build first, in one target dir, so the plugin and backend sit beside the bench:
//! `cargo build --release -p logferry-bench -p logferry-backend -p plugin-out-grpc`,
//! then `cargo run --release -p logferry-bench`.

mod backend;
mod buffer;
mod disk;
mod end_to_end;
mod engine;
mod fixture;
mod flush;
mod kafka;
mod measure;
mod memory;
mod report;
mod sinks;
mod transport;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use crate::fixture::BenchChunk;
use crate::report::Table;

#[derive(Debug, Parser)]
#[command(
    name = "logferry-bench",
    about = "Benchmarks logferry on this machine, with baselines from the same run."
)]
struct Cli {
    /// Raw chunk bytes, in MB, that each throughput scenario (agent, disk, transport)
    /// sends, in whole copies of the 2.2 MB fixture chunk.
    #[arg(long, default_value_t = 1000)]
    total_mb: u64,
    /// Flushes (and copies) per row of the flush scenario, and flushes per row of the
    /// engine scenario (at least 10 rounds of one flush per input).
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Run only these scenarios (repeat the flag, or separate with commas).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// The `logferry` binary. Default: `logferry` beside this binary.
    #[arg(long)]
    backend_bin: Option<PathBuf>,
    /// The plugin, `libout_logferry.so`. Default: beside this binary.
    #[arg(long, env = "LOGFERRY_PLUGIN")]
    plugin: Option<PathBuf>,
    /// Where spools, the backend's data and scratch files go (in a fresh temporary
    /// directory, removed afterwards). Default: the system's temp dir.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// How long to wait, after the last ack, for the backend's file sink to hold every
    /// record; 0 does not wait.
    #[arg(long, default_value_t = 90)]
    router_wait_secs: u64,
    /// Batches in flight for the agent -> backend scenario. Default: the agent's own.
    #[arg(long)]
    window: Option<usize>,
    /// Payload encryption in the agent -> backend scenario: `on` (HPKE, the default
    /// tenant's setting), `off` (TLS only), or `both`, one run each, compared.
    #[arg(long, value_enum, default_value = "on")]
    encryption: Encryption,
    /// Raw chunk MB of the sinks scenario's backlog (the in-test Elasticsearch and
    /// Loki servers keep every record in memory).
    #[arg(long, default_value_t = 100)]
    sink_mb: u64,
    /// The tansu broker for the kafka scenario. Default: `tansu` on PATH or in
    /// ~/.cargo/bin; without one the scenario is skipped with a note.
    #[arg(long, env = "TANSU_BIN")]
    tansu_bin: Option<PathBuf>,
    /// `logferry route --consumers` of the kafka scenario: the first runs beside
    /// ingest; then each (`1,3`) drains the same backlog, compared with the first.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    route_consumers: Vec<usize>,
    /// Raw MB of each batch of the memory scenario (under the backend's
    /// `--max-batch-bytes`, 64M by default).
    #[arg(long, default_value_t = 60)]
    memory_mb: usize,
    /// Another `logferry` build (the previous commit's) that the memory scenario runs
    /// too, as its baseline in the same run.
    #[arg(long)]
    baseline_backend_bin: Option<PathBuf>,
}

/// The tansu binary, if there is one.
fn find_tansu(given: Option<&Path>) -> Option<PathBuf> {
    given
        .map(Path::to_path_buf)
        .or_else(|| logferry_e2e::find_tool("tansu", "TANSU_BIN"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Encryption {
    On,
    Off,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Plugin flush cost vs memcpy.
    Flush,
    /// Flush latency on the engine thread (no Workers, sync on), 1/4/16 inputs, vs
    /// write + fdatasync.
    Engine,
    /// Agent -> backend throughput and CPU.
    Agent,
    /// fsync'd sequential writes: the disk limit.
    Disk,
    /// TLS gRPC to a discarding server: the transport limit.
    Transport,
    /// The backend's buffer append path vs the disk limit for the bytes it stores.
    Buffer,
    /// The agent load through Kafka (ingest -> tansu -> route) vs through `serve`.
    Kafka,
    /// Each sink draining the same backlog: file, Elasticsearch, Loki, PostgreSQL, S3.
    Sinks,
    /// Backend peak RSS for hostile batches against ordinary ones.
    Memory,
}

fn main() -> std::process::ExitCode {
    logferry_backend::install_crypto_provider();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logferry-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(tansu) = &cli.tansu_bin {
        // SAFETY: no other thread runs yet, so none reads the environment meanwhile.
        // The brokers of the kafka and sinks scenarios (`logferry_e2e::kafka`) look
        // for tansu there.
        unsafe { std::env::set_var("TANSU_BIN", tansu) };
    }
    let wanted = |scenario| cli.only.is_empty() || cli.only.contains(&scenario);
    let total_bytes = cli.total_mb * 1_000_000;
    let large = BenchChunk::load(fixture::LARGE)?;
    let plugin = (wanted(Scenario::Flush) || wanted(Scenario::Engine))
        .then(|| {
            beside_this_binary(
                cli.plugin.as_deref(),
                "libout_logferry.so",
                "plugin-out-grpc",
            )
        })
        .transpose()?;
    let backend_bin = (wanted(Scenario::Agent)
        || wanted(Scenario::Kafka)
        || wanted(Scenario::Sinks)
        || wanted(Scenario::Memory))
    .then(|| beside_this_binary(cli.backend_bin.as_deref(), "logferry", "logferry-backend"))
    .transpose()?;
    let parent = cli.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("logferry-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a work dir in {}", parent.display()))?;
    let started = Instant::now();

    println!("logferry bench");
    println!(
        "  machine: {}, kernel {}",
        measure::cpu_summary(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_string(), |r| r.trim().to_string())
    );
    println!(
        "  work dir: {} (all files written there)",
        work.path().display()
    );
    println!(
        "  chunk: {} ({}, {} records, tag {}); MB = 10^6 bytes",
        large.name,
        report::bytes(large.len() as u64),
        large.records,
        large.tag
    );
    println!();

    let mut flush_results = None;
    if let Some(plugin) = plugin.as_ref().filter(|_| wanted(Scenario::Flush)) {
        eprintln!("logferry-bench: flush ...");
        let mut chunks = vec![large.clone()];
        for name in fixture::SMALL {
            chunks.push(BenchChunk::load(name)?);
        }
        let results = flush::run(plugin, work.path(), &chunks, cli.iterations)?;
        results.print();
        println!();
        flush_results = Some(results);
    }
    let mut engine_results = None;
    if let Some(plugin) = plugin.as_ref().filter(|_| wanted(Scenario::Engine)) {
        eprintln!("logferry-bench: engine ...");
        let chunks = [BenchChunk::load(fixture::SMALL[0])?, large.clone()];
        let results = engine::run(plugin, work.path(), &chunks, cli.iterations)?;
        results.print();
        println!();
        engine_results = Some(results);
    }
    let mut buffer_results = None;
    if wanted(Scenario::Buffer) {
        eprintln!("logferry-bench: buffer ...");
        let results = buffer::run(work.path(), &large, total_bytes)?;
        results.print();
        println!();
        buffer_results = Some(results);
    }
    let mut disk_results = None;
    if wanted(Scenario::Disk) {
        eprintln!("logferry-bench: disk ...");
        let results = disk::run(work.path(), &large, total_bytes)?;
        results.print();
        println!();
        disk_results = Some(results);
    }
    let mut transport_run = None;
    if wanted(Scenario::Transport) {
        eprintln!("logferry-bench: transport ...");
        let run = transport::run(work.path(), &large, total_bytes)?;
        run.print();
        println!();
        transport_run = Some(run);
    }
    let mut end_to_end = None;
    let mut tls_only = None;
    // Kafka mode is compared with this run, so it comes along.
    if (wanted(Scenario::Agent) || wanted(Scenario::Kafka))
        && let Some(backend_bin) = &backend_bin
    {
        let modes: &[bool] = match cli.encryption {
            Encryption::On => &[true],
            Encryption::Off => &[false],
            Encryption::Both => &[true, false],
        };
        for &sealed in modes {
            eprintln!(
                "logferry-bench: agent -> backend ({}) ...",
                if sealed { "sealed" } else { "TLS only" }
            );
            let run = end_to_end::run(
                backend_bin,
                work.path(),
                &large,
                total_bytes,
                Duration::from_secs(cli.router_wait_secs),
                cli.window,
                sealed,
            )?;
            run.print();
            println!();
            if sealed || cli.encryption == Encryption::Off {
                end_to_end = Some(run);
            } else {
                tls_only = Some(run);
            }
        }
    }

    let mut kafka_run = None;
    let mut drains = Vec::new();
    if wanted(Scenario::Kafka)
        && let Some(backend_bin) = &backend_bin
    {
        match find_tansu(cli.tansu_bin.as_deref()) {
            None => println!(
                "4. Kafka mode: SKIPPED, no `tansu` found (cargo install tansu --locked \
                 --features dynostore,libsql, or --tansu-bin)\n"
            ),
            Some(_) => {
                let consumers = cli.route_consumers.first().copied().unwrap_or(1);
                eprintln!(
                    "logferry-bench: agent -> ingest -> Kafka -> route --consumers {consumers} ..."
                );
                let run = kafka::run(
                    backend_bin,
                    work.path(),
                    &large,
                    total_bytes,
                    Duration::from_secs(cli.router_wait_secs),
                    cli.window,
                    consumers,
                )?;
                run.print();
                println!();
                kafka_run = Some(run);
                eprintln!(
                    "logferry-bench: Kafka routers draining a backlog, --consumers {:?} ...",
                    cli.route_consumers
                );
                drains = kafka::drain(
                    backend_bin,
                    work.path(),
                    &large,
                    total_bytes,
                    &cli.route_consumers,
                    Duration::from_secs(cli.router_wait_secs.max(60) * 4),
                )?;
                kafka::print_drains(&drains);
                println!();
            }
        }
    }
    let mut sink_results = None;
    if wanted(Scenario::Sinks)
        && let Some(backend_bin) = &backend_bin
    {
        let results = sinks::run(backend_bin, work.path(), &large, cli.sink_mb * 1_000_000)?;
        results.print();
        println!();
        sink_results = Some(results);
    }
    if wanted(Scenario::Memory)
        && let Some(backend_bin) = &backend_bin
    {
        let results = memory::run(
            backend_bin,
            cli.baseline_backend_bin.as_deref(),
            work.path(),
            &large,
            cli.memory_mb << 20,
        )?;
        results.print();
        println!();
    }

    println!("Summary (ratios of figures from this run)");
    let mut table = Table::new(&["ratio", "value", "from"]).left_aligned();
    if let Some(flush) = &flush_results {
        let pairs = [
            (flush::SYNC_OFF, flush::COPY_WARM, "target <= 2x"),
            (flush::SYNC_OFF, flush::COPY_VEC, "target <= 2x"),
            (flush::SYNC_OFF, flush::WRITE, "the OS floor"),
            (flush::SYNC_ON, flush::WRITE_SYNC, "the OS floor"),
        ];
        for (case, baseline, note) in pairs {
            let mean = flush.ratio(case, baseline, &large.name);
            let p50 = flush.ratio_by(case, baseline, &large.name, |s| s.percentile(50.0));
            if let (Some(mean), Some(p50)) = (mean, p50) {
                table.row(vec![
                    format!("{case} / {baseline}, {}", report::bytes(large.len() as u64)),
                    report::ratio(mean),
                    format!("mean per chunk (p50: {}); {note}", report::ratio(p50)),
                ]);
            }
        }
    }
    if let Some(engine) = &engine_results {
        for row in &engine.rows {
            let (p50, round_p50) = row.ratios(50.0);
            let (p99, round_p99) = row.ratios(99.0);
            table.row(vec![
                format!(
                    "engine-thread flush / write+fdatasync, {}, {} input(s)",
                    report::bytes(row.chunk_len as u64),
                    row.inputs
                ),
                report::ratio(p50),
                format!(
                    "p50 (p99: {}); a round of {} flushes: p50 {}, p99 {}",
                    report::ratio(p99),
                    row.inputs,
                    report::ratio(round_p50),
                    report::ratio(round_p99)
                ),
            ]);
        }
    }
    if let Some(first) = drains.first() {
        for other in drains.iter().skip(1) {
            table.row(vec![
                format!(
                    "Kafka route --consumers {} / --consumers {}: records/s drained",
                    other.consumers, first.consumers
                ),
                report::ratio(other.records_per_s() / first.records_per_s()),
                format!(
                    "{:.0} vs {:.0} records/s",
                    other.records_per_s(),
                    first.records_per_s()
                ),
            ]);
        }
    }
    if let (Some(kafka), Some(embedded)) = (&kafka_run, &end_to_end) {
        let per_gb = |run: &end_to_end::EndToEnd| {
            run.backend_cpu_routed
                .map(|cpu| cpu.as_secs_f64() / (run.raw_bytes as f64 / 1e9))
        };
        table.row(vec![
            "Kafka mode / embedded: acked MB/s".to_string(),
            report::ratio(kafka.ack_mb_per_s() / embedded.ack_mb_per_s()),
            format!(
                "{} vs {}",
                report::rate(kafka.ack_mb_per_s()),
                report::rate(embedded.ack_mb_per_s())
            ),
        ]);
        if let (Some(a), Some(b)) = (kafka.routed, embedded.routed) {
            let records = |run: &end_to_end::EndToEnd, t: Duration| {
                run.records as f64 / t.as_secs_f64().max(1e-9)
            };
            table.row(vec![
                "Kafka mode / embedded: records/s routed".to_string(),
                report::ratio(records(kafka, a) / records(embedded, b)),
                format!(
                    "{:.0} vs {:.0} records/s",
                    records(kafka, a),
                    records(embedded, b)
                ),
            ]);
        }
        if let (Some(a), Some(b)) = (per_gb(kafka), per_gb(embedded)) {
            table.row(vec![
                "Kafka mode / embedded: backend CPU per GB".to_string(),
                report::ratio(a / b),
                format!("{a:.2} vs {b:.2} CPU-s/GB (ingest + broker + route vs serve)"),
            ]);
        }
    }
    if let (Some(sealed), Some(plain)) = (&end_to_end, &tls_only) {
        table.row(vec![
            "agent->backend sealed / TLS only".to_string(),
            report::ratio(sealed.ack_mb_per_s() / plain.ack_mb_per_s()),
            format!(
                "{} vs {} acked; backend CPU {} vs {}",
                report::rate(sealed.ack_mb_per_s()),
                report::rate(plain.ack_mb_per_s()),
                report::duration(sealed.backend_cpu_acked),
                report::duration(plain.backend_cpu_acked)
            ),
        ]);
        if let (Some(a), Some(b)) = (sealed.routed, plain.routed) {
            table.row(vec![
                "router: sealed / TLS only (time to route all)".to_string(),
                report::ratio(a.as_secs_f64() / b.as_secs_f64().max(1e-9)),
                format!("{} vs {}", report::duration(a), report::duration(b)),
            ]);
        }
    }
    if let (Some(e2e), Some(transport)) = (&end_to_end, &transport_run) {
        table.row(vec![
            "agent->backend / transport limit".to_string(),
            report::ratio(e2e.ack_mb_per_s() / transport.mb_per_s()),
            format!(
                "{} acked vs {} discarded",
                report::rate(e2e.ack_mb_per_s()),
                report::rate(transport.mb_per_s())
            ),
        ]);
    }
    if let (Some(e2e), Some(disk)) = (
        &end_to_end,
        disk_results.as_ref().and_then(|d| d.per_chunk()),
    ) {
        if let Some(backend) = e2e.backend_write_mb_per_s() {
            table.row(vec![
                "backend storage writes / disk limit".to_string(),
                report::ratio(backend / disk.mb_per_s()),
                format!(
                    "{} (buffer: zstd batches + file sink JSON + checkpoints) vs {} ({})",
                    report::rate(backend),
                    report::rate(disk.mb_per_s()),
                    disk.case
                ),
            ]);
        }
        if let (Some(agent), Some(backend)) = (e2e.agent_writes, e2e.backend_writes_acked) {
            let both = report::mb_per_s(agent + backend, e2e.acked);
            table.row(vec![
                "agent + backend storage writes / disk limit".to_string(),
                report::ratio(both / disk.mb_per_s()),
                format!(
                    "{} on the same disk while acking vs {}",
                    report::rate(both),
                    report::rate(disk.mb_per_s())
                ),
            ]);
        }
        let spool = report::mb_per_s(e2e.raw_bytes, e2e.flushed);
        table.row(vec![
            "agent spool appends / disk limit".to_string(),
            report::ratio(spool / disk.mb_per_s()),
            format!(
                "{} raw chunks, sync on, while sending vs {}",
                report::rate(spool),
                report::rate(disk.mb_per_s())
            ),
        ]);
    }
    if let Some(buffer) = &buffer_results {
        table.row(vec![
            "backend write path / disk limit (bytes it stores)".to_string(),
            report::ratio(buffer.buffer_mb_per_s() / buffer.baseline_mb_per_s()),
            format!(
                "{} buffer appends vs {} write + fdatasync, {} payloads; target >= 0.8x",
                report::rate(buffer.buffer_mb_per_s()),
                report::rate(buffer.baseline_mb_per_s()),
                report::bytes(buffer.payload_bytes)
            ),
        ]);
    }
    if let Some(results) = &sink_results
        && let Some(file) = results.runs.iter().find(|r| r.kind == "file")
    {
        for run in results.runs.iter().filter(|r| r.kind != "file") {
            table.row(vec![
                format!("{} sink / file sink: records/s", run.kind),
                report::ratio(run.records_per_s() / file.records_per_s()),
                format!(
                    "{:.0} vs {:.0} records/s draining {} records",
                    run.records_per_s(),
                    file.records_per_s(),
                    run.records
                ),
            ]);
        }
        if let Some((sink, plain)) = results.kafka_vs_ceiling() {
            table.row(vec![
                "kafka sink / plain producer, same broker: records/s".into(),
                report::ratio(sink / plain),
                format!("{sink:.0} vs {plain:.0} messages/s (tansu, SQLite storage)"),
            ]);
        }
    }
    if table.is_empty() {
        println!("  (none: ratios need the scenarios on both sides)");
    } else {
        table.print();
    }
    println!();
    println!("total bench time: {}", report::duration(started.elapsed()));
    Ok(())
}

/// `given`, or `file` in this binary's directory (where cargo puts the plugin and the
/// backend built with the same profile and target dir).
fn beside_this_binary(given: Option<&Path>, file: &str, package: &str) -> Result<PathBuf> {
    if let Some(path) = given {
        if !path.is_file() {
            bail!("{} does not exist", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let path = exe
        .parent()
        .context("this binary has no directory")?
        .join(file);
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p {package}` (same \
             CARGO_TARGET_DIR as the bench) or pass its path",
            path.display()
        );
    }
    Ok(path)
}
