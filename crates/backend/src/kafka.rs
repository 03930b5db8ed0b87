//! Apache Kafka as the buffer: `logferry ingest` produces, `logferry route` consumes.
//!
//! A stored batch is one Kafka message: key = the agent id (so one agent's batches
//! keep their order on one partition), value = the batch payload exactly as the
//! agent sent it (already compressed, maybe sealed; the producer adds no second
//! compression), headers = the buffer record's metadata (tenant, access key, agent
//! id, seq range, key id, compression, chunk count, raw bytes, receive time).
//!
//! The producer is idempotent with `acks=all`; the agent's ack is sent only after
//! the delivery report. The ingest tier keeps no state: after a reconnect elsewhere
//! an agent may re-send a batch Kafka already holds, and the router drops it by
//! (agent, seq) with the marks in its checkpoint.
//!
//! Routing is exactly once per destination and partition: each (destination,
//! partition) has its own checkpoint (`router/<destination>.p<N>.checkpoint.json`)
//! holding the next Kafka offset, the agents' marks and the committed lengths of its
//! own sink files (`<access_key>.p<N>.jsonl`). On assignment a router recovers that
//! checkpoint (truncating what an earlier owner wrote after it) and starts reading at
//! its offset, whatever the group's committed offset says; offsets are committed to
//! Kafka after each checkpoint for monitoring only. Routers that share a data
//! directory (one volume) therefore hand partitions over exactly once. A partition's
//! state is opened under an exclusive lock (`router/<destination>.p<N>.lock`): a
//! router that lost a partition without noticing (a long pause) keeps its lock, and
//! the new owner waits for it with the partition paused instead of writing beside it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use logferry_buffer::{Record, RecordMeta};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tonic::Status;
use tracing::{error, info, warn};

/// Kafka settings shared by `ingest`, `route` and `kafka init`.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    #[arg(long, env = "LOGFERRY_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// The topic batches go through.
    #[arg(long, env = "LOGFERRY_KAFKA_TOPIC", default_value = "logferry")]
    pub kafka_topic: String,
    /// A librdkafka property, `name=value`, passed through as is (repeat the flag):
    /// `security.protocol=SASL_SSL`, `sasl.mechanism=PLAIN`, `message.max.bytes=...`.
    #[arg(long = "kafka-property", value_parser = parse_property)]
    pub kafka_properties: Vec<(String, String)>,
}

fn parse_property(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected name=value, got `{value}`"))
}

impl KafkaArgs {
    fn config(&self) -> ClientConfig {
        self.config_with(&[])
    }

    /// The brokers, then our `defaults`, then the operator's `--kafka-property`s,
    /// which win.
    fn config_with(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        client_config(&self.kafka_brokers, defaults, &self.kafka_properties)
    }
}

/// A librdkafka client's settings: `brokers`, then `defaults`, then the operator's
/// `properties`, which win.
pub fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    properties: &[(String, String)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (name, value) in defaults {
        config.set(*name, *value);
    }
    for (name, value) in properties {
        config.set(name, value);
    }
    config
}

/// `logferry kafka init`: creates the topic; an existing one is left as it is.
pub async fn init(args: &KafkaArgs, partitions: i32, replication: i32) -> Result<()> {
    let admin: AdminClient<_> = args
        .config()
        .create()
        .context("creating the Kafka admin client")?;
    let topic = NewTopic::new(
        &args.kafka_topic,
        partitions,
        TopicReplication::Fixed(replication),
    );
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .with_context(|| {
            format!(
                "creating topic `{}` on {}",
                args.kafka_topic, args.kafka_brokers
            )
        })?;
    for result in results {
        match result {
            Ok(name) => eprintln!("created topic `{name}` with {partitions} partition(s)"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                eprintln!("topic `{name}` exists already; left as it is")
            }
            Err((name, code)) => bail!("creating topic `{name}`: {code}"),
        }
    }
    Ok(())
}

