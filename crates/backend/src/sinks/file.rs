//! The file sink: JSON lines per tenant and access key, append-only.
//!
//! Layout: `<root>/<tenant>/<access_key>/<access_key>.jsonl`, the seed's one
//! `ACCESS_KEY.log` per agent key, one directory per tenant. Exactly once through
//! [`FileSet`]: committed lengths go into the checkpoint and recovery truncates to them.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{FileSet, Sink};

#[derive(Debug)]
pub struct FileSink {
    files: FileSet,
}

impl FileSink {
    pub fn new(root: PathBuf) -> Self {
        Self {
            files: FileSet::new(root, ".jsonl"),
        }
    }

    /// The file records of this tenant's access key go to, relative to the root.
    pub fn relative_path(tenant: &str, access_key: &str) -> PathBuf {
        Path::new(tenant)
            .join(access_key)
            .join(format!("{access_key}.jsonl"))
    }
}

impl Sink for FileSink {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn recover(&mut self, state: &serde_json::Value) -> Result<()> {
        self.files.recover(state)
    }

    fn write(&mut self, tenant: &str, access_key: &str, lines: &[u8]) -> Result<()> {
        self.files
            .append(&Self::relative_path(tenant, access_key), lines)
    }

    fn commit(&mut self) -> Result<serde_json::Value> {
        self.files.commit()
    }
}
