//! The spool's error type.

use std::{io, path::PathBuf};

/// Everything that can go wrong in the spool.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Retained bytes plus the new entry would pass `max_bytes`. Nothing was written;
    /// retry after the sender has acked (the plugin answers `FLB_RETRY`).
    #[error(
        "spool is full: {used} of {max} bytes retained and the entry needs {needed}; \
         retry once the backend has acked, or raise max_bytes"
    )]
    Full { used: u64, max: u64, needed: u64 },

    /// The entry can never be stored, whatever is acked.
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },

    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// Stored bytes fail their checks. At read time `seq` names the entry, so the
    /// caller can log it and skip it by acking that seq.
    #[error("corrupt spool data in {} at offset {offset}{}: {reason}", path.display(), seq_note(*seq))]
    Corrupt {
        path: PathBuf,
        offset: u64,
        seq: Option<u64>,
        reason: String,
    },

    /// A file was written by a newer (or unknown) format version.
    #[error(
        "{} has format version {found}, this build reads version {supported}; \
         run a newer logferry",
        path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// Another process (or another `Spool` in this one) holds the directory.
    #[error("spool directory {} is locked by another process; stop it or use another dir", dir.display())]
    Locked { dir: PathBuf },

    /// The configuration makes no sense.
    #[error("invalid spool config: {0}")]
    Config(String),

    /// An earlier write or fsync failed in a way that leaves the on-disk state unknown.
    /// Appends fail until the spool is reopened (recovery then checks every entry);
    /// reads and acks keep working.
    #[error("spool refuses appends after an earlier failure ({0}); reopen it")]
    Poisoned(String),
}

fn seq_note(seq: Option<u64>) -> String {
    seq.map(|s| format!(" (seq {s})")).unwrap_or_default()
}

/// The spool's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a human context to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_and_name_what_to_do() {
        let full = Error::Full {
            used: 90,
            max: 100,
            needed: 20,
        };
        assert_eq!(
            full.to_string(),
            "spool is full: 90 of 100 bytes retained and the entry needs 20; \
             retry once the backend has acked, or raise max_bytes"
        );
        let corrupt = Error::Corrupt {
            path: "/s/1.seg".into(),
            offset: 24,
            seq: Some(7),
            reason: "crc mismatch".into(),
        };
        assert_eq!(
            corrupt.to_string(),
            "corrupt spool data in /s/1.seg at offset 24 (seq 7): crc mismatch"
        );
        let locked = Error::Locked { dir: "/s".into() };
        assert_eq!(
            locked.to_string(),
            "spool directory /s is locked by another process; stop it or use another dir"
        );
    }
}
