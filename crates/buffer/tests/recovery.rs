//! Reopening after crashes and damage: torn tails, flipped bytes, foreign files.

mod support;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use logferry_buffer::{Damage, EmbeddedLog, Error, TornTail};
use support::*;

fn flip_byte(path: &Path, position: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, position).unwrap();
    byte[0] ^= 0x40;
    file.write_all_at(&byte, position).unwrap();
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

#[test]
fn torn_tail_mid_record_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, Some(64 << 20));
    {
        let (log, _) = open(&cfg);
        append_range(&log, 0, 5, STD_PAYLOAD);
    }
    let rec = record_len(&meta(0), STD_PAYLOAD);
    let path = segment_path(dir.path(), 0);
    assert_eq!(file_len(&path), 12 + 5 * rec);
    // A crash in the middle of writing record 4.
    let cut = 12 + 4 * rec + 40;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let (log, report) = open(&cfg);
    assert_eq!(
        report.torn_tail,
        Some(TornTail {
            file: path.clone(),
            position: 12 + 4 * rec,
            bytes: 40,
            reason: format!("record of {rec} bytes runs past the 40 bytes available"),
        })
    );
    assert_eq!(report.truncated_bytes, 40);
    assert_eq!((report.records, report.end_offset), (4, 4));
    assert!(report.damage.is_empty());
    assert_eq!(
        report.to_string(),
        format!(
            "buffer {}: segments 1, records 4 (offsets 0..4), {} bytes; torn tail: dropped 40 \
             bytes at byte {} of {} (record of {rec} bytes runs past the 40 bytes available)",
            dir.path().display(),
            12 + 4 * rec,
            12 + 4 * rec,
            path.display()
        )
    );
    assert_eq!(file_len(&path), 12 + 4 * rec);
    assert_eq!(
        read_all(&log, 0),
        (0..4).map(|i| expected(i, STD_PAYLOAD)).collect::<Vec<_>>()
    );
    append_range(&log, 4, 6, STD_PAYLOAD);
    drop(log);

    let (log, report) = open(&cfg);
    assert_eq!(report.torn_tail, None);
    assert_eq!((report.records, report.end_offset), (6, 6));
    assert_eq!(
        read_all(&log, 0),
        (0..6).map(|i| expected(i, STD_PAYLOAD)).collect::<Vec<_>>()
    );
}

#[test]
fn flipped_payload_byte_in_the_last_record_drops_exactly_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), SEGMENT, None);
    {
        let (log, _) = open(&cfg);
        append_range(&log, 0, 5, STD_PAYLOAD);
    }
    // Records 3 and 4 live in segment 3; flip the last byte of record 4's payload.
    let rec = record_len(&meta(0), STD_PAYLOAD);
    let path = segment_path(dir.path(), 3);
    assert_eq!(file_len(&path), 12 + 2 * rec);
    flip_byte(&path, 12 + 2 * rec - 1);

    let (log, report) = open(&cfg);
    let torn = report.torn_tail.clone().expect("torn tail");
    assert_eq!(
        (torn.file, torn.position, torn.bytes),
        (path.clone(), 12 + rec, rec)
    );
    assert!(
        torn.reason.starts_with("checksum mismatch: stored 0x"),
        "{}",
        torn.reason
    );
    assert_eq!(report.truncated_bytes, rec);
    assert_eq!((report.segments, report.records), (2, 4));
    assert_eq!((report.first_offset, report.end_offset), (0, 4));
    assert_eq!(report.bytes, 12 + 3 * rec + 12 + rec);
    assert_eq!(
        read_all(&log, 0),
        (0..4).map(|i| expected(i, STD_PAYLOAD)).collect::<Vec<_>>()
    );
    assert_eq!(log.append(&meta(4), &payload(4, STD_PAYLOAD)).unwrap(), 4);
    assert_eq!(log.read(4, 1).unwrap(), vec![expected(4, STD_PAYLOAD)]);
}