/// Checks at start that the topic exists. An unreachable broker is only a warning:
/// ingest answers UNAVAILABLE until it is back, and agents keep their chunks.
fn check_topic(args: &KafkaArgs, producer: &FutureProducer) -> Result<()> {
    match producer
        .client()
        .fetch_metadata(Some(&args.kafka_topic), Duration::from_secs(10))
    {
        Ok(metadata) => {
            let topic = metadata
                .topics()
                .iter()
                .find(|t| t.name() == args.kafka_topic);
            match topic {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    info!(
                        "Kafka topic `{}` has {} partition(s)",
                        args.kafka_topic,
                        t.partitions().len()
                    );
                    Ok(())
                }
                _ => bail!(
                    "Kafka topic `{}` does not exist on {}; create it with:\n  logferry kafka init \
                     --kafka-brokers {} --kafka-topic {} --partitions 6",
                    args.kafka_topic,
                    args.kafka_brokers,
                    args.kafka_brokers,
                    args.kafka_topic
                ),
            }
        }
        Err(e) => {
            warn!(
                "cannot reach Kafka at {} ({e}); serving anyway: batches are refused with \
                 UNAVAILABLE (agents keep them spooled) until it answers",
                args.kafka_brokers
            );
            Ok(())
        }
    }
}

const H_TENANT: &str = "logferry.tenant";
const H_ACCESS_KEY: &str = "logferry.access_key";
const H_AGENT: &str = "logferry.agent_id";
const H_FIRST: &str = "logferry.first_seq";
const H_LAST: &str = "logferry.last_seq";
const H_KEY_ID: &str = "logferry.key_id";
const H_COMPRESSION: &str = "logferry.compression";
const H_CHUNKS: &str = "logferry.chunk_count";
const H_RAW: &str = "logferry.raw_bytes";
const H_RECEIVED: &str = "logferry.received_ms";

fn headers(meta: &RecordMeta) -> OwnedHeaders {
    let numbers = [
        (H_FIRST, meta.first_seq.to_string()),
        (H_LAST, meta.last_seq.to_string()),
        (H_KEY_ID, meta.key_id.to_string()),
        (H_COMPRESSION, meta.compression.to_string()),
        (H_CHUNKS, meta.chunk_count.to_string()),
        (H_RAW, meta.raw_bytes.to_string()),
        (H_RECEIVED, meta.received_unix_ms.to_string()),
    ];
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: H_TENANT,
            value: Some(meta.tenant.as_bytes()),
        })
        .insert(Header {
            key: H_ACCESS_KEY,
            value: Some(meta.access_key.as_bytes()),
        })
        .insert(Header {
            key: H_AGENT,
            value: Some(hex::encode(meta.agent_id).as_bytes()),
        });
    for (key, value) in &numbers {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    headers
}

