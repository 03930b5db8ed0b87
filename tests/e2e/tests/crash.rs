//! Crash tests. Each kills a real process with SIGKILL mid-stream, restarts it on the
//! same state, and ends with every record in the file sink exactly once.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fluent_bit_sys::FLB_OK;
use logferry_e2e::backend::{
    Backend, count_jsonl_lines, free_port, read_jsonl_tree, wait_for_lines,
};
use logferry_e2e::host::Host;
use logferry_e2e::{expected_records, fixture, plugin_path, without_origin};
use serde_json::Value;

const BIG: &str = "tail-large-14740-records";
const BIG_RECORDS: usize = 14740;

/// Checks that the file sink holds each record of `copies` distinct copies of the big
/// fixture (tags `big.N`) exactly once.
fn assert_exactly_once(data_dir: &Path, copies: usize) {
    let total = copies * BIG_RECORDS;
    let landed = wait_for_lines(data_dir, total, Duration::from_secs(120));
    assert_eq!(
        landed, total,
        "lines in the file sink (duplicates or losses)"
    );
    let big = fixture(BIG);
    let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for record in read_jsonl_tree(&data_dir.join("files")) {
        let tag = record["tag"].as_str().unwrap().to_string();
        got.entry(tag).or_default().push(without_origin(&record));
    }
    assert_eq!(
        got.len(),
        copies,
        "tags: {:?}",
        got.keys().collect::<Vec<_>>()
    );
    for copy in 0..copies {
        let tag = format!("big.{copy}");
        let want = expected_records(&big, &tag);
        let records = got
            .get(&tag)
            .unwrap_or_else(|| panic!("no record of {tag}"));
        assert_eq!(records.len(), want.len(), "records of {tag}");
        assert!(records == &want, "{tag}: records differ from the fixture");
    }
    // The files and their hash chains survived the crashes in step.
    let verify = std::process::Command::new(logferry_e2e::backend::backend_bin())
        .arg("verify")
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "logferry verify after the crashes:\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn sigkill_of_the_backend_while_streaming_loses_and_duplicates_nothing() {
    const COPIES: usize = 10; // 147,400 records
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let backend = Backend::start(data.path(), port, &[]);
    let credentials = backend.credentials();
    let host = Host::load(&plugin_path()).unwrap();
    let instance = host
        .init(&credentials.plugin_properties(spool.path()))
        .unwrap();
    let big = fixture(BIG);

    for copy in 0..COPIES / 2 {
        assert_eq!(instance.flush(&format!("big.{copy}"), &big.chunk), FLB_OK);
    }
    // Kill as soon as the router has written part of the stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_jsonl_lines(&data.path().join("files")) == 0 {
        assert!(Instant::now() < deadline, "nothing arrived");
        std::thread::sleep(Duration::from_millis(2));
    }
    backend.kill();
    let at_kill = count_jsonl_lines(&data.path().join("files"));
    // The rest is flushed while the backend is down: it waits in the spool.
    for copy in COPIES / 2..COPIES {
        assert_eq!(instance.flush(&format!("big.{copy}"), &big.chunk), FLB_OK);
    }
    let backend = Backend::start(data.path(), port, &[]);
    // A second kill, in the middle of the re-sent stream.
    while count_jsonl_lines(&data.path().join("files")) <= at_kill {
        assert!(
            Instant::now() < deadline,
            "nothing arrived after the restart"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    backend.kill();
    let backend = Backend::start(data.path(), port, &[]);
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();
    assert_exactly_once(data.path(), COPIES);
    let log = backend.stop();
    assert!(
        !log.iter().any(|l| l.contains("dead-letter")),
        "nothing dead-lettered: {log:#?}"
    );
    eprintln!(
        "first kill after {at_kill} of {} records",
        COPIES * BIG_RECORDS
    );
}

/// Runs `flb-host` flushing `copies` copies of the big fixture, starting at `start_at`.
fn flb_host(
    env_file: &Path,
    spool: &Path,
    copies: usize,
    start_at: usize,
    hold: bool,
) -> std::process::Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flb-host"));
    command
        .arg("--plugin")
        .arg(plugin_path())
        .arg("--env-file")
        .arg(env_file)
        .arg("--buffer-path")
        .arg(spool)
        .arg("--prop")
        .arg("batch.max_delay=5ms")
        .arg("--chunk")
        .arg(logferry_e2e::fixtures_dir().join(format!("{BIG}.msgpack")))
        .arg("--tag")
        .arg("big")
        .arg("--repeat")
        .arg(copies.to_string())
        .arg("--start-at")
        .arg(start_at.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if hold {
        command.arg("--hold").arg("--interval").arg("20");
    }
    command.spawn().expect("spawn flb-host")
}

#[test]
fn sigkill_of_the_plugin_host_then_restart_on_the_same_buffer_path() {
    const COPIES: usize = 8;
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let env_file = data.path().join("dev-credentials.env");

    // Fluent Bit with the plugin, killed after a few flushes returned FLB_OK.
    let mut child = flb_host(&env_file, spool.path(), COPIES, 0, true);
    let stdout = child.stdout.take().unwrap();
    let mut flushed_ok = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.starts_with("flushed ") {
            flushed_ok += 1;
            if flushed_ok == 4 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(flushed_ok, 4);

    // Fluent Bit re-delivers from the first chunk it has no FLB_OK for, and, as after a
    // lost flush result, also the last one that had succeeded: the spool must keep it
    // once.
    let mut child = flb_host(&env_file, spool.path(), COPIES, flushed_ok - 1, false);
    let status = child.wait().unwrap();
    assert!(status.success(), "flb-host exited with {status}");
    assert_exactly_once(data.path(), COPIES);
    backend.stop();
}
