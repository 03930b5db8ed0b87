//! `logferry serve`: ingest, buffer and router in one process.
//!
//! On embedded defaults (no flags) it needs nothing but a data directory:
//! - `<data-dir>/keys/`: the Ed25519 token-signing key (`signing.pem`) and the
//!   checkpoint-signing key of the file sink (`checkpoint.pem`), each created once,
//!   and `keys/tenants/<tenant>/<key_id>.key`, the tenants' payload decryption keys;
//! - `<data-dir>/revoked-tokens`: the token revocation list (`logferry token revoke`);
//! - `<data-dir>/tls/`: a development CA and server certificate, created once;
//! - `<data-dir>/tenants.yaml`: a development tenant `dev` with one access key and
//!   payload encryption on (key id 1);
//! - `<data-dir>/dev-credentials.env`: endpoint, access key, a fresh token, CA file;
//! - `<data-dir>/buffer/`: the embedded durable buffer;
//! - `<data-dir>/files/<tenant>/<access_key>/<access_key>.jsonl`: the file sink;
//! - `<data-dir>/dead-letter/<destination>/`: what could not be delivered, and why;
//! - `<data-dir>/router/`: one checkpoint per destination.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use logferry_buffer::{EmbeddedLog, LogConfig};
use logferry_proto::MAX_MESSAGE_BYTES;
use logferry_proto::v1::ingest_server::IngestServer;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::activity::{Activity, ActivityConfig};
use crate::auth::{Revocations, TokenAuthority};
use crate::ingest::conn::{self, ConnLimits, ConnMetrics};
use crate::ingest::{Authenticator, IngestService, Marks, Storage, Watchers};
use crate::keys::{KeyRing, encryption_spec, keys_dir};
use crate::live::{Live, Reloader, destinations_of};
use crate::metrics::{self, Metrics};
use crate::pki::{ServerPki, ensure_dev_pki, server_tls};
use crate::router::{Destination, Format, Route, Router};
use crate::signing::CheckpointSigner;
use crate::sinks::{
    BasicAuth, ElasticsearchConfig, ElasticsearchSink, FileSink, KafkaSink, KafkaSinkConfig,
    LokiConfig, LokiSink, MessageKey, ObjectCompression, PostgresConfig, PostgresSink, Rotation,
    S3Config, S3Sink, StdoutSink,
};
use crate::tenants::DestinationSpec;
use crate::tenants::{Registry, TenantStore};

