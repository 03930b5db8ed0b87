//! Tamper evidence for the file sink: a hash chain per file and signed checkpoints.
//!
//! Beside every sink file `X.jsonl` the sink keeps `X.jsonl.chain`, JSON lines of two
//! kinds, in the order they were written:
//!
//! - a link for each block appended to `X.jsonl` in one router step:
//!   `{"o": offset, "n": length, "h": hex(SHA-256(previous head || block))}`; the
//!   first previous head is `SHA-256("logferry/v1 chain\0" || file name)`, which binds
//!   the chain to the file's name (and so to its access key);
//! - a checkpoint, every `--chain-checkpoint-interval`: `{"c": JWS}` whose claims
//!   `{"file", "len", "head", "iat"}` are signed (EdDSA) with the backend's checkpoint
//!   key ([`crate::signing`]; releases before it used the token-signing key).
//!
//! A link alone proves order and content only against someone who cannot recompute
//! hashes; the signed checkpoints are what an attacker cannot forge. `logferry verify`
//! walks both and reports the first place a file stops matching: a modified or
//! reordered block, a truncation, bytes a foreign writer appended, a deleted file.
//! What was written after the last checkpoint is chained but not yet signed; `verify`
//! reports such a tail once its last checkpoint is older than `--max-unsigned-age`,
//! and a chain with links but no checkpoint at all. Which files exist, and where each
//! chain stood, is the signed manifest's job ([`crate::manifest`]); rewinding the
//! files, chains and manifest together to an earlier signed state is only visible
//! against a copy of the latest manifest kept elsewhere.
//!
//! The chain file is written and truncated together with its data file (both are
//! in the destination's checkpoint), so a crash never leaves them disagreeing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::signing::CheckpointVerifier;
use crate::signing::KeyRole;

/// The chain file of a data file.
pub fn chain_path(data: &Path) -> PathBuf {
    let mut name = data.as_os_str().to_owned();
    name.push(".chain");
    PathBuf::from(name)
}

/// The head a chain starts from: it names the file.
pub fn genesis(file_name: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"logferry/v1 chain\0");
    hasher.update(file_name.as_bytes());
    hasher.finalize().into()
}

/// One line of a chain file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChainLine {
    Link { o: u64, n: u64, h: String },
    Checkpoint { c: String },
}

/// The claims of a signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointClaims {
    pub file: String,
    pub len: u64,
    pub head: String,
    pub iat: u64,
}

/// The running head of one file's chain, with the block being appended.
#[derive(Debug, Clone)]
pub struct ChainState {
    pub head: [u8; 32],
    /// Where the pending block starts (the data file's committed length).
    pub end: u64,
    pending: Option<Sha256>,
    pending_len: u64,
    /// The head and length last signed.
    pub signed: Option<(u64, [u8; 32])>,
}

impl ChainState {
    /// The state after the last link of `chain` (a chain file's text, possibly
    /// ending mid-line), or a new chain for `file_name` starting at `data_len`.
    pub fn resume(file_name: &str, chain: &str, data_len: u64) -> Self {
        let mut state = Self {
            head: genesis(file_name),
            end: data_len,
            pending: None,
            pending_len: 0,
            signed: None,
        };
        let mut found = false;
        for line in chain.lines() {
            match serde_json::from_str(line) {
                Ok(ChainLine::Link { o, n, h }) => {
                    if let Ok(head) = hex::decode(&h)
                        && let Ok(head) = <[u8; 32]>::try_from(head)
                    {
                        state.head = head;
                        state.end = o + n;
                        state.signed = None;
                        found = true;
                    }
                }
                // This sink wrote it; `verify` checks the signature.
                Ok(ChainLine::Checkpoint { .. }) if found => {
                    state.signed = Some((state.end, state.head));
                }
                _ => {}
            }
        }
        if !found {
            // Data written before the chain existed stays outside it; verify says so.
            state.end = data_len;
        }
        state
    }

    /// Adds appended bytes to the pending block.
    pub fn update(&mut self, bytes: &[u8]) {
        let head = self.head;
        self.pending
            .get_or_insert_with(|| {
                let mut hasher = Sha256::new();
                hasher.update(head);
                hasher
            })
            .update(bytes);
        self.pending_len += bytes.len() as u64;
    }

