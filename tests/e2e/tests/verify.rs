//! `logferry verify` on what a real backend wrote: OK with exit 0, then a finding and
//! exit 1 once a byte is changed, a file is deleted with its chain, a chain is rebuilt,
//! or the keys in the data directory are replaced (found once the key is pinned).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use logferry_e2e::backend::{Backend, backend_bin, send_lines, wait_for_lines};

/// The data directory a backend started with `flags` leaves after it took `lines`
/// audit lines in chunks of `chunk` and stopped cleanly.
fn written(flags: &[&str], chunk: &str, lines: usize) -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, flags);
    send_lines(
        &backend,
        &["--tag", "audit", "--chunk-bytes", chunk],
        (0..lines).map(|n| format!("audit line {n}")),
    );
    wait_for_lines(data.path(), lines, Duration::from_secs(30));
    backend.stop();
    data
}

#[test]
fn verify_passes_on_sink_files_and_fails_on_a_changed_byte() {
    let data = written(&["--chain-checkpoint-interval", "0s"], "64K", 20_000);

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
        std::fs::read(data.path().join("keys/checkpoint.pub.pem")).unwrap()
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

/// `logferry verify ARGS...`: (exit code, stdout, stderr).
fn verify(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = Command::new(backend_bin())
        .arg("verify")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A chain for `bytes` rebuilt from the start as one block, named `name`; with
/// `signer`, ending in a checkpoint it signs. Returns the chain's text and head.
fn rebuilt_chain(
    name: &str,
    bytes: &[u8],
    signer: Option<&logferry_backend::signing::CheckpointSigner>,
) -> (String, String) {
    use logferry_backend::chain::{ChainLine, ChainState, CheckpointClaims};
    let mut state = ChainState::resume(name, "", 0);
    state.update(bytes);
    let link = state.close_block().unwrap();
    let mut text = serde_json::to_string(&link).unwrap() + "\n";
    if let Some(signer) = signer {
        let c = signer.sign(&CheckpointClaims::now(name, &state)).unwrap();
        text += &(serde_json::to_string(&ChainLine::Checkpoint { c }).unwrap() + "\n");
    }
    let ChainLine::Link { h, .. } = link else {
        unreachable!()
    };
    (text, h)
}

/// The five evasions that used to verify "all OK", each on its own copy of what a
/// backend left after a clean stop: a file deleted with its chain, a whole
/// access-key directory deleted ("verified 0 file(s)"), bytes rewritten with the
/// chain rebuilt from the start without checkpoints, and the keys in the data
/// directory replaced with everything re-signed (found once the key is pinned).
#[test]
fn deletion_rebuilt_chains_and_replaced_keys_are_findings() {
    let data = written(&["--files-rotate-bytes", "64K"], "16K", 5000);

    // An auditor's copy of the checkpoint key, taken before anything happened.
    let audit = tempfile::tempdir().unwrap();
    let pinned = audit.path().join("checkpoint.pem");
    let exported = Command::new(backend_bin())
        .args(["keys", "export-verify", "--data-dir"])
        .arg(data.path())
        .arg("--output")
        .arg(&pinned)
        .output()
        .unwrap();
    assert!(exported.status.success());
    let kid = logferry_backend::signing::kid(&std::fs::read(&pinned).unwrap());

    let key_dir = std::fs::read_dir(data.path().join("files/dev"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let key = key_dir.file_name().unwrap().to_string_lossy().to_string();
    let files = |dir: &Path| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("files/dev").join(&key))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        files.sort();
        files
    };
    assert!(files(data.path()).len() >= 3, "{:?}", files(data.path()));

    // Untouched: OK, saying which key it trusts and where it found it.
    let (code, stdout, stderr) = verify(&["--data-dir".as_ref(), data.path().as_os_str()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("OK ")).count(),
        files(data.path()).len(),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!(
            "verify: trusting the checkpoint key `{kid}` found in the data directory ({}) for \
             checkpoints and manifests; whoever can write that directory can replace it and \
             re-sign: pin a copy kept elsewhere with --public-key\n",
            data.path().join("keys/checkpoint.pub.pem").display()
        )),
        "{stderr}"
    );
    let manifest = |dir: &Path| dir.join("files/@manifest.jsonl.jws");

    // 1. A file deleted together with its chain.
    let copy = tempfile::tempdir().unwrap();
    copy_tree(data.path(), copy.path());
    let gone = key_dir.join(format!("{key}.1.jsonl"));
    let gone = copy.path().join(gone.strip_prefix(data.path()).unwrap());
    let len = std::fs::metadata(&gone).unwrap().len();
    std::fs::remove_file(&gone).unwrap();
    std::fs::remove_file(format!("{}.chain", gone.display())).unwrap();
    let (code, stdout, _) = verify(&["--data-dir".as_ref(), copy.path().as_os_str()]);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("FAIL "))
            .collect::<Vec<_>>(),
        [format!(
            "FAIL {}: missing: {} names it with {len} bytes, but the file and its chain are \
             gone; they were deleted",
            gone.display(),
            manifest(copy.path()).display()
        )]
    );

    // 2. A whole access-key directory: nothing left to verify is a failure.
    let copy = tempfile::tempdir().unwrap();
    copy_tree(data.path(), copy.path());
    std::fs::remove_dir_all(copy.path().join("files/dev").join(&key)).unwrap();
    let (code, stdout, stderr) = verify(&["--data-dir".as_ref(), copy.path().as_os_str()]);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": missing: ")).count(),
        files(data.path()).len(),
        "{stdout}"
    );
    assert!(
        stderr.contains("verified 0 file(s), 0 bytes in ")
            && stderr.contains(&format!(
                "MB/s): {} with findings",
                files(data.path()).len()
            )),
        "{stderr}"
    );

    // 3. Bytes rewritten and the chain rebuilt from the start, without checkpoints.
    let copy = tempfile::tempdir().unwrap();
    copy_tree(data.path(), copy.path());
    let target = files(copy.path()).pop().unwrap();
    let mut bytes = std::fs::read(&target).unwrap();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'7' { b'8' } else { b'7' };
    std::fs::write(&target, &bytes).unwrap();
    let name = target.file_name().unwrap().to_string_lossy().to_string();
    let (chain, _) = rebuilt_chain(&name, &bytes, None);
    std::fs::write(format!("{}.chain", target.display()), chain).unwrap();
    let (code, stdout, _) = verify(&["--data-dir".as_ref(), copy.path().as_os_str()]);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("FAIL "))
            .collect::<Vec<_>>(),
        [format!(
            "FAIL {}: rebuilt: the chain does not reach the head the manifest records at byte \
             {}; the file and its chain were rewritten",
            target.display(),
            bytes.len()
        )]
    );

    // 4. The keys in the data directory replaced, the file, its chain and the manifest
    // re-signed: `--data-dir` trusts what it finds (and says so); the pinned key does not.
    let copy = tempfile::tempdir().unwrap();
    copy_tree(data.path(), copy.path());
    let forger_keys = tempfile::tempdir().unwrap();
    let forger =
        logferry_backend::signing::CheckpointSigner::load_or_create(forger_keys.path()).unwrap();
    for name in ["checkpoint.pem", "checkpoint.pub.pem"] {
        std::fs::copy(
            forger_keys.path().join(name),
            copy.path().join("keys").join(name),
        )
        .unwrap();
    }
    let text = std::fs::read_to_string(manifest(copy.path())).unwrap();
    let (_, claims) = logferry_backend::auth::decode_unverified(&text).unwrap();
    let mut claims: logferry_backend::manifest::Manifest = serde_json::from_value(claims).unwrap();
    let target = files(copy.path()).remove(0);
    for file in files(copy.path()) {
        let mut bytes = std::fs::read(&file).unwrap();
        if file == target {
            bytes[10] ^= 0x20;
            std::fs::write(&file, &bytes).unwrap();
        }
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let (chain, head) = rebuilt_chain(&name, &bytes, Some(&forger));
        std::fs::write(format!("{}.chain", file.display()), chain).unwrap();
        let relative = file
            .strip_prefix(copy.path().join("files"))
            .unwrap()
            .to_string_lossy()
            .to_string();
        let entry = claims
            .files
            .iter_mut()
            .find(|e| e.file == relative)
            .unwrap();
        entry.head = head;
    }
    claims.seq += 1;
    logferry_backend::manifest::write(&manifest(copy.path()), &claims, &forger).unwrap();
    let (code, stdout, stderr) = verify(&["--data-dir".as_ref(), copy.path().as_os_str()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "verify: trusting the checkpoint key `{}` found in the data directory",
            forger.kid()
        )),
        "{stderr}"
    );
    let (code, stdout, stderr) = verify(&[
        "--data-dir".as_ref(),
        copy.path().as_os_str(),
        "--public-key".as_ref(),
        pinned.as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "verify: trusting the checkpoint key `{kid}` pinned by {} for checkpoints and \
             manifests\n",
            pinned.display()
        )),
        "{stderr}"
    );
    let untrusted = format!(
        "signed by key `{}`, which is not trusted here",
        forger.kid()
    );
    assert!(
        stdout.contains(&format!(
            "FAIL {}: the manifest's signature does not verify ({untrusted}); forged or altered\n",
            manifest(copy.path()).display()
        )) && stdout.contains(&format!(
            "FAIL {}: chain line 2: the checkpoint's signature does not verify ({untrusted}); \
             forged, or signed by another backend's key\n",
            target.display()
        )),
        "{stdout}"
    );
}
