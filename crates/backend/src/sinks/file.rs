//! The file sink: JSON lines per tenant and access key, append-only, hash-chained.
//!
//! Layout: `<root>/<tenant>/<access_key>/<access_key>.jsonl`, the seed's one
//! `ACCESS_KEY.log` per agent key, one directory per tenant, and beside each file its
//! hash chain `<access_key>.jsonl.chain` ([`crate::chain`]). Exactly once through
//! [`FileSet`]: the committed lengths of both go into the checkpoint and recovery
//! truncates both to them.
//!
//! The set of files is signed too: `<root>/@manifest.jsonl.jws` names every file the
//! sink wrote, with its length and chain head ([`crate::manifest`] documents the
//! format and when it is written). The sink keeps that list across restarts from the
//! last manifest, so a file deleted while it was stopped stays named, and reported.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracing::warn;

use super::{Chunk, FileSet, Sink};
use crate::chain::{ChainLine, ChainState, CheckpointClaims, chain_path, genesis};
use crate::manifest::{self, Entry, Manifest};
use crate::router::Checkpoint;
use crate::signing::CheckpointSigner;

/// How much of a chain file's end is read to resume it.
const RESUME_TAIL: u64 = 64 << 10;

/// When the file sink starts a new file for an access key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Once a file holds this many bytes; 0: never.
    pub max_bytes: u64,
    /// Once this backend has written to a file for this long.
    pub max_age: Option<Duration>,
    /// Compress closed files to `.gz` (their chains stay as they are).
    pub gzip: bool,
}

impl Rotation {
    fn enabled(&self) -> bool {
        self.max_bytes > 0 || self.max_age.is_some()
    }
}

pub struct FileSink {
    /// File name suffix: `.jsonl`, `.msgpack` for raw events, `.p<N>.jsonl` for a
    /// Kafka partition's files.
    suffix: String,
    rotation: Rotation,
    /// Per `(tenant, access key)`: the number of the file written now (0 is
    /// `<key><suffix>`, N is `<key>.<N><suffix>`) and when this process opened it.
    segments: HashMap<(String, String), (u64, Instant)>,
    /// Files closed in this step: their chains get a signed checkpoint at commit.
    closing: Vec<PathBuf>,
    /// Files closed in a step that is checkpointed: compressed at the next commit.
    to_compress: Vec<PathBuf>,
    files: FileSet,
    chains: FileSet,
    states: HashMap<PathBuf, ChainState>,
    signer: Option<Arc<CheckpointSigner>>,
    sign_every: Duration,
    last_signed: Option<Instant>,
    /// Every file this sink wrote and did not remove, by relative path (as its chain
    /// is named): what the next manifest says.
    catalog: BTreeMap<PathBuf, Entry>,
    /// The `seq` of the manifest on disk (0: none).
    manifest_seq: u64,
    /// Whether a manifest is to be written once the step's checkpoint is stored.
    manifest_due: bool,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("root", &self.files.root())
            .finish()
    }
}

impl FileSink {
    /// A sink under `root` whose chains get a checkpoint signed by `signer` at most
    /// every `sign_every` (at every commit when zero).
    pub fn new(root: PathBuf, signer: Option<Arc<CheckpointSigner>>, sign_every: Duration) -> Self {
        Self::with_suffix(root, signer, sign_every, ".jsonl")
    }

    /// Like [`FileSink::new`], for files named `<access_key><suffix>`.
    pub fn with_suffix(
        root: PathBuf,
        signer: Option<Arc<CheckpointSigner>>,
        sign_every: Duration,
        suffix: impl Into<String>,
    ) -> Self {
        let suffix = suffix.into();
        Self {
            files: FileSet::new(root.clone(), suffix.clone()),
            // Only this sink's chains: another sink may share the root (partitions).
            chains: FileSet::new(root, format!("{suffix}.chain")),
            suffix,
            rotation: Rotation::default(),
            segments: HashMap::new(),
            closing: Vec::new(),
            to_compress: Vec::new(),
            states: HashMap::new(),
            signer,
            sign_every,
            last_signed: None,
            catalog: BTreeMap::new(),
            manifest_seq: 0,
            manifest_due: false,
        }
    }

    /// Starts new files as `rotation` says.
    pub fn with_rotation(mut self, rotation: Rotation) -> Self {
        self.rotation = rotation;
        self
    }

    /// The first file records of this tenant's access key go to, relative to the root.
    pub fn relative_path(&self, tenant: &str, access_key: &str) -> PathBuf {
        self.segment_path(tenant, access_key, 0)
    }

    /// File number `n` of this tenant's access key, relative to the root.
    fn segment_path(&self, tenant: &str, access_key: &str, n: u64) -> PathBuf {
        let number = if n == 0 {
            String::new()
        } else {
            format!(".{n}")
        };
        Path::new(tenant)
            .join(access_key)
            .join(format!("{access_key}{number}{}", self.suffix))
    }