/// Flags of `logferry serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Where everything the backend keeps lives.
    #[arg(long, env = "LOGFERRY_DATA_DIR", default_value = "./logferry-data")]
    pub data_dir: PathBuf,
    /// Address of the gRPC listener (port 0 picks a free one).
    #[arg(long, env = "LOGFERRY_LISTEN", default_value = "127.0.0.1:7777")]
    pub listen: SocketAddr,
    /// Tenant registry (YAML). Default: a development tenant in `<data-dir>/tenants.yaml`.
    #[arg(long, env = "LOGFERRY_TENANTS")]
    pub tenants: Option<PathBuf>,
    /// Also print every record to stdout as a JSON line.
    #[arg(long)]
    pub print_events: bool,
    /// Server certificate chain (PEM). Default: the development CA's certificate.
    #[arg(long, env = "LOGFERRY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of `--tls-cert` (PEM).
    #[arg(long, env = "LOGFERRY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) of client certificates: enables mutual TLS. A client
    /// certificate is then verified if presented (optional), and one whose subject CN
    /// is a key's `client_cert_cn` authenticates that key without a token.
    #[arg(long, env = "LOGFERRY_TLS_CLIENT_CA", conflicts_with = "plaintext")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve without TLS. Refused on non-loopback addresses unless
    /// `--plaintext-on-public-interface` is given too.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub plaintext: bool,
    /// Allow `--plaintext` on a non-loopback address (behind a TLS-terminating proxy
    /// or a service mesh that encrypts the hop). Tokens then cross that hop in clear.
    #[arg(long, requires = "plaintext")]
    pub plaintext_on_public_interface: bool,
    /// Token revocation list. Default: `<data-dir>/revoked-tokens`.
    #[arg(long, env = "LOGFERRY_REVOKED_TOKENS")]
    pub revoked_tokens: Option<PathBuf>,
    /// Size cap of the embedded buffer; at the cap ingest answers RESOURCE_EXHAUSTED.
    #[arg(long, env = "LOGFERRY_BUFFER_MAX_SIZE", default_value = "8G", value_parser = parse_size)]
    pub buffer_max_size: u64,
    /// fsync the buffer before acking agents (`on`/`off`). `off` is for benchmarks.
    #[arg(
        long,
        env = "LOGFERRY_BUFFER_SYNC",
        default_value = "on",
        value_parser = parse_on_off,
        action = clap::ArgAction::Set
    )]
    pub buffer_sync: bool,
    /// Lifetime of the development token written to dev-credentials.env.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub dev_token_ttl: Duration,
    /// HTTP address of `/metrics` (Prometheus), `/healthz` and `/readyz`; `off` for
    /// none. Port 0 picks a free port.
    #[arg(long, env = "LOGFERRY_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_parser = parse_listen)]
    pub metrics_listen: MetricsListen,
    /// How often the file sink signs a checkpoint of each file's hash chain and its
    /// manifest of files (with the checkpoint key, `keys/checkpoint.pem`), also when
    /// idle while a tail is unsigned; `0s` signs at every commit.
    #[arg(long, env = "LOGFERRY_CHAIN_CHECKPOINT_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub chain_checkpoint_interval: Duration,
    /// Rotation of the shared `files` destination (tenants without destinations of
    /// their own): start a new file once one holds this much, like `256M`; `0`: never.
    /// A tenant's own file destinations set `rotate_bytes` in the registry instead.
    #[arg(long, env = "LOGFERRY_FILES_ROTATE_BYTES", default_value = "0", value_parser = parse_size)]
    pub files_rotate_bytes: u64,
    /// Rotation of the shared `files` destination: start a new file once this backend
    /// has written to one for this long, like `1h`. Default: never.
    #[arg(long, env = "LOGFERRY_FILES_ROTATE_AGE", value_parser = humantime::parse_duration)]
    pub files_rotate_age: Option<Duration>,
    /// gzip the closed files of the shared `files` destination (needs
    /// `--files-rotate-bytes` or `--files-rotate-age`).
    #[arg(long, env = "LOGFERRY_FILES_GZIP")]
    pub files_gzip: bool,
    /// Flag an agent as silent (`logferry_agent_silent`) once it has stored nothing
    /// for this long.
    #[arg(long, env = "LOGFERRY_AGENT_SILENCE_AFTER", default_value = "5m", value_parser = humantime::parse_duration)]
    pub agent_silence_after: Duration,
    /// Length of the windows each agent's rate is sampled over.
    #[arg(long, env = "LOGFERRY_AGENT_RATE_WINDOW", default_value = "1m", value_parser = humantime::parse_duration)]
    pub agent_rate_window: Duration,
    /// A window's rate this many times above (or below) the agent's baseline is a
    /// surge (or drop): `logferry_agent_rate_anomaly`.
    #[arg(long, env = "LOGFERRY_AGENT_ANOMALY_FACTOR", default_value_t = 10.0)]
    pub agent_anomaly_factor: f64,
    /// The largest batch accepted, decompressed (what it declares, and what it
    /// holds). Ingest refuses a larger one with INVALID_ARGUMENT; the router
    /// dead-letters one it opens. Bounds the memory one batch can take. The agent's
    /// batches are at most 48M.
    #[arg(long, env = "LOGFERRY_MAX_BATCH_BYTES", default_value = "64M", value_parser = parse_size)]
    pub max_batch_bytes: u64,
    /// How many seqs an agent's batch may skip past what the backend holds of it
    /// without declaring them lost (agents declare what their spool lost). A larger
    /// undeclared jump is refused with INVALID_ARGUMENT: it would make the backend
    /// drop the agent's next chunks as already stored.
    #[arg(long, env = "LOGFERRY_MAX_SEQ_GAP", default_value_t = crate::limits::DEFAULT_MAX_SEQ_GAP)]
    pub max_seq_gap: u64,
    /// How many agent ids (agent spools) one access key may own; a stream with a new
    /// id past it is refused with RESOURCE_EXHAUSTED. Bounds the marks an access key's
    /// holder can make the backend keep. Ids are never forgotten, so leave room for
    /// the spools a fleet sharing the key creates over its life.
    #[arg(long, env = "LOGFERRY_MAX_AGENTS_PER_KEY", default_value_t = crate::limits::DEFAULT_MAX_AGENTS_PER_KEY)]
    pub max_agents_per_key: usize,
    /// Most connections the gRPC listener holds open; more are closed as they come
    /// (`logferry_connections_refused_total{reason="limit"}`). The process's open-file
    /// limit is raised to its hard limit at start, and this is kept under it.
    #[arg(long, env = "LOGFERRY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Most connections from one peer address. Raise it when agents reach the backend
    /// through a proxy or NAT that makes them one address.
    #[arg(
        long,
        env = "LOGFERRY_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 1024
    )]
    pub max_connections_per_peer: usize,
    /// How long a new connection may stay silent, and then how long its TLS
    /// handshake may take; after either it is closed.
    #[arg(long, env = "LOGFERRY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Most concurrent calls (HTTP/2 streams) on one connection. An agent uses two.
    #[arg(
        long,
        env = "LOGFERRY_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 32
    )]
    pub max_streams_per_connection: u32,
    /// Most open config watches (`WatchConfig`) per access key; more are refused with
    /// RESOURCE_EXHAUSTED. One per running agent of the key.
    #[arg(long, env = "LOGFERRY_MAX_WATCHERS_PER_KEY", default_value_t = 10_000)]
    pub max_watchers_per_key: usize,
    /// Stop tracking an agent silent for this long (a decommissioned host).
    #[arg(long, env = "LOGFERRY_AGENT_FORGET_AFTER", default_value = "7d", value_parser = humantime::parse_duration)]
    pub agent_forget_after: Duration,
}

