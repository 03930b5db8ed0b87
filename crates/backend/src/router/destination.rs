//! One destination: read from its cursor, open batches, decode chunks, write to the
//! sink, dead-letter what cannot be delivered, checkpoint.
//!
//! A step is all-or-nothing: records go to the sink and dead-letter files, both are
//! made durable, then the checkpoint is replaced. A crash or an error anywhere in
//! between is undone by `recover` (truncate to the checkpoint) and the step runs
//! again, so each record reaches the sink exactly once. Chunks whose seq is at or
//! below the agent's mark were delivered already and are skipped; that also covers
//! a batch the ingest tier stored twice.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use logferry_agent::batch;
use logferry_agent::seal::{self, BatchContext};
use logferry_buffer::{EmbeddedLog, Record};
use logferry_proto::v1::{BatchPayload, Compression};
use serde_json::json;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::checkpoint::Checkpoint;
use super::decode::{Origin, Renderer, check_chunk, events, rfc3339};
use super::stopped::{StepMarker, Suspect};
use crate::keys::KeyRing;
use crate::limits::DEFAULT_MAX_BATCH_BYTES;
use crate::metrics::DestinationMetrics;
use crate::sinks::{Chunk, FileSet, Sink};

/// How much buffer payload one step reads.
pub const STEP_BYTES: usize = 16 << 20;
/// How much decompressed payload one step takes, by the batches' declared (and, as
/// they are opened, enforced) sizes; a step takes at least one batch.
pub const STEP_RAW_BYTES: u64 = 64 << 20;
/// Rendered JSON lines are handed to the sink in pieces of about this size, so a
/// chunk of many small records never sits rendered whole in memory.
const PIECE_BYTES: usize = 1 << 20;

/// Which records a destination takes.
#[derive(Debug, Clone, Default)]
pub struct Route {
    /// `Some(tenant)`: that tenant only. `None`: every tenant not in `except` (the
    /// shared destinations of tenants that list none of their own).
    pub tenant: Option<String>,
    pub except: HashSet<String>,
    /// Tag glob; `None` takes every tag.
    pub tag: Option<glob::Pattern>,
    /// Access keys; `None` takes every key.
    pub access_keys: Option<HashSet<String>>,
}

impl Route {
    fn takes_batch(&self, tenant: &str, access_key: &str) -> bool {
        let tenant_ok = match &self.tenant {
            Some(only) => only == tenant,
            None => !self.except.contains(tenant),
        };
        tenant_ok
            && self
                .access_keys
                .as_ref()
                .is_none_or(|keys| keys.contains(access_key))
    }

    fn takes_tag(&self, tag: &str) -> bool {
        self.tag.as_ref().is_none_or(|pattern| pattern.matches(tag))
    }
}

/// What a destination writes for each chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per record (see [`super::decode`]).
    #[default]
    Json,
    /// The chunk's msgpack events as Fluent Bit produced them.
    Msgpack,
}

/// What `Destination::replay` did with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// Sent to the sink (records it refused again are new dead letters).
    Delivered,
    /// An earlier replay delivered it.
    Already,
    /// It still cannot be delivered, for this reason; it stays.
    Fails(String),
}

/// See the module docs.
pub struct Destination {
    name: String,
    sink: Box<dyn Sink>,
    dead: FileSet,
    checkpoint_path: PathBuf,
    checkpoint: Checkpoint,
    lines: Vec<u8>,
    renderer: Renderer,
    metrics: DestinationMetrics,
    keys: Arc<KeyRing>,
    route: Route,
    format: Format,
    /// Whether it has a checkpoint: one existed when it was opened, or it stored one.
    resumed: bool,
    /// Whether the checkpoint has been compared with the one the sink stores, if any.
    synced: bool,
    /// Whether the last step read about as much as a step may: more is waiting.
    backlog: bool,
    /// A Kafka partition's ownership lock (`router/<name>.lock`), held while open.
    _lock: Option<std::fs::File>,
    /// Largest decompressed batch it opens (`--max-batch-bytes`).
    max_batch_bytes: u64,
    /// The step in progress, written before each step of the embedded buffer.
    marker: StepMarker,
    /// Buffer offsets the last runs stopped in while delivering them (a crash).
    suspect: Option<Suspect>,
    /// A batch on which delivery panicked: the next step dead-letters it.
    panicked: Option<(u64, String)>,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.name)
            .finish()
    }
}

