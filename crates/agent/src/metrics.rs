//! The agent's Prometheus metrics, served at `/metrics` on `metrics.listen`.
//!
//! Fluent Bit's external-plugin ABI hands Go-proxy plugins a CMetrics context
//! (`output_get_cmt_instance`), but filling it means linking CMetrics' C API into
//! the plugin and matching Fluent Bit's build of it; an HTTP listener of our own is
//! independent of the Fluent Bit version. Names (all `logferry_agent_`):
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `spool_bytes` | gauge | bytes of retained spool segments |
//! | `spool_max_bytes` | gauge | `buffer.max_size` |
//! | `spool_entries` | gauge | spooled chunks not yet acked |
//! | `last_seq` | gauge | highest seq spooled |
//! | `acked_seq` | gauge | every seq up to this one is stored by the backend |
//! | `lag_chunks` | gauge | `last_seq - acked_seq` |
//! | `chunks_spooled_total` | counter | chunks stored in the spool |
//! | `batches_sent_total`, `batches_acked_total` | counter | batches on the stream |
//! | `raw_bytes_sent_total`, `wire_bytes_sent_total` | counter | batch bytes before and after compression |
//! | `sessions_total` | counter | streams established (the first connection and every reconnect) |
//! | `send_errors_total{reason}` | counter | sessions ended by an error, by reason |
//! | `ack_latency_seconds_mean` | gauge | mean time from sending a batch to its ack |
//!
//! Every sample has the label `agent`: the instance's agent id.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::sender::{ERROR_REASONS, Shared};

/// Reads one gauge's value from the agent's state.
type ReadGauge = fn(&Shared) -> i64;
/// Reads one counter's value (it only grows) from the agent's counters.
type ReadCounter = fn(&Shared) -> u64;

/// Metrics updated from the agent's counters at each scrape.
struct Exporter {
    shared: Arc<Shared>,
    registry: Registry,
    gauges: Vec<(IntGauge, ReadGauge)>,
    counters: Vec<(IntCounter, ReadCounter)>,
    errors: IntCounterVec,
    ack_latency: prometheus::Gauge,
}

impl Exporter {
    fn new(shared: Arc<Shared>) -> prometheus::Result<Self> {
        let agent = hex::encode(shared.spool.agent_id());
        let registry = Registry::new_custom(
            Some("logferry_agent".into()),
            Some(std::iter::once(("agent".to_string(), agent)).collect()),
        )?;
        let gauge_specs: [(&str, &str, ReadGauge); 6] = [
            ("spool_bytes", "Bytes of retained spool segments", |s| {
                s.spool.stats().bytes as i64
            }),
            ("spool_max_bytes", "The spool's size cap", |s| {
                s.spool.stats().max_bytes as i64
            }),
            ("spool_entries", "Spooled chunks not yet acked", |s| {
                s.spool.stats().entries as i64
            }),
            ("last_seq", "Highest seq spooled", |s| {
                s.spool.last_seq() as i64
            }),
            (
                "acked_seq",
                "Every seq up to this one is stored by the backend",
                |s| s.spool.acked_seq() as i64,
            ),
            (
                "lag_chunks",
                "Chunks spooled but not yet acked (last_seq - acked_seq)",
                |s| s.spool.last_seq().saturating_sub(s.spool.acked_seq()) as i64,
            ),
        ];
        let mut gauges = Vec::new();
        for (name, help, read) in gauge_specs {
            let gauge = IntGauge::new(name, help)?;
            registry.register(Box::new(gauge.clone()))?;
            gauges.push((gauge, read));
        }
        let counter_specs: [(&str, &str, ReadCounter); 7] = [
            ("chunks_spooled_total", "Chunks stored in the spool", |s| {
                s.spool.stats().appends
            }),
            ("batches_sent_total", "Batches sent on the stream", |s| {
                s.counters.batches_sent.load(Ordering::Relaxed)
            }),
            ("batches_acked_total", "Batches the backend acked", |s| {
                s.counters.batches_acked.load(Ordering::Relaxed)
            }),
            (
                "raw_bytes_sent_total",
                "Batch bytes before compression",
                |s| s.counters.raw_bytes_sent.load(Ordering::Relaxed),
            ),
            (
                "wire_bytes_sent_total",
                "Batch payload bytes as sent",
                |s| s.counters.wire_bytes_sent.load(Ordering::Relaxed),
            ),
            (
                "sessions_total",
                "Streams established, reconnects included",
                |s| s.counters.sessions.load(Ordering::Relaxed),
            ),
            ("chunks_sent_total", "Chunks in the batches sent", |s| {
                s.counters.chunks_sent.load(Ordering::Relaxed)
            }),
        ];
        let mut counters = Vec::new();
        for (name, help, read) in counter_specs {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            counters.push((counter, read));
        }
        let errors = IntCounterVec::new(
            Opts::new("send_errors_total", "Sessions ended by an error, by reason"),
            &["reason"],
        )?;
        registry.register(Box::new(errors.clone()))?;
        let ack_latency = prometheus::Gauge::new(
            "ack_latency_seconds_mean",
            "Mean time from sending a batch to its ack",
        )?;
        registry.register(Box::new(ack_latency.clone()))?;
        Ok(Self {
            shared,
            registry,
            gauges,
            counters,
            errors,
            ack_latency,
        })
    }

    /// Brings every metric up to the agent's counters and encodes them.
    fn render(&self) -> Vec<u8> {
        let shared = &*self.shared;
        for (gauge, read) in &self.gauges {
            gauge.set(read(shared));
        }
        // The sources only grow, so each counter catches up by the difference.
        for (counter, read) in &self.counters {
            counter.inc_by(read(shared).saturating_sub(counter.get()));
        }
        for (i, reason) in ERROR_REASONS.iter().enumerate() {
            let counter = self.errors.with_label_values(&[reason]);
            let now = shared.counters.errors_by_reason[i].load(Ordering::Relaxed);
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        let acked = shared.counters.batches_acked.load(Ordering::Relaxed);
        let total_us = shared.counters.ack_latency_us_total.load(Ordering::Relaxed);
        if acked > 0 {
            self.ack_latency.set(total_us as f64 / acked as f64 / 1e6);
        }
        let mut out = Vec::new();
        // Encoding into a Vec fails only for metric families that cannot exist here.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

async fn page(State(exporter): State<Arc<Mutex<Exporter>>>) -> impl IntoResponse {
    let body = exporter.lock().unwrap_or_else(|e| e.into_inner()).render();
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body)
}

/// Binds `addr` and serves `/metrics` on the current runtime until it shuts down.
/// Returns the bound address.
pub(crate) async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let exporter = Exporter::new(shared).map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(page))
        .with_state(Arc::new(Mutex::new(exporter)));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("the metrics listener failed: {e}");
        }
    });
    Ok(local)
}
