//! Re-delivered chunks are recognised, across restarts and after their segment is gone.

mod common;

use common::*;
use logferry_spool::{Appended, Spool, SpoolConfig};

#[test]
fn same_tag_and_chunk_is_a_duplicate_another_tag_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(SpoolConfig::new(dir.path()));
    let data = chunk(1, 1000);
    assert_eq!(
        spool.append("a", &data).unwrap(),
        Appended::Stored { seq: 1 }
    );
    assert_eq!(
        spool.append("a", &data).unwrap(),
        Appended::Duplicate { seq: 1 }
    );
    assert_eq!(
        spool.append("b", &data).unwrap(),
        Appended::Stored { seq: 2 }
    );
    assert_eq!(
        spool.append("a", &chunk(2, 1000)).unwrap(),
        Appended::Stored { seq: 3 }
    );
    assert_eq!(
        spool.append("b", &data).unwrap(),
        Appended::Duplicate { seq: 2 }
    );
    let stats = spool.stats();
    assert_eq!(
        (stats.appends, stats.duplicates_skipped, stats.last_seq),
        (3, 2, 3)
    );
    let got = read_all(&spool);
    let tags: Vec<&str> = got.iter().map(|e| e.tag.as_str()).collect();
    assert_eq!(tags, vec!["a", "b", "a"]);
}

#[test]
fn dedup_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(SpoolConfig::new(dir.path()));
    spool.append("a", b"chunk one").unwrap();
    spool.append("a", b"chunk two").unwrap();
    drop(spool);
    let spool = open(SpoolConfig::new(dir.path()));
    assert_eq!(
        spool.append("a", b"chunk two").unwrap(),
        Appended::Duplicate { seq: 2 }
    );
    assert_eq!(
        spool.append("a", b"chunk one").unwrap(),
        Appended::Duplicate { seq: 1 }
    );
    assert_eq!(
        spool.append("a", b"chunk three").unwrap(),
        Appended::Stored { seq: 3 }
    );
    assert_eq!(spool.stats().duplicates_skipped, 2);
}

#[test]
fn dedup_survives_deletion_of_the_original_segment() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(small_segments(dir.path(), 2, 100));
    for seq in 1..=3 {
        spool.append("t", &chunk(seq, 100)).unwrap();
    }
    spool.ack(3).unwrap();
    assert!(segment_files(dir.path()).is_empty());
    assert!(dir.path().join("dedup.hashes").exists());
    assert_eq!(
        spool.append("t", &chunk(2, 100)).unwrap(),
        Appended::Duplicate { seq: 2 }
    );
    drop(spool);

    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(report.segments, 0);
    assert_eq!(spool.stats().dedup_hashes, 3);
    assert_eq!(
        spool.append("t", &chunk(1, 100)).unwrap(),
        Appended::Duplicate { seq: 1 }
    );
    assert_eq!(
        spool.append("t", &chunk(3, 100)).unwrap(),
        Appended::Duplicate { seq: 3 }
    );
    assert_eq!(
        spool.append("t", &chunk(4, 100)).unwrap(),
        Appended::Stored { seq: 4 }
    );
    assert!(read_all(&spool).iter().all(|e| e.seq == 4));
}

#[test]
fn only_the_last_window_entries_are_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        dedup_window: 2,
        ..SpoolConfig::new(dir.path())
    };
    let spool = open(config.clone());
    for (seq, c) in [b"a", b"b", b"c"].iter().enumerate() {
        assert_eq!(spool.append("t", *c).unwrap().seq(), seq as u64 + 1);
    }
    assert_eq!(
        spool.append("t", b"c").unwrap(),
        Appended::Duplicate { seq: 3 }
    );
    assert_eq!(
        spool.append("t", b"a").unwrap(),
        Appended::Stored { seq: 4 }
    );
    drop(spool);
    let spool = open(config);
    assert_eq!(spool.stats().dedup_hashes, 2);
    assert_eq!(
        spool.append("t", b"b").unwrap(),
        Appended::Stored { seq: 5 }
    );
}

#[test]
fn window_zero_turns_dedup_off() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(SpoolConfig {
        dedup_window: 0,
        ..SpoolConfig::new(dir.path())
    });
    assert_eq!(
        spool.append("t", b"x").unwrap(),
        Appended::Stored { seq: 1 }
    );
    assert_eq!(
        spool.append("t", b"x").unwrap(),
        Appended::Stored { seq: 2 }
    );
}

#[test]
fn dedup_hashes_of_a_damaged_file_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(SpoolConfig::new(dir.path()));
    spool.append("t", b"x").unwrap();
    spool.ack(1).unwrap();
    drop(spool);
    flip_byte(&dir.path().join("dedup.hashes"), 30);
    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(report.last_seq, 1, "the cursor still carries the seq");
    assert_eq!(
        spool.append("t", b"x").unwrap(),
        Appended::Stored { seq: 2 }
    );
}