/// The buffer record a Kafka message carries, or why it is not one of ours.
pub fn record_of<M: Message>(message: &M) -> Result<Record, String> {
    let mut found: HashMap<&str, String> = HashMap::new();
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            if let Some(value) = header.value {
                found.insert(header.key, String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    let text = |key: &str| {
        found
            .get(key)
            .cloned()
            .ok_or_else(|| format!("header `{key}` is missing"))
    };
    fn number<T: std::str::FromStr>(key: &str, value: String) -> Result<T, String> {
        value
            .parse()
            .map_err(|_| format!("header `{key}` is not a number: `{value}`"))
    }
    let agent: [u8; 16] = hex::decode(text(H_AGENT)?)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("header `logferry.agent_id` is not 16 hex bytes")?;
    let meta = RecordMeta {
        tenant: text(H_TENANT)?,
        access_key: text(H_ACCESS_KEY)?,
        agent_id: agent,
        first_seq: number(H_FIRST, text(H_FIRST)?)?,
        last_seq: number(H_LAST, text(H_LAST)?)?,
        key_id: number(H_KEY_ID, text(H_KEY_ID)?)?,
        compression: number(H_COMPRESSION, text(H_COMPRESSION)?)?,
        chunk_count: number(H_CHUNKS, text(H_CHUNKS)?)?,
        raw_bytes: number(H_RAW, text(H_RAW)?)?,
        received_unix_ms: number(H_RECEIVED, text(H_RECEIVED)?)?,
    };
    Ok(Record {
        offset: u64::try_from(message.offset()).map_err(|_| "negative offset".to_string())?,
        meta,
        payload: message.payload().unwrap_or_default().to_vec(),
    })
}

/// The ingest tier's producer.
pub struct KafkaProducer {
    producer: FutureProducer,
    topic: String,
    brokers: String,
    /// `logferry_kafka_produce_failures_total{reason}`.
    failures: prometheus::IntCounterVec,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("topic", &self.topic)
            .finish()
    }
}

impl KafkaProducer {
    /// An idempotent producer (`acks=all`); checks the topic (see [`check_topic`]).
    pub fn new(args: &KafkaArgs, failures: prometheus::IntCounterVec) -> Result<Self> {
        let producer: FutureProducer = args
            .config_with(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("compression.type", "none"),
                ("linger.ms", "2"),
                // Under the agent's 15 s ack timeout, so a batch Kafka cannot take is
                // refused before the agent gives up on the stream.
                ("message.timeout.ms", "10000"),
                ("message.max.bytes", "67108864"),
            ])
            .create()
            .context("creating the Kafka producer")?;
        check_topic(args, &producer)?;
        Ok(Self {
            producer,
            topic: args.kafka_topic.clone(),
            brokers: args.kafka_brokers.clone(),
            failures,
        })
    }

    /// Produces one batch and waits for Kafka's delivery report.
    pub async fn append(&self, meta: &RecordMeta, payload: &[u8]) -> Result<(), Status> {
        let record = FutureRecord::to(&self.topic)
            .key(&meta.agent_id[..])
            .payload(payload)
            .headers(headers(meta));
        match self.producer.send(record, Duration::from_secs(5)).await {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(self.status(&error)),
        }
    }

    fn status(&self, error: &KafkaError) -> Status {
        let code = error.rdkafka_error_code();
        let (status, reason, what) = match code {
            Some(RDKafkaErrorCode::QueueFull) => (
                Status::resource_exhausted as fn(String) -> Status,
                "queue_full",
                "the produce queue is full (Kafka takes batches slower than agents send \
                 them; `queue.buffering.max.messages` / `queue.buffering.max.kbytes` size it)",
            ),
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => (
                Status::resource_exhausted as fn(String) -> Status,
                "message_too_large",
                "the batch is larger than Kafka accepts (raise message.max.bytes on the \
                 topic, or lower batch.max_bytes on agents)",
            ),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => (
                Status::unavailable as fn(String) -> Status,
                "topic_missing",
                "the topic does not exist (create it with `logferry kafka init`)",
            ),
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed,
            ) => (
                Status::unavailable as fn(String) -> Status,
                "authorization",
                "Kafka refused this ingester (authorization)",
            ),
            _ => (
                Status::unavailable as fn(String) -> Status,
                "unavailable",
                "Kafka did not take the batch (broker down or unreachable?)",
            ),
        };
        self.failures.with_label_values(&[reason]).inc();
        warn!(brokers = %self.brokers, topic = %self.topic, "cannot store a batch: {what}: {error}");
        let mut status = status(format!("{what}: {error}"));
        status.metadata_mut().insert(
            "retry-after-ms",
            tonic::metadata::MetadataValue::from(1000u32),
        );
        status
    }
}

/// Opens the destination state of one partition (recovering its checkpoint).
pub type OpenPartition = dyn Fn(i32) -> Result<crate::router::Destination> + Send + Sync;

/// The consumer context: on assignment, recovers each partition's destination and
/// starts it at its checkpoint's offset.
struct RouteContext {
    open: Arc<OpenPartition>,
    topic: String,
    destinations: std::sync::Mutex<HashMap<i32, crate::router::Destination>>,
    /// Assigned partitions that could not be opened yet (another router still holds
    /// the lock, or the checkpoint would not open), paused; with the first offset
    /// polled and dropped meanwhile, if any.
    waiting: std::sync::Mutex<HashMap<i32, Option<i64>>>,
}

impl ClientContext for RouteContext {}

