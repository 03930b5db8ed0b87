//! `logferry verify` on what a real backend wrote: OK with exit 0, then a finding and
//! exit 1 once a byte is changed.

use std::process::Command;
use std::time::Duration;

use logferry_e2e::backend::{Backend, backend_bin, send_lines, wait_for_lines};

#[test]
fn verify_passes_on_sink_files_and_fails_on_a_changed_byte() {
    let data = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &["--chain-checkpoint-interval", "0s"]);
    send_lines(
        &backend,
        &["--tag", "audit", "--chunk-bytes", "64K"],
        (0..20_000).map(|n| format!("audit line {n}")),
    );
    wait_for_lines(data.path(), 20_000, Duration::from_secs(30));
    backend.stop();

    let verify = || {
        Command::new(backend_bin())
            .arg("verify")
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap()
    };
    let ok = verify();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{stdout}{stderr}");
    let file = std::fs::read_dir(data.path().join("files/dev"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let key = file.file_name().unwrap().to_string_lossy().to_string();
    let data_file = file.join(format!("{key}.jsonl"));
    let len = std::fs::metadata(&data_file).unwrap().len();
    assert!(
        stdout.starts_with(&format!("OK {}: {len} bytes in ", data_file.display()))
            && stdout.contains(&format!("signed up to byte {len}\n")),
        "{stdout}"
    );
    assert!(
        stderr.contains("verified 1 file(s)") && stderr.contains("MB/s): all OK"),
        "{stderr}"
    );

    // An auditor with the exported key and a copy of the files, without the data dir.
    let audit = tempfile::tempdir().unwrap();
    let exported = Command::new(backend_bin())
        .args(["keys", "export-verify", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(exported.status.success());
    assert_eq!(
        exported.stdout,
        std::fs::read(data.path().join("keys/signing.pub.pem")).unwrap()
    );
    std::fs::write(audit.path().join("verify.pem"), &exported.stdout).unwrap();
    for suffix in ["jsonl", "jsonl.chain"] {
        std::fs::copy(
            file.join(format!("{key}.{suffix}")),
            audit.path().join(format!("{key}.{suffix}")),
        )
        .unwrap();
    }
    let audited = Command::new(backend_bin())
        .arg("verify")
        .arg("--data-dir")
        .arg(audit.path().join("no-such-dir"))
        .arg("--public-key")
        .arg(audit.path().join("verify.pem"))
        .arg(audit.path())
        .output()
        .unwrap();
    assert!(
        audited.status.success(),
        "{}",
        String::from_utf8_lossy(&audited.stdout)
    );
    // A key from another backend does not verify the same files.
    let other = tempfile::tempdir().unwrap();
    logferry_backend::auth::TokenAuthority::load_or_create(other.path()).unwrap();
    let foreign = Command::new(backend_bin())
        .arg("verify")
        .arg("--public-key")
        .arg(other.path().join("signing.pub.pem"))
        .arg(audit.path())
        .output()
        .unwrap();
    assert_eq!(
        foreign.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&foreign.stdout)
    );

    let mut bytes = std::fs::read(&data_file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'7' { b'8' } else { b'7' };
    std::fs::write(&data_file, &bytes).unwrap();
    let bad = verify();
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    let finding = stdout.lines().next().unwrap();
    assert!(
        finding.starts_with(&format!("FAIL {}: modified: bytes ", data_file.display())),
        "{finding}"
    );
    // The block it names holds the changed byte.
    let range = finding.split("modified: bytes ").nth(1).unwrap();
    let (from, to) = range.split_once("..").unwrap();
    let to: usize = to.split_whitespace().next().unwrap().parse().unwrap();
    let from: usize = from.parse().unwrap();
    assert!(from <= at && at < to, "{finding} (changed byte {at})");
}

/// A clean stop signs what the last checkpoint interval left unsigned.
#[test]
fn a_clean_stop_signs_the_tail_of_every_file() {
    let data = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &["--chain-checkpoint-interval", "1h"]);
    // Two sends, two steps: the first commit signs, the second (inside the hour) not.
    for (round, lines) in [(0, 1000), (1, 2000)] {
        send_lines(
            &backend,
            &["--tag", "audit"],
            (0..1000).map(|n| format!("round {round} line {n}")),
        );
        wait_for_lines(data.path(), lines, Duration::from_secs(30));
    }
    let verify = || {
        let out = Command::new(backend_bin())
            .arg("verify")
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let file = std::fs::read_dir(data.path().join("files/dev"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let key = file.file_name().unwrap().to_string_lossy().to_string();
    let len = std::fs::metadata(file.join(format!("{key}.jsonl")))
        .unwrap()
        .len();
    let before = verify();
    assert!(
        !before.contains(&format!("signed up to byte {len}\n")),
        "the second step is not signed yet: {before}"
    );
    backend.stop();
    let after = verify();
    assert!(
        after.contains(&format!("signed up to byte {len}\n")),
        "{after}"
    );
}