    /// The data file's length, with the pending block.
    pub fn data_len(&self) -> u64 {
        self.end + self.pending_len
    }

    /// Closes the pending block; returns its link, if any bytes were appended.
    pub fn close_block(&mut self) -> Option<ChainLine> {
        let hasher = self.pending.take()?;
        self.head = hasher.finalize().into();
        let link = ChainLine::Link {
            o: self.end,
            n: self.pending_len,
            h: hex::encode(self.head),
        };
        self.end += self.pending_len;
        self.pending_len = 0;
        Some(link)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl CheckpointClaims {
    pub fn now(file: &str, state: &ChainState) -> Self {
        Self {
            file: file.to_string(),
            len: state.end,
            head: hex::encode(state.head),
            iat: unix_now(),
        }
    }
}

/// What `verify_file` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub blocks: u64,
    pub checkpoints: u64,
    /// Bytes covered by the last valid signed checkpoint.
    pub signed_len: u64,
    /// When the last valid checkpoint was signed (Unix seconds).
    pub signed_at: Option<u64>,
    /// Checkpoints signed by the token-signing key of an earlier release.
    pub legacy_checkpoints: u64,
    /// The first problem, if any.
    pub finding: Option<String>,
}

/// What [`verify_file`] checks beyond the chain and its signatures.
#[derive(Debug, Clone, Default)]
pub struct FileCheck {
    /// `(len, head)` the manifest records for the file, if one names it: the chain
    /// must reach `head` at byte `len`.
    pub manifest: Option<(u64, String)>,
    /// Links after a last checkpoint older than this (or links and no checkpoint at
    /// all) are a finding; `None`: not checked.
    pub max_unsigned_age: Option<Duration>,
}

const READ_CHUNK: usize = 1 << 20;

/// A closed, gzipped segment `X.jsonl.gz` is checked against `X.jsonl.chain`, as the
/// bytes it decompresses to.
fn chain_of(path: &Path) -> (PathBuf, String) {
    let plain = path
        .to_str()
        .and_then(|p| p.strip_suffix(".gz"))
        .map_or_else(|| path.to_path_buf(), PathBuf::from);
    let name = plain
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    (chain_path(&plain), name)
}

/// Fills `buf` unless the data ends first; returns how many bytes it read.
fn read_full(data: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match data.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Checks one data file against its chain file, and against `check`.
pub fn verify_file(
    path: &Path,
    verifier: &CheckpointVerifier,
    check: &FileCheck,
) -> Result<FileReport> {
    let (chain_file, name) = chain_of(path);
    let mut report = FileReport {
        path: path.to_path_buf(),
        bytes: 0,
        blocks: 0,
        checkpoints: 0,
        signed_len: 0,
        signed_at: None,
        legacy_checkpoints: 0,
        finding: None,
    };
    let chain = match std::fs::read_to_string(&chain_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.finding = Some(format!(
                "no hash chain: {} is missing",
                chain_file.display()
            ));
            return Ok(report);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", chain_file.display())),
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.finding = Some("deleted: the file is gone, its hash chain remains".into());
            return Ok(report);
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut data: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::new(flate2::read::GzDecoder::new(file)))
    } else {
        Box::new(file)
    };
    let mut head = genesis(&name);
    let mut pos = 0u64;
    let mut buf = vec![0u8; READ_CHUNK];
    // Whether the chain passed through the manifest's (len, head).
    let reaches = |pos: u64, head: &[u8; 32]| {
        check
            .manifest
            .as_ref()
            .is_none_or(|(len, h)| *len == pos && *h == hex::encode(head))
    };
    let mut reached = reaches(pos, &head);
    let mut by_checkpoint_key = false;
    for (number, line) in chain.lines().enumerate() {
        let line_no = number + 1;
        let parsed: ChainLine = match serde_json::from_str(line) {
            Ok(parsed) => parsed,
            Err(e) => {
                report.finding = Some(format!(
                    "chain line {line_no} is not a link or checkpoint ({e}); the chain file was altered"
                ));
                return Ok(report);
            }
        };
        match parsed {
            ChainLine::Link { o, n, h } => {
                if report.blocks == 0 && o > 0 && pos == 0 {
                    // The chain began after data written by an older version.
                    let skipped = std::io::copy(&mut (&mut data).take(o), &mut std::io::sink())?;
                    if skipped < o {
                        report.bytes = skipped;
                        report.finding = Some(format!(
                            "truncated at byte {skipped}: the chain starts at byte {o}"
                        ));
                        return Ok(report);
                    }
                    pos = o;
                    reached |= reaches(pos, &head);
                }
                if o != pos {
                    report.finding = Some(format!(
                        "chain line {line_no}: a block at byte {o} follows one ending at byte {pos}; \
                         the chain was reordered or a link removed"
                    ));
                    return Ok(report);
                }
                let mut hasher = Sha256::new();
                hasher.update(head);
                let mut left = n;
                while left > 0 {
                    let want = (left as usize).min(READ_CHUNK);
                    let got = read_full(&mut data, &mut buf[..want])?;
                    if got < want {
                        let len = pos + (n - left) + got as u64;
                        report.bytes = len;
                        report.finding = Some(format!(
                            "truncated at byte {len}: the chain covers {} bytes",
                            o + n
                        ));
                        return Ok(report);
                    }
                    hasher.update(&buf[..want]);
                    left -= want as u64;
                }
                let next: [u8; 32] = hasher.finalize().into();
                if hex::encode(next) != h {
                    report.finding = Some(format!(
                        "modified: bytes {o}..{} do not match the chain (first changed block at \
                         byte {o}); content was altered or reordered there",
                        o + n
                    ));
                    return Ok(report);
                }
                head = next;
                pos = o + n;
                report.blocks += 1;
                report.bytes = pos;
                reached |= reaches(pos, &head);
            }
            ChainLine::Checkpoint { c } => {
                let (claims, key) = match verifier.verify::<CheckpointClaims>(&c) {
                    Ok(verified) => verified,
                    Err(e) => {
                        report.finding = Some(format!(
                            "chain line {line_no}: the checkpoint's signature does not verify ({e}); \
                             forged, or signed by another backend's key"
                        ));
                        return Ok(report);
                    }
                };
                if claims.file != name || claims.len != pos || claims.head != hex::encode(head) {
                    report.finding = Some(format!(
                        "chain line {line_no}: the signed checkpoint (file {}, {} bytes) does not \
                         match the chain at byte {pos}; the file and its chain were rewritten",
                        claims.file, claims.len
                    ));
                    return Ok(report);
                }
                match key.role {
                    KeyRole::Checkpoint => by_checkpoint_key = true,
                    KeyRole::Legacy if by_checkpoint_key => {
                        report.finding = Some(format!(
                            "chain line {line_no}: a checkpoint signed by {} follows one signed \
                             by the checkpoint key, which replaced it; forged with the token key",
                            key.describe()
                        ));
                        return Ok(report);
                    }
                    KeyRole::Legacy => report.legacy_checkpoints += 1,
                }
                report.checkpoints += 1;
                report.signed_len = pos;
                report.signed_at = Some(claims.iat);
            }
        }
    }
    let extra = std::io::copy(&mut data, &mut std::io::sink())?;
    report.bytes = pos + extra;
    if extra > 0 {
        report.finding = Some(format!(
            "extended by a foreign writer: bytes {pos}..{} are not in the chain",
            pos + extra
        ));
        return Ok(report);
    }
    if let Some((len, _)) = &check.manifest
        && !reached
    {
        report.finding = Some(if pos < *len {
            format!(
                "truncated at byte {pos}: the manifest records {len} bytes; the file was cut \
                 together with its chain"
            )
        } else {
            format!(
                "rebuilt: the chain does not reach the head the manifest records at byte {len}; \
                 the file and its chain were rewritten"
            )
        });
        return Ok(report);
    }
    if let Some(max) = check.max_unsigned_age
        && pos > report.signed_len
    {
        report.finding = match report.signed_at {
            None => Some(format!(
                "unsigned: {pos} bytes in {} blocks and no signed checkpoint; the chain could \
                 have been rebuilt",
                report.blocks
            )),
            Some(at) if unix_now().saturating_sub(at) > max.as_secs() => Some(format!(
                "unsigned: bytes {}..{pos} follow a checkpoint signed {} ago, over \
                 --max-unsigned-age {}; they could have been rewritten",
                report.signed_len,
                humantime::format_duration(Duration::from_secs(unix_now().saturating_sub(at))),
                humantime::format_duration(max)
            )),
            Some(_) => None,
        };
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::router::Checkpoint;
    use crate::signing::CheckpointSigner;
    use crate::sinks::{Chunk, FileSink, Sink};

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        data: PathBuf,
        verifier: CheckpointVerifier,
    }

    fn write(sink: &mut FileSink, data: &[u8]) {
        let chunk = Chunk {
            tenant: "t",
            access_key: "ak",
            agent: "00",
            seq: 1,
            tag: "test",
            offset: 0,
            first_index: 0,
            data,
        };
        sink.write(&chunk).unwrap();
    }

    /// Three committed steps of two lines each, signed at every commit.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let authority = Arc::new(CheckpointSigner::load_or_create(&keys).unwrap());
        let root = dir.path().join("files");
        let mut sink = FileSink::new(root.clone(), Some(authority), Duration::ZERO);
        sink.recover(&serde_json::Value::Null).unwrap();
        for step in 0..3 {
            write(&mut sink, format!("{{\"n\":{step}}}\n").as_bytes());
            write(&mut sink, b"{\"second\":true}\n");
            sink.commit(&Checkpoint::default()).unwrap();
            sink.checkpoint_stored().unwrap();
        }
        let pem = std::fs::read(keys.join("checkpoint.pub.pem")).unwrap();
        Fixture {
            data: root.join("t/ak/ak.jsonl"),
            root,
            verifier: CheckpointVerifier::from_pem(&pem).unwrap(),
            _dir: dir,
        }
    }

