//! The routers: one consumer group per destination, exactly once per partition (see
//! the parent module).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use logferry_buffer::Record;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::health::ClientHealth;
use super::{KafkaArgs, record_of};

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
    /// Login and reachability troubles, logged once per change.
    health: Arc<ClientHealth>,
}

super::reports_to_health!(RouteContext);

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
        health: ClientHealth::new(format!("router of `{name}`"), super::health::ROLE_SETTINGS),
    };
    let group = format!("logferry.{name}");
    let consumer: BaseConsumer<RouteContext> = args
        .config_with(&[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
        ])?
        .create_with_context(context)
        .map_err(|e| super::client_error("the Kafka consumer", e))?;
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
                    // Logged once per trouble, not on every poll.
                    consumer.context().health.report(&e, "");
                    break;
                }
                Some(Ok(message)) => {
                    consumer.context().health.ok();
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
