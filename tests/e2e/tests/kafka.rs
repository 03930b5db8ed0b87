//! Kafka mode against a real Kafka-protocol broker (tansu, SQLite storage): stateless
//! `logferry ingest` tiers, Kafka, `logferry route` routers sharing one data
//! directory. Every record lands exactly once, in per-agent order, across kill -9
//! of an ingester (its agent fails over to the other) and of a router, a router that
//! stops, and a broker restart; refusals (queue full, message too large, topic ACLs)
//! are clear and lose nothing.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use logferry_e2e::ACME_DESTINATIONS;
use logferry_e2e::backend::{backend_bin, count_jsonl_lines, free_port, read_jsonl_tree, wait_for};
use logferry_e2e::kafka::{
    Broker, TOPIC, assert_agent_lines, assert_agents_landed, kafka_flags, router_flags, send,
    send_all, send_refused, start, wait_lines,
};
use logferry_e2e::sinks::S3Server;

#[test]
fn kafka_mode_delivers_every_record_once_across_ingester_router_and_broker_faults() {
    const AGENTS: usize = 3;
    const LINES: usize = 70_000; // 210,000 records
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(broker_dir.path(), free_port());
    broker.create_topic(TOPIC, 3);

    let data = tempfile::tempdir().unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let ingest_a = start("ingest", data.path(), port_a, &broker, &[]);
    let ingest_b = start("ingest", data.path(), port_b, &broker, &[]);
    let router_1 = start("route", data.path(), 0, &broker, &router_flags());
    let router_2 = start("route", data.path(), 0, &broker, &router_flags());

    // Each agent knows both ingesters and starts on its own; agent 2's goes away.
    let endpoints =
        |first: u16, second: u16| format!("https://127.0.0.1:{first},https://127.0.0.1:{second}");
    let mut senders: Vec<Child> = (0..AGENTS)
        .map(|agent| {
            let (first, second) = if agent == 2 {
                (port_b, port_a)
            } else {
                (port_a, port_b)
            };
            // About 35 s of traffic, so every fault lands mid-stream.
            send(
                &ingest_a,
                &endpoints(first, second),
                agent,
                LINES,
                Duration::from_millis(500),
            )
        })
        .collect();
    let files = data.path().join("files");
    let total = AGENTS * LINES;

    // Faults, each once a part of the records has landed.
    assert!(wait_lines(&files, total / 6, Duration::from_secs(120)) >= total / 6);
    router_1.kill();
    eprintln!("router 1 killed at {} lines", count_jsonl_lines(&files));
    // It comes back once its session has expired (6 s): tansu 0.6 drops a dead member
    // when a member joins, not on the heartbeats of the others, so the restart is what
    // hands its partitions out again. Whoever gets them resumes each from its
    // checkpoint in the shared data directory, truncating what the dead router wrote
    // after the last one.
    std::thread::sleep(Duration::from_secs(8));
    let router_1 = start("route", data.path(), 0, &broker, &router_flags());
    eprintln!("router 1 restarted at {} lines", count_jsonl_lines(&files));
    assert!(wait_lines(&files, total / 2, Duration::from_secs(120)) >= total / 2);
    // Ingester B does not come back: agent 2 fails over to A.
    ingest_b.kill();
    eprintln!("ingester B killed at {} lines", count_jsonl_lines(&files));
    assert!(wait_lines(&files, total * 2 / 3, Duration::from_secs(120)) >= total * 2 / 3);
    broker.restart();
    eprintln!("broker restarted at {} lines", count_jsonl_lines(&files));

    for sender in &mut senders {
        let status = sender.wait().unwrap();
        let mut stderr = String::new();
        use std::io::Read;
        let _ = sender.stderr.take().unwrap().read_to_string(&mut stderr);
        assert!(status.success(), "a sender failed: {stderr}");
    }
    let landed = wait_lines(&files, total, Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(2));
    let landed = landed.max(count_jsonl_lines(&files));
    if landed != total {
        let tail = |lines: Vec<String>| lines[lines.len().saturating_sub(40)..].join("\n");
        eprintln!("router 2:\n{}", tail(router_2.stderr()));
        eprintln!("ingest A:\n{}", tail(ingest_a.stderr()));
    }
    assert_eq!(
        landed, total,
        "records in the file sink (losses or duplicates)"
    );

    // Exactly once, and each agent's records in order within its partition's file.
    let mut by_agent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in read_jsonl_tree(&files) {
        let line = record["record"]["log"].as_str().unwrap().to_string();
        let agent = line.split(' ').next().unwrap().to_string();
        by_agent.entry(agent).or_default().push(line);
    }
    assert_eq!(by_agent.len(), AGENTS);
    for (agent, lines) in &by_agent {
        let want: Vec<String> = (0..LINES).map(|n| format!("{agent} line {n:07}")).collect();
        assert_eq!(lines.len(), LINES, "{agent}");
        assert!(
            lines == &want,
            "{agent}: records out of order or not exactly once"
        );
    }
    drop((ingest_a, router_1, router_2, broker));
}

