//! The sender: streams spooled chunks to the backend.
//!
//! One session is one gRPC stream:
//! 1. re-read the token (so `access_token_file` rotation needs no restart), connect,
//!    fetch this access key's settings (config exchange);
//! 2. open `Ingest.Stream`, send `Hello`, wait for `Welcome` (the backend's mark);
//! 3. resume after the mark: stage whole entries into batches of at most
//!    `batch.max_bytes`, keep up to `window` batches in flight, advance the spool's
//!    acked cursor on each in-order `Ack`.
//!
//! Any failure ends the session; the loop backs off (jittered, exponential, raised
//! to a server's retry hint) and starts a new one. Nothing is dropped: unacked
//! entries stay in the spool and are sent again, and the backend deduplicates by
//! (agent, seq). State changes are logged once, not on every retry.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use logferry_proto::v1::ingest_client::IngestClient;
use logferry_proto::v1::{
    AgentMessage, Compression, GetConfigRequest, Hello, agent_message, server_message,
};
use logferry_proto::{ACCESS_KEY_HEADER, AUTHORIZATION_HEADER, MAX_MESSAGE_BYTES};
use logferry_spool::{Entry, Spool};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::batch;
use crate::config::{AgentConfig, Endpoint};
use crate::seal;
use crate::transport;

/// State shared by the flushing threads, the sender and the owner.
pub(crate) struct Shared {
    pub(crate) spool: Arc<Spool>,
    /// Woken on every stored flush.
    pub(crate) wake: Notify,
    pub(crate) counters: Counters,
}

/// Monotonic counters, readable at any time.
#[derive(Debug, Default)]
pub struct Counters {
    pub batches_sent: AtomicU64,
    pub chunks_sent: AtomicU64,
    pub raw_bytes_sent: AtomicU64,
    pub wire_bytes_sent: AtomicU64,
    pub batches_acked: AtomicU64,
    pub sessions: AtomicU64,
    pub send_errors: AtomicU64,
    /// `send_errors` by reason, indexed like [`ERROR_REASONS`].
    pub errors_by_reason: [AtomicU64; ERROR_REASONS.len()],
    /// Sum of ack latencies in microseconds, for the mean.
    pub ack_latency_us_total: AtomicU64,
}

/// Why sessions end, as metric labels: the gRPC status the backend answered, or
/// what failed on this side.
pub const ERROR_REASONS: [&str; 12] = [
    "unauthenticated",
    "permission_denied",
    "resource_exhausted",
    "invalid_argument",
    "unavailable",
    "other_status",
    "connect",
    "timeout",
    "spool",
    "protocol",
    "stream",
    "other",
];

fn reason_index(reason: &str) -> usize {
    ERROR_REASONS
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(ERROR_REASONS.len() - 1)
}

/// Settings of one session: local config, overlaid by config exchange. The backend
/// may change them while the session runs (`WatchConfig`).
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    batch_max_bytes: usize,
    batch_max_delay: Duration,
    compression: Compression,
    /// Set when the tenant encrypts.
    sealer: Option<batch::Sealer>,
}

impl Settings {
    fn new(
        config: &AgentConfig,
        remote: &logferry_proto::v1::AgentConfig,
        agent_id: [u8; 16],
    ) -> Result<Self, SessionError> {
        let mut s = Self {
            batch_max_bytes: config.batch_max_bytes as usize,
            batch_max_delay: config.batch_max_delay,
            compression: config.compression,
            sealer: None,
        };
        if !config.explicit.batch_max_bytes && remote.batch_max_bytes > 0 {
            s.batch_max_bytes = remote.batch_max_bytes.clamp(1024, 48 << 20) as usize;
        }
        if !config.explicit.batch_max_delay && remote.batch_max_delay_ms > 0 {
            s.batch_max_delay = Duration::from_millis(remote.batch_max_delay_ms.into());
        }
        if !config.explicit.compression
            && let Some(Ok(c)) = remote.compression.map(Compression::try_from)
        {
            s.compression = c;
        }
        if remote.encryption_key_id != 0 {
            let key = seal::PublicKey::from_bytes(&remote.encryption_public_key).map_err(|e| {
                SessionError::new(format!(
                    "the backend sent encryption key id {} with a bad public key: {e}",
                    remote.encryption_key_id
                ))
            })?;
            s.sealer = Some(batch::Sealer {
                tenant: remote.tenant.clone(),
                agent_id,
                key_id: remote.encryption_key_id,
                key,
            });
        }
        Ok(s)
    }

