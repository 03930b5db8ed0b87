//! The buffer's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the buffer.
///
/// Ingest maps [`Error::Full`] to `RESOURCE_EXHAUSTED` (the agent keeps the batch and retries
/// later) and [`Error::TooLarge`] / [`Error::FieldTooLong`] to `INVALID_ARGUMENT`. Everything else
/// is a server-side failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The record does not fit under the size cap. Nothing was written. Retry once the routers
    /// have released older records.
    #[error(
        "buffer is full: {used} of {max} bytes in use and the record needs {needed}; \
         wait for destinations to catch up or raise max_bytes"
    )]
    Full { used: u64, max: u64, needed: u64 },

    /// An I/O call failed. `context` says what the buffer was doing and on which file.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// Bytes on disk are not what the buffer wrote. `offset` is a byte position in `file`.
    #[error("corrupt buffer data in {} at byte {offset}: {reason}", file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },

    /// The record at the requested offset was lost to damage found when the log was opened
    /// (see [`RecoveryReport::damage`](crate::RecoveryReport)). Consumers dead-letter the range
    /// and continue at `end`.
    #[error(
        "records {first}..{end} were lost to damage found when the buffer was opened \
         ({} at byte {position}: {reason}); continue at offset {end}",
        file.display()
    )]
    Lost {
        file: PathBuf,
        position: u64,
        first: u64,
        end: u64,
        reason: String,
    },

    /// Another process (or another `EmbeddedLog` in this one) holds the directory.
    #[error(
        "buffer directory {} is locked by another process; stop it or choose another directory",
        dir.display()
    )]
    Locked { dir: PathBuf },

    /// `read` asked for records that were already released and deleted.
    #[error("offset {requested} was released; the oldest retained offset is {oldest}")]
    Truncated { requested: u64, oldest: u64 },

    /// The encoded record is larger than a segment can hold. Nothing was written.
    #[error(
        "record of {size} bytes exceeds the limit of {max} bytes; \
         lower the agent's batch size or raise segment_bytes"
    )]
    TooLarge { size: u64, max: u64 },

    /// A metadata string does not fit its u16 length prefix. Nothing was written.
    #[error("{field} is {len} bytes long; at most 65535 bytes are allowed")]
    FieldTooLong { field: &'static str, len: usize },

    /// The configuration cannot work.
    #[error("invalid buffer configuration: {reason}")]
    InvalidConfig { reason: String },
}

/// The buffer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what the buffer was doing.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when retrying later can succeed without operator action (the buffer is full).
    pub fn is_full(&self) -> bool {
        matches!(self, Error::Full { .. })
    }
}

/// Attaches context to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::io(what(), source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_and_actionable() {
        let full = Error::Full {
            used: 10,
            max: 12,
            needed: 5,
        };
        assert_eq!(
            full.to_string(),
            "buffer is full: 10 of 12 bytes in use and the record needs 5; \
             wait for destinations to catch up or raise max_bytes"
        );
        let locked = Error::Locked {
            dir: PathBuf::from("/var/lib/logferry/buffer"),
        };
        assert_eq!(
            locked.to_string(),
            "buffer directory /var/lib/logferry/buffer is locked by another process; \
             stop it or choose another directory"
        );
        let truncated = Error::Truncated {
            requested: 3,
            oldest: 7,
        };
        assert_eq!(
            truncated.to_string(),
            "offset 3 was released; the oldest retained offset is 7"
        );
    }
}
