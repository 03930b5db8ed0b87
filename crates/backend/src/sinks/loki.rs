//! The Loki sink: the push API (`POST /loki/api/v1/push`, JSON body).
//!
//! Each record is one entry: its JSON line, at the record's own timestamp, in the
//! stream whose labels are `tenant` plus the configured record keys. Loki ignores
//! an entry whose stream, timestamp and line it already holds, so re-sending a step
//! after a crash adds nothing: exactly once by Loki's own means. (Two records that
//! are identical to the nanosecond and in the same stream are one entry to Loki.)
//!
//! - **Cardinality guard**: each label takes at most `max_label_values` distinct
//!   values; later new values become `__overflow__`, with one warning per label. The
//!   values seen are part of the destination's checkpoint, so a step delivered again
//!   after a crash labels each record as the first time (the same stream, so Loki's
//!   dedup applies).
//! - **Order**: entries are sorted by time within each stream of a push, which Loki
//!   wants; records older than Loki's window are refused by it and dead-lettered.
//! - **Errors**: 429 and 5xx are retried. A 400 means some entries are invalid
//!   (too old, too long); Loki keeps the valid ones of that push, so the push is
//!   split in halves until each refused entry stands alone and is dead-lettered with
//!   Loki's message. Any other status fails the step, to be retried with backoff.
//! - **Tenancy**: `X-Scope-OrgID` is the tenant's name unless `org_id` is set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tracing::warn;

use super::http::{self, BasicAuth, Client};
use rustls_pki_types::CertificateDer;

use super::{Chunk, Rejected, Sink};
use crate::router::Checkpoint;

/// Where to push and how to label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LokiConfig {
    /// Base URL, like `http://loki:3100`.
    pub url: String,
    /// Top-level keys of the record that become stream labels.
    pub labels: Vec<String>,
    pub max_label_values: usize,
    /// `X-Scope-OrgID`; `None`: the tenant's name.
    pub org_id: Option<String>,
    pub auth: Option<BasicAuth>,
    /// The CA certificates an `https` server's certificate is checked against;
    /// `None`: Mozilla's roots.
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// A push is sent once it holds this many bytes of lines (and at commit).
    pub batch_max_bytes: usize,
}

impl LokiConfig {
    pub const DEFAULT_MAX_LABEL_VALUES: usize = 100;
    pub const DEFAULT_BATCH_MAX_BYTES: usize = 1 << 20;
    /// The value a label takes once it has `max_label_values` others.
    pub const OVERFLOW: &str = "__overflow__";
}

type Labels = Arc<BTreeMap<String, String>>;

#[derive(Debug)]
struct Entry {
    labels: Labels,
    org: Arc<str>,
    nanos: i64,
    line: String,
    /// Shared by the records of one chunk.
    origin: Arc<Rejected>,
    index: usize,
}

/// See the module docs.
pub struct LokiSink {
    config: LokiConfig,
    client: Client,
    entries: Vec<Entry>,
    bytes: usize,
    rejected: Vec<Rejected>,
    /// Label values seen per label, for the guard.
    seen: HashMap<String, HashSet<String>>,
    overflowed: HashSet<String>,
}

impl std::fmt::Debug for LokiSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LokiSink")
            .field("url", &self.config.url)
            .finish()
    }
}

#[derive(Serialize)]
struct Push<'a> {
    streams: Vec<Stream<'a>>,
}

#[derive(Serialize)]
struct Stream<'a> {
    stream: &'a BTreeMap<String, String>,
    /// `["<unix nanoseconds>", "<line>"]`
    values: Vec<(String, &'a str)>,
}

/// A record key as a Loki label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn label_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        name.insert(0, '_');
    }
    name
}

impl LokiSink {
    pub fn new(config: LokiConfig) -> Self {
        Self {
            client: Client::new(config.auth.as_ref(), config.ca.as_deref()),
            config,
            entries: Vec::new(),
            bytes: 0,
            rejected: Vec::new(),
            seen: HashMap::new(),
            overflowed: HashSet::new(),
        }
    }