    fn describe(&self) -> String {
        format!(
            "batches up to {} bytes or {:?}, compression {}, {}",
            self.batch_max_bytes,
            self.batch_max_delay,
            self.compression.as_str_name(),
            match &self.sealer {
                Some(s) => format!("sealed to key id {}", s.key_id),
                None => "not encrypted (TLS only)".to_string(),
            }
        )
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SessionError {
    /// What an operator sees, once per change.
    message: String,
    /// What counts as the same state for logging: the status without the step that
    /// met it, so a refusal met first by the open stream and then by each reconnect's
    /// config exchange is logged once.
    state: String,
    /// Backoff at least this long (a rate limit's hint).
    retry_after: Option<Duration>,
    /// One of [`ERROR_REASONS`].
    reason: &'static str,
}

/// The reason label of a failure on this side, from its message.
fn local_reason(message: &str) -> &'static str {
    if message.contains("timed out")
        || message.contains("in time")
        || message.contains("no ack within")
    {
        "timeout"
    } else if message.starts_with("cannot reach") {
        "connect"
    } else if message.contains("spool") {
        "spool"
    } else if message.starts_with("protocol error") {
        "protocol"
    } else if message.contains("stream") {
        "stream"
    } else {
        "other"
    }
}

impl SessionError {
    fn new(message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            state: message.clone(),
            reason: local_reason(&message),
            message,
            retry_after: None,
        }
    }

    fn status(context: &str, status: &Status) -> Self {
        let what = match status.code() {
            Code::Unauthenticated => "the backend refused the token",
            Code::PermissionDenied => "the backend refused the access key",
            Code::ResourceExhausted => "the backend asked to slow down",
            Code::InvalidArgument => "the backend rejected a message as malformed",
            Code::Unavailable => "the backend is unavailable",
            _ => "the backend answered with an error",
        };
        let retry_after = status
            .metadata()
            .get("retry-after-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
            .or_else(|| (status.code() == Code::ResourceExhausted).then(|| Duration::from_secs(1)));
        Self {
            message: format!(
                "{context}: {what} ({:?}: {})",
                status.code(),
                status.message()
            ),
            state: format!("{:?}: {}", status.code(), status.message()),
            reason: match status.code() {
                Code::Unauthenticated => "unauthenticated",
                Code::PermissionDenied => "permission_denied",
                Code::ResourceExhausted => "resource_exhausted",
                Code::InvalidArgument => "invalid_argument",
                Code::Unavailable => "unavailable",
                _ => "other_status",
            },
            retry_after,
        }
    }
}

/// Logs link state once per change.
#[derive(Debug, Default)]
struct LinkLog {
    last: Option<String>,
    failures: u64,
}

impl LinkLog {
    fn failed(&mut self, error: &SessionError, delay: Duration) {
        self.failures += 1;
        if self.last.as_deref() != Some(error.state.as_str()) {
            warn!(
                "{}; chunks stay spooled, retrying with backoff",
                error.message
            );
            self.last = Some(error.state.clone());
        } else {
            debug!(
                attempt = self.failures,
                "still failing, next try in {delay:?}: {}", error.message
            );
        }
    }

