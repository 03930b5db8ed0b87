//! Releasing segments, the size cap, offsets that survive reopening, the directory lock.

mod support;

use logferry_buffer::{EmbeddedLog, Error, LogConfig};
use support::*;

#[test]
fn release_deletes_exactly_the_segments_wholly_below_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&config(dir.path(), SEGMENT, Some(1 << 20)));
    append_range(&log, 0, 10, STD_PAYLOAD);
    let names = |bases: &[u64]| bases.iter().map(|&b| segment_name(b)).collect::<Vec<_>>();
    assert_eq!(segment_files(dir.path()), names(&[0, 3, 6, 9]));

    // Record 5 is still needed, so segment 3 (records 3, 4, 5) stays.
    assert_eq!(log.release(5).unwrap(), 1);
    assert_eq!(segment_files(dir.path()), names(&[3, 6, 9]));
    assert_eq!(log.first_offset(), 3);
    // Nothing new below the mark.
    assert_eq!(log.release(5).unwrap(), 0);
    assert_eq!(log.release(6).unwrap(), 1);
    assert_eq!(segment_files(dir.path()), names(&[6, 9]));

    // Everything consumed: the active segment (record 9) stays.
    assert_eq!(log.release(10).unwrap(), 1);
    assert_eq!(segment_files(dir.path()), names(&[9]));
    assert_eq!(log.stats().segments, 1);
    assert_eq!(log.stats().bytes, 12 + record_len(&meta(9), STD_PAYLOAD));
    assert_eq!(
        log.read(9, usize::MAX).unwrap(),
        vec![expected(9, STD_PAYLOAD)]
    );

    // A released offset is gone for good.
    let err = log.read(8, usize::MAX).unwrap_err();
    assert!(matches!(
        err,
        Error::Truncated {
            requested: 8,
            oldest: 9
        }
    ));
    assert_eq!(
        err.to_string(),
        "offset 8 was released; the oldest retained offset is 9"
    );
}

#[test]
fn a_released_active_segment_goes_when_it_is_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&config(dir.path(), SEGMENT, Some(1 << 20)));
    append_range(&log, 0, 12, STD_PAYLOAD);
    assert_eq!(log.release(12).unwrap(), 3);
    assert_eq!(segment_files(dir.path()), vec![segment_name(9)]);
    // Record 12 does not fit in segment 9; sealing it deletes it, since all of it was released.
    append_range(&log, 12, 13, STD_PAYLOAD);
    assert_eq!(segment_files(dir.path()), vec![segment_name(12)]);
    assert_eq!(log.first_offset(), 12);
    // Marks past the end are capped at the end: record 13 is not released by this.
    assert_eq!(log.release(1_000).unwrap(), 0);
    append_range(&log, 13, 16, STD_PAYLOAD);
    assert_eq!(
        segment_files(dir.path()),
        vec![segment_name(12), segment_name(15)]
    );
    assert_eq!(
        read_all(&log, 13),
        (13..16)
            .map(|i| expected(i, STD_PAYLOAD))
            .collect::<Vec<_>>()
    );
}

#[test]
fn offsets_continue_across_reopen_and_after_everything_was_released() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), SEGMENT, Some(1 << 20));
    {
        let (log, _) = open(&cfg);
        append_range(&log, 0, 5, STD_PAYLOAD);
    }
    {
        let (log, report) = open(&cfg);
        assert_eq!(report.end_offset, 5);
        assert_eq!(report.first_offset, 0);
        assert_eq!(report.records, 5);
        assert_eq!(log.end_offset(), 5);
        append_range(&log, 5, 12, STD_PAYLOAD);
        log.release(12).unwrap();
        // Seals segment 9 and deletes it: no record below 12 is left anywhere.
        append_range(&log, 12, 13, STD_PAYLOAD);
        log.release(13).unwrap();
        assert_eq!(segment_files(dir.path()), vec![segment_name(12)]);
    }
    let (log, report) = open(&cfg);
    assert_eq!(
        (report.first_offset, report.end_offset, report.records),
        (12, 13, 1)
    );
    assert_eq!(log.end_offset(), 13);
    assert_eq!(log.append(&meta(13), b"after").unwrap(), 13);
    assert!(matches!(
        log.read(0, 1),
        Err(Error::Truncated {
            requested: 0,
            oldest: 12
        })
    ));
}

#[test]
fn an_empty_active_segment_keeps_the_next_offset() {
    // A crash right after a segment was created leaves it empty; its name carries the offset.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), SEGMENT, None);
    {
        let (log, _) = open(&cfg);
        append_range(&log, 0, 2, STD_PAYLOAD);
    }
    std::fs::write(segment_path(dir.path(), 2), b"LFBUFFER\x01\x00\x00\x00").unwrap();
    let (log, report) = open(&cfg);
    assert_eq!(
        (report.segments, report.records, report.end_offset),
        (2, 2, 2)
    );
    assert_eq!(report.torn_tail, None);
    assert_eq!(log.append(&meta(2), b"x").unwrap(), 2);
}

#[test]
fn full_at_the_cap_and_freed_by_release() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), SEGMENT, Some(2 * SEGMENT));
    let (log, _) = open(&cfg);
    let rec = record_len(&meta(0), STD_PAYLOAD);
    // Segments 0 and 3 hold three records each, segment 6 one.
    append_range(&log, 0, 7, STD_PAYLOAD);
    let used = 3 * 12 + 7 * rec;
    assert_eq!(log.stats().bytes, used);
    assert!(used + rec > 2 * SEGMENT);

    let err = log.append(&meta(7), &payload(7, STD_PAYLOAD)).unwrap_err();
    match &err {
        Error::Full {
            used: u,
            max,
            needed,
        } => {
            assert_eq!((*u, *max, *needed), (used, 2 * SEGMENT, rec));
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(err.is_full());
    assert_eq!(
        err.to_string(),
        format!(
            "buffer is full: {used} of 8192 bytes in use and the record needs {rec}; \
             wait for destinations to catch up or raise max_bytes"
        )
    );
    // Nothing was written or skipped.
    assert_eq!(log.end_offset(), 7);
    assert_eq!(log.stats().bytes, used);

    assert_eq!(log.release(3).unwrap(), 1);
    assert_eq!(log.stats().bytes, used - 12 - 3 * rec);
    assert_eq!(log.append(&meta(7), &payload(7, STD_PAYLOAD)).unwrap(), 7);
    assert_eq!(
        read_all(&log, 3),
        (3..8).map(|i| expected(i, STD_PAYLOAD)).collect::<Vec<_>>()
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig::new(dir.path());
    let (first, _) = open(&cfg);
    let err = EmbeddedLog::open(cfg.clone()).unwrap_err();
    assert!(matches!(&err, Error::Locked { dir: d } if d == dir.path()));
    assert_eq!(
        err.to_string(),
        format!(
            "buffer directory {} is locked by another process; stop it or choose another directory",
            dir.path().display()
        )
    );
    drop(first);
    let (second, _) = open(&cfg);
    assert_eq!(second.end_offset(), 0);
}

#[test]
fn invalid_config_is_refused_before_touching_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("never-created");
    let cfg = LogConfig {
        segment_bytes: 1 << 20,
        max_bytes: 1 << 20,
        ..LogConfig::new(&sub)
    };
    let err = EmbeddedLog::open(cfg).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid buffer configuration: max_bytes (1048576) must be at least twice segment_bytes (1048576)"
    );
    assert!(!sub.exists());
}
