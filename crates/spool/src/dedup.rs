//! Skipping chunks Fluent Bit delivers twice, and the `dedup.hashes` file.
//!
//! After its own crash Fluent Bit re-delivers chunks it had already flushed. The
//! window remembers the content hash (see `format.rs`) of the last `dedup_window`
//! entries; an append whose hash is in it is not stored again.
//!
//! Hashes of retained entries are rebuilt from the segments on open. Hashes of entries
//! whose segments were deleted after ack live in `dedup.hashes`, rewritten atomically
//! (tmp, fsync, rename) before any segment is deleted:
//!
//! ```text
//! dedup.hashes, little-endian
//!   0  [u8; 8]  magic b"LFDEDUP\0"
//!   8  u32      format version, 1
//!  12  u64      retired_high: the highest seq ever deleted (0: none). Also keeps seqs
//!               increasing if the cursor file is lost after every segment was deleted.
//!  20  u32      count
//!  24  count x { u64 seq, [u8; 16] xxh3-128 content hash }, ascending seq
//!   .. u32      CRC32C of every byte before it
//! ```
//!
//! **Never reorder, resize or reuse a field**; a new layout gets a new version. A
//! damaged file is ignored with a warning: dedup then only covers retained entries.

use std::collections::{HashMap, VecDeque};

use crate::format::{array, le_u32, le_u64};

pub(crate) const DEDUP_FILE: &str = "dedup.hashes";

const MAGIC: [u8; 8] = *b"LFDEDUP\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
const RECORD_LEN: usize = 24;

/// The last `capacity` (seq, content hash) pairs, oldest first.
#[derive(Debug)]
pub(crate) struct DedupWindow {
    capacity: usize,
    order: VecDeque<(u64, u128)>,
    by_hash: HashMap<u128, u64>,
}

impl DedupWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            by_hash: HashMap::with_capacity(capacity.min(1 << 16)),
        }
    }

    /// The seq of a remembered entry with this hash.
    pub fn get(&self, hash: u128) -> Option<u64> {
        self.by_hash.get(&hash).copied()
    }

    /// Remembers an entry; seqs arrive in increasing order. Forgets the oldest one
    /// when full.
    pub fn insert(&mut self, seq: u64, hash: u128) {
        if self.capacity == 0 {
            return;
        }
        if self.order.len() == self.capacity
            && let Some((old_seq, old_hash)) = self.order.pop_front()
            && self.by_hash.get(&old_hash) == Some(&old_seq)
        {
            self.by_hash.remove(&old_hash);
        }
        self.order.push_back((seq, hash));
        self.by_hash.insert(hash, seq);
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Remembered entries with seq below `bound`, oldest first.
    pub fn below(&self, bound: u64) -> Vec<(u64, u128)> {
        self.order
            .iter()
            .copied()
            .take_while(|&(seq, _)| seq < bound)
            .collect()
    }
}

/// Contents of `dedup.hashes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Retired {
    pub high_seq: u64,
    pub hashes: Vec<(u64, u128)>,
}

pub(crate) fn encode_retired(retired: &Retired) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + retired.hashes.len() * RECORD_LEN + 4);
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&retired.high_seq.to_le_bytes());
    buf.extend_from_slice(&(retired.hashes.len() as u32).to_le_bytes());
    for (seq, hash) in &retired.hashes {
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&hash.to_le_bytes());
    }
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

/// Decodes `dedup.hashes`; the error is a reason for the warning.
pub(crate) fn decode_retired(bytes: &[u8]) -> Result<Retired, String> {
    if bytes.len() < HEADER_LEN + 4 {
        return Err(format!("{} bytes is too short", bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if le_u32(crc) != crc32c::crc32c(body) {
        return Err("crc mismatch".into());
    }
    if body[0..8] != MAGIC {
        return Err("bad magic".into());
    }
    let version = le_u32(&body[8..12]);
    if version != VERSION {
        return Err(format!("unsupported version {version}"));
    }
    let high_seq = le_u64(&body[12..20]);
    let count = le_u32(&body[20..24]) as usize;
    let records = &body[HEADER_LEN..];
    if records.len() != count.saturating_mul(RECORD_LEN) {
        return Err(format!(
            "count {count} does not match {} record bytes",
            records.len()
        ));
    }
    let hashes = records
        .chunks_exact(RECORD_LEN)
        .map(|r| (le_u64(&r[0..8]), u128::from_le_bytes(array(&r[8..24]))))
        .collect();
    Ok(Retired { high_seq, hashes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_forgets_oldest_first() {
        let mut w = DedupWindow::new(2);
        w.insert(1, 10);
        w.insert(2, 20);
        assert_eq!(w.get(10), Some(1));
        w.insert(3, 30);
        assert_eq!(w.get(10), None);
        assert_eq!(w.get(20), Some(2));
        assert_eq!(w.get(30), Some(3));
        assert_eq!(w.len(), 2);
        assert_eq!(w.below(3), vec![(2, 20)]);
    }

    #[test]
    fn re_stored_hash_survives_eviction_of_its_older_copy() {
        let mut w = DedupWindow::new(2);
        w.insert(1, 10);
        w.insert(2, 20);
        w.insert(3, 30); // evicts (1, 10)
        w.insert(4, 10); // the same content stored again later
        w.insert(5, 50); // evicts (2, 20)
        assert_eq!(w.get(10), Some(4));
        assert_eq!(w.get(20), None);
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let mut w = DedupWindow::new(0);
        w.insert(1, 10);
        assert_eq!(w.get(10), None);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn retired_file_round_trips_and_detects_damage() {
        let r = Retired {
            high_seq: 9,
            hashes: vec![(8, 1 << 100), (9, 7)],
        };
        let bytes = encode_retired(&r);
        assert_eq!(bytes.len(), 24 + 2 * 24 + 4);
        assert_eq!(decode_retired(&bytes), Ok(r));
        let mut bad = bytes.clone();
        bad[30] ^= 1;
        assert_eq!(decode_retired(&bad), Err("crc mismatch".into()));
        assert_eq!(
            decode_retired(&bytes[..10]),
            Err("10 bytes is too short".into())
        );
    }
}
