//! Far ends for the sink tests.
//!
//! - [`Postgres`] is a real PostgreSQL server from Debian's packages, started in a
//!   temporary directory.
//! - [`Elasticsearch`] and [`Loki`] are in-test HTTP servers: neither product can
//!   be installed on this machine. Each checks every request against the documented
//!   API (bulk NDJSON action lines; Loki's JSON push body) and answers as the real
//!   server does, including partial failures, so a sink that drifts from the API
//!   fails the test. Every departure from the API is recorded in `violations`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// Runs `router` on a loopback port, on its own thread and runtime.
fn serve(router: Router) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, router.layer(DefaultBodyLimit::max(256 << 20)))
                .await
                .unwrap();
        });
    });
    rx.recv().unwrap()
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn json_answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The JSON type of a value, as a dynamic mapping would fix it.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "long",
        Value::String(_) => "text",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// What the Elasticsearch server holds and did.
#[derive(Debug, Default)]
pub struct EsState {
    /// `(index, _id)` → document.
    pub docs: HashMap<(String, String), Value>,
    /// Documents indexed again under an `_id` they already had (re-sends).
    pub overwrites: usize,
    pub requests: usize,
    /// Field types of `record.*`, fixed by the first document (dynamic mapping).
    mapping: HashMap<String, &'static str>,
    pub violations: Vec<String>,
    /// Items answered 429 so far, and how many more to answer so.
    pub rejected_for_now: usize,
    pub reject_next: usize,
}

/// An in-test HTTP server holding `S`, that can be taken down (every request then
/// gets 503).
#[derive(Debug, Clone)]
pub struct Mock<S> {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<S>>,
    down: Arc<AtomicBool>,
}

type MockState<S> = (Arc<Mutex<S>>, Arc<AtomicBool>);

