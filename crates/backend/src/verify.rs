//! `logferry verify`: every data file against its hash chain ([`crate::chain`]), and
//! the set of files against the signed manifests ([`crate::manifest`]).
//!
//! Output, one line per file on stdout: `OK <file>: ...` or `FAIL <file>: <finding>`,
//! and `NOTE <file>: ...` after the `OK` of a file no manifest covers. A manifest
//! that does not verify is a `FAIL <manifest>: ...` line; a file a manifest names
//! that is gone is a `FAIL <file>: missing: ...` line. The summary goes to stderr.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::io::Write;

use anyhow::{Context, Result};

use crate::chain::{CheckpointVerifier, FileCheck, chain_path, verify_file};
use crate::manifest::{self, Manifest};

/// What `verify` is asked to hold the files to.
#[derive(Debug, Clone)]
pub struct Options {
    /// See [`FileCheck::max_unsigned_age`].
    pub max_unsigned_age: Option<Duration>,
    /// Whether the paths are whole destinations (the data directory's defaults): a
    /// file signed by the checkpoint key that no manifest covers is then a finding,
    /// since the sink that signed it keeps one.
    pub require_manifest: bool,
}

/// Every data file under `path` (a file, or a directory searched recursively),
/// chain files whose data file is gone, and manifests.
pub fn collect(path: &Path, files: &mut Vec<PathBuf>, manifests: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            collect(&entry.path(), files, manifests)?;
        }
        return Ok(());
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if manifest::is_manifest(&name) {
        manifests.push(path.to_path_buf());
    } else if let Some(data) = path.to_str().and_then(|p| p.strip_suffix(".chain")) {
        let data = PathBuf::from(data);
        let gzipped = gz(&data);
        if !data.exists() && !gzipped.exists() && !files.contains(&data) {
            files.push(data);
        }
    } else if [".jsonl", ".msgpack", ".jsonl.gz", ".msgpack.gz"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
        && !files.contains(&path.to_path_buf())
    {
        files.push(path.to_path_buf());
    }
    Ok(())
}

fn gz(plain: &Path) -> PathBuf {
    PathBuf::from(format!("{}.gz", plain.display()))
}

/// The name a file's chain has: without `.gz`.
fn plain(path: &Path) -> PathBuf {
    path.to_str()
        .and_then(|p| p.strip_suffix(".gz"))
        .map_or_else(|| path.to_path_buf(), PathBuf::from)
}

/// A valid manifest and the directory it covers.
struct Covering {
    root: PathBuf,
    manifest: Manifest,
}

impl Covering {
    /// Whether a file at `plain` is one this manifest's sink would write.
    fn covers(&self, plain: &Path) -> bool {
        plain.starts_with(&self.root)
            && plain
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(&self.manifest.suffix))
    }
}

