//! Damaged state on disk and bad input: a torn spool tail, a torn buffer tail, a chunk
//! that is not msgpack, a wrong token. Nothing that was acknowledged is lost, and
//! every loss or rejection is said in a log line or a file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fluent_bit_sys::FLB_OK;
use logferry_e2e::backend::{Backend, free_port, read_jsonl_tree, wait_for_lines};
use logferry_e2e::host::{Host, log};
use logferry_e2e::{expected_records, fixture, plugin_path, without_origin};
use logferry_proto::v1::ingest_client::IngestClient;
use logferry_proto::v1::{AgentMessage, GetConfigRequest, agent_message};
use serde_json::Value;

/// The files in `dir` with extension `ext`, sorted; the last one is the newest.
fn segments(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

fn records_by_tag(data_dir: &Path) -> std::collections::BTreeMap<String, Vec<Value>> {
    let mut by_tag = std::collections::BTreeMap::<String, Vec<Value>>::new();
    for record in read_jsonl_tree(&data_dir.join("files")) {
        let tag = record["tag"].as_str().unwrap().to_string();
        by_tag.entry(tag).or_default().push(without_origin(&record));
    }
    by_tag
}

#[test]
fn a_torn_spool_tail_loses_only_the_entry_that_was_never_acknowledged() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    // Credentials first; then the backend is down while the plugin spools.
    let credentials = Backend::start(data.path(), port, &[]).credentials();
    let small = fixture("dummy-with-metadata");
    let big = fixture("tail-large-14740-records");

    let host = Host::load(&plugin_path()).unwrap();
    let instance = host
        .init(&credentials.plugin_properties(spool.path()))
        .unwrap();
    assert_eq!(instance.flush("kept.0", &small.chunk), FLB_OK);
    assert_eq!(instance.flush("kept.1", &small.chunk), FLB_OK);
    assert_eq!(instance.flush("torn", &big.chunk), FLB_OK);
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();

    // A crash in the middle of writing the last entry: its end never reached the disk.
    let last = segments(spool.path(), "seg")
        .pop()
        .expect("a spool segment");
    let len = std::fs::metadata(&last).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(len - 1000).unwrap();
    drop(file);

    let backend = Backend::start(data.path(), port, &[]);
    let mark = log::mark();
    let host = Host::load(&plugin_path()).unwrap();
    let instance = host
        .init(&credentials.plugin_properties(spool.path()))
        .unwrap();
    let opened = log::lines_since(mark);
    let warning = opened
        .iter()
        .find(|l| l.text().contains("torn tail") && l.text().contains("seq 3 lost"))
        .unwrap_or_else(|| panic!("no log line about the torn tail: {opened:#?}"));
    assert_eq!(warning.level, log::Level::Warn, "{warning}");
    // Seq 3 is gone for good: this chunk gets seq 4 and may share a batch with 1 and 2.
    let lines = fixture("tail-raw-lines");
    assert_eq!(instance.flush("after", &lines.chunk), FLB_OK);
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();

    let expected =
        expected_records(&small, "kept.0").len() * 2 + expected_records(&lines, "after").len();
    assert_eq!(
        wait_for_lines(data.path(), expected, Duration::from_secs(30)),
        expected
    );
    let by_tag = records_by_tag(data.path());
    assert_eq!(
        by_tag.keys().collect::<Vec<_>>(),
        ["after", "kept.0", "kept.1"]
    );
    for tag in ["kept.0", "kept.1"] {
        assert!(by_tag[tag] == expected_records(&small, tag), "{tag}");
    }
    assert!(by_tag["after"] == expected_records(&lines, "after"));
    backend.stop();
}

#[test]
fn a_torn_buffer_tail_is_cut_with_a_warning_and_nothing_acked_is_lost() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let backend = Backend::start(data.path(), port, &[]);
    let credentials = backend.credentials();
    let big = fixture("tail-large-14740-records");
    let host = Host::load(&plugin_path()).unwrap();
    let instance = host
        .init(&credentials.plugin_properties(spool.path()))
        .unwrap();
    assert_eq!(instance.flush("before", &big.chunk), FLB_OK);
    wait_for_lines(data.path(), 14740, Duration::from_secs(60));
    backend.kill();

    // A half-written append after the last acknowledged one.
    let last = segments(&data.path().join("buffer"), "log")
        .pop()
        .expect("a buffer segment");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    file.write_all(&[0x4c, 0x46, 0x52, 0x31, 0xff, 0x00, 0x00, 0x10, 0xde, 0xad])
        .unwrap();
    file.sync_all().unwrap();
    drop(file);

    let backend = Backend::start(data.path(), port, &[]);
    let log = backend.stderr();
    assert!(
        log.iter().any(|l| l.contains("WARN")
            && l.contains("truncating torn tail")
            && l.contains("bytes_dropped=10")),
        "no warning about the torn tail: {log:#?}"
    );
    assert_eq!(instance.flush("after", &big.chunk), FLB_OK);
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();
    assert_eq!(
        wait_for_lines(data.path(), 2 * 14740, Duration::from_secs(60)),
        2 * 14740
    );
    let by_tag = records_by_tag(data.path());
    assert!(by_tag["before"] == expected_records(&big, "before"));
    assert!(by_tag["after"] == expected_records(&big, "after"));
    backend.stop();
}

