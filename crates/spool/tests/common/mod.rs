//! Helpers shared by the spool's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use logferry_spool::{Entry, Spool, SpoolConfig};

/// Bytes one entry takes on disk.
pub fn entry_len(tag: &str, data_len: usize) -> u64 {
    (logferry_spool::ENTRY_OVERHEAD + tag.len() + data_len) as u64
}

pub const HEADER: u64 = logferry_spool::SEGMENT_HEADER_LEN as u64;

/// A config with segments that hold exactly `per_segment` entries of tag "t" and
/// `data_len` bytes.
pub fn small_segments(dir: &Path, per_segment: u64, data_len: usize) -> SpoolConfig {
    SpoolConfig {
        segment_bytes: HEADER + per_segment * entry_len("t", data_len),
        ..SpoolConfig::new(dir)
    }
}

pub fn open(config: SpoolConfig) -> Spool {
    Spool::open(config).expect("open spool").0
}

/// Deterministic, seq-specific chunk bytes.
pub fn chunk(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Names of the segment files in `dir`, sorted.
pub fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

pub fn read_all(spool: &Spool) -> Vec<Entry> {
    spool.read_from(0, usize::MAX).expect("read")
}

pub fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

/// XORs one byte of a file in place.
pub fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

pub fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}
