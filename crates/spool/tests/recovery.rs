//! What open does with torn tails and damaged segments, and damage found at read time.

mod common;

use common::*;
use logferry_spool::{Appended, Error, Spool, SpoolConfig};

const DATA: usize = 100;

/// Five entries of 100 bytes in one segment; returns the segment's path.
fn five_entries(dir: &std::path::Path) -> std::path::PathBuf {
    let spool = open(SpoolConfig::new(dir));
    for seq in 1..=5 {
        spool.append("t", &chunk(seq, DATA)).unwrap();
    }
    segment_path(dir, 1)
}

fn entry_offset(index: u64) -> u64 {
    HEADER + index * entry_len("t", DATA)
}

#[test]
fn torn_tail_mid_entry_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let path = five_entries(dir.path());
    truncate(&path, entry_offset(4) + 50);

    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(report.truncated_bytes, 50);
    assert_eq!(report.entries, 4);
    // Seq 5 is readable in the cut bytes: it was handed out, so it is not reused.
    assert_eq!(report.lost_seqs, Some((5, 5)));
    assert_eq!(report.damage.len(), 1);
    assert_eq!(report.damage[0].offset, entry_offset(4));
    assert_eq!(
        report.damage[0].reason,
        "short entry body (38 of 127 bytes)"
    );
    assert!(report.damage[0].truncated);
    assert_eq!(
        report.to_string(),
        "recovered spool: 1 segments, 4 entries, acked seq 0, last seq 5, \
         truncated 50 bytes of torn tail, lost seqs 5..=5"
    );
    assert_eq!(file_len(&path), entry_offset(4));
    let got = read_all(&spool);
    assert_eq!(seqs(&got), vec![1, 2, 3, 4]);
    assert!(
        got.iter()
            .all(|e| e.tag == "t" && e.data == chunk(e.seq, DATA))
    );

    assert_eq!(
        spool.append("t", &chunk(6, DATA)).unwrap(),
        Appended::Stored { seq: 6 }
    );
    assert_eq!(seqs(&read_all(&spool)), vec![1, 2, 3, 4, 6]);
    drop(spool);
    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(
        (report.truncated_bytes, report.lost_seqs, report.entries),
        (0, None, 5)
    );
    assert_eq!(seqs(&read_all(&spool)), vec![1, 2, 3, 4, 6]);
}

#[test]
fn torn_entry_header_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = five_entries(dir.path());
    truncate(&path, entry_offset(4) + 7);
    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(report.truncated_bytes, 7);
    assert_eq!(
        report.damage[0].reason,
        "short entry header (7 of 12 bytes)"
    );
    // The seq is not readable, but the entry at this offset can only have been seq 5.
    assert_eq!(report.lost_seqs, Some((5, 5)));
    assert_eq!(seqs(&read_all(&spool)), vec![1, 2, 3, 4]);
    assert_eq!(
        spool.append("t", b"new").unwrap(),
        Appended::Stored { seq: 6 }
    );
}

#[test]
fn flipped_byte_in_the_last_entry_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = five_entries(dir.path());
    flip_byte(&path, entry_offset(4) + 60);

    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(report.truncated_bytes, entry_len("t", DATA));
    assert_eq!(report.lost_seqs, Some((5, 5)));
    assert!(
        report.damage[0].reason.starts_with("crc mismatch"),
        "{:?}",
        report.damage
    );
    assert_eq!(file_len(&path), entry_offset(4));
    assert_eq!(seqs(&read_all(&spool)), vec![1, 2, 3, 4]);
    assert_eq!(
        spool.append("t", &chunk(5, DATA)).unwrap(),
        Appended::Stored { seq: 6 }
    );
    let got = read_all(&spool);
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 6]);
    assert_eq!(got[4].data, chunk(5, DATA));
}

#[test]
fn zeroed_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = five_entries(dir.path());
    // What a filesystem can leave after a crash: the file grew but the data is zeros.
    truncate(&path, entry_offset(5) + 4096);
    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(report.truncated_bytes, 4096);
    assert_eq!(report.damage[0].reason, "bad entry magic 0x00000000");
    assert_eq!(report.lost_seqs, Some((6, 6)));
    assert_eq!(seqs(&read_all(&spool)), vec![1, 2, 3, 4, 5]);
}

#[test]
fn last_segment_without_a_valid_entry_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(small_segments(dir.path(), 2, DATA));
    for seq in 1..=3 {
        spool.append("t", &chunk(seq, DATA)).unwrap();
    }
    drop(spool);
    let last = segment_path(dir.path(), 3);
    truncate(&last, HEADER + 10);
    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(report.truncated_bytes, 10);
    assert_eq!(report.lost_seqs, Some((3, 3)));
    assert!(!last.exists());
    assert_eq!(segment_files(dir.path()), vec!["00000000000000000001.seg"]);
    assert_eq!(seqs(&read_all(&spool)), vec![1, 2]);
    assert_eq!(
        spool.append("t", b"x").unwrap(),
        Appended::Stored { seq: 4 }
    );
}

