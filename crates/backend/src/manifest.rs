//! The file sink's signed manifest: which files a destination holds, how long each
//! is, and where its hash chain stands.
//!
//! A chain proves a file's bytes; it cannot prove that the file still exists. The
//! manifest closes that gap: deleting a file together with its chain, or a whole
//! access-key directory, or rebuilding a chain from the start, leaves a signed
//! manifest that names what is gone or no longer matches.
//!
//! # Where and when
//! `<root>/@manifest<suffix>.jws`, in the root of the destination's files (`@`
//! cannot start a tenant's directory, so it never collides with one), one per file
//! sink: `@manifest.jsonl.jws`, `@manifest.msgpack.jws`, `@manifest.p3.jsonl.jws`
//! for Kafka partition 3. The sink replaces it (temp file, fsync, rename, fsync of
//! the directory) after each step whose checkpoint is stored and in which it signed
//! chain checkpoints (every `--chain-checkpoint-interval`, when a file is created or
//! closed, at a clean stop), and once at start-up when what it finds on disk
//! differs from the manifest. It describes a stored checkpoint, so a crash never
//! leaves it ahead of the files.
//!
//! # Format (version 1)
//! The file is one compact JWS followed by `\n`:
//! `base64url(header) "." base64url(claims) "." base64url(signature)`, no padding.
//! - header: JSON `{"typ":"JWT","alg":"EdDSA","kid":KID}`, KID the checkpoint key's id
//!   ([`crate::signing`]); the signature is Ed25519 over `header "." claims` as sent.
//!   Only the checkpoint key may sign a manifest, never the token key.
//! - claims: a JSON object whose fields are written in this order (never reorder
//!   them; add new ones at the end and bump `version`):
//!   - `version`: 1;
//!   - `kind`: `"logferry/file-manifest"`;
//!   - `suffix`: the sink's file suffix, like `".jsonl"`;
//!   - `seq`: 1 for the sink's first manifest, one more for each that replaces it;
//!   - `iat`: when it was signed, Unix seconds;
//!   - `files`: an array sorted by `file`, one object per data file the sink ever
//!     wrote and did not remove itself, with fields in this order:
//!     - `file`: the path relative to the root with `/` separators, named as its
//!       chain is: `acme/ak_a/ak_a.3.jsonl` also stands for `acme/ak_a/ak_a.3.jsonl.gz`
//!       once it is compressed;
//!     - `len`: bytes of content (decompressed, for a `.gz`) that its chain covers;
//!     - `head`: the chain head at `len`, 64 lowercase hex digits;
//!     - `gzip`: whether the sink had compressed it to `<file>.gz`.
//!
//! `verify` checks each entry: the file (plain or `.gz`) must exist, hold at least
//! `len` bytes, and its chain must reach exactly `head` at byte `len`. A data file
//! under the root that matches the suffix and is named by no manifest there is a
//! finding too. Bytes after `len` are covered by the chain and its checkpoints.
//!
//! A sink that finds no manifest (a data directory of an earlier release, or a new
//! destination) writes one from what it finds at start-up.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::signing::{CheckpointSigner, CheckpointVerifier, KeyRole};

/// The version this code writes and reads.
pub const VERSION: u32 = 1;
/// The `kind` claim.
pub const KIND: &str = "logferry/file-manifest";
/// What every manifest's file name starts with.
pub const PREFIX: &str = "@manifest";

/// The manifest of the sink writing `<root>/...<suffix>`.
pub fn path(root: &Path, suffix: &str) -> PathBuf {
    root.join(format!("{PREFIX}{suffix}.jws"))
}

/// Whether `name` is a manifest's file name.
pub fn is_manifest(name: &str) -> bool {
    name.starts_with(PREFIX) && name.ends_with(".jws")
}

/// One file of a manifest (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub file: String,
    pub len: u64,
    pub head: String,
    #[serde(default)]
    pub gzip: bool,
}

/// The claims of a manifest (see the module docs). Field order is the format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub kind: String,
    pub suffix: String,
    pub seq: u64,
    pub iat: u64,
    pub files: Vec<Entry>,
}

