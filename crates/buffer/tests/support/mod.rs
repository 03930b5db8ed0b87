//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use logferry_buffer::{EmbeddedLog, LogConfig, Record, RecordMeta, RecoveryReport};

/// Segment size used by most tests: 4 KiB holds three [`STD_PAYLOAD`]-byte records.
pub const SEGMENT: u64 = 4096;
/// Payload size used by most tests.
pub const STD_PAYLOAD: usize = 1000;
/// Header bytes besides the two strings.
pub const FIXED_HEADER: u64 = 69;

/// Distinct, recognisable metadata for record `i`.
pub fn meta(i: u64) -> RecordMeta {
    RecordMeta {
        tenant: "tenant-a".into(),
        access_key: "key-1".into(),
        agent_id: [i as u8; 16],
        first_seq: 10 * i + 1,
        last_seq: 10 * i + 10,
        key_id: 7,
        compression: 1,
        chunk_count: 10,
        raw_bytes: 1000 + i,
        received_unix_ms: 1_700_000_000_000 + i,
    }
}

/// A deterministic payload for record `i`.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (j as u64).wrapping_mul(31).wrapping_add(i * 7) as u8)
        .collect()
}

/// Bytes one record takes on disk.
pub fn record_len(meta: &RecordMeta, payload_len: usize) -> u64 {
    16 + FIXED_HEADER + meta.tenant.len() as u64 + meta.access_key.len() as u64 + payload_len as u64
}

/// A config with small segments; `max_bytes` is 1 MiB unless given.
pub fn config(dir: &Path, segment_bytes: u64, max_bytes: Option<u64>) -> LogConfig {
    LogConfig {
        max_bytes: max_bytes.unwrap_or(1 << 20),
        segment_bytes,
        ..LogConfig::new(dir)
    }
}

pub fn open(config: &LogConfig) -> (EmbeddedLog, RecoveryReport) {
    EmbeddedLog::open(config.clone()).expect("open log")
}

/// Appends records `from..to` with [`meta`] and `payload_len`-byte [`payload`]s, checking
/// each returned offset.
pub fn append_range(log: &EmbeddedLog, from: u64, to: u64, payload_len: usize) {
    for i in from..to {
        let offset = log
            .append(&meta(i), &payload(i, payload_len))
            .expect("append");
        assert_eq!(offset, i);
    }
}

/// The record `append_range` wrote at offset `i`.
pub fn expected(i: u64, payload_len: usize) -> Record {
    Record {
        offset: i,
        meta: meta(i),
        payload: payload(i, payload_len),
    }
}

/// Reads every durable record from `from` on.
pub fn read_all(log: &EmbeddedLog, from: u64) -> Vec<Record> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let batch = log.read(next, 64 * 1024).expect("read");
        let Some(last) = batch.last() else { break };
        next = last.offset + 1;
        out.extend(batch);
    }
    out
}

/// Names of the segment files in `dir`, sorted.
pub fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

pub fn segment_name(base: u64) -> String {
    format!("{base:020}.log")
}

pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(segment_name(base))
}
