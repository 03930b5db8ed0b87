//! Bytes as the segment files of the backend's embedded buffer (one or two):
//! `EmbeddedLog::open` recovers, then every record is read, stepping over damage as
//! the router does. Errors are fine; a panic is not. When the log opens, a record
//! appended after recovery reads back after a clean reopen.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use logferry_buffer::{EmbeddedLog, Error, LogConfig, RecordMeta};
use logferry_fuzz::Segments;

/// A segment's base offset as its first record states it (name and record must agree).
fn base(segment: &[u8], fallback: u64) -> u64 {
    // 12-byte segment header, 16-byte record prefix, then the record's offset.
    segment
        .get(28..36)
        .map_or(fallback, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        sync: false,
        ..LogConfig::new(dir)
    }
}

/// Reads every record from the first retained offset to the end.
fn read_all(log: &EmbeddedLog) {
    let mut next = log.first_offset();
    let end = log.durable_offset();
    for _ in 0..100_000 {
        if next >= end {
            return;
        }
        match log.read(next, 1 << 20) {
            Ok(records) if records.is_empty() => return,
            Ok(records) => {
                for (i, r) in records.iter().enumerate() {
                    assert_eq!(r.offset, next + i as u64, "records out of order");
                }
                next += records.len() as u64;
            }
            Err(Error::Lost { end: lost_end, .. }) => {
                assert!(
                    lost_end > next,
                    "lost records end at {lost_end}, reading {next}"
                );
                next = lost_end;
            }
            // The router dead-letters a corrupt record and goes on.
            Err(_) => next += 1,
        }
    }
    panic!("reading never ended");
}

fuzz_target!(init: logferry_fuzz::seed_corpus(logferry_fuzz::buffer_seeds), |data: &[u8]| {
    let Some(input) = Segments::parse(data) else {
        return;
    };
    let scratch = logferry_fuzz::scratch();
    let dir = scratch.path().join("buffer");
    std::fs::create_dir(&dir).unwrap();
    let a = base(input.first, 0);
    std::fs::write(dir.join(format!("{a:020}.log")), input.first).unwrap();
    if let Some(second) = input.second {
        let mut b = base(second, a.wrapping_add(1));
        if b == a {
            b = a.wrapping_add(1);
        }
        std::fs::write(dir.join(format!("{b:020}.log")), second).unwrap();
    }

    let Ok((log, _report)) = EmbeddedLog::open(config(&dir)) else {
        return;
    };
    read_all(&log);
    let meta = RecordMeta {
        tenant: "fuzz".into(),
        access_key: "fuzz-key".into(),
        agent_id: [7; 16],
        first_seq: 1,
        last_seq: 1,
        key_id: 0,
        compression: 0,
        chunk_count: 1,
        raw_bytes: 5,
        received_unix_ms: 0,
    };
    let Ok(offset) = log.append(&meta, b"after") else {
        return;
    };
    drop(log);
    let (log, _) = EmbeddedLog::open(config(&dir)).expect("reopening a log that was just open");
    let records = log.read(offset, 1 << 20).expect("reading what was appended");
    let record = records.first().expect("the appended record is gone");
    assert_eq!(record.offset, offset);
    assert_eq!(record.meta, meta);
    assert_eq!(record.payload, b"after");
    read_all(&log);
});
