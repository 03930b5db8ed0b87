//! The ingest tier's producer: one Kafka message per batch, acked after Kafka's
//! delivery report.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use logferry_buffer::RecordMeta;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tonic::Status;
use tracing::warn;

use super::health::{ClientHealth, KafkaContext, TroubleKind};
use super::{KafkaArgs, check_topic, headers};

/// How recent a trouble of the whole client must be to explain a failed produce.
const TROUBLE_WINDOW: Duration = Duration::from_secs(60);

/// The ingest tier's producer.
pub struct KafkaProducer {
    producer: FutureProducer<KafkaContext>,
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
        let context = KafkaContext::new("ingester");
        let health = context.health.clone();
        let producer: FutureProducer<KafkaContext> = args
            .config_with(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("compression.type", "none"),
                ("linger.ms", "2"),
                // Under the agent's 15 s ack timeout, so a batch Kafka cannot take is
                // refused before the agent gives up on the stream.
                ("message.timeout.ms", "10000"),
                ("message.max.bytes", "67108864"),
            ])?
            .create_with_context(context)
            .map_err(|e| super::client_error("the Kafka producer", e))?;
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
            producer,
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
        match self.producer.send(record, Duration::from_secs(5)).await {
            Ok(_) => {
                self.health.ok();
                Ok(())
            }
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
