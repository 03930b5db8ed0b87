//! Five destinations of one tenant (file, Elasticsearch, Loki, PostgreSQL, S3), each
//! with exactly the input records after ten SIGKILLs of the backend, each with its
//! own refusals in its own dead letters, and one that is down holding back no other.
//!
//! PostgreSQL is the real server from Debian's packages, S3 is `s3s-fs` from
//! crates.io (a real S3-protocol server on the file system). Elasticsearch and Loki are
//! in-test HTTP servers that check every request against the documented API
//! ([`logferry_e2e::sinks`]): neither can be installed on this machine.

use std::time::{Duration, Instant};

use fluent_bit_sys::FLB_OK;
use logferry_e2e::backend::{
    Backend, acme_credentials, backend_bin, dead_letters, free_port, read_jsonl_tree, wait_for,
};
use logferry_e2e::host::Host;
use logferry_e2e::sinks::{Elasticsearch, LOKI_MAX_LINE, Loki, Postgres, S3Server};
use logferry_e2e::{
    ACME_DESTINATIONS, assert_same, canonical, chunk_of, expected_records, fixture, plugin_path,
};
use rand::Rng;
use serde_json::{Value, json};

const BIG: &str = "tail-large-14740-records";

#[test]
fn five_destinations_each_get_every_record_once_across_ten_sigkills() {
    // Copies of the big fixture: one before the kills, one before each kill (so each
    // kill interrupts work), one with every sink up (the baseline), one during the
    // outage of Elasticsearch and S3.
    const COPIES: usize = 12;
    const KILLS: usize = 10;
    let es = Elasticsearch::start_bulk(40);
    let loki = Loki::start_push(3);
    let pg = Postgres::start();
    let mut s3 = S3Server::start();
    let secrets = tempfile::tempdir().unwrap();
    let s3_secret = secrets.path().join("s3-secret");
    std::fs::write(&s3_secret, format!("{}\n", S3Server::SECRET_KEY)).unwrap();
    let registry = format!(
        "{ACME_DESTINATIONS}
      - name: files
        type: file
      - name: search
        type: elasticsearch
        url: {es}
        index: logs-acme
      - name: loki
        type: loki
        url: {loki}
        labels: [level, log]
        max_label_values: 8
      - name: db
        type: postgres
        url: {pg}
      - name: archive
        type: s3
        url: {s3}
        bucket: {bucket}
        access_key_id: {access_key}
        secret_access_key_file: {secret}
        batch_max_age: 1s
",
        es = es.url(),
        loki = loki.url(),
        pg = pg.url(),
        s3 = s3.url(),
        bucket = S3Server::BUCKET,
        access_key = S3Server::ACCESS_KEY,
        secret = s3_secret.display(),
    );
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("tenants.yaml"), &registry).unwrap();
    let port = free_port();
    let mut backend = Backend::start(data.path(), port, &[]);
    let credentials = acme_credentials(&backend, data.path());

    // Records each far side refuses for good, one per sink.
    let (probe, probe_expected) = chunk_of(
        1_795_413_000,
        &[
            json!({"probe": 1, "level": "info"}),
            json!({"probe": "one"}),
            json!({"nul": "a\u{0}b"}),
            json!({"long": "x".repeat(LOKI_MAX_LINE)}),
        ],
    );
    let (big, parsed) = (fixture(BIG), fixture("tail-json-parsed"));
    let big_records = expected_records(&big, "x").len();
    let mut expected: Vec<Value> = Vec::new();
    let mut tagged = |tag: &str, records: Vec<Value>| {
        expected.extend(records.into_iter().map(|mut r| {
            r["tag"] = tag.into();
            r
        }));
    };
    tagged("probe", probe_expected.clone());
    tagged("app.json", expected_records(&parsed, "app.json"));
    for copy in 0..COPIES + 1 {
        tagged(
            &format!("big.{copy}"),
            expected_records(&big, &format!("big.{copy}")),
        );
    }
    let total = expected.len();

    let spool = tempfile::tempdir().unwrap();
    let host = Host::load(&plugin_path()).unwrap();
    let instance = host
        .init(&credentials.plugin_properties(spool.path()))
        .unwrap();
    assert_eq!(instance.flush("probe", &probe), FLB_OK);
    assert_eq!(instance.flush("app.json", &parsed.chunk), FLB_OK);
    assert_eq!(instance.flush("big.0", &big.chunk), FLB_OK);

    let files = data.path().join("destinations/acme.files");
    let rows = |pg: &Postgres| pg.count("logferry_records");
    let progress =
        || logferry_e2e::backend::count_jsonl_lines(&files) + es.count() + loki.count() + rows(&pg);

    // Ten kills, each at a random moment after some sink made progress on new work.
    let mut rng = rand::rng();
    for kill in 0..KILLS {
        let tag = format!("big.{}", kill + 1);
        assert_eq!(instance.flush(&tag, &big.chunk), FLB_OK);
        let before = progress();
        wait_for(
            &format!("progress before kill {kill}"),
            Duration::from_secs(60),
            || progress() > before,
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        backend.kill();
        backend = Backend::start(data.path(), port, &[]);
    }

    let want = total - 1; // each sink but S3 and file refuses one probe record
    let others_hold = |copies: usize| {
        let n = total - (COPIES - copies) * big_records;
        logferry_e2e::backend::count_jsonl_lines(&files) == n
            && loki.count() == n - 1
            && rows(&pg) == n - 1
    };
    // The baseline: one copy with every sink up, once all have caught up.
    let s3_lines = |s3: &S3Server| s3.lines().0.len();
    let caught_up_but = |copies: usize| {
        let n = total - copies * big_records;
        others_hold(COPIES - copies) && es.count() == n - 1 && s3_lines(&s3) == n
    };
    wait_for(
        "every sink to catch up after the kills",
        Duration::from_secs(120),
        || caught_up_but(2),
    );
    assert_eq!(
        instance.flush(&format!("big.{}", COPIES - 1), &big.chunk),
        FLB_OK
    );
    let started = Instant::now();
    wait_for("the baseline copy", Duration::from_secs(120), || {
        others_hold(COPIES - 1)
    });
    let baseline = started.elapsed();
    wait_for(
        "the baseline copy in every sink",
        Duration::from_secs(60),
        || caught_up_but(1),
    );

    // Elasticsearch and S3 go down for 30 s; the others keep going and finish the next
    // copy without them.
    es.set_down(true);
    s3.stop();
    let outage = Instant::now();
    assert_eq!(instance.flush(&format!("big.{COPIES}"), &big.chunk), FLB_OK);
    wait_for(
        "file, Loki and PostgreSQL while Elasticsearch and S3 are down",
        Duration::from_secs(120),
        || others_hold(COPIES),
    );
    let others_took = outage.elapsed();
    assert!(
        es.count() < want,
        "Elasticsearch was down: it holds {} of {want}",
        es.count()
    );
    wait_for(
        "the Elasticsearch and S3 destinations' errors",
        Duration::from_secs(30),
        || {
            let log = backend.stderr();
            ["acme.search", "acme.archive"].iter().all(|d| {
                log.iter()
                    .any(|l| l.contains(d) && l.contains("delivery failed"))
            })
        },
    );
    std::thread::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed()));
    es.set_down(false);
    s3.restart();
    let started = Instant::now();
    wait_for(
        "Elasticsearch and S3 to catch up",
        Duration::from_secs(120),
        || es.count() == want && s3_lines(&s3) == total,
    );
    let caught_up = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();
    let log = backend.stop();

    // File: every record once, byte-exact content, chains intact.
    let want_all = canonical(expected.clone());
    assert_same(
        "the file destination",
        &canonical(read_jsonl_tree(&files)),
        &want_all,
    );
    // Each other sink: every record but the one it refused.
    let without = |refused: &Value| {
        canonical(
            expected
                .iter()
                .filter(|r| r["tag"] != "probe" || &r["record"] != refused)
                .cloned(),
        )
    };
    let es_state = es.state.lock().unwrap();
    // The two `probe` records conflict in type; whichever Elasticsearch indexed first
    // fixed the mapping (a 429 may reorder them), and the other is refused.
    let es_refused = dead_letters(data.path(), "acme.search")
        .first()
        .map(|letter| letter["record"]["record"].clone())
        .expect("a dead letter of the Elasticsearch destination");
    assert!(
        es_refused == probe_expected[0]["record"] || es_refused == probe_expected[1]["record"],
        "{es_refused}"
    );
    assert!(es_state.violations.is_empty(), "{:?}", es_state.violations);
    assert_same(
        "the Elasticsearch destination",
        &canonical(es_state.docs.values().cloned()),
        &without(&es_refused),
    );
    assert!(es_state.docs.keys().all(|(index, _)| index == "logs-acme"));
    let loki_state = loki.state.lock().unwrap();
    assert!(
        loki_state.violations.is_empty(),
        "{:?}",
        loki_state.violations
    );
    assert_same(
        "the Loki destination",
        &canonical(
            loki_state
                .entries
                .iter()
                .map(|e| serde_json::from_str::<Value>(&e.line).unwrap()),
        ),
        &without(&probe_expected[3]["record"]),
    );
    assert_eq!(loki_state.org_ids.iter().collect::<Vec<_>>(), ["acme"]);
    let mut log_values: Vec<&str> = loki_state
        .entries
        .iter()
        .filter_map(|e| e.labels.get("log").map(String::as_str))
        .collect();
    log_values.sort();
    log_values.dedup();
    assert_eq!(log_values.len(), 9, "8 values of `log`, then __overflow__");
    assert!(log_values.contains(&"__overflow__"));
    assert!(
        loki_state
            .entries
            .iter()
            .all(|e| e.labels["tenant"] == "acme")
    );
    // S3: every record once, in objects named by their offset range.
    let (lines, objects) = s3.lines();
    assert_same(
        "the S3 destination",
        &canonical(
            lines
                .iter()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        ),
        &want_all,
    );
    let keys = s3.objects(".ndjson.zst");
    assert!(
        keys.keys()
            .all(|k| k.starts_with("logferry/acme/acme.archive/dt=")),
        "{:?}",
        keys.keys().collect::<Vec<_>>()
    );
    assert_eq!(s3.objects("_checkpoint.json").len(), 1);
    let mut client = pg.client();
    let db: Vec<Value> = client
        .query(
            "SELECT tag, tenant, record::text, metadata::text, \
             to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') FROM logferry_records",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| {
            assert_eq!(row.get::<_, String>(1), "acme");
            json!({
                "tag": row.get::<_, String>(0),
                "record": serde_json::from_str::<Value>(&row.get::<_, String>(2)).unwrap(),
                "metadata": serde_json::from_str::<Value>(&row.get::<_, String>(3)).unwrap(),
                "time": row.get::<_, String>(4),
            })
        })
        .collect();
    // PostgreSQL keeps microseconds.
    let micros = |records: Vec<String>| -> Vec<String> {
        let mut out: Vec<String> = records
            .iter()
            .map(|r| {
                let mut v: Value = serde_json::from_str(r).unwrap();
                let time = v["time"].as_str().unwrap().to_string();
                // Expected records carry RFC 3339 with nanoseconds, which PostgreSQL
                // rounds to microseconds, half to even (rint); rows come formatted.
                if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&time) {
                    let nanos = t.timestamp_nanos_opt().unwrap();
                    let (mut micros, rest) = (nanos.div_euclid(1000), nanos.rem_euclid(1000));
                    if rest > 500 || (rest == 500 && micros % 2 == 1) {
                        micros += 1;
                    }
                    let rounded = chrono::DateTime::from_timestamp_micros(micros).unwrap();
                    v["time"] = rounded.format("%Y-%m-%dT%H:%M:%S%.6f").to_string().into();
                }
                v.as_object_mut().unwrap().remove("group");
                serde_json::to_string(&v).unwrap()
            })
            .collect();
        out.sort();
        out
    };
    assert_same(
        "the PostgreSQL destination",
        &micros(canonical(db)),
        &micros(without(&probe_expected[2]["record"])),
    );
    let cursor: Value = serde_json::from_str(
        &client
            .query_one(
                "SELECT checkpoint::text FROM logferry_cursors WHERE destination = 'acme.db'",
                &[],
            )
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    assert!(cursor["next_offset"].as_u64().unwrap() > 0);

    // Dead letters: exactly the refused record of each sink, with the far side's reason.
    let refused = |destination: &str, reason: &str, record: &Value| {
        let letters = dead_letters(data.path(), destination);
        assert_eq!(letters.len(), 1, "{destination}: {letters:#?}");
        let letter = &letters[0];
        assert!(
            letter["reason"].as_str().unwrap().contains(reason),
            "{destination}: {letter}"
        );
        assert_eq!(&letter["record"]["record"], record, "{destination}");
        assert_eq!(letter["tag"], "probe");
    };
    refused("acme.search", "document_parsing_exception", &es_refused);
    refused(
        "acme.loki",
        "Max entry size '4096' bytes exceeded",
        &probe_expected[3]["record"],
    );
    refused("acme.db", "\\u0000", &probe_expected[2]["record"]);
    assert!(dead_letters(data.path(), "acme.files").is_empty());

    // The far sides' retryable refusals were retried (not dead-lettered).
    assert!(
        es_state.rejected_for_now == 40,
        "429 items: {}",
        es_state.rejected_for_now
    );
    assert_eq!(loki_state.throttle_next, 0);
    let verify = std::process::Command::new(backend_bin())
        .arg("verify")
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert!(
        log.iter()
            .any(|l| l.contains("acme.search") && l.contains("delivering again")),
        "the Elasticsearch destination says it recovered"
    );
    assert!(dead_letters(data.path(), "acme.archive").is_empty());
    eprintln!(
        "{total} records; Elasticsearch re-sends overwritten: {}, 429 items retried: {}; \
         Loki duplicates dropped: {}; S3: {objects} objects; file, Loki and PostgreSQL took \
         {baseline:?} for a copy with every sink up and {others_took:?} with Elasticsearch \
         and S3 down ({:.2}x); those two caught up in {caught_up:?}",
        es_state.overwrites,
        es_state.rejected_for_now,
        loki_state.duplicates,
        others_took.as_secs_f64() / baseline.as_secs_f64()
    );
}

