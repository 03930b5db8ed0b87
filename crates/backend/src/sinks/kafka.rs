//! The Kafka-topic sink: every record re-published as one message (`rdkafka`, an
//! idempotent producer with `acks=all`).
//!
//! A message's value is the record's JSON line with its identity first,
//! `{"id":"<agent>-<seq>-<index>",...}` (the `_id` the Elasticsearch sink uses too), so
//! consumers can drop what they already hold; its key is configurable (the agent id
//! by default, so an agent's records keep their order on one partition). Messages have
//! no headers: the line already names the tenant, tag and agent.
//!
//! Exactly once, by the sink's own means, the way the file sink truncates to its
//! checkpoint: `commit` waits for every delivery report, then records each partition's
//! high watermark in the checkpoint. Whatever a step wrote that never reached a
//! checkpoint (a crash, a failed step) therefore sits past those watermarks. Before
//! writing again, the sink reads the topic from there, collects the ids, and skips
//! those records when the step is delivered again. A destination with no checkpoint
//! yet reads its partitions from their start. Ids are unique per tenant (agent ids
//! are random), and the registry refuses two Kafka destinations of one tenant on one
//! topic, so the ids found are this destination's.
//!
//! A record Kafka refuses for good (larger than `message.max.bytes`, an invalid
//! record) is dead-lettered with Kafka's reason; other errors (broker down, topic
//! missing) fail the step, which is retried with backoff.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::{Chunk, Rejected, Sink};
use crate::kafka::ClientHealth;
use crate::router::Checkpoint;

/// What a message's key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageKey {
    /// The agent id (hex): an agent's records stay in order on one partition.
    Agent,
    Tag,
    Tenant,
    /// No key: the producer spreads messages over the partitions.
    None,
    /// The value of a top-level record field (a string as is, anything else as JSON);
    /// no key when the record lacks it.
    Field(String),
}

impl MessageKey {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "agent" => Self::Agent,
            "tag" => Self::Tag,
            "tenant" => Self::Tenant,
            "none" => Self::None,
            _ => Self::Field(text.strip_prefix("record.")?.to_string()),
        })
    }
}

/// Where and how to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    pub topic: String,
    pub key: MessageKey,
    /// This destination's name, for logs.
    pub destination: String,
    /// librdkafka properties set last (`compression.type`, `message.max.bytes`, ...).
    pub properties: Vec<(String, String)>,
}

impl KafkaSinkConfig {
    /// How long a step waits for its delivery reports (and a scan for the topic):
    /// longer than `message.timeout.ms`, after which librdkafka reports a failure.
    const TIMEOUT: Duration = Duration::from_secs(60);
    /// How long a metadata or offsets request may take: a broker that is down fails
    /// the step within this, and a stopping backend waits no longer for it.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

    fn client(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        crate::kafka::client_config(&self.brokers, defaults, &self.properties)
    }
}

/// Collects failed deliveries: (index of the message in the step, error); and what
/// the client reports outside them (a refused login, brokers down).
struct Reports {
    failed: Mutex<Vec<(usize, KafkaError)>>,
    health: Arc<ClientHealth>,
}

crate::kafka::reports_to_health!(Reports);

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, message: Box<usize>) {
        if let Err((error, _)) = result {
            self.failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((*message, error.clone()));
        }
    }
}

/// One message of the current step: where it came from and its bytes in `body`.
struct Pending {
    origin: usize,
    index: usize,
    line: std::ops::Range<usize>,
}

/// See the module docs.
pub struct KafkaSink {
    config: KafkaSinkConfig,
    producer: ThreadedProducer<Reports>,
    /// Partition → high watermark at the last checkpoint.
    committed: BTreeMap<i32, i64>,
    /// Whether the topic must be read past `committed` before writing.
    scan: bool,
    /// Ids this destination wrote past the checkpoint: skipped when delivered again.
    written: HashSet<String>,
    origins: Vec<Rejected>,
    pending: Vec<Pending>,
    body: Vec<u8>,
    rejected: Vec<Rejected>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Errors that no retry fixes: the record goes to the dead letters.
fn refused_for_good(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}

/// The id at the start of a message written by this sink.
fn id_of(value: &[u8]) -> Option<&[u8]> {
    let rest = value.strip_prefix(b"{\"id\":\"")?;
    let end = rest.iter().position(|b| *b == b'"')?;
    Some(&rest[..end])
}

/// The sink's producer, reporting to `health`.
fn producer(
    config: &KafkaSinkConfig,
    health: Arc<ClientHealth>,
) -> Result<ThreadedProducer<Reports>> {
    config
        .client(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "30000"),
        ])
        .create_with_context(Reports {
            failed: Mutex::default(),
            health,
        })
        .map_err(|e| {
            crate::kafka::client_error(&format!("the Kafka producer for `{}`", config.topic), e)
        })
}