/// `base` with the fields of `extra` added.
fn with(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    base
}

fn now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(t.as_secs() as i64, t.subsec_nanos())
}

impl Destination {
    /// Opens a destination: loads its checkpoint and truncates the sink and the
    /// dead-letter store back to it.
    pub fn open(
        name: &str,
        sink: Box<dyn Sink>,
        data_dir: &Path,
        metrics: DestinationMetrics,
        keys: Arc<KeyRing>,
    ) -> Result<Self> {
        let checkpoint_path = data_dir
            .join("router")
            .join(format!("{name}.checkpoint.json"));
        let resumed = checkpoint_path.exists();
        let checkpoint = Checkpoint::load(&checkpoint_path)?;
        let dead = FileSet::new(data_dir.join("dead-letter").join(name), ".jsonl");
        let marker = StepMarker::new(data_dir.join("router").join(format!("{name}.step.json")));
        let suspect = marker.load(
            name,
            checkpoint.next_offset,
            super::stopped::last_run_crashed(),
        );
        let mut destination = Self {
            name: name.to_string(),
            sink,
            dead,
            checkpoint_path,
            checkpoint,
            lines: Vec::new(),
            renderer: Renderer::default(),
            metrics,
            keys,
            route: Route::default(),
            format: Format::Json,
            resumed,
            synced: false,
            backlog: false,
            _lock: None,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            marker,
            suspect,
            panicked: None,
        };
        destination
            .recover()
            .with_context(|| format!("recovering destination `{name}`"))?;
        info!(
            destination = name,
            kind = destination.sink.kind(),
            "resuming at buffer offset {}",
            destination.checkpoint.next_offset
        );
        Ok(destination)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes only what `route` matches.
    pub fn with_route(mut self, route: Route) -> Self {
        self.route = route;
        self
    }

    pub fn with_format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Opens batches of at most this many decompressed bytes; larger ones are
    /// dead-lettered.
    pub fn with_max_batch_bytes(mut self, max: u64) -> Self {
        self.max_batch_bytes = max;
        self
    }

    /// Keeps `lock` (a Kafka partition's ownership lock) until the destination is
    /// dropped.
    pub fn with_lock(mut self, lock: std::fs::File) -> Self {
        self._lock = Some(lock);
        self
    }

    /// The least time between two steps its sink asks for (zero: none).
    pub fn step_interval(&self) -> Duration {
        self.sink.step_interval()
    }

    pub fn next_offset(&self) -> u64 {
        self.checkpoint.next_offset
    }

    /// Whether it has a checkpoint (rather than starting fresh).
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    fn recover(&mut self) -> Result<()> {
        self.sink.recover(&self.checkpoint.sink)?;
        if self.sink.stores_checkpoint() {
            // The sink's stored checkpoint may be ahead of the local one, with dead
            // letters the local one does not count: which one wins is known once the
            // sink is asked (`sync_with_sink`), and the dead letters wait for it.
            self.synced = false;
            Ok(())
        } else {
            self.dead.recover(&self.checkpoint.dead_letter)
        }
    }

    /// Delivers the next records of the embedded buffer; returns how many it consumed.
    pub fn step(&mut self, log: &EmbeddedLog) -> Result<usize> {
        if !self.synced {
            self.sync_with_sink()?;
        }
        let records = match log.read(self.checkpoint.next_offset, STEP_BYTES) {
            Ok(records) => records,
            Err(logferry_buffer::Error::Truncated { requested, oldest }) => {
                error!(
                    destination = %self.name,
                    "buffer records {requested}..{oldest} are gone before this destination got \
                     them; resuming at {oldest}"
                );
                self.checkpoint.next_offset = oldest;
                return Ok(0);
            }
            Err(e) => return Err(e).context("reading the buffer"),
        };
        let mut records = records;
        let read: usize = records.iter().map(|r| r.payload.len()).sum();
        // Bound the step by what its batches decompress to, as well as by what they
        // take in the buffer.
        let mut raw = 0u64;
        let keep = records
            .iter()
            .position(|r| {
                raw = raw.saturating_add(r.meta.raw_bytes);
                raw > STEP_RAW_BYTES
            })
            .unwrap_or(records.len())
            .max(1);
        // After a stop in the middle of a step, the batches it held go one at a time
        // until past it, so the one that stops the router is found and set aside.
        let suspect = self
            .suspect
            .filter(|s| s.covers(self.checkpoint.next_offset));
        let keep = if suspect.is_some() { 1 } else { keep };
        self.backlog = read >= STEP_BYTES / 2 || keep < records.len();
        records.truncate(keep);
        let Some(last) = records.last().map(|r| r.offset) else {
            return Ok(0);
        };
        let from = self.checkpoint.next_offset;
        if let Some(suspect) = suspect
            && suspect.condemns(from, last + 1)
        {
            let reason = format!(
                "the backend crashed {} times in a row while delivering this batch (an abort, \
                 a failed allocation, a fault); it is set aside so delivery goes on",
                suspect.stops
            );
            return self.set_aside(&records[0], reason);
        }
        let stops = suspect.map_or(0, |s| if s.from == from { s.stops } else { 0 });
        self.marker.start(from, last + 1, stops);
        let delivered = self.deliver(&records, last + 1);
        self.marker.finish();
        delivered
    }

    /// Dead-letters one stored batch whole, without opening it, and steps past it.
    fn set_aside(&mut self, record: &Record, reason: String) -> Result<usize> {
        let next = record.offset + 1;
        error!(destination = %self.name, offset = record.offset, "dead-lettering a batch: {reason}");
        self.commit_step(next, |this, marks| {
            this.metrics.open_failed("stopped");
            this.dead_letter_batch(record, &reason, marks)?;
            Ok(BTreeSet::new())
        })?;
        self.suspect = None;
        Ok(1)
    }

    /// Delivers `records` and checkpoints `next_offset` as where to resume (the
    /// position after them in the buffer, or in a Kafka partition), all or nothing.
    ///
    /// Order: records to the sink, dead letters made durable, then the sink's commit
    /// (which may store this checkpoint with its data), then records the commit
    /// refused to the dead letters, then the checkpoint file.
    pub fn deliver(&mut self, records: &[Record], next_offset: u64) -> Result<usize> {
        self.commit_step(next_offset, |this, marks| {
            for record in records {
                this.deliver_guarded(record, marks)?;
            }
            Ok(BTreeSet::new())
        })?;
        Ok(records.len())
    }

    /// Delivers one batch; a panic on it fails the step, and the retry dead-letters
    /// the batch instead, so one batch that trips a bug cannot stop a destination.
    fn deliver_guarded(
        &mut self,
        record: &Record,
        marks: &mut BTreeMap<String, u64>,
    ) -> Result<()> {
        if let Some((offset, message)) = &self.panicked
            && *offset == record.offset
        {
            let reason = format!("delivering this batch panicked: {message}");
            self.metrics.open_failed("panic");
            return self.dead_letter_batch(record, &reason, marks);
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::limits::fault_hooks(record.offset);
            self.deliver_one(record, marks)
        }));
        match outcome {
            Ok(result) => result,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                error!(
                    destination = %self.name,
                    offset = record.offset,
                    "delivering a batch panicked ({message}); it is dead-lettered on the retry"
                );
                self.panicked = Some((record.offset, message.clone()));
                anyhow::bail!(
                    "delivering the batch at offset {} panicked: {message}",
                    record.offset
                )
            }
        }
    }

    /// Dead-letters a stored batch whole, as it is in the buffer, with `reason`, and
    /// moves its agent's mark past it.
    fn dead_letter_batch(
        &mut self,
        record: &Record,
        reason: &str,
        marks: &mut BTreeMap<String, u64>,
    ) -> Result<()> {
        let meta = &record.meta;
        let key = format!("{}/{}", meta.tenant, hex::encode(meta.agent_id));
        let mark = marks.get(&key).copied().unwrap_or(0);
        marks.insert(key, mark.max(meta.last_seq));
        self.dead_letter(json!({
            "time": now(),
            "destination": self.name,
            "tenant": meta.tenant,
            "access_key": meta.access_key,
            "agent": hex::encode(meta.agent_id),
            "buffer_offset": record.offset,
            "reason": reason,
            "seq_range": [meta.first_seq, meta.last_seq],
            "key_id": meta.key_id,
            "compression": meta.compression,
            "payload_b64": BASE64.encode(&record.payload),
        }))
    }

    /// One all-or-nothing step: `write` hands records to the sink and returns the
    /// dead letters it replayed; then everything is committed with `next_offset`.
    /// On error, all of it is undone.
    fn commit_step(
        &mut self,
        next_offset: u64,
        write: impl FnOnce(&mut Self, &mut BTreeMap<String, u64>) -> Result<BTreeSet<u64>>,
    ) -> Result<()> {
        if !self.synced {
            self.sync_with_sink()?;
        }
        let mut marks = self.checkpoint.marks.clone();
        let result = (|| -> Result<Checkpoint> {
            let replayed = write(self, &mut marks)?;
            self.dead_letter_rejected()?;
            let mut checkpoint = Checkpoint {
                version: Checkpoint::VERSION,
                next_offset,
                marks,
                sink: serde_json::Value::Null,
                dead_letter: self.dead.commit().context("committing dead letters")?,
                replayed: self.checkpoint.replayed.union(&replayed).copied().collect(),
            };
            checkpoint.sink = self
                .sink
                .commit(&checkpoint)
                .context("committing the sink")?;
            if self.dead_letter_rejected()? > 0 {
                checkpoint.dead_letter = self.dead.commit().context("committing dead letters")?;
            }
            Ok(checkpoint)
        })();
        match result.and_then(|c| c.store(&self.checkpoint_path).map(|()| c)) {
            Ok(checkpoint) => {
                self.checkpoint = checkpoint;
                self.resumed = true;
                if let Err(e) = self.sink.checkpoint_stored() {
                    warn!(destination = %self.name, "after storing the checkpoint: {e:#}");
                }
                Ok(())
            }
            Err(e) => {
                if let Err(undo) = self.recover() {
                    error!(destination = %self.name, "cannot undo a failed step: {undo:#}");
                }
                // The commit may have landed on the far side before the error.
                self.synced = false;
                Err(e)
            }
        }
    }

    /// Sends dead letters (`(number, entry)` as `dead-letter.jsonl` holds them) to
    /// the sink again, in one all-or-nothing step that records their numbers in the
    /// checkpoint, so each is delivered once however often replay runs. Records the
    /// sink refuses again become new dead letters; an entry that still cannot be
    /// delivered (its key is still missing) stays and is reported.
    pub fn replay(&mut self, entries: &[(u64, serde_json::Value)]) -> Result<Vec<(u64, Replay)>> {
        if !self.synced {
            self.sync_with_sink()?;
        }
        let mut outcomes = Vec::new();
        let next = self.checkpoint.next_offset;
        self.commit_step(next, |this, _| {
            let mut replayed = BTreeSet::new();
            for (number, entry) in entries {
                let outcome = if this.checkpoint.replayed.contains(number) {
                    Replay::Already
                } else if let Some(reason) = this.replay_one(entry)? {
                    Replay::Fails(reason)
                } else {
                    replayed.insert(*number);
                    Replay::Delivered
                };
                outcomes.push((*number, outcome));
            }
            Ok(replayed)
        })?;
        Ok(outcomes)
    }

    /// Writes one dead letter's records to the sink; `Some(reason)` if it still
    /// cannot be delivered (nothing was written then).
    fn replay_one(&mut self, entry: &serde_json::Value) -> Result<Option<String>> {
        let text = |key: &str| entry[key].as_str().unwrap_or_default().to_string();
        let (tenant, access_key, agent, tag) = (
            text("tenant"),
            text("access_key"),
            text("agent"),
            text("tag"),
        );
        let at = Chunk {
            tenant: &tenant,
            access_key: &access_key,
            agent: &agent,
            seq: entry["seq"].as_u64().unwrap_or(0),
            tag: &tag,
            offset: entry["buffer_offset"].as_u64().unwrap_or(0),
            first_index: entry["index"].as_u64().unwrap_or(0) as usize,
            data: &[],
        };
        let bytes = |key: &str| {
            BASE64
                .decode(entry[key].as_str().unwrap_or_default())
                .map_err(|e| format!("`{key}` is not base64: {e}"))
        };
        if let Some(record) = entry.get("record") {
            if self.format == Format::Msgpack {
                return Ok(Some(
                    "a JSON record cannot go to a msgpack destination".into(),
                ));
            }
            let mut line = match record {
                serde_json::Value::String(text) => text.clone().into_bytes(),
                record => serde_json::to_vec(record)?,
            };
            line.push(b'\n');
            self.sink.write(&Chunk { data: &line, ..at })?;
            self.metrics.records.inc();
            Ok(None)
        } else if entry.get("chunk_b64").is_some() {
            match bytes("chunk_b64") {
                Ok(data) => self.write_chunk(at, &data),
                Err(reason) => Ok(Some(reason)),
            }
        } else if entry.get("payload_b64").is_some() {
            let mut agent_id = [0u8; 16];
            let record = match (
                bytes("payload_b64"),
                hex::decode_to_slice(&agent, &mut agent_id),
            ) {
                (Ok(payload), Ok(())) => Record {
                    offset: at.offset,
                    meta: logferry_buffer::RecordMeta {
                        tenant: tenant.clone(),
                        access_key: access_key.clone(),
                        agent_id,
                        first_seq: entry["seq_range"][0].as_u64().unwrap_or(0),
                        last_seq: entry["seq_range"][1].as_u64().unwrap_or(0),
                        key_id: entry["key_id"].as_u64().unwrap_or(0) as u32,
                        compression: entry["compression"].as_u64().unwrap_or(0) as u8,
                        chunk_count: 0,
                        raw_bytes: 0,
                        received_unix_ms: 0,
                    },
                    payload,
                },
                (Err(reason), _) => return Ok(Some(reason)),
                (_, Err(e)) => return Ok(Some(format!("`agent` is not a hex agent id: {e}"))),
            };
            let payload = match self.open_batch(&record) {
                Ok(payload) => payload,
                Err((_, reason)) => return Ok(Some(reason)),
            };
            let base = json!({
                "time": now(),
                "destination": self.name,
                "tenant": tenant,
                "access_key": access_key,
                "agent": agent,
                "buffer_offset": record.offset,
            });
            self.write_chunks(&record, &payload, 0, &base)?;
            Ok(None)
        } else {
            Ok(Some("holds no record, chunk or batch to send".into()))
        }
    }

    /// Ends the destination at shutdown: one last empty step in which the sink may
    /// seal what it wrote (the file sink signs a checkpoint of every chain), so a
    /// clean stop leaves nothing unsigned.
    pub fn close(&mut self) -> Result<()> {
        if !self.resumed || !self.sink.prepare_close() {
            return Ok(());
        }
        self.seal()
    }

    /// One empty step, in which the sink seals what it wrote ([`Sink::seal_due_in`]).
    pub fn seal(&mut self) -> Result<()> {
        if !self.resumed {
            return Ok(());
        }
        let next = self.checkpoint.next_offset;
        self.deliver(&[], next).map(|_| ())
    }

    /// See [`Sink::seal_due_in`].
    pub fn seal_due_in(&self) -> Option<Duration> {
        self.sink.seal_due_in()
    }

    /// Adopts the checkpoint a sink stored with its data when it differs from the
    /// local file (a crash between the two, or a failed step whose commit landed).
    fn sync_with_sink(&mut self) -> Result<()> {
        let stored = self
            .sink
            .stored_checkpoint()
            .context("reading the checkpoint stored in the sink")?;
        let local = (
            self.checkpoint.next_offset,
            &self.checkpoint.marks,
            &self.checkpoint.replayed,
        );
        let Some(stored) = stored.filter(|s| (s.next_offset, &s.marks, &s.replayed) != local)
        else {
            if self.sink.stores_checkpoint() {
                self.dead.recover(&self.checkpoint.dead_letter)?;
            }
            self.synced = true;
            return Ok(());
        };
        if stored.next_offset < self.checkpoint.next_offset {
            warn!(
                destination = %self.name,
                "the sink's stored cursor ({}) is behind the local checkpoint ({}); \
                 re-delivering from the sink's",
                stored.next_offset,
                self.checkpoint.next_offset
            );
        } else {
            info!(
                destination = %self.name,
                "resuming at the sink's stored cursor {} (local checkpoint: {})",
                stored.next_offset,
                self.checkpoint.next_offset
            );
        }
        self.sink.recover(&stored.sink)?;
        self.dead.recover(&stored.dead_letter)?;
        stored.store(&self.checkpoint_path)?;
        self.checkpoint = stored;
        self.resumed = true;
        self.synced = true;
        Ok(())
    }

    /// Dead-letters what the sink refused; returns how many.
    fn dead_letter_rejected(&mut self) -> Result<usize> {
        let rejected = self.sink.take_rejected();
        let n = rejected.len();
        if n > 0 {
            warn!(destination = %self.name, "dead-lettering {n} record(s) the sink refused");
        }
        for r in rejected {
            let record: serde_json::Value = serde_json::from_slice(&r.line)
                .unwrap_or_else(|_| String::from_utf8_lossy(&r.line).into_owned().into());
            self.dead_letter(json!({
                "time": now(),
                "destination": self.name,
                "tenant": r.tenant,
                "access_key": r.access_key,
                "agent": r.agent,
                "buffer_offset": r.offset,
                "reason": r.reason,
                "seq": r.seq,
                "index": r.index,
                "tag": r.tag,
                "record": record,
            }))?;
        }
        Ok(n)
    }

    fn dead_letter(&mut self, entry: serde_json::Value) -> Result<()> {
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        self.metrics.dead_letters.inc();
        self.dead.append(Path::new("dead-letter.jsonl"), &line)
    }

    /// Opens a stored batch: unseal it when it is encrypted, then decompress and
    /// decode it. The error says which step failed (a metric label) and why.
    fn open_batch(&self, record: &Record) -> Result<BatchPayload, (&'static str, String)> {
        let meta = &record.meta;
        let compression = Compression::try_from(i32::from(meta.compression)).map_err(|_| {
            (
                "payload",
                format!("unknown compression {}", meta.compression),
            )
        })?;
        let unsealed;
        let payload = if meta.key_id == 0 {
            &record.payload[..]
        } else {
            let key = self
                .keys
                .get(&meta.tenant, meta.key_id)
                .map_err(|e| ("unknown_key", e))?;
            let context = BatchContext {
                tenant: &meta.tenant,
                agent_id: meta.agent_id,
                first_seq: meta.first_seq,
                last_seq: meta.last_seq,
                key_id: meta.key_id,
                compression: i32::from(meta.compression),
            };
            unsealed = seal::open(&key, &context, &record.payload).map_err(|e| ("seal", e))?;
            &unsealed[..]
        };
        let opened = open_payload(meta, compression, payload, self.max_batch_bytes)?;
        self.metrics.opened(meta.key_id);
        Ok(opened)
    }

    fn deliver_one(&mut self, record: &Record, marks: &mut BTreeMap<String, u64>) -> Result<()> {
        let meta = &record.meta;
        let agent = hex::encode(meta.agent_id);
        let mark_key = format!("{}/{agent}", meta.tenant);
        let mark = marks.get(&mark_key).copied().unwrap_or(0);
        if meta.last_seq <= mark {
            self.metrics
                .duplicates_skipped
                .inc_by(u64::from(meta.chunk_count));
            return Ok(());
        }
        if !self.route.takes_batch(&meta.tenant, &meta.access_key) {
            marks.insert(mark_key, meta.last_seq);
            return Ok(());
        }
        let base = json!({
            "time": now(),
            "destination": self.name,
            "tenant": meta.tenant,
            "access_key": meta.access_key,
            "agent": agent,
            "buffer_offset": record.offset,
        });
        let opened = self.open_batch(record);
        let payload = match opened {
            Ok(payload) => payload,
            Err((kind, reason)) => {
                self.metrics.open_failed(kind);
                warn!(destination = %self.name, offset = record.offset, "dead-lettering a batch: {reason}");
                return self.dead_letter_batch(record, &reason, marks);
            }
        };
        let delivered_to = self.write_chunks(record, &payload, mark, &base)?;
        marks.insert(mark_key, delivered_to.max(meta.last_seq));
        Ok(())
    }

    /// Writes the chunks of an opened batch whose seq is above `mark` to the sink;
    /// a chunk that does not decode goes to the dead letters. Returns the last seq.
    fn write_chunks(
        &mut self,
        record: &Record,
        payload: &BatchPayload,
        mark: u64,
        base: &serde_json::Value,
    ) -> Result<u64> {
        let meta = &record.meta;
        let agent = hex::encode(meta.agent_id);
        let mut delivered_to = mark;
        for chunk in &payload.chunks {
            if chunk.seq <= delivered_to {
                self.metrics.duplicates_skipped.inc();
                continue;
            }
            delivered_to = chunk.seq;
            if !self.route.takes_tag(&chunk.tag) {
                continue;
            }
            let at = Chunk {
                tenant: &meta.tenant,
                access_key: &meta.access_key,
                agent: &agent,
                seq: chunk.seq,
                tag: &chunk.tag,
                offset: record.offset,
                first_index: 0,
                data: &[],
            };
            if let Some(reason) = self.write_chunk(at, &chunk.data)? {
                warn!(destination = %self.name, seq = chunk.seq, tag = %chunk.tag, "dead-lettering: {reason}");
                self.dead_letter(with(
                    base.clone(),
                    json!({
                        "reason": reason,
                        "seq": chunk.seq,
                        "tag": chunk.tag,
                        "chunk_b64": BASE64.encode(&chunk.data),
                    }),
                ))?;
            }
        }
        Ok(delivered_to)
    }

    /// Decodes one Fluent Bit chunk and writes it to the sink in this destination's
    /// format. `Some(reason)`: the chunk does not decode, and nothing was written.
    ///
    /// The chunk is checked whole first (nothing kept), then rendered event by event
    /// and handed to the sink in pieces of about [`PIECE_BYTES`], each with the index
    /// of its first record, so memory stays bounded whatever the chunk holds.
    fn write_chunk(&mut self, at: Chunk<'_>, data: &[u8]) -> Result<Option<String>> {
        let records = match check_chunk(data) {
            Ok(records) => records,
            Err(e) => return Ok(Some(format!("chunk does not decode: {e}"))),
        };
        if self.format == Format::Msgpack {
            self.sink.write(&Chunk { data, ..at })?;
            self.metrics.records.inc_by(records as u64);
            return Ok(None);
        }
        self.renderer.start(Origin {
            tag: at.tag,
            tenant: at.tenant,
            agent: at.agent,
        });
        self.lines.clear();
        let mut first_index = at.first_index;
        let mut pending = 0;
        for event in events(data) {
            let event = event.context("the chunk changed while it was read")?;
            let wrote = self
                .renderer
                .event(&event, &mut self.lines)
                .map_err(|e| anyhow::anyhow!("rendering a checked chunk: {e}"))?;
            pending += usize::from(wrote);
            if self.lines.len() >= PIECE_BYTES {
                self.sink.write(&Chunk {
                    data: &self.lines,
                    first_index,
                    ..at
                })?;
                first_index += pending;
                pending = 0;
                self.lines.clear();
            }
        }
        if pending > 0 {
            self.sink.write(&Chunk {
                data: &self.lines,
                first_index,
                ..at
            })?;
        }
        if self.lines.capacity() > 4 * PIECE_BYTES {
            self.lines = Vec::new();
        }
        self.metrics.records.inc_by(records as u64);
        Ok(None)
    }
}

