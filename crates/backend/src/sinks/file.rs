//! The file sink: JSON lines per tenant and access key, append-only, hash-chained.
//!
//! Layout: `<root>/<tenant>/<access_key>/<access_key>.jsonl`, the seed's one
//! `ACCESS_KEY.log` per agent key, one directory per tenant, and beside each file its
//! hash chain `<access_key>.jsonl.chain` ([`crate::chain`]). Exactly once through
//! [`FileSet`]: the committed lengths of both go into the checkpoint and recovery
//! truncates both to them.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Chunk, FileSet, Sink};
use crate::auth::TokenAuthority;
use crate::chain::{ChainLine, ChainState, CheckpointClaims, chain_path};
use crate::router::Checkpoint;

/// How much of a chain file's end is read to resume it.
const RESUME_TAIL: u64 = 64 << 10;

pub struct FileSink {
    /// File name suffix: `.jsonl`, `.msgpack` for raw events, `.p<N>.jsonl` for a
    /// Kafka partition's files.
    suffix: String,
    files: FileSet,
    chains: FileSet,
    states: HashMap<PathBuf, ChainState>,
    signer: Option<Arc<TokenAuthority>>,
    sign_every: Duration,
    last_signed: Option<Instant>,
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
    pub fn new(root: PathBuf, signer: Option<Arc<TokenAuthority>>, sign_every: Duration) -> Self {
        Self::with_suffix(root, signer, sign_every, ".jsonl")
    }

    /// Like [`FileSink::new`], for files named `<access_key><suffix>`.
    pub fn with_suffix(
        root: PathBuf,
        signer: Option<Arc<TokenAuthority>>,
        sign_every: Duration,
        suffix: impl Into<String>,
    ) -> Self {
        let suffix = suffix.into();
        Self {
            files: FileSet::new(root.clone(), suffix.clone()),
            // Only this sink's chains: another sink may share the root (partitions).
            chains: FileSet::new(root, format!("{suffix}.chain")),
            suffix,
            states: HashMap::new(),
            signer,
            sign_every,
            last_signed: None,
        }
    }

    /// The file records of this tenant's access key go to, relative to the root.
    pub fn relative_path(&self, tenant: &str, access_key: &str) -> PathBuf {
        Path::new(tenant)
            .join(access_key)
            .join(format!("{access_key}{}", self.suffix))
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

impl Sink for FileSink {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn recover(&mut self, state: &serde_json::Value) -> Result<()> {
        self.states.clear();
        match state.get("files") {
            Some(files) => {
                self.files.recover(files)?;
                self.chains.recover(&state["chains"])
            }
            // A checkpoint from before chains existed: the files' lengths only.
            None => {
                self.files.recover(state)?;
                self.chains.recover(&serde_json::Value::Null)
            }
        }
    }

    fn write(&mut self, chunk: &Chunk<'_>) -> Result<()> {
        let relative = self.relative_path(chunk.tenant, chunk.access_key);
        self.state(&relative)?.update(chunk.data);
        self.files.append(&relative, chunk.data)
    }

    fn commit(&mut self, _cursor: &Checkpoint) -> Result<serde_json::Value> {
        let sign = self.signer.is_some()
            && self
                .last_signed
                .is_none_or(|at| at.elapsed() >= self.sign_every);
        let mut lines: Vec<(PathBuf, ChainLine)> = Vec::new();
        for (relative, state) in &mut self.states {
            if let Some(link) = state.close_block() {
                lines.push((relative.clone(), link));
            }
            if sign && state.signed != Some((state.end, state.head)) {
                let name = relative
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let signer = self.signer.as_ref().expect("checked above");
                let jws = signer.sign_json(&CheckpointClaims::now(&name, state))?;
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
        let files = self.files.commit()?;
        let chains = self.chains.commit()?;
        Ok(serde_json::json!({ "files": files, "chains": chains }))
    }
}