#[test]
fn a_chunk_that_is_not_msgpack_is_dead_lettered_with_its_reason() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let credentials = backend.credentials();
    let small = fixture("dummy-with-metadata");
    let host = Host::load(&plugin_path()).unwrap();
    let instance = host
        .init(&credentials.plugin_properties(spool.path()))
        .unwrap();
    let garbage = b"this is not msgpack \xc1\xc1\xc1";
    assert_eq!(instance.flush("good.0", &small.chunk), FLB_OK);
    assert_eq!(
        instance.flush("bad", garbage),
        FLB_OK,
        "the spool takes opaque bytes"
    );
    assert_eq!(instance.flush("good.1", &small.chunk), FLB_OK);
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();

    let good = expected_records(&small, "good.0").len() * 2;
    assert_eq!(
        wait_for_lines(data.path(), good, Duration::from_secs(30)),
        good
    );
    let dead_dir = data.path().join("dead-letter").join("files");
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let dead = read_jsonl_tree(&dead_dir);
        if !dead.is_empty() || Instant::now() > deadline {
            break dead;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let entry = &dead[0];
    assert_eq!(entry["tag"], "bad");
    assert_eq!(entry["tenant"], "dev");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .starts_with("chunk does not decode"),
        "{entry}"
    );
    use base64::Engine as _;
    let kept = base64::engine::general_purpose::STANDARD
        .decode(entry["chunk_b64"].as_str().unwrap())
        .unwrap();
    assert_eq!(kept, garbage, "the dead letter keeps the chunk's bytes");
    let by_tag = records_by_tag(data.path());
    assert_eq!(by_tag.keys().collect::<Vec<_>>(), ["good.0", "good.1"]);
    backend.stop();
}

#[test]
fn a_wrong_token_is_refused_and_the_agent_keeps_its_spool() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let credentials = backend.credentials();

    // At the protocol level: UNAUTHENTICATED for a forged token and for none.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let codes = runtime.block_on(async {
        let mut client = IngestClient::new(credentials.channel().await);
        let mut codes = Vec::new();
        let mut forged = credentials.access_token.clone();
        forged.pop();
        forged.push(if credentials.access_token.ends_with('A') {
            'B'
        } else {
            'A'
        });
        for token in [Some(forged.as_str()), Some("not-a-jwt"), None] {
            let request = credentials.request(GetConfigRequest::default(), token);
            codes.push(client.get_config(request).await.unwrap_err().code());
            let hello = AgentMessage {
                msg: Some(agent_message::Msg::Hello(Default::default())),
            };
            let request = credentials.request(tokio_stream::iter([hello]), token);
            codes.push(client.stream(request).await.unwrap_err().code());
        }
        codes
    });
    assert_eq!(codes, vec![tonic::Code::Unauthenticated; 6]);

    // Through the plugin: flushes are spooled, the refusal is logged, nothing lands.
    let small = fixture("dummy-with-metadata");
    let host = Host::load(&plugin_path()).unwrap();
    let mut properties = credentials.plugin_properties(spool.path());
    properties.retain(|(k, _)| k != "access_token");
    properties.push((
        "access_token".into(),
        "eyJhbGciOiJFZERTQSJ9.e30.AAAA".into(),
    ));
    let mark = log::mark();
    let instance = host.init(&properties).unwrap();
    assert_eq!(instance.flush("kept", &small.chunk), FLB_OK);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log::lines_since(mark)
        .iter()
        .any(|l| l.text().contains("Unauthenticated") || l.text().contains("UNAUTHENTICATED"))
    {
        assert!(Instant::now() < deadline, "no log line about the refusal");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();
    assert!(read_jsonl_tree(&data.path().join("files")).is_empty());

    // The right token later: the spooled chunk goes out, once.
    let host = Host::load(&plugin_path()).unwrap();
    let instance = host
        .init(&credentials.plugin_properties(spool.path()))
        .unwrap();
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();
    let want = expected_records(&small, "kept");
    assert_eq!(
        wait_for_lines(data.path(), want.len(), Duration::from_secs(30)),
        want.len()
    );
    assert!(records_by_tag(data.path())["kept"] == want);
    backend.stop();
}
