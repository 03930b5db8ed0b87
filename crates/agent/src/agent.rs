//! [`Agent`]: the spool plus the sender runtime that drains it.
//!
//! `flush` runs on the caller's thread (Fluent Bit's engine or worker threads) and
//! touches only the spool: it never waits on the network. The sender runs on a
//! small tokio runtime the agent owns; `shutdown` drains within a deadline and joins
//! every thread the agent started, so the plugin can be `dlclose`d afterwards.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use logferry_spool::{Appended, Spool, SpoolConfig, SpoolStats};
use tokio::runtime::Runtime;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::AgentConfig;
use crate::error::{Error, Result};
use crate::sender::{self, Counters, Shared};
use crate::transport;

/// How the embedding process wants the agent to behave.
#[derive(Debug, Default, Clone)]
pub struct AgentHooks {
    /// The agent's own threads log through this dispatch (the plugin routes it to
    /// Fluent Bit's `log_print`). `None`: the process's global subscriber.
    pub dispatch: Option<tracing::Dispatch>,
}

/// The result of one flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushOutcome {
    /// Durable in the spool (as durable as `buffer.sync` asks).
    Stored { seq: u64 },
    /// A byte-identical (tag, chunk) was stored recently; it is not stored twice.
    Duplicate { seq: u64 },
    /// The spool is at `buffer.max_size`; the caller should retry later.
    Full,
    /// The spool could not store the chunk; the caller should retry later.
    Failed(String),
}

/// What `shutdown` achieved.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    pub drained: bool,
    pub acked_seq: u64,
    pub last_seq: u64,
    pub elapsed: Duration,
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.drained {
            write!(
                f,
                "drained: every chunk up to seq {} is acked ({:?})",
                self.last_seq, self.elapsed
            )
        } else {
            write!(
                f,
                "stopped after {:?} with {} chunk(s) still spooled (acked up to seq {} of {}); \
                 they are sent on the next start",
                self.elapsed,
                self.last_seq.saturating_sub(self.acked_seq),
                self.acked_seq,
                self.last_seq
            )
        }
    }
}

/// A snapshot of the agent's counters.
#[derive(Debug, Clone)]
pub struct AgentStats {
    pub spool: SpoolStats,
    pub batches_sent: u64,
    pub chunks_sent: u64,
    pub raw_bytes_sent: u64,
    pub wire_bytes_sent: u64,
    pub batches_acked: u64,
    pub sessions: u64,
    pub send_errors: u64,
    pub mean_ack_latency: Duration,
}

/// The agent core. See the module docs.
pub struct Agent {
    shared: Arc<Shared>,
    runtime: Option<Runtime>,
    task: Option<JoinHandle<()>>,
    drain: watch::Sender<bool>,
    dispatch: Option<tracing::Dispatch>,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("agent_id", &hex::encode(self.shared.spool.agent_id()))
            .finish()
    }
}

impl Agent {
    /// Opens the spool and starts the sender. Returns once the spool is recovered;
    /// connecting happens in the background.
    pub fn start(config: AgentConfig, hooks: AgentHooks) -> Result<Agent> {
        let _guard = hooks
            .dispatch
            .as_ref()
            .map(tracing::dispatcher::set_default);
        if config.endpoints().any(|e| e.tls) {
            transport::client_tls_config(&config.tls).map_err(Error::Tls)?;
        }
        for endpoint in config.endpoints().filter(|e| !e.tls) {
            warn!("endpoint {endpoint} is plaintext: use it on loopback only");
        }
        let spool_config = SpoolConfig {
            dir: config.spool_dir.clone(),
            max_bytes: config.spool_max_bytes,
            // Acked space is reclaimed a whole segment at a time, so a small spool needs
            // small segments: at least four fit in `buffer.max_size`.
            segment_bytes: (config.spool_max_bytes / 4).min(SpoolConfig::default().segment_bytes),
            sync: config.spool_sync,
            ..SpoolConfig::default()
        };
        let (spool, report) = Spool::open(spool_config)?;
        // Damage found on open was already logged as a warning, place by place.
        info!(
            "spool {} opened for agent {}: {report}",
            config.spool_dir.display(),
            hex::encode(spool.agent_id())
        );
        let shared = Arc::new(Shared {
            spool: Arc::new(spool),
            wake: Notify::new(),
            counters: Counters::default(),
        });
        let thread_dispatch = hooks.dispatch.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(2)
            .thread_name("logferry-agent")
            .enable_all()
            .on_thread_start(move || {
                if let Some(dispatch) = &thread_dispatch {
                    // The guard would restore the previous dispatcher on drop; this
                    // thread keeps ours for its whole life.
                    std::mem::forget(tracing::dispatcher::set_default(dispatch));
                }
            })
            .build()
            .map_err(Error::Runtime)?;
        if let Some(addr) = config.metrics_listen {
            let bound = runtime
                .block_on(crate::metrics::serve(addr, shared.clone()))
                .map_err(|source| Error::Metrics { addr, source })?;
            info!("metrics on http://{bound}/metrics");
        }
        let (drain, drain_rx) = watch::channel(false);
        let task = runtime.spawn(sender::run(shared.clone(), config, drain_rx));
        Ok(Agent {
            shared,
            runtime: Some(runtime),
            task: Some(task),
            drain,
            dispatch: hooks.dispatch,
        })
    }

