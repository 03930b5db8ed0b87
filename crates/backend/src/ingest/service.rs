//! The `Ingest` gRPC service.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use logferry_buffer::{EmbeddedLog, RecordMeta};

use crate::metrics::Metrics;
use logferry_proto::v1::ingest_server::Ingest;
use logferry_proto::v1::{
    Ack, AgentConfig, AgentMessage, Batch, Compression, GetConfigRequest, ServerMessage, Welcome,
    agent_message, server_message,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::auth::{Authenticator, Session};
use super::limit::Limiter;
use super::marks::{AgentMark, ClaimError, Marks};
use crate::activity::Activity;
use crate::auth::LEEWAY_SECS;
use crate::limits::BatchLimits;
use crate::tenants::Principal;

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct IngestService {
    pub auth: Authenticator,
    pub storage: Storage,
    pub marks: Arc<Marks>,
    pub metrics: Metrics,
    pub limiter: Arc<Limiter>,
    pub activity: Arc<Activity>,
    /// What one batch may declare and skip.
    pub limits: BatchLimits,
    /// Open config watches per access key.
    pub watchers: Arc<Watchers>,
    /// Set when the backend shuts down: open streams end with UNAVAILABLE.
    pub shutdown: watch::Receiver<bool>,
}

/// Open config watches per access key, at most `max` each.
#[derive(Debug)]
pub struct Watchers {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Watchers {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Default::default(),
        }
    }

    /// Counts a watch of `access_key` until the guard drops, or refuses it.
    fn enter(self: &Arc<Self>, access_key: &str) -> Option<WatchGuard> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(access_key.to_string()).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(WatchGuard {
            watchers: self.clone(),
            access_key: access_key.to_string(),
        })
    }
}

/// One open watch; see [`Watchers::enter`].
#[derive(Debug)]
struct WatchGuard {
    watchers: Arc<Watchers>,
    access_key: String,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut open = self.watchers.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.access_key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.access_key);
            }
        }
    }
}

/// Where stored batches go.
#[derive(Debug, Clone)]
pub enum Storage {
    /// The embedded log (`logferry serve`); marks are durable.
    Embedded(Arc<EmbeddedLog>),
    /// Kafka (`logferry ingest`): stateless, marks live in this process only and the
    /// router deduplicates authoritatively.
    Kafka(Arc<crate::kafka::KafkaProducer>),
}

/// When a session's token expires, as an instant (with the verification leeway).
fn expiry(session: &Session) -> tokio::time::Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let left = (session.claims.exp + LEEWAY_SECS).saturating_sub(now);
    tokio::time::Instant::now() + Duration::from_secs(left)
}

fn expired() -> Status {
    Status::unauthenticated(
        "the token expired during the stream; reconnect with a fresh one from access_token_file",
    )
}

fn invalid(message: String) -> Status {
    Status::invalid_argument(message)
}

/// A stream message that does not decode is the agent's fault: INVALID_ARGUMENT,
/// where tonic answers INTERNAL (as gRPC's status code guide has it for parse errors).
fn undecodable(status: Status) -> Status {
    if status.code() == tonic::Code::Internal {
        invalid(format!(
            "a stream message does not decode: {}",
            status.message()
        ))
    } else {
        status
    }
}

/// Why a batch is refused: the `ingest_refused_total` reason and the message.
pub type Refusal = (&'static str, String);

/// What [`check_batch`] decided about a batch that passed its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchCheck {
    /// At or below the agent's stored seq: acked again, not stored.
    Duplicate,
    /// To be stored; it skips this many seqs (see [`logferry_agent::batch::skipped`]).
    Store { skipped: u64 },
}

/// The checks ingest makes on one batch, in the order [`IngestService`] makes them,
/// without the registry, the rate limit or the buffer: [`validate`], the raw size of
/// an unsealed batch streamed through a fixed buffer, the duplicate test against the
/// agent's stored seq `stored`, and the seq gap bound. For tests and fuzzing; the
/// service runs the same functions.
pub fn check_batch(
    batch: &Batch,
    limits: &BatchLimits,
    agent_id: [u8; 16],
    stored: u64,
) -> Result<BatchCheck, Refusal> {
    validate(batch, limits)?;
    if batch.key_id == 0 {
        check_raw_len(&batch.payload, batch.compression, batch.raw_bytes)?;
    }
    if batch.last_seq <= stored {
        return Ok(BatchCheck::Duplicate);
    }
    let skipped = check_gap(batch, limits, agent_id, stored)?;
    Ok(BatchCheck::Store { skipped })
}