#[test]
fn a_segment_torn_while_being_created_gets_its_header_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), SEGMENT, None);
    {
        let (log, _) = open(&cfg);
        append_range(&log, 0, 3, STD_PAYLOAD);
    }
    let path = segment_path(dir.path(), 3);
    fs::write(&path, b"LFBUF").unwrap();
    let (log, report) = open(&cfg);
    assert_eq!(
        report.torn_tail,
        Some(TornTail {
            file: path.clone(),
            position: 0,
            bytes: 5,
            reason: "segment header is incomplete (5 of 12 bytes)".into(),
        })
    );
    assert_eq!((report.records, report.end_offset), (3, 3));
    assert_eq!(fs::read(&path).unwrap(), b"LFBUFFER\x01\x00\x00\x00");
    assert_eq!(log.append(&meta(3), b"p").unwrap(), 3);
}

#[test]
fn damage_in_an_older_segment_is_reported_and_skipped_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), SEGMENT, None);
    {
        let (log, _) = open(&cfg);
        append_range(&log, 0, 7, STD_PAYLOAD);
    }
    let rec = record_len(&meta(0), STD_PAYLOAD);
    let sealed = segment_path(dir.path(), 0);
    // A bit rot in the payload of record 1, in the middle of sealed segment 0.
    flip_byte(&sealed, 12 + rec + 500);

    let (log, report) = open(&cfg);
    assert_eq!(report.torn_tail, None);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.damage.len(), 1);
    let Damage {
        file,
        position,
        first,
        end,
        skipped_bytes,
        reason,
    } = report.damage[0].clone();
    assert_eq!(
        (file, position, first, end, skipped_bytes),
        (sealed.clone(), 12 + rec, 1, 2, rec)
    );
    assert!(reason.starts_with("checksum mismatch"), "{reason}");
    assert_eq!(report.lost_records(), 1);
    assert_eq!((report.records, report.end_offset), (6, 7));
    // Nothing was cut from the sealed file.
    assert_eq!(file_len(&sealed), 12 + 3 * rec);

    // Reading stops before the lost record, names it, and says where to go on.
    assert_eq!(
        log.read(0, usize::MAX).unwrap(),
        vec![expected(0, STD_PAYLOAD)]
    );
    let err = log.read(1, usize::MAX).unwrap_err();
    assert!(matches!(&err, Error::Lost { first: 1, end: 2, position: p, .. } if *p == 12 + rec));
    assert!(
        err.to_string().starts_with("records 1..2 were lost"),
        "{err}"
    );
    assert!(err.to_string().ends_with("continue at offset 2"), "{err}");
    assert_eq!(
        read_all(&log, 2),
        (2..7).map(|i| expected(i, STD_PAYLOAD)).collect::<Vec<_>>()
    );
    let mut offsets = Vec::new();
    log.scan_meta(|offset, m| {
        assert_eq!(m, &meta(offset));
        offsets.push(offset);
    })
    .unwrap();
    assert_eq!(offsets, vec![0, 2, 3, 4, 5, 6]);
    assert_eq!(log.append(&meta(7), &payload(7, STD_PAYLOAD)).unwrap(), 7);
}

#[test]
fn damaged_record_lengths_in_an_older_segment_resync_on_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), SEGMENT, None);
    {
        let (log, _) = open(&cfg);
        append_range(&log, 0, 4, STD_PAYLOAD);
    }
    let rec = record_len(&meta(0), STD_PAYLOAD);
    let sealed = segment_path(dir.path(), 0);
    // Record 0's payload_len field (prefix bytes 8..12) now claims ~4 MB more.
    flip_byte(&sealed, 12 + 10);
    let (log, report) = open(&cfg);
    assert_eq!(report.damage.len(), 1);
    let d = &report.damage[0];
    assert_eq!(
        (d.position, d.first, d.end, d.skipped_bytes),
        (12, 0, 1, rec)
    );
    assert!(d.reason.starts_with("record of "), "{}", d.reason);
    assert!(matches!(
        log.read(0, 10),
        Err(Error::Lost {
            first: 0,
            end: 1,
            ..
        })
    ));
    assert_eq!(
        read_all(&log, 1),
        (1..4).map(|i| expected(i, STD_PAYLOAD)).collect::<Vec<_>>()
    );
}