/// Opens an unsealed (or already unsealed) batch payload stored with `meta`:
/// checks the declared raw size against `max_batch_bytes`, decompresses with the
/// declared size as the cap, decodes, and checks the chunks against the header
/// ([`check_chunks`]). The error names the step that failed (a metric label) and
/// why. What the router does with every stored batch after unsealing it.
pub fn open_payload(
    meta: &logferry_buffer::RecordMeta,
    compression: Compression,
    payload: &[u8],
    max_batch_bytes: u64,
) -> Result<BatchPayload, (&'static str, String)> {
    // Decompression stops at the declared size, itself capped: what a batch
    // claims is checked against what it holds before anything is decoded.
    if meta.raw_bytes > max_batch_bytes {
        return Err((
            "limit",
            format!(
                "the batch declares {} raw bytes, over the {} byte limit (--max-batch-bytes)",
                meta.raw_bytes, max_batch_bytes
            ),
        ));
    }
    let declared = (meta.raw_bytes > 0).then_some(meta.raw_bytes as usize);
    let cap = declared.unwrap_or(max_batch_bytes as usize);
    let raw = batch::decompress(payload, compression, cap).map_err(|e| ("payload", e))?;
    if let Some(declared) = declared
        && raw.len() != declared
    {
        return Err((
            "payload",
            format!(
                "the batch declares {declared} raw bytes but decompresses to {}",
                raw.len()
            ),
        ));
    }
    let opened = batch::decode(&raw).map_err(|e| ("payload", e))?;
    drop(raw);
    check_chunks(meta, &opened).map_err(|e| ("range", e))?;
    Ok(opened)
}