/// Checks the parts of a batch the ingest path can check without opening it.
fn validate(batch: &Batch, limits: &BatchLimits) -> Result<(), Refusal> {
    let malformed = |message: String| ("malformed", message);
    if batch.first_seq == 0 || batch.last_seq < batch.first_seq {
        return Err(malformed(format!(
            "batch seq range [{}, {}] is not valid: seqs start at 1 and ranges ascend",
            batch.first_seq, batch.last_seq
        )));
    }
    // An agent's seqs may have gaps (entries lost to a torn spool tail, or skipped as
    // damaged, are never reused), so a batch holds at most one chunk per seq it spans.
    let span = batch.last_seq - batch.first_seq + 1;
    if batch.chunk_count == 0 || u64::from(batch.chunk_count) > span {
        return Err(malformed(format!(
            "batch [{}, {}] claims {} chunks but spans {span}",
            batch.first_seq, batch.last_seq, batch.chunk_count
        )));
    }
    if Compression::try_from(batch.compression).is_err() {
        return Err(malformed(format!(
            "unknown compression {}",
            batch.compression
        )));
    }
    if batch.raw_bytes > limits.max_batch_bytes {
        return Err((
            "raw_size",
            format!(
                "batch of {} raw bytes is over the {} byte limit (--max-batch-bytes)",
                batch.raw_bytes, limits.max_batch_bytes
            ),
        ));
    }
    if batch.payload.is_empty() {
        return Err(malformed("batch payload is empty".into()));
    }
    // Each chunk has one tag, so a batch has at most as many distinct tags as chunks.
    if batch.tags.len() > batch.chunk_count as usize {
        return Err(malformed(format!(
            "batch [{}, {}] lists {} tags for {} chunks",
            batch.first_seq,
            batch.last_seq,
            batch.tags.len(),
            batch.chunk_count
        )));
    }
    Ok(())
}

/// Checks that an unsealed batch decompresses to exactly the size it declares,
/// streaming through a fixed buffer (a sealed one is checked by the router, which
/// holds the key).
async fn check_raw_size(batch: &Batch) -> Result<(), Refusal> {
    let (payload, compression, declared) =
        (batch.payload.clone(), batch.compression, batch.raw_bytes);
    tokio::task::spawn_blocking(move || check_raw_len(&payload, compression, declared))
        .await
        .map_err(|e| ("raw_size", format!("checking the batch's size failed: {e}")))?
}

/// [`check_raw_size`] on this thread: blocks while it decompresses.
fn check_raw_len(payload: &[u8], compression: i32, declared: u64) -> Result<(), Refusal> {
    let compression = Compression::try_from(compression).unwrap_or(Compression::None);
    match logferry_agent::batch::raw_len(payload, compression, declared) {
        Ok(n) if n == declared => Ok(()),
        Ok(n) => Err((
            "raw_size",
            format!("the batch declares {declared} raw bytes but decompresses to {n}"),
        )),
        Err(e) => Err((
            "raw_size",
            format!("the batch declares {declared} raw bytes: {e}"),
        )),
    }
}

/// Seqs the batch skips: between the mark `stored` and the batch, and inside it. A
/// jump moves the mark past seqs the agent may still send, so one larger than the
/// bound must be declared (an agent declares what its spool lost). Returns how many
/// it skips; the caller has checked that the batch is above the mark.
fn check_gap(
    batch: &Batch,
    limits: &BatchLimits,
    agent_id: [u8; 16],
    stored: u64,
) -> Result<u64, Refusal> {
    let skipped = logferry_agent::batch::skipped(batch, stored);
    if skipped > limits.max_seq_gap && batch.declared_lost < skipped {
        return Err((
            "seq_gap",
            format!(
                "batch [{}, {}] skips {skipped} seqs past the stored seq {stored} of \
                 agent {}, more than --max-seq-gap {} allows undeclared, and \
                 declares {} lost",
                batch.first_seq,
                batch.last_seq,
                hex::encode(agent_id),
                limits.max_seq_gap,
                batch.declared_lost
            ),
        ));
    }
    Ok(skipped)
}

