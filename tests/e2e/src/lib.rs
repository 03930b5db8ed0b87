//! End-to-end test support for logferry.
//!
//! - [`host`]: a Fluent Bit host emulator that `dlopen`s the built plugin and drives it
//!   through the proxy ABI.
//! - [`fixtures_dir`], [`fixtures`]: the real Fluent Bit chunks in
//!   `shared/fixtures/fluent-bit-chunks/`, read in place.
//! - [`plugin_path`]: the `libout_logferry.so` of the build that runs the tests.
//! - [`backend`]: a real `logferry serve` process, killed and restarted by the crash
//!   tests, and readers for its file sink.
//! - [`expected_records`]: what the file sink must hold for a fixture.
//!
//! The tests in `tests/` need the plugin and the `logferry` binary built first:
//! `cargo build --workspace`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat};
use serde_json::{Value, json};

pub mod backend;
pub mod host;
pub mod kafka;
pub mod kafka_acl;
pub mod sinks;

/// The start of a registry with tenant `acme` and its key `ak_a`, up to the line
/// that opens its destinations (no newline after it): append them.
pub const ACME_DESTINATIONS: &str = "\
tenants:
  - name: acme
    access_keys:
      - key: ak_a
    destinations:";

/// The workspace root (the directory of the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `shared/fixtures/fluent-bit-chunks`, beside the workspace; `LOGFERRY_FIXTURES`
/// overrides it.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOGFERRY_FIXTURES") {
        return PathBuf::from(dir);
    }
    workspace_root().join("../shared/fixtures/fluent-bit-chunks")
}

/// One real chunk captured from Fluent Bit.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The file stem, like `tail-raw-lines`.
    pub name: String,
    /// The tag Fluent Bit flushed it with.
    pub tag: String,
    /// The chunk's bytes, as `FLBPluginFlushCtx` received them.
    pub chunk: Vec<u8>,
    /// Its events decoded as JSON lines (`X.expected.jsonl`).
    pub expected_jsonl: PathBuf,
}

/// The tags of the fixtures, from the fixtures' README.
const FIXTURE_TAGS: &[(&str, &str)] = &[
    ("tail-raw-lines", "host.tail"),
    ("tail-json-parsed", "json.tail"),
    ("dummy-with-metadata", "app.dummy"),
    ("opentelemetry-with-group-markers", "otel.logs"),
    ("tail-large-14740-records", "big.tail"),
];

/// Every `*.msgpack` chunk in [`fixtures_dir`], by name.
pub fn fixtures() -> Vec<Fixture> {
    let dir = fixtures_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot read the fixtures in {} ({e}); set LOGFERRY_FIXTURES",
            dir.display()
        )
    });
    let mut fixtures: Vec<Fixture> = entries
        .map(|entry| entry.expect("readable fixtures dir").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "msgpack"))
        .map(|path| {
            let name = path
                .file_stem()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let tag = FIXTURE_TAGS
                .iter()
                .find(|(fixture, _)| *fixture == name)
                .map_or_else(|| format!("fixture.{name}"), |(_, tag)| tag.to_string());
            let chunk = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            Fixture {
                expected_jsonl: dir.join(format!("{name}.expected.jsonl")),
                name,
                tag,
                chunk,
            }
        })
        .collect();
    assert!(
        !fixtures.is_empty(),
        "no *.msgpack chunk in {}",
        dir.display()
    );
    fixtures.sort_by(|a, b| a.name.cmp(&b.name));
    fixtures
}

/// The fixture called `name`.
pub fn fixture(name: &str) -> Fixture {
    fixtures()
        .into_iter()
        .find(|fixture| fixture.name == name)
        .unwrap_or_else(|| panic!("no fixture `{name}` in {}", fixtures_dir().display()))
}

/// An installed tool the tests run (`tansu`, `s3s-fs`): the path in the variable
/// `env`, else `name` on `PATH`, else in `~/.cargo/bin` (where `.ci/run` installs it).
pub fn find_tool(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin").join(name));
    on_path.chain(home).find(|p| p.is_file())
}