#[test]
fn corruption_after_open_is_reported_by_read_with_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), SEGMENT, None);
    let (log, _) = open(&cfg);
    append_range(&log, 0, 5, STD_PAYLOAD);
    let rec = record_len(&meta(0), STD_PAYLOAD);
    let sealed = segment_path(dir.path(), 0);
    flip_byte(&sealed, 12 + 2 * rec + 100);

    // Records before the bad one come back; the bad one is the error of the next call.
    assert_eq!(
        log.read(0, usize::MAX).unwrap(),
        vec![expected(0, STD_PAYLOAD), expected(1, STD_PAYLOAD)]
    );
    match log.read(2, usize::MAX).unwrap_err() {
        Error::Corrupt {
            file,
            offset,
            reason,
        } => {
            assert_eq!((file, offset), (sealed, 12 + 2 * rec));
            assert!(
                reason.starts_with("record 2: checksum mismatch"),
                "{reason}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        log.read(3, usize::MAX).unwrap(),
        vec![expected(3, STD_PAYLOAD), expected(4, STD_PAYLOAD)]
    );
}

#[test]
fn newer_format_versions_are_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), SEGMENT, None);
    {
        let (log, _) = open(&cfg);
        append_range(&log, 0, 2, STD_PAYLOAD);
    }
    let path = segment_path(dir.path(), 0);
    let before = fs::read(&path).unwrap();
    flip_byte(&path, 9); // version 1 -> 0x4001
    let err = EmbeddedLog::open(cfg.clone()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "corrupt buffer data in {} at byte 8: segment format version 16385 is not supported; \
             this build reads version 1",
            path.display()
        )
    );
    assert_eq!(fs::read(&path).unwrap().len(), before.len());
}

#[test]
fn a_foreign_last_segment_stops_open_instead_of_being_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), SEGMENT, None);
    drop(open(&cfg));
    let path = segment_path(dir.path(), 0);
    fs::write(&path, b"definitely not a buffer segment").unwrap();
    let err = EmbeddedLog::open(cfg.clone()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "corrupt buffer data in {} at byte 0: not a logferry buffer segment (bad magic); \
             move the file out of the directory to continue",
            path.display()
        )
    );
    assert_eq!(fs::read(&path).unwrap(), b"definitely not a buffer segment");
}

#[test]
fn a_damaged_header_of_an_older_segment_loses_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), SEGMENT, None);
    {
        let (log, _) = open(&cfg);
        append_range(&log, 0, 5, STD_PAYLOAD);
    }
    let sealed = segment_path(dir.path(), 0);
    flip_byte(&sealed, 2); // "LFBUFFER" -> "LFbUFFER"
    let (log, report) = open(&cfg);
    assert_eq!(
        report.damage,
        vec![Damage {
            file: sealed,
            position: 0,
            first: 0,
            end: 0,
            skipped_bytes: 12,
            reason: "not a logferry buffer segment (bad magic)".into(),
        }]
    );
    assert_eq!((report.records, report.lost_records()), (5, 0));
    assert_eq!(
        read_all(&log, 0),
        (0..5).map(|i| expected(i, STD_PAYLOAD)).collect::<Vec<_>>()
    );
}

