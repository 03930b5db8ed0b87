//! Figures for metrics and tests.

/// A snapshot of the spool's state and counters since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Bytes of retained segment files (headers included); compared with `max_bytes`.
    pub bytes: u64,
    /// The configured cap.
    pub max_bytes: u64,
    /// Retained segment files.
    pub segments: usize,
    /// Retained entries not yet acked.
    pub entries: u64,
    /// Lowest seq still on disk, 0 when none.
    pub first_seq: u64,
    /// Highest seq written, 0 when none ever was.
    pub last_seq: u64,
    /// Highest seq on stable storage.
    pub durable_seq: u64,
    /// Every seq up to this one is acked, 0 when none.
    pub acked_seq: u64,
    /// Entries stored since open.
    pub appends: u64,
    /// Appends answered with [`crate::Appended::Duplicate`] since open.
    pub duplicates_skipped: u64,
    /// Content hashes in the dedup window.
    pub dedup_hashes: usize,
    /// `fdatasync` calls on segment files since open (group commits, rolls, creations).
    pub syncs: u64,
}
