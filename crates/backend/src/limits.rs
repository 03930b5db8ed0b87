//! Limits on what one peer's input may cost, shared by ingest and the router (a leaf
//! module: it imports nothing of the backend's), and the router's fault hooks.

use std::sync::OnceLock;

/// Default of `--max-batch-bytes`: the largest decompressed batch accepted. The
/// agent caps its batches at 48 MiB (`batch.max_bytes`), plus framing.
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 64 << 20;

/// Default of `--max-seq-gap`: how many seqs an agent may skip without declaring
/// them lost.
pub const DEFAULT_MAX_SEQ_GAP: u64 = 10_000;

/// Default of `--max-agents-per-key`: agent ids (spools) one access key may own.
pub const DEFAULT_MAX_AGENTS_PER_KEY: usize = 100_000;

/// What one batch may declare and skip (`--max-batch-bytes`, `--max-seq-gap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// The largest decompressed batch accepted.
    pub max_batch_bytes: u64,
    /// How many seqs a batch may skip past the agent's mark without declaring them.
    pub max_seq_gap: u64,
    /// How many agent ids one access key may own.
    pub max_agents_per_key: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_seq_gap: DEFAULT_MAX_SEQ_GAP,
            max_agents_per_key: DEFAULT_MAX_AGENTS_PER_KEY,
        }
    }
}

/// Fault injection for tests of the router's crash handling, set by environment
/// variables that name a buffer offset: `LOGFERRY_TEST_PANIC_AT_OFFSET` panics while
/// delivering the batch stored there, `LOGFERRY_TEST_ABORT_AT_OFFSET` aborts the
/// process (as running out of memory does). Unset, they cost one load per batch.
pub fn fault_hooks(offset: u64) {
    static HOOKS: OnceLock<(Option<u64>, Option<u64>)> = OnceLock::new();
    let (panic_at, abort_at) = *HOOKS.get_or_init(|| {
        let read = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        (
            read("LOGFERRY_TEST_PANIC_AT_OFFSET"),
            read("LOGFERRY_TEST_ABORT_AT_OFFSET"),
        )
    });
    if panic_at == Some(offset) {
        panic!("LOGFERRY_TEST_PANIC_AT_OFFSET={offset}");
    }
    if abort_at == Some(offset) {
        eprintln!("logferry: LOGFERRY_TEST_ABORT_AT_OFFSET={offset}: aborting");
        std::process::abort();
    }
}
