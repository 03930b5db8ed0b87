//! Appending and reading back: contents, metadata, batching by bytes, limits.

mod support;

use logferry_buffer::{EmbeddedLog, Error, LogConfig, Record, RecordMeta};
use support::*;

#[test]
fn round_trip_keeps_every_byte_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let (log, report) = open(&LogConfig::new(dir.path()));
    assert!(report.created);
    assert_eq!(
        (report.segments, report.records, report.end_offset),
        (1, 0, 0)
    );

    let unusual = RecordMeta {
        tenant: "tënant/ü".into(),
        access_key: String::new(),
        agent_id: *b"0123456789abcdef",
        first_seq: u64::MAX - 1,
        last_seq: u64::MAX,
        key_id: u32::MAX,
        compression: 255,
        chunk_count: 0,
        raw_bytes: u64::MAX,
        received_unix_ms: 0,
    };
    let big = payload(9, 5 * 1024 * 1024 + 3);
    let cases: Vec<(RecordMeta, Vec<u8>)> = vec![
        (meta(0), Vec::new()),
        (unusual, b"x".to_vec()),
        (meta(2), big),
        (RecordMeta::default(), payload(3, 70_000)),
        (meta(4), payload(4, 10)),
    ];
    for (i, (m, p)) in cases.iter().enumerate() {
        assert_eq!(log.append(m, p).unwrap(), i as u64);
    }
    assert_eq!(log.end_offset(), 5);
    assert_eq!(log.durable_offset(), 5);

    let want: Vec<Record> = cases
        .iter()
        .enumerate()
        .map(|(i, (m, p))| Record {
            offset: i as u64,
            meta: m.clone(),
            payload: p.clone(),
        })
        .collect();
    // One record at a time (a zero budget still returns one), then everything in one call.
    for (i, record) in want.iter().enumerate() {
        assert_eq!(log.read(i as u64, 0).unwrap(), vec![record.clone()]);
    }
    assert_eq!(log.read(0, usize::MAX).unwrap(), want);

    // And the same after a reopen.
    drop(log);
    let (log, report) = open(&LogConfig::new(dir.path()));
    assert_eq!(report.records, 5);
    assert_eq!(report.torn_tail, None);
    assert_eq!(log.read(0, usize::MAX).unwrap(), want);
}

#[test]
fn read_stops_at_the_byte_budget_but_returns_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&LogConfig::new(dir.path()));
    append_range(&log, 0, 10, 100);

    let offsets = |records: Vec<Record>| records.iter().map(|r| r.offset).collect::<Vec<_>>();
    assert_eq!(offsets(log.read(0, 500).unwrap()), vec![0, 1, 2, 3, 4]);
    assert_eq!(offsets(log.read(0, 499).unwrap()), vec![0, 1, 2, 3]);
    assert_eq!(offsets(log.read(3, 250).unwrap()), vec![3, 4]);
    assert_eq!(offsets(log.read(7, 0).unwrap()), vec![7]);
    assert_eq!(log.read(0, usize::MAX).unwrap().len(), 10);
    assert_eq!(log.read(0, usize::MAX).unwrap()[9], expected(9, 100));
    assert!(log.read(10, usize::MAX).unwrap().is_empty());
    assert!(log.read(1_000, usize::MAX).unwrap().is_empty());
}

#[test]
fn reads_cross_segment_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&config(dir.path(), SEGMENT, Some(1 << 20)));
    append_range(&log, 0, 8, STD_PAYLOAD);
    assert_eq!(
        segment_files(dir.path()),
        vec![segment_name(0), segment_name(3), segment_name(6)]
    );
    let all = log.read(1, usize::MAX).unwrap();
    assert_eq!(
        all,
        (1..8).map(|i| expected(i, STD_PAYLOAD)).collect::<Vec<_>>()
    );
}

#[test]
fn scan_meta_visits_every_header_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&config(dir.path(), 1 << 20, Some(64 << 20)));
    for i in 0..20 {
        // Mix small records with ones large enough to be read header-only.
        let len = if i % 5 == 0 { 200_000 } else { 300 };
        assert_eq!(log.append(&meta(i), &payload(i, len)).unwrap(), i);
    }
    let mut seen = Vec::new();
    log.scan_meta(|offset, m| seen.push((offset, m.clone())))
        .unwrap();
    assert_eq!(seen, (0..20).map(|i| (i, meta(i))).collect::<Vec<_>>());
}

#[test]
fn oversized_records_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&config(dir.path(), SEGMENT, None));
    let m = meta(0);
    let too_big = (SEGMENT - 12 - record_len(&m, 0) + 1) as usize;
    let err = log.append(&m, &vec![0; too_big]).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { size, max } if size == SEGMENT - 11 && max == SEGMENT - 12)
    );
    assert_eq!(
        err.to_string(),
        "record of 4085 bytes exceeds the limit of 4084 bytes; \
         lower the agent's batch size or raise segment_bytes"
    );
    // The largest record that fits is accepted.
    assert_eq!(log.append(&m, &vec![0; too_big - 1]).unwrap(), 0);

    let long = RecordMeta {
        tenant: "t".repeat(65_536),
        ..meta(1)
    };
    let err = log.append(&long, b"").unwrap_err();
    assert_eq!(
        err.to_string(),
        "tenant is 65536 bytes long; at most 65535 bytes are allowed"
    );
    assert_eq!(log.end_offset(), 1);
    assert_eq!(log.stats().appends, 1);
}

#[test]
fn stats_track_bytes_segments_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&config(dir.path(), SEGMENT, None));
    append_range(&log, 0, 4, STD_PAYLOAD);
    let rec = record_len(&meta(0), STD_PAYLOAD);
    let stats = log.stats();
    assert_eq!(stats.bytes, 12 + 3 * rec + 12 + rec);
    assert_eq!(stats.segments, 2);
    assert_eq!(stats.first_offset, 0);
    assert_eq!(stats.end_offset, 4);
    assert_eq!(stats.durable_offset, 4);
    assert_eq!(stats.appends, 4);
    assert_eq!(stats.max_bytes, 1 << 20);
}

#[test]
fn log_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<EmbeddedLog>();
}