/// Raises the open-file limit to its hard limit and keeps `wanted` connections
/// under it, with room for the buffer, sinks and clients.
fn max_connections(wanted: usize) -> usize {
    const RESERVED: u64 = 256;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` and `setrlimit` read and write the `rlimit` we pass and
    // have no other preconditions.
    let files = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return wanted;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        limit.rlim_cur
    };
    let room = files.saturating_sub(RESERVED) as usize;
    if wanted > room {
        warn!(
            "--max-connections {wanted} is over what {files} open files allow; holding at most \
             {room} connections"
        );
        return room.max(1);
    }
    wanted
}

impl ServeArgs {
    /// `--max-batch-bytes` and `--max-seq-gap`.
    pub fn batch_limits(&self) -> crate::limits::BatchLimits {
        crate::limits::BatchLimits {
            max_batch_bytes: self.max_batch_bytes,
            max_seq_gap: self.max_seq_gap,
            max_agents_per_key: self.max_agents_per_key,
        }
    }
}

/// `--metrics-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
pub struct MetricsListen(pub Option<SocketAddr>);

fn parse_listen(value: &str) -> Result<MetricsListen, String> {
    if value == "off" {
        return Ok(MetricsListen(None));
    }
    value
        .parse()
        .map(|addr| MetricsListen(Some(addr)))
        .map_err(|e| format!("expected host:port or `off`: {e}"))
}

pub fn parse_size(value: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(value)
        .map_err(|e| e.to_string())
}

pub fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        other => Err(format!("expected on or off, got `{other}`")),
    }
}

/// The registry in use, its path, and whether it is the generated development one.
/// A new development registry encrypts: its key pair is created with it.
pub fn load_registry(data_dir: &Path, tenants: Option<&Path>) -> Result<(Registry, PathBuf, bool)> {
    if let Some(path) = tenants {
        return Ok((Registry::load(path)?, path.to_path_buf(), false));
    }
    let path = data_dir.join("tenants.yaml");
    if path.exists() {
        return Ok((Registry::load(&path)?, path, true));
    }
    let ring = KeyRing::new(keys_dir(data_dir));
    let encryption = match ring.ids("dev")?.last() {
        Some(&id) => {
            let public = ring
                .get("dev", id)
                .map_err(anyhow::Error::msg)?
                .public_key();
            encryption_spec(id, &public)
        }
        None => {
            let (id, public) = ring.generate("dev", None)?;
            encryption_spec(id, &public)
        }
    };
    let registry = Registry::development(Some(encryption));
    crate::fsutil::write_atomic(&path, registry.to_yaml()?.as_bytes())?;
    Ok((registry, path, true))
}

/// Registers SIGINT and SIGTERM handlers now, so a signal that comes right after
/// startup is not lost, and returns a future that resolves on the first of them.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// What a process runs: everything on the embedded log, or the Kafka ingest tier.
#[derive(Debug, Clone)]
pub enum Role {
    /// `logferry serve`.
    Serve,
    /// `logferry ingest`: authenticate, produce to Kafka, ack; no buffer, no router.
    Ingest(crate::kafka::KafkaArgs),
}

pub async fn run(args: ServeArgs) -> Result<()> {
    run_role(args, Role::Serve).await
}

