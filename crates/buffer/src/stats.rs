//! Counters for metrics.

/// A snapshot of the log's size and progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes of all retained segment files (what counts against `max_bytes`).
    pub bytes: u64,
    /// The configured cap.
    pub max_bytes: u64,
    /// Retained segment files, the active one included.
    pub segments: usize,
    /// Oldest retained offset.
    pub first_offset: u64,
    /// Offset the next record gets.
    pub end_offset: u64,
    /// Every record below this is durable.
    pub durable_offset: u64,
    /// fsync calls since open (group commits, sealed segments, new segment files).
    pub fsyncs: u64,
    /// Successful appends since open.
    pub appends: u64,
}