    fn labels(&mut self, tenant: &str, record: &serde_json::Value) -> Labels {
        let mut labels = BTreeMap::from([("tenant".to_string(), tenant.to_string())]);
        for key in &self.config.labels {
            let value = match record.get(key) {
                None | Some(serde_json::Value::Null) => continue,
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            let name = label_name(key);
            let seen = self.seen.entry(name.clone()).or_default();
            let value = if seen.contains(&value) {
                value
            } else if seen.len() < self.config.max_label_values {
                seen.insert(value.clone());
                value
            } else {
                if self.overflowed.insert(name.clone()) {
                    warn!(
                        label = %name,
                        "label `{name}` has {} values; new ones become `{}` (max_label_values)",
                        self.config.max_label_values,
                        LokiConfig::OVERFLOW
                    );
                }
                LokiConfig::OVERFLOW.to_string()
            };
            labels.insert(name, value);
        }
        Arc::new(labels)
    }

    fn body(entries: &[&Entry]) -> Result<Vec<u8>> {
        let mut streams: BTreeMap<&Labels, Vec<&Entry>> = BTreeMap::new();
        for entry in entries {
            streams.entry(&entry.labels).or_default().push(entry);
        }
        let push = Push {
            streams: streams
                .into_iter()
                .map(|(labels, mut list)| {
                    list.sort_by_key(|e| e.nanos);
                    Stream {
                        stream: labels,
                        values: list
                            .into_iter()
                            .map(|e| (e.nanos.to_string(), e.line.as_str()))
                            .collect(),
                    }
                })
                .collect(),
        };
        Ok(serde_json::to_vec(&push)?)
    }

    /// Pushes `entries` (one org); halves a push Loki refuses with 400 until the
    /// refused entries stand alone.
    fn push(&mut self, org: &str, entries: &[&Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let url = http::join(&self.config.url, "/loki/api/v1/push");
        let body = Self::body(entries)?;
        let answer = self.client.post_retrying(
            &url,
            "application/json",
            &[("X-Scope-OrgID", org)],
            &body,
        )?;
        if answer.ok() {
            return Ok(());
        }
        if answer.status != 400 {
            bail!(
                "Loki refused a push of {} entries with HTTP {}: {}",
                entries.len(),
                answer.status,
                answer.excerpt()
            );
        }
        if let [entry] = entries {
            self.rejected.push(entry.origin.at(
                entry.index,
                entry.line.as_bytes(),
                format!("Loki: {}", answer.excerpt()),
            ));
            return Ok(());
        }
        let (left, right) = entries.split_at(entries.len() / 2);
        self.push(org, left)?;
        self.push(org, right)
    }

    fn flush(&mut self) -> Result<()> {
        let entries = std::mem::take(&mut self.entries);
        self.bytes = 0;
        let mut orgs: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
        for entry in &entries {
            orgs.entry(&entry.org).or_default().push(entry);
        }
        for (org, list) in orgs {
            self.push(org, &list)?;
        }
        Ok(())
    }
}

impl Sink for LokiSink {
    fn kind(&self) -> &'static str {
        "loki"
    }

    fn recover(&mut self, state: &serde_json::Value) -> Result<()> {
        self.entries.clear();
        self.bytes = 0;
        self.rejected.clear();
        self.seen = match state.get("label_values") {
            Some(values) => serde_json::from_value(values.clone())
                .context("the Loki label values in the checkpoint")?,
            None => HashMap::new(),
        };
        Ok(())
    }

    fn write(&mut self, chunk: &Chunk<'_>) -> Result<()> {
        let org: Arc<str> = self.config.org_id.as_deref().unwrap_or(chunk.tenant).into();
        let origin = Arc::new(Rejected::origin(chunk));
        for (index, line) in chunk.lines() {
            let value: serde_json::Value =
                serde_json::from_slice(line).context("a rendered record is not JSON")?;
            let nanos = value["time"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .and_then(|t| t.timestamp_nanos_opt());
            let Some(nanos) = nanos else {
                self.rejected.push(origin.at(
                    index,
                    line,
                    "the record's time does not fit Loki's nanosecond timestamps",
                ));
                continue;
            };
            let labels = self.labels(chunk.tenant, &value["record"]);
            let line = String::from_utf8_lossy(line).into_owned();
            self.bytes += line.len();
            self.entries.push(Entry {
                labels,
                org: org.clone(),
                nanos,
                origin: origin.clone(),
                index,
                line,
            });
        }
        if self.bytes >= self.config.batch_max_bytes {
            self.flush()?;
        }
        Ok(())
    }

    fn commit(&mut self, _cursor: &Checkpoint) -> Result<serde_json::Value> {
        self.flush()?;
        Ok(serde_json::json!({ "label_values": self.seen }))
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_values_seen_survive_a_restart_through_the_checkpoint() {
        let config = LokiConfig {
            url: "http://unused".into(),
            labels: vec!["app".into()],
            max_label_values: 1,
            org_id: None,
            auth: None,
            ca: None,
            batch_max_bytes: usize::MAX,
        };
        let mut sink = LokiSink::new(config.clone());
        assert_eq!(
            sink.labels("t", &serde_json::json!({"app": "a"}))["app"],
            "a"
        );
        let state = sink.commit(&Checkpoint::default()).unwrap();
        let mut restarted = LokiSink::new(config);
        restarted.recover(&state).unwrap();
        let label = |sink: &mut LokiSink, app: &str| {
            sink.labels("t", &serde_json::json!({ "app": app }))["app"].clone()
        };
        assert_eq!(label(&mut restarted, "b"), "__overflow__");
        assert_eq!(label(&mut restarted, "a"), "a");
    }

    #[test]
    fn label_names_follow_loki_rules() {
        assert_eq!(label_name("level"), "level");
        assert_eq!(label_name("k8s.pod-name"), "k8s_pod_name");
        assert_eq!(label_name("1st"), "_1st");
    }

    #[test]
    fn label_values_past_the_limit_overflow_and_streams_are_sorted() {
        let mut sink = LokiSink::new(LokiConfig {
            url: "http://unused".into(),
            labels: vec!["app".into()],
            max_label_values: 2,
            org_id: None,
            auth: None,
            ca: None,
            batch_max_bytes: usize::MAX,
        });
        let values: Vec<String> = ["a", "b", "c", "a", "d"]
            .iter()
            .map(|app| sink.labels("t", &serde_json::json!({ "app": app }))["app"].clone())
            .collect();
        assert_eq!(values, ["a", "b", "__overflow__", "a", "__overflow__"]);

        let lines = "{\"time\":\"2026-01-01T00:00:02Z\",\"record\":{\"app\":\"a\"}}\n\
                     {\"time\":\"2026-01-01T00:00:01Z\",\"record\":{\"app\":\"a\"}}\n";
        let chunk = Chunk {
            tenant: "t",
            access_key: "k",
            agent: "00",
            seq: 1,
            tag: "x",
            offset: 0,
            first_index: 0,
            data: lines.as_bytes(),
        };
        sink.write(&chunk).unwrap();
        let entries: Vec<&Entry> = sink.entries.iter().collect();
        let body: serde_json::Value =
            serde_json::from_slice(&LokiSink::body(&entries).unwrap()).unwrap();
        assert_eq!(
            body["streams"][0]["stream"],
            serde_json::json!({"tenant": "t", "app": "a"})
        );
        let stamps: Vec<&str> = body["streams"][0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v[0].as_str().unwrap())
            .collect();
        assert_eq!(stamps, ["1767225601000000000", "1767225602000000000"]);
    }
}