impl KafkaSink {
    pub fn new(config: KafkaSinkConfig) -> Result<Self> {
        let health = ClientHealth::new(
            format!("kafka sink `{}`", config.destination),
            "the destination's `properties`, `properties_file`",
        );
        let producer = producer(&config, health)?;
        Ok(Self {
            config,
            producer,
            committed: BTreeMap::new(),
            scan: true,
            written: HashSet::new(),
            origins: Vec::new(),
            pending: Vec::new(),
            body: Vec::new(),
            rejected: Vec::new(),
        })
    }

    /// The topic's partitions with their (low, high) watermarks.
    fn watermarks(&self) -> Result<BTreeMap<i32, (i64, i64)>> {
        let client = self.producer.client();
        let topic = &self.config.topic;
        let health = &self.producer.context().health;
        let metadata = client
            .fetch_metadata(Some(topic), KafkaSinkConfig::REQUEST_TIMEOUT)
            .with_context(|| health.explain(format!("reading the metadata of topic `{topic}`")))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            bail!(
                "topic `{topic}` does not exist on {}; create it (`logferry kafka init \
                 --kafka-brokers {} --kafka-topic {topic} --partitions N`)",
                self.config.brokers,
                self.config.brokers
            );
        }
        partitions
            .into_iter()
            .map(|p| {
                client
                    .fetch_watermarks(topic, p, KafkaSinkConfig::REQUEST_TIMEOUT)
                    .map(|w| (p, w))
                    .with_context(|| format!("reading the offsets of `{topic}` partition {p}"))
            })
            .collect()
    }

    /// Reads what this destination wrote past the checkpoint (see the module docs).
    fn scan(&mut self) -> Result<()> {
        // A producer that hit a fatal error produces nothing more: a new one (a new
        // producer id) takes over; what the old one may have written is found below.
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            warn!(
                destination = %self.config.destination,
                "replacing the Kafka producer after a fatal error {code:?}: {reason}"
            );
            let health = self.producer.context().health.clone();
            self.producer = producer(&self.config, health)?;
        }
        // Nothing of an earlier attempt may still be on its way.
        self.producer
            .flush(KafkaSinkConfig::TIMEOUT)
            .context("waiting for the messages of the failed step")?;
        self.producer
            .context()
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let mut assignment = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        let mut total = 0;
        for (partition, (low, high)) in self.watermarks()? {
            let from = self
                .committed
                .get(&partition)
                .copied()
                .unwrap_or(low)
                .max(low);
            if from < high {
                total += high - from;
                assignment.add_partition_offset(
                    &self.config.topic,
                    partition,
                    Offset::Offset(from),
                )?;
                ends.insert(partition, high);
            }
        }
        self.written.clear();
        if !ends.is_empty() {
            info!(
                topic = %self.config.topic,
                "reading up to {total} message(s) past the checkpoint for records of `{}` \
                 written before",
                self.config.destination
            );
            let consumer: BaseConsumer = self
                .config
                .client(&[
                    ("group.id", "logferry-recovery"),
                    // Everything written counts, whatever a broker's stable offset says.
                    ("isolation.level", "read_uncommitted"),
                    ("enable.auto.commit", "false"),
                    ("enable.partition.eof", "false"),
                ])
                .create()
                .map_err(|e| {
                    crate::kafka::client_error("the Kafka consumer that reads the topic back", e)
                })?;
            consumer.assign(&assignment)?;
            // A stall, not a long read, gives up: a first start may read a lot.
            let mut progress = Instant::now();
            while !ends.is_empty() {
                if progress.elapsed() > KafkaSinkConfig::TIMEOUT {
                    bail!(
                        "reading topic `{}` back stalled for {:?}; partitions left: {:?}",
                        self.config.topic,
                        KafkaSinkConfig::TIMEOUT,
                        ends.keys().collect::<Vec<_>>()
                    );
                }
                let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                    // The last offsets may be records no consumer sees (another
                    // producer's transaction markers): the position says it is done.
                    if let Ok(positions) = consumer.position() {
                        for element in positions.elements() {
                            if let (Offset::Offset(at), Some(high)) =
                                (element.offset(), ends.get(&element.partition()))
                                && at >= *high
                            {
                                ends.remove(&element.partition());
                            }
                        }
                    }
                    continue;
                };
                progress = Instant::now();
                let message = message.context("reading the topic back")?;
                if let Some(id) = message.payload().and_then(id_of) {
                    self.written
                        .insert(String::from_utf8_lossy(id).into_owned());
                }
                if ends
                    .get(&message.partition())
                    .is_some_and(|high| message.offset() + 1 >= *high)
                {
                    ends.remove(&message.partition());
                }
            }
            info!(
                topic = %self.config.topic,
                "{} record(s) of `{}` are in the topic already and will not be sent again",
                self.written.len(),
                self.config.destination
            );
        }
        self.scan = false;
        Ok(())
    }

    fn key<'a>(&self, chunk: &Chunk<'a>, line: &[u8], field: &'a mut Vec<u8>) -> Option<&'a [u8]> {
        match &self.config.key {
            MessageKey::Agent => Some(chunk.agent.as_bytes()),
            MessageKey::Tag => Some(chunk.tag.as_bytes()),
            MessageKey::Tenant => Some(chunk.tenant.as_bytes()),
            MessageKey::None => None,
            MessageKey::Field(name) => {
                let record: serde_json::Value = serde_json::from_slice(line).ok()?;
                *field = match record["record"].get(name)? {
                    serde_json::Value::String(text) => text.clone().into_bytes(),
                    other => other.to_string().into_bytes(),
                };
                Some(&field[..])
            }
        }
    }

    /// Hands one message to the producer, waiting while its queue is full.
    fn produce(&mut self, chunk: &Chunk<'_>, index: usize, line: &[u8]) -> Result<()> {
        let id = format!("{}-{}-{index}", chunk.agent, chunk.seq);
        if self.written.remove(&id) {
            return Ok(());
        }
        let origin = self.origins.len() - 1;
        let Some(fields) = line.strip_prefix(b"{") else {
            let refused = self.origins[origin].at(index, line, "not a JSON object");
            self.rejected.push(refused);
            return Ok(());
        };
        let mut value = Vec::with_capacity(line.len() + id.len() + 8);
        value.extend_from_slice(b"{\"id\":\"");
        value.extend_from_slice(id.as_bytes());
        value.extend_from_slice(b"\",");
        value.extend_from_slice(fields);
        let start = self.body.len();
        self.body.extend_from_slice(line);
        let number = self.pending.len();
        self.pending.push(Pending {
            origin,
            index,
            line: start..self.body.len(),
        });
        let mut field = Vec::new();
        let key = self.key(chunk, line, &mut field);
        let topic = self.config.topic.clone();
        let mut record = BaseRecord::with_opaque_to(&topic, Box::new(number)).payload(&value);
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) if refused_for_good(error.rdkafka_error_code()) => {
                    self.rejected.push(self.origins[origin].at(
                        index,
                        line,
                        format!("Kafka refused the record: {error}"),
                    ));
                    return Ok(());
                }
                Err((error, _)) => {
                    return Err(error).with_context(|| format!("producing to topic `{topic}`"));
                }
            }
        }
    }
}

