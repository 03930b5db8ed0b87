//! The security model, attacked: every bad credential is refused with the right
//! status and a message a human can act on; registry changes reach open streams and
//! running agents; payloads are sealed end to end and the buffer holds ciphertext
//! only; batches that do not open are dead-lettered, never delivered or dropped;
//! rate limits push back without losing anything.
//!
//! Everything runs against real `logferry serve` processes over TLS.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use logferry_agent::seal::{self, BatchContext, PublicKey};
use logferry_backend::auth::{Claims, ISSUER, TokenAuthority};
use logferry_backend::send::encode_line;
use logferry_backend::tenants::EncryptionSpec;
use logferry_e2e::backend::{
    Backend, Credentials, backend_bin, open_stream, read_jsonl_tree, replace_file, wait_for_lines,
};
use logferry_proto::v1::ingest_client::IngestClient;
use logferry_proto::v1::{
    AgentMessage, Batch, BatchPayload, Chunk, Compression, GetConfigRequest, Hello, ServerMessage,
    agent_message, server_message,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

/// Two tenants; `acme` has a second key and a disabled one.
const REGISTRY: &str = "\
tenants:
  - name: acme
    access_keys:
      - key: ak_a
      - key: ak_b
      - key: ak_off
        disabled: true
  - name: globex
    access_keys:
      - key: ak_g
";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, tenant: &str, iat: u64, exp: u64) -> Claims {
    Claims {
        iss: ISSUER.into(),
        sub: sub.into(),
        tenant: tenant.into(),
        iat,
        exp,
        jti: format!("test-{sub}-{iat}-{exp}"),
    }
}

fn with_key(credentials: &Credentials, access_key: &str) -> Credentials {
    Credentials {
        access_key: access_key.into(),
        ..credentials.clone()
    }
}

async fn get_config(
    credentials: &Credentials,
    token: Option<&str>,
) -> Result<String, tonic::Status> {
    let mut client = IngestClient::new(credentials.channel().await);
    let request = credentials.request(
        GetConfigRequest {
            agent_id: vec![1; 16],
        },
        token,
    );
    client
        .get_config(request)
        .await
        .map(|r| r.into_inner().tenant)
}

/// A tail-style chunk of `lines`.
fn chunk(lines: &[&str]) -> Vec<u8> {
    let mut chunk = Vec::new();
    for line in lines {
        encode_line(line, &mut chunk);
    }
    chunk
}

fn payload(seq: u64, data: Vec<u8>) -> Vec<u8> {
    BatchPayload {
        chunks: vec![Chunk {
            seq,
            tag: "app".into(),
            data: data.into(),
        }],
    }
    .encode_to_vec()
}

fn batch(seq: u64, key_id: u32, payload: Vec<u8>) -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Batch(Batch {
            first_seq: seq,
            last_seq: seq,
            compression: Compression::None as i32,
            key_id,
            // A sealed payload is the plaintext plus the encapsulated key and the tag.
            raw_bytes: (payload.len() - if key_id == 0 { 0 } else { seal::ENC_LEN + 16 }) as u64,
            payload: payload.into(),
            chunk_count: 1,
            tags: Vec::new(),
            declared_lost: 0,
        })),
    }
}

async fn expect_ack(inbound: &mut Streaming<ServerMessage>, seq: u64) {
    match inbound.message().await.unwrap().and_then(|m| m.msg) {
        Some(server_message::Msg::Ack(ack)) => assert_eq!(ack.last_seq, seq),
        other => panic!("expected the ack of seq {seq}, got {other:?}"),
    }
}

