//! Apache Kafka as the buffer: `logferry ingest` produces, `logferry route` consumes.
//!
//! A stored batch is one Kafka message: key = the agent id (so one agent's batches
//! keep their order on one partition), value = the batch payload exactly as the
//! agent sent it (already compressed, maybe sealed; the producer adds no second
//! compression), headers = the buffer record's metadata (tenant, access key, agent
//! id, seq range, key id, compression, chunk count, raw bytes, receive time) and one
//! `logferry.tag` per distinct tag the agent declared (informational: routers never
//! read it).
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
//!
//! - `produce.rs`: the ingest tier's producer;
//! - `route.rs`: the routers' consumers;
//! - `health.rs`: a refused login or unreachable brokers, logged once and remembered.

mod health;
mod produce;
mod route;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use logferry_buffer::{Record, RecordMeta};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use tracing::{info, warn};

pub(crate) use health::reports_to_health;
pub use health::{ClientHealth, KafkaContext, Trouble, TroubleKind};
pub use produce::KafkaProducer;
pub use route::{OpenPartition, partition_name, route_destination};

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
    /// `security.protocol=sasl_ssl`, `sasl.mechanism=SCRAM-SHA-512`, `sasl.username=...`,
    /// `message.max.bytes=...`.
    #[arg(long = "kafka-property", value_parser = parse_property)]
    pub kafka_properties: Vec<(String, String)>,
    /// A file of librdkafka properties, one `name=value` a line: a Java properties
    /// file, as Kafka's own clients read `client.properties` (`#` comments, `\`
    /// continuations). Read at start. For secrets such as `sasl.password`, which a
    /// `--kafka-property` flag would show in the process list; the flags win over it.
    #[arg(long, env = "LOGFERRY_KAFKA_PROPERTIES_FILE")]
    pub kafka_properties_file: Option<PathBuf>,
}

fn parse_property(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected name=value, got `{value}`"))
}

impl KafkaArgs {
    fn config(&self) -> Result<ClientConfig> {
        self.config_with(&[])
    }

    /// The brokers, then our `defaults`, then the operator's properties file, then
    /// the operator's `--kafka-property`s, which win.
    fn config_with(&self, defaults: &[(&str, &str)]) -> Result<ClientConfig> {
        let mut properties = match &self.kafka_properties_file {
            Some(file) => read_properties(file)?,
            None => Vec::new(),
        };
        properties.extend(self.kafka_properties.iter().cloned());
        Ok(client_config(&self.kafka_brokers, defaults, &properties))
    }
}