    fn options() -> crate::verify::Options {
        crate::verify::Options {
            max_unsigned_age: Some(Duration::from_secs(300)),
            require_manifest: true,
        }
    }

    fn finding(f: &Fixture) -> String {
        verify_file(&f.data, &f.verifier, &FileCheck::default())
            .unwrap()
            .finding
            .unwrap_or_default()
    }

    #[test]
    fn an_untouched_file_verifies() {
        let f = fixture();
        let report = verify_file(&f.data, &f.verifier, &FileCheck::default()).unwrap();
        assert_eq!(report.finding, None);
        assert_eq!((report.blocks, report.checkpoints), (3, 3));
        assert_eq!(report.signed_len, report.bytes);
        assert!(
            crate::verify::verify_paths(
                std::slice::from_ref(&f.root),
                &f.verifier,
                &options(),
                &mut Vec::new()
            )
            .unwrap()
        );
    }

    #[test]
    fn every_kind_of_tampering_is_found_where_it_happened() {
        let f = fixture();
        let original = std::fs::read(&f.data).unwrap();
        let block = |n: usize| {
            let text = std::fs::read_to_string(chain_path(&f.data)).unwrap();
            let links: Vec<ChainLine> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .filter(|l| matches!(l, ChainLine::Link { .. }))
                .collect();
            match &links[n] {
                ChainLine::Link { o, n, .. } => (*o, *n),
                ChainLine::Checkpoint { .. } => unreachable!(),
            }
        };

        // One byte changed in the second block.
        let (o, n) = block(1);
        let mut modified = original.clone();
        modified[o as usize + 3] ^= 0x20;
        std::fs::write(&f.data, &modified).unwrap();
        assert_eq!(
            finding(&f),
            format!(
                "modified: bytes {o}..{} do not match the chain (first changed block at byte {o}); \
                 content was altered or reordered there",
                o + n
            )
        );

        // Two lines swapped: same bytes, another order.
        let text = String::from_utf8(original.clone()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.swap(0, 1);
        std::fs::write(&f.data, lines.join("\n") + "\n").unwrap();
        assert!(
            finding(&f).starts_with("modified: bytes 0.."),
            "{}",
            finding(&f)
        );

        // Truncated.
        std::fs::write(&f.data, &original[..original.len() - 5]).unwrap();
        assert_eq!(
            finding(&f),
            format!(
                "truncated at byte {}: the chain covers {} bytes",
                original.len() - 5,
                original.len()
            )
        );

        // Extended by someone else.
        let mut extended = original.clone();
        extended.extend_from_slice(b"{\"forged\":1}\n");
        std::fs::write(&f.data, &extended).unwrap();
        assert_eq!(
            finding(&f),
            format!(
                "extended by a foreign writer: bytes {}..{} are not in the chain",
                original.len(),
                extended.len()
            )
        );

        // Rewritten together with a recomputed chain: the signatures give it away.
        let mut forged = original.clone();
        forged[1] ^= 0x20;
        std::fs::write(&f.data, &forged).unwrap();
        let chain = std::fs::read_to_string(chain_path(&f.data)).unwrap();
        let mut head = genesis("ak.jsonl");
        let rewritten: Vec<String> = chain
            .lines()
            .map(|line| match serde_json::from_str(line).unwrap() {
                ChainLine::Link { o, n, .. } => {
                    let mut hasher = Sha256::new();
                    hasher.update(head);
                    hasher.update(&forged[o as usize..(o + n) as usize]);
                    head = hasher.finalize().into();
                    serde_json::to_string(&ChainLine::Link {
                        o,
                        n,
                        h: hex::encode(head),
                    })
                    .unwrap()
                }
                checkpoint => serde_json::to_string(&checkpoint).unwrap(),
            })
            .collect();
        std::fs::write(chain_path(&f.data), rewritten.join("\n") + "\n").unwrap();
        assert!(
            finding(&f).contains("the signed checkpoint (file ak.jsonl")
                && finding(&f).contains("rewritten"),
            "{}",
            finding(&f)
        );

        // A checkpoint signed by another key.
        std::fs::write(&f.data, &original).unwrap();
        std::fs::write(chain_path(&f.data), &chain).unwrap();
        let other = CheckpointSigner::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        let forged_checkpoint = serde_json::to_string(&ChainLine::Checkpoint {
            c: other
                .sign(&CheckpointClaims {
                    file: "ak.jsonl".into(),
                    len: original.len() as u64,
                    head: "00".repeat(32),
                    iat: 0,
                })
                .unwrap(),
        })
        .unwrap();
        std::fs::write(chain_path(&f.data), format!("{chain}{forged_checkpoint}\n")).unwrap();
        assert!(
            finding(&f).contains("signature does not verify"),
            "{}",
            finding(&f)
        );

        // Deleted: the chain file stays behind.
        std::fs::write(chain_path(&f.data), &chain).unwrap();
        std::fs::remove_file(&f.data).unwrap();
        assert_eq!(
            finding(&f),
            "deleted: the file is gone, its hash chain remains"
        );
        assert!(
            !crate::verify::verify_paths(
                std::slice::from_ref(&f.root),
                &f.verifier,
                &options(),
                &mut Vec::new()
            )
            .unwrap()
        );
    }

    #[test]
    fn a_crash_after_a_checkpoint_leaves_file_and_chain_in_step() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let authority = Arc::new(CheckpointSigner::load_or_create(&keys).unwrap());
        let root = dir.path().join("files");
        let mut sink = FileSink::new(root.clone(), Some(authority.clone()), Duration::ZERO);
        sink.recover(&serde_json::Value::Null).unwrap();
        write(&mut sink, b"{\"a\":1}\n");
        let state = sink.commit(&Checkpoint::default()).unwrap();
        // Written but never committed, then the process dies.
        write(&mut sink, b"{\"lost\":1}\n");
        drop(sink);
        let mut sink = FileSink::new(root.clone(), Some(authority), Duration::ZERO);
        sink.recover(&state).unwrap();
        write(&mut sink, b"{\"b\":2}\n");
        sink.commit(&Checkpoint::default()).unwrap();
        let pem = std::fs::read(keys.join("checkpoint.pub.pem")).unwrap();
        let verifier = CheckpointVerifier::from_pem(&pem).unwrap();
        let report = verify_file(
            &root.join("t/ak/ak.jsonl"),
            &verifier,
            &FileCheck::default(),
        )
        .unwrap();
        assert_eq!(report.finding, None);
        assert_eq!((report.blocks, report.checkpoints), (2, 2));
        assert_eq!(
            std::fs::read_to_string(root.join("t/ak/ak.jsonl")).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
    }
}