pub async fn run_role(args: ServeArgs, role: Role) -> Result<()> {
    if args.plaintext && !args.listen.ip().is_loopback() && !args.plaintext_on_public_interface {
        bail!(
            "refusing to serve plaintext on {}: --plaintext is for loopback addresses; add \
             --plaintext-on-public-interface if a proxy or mesh encrypts this hop",
            args.listen
        );
    }
    let data = &args.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("creating `{}`", data.display()))?;
    let _router_lock = match role {
        Role::Serve => Some(crate::fsutil::lock_router(data, false)?),
        Role::Ingest(_) => None,
    };
    let tokens = Arc::new(TokenAuthority::load_or_create(&data.join("keys"))?);
    let (registry, registry_path, development) = load_registry(data, args.tenants.as_deref())?;
    let revoked_path = args
        .revoked_tokens
        .clone()
        .unwrap_or_else(|| data.join("revoked-tokens"));
    let revoked = Revocations::load(&revoked_path)?;
    let pki = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ServerPki {
            cert: cert.clone(),
            key: key.clone(),
            ca: None,
        }),
        _ if args.plaintext => None,
        _ => Some(ensure_dev_pki(&data.join("tls"))?),
    };

    // Up before the buffer is recovered, so /healthz answers and /readyz says not yet.
    let (shutdown_tx, shutdown) = watch::channel(false);
    let metrics = Metrics::new()?;
    metrics.registry_version.set(1);
    metrics.revoked_tokens.set(revoked.len() as i64);
    if let MetricsListen(Some(addr)) = args.metrics_listen {
        let bound = metrics::serve(addr, metrics.clone(), shutdown.clone()).await?;
        eprintln!("logferry: metrics on http://{bound}/metrics (also /healthz, /readyz)");
    }

    let (storage, marks, log) = match &role {
        Role::Serve => {
            let log_config = LogConfig {
                max_bytes: args.buffer_max_size,
                sync: args.buffer_sync,
                ..LogConfig::new(data.join("buffer"))
            };
            let (log, report) = tokio::task::spawn_blocking(move || EmbeddedLog::open(log_config))
                .await?
                .context("opening the buffer")?;
            // Damage found on open was already logged as a warning, place by place.
            info!("buffer recovered: {report}");
            let log = Arc::new(log);
            let marks = Arc::new(Marks::load(&data.join("marks.json"), &log)?);
            info!("dedup marks for {} agent(s) loaded", marks.len());
            metrics.buffer_max_bytes.set(args.buffer_max_size as i64);
            (Storage::Embedded(log.clone()), marks, Some(log))
        }
        Role::Ingest(kafka) => {
            let (kafka, failures) = (kafka.clone(), metrics.kafka_produce_failures.clone());
            let producer = tokio::task::spawn_blocking(move || {
                crate::kafka::KafkaProducer::new(&kafka, failures)
            })
            .await??;
            (
                Storage::Kafka(Arc::new(producer)),
                Arc::new(Marks::in_memory()),
                None,
            )
        }
    };
    if args.max_batch_bytes < 1 << 20 {
        bail!(
            "--max-batch-bytes must be at least 1M, got {}",
            args.max_batch_bytes
        );
    }
    if args.agent_anomaly_factor <= 1.0 {
        bail!(
            "--agent-anomaly-factor must be above 1, got {}",
            args.agent_anomaly_factor
        );
    }
    let activity = Arc::new(Activity::new(
        ActivityConfig {
            window: args.agent_rate_window.max(Duration::from_millis(100)),
            silence_after: args.agent_silence_after,
            factor: args.agent_anomaly_factor,
            forget_after: args.agent_forget_after,
        },
        metrics.activity.clone(),
        marks.keys(),
    ));
    activity.clone().spawn(shutdown.clone());

    let router = match &log {
        Some(log) => {
            crate::router::stopped::watch_crashes(&data.join("router"))
                .context("setting up crash detection (`router/crashed`)")?;
            let keys = Arc::new(KeyRing::new(keys_dir(data)));
            let signer = Arc::new(CheckpointSigner::load_or_create(&data.join("keys"))?);
            let destinations = open_destinations(&args, &registry, &signer, &keys, &metrics)?;
            tokio::spawn(watch_buffer(log.clone(), metrics.clone(), shutdown.clone()));
            Some(Router::start(
                destinations,
                log.clone(),
                marks.clone(),
                shutdown.clone(),
            ))
        }
        None => None,
    };

    let conn_limits = ConnLimits {
        max_connections: max_connections(args.max_connections),
        max_per_peer: args.max_connections_per_peer,
        handshake_timeout: args.handshake_timeout,
    };
    let conn_metrics = ConnMetrics {
        open: metrics.connections_open.clone(),
        refused: metrics.connections_refused.clone(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr()?;
    let scheme = if pki.is_some() { "https" } else { "http" };
    let endpoint = format!("{scheme}://{local}");

    let store: Arc<dyn TenantStore> = Arc::new(registry.clone());
    let live = Live::new(store, revoked);
    Reloader {
        live: live.clone(),
        registry: registry_path,
        revoked: revoked_path,
        metrics: metrics.clone(),
        destinations: destinations_of(&registry),
    }
    .spawn(shutdown.clone())?;
    let auth = Authenticator {
        tokens: tokens.clone(),
        live,
    };
    let service = IngestService {
        auth,
        storage,
        marks,
        shutdown: shutdown.clone(),
        metrics: metrics.clone(),
        limiter: Arc::default(),
        activity,
        limits: args.batch_limits(),
        watchers: Arc::new(Watchers::new(args.max_watchers_per_key)),
    };

    if development {
        write_dev_credentials(
            data,
            &registry,
            &tokens,
            &endpoint,
            pki.as_ref(),
            args.dev_token_ttl,
        )?;
    }
    let signals = shutdown_signal()?;
    // Ready from here: the buffer is recovered and the listener bound (connections
    // queue in its backlog until the server polls it a moment later).
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<IngestServer<IngestService>>().await;
    metrics.set_ready(true);
    eprintln!(
        "logferry: listening on {local} ({})",
        if pki.is_some() { "TLS" } else { "plaintext" }
    );

    let mut server = tonic::transport::Server::builder()
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(32 << 20)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(args.max_streams_per_connection))
        .tcp_nodelay(true);
    if let Some(pki) = &pki {
        let mut tls = server_tls(pki)?.timeout(args.handshake_timeout);
        if let Some(ca) = &args.tls_client_ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading the client CA `{}`", ca.display()))?;
            tls = tls
                .client_ca_root(tonic::transport::Certificate::from_pem(pem))
                .client_auth_optional(true);
        }
        server = server.tls_config(tls)?;
    }
    let ingest = IngestServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let shutdown_requested = async move {
        signals.await;
        info!("shutting down: closing streams, finishing the router's current step");
        metrics.set_ready(false);
        health
            .set_not_serving::<IngestServer<IngestService>>()
            .await;
        let _ = shutdown_tx.send(true);
    };
    server
        .add_service(health_service)
        .add_service(ingest)
        .serve_with_incoming_shutdown(
            conn::incoming(listener, conn_limits, conn_metrics),
            shutdown_requested,
        )
        .await
        .context("the gRPC server failed")?;
    if let Some(router) = router
        && tokio::time::timeout(Duration::from_secs(10), router.join())
            .await
            .is_err()
    {
        warn!("the router did not stop within 10s; its checkpoints keep it exactly-once anyway");
    }
    info!("stopped");
    Ok(())
}