    /// The numbers of the files of this access key on disk (plain or gzipped).
    fn segments_on_disk(&self, tenant: &str, access_key: &str) -> Result<Vec<(u64, bool)>> {
        let dir = self.files.root().join(tenant).join(access_key);
        let mut found = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(e).with_context(|| format!("listing `{}`", dir.display())),
        };
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().to_string();
            if let Some(segment) = self.segment_of(access_key, &name) {
                found.push(segment);
            }
        }
        found.sort_unstable();
        Ok(found)
    }

    /// `(number, gzipped)` when `name` is a file of `access_key` this sink writes:
    /// `<key><suffix>`, `<key>.<N><suffix>`, either with `.gz`.
    fn segment_of(&self, access_key: &str, name: &str) -> Option<(u64, bool)> {
        let (name, gzipped) = match name.strip_suffix(".gz") {
            Some(plain) => (plain, true),
            None => (name, false),
        };
        let middle = name
            .strip_prefix(access_key)
            .and_then(|rest| rest.strip_suffix(&self.suffix))?;
        let n = match middle {
            "" => 0,
            _ => match middle.strip_prefix('.').map(str::parse::<u64>) {
                Some(Ok(n)) if n > 0 => n,
                _ => return None,
            },
        };
        Some((n, gzipped))
    }

    /// Every file of this sink on disk: (relative path without `.gz`, gzipped).
    fn files_on_disk(&self) -> Result<Vec<(PathBuf, bool)>> {
        let root = self.files.root();
        let mut found = Vec::new();
        let list = |dir: &Path| -> Result<Vec<(String, PathBuf)>> {
            match std::fs::read_dir(dir) {
                Ok(entries) => entries
                    .map(|e| {
                        let e = e?;
                        Ok((e.file_name().to_string_lossy().to_string(), e.path()))
                    })
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(e).with_context(|| format!("listing `{}`", dir.display())),
            }
        };
        for (tenant, tenant_dir) in list(root)? {
            if !tenant_dir.is_dir() {
                continue;
            }
            for (key, key_dir) in list(&tenant_dir)? {
                if !key_dir.is_dir() {
                    continue;
                }
                for (name, _) in list(&key_dir)? {
                    if let Some((_, gzipped)) = self.segment_of(&key, &name) {
                        let plain = name.strip_suffix(".gz").unwrap_or(&name);
                        found.push((Path::new(&tenant).join(&key).join(plain), gzipped));
                    }
                }
            }
        }
        found.sort();
        found.dedup_by(|a, b| a.0 == b.0);
        Ok(found)
    }

    /// Rebuilds the list of files from the last manifest and what recovery left on
    /// disk, signs the chains whose tail is unsigned at the next commit, and writes
    /// a manifest now if the list differs from the one on disk.
    fn recover_catalog(&mut self) -> Result<()> {
        self.catalog.clear();
        self.manifest_due = false;
        let Some(signer) = self.signer.clone() else {
            return Ok(());
        };
        let path = manifest::path(self.files.root(), &self.suffix);
        let known = match manifest::read(&path, &signer.verifier()?)? {
            manifest::Read::Valid(manifest, _) => {
                self.manifest_seq = manifest.seq;
                manifest.files
            }
            manifest::Read::Invalid(reason) => anyhow::bail!(
                "`{}`: {reason}. Run `logferry verify` to see what else changed; moving the \
                 file aside lets the backend start, and sign a manifest of what it finds",
                path.display()
            ),
            manifest::Read::Missing => {
                self.manifest_seq = 0;
                Vec::new()
            }
        };
        let known: BTreeMap<PathBuf, Entry> = known
            .into_iter()
            .map(|e| (PathBuf::from(&e.file), e))
            .collect();
        self.catalog = known.clone();
        // What recovery left on disk is the checkpointed state: it wins.
        let on_disk = self.files_on_disk()?;
        for (relative, gzip) in &on_disk {
            let data = self.files.root().join(relative);
            let data_len = if *gzip {
                0
            } else {
                std::fs::metadata(&data).map_or(0, |m| m.len())
            };
            let name = relative
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let state = ChainState::resume(&name, &read_tail(&chain_path(&data))?, data_len);
            self.catalog
                .insert(relative.clone(), entry(relative, &state, *gzip));
            let chained = state.head != genesis(&name);
            if !gzip && chained && state.signed != Some((state.end, state.head)) {
                // A tail a crash left unsigned: the next commit signs it.
                self.states.insert(relative.clone(), state);
            }
        }
        for entry in known.values() {
            if !on_disk.iter().any(|(r, _)| *r == Path::new(&entry.file)) {
                warn!(
                    "`{}` names `{}`, which is not on disk: it was removed outside logferry; \
                     `logferry verify` reports it",
                    path.display(),
                    entry.file
                );
            }
        }
        if self.catalog != known || (self.manifest_seq == 0 && !self.catalog.is_empty()) {
            self.write_manifest()?;
        }
        Ok(())
    }

    /// Signs the catalog as the next manifest.
    fn write_manifest(&mut self) -> Result<()> {
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        let seq = self.manifest_seq + 1;
        let manifest = Manifest::new(&self.suffix, seq, self.catalog.values().cloned().collect());
        manifest::write(
            &manifest::path(self.files.root(), &self.suffix),
            &manifest,
            signer,
        )?;
        self.manifest_seq = seq;
        self.manifest_due = false;
        Ok(())
    }

    /// The file to append `len` more bytes of this access key to: the current one,
    /// or the next one when the current is due for rotation (it is then closed).
    fn target(&mut self, tenant: &str, access_key: &str) -> Result<PathBuf> {
        if !self.rotation.enabled() {
            return Ok(self.relative_path(tenant, access_key));
        }
        let key = (tenant.to_string(), access_key.to_string());
        let (n, opened) = match self.segments.get(&key) {
            Some(&current) => current,
            None => {
                let n = self
                    .segments_on_disk(tenant, access_key)?
                    .last()
                    .map_or(0, |&(n, gzipped)| if gzipped { n + 1 } else { n });
                (n, Instant::now())
            }
        };
        let relative = self.segment_path(tenant, access_key, n);
        let len = self.state(&relative)?.data_len();
        let full = self.rotation.max_bytes > 0 && len >= self.rotation.max_bytes;
        let old = self
            .rotation
            .max_age
            .is_some_and(|age| opened.elapsed() >= age);
        if len > 0 && (full || old) {
            self.closing.push(relative);
            let next = (n + 1, Instant::now());
            self.segments.insert(key, next);
            return Ok(self.segment_path(tenant, access_key, n + 1));
        }
        self.segments.insert(key, (n, opened));
        Ok(relative)
    }

    /// Gzips the closed files of checkpointed steps: `X.gz.tmp`, fsync, rename to
    /// `X.gz`, then `X` goes. A crash in between leaves `X` (done again) or both
    /// (`X` goes).
    fn compress_closed(&mut self) -> Result<()> {
        for relative in std::mem::take(&mut self.to_compress) {
            let path = self.files.root().join(&relative);
            let gz = PathBuf::from(format!("{}.gz", path.display()));
            self.files.close(&relative, true);
            self.chains.close(&chain_relative(&relative), false);
            if !path.exists() {
                continue;
            }
            if !gz.exists() {
                let tmp = PathBuf::from(format!("{}.gz.tmp", path.display()));
                let mut input = std::fs::File::open(&path)
                    .with_context(|| format!("opening `{}`", path.display()))?;
                let output = std::fs::File::create(&tmp)
                    .with_context(|| format!("creating `{}`", tmp.display()))?;
                let mut encoder =
                    flate2::write::GzEncoder::new(output, flate2::Compression::default());
                std::io::copy(&mut input, &mut encoder)
                    .with_context(|| format!("compressing `{}`", path.display()))?;
                encoder.finish()?.sync_all()?;
                std::fs::rename(&tmp, &gz)?;
                if let Some(dir) = path.parent() {
                    crate::fsutil::sync_dir(dir)?;
                }
            }
            std::fs::remove_file(&path)
                .with_context(|| format!("removing `{}` after compressing it", path.display()))?;
            if let Some(dir) = path.parent() {
                crate::fsutil::sync_dir(dir)?;
            }
            if let Some(entry) = self.catalog.get_mut(&relative) {
                entry.gzip = true;
                self.manifest_due = true;
            }
        }
        Ok(())
    }

    /// The chain state of `relative`, resumed from its chain file on first use.
    fn state(&mut self, relative: &Path) -> Result<&mut ChainState> {
        if !self.states.contains_key(relative) {
            let data = self.files.root().join(relative);
            let data_len = std::fs::metadata(&data).map_or(0, |m| m.len());
            let tail = read_tail(&chain_path(&data))?;
            let name = relative
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            self.states.insert(
                relative.to_path_buf(),
                ChainState::resume(&name, &tail, data_len),
            );
        }
        Ok(self.states.get_mut(relative).expect("inserted above"))
    }
}

