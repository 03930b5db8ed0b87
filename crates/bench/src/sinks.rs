//! `sinks`: how fast each sink drains the same backlog.
//!
//! For each sink (file, Elasticsearch, Loki, PostgreSQL, S3, Kafka), one `logferry serve` whose
//! only tenant has one destination of that type. The destination is blocked while the
//! agent streams the load, so the buffer holds all of it. Then the backend stops, the
//! sink is unblocked, and the backend starts again: the drain is timed from just before
//! that start (so it includes the start, about a tenth of a second) until the
//! destination's checkpoint covers the backlog, and the backend's CPU is that of the
//! new process. Every sink ends holding exactly the records sent, or the scenario
//! fails. The file sink is the baseline.
//!
//! PostgreSQL is the real server (Debian's package), S3 is `s3s-fs` (a real S3-protocol
//! server on the file system) and Kafka is a tansu broker with SQLite storage (skipped
//! without one); all three are separate processes whose CPU is not counted.
//! Elasticsearch and Loki are the
//! in-test servers of `tests/e2e` (neither product can be installed here), running in
//! this process: their CPU is not in the backend's figure, and they hold every
//! document in memory, so keep `--sink-mb` moderate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use logferry_e2e::kafka::Broker;
use logferry_e2e::sinks::{Elasticsearch, Loki, Postgres, S3Server};

/// The topic of the Kafka sink's run.
const KAFKA_TOPIC: &str = "records";

use crate::backend::Backend;
use crate::end_to_end;
use crate::fixture::BenchChunk;
use crate::measure;
use crate::report::{self, Table};

/// One sink's figures.
#[derive(Debug)]
pub struct SinkRun {
    pub kind: &'static str,
    pub records: u64,
    pub raw_bytes: u64,
    /// From just before the backend's start to the checkpoint that covers the backlog.
    pub drained: Duration,
    pub backend_cpu: Duration,
}

impl SinkRun {
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.drained.as_secs_f64().max(1e-9)
    }

    pub fn mb_per_s(&self) -> f64 {
        report::mb_per_s(self.raw_bytes, self.drained)
    }
}

/// All sinks' figures.
#[derive(Debug)]
pub struct SinkResults {
    pub runs: Vec<SinkRun>,
    /// The broker's own pace: as many messages as the Kafka sink published, of the
    /// same size, from a plain librdkafka producer with the sink's settings.
    pub kafka_ceiling: Option<(u64, Duration)>,
}

impl SinkResults {
    /// Records/s of the Kafka sink and of the plain producer, if both ran.
    pub fn kafka_vs_ceiling(&self) -> Option<(f64, f64)> {
        let run = self.runs.iter().find(|r| r.kind == "kafka")?;
        let (messages, took) = self.kafka_ceiling?;
        Some((
            run.records_per_s(),
            messages as f64 / took.as_secs_f64().max(1e-9),
        ))
    }
}

impl SinkResults {
    pub fn print(&self) {
        println!("sinks: draining the same backlog, one destination at a time");
        let baseline = self.runs.iter().find(|r| r.kind == "file");
        let mut table = Table::new(&[
            "sink",
            "records",
            "drain time",
            "records/s",
            "raw MB/s",
            "vs file",
            "backend CPU/GB",
        ]);
        for run in &self.runs {
            table.row(vec![
                run.kind.to_string(),
                run.records.to_string(),
                report::duration(run.drained),
                format!("{:.0}", run.records_per_s()),
                report::rate(run.mb_per_s()),
                baseline.map_or_else(String::new, |b| {
                    report::ratio(run.records_per_s() / b.records_per_s())
                }),
                report::cpu_per_gb(run.backend_cpu, run.raw_bytes),
            ]);
        }
        table.print();
        println!(
            "  raw MB = the msgpack chunks sent; backend CPU only: Elasticsearch and Loki are \
             in-process test servers, PostgreSQL, s3s-fs and tansu separate processes"
        );
        if let (Some((sink, plain)), Some((messages, took))) =
            (self.kafka_vs_ceiling(), self.kafka_ceiling)
        {
            println!(
                "  kafka: the broker's own pace, a plain idempotent librdkafka producer sending \
                 {messages} messages of the same size: {} ({plain:.0} messages/s); the sink \
                 reaches {}",
                report::duration(took),
                report::ratio(sink / plain)
            );
        }
    }
}

/// The far side of one sink, and how to block it.
enum FarSide {
    File,
    Elasticsearch(Elasticsearch),
    Loki(Loki),
    Postgres(Postgres),
    /// The server and the file holding its secret key.
    S3(S3Server, PathBuf),
    /// A tansu broker (SQLite storage in the work directory), topic `records`.
    Kafka(Broker),
}

