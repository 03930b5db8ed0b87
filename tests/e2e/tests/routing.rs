//! Per-tenant destinations: tag globs, access-key filters, JSON lines or raw msgpack,
//! each with its own cursor. A destination that fails does not hold back the others
//! and catches up afterwards with nothing lost or duplicated.

use std::path::Path;
use std::time::Duration;

use fluent_bit_sys::FLB_OK;
use logferry_backend::auth::TokenAuthority;
use logferry_e2e::backend::{
    Backend, Credentials, backend_bin, count_jsonl_lines, read_jsonl_tree, replace_file, wait_for,
};
use logferry_e2e::host::Host;
use logferry_e2e::{expected_records, fixture, plugin_path, without_origin};

const REGISTRY: &str = "\
tenants:
  - name: acme
    access_keys:
      - key: ak_a
      - key: ak_b
    destinations:
      - name: audit
        type: file
        match: \"audit.*\"
      - name: raw
        type: file
        format: msgpack
        access_keys: [ak_b]
  - name: globex
    access_keys:
      - key: ak_g
";

fn records(dir: &Path, tag: &str) -> Vec<serde_json::Value> {
    read_jsonl_tree(dir)
        .iter()
        .filter(|r| r["tag"] == tag)
        .map(without_origin)
        .collect()
}

#[test]
fn destinations_route_by_tag_and_key_and_a_failing_one_holds_back_no_other() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("tenants.yaml"), REGISTRY).unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let base = backend.credentials();
    let authority = TokenAuthority::load_or_create(&data.path().join("keys")).unwrap();
    let as_key = |tenant: &str, key: &str| Credentials {
        access_key: key.into(),
        access_token: authority
            .issue(tenant, key, Duration::from_secs(600))
            .unwrap()
            .0,
        ..base.clone()
    };
    // The raw destination cannot create its directory until this file goes away.
    let raw_root = data.path().join("destinations/acme.raw");
    std::fs::create_dir_all(raw_root.parent().unwrap()).unwrap();
    std::fs::write(&raw_root, "in the way").unwrap();

    let (dummy, lines, json, otel) = (
        fixture("dummy-with-metadata"),
        fixture("tail-raw-lines"),
        fixture("tail-json-parsed"),
        fixture("opentelemetry-with-group-markers"),
    );
    let host = Host::load(&plugin_path()).unwrap();
    let spools: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = host
        .init(&as_key("acme", "ak_a").plugin_properties(spools[0].path()))
        .unwrap();
    let b = host
        .init(&as_key("acme", "ak_b").plugin_properties(spools[1].path()))
        .unwrap();
    let g = host
        .init(&as_key("globex", "ak_g").plugin_properties(spools[2].path()))
        .unwrap();
    assert_eq!(a.flush("audit.login", &dummy.chunk), FLB_OK);
    assert_eq!(a.flush("app.web", &lines.chunk), FLB_OK);
    assert_eq!(b.flush("audit.db", &json.chunk), FLB_OK);
    assert_eq!(b.flush("app.otel", &otel.chunk), FLB_OK);
    assert_eq!(g.flush("app.globex", &dummy.chunk), FLB_OK);

    // The audit destination gets acme's audit.* records of both keys, as JSON lines.
    let audit = data.path().join("destinations/acme.audit");
    let want_audit =
        expected_records(&dummy, "audit.login").len() + expected_records(&json, "audit.db").len();
    wait_for("the audit destination", Duration::from_secs(30), || {
        count_jsonl_lines(&audit) >= want_audit
    });
    assert_eq!(
        records(&audit, "audit.login"),
        expected_records(&dummy, "audit.login")
    );
    assert_eq!(
        records(&audit, "audit.db"),
        expected_records(&json, "audit.db")
    );
    assert_eq!(
        count_jsonl_lines(&audit),
        want_audit,
        "only audit.* records"
    );
    // The shared destination gets the tenants without destinations of their own.
    let files = data.path().join("files");
    wait_for("the files destination", Duration::from_secs(30), || {
        count_jsonl_lines(&files) >= expected_records(&dummy, "app.globex").len()
    });
    assert_eq!(
        records(&files, "app.globex"),
        expected_records(&dummy, "app.globex")
    );
    assert!(
        !files.join("acme").exists(),
        "acme has its own destinations"
    );

    // Meanwhile the raw destination keeps failing, says so, and lags.
    wait_for(
        "the raw destination's error",
        Duration::from_secs(10),
        || {
            backend
                .stderr()
                .iter()
                .any(|l| l.contains("acme.raw") && l.contains("delivery failed"))
        },
    );
    assert!(
        backend
            .metric("logferry_destination_lag_batches{destination=\"acme.raw\"}")
            .unwrap()
            > 0.0
    );
    // It catches up once the obstacle is gone: ak_b's chunks, byte for byte, in order.
    std::fs::remove_file(&raw_root).unwrap();
    let raw_file = raw_root.join("acme/ak_b/ak_b.msgpack");
    let want_raw = [json.chunk.as_slice(), otel.chunk.as_slice()].concat();
    wait_for(
        "the raw destination to catch up",
        Duration::from_secs(40),
        || std::fs::metadata(&raw_file).is_ok_and(|m| m.len() >= want_raw.len() as u64),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::fs::read(&raw_file).unwrap() == want_raw,
        "raw events differ"
    );
    assert!(
        !raw_root.join("acme/ak_a").exists(),
        "ak_a is not routed to raw"
    );

    for instance in [a, b, g] {
        assert_eq!(instance.exit(), FLB_OK);
    }
    host.unload().unwrap();

    // Destinations change on restart only, and a reload says so.
    replace_file(
        &data.path().join("tenants.yaml"),
        &REGISTRY.replace("match: \"audit.*\"", "match: \"audit.login\""),
    );
    wait_for("the destinations warning", Duration::from_secs(10), || {
        backend
            .stderr()
            .iter()
            .any(|l| l.contains("changes destinations; those take effect at the next restart"))
    });
    backend.stop();

    let verify = std::process::Command::new(backend_bin())
        .arg("verify")
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{out}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.contains("ak_b.msgpack"), "{out}");
}