impl Sink for KafkaSink {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn recover(&mut self, state: &serde_json::Value) -> Result<()> {
        self.committed = state["partitions"]
            .as_object()
            .map(|partitions| {
                partitions
                    .iter()
                    .filter_map(|(p, high)| Some((p.parse().ok()?, high.as_i64()?)))
                    .collect()
            })
            .unwrap_or_default();
        self.scan = true;
        self.written.clear();
        self.origins.clear();
        self.pending.clear();
        self.body.clear();
        self.rejected.clear();
        Ok(())
    }

    fn write(&mut self, chunk: &Chunk<'_>) -> Result<()> {
        if self.scan {
            self.scan()?;
        }
        self.origins.push(Rejected::origin(chunk));
        for (index, line) in chunk.lines() {
            self.produce(chunk, index, line)?;
        }
        Ok(())
    }

    fn commit(&mut self, _cursor: &Checkpoint) -> Result<serde_json::Value> {
        if self.scan {
            self.scan()?;
        }
        self.producer
            .flush(KafkaSinkConfig::TIMEOUT)
            .with_context(|| {
                format!(
                    "Kafka did not confirm the messages to topic `{}` within {:?}",
                    self.config.topic,
                    KafkaSinkConfig::TIMEOUT
                )
            })?;
        let failed = std::mem::take(
            &mut *self
                .producer
                .context()
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (number, error) in failed {
            let Some(message) = self.pending.get(number) else {
                continue;
            };
            if !refused_for_good(error.rdkafka_error_code()) {
                let health = &self.producer.context().health;
                bail!(
                    "{}",
                    health.explain(format!(
                        "producing to topic `{}`: {error}",
                        self.config.topic
                    ))
                );
            }
            let line = &self.body[message.line.clone()];
            let refused = self.origins[message.origin].at(
                message.index,
                line,
                format!("Kafka refused the record: {error}"),
            );
            self.rejected.push(refused);
        }
        self.committed = self
            .watermarks()?
            .into_iter()
            .map(|(partition, (_, high))| (partition, high))
            .collect();
        self.written.clear();
        self.origins.clear();
        self.pending.clear();
        self.body.clear();
        let partitions: serde_json::Map<String, serde_json::Value> = self
            .committed
            .iter()
            .map(|(p, high)| (p.to_string(), (*high).into()))
            .collect();
        Ok(serde_json::json!({ "partitions": partitions }))
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse() {
        assert_eq!(MessageKey::parse("agent"), Some(MessageKey::Agent));
        assert_eq!(MessageKey::parse("none"), Some(MessageKey::None));
        assert_eq!(
            MessageKey::parse("record.level"),
            Some(MessageKey::Field("level".into()))
        );
        assert_eq!(MessageKey::parse("level"), None);
    }

    #[test]
    fn ids_are_read_from_the_start_of_a_message() {
        assert_eq!(
            id_of(br#"{"id":"ab-3-7","time":"2026-01-01T00:00:00Z"}"#),
            Some(&b"ab-3-7"[..])
        );
        assert_eq!(id_of(br#"{"time":"x","id":"ab-3-7"}"#), None);
        assert_eq!(id_of(b"not json"), None);
    }
}
