//! Scenario `memory`: the backend's peak RSS while it routes one large sealed batch,
//! for three batches of the same raw size: ordinary records (copies of the fixture
//! chunk), one chunk of group-end markers `[[-2, {}], {}]`, and one chunk of the
//! smallest records `[[EventTime, {}], {}]`. The first is the baseline; the other two
//! are what a hostile agent sends to make the router's memory grow with content.
//! Each batch goes to a fresh `logferry serve` (the development tenant, which seals),
//! and the figure is the process's VmHWM once the file destination has checkpointed
//! past it. With `--baseline-backend-bin`, another build runs the same batches in the
//! same run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use logferry_agent::seal::{self, BatchContext, PublicKey};
use logferry_proto::MAX_MESSAGE_BYTES;
use logferry_proto::v1::ingest_client::IngestClient;
use logferry_proto::v1::{
    AgentMessage, Batch, BatchPayload, Chunk, Compression, Hello, agent_message, server_message,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::backend::Backend;
use crate::fixture::BenchChunk;
use crate::measure;
use crate::report::{self, Table};

/// The three batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Records,
    Markers,
    Tiny,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Records => "fixture records (baseline)",
            Kind::Markers => "group-end markers, one chunk",
            Kind::Tiny => "empty records, one chunk",
        }
    }

    /// The batch's chunks, about `raw` bytes in all.
    fn chunks(self, large: &BenchChunk, raw: usize) -> Vec<Vec<u8>> {
        let repeat = |unit: &[u8]| -> Vec<Vec<u8>> {
            vec![
                unit.iter()
                    .copied()
                    .cycle()
                    .take(raw / unit.len() * unit.len())
                    .collect(),
            ]
        };
        match self {
            Kind::Records => {
                let mut chunk = large.clone();
                (0..raw.div_ceil(large.len()) as u64)
                    .map(|n| {
                        chunk.stamp(n);
                        chunk.bytes.clone()
                    })
                    .collect()
            }
            Kind::Markers => repeat(&[0x92, 0x92, 0xfe, 0x80, 0x80]),
            Kind::Tiny => repeat(&[
                0x92, 0x92, 0xd7, 0x00, 0x65, 0x53, 0xf1, 0x00, 0, 0, 0, 0, 0x80, 0x80,
            ]),
        }
    }
}

#[derive(Debug)]
struct Row {
    binary: &'static str,
    kind: Kind,
    raw: u64,
    wire: u64,
    routed_in: Duration,
    peak_rss: u64,
}

#[derive(Debug)]
pub struct MemoryRun {
    rows: Vec<Row>,
}

impl MemoryRun {
    pub fn print(&self) {
        println!(
            "8. Backend peak RSS routing one sealed batch: hostile content against \
             ordinary records of the same raw size"
        );
        let mut table = Table::new(&[
            "binary",
            "batch",
            "raw",
            "on the wire",
            "routed in",
            "peak RSS",
            "vs baseline",
        ]);
        for row in &self.rows {
            let baseline = self
                .rows
                .iter()
                .find(|r| r.binary == row.binary && r.kind == Kind::Records)
                .map_or(1, |r| r.peak_rss.max(1));
            table.row(vec![
                row.binary.to_string(),
                row.kind.name().to_string(),
                report::bytes(row.raw),
                report::bytes(row.wire),
                report::duration(row.routed_in),
                report::bytes(row.peak_rss),
                report::ratio(row.peak_rss as f64 / baseline as f64),
            ]);
        }
        table.print();
    }
}

/// Runs each batch of about `raw_bytes` through `backend_bin`, and through
/// `baseline_bin` when given.
pub fn run(
    backend_bin: &Path,
    baseline_bin: Option<&Path>,
    work_dir: &Path,
    large: &BenchChunk,
    raw_bytes: usize,
) -> Result<MemoryRun> {
    let mut rows = Vec::new();
    let mut binaries = vec![("this build", backend_bin)];
    binaries.extend(baseline_bin.map(|bin| ("baseline", bin)));
    for (binary, bin) in binaries {
        for kind in [Kind::Records, Kind::Markers, Kind::Tiny] {
            eprintln!("logferry-bench: memory: {binary}, {} ...", kind.name());
            let data = work_dir.join(format!("memory-{}-{kind:?}", binary.replace(' ', "-")));
            let backend = Backend::start(bin, &data)?;
            let chunks = kind.chunks(large, raw_bytes);
            let (raw, wire) = send_sealed(&backend, &large.tag, chunks)?;
            let started = Instant::now();
            wait_routed(&data, Duration::from_secs(600))
                .with_context(|| format!("routing the batch:\n{}", backend.stderr_tail()))?;
            let routed_in = started.elapsed();
            let peak_rss = measure::peak_rss(backend.pid()).unwrap_or(0);
            backend.stop()?;
            let _ = std::fs::remove_dir_all(&data);
            rows.push(Row {
                binary,
                kind,
                raw,
                wire,
                routed_in,
                peak_rss,
            });
        }
    }
    Ok(MemoryRun { rows })
}

