//! The Kafka-topic destination against a real Kafka-protocol broker (`tansu`, see
//! [`logferry_e2e::kafka`]): every record is published once across `kill -9`s of the
//! backend and a broker restart, keyed as configured, with its identity in headers;
//! a record Kafka cannot take is dead-lettered with Kafka's reason.

use std::collections::BTreeSet;
use std::time::Duration;

use fluent_bit_sys::FLB_OK;
use logferry_e2e::backend::{
    Backend, acme_credentials, count_jsonl_lines, dead_letters, free_port, read_jsonl_tree,
    wait_for,
};
use logferry_e2e::host::Host;
use logferry_e2e::kafka::{Broker, TopicMessage};
use logferry_e2e::{
    ACME_DESTINATIONS, assert_same, canonical, chunk_of, expected_records, fixture, plugin_path,
};
use rand::Rng;
use serde_json::{Value, json};

const TOPIC: &str = "records";

#[test]
fn a_kafka_topic_gets_every_record_once_across_sigkills_and_a_broker_restart() {
    const KILLS: usize = 5;
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(broker_dir.path(), free_port());
    broker.create_topic(TOPIC, 3);
    let registry = format!(
        "{ACME_DESTINATIONS}
      - name: files
        type: file
      - name: stream
        type: kafka
        brokers: {brokers}
        topic: {TOPIC}
        key: tag
        compression: lz4
",
        brokers = broker.brokers(),
    );
    let data = tempfile::tempdir().unwrap();
    let data = data.path();
    std::fs::write(data.join("tenants.yaml"), &registry).unwrap();
    let port = free_port();
    let mut backend = Backend::start(data, port, &[]);
    let credentials = acme_credentials(&backend, data);

    // One record over librdkafka's default `message.max.bytes` (1,000,000).
    let (probe, _) = chunk_of(
        1_795_413_000,
        &[json!({"big": "x".repeat(1_200_000)}), json!({"small": 1})],
    );
    let big = fixture("tail-large-14740-records");
    let spool = tempfile::tempdir().unwrap();
    let host = Host::load(&plugin_path()).unwrap();
    let instance = host
        .init(&credentials.plugin_properties(spool.path()))
        .unwrap();
    assert_eq!(instance.flush("probe", &probe), FLB_OK);
    assert_eq!(instance.flush("big.0", &big.chunk), FLB_OK);
    let mut expected_tags = vec!["probe".to_string(), "big.0".to_string()];

    let files = data.join("destinations/acme.files");
    let published = |broker: &Broker| broker.count(TOPIC);
    let mut rng = rand::rng();
    for kill in 0..KILLS {
        let tag = format!("big.{}", kill + 1);
        assert_eq!(instance.flush(&tag, &big.chunk), FLB_OK);
        expected_tags.push(tag);
        let before = published(&broker);
        wait_for(
            &format!("publishing before kill {kill}"),
            Duration::from_secs(60),
            || published(&broker) > before,
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        backend.kill();
        backend = Backend::start(data, port, &[]);
    }
    // The broker restarts while a copy is being published.
    assert_eq!(instance.flush("big.after", &big.chunk), FLB_OK);
    expected_tags.push("big.after".into());
    let before = published(&broker);
    wait_for(
        "publishing before the restart",
        Duration::from_secs(60),
        || published(&broker) > before,
    );
    broker.restart();

    let total = 2 + (expected_tags.len() - 1) * expected_records(&big, "x").len();
    let want = (total - 1) as i64;
    wait_for(
        "every record in both destinations",
        Duration::from_secs(180),
        || count_jsonl_lines(&files) == total && published(&broker) >= want,
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();
    backend.stop();

    let messages = broker.read_topic(TOPIC);
    let records: Vec<Value> = messages
        .iter()
        .map(|m| serde_json::from_str(&m.value).unwrap())
        .collect();
    let file_records = read_jsonl_tree(&files);
    let not_big = |r: &Value| r["record"].get("big").is_none();
    let without_id = |r: &Value| {
        let mut r = r.clone();
        r.as_object_mut().unwrap().remove("id");
        r
    };
    // The topic holds every record of the file destination but the big one, once.
    assert_same(
        "the Kafka destination",
        &canonical(records.iter().map(without_id)),
        &canonical(file_records.into_iter().filter(not_big)),
    );
    assert_eq!(messages.len() as i64, want);
    let ids: BTreeSet<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), messages.len(), "identities are unique");
    for (message, record) in messages.iter().zip(&records) {
        assert!(
            message.value.starts_with("{\"id\":\""),
            "the id comes first"
        );
        assert_eq!(
            message.key.as_deref(),
            Some(record["tag"].as_str().unwrap())
        );
        assert_eq!(record["tenant"], "acme");
        let agent = record["agent"].as_str().unwrap();
        assert!(
            record["id"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{agent}-"))
        );
    }
    // One tag, one partition: each copy's records keep their order, with ids
    // `<agent>-<seq>-0`, `-1`, `-2`, ...
    let want_order: Vec<Value> = expected_records(&big, "big.0")
        .into_iter()
        .map(|r| r["record"].clone())
        .collect();
    for tag in &expected_tags[1..] {
        let copy: Vec<(&TopicMessage, &Value)> = messages
            .iter()
            .zip(&records)
            .filter(|(_, r)| r["tag"] == *tag)
            .collect();
        let partitions: BTreeSet<i32> = copy.iter().map(|(m, _)| m.partition).collect();
        assert_eq!(partitions.len(), 1, "{tag}");
        assert!(
            copy.iter().map(|(_, r)| &r["record"]).eq(want_order.iter()),
            "{tag}"
        );
        let chunk = copy[0].1["id"]
            .as_str()
            .unwrap()
            .rsplit_once('-')
            .unwrap()
            .0;
        for (n, (_, record)) in copy.iter().enumerate() {
            assert_eq!(record["id"], format!("{chunk}-{n}"), "{tag}");
        }
    }

    let letters = dead_letters(data, "acme.stream");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["tag"], "probe");
    assert_eq!(letters[0]["index"], 0);
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("Kafka refused the record:") && reason.contains("too large"),
        "{reason}"
    );
    assert!(dead_letters(data, "acme.files").is_empty());
}
