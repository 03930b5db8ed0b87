//! A real `logferry serve` process for end-to-end tests: started on a data dir, read
//! for its credentials, killed with SIGKILL or stopped with SIGTERM, restarted on the
//! same dir and port.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a backend gets to print that it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `logferry` binary of the build that runs the tests, found like
/// [`crate::plugin_path`]; `LOGFERRY_BIN` overrides it.
pub fn backend_bin() -> PathBuf {
    crate::built_artifact("logferry", "LOGFERRY_BIN")
}

/// A loopback port that was free a moment ago, so a backend can be restarted on the
/// same endpoint.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// The agent credentials `logferry serve` writes to `dev-credentials.env`.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub endpoint: String,
    pub access_key: String,
    pub access_token: String,
    pub ca_file: String,
}

impl Credentials {
    /// Plugin properties for these credentials and a spool at `buffer_path`.
    pub fn plugin_properties(&self, buffer_path: &Path) -> Vec<(String, String)> {
        vec![
            ("endpoint".into(), self.endpoint.clone()),
            ("access_key".into(), self.access_key.clone()),
            ("access_token".into(), self.access_token.clone()),
            ("tls.ca_file".into(), self.ca_file.clone()),
            ("buffer.path".into(), buffer_path.display().to_string()),
            ("batch.max_delay".into(), "5ms".into()),
        ]
    }
}

impl Credentials {
    /// A TLS channel to the backend that trusts its development CA.
    pub async fn channel(&self) -> tonic::transport::Channel {
        self.try_channel(None)
            .await
            .expect("connect to the backend")
    }

    /// A TLS channel that presents `identity` as its client certificate, if given.
    pub async fn try_channel(
        &self,
        identity: Option<tonic::transport::Identity>,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        logferry_backend::install_crypto_provider();
        let ca = std::fs::read(&self.ca_file).expect("the development CA");
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        tonic::transport::Endpoint::from_shared(self.endpoint.clone())
            .expect("a valid endpoint")
            .tls_config(tls)
            .expect("a valid TLS config")
            .connect()
            .await
    }

    /// `message` with this access key and, when given, `Bearer token`.
    pub fn request<T>(&self, message: T, token: Option<&str>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert(
            logferry_proto::ACCESS_KEY_HEADER,
            self.access_key.parse().expect("an ASCII access key"),
        );
        if let Some(token) = token {
            metadata.insert(
                logferry_proto::AUTHORIZATION_HEADER,
                format!("Bearer {token}").parse().expect("an ASCII token"),
            );
        }
        request
    }
}

