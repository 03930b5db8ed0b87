//! Scenario `transport`: the transport limit. The same chunk bytes as uncompressed
//! `Batch` messages over one TLS gRPC stream to an `Ingest` server in this process
//! that discards each batch and acks it at once.
//!
//! The client is the agent's own channel (`logferry_agent::transport::connect`:
//! rustls, the same HTTP/2 windows) with the agent's window of batches in flight; the
//! server has the backend's HTTP/2 settings and a certificate from a CA made with
//! rcgen for this run. Client and server share this process's tokio runtime, so the
//! CPU figure covers both ends.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use logferry_agent::config::{Endpoint, TlsSettings};
use logferry_proto::MAX_MESSAGE_BYTES;
use logferry_proto::v1::ingest_client::IngestClient;
use logferry_proto::v1::ingest_server::{Ingest, IngestServer};
use logferry_proto::v1::{
    Ack, AgentConfig, AgentMessage, Batch, Compression, GetConfigRequest, Hello, ServerMessage,
    Welcome, agent_message, server_message,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::fixture::BenchChunk;
use crate::measure;
use crate::report::{self, Table};

/// Batches in flight: the agent's default window.
const WINDOW: usize = 8;

#[derive(Debug)]
pub struct TransportRun {
    pub chunk_len: usize,
    pub messages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Client and server together.
    pub cpu: Duration,
}

impl TransportRun {
    pub fn mb_per_s(&self) -> f64 {
        report::mb_per_s(self.bytes, self.elapsed)
    }

    pub fn print(&self) {
        println!(
            "3b. Transport limit: uncompressed Batch messages over one TLS gRPC stream to an \
             in-process server that discards and acks each one (window {WINDOW})"
        );
        let mut table = Table::new(&["case", "bytes", "messages", "elapsed", "MB/s", "CPU"]);
        table.row(vec![
            format!(
                "TLS gRPC, {} per message",
                report::bytes(self.chunk_len as u64)
            ),
            report::bytes(self.bytes),
            self.messages.to_string(),
            report::duration(self.elapsed),
            report::rate(self.mb_per_s()),
            format!(
                "{} (client + server)",
                report::cpu_per_gb(self.cpu, self.bytes)
            ),
        ]);
        table.print();
    }
}

/// Sends `total_bytes` (rounded up to whole chunks) of `chunk` and waits for every ack.
pub fn run(work_dir: &Path, chunk: &BenchChunk, total_bytes: u64) -> Result<TransportRun> {
    let ca_file = work_dir.join("transport-ca.pem");
    let identity = make_identity(&ca_file)?;
    let messages = total_bytes.div_ceil(chunk.len() as u64).max(1);
    let runtime = tokio::runtime::Runtime::new()?;
    let (elapsed, cpu) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = Server::builder()
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(32 << 20)
            .tcp_nodelay(true)
            .tls_config(ServerTlsConfig::new().identity(identity))?
            .add_service(
                IngestServer::new(Discard)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            });
        let server = tokio::spawn(server);
        let endpoint = Endpoint {
            host: "127.0.0.1".to_string(),
            port,
            tls: true,
        };
        let tls = TlsSettings {
            ca_file: Some(ca_file.clone()),
            crt_file: None,
            key_file: None,
            verify: true,
            server_name: None,
        };
        let sent = send(&endpoint, &tls, chunk, messages).await;
        let _ = stop.send(());
        server.await?.context("the discard server failed")?;
        sent
    })?;
    Ok(TransportRun {
        chunk_len: chunk.len(),
        messages,
        bytes: messages * chunk.len() as u64,
        elapsed,
        cpu,
    })
}

/// Streams `messages` batches; returns the time from the first send to the last ack
/// and the CPU time this process spent meanwhile.
async fn send(
    endpoint: &Endpoint,
    tls: &TlsSettings,
    chunk: &BenchChunk,
    messages: u64,
) -> Result<(Duration, Duration)> {
    let channel = logferry_agent::transport::connect(endpoint, tls, Duration::from_secs(10))
        .await
        .map_err(anyhow::Error::msg)?;
    let mut client = IngestClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<AgentMessage>(WINDOW + 2);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            agent_id: vec![0; 16],
            agent_version: "logferry-bench".to_string(),
            acked_seq: 0,
        })),
    })
    .await?;
    let mut inbound = client
        .stream(Request::new(ReceiverStream::new(rx)))
        .await?
        .into_inner();
    match inbound.message().await?.and_then(|message| message.msg) {
        Some(server_message::Msg::Welcome(_)) => {}
        other => bail!("expected a welcome, got {other:?}"),
    }

    let payload = Bytes::from(chunk.bytes.clone());
    let cpu_start = measure::self_cpu();
    let started = Instant::now();
    let (mut sent, mut acked) = (0, 0);
    while acked < messages {
        if sent < messages && sent - acked < WINDOW as u64 {
            sent += 1;
            let batch = Batch {
                first_seq: sent,
                last_seq: sent,
                compression: Compression::None as i32,
                key_id: 0,
                payload: payload.clone(),
                raw_bytes: payload.len() as u64,
                chunk_count: 1,
                tags: Vec::new(),
                declared_lost: 0,
            };
            tx.send(AgentMessage {
                msg: Some(agent_message::Msg::Batch(batch)),
            })
            .await
            .context("the stream closed while sending")?;
            continue;
        }
        match inbound.message().await?.and_then(|message| message.msg) {
            Some(server_message::Msg::Ack(ack)) if ack.last_seq == acked + 1 => acked += 1,
            other => bail!("expected the ack of seq {}, got {other:?}", acked + 1),
        }
    }
    Ok((
        started.elapsed(),
        measure::self_cpu().saturating_sub(cpu_start),
    ))
}

/// A CA and a server certificate for 127.0.0.1 signed by it; writes the CA to
/// `ca_file` and returns the server's identity (chain and key).
fn make_identity(ca_file: &Path) -> Result<Identity> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "logferry bench CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()])?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params.signed_by(&server_key, &Issuer::new(ca_params, ca_key))?;
    std::fs::write(ca_file, ca_cert.pem())
        .with_context(|| format!("writing {}", ca_file.display()))?;
    Ok(Identity::from_pem(
        format!("{}{}", server_cert.pem(), ca_cert.pem()),
        server_key.serialize_pem(),
    ))
}

/// Answers `Hello` with `Welcome` and every batch with its ack, storing nothing.
struct Discard;

#[tonic::async_trait]
impl Ingest for Discard {
    type StreamStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(WINDOW + 2);
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let reply = match message.msg {
                    Some(agent_message::Msg::Hello(_)) => server_message::Msg::Welcome(Welcome {
                        stored_seq: 0,
                        tenant: "bench".to_string(),
                    }),
                    Some(agent_message::Msg::Batch(batch)) => server_message::Msg::Ack(Ack {
                        last_seq: batch.last_seq,
                        duplicate: false,
                    }),
                    None => continue,
                };
                let reply = ServerMessage { msg: Some(reply) };
                if tx.send(Ok(reply)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_config(
        &self,
        _request: Request<GetConfigRequest>,
    ) -> Result<Response<AgentConfig>, Status> {
        Ok(Response::new(AgentConfig::default()))
    }

    type WatchConfigStream = ReceiverStream<Result<AgentConfig, Status>>;

    async fn watch_config(
        &self,
        _request: Request<GetConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        // The current (default) config, then nothing: the stream stays open.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let _ = tx.send(Ok(AgentConfig::default())).await;
            tx.closed().await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
