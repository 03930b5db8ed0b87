//! TLS from the sinks to their servers, checked against a destination's `ca_file`:
//! PostgreSQL (the real server from Debian's packages, TCP over TLS only) and
//! Elasticsearch (the in-test bulk server behind a rustls front, since no
//! Elasticsearch can be installed here). The same servers without `ca_file` (so
//! Mozilla's roots, which do not know the test CA) are refused, and nothing reaches
//! them.

use std::time::Duration;

use logferry_e2e::ACME_DESTINATIONS;
use logferry_e2e::backend::{Backend, count_jsonl_lines, free_port, send_lines, wait_for};
use logferry_e2e::sinks::{Elasticsearch, Postgres};

#[test]
fn postgres_and_elasticsearch_over_tls_trust_the_destinations_ca() {
    const LINES: usize = 2000;
    let pg = Postgres::start_tls();
    let pg_ca = pg.ca.clone().unwrap();
    let es = Elasticsearch::start_bulk(0);
    let front_dir = tempfile::tempdir().unwrap();
    let pki = logferry_backend::pki::ensure_dev_pki(front_dir.path()).unwrap();
    let es_port = free_port();
    let _front = logferry_e2e::tls_front(es_port, es.addr.port(), &pki);
    let es_ca = pki.ca.clone().unwrap();

    let pg_url = format!(
        "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=require",
        pg.port
    );
    let es_url = format!("https://localhost:{es_port}");
    let registry = format!(
        "{ACME_DESTINATIONS}
      - name: files
        type: file
      - name: db
        type: postgres
        url: \"{pg_url}\"
        ca_file: {pg_ca}
      - name: db_untrusted
        type: postgres
        url: \"{pg_url}\"
        table: untrusted
      - name: search
        type: elasticsearch
        url: {es_url}
        index: logs-acme
        ca_file: {es_ca}
      - name: search_untrusted
        type: elasticsearch
        url: {es_url}
        index: untrusted
",
        pg_ca = pg_ca.display(),
        es_ca = es_ca.display(),
    );
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("tenants.yaml"), &registry).unwrap();
    let backend = Backend::start(data.path(), free_port(), &[]);
    send_lines(
        &backend,
        &["--tag", "app"],
        (0..LINES).map(|n| format!("line {n}")),
    );
    let files = data.path().join("destinations/acme.files");
    let es_docs = |index: &str| {
        es.state
            .lock()
            .unwrap()
            .docs
            .keys()
            .filter(|(i, _)| i == index)
            .count()
    };
    wait_for("delivery over TLS", Duration::from_secs(60), || {
        count_jsonl_lines(&files) == LINES
            && pg.count("logferry_records") == LINES
            && es_docs("logs-acme") == LINES
    });
    wait_for(
        "the refusals of the untrusted servers",
        Duration::from_secs(30),
        || {
            let log = backend.stderr();
            ["acme.db_untrusted", "acme.search_untrusted"]
                .iter()
                .all(|d| {
                    log.iter().any(|l| {
                        l.contains(d)
                            && l.contains("delivery failed")
                            && l.to_lowercase().contains("certificate")
                    })
                })
        },
    );
    backend.stop();
    assert_eq!(pg.count("logferry_records"), LINES);
    assert_eq!(pg.count("untrusted"), 0);
    assert_eq!(es_docs("logs-acme"), LINES);
    assert_eq!(es_docs("untrusted"), 0);
    let es_state = es.state.lock().unwrap();
    assert!(es_state.violations.is_empty(), "{:?}", es_state.violations);
}