#[test]
fn a_missing_topic_and_a_broker_down_at_start_are_clear_and_nothing_is_lost() {
    let broker_dir = tempfile::tempdir().unwrap();
    let broker_port = free_port();
    let data = tempfile::tempdir().unwrap();

    // Broker down at start: ingest serves anyway, refuses batches with UNAVAILABLE,
    // and the agent keeps them spooled.
    let fake = Broker::unstarted(broker_dir.path(), broker_port);
    let port = free_port();
    let ingest = start("ingest", data.path(), port, &fake, &[]);
    assert!(
        ingest
            .stderr()
            .iter()
            .any(|l| l.contains("cannot reach Kafka at")),
        "{:#?}",
        ingest.stderr()
    );
    let mut sender = send(
        &ingest,
        &format!("https://127.0.0.1:{port}"),
        0,
        5_000,
        Duration::ZERO,
    );
    // librdkafka holds a batch up to message.timeout.ms (10 s) before the refusal.
    let deadline = Instant::now() + Duration::from_secs(40);
    while !ingest
        .stderr()
        .iter()
        .any(|l| l.contains("cannot store a batch: Kafka cannot be reached"))
    {
        assert!(
            Instant::now() < deadline,
            "no refusal logged: {:#?}",
            ingest.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        sender.try_wait().unwrap().is_none(),
        "nothing can be acked yet"
    );

    // The broker comes up, without the topic: a new ingester says what to run.
    let broker = Broker::start(broker_dir.path(), broker_port);
    let out = Command::new(backend_bin())
        .arg("ingest")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(kafka_flags(&broker))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Kafka topic `logferry` does not exist")
            && stderr.contains("logferry kafka init --kafka-brokers"),
        "{stderr}"
    );

    // Once the topic exists and a router runs, the spooled lines arrive, once.
    broker.create_topic(TOPIC, 2);
    let _router = start("route", data.path(), 0, &broker, &router_flags());
    let status = sender.wait().unwrap();
    assert!(status.success(), "the sender gave up");
    let files = data.path().join("files");
    assert_eq!(wait_lines(&files, 5_000, Duration::from_secs(60)), 5_000);
    std::thread::sleep(Duration::from_secs(1));
    let mut lines: Vec<String> = read_jsonl_tree(&files)
        .iter()
        .map(|r| r["record"]["log"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(lines.len(), 5_000, "exactly once");
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 5_000);
}

/// A router stopped on purpose (SIGTERM: a rolling upgrade, a scale-down) finishes its
/// step, leaves each destination's group and so hands its partitions to the router
/// that stays (here with `--consumers 2`, two members of the group), which takes them
/// over from their checkpoints: no restart, no new member. Every record arrives once,
/// in order. (A router killed with -9 is evicted
/// when its session expires; with tansu 0.6 that takes a member joining, see
/// `kafka_mode_delivers_every_record_once_across_ingester_router_and_broker_faults`.)
#[test]
fn a_stopped_router_hands_its_partitions_to_the_one_that_stays() {
    const AGENTS: usize = 4;
    const LINES: usize = 20_000;
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_dir.path(), free_port());
    broker.create_topic(TOPIC, 4);
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let ingest = start("ingest", data.path(), port, &broker, &[]);
    let router_1 = start("route", data.path(), 0, &broker, &router_flags());
    // Router 2 runs two consumers per destination, each a member of the group.
    let mut flags = router_flags();
    flags.extend(["--consumers", "2"]);
    let router_2 = start("route", data.path(), 0, &broker, &flags);
    assert!(
        router_2
            .stderr()
            .iter()
            .any(|l| l.contains("to 1 destination(s), 2 consumer(s) each")),
        "{:#?}",
        router_2.stderr()
    );
    let assigned_since = |router: &logferry_e2e::backend::Backend, from: usize| -> Vec<i32> {
        let mut partitions: Vec<i32> = router.stderr()[from.min(router.stderr().len())..]
            .iter()
            .filter(|l| l.contains("partition assigned") || l.contains("partition opened"))
            .filter_map(|l| {
                l.split("partition=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        partitions.sort();
        partitions.dedup();
        partitions
    };
    // The two share the partitions before one of them goes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while assigned_since(&router_2, 0).is_empty() {
        assert!(Instant::now() < deadline, "{:#?}", router_2.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut senders: Vec<Child> = (0..AGENTS)
        .map(|agent| {
            let endpoint = format!("https://127.0.0.1:{port}");
            send(&ingest, &endpoint, agent, LINES, Duration::from_millis(400))
        })
        .collect();
    let files = data.path().join("files");
    let total = AGENTS * LINES;
    assert!(wait_lines(&files, total / 3, Duration::from_secs(60)) >= total / 3);
    let before = router_2.stderr().len();
    let stopped = router_1.stop();
    eprintln!("router 1 stopped at {} lines", count_jsonl_lines(&files));
    assert!(
        stopped.iter().any(|l| l.contains("stopped")),
        "{stopped:#?}"
    );
    // Router 2 alone holds every partition now.
    let deadline = Instant::now() + Duration::from_secs(30);
    while assigned_since(&router_2, before) != [0, 1, 2, 3] {
        assert!(Instant::now() < deadline, "{:#?}", router_2.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    for sender in &mut senders {
        assert!(sender.wait().unwrap().success(), "a sender gave up");
    }
    assert_eq!(wait_lines(&files, total, Duration::from_secs(120)), total);
    std::thread::sleep(Duration::from_secs(2));
    for agent in 0..AGENTS {
        assert_agent_lines(&files, agent, LINES);
    }
}

/// Two destinations, each its own consumer group: while the Elasticsearch one fails
/// for 30 s (an in-test bulk server answering 503; no Elasticsearch can be installed
/// here), the file one takes every record; then Elasticsearch catches up with each
/// record once.
#[test]
fn a_failing_destination_holds_back_no_other_in_kafka_mode() {
    const LINES: usize = 20_000;
    let es = logferry_e2e::sinks::Elasticsearch::start_bulk(0);
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_dir.path(), free_port());
    broker.create_topic(TOPIC, 2);
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("tenants.yaml"),
        format!(
            "tenants:\n  - name: acme\n    access_keys:\n      - key: ak_a\n    \
             destinations:\n      - name: files\n        type: file\n      \
             - name: search\n        type: elasticsearch\n        url: {}\n",
            es.url()
        ),
    )
    .unwrap();
    let port = free_port();
    let ingest = start("ingest", data.path(), port, &broker, &[]);
    let router = start("route", data.path(), 0, &broker, &router_flags());
    es.set_down(true);
    let outage = Instant::now();
    let mut sender = send(
        &ingest,
        &format!("https://127.0.0.1:{port}"),
        0,
        LINES,
        Duration::from_millis(50),
    );
    let files = data.path().join("destinations/acme.files");
    assert_eq!(wait_lines(&files, LINES, Duration::from_secs(60)), LINES);
    let file_took = outage.elapsed();
    assert!(sender.wait().unwrap().success());
    assert!(
        file_took < Duration::from_secs(30),
        "the file destination took {file_took:?}"
    );
    assert_eq!(es.count(), 0, "Elasticsearch is down");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !router
        .stderr()
        .iter()
        .any(|l| l.contains("delivery failed") && l.contains("acme.search"))
    {
        assert!(Instant::now() < deadline, "the failing destination says so");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed()));
    es.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(90);
    while es.count() < LINES {
        assert!(
            Instant::now() < deadline,
            "{} of {LINES} in Elasticsearch",
            es.count()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let state = es.state.lock().unwrap();
    let mut got: Vec<String> = state
        .docs
        .values()
        .map(|d| d["record"]["log"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let want: Vec<String> = (0..LINES).map(|n| format!("agent-0 line {n:07}")).collect();
    assert_eq!(got, want, "every record once in Elasticsearch");
    assert!(state.violations.is_empty(), "{:?}", state.violations);
    assert_eq!(
        count_jsonl_lines(&files),
        LINES,
        "and once in the file destination"
    );
    let log = router.stderr();
    let said = |what: &str| {
        log.iter()
            .filter(|l| l.contains(what) && l.contains("acme.search"))
            .count()
    };
    // One line per failing partition, not one per retry; and one when it recovers.
    assert!((1..=2).contains(&said("delivery failed")), "{log:#?}");
    assert_eq!(
        said("delivering again"),
        said("delivery failed"),
        "{log:#?}"
    );
    eprintln!("file destination done {file_took:?} into the outage; Elasticsearch caught up");
    drop((ingest, router, broker));
}

/// A batch larger than the producer's `message.max.bytes`: ingest refuses it with
/// RESOURCE_EXHAUSTED and a log line that says what to change, the agent keeps it
/// (here `send` exits 1 naming what is not acked), and nothing reaches the topic.
#[test]
fn a_batch_larger_than_kafka_takes_is_refused_clearly() {
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_dir.path(), free_port());
    broker.create_topic(TOPIC, 1);
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let ingest = start(
        "ingest",
        data.path(),
        port,
        &broker,
        &["--kafka-property", "message.max.bytes=2000"],
    );
    let mut env = ingest.credentials_env();
    env.retain(|(k, _)| k != "LOGFERRY_ENDPOINT");
    env.push((
        "LOGFERRY_ENDPOINT".into(),
        format!("https://127.0.0.1:{port}"),
    ));
    let mut child = Command::new(backend_bin())
        .args(["send", "-", "--chunk-bytes", "16K", "--timeout", "5s"])
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for n in 0..2000 {
        // Random-looking text, so the zstd batch stays above 2000 bytes.
        writeln!(
            stdin,
            "line {n} {:x}",
            (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        )
        .unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "send cannot succeed: {stderr}");
    assert!(
        stderr.contains("not acked") || stderr.contains("unacked"),
        "{stderr}"
    );
    assert!(
        stderr.contains("larger than Kafka accepts"),
        "the agent is told why: {stderr}"
    );
    assert!(
        ingest
            .stderr()
            .iter()
            .any(|l| l.contains("the batch is larger than Kafka accepts")),
        "ingest says why"
    );
    drop((ingest, broker));
}

/// TLS to the broker: librdkafka is built with OpenSSL, and `kafka init`, `ingest` and
/// `route` reach a broker that takes TLS only (a rustls front before tansu, which
/// cannot be started with TLS; see [`Broker::start_tls`]) with `--kafka-property
/// security.protocol=ssl` and the CA. Every record arrives once, in order, and each
/// message carries its tenant, seq range and tag as headers.
#[test]
fn ingest_and_route_talk_tls_to_the_broker() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    const LINES: usize = 20_000;
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_tls(broker_dir.path(), free_port());
    // The port takes TLS only: a plaintext client learns nothing from it.
    let plain: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .create()
        .unwrap();
    assert!(plain.fetch_metadata(None, Duration::from_secs(3)).is_err());
    drop(plain);
    broker.create_topic(TOPIC, 2);

    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let ingest = start("ingest", data.path(), port, &broker, &[]);
    let _router = start("route", data.path(), 0, &broker, &router_flags());
    send_all(&ingest, port, LINES, Duration::from_millis(20));
    let files = data.path().join("files");
    assert_eq!(wait_lines(&files, LINES, Duration::from_secs(60)), LINES);
    std::thread::sleep(Duration::from_secs(1));
    assert_agent_lines(&files, 0, LINES);

    // Each message's headers say whose batch it is, with its tag, in the clear.
    let messages = broker.read_topic(TOPIC);
    assert!(!messages.is_empty());
    for message in &messages {
        let values = |key: &str| -> Vec<&str> {
            message
                .headers
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(values("logferry.tenant"), ["dev"], "{:?}", message.headers);
        assert_eq!(values("logferry.tag"), ["agent.0"], "{:?}", message.headers);
        let (first, last) = (values("logferry.first_seq"), values("logferry.last_seq"));
        assert!(first.len() == 1 && last.len() == 1, "{:?}", message.headers);
    }
}

/// A produce queue that fills while the broker stalls (SIGSTOP): ingest refuses the
/// next batch with `RESOURCE_EXHAUSTED`, a log line saying what to change, and
/// `logferry_kafka_produce_failures_total{reason="queue_full"}`; the agent keeps its
/// batches, and once the broker goes on every record arrives once, in order.
#[test]
fn a_full_produce_queue_is_refused_clearly_and_nothing_is_lost() {
    const LINES: usize = 3_000;
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_dir.path(), free_port());
    broker.create_topic(TOPIC, 1);
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let ingest = start(
        "ingest",
        data.path(),
        port,
        &broker,
        &["--kafka-property", "queue.buffering.max.messages=1"],
    );
    let _router = start("route", data.path(), 0, &broker, &router_flags());
    broker.pause(true);
    // Ingest stores one batch of a stream at a time: two agents, two batches at once.
    let mut senders: Vec<Child> = (0..2)
        .map(|agent| {
            send(
                &ingest,
                &format!("https://127.0.0.1:{port}"),
                agent,
                LINES,
                Duration::from_millis(20),
            )
        })
        .collect();
    let full = ingest.wait_for_metric(
        "logferry_kafka_produce_failures_total{reason=\"queue_full\"}",
        1.0,
        Duration::from_secs(60),
    );
    assert!(
        full >= 1.0,
        "no queue-full refusal counted: {:#?}",
        ingest.stderr()
    );
    assert!(
        ingest
            .stderr()
            .iter()
            .any(|l| l.contains("cannot store a batch: the produce queue is full")),
        "{:?}",
        ingest.stderr()
    );
    broker.pause(false);
    for sender in &mut senders {
        assert!(sender.wait().unwrap().success(), "a sender gave up");
    }
    assert_agents_landed(&data.path().join("files"), 2, LINES);
}

/// Fencing between routers that share a data directory: a partition's state is
/// written under `router/<destination>.p<N>.lock`. While another process holds that
/// lock (here the test, standing in for a router that lost the partition while
/// paused and has not noticed), the router that was assigned the partition waits,
/// reads nothing for it and writes nothing; once the lock is free it takes the
/// partition over from the checkpoint, and every record arrives once, in order.
#[test]
fn a_partition_another_router_still_holds_waits_for_its_lock() {
    const LINES: usize = 5_000;
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_dir.path(), free_port());
    broker.create_topic(TOPIC, 1);
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("router")).unwrap();
    let held = std::fs::File::create(data.path().join("router/files.p0.lock")).unwrap();
    held.try_lock().unwrap();

    let port = free_port();
    let ingest = start("ingest", data.path(), port, &broker, &[]);
    let router = start("route", data.path(), 0, &broker, &router_flags());
    send_all(&ingest, port, LINES, Duration::from_millis(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !router.stderr().iter().any(|l| {
        l.contains("partition assigned but not opened yet")
            && l.contains("still held by another router")
    }) {
        assert!(Instant::now() < deadline, "{:#?}", router.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let files = data.path().join("files");
    assert_eq!(
        count_jsonl_lines(&files),
        0,
        "nothing is written without the lock"
    );

    drop(held);
    assert_eq!(wait_lines(&files, LINES, Duration::from_secs(60)), LINES);
    std::thread::sleep(Duration::from_secs(1));
    assert_agent_lines(&files, 0, LINES);
    assert!(
        router
            .stderr()
            .iter()
            .any(|l| l.contains("partition opened; starting at")),
        "{:#?}",
        router.stderr()
    );
}

/// S3 in Kafka mode batches by time as it does in `serve`: the router holds a
/// partition's records until `batch_max_age` has passed since the first (or half a
/// step's bytes wait), so six seconds of traffic in 12 bursts make a handful of
/// objects, not one per burst (12 or more); every record lands once.
#[test]
fn s3_in_kafka_mode_writes_an_object_per_batch_max_age() {
    const LINES: usize = 12_000;
    let s3 = S3Server::start();
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("s3-secret");
    std::fs::write(&secret, S3Server::SECRET_KEY).unwrap();
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_dir.path(), free_port());
    broker.create_topic(TOPIC, 1);
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("tenants.yaml"),
        format!(
            "{ACME_DESTINATIONS}
      - name: archive
        type: s3
        url: {}
        bucket: {}
        access_key_id: {}
        secret_access_key_file: {}
        batch_max_age: 2s
",
            s3.url(),
            S3Server::BUCKET,
            S3Server::ACCESS_KEY,
            secret.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let ingest = start("ingest", data.path(), port, &broker, &[]);
    let _router = start("route", data.path(), 0, &broker, &router_flags());
    send_all(&ingest, port, LINES, Duration::from_millis(500));
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3.lines().0.len() < LINES {
        assert!(
            Instant::now() < deadline,
            "{} of {LINES} lines",
            s3.lines().0.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let mut got: Vec<String> = s3
        .lines()
        .0
        .iter()
        .map(|l| {
            let record: serde_json::Value = serde_json::from_str(l).unwrap();
            record["record"]["log"].as_str().unwrap().to_string()
        })
        .collect();
    got.sort();
    let want: Vec<String> = (0..LINES).map(|n| format!("agent-0 line {n:07}")).collect();
    assert_eq!(got, want, "every record once");
    let objects = s3.objects(".ndjson.zst");
    assert!(
        (2..=6).contains(&objects.len()),
        "{} objects for about 6 s of traffic at batch_max_age 2s: {:?}",
        objects.len(),
        objects.keys().collect::<Vec<_>>()
    );
}

/// Topic ACLs: while the broker refuses this ingester's writes
/// (`TOPIC_AUTHORIZATION_FAILED`; a stand-in before tansu, which stores ACLs but does
/// not enforce them, see [`Broker::start_acl`]), ingest refuses batches with
/// UNAVAILABLE, a log line saying why and
/// `logferry_kafka_produce_failures_total{reason="authorization"}`, and the agent keeps
/// them; once the ACL lets it write, every record arrives once, in order.
///
/// A batch refused for good makes librdkafka's idempotent producer bump its epoch
/// (KIP-360). tansu 0.6 cannot take that: its storage panics on the first batch of
/// the new epoch and answers every request with an error until it restarts. Ingest
/// then replaces its producer (a new producer id, numbered afresh), and the test
/// restarts tansu once it has; against Apache Kafka neither is needed.
#[test]
fn a_topic_acl_refusal_is_clear_and_nothing_is_lost() {
    const LINES: usize = 3_000;
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_acl(broker_dir.path(), free_port());
    broker.create_topic(TOPIC, 2);
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let ingest = start("ingest", data.path(), port, &broker, &[]);
    let _router = start("route", data.path(), 0, &broker, &router_flags());
    send_all(&ingest, port, LINES, Duration::from_millis(10));

    broker.deny_writes(true);
    let mut sender = send_refused(
        &ingest,
        port,
        1,
        LINES,
        (
            "authorization",
            &[
                "Kafka does not let this ingester write the topic",
                "TopicAuthorizationFailed",
            ],
        ),
    );

    broker.deny_writes(false);
    ingest.wait_for_stderr("producer replaced", Duration::from_secs(60), |l| {
        l.contains("replaced the Kafka producer, which could produce no more")
    });
    broker.restart();
    wait_for("the sender to finish", Duration::from_secs(90), || {
        sender.try_wait().unwrap().is_some()
    });
    assert!(sender.wait().unwrap().success(), "the sender gave up");
    assert_agents_landed(&data.path().join("files"), 2, LINES);
}