/// One destination to run: what it takes and where it writes.
#[derive(Debug, Clone)]
pub struct DestinationPlan {
    pub name: String,
    pub sink: SinkPlan,
    pub route: Route,
    pub format: Format,
}

/// A destination's sink, resolved from the registry.
#[derive(Debug, Clone)]
pub enum SinkPlan {
    /// Files under this root.
    File(PathBuf, Rotation),
    Stdout,
    Elasticsearch(ElasticsearchConfig),
    Loki(LokiConfig),
    /// The config's `cursor` is the destination's name; a Kafka partition's sink
    /// appends `.p<N>`.
    Postgres(PostgresConfig),
    /// The config's prefix ends with the destination's name; a Kafka partition's sink
    /// appends `.p<N>`.
    S3(S3Config),
    /// The config's `destination` (a header of every message) is the destination's
    /// name; a Kafka partition's sink appends `.p<N>`.
    Kafka(KafkaSinkConfig),
}

impl SinkPlan {
    fn of(spec: &DestinationSpec, tenant: &str, name: &str, data: &Path) -> Result<Self> {
        let password = spec
            .password_file
            .as_deref()
            .map(|file| {
                std::fs::read_to_string(file)
                    .map(|p| p.trim_end_matches(['\r', '\n']).to_string())
                    .with_context(|| {
                        format!("destination `{name}`: reading password_file `{file}`")
                    })
            })
            .transpose()?;
        let auth = spec.username.as_ref().map(|username| BasicAuth {
            username: username.clone(),
            password: password.clone().unwrap_or_default(),
        });
        let url = spec.url.clone().unwrap_or_default();
        let ca = spec
            .ca_file
            .as_deref()
            .map(|file| crate::sinks::tls::ca_certs(Path::new(file)))
            .transpose()
            .with_context(|| format!("destination `{name}`: ca_file"))?;
        Ok(match spec.kind.as_str() {
            "stdout" => Self::Stdout,
            "elasticsearch" => Self::Elasticsearch(ElasticsearchConfig {
                url,
                index: spec
                    .index
                    .clone()
                    .unwrap_or_else(|| format!("logferry-{}", tenant.to_lowercase())),
                auth,
                ca: ca.clone(),
                bulk_max_bytes: ElasticsearchConfig::DEFAULT_BULK_MAX_BYTES,
            }),
            "loki" => Self::Loki(LokiConfig {
                url,
                labels: spec.labels.clone().unwrap_or_default(),
                max_label_values: spec
                    .max_label_values
                    .unwrap_or(LokiConfig::DEFAULT_MAX_LABEL_VALUES),
                org_id: spec.org_id.clone(),
                auth,
                ca: ca.clone(),
                batch_max_bytes: LokiConfig::DEFAULT_BATCH_MAX_BYTES,
            }),
            "postgres" => Self::Postgres(PostgresConfig {
                url,
                password,
                table: spec
                    .table
                    .clone()
                    .unwrap_or_else(|| PostgresConfig::DEFAULT_TABLE.to_string()),
                cursor: name.to_string(),
                ca,
            }),
            "kafka" => Self::Kafka(KafkaSinkConfig {
                brokers: spec.brokers.clone().unwrap_or_default(),
                topic: spec.topic.clone().unwrap_or_default(),
                key: spec
                    .key
                    .as_deref()
                    .and_then(MessageKey::parse)
                    .unwrap_or(MessageKey::Agent),
                destination: name.to_string(),
                properties: spec
                    .compression
                    .iter()
                    .map(|c| ("compression.type".to_string(), c.clone()))
                    .chain(
                        spec.properties_file
                            .as_deref()
                            .map(|file| crate::kafka::read_properties(Path::new(file)))
                            .transpose()
                            .with_context(|| format!("destination `{name}`: properties_file"))?
                            .unwrap_or_default(),
                    )
                    .chain(spec.properties.clone().unwrap_or_default())
                    .collect(),
            }),
            "s3" => Self::S3(S3Config {
                endpoint: spec.url.clone(),
                bucket: spec.bucket.clone().unwrap_or_default(),
                region: spec.region.clone().unwrap_or_else(|| "us-east-1".into()),
                prefix: format!(
                    "{}/{tenant}/{name}",
                    spec.prefix
                        .as_deref()
                        .unwrap_or("logferry")
                        .trim_matches('/')
                ),
                access_key_id: spec.access_key_id.clone(),
                secret_access_key: spec
                    .secret_access_key_file
                    .as_deref()
                    .map(|file| {
                        std::fs::read_to_string(file)
                            .map(|p| p.trim().to_string())
                            .with_context(|| {
                                format!(
                                    "destination `{name}`: reading secret_access_key_file `{file}`"
                                )
                            })
                    })
                    .transpose()?,
                compression: spec
                    .compression
                    .as_deref()
                    .and_then(ObjectCompression::parse)
                    .unwrap_or_default(),
                batch_max_age: spec
                    .batch_max_age
                    .as_deref()
                    .map(humantime::parse_duration)
                    .transpose()?
                    .unwrap_or(S3Config::DEFAULT_BATCH_MAX_AGE),
            }),
            _ => Self::File(
                data.join("destinations").join(name),
                Rotation {
                    max_bytes: spec
                        .rotate_bytes
                        .as_deref()
                        .map(|size| logferry_agent::config::parse_size("rotate_bytes", size))
                        .transpose()?
                        .unwrap_or(0),
                    max_age: spec
                        .rotate_age
                        .as_deref()
                        .map(humantime::parse_duration)
                        .transpose()?,
                    gzip: spec.gzip.unwrap_or(false),
                },
            ),
        })
    }
}