/// Checks every file and manifest; prints one line each and a summary with the
/// throughput. Returns whether everything was OK.
pub fn verify_paths(
    paths: &[PathBuf],
    verifier: &CheckpointVerifier,
    options: &Options,
    out: &mut dyn Write,
) -> Result<bool> {
    let started = Instant::now();
    let (mut files, mut manifests) = (Vec::new(), Vec::new());
    for path in paths {
        if !path.exists() && !chain_path(path).exists() {
            anyhow::bail!("{} does not exist", path.display());
        }
        collect(path, &mut files, &mut manifests)?;
    }
    let mut bad = 0usize;
    let mut coverings = Vec::new();
    // Plain path -> (len, head, which manifest).
    let mut named: BTreeMap<PathBuf, (u64, String, PathBuf)> = BTreeMap::new();
    for path in &manifests {
        match manifest::read(path, verifier)? {
            manifest::Read::Valid(manifest, key) => {
                let root = path.parent().unwrap_or(Path::new("")).to_path_buf();
                eprintln!(
                    "manifest {}: seq {}, signed at {} by {key}, names {} file(s)",
                    path.display(),
                    manifest.seq,
                    chrono::DateTime::from_timestamp(manifest.iat as i64, 0)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default(),
                    manifest.files.len()
                );
                for entry in &manifest.files {
                    named.insert(
                        root.join(&entry.file),
                        (entry.len, entry.head.clone(), path.clone()),
                    );
                }
                coverings.push(Covering { root, manifest });
            }
            manifest::Read::Invalid(reason) => {
                bad += 1;
                writeln!(out, "FAIL {}: {reason}", path.display())?;
            }
            manifest::Read::Missing => {}
        }
    }
    for (plain_path, (len, _, manifest)) in &named {
        let present = files.iter().any(|f| plain(f) == *plain_path);
        if !present {
            bad += 1;
            writeln!(
                out,
                "FAIL {}: missing: {} names it with {len} bytes, but the file and its chain \
                 are gone; they were deleted",
                plain_path.display(),
                manifest.display()
            )?;
        }
    }
    let (mut bytes, mut checked) = (0u64, 0usize);
    for file in &files {
        let plain_path = plain(file);
        let expected = named.get(&plain_path);
        let covered = coverings.iter().any(|c| c.covers(&plain_path));
        checked += 1;
        if covered && expected.is_none() {
            bad += 1;
            writeln!(
                out,
                "FAIL {}: absent from the manifest: the file sink never recorded this file; \
                 it was added, or renamed, by someone else",
                file.display()
            )?;
            continue;
        }
        let check = FileCheck {
            manifest: expected.map(|(len, head, _)| (*len, head.clone())),
            max_unsigned_age: options.max_unsigned_age,
        };
        let report = verify_file(file, verifier, &check)?;
        bytes += report.bytes;
        let finding = report.finding.clone().or_else(|| {
            let by_checkpoint_key = report.checkpoints > report.legacy_checkpoints;
            (!covered && options.require_manifest && by_checkpoint_key).then(|| {
                "no manifest covers this file, though the checkpoint key signed it and the \
                 file sink that holds that key keeps one: the manifest was removed"
                    .to_string()
            })
        });
        if let Some(finding) = finding {
            bad += 1;
            writeln!(out, "FAIL {}: {finding}", file.display())?;
            continue;
        }
        let legacy = match report.legacy_checkpoints {
            0 => String::new(),
            n => format!(" ({n} by the token-signing key of a release before the checkpoint key)"),
        };
        writeln!(
            out,
            "OK {}: {} bytes in {} blocks, {} signed checkpoints{legacy}, signed up to byte {}{}",
            file.display(),
            report.bytes,
            report.blocks,
            report.checkpoints,
            report.signed_len,
            if report.signed_len < report.bytes {
                " (the rest is chained, not signed yet)"
            } else {
                ""
            }
        )?;
        if !covered {
            writeln!(
                out,
                "NOTE {}: no manifest covers this file (written by a release before manifests, \
                 or copied out of its destination), so a file deleted together with its chain \
                 would go unnoticed here",
                file.display()
            )?;
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "verified {} file(s), {bytes} bytes in {:.2}s ({:.0} MB/s): {}",
        checked,
        secs,
        bytes as f64 / 1e6 / secs,
        if bad == 0 {
            "all OK".to_string()
        } else {
            format!("{bad} with findings")
        }
    );
    Ok(bad == 0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::chain::{ChainLine, genesis};
    use crate::router::Checkpoint;
    use crate::signing::{CheckpointSigner, KeyRole};
    use crate::sinks::{Chunk, FileSink, Sink};

    /// Two access keys of tenant `t`, two committed steps each, as a running backend
    /// leaves them (checkpoint stored, manifest written).
    fn destination(root: &Path, signer: Arc<CheckpointSigner>) -> serde_json::Value {
        let mut sink = FileSink::new(root.to_path_buf(), Some(signer), Duration::ZERO);
        sink.recover(&serde_json::Value::Null).unwrap();
        let mut state = serde_json::Value::Null;
        for step in 0..2 {
            for key in ["a", "b"] {
                let data = format!("{{\"key\":\"{key}\",\"step\":{step}}}\n");
                sink.write(&Chunk {
                    tenant: "t",
                    access_key: key,
                    agent: "00",
                    seq: 1,
                    tag: "test",
                    offset: 0,
                    first_index: 0,
                    data: data.as_bytes(),
                })
                .unwrap();
            }
            state = sink.commit(&Checkpoint::default()).unwrap();
            sink.checkpoint_stored().unwrap();
        }
        state
    }

    fn run(root: &Path, verifier: &CheckpointVerifier) -> (bool, String) {
        let mut out = Vec::new();
        let options = Options {
            max_unsigned_age: Some(Duration::from_secs(300)),
            require_manifest: true,
        };
        let ok = verify_paths(&[root.to_path_buf()], verifier, &options, &mut out).unwrap();
        (ok, String::from_utf8(out).unwrap())
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        verifier: CheckpointVerifier,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let signer = Arc::new(CheckpointSigner::load_or_create(&dir.path().join("keys")).unwrap());
        let root = dir.path().join("files");
        destination(&root, signer.clone());
        Fixture {
            verifier: signer.verifier().unwrap(),
            root,
            _dir: dir,
        }
    }

    fn data(f: &Fixture, key: &str) -> PathBuf {
        f.root.join(format!("t/{key}/{key}.jsonl"))
    }

    #[test]
    fn an_untouched_destination_verifies_against_its_manifest() {
        let f = fixture();
        let (ok, out) = run(&f.root, &f.verifier);
        assert!(ok, "{out}");
        assert_eq!(
            out.lines().filter(|l| l.starts_with("OK ")).count(),
            2,
            "{out}"
        );
        assert!(!out.contains("NOTE"), "{out}");
    }

    #[test]
    fn a_file_deleted_with_its_chain_is_missing() {
        let f = fixture();
        let len = std::fs::metadata(data(&f, "b")).unwrap().len();
        std::fs::remove_file(data(&f, "b")).unwrap();
        std::fs::remove_file(chain_path(&data(&f, "b"))).unwrap();
        let (ok, out) = run(&f.root, &f.verifier);
        assert!(!ok);
        assert!(
            out.contains(&format!(
                "FAIL {}: missing: {} names it with {len} bytes, but the file and its chain are \
                 gone; they were deleted\n",
                data(&f, "b").display(),
                f.root.join("@manifest.jsonl.jws").display()
            )),
            "{out}"
        );
    }

    #[test]
    fn a_deleted_access_key_directory_fails_with_zero_files_verified() {
        let f = fixture();
        std::fs::remove_dir_all(f.root.join("t")).unwrap();
        let (ok, out) = run(&f.root, &f.verifier);
        assert!(!ok);
        assert_eq!(
            out.lines().filter(|l| l.contains(": missing: ")).count(),
            2,
            "{out}"
        );
    }

    #[test]
    fn a_file_truncated_with_its_chain_or_rebuilt_from_the_start_is_found() {
        let f = fixture();
        let path = data(&f, "a");
        let original = std::fs::read(&path).unwrap();
        let chain = std::fs::read_to_string(chain_path(&path)).unwrap();
        // Cut back to the first link, chain and all.
        let first = chain.lines().next().unwrap();
        let ChainLine::Link { n, .. } = serde_json::from_str(first).unwrap() else {
            panic!("{first}")
        };
        std::fs::write(&path, &original[..n as usize]).unwrap();
        std::fs::write(chain_path(&path), format!("{first}\n")).unwrap();
        let (ok, out) = run(&f.root, &f.verifier);
        assert!(!ok);
        assert!(
            out.contains(&format!(
                "FAIL {}: truncated at byte {n}: the manifest records {} bytes; the file was cut \
                 together with its chain\n",
                path.display(),
                original.len()
            )),
            "{out}"
        );

        // Rewritten bytes, and a chain rebuilt from the start without checkpoints.
        let mut forged = original.clone();
        forged[2] ^= 0x20;
        std::fs::write(&path, &forged).unwrap();
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(genesis("a.jsonl"));
        hasher.update(&forged);
        let head: [u8; 32] = hasher.finalize().into();
        let link = ChainLine::Link {
            o: 0,
            n: forged.len() as u64,
            h: hex::encode(head),
        };
        std::fs::write(
            chain_path(&path),
            serde_json::to_string(&link).unwrap() + "\n",
        )
        .unwrap();
        let (ok, out) = run(&f.root, &f.verifier);
        assert!(!ok);
        assert!(
            out.contains(&format!(
                "FAIL {}: rebuilt: the chain does not reach the head the manifest records at byte \
                 {}; the file and its chain were rewritten\n",
                path.display(),
                original.len()
            )),
            "{out}"
        );
        // Without the manifest, the missing signatures give it away.
        std::fs::remove_file(f.root.join("@manifest.jsonl.jws")).unwrap();
        let (ok, out) = run(&f.root, &f.verifier);
        assert!(!ok);
        assert!(
            out.contains(&format!(
                "FAIL {}: unsigned: {} bytes in 1 blocks and no signed checkpoint; the chain \
                 could have been rebuilt\n",
                path.display(),
                forged.len()
            )),
            "{out}"
        );
        // And the untouched file says its manifest was removed.
        assert!(
            out.contains(&format!(
                "FAIL {}: no manifest covers this file",
                data(&f, "b").display()
            )),
            "{out}"
        );
    }

    #[test]
    fn a_file_the_manifest_does_not_name_is_found() {
        let f = fixture();
        let dir = f.root.join("t/c");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(data(&f, "a"), dir.join("c.jsonl")).unwrap();
        let (ok, out) = run(&f.root, &f.verifier);
        assert!(!ok);
        assert!(
            out.contains(&format!(
                "FAIL {}: absent from the manifest: the file sink never recorded this file; it \
                 was added, or renamed, by someone else\n",
                dir.join("c.jsonl").display()
            )),
            "{out}"
        );
    }

    #[test]
    fn a_data_directory_of_the_release_before_manifests_still_verifies() {
        // That release signed checkpoints with the token key and wrote no manifest.
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let tokens = crate::auth::TokenAuthority::load_or_create(&keys).unwrap();
        let (private, public) =
            crate::signing::load_or_create_pair(&keys, crate::signing::TOKEN_KEY).unwrap();
        let old = Arc::new(CheckpointSigner::from_pem(&private, &public).unwrap());
        assert_eq!(old.kid(), tokens.kid());
        let root = dir.path().join("files");
        let state = destination(&root, old.clone());
        std::fs::remove_file(root.join("@manifest.jsonl.jws")).unwrap();

        let new = CheckpointSigner::load_or_create(&keys).unwrap();
        let mut verifier = new.verifier().unwrap();
        verifier
            .trust(&public, KeyRole::Legacy, "signing.pub.pem")
            .unwrap();
        let (ok, out) = run(&root, &verifier);
        assert!(ok, "{out}");
        let path = root.join("t/a/a.jsonl");
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(
            out.starts_with(&format!(
                "OK {}: {len} bytes in 2 blocks, 2 signed checkpoints (2 by the token-signing \
                 key of a release before the checkpoint key), signed up to byte {len}\n\
                 NOTE {}: no manifest covers this file (written by a release before manifests, \
                 or copied out of its destination), so a file deleted together with its chain \
                 would go unnoticed here\n",
                path.display(),
                path.display()
            )),
            "{out}"
        );

        // The new release takes over: it names the files in a manifest at start and
        // signs with its own key; a checkpoint by the token key after that is forged.
        let mut sink = FileSink::new(root.clone(), Some(Arc::new(new)), Duration::ZERO);
        sink.recover(&state).unwrap();
        sink.write(&Chunk {
            tenant: "t",
            access_key: "a",
            agent: "00",
            seq: 2,
            tag: "test",
            offset: 0,
            first_index: 0,
            data: b"{\"new\":true}\n",
        })
        .unwrap();
        sink.commit(&Checkpoint::default()).unwrap();
        sink.checkpoint_stored().unwrap();
        let (ok, out) = run(&root, &verifier);
        assert!(ok, "{out}");
        assert!(!out.contains("NOTE"), "{out}");
        assert!(
            out.contains("3 signed checkpoints (2 by the token-signing key of a release before"),
            "{out}"
        );
        let mut chain = std::fs::read_to_string(chain_path(&path)).unwrap();
        let (len, head) = chain
            .lines()
            .filter_map(|l| match serde_json::from_str(l).unwrap() {
                ChainLine::Link { o, n, h } => Some((o + n, h)),
                ChainLine::Checkpoint { .. } => None,
            })
            .last()
            .unwrap();
        let forged = ChainLine::Checkpoint {
            c: old
                .sign(&crate::chain::CheckpointClaims {
                    file: "a.jsonl".into(),
                    len,
                    head,
                    iat: 0,
                })
                .unwrap(),
        };
        chain.push_str(&(serde_json::to_string(&forged).unwrap() + "\n"));
        std::fs::write(chain_path(&path), &chain).unwrap();
        let (ok, out) = run(&root, &verifier);
        assert!(!ok);
        assert!(
            out.contains(&format!(
                "FAIL {}: chain line {}: a checkpoint signed by the token-signing key `{}` \
                 follows one signed by the checkpoint key, which replaced it; forged with the \
                 token key\n",
                path.display(),
                chain.lines().count(),
                tokens.kid()
            )),
            "{out}"
        );
    }
}