#[test]
fn segment_with_a_torn_header_loses_no_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = five_entries(dir.path());
    // A crash while segment 6 was being created.
    std::fs::write(segment_path(dir.path(), 6), b"LFSPO").unwrap();
    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(report.truncated_bytes, 5);
    assert_eq!(report.lost_seqs, None);
    assert_eq!(
        report.damage[0].reason,
        "bad segment header: file shorter than the header"
    );
    assert_eq!(segment_files(dir.path()), vec!["00000000000000000001.seg"]);
    assert_eq!(file_len(&path), entry_offset(5));
    assert_eq!(
        spool.append("t", b"x").unwrap(),
        Appended::Stored { seq: 6 }
    );
}

#[test]
fn damage_in_an_older_segment_keeps_what_precedes_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(small_segments(dir.path(), 3, DATA));
    for seq in 1..=9 {
        spool.append("t", &chunk(seq, DATA)).unwrap();
    }
    drop(spool);
    // Segments 1, 4, 7. Damage seq 5, the middle entry of segment 4.
    let middle = segment_path(dir.path(), 4);
    let len_before = file_len(&middle);
    flip_byte(&middle, entry_offset(1) + 80);

    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.lost_seqs, Some((5, 6)));
    assert_eq!(report.damage.len(), 1);
    assert_eq!(report.damage[0].path, middle);
    assert_eq!(report.damage[0].offset, entry_offset(1));
    assert!(!report.damage[0].truncated);
    assert_eq!(
        report.to_string(),
        "recovered spool: 3 segments, 7 entries, acked seq 0, last seq 9, \
         1 damaged older segments, lost seqs 5..=6"
    );
    assert_eq!(
        file_len(&middle),
        len_before,
        "older segments are left as they are"
    );
    assert_eq!(seqs(&read_all(&spool)), vec![1, 2, 3, 4, 7, 8, 9]);
    assert_eq!(
        seqs(&spool.read_from(5, usize::MAX).unwrap()),
        vec![7, 8, 9]
    );
    assert_eq!(
        spool.append("t", b"x").unwrap(),
        Appended::Stored { seq: 10 }
    );
    // Acking past the damaged segment deletes it.
    spool.ack(7).unwrap();
    assert_eq!(
        segment_files(dir.path()),
        vec!["00000000000000000007.seg", "00000000000000000010.seg"]
    );
}

#[test]
fn damage_found_by_read_names_file_offset_and_seq_and_is_skipped_by_ack() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(SpoolConfig::new(dir.path()));
    for seq in 1..=3 {
        spool.append("t", &chunk(seq, DATA)).unwrap();
    }
    let path = segment_path(dir.path(), 1);
    flip_byte(&path, entry_offset(1) + 70);

    // Entries before the damage come first.
    assert_eq!(seqs(&read_all(&spool)), vec![1]);
    let err = spool.read_from(2, usize::MAX).unwrap_err();
    let Error::Corrupt {
        path: p,
        offset,
        seq,
        reason,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!((p, *offset, *seq), (&path, entry_offset(1), Some(2)));
    assert!(reason.starts_with("crc mismatch"), "{reason}");
    assert!(
        err.to_string().starts_with(&format!(
            "corrupt spool data in {} at offset {} (seq 2): crc mismatch",
            path.display(),
            entry_offset(1)
        )),
        "{err}"
    );
    spool.ack(2).unwrap();
    assert_eq!(seqs(&spool.read_from(3, usize::MAX).unwrap()), vec![3]);
}

#[test]
fn segments_acked_before_a_crash_are_deleted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(small_segments(dir.path(), 2, DATA));
    for seq in 1..=5 {
        spool.append("t", &chunk(seq, DATA)).unwrap();
    }
    drop(spool);
    // As if the process died after writing the cursor but before deleting segments.
    std::fs::write(dir.path().join("cursor.tmp"), b"half").unwrap();
    let cursor = {
        let other = tempfile::tempdir().unwrap();
        let s = open(SpoolConfig::new(other.path()));
        for seq in 1..=4 {
            s.append("t", &[seq as u8]).unwrap();
        }
        s.ack(4).unwrap();
        std::fs::read(other.path().join("cursor")).unwrap()
    };
    std::fs::write(dir.path().join("cursor"), cursor).unwrap();

    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(
        (report.deleted_segments, report.acked_seq, report.segments),
        (2, 4, 1)
    );
    assert_eq!(segment_files(dir.path()), vec!["00000000000000000005.seg"]);
    assert!(!dir.path().join("cursor.tmp").exists());
    assert_eq!(seqs(&read_all(&spool)), vec![5]);
}

#[test]
fn segment_from_a_newer_version_refuses_to_open_and_is_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    let path = five_entries(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = 2;
    let crc = crc32c_of(&bytes[..20]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = Spool::open(SpoolConfig::new(dir.path())).expect_err("open must fail");
    assert_eq!(
        err.to_string(),
        format!(
            "{} has format version 2, this build reads version 1; run a newer logferry",
            path.display()
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

/// CRC32C (Castagnoli), bitwise; enough for a 20-byte header.
fn crc32c_of(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