    fn connected(&mut self, message: String) {
        if self.last.is_some() || self.failures == 0 {
            info!("{message}");
        }
        self.last = None;
        self.failures = 0;
    }
}

/// Runs sessions until `drain` is set and everything spooled is acked. The owner
/// cancels this task when its shutdown deadline passes.
pub(crate) async fn run(
    shared: Arc<Shared>,
    config: AgentConfig,
    mut drain: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut link = LinkLog::default();
    let endpoints: Vec<Endpoint> = config.endpoints().cloned().collect();
    let mut current = 0;
    loop {
        if *drain.borrow() && shared.spool.last_seq() <= shared.spool.acked_seq() {
            return;
        }
        let endpoint = &endpoints[current];
        match session(
            &shared,
            &config,
            endpoint,
            &mut drain,
            &mut link,
            &mut backoff,
        )
        .await
        {
            Ok(()) => return,
            Err(error) => {
                // With several endpoints, the next session goes to the next one.
                current = (current + 1) % endpoints.len();
                shared.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                shared.counters.errors_by_reason[reason_index(error.reason)]
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(hint) = error.retry_after {
                    backoff.at_least(hint);
                }
                let delay = backoff.next_delay();
                link.failed(&error, delay);
                tokio::select! {
                    _ = sleep(delay) => {}
                    _ = drain.changed() => {}
                }
            }
        }
    }
}

fn authed<T>(message: T, config: &AgentConfig, token: &str) -> Result<Request<T>, SessionError> {
    let mut request = Request::new(message);
    let key = MetadataValue::try_from(config.access_key.as_str())
        .map_err(|_| SessionError::new("access_key holds characters not allowed in a header"))?;
    request.metadata_mut().insert(ACCESS_KEY_HEADER, key);
    // No token: a client certificate authenticates this agent.
    if !token.is_empty() {
        let bearer = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            SessionError::new("the access token holds characters not allowed in a header")
        })?;
        request.metadata_mut().insert(AUTHORIZATION_HEADER, bearer);
    }
    Ok(request)
}

/// Batches staged for sending, read from the spool in seq order.
#[derive(Debug, Default)]
struct Stage {
    entries: Vec<Entry>,
    bytes: usize,
    since: Option<Instant>,
    /// An entry read that did not fit into the current batch.
    carry: Option<Entry>,
    /// Next seq to read from the spool.
    next_read: u64,
}

impl Stage {
    fn fill(&mut self, spool: &Spool, max_bytes: usize) -> Result<(), SessionError> {
        if self.carry.is_some() || self.bytes >= max_bytes {
            return Ok(());
        }
        let entries = match spool.read_from(self.next_read, max_bytes - self.bytes) {
            Ok(entries) => entries,
            Err(logferry_spool::Error::Corrupt {
                seq: Some(seq),
                path,
                offset,
                reason,
            }) => {
                // Nothing can be recovered from a damaged entry. It is skipped (seqs may
                // have gaps) and released by the cumulative ack of a later batch, so
                // the entries around it still go out.
                error!(
                    "spool entry seq {seq} in {} at offset {offset} is damaged ({reason}); \
                     it is lost and skipped",
                    path.display()
                );
                self.next_read = seq + 1;
                return Ok(());
            }
            Err(e) => return Err(SessionError::new(format!("reading the spool: {e}"))),
        };
        for entry in entries {
            self.next_read = entry.seq + 1;
            if !self.entries.is_empty() && self.bytes + entry.data.len() > max_bytes {
                self.carry = Some(entry);
                break;
            }
            self.push(entry);
        }
        Ok(())
    }

    fn push(&mut self, entry: Entry) {
        self.bytes += entry.data.len();
        self.since.get_or_insert_with(Instant::now);
        self.entries.push(entry);
    }

    fn ready(&self, settings: &Settings, draining: bool) -> bool {
        !self.entries.is_empty()
            && (self.carry.is_some()
                || self.bytes >= settings.batch_max_bytes
                || draining
                || self
                    .since
                    .is_some_and(|s| s.elapsed() >= settings.batch_max_delay))
    }

    fn take(&mut self) -> Vec<Entry> {
        let entries = std::mem::take(&mut self.entries);
        self.bytes = 0;
        self.since = None;
        if let Some(carry) = self.carry.take() {
            self.push(carry);
        }
        entries
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.carry.is_none()
    }
}

