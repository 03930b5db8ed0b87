//! Prometheus metrics and the HTTP endpoints `/metrics`, `/healthz` and `/readyz`.
//!
//! Metric names (all prefixed `logferry_`):
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `ingest_batches_total` | counter | tenant | batches stored in the buffer |
//! | `ingest_chunks_total` | counter | tenant | Fluent Bit chunks in those batches |
//! | `ingest_raw_bytes_total` | counter | tenant | uncompressed bytes of those batches |
//! | `ingest_wire_bytes_total` | counter | tenant | payload bytes as received |
//! | `ingest_duplicate_batches_total` | counter | tenant | re-sent batches acked without storing |
//! | `auth_failures_total` | counter | reason | refused calls: `unauthenticated`, `permission_denied` |
//! | `ingest_refused_total` | counter | tenant, reason | batches and streams refused for what they hold: `agent_owner` (an agent id another access key owns), `seq_gap` (an undeclared jump past `--max-seq-gap`), `raw_size` (a declared size that lies or is over `--max-batch-bytes`), `malformed`, `watchers` (over `--max-watchers-per-key`), `agents` (a new agent id past `--max-agents-per-key`) |
//! | `connections_open` | gauge | | open connections of the gRPC listener |
//! | `connections_refused_total` | counter | reason | connections closed by the listener's limits: `limit` (`--max-connections`), `peer_limit` (`--max-connections-per-peer`), `silent` (nothing sent within `--handshake-timeout`) |
//! | `ingest_seqs_lost_total` | counter | tenant | seqs an agent skipped (declared lost by its spool, or within `--max-seq-gap`) |
//! | `rate_limited_total` | counter | tenant | batches refused with RESOURCE_EXHAUSTED by the tenant's rate limit |
//! | `registry_reloads_total` | counter | result | tenant registry and revocation list reloads: `ok`, `error` |
//! | `registry_version` | gauge | | version of the registry in use (starts at 1, +1 per reload) |
//! | `revoked_tokens` | gauge | | `jti`s in the revocation list |
//! | `buffer_bytes` | gauge | | bytes of retained buffer segments |
//! | `buffer_max_bytes` | gauge | | the buffer's size cap (`--buffer-max-size`) |
//! | `agent_silent` | gauge | tenant, agent | 1: an agent that sent before stored nothing for `--agent-silence-after` |
//! | `agent_rate_anomaly` | gauge | tenant, agent | +1 surge, -1 drop of an agent's rate vs its own baseline, 0 normal |
//! | `agent_last_seen_seconds` | gauge | tenant, agent | Unix time of the agent's last stored batch |
//! | `buffer_end_offset` | gauge | | offset the next stored batch gets |
//! | `destination_records_total` | counter | destination | records delivered |
//! | `destination_dead_letters_total` | counter | destination | dead-lettered chunks and batches |
//! | `destination_duplicates_skipped_total` | counter | destination | chunks skipped as already delivered |
//! | `destination_lag_batches` | gauge | destination | stored batches not yet delivered |
//! | `destination_batches_opened_total` | counter | destination, key_id | batches opened; key id `0`: not encrypted |
//! | `destination_open_failures_total` | counter | destination, reason | batches dead-lettered because they did not open: `unknown_key`, `seal`, `payload`, `limit` (over `--max-batch-bytes`), `range` (chunk seqs that do not match the header), `panic` (delivering it panicked), `stopped` (the process stopped twice while delivering it) |
//! | `kafka_produce_failures_total` | counter | reason | batches `logferry ingest` could not store in Kafka (the agent keeps them): `queue_full`, `message_too_large`, `topic_missing`, `authorization`, `unavailable` |
//!
//! `/healthz` answers 200 while the process runs. `/readyz` answers 503 until the
//! buffer has been recovered and the gRPC listener is up, and again once shutdown has
//! begun.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::sync::watch;

use crate::activity::ActivityGauges;

/// Every metric of one backend process.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub ingest_batches: IntCounterVec,
    pub ingest_chunks: IntCounterVec,
    pub ingest_raw_bytes: IntCounterVec,
    pub ingest_wire_bytes: IntCounterVec,
    pub ingest_duplicates: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub ingest_refused: IntCounterVec,
    pub ingest_seqs_lost: IntCounterVec,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub registry_reloads: IntCounterVec,
    pub kafka_produce_failures: IntCounterVec,
    pub registry_version: IntGauge,
    pub revoked_tokens: IntGauge,
    pub buffer_bytes: IntGauge,
    pub buffer_max_bytes: IntGauge,
    pub buffer_end_offset: IntGauge,
    pub activity: ActivityGauges,
    destination_records: IntCounterVec,
    destination_dead_letters: IntCounterVec,
    destination_duplicates: IntCounterVec,
    destination_lag: IntGaugeVec,
    destination_opened: IntCounterVec,
    destination_open_failures: IntCounterVec,
    ready: Arc<AtomicBool>,
}

/// The metrics of one destination.
#[derive(Debug, Clone)]
pub struct DestinationMetrics {
    pub records: IntCounter,
    pub dead_letters: IntCounter,
    pub duplicates_skipped: IntCounter,
    pub lag: IntGauge,
    opened: IntCounterVec,
    open_failures: IntCounterVec,
    name: String,
}

impl DestinationMetrics {
    /// Counts a batch opened under `key_id` (0: not encrypted).
    pub fn opened(&self, key_id: u32) {
        self.opened
            .with_label_values(&[self.name.as_str(), &key_id.to_string()])
            .inc();
    }