/// A running `logferry serve`.
pub struct Backend {
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` answer.
    pub metrics_addr: Option<SocketAddr>,
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    /// Starts `logferry serve --data-dir DIR --listen 127.0.0.1:PORT EXTRA...` and waits
    /// until it listens.
    pub fn start(data_dir: &Path, port: u16, extra: &[&str]) -> Backend {
        Self::start_role("serve", data_dir, port, extra)
    }

    /// Like [`Backend::start`] for `logferry ROLE` (`serve`, `ingest` or `route`; a
    /// router is ready once it says it routes, and has no gRPC address).
    pub fn start_role(role: &str, data_dir: &Path, port: u16, extra: &[&str]) -> Backend {
        Self::start_with_env(role, data_dir, port, extra, &[])
    }

    /// Like [`Backend::start_role`] with environment variables set for the process.
    pub fn start_with_env(
        role: &str,
        data_dir: &Path,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Backend {
        let mut child = Command::new(backend_bin())
            .arg(role)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn logferry {role}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout piped");
        let out_lines = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                out_lines.lock().unwrap().push(line);
            }
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let metrics = Arc::new(Mutex::new(None));
        let metrics_addr = metrics.clone();
        let pipe = child.stderr.take().expect("stderr piped");
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("logferry: metrics on http://") {
                    let addr = rest.split('/').next().unwrap_or_default();
                    *metrics_addr.lock().unwrap() = addr.parse::<SocketAddr>().ok();
                }
                if let Some(rest) = line.strip_prefix("logferry: listening on ") {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = ready_tx.send(addr.parse::<SocketAddr>().ok());
                }
                if line.starts_with("logferry: routing topic") {
                    let _ = ready_tx.send(Some(SocketAddr::from(([0, 0, 0, 0], 0))));
                }
                lines.lock().unwrap().push(line);
            }
        });
        // A process that exits before it is ready (a crash at start, which some
        // tests provoke) is handed back as it is; `exited` tells.
        let started = Instant::now();
        let ready = loop {
            match ready_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(ready) => break ready,
                Err(_) if started.elapsed() > START_TIMEOUT => break None,
                Err(_) => {}
            }
            if env.iter().any(|(k, _)| k.starts_with("LOGFERRY_TEST_"))
                && child.try_wait().expect("wait").is_some()
            {
                break Some(SocketAddr::from(([0, 0, 0, 0], 0)));
            }
        };
        let addr = match ready {
            Some(addr) => addr,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "logferry {role} did not start; its stderr:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
        };
        let metrics_addr = *metrics.lock().unwrap();
        Backend {
            data_dir: data_dir.to_path_buf(),
            addr,
            metrics_addr,
            child: Some(child),
            stderr,
            stdout,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Reads `dev-credentials.env`.
    pub fn credentials(&self) -> Credentials {
        let path = self.data_dir.join("dev-credentials.env");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let vars: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let var = |name: &str| {
            vars.get(name)
                .unwrap_or_else(|| panic!("{name} missing from {}", path.display()))
                .to_string()
        };
        Credentials {
            endpoint: var("LOGFERRY_ENDPOINT"),
            access_key: var("LOGFERRY_ACCESS_KEY"),
            access_token: var("LOGFERRY_ACCESS_TOKEN"),
            ca_file: var("LOGFERRY_CA_FILE"),
        }
    }

    /// The environment `logferry send` reads its credentials from.
    pub fn credentials_env(&self) -> Vec<(String, String)> {
        let credentials = self.credentials();
        vec![
            ("LOGFERRY_ENDPOINT".into(), credentials.endpoint),
            ("LOGFERRY_ACCESS_KEY".into(), credentials.access_key),
            ("LOGFERRY_ACCESS_TOKEN".into(), credentials.access_token),
            ("LOGFERRY_CA_FILE".into(), credentials.ca_file),
            ("NO_COLOR".into(), "1".into()),
        ]
    }

    /// Polls `metric(sample)` until it reaches `at_least`; returns the last value.
    pub fn wait_for_metric(&self, sample: &str, at_least: f64, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metric(sample).unwrap_or(0.0);
            if value >= at_least || Instant::now() > deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until a line of stderr satisfies `line`; panics after `timeout` with
    /// `what` and the stderr so far.
    pub fn wait_for_stderr(&self, what: &str, timeout: Duration, line: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().iter().any(|l| line(l)) {
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}; stderr: {:#?}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tenant registry in `<data-dir>/tenants.yaml`.
    pub fn registry(&self) -> logferry_backend::tenants::RegistryFile {
        logferry_backend::tenants::Registry::load(&self.data_dir.join("tenants.yaml"))
            .expect("a valid registry")
            .file()
            .clone()
    }

    /// Replaces `<data-dir>/tenants.yaml` with `file` and waits until the backend
    /// runs it (its registry version reaches `version`).
    pub fn set_registry(&self, file: &logferry_backend::tenants::RegistryFile, version: u64) {
        let yaml = logferry_backend::tenants::Registry::from_file(file.clone())
            .and_then(|r| r.to_yaml())
            .expect("a valid registry");
        replace_file(&self.data_dir.join("tenants.yaml"), &yaml);
        let got = self.wait_for_metric(
            "logferry_registry_version",
            version as f64,
            Duration::from_secs(10),
        );
        assert!(
            got >= version as f64,
            "registry version {got}, expected {version}"
        );
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// `GET path` on the metrics listener: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_addr.expect("the metrics listener is up"), path)
    }

    /// The value of one sample on `/metrics`, like
    /// `logferry_ingest_chunks_total{tenant="dev"}`; `None` when absent.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (status, body) = self.http_get("/metrics");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    /// Every stdout line so far (the stdout sink's records with `--print-events`).
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Whether the process has exited by itself (it is reaped then).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait().expect("wait")) {
            Some(Some(_)) => {
                self.child = None;
                true
            }
            Some(None) => false,
            None => true,
        }
    }

    /// Waits until the process exits by itself (a crash); returns how it ended.
    pub fn wait_exit(mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "logferry did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL logferry serve");
            child.wait().expect("reap logferry serve");
        }
    }

    /// Sends `signal` to the running backend.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: `kill` has no memory-safety preconditions; the pid is our own child,
        // not yet reaped, so it cannot name another process.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "signal {signal} to logferry serve");
    }

    /// SIGTERM, then waits for a clean exit and returns its stderr.
    pub fn stop(mut self) -> Vec<String> {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "logferry serve exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "logferry serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The reader thread sees EOF once the process is gone.
        std::thread::sleep(Duration::from_millis(50));
        self.stderr()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET path` over HTTP/1.0 on `addr`: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_string();
    (status, body)
}

/// Replaces a file the way editors and config management do: write, then rename.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the replacement");
    std::fs::rename(&tmp, path).expect("rename it into place");
}