/// Checks an opened batch against its header: as many chunks as it says, each seq
/// inside `[first_seq, last_seq]` and ascending, the first and last on the range's
/// ends. A chunk's seq moves the agent's mark, so a seq outside the range the
/// ingest tier checked could erase the agent's later chunks.
fn check_chunks(meta: &logferry_buffer::RecordMeta, payload: &BatchPayload) -> Result<(), String> {
    let range = format!("[{}, {}]", meta.first_seq, meta.last_seq);
    // `chunk_count` 0: a batch replayed from the dead letters, whose header keeps
    // only the range.
    if meta.chunk_count != 0 && payload.chunks.len() != meta.chunk_count as usize {
        return Err(format!(
            "the batch {range} says it holds {} chunks, its payload holds {}",
            meta.chunk_count,
            payload.chunks.len()
        ));
    }
    let (Some(first), Some(last)) = (payload.chunks.first(), payload.chunks.last()) else {
        return Err(format!("the batch {range} holds no chunks"));
    };
    if meta.chunk_count != 0 && (first.seq != meta.first_seq || last.seq != meta.last_seq) {
        return Err(format!(
            "the batch {range} holds chunks {} to {}, not its range's ends",
            first.seq, last.seq
        ));
    }
    let mut previous = meta.first_seq.saturating_sub(1);
    for chunk in &payload.chunks {
        if chunk.seq <= previous || chunk.seq > meta.last_seq {
            return Err(format!(
                "chunk seq {} is outside the batch's range {range} or out of order",
                chunk.seq
            ));
        }
        previous = chunk.seq;
    }
    Ok(())
}

