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
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker storing in `dir/tansu.db` and waits until it accepts
    /// connections.
    pub fn start(dir: &Path, port: u16) -> Broker {
        let mut broker = Broker {
            port,
            dir: dir.to_path_buf(),
            child: None,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join("tansu.log")).expect("tansu log file");
        let child = Command::new(tansu_bin())
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("tansu log"))
            .stderr(log)
            .spawn()
            .expect("spawn tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 30 s; its log:\n{}",
                self.port,
                std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A broker that is not running (yet): its address, for "broker down" tests.
    pub fn unstarted(dir: &Path, port: u16) -> Broker {
        Broker {
            port,
            dir: dir.to_path_buf(),
            child: None,
        }
    }

    /// `host:port` for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `topic` with `partitions` partitions (`logferry kafka init`).
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let out = Command::new(crate::backend::backend_bin())
            .args(["kafka", "init", "--partitions", &partitions.to_string()])
            .args(["--kafka-brokers", &self.brokers(), "--kafka-topic", topic])
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
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", "logferry-e2e-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.max.bytes", "104857600")
            .set("max.partition.fetch.bytes", "104857600")
            .create()
            .expect("a Kafka consumer")
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
