//! Peers that hold valid credentials and send what no honest agent would: another
//! access key presenting an agent's id, seq ranges that lie, jumps past the mark,
//! decompression bombs, and batches that make the router panic or crash. Each is
//! refused or set aside with its reason, and the honest agent's records all land,
//! once.

use std::path::Path;
use std::time::Duration;

use logferry_agent::seal::{self, BatchContext, PublicKey};
use logferry_backend::auth::TokenAuthority;
use logferry_backend::send::encode_line;
use logferry_e2e::backend::{
    Backend, Credentials, IngestStream, dead_letters, open_stream, read_jsonl_tree, wait_for,
    wait_for_lines,
};
use logferry_proto::v1::ingest_client::IngestClient;
use logferry_proto::v1::{
    AgentMessage, Batch, BatchPayload, Chunk, Compression, Hello, ServerMessage, agent_message,
    server_message,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

/// Tenant `acme` does not encrypt, so ingest can look into its batches; it has two
/// access keys.
const REGISTRY: &str = "\
tenants:
  - name: acme
    access_keys:
      - key: ak_a
      - key: ak_b
";

const VICTIM: [u8; 16] = [1; 16];

/// Credentials of `acme`'s `access_key`.
fn acme(backend: &Backend, data: &Path, access_key: &str) -> Credentials {
    let authority = TokenAuthority::load_or_create(&data.join("keys")).unwrap();
    Credentials {
        access_key: access_key.into(),
        access_token: authority
            .issue("acme", access_key, Duration::from_secs(3600))
            .unwrap()
            .0,
        ..backend.credentials()
    }
}

/// A tail-style chunk of `lines`.
fn chunk(lines: &[&str]) -> Vec<u8> {
    let mut chunk = Vec::new();
    for line in lines {
        encode_line(line, &mut chunk);
    }
    chunk
}

/// The encoded payload of `chunks` (seq, data).
fn payload(chunks: Vec<(u64, Vec<u8>)>) -> Vec<u8> {
    BatchPayload {
        chunks: chunks
            .into_iter()
            .map(|(seq, data)| Chunk {
                seq,
                tag: "app".into(),
                data: data.into(),
            })
            .collect(),
    }
    .encode_to_vec()
}

/// A batch as it goes on the wire; `raw_bytes` as given, lies included.
fn batch(
    first: u64,
    last: u64,
    count: u32,
    compression: Compression,
    key_id: u32,
    payload: Vec<u8>,
    raw_bytes: u64,
) -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Batch(Batch {
            first_seq: first,
            last_seq: last,
            compression: compression as i32,
            key_id,
            payload: payload.into(),
            raw_bytes,
            chunk_count: count,
            tags: Vec::new(),
            declared_lost: 0,
        })),
    }
}

/// An honest, unsealed, uncompressed batch of one chunk of `lines`.
fn plain(seq: u64, lines: &[&str]) -> AgentMessage {
    let raw = payload(vec![(seq, chunk(lines))]);
    let len = raw.len() as u64;
    batch(seq, seq, 1, Compression::None, 0, raw, len)
}

type Stream = IngestStream;

/// Opens an ingest stream as `agent_id` with the credentials' token.
async fn open(credentials: &Credentials, agent_id: [u8; 16]) -> Result<Stream, Status> {
    open_stream(credentials, &credentials.access_token, agent_id).await
}

/// Sends `message`; the ack's seq, or the status that ended the stream.
async fn send(stream: &mut Stream, message: AgentMessage) -> Result<u64, Status> {
    stream.0.send(message).await.unwrap();
    match stream.1.message().await?.and_then(|m| m.msg) {
        Some(server_message::Msg::Ack(ack)) => Ok(ack.last_seq),
        other => panic!("expected an ack, got {other:?}"),
    }
}