/// A step whose PostgreSQL transaction committed but whose local checkpoint file
/// did not get written (a crash between the two) is not written again: the cursor
/// stored with the rows wins. PostgreSQL going down holds back no other destination.
#[test]
fn the_postgres_cursor_wins_over_an_older_local_checkpoint_and_an_outage_delays_only_postgres() {
    let mut pg = Postgres::start();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("tenants.yaml"),
        format!(
            "{ACME_DESTINATIONS}
      - name: files
        type: file
      - name: db
        type: postgres
        url: {}
        table: app_logs
",
            pg.url()
        ),
    )
    .unwrap();
    let port = free_port();
    let backend = Backend::start(data.path(), port, &[]);
    let credentials = acme_credentials(&backend, data.path());
    let parsed = fixture("tail-json-parsed");
    let n = expected_records(&parsed, "x").len();
    let spool = tempfile::tempdir().unwrap();
    let host = Host::load(&plugin_path()).unwrap();
    let instance = host
        .init(&credentials.plugin_properties(spool.path()))
        .unwrap();
    let rows = |pg: &Postgres| pg.count("app_logs");
    let files = data.path().join("destinations/acme.files");
    let lines = || logferry_e2e::backend::count_jsonl_lines(&files);

    assert_eq!(instance.flush("a", &parsed.chunk), FLB_OK);
    wait_for("the first chunk", Duration::from_secs(30), || {
        rows(&pg) == n
    });
    let checkpoint = data.path().join("router/acme.db.checkpoint.json");
    let older = std::fs::read(&checkpoint).unwrap();
    // The lost step also dead-letters a record: the stored checkpoint counts it.
    let (nul, _) = chunk_of(1_795_413_000, &[json!({"nul": "a\u{0}b"})]);
    assert_eq!(instance.flush("nul", &nul), FLB_OK);
    assert_eq!(instance.flush("b", &parsed.chunk), FLB_OK);
    wait_for("the second chunk", Duration::from_secs(30), || {
        rows(&pg) == 2 * n
    });
    wait_for("the dead letter", Duration::from_secs(30), || {
        dead_letters(data.path(), "acme.db").len() == 1
    });
    backend.kill();
    // As if the process had died after PostgreSQL's commit, before the file's rename.
    std::fs::write(&checkpoint, &older).unwrap();
    let backend = Backend::start(data.path(), port, &[]);
    wait_for("the resume line", Duration::from_secs(30), || {
        backend
            .stderr()
            .iter()
            .any(|l| l.contains("acme.db") && l.contains("resuming at the sink's stored cursor"))
    });

    // PostgreSQL goes down: the file destination goes on, PostgreSQL catches up later.
    pg.stop();
    assert_eq!(instance.flush("c", &parsed.chunk), FLB_OK);
    wait_for("the file destination", Duration::from_secs(30), || {
        lines() == 3 * n + 1
    });
    wait_for(
        "the PostgreSQL destination's error",
        Duration::from_secs(30),
        || {
            backend
                .stderr()
                .iter()
                .any(|l| l.contains("acme.db") && l.contains("delivery failed"))
        },
    );
    pg.restart();
    wait_for("PostgreSQL to catch up", Duration::from_secs(60), || {
        rows(&pg) == 3 * n
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();
    let log = backend.stop();
    assert_eq!(rows(&pg), 3 * n);
    let per_tag: Vec<(String, i64)> = pg
        .client()
        .query(
            "SELECT tag, count(*) FROM app_logs GROUP BY tag ORDER BY tag",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let n = n as i64;
    assert_eq!(
        per_tag,
        [
            ("a".to_string(), n),
            ("b".to_string(), n),
            ("c".to_string(), n)
        ]
    );
    assert!(
        !log.iter().any(|l| l.contains("duplicate key")),
        "no step was written twice"
    );
    assert_eq!(
        dead_letters(data.path(), "acme.db").len(),
        1,
        "the dead letter of the lost step, once"
    );
}
