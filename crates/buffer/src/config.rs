//! Configuration of the embedded log.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::format::SEGMENT_HEADER_LEN;

/// Default cap on retained bytes: 8 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;
/// Default segment size: 128 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 128 << 20;
/// Smallest accepted segment size: 4 KiB.
pub const MIN_SEGMENT_BYTES: u64 = 4 << 10;
/// Largest accepted segment size: 4 GiB - 1 (record positions are stored as `u32`).
pub const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;

/// Where and how the log stores records.
///
/// Build it with [`LogConfig::new`] and override fields, then [`EmbeddedLog::open`] validates
/// it.
///
/// [`EmbeddedLog::open`]: crate::EmbeddedLog::open
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Directory holding the segment files and the `LOCK` file. Created if missing. No default.
    pub dir: PathBuf,
    /// Cap on the bytes of all retained segment files. An append that would pass it fails with
    /// [`Error::Full`]. Must be at least twice `segment_bytes`. Default: 8 GiB.
    pub max_bytes: u64,
    /// A segment is closed and a new one started once the next record would make it larger than
    /// this. Also the largest encoded record accepted. Between 4 KiB and 4 GiB - 1. Default:
    /// 128 MiB.
    pub segment_bytes: u64,
    /// fsync before an append returns (group-committed across concurrent appenders). Turning it
    /// off makes "durable" mean "handed to the OS": a power loss can lose acknowledged records.
    /// Default: true.
    pub sync: bool,
}

impl LogConfig {
    /// A config for `dir` with every other field at its default.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogConfig {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            sync: true,
        }
    }

    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidConfig { reason });
        if self.dir.as_os_str().is_empty() {
            return invalid("dir must not be empty".into());
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return invalid(format!(
                "segment_bytes is {}; it must lie between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}",
                self.segment_bytes
            ));
        }
        // The active segment can never be deleted. With room for two segments, releasing
        // everything always leaves space for the next record, so the log cannot wedge itself.
        if self.max_bytes < self.segment_bytes.saturating_mul(2) {
            return invalid(format!(
                "max_bytes ({}) must be at least twice segment_bytes ({})",
                self.max_bytes, self.segment_bytes
            ));
        }
        Ok(())
    }

    /// Largest encoded record (prefix + header + payload) accepted: what fits in a fresh segment.
    pub fn max_record_bytes(&self) -> u64 {
        self.segment_bytes.saturating_sub(SEGMENT_HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let config = LogConfig::new("/data/buffer");
        assert_eq!(config.max_bytes, 8 * 1024 * 1024 * 1024);
        assert_eq!(config.segment_bytes, 128 * 1024 * 1024);
        assert!(config.sync);
        assert!(config.validate().is_ok());
        assert_eq!(config.max_record_bytes(), 128 * 1024 * 1024 - 12);
    }

    #[test]
    fn rejects_nonsense() {
        let reason = |config: LogConfig| match config.validate() {
            Err(Error::InvalidConfig { reason }) => reason,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        assert_eq!(
            reason(LogConfig::new("")),
            "dir must not be empty".to_string()
        );
        let small = LogConfig {
            segment_bytes: 100,
            ..LogConfig::new("d")
        };
        assert_eq!(
            reason(small),
            "segment_bytes is 100; it must lie between 4096 and 4294967295"
        );
        let cramped = LogConfig {
            max_bytes: 1 << 20,
            segment_bytes: 1 << 20,
            ..LogConfig::new("d")
        };
        assert_eq!(
            reason(cramped),
            "max_bytes (1048576) must be at least twice segment_bytes (1048576)"
        );
    }
}
