//! The ingest tier's producer: one Kafka message per batch, acked after Kafka's
//! delivery report.
//!
//! An idempotent producer numbers its messages per partition. After a fatal error, or
//! once the brokers no longer accept its numbering (after a batch they refused for
//! good, a broker that cannot bump the producer's epoch answers every later batch
//! with an error), it produces nothing more; the ingester then replaces it with a new
//! one, which gets a new producer id and numbers afresh. The batches the old one
//! refused (or had in flight, purged when it is dropped) are sent again by their
//! agents; the router drops any that Kafka took after all.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use logferry_buffer::RecordMeta;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tonic::Status;
use tracing::warn;

use super::health::{ClientHealth, KafkaContext, TroubleKind};
use super::{KafkaArgs, check_topic, headers};

/// How recent a trouble of the whole client must be to explain a failed produce.
const TROUBLE_WINDOW: Duration = Duration::from_secs(60);
/// The least time between two replacements of the producer.
const RENEW_INTERVAL: Duration = Duration::from_secs(1);

type Inner = FutureProducer<KafkaContext>;

/// The ingest tier's producer.
pub struct KafkaProducer {
    /// The producer in use (see the module documentation for when it is replaced).
    producer: RwLock<Arc<Inner>>,
    /// What a producer is made of.
    config: ClientConfig,
    /// When the producer was last replaced.
    renewed: Mutex<Option<Instant>>,
    health: Arc<ClientHealth>,
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
        let health = KafkaContext::new("ingester").health;
        let config = args.config_with(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "none"),
            ("linger.ms", "2"),
            // Under the agent's 15 s ack timeout, so a batch Kafka cannot take is
            // refused before the agent gives up on the stream.
            ("message.timeout.ms", "10000"),
            ("message.max.bytes", "67108864"),
        ])?;
        let producer = create(&config, &health)?;
        // The producer's own thread hands errors to its context: nothing to drain.
        check_topic(
            args,
            producer.client(),
            &health,
            || {},
            (
                "ingester",
                "serving anyway: batches are refused with UNAVAILABLE (agents keep them \
                 spooled)",
            ),
        )?;
        Ok(Self {
            producer: RwLock::new(Arc::new(producer)),
            config,
            renewed: Mutex::new(None),
            health,
            topic: args.kafka_topic.clone(),
            brokers: args.kafka_brokers.clone(),
            failures,
        })
    }

    /// Produces one batch and waits for Kafka's delivery report.
    pub async fn append(
        &self,
        meta: &RecordMeta,
        tags: &[String],
        payload: &[u8],
    ) -> Result<(), Status> {
        let record = FutureRecord::to(&self.topic)
            .key(&meta.agent_id[..])
            .payload(payload)
            .headers(headers(meta, tags));
        let producer = self
            .producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let sent = producer.send(record, Duration::from_secs(5)).await;
        let result = match sent {
            Ok(_) => {
                self.health.ok();
                Ok(())
            }
            Err((error, _)) => {
                let status = self.status(&error);
                self.renew_if_stuck(&producer, &error);
                Err(status)
            }
        };
        release(producer);
        result
    }

    /// Replaces `used` if it can produce no more (see the module documentation),
    /// unless another stream replaced it already or one was replaced within the last
    /// second.
    fn renew_if_stuck(&self, used: &Arc<Inner>, error: &KafkaError) {
        let fatal = used.client().fatal_error();
        let numbering = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::InvalidProducerIdMapping
                    | RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::Unknown
                    | RDKafkaErrorCode::Fatal
            )
        );
        if fatal.is_none() && !numbering {
            return;
        }
        let mut renewed = self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        if renewed.is_some_and(|at| at.elapsed() < RENEW_INTERVAL) {
            return;
        }
        let mut current = self.producer.write().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&current, used) {
            return;
        }
        let why = match fatal {
            Some((code, reason)) => format!("fatal error {code:?}: {reason}"),
            None => format!("{error}"),
        };
        match create(&self.config, &self.health) {
            Ok(new) => {
                let old = std::mem::replace(&mut *current, Arc::new(new));
                *renewed = Some(Instant::now());
                drop(current);
                warn!(
                    brokers = %self.brokers,
                    "replaced the Kafka producer, which could produce no more ({why}); \
                     its agents send the batches it refused again"
                );
                release(old);
            }
            Err(e) => warn!("cannot replace the Kafka producer ({why}): {e:#}"),
        }
    }

    fn status(&self, error: &KafkaError) -> Status {
        let code = error.rdkafka_error_code();
        let (status, reason, what) = match code {
            Some(RDKafkaErrorCode::QueueFull) => (
                Status::resource_exhausted as fn(String) -> Status,
                "queue_full",
                "the produce queue is full (Kafka takes batches slower than agents send \
                 them; `queue.buffering.max.messages` / `queue.buffering.max.kbytes` size it)"
                    .to_string(),
            ),
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => (
                Status::resource_exhausted as fn(String) -> Status,
                "message_too_large",
                "the batch is larger than Kafka accepts (raise message.max.bytes on the \
                 topic, or lower batch.max_bytes on agents)"
                    .to_string(),
            ),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => (
                Status::unavailable as fn(String) -> Status,
                "topic_missing",
                "the topic does not exist (create it with `logferry kafka init`)".to_string(),
            ),
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed,
            ) => (
                Status::unavailable as fn(String) -> Status,
                "authorization",
                "Kafka does not let this ingester write the topic (ACLs)".to_string(),
            ),
            Some(RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::Authentication) => {
                (
                    Status::unavailable as fn(String) -> Status,
                    "authentication",
                    "Kafka refused this ingester's credentials (check sasl.username and \
                 sasl.password)"
                        .to_string(),
                )
            }
            // A batch that timed out in the queue says nothing of why: what the client
            // reported meanwhile does.
            _ => match self.health.recent(TROUBLE_WINDOW) {
                Some(trouble) if trouble.kind == TroubleKind::Authentication => (
                    Status::unavailable as fn(String) -> Status,
                    "authentication",
                    format!(
                        "Kafka refused this ingester's credentials ({}; check sasl.username \
                         and sasl.password)",
                        trouble.detail
                    ),
                ),
                Some(trouble) => (
                    Status::unavailable as fn(String) -> Status,
                    "unavailable",
                    format!("Kafka cannot be reached ({})", trouble.detail),
                ),
                None => (
                    Status::unavailable as fn(String) -> Status,
                    "unavailable",
                    "Kafka did not take the batch (broker down or unreachable?)".to_string(),
                ),
            },
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

/// A producer with `config` whose client reports to `health`.
fn create(config: &ClientConfig, health: &Arc<ClientHealth>) -> Result<Inner> {
    config
        .create_with_context(KafkaContext {
            health: health.clone(),
        })
        .map_err(|e| super::client_error("the Kafka producer", e))
}

/// Drops a reference to a producer. Dropping the last one purges and flushes what it
/// still holds (up to half a second) and joins its thread: that runs off the async
/// workers.
fn release(producer: Arc<Inner>) {
    if let Some(last) = Arc::into_inner(producer) {
        tokio::task::spawn_blocking(move || drop(last));
    }
}