/// The properties of a Java properties file (Kafka's `client.properties` format), in
/// the order they stand (a later one of the same name wins where they are applied).
pub fn read_properties(file: &Path) -> Result<Vec<(String, String)>> {
    let opened = std::fs::File::open(file)
        .with_context(|| format!("reading the Kafka properties file `{}`", file.display()))?;
    let mut properties = Vec::new();
    java_properties::PropertiesIter::new(std::io::BufReader::new(opened))
        .read_into(|name, value| properties.push((name, value)))
        .with_context(|| format!("reading the Kafka properties file `{}`", file.display()))?;
    Ok(properties)
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

/// Why `what` (a librdkafka client) could not be created. For a SASL mechanism this
/// build lacks, says which ones it has rather than librdkafka's "recompile".
pub fn client_error(what: &str, error: rdkafka::error::KafkaError) -> anyhow::Error {
    let reason = error.to_string();
    if reason.contains("No provider for SASL mechanism") {
        anyhow::anyhow!(
            "creating {what}: {reason}\n  this logferry build offers the SASL mechanisms PLAIN, \
             SCRAM-SHA-256, SCRAM-SHA-512 and OAUTHBEARER; GSSAPI (Kerberos) is not built in"
        )
    } else {
        anyhow::Error::new(error).context(format!("creating {what}"))
    }
}

/// `logferry kafka init`: creates the topic; an existing one is left as it is.
pub async fn init(args: &KafkaArgs, partitions: i32, replication: i32) -> Result<()> {
    let admin: AdminClient<_> = args
        .config()?
        .create()
        .map_err(|e| client_error("the Kafka admin client", e))?;
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

/// Checks at start that the topic exists, through `client` (whose context reports to
/// `health`; `drain` hands it what the client has queued). A missing topic, or
/// credentials the brokers refuse, is an error naming what to do; an unreachable
/// broker is only a warning (`meanwhile` says what the process does until it answers).
fn check_topic<C: ClientContext>(
    args: &KafkaArgs,
    client: &Client<C>,
    health: &ClientHealth,
    drain: impl Fn(),
    (role, meanwhile): (&str, &str),
) -> Result<()> {
    let fetched = client.fetch_metadata(Some(&args.kafka_topic), Duration::from_secs(10));
    if fetched.is_err() {
        drain();
    }
    match fetched {
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
        Err(e) => match health.recent(Duration::from_secs(30)) {
            Some(trouble) if trouble.kind == TroubleKind::Authentication => bail!(
                "Kafka at {} refused the {role}'s credentials: {}; check security.protocol, \
                 sasl.mechanism, sasl.username and sasl.password ({})",
                args.kafka_brokers,
                trouble.detail,
                health::ROLE_SETTINGS
            ),
            _ => {
                warn!(
                    "cannot reach Kafka at {} ({e}); {meanwhile} until it answers",
                    args.kafka_brokers
                );
                Ok(())
            }
        },
    }
}

/// [`check_topic`] for `logferry route`, with a consumer of its settings that joins no
/// group.
pub fn check_route(args: &KafkaArgs) -> Result<()> {
    let context = KafkaContext::new("router");
    let health = context.health.clone();
    let consumer: BaseConsumer<KafkaContext> = args
        .config()?
        .create_with_context(context)
        .map_err(|e| client_error("the Kafka consumer", e))?;
    // A consumer's errors come out of `poll`; a refused login among them is what
    // explains a failed metadata request.
    // The error event can come a little after the failed request.
    let drain = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < deadline
            && health.recent(Duration::from_secs(30)).is_none()
        {
            if let Some(Err(e)) = consumer.poll(Duration::from_millis(50)) {
                health.report(&e, "");
            }
        }
    };
    check_topic(
        args,
        consumer.client(),
        &health,
        drain,
        ("router", "routing anyway"),
    )
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
/// One per distinct tag of the batch, as the agent declared them (see `Batch.tags`):
/// for operators and other consumers of the topic; routers never read it.
const H_TAG: &str = "logferry.tag";

fn headers(meta: &RecordMeta, tags: &[String]) -> OwnedHeaders {
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
    for tag in tags {
        headers = headers.insert(Header {
            key: H_TAG,
            value: Some(tag.as_bytes()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_files_read_as_kafka_clients_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.properties");
        std::fs::write(
            &file,
            "# login\nsecurity.protocol=SASL_SSL\nsasl.mechanism = SCRAM-SHA-512\n\
             sasl.username:ingester\nsasl.password=a=b \\\n    c\n! old\nlinger.ms=5\n",
        )
        .unwrap();
        let args = KafkaArgs {
            kafka_brokers: "b:9092".into(),
            kafka_topic: "t".into(),
            kafka_properties: vec![("linger.ms".into(), "7".into())],
            kafka_properties_file: Some(file.clone()),
        };
        assert_eq!(
            read_properties(&file).unwrap(),
            [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "ingester"),
                ("sasl.password", "a=b c"),
                ("linger.ms", "5"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        // The flags win over the file, which wins over our defaults.
        let config = args
            .config_with(&[("linger.ms", "2"), ("acks", "all")])
            .unwrap();
        assert_eq!(config.get("linger.ms"), Some("7"));
        assert_eq!(config.get("sasl.username"), Some("ingester"));
        assert_eq!(config.get("acks"), Some("all"));
        let missing = KafkaArgs {
            kafka_properties_file: Some(dir.path().join("nope")),
            ..args
        };
        let error = format!("{:#}", missing.config().unwrap_err());
        assert!(
            error.contains("reading the Kafka properties file") && error.contains("nope"),
            "{error}"
        );
    }
}
