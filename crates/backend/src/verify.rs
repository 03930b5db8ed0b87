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