#[test]
fn large_records_are_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, Some(64 << 20));
    let (log, _) = open(&cfg);
    append_range(&log, 0, 3, 200_000);
    let rec = record_len(&meta(0), 200_000);
    let path = segment_path(dir.path(), 0);
    flip_byte(&path, 12 + rec + 150_000);
    assert_eq!(log.read(0, 0).unwrap(), vec![expected(0, 200_000)]);
    // A budget too small for record 1 stops before reading it, so the damage is not seen yet.
    assert_eq!(log.read(0, 250_000).unwrap(), vec![expected(0, 200_000)]);
    match log.read(1, usize::MAX).unwrap_err() {
        Error::Corrupt {
            file,
            offset,
            reason,
        } => {
            assert_eq!((file, offset), (path, 12 + rec));
            assert!(
                reason.starts_with("record 1: checksum mismatch"),
                "{reason}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(log.read(2, 0).unwrap(), vec![expected(2, 200_000)]);
}

/// Found by the `buffer_recovery` fuzz target (the input as the target got it: 13
/// bytes of layout, then the segment file). The segment is named for its first
/// record's offset, 2^64 - 1: recovery took the name as the next offset, and the
/// first append after it overflowed. A base past 2^63 is now refused at open.
#[test]
fn a_segment_base_past_2_pow_63_is_refused() {
    const FUZZ_INPUT: &[u8] = b"\
        \x00\x00\x00\x00\x00\x00\x00\x00\x00\x59\x01\x00\x00\x4c\x46\x42\x55\x46\x46\x45\x52\x01\x00\x00\
        \x00\x4c\x46\x52\x43\x51\x00\x00\x00\x85\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
        \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
        \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
        \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
        \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\
        \x00\x00\x00\x00\x68\xe5\xcf\x8b\x01\x00\x00\x2c\x04\x00\x66\x75\x7a\x7a\x08\x00\x66\x75\x7a\x7a\
        \x2d\x6b\x65\x79\x0a\x82\x01\x08\x01\x12\x0e\x66\x75\x7a\x7a\x2e\x73\x79\x6e\x74\x68\x65\x74\x69\
        \x63\x1a\x6e\x92\x92\xd7\x00\xff\xff\xff\xff\x00\x00\x00\x00\xff\xff\xfe\x00\x00\x00\x65\xce\xf1\
        \x80\x92\x80\xa3\x6d\x73\x67\xa6\x6c\x65\x67\x61\x63\x79\x4c\x46\x52\x43\x51\x00\x00\x00\x06\x00\
        \x00\x00\xea\x0c\x2b\x1b\x01\x00\x00\x00\x00\x00\x00\x00\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\
        \x07\x07\x07\x07\x07\x07\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\
        \x00\x00\x00\x01\x00\x00\x00\x85\x00\x00\x00\x00\x00\x00\x00\x00\x68\xe5\xcf\x8b\x01\x00\x00\x81\
        \xa1\x6b\x01\x85\xa3\x6c\x6f\x67\xa5\x68\x65\x6c\x6c\x6f\xa1\x6e\xfe\xa1\x66\xcb\x3f\xf8\x00\x00\
        \x00\x00\x00\x00\xa1\x62\xc4\x03\x00\xff\x10\xa1\x61\x92\xc0\xc3\x92\x92\xd7\x00\xff\xff\xff\xfe\
        \x00\x00\x00\x65\xce\xf1\x80\x92\x80\x53\x00\x01\x81\xa3\x6d\x73\x67\xa6\x6c\x65\x67\x61\x63\x79\
        \x4c\x46\x52\x43\x51\x00\x00\x00\x06\x00\x00\x00\xea\x0c\x2b\x1b\x01\x00\x00\x00\x00\x00\x00\x00\
        \x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x01\x00\x00\x00\x00\x00\x00\x00\
        \x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x85\x00\x00\x00\x00\x00\x00\
        \x00\x00\x68\xe5\xcf\x8b\x01\x00\x00\x04\x00\x66\x75\x7a\x7a\x08\x00\x66\x75\x7a\x7a\x2d\x6b\x65\
        \x79\x73\x65\x63\x6f\x6e\x64\
    ";
    let segment = &FUZZ_INPUT[13..];
    let base = u64::from_le_bytes(segment[28..36].try_into().unwrap());
    assert_eq!(base, u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{base:020}.log"));
    fs::write(&path, segment).unwrap();
    let err = EmbeddedLog::open(config(dir.path(), 64 << 10, None)).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { file, .. } if *file == path),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("segment base offset 18446744073709551615 is past the largest"),
        "{err}"
    );
    assert_eq!(fs::read(&path).unwrap(), segment, "the file is left alone");

    // The largest base accepted still takes appends.
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&config(dir.path(), 64 << 10, None));
    drop(log);
    fs::rename(
        dir.path().join(format!("{:020}.log", 0)),
        dir.path().join(format!("{:020}.log", 1u64 << 63)),
    )
    .unwrap();
    let (log, _) = open(&config(dir.path(), 64 << 10, None));
    assert_eq!(log.append(&meta(1), b"x").unwrap(), 1 << 63);
}
