//! Spool settings.

use std::path::PathBuf;

use crate::{Error, Result, format::SEGMENT_HEADER_LEN};

/// Where the spool lives and how big it may grow.
///
/// The agent crate parses these from Fluent Bit properties (human-readable sizes) and
/// hands over plain numbers; [`SpoolConfig::validate`] runs on [`crate::Spool::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Directory holding the spool; created if missing. Default: `spool`.
    pub dir: PathBuf,
    /// Cap on retained segment bytes (headers included). An append that would pass it
    /// fails with [`Error::Full`]. Default: 1 GiB.
    pub max_bytes: u64,
    /// A segment is rolled once the next entry would take it past this size. Must not
    /// exceed `max_bytes`. Default: 64 MiB.
    pub segment_bytes: u64,
    /// `true`: `append` returns only after `fdatasync` (group commit). `false`: it
    /// returns after the write, and a machine crash may lose recent entries.
    /// Default: `true`.
    pub sync: bool,
    /// How many recent content hashes are remembered to skip re-delivered chunks;
    /// 0 turns dedup off. Default: 16384.
    pub dedup_window: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("spool"),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            sync: true,
            dedup_window: 16_384,
        }
    }
}

impl SpoolConfig {
    /// A default config rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            ..Self::default()
        }
    }

    /// Rejects settings that cannot work, with a message naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.dir.as_os_str().is_empty() {
            return Err(Error::Config("dir must not be empty".into()));
        }
        let min = SEGMENT_HEADER_LEN as u64 * 2;
        if self.segment_bytes < min {
            return Err(Error::Config(format!(
                "segment_bytes is {}, it must be at least {min}",
                self.segment_bytes
            )));
        }
        if self.max_bytes < self.segment_bytes {
            return Err(Error::Config(format!(
                "max_bytes ({}) must be at least segment_bytes ({})",
                self.max_bytes, self.segment_bytes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let c = SpoolConfig::default();
        assert_eq!(c.dir, PathBuf::from("spool"));
        assert_eq!(c.max_bytes, 1 << 30);
        assert_eq!(c.segment_bytes, 64 << 20);
        assert!(c.sync);
        assert_eq!(c.dedup_window, 16_384);
        c.validate().unwrap();
    }

    #[test]
    fn validate_names_the_bad_field() {
        let c = SpoolConfig {
            max_bytes: 1000,
            segment_bytes: 2000,
            ..SpoolConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid spool config: max_bytes (1000) must be at least segment_bytes (2000)"
        );
        let c = SpoolConfig {
            segment_bytes: 10,
            ..SpoolConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid spool config: segment_bytes is 10, it must be at least 48"
        );
    }
}
