//! `logferry send`: lines in, the same lines out of the file sink, exit status 0 only
//! when every line is acked.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use logferry_e2e::backend::{Backend, backend_bin, free_port, read_jsonl_tree, wait_for_lines};

#[test]
fn send_ships_every_line_once_and_exits_zero() {
    let data = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let lines: Vec<String> = (0..50_000)
        .map(|n| format!("line {n} \u{e9}t\u{e9} \"quoted\" \\ tab\tend"))
        .collect();
    let mut child = Command::new(backend_bin())
        .args(["send", "-", "--tag", "app.send", "--chunk-bytes", "256K"])
        .envs(backend.credentials_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in &lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "send failed: {stderr}");
    assert!(
        stderr.contains("50000 lines in"),
        "a summary line on stderr: {stderr}"
    );
    // Acked means durable in the buffer; the router writes the files right after.
    assert_eq!(
        wait_for_lines(data.path(), lines.len(), Duration::from_secs(30)),
        lines.len()
    );
    let records = read_jsonl_tree(&data.path().join("files"));
    let got: Vec<&str> = records
        .iter()
        .map(|r| r["record"]["log"].as_str().unwrap())
        .collect();
    assert_eq!(got, lines.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(records.iter().all(|r| r["tag"] == "app.send"));
    backend.stop();
}

#[test]
fn send_fails_when_nothing_can_be_acked_in_time() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let backend = Backend::start(data.path(), port, &[]);
    let env = backend.credentials_env();
    backend.stop();
    let output = send(&["--timeout", "3s"], env, b"one\ntwo\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "send must fail: {stderr}");
    assert!(
        stderr.contains("not acked") || stderr.contains("unacked"),
        "the error says what is missing: {stderr}"
    );
}

/// Runs `logferry send - ARGS` with `env`, feeding `input` on stdin.
fn send(args: &[&str], env: Vec<(String, String)>, input: &[u8]) -> std::process::Output {
    let mut child = Command::new(backend_bin())
        .args(["send", "-"])
        .args(args)
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn token_issue_signs_a_working_token_and_print_events_echoes_records() {
    let data = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &["--print-events"]);
    let mut env = backend.credentials_env();
    let access_key = backend.credentials().access_key;

    let issue = |key: &str| {
        Command::new(backend_bin())
            .args(["token", "issue", "--ttl", "1h", "--access-key", key])
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap()
    };
    let unknown = issue("ak_nobody");
    assert!(!unknown.status.success());
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(message.contains("ak_nobody"), "names the key: {message}");

    let issued = issue(&access_key);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let token = String::from_utf8(issued.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    env.retain(|(k, _)| k != "LOGFERRY_ACCESS_TOKEN");
    env.push(("LOGFERRY_ACCESS_TOKEN".into(), token));

    let output = send(&["--tag", "t.token"], env, b"first\nsecond\n");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(wait_for_lines(data.path(), 2, Duration::from_secs(30)), 2);
    let files = read_jsonl_tree(&data.path().join("files"));
    // The stdout sink runs independently; give it the same moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while backend.stdout().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let printed: Vec<serde_json::Value> = backend
        .stdout()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed, files, "--print-events prints the same records");
    backend.stop();
}

#[test]
fn an_agent_with_several_endpoints_moves_past_one_that_is_down() {
    let data = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let mut env = backend.credentials_env();
    let live = env
        .iter()
        .find(|(k, _)| k == "LOGFERRY_ENDPOINT")
        .map(|(_, v)| v.clone())
        .unwrap();
    let dead = format!("https://127.0.0.1:{}", free_port());
    env.retain(|(k, _)| k != "LOGFERRY_ENDPOINT");
    env.push(("LOGFERRY_ENDPOINT".into(), format!("{dead},{live}")));
    let output = send(&["--timeout", "30s"], env, b"one\ntwo\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("cannot reach {dead}")), "{stderr}");
    assert_eq!(wait_for_lines(data.path(), 2, Duration::from_secs(30)), 2);
    backend.stop();
}
