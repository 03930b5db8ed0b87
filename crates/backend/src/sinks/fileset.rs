//! A set of append-only files whose committed lengths are checkpointed.
//!
//! `commit` fsyncs every file written since the last commit (and the directories of
//! new files) and returns `{relative path: length}`. `recover` truncates each file
//! to its checkpointed length and removes files the checkpoint does not know (they
//! were created after it), so what survives a crash is exactly what was committed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tracing::warn;

use crate::fsutil::sync_dir;

struct Tracked {
    file: File,
    len: u64,
    dirty: bool,
}

/// See the module docs.
pub struct FileSet {
    root: PathBuf,
    /// File name suffix recovery considers ours.
    suffix: String,
    files: HashMap<PathBuf, Tracked>,
    committed: BTreeMap<String, u64>,
    new_dirs: HashSet<PathBuf>,
}

impl std::fmt::Debug for FileSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSet").field("root", &self.root).finish()
    }
}

fn walk(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, suffix, out)?;
        } else if path.to_string_lossy().ends_with(suffix) {
            out.push(path);
        }
    }
    Ok(())
}

impl FileSet {
    pub fn new(root: PathBuf, suffix: impl Into<String>) -> Self {
        Self {
            root,
            suffix: suffix.into(),
            files: HashMap::new(),
            committed: BTreeMap::new(),
            new_dirs: HashSet::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// See the module docs. `state` is what `commit` returned, or `Null`.
    pub fn recover(&mut self, state: &serde_json::Value) -> Result<()> {
        self.files.clear();
        let committed: BTreeMap<String, u64> = if state.is_null() {
            BTreeMap::new()
        } else {
            serde_json::from_value(state.clone()).context("file lengths in the checkpoint")?
        };
        let mut found = Vec::new();
        walk(&self.root, &self.suffix, &mut found)
            .with_context(|| format!("listing `{}`", self.root.display()))?;
        for path in found {
            let relative = path
                .strip_prefix(&self.root)
                .unwrap_or(&path)
                .to_string_lossy()
                .to_string();
            let Some(&keep) = committed.get(&relative) else {
                // Created after the last checkpoint, by a step that never completed:
                // it goes whole, so a rotating sink numbers its files on from the last
                // checkpointed one and leaves no empty file behind.
                warn!(
                    "{}: created after the last checkpoint; removing it, its records are \
                     delivered again",
                    path.display()
                );
                fs::remove_file(&path).with_context(|| format!("removing `{}`", path.display()))?;
                if let Some(dir) = path.parent() {
                    crate::fsutil::sync_dir(dir)?;
                }
                continue;
            };
            let len = fs::metadata(&path)?.len();
            if len > keep {
                warn!(
                    "{}: dropping {} byte(s) written after the last checkpoint; they are delivered again",
                    path.display(),
                    len - keep
                );
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(keep)?;
                file.sync_all()?;
            } else if len < keep {
                anyhow::bail!(
                    "{} is {len} bytes but the checkpoint recorded {keep}: the file was truncated \
                     outside logferry",
                    path.display()
                );
            }
        }
        self.committed = committed;
        Ok(())
    }

    /// Appends bytes to the file at `relative` (created with its directories).
    pub fn append(&mut self, relative: &Path, bytes: &[u8]) -> Result<()> {
        if !self.files.contains_key(relative) {
            let path = self.root.join(relative);
            if let Some(dir) = path.parent()
                && !dir.exists()
            {
                fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;
                let mut d = dir.to_path_buf();
                while d.starts_with(&self.root) {
                    self.new_dirs.insert(d.clone());
                    if !d.pop() {
                        break;
                    }
                }
            }
            let existed = path.exists();
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening `{}`", path.display()))?;
            if !existed && let Some(dir) = path.parent() {
                self.new_dirs.insert(dir.to_path_buf());
            }
            let len = file.metadata()?.len();
            self.files.insert(
                relative.to_path_buf(),
                Tracked {
                    file,
                    len,
                    dirty: false,
                },
            );
        }
        let Some(tracked) = self.files.get_mut(relative) else {
            unreachable!("inserted above")
        };
        tracked
            .file
            .write_all(bytes)
            .with_context(|| format!("writing `{}`", self.root.join(relative).display()))?;
        tracked.len += bytes.len() as u64;
        tracked.dirty = true;
        Ok(())
    }

    /// Closes the file at `relative` (it is written no more); with `drop_length`, also
    /// stops recording its length (the file is about to be removed).
    pub fn close(&mut self, relative: &Path, drop_length: bool) {
        self.files.remove(relative);
        if drop_length {
            self.committed
                .remove(&relative.to_string_lossy().to_string());
        }
    }

    /// fsyncs what changed; returns `{relative path: length}` of every file.
    pub fn commit(&mut self) -> Result<serde_json::Value> {
        for (relative, tracked) in &mut self.files {
            if tracked.dirty {
                tracked.file.sync_data().with_context(|| {
                    format!("fsync of `{}`", self.root.join(relative).display())
                })?;
                tracked.dirty = false;
            }
            self.committed
                .insert(relative.to_string_lossy().to_string(), tracked.len);
        }
        for dir in self.new_dirs.drain() {
            sync_dir(&dir).with_context(|| format!("fsync of `{}`", dir.display()))?;
        }
        if self.root.exists()
            && let Some(parent) = self.root.parent()
        {
            let _ = sync_dir(parent);
        }
        Ok(serde_json::to_value(&self.committed)?)
    }
}