impl ConsumerContext for RouteContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut destinations = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            for element in list.elements() {
                waiting.remove(&element.partition());
                if destinations.remove(&element.partition()).is_some() {
                    info!(partition = element.partition(), "partition revoked");
                }
            }
        }
    }

    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        if err == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            let mut destinations = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            for partition in partitions {
                match (self.open)(partition) {
                    Ok(destination) => {
                        // No checkpoint of ours: this router never owned the partition
                        // (or has a data directory of its own); start from the group's
                        // committed offset.
                        let offset = if destination.resumed() {
                            Offset::Offset(destination.next_offset() as i64)
                        } else {
                            Offset::Stored
                        };
                        info!(partition, "partition assigned; starting at {offset:?}");
                        let _ = tpl.set_partition_offset(&self.topic, partition, offset);
                        destinations.insert(partition, destination);
                    }
                    Err(e) => {
                        warn!(partition, "partition assigned but not opened yet: {e:#}");
                        waiting.insert(partition, None);
                    }
                }
            }
            drop(destinations);
            if let Err(e) = base_consumer.assign(tpl) {
                error!("assigning partitions: {e}");
            }
            // Nothing is read for a partition before it is open; `open_waiting` tries
            // again every second.
            let mut paused = TopicPartitionList::new();
            for partition in waiting.keys() {
                paused.add_partition(&self.topic, *partition);
            }
            if paused.count() > 0
                && let Err(e) = base_consumer.pause(&paused)
            {
                error!("pausing partitions not opened yet: {e}");
            }
        } else {
            self.pre_rebalance(base_consumer, &Rebalance::Revoke(tpl));
            if let Err(e) = base_consumer.unassign() {
                error!("unassigning partitions: {e}");
            }
        }
    }
}

/// Records polled for one partition and not delivered yet.
struct Held {
    records: Vec<Record>,
    /// Their payload bytes.
    bytes: usize,
    /// When the first was polled.
    since: std::time::Instant,
}

/// How many messages one poll round takes at most.
const STEP_MESSAGES: usize = 256;

