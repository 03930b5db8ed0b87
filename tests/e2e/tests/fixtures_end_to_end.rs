//! Every real Fluent Bit chunk, through the built plugin (loaded by the host
//! emulator), over TLS to a real `logferry serve`, into the file sink: the files hold
//! exactly the `kind=record` events of each fixture, field for field, and nothing else.

use std::collections::BTreeMap;
use std::time::Duration;

use fluent_bit_sys::FLB_OK;
use logferry_e2e::backend::{Backend, read_jsonl_tree, wait_for_lines};
use logferry_e2e::host::Host;
use logferry_e2e::{expected_records, fixtures, plugin_path, without_origin};
use serde_json::Value;

#[test]
fn every_fixture_lands_in_the_file_sink_exactly() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let credentials = backend.credentials();

    let host = Host::load(&plugin_path()).unwrap();
    let instance = host
        .init(&credentials.plugin_properties(spool.path()))
        .unwrap();
    let mut expected: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for fixture in fixtures() {
        assert_eq!(instance.flush(&fixture.tag, &fixture.chunk), FLB_OK);
        expected.insert(
            fixture.tag.clone(),
            expected_records(&fixture, &fixture.tag),
        );
    }
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();

    let total: usize = expected.values().map(Vec::len).sum();
    assert!(total > 14740, "the fixtures hold {total} records");
    let landed = wait_for_lines(data.path(), total, Duration::from_secs(60));
    assert_eq!(landed, total, "lines in the file sink");

    let files = data
        .path()
        .join("files")
        .join("dev")
        .join(&credentials.access_key);
    let file = files.join(format!("{}.jsonl", credentials.access_key));
    assert!(file.is_file(), "{} holds the records", file.display());
    let records = read_jsonl_tree(&data.path().join("files"));
    let agent = records[0]["agent"].as_str().unwrap().to_string();
    assert_eq!(agent.len(), 32, "agent id is 16 bytes in hex: {agent}");
    let mut by_tag: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for record in &records {
        assert_eq!(record["tenant"], "dev");
        assert_eq!(record["agent"], agent.as_str());
        let tag = record["tag"].as_str().unwrap().to_string();
        by_tag.entry(tag).or_default().push(without_origin(record));
    }
    assert_eq!(
        by_tag.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (tag, want) in &expected {
        let got = &by_tag[tag];
        assert_eq!(got.len(), want.len(), "records of {tag}");
        for (n, (got, want)) in got.iter().zip(want).enumerate() {
            assert_eq!(got, want, "{tag} record {n}");
        }
    }
    // Group markers are context, never records: the OpenTelemetry fixture's two
    // records carry their group's resource.
    let otel = &by_tag["otel.logs"];
    assert_eq!(otel.len(), 2);
    assert_eq!(
        otel[0]["group"]["body"]["resource"]["attributes"]["service.name"],
        "checkout"
    );
    assert!(
        !data.path().join("dead-letter").exists()
            || read_jsonl_tree(&data.path().join("dead-letter")).is_empty(),
        "nothing is dead-lettered"
    );
    backend.stop();
}