impl FarSide {
    fn kind(&self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Elasticsearch(_) => "elasticsearch",
            Self::Loki(_) => "loki",
            Self::Postgres(_) => "postgres",
            Self::S3(..) => "s3",
            Self::Kafka(_) => "kafka",
        }
    }

    fn destination(&self) -> String {
        match self {
            Self::File => "type: file".into(),
            Self::Elasticsearch(es) => format!("type: elasticsearch\n        url: {}", es.url()),
            Self::Loki(loki) => format!("type: loki\n        url: {}", loki.url()),
            Self::Postgres(pg) => format!("type: postgres\n        url: {}", pg.url()),
            Self::S3(s3, secret) => format!(
                "type: s3\n        url: {}\n        bucket: {}\n        access_key_id: {}\n        \
                 secret_access_key_file: {}\n        batch_max_age: 1s",
                s3.url(),
                S3Server::BUCKET,
                S3Server::ACCESS_KEY,
                secret.display()
            ),
            Self::Kafka(broker) => format!(
                "type: kafka\n        brokers: {}\n        topic: {KAFKA_TOPIC}",
                broker.brokers()
            ),
        }
    }

    fn block(&mut self, data_dir: &Path) -> Result<()> {
        match self {
            // A file where the destination's directory goes.
            Self::File => {
                let path = data_dir.join("destinations/dev.sink");
                std::fs::create_dir_all(path.parent().expect("has a parent"))?;
                std::fs::write(path, "blocked by the benchmark")?;
            }
            Self::Elasticsearch(es) => es.set_down(true),
            Self::Loki(loki) => loki.set_down(true),
            Self::Postgres(pg) => pg.stop(),
            Self::S3(s3, _) => s3.stop(),
            Self::Kafka(broker) => broker.kill(),
        }
        Ok(())
    }

    fn unblock(&mut self, data_dir: &Path) -> Result<()> {
        match self {
            Self::File => std::fs::remove_file(data_dir.join("destinations/dev.sink"))?,
            Self::Elasticsearch(es) => es.set_down(false),
            Self::Loki(loki) => loki.set_down(false),
            Self::Postgres(pg) => pg.restart(),
            Self::S3(s3, _) => s3.restart(),
            Self::Kafka(broker) => broker.resume(),
        }
        Ok(())
    }

    fn count(&self, data_dir: &Path) -> u64 {
        (match self {
            Self::File => logferry_e2e::backend::count_jsonl_lines(&data_dir.join("destinations")),
            Self::Elasticsearch(es) => es.count(),
            // The backlog repeats one chunk: Loki keeps one entry per (stream, time,
            // line) and drops the copies as duplicates, so both count as delivered.
            Self::Loki(loki) => {
                let state = loki.state.lock().unwrap_or_else(|e| e.into_inner());
                state.entries.len() + state.duplicates
            }
            Self::Postgres(pg) => pg.count("logferry_records"),
            Self::S3(s3, _) => s3.lines().0.len(),
            Self::Kafka(broker) => broker.count(KAFKA_TOPIC).max(0) as usize,
        }) as u64
    }
}

fn next_offset(checkpoint: &Path) -> u64 {
    std::fs::read(checkpoint)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|c| c["next_offset"].as_u64())
        .unwrap_or(0)
}

/// Runs every sink on `total_bytes` of `chunk`.
pub fn run(
    backend_bin: &Path,
    work_dir: &Path,
    chunk: &BenchChunk,
    total_bytes: u64,
) -> Result<SinkResults> {
    let secret = work_dir.join("s3-secret");
    std::fs::write(&secret, S3Server::SECRET_KEY)?;
    let mut sides = vec![
        FarSide::File,
        FarSide::Elasticsearch(Elasticsearch::start_bulk(0)),
        FarSide::Loki(Loki::start_push(0)),
        FarSide::Postgres(Postgres::start()),
        FarSide::S3(S3Server::start(), secret),
    ];
    if logferry_e2e::find_tool("tansu", "TANSU_BIN").is_some() {
        let dir = work_dir.join("tansu");
        std::fs::create_dir_all(&dir)?;
        let broker = Broker::start(&dir, logferry_e2e::backend::free_port());
        broker.create_topic(KAFKA_TOPIC, 3);
        sides.push(FarSide::Kafka(broker));
    } else {
        eprintln!("logferry-bench: sinks: kafka SKIPPED, no `tansu` found");
    }
    let mut runs = Vec::new();
    let mut kafka_ceiling = None;
    let mut line_bytes = 0;
    for mut side in sides {
        eprintln!("logferry-bench: sinks: {} ...", side.kind());
        let run = run_one(backend_bin, work_dir, chunk, total_bytes, &mut side)?;
        match &side {
            FarSide::File => {
                line_bytes = tree_bytes(&work_dir.join("sink-file/backend/destinations"))?
            }
            FarSide::Kafka(broker) => {
                eprintln!("logferry-bench: sinks: kafka, a plain producer ...");
                // The sink's messages are the file sink's lines with `"id":"...",` first.
                let size = (line_bytes / run.records.max(1)) as usize + 50;
                kafka_ceiling = Some((run.records, plain_producer(broker, run.records, size)?));
            }
            _ => {}
        }
        runs.push(run);
    }
    Ok(SinkResults {
        runs,
        kafka_ceiling,
    })
}

