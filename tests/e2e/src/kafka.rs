//! A real Kafka-protocol broker for the Kafka tests: `tansu` with SQLite storage in a
//! temporary directory, on a free loopback port, killed and restarted by the tests;
//! with TLS (through a front, see [`Broker::start_tls`]) and SASL/SCRAM logins
//! (tansu's own, see [`Broker::start_sasl`]) when a test asks.
//!
//! `.ci/run` installs it (`cargo install tansu --locked --features dynostore,libsql`);
//! `TANSU_BIN` overrides where it is looked for.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::backend::{Backend, backend_bin, count_jsonl_lines, read_jsonl_tree};

use rdkafka::consumer::Consumer;

/// The `tansu` binary: `TANSU_BIN`, else on `PATH`, else in `~/.cargo/bin`.
pub fn tansu_bin() -> PathBuf {
    crate::find_tool("tansu", "TANSU_BIN").expect(
        "no `tansu` broker found: install it with `cargo install tansu --locked --features \
         dynostore,libsql` (as .ci/run does) or set TANSU_BIN",
    )
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct TopicMessage {
    pub partition: i32,
    pub key: Option<String>,
    pub value: String,
    /// Its headers, in order (a key may repeat).
    pub headers: Vec<(String, String)>,
}

/// A SCRAM login (user, password, mechanism) of a broker that requires logins.
#[derive(Debug, Clone)]
pub struct ScramUser {
    pub name: String,
    pub password: String,
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: &'static str,
}

impl ScramUser {
    pub fn new(name: &str, password: &str, mechanism: &'static str) -> ScramUser {
        assert!(
            ["SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism),
            "{mechanism}"
        );
        ScramUser {
            name: name.into(),
            password: password.into(),
            mechanism,
        }
    }

    /// The librdkafka properties of this login (with the broker's `security.protocol`
    /// from [`Broker::connection_properties`]).
    pub fn properties(&self) -> Vec<(String, String)> {
        vec![
            ("sasl.mechanism".into(), self.mechanism.into()),
            ("sasl.username".into(), self.name.clone()),
            ("sasl.password".into(), self.password.clone()),
        ]
    }

    /// [`ScramUser::properties`] as `--kafka-property` flags.
    pub fn flags(&self) -> Vec<String> {
        property_flags(self.properties())
    }
}

fn property_flags(properties: Vec<(String, String)>) -> Vec<String> {
    properties
        .into_iter()
        .flat_map(|(k, v)| ["--kafka-property".to_string(), format!("{k}={v}")])
        .collect()
}

/// A running broker.
pub struct Broker {
    /// The port clients connect to.
    pub port: u16,
    /// The port tansu listens on: `port`, or behind a TLS front another one.
    listen: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// With TLS: the front's runtime and the CA that signed its certificate.
    tls: Option<(tokio::runtime::Runtime, PathBuf)>,
    /// With SASL: the login the harness's own clients use (`kafka init`, reading a
    /// topic back); tansu then requires one of every client.
    login: Option<ScramUser>,
    /// With a stand-in for topic ACLs before tansu (see [`Broker::start_acl`]).
    acl: Option<crate::kafka_acl::AclFront>,
}

impl Broker {
    /// Starts a broker storing in `dir/tansu.db` and waits until it accepts
    /// connections.
    pub fn start(dir: &Path, port: u16) -> Broker {
        let mut broker = Broker::unstarted(dir, port);
        broker.spawn();
        broker
    }

    /// A broker that clients reach over TLS only, on `localhost:port`.
    ///
    /// tansu 0.6 cannot be started with TLS (its `--cert` and `--key` flags are each
    /// refused with the other), so a TLS front (rustls, in this process) takes the
    /// connections on `port` and forwards the decrypted bytes to tansu's plaintext
    /// listener on another loopback port; tansu advertises the front, so librdkafka
    /// talks TLS to every broker address it learns. What is tested is librdkafka's
    /// TLS client (`security.protocol=ssl`, certificate and host name checked against
    /// [`Broker::client_properties`]'s CA), not a broker's TLS.
    pub fn start_tls(dir: &Path, port: u16) -> Broker {
        let mut broker = Broker::unstarted_tls(dir, port);
        broker.spawn();
        broker
    }

    /// A broker that requires a SASL/SCRAM login of every client (tansu's
    /// `--authentication`; tansu 0.6 offers SCRAM-SHA-256 and -512, not PLAIN), with
    /// `users` as its users; behind a TLS front when `tls` (SASL_SSL). The first user
    /// is the harness's own login.
    ///
    /// tansu stores SCRAM credentials when asked by an AlterUserScramCredentials
    /// request (`tansu user create`), which it takes only while it requires no login:
    /// see [`Broker::set_users`].
    pub fn start_sasl(dir: &Path, port: u16, tls: bool, users: &[ScramUser]) -> Broker {
        let mut broker = if tls {
            Broker::unstarted_tls(dir, port)
        } else {
            Broker::unstarted(dir, port)
        };
        broker.login = Some(users.first().expect("at least one user").clone());
        broker.set_users(users);
        broker
    }

    /// Stops the broker, stores `users`' credentials (new users, or new passwords of
    /// old ones; the others are kept), and starts it again. The credentials are
    /// stored by a broker that requires no login, on a loopback port of its own that
    /// no client of the test knows, so no client gets in without one meanwhile.
    pub fn set_users(&mut self, users: &[ScramUser]) {
        self.kill();
        let setup = crate::backend::free_port();
        let mut child = self.command(setup, &format!("tcp://127.0.0.1:{setup}"), false);
        wait_listening(&self.dir, setup);
        for user in users {
            let mechanism = match user.mechanism {
                "SCRAM-SHA-256" => "scram256",
                _ => "scram512",
            };
            let out = Command::new(tansu_bin())
                .args([
                    "user",
                    "create",
                    "--broker",
                    &format!("tcp://127.0.0.1:{setup}"),
                ])
                .args(["--mechanism", mechanism, &user.name, &user.password])
                .output()
                .expect("run tansu user create");
            assert!(
                out.status.success(),
                "tansu user create {}: {}",
                user.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        self.spawn();
    }

    /// A broker whose clients reach it through a stand-in for topic ACLs on `port`
    /// (see [`crate::kafka_acl`]; tansu 0.6 does not enforce ACLs):
    /// [`Broker::deny_writes`] makes it refuse every Produce request as a broker does
    /// for a principal without WRITE on the topic.
    pub fn start_acl(dir: &Path, port: u16) -> Broker {
        let mut broker = Broker::unstarted(dir, port);
        broker.listen = crate::backend::free_port();
        broker.acl = Some(crate::kafka_acl::AclFront::start(port, broker.listen));
        broker.spawn();
        broker
    }

    /// With [`Broker::start_acl`]: refuse (`true`) or let through every write.
    pub fn deny_writes(&self, deny: bool) {
        self.acl
            .as_ref()
            .expect("a broker started with start_acl")
            .deny_writes(deny);
    }

    /// [`Broker::start_tls`]'s broker, not started yet.
    fn unstarted_tls(dir: &Path, port: u16) -> Broker {
        let pki = logferry_backend::pki::ensure_dev_pki(&dir.join("tls")).expect("a test PKI");
        let listen = crate::backend::free_port();
        let runtime = crate::tls_front(port, listen, &pki);
        Broker {
            port,
            listen,
            dir: dir.to_path_buf(),
            child: None,
            tls: Some((runtime, pki.ca.expect("the development CA"))),
            login: None,
            acl: None,
        }
    }

    /// The librdkafka properties of a connection to the broker: TLS with the front's
    /// CA, SASL, if the broker has them; not who logs in.
    pub fn connection_properties(&self) -> Vec<(String, String)> {
        let protocol = match (&self.tls, &self.login) {
            (None, None) => return Vec::new(),
            (Some(_), None) => "ssl",
            (None, Some(_)) => "sasl_plaintext",
            (Some(_), Some(_)) => "sasl_ssl",
        };
        let mut properties = vec![("security.protocol".to_string(), protocol.to_string())];
        if let Some((_, ca)) = &self.tls {
            properties.push(("ssl.ca.location".into(), ca.display().to_string()));
        }
        properties
    }

    /// The harness's own clients' properties (`kafka init`, reading a topic back):
    /// [`Broker::connection_properties`] and the harness's login, if any.
    pub fn client_properties(&self) -> Vec<(String, String)> {
        let mut properties = self.connection_properties();
        if let Some(login) = &self.login {
            properties.extend(login.properties());
        }
        properties
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.listen);
        let advertised = match (&self.tls, &self.acl) {
            (Some(_), _) => format!("tcp://localhost:{}", self.port),
            (None, Some(_)) => format!("tcp://127.0.0.1:{}", self.port),
            (None, None) => url.clone(),
        };
        self.child = Some(self.command(self.listen, &advertised, self.login.is_some()));
        wait_listening(&self.dir, self.listen);
    }

    /// tansu on `listen`, logging to `tansu.log`.
    fn command(&self, listen: u16, advertised: &str, authentication: bool) -> Child {
        let log = std::fs::File::create(self.dir.join("tansu.log")).expect("tansu log file");
        let mut command = Command::new(tansu_bin());
        command
            .arg("broker")
            .args([
                "--listener-url",
                &format!("tcp://127.0.0.1:{listen}"),
                "--advertised-listener-url",
                advertised,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"]);
        if authentication {
            command.arg("--authentication");
        }
        command
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("tansu log"))
            .stderr(log)
            .spawn()
            .expect("spawn tansu")
    }

    /// A broker that is not running (yet): its address, for "broker down" tests.
    pub fn unstarted(dir: &Path, port: u16) -> Broker {
        Broker {
            port,
            listen: port,
            dir: dir.to_path_buf(),
            child: None,
            tls: None,
            login: None,
            acl: None,
        }
    }

    /// `host:port` for clients (`localhost`, the name in the TLS front's certificate,
    /// with TLS).
    pub fn brokers(&self) -> String {
        match self.tls {
            Some(_) => format!("localhost:{}", self.port),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    /// Creates `topic` with `partitions` partitions (`logferry kafka init`).
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let out = Command::new(crate::backend::backend_bin())
            .args(["kafka", "init", "--partitions", &partitions.to_string()])
            .args(["--kafka-brokers", &self.brokers(), "--kafka-topic", topic])
            .args(property_flags(self.client_properties()))
            .output()
            .expect("run logferry kafka init");
        assert!(
            out.status.success(),
            "kafka init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// How many messages `topic` holds (the sum of its partitions' watermark spans).
    pub fn count(&self, topic: &str) -> i64 {
        let consumer = self.consumer();
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
            return 0;
        };
        metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .filter_map(|p| {
                consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .ok()
            })
            .map(|(low, high)| high - low)
            .sum()
    }

    /// Every message of `topic`, partition by partition, in offset order.
    pub fn read_topic(&self, topic: &str) -> Vec<TopicMessage> {
        use rdkafka::message::{Headers, Message};
        let consumer = self.consumer();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("topic metadata");
        let mut assignment = rdkafka::TopicPartitionList::new();
        let mut ends = std::collections::BTreeMap::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                .expect("watermarks");
            if low < high {
                assignment
                    .add_partition_offset(topic, partition.id(), rdkafka::Offset::Offset(low))
                    .unwrap();
                ends.insert(partition.id(), high);
            }
        }
        consumer.assign(&assignment).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ends.is_empty() {
            assert!(Instant::now() < deadline, "reading {topic}: {ends:?} left");
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.expect("a message");
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                            (h.key.to_string(), value.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(TopicMessage {
                headers,
                partition: message.partition(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                value: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            });
            if ends
                .get(&message.partition())
                .is_some_and(|high| message.offset() + 1 >= *high)
            {
                ends.remove(&message.partition());
            }
        }
        out
    }

    fn consumer(&self) -> rdkafka::consumer::BaseConsumer {
        let mut config = rdkafka::ClientConfig::new();
        for (name, value) in self.client_properties() {
            config.set(name, value);
        }
        config
            .set("bootstrap.servers", self.brokers())
            .set("group.id", "logferry-e2e-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.max.bytes", "104857600")
            .set("max.partition.fetch.bytes", "104857600")
            .create()
            .expect("a Kafka consumer")
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running broker").id()
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a broker that holds connections open
    /// and answers nothing, as an overloaded or stalled one does.
    pub fn pause(&self, paused: bool) {
        let child = self.child.as_ref().expect("a running broker");
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    }

    /// A new broker on the same port and storage, after [`Broker::kill`].
    pub fn resume(&mut self) {
        self.spawn();
    }

    /// SIGKILL, then a new broker on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGKILL; [`Broker::resume`] starts it again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until tansu (logging in `dir`) listens on `port`.
fn wait_listening(dir: &Path, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "tansu did not listen on {port} within 30 s; its log:\n{}",
            std::fs::read_to_string(dir.join("tansu.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// What the Kafka tests run against a broker: the roles, an agent's load, and the
// checks of what landed.

/// The topic of the Kafka tests.
pub const TOPIC: &str = "logferry";
/// A router's Kafka settings: quick heartbeats and session expiry.
pub fn router_flags() -> Vec<&'static str> {
    vec![
        "--kafka-property",
        "session.timeout.ms=6000",
        "--kafka-property",
        "heartbeat.interval.ms=500",
    ]
}

/// `--kafka-brokers`, `--kafka-topic` and the connection properties `broker` needs
/// (a role's SASL login is the caller's to add).
pub fn kafka_flags(broker: &Broker) -> Vec<String> {
    let mut flags = vec![
        "--kafka-brokers".into(),
        broker.brokers(),
        "--kafka-topic".into(),
        TOPIC.into(),
    ];
    flags.extend(property_flags(broker.connection_properties()));
    flags
}

/// `logferry ROLE` (`ingest`, `route`) on `data`, talking to `broker`, with `extra`
/// flags after the Kafka ones (a later `--kafka-property` wins).
pub fn start(role: &str, data: &Path, port: u16, broker: &Broker, extra: &[&str]) -> Backend {
    let mut args: Vec<String> = kafka_flags(broker);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Backend::start_role(role, data, port, &args)
}

/// `logferry send` of `lines` lines `agent-{agent} line {n}` to `endpoint`, in the
/// background, 1,000 lines per `pace`; chunks of 16K so batches are many and small.
pub fn send(ingest: &Backend, endpoint: &str, agent: usize, lines: usize, pace: Duration) -> Child {
    let mut env = ingest.credentials_env();
    env.retain(|(k, _)| k != "LOGFERRY_ENDPOINT");
    env.push(("LOGFERRY_ENDPOINT".into(), endpoint.into()));
    let mut child = Command::new(backend_bin())
        .args(["send", "-", "--tag", &format!("agent.{agent}")])
        .args(["--chunk-bytes", "16K", "--timeout", "5m"])
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        for block in 0..lines.div_ceil(1000) {
            let mut text = String::new();
            for n in block * 1000..((block + 1) * 1000).min(lines) {
                text.push_str(&format!("agent-{agent} line {n:07}\n"));
            }
            stdin.write_all(text.as_bytes()).unwrap();
            std::thread::sleep(pace);
        }
    });
    child
}

/// Asserts that the files under `dir` hold `agent`'s `lines` lines (as [`send`] makes
/// them) once each and in order.
pub fn assert_agent_lines(dir: &Path, agent: usize, lines: usize) {
    let prefix = format!("agent-{agent} ");
    let got: Vec<String> = read_jsonl_tree(dir)
        .iter()
        .map(|r| r["record"]["log"].as_str().unwrap().to_string())
        .filter(|l| l.starts_with(&prefix))
        .collect();
    let want: Vec<String> = (0..lines)
        .map(|n| format!("agent-{agent} line {n:07}"))
        .collect();
    assert_eq!(got, want, "agent {agent}: every record once, in order");
}

/// Waits until the files under `dir` hold `agents` agents' `lines` lines each (as
/// [`send`] makes them), then asserts each agent's are there once and in order.
pub fn assert_agents_landed(dir: &Path, agents: usize, lines: usize) {
    assert_eq!(
        wait_lines(dir, agents * lines, Duration::from_secs(90)),
        agents * lines
    );
    // Long enough for a duplicate to show.
    std::thread::sleep(Duration::from_secs(1));
    for agent in 0..agents {
        assert_agent_lines(dir, agent, lines);
    }
}

/// [`send`] of agent 0's `lines` lines to `ingest` on `port`, waiting until every
/// line is acked.
pub fn send_all(ingest: &Backend, port: u16, lines: usize, pace: Duration) {
    let mut sender = send(ingest, &format!("https://127.0.0.1:{port}"), 0, lines, pace);
    assert!(sender.wait().unwrap().success(), "the sender gave up");
}

/// Polls until the files under `dir` hold at least `at_least` lines or `timeout`
/// passes; returns the count.
pub fn wait_lines(dir: &Path, at_least: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = count_jsonl_lines(dir);
        if n >= at_least || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts [`send`] of `agent`'s `lines` lines to `ingest` on `port` while Kafka
/// refuses the ingester's batches; waits until ingest has refused one for `reason`
/// (`logferry_kafka_produce_failures_total{reason}`) with a log line `cannot store a
/// batch: ...` holding every one of `says`, and checks that nothing is acked
/// meanwhile. Returns the sender, still running.
pub fn send_refused(
    ingest: &Backend,
    port: u16,
    agent: usize,
    lines: usize,
    (reason, says): (&str, &[&str]),
) -> Child {
    let mut sender = send(
        ingest,
        &format!("https://127.0.0.1:{port}"),
        agent,
        lines,
        Duration::from_millis(10),
    );
    let refused = ingest.wait_for_metric(
        &format!("logferry_kafka_produce_failures_total{{reason=\"{reason}\"}}"),
        1.0,
        Duration::from_secs(60),
    );
    assert!(
        refused >= 1.0,
        "no refusal for {reason}: {:#?}",
        ingest.stderr()
    );
    ingest.wait_for_stderr("refusal saying why", Duration::from_secs(10), |l| {
        l.contains("cannot store a batch: ") && says.iter().all(|s| l.contains(s))
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        sender.try_wait().unwrap().is_none(),
        "nothing is acked meanwhile"
    );
    sender
}
