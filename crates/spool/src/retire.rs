//! Deleting segments whose entries are all acked.
//!
//! Order matters for a crash at any point: the cursor is already durable when this
//! runs, then `dedup.hashes` is rewritten (so hashes of deleted entries survive), then
//! the files are deleted and the directory synced. A crash before the deletion leaves
//! segments that the next open deletes again.

use std::path::Path;

use crate::{
    Result,
    dedup::{DEDUP_FILE, Retired, encode_retired},
    error::IoContext,
    io::{atomic_write, sync_dir},
    segment::Segment,
};

/// Persists `retired`, then deletes `doomed` and syncs the directory.
pub(crate) fn retire(dir: &Path, doomed: &[Segment], retired: &Retired) -> Result<()> {
    atomic_write(dir, DEDUP_FILE, &encode_retired(retired))?;
    for segment in doomed {
        match std::fs::remove_file(&segment.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .context(|| format!("delete acked segment {}", segment.path.display()));
            }
        }
    }
    sync_dir(dir)
}