/// Runs a destination until shutdown: waits for durable records, steps, retries
/// failures with capped exponential backoff; at shutdown, closes it.
pub(super) async fn run(
    destination: Destination,
    log: Arc<EmbeddedLog>,
    done: Arc<AtomicU64>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(mut destination) = run_steps(destination, log, done, shutdown).await else {
        return;
    };
    let name = destination.name().to_string();
    match tokio::task::spawn_blocking(move || destination.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(destination = %name, "closing: {e:#}"),
        Err(e) => warn!(destination = %name, "closing: {e}"),
    }
}

/// The step loop of [`run`]; hands the destination back at shutdown (`None` if a
/// step panicked).
async fn run_steps(
    destination: Destination,
    log: Arc<EmbeddedLog>,
    done: Arc<AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<Destination> {
    let mut durable = log.subscribe();
    let mut destination = destination;
    let mut delay = Duration::from_millis(100);
    let mut failing = false;
    loop {
        if *shutdown.borrow() {
            return Some(destination);
        }
        if *durable.borrow_and_update() <= destination.next_offset() {
            let seal = destination.seal_due_in();
            let sealing = tokio::select! {
                changed = durable.changed() => {
                    if changed.is_err() {
                        return Some(destination);
                    }
                    false
                }
                _ = shutdown.wait_for(|down| *down) => return Some(destination),
                _ = async {
                    match seal {
                        Some(due) => tokio::time::sleep(due).await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if sealing {
                // Idle with an unsigned tail: an empty step signs it.
                let joined = tokio::task::spawn_blocking(move || {
                    let result = destination.seal();
                    (destination, result)
                })
                .await;
                let Ok((sealed, result)) = joined else {
                    error!("a destination task panicked; it stops here");
                    return None;
                };
                destination = sealed;
                if let Err(e) = result {
                    warn!(destination = %destination.name(), "sealing the sink failed, retrying: {e:#}");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait_for(|down| *down) => return Some(destination),
                    }
                }
            }
            continue;
        }
        let stepping = log.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let result = destination.step(&stepping);
            (destination, result)
        })
        .await;
        let Ok((stepped, result)) = joined else {
            error!("a destination task panicked; it stops here");
            return None;
        };
        destination = stepped;
        done.store(destination.next_offset(), Ordering::Release);
        destination
            .metrics
            .lag
            .set(log.end_offset().saturating_sub(destination.next_offset()) as i64);
        match result {
            Ok(_) => {
                if failing {
                    info!(destination = %destination.name(), "delivering again");
                }
                failing = false;
                delay = Duration::from_millis(100);
                // A sink that batches by time waits before its next step, unless a
                // backlog is waiting.
                let interval = destination.sink.step_interval();
                if !interval.is_zero() && !destination.backlog {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = shutdown.wait_for(|down| *down) => return Some(destination),
                    }
                }
            }
            Err(e) => {
                if !failing {
                    error!(destination = %destination.name(), "delivery failed, retrying with backoff: {e:#}");
                }
                failing = true;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait_for(|down| *down) => return Some(destination),
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}
