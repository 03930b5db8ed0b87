//! A destination's checkpoint: `<data-dir>/router/<destination>.checkpoint.json`.
//!
//! It holds the buffer offset to resume from, the dedup mark of every agent (the
//! highest seq delivered), and the sink's and dead-letter store's states (file
//! lengths). It is replaced atomically after the sink's data is durable, so the
//! checkpoint never claims more than the sink holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub version: u32,
    /// The next buffer offset to deliver.
    pub next_offset: u64,
    /// `tenant/agent-hex` → highest seq delivered.
    pub marks: BTreeMap<String, u64>,
    /// The sink's own state (file lengths), `null` for none.
    pub sink: serde_json::Value,
    /// The dead-letter store's file lengths.
    pub dead_letter: serde_json::Value,
    /// Dead letters (numbered from 1) delivered by `logferry dead-letter replay`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub replayed: BTreeSet<u64>,
}

impl Checkpoint {
    pub const VERSION: u32 = 1;

    /// The stored checkpoint, or a fresh one when there is none.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Ok(Self {
                version: Self::VERSION,
                ..Self::default()
            });
        }
        let text = std::fs::read(path)
            .with_context(|| format!("reading checkpoint `{}`", path.display()))?;
        let checkpoint: Checkpoint = serde_json::from_slice(&text)
            .with_context(|| format!("checkpoint `{}` is corrupt", path.display()))?;
        if checkpoint.version != Self::VERSION {
            anyhow::bail!(
                "checkpoint `{}` has version {}, this logferry reads {}",
                path.display(),
                checkpoint.version,
                Self::VERSION
            );
        }
        Ok(checkpoint)
    }

    pub fn store(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec(self)?;
        write_atomic(path, &json)
            .with_context(|| format!("writing checkpoint `{}`", path.display()))
    }
}