/// The last [`RESUME_TAIL`] bytes of a file, or nothing if it does not exist.
fn read_tail(path: &Path) -> Result<String> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e).with_context(|| format!("opening `{}`", path.display())),
    };
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(RESUME_TAIL)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn chain_relative(relative: &Path) -> PathBuf {
    chain_path(relative)
}

/// The manifest entry of a file whose chain stands at `state`.
fn entry(relative: &Path, state: &ChainState, gzip: bool) -> Entry {
    Entry {
        file: relative.to_string_lossy().to_string(),
        len: state.end,
        head: hex::encode(state.head),
        gzip,
    }
}

impl Sink for FileSink {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn recover(&mut self, state: &serde_json::Value) -> Result<()> {
        self.states.clear();
        self.segments.clear();
        self.closing.clear();
        match state.get("files") {
            Some(files) => {
                self.files.recover(files)?;
                self.chains.recover(&state["chains"])?;
            }
            // A checkpoint from before chains existed: the files' lengths only.
            None => {
                self.files.recover(state)?;
                self.chains.recover(&serde_json::Value::Null)?;
            }
        }
        // Closed files not compressed yet (a stop or crash came first): every plain
        // file below the highest number of its access key.
        self.to_compress.clear();
        if self.rotation.gzip
            && let Some(files) = state.get("files").and_then(|f| f.as_object())
        {
            let mut keys: Vec<(String, String)> = files
                .keys()
                .filter_map(|relative| {
                    let mut parts = Path::new(relative).iter();
                    let tenant = parts.next()?.to_string_lossy().to_string();
                    let key = parts.next()?.to_string_lossy().to_string();
                    Some((tenant, key))
                })
                .collect();
            keys.sort();
            keys.dedup();
            for (tenant, key) in keys {
                let found = self.segments_on_disk(&tenant, &key)?;
                let Some(&(last, _)) = found.last() else {
                    continue;
                };
                for (n, gzipped) in found {
                    if n < last && !gzipped {
                        self.to_compress.push(self.segment_path(&tenant, &key, n));
                    }
                }
            }
        }
        self.recover_catalog()
    }

