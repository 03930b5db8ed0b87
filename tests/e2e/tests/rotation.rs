//! File rotation by size with gzip of closed files: every record once and in order
//! across the numbered files, through a `kill -9`; closed files are compressed and
//! their chains signed to their last byte, and `verify` checks the `.gz` files. Both
//! for a tenant's own file destination (registry settings) and for the shared `files`
//! destination (`serve` flags).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use logferry_e2e::backend::{Backend, backend_bin, free_port, send_lines};

const REGISTRY: &str = "\
tenants:
  - name: acme
    access_keys:
      - key: ak_a
    destinations:
      - name: logs
        type: file
        rotate_bytes: 64K
        gzip: true
";

/// The files of `ak_a` in number order: (number, gzipped, decompressed content).
fn segments(dir: &Path) -> Vec<(u64, bool, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let (plain, gzipped) = match name.strip_suffix(".gz") {
            Some(plain) => (plain.to_string(), true),
            None => (name.clone(), false),
        };
        let Some(middle) = plain
            .strip_prefix("ak_a")
            .and_then(|r| r.strip_suffix(".jsonl"))
        else {
            continue;
        };
        let n = if middle.is_empty() {
            0
        } else {
            middle[1..].parse().unwrap()
        };
        // A running backend compresses closed files: `X` may go between the listing
        // and the read (`X.gz` is there by then).
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        let text = if gzipped {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_string(&mut text)
                .unwrap();
            text
        } else {
            String::from_utf8(bytes).unwrap()
        };
        out.push((n, gzipped, text));
    }
    out.sort_by_key(|s| s.0);
    out
}

fn logs(dir: &Path) -> Vec<String> {
    segments(dir)
        .iter()
        // Whole lines only: a running backend may be appending the last one.
        .flat_map(|(_, _, text)| {
            text.split_inclusive('\n')
                .filter(|line| line.ends_with('\n'))
                .map(|line| line.trim_end().to_string())
                .collect::<Vec<_>>()
        })
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            value["record"]["log"].as_str().unwrap().to_string()
        })
        .collect()
}

fn send(backend: &Backend, round: usize, lines: usize) {
    send_lines(
        backend,
        &["--tag", "app", "--chunk-bytes", "16K"],
        (0..lines).map(|n| format!("round {round} line {n}")),
    );
}

fn wait_for_logs(dir: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while logs(dir).len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} records",
            logs(dir).len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn files_rotate_by_size_and_closed_files_are_gzipped_and_verify() {
    rotates(REGISTRY, &[], "destinations/acme.logs/acme/ak_a");
}

#[test]
fn the_shared_files_destination_rotates_with_serve_flags() {
    let registry = REGISTRY.split("    destinations:").next().unwrap();
    rotates(
        registry,
        &["--files-rotate-bytes", "64K", "--files-gzip"],
        "files/acme/ak_a",
    );
}

/// Two rounds of 5,000 records around a `kill -9`, then the checks of the module docs
/// on the files of `ak_a` in `dir` (under the data directory).
fn rotates(registry: &str, flags: &[&str], dir: &str) {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("tenants.yaml"), registry).unwrap();
    let port = free_port();
    let backend = Backend::start(data.path(), port, flags);
    let dir: PathBuf = data.path().join(dir);

    send(&backend, 0, 5000);
    wait_for_logs(&dir, 5000);
    backend.kill();
    let backend = Backend::start(data.path(), port, flags);
    send(&backend, 1, 5000);
    wait_for_logs(&dir, 10_000);
    backend.stop();

    let want: Vec<String> = (0..2)
        .flat_map(|round| (0..5000).map(move |n| format!("round {round} line {n}")))
        .collect();
    assert_eq!(
        logs(&dir),
        want,
        "every record once, in order, across the files"
    );
    let found = segments(&dir);
    assert!(found.len() >= 5, "{} files", found.len());
    let numbers: Vec<u64> = found.iter().map(|s| s.0).collect();
    assert_eq!(numbers, (0..found.len() as u64).collect::<Vec<_>>());
    let (last, closed) = found.split_last().unwrap();
    assert!(!last.1, "the file written now stays plain");
    assert!(closed.iter().all(|s| s.1), "closed files are gzipped");
    for (n, _, text) in closed {
        assert!(
            (64 << 10..(64 << 10) + (64 << 10)).contains(&text.len()),
            "file {n} holds {} bytes",
            text.len()
        );
    }

    let out = Command::new(backend_bin())
        .arg("verify")
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for (n, _, text) in closed {
        let name = if *n == 0 {
            "ak_a.jsonl.gz".to_string()
        } else {
            format!("ak_a.{n}.jsonl.gz")
        };
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("/{name}:")))
            .unwrap_or_else(|| panic!("{name} verified: {stdout}"));
        assert!(
            line.starts_with("OK ") && line.ends_with(&format!("signed up to byte {}", text.len())),
            "a closed file is signed to its end: {line}"
        );
    }
}
