//! Destinations the router delivers to.
//!
//! A sink takes rendered chunks and, on `commit`, makes them durable and returns
//! its state for the destination's checkpoint. After a crash the router calls
//! `recover` with the state of the last checkpoint and re-delivers from the
//! checkpoint's cursor. Each sink turns that re-delivery into exactly-once by its
//! own means:
//!
//! - file: `recover` truncates to the checkpointed lengths;
//! - Elasticsearch: every record has a deterministic `_id`, so a re-send overwrites;
//! - Loki: Loki drops an entry whose stream, timestamp and line it already holds;
//! - PostgreSQL: the cursor is stored in the same transaction as the rows, and
//!   [`Sink::stored_checkpoint`] hands it back, so a committed step is never redone;
//! - S3: one object per step, named by its buffer offset range, and the checkpoint
//!   stored beside them; objects past the checkpoint are deleted before writing again;
//! - Kafka topic: each message carries the record's identity in a header; what a
//!   step wrote past the checkpoint's high watermarks is read back and not sent again;
//! - stdout: at least once (a terminal cannot be truncated).
//!
//! A record the far side refuses for good (a mapping error, a constraint) is
//! handed back by [`Sink::take_rejected`] and lands in the destination's dead letters.

mod elasticsearch;
mod file;
mod fileset;
mod http;
mod kafka;
mod loki;
mod postgres;
mod s3;
mod stdout;
pub mod tls;

pub use elasticsearch::{ElasticsearchConfig, ElasticsearchSink};
pub use file::{FileSink, Rotation};
pub use fileset::FileSet;
pub use http::BasicAuth;
pub use kafka::{KafkaSink, KafkaSinkConfig, MessageKey};
pub use loki::{LokiConfig, LokiSink};
pub use postgres::{PostgresConfig, PostgresSink};
pub use s3::{ObjectCompression, S3Config, S3Sink};
pub use stdout::StdoutSink;

use crate::router::Checkpoint;

/// One decoded chunk on its way to a sink.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub tenant: &'a str,
    pub access_key: &'a str,
    /// Agent id, hex.
    pub agent: &'a str,
    pub seq: u64,
    pub tag: &'a str,
    /// Where the batch sits in the buffer.
    pub offset: u64,
    /// The index in its chunk of the first line of `data`: 0, except for a record
    /// replayed from the dead letters, which keeps its identity.
    pub first_index: usize,
    /// JSON lines (one record each), or the raw msgpack events.
    pub data: &'a [u8],
}

impl<'a> Chunk<'a> {
    /// The JSON lines with their index in the chunk (part of each record's identity).
    pub fn lines(&self) -> impl Iterator<Item = (usize, &'a [u8])> {
        let first = self.first_index;
        self.data
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .enumerate()
            .map(move |(index, line)| (first + index, line))
    }
}

/// A record a sink refused for good.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub tenant: String,
    pub access_key: String,
    pub agent: String,
    pub seq: u64,
    pub tag: String,
    pub offset: u64,
    /// The record's index in its chunk.
    pub index: usize,
    pub reason: String,
    /// The JSON line.
    pub line: Vec<u8>,
}

impl Rejected {
    pub fn new(chunk: &Chunk<'_>, index: usize, line: &[u8], reason: impl Into<String>) -> Self {
        Self::origin(chunk).at(index, line, reason)
    }

    /// Where the records of `chunk` come from; [`Rejected::at`] fills in the rest.
    pub fn origin(chunk: &Chunk<'_>) -> Self {
        Self {
            tenant: chunk.tenant.to_string(),
            access_key: chunk.access_key.to_string(),
            agent: chunk.agent.to_string(),
            seq: chunk.seq,
            tag: chunk.tag.to_string(),
            offset: chunk.offset,
            index: 0,
            reason: String::new(),
            line: Vec::new(),
        }
    }

    /// Record `index` of this origin's chunk, refused for `reason`.
    pub fn at(&self, index: usize, line: &[u8], reason: impl Into<String>) -> Self {
        Self {
            index,
            reason: reason.into(),
            line: line.to_vec(),
            ..self.clone()
        }
    }
}

/// One destination's output.
pub trait Sink: Send {
    /// The kind, for logs (`file`, `stdout`, ...).
    fn kind(&self) -> &'static str;
    /// Restores the state of the last checkpoint (`Null` on first start), dropping
    /// whatever was written after it.
    fn recover(&mut self, state: &serde_json::Value) -> anyhow::Result<()>;
    /// Takes one chunk. A sink may send it now or hold it until `commit`.
    fn write(&mut self, chunk: &Chunk<'_>) -> anyhow::Result<()>;
    /// Makes everything written durable; returns the state to checkpoint. `cursor` is
    /// the checkpoint being taken (its `sink` is `Null`), for sinks that store it
    /// with their data.
    fn commit(&mut self, cursor: &Checkpoint) -> anyhow::Result<serde_json::Value>;
    /// Records refused for good since the last call.
    fn take_rejected(&mut self) -> Vec<Rejected> {
        Vec::new()
    }
    /// Whether the sink stores the destination's checkpoint with its data
    /// ([`Sink::stored_checkpoint`]).
    fn stores_checkpoint(&self) -> bool {
        false
    }
    /// The checkpoint the sink stored with its data, if it stores one. It wins over
    /// the local checkpoint file, which may be older.
    fn stored_checkpoint(&mut self) -> anyhow::Result<Option<Checkpoint>> {
        Ok(None)
    }
    /// Called at shutdown; `true` asks for one last (empty) commit, in which the
    /// sink seals what it wrote.
    fn prepare_close(&mut self) -> bool {
        false
    }
    /// How long until the sink wants an empty step to seal what it wrote (the file
    /// sink signs a chain's tail within its checkpoint interval even when no more
    /// records come); `None`: it does not.
    fn seal_due_in(&self) -> Option<std::time::Duration> {
        None
    }
    /// Called once the checkpoint of a step is stored: what the sink records about
    /// a durable state (the file sink's manifest) is written here. An error is
    /// logged, and the sink tries again after the next step.
    fn checkpoint_stored(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// The least time between two steps (a sink that batches by time); zero: none.
    fn step_interval(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}
