//! Scenario `kafka`: the agent load through `logferry ingest` -> a tansu broker
//! (Kafka protocol, SQLite storage, on this machine) -> `logferry route`.
//!
//! - [`run`]: the same load as [`crate::end_to_end::run`], with the router running
//!   meanwhile; compared with `serve`.
//! - [`drain`]: the routers alone. The load is acked into the topic with no router
//!   running, then `logferry route --consumers N` drains that backlog into a file
//!   destination of its own (so its own consumer group, reading from the start), once
//!   per N; compared with the first N.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use logferry_e2e::kafka::{Broker, TOPIC, kafka_flags};

use crate::backend::Backend;
use crate::end_to_end::{EndToEnd, LineCounter, stream};
use crate::fixture::BenchChunk;
use crate::measure;
use crate::report::{self, Table};

/// Partitions of the benchmark's topic.
const PARTITIONS: u32 = 3;

/// A tansu broker (`logferry_e2e`'s, SQLite storage in `dir`) with the topic.
fn broker(dir: &Path) -> Result<Broker> {
    std::fs::create_dir_all(dir)?;
    let broker = Broker::start(dir, logferry_e2e::backend::free_port());
    broker.create_topic(TOPIC, PARTITIONS);
    Ok(broker)
}

/// The same load as [`crate::end_to_end::run`], through Kafka, with one router
/// running `--consumers route_consumers` meanwhile, all on one data directory.
pub fn run(
    backend_bin: &Path,
    work_dir: &Path,
    chunk: &BenchChunk,
    total_bytes: u64,
    router_wait: Duration,
    window: Option<usize>,
    route_consumers: usize,
) -> Result<EndToEnd> {
    let work_dir = work_dir.join(format!("kafka-{route_consumers}"));
    let broker = broker(&work_dir.join("broker"))?;
    let data_dir = work_dir.join("backend");
    let ingest = Backend::start_role(backend_bin, &data_dir, "ingest", &kafka_flags(&broker))?;
    let mut route_args = kafka_flags(&broker);
    route_args.extend(["--consumers".to_string(), route_consumers.to_string()]);
    let route = Backend::start_role(backend_bin, &data_dir, "route", &route_args)?;
    let run = stream(
        &ingest,
        &[route.pid(), broker.pid()],
        &work_dir,
        chunk,
        total_bytes,
        router_wait,
        window,
    );
    let stopped = (ingest.stop(), route.stop());
    let run = run?;
    stopped.0?;
    stopped.1?;
    Ok(EndToEnd {
        kafka: Some(PARTITIONS),
        route_consumers,
        ..run
    })
}

/// One drain of the backlog by `logferry route --consumers N`.
#[derive(Debug)]
pub struct Drain {
    pub consumers: usize,
    pub records: u64,
    pub raw_bytes: u64,
    /// From the router's start until its destination held every record.
    pub elapsed: Duration,
    /// The router's and the broker's CPU meanwhile.
    pub route_cpu: Duration,
    pub broker_cpu: Duration,
    pub route_peak_rss: Option<u64>,
}

impl Drain {
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The routers alone (see the module documentation): one drain of the same backlog
/// per entry of `consumers`.
pub fn drain(
    backend_bin: &Path,
    work_dir: &Path,
    chunk: &BenchChunk,
    total_bytes: u64,
    consumers: &[usize],
    timeout: Duration,
) -> Result<Vec<Drain>> {
    let work_dir = work_dir.join("kafka-drain");
    let broker = broker(&work_dir.join("broker"))?;
    let data_dir = work_dir.join("backend");
    let ingest = Backend::start_role(backend_bin, &data_dir, "ingest", &kafka_flags(&broker))?;
    // No router: everything acked stays in the topic.
    let loaded = stream(
        &ingest,
        &[broker.pid()],
        &work_dir,
        chunk,
        total_bytes,
        Duration::ZERO,
        None,
    );
    let stopped = ingest.stop();
    let loaded = loaded?;
    stopped?;
    let registry = data_dir.join("tenants.yaml");
    let original = std::fs::read_to_string(&registry)
        .with_context(|| format!("reading {}", registry.display()))?;
    let mut drains = Vec::new();
    for (run, &n) in consumers.iter().enumerate() {
        // A destination of its own: its own consumer group, read from the start.
        let name = format!("drain-{run}-consumers-{n}");
        std::fs::write(&registry, with_destination(&original, &name)?)?;
        let mut args = kafka_flags(&broker);
        args.extend(["--consumers".to_string(), n.to_string()]);
        let broker_cpu_start = measure::process_cpu(broker.pid())?;
        let started = Instant::now();
        let route = Backend::start_role(backend_bin, &data_dir, "route", &args)?;
        let mut lines = LineCounter::new(data_dir.join("destinations").join(format!("dev.{name}")));
        while lines.count() < loaded.records {
            if started.elapsed() > timeout {
                bail!(
                    "route --consumers {n} wrote {} of {} records in {timeout:?}; its \
                     stderr:\n{}",
                    lines.count(),
                    loaded.records,
                    route.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = started.elapsed();
        let route_cpu = measure::process_cpu(route.pid())?;
        let broker_cpu = measure::process_cpu(broker.pid())?.saturating_sub(broker_cpu_start);
        let route_peak_rss = measure::peak_rss(route.pid());
        route.stop()?;
        drains.push(Drain {
            consumers: n,
            records: loaded.records,
            raw_bytes: loaded.raw_bytes,
            elapsed,
            route_cpu,
            broker_cpu,
            route_peak_rss,
        });
    }
    std::fs::write(&registry, original)?;
    Ok(drains)
}

/// `registry` (the development registry `logferry ingest` wrote) with tenant `dev`'s
/// destinations replaced by one file destination called `name`.
fn with_destination(registry: &str, name: &str) -> Result<String> {
    let mut file: serde_yaml_ng::Value = serde_yaml_ng::from_str(registry)?;
    let tenants = file
        .get_mut("tenants")
        .and_then(|t| t.as_sequence_mut())
        .context("the registry has no tenants")?;
    let dev = tenants
        .iter_mut()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("dev"))
        .context("the registry has no tenant `dev`")?;
    let destination: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&format!("[{{name: {name}, type: file}}]"))?;
    dev.as_mapping_mut()
        .context("tenant `dev` is not a mapping")?
        .insert("destinations".into(), destination);
    Ok(serde_yaml_ng::to_string(&file)?)
}

pub fn print_drains(drains: &[Drain]) {
    let Some(first) = drains.first() else {
        return;
    };
    println!(
        "5. Kafka routers alone: `logferry route --consumers N` drains a backlog of {} \
         records ({}) from a {PARTITIONS}-partition topic into a file destination",
        first.records,
        report::bytes(first.raw_bytes)
    );
    let mut table = Table::new(&[
        "consumers",
        "drain time",
        "records/s",
        "raw MB/s",
        "route CPU/GB",
        "broker CPU/GB",
        "route peak RSS",
        "vs first",
    ]);
    for drain in drains {
        table.row(vec![
            drain.consumers.to_string(),
            report::duration(drain.elapsed),
            format!("{:.0}", drain.records_per_s()),
            report::rate(report::mb_per_s(drain.raw_bytes, drain.elapsed)),
            report::cpu_per_gb(drain.route_cpu, drain.raw_bytes),
            report::cpu_per_gb(drain.broker_cpu, drain.raw_bytes),
            drain
                .route_peak_rss
                .map(report::bytes)
                .unwrap_or_else(|| "-".into()),
            report::ratio(drain.records_per_s() / first.records_per_s()),
        ]);
    }
    table.print();
}
