//! `logferry dead-letter replay`: dead letters go to their destination once their
//! cause is fixed, exactly once however often replay runs, and a backend started
//! afterwards neither loses nor repeats them.
//!
//! PostgreSQL is the real server from Debian's packages and S3 is `s3s-fs`;
//! Elasticsearch is the in-test server of [`logferry_e2e::sinks`] (none can be
//! installed on this machine).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use fluent_bit_sys::FLB_OK;
use logferry_e2e::backend::{
    Backend, acme_credentials, backend_bin, count_jsonl_lines, dead_letters, free_port, send_lines,
    wait_for,
};
use logferry_e2e::host::Host;
use logferry_e2e::sinks::{Elasticsearch, Postgres, S3Server};
use logferry_e2e::{ACME_DESTINATIONS, chunk_of, plugin_path};
use serde_json::{Value, json};

fn logferry(data: &Path, args: &[&str]) -> Output {
    Command::new(backend_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("NO_COLOR", "1")
        .output()
        .expect("run logferry")
}

fn replay(data: &Path, destination: &str) -> (bool, String, String) {
    let out = logferry(data, &["dead-letter", "replay", destination]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn refused_records_are_replayed_once_after_their_cause_is_fixed() {
    let es = Elasticsearch::start_bulk(0);
    let pg = Postgres::start();
    let registry = format!(
        "{ACME_DESTINATIONS}
      - name: logs
        type: file
      - name: search
        type: elasticsearch
        url: {es}
        index: logs-acme
      - name: db
        type: postgres
        url: {pg}
",
        es = es.url(),
        pg = pg.url(),
    );
    let data = tempfile::tempdir().unwrap();
    let data = data.path();
    std::fs::write(data.join("tenants.yaml"), &registry).unwrap();
    let port = free_port();
    let backend = Backend::start(data, port, &[]);
    let credentials = acme_credentials(&backend, data);

    // Elasticsearch refuses the second `probe` (its type differs from the first);
    // PostgreSQL refuses `\u0000`, which `jsonb` cannot hold.
    let (chunk, _) = chunk_of(
        1_795_413_000,
        &[
            json!({"probe": 1}),
            json!({"probe": "one"}),
            json!({"nul": "a\u{0}b"}),
            json!({"ok": true}),
        ],
    );
    let spool = tempfile::tempdir().unwrap();
    let host = Host::load(&plugin_path()).unwrap();
    let instance = host
        .init(&credentials.plugin_properties(spool.path()))
        .unwrap();
    assert_eq!(instance.flush("probe", &chunk), FLB_OK);
    let files = data.join("destinations/acme.logs");
    let rows = || pg.count("logferry_records");
    wait_for("delivery", Duration::from_secs(60), || {
        count_jsonl_lines(&files) == 4
            && es.count() == 3
            && rows() == 3
            && dead_letters(data, "acme.search").len() == 1
            && dead_letters(data, "acme.db").len() == 1
    });
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();

    // Not while a backend delivers: it would write the same destination.
    let (ok, _, stderr) = replay(data, "acme.search");
    assert!(!ok);
    assert!(stderr.contains("is running on"), "{stderr}");
    assert_eq!(es.count(), 3);
    backend.stop();

    // The operator fixes the mapping; the record lands under the `_id` it would
    // have had, so a later re-send would overwrite it.
    let letter = &dead_letters(data, "acme.search")[0];
    assert_eq!(letter["record"]["record"], json!({"probe": "one"}));
    let id = format!(
        "{}-{}-{}",
        letter["agent"].as_str().unwrap(),
        letter["seq"],
        letter["index"]
    );
    assert_eq!(letter["index"], 1);
    es.forget_mapping("probe");
    // Named twice, sent once.
    let out = logferry(
        data,
        &[
            "dead-letter",
            "replay",
            "acme.search",
            "--entry",
            "1",
            "--entry",
            "1",
        ],
    );
    let (ok, stdout, stderr) = (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(stdout, "acme.search #1: delivered\n");
    assert!(
        stderr.contains("1 delivered, 0 delivered before, 0 still failing"),
        "{stderr}"
    );
    {
        let state = es.state.lock().unwrap();
        assert_eq!(state.docs.len(), 4);
        let doc = &state.docs[&("logs-acme".to_string(), id.clone())];
        assert_eq!(doc["record"], json!({"probe": "one"}));
        assert_eq!(doc["tag"], "probe");
        assert_eq!(state.overwrites, 0);
    }

    // Again: nothing is sent twice.
    let requests = es.state.lock().unwrap().requests;
    let (ok, stdout, _) = replay(data, "acme.search");
    assert!(ok);
    assert_eq!(stdout, "acme.search #1: delivered by an earlier replay\n");
    assert_eq!(es.state.lock().unwrap().requests, requests);
    let list = logferry(data, &["dead-letter", "list"]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains("acme.search #1 (replayed) "), "{listed}");
    assert!(listed.contains("acme.db #1 "), "{listed}");

    // PostgreSQL still cannot hold the record: it is refused again, as a new dead
    // letter, and the old one counts as replayed.
    let (ok, stdout, stderr) = replay(data, "acme.db");
    assert!(!ok);
    assert_eq!(stdout, "acme.db #1: delivered\n");
    assert!(
        stderr.contains("the sink refused 1 record(s) again; they are new dead letters #2..#2"),
        "{stderr}"
    );
    let db_letters = dead_letters(data, "acme.db");
    assert_eq!(db_letters.len(), 2);
    assert_eq!(db_letters[1]["record"], db_letters[0]["record"]);
    assert_eq!(rows(), 3);

    // A backend started afterwards keeps what replay wrote and repeats nothing.
    let backend = Backend::start(data, port, &[]);
    std::thread::sleep(Duration::from_secs(2));
    backend.stop();
    assert_eq!(es.count(), 4);
    assert_eq!(es.state.lock().unwrap().overwrites, 0);
    assert_eq!(rows(), 3);
    assert_eq!(count_jsonl_lines(&files), 4);
    assert_eq!(dead_letters(data, "acme.search").len(), 1);
    assert_eq!(dead_letters(data, "acme.db").len(), 2);
}

/// A tenant key that is missing on the router: every batch is dead-lettered
/// (`unknown key`). Once the key file is back, replay delivers them to a file and
/// an S3 destination, once, and a restarted backend goes on from there.
#[test]
fn batches_sealed_to_a_missing_key_are_delivered_once_the_key_is_back() {
    let s3 = S3Server::start();
    let secrets = tempfile::tempdir().unwrap();
    let s3_secret = secrets.path().join("s3-secret");
    std::fs::write(&s3_secret, format!("{}\n", S3Server::SECRET_KEY)).unwrap();
    let data = tempfile::tempdir().unwrap();
    let data = data.path();
    let generated = logferry(data, &["keys", "generate", "--tenant", "acme"]);
    assert!(generated.status.success());
    let encryption = String::from_utf8_lossy(&generated.stdout).into_owned();
    assert!(encryption.contains("key_id: 1"), "{encryption}");
    let registry = format!(
        "\
tenants:
  - name: acme
    access_keys:
      - key: ak_a
{encryption}    destinations:
      - name: logs
        type: file
      - name: archive
        type: s3
        url: {s3}
        bucket: {bucket}
        access_key_id: {access_key}
        secret_access_key_file: {secret}
        batch_max_age: 200ms
",
        s3 = s3.url(),
        bucket = S3Server::BUCKET,
        access_key = S3Server::ACCESS_KEY,
        secret = s3_secret.display(),
    );
    std::fs::write(data.join("tenants.yaml"), &registry).unwrap();
    let key = data.join("keys/tenants/acme/1.key");
    let away = secrets.path().join("1.key");
    std::fs::rename(&key, &away).unwrap();

    let port = free_port();
    let backend = Backend::start(data, port, &[]);
    let send = |backend: &Backend, round: usize, n: usize| {
        send_lines(
            backend,
            &["--tag", "app", "--chunk-bytes", "8K"],
            (0..n).map(|i| format!("round {round} line {i}")),
        )
    };
    send(&backend, 0, 2000);
    let files = data.join("destinations/acme.logs");
    let batches = |destination: &str| dead_letters(data, destination).len();
    wait_for("the dead letters", Duration::from_secs(60), || {
        batches("acme.logs") > 0 && batches("acme.logs") == batches("acme.archive")
    });
    std::thread::sleep(Duration::from_millis(500));
    backend.stop();
    let n = batches("acme.logs");
    assert_eq!(n, batches("acme.archive"));
    let letters = dead_letters(data, "acme.logs");
    assert!(
        letters
            .iter()
            .all(|l| l["reason"].as_str().unwrap().contains("key"))
    );
    assert_eq!(count_jsonl_lines(&files), 0);
    assert_eq!(s3.lines().0.len(), 0);

    // Still missing: nothing moves, everything stays.
    let (ok, stdout, stderr) = replay(data, "acme.logs");
    assert!(!ok);
    assert_eq!(stdout.lines().count(), n, "{stdout}");
    assert!(
        stdout.lines().all(|l| l.contains(": still fails: ")),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("{n} dead letter(s) still fail")),
        "{stderr}"
    );

    std::fs::rename(&away, &key).unwrap();
    for destination in ["acme.logs", "acme.archive"] {
        let (ok, stdout, stderr) = replay(data, destination);
        assert!(ok, "{stdout}{stderr}");
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.ends_with(": delivered"))
                .count(),
            n
        );
    }
    let lines = |round: usize| {
        let mut want: Vec<String> = (0..2000)
            .map(|i| format!("round {round} line {i}"))
            .collect();
        want.sort();
        want
    };
    let logs = |records: Vec<Value>| {
        let mut got: Vec<String> = records
            .iter()
            .map(|r| r["record"]["log"].as_str().unwrap().to_string())
            .collect();
        got.sort();
        got
    };
    let s3_records = || {
        s3.lines()
            .0
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        logs(logferry_e2e::backend::read_jsonl_tree(&files)),
        lines(0)
    );
    assert_eq!(logs(s3_records()), lines(0));
    let replay_objects = s3.objects(".ndjson.zst");
    assert_eq!(
        replay_objects
            .keys()
            .filter(|k| k.contains("/replay-"))
            .count(),
        1,
        "{:?}",
        replay_objects.keys().collect::<Vec<_>>()
    );
    let (ok, _, _) = replay(data, "acme.archive");
    assert!(ok);
    assert_eq!(s3_records().len(), 2000);

    // The backend again, with the key: new records flow, the replayed ones stay
    // once (S3 cleans only objects past its checkpoint), and the files verify.
    let backend = Backend::start(data, port, &[]);
    send(&backend, 1, 2000);
    let mut both = lines(0);
    both.extend(lines(1));
    both.sort();
    wait_for("the second round", Duration::from_secs(60), || {
        count_jsonl_lines(&files) == 4000 && s3.lines().0.len() == 4000
    });
    backend.stop();
    assert_eq!(logs(logferry_e2e::backend::read_jsonl_tree(&files)), both);
    assert_eq!(logs(s3_records()), both);
    let verify = logferry(data, &["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