/// The built plugin, `libout_logferry.so`, in the target profile directory of the
/// running test binary (`target/debug` for `target/debug/deps/plugin_abi-...`);
/// `LOGFERRY_PLUGIN` overrides it.
pub fn plugin_path() -> PathBuf {
    built_artifact("libout_logferry.so", "LOGFERRY_PLUGIN")
}

/// The names of this process's threads that the plugin's agent started
/// (`logferry-agent`, ...). A test that counts them runs in a process of its own, so no
/// other test's instance adds to them.
pub fn plugin_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("logferry"))
        .collect()
}

/// The warning an instance logs, once, at its first flush on a worker thread, when
/// `FLBPluginOutputPreRun` said hot reload is on: `Workers` crashes Fluent Bit 5.1.1 on
/// hot reload. Spelt out here, apart from the plugin's code, so a test pins the text.
pub const WORKERS_WARNING: &str = "flushes arrive on a Fluent Bit worker thread, so this \
    output has `Workers` set. Fluent Bit (5.1.1 and other releases with this defect) \
    starts a second worker pool for an external output and orphans the first, whose \
    threads use freed memory after a hot reload: Fluent Bit crashes on hot reload \
    (SIGHUP, /api/v2/reload, a config change on Kubernetes). Hot reload is on in this \
    Fluent Bit. Remove `Workers` from this logferry output, or never hot-reload.";

/// The agent id the instance's spool reported when it opened (its `opened for agent
/// <id>:` init line).
pub fn agent_id(instance: &host::Instance<'_>) -> String {
    instance
        .init_log()
        .iter()
        .find_map(|line| {
            let rest = line.text().split_once(" opened for agent ")?.1;
            Some(rest.split(':').next()?.to_string())
        })
        .unwrap_or_else(|| panic!("no `opened for agent` line in {:#?}", instance.init_log()))
}

/// `file` next to the running executable or in one of its parents (the target profile
/// directory), unless the variable `env` names it.
pub(crate) fn built_artifact(file: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .skip(1)
        .map(|dir| dir.join(file))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{file} not found next to {} or its parents: run `cargo build --workspace` \
                 (same profile and CARGO_TARGET_DIR as the tests) first, or set {env}",
                exe.display()
            )
        })
}

/// The records the file sink must write for `fixture` flushed with `tag`, in order:
/// one per `kind=record` event of its `.expected.jsonl`, as
/// `{"time", "tag", "metadata", "record"}` plus `"group": {"metadata", "body"}` for a
/// record inside an OpenTelemetry group. `tenant` and `agent` are left to the caller.
///
/// Built independently of the backend's decoder, from the JSON that the fixture's
/// capture wrote, so a decoding mistake cannot hide in both.
pub fn expected_records(fixture: &Fixture, tag: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(&fixture.expected_jsonl)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", fixture.expected_jsonl.display()));
    let mut group: Option<Value> = None;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let event: Value = serde_json::from_str(line).expect("fixture JSON");
        match event["kind"].as_str() {
            Some("group_start") => {
                group = Some(json!({"metadata": event["metadata"], "body": event["body"]}));
            }
            Some("group_end") => group = None,
            Some("record") => {
                let sec = event["ts_sec"].as_i64().expect("ts_sec");
                let nsec = event["ts_nsec"].as_u64().expect("ts_nsec") as u32;
                let time = DateTime::from_timestamp(sec, nsec)
                    .expect("a representable time")
                    .to_rfc3339_opts(SecondsFormat::Nanos, true);
                let mut record = json!({
                    "time": time,
                    "tag": tag,
                    "metadata": event["metadata"],
                    "record": event["body"],
                });
                if let Some(group) = &group {
                    record["group"] = group.clone();
                }
                out.push(record);
            }
            other => panic!("unknown event kind {other:?} in {}", fixture.name),
        }
    }
    out
}