fn buffer_status(error: &logferry_buffer::Error) -> Status {
    match error {
        logferry_buffer::Error::Full { .. } => {
            let mut status = Status::resource_exhausted(format!(
                "the backend's buffer is full ({error}); a destination is probably lagging"
            ));
            status.metadata_mut().insert(
                "retry-after-ms",
                tonic::metadata::MetadataValue::from(2000u32),
            );
            status
        }
        logferry_buffer::Error::TooLarge { .. } => Status::invalid_argument(error.to_string()),
        _ => Status::unavailable(format!("the backend cannot store the batch: {error}")),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl IngestService {
    /// Stores one batch unless the mark shows it is stored already. Returns the ack.
    async fn store(
        &self,
        principal: &Principal,
        agent_id: [u8; 16],
        mark: &AgentMark,
        batch: Batch,
    ) -> Result<Ack, Status> {
        let refuse = |(reason, message): Refusal| {
            self.metrics
                .ingest_refused
                .with_label_values(&[principal.tenant.as_str(), reason])
                .inc();
            invalid(message)
        };
        validate(&batch, &self.limits).map_err(refuse)?;
        if batch.key_id == 0 {
            check_raw_size(&batch).await.map_err(refuse)?;
        }
        let tenants = self.auth.live.tenants();
        let required = tenants.agent_config(&principal.tenant).encryption_key_id;
        if required != 0 && batch.key_id == 0 {
            // The buffer holds ciphertext only for a tenant that encrypts. An agent with
            // settings from before encryption was turned on gets the new ones when it
            // reconnects, and seals the same chunks.
            return Err(invalid(format!(
                "tenant `{}` requires sealed batches (key id {required}), this one is not \
                 encrypted; the agent picks up the key when it reconnects",
                principal.tenant
            )));
        }
        let limit = tenants.rate_limit(&principal.tenant);
        let wire_bytes = batch.payload.len() as u64;
        // A limit counts what a batch decompresses to as well: a small batch that
        // expands a thousandfold costs the router that much.
        let cost = wire_bytes.max(batch.raw_bytes);
        if let Err(wait) = self.limiter.admit(&principal.tenant, limit, cost) {
            self.metrics
                .rate_limited
                .with_label_values(&[principal.tenant.as_str()])
                .inc();
            let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1);
            let mut status = Status::resource_exhausted(format!(
                "tenant `{}` is over its rate limit ({} bytes/s, {} batches/s; 0 = none); \
                 retry in {wait_ms} ms",
                principal.tenant, limit.bytes_per_sec, limit.batches_per_sec
            ));
            status.metadata_mut().insert(
                "retry-after-ms",
                tonic::metadata::MetadataValue::from(wait_ms),
            );
            return Err(status);
        }
        let _serial = mark.lock.lock().await;
        let stored = mark.stored.load(Ordering::Acquire);
        if batch.last_seq <= stored {
            debug!(
                first = batch.first_seq,
                last = batch.last_seq,
                "duplicate batch acked again"
            );
            self.metrics
                .ingest_duplicates
                .with_label_values(&[principal.tenant.as_str()])
                .inc();
            return Ok(Ack {
                last_seq: batch.last_seq,
                duplicate: true,
            });
        }
        let skipped = check_gap(&batch, &self.limits, agent_id, stored).map_err(refuse)?;
        if skipped > 0 {
            let agent = hex::encode(agent_id);
            warn!(
                tenant = %principal.tenant,
                agent = %agent,
                "gap: {skipped} seq(s) between {} and {} never arrive ({}); the agent's spool \
                 lost them",
                stored + 1,
                batch.last_seq,
                if batch.declared_lost >= skipped { "declared lost" } else { "undeclared, within --max-seq-gap" }
            );
            self.metrics
                .ingest_seqs_lost
                .with_label_values(&[principal.tenant.as_str()])
                .inc_by(skipped);
        }
        let meta = RecordMeta {
            tenant: principal.tenant.clone(),
            access_key: principal.access_key.clone(),
            agent_id,
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            key_id: batch.key_id,
            compression: batch.compression as u8,
            chunk_count: batch.chunk_count,
            raw_bytes: batch.raw_bytes,
            received_unix_ms: now_ms(),
        };
        let (payload, tags) = (batch.payload, batch.tags);
        match &self.storage {
            Storage::Embedded(log) => {
                let log = log.clone();
                tokio::task::spawn_blocking(move || log.append(&meta, &payload))
                    .await
                    .map_err(|e| Status::internal(format!("buffer append task failed: {e}")))?
                    .map_err(|e| {
                        warn!("cannot store a batch: {e}");
                        buffer_status(&e)
                    })?;
            }
            Storage::Kafka(producer) => producer.append(&meta, &tags, &payload).await?,
        }
        mark.stored.store(batch.last_seq, Ordering::Release);
        self.activity
            .record(&(principal.tenant.clone(), agent_id), batch.raw_bytes);
        let tenant = [principal.tenant.as_str()];
        let m = &self.metrics;
        m.ingest_batches.with_label_values(&tenant).inc();
        m.ingest_chunks
            .with_label_values(&tenant)
            .inc_by(u64::from(batch.chunk_count));
        m.ingest_raw_bytes
            .with_label_values(&tenant)
            .inc_by(batch.raw_bytes);
        m.ingest_wire_bytes
            .with_label_values(&tenant)
            .inc_by(wire_bytes);
        Ok(Ack {
            last_seq: batch.last_seq,
            duplicate: false,
        })
    }

    async fn run_stream(
        self,
        session: Session,
        mut inbound: Streaming<AgentMessage>,
        tx: mpsc::Sender<Result<ServerMessage, Status>>,
    ) {
        let result = self.serve_stream(&session, &mut inbound, &tx).await;
        if let Err(status) = result {
            let _ = tx.send(Err(status)).await;
        }
    }

    async fn serve_stream(
        &self,
        session: &Session,
        inbound: &mut Streaming<AgentMessage>,
        tx: &mpsc::Sender<Result<ServerMessage, Status>>,
    ) -> Result<(), Status> {
        let principal = &session.principal;
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(invalid("no hello within 10s".into())),
            Ok(message) => match message.map_err(undecodable)?.and_then(|m| m.msg) {
                Some(agent_message::Msg::Hello(hello)) => hello,
                _ => {
                    return Err(invalid(
                        "the first message of a stream must be a hello".into(),
                    ));
                }
            },
        };
        let agent_id: [u8; 16] = hello.agent_id.as_slice().try_into().map_err(|_| {
            invalid(format!(
                "agent id must be 16 bytes, got {}",
                hello.agent_id.len()
            ))
        })?;
        let agent = hex::encode(agent_id);
        // An agent id belongs to the access key that first presented it: another key
        // of the tenant could otherwise move its mark and erase its later chunks.
        let key = (principal.tenant.clone(), agent_id);
        let mark = match self.marks.claim(
            key,
            &principal.access_key,
            self.limits.max_agents_per_key,
        ) {
            Ok(mark) => mark,
            Err(ClaimError::Owned(owner)) => {
                self.metrics
                    .ingest_refused
                    .with_label_values(&[principal.tenant.as_str(), "agent_owner"])
                    .inc();
                let status = Status::permission_denied(format!(
                    "agent id {agent} belongs to access key `{owner}` of tenant `{}`; access \
                     key `{}` may not send as it (every agent spool has its own id)",
                    principal.tenant, principal.access_key
                ));
                self.metrics.auth_failed(&status);
                warn!(tenant = %principal.tenant, access_key = %principal.access_key, agent = %agent, owner = %owner, "refused: the agent id belongs to another access key");
                return Err(status);
            }
            Err(too_many @ ClaimError::TooMany(..)) => {
                self.metrics
                    .ingest_refused
                    .with_label_values(&[principal.tenant.as_str(), "agents"])
                    .inc();
                return Err(Status::resource_exhausted(format!(
                    "a new agent id {agent} is refused: {too_many}"
                )));
            }
        };
        if matches!(self.storage, Storage::Kafka(_)) {
            // A stateless ingester cannot know what Kafka holds: it trusts the agent's
            // own acked cursor, and the router drops any batch stored twice.
            mark.stored.fetch_max(hello.acked_seq, Ordering::AcqRel);
        }
        let stored_seq = mark.stored.load(Ordering::Acquire);
        info!(
            tenant = %principal.tenant,
            access_key = %principal.access_key,
            agent = %agent,
            version = %hello.agent_version,
            "agent connected; stored seq {stored_seq}, agent acked {}",
            hello.acked_seq
        );
        let welcome = Welcome {
            stored_seq,
            tenant: principal.tenant.clone(),
        };
        send(tx, server_message::Msg::Welcome(welcome)).await?;

        let mut shutdown = self.shutdown.clone();
        let mut changes = self.auth.live.subscribe();
        let expires = expiry(session);
        loop {
            let message = tokio::select! {
                message = inbound.message() => message.map_err(undecodable)?,
                _ = shutdown.wait_for(|down| *down) => {
                    return Err(Status::unavailable("the backend is shutting down; reconnect shortly"));
                }
                _ = changes.changed() => {
                    // A disabled key or a revoked token ends the stream now.
                    self.auth
                        .authorize(&session.claims)
                        .inspect_err(|status| self.metrics.auth_failed(status))?;
                    continue;
                }
                _ = tokio::time::sleep_until(expires) => return Err(expired()),
            };
            let Some(message) = message else {
                debug!(agent = %agent, "agent closed its stream");
                return Ok(());
            };
            match message.msg {
                Some(agent_message::Msg::Batch(batch)) => {
                    let ack = self.store(principal, agent_id, &mark, batch).await?;
                    send(tx, server_message::Msg::Ack(ack)).await?;
                }
                Some(agent_message::Msg::Hello(_)) => {
                    return Err(invalid("a stream says hello only once".into()));
                }
                None => return Err(invalid("empty message".into())),
            }
        }
    }
}