    /// Counts a batch that did not open, by reason.
    pub fn open_failed(&self, reason: &str) {
        self.open_failures
            .with_label_values(&[self.name.as_str(), reason])
            .inc();
    }
}

impl Metrics {
    pub fn new() -> Result<Self> {
        let registry = Registry::new_custom(Some("logferry".into()), None)?;
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec> {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge> {
            let metric = IntGauge::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let agent_gauge = |name: &str, help: &str| -> Result<IntGaugeVec> {
            let metric = IntGaugeVec::new(Opts::new(name, help), &["tenant", "agent"])?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let destination_lag = IntGaugeVec::new(
            Opts::new(
                "destination_lag_batches",
                "Stored batches the destination has not delivered yet",
            ),
            &["destination"],
        )?;
        registry.register(Box::new(destination_lag.clone()))?;
        Ok(Self {
            ingest_batches: counter(
                "ingest_batches_total",
                "Batches stored in the buffer",
                &["tenant"],
            )?,
            ingest_chunks: counter(
                "ingest_chunks_total",
                "Fluent Bit chunks in the stored batches",
                &["tenant"],
            )?,
            ingest_raw_bytes: counter(
                "ingest_raw_bytes_total",
                "Uncompressed bytes of the stored batches",
                &["tenant"],
            )?,
            ingest_wire_bytes: counter(
                "ingest_wire_bytes_total",
                "Payload bytes of the stored batches as received",
                &["tenant"],
            )?,
            ingest_duplicates: counter(
                "ingest_duplicate_batches_total",
                "Re-sent batches acked without storing them again",
                &["tenant"],
            )?,
            auth_failures: counter(
                "auth_failures_total",
                "Calls refused by authentication or authorisation",
                &["reason"],
            )?,
            ingest_refused: counter(
                "ingest_refused_total",
                "Batches and streams refused for what they hold",
                &["tenant", "reason"],
            )?,
            ingest_seqs_lost: counter(
                "ingest_seqs_lost_total",
                "Seqs agents skipped: declared lost, or within --max-seq-gap",
                &["tenant"],
            )?,
            connections_open: gauge("connections_open", "Open connections of the gRPC listener")?,
            connections_refused: counter(
                "connections_refused_total",
                "Connections closed by the listener's limits",
                &["reason"],
            )?,
            buffer_bytes: gauge("buffer_bytes", "Bytes of retained buffer segments")?,
            buffer_max_bytes: gauge("buffer_max_bytes", "Size cap of the buffer")?,
            activity: ActivityGauges {
                silent: agent_gauge(
                    "agent_silent",
                    "1 when an agent that sent before has stored nothing for the silence window",
                )?,
                anomaly: agent_gauge(
                    "agent_rate_anomaly",
                    "+1 surge, -1 drop of the agent's rate against its own baseline, 0 normal",
                )?,
                last_seen: agent_gauge(
                    "agent_last_seen_seconds",
                    "Unix time of the agent's last stored batch",
                )?,
            },
            buffer_end_offset: gauge("buffer_end_offset", "Offset the next stored batch gets")?,
            destination_records: counter(
                "destination_records_total",
                "Records delivered to the destination",
                &["destination"],
            )?,
            destination_dead_letters: counter(
                "destination_dead_letters_total",
                "Chunks and batches the destination dead-lettered",
                &["destination"],
            )?,
            destination_duplicates: counter(
                "destination_duplicates_skipped_total",
                "Chunks skipped because the destination had delivered them already",
                &["destination"],
            )?,
            kafka_produce_failures: counter(
                "kafka_produce_failures_total",
                "Batches the ingest tier could not store in Kafka, by reason",
                &["reason"],
            )?,
            rate_limited: counter(
                "rate_limited_total",
                "Batches refused by the tenant's rate limit",
                &["tenant"],
            )?,
            registry_reloads: counter(
                "registry_reloads_total",
                "Reloads of the tenant registry and revocation list",
                &["result"],
            )?,
            registry_version: gauge("registry_version", "Version of the tenant registry in use")?,
            revoked_tokens: gauge("revoked_tokens", "Token ids in the revocation list")?,
            destination_opened: counter(
                "destination_batches_opened_total",
                "Batches the destination opened, by encryption key id (0: not encrypted)",
                &["destination", "key_id"],
            )?,
            destination_open_failures: counter(
                "destination_open_failures_total",
                "Batches dead-lettered because they did not open",
                &["destination", "reason"],
            )?,
            destination_lag,
            ready: Arc::new(AtomicBool::new(false)),
            registry,
        })
    }

    /// The metrics of destination `name`.
    pub fn destination(&self, name: &str) -> DestinationMetrics {
        DestinationMetrics {
            records: self.destination_records.with_label_values(&[name]),
            dead_letters: self.destination_dead_letters.with_label_values(&[name]),
            duplicates_skipped: self.destination_duplicates.with_label_values(&[name]),
            lag: self.destination_lag.with_label_values(&[name]),
            opened: self.destination_opened.clone(),
            open_failures: self.destination_open_failures.clone(),
            name: name.to_string(),
        }
    }

    /// Counts a refused call by its gRPC status.
    pub fn auth_failed(&self, status: &tonic::Status) {
        let reason = match status.code() {
            tonic::Code::PermissionDenied => "permission_denied",
            _ => "unauthenticated",
        };
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// Marks the process ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec fails only for metric families that cannot exist here.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` until `shutdown`.
/// Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|down| *down).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!("the metrics listener failed: {e}");
        }
    });
    Ok(local)
}

async fn metrics_page(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        metrics.render(),
    )
}

async fn readyz(State(metrics): State<Metrics>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