/// Sends `message` and expects its ack; its seq.
async fn acked(stream: &mut Stream, message: AgentMessage) -> u64 {
    send(stream, message)
        .await
        .unwrap_or_else(|status| panic!("refused: {status:?}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn refused(backend: &Backend, reason: &str) -> f64 {
    backend
        .metric(&format!(
            "logferry_ingest_refused_total{{reason=\"{reason}\",tenant=\"acme\"}}"
        ))
        .unwrap_or(0.0)
}

/// The `log` fields of the records in the file sink, in order.
fn logs(data: &Path) -> Vec<String> {
    read_jsonl_tree(&data.join("files"))
        .iter()
        .map(|r| r["record"]["log"].as_str().unwrap().to_string())
        .collect()
}

/// `n` bytes of group-end markers `[[-2, {}], {}]`, 5 bytes each.
fn markers(n: usize) -> Vec<u8> {
    [0x92u8, 0x92, 0xfe, 0x80, 0x80]
        .iter()
        .copied()
        .cycle()
        .take(n / 5 * 5)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_cannot_take_an_agent_and_no_batch_moves_its_mark_unseen() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("tenants.yaml"), REGISTRY).unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let owner = acme(&backend, data.path(), "ak_a");
    let other_key = acme(&backend, data.path(), "ak_b");

    let mut victim = open(&owner, VICTIM).await.unwrap();
    assert_eq!(acked(&mut victim, plain(1, &["victim 1"])).await, 1);

    // Another access key of the same tenant presenting the victim's id.
    let status = open(&other_key, VICTIM).await.err().expect("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        format!(
            "agent id {} belongs to access key `ak_a` of tenant `acme`; access key `ak_b` may \
             not send as it (every agent spool has its own id)",
            hex(&VICTIM)
        )
    );
    assert_eq!(refused(&backend, "agent_owner"), 1.0);

    // An agent sharing the victim's key (the limit of a shared key, docs/security.md):
    // a header that jumps to the end of the seq space is refused...
    let mut thief = open(&owner, VICTIM).await.unwrap();
    let raw = payload(vec![(2, chunk(&["thief"]))]);
    let len = raw.len() as u64;
    let status = send(
        &mut thief,
        batch(2, u64::MAX - 1, 1, Compression::None, 0, raw, len),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains(&format!(
            "skips {} seqs past the stored seq 1 of agent {}, more than --max-seq-gap 10000",
            u64::MAX - 3,
            hex(&VICTIM)
        )),
        "{status:?}"
    );
    assert_eq!(refused(&backend, "seq_gap"), 1.0);
    // ...and a chunk whose seq lies outside its batch's honest header is
    // dead-lettered by the router, so the mark stays at the header's end.
    let mut thief = open(&owner, VICTIM).await.unwrap();
    let raw = payload(vec![(u64::MAX - 1, chunk(&["thief"]))]);
    let len = raw.len() as u64;
    assert_eq!(
        acked(&mut thief, batch(2, 2, 1, Compression::None, 0, raw, len)).await,
        2
    );
    drop(thief);

    // Decompression bombs: a lie about the raw size, and an honest size over the cap.
    let bomb = zstd::bulk::compress(&payload(vec![(3, markers(100 << 20))]), 3).unwrap();
    assert!(bomb.len() < 200 << 10, "{} bytes on the wire", bomb.len());
    let status = send(
        &mut victim,
        batch(3, 3, 1, Compression::Zstd, 0, bomb.clone(), 10),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "the batch declares 10 raw bytes: decompresses to more than 10 bytes"
    );
    let mut victim = open(&owner, VICTIM).await.unwrap();
    let status = send(
        &mut victim,
        batch(3, 3, 1, Compression::Zstd, 0, bomb, 100 << 20),
    )
    .await
    .unwrap_err();
    assert_eq!(
        status.message(),
        format!(
            "batch of {} raw bytes is over the {} byte limit (--max-batch-bytes)",
            100 << 20,
            64 << 20
        )
    );
    assert_eq!(refused(&backend, "raw_size"), 2.0);

    // The victim goes on: its next seqs land. A jump it declares passes, counted.
    let mut victim = open(&owner, VICTIM).await.unwrap();
    assert_eq!(acked(&mut victim, plain(3, &["victim 3"])).await, 3);
    let raw = payload(vec![(20_000, chunk(&["victim 20000"]))]);
    let len = raw.len() as u64;
    let AgentMessage {
        msg: Some(agent_message::Msg::Batch(mut declared)),
    } = batch(20_000, 20_000, 1, Compression::None, 0, raw, len)
    else {
        unreachable!()
    };
    declared.declared_lost = 20_000 - 4;
    let declared = AgentMessage {
        msg: Some(agent_message::Msg::Batch(declared)),
    };
    assert_eq!(acked(&mut victim, declared).await, 20_000);
    assert_eq!(
        backend.metric(r#"logferry_ingest_seqs_lost_total{tenant="acme"}"#),
        Some(19_996.0)
    );
    // An undeclared jump just over the bound is refused.
    let status = send(&mut victim, plain(30_002, &["too far"]))
        .await
        .unwrap_err();
    assert!(status.message().contains("skips 10001 seqs"), "{status:?}");

    assert_eq!(wait_for_lines(data.path(), 3, Duration::from_secs(20)), 3);
    assert_eq!(logs(data.path()), ["victim 1", "victim 3", "victim 20000"]);
    let dead = dead_letters(data.path(), "files");
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(
        dead[0]["reason"],
        format!(
            "the batch [2, 2] holds chunks {0} to {0}, not its range's ends",
            u64::MAX - 1
        )
    );
    assert_eq!(
        backend.metric(
            r#"logferry_destination_open_failures_total{destination="files",reason="range"}"#
        ),
        Some(1.0)
    );
    backend.stop();

    // The owner is durable: after a restart the other key is still refused.
    let backend = Backend::start(data.path(), 0, &[]);
    let other_key = acme(&backend, data.path(), "ak_b");
    let status = open(&other_key, VICTIM).await.err().expect("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    backend.stop();
}

/// VmHWM (peak resident set) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_bombs_are_dead_lettered_and_memory_stays_bounded() {
    let data = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let credentials = backend.credentials();
    let registry = backend.registry();
    let key = PublicKey::from_base64(&registry.tenants[0].encryption.as_ref().unwrap().public_key)
        .unwrap();
    let agent_id = [5; 16];
    let sealed = |seq: u64, raw: &[u8], declared: u64| {
        let compressed = zstd::bulk::compress(raw, 3).unwrap();
        let context = BatchContext {
            tenant: "dev",
            agent_id,
            first_seq: seq,
            last_seq: seq,
            key_id: 1,
            compression: Compression::Zstd as i32,
        };
        let sealed = seal::seal(&key, &context, &compressed);
        batch(seq, seq, 1, Compression::Zstd, 1, sealed, declared)
    };
    let mut stream = open(&credentials, agent_id).await.unwrap();
    // 1: 60 MiB of markers that say they are 10 bytes; ingest cannot see inside.
    let bomb = payload(vec![(1, markers(60 << 20))]);
    assert_eq!(acked(&mut stream, sealed(1, &bomb, 10)).await, 1);
    // 2: the same, honestly declared: opened, 12 million events decoded one by one.
    drop(bomb);
    let bomb = payload(vec![(2, markers(60 << 20))]);
    let len = bomb.len() as u64;
    assert_eq!(acked(&mut stream, sealed(2, &bomb, len)).await, 2);
    drop(bomb);
    // 3: an ordinary record after them.
    let raw = payload(vec![(3, chunk(&["after the bombs"]))]);
    let len = raw.len() as u64;
    assert_eq!(acked(&mut stream, sealed(3, &raw, len)).await, 3);

    assert_eq!(wait_for_lines(data.path(), 1, Duration::from_secs(60)), 1);
    assert_eq!(logs(data.path()), ["after the bombs"]);
    let dead = dead_letters(data.path(), "files");
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("zstd decompression failed (limit 10 bytes)"),
        "{reason}"
    );
    // Before streaming, the honest batch alone took over 1 GB (a value tree per
    // event); now the whole process stays within a few times the batch.
    let peak = peak_rss(backend.pid());
    eprintln!("peak RSS of logferry serve: {} MiB", peak >> 20);
    assert!(peak < 400 << 20, "peak RSS {} MiB", peak >> 20);
    backend.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_panics_the_router_is_dead_lettered_and_delivery_goes_on() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("tenants.yaml"), REGISTRY).unwrap();
    let backend = Backend::start_with_env(
        "serve",
        data.path(),
        0,
        &[],
        &[("LOGFERRY_TEST_PANIC_AT_OFFSET", "1")],
    );
    let credentials = acme(&backend, data.path(), "ak_a");
    let mut stream = open(&credentials, VICTIM).await.unwrap();
    for (seq, line) in [(1, "a"), (2, "b"), (3, "c")] {
        assert_eq!(acked(&mut stream, plain(seq, &[line])).await, seq);
    }
    assert_eq!(wait_for_lines(data.path(), 2, Duration::from_secs(20)), 2);
    wait_for("the dead letter", Duration::from_secs(20), || {
        dead_letters(data.path(), "files").len() == 1
    });
    assert_eq!(logs(data.path()), ["a", "c"]);
    let dead = dead_letters(data.path(), "files");
    assert_eq!(
        dead[0]["reason"],
        "delivering this batch panicked: LOGFERRY_TEST_PANIC_AT_OFFSET=1"
    );
    assert_eq!(dead[0]["seq_range"], serde_json::json!([2, 2]));
    backend.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_crashes_the_router_twice_is_set_aside_after_restarts() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("tenants.yaml"), REGISTRY).unwrap();
    let abort = [("LOGFERRY_TEST_ABORT_AT_OFFSET", "1")];
    let backend = Backend::start_with_env("serve", data.path(), 0, &[], &abort);
    let credentials = acme(&backend, data.path(), "ak_a");
    let mut stream = open(&credentials, VICTIM).await.unwrap();
    for (seq, line) in [(1, "a"), (2, "b")] {
        assert_eq!(acked(&mut stream, plain(seq, &[line])).await, seq);
    }
    drop(stream);
    // The router aborts on offset 1 at every start until it has crashed there twice in
    // a row, alone at the last; then it dead-letters the batch unopened.
    let mut backend = backend;
    let mut crashes = 0;
    loop {
        let set_aside = |data: &Path| dead_letters(data, "files").len() == 1;
        wait_for(
            "a crash or the dead letter",
            Duration::from_secs(30),
            || backend.exited() || set_aside(data.path()),
        );
        if !backend.exited() {
            break;
        }
        crashes += 1;
        assert!(crashes <= 3, "still crashing after {crashes} starts");
        backend = Backend::start_with_env("serve", data.path(), 0, &[], &abort);
    }
    let credentials = acme(&backend, data.path(), "ak_a");
    let mut stream = open(&credentials, VICTIM).await.unwrap();
    assert_eq!(acked(&mut stream, plain(3, &["c"])).await, 3);
    assert_eq!(wait_for_lines(data.path(), 2, Duration::from_secs(20)), 2);
    assert_eq!(logs(data.path()), ["a", "c"]);
    let dead = dead_letters(data.path(), "files");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0]["reason"],
        "the backend crashed 2 times in a row while delivering this batch (an abort, a failed \
         allocation, a fault); it is set aside so delivery goes on"
    );
    // Offset 1 alone twice, after a first step that held offset 0 too or not.
    assert!((2..=3).contains(&crashes), "{crashes} crashes");
    backend.stop();
}