/// `record` without the fields [`expected_records`] leaves out (`tenant`, `agent`).
pub fn without_origin(record: &Value) -> Value {
    let mut record = record.clone();
    if let Some(map) = record.as_object_mut() {
        map.remove("tenant");
        map.remove("agent");
    }
    record
}

/// `value` as msgpack.
pub fn to_msgpack(value: &Value) -> rmpv::Value {
    match value {
        Value::Null => rmpv::Value::Nil,
        Value::Bool(b) => rmpv::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => rmpv::Value::from(i),
            None => rmpv::Value::from(n.as_f64().unwrap()),
        },
        Value::String(s) => rmpv::Value::from(s.as_str()),
        Value::Array(a) => rmpv::Value::Array(a.iter().map(to_msgpack).collect()),
        Value::Object(o) => rmpv::Value::Map(
            o.iter()
                .map(|(k, v)| (rmpv::Value::from(k.as_str()), to_msgpack(v)))
                .collect(),
        ),
    }
}

/// A Fluent Bit chunk of `bodies`, one event per body at `sec`.`n`.
pub fn chunk_of(sec: u32, bodies: &[Value]) -> (Vec<u8>, Vec<Value>) {
    let mut chunk = Vec::new();
    let mut expected = Vec::new();
    for (n, body) in bodies.iter().enumerate() {
        let mut time = sec.to_be_bytes().to_vec();
        time.extend_from_slice(&(n as u32).to_be_bytes());
        let event = rmpv::Value::Array(vec![
            rmpv::Value::Array(vec![
                rmpv::Value::Ext(0, time),
                rmpv::Value::Map(Vec::new()),
            ]),
            to_msgpack(body),
        ]);
        rmpv::encode::write_value(&mut chunk, &event).unwrap();
        expected.push(json!({
            "time": chrono::DateTime::from_timestamp(i64::from(sec), n as u32)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "metadata": {},
            "record": body,
        }));
    }
    (chunk, expected)
}

/// Records as sortable strings, without the fields that vary by delivery.
pub fn canonical(records: impl IntoIterator<Item = Value>) -> Vec<String> {
    let mut out: Vec<String> = records
        .into_iter()
        .map(|r| serde_json::to_string(&without_origin(&r)).unwrap())
        .collect();
    out.sort();
    out
}

/// Asserts two sorted lists are equal; on failure says what is missing and extra,
/// briefly.
pub fn assert_same(what: &str, got: &[String], want: &[String]) {
    if got == want {
        return;
    }
    let cut = |s: &String| s.chars().take(200).collect::<String>();
    let missing: Vec<String> = want
        .iter()
        .filter(|w| got.binary_search(w).is_err())
        .map(cut)
        .collect();
    let extra: Vec<String> = got
        .iter()
        .filter(|g| want.binary_search(g).is_err())
        .map(cut)
        .collect();
    panic!(
        "{what}: {} records, want {}; {} missing, first: {:#?}; {} unexpected, first: {:#?}",
        got.len(),
        want.len(),
        missing.len(),
        &missing[..missing.len().min(3)],
        extra.len(),
        &extra[..extra.len().min(3)]
    );
}

/// Accepts TLS on `127.0.0.1:port` (the certificate of `pki`) and forwards each
/// connection's bytes to `127.0.0.1:upstream`; runs until the runtime is dropped.
pub fn tls_front(
    port: u16,
    upstream: u16,
    pki: &logferry_backend::pki::ServerPki,
) -> tokio::runtime::Runtime {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    logferry_backend::install_crypto_provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
        .expect("the front's certificate")
        .collect::<Result<_, _>>()
        .expect("the front's certificate");
    let key = PrivateKeyDer::from_pem_file(&pki.key).expect("the front's key");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a TLS server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the TLS front");
    listener.set_nonblocking(true).expect("non-blocking");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("the TLS front's runtime");
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut broker) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    runtime
}
