//! The Elasticsearch / OpenSearch sink: the bulk API, one `index` action per record.
//!
//! Each record's `_id` is `<agent>-<seq>-<index in chunk>`, the same on every
//! delivery, so re-sending a step after a crash overwrites the documents it wrote
//! before instead of adding copies: exactly once by the far side's own means.
//!
//! Bulk answers are read item by item. Items refused with 429 or 5xx (a full
//! write queue, a shard moving) are sent again, alone; items refused with another
//! status (a mapping conflict, a malformed document) are permanent and go to the
//! destination's dead letters with Elasticsearch's error type and reason. A whole
//! request refused (401, 404, ...) fails the step, which the destination retries
//! with backoff, so a wrong URL or password stops delivery without dropping anything.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tracing::warn;

use rustls_pki_types::CertificateDer;

use super::http::{self, BasicAuth, Client};
use super::{Chunk, Rejected, Sink};
use crate::router::Checkpoint;

/// Where and how to index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElasticsearchConfig {
    /// Base URL, like `https://es.example:9200`.
    pub url: String,
    pub index: String,
    pub auth: Option<BasicAuth>,
    /// The CA certificates an `https` server's certificate is checked against;
    /// `None`: Mozilla's roots.
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// A bulk request is sent once it holds this many bytes (and at commit).
    pub bulk_max_bytes: usize,
}

impl ElasticsearchConfig {
    pub const DEFAULT_BULK_MAX_BYTES: usize = 5 << 20;
}

#[derive(Debug)]
struct Item {
    /// Shared by the records of one chunk.
    origin: Arc<Rejected>,
    index: usize,
    line: Vec<u8>,
}

impl Item {
    fn id(&self) -> String {
        format!("{}-{}-{}", self.origin.agent, self.origin.seq, self.index)
    }

    fn rejected(&self, reason: String) -> Rejected {
        self.origin.at(self.index, &self.line, reason)
    }
}

/// See the module docs.
pub struct ElasticsearchSink {
    config: ElasticsearchConfig,
    client: Client,
    items: Vec<Item>,
    bytes: usize,
    rejected: Vec<Rejected>,
}

impl std::fmt::Debug for ElasticsearchSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElasticsearchSink")
            .field("url", &self.config.url)
            .field("index", &self.config.index)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct BulkAnswer {
    #[serde(default)]
    errors: bool,
    items: Vec<std::collections::HashMap<String, ItemAnswer>>,
}

#[derive(Debug, Deserialize)]
struct ItemAnswer {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

impl ItemAnswer {
    fn reason(&self) -> String {
        match &self.error {
            Some(serde_json::Value::Object(e)) => format!(
                "{}: {}",
                e.get("type").and_then(|t| t.as_str()).unwrap_or("error"),
                e.get("reason").and_then(|r| r.as_str()).unwrap_or("")
            ),
            Some(other) => other.to_string(),
            None => format!("status {}", self.status),
        }
    }
}

impl ElasticsearchSink {
    pub fn new(config: ElasticsearchConfig) -> Self {
        Self {
            client: Client::new(config.auth.as_ref(), config.ca.as_deref()),
            config,
            items: Vec::new(),
            bytes: 0,
            rejected: Vec::new(),
        }
    }

    fn body(&self, items: &[Item]) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.bytes + items.len() * 96);
        for item in items {
            let action = serde_json::json!({
                "index": { "_index": self.config.index, "_id": item.id() }
            });
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut body, &action);
            body.push(b'\n');
            body.extend_from_slice(&item.line);
            body.push(b'\n');
        }
        body
    }

    /// Sends what is buffered; retries the items refused for now; keeps the ones
    /// refused for good in `rejected`.
    fn flush(&mut self) -> Result<()> {
        let mut items = std::mem::take(&mut self.items);
        self.bytes = 0;
        let url = http::join(&self.config.url, "/_bulk");
        let mut attempt = 0;
        while !items.is_empty() {
            let answer =
                self.client
                    .post_retrying(&url, "application/x-ndjson", &[], &self.body(&items))?;
            if !answer.ok() {
                bail!(
                    "Elasticsearch refused a bulk request of {} record(s) with HTTP {}: {}",
                    items.len(),
                    answer.status,
                    answer.excerpt()
                );
            }
            let bulk: BulkAnswer = serde_json::from_str(&answer.body).with_context(|| {
                format!(
                    "Elasticsearch's bulk answer does not parse: {}",
                    answer.excerpt()
                )
            })?;
            if bulk.items.len() != items.len() {
                bail!(
                    "Elasticsearch answered {} item(s) to a bulk request of {}",
                    bulk.items.len(),
                    items.len()
                );
            }
            if !bulk.errors {
                return Ok(());
            }
            let mut again = Vec::new();
            let mut last = String::new();
            for (item, result) in items.into_iter().zip(bulk.items) {
                let Some(result) = result.into_values().next() else {
                    bail!("Elasticsearch answered an empty bulk item");
                };
                match result.status {
                    200..=299 => {}
                    429 | 500.. => {
                        last = result.reason();
                        again.push(item);
                    }
                    _ => self.rejected.push(item.rejected(result.reason())),
                }
            }
            items = again;
            if !items.is_empty() {
                attempt += 1;
                if attempt >= http::ATTEMPTS {
                    bail!(
                        "Elasticsearch still refuses {} record(s) for now after {attempt} \
                         attempts: {last}",
                        items.len()
                    );
                }
                warn!(
                    index = %self.config.index,
                    "Elasticsearch refused {} record(s) for now ({last}); sending them again",
                    items.len()
                );
                std::thread::sleep(http::backoff(attempt));
            }
        }
        Ok(())
    }
}

impl Sink for ElasticsearchSink {
    fn kind(&self) -> &'static str {
        "elasticsearch"
    }

    fn recover(&mut self, _state: &serde_json::Value) -> Result<()> {
        self.items.clear();
        self.bytes = 0;
        self.rejected.clear();
        Ok(())
    }

    fn write(&mut self, chunk: &Chunk<'_>) -> Result<()> {
        let origin = Arc::new(Rejected::origin(chunk));
        for (index, line) in chunk.lines() {
            self.bytes += line.len();
            self.items.push(Item {
                origin: origin.clone(),
                index,
                line: line.to_vec(),
            });
        }
        if self.bytes >= self.config.bulk_max_bytes {
            self.flush()?;
        }
        Ok(())
    }

    fn commit(&mut self, _cursor: &Checkpoint) -> Result<serde_json::Value> {
        self.flush()?;
        Ok(serde_json::Value::Null)
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }
}