/// Sends `lines` through `logferry send` with the backend's development credentials.
fn send_lines(backend: &Backend, lines: &[String], chunk_bytes: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(backend_bin())
        .args([
            "send",
            "-",
            "--tag",
            "app.secure",
            "--chunk-bytes",
            chunk_bytes,
        ])
        .envs(backend.credentials_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Whether any file under `dir` contains `needle`.
fn tree_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            tree_contains(&path, needle)
        } else {
            std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_credential_is_refused_with_the_right_code_and_an_actionable_message() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("tenants.yaml"), REGISTRY).unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let credentials = backend.credentials();
    assert_eq!(credentials.access_key, "ak_a");
    let keys = data.path().join("keys");
    let authority = TokenAuthority::load_or_create(&keys).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = TokenAuthority::load_or_create(other_dir.path()).unwrap();
    let t = now();
    let sign = |c: &Claims| authority.sign(c).unwrap();
    let valid_a = sign(&claims("ak_a", "acme", t, t + 600));

    // A token signed by another key, but naming ours: only the signature can tell.
    let mut forged_header = Header::new(Algorithm::EdDSA);
    forged_header.kid = Some(authority.kid().into());
    let forged = jsonwebtoken::encode(
        &forged_header,
        &claims("ak_a", "acme", t, t + 600),
        &EncodingKey::from_ed_pem(&std::fs::read(other_dir.path().join("signing.pem")).unwrap())
            .unwrap(),
    )
    .unwrap();
    // HS256 keyed with our public key: the classic algorithm confusion.
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(authority.kid().into());
    let public_pem = std::fs::read(keys.join("signing.pub.pem")).unwrap();
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims("ak_a", "acme", t, t + 600),
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    let body = valid_a.split('.').nth(1).unwrap();
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{body}.");

    let cases: Vec<(&str, &str, Option<String>, Code, &str)> = vec![
        (
            "expired",
            "ak_a",
            Some(sign(&claims("ak_a", "acme", t - 7200, t - 3600))),
            Code::Unauthenticated,
            "expired; issue a new one with `logferry token issue`",
        ),
        (
            "not yet valid",
            "ak_a",
            Some(sign(&claims("ak_a", "acme", t + 3600, t + 7200))),
            Code::Unauthenticated,
            "not valid yet",
        ),
        (
            "another backend's key",
            "ak_a",
            Some(
                other
                    .issue("acme", "ak_a", Duration::from_secs(600))
                    .unwrap()
                    .0,
            ),
            Code::Unauthenticated,
            "which this backend does not have",
        ),
        (
            "forged kid",
            "ak_a",
            Some(forged),
            Code::Unauthenticated,
            "signature does not verify",
        ),
        (
            "alg none",
            "ak_a",
            Some(alg_none),
            Code::Unauthenticated,
            "algorithm none; only EdDSA",
        ),
        (
            "HS256 keyed with the public key",
            "ak_a",
            Some(hs256),
            Code::Unauthenticated,
            "algorithm HS256; only EdDSA",
        ),
        (
            "key A's token with key B",
            "ak_b",
            Some(valid_a.clone()),
            Code::PermissionDenied,
            "bound to access key `ak_a`, not `ak_b`",
        ),
        (
            "another tenant in the claims",
            "ak_g",
            Some(sign(&claims("ak_g", "acme", t, t + 600))),
            Code::PermissionDenied,
            "the token is for tenant `acme`, but access key `ak_g` belongs to `globex`",
        ),
        (
            "disabled key",
            "ak_off",
            Some(sign(&claims("ak_off", "acme", t, t + 600))),
            Code::PermissionDenied,
            "access key `ak_off` is disabled",
        ),
        (
            "unknown key",
            "ak_nobody",
            Some(sign(&claims("ak_nobody", "acme", t, t + 600))),
            Code::PermissionDenied,
            "access key `ak_nobody` is not in the tenant registry",
        ),
        (
            "garbage",
            "ak_a",
            Some("garbage".into()),
            Code::Unauthenticated,
            "malformed: not a JWT",
        ),
        (
            "missing token",
            "ak_a",
            None,
            Code::Unauthenticated,
            "no token: send `authorization: Bearer <token>`",
        ),
    ];
    let mut refused = (0, 0);
    for (name, key, token, code, message) in &cases {
        let status = get_config(&with_key(&credentials, key), token.as_deref())
            .await
            .expect_err(name);
        assert_eq!(status.code(), *code, "{name}: {status:?}");
        assert!(
            status.message().contains(message),
            "{name}: {:?}",
            status.message()
        );
        match code {
            Code::Unauthenticated => refused.0 += 1,
            _ => refused.1 += 1,
        }
    }
    // The valid token works, and only for its own tenant's config.
    assert_eq!(
        get_config(&credentials, Some(&valid_a)).await.unwrap(),
        "acme"
    );
    let token_g = sign(&claims("ak_g", "globex", t, t + 600));
    assert_eq!(
        get_config(&with_key(&credentials, "ak_g"), Some(&token_g))
            .await
            .unwrap(),
        "globex"
    );

    // Revocation: `logferry token revoke` appends to the list; the backend applies it.
    let jti = claims("ak_a", "acme", t, t + 600).jti;
    let revoke = Command::new(backend_bin())
        .args(["token", "revoke", "--reason", "test"])
        .arg("--data-dir")
        .arg(data.path())
        .arg(&jti)
        .output()
        .unwrap();
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    let revoked = backend.wait_for_metric("logferry_revoked_tokens", 1.0, Duration::from_secs(10));
    assert_eq!(revoked, 1.0);
    let status = get_config(&credentials, Some(&valid_a)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status
            .message()
            .contains(&format!("(jti {jti}) has been revoked")),
        "{status:?}"
    );
    refused.0 += 1;

    // `token inspect` says why, and exits 1.
    let inspect = Command::new(backend_bin())
        .args(["token", "inspect"])
        .arg("--data-dir")
        .arg(data.path())
        .arg(&valid_a)
        .output()
        .unwrap();
    assert_eq!(inspect.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&inspect.stdout);
    assert!(stdout.contains(&format!("\"jti\":\"{jti}\"")), "{stdout}");
    assert!(String::from_utf8_lossy(&inspect.stderr).contains("has been revoked"));

    // Plaintext HTTP/2 to the TLS port gets nowhere.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", backend.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    let result = match plain.connect().await {
        Ok(channel) => IngestClient::new(channel)
            .get_config(credentials.request(GetConfigRequest::default(), Some(&token_g)))
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(
        result.is_err(),
        "a plaintext call to the TLS port succeeded"
    );

    // Every refusal is counted by reason.
    let counted = |reason: &str| {
        backend
            .metric(&format!(
                "logferry_auth_failures_total{{reason=\"{reason}\"}}"
            ))
            .unwrap_or(0.0)
    };
    assert_eq!(counted("unauthenticated"), f64::from(refused.0));
    assert_eq!(counted("permission_denied"), f64::from(refused.1));

    // Tenant isolation: whatever key B's agent sends lands in B's files only.
    let (tx, mut inbound) = open_stream(&with_key(&credentials, "ak_g"), &token_g, [4; 16])
        .await
        .unwrap();
    tx.send(batch(1, 0, payload(1, chunk(&["globex line"]))))
        .await
        .unwrap();
    expect_ack(&mut inbound, 1).await;
    wait_for_lines(data.path(), 1, Duration::from_secs(10));
    let records = read_jsonl_tree(&data.path().join("files").join("globex").join("ak_g"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["record"]["log"], "globex line");
    assert!(!data.path().join("files").join("acme").exists());
    backend.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_changes_reach_open_streams_and_watches_within_seconds() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("tenants.yaml"), REGISTRY).unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let credentials = backend.credentials();
    let token = credentials.access_token.clone();

    let mut client = IngestClient::new(credentials.channel().await);
    let mut watch = client
        .watch_config(credentials.request(
            GetConfigRequest {
                agent_id: vec![1; 16],
            },
            Some(&token),
        ))
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(
        (
            first.tenant.as_str(),
            first.batch_max_bytes,
            first.config_version
        ),
        ("acme", 0, 1)
    );
    let (_tx, mut inbound) = open_stream(&credentials, &token, [2; 16]).await.unwrap();

    // SIGHUP re-reads the files (and does not end the process, as it would by default).
    backend.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !backend
        .stderr()
        .iter()
        .any(|l| l.contains("SIGHUP: re-reading"))
    {
        assert!(
            Instant::now() < deadline,
            "SIGHUP not handled: {:#?}",
            backend.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get_config(&credentials, Some(&token)).await.unwrap(),
        "acme"
    );

    // A registry that does not parse is not applied; the error names the place.
    replace_file(
        &data.path().join("tenants.yaml"),
        "tenants:\n  - name: acme\n    access_keys: [\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !backend.stderr().iter().any(|l| l.contains("not applied")) {
        assert!(
            Instant::now() < deadline,
            "no reload error logged: {:#?}",
            backend.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logged = backend
        .stderr()
        .into_iter()
        .find(|l| l.contains("not applied"))
        .unwrap();
    assert!(
        logged.contains("previous one stays in force") && logged.contains("line "),
        "{logged}"
    );
    assert_eq!(
        backend.metric("logferry_registry_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
    assert_eq!(
        get_config(&credentials, Some(&token)).await.unwrap(),
        "acme"
    );

    // A settings change reaches the watch.
    let changed = REGISTRY.replace(
        "      - key: ak_off\n        disabled: true\n",
        "      - key: ak_off\n        disabled: true\n    agent:\n      batch_max_bytes: 1M\n",
    );
    let written = Instant::now();
    replace_file(&data.path().join("tenants.yaml"), &changed);
    let update = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the change reached the watch within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(
        (update.batch_max_bytes, update.config_version),
        (1 << 20, 2)
    );
    eprintln!(
        "settings change reached the watch {:?} after the write",
        written.elapsed()
    );

    // Disabling the key ends the open stream and the watch, within seconds.
    replace_file(
        &data.path().join("tenants.yaml"),
        &changed.replace(
            "      - key: ak_a\n",
            "      - key: ak_a\n        disabled: true\n",
        ),
    );
    for (what, result) in [
        (
            "stream",
            tokio::time::timeout(Duration::from_secs(5), inbound.message())
                .await
                .map(|r| r.map(|_| ())),
        ),
        (
            "watch",
            tokio::time::timeout(Duration::from_secs(5), watch.message())
                .await
                .map(|r| r.map(|_| ())),
        ),
    ] {
        let status = result
            .unwrap_or_else(|_| panic!("the {what} stayed open after the key was disabled"))
            .expect_err(what);
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
        assert!(
            status.message().contains("access key `ak_a` is disabled"),
            "{status:?}"
        );
    }
    let status = get_config(&credentials, Some(&token)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    backend.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_sealed_end_to_end_and_keys_rotate_by_id() {
    const SECRET: &str = "cleartext-marker-5b1e";
    const PLAIN: &str = "plaintext-marker-c0d4";
    let data = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    // The development tenant encrypts from the start, under key 1.
    let mut registry = backend.registry();
    let first_key = registry.tenants[0]
        .encryption
        .clone()
        .expect("dev encrypts");
    assert_eq!(first_key.key_id, 1);
    // No compression, so a payload that were not sealed would show the markers.
    registry.tenants[0].agent = Some(logferry_backend::tenants::AgentSpec {
        compress: Some("none".into()),
        ..Default::default()
    });
    backend.set_registry(&registry, 2);

    let lines = |from: usize, n: usize, marker: &str| -> Vec<String> {
        (from..from + n)
            .map(|i| format!("{marker} record {i}"))
            .collect()
    };
    send_lines(&backend, &lines(0, 2000, SECRET), "8K");
    wait_for_lines(data.path(), 2000, Duration::from_secs(30));
    let buffer = data.path().join("buffer");
    assert!(tree_contains(&data.path().join("files"), SECRET.as_bytes()));
    assert!(
        !tree_contains(&buffer, SECRET.as_bytes()),
        "plaintext in the buffer"
    );
    let opened = |key_id: u32| {
        backend
            .metric(&format!(
                "logferry_destination_batches_opened_total{{destination=\"files\",key_id=\"{key_id}\"}}"
            ))
            .unwrap_or(0.0)
    };
    assert!(opened(1) > 0.0);
    assert_eq!(opened(0), 0.0);

    // Rotation: a new key id; agents switch, both ids keep opening.
    let generate = Command::new(backend_bin())
        .args(["keys", "generate", "--tenant", "dev"])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        generate.status.success(),
        "{}",
        String::from_utf8_lossy(&generate.stderr)
    );
    let snippet = String::from_utf8(generate.stdout).unwrap();
    let public_key = snippet
        .lines()
        .find_map(|l| l.trim().strip_prefix("public_key: "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    assert!(snippet.contains("key_id: 2"), "{snippet}");
    registry.tenants[0].encryption = Some(EncryptionSpec {
        key_id: 2,
        public_key,
    });
    backend.set_registry(&registry, 3);
    send_lines(&backend, &lines(2000, 2000, SECRET), "8K");
    wait_for_lines(data.path(), 4000, Duration::from_secs(30));
    assert!(opened(2) > 0.0, "no batch sealed under the new key");
    assert!(
        !tree_contains(&buffer, SECRET.as_bytes()),
        "plaintext in the buffer"
    );

    // The tenant turns encryption off: TLS alone protects the link, and the same
    // search now finds its records in the buffer, which shows the search works.
    registry.tenants[0].encryption = None;
    backend.set_registry(&registry, 4);
    send_lines(&backend, &lines(4000, 100, PLAIN), "8K");
    assert_eq!(
        wait_for_lines(data.path(), 4100, Duration::from_secs(30)),
        4100
    );
    assert!(opened(0) > 0.0);
    assert!(tree_contains(&buffer, PLAIN.as_bytes()));
    assert!(!tree_contains(&buffer, SECRET.as_bytes()));

    let mut got: Vec<String> = read_jsonl_tree(&data.path().join("files"))
        .iter()
        .map(|r| r["record"]["log"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want = [lines(0, 4000, SECRET), lines(4000, 100, PLAIN)].concat();
    want.sort();
    assert_eq!(got, want, "every record exactly once");
    assert_eq!(
        backend.metric("logferry_destination_dead_letters_total{destination=\"files\"}"),
        Some(0.0)
    );
    backend.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_do_not_open_are_dead_lettered_with_their_reason() {
    let data = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let credentials = backend.credentials();
    let registry = backend.registry();
    let key = PublicKey::from_base64(&registry.tenants[0].encryption.as_ref().unwrap().public_key)
        .unwrap();
    let agent_id = [9; 16];
    let context = |tenant: &'static str, seq: u64, key_id: u32| BatchContext {
        tenant,
        agent_id,
        first_seq: seq,
        last_seq: seq,
        key_id,
        compression: Compression::None as i32,
    };
    let sealed = |seq: u64, sealed_as: BatchContext<'_>| {
        seal::seal(
            &key,
            &sealed_as,
            &payload(seq, chunk(&[&format!("line {seq}")])),
        )
    };
    let mut tampered = sealed(3, context("dev", 3, 1));
    let last = tampered.len() - 20;
    tampered[last] ^= 0x40;
    let batches = [
        // Sealed for seq 5, replayed as seq 1.
        batch(1, 1, sealed(1, context("dev", 5, 1))),
        // Sealed by another tenant's agent, moved into this tenant's stream.
        batch(2, 1, sealed(2, context("globex", 2, 1))),
        batch(3, 1, tampered),
        // A key id no router holds.
        batch(4, 99, sealed(4, context("dev", 4, 99))),
        // The one batch that opens.
        batch(5, 1, sealed(5, context("dev", 5, 1))),
    ];
    let (tx, mut inbound) = open_stream(&credentials, &credentials.access_token, agent_id)
        .await
        .unwrap();
    for (seq, batch) in (1..).zip(batches) {
        tx.send(batch).await.unwrap();
        expect_ack(&mut inbound, seq).await;
    }
    // The ingest path never opens a batch; it refuses plaintext for this tenant.
    tx.send(batch(6, 0, payload(6, chunk(&["line 6"]))))
        .await
        .unwrap();
    let status = inbound.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("requires sealed batches"),
        "{status:?}"
    );

    assert_eq!(wait_for_lines(data.path(), 1, Duration::from_secs(10)), 1);
    let failures = |reason: &str| {
        backend
            .metric(&format!(
                "logferry_destination_open_failures_total{{destination=\"files\",reason=\"{reason}\"}}"
            ))
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while failures("seal") + failures("unknown_key") < 4.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((failures("seal"), failures("unknown_key")), (3.0, 1.0));
    let records = read_jsonl_tree(&data.path().join("files"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["record"]["log"], "line 5");

    let dead = read_jsonl_tree(&data.path().join("dead-letter"));
    let summary: Vec<(u64, u64, bool)> = dead
        .iter()
        .map(|d| {
            let reason = d["reason"].as_str().unwrap();
            (
                d["seq_range"][0].as_u64().unwrap(),
                d["key_id"].as_u64().unwrap(),
                if d["key_id"] == 99 {
                    reason.starts_with("no private key id 99 for tenant `dev`")
                } else {
                    reason.contains("does not open with key id 1")
                },
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![(1, 1, true), (2, 1, true), (3, 1, true), (4, 99, true)]
    );
    assert!(
        dead.iter()
            .all(|d| d["payload_b64"].as_str().is_some_and(|p| !p.is_empty()))
    );

    // The operator's view: `dead-letter list` and `show`.
    let cli = |args: &[&str]| {
        Command::new(backend_bin())
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap()
    };
    let list = cli(&["dead-letter", "list"]);
    let stdout = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].starts_with("files #1 ") && lines[0].contains(" seqs 1..1 "),
        "{stdout}"
    );
    assert!(
        lines[3].contains(" seqs 4..4 ") && lines[3].contains("no private key id 99"),
        "{stdout}"
    );
    let show = cli(&["dead-letter", "show", "files", "4"]);
    let entry: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(entry["key_id"], 99);
    assert!(
        entry["payload_b64"]
            .as_str()
            .unwrap()
            .contains("--with-payload")
    );
    let missing = cli(&["dead-letter", "show", "files", "9"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("has 4 dead letter(s); #9 is not one")
    );
    backend.stop();
}

#[test]
fn a_rate_limited_agent_backs_off_and_delivers_everything_once() {
    let data = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let mut registry = backend.registry();
    registry.tenants[0].agent = Some(logferry_backend::tenants::AgentSpec {
        batch_max_bytes: Some("1K".into()),
        ..Default::default()
    });
    registry.tenants[0].rate_limit = Some(logferry_backend::tenants::RateLimitSpec {
        bytes_per_sec: None,
        batches_per_sec: Some(20),
    });
    backend.set_registry(&registry, 2);

    let lines: Vec<String> = (0..1500).map(|i| format!("paced record {i:05}")).collect();
    let started = Instant::now();
    send_lines(&backend, &lines, "1K");
    let elapsed = started.elapsed();
    assert_eq!(
        wait_for_lines(data.path(), lines.len(), Duration::from_secs(30)),
        lines.len()
    );
    let mut got: Vec<String> = read_jsonl_tree(&data.path().join("files"))
        .iter()
        .map(|r| r["record"]["log"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, lines);
    let limited = backend
        .metric("logferry_rate_limited_total{tenant=\"dev\"}")
        .unwrap_or(0.0);
    let batches = backend
        .metric("logferry_ingest_batches_total{tenant=\"dev\"}")
        .unwrap();
    eprintln!("{batches} batches in {elapsed:?}, {limited} refused by the rate limit");
    assert!(limited > 0.0, "the limit never applied");
    // Backing off, not busy-looping: far fewer refusals than batches stored.
    assert!(
        limited < batches,
        "{limited} refusals for {batches} batches"
    );
    backend.stop();
}