/// Every file and directory under `root` with a mode other than `file` / `dir`.
fn modes_other_than(root: &Path, file: u32, dir: u32) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut odd = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { dir } else { file };
        if path != root && mode != want {
            odd.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    odd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_at_rest_is_private_by_default_and_group_readable_on_request() {
    for (extra, file, dir) in [
        (&[][..], 0o600, 0o700),
        (&["--umask", "027"][..], 0o640, 0o750),
    ] {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("tenants.yaml"), REGISTRY).unwrap();
        let backend = Backend::start(data.path(), 0, extra);
        let credentials = acme(&backend, data.path(), "ak_a");
        let mut stream = open(&credentials, VICTIM).await.unwrap();
        assert_eq!(acked(&mut stream, plain(1, &["private"])).await, 1);
        assert_eq!(wait_for_lines(data.path(), 1, Duration::from_secs(20)), 1);
        drop(stream);
        backend.stop();
        // The registry was written by the test, before the backend ran. Secrets stay
        // 0600 whatever the mask.
        let secrets = [
            "server.key 600",
            "ca.key 600",
            "signing.pem 600",
            "checkpoint.pem 600",
            "credentials.env 600",
        ];
        let odd: Vec<String> = modes_other_than(data.path(), file, dir)
            .into_iter()
            .filter(|p| !p.contains("tenants.yaml") && !secrets.iter().any(|s| p.ends_with(s)))
            .collect();
        assert!(odd.is_empty(), "{extra:?}: {odd:#?}");
        // Sink files, their chains, buffer, checkpoints and keys are all
        // there to check (`marks.json` is written once segments are released).
        for part in ["files/acme/ak_a", "buffer", "router", "keys"] {
            assert!(data.path().join(part).exists(), "{part}");
        }
    }
}