impl Manifest {
    /// A manifest of `files` (sorted here), numbered `seq`, signed now.
    pub fn new(suffix: &str, seq: u64, mut files: Vec<Entry>) -> Self {
        files.sort_by(|a, b| a.file.cmp(&b.file));
        Self {
            version: VERSION,
            kind: KIND.to_string(),
            suffix: suffix.to_string(),
            seq,
            iat: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            files,
        }
    }
}

/// Signs `manifest` and replaces the file at `path` with it, durably.
pub fn write(path: &Path, manifest: &Manifest, signer: &CheckpointSigner) -> Result<()> {
    let mut text = signer.sign(manifest)?.into_bytes();
    text.push(b'\n');
    crate::fsutil::write_atomic(path, &text)
        .with_context(|| format!("writing the manifest `{}`", path.display()))
}

/// What reading a manifest found.
#[derive(Debug)]
pub enum Read {
    /// No file.
    Missing,
    /// A valid manifest, and the key that signed it.
    Valid(Manifest, String),
    /// A file that is not a manifest this key signed, and why.
    Invalid(String),
}

/// Reads and checks the manifest at `path` against `verifier`'s checkpoint keys.
pub fn read(path: &Path, verifier: &CheckpointVerifier) -> Result<Read> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::Missing),
        Err(e) => return Err(e).with_context(|| format!("reading `{}`", path.display())),
    };
    let (manifest, key) = match verifier.verify::<Manifest>(text.trim_end()) {
        Ok(verified) => verified,
        Err(e) => {
            return Ok(Read::Invalid(format!(
                "the manifest's signature does not verify ({e}); forged or altered"
            )));
        }
    };
    if key.role != KeyRole::Checkpoint {
        return Ok(Read::Invalid(format!(
            "the manifest is signed by {}, which never signs manifests; forged",
            key.describe()
        )));
    }
    if manifest.version != VERSION || manifest.kind != KIND {
        return Ok(Read::Invalid(format!(
            "the manifest is {} version {}; this logferry reads {KIND} version {VERSION}",
            manifest.kind, manifest.version
        )));
    }
    Ok(Read::Valid(manifest, key.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_round_trips_and_its_bytes_are_as_documented() {
        let dir = tempfile::tempdir().unwrap();
        let signer = CheckpointSigner::load_or_create(&dir.path().join("keys")).unwrap();
        let entry = |file: &str| Entry {
            file: file.into(),
            len: 7,
            head: "ab".repeat(32),
            gzip: false,
        };
        let manifest = Manifest::new(
            ".jsonl",
            3,
            vec![entry("t/b/b.jsonl"), entry("t/a/a.jsonl")],
        );
        let at = path(dir.path(), ".jsonl");
        assert_eq!(at.file_name().unwrap(), "@manifest.jsonl.jws");
        write(&at, &manifest, &signer).unwrap();
        let text = std::fs::read_to_string(&at).unwrap();
        assert!(
            text.ends_with('\n') && text.matches('.').count() == 2,
            "{text}"
        );
        let (header, _) = crate::auth::decode_unverified(&text).unwrap();
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], signer.kid());
        use base64::Engine;
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.split('.').nth(1).unwrap())
            .unwrap();
        let body = String::from_utf8(body).unwrap();
        assert!(
            body.starts_with(&format!(
                "{{\"version\":1,\"kind\":\"logferry/file-manifest\",\"suffix\":\".jsonl\",\
                 \"seq\":3,\"iat\":{},\"files\":[{{\"file\":\"t/a/a.jsonl\",\"len\":7,",
                manifest.iat
            )),
            "{body}"
        );
        match read(&at, &signer.verifier().unwrap()).unwrap() {
            Read::Valid(read, _) => assert_eq!(read, manifest),
            other => panic!("{other:?}"),
        }
        // Signed by another key: refused.
        let other = CheckpointSigner::load_or_create(&dir.path().join("other")).unwrap();
        assert!(matches!(
            read(&at, &other.verifier().unwrap()).unwrap(),
            Read::Invalid(_)
        ));
        assert!(matches!(
            read(&dir.path().join("none.jws"), &other.verifier().unwrap()).unwrap(),
            Read::Missing
        ));
    }
}