/// Every JSON line in the `.jsonl` files under `dir`, recursively, parsed.
pub fn read_jsonl_tree(dir: &Path) -> Vec<serde_json::Value> {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "jsonl"))
    {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        for (n, line) in text.lines().enumerate() {
            let value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{} line {}: not JSON ({e}): {line:?}",
                    file.display(),
                    n + 1
                )
            });
            out.push(value);
        }
    }
    out
}

/// Counts lines of the `.jsonl` files under `dir` without parsing them.
pub fn count_jsonl_lines(dir: &Path) -> usize {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "jsonl"))
        .filter_map(|f| std::fs::read(f).ok())
        .map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count())
        .sum()
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Polls until the file sink under `data_dir/files` holds at least `n` lines, and
/// then a little longer to catch any extra (duplicate) line. Panics after `timeout`
/// with the count it saw.
pub fn wait_for_lines(data_dir: &Path, n: usize, timeout: Duration) -> usize {
    let files = data_dir.join("files");
    let deadline = Instant::now() + timeout;
    loop {
        let count = count_jsonl_lines(&files);
        if count >= n {
            std::thread::sleep(Duration::from_millis(300));
            return count_jsonl_lines(&files);
        }
        assert!(
            Instant::now() < deadline,
            "the file sink holds {count} of {n} lines after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the file sink under `data_dir/files` holds every record of `want`
/// (tag, records in order), then asserts it holds exactly those: each tag's records
/// once, in order, and no other line.
pub fn assert_landed_once(
    data_dir: &Path,
    want: &[(String, Vec<serde_json::Value>)],
    timeout: Duration,
) {
    let total: usize = want.iter().map(|(_, records)| records.len()).sum();
    assert_eq!(
        wait_for_lines(data_dir, total, timeout),
        total,
        "lines in the file sink"
    );
    let records = read_jsonl_tree(&data_dir.join("files"));
    for (tag, expected) in want {
        let got: Vec<_> = records
            .iter()
            .filter(|r| r["tag"] == tag.as_str())
            .map(crate::without_origin)
            .collect();
        assert_eq!(&got, expected, "records of {tag}");
    }
}

/// Runs `logferry send - EXTRA...` with `backend`'s credentials, feeding it `lines`,
/// and asserts it exits 0 (every line acked).
pub fn send_lines(backend: &Backend, extra: &[&str], lines: impl IntoIterator<Item = String>) {
    use std::io::Write;
    let mut send = Command::new(backend_bin())
        .args(["send", "-"])
        .args(extra)
        .envs(backend.credentials_env())
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn logferry send");
    let mut stdin = send.stdin.take().expect("stdin piped");
    for line in lines {
        writeln!(stdin, "{line}").expect("write to logferry send");
    }
    drop(stdin);
    assert!(send.wait().expect("wait for logferry send").success());
}

/// The dead letters of `destination` under `data`, in order.
pub fn dead_letters(data: &Path, destination: &str) -> Vec<serde_json::Value> {
    let file = data
        .join("dead-letter")
        .join(destination)
        .join("dead-letter.jsonl");
    std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Polls `done` until it holds; panics after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Credentials of tenant `acme`'s key `ak_a` on `backend`.
pub fn acme_credentials(backend: &Backend, data: &Path) -> Credentials {
    let authority =
        logferry_backend::auth::TokenAuthority::load_or_create(&data.join("keys")).unwrap();
    Credentials {
        access_key: "ak_a".into(),
        access_token: authority
            .issue("acme", "ak_a", Duration::from_secs(3600))
            .unwrap()
            .0,
        ..backend.credentials()
    }
}

/// An ingest stream: what the agent sends, and the backend's replies.
pub type IngestStream = (
    tokio::sync::mpsc::Sender<logferry_proto::v1::AgentMessage>,
    tonic::Streaming<logferry_proto::v1::ServerMessage>,
);

/// Opens an ingest stream as `agent_id` with `token` and waits for the welcome: the
/// stream, or the status that refused it.
pub async fn open_stream(
    credentials: &Credentials,
    token: &str,
    agent_id: [u8; 16],
) -> Result<IngestStream, tonic::Status> {
    use logferry_proto::v1::{AgentMessage, Hello, agent_message, server_message};
    let mut client =
        logferry_proto::v1::ingest_client::IngestClient::new(credentials.channel().await)
            .max_encoding_message_size(logferry_proto::MAX_MESSAGE_BYTES);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            agent_id: agent_id.to_vec(),
            agent_version: "e2e-test".into(),
            acked_seq: 0,
        })),
    })
    .await
    .expect("the stream's channel is open");
    let request = credentials.request(tokio_stream::wrappers::ReceiverStream::new(rx), Some(token));
    let mut inbound = client.stream(request).await?.into_inner();
    match inbound.message().await?.and_then(|m| m.msg) {
        Some(server_message::Msg::Welcome(_)) => Ok((tx, inbound)),
        other => panic!("expected a welcome, got {other:?}"),
    }
}