/// The bytes of the `.jsonl` files under `dir`.
fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            total += tree_bytes(&path)?;
        } else if path.extension().is_some_and(|e| e == "jsonl") {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// Times a plain idempotent producer (`acks=all`, `linger.ms=5`, as the sink's)
/// sending `messages` messages of `size` bytes to a topic of its own on `broker`,
/// keyed over 16 keys, until the last delivery report.
fn plain_producer(broker: &Broker, messages: u64, size: usize) -> Result<Duration> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    const TOPIC: &str = "plain-producer";
    broker.create_topic(TOPIC, 3);
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let value = format!("{{\"log\":\"{}\"}}", "x".repeat(size.saturating_sub(10)));
    let keys: Vec<String> = (0..16).map(|k| format!("{k:032x}")).collect();
    let started = Instant::now();
    for n in 0..messages {
        let key = &keys[(n % 16) as usize];
        let mut record = BaseRecord::to(TOPIC).key(key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("the plain producer: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(300))?;
    let took = started.elapsed();
    let landed = broker.count(TOPIC);
    if landed != messages as i64 {
        bail!("the plain producer: the topic holds {landed} of {messages} messages");
    }
    Ok(took)
}

fn run_one(
    backend_bin: &Path,
    work_dir: &Path,
    chunk: &BenchChunk,
    total_bytes: u64,
    side: &mut FarSide,
) -> Result<SinkRun> {
    let work_dir: PathBuf = work_dir.join(format!("sink-{}", side.kind()));
    let data_dir = work_dir.join("backend");
    std::fs::create_dir_all(&data_dir)?;
    std::fs::write(
        data_dir.join("tenants.yaml"),
        format!(
            "tenants:\n  - name: dev\n    access_keys:\n      - key: ak_bench\n    \
             destinations:\n      - name: sink\n        {}\n",
            side.destination()
        ),
    )?;
    let backend = Backend::start(backend_bin, &data_dir)?;
    // After the start: a file in the file sink's way would stop the start itself.
    side.block(&data_dir)?;
    let streamed = end_to_end::stream(
        &backend,
        &[],
        &work_dir,
        chunk,
        total_bytes,
        Duration::ZERO,
        None,
    )?;
    // The shared `files` destination skips every batch (the tenant has its own), so
    // its checkpoint reaches the end of the buffer quickly: that is the target.
    let files = data_dir.join("router/files.checkpoint.json");
    let sink = data_dir.join("router/dev.sink.checkpoint.json");
    let mut target = 0;
    let settle = Instant::now();
    loop {
        let now = next_offset(&files);
        if now > 0 && now == target {
            break;
        }
        target = now;
        if settle.elapsed() > Duration::from_secs(60) {
            bail!(
                "the `files` destination did not settle; stderr:\n{}",
                backend.stderr_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if next_offset(&sink) > 0 {
        bail!("the {} destination was not blocked", side.kind());
    }
    // Restart with the sink reachable, so the destination starts at once instead of
    // after its retry backoff; the drain is timed from just before the start.
    backend.stop()?;
    side.unblock(&data_dir)?;
    let started = Instant::now();
    let backend = Backend::start(backend_bin, &data_dir)?;
    let pid = backend.pid();
    let timeout = Duration::from_secs(120 + total_bytes / 1_000_000);
    let ended = loop {
        let at = next_offset(&sink);
        if at >= target {
            break Instant::now();
        }
        if started.elapsed() > timeout {
            bail!(
                "the {} destination is at offset {at} of {target} after {timeout:?}; stderr:\n{}",
                side.kind(),
                backend.stderr_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let backend_cpu = measure::process_cpu(pid)?;
    let landed = side.count(&data_dir);
    backend.stop()?;
    if landed != streamed.records {
        bail!(
            "the {} sink holds {landed} records, {} were sent",
            side.kind(),
            streamed.records
        );
    }
    Ok(SinkRun {
        kind: side.kind(),
        records: streamed.records,
        raw_bytes: streamed.raw_bytes,
        drained: ended.duration_since(started),
        backend_cpu,
    })
}