/// Raises this process's open-file limit to its hard limit (4,000 sockets are held
/// open below); the backend it starts inherits it.
fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= 8192,
        "open-file hard limit {}",
        limit.rlim_cur
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_and_stalled_handshakes_cannot_lock_agents_out() {
    use tokio::io::AsyncWriteExt;
    raise_nofile();
    let data = tempfile::tempdir().unwrap();
    let backend = Backend::start(
        data.path(),
        0,
        &[
            "--max-connections-per-peer",
            "500",
            "--handshake-timeout",
            "20s",
        ],
    );
    let refused = |reason: &str| {
        backend
            .metric(&format!(
                "logferry_connections_refused_total{{reason=\"{reason}\"}}"
            ))
            .unwrap_or(0.0)
    };
    let open = || backend.metric("logferry_connections_open").unwrap_or(0.0);
    // 2,000 sockets that never send a byte, from 127.0.0.2, and 2,000 that start a
    // TLS handshake (a record header) and stall, from 127.0.0.3, 200 at a time, each
    // lot once the backend has taken the last (the kernel's accept queue holds
    // fewer than 4,000).
    let mut held = Vec::new();
    for (source, stall) in [([127, 0, 0, 2], false), ([127, 0, 0, 3], true)] {
        for _ in 0..10 {
            let mut connecting = tokio::task::JoinSet::new();
            for _ in 0..200 {
                let addr = backend.addr;
                connecting.spawn(async move {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind((source, 0).into()).unwrap();
                    let mut stream = socket.connect(addr).await.unwrap();
                    if stall {
                        // A handshake record of 512 bytes, of which only the header
                        // comes.
                        let _ = stream.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
                    }
                    stream
                });
            }
            held.extend(connecting.join_all().await);
            let total = held.len() as f64;
            wait_for("the backend to take them", Duration::from_secs(30), || {
                open() + refused("peer_limit") >= total
            });
        }
    }
    // The connecting took well under the handshake timeout: 500 from each address are
    // held, the rest were closed at once.
    assert_eq!(
        refused("peer_limit"),
        3_000.0,
        "1,500 over the limit from each"
    );
    assert_eq!(backend.metric("logferry_connections_open"), Some(1_000.0));
    // While they hold their places, an agent from another address sends.
    let lines: Vec<String> = (0..1_000).map(|i| format!("honest {i}")).collect();
    logferry_e2e::backend::send_lines(&backend, &[], lines);
    assert_eq!(
        wait_for_lines(data.path(), 1_000, Duration::from_secs(30)),
        1_000
    );
    // The silent ones are closed after the handshake timeout, the stalled ones by
    // the TLS handshake's own timeout.
    wait_for(
        "the idle connections to close",
        Duration::from_secs(60),
        || backend.metric("logferry_connections_open") == Some(0.0),
    );
    assert_eq!(refused("silent"), 500.0);
    drop(held);
    backend.stop();
}

/// Frames sent and received as they are, for messages no protobuf encoder writes.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use prost::bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_is_not_protobuf_is_an_invalid_argument() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("tenants.yaml"), REGISTRY).unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let credentials = acme(&backend, data.path(), "ak_a");
    let mut grpc = tonic::client::Grpc::new(credentials.channel().await);
    grpc.ready().await.unwrap();
    let hello = AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            agent_id: VICTIM.to_vec(),
            agent_version: "hostile-test".into(),
            acked_seq: 0,
        })),
    }
    .encode_to_vec();
    let frames = tokio_stream::iter(vec![hello, vec![0xff, 0xff, 0xff, 0xff]]);
    let request = credentials.request(frames, Some(&credentials.access_token));
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/logferry.v1.Ingest/Stream");
    let mut inbound = grpc
        .streaming(request, path, RawCodec)
        .await
        .unwrap()
        .into_inner();
    let welcome = inbound.message().await.unwrap().expect("a welcome");
    assert!(!welcome.is_empty());
    let status = inbound.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("a stream message does not decode: "),
        "{status:?}"
    );
    backend.stop();
}