impl<S: Send + 'static> Mock<S> {
    fn start(state: S, path: &str, route: axum::routing::MethodRouter<MockState<S>>) -> Self {
        let state = Arc::new(Mutex::new(state));
        let down = Arc::new(AtomicBool::new(false));
        let router = Router::new()
            .route(path, route)
            .with_state((state.clone(), down.clone()));
        Self {
            addr: serve(router),
            state,
            down,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// While down, every request gets 503.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

/// An Elasticsearch bulk endpoint; see the module docs.
pub type Elasticsearch = Mock<EsState>;

impl Elasticsearch {
    /// A server that answers 429 to every third item of its first requests, until it
    /// has done so `reject_first` times.
    pub fn start_bulk(reject_first: usize) -> Self {
        let state = EsState {
            reject_next: reject_first,
            ..EsState::default()
        };
        Self::start(state, "/_bulk", post(es_bulk))
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().docs.len()
    }

    /// Forgets the mapping of `record.<field>`, as an operator who fixed it would
    /// make the index take the next type it sees.
    pub fn forget_mapping(&self, field: &str) {
        self.state.lock().unwrap().mapping.remove(field);
    }
}

async fn es_bulk(
    State((state, down)): State<(Arc<Mutex<EsState>>, Arc<AtomicBool>)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for the test").into_response();
    }
    let mut state = state.lock().unwrap();
    state.requests += 1;
    let error = |status: StatusCode, kind: &str, reason: &str| {
        json_answer(
            status,
            json!({"error": {"type": kind, "reason": reason}, "status": status.as_u16()}),
        )
    };
    if !content_type(&headers).starts_with("application/x-ndjson")
        && !content_type(&headers).starts_with("application/json")
    {
        state
            .violations
            .push(format!("content-type `{}`", content_type(&headers)));
        return error(
            StatusCode::NOT_ACCEPTABLE,
            "media_type_header_exception",
            "Content-Type header is not supported",
        );
    }
    if !body.ends_with(b"\n") {
        state.violations.push("body without a final newline".into());
        return error(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            "The bulk request must be terminated by a newline [\\n]",
        );
    }
    let lines: Vec<&[u8]> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    if !lines.len().is_multiple_of(2) {
        state.violations.push("an action without a document".into());
        return error(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            "Malformed action/metadata line",
        );
    }
    let mut items = Vec::new();
    let mut errors = false;
    for (n, pair) in lines.chunks(2).enumerate() {
        let action: Value = serde_json::from_slice(pair[0]).unwrap_or(Value::Null);
        let Some(meta) = action
            .get("index")
            .filter(|_| action.as_object().map(|o| o.len()) == Some(1))
        else {
            state
                .violations
                .push(format!("action line {}", String::from_utf8_lossy(pair[0])));
            return error(
                StatusCode::BAD_REQUEST,
                "illegal_argument_exception",
                "Malformed action/metadata line",
            );
        };
        let (Some(index), Some(id)) = (meta["_index"].as_str(), meta["_id"].as_str()) else {
            state
                .violations
                .push(format!("action without _index and _id: {meta}"));
            return error(
                StatusCode::BAD_REQUEST,
                "action_request_validation_exception",
                "index is missing",
            );
        };
        let item = |status: u16, extra: Value| {
            let mut item = json!({"_index": index, "_id": id, "status": status});
            item.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            json!({ "index": item })
        };
        let Ok(doc) = serde_json::from_slice::<Value>(pair[1]) else {
            errors = true;
            items.push(item(400, json!({"error": {"type": "document_parsing_exception", "reason": "failed to parse"}})));
            continue;
        };
        if state.reject_next > 0 && n.is_multiple_of(3) {
            state.reject_next -= 1;
            state.rejected_for_now += 1;
            errors = true;
            items.push(item(429, json!({"error": {"type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}})));
            continue;
        }
        let mut conflict = None;
        if let Some(record) = doc["record"].as_object() {
            for (field, value) in record {
                let k = kind(value);
                match state.mapping.get(field.as_str()) {
                    Some(&mapped) if mapped != k && k != "null" => {
                        conflict = Some(format!(
                            "failed to parse field [record.{field}] of type [{mapped}] in document with id '{id}'"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        if k != "null" {
                            state.mapping.insert(field.clone(), k);
                        }
                    }
                }
            }
        }
        if let Some(reason) = conflict {
            errors = true;
            items.push(item(
                400,
                json!({"error": {"type": "document_parsing_exception", "reason": reason}}),
            ));
            continue;
        }
        let key = (index.to_string(), id.to_string());
        let created = state.docs.insert(key, doc).is_none();
        if !created {
            state.overwrites += 1;
        }
        items.push(item(
            if created { 201 } else { 200 },
            json!({"result": if created { "created" } else { "updated" }, "_version": 1}),
        ));
    }
    json_answer(
        StatusCode::OK,
        json!({"took": 1, "errors": errors, "items": items}),
    )
}

/// One stored Loki entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LokiEntry {
    pub labels: BTreeMap<String, String>,
    pub nanos: i64,
    pub line: String,
}

/// What the Loki server holds and did.
#[derive(Debug, Default)]
pub struct LokiState {
    pub entries: HashSet<LokiEntry>,
    /// Entries pushed again that Loki drops as duplicates.
    pub duplicates: usize,
    pub pushes: usize,
    pub org_ids: HashSet<String>,
    pub violations: Vec<String>,
    /// Pushes still to answer with 429.
    pub throttle_next: usize,
}

/// A Loki push endpoint; see the module docs.
pub type Loki = Mock<LokiState>;

/// Loki's `max_line_size` on this server.
pub const LOKI_MAX_LINE: usize = 4096;

impl Loki {
    /// A server that answers 429 to its first `throttle_first` pushes.
    pub fn start_push(throttle_first: usize) -> Self {
        let state = LokiState {
            throttle_next: throttle_first,
            ..LokiState::default()
        };
        Self::start(state, "/loki/api/v1/push", post(loki_push))
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().entries.len()
    }
}

fn valid_label_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

async fn loki_push(
    State((state, down)): State<(Arc<Mutex<LokiState>>, Arc<AtomicBool>)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for the test").into_response();
    }
    let mut state = state.lock().unwrap();
    state.pushes += 1;
    if state.throttle_next > 0 {
        state.throttle_next -= 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "Ingestion rate limit exceeded for user (limit: 4194304 bytes/sec)",
        )
            .into_response();
    }
    if content_type(&headers) != "application/json" {
        state
            .violations
            .push(format!("content-type `{}`", content_type(&headers)));
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported content type",
        )
            .into_response();
    }
    match headers.get("x-scope-orgid").and_then(|v| v.to_str().ok()) {
        Some(org) => {
            state.org_ids.insert(org.to_string());
        }
        None => {
            state.violations.push("no X-Scope-OrgID".into());
            return (StatusCode::UNAUTHORIZED, "no org id").into_response();
        }
    }
    let Ok(push) = serde_json::from_slice::<Value>(&body) else {
        state.violations.push("a body that is not JSON".into());
        return (StatusCode::BAD_REQUEST, "invalid JSON").into_response();
    };
    let mut errors = Vec::new();
    for stream in push["streams"].as_array().into_iter().flatten() {
        let Some(labels) = stream["stream"].as_object() else {
            state
                .violations
                .push(format!("a stream without labels: {stream}"));
            return (StatusCode::BAD_REQUEST, "invalid stream").into_response();
        };
        let mut map = BTreeMap::new();
        for (name, value) in labels {
            if !valid_label_name(name) || !value.is_string() {
                state.violations.push(format!("label {name}={value}"));
                return (StatusCode::BAD_REQUEST, format!("invalid label {name}")).into_response();
            }
            map.insert(name.clone(), value.as_str().unwrap().to_string());
        }
        let mut previous = i64::MIN;
        for value in stream["values"].as_array().into_iter().flatten() {
            let (Some(ts), Some(line)) = (value[0].as_str(), value[1].as_str()) else {
                state
                    .violations
                    .push(format!("a value that is not [ts, line]: {value}"));
                return (StatusCode::BAD_REQUEST, "invalid entry").into_response();
            };
            let Ok(nanos) = ts.parse::<i64>() else {
                state.violations.push(format!("timestamp `{ts}`"));
                return (StatusCode::BAD_REQUEST, "invalid timestamp").into_response();
            };
            if nanos < previous {
                state
                    .violations
                    .push("entries out of order within a stream".into());
            }
            previous = nanos;
            if line.len() > LOKI_MAX_LINE {
                let labels = labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                errors.push(format!(
                    "Max entry size '{LOKI_MAX_LINE}' bytes exceeded for stream '{{{labels}}}' while adding an entry with length '{}' bytes",
                    line.len()
                ));
                continue;
            }
            let entry = LokiEntry {
                labels: map.clone(),
                nanos,
                line: line.to_string(),
            };
            if !state.entries.insert(entry) {
                state.duplicates += 1;
            }
        }
    }
    if errors.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::BAD_REQUEST, errors.join("\n")).into_response()
    }
}

/// A PostgreSQL server in a temporary directory, stopped on drop. Runs as the
/// `postgres` user when the tests run as root (initdb refuses root).
#[derive(Debug)]
pub struct Postgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    pub port: u16,
    /// With TLS: the CA that signed the server's certificate.
    pub ca: Option<PathBuf>,
}

fn postgres_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server in /usr/lib/postgresql/*/bin: install Debian's \
             postgresql-15 (.ci/run does)"
        )
    })
}

fn as_postgres_user(program: &Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // setpriv execs (runuser would fork), so signals reach the server itself.
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A server that takes TCP connections over TLS only (`hostssl`; plaintext TCP is
    /// rejected), with a certificate for `127.0.0.1` and `localhost` signed by
    /// [`Postgres::ca`]. The harness itself connects over the Unix socket.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let status = Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown to the postgres user");
        }
        let data = dir.path().join("pgdata");
        let out = as_postgres_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ca = tls.then(|| {
            let pki =
                logferry_backend::pki::ensure_dev_pki(&dir.path().join("tls")).expect("a test PKI");
            std::fs::copy(&pki.cert, data.join("server.crt")).unwrap();
            std::fs::copy(&pki.key, data.join("server.key")).unwrap();
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                for file in ["server.crt", "server.key"] {
                    let status = Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(data.join(file))
                        .status()
                        .unwrap();
                    assert!(status.success());
                }
            }
            let conf = data.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str(
                "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            );
            std::fs::write(&conf, text).unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostnossl all all 127.0.0.1/32 reject\n",
            )
            .unwrap();
            pki.ca.expect("the development CA")
        });
        let mut server = Self {
            _dir: dir,
            data,
            bin,
            child: None,
            port: crate::backend::free_port(),
            ca,
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let child = as_postgres_user(&self.bin.join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"])
            .arg("-k")
            .arg(self.data.parent().unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_client().is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill with a valid pid and signal.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    /// Starts it again on the same data and port.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn try_client(&self) -> Result<postgres::Client, postgres::Error> {
        // Over the Unix socket, which takes plaintext whether TCP needs TLS or not.
        postgres::Config::new()
            .user("postgres")
            .dbname("postgres")
            .host_path(self.data.parent().expect("the socket directory"))
            .port(self.port)
            .connect(postgres::NoTls)
    }

    pub fn client(&self) -> postgres::Client {
        self.try_client()
            .expect("connecting to the test PostgreSQL")
    }

    /// Rows in `table`; 0 when it does not exist yet or the server is down.
    pub fn count(&self, table: &str) -> usize {
        self.try_client()
            .and_then(|mut c| c.query_one(&format!("SELECT count(*) FROM {table}"), &[]))
            .map_or(0, |row| row.get::<_, i64>(0) as usize)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill with a valid pid and signal.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGQUIT) };
            let _ = child.wait();
        }
    }
}

/// An S3-compatible server: `s3s-fs` from crates.io (`cargo install s3s-fs --features
/// binary`, which `.ci/run` does), storing objects as files under a temporary
/// directory, with one bucket and a fixed key pair.
#[derive(Debug)]
pub struct S3Server {
    root: tempfile::TempDir,
    bin: PathBuf,
    child: Option<Child>,
    pub port: u16,
}

impl S3Server {
    pub const BUCKET: &str = "logs";
    pub const ACCESS_KEY: &str = "logferry-test";
    pub const SECRET_KEY: &str = "logferry-test-secret";

    fn bin() -> PathBuf {
        crate::find_tool("s3s-fs", "S3S_FS_BIN").unwrap_or_else(|| {
            panic!(
                "no s3s-fs binary: `cargo install s3s-fs --version 0.14.1 --locked --features \
                 binary` (.ci/run does), or set S3S_FS_BIN"
            )
        })
    }

    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(Self::BUCKET)).unwrap();
        let mut server = Self {
            root,
            bin: Self::bin(),
            child: None,
            port: crate::backend::free_port(),
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--access-key",
                Self::ACCESS_KEY,
                "--secret-key",
                Self::SECRET_KEY,
            ])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket's objects whose names end with `suffix`, by key.
    pub fn objects(&self, suffix: &str) -> BTreeMap<String, Vec<u8>> {
        fn walk(dir: &Path, root: &Path, suffix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, root, suffix, out);
                } else if path.to_string_lossy().ends_with(suffix) {
                    let key = path
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .to_string();
                    if let Ok(bytes) = std::fs::read(&path) {
                        out.insert(key, bytes);
                    }
                }
            }
        }
        let bucket = self.root.path().join(Self::BUCKET);
        let mut out = BTreeMap::new();
        walk(&bucket, &bucket, suffix, &mut out);
        out
    }

    /// Every line of the zstd NDJSON objects, and how many objects there are.
    pub fn lines(&self) -> (Vec<String>, usize) {
        let objects = self.objects(".ndjson.zst");
        let mut lines = Vec::new();
        for bytes in objects.values() {
            let text = zstd::decode_all(&bytes[..]).expect("a zstd object");
            lines.extend(
                String::from_utf8(text)
                    .expect("UTF-8 NDJSON")
                    .lines()
                    .map(str::to_string),
            );
        }
        (lines, objects.len())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
