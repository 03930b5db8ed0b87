//! A real Kafka-protocol broker for the Kafka tests: `tansu` with SQLite storage in a
//! temporary directory, on a free loopback port, killed and restarted by the tests.
//!
//! `.ci/run` installs it (`cargo install tansu --locked --features dynostore,libsql`);
//! `TANSU_BIN` overrides where it is looked for.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
}

impl Broker {
    /// Starts a broker storing in `dir/tansu.db` and waits until it accepts
    /// connections.
    pub fn start(dir: &Path, port: u16) -> Broker {
        let mut broker = Broker {
            port,
            listen: port,
            dir: dir.to_path_buf(),
            child: None,
            tls: None,
        };
        broker.spawn();
        broker
    }

    /// A broker that clients reach over TLS only, on `localhost:port`.
    ///
    /// tansu has no TLS listener, so a TLS front (rustls, in this process) takes the
    /// connections on `port` and forwards the decrypted bytes to tansu's plaintext
    /// listener on another loopback port; tansu advertises the front, so librdkafka
    /// talks TLS to every broker address it learns. What is tested is librdkafka's
    /// TLS client (`security.protocol=ssl`, certificate and host name checked against
    /// [`Broker::client_properties`]'s CA), not a broker's TLS.
    pub fn start_tls(dir: &Path, port: u16) -> Broker {
        let pki = logferry_backend::pki::ensure_dev_pki(&dir.join("tls")).expect("a test PKI");
        let listen = crate::backend::free_port();
        let runtime = crate::tls_front(port, listen, &pki);
        let mut broker = Broker {
            port,
            listen,
            dir: dir.to_path_buf(),
            child: None,
            tls: Some((runtime, pki.ca.expect("the development CA"))),
        };
        broker.spawn();
        broker
    }

    /// The librdkafka properties a client needs: TLS with the front's CA, if any.
    pub fn client_properties(&self) -> Vec<(String, String)> {
        match &self.tls {
            Some((_, ca)) => vec![
                ("security.protocol".into(), "ssl".into()),
                ("ssl.ca.location".into(), ca.display().to_string()),
            ],
            None => Vec::new(),
        }
    }

    /// [`Broker::client_properties`] as `--kafka-property` flags.
    pub fn client_flags(&self) -> Vec<String> {
        self.client_properties()
            .into_iter()
            .flat_map(|(k, v)| ["--kafka-property".to_string(), format!("{k}={v}")])
            .collect()
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.listen);
        let advertised = match self.tls {
            Some(_) => format!("tcp://localhost:{}", self.port),
            None => url.clone(),
        };
        let log = std::fs::File::create(self.dir.join("tansu.log")).expect("tansu log file");
        let child = Command::new(tansu_bin())
            .arg("broker")
            .args([
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("tansu log"))
            .stderr(log)
            .spawn()
            .expect("spawn tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.listen)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 30 s; its log:\n{}",
                self.listen,
                std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A broker that is not running (yet): its address, for "broker down" tests.
    pub fn unstarted(dir: &Path, port: u16) -> Broker {
        Broker {
            port,
            listen: port,
            dir: dir.to_path_buf(),
            child: None,
            tls: None,
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
            .args(self.client_flags())
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
        use rdkafka::message::Message;
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
            out.push(TopicMessage {
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