/// The shared `files` destination (tenants without destinations of their own),
/// `stdout` with `--print-events` (every tenant), and each tenant's own destinations,
/// named `<tenant>.<name>` and written under `<data-dir>/destinations/<tenant>.<name>/`.
pub fn plan_destinations(args: &ServeArgs, registry: &Registry) -> Result<Vec<DestinationPlan>> {
    let data = &args.data_dir;
    let own: std::collections::HashSet<String> = registry
        .file()
        .tenants
        .iter()
        .filter(|t| t.destinations.is_some())
        .map(|t| t.name.clone())
        .collect();
    if args.files_gzip && args.files_rotate_bytes == 0 && args.files_rotate_age.is_none() {
        bail!(
            "--files-gzip compresses closed files; set --files-rotate-bytes or --files-rotate-age"
        );
    }
    let rotation = Rotation {
        max_bytes: args.files_rotate_bytes,
        max_age: args.files_rotate_age,
        gzip: args.files_gzip,
    };
    let mut plans = vec![DestinationPlan {
        name: "files".into(),
        sink: SinkPlan::File(data.join("files"), rotation),
        route: Route {
            except: own,
            ..Route::default()
        },
        format: Format::Json,
    }];
    if args.print_events {
        plans.push(DestinationPlan {
            name: "stdout".into(),
            sink: SinkPlan::Stdout,
            route: Route::default(),
            format: Format::Json,
        });
    }
    for tenant in &registry.file().tenants {
        for spec in tenant.destinations.iter().flatten() {
            let name = format!("{}.{}", tenant.name, spec.name);
            let route = Route {
                tenant: Some(tenant.name.clone()),
                tag: spec
                    .tag_match
                    .as_deref()
                    .map(glob::Pattern::new)
                    .transpose()
                    .with_context(|| format!("destination `{name}`: match"))?,
                access_keys: spec
                    .access_keys
                    .as_ref()
                    .map(|keys| keys.iter().cloned().collect()),
                ..Route::default()
            };
            plans.push(DestinationPlan {
                sink: SinkPlan::of(spec, &tenant.name, &name, data)?,
                name,
                route,
                format: match spec.format.as_deref() {
                    Some("msgpack") => Format::Msgpack,
                    _ => Format::Json,
                },
            });
        }
    }
    Ok(plans)
}