async fn send(
    tx: &mpsc::Sender<Result<ServerMessage, Status>>,
    msg: server_message::Msg,
) -> Result<(), Status> {
    tx.send(Ok(ServerMessage { msg: Some(msg) }))
        .await
        .map_err(|_| Status::cancelled("the agent went away"))
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        if *self.shutdown.borrow() {
            return Err(Status::unavailable(
                "the backend is shutting down; reconnect shortly",
            ));
        }
        let session = self.authenticate(&request)?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(self.clone().run_stream(session, inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_config(
        &self,
        request: Request<GetConfigRequest>,
    ) -> Result<Response<AgentConfig>, Status> {
        let session = self.authenticate(&request)?;
        Ok(Response::new(self.config_for(&session.principal)))
    }

    type WatchConfigStream = ReceiverStream<Result<AgentConfig, Status>>;

    async fn watch_config(
        &self,
        request: Request<GetConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        let session = self.authenticate(&request)?;
        let principal = &session.principal;
        let Some(guard) = self.watchers.enter(&principal.access_key) else {
            self.metrics
                .ingest_refused
                .with_label_values(&[principal.tenant.as_str(), "watchers"])
                .inc();
            return Err(Status::resource_exhausted(format!(
                "access key `{}` has {} config watches open, the most --max-watchers-per-key \
                 allows",
                principal.access_key, self.watchers.max
            )));
        };
        let (tx, rx) = mpsc::channel(4);
        let service = self.clone();
        tokio::spawn(async move {
            service.run_watch(session, tx).await;
            drop(guard);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl IngestService {
    /// Authenticates a call by its metadata and the client certificate the TLS layer
    /// verified, counting a refusal.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<Session, Status> {
        self.auth
            .authenticate(
                request.metadata(),
                request.peer_certs().as_deref().map(Vec::as_slice),
            )
            .inspect_err(|status| self.metrics.auth_failed(status))
    }

    /// The settings of `principal`'s tenant, stamped with the registry version.
    fn config_for(&self, principal: &Principal) -> AgentConfig {
        AgentConfig {
            config_version: self.auth.live.version(),
            ..self.auth.live.tenants().agent_config(&principal.tenant)
        }
    }

    /// Sends the current config, then every change, until the agent goes away, its
    /// credentials stop being valid, or the backend shuts down.
    async fn run_watch(self, session: Session, tx: mpsc::Sender<Result<AgentConfig, Status>>) {
        let mut changes = self.auth.live.subscribe();
        let mut shutdown = self.shutdown.clone();
        let expires = expiry(&session);
        let mut principal = session.principal.clone();
        let mut sent: Option<AgentConfig> = None;
        loop {
            let config = self.config_for(&principal);
            let changed = sent.as_ref().is_none_or(|s| {
                AgentConfig {
                    config_version: config.config_version,
                    ..s.clone()
                } != config
            });
            if changed {
                if tx.send(Ok(config.clone())).await.is_err() {
                    return;
                }
                sent = Some(config);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tx.closed() => return,
                () = async { let _ = shutdown.wait_for(|down| *down).await; } => return,
                _ = tokio::time::sleep_until(expires) => {
                    let _ = tx.send(Err(expired())).await;
                    return;
                }
            }
            match self.auth.authorize(&session.claims) {
                Ok(now) => principal = now,
                Err(status) => {
                    self.metrics.auth_failed(&status);
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        }
    }
}