    fn write(&mut self, chunk: &Chunk<'_>) -> Result<()> {
        let relative = self.target(chunk.tenant, chunk.access_key)?;
        self.state(&relative)?.update(chunk.data);
        self.files.append(&relative, chunk.data)
    }

    fn prepare_close(&mut self) -> bool {
        // The next commit signs every chain whose head is not signed yet.
        self.last_signed = None;
        self.signer.is_some() && !self.states.is_empty()
    }

    fn seal_due_in(&self) -> Option<Duration> {
        let unsigned = self
            .states
            .values()
            .any(|s| s.signed != Some((s.end, s.head)));
        if self.signer.is_none() || self.sign_every.is_zero() || !unsigned {
            return None;
        }
        Some(self.last_signed.map_or(Duration::ZERO, |at| {
            self.sign_every.saturating_sub(at.elapsed())
        }))
    }

    fn checkpoint_stored(&mut self) -> Result<()> {
        if self.manifest_due {
            self.write_manifest()?;
        }
        Ok(())
    }

    fn commit(&mut self, _cursor: &Checkpoint) -> Result<serde_json::Value> {
        // Files closed in an earlier step: that step's checkpoint is stored by now.
        self.compress_closed()?;
        // A file the manifest does not name yet is signed, and named, at once.
        let new_file = self.states.keys().any(|r| !self.catalog.contains_key(r));
        let sign = self.signer.is_some()
            && (new_file
                || self
                    .last_signed
                    .is_none_or(|at| at.elapsed() >= self.sign_every));
        let mut lines: Vec<(PathBuf, ChainLine)> = Vec::new();
        for (relative, state) in &mut self.states {
            if let Some(link) = state.close_block() {
                lines.push((relative.clone(), link));
            }
            if self.signer.is_some() {
                self.catalog
                    .insert(relative.clone(), entry(relative, state, false));
            }
            let closing = self.closing.contains(relative);
            if let Some(signer) = &self.signer
                && (sign || closing)
                && state.signed != Some((state.end, state.head))
            {
                let name = relative
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let jws = signer.sign(&CheckpointClaims::now(&name, state))?;
                lines.push((relative.clone(), ChainLine::Checkpoint { c: jws }));
                state.signed = Some((state.end, state.head));
            }
        }
        for (relative, line) in lines {
            let mut text = serde_json::to_vec(&line)?;
            text.push(b'\n');
            self.chains.append(&chain_relative(&relative), &text)?;
        }
        if sign {
            self.last_signed = Some(Instant::now());
        }
        if self.signer.is_some() && (sign || !self.closing.is_empty()) {
            self.manifest_due = true;
        }
        let files = self.files.commit()?;
        let chains = self.chains.commit()?;
        for relative in std::mem::take(&mut self.closing) {
            self.states.remove(&relative);
            if self.rotation.gzip {
                self.to_compress.push(relative);
            } else {
                self.files.close(&relative, false);
                self.chains.close(&chain_relative(&relative), false);
            }
        }
        Ok(serde_json::json!({ "files": files, "chains": chains }))
    }
}