impl DestinationPlan {
    /// Opens the destination, or with `partition` the state of one Kafka partition
    /// of it: checkpoint `<name>.p<N>`, files `<access_key>.p<N>.jsonl`.
    pub fn open(
        &self,
        args: &ServeArgs,
        signer: &Arc<CheckpointSigner>,
        keys: &Arc<KeyRing>,
        metrics: &Metrics,
        partition: Option<i32>,
    ) -> Result<Destination> {
        let part = partition.map(|p| format!(".p{p}")).unwrap_or_default();
        // A Kafka partition's state is written by one router at a time: its lock is
        // taken before anything is recovered (truncated), and a router that lost the
        // partition but has not noticed yet (paused, cut off) still holds it.
        let lock = match partition {
            Some(p) => {
                let router = args.data_dir.join("router");
                std::fs::create_dir_all(&router)
                    .with_context(|| format!("creating `{}`", router.display()))?;
                let path = router.join(format!("{}{part}.lock", self.name));
                match crate::fsutil::try_lock_exclusive(&path)
                    .with_context(|| format!("locking `{}`", path.display()))?
                {
                    Some(lock) => Some(lock),
                    None => bail!(
                        "partition {p} of `{}` is still held by another router (`{}`): one \
                         finishing its last step, or one that lost the partition without \
                         noticing yet; waiting for it to let go",
                        self.name,
                        path.display()
                    ),
                }
            }
            None => None,
        };
        let extension = match self.format {
            Format::Msgpack => "msgpack",
            Format::Json => "jsonl",
        };
        let sink: Box<dyn crate::sinks::Sink> = match &self.sink {
            SinkPlan::File(root, rotation) => Box::new(
                FileSink::with_suffix(
                    root.clone(),
                    Some(signer.clone()),
                    args.chain_checkpoint_interval,
                    format!("{part}.{extension}"),
                )
                .with_rotation(*rotation),
            ),
            SinkPlan::Stdout => Box::new(StdoutSink),
            SinkPlan::Elasticsearch(config) => Box::new(ElasticsearchSink::new(config.clone())),
            SinkPlan::Loki(config) => Box::new(LokiSink::new(config.clone())),
            SinkPlan::Postgres(config) => Box::new(PostgresSink::new(PostgresConfig {
                cursor: format!("{}{part}", config.cursor),
                ..config.clone()
            })),
            SinkPlan::S3(config) => Box::new(S3Sink::new(S3Config {
                prefix: format!("{}{part}", config.prefix),
                ..config.clone()
            })?),
            SinkPlan::Kafka(config) => Box::new(KafkaSink::new(KafkaSinkConfig {
                destination: format!("{}{part}", config.destination),
                ..config.clone()
            })?),
        };
        let destination = Destination::open(
            &format!("{}{part}", self.name),
            sink,
            &args.data_dir,
            metrics.destination(&self.name),
            keys.clone(),
        )?
        .with_route(self.route.clone())
        .with_format(self.format)
        .with_max_batch_bytes(args.max_batch_bytes);
        Ok(match lock {
            Some(lock) => destination.with_lock(lock),
            None => destination,
        })
    }
}

fn open_destinations(
    args: &ServeArgs,
    registry: &Registry,
    signer: &Arc<CheckpointSigner>,
    keys: &Arc<KeyRing>,
    metrics: &Metrics,
) -> Result<Vec<Destination>> {
    plan_destinations(args, registry)?
        .iter()
        .map(|plan| plan.open(args, signer, keys, metrics, None))
        .collect()
}

/// Keeps the buffer gauges current.
async fn watch_buffer(
    log: Arc<EmbeddedLog>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stats = log.stats();
        metrics.buffer_bytes.set(stats.bytes as i64);
        metrics.buffer_end_offset.set(log.end_offset() as i64);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
    }
}