/// Runs one destination's consumer (group `logferry.<name>`) until `stop`; blocks.
pub fn route_destination(
    args: &KafkaArgs,
    name: &str,
    open: Arc<OpenPartition>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let context = RouteContext {
        open,
        topic: args.kafka_topic.clone(),
        destinations: std::sync::Mutex::new(HashMap::new()),
        waiting: std::sync::Mutex::new(HashMap::new()),
    };
    let group = format!("logferry.{name}");
    let consumer: BaseConsumer<RouteContext> = args
        .config_with(&[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
        ])
        .create_with_context(context)
        .context("creating the Kafka consumer")?;
    consumer
        .subscribe(&[&args.kafka_topic])
        .with_context(|| format!("subscribing to `{}`", args.kafka_topic))?;
    info!(destination = name, group = %format!("logferry.{name}"), "consuming `{}`", args.kafka_topic);
    let mut pending: HashMap<i32, Held> = HashMap::new();
    let mut failing: std::collections::HashSet<i32> = std::collections::HashSet::new();
    let mut retried = std::time::Instant::now();
    while !stop.load(Ordering::Acquire) {
        if retried.elapsed() >= Duration::from_secs(1) {
            open_waiting(&consumer, &args.kafka_topic, name);
            retried = std::time::Instant::now();
        }
        let mut polled = 0;
        while polled < STEP_MESSAGES {
            let timeout = if polled == 0 {
                Duration::from_millis(200)
            } else {
                Duration::ZERO
            };
            match consumer.poll(timeout) {
                None => break,
                Some(Err(e)) => {
                    warn!(destination = name, "Kafka: {e}");
                    break;
                }
                Some(Ok(message)) => {
                    polled += 1;
                    let partition = message.partition();
                    match record_of(&message) {
                        Ok(record) => {
                            let held = pending.entry(partition).or_insert_with(|| Held {
                                records: Vec::new(),
                                bytes: 0,
                                since: std::time::Instant::now(),
                            });
                            held.bytes += record.payload.len();
                            held.records.push(record);
                        }
                        Err(reason) => warn!(
                            destination = name,
                            partition,
                            offset = message.offset(),
                            "skipping a message that is not a logferry batch: {reason}"
                        ),
                    }
                }
            }
        }
        let mut destinations = consumer
            .context()
            .destinations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut commit = TopicPartitionList::new();
        let partitions: Vec<i32> = pending.keys().copied().collect();
        for partition in partitions {
            let Some(destination) = destinations.get_mut(&partition) else {
                let records = pending
                    .remove(&partition)
                    .map(|h| h.records)
                    .unwrap_or_default();
                // Polled before its pause took effect: read again once it is open.
                let mut waiting = consumer
                    .context()
                    .waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if let (Some(first), Some(dropped)) = (records.first(), waiting.get_mut(&partition))
                {
                    let first = first.offset as i64;
                    *dropped = Some(dropped.map_or(first, |d| d.min(first)));
                }
                continue;
            };
            // A sink that batches by time (S3's `batch_max_age`) gets a step once that
            // long has passed since the first record held, or once half a step's
            // bytes wait, as in `serve`.
            let interval = destination.step_interval();
            if pending.get(&partition).is_some_and(|held| {
                !interval.is_zero()
                    && held.bytes < crate::router::STEP_BYTES / 2
                    && held.since.elapsed() < interval
            }) {
                continue;
            }
            let records = pending
                .remove(&partition)
                .map(|h| h.records)
                .unwrap_or_default();
            let Some(last) = records.last().map(|r| r.offset) else {
                continue;
            };
            // A record below the checkpoint was delivered before (a re-read after a
            // seek that raced an assignment).
            let records: Vec<Record> = records
                .into_iter()
                .filter(|r| !destination.resumed() || r.offset >= destination.next_offset())
                .collect();
            if let Err(e) = destination.deliver(&records, last + 1) {
                // The step was undone; read the partition again from the checkpoint.
                // One line per failing streak, as in `serve`.
                if failing.insert(partition) {
                    error!(
                        destination = name,
                        partition, "delivery failed, retrying: {e:#}"
                    );
                }
                let _ = consumer.seek(
                    &args.kafka_topic,
                    partition,
                    Offset::Offset(destination.next_offset() as i64),
                    Duration::from_secs(5),
                );
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            if failing.remove(&partition) {
                info!(destination = name, partition, "delivering again");
            }
            let _ = commit.add_partition_offset(
                &args.kafka_topic,
                partition,
                Offset::Offset((last + 1) as i64),
            );
        }
        drop(destinations);
        if commit.count() > 0
            && let Err(e) = consumer.commit(&commit, CommitMode::Async)
        {
            warn!(
                destination = name,
                "committing offsets (monitoring only): {e}"
            );
        }
    }
    let mut destinations = consumer
        .context()
        .destinations
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for (partition, destination) in destinations.iter_mut() {
        if let Err(e) = destination.close() {
            warn!(destination = name, partition, "closing: {e:#}");
        }
    }
    Ok(())
}

/// Tries again to open the assigned partitions that are waiting (see
/// [`RouteContext::waiting`]); each one that opens starts at its checkpoint (or where
/// the first message dropped meanwhile was) and is resumed.
fn open_waiting(consumer: &BaseConsumer<RouteContext>, topic: &str, name: &str) {
    let context = consumer.context();
    // The same order as the rebalance callback: destinations, then waiting.
    let mut destinations = context
        .destinations
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut waiting = context.waiting.lock().unwrap_or_else(|e| e.into_inner());
    if waiting.is_empty() {
        return;
    }
    let partitions: Vec<(i32, Option<i64>)> = waiting.iter().map(|(p, d)| (*p, *d)).collect();
    for (partition, dropped) in partitions {
        let Ok(destination) = (context.open)(partition) else {
            continue;
        };
        let offset = if destination.resumed() {
            Some(destination.next_offset() as i64)
        } else {
            dropped
        };
        if let Some(offset) = offset
            && let Err(e) = consumer.seek(
                topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            )
        {
            warn!(
                destination = name,
                partition, "seeking to {offset}: {e}; trying again"
            );
            continue;
        }
        let mut resume = TopicPartitionList::new();
        resume.add_partition(topic, partition);
        if let Err(e) = consumer.resume(&resume) {
            warn!(destination = name, partition, "resuming: {e}; trying again");
            continue;
        }
        info!(
            destination = name,
            partition, "partition opened; starting at {offset:?}"
        );
        waiting.remove(&partition);
        destinations.insert(partition, destination);
    }
}

/// Where a destination of a partition keeps its checkpoint, relative to the data dir.
pub fn partition_name(destination: &str, partition: i32) -> String {
    format!("{destination}.p{partition}")
}