async fn session(
    shared: &Shared,
    config: &AgentConfig,
    endpoint: &Endpoint,
    drain: &mut watch::Receiver<bool>,
    link: &mut LinkLog,
    backoff: &mut Backoff,
) -> Result<(), SessionError> {
    let spool = &shared.spool;
    let token = config
        .token
        .load()
        .map_err(|e| SessionError::new(format!("cannot read the access token file: {e}")))?;
    let channel = transport::connect(endpoint, &config.tls, config.connect_timeout)
        .await
        .map_err(|e| SessionError::new(format!("cannot reach {endpoint}: {e}")))?;
    let mut client = IngestClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let agent_id = spool.agent_id().to_vec();

    // Config exchange: the first message of the watch is the current config; later
    // ones are changes, applied to this session as they come.
    let request = authed(
        GetConfigRequest {
            agent_id: agent_id.clone(),
        },
        config,
        &token,
    )?;
    let mut watch = timeout(config.connect_timeout, client.watch_config(request))
        .await
        .map_err(|_| SessionError::new("config exchange timed out"))?
        .map_err(|s| SessionError::status("config exchange", &s))?
        .into_inner();
    let remote = match timeout(config.connect_timeout, watch.message()).await {
        Err(_) => return Err(SessionError::new("config exchange timed out")),
        Ok(Err(s)) => return Err(SessionError::status("config exchange", &s)),
        Ok(Ok(Some(remote))) => remote,
        Ok(Ok(None)) => return Err(SessionError::new("the backend sent no config")),
    };
    let id = spool.agent_id();
    let mut settings = Settings::new(config, &remote, id)?;
    let mut watching = true;

    let (tx, rx) = mpsc::channel::<AgentMessage>(config.window + 2);
    let hello = Hello {
        agent_id,
        agent_version: config.agent_version.clone(),
        acked_seq: spool.acked_seq(),
    };
    let _ = tx
        .send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(hello)),
        })
        .await;
    let request = authed(ReceiverStream::new(rx), config, &token)?;
    let mut inbound = timeout(config.connect_timeout, client.stream(request))
        .await
        .map_err(|_| SessionError::new("opening the stream timed out"))?
        .map_err(|s| SessionError::status("opening the stream", &s))?
        .into_inner();
    let welcome = match timeout(config.connect_timeout, inbound.message()).await {
        Err(_) => return Err(SessionError::new("no welcome from the backend in time")),
        Ok(Err(s)) => return Err(SessionError::status("stream", &s)),
        Ok(Ok(Some(m))) => match m.msg {
            Some(server_message::Msg::Welcome(w)) => w,
            _ => {
                return Err(SessionError::new(
                    "protocol error: first message was not a welcome",
                ));
            }
        },
        Ok(Ok(None)) => return Err(SessionError::new("the backend closed the stream at once")),
    };
    shared.counters.sessions.fetch_add(1, Ordering::Relaxed);
    backoff.reset();

    let acked = spool.acked_seq();
    if welcome.stored_seq > acked {
        let upto = welcome.stored_seq.min(spool.last_seq());
        spool
            .ack(upto)
            .map_err(|e| SessionError::new(format!("spool: {e}")))?;
    } else if welcome.stored_seq < acked {
        warn!(
            "the backend holds this agent's chunks only up to seq {}, behind the acked seq {acked} \
             (restored from a backup?); re-sending what the spool still holds",
            welcome.stored_seq
        );
    }
    link.connected(format!(
        "connected to {} as tenant `{}`; backend holds seq {}, spool holds up to {}; {}",
        endpoint,
        welcome.tenant,
        welcome.stored_seq,
        spool.last_seq(),
        settings.describe()
    ));

    let mut stage = Stage {
        next_read: welcome.stored_seq + 1,
        ..Stage::default()
    };
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
    // The last seq sent on this stream (at first, what the backend holds): a batch
    // declares the seqs its spool no longer holds between it and this.
    let mut sent_to = welcome.stored_seq;
    loop {
        stage.fill(spool, settings.batch_max_bytes)?;
        if stage.is_empty() && in_flight.is_empty() && stage.next_read - 1 > spool.acked_seq() {
            // Everything below `next_read` is acked or was skipped as damaged; a skipped
            // entry at the tail has no later batch whose ack would release it.
            spool
                .ack(stage.next_read - 1)
                .map_err(|e| SessionError::new(format!("spool: {e}")))?;
        }
        let draining = *drain.borrow();
        let ready = stage.ready(&settings, draining);
        if ready && in_flight.len() < config.window {
            let entries = stage.take();
            let chunks = entries.len() as u64;
            let mut batch = tokio::task::block_in_place(|| {
                batch::build(entries, settings.compression, settings.sealer.as_ref())
            })
            .map_err(|e| SessionError::new(format!("compressing a batch: {e}")))?;
            batch.declared_lost = batch::skipped(&batch, sent_to);
            if batch.declared_lost > 0 {
                warn!(
                    "declaring {} seq(s) between {} and {} lost: the spool no longer holds them",
                    batch.declared_lost,
                    sent_to + 1,
                    batch.last_seq
                );
            }
            sent_to = sent_to.max(batch.last_seq);
            let c = &shared.counters;
            c.batches_sent.fetch_add(1, Ordering::Relaxed);
            c.chunks_sent.fetch_add(chunks, Ordering::Relaxed);
            c.raw_bytes_sent
                .fetch_add(batch.raw_bytes, Ordering::Relaxed);
            c.wire_bytes_sent
                .fetch_add(batch.payload.len() as u64, Ordering::Relaxed);
            in_flight.push_back((batch.last_seq, Instant::now()));
            tx.send(AgentMessage {
                msg: Some(agent_message::Msg::Batch(batch)),
            })
            .await
            .map_err(|_| SessionError::new("the stream closed while sending"))?;
            continue;
        }
        if draining
            && stage.is_empty()
            && in_flight.is_empty()
            && stage.next_read > spool.last_seq()
        {
            return Ok(());
        }
        let ack_deadline = in_flight
            .front()
            .map(|(_, sent)| *sent + config.ack_timeout);
        let batch_deadline = if ready {
            None
        } else {
            stage.since.map(|s| s + settings.batch_max_delay)
        };
        tokio::select! {
            message = inbound.message() => {
                let message = message.map_err(|s| SessionError::status("stream", &s))?;
                let Some(message) = message else {
                    return Err(SessionError::new("the backend closed the stream"));
                };
                let Some(server_message::Msg::Ack(ack)) = message.msg else {
                    return Err(SessionError::new("protocol error: expected an ack"));
                };
                let Some((expected, sent)) = in_flight.pop_front() else {
                    return Err(SessionError::new("protocol error: an ack for no batch"));
                };
                if ack.last_seq != expected {
                    return Err(SessionError::new(format!(
                        "protocol error: ack for seq {} while expecting {expected}", ack.last_seq
                    )));
                }
                spool.ack(ack.last_seq).map_err(|e| SessionError::new(format!("spool: {e}")))?;
                let c = &shared.counters;
                c.batches_acked.fetch_add(1, Ordering::Relaxed);
                c.ack_latency_us_total.fetch_add(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            update = watch.message(), if watching => match update {
                Ok(Some(remote)) => {
                    let next = Settings::new(config, &remote, id)?;
                    if next != settings {
                        info!("the backend changed this agent's settings: {}", next.describe());
                        settings = next;
                    }
                }
                Err(s) if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated) => {
                    return Err(SessionError::status("config watch", &s));
                }
                // An older or restarting backend: keep the settings we have; the next
                // session fetches them again.
                Ok(None) | Err(_) => watching = false,
            },
            _ = shared.wake.notified() => {}
            _ = sleep_until_opt(ack_deadline) => {
                return Err(SessionError::new(format!(
                    "no ack within {:?}; the stream is considered dead", config.ack_timeout
                )));
            }
            _ = sleep_until_opt(batch_deadline) => {}
            _ = drain.changed() => {}
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