    /// Stores one chunk in the spool. Never waits on the network.
    pub fn flush(&self, tag: &str, chunk: &[u8]) -> FlushOutcome {
        match self.shared.spool.append(tag, chunk) {
            Ok(Appended::Stored { seq }) => {
                self.shared.wake.notify_one();
                FlushOutcome::Stored { seq }
            }
            Ok(Appended::Duplicate { seq }) => FlushOutcome::Duplicate { seq },
            Err(logferry_spool::Error::Full { .. }) => FlushOutcome::Full,
            Err(e) => FlushOutcome::Failed(e.to_string()),
        }
    }

    /// The 128-bit agent id stored in the spool.
    pub fn agent_id(&self) -> [u8; 16] {
        self.shared.spool.agent_id()
    }

    /// Highest seq stored in the spool.
    pub fn last_seq(&self) -> u64 {
        self.shared.spool.last_seq()
    }

    /// Highest seq the backend has acknowledged.
    pub fn acked_seq(&self) -> u64 {
        self.shared.spool.acked_seq()
    }

    pub fn stats(&self) -> AgentStats {
        let c = &self.shared.counters;
        let acked = c.batches_acked.load(Ordering::Relaxed);
        let latency_total = c.ack_latency_us_total.load(Ordering::Relaxed);
        AgentStats {
            spool: self.shared.spool.stats(),
            batches_sent: c.batches_sent.load(Ordering::Relaxed),
            chunks_sent: c.chunks_sent.load(Ordering::Relaxed),
            raw_bytes_sent: c.raw_bytes_sent.load(Ordering::Relaxed),
            wire_bytes_sent: c.wire_bytes_sent.load(Ordering::Relaxed),
            batches_acked: acked,
            sessions: c.sessions.load(Ordering::Relaxed),
            send_errors: c.send_errors.load(Ordering::Relaxed),
            mean_ack_latency: Duration::from_micros(latency_total.checked_div(acked).unwrap_or(0)),
        }
    }

    /// Sends what is spooled for at most `deadline`, then stops and joins every
    /// thread. Chunks not acked by then stay in the spool for the next start.
    /// Must not be called from inside an async runtime.
    pub fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        self.stop(deadline)
    }

    fn stop(&mut self, deadline: Duration) -> ShutdownReport {
        let _guard = self.dispatch.as_ref().map(tracing::dispatcher::set_default);
        let started = Instant::now();
        let _ = self.drain.send(true);
        self.shared.wake.notify_one();
        let mut drained = false;
        if let Some(runtime) = self.runtime.take() {
            if let Some(task) = self.task.take() {
                drained = runtime
                    .block_on(async { tokio::time::timeout(deadline, task).await })
                    .is_ok_and(|joined| joined.is_ok());
            }
            // Dropping the runtime cancels the sender and joins the worker threads.
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
        let spool = &self.shared.spool;
        let report = ShutdownReport {
            drained: drained && spool.acked_seq() >= spool.last_seq(),
            acked_seq: spool.acked_seq(),
            last_seq: spool.last_seq(),
            elapsed: started.elapsed(),
        };
        // The caller logs the report: it knows its own context (plugin instance, CLI).
        report
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.runtime.is_some() {
            if tokio::runtime::Handle::try_current().is_ok() {
                error!("agent dropped inside an async runtime; stopping it without draining");
                if let Some(runtime) = self.runtime.take() {
                    runtime.shutdown_background();
                }
                return;
            }
            self.stop(Duration::ZERO);
        }
    }
}