fn write_dev_credentials(
    data: &Path,
    registry: &Registry,
    tokens: &TokenAuthority,
    endpoint: &str,
    pki: Option<&ServerPki>,
    ttl: Duration,
) -> Result<()> {
    let Some(tenant) = registry.file().tenants.first() else {
        return Ok(());
    };
    let Some(key) = tenant.access_keys.first() else {
        return Ok(());
    };
    let (token, _) = tokens.issue(&tenant.name, &key.key, ttl)?;
    let ca = pki.and_then(|p| p.ca.clone());
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut env = format!(
        "LOGFERRY_ENDPOINT={endpoint}\nLOGFERRY_ACCESS_KEY={}\nLOGFERRY_ACCESS_TOKEN={token}\n",
        key.key
    );
    if let Some(ca) = &ca {
        env.push_str(&format!("LOGFERRY_CA_FILE={}\n", absolute(ca).display()));
    }
    let path = data.join("dev-credentials.env");
    let _ = std::fs::remove_file(&path);
    crate::fsutil::write_private(&path, env.as_bytes())?;
    let spool = absolute(data).join("agent-spool");
    eprintln!(
        "\nlogferry: development tenant `{}`, access key `{}`.\n\
         Credentials for agents are in {} (token valid for {}).\n\
         Point Fluent Bit at this backend with:\n\n  \
         set -a; . {}; set +a\n  \
         export LOGFERRY_SPOOL_DIR={}\n  \
         fluent-bit -e target/release/libout_logferry.so -c fluent-bit-conf/fluent-bit.conf\n\n\
         or ship a file without Fluent Bit:\n\n  \
         target/release/logferry send FILE --tag host.logs   (after sourcing the same file)\n",
        tenant.name,
        key.key,
        absolute(&path).display(),
        humantime::format_duration(ttl),
        absolute(&path).display(),
        spool.display(),
    );
    Ok(())
}

/// `logferry route`: every destination of the registry consumes the Kafka topic in
/// its own group (`logferry.<destination>`), exactly once per partition (see
/// [`crate::kafka`]). Runs until SIGINT or SIGTERM.
pub async fn run_route(
    args: ServeArgs,
    kafka: crate::kafka::KafkaArgs,
    consumers: usize,
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let data = args.data_dir.clone();
    std::fs::create_dir_all(&data).with_context(|| format!("creating `{}`", data.display()))?;
    let _router_lock = crate::fsutil::lock_router(&data, false)?;
    let signer = Arc::new(CheckpointSigner::load_or_create(&data.join("keys"))?);
    let (registry, _, _) = load_registry(&data, args.tenants.as_deref())?;
    let keys = Arc::new(KeyRing::new(keys_dir(&data)));
    let (shutdown_tx, shutdown) = watch::channel(false);
    let metrics = Metrics::new()?;
    if let MetricsListen(Some(addr)) = args.metrics_listen {
        let bound = metrics::serve(addr, metrics.clone(), shutdown.clone()).await?;
        eprintln!("logferry: metrics on http://{bound}/metrics (also /healthz, /readyz)");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let plans = plan_destinations(&args, &registry)?;
    {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || crate::kafka::check_route(&kafka)).await??;
    }
    let destinations = plans.len();
    let mut threads = Vec::new();
    for plan in plans {
        let name = plan.name.clone();
        let open: Arc<crate::kafka::OpenPartition> = {
            let (args, signer, keys, metrics) =
                (args.clone(), signer.clone(), keys.clone(), metrics.clone());
            Arc::new(move |partition| plan.open(&args, &signer, &keys, &metrics, Some(partition)))
        };
        // Each consumer is a member of the destination's group; the partitions'
        // locks keep two of them (here or in another router) off one partition.
        for consumer in 0..consumers {
            let (kafka, stop, open, name) =
                (kafka.clone(), stop.clone(), open.clone(), name.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("route-{name}-{consumer}"))
                    .spawn(move || {
                        if let Err(e) = crate::kafka::route_destination(&kafka, &name, open, stop) {
                            tracing::error!(destination = %name, "the destination stopped: {e:#}");
                        }
                    })
                    .context("starting a destination thread")?,
            );
        }
    }
    let signals = shutdown_signal()?;
    metrics.set_ready(true);
    eprintln!(
        "logferry: routing topic `{}` from {} to {destinations} destination(s), {consumers} \
         consumer(s) each",
        kafka.kafka_topic, kafka.kafka_brokers,
    );
    signals.await;
    info!("shutting down: finishing each destination's current step");
    metrics.set_ready(false);
    stop.store(true, Ordering::Release);
    let _ = shutdown_tx.send(true);
    tokio::task::spawn_blocking(move || {
        for thread in threads {
            let _ = thread.join();
        }
    })
    .await?;
    info!("stopped");
    Ok(())
}