/// Seals `chunks` as one zstd batch (seqs 1..) for the development tenant and streams
/// it; returns its raw and wire sizes once it is acked.
fn send_sealed(backend: &Backend, tag: &str, chunks: Vec<Vec<u8>>) -> Result<(u64, u64)> {
    let registry =
        logferry_backend::tenants::Registry::load(&backend.data_dir.join("tenants.yaml"))?;
    let tenant = &registry.file().tenants[0];
    let encryption = tenant
        .encryption
        .as_ref()
        .context("the development tenant seals")?;
    let key = PublicKey::from_base64(&encryption.public_key).map_err(anyhow::Error::msg)?;
    let agent_id = [0x6d; 16];
    let last_seq = chunks.len() as u64;
    let raw = BatchPayload {
        chunks: chunks
            .into_iter()
            .zip(1..)
            .map(|(data, seq)| Chunk {
                seq,
                tag: tag.to_string(),
                data: data.into(),
            })
            .collect(),
    }
    .encode_to_vec();
    let compressed = zstd::bulk::compress(&raw, 1)?;
    let context = BatchContext {
        tenant: &tenant.name,
        agent_id,
        first_seq: 1,
        last_seq,
        key_id: encryption.key_id,
        compression: Compression::Zstd as i32,
    };
    let payload = seal::seal(&key, &context, &compressed);
    let (raw_len, wire) = (raw.len() as u64, payload.len() as u64);
    let batch = Batch {
        first_seq: 1,
        last_seq,
        compression: Compression::Zstd as i32,
        key_id: encryption.key_id,
        payload: payload.into(),
        raw_bytes: raw_len,
        chunk_count: last_seq as u32,
        tags: vec![tag.to_string()],
        declared_lost: 0,
    };
    let credentials = backend.credentials.clone();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let tls = logferry_agent::config::TlsSettings {
            ca_file: Some(credentials.ca_file.clone()),
            crt_file: None,
            key_file: None,
            verify: true,
            server_name: None,
        };
        let endpoint = logferry_agent::config::Endpoint::parse(&credentials.endpoint)
            .map_err(|e| anyhow::anyhow!("endpoint: {e}"))?;
        let channel = logferry_agent::transport::connect(&endpoint, &tls, Duration::from_secs(10))
            .await
            .map_err(anyhow::Error::msg)?;
        let mut client = IngestClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(4);
        for msg in [
            agent_message::Msg::Hello(Hello {
                agent_id: agent_id.to_vec(),
                agent_version: "logferry-bench".into(),
                acked_seq: 0,
            }),
            agent_message::Msg::Batch(batch),
        ] {
            tx.send(AgentMessage { msg: Some(msg) }).await?;
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert(
            logferry_proto::ACCESS_KEY_HEADER,
            credentials.access_key.parse()?,
        );
        request.metadata_mut().insert(
            logferry_proto::AUTHORIZATION_HEADER,
            format!("Bearer {}", credentials.access_token).parse()?,
        );
        let mut inbound = client.stream(request).await?.into_inner();
        for _ in 0..2 {
            match inbound.message().await?.and_then(|m| m.msg) {
                Some(server_message::Msg::Welcome(_) | server_message::Msg::Ack(_)) => {}
                other => bail!("expected a welcome and an ack, got {other:?}"),
            }
        }
        Ok((raw_len, wire))
    })
}

/// Waits until the `files` destination has checkpointed past the one batch.
fn wait_routed(data: &Path, timeout: Duration) -> Result<()> {
    let path = data.join("router").join("files.checkpoint.json");
    let deadline = Instant::now() + timeout;
    loop {
        let next = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|checkpoint| checkpoint["next_offset"].as_u64());
        if next >= Some(1) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the batch was not routed within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
