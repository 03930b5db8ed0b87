//! Identity, seqs and the cursor across restarts; the directory lock.

mod common;

use common::*;
use logferry_spool::{Appended, Error, Spool, SpoolConfig};

#[test]
fn reopen_resumes_seq_and_keeps_the_agent_id() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert!(report.created);
    let id = spool.agent_id();
    assert_ne!(id, [0; 16]);
    for seq in 1..=3 {
        assert_eq!(
            spool.append("t", &chunk(seq, 10)).unwrap(),
            Appended::Stored { seq }
        );
    }
    drop(spool);

    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert!(!report.created);
    assert_eq!(
        (report.segments, report.entries, report.last_seq),
        (1, 3, 3)
    );
    assert_eq!(
        report.to_string(),
        "recovered spool: 1 segments, 3 entries, acked seq 0, last seq 3"
    );
    assert_eq!(spool.agent_id(), id);
    assert_eq!(spool.last_seq(), 3);
    assert_eq!(
        spool.append("t", &chunk(4, 10)).unwrap(),
        Appended::Stored { seq: 4 }
    );
    // A reopened spool never appends to a segment it found: seq 4 starts a new one.
    assert_eq!(
        segment_files(dir.path()),
        vec!["00000000000000000001.seg", "00000000000000000004.seg"]
    );
    assert_eq!(seqs(&read_all(&spool)), vec![1, 2, 3, 4]);
}

#[test]
fn seq_continues_after_everything_was_acked_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(SpoolConfig::new(dir.path()));
    for seq in 1..=5 {
        spool.append("t", &chunk(seq, 10)).unwrap();
    }
    spool.ack(5).unwrap();
    assert!(segment_files(dir.path()).is_empty());
    assert_eq!(spool.stats().bytes, 0);
    assert_eq!(
        spool.append("t", &chunk(6, 10)).unwrap(),
        Appended::Stored { seq: 6 }
    );
    spool.ack(6).unwrap();
    drop(spool);

    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(
        (report.segments, report.acked_seq, report.last_seq),
        (0, 6, 6)
    );
    assert_eq!(spool.last_seq(), 6);
    assert_eq!(
        spool.append("t", &chunk(7, 10)).unwrap(),
        Appended::Stored { seq: 7 }
    );
    assert_eq!(segment_files(dir.path()), vec!["00000000000000000007.seg"]);
}

#[test]
fn seq_continues_even_if_the_cursor_is_lost_after_all_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(SpoolConfig::new(dir.path()));
    for seq in 1..=5 {
        spool.append("t", &chunk(seq, 10)).unwrap();
    }
    spool.ack(5).unwrap();
    drop(spool);
    std::fs::remove_file(dir.path().join("cursor")).unwrap();

    // dedup.hashes keeps the highest deleted seq.
    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert!(report.cursor_reset);
    assert_eq!((report.acked_seq, report.last_seq), (5, 5));
    assert_eq!(
        spool.append("t", &chunk(6, 10)).unwrap(),
        Appended::Stored { seq: 6 }
    );
}

#[test]
fn damaged_cursor_means_acked_zero_and_everything_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(SpoolConfig::new(dir.path()));
    for seq in 1..=3 {
        spool.append("t", &chunk(seq, 10)).unwrap();
    }
    spool.ack(2).unwrap();
    drop(spool);
    flip_byte(&dir.path().join("cursor"), 13);

    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert!(report.cursor_reset);
    assert_eq!(report.acked_seq, 0);
    assert!(
        report
            .to_string()
            .ends_with(", cursor was missing or damaged"),
        "{report}"
    );
    assert_eq!(spool.acked_seq(), 0);
    assert_eq!(seqs(&read_all(&spool)), vec![1, 2, 3]);
    assert_eq!(
        spool.append("t", &chunk(4, 10)).unwrap(),
        Appended::Stored { seq: 4 }
    );
}

#[test]
fn cursor_survives_reopen_and_lower_acks_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(SpoolConfig::new(dir.path()));
    for seq in 1..=4 {
        spool.append("t", &chunk(seq, 10)).unwrap();
    }
    spool.ack(3).unwrap();
    spool.ack(1).unwrap();
    assert_eq!(spool.acked_seq(), 3);
    // Acks past the last seq are clamped: unwritten seqs are never acked.
    spool.ack(99).unwrap();
    assert_eq!(spool.acked_seq(), 4);
    drop(spool);
    let spool = open(SpoolConfig::new(dir.path()));
    assert_eq!(spool.acked_seq(), 4);
    assert_eq!(
        spool.append("t", &chunk(5, 10)).unwrap(),
        Appended::Stored { seq: 5 }
    );
}

#[test]
fn a_locked_directory_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(SpoolConfig::new(dir.path()));
    let err = Spool::open(SpoolConfig::new(dir.path())).expect_err("second open must fail");
    assert!(matches!(&err, Error::Locked { dir: d } if d == dir.path()));
    assert_eq!(
        err.to_string(),
        format!(
            "spool directory {} is locked by another process; stop it or use another dir",
            dir.path().display()
        )
    );
    drop(spool);
    Spool::open(SpoolConfig::new(dir.path())).unwrap();
}

#[test]
fn missing_meta_in_a_spool_with_data_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(SpoolConfig::new(dir.path()));
    spool.append("t", b"x").unwrap();
    drop(spool);
    std::fs::remove_file(dir.path().join("spool.meta")).unwrap();
    let err = Spool::open(SpoolConfig::new(dir.path())).expect_err("open must fail");
    assert!(
        err.to_string().ends_with(
            "missing while the spool holds data; restore it from a backup or move the spool away"
        ),
        "{err}"
    );
}

#[test]
fn nested_dir_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/spool");
    let spool = open(SpoolConfig::new(&nested));
    spool.append("t", b"x").unwrap();
    assert_eq!(segment_files(&nested).len(), 1);
    for name in ["LOCK", "spool.meta", "cursor"] {
        assert!(nested.join(name).exists(), "{name}");
    }
}
