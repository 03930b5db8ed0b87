//! Acks delete wholly acked segments; the size cap pushes back and is freed by acks.

mod common;

use common::*;
use logferry_spool::{Appended, Error, SpoolConfig};

#[test]
fn ack_deletes_only_wholly_acked_segments() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(small_segments(dir.path(), 3, 100));
    for seq in 1..=7 {
        spool.append("t", &chunk(seq, 100)).unwrap();
    }
    let seg = |s| format!("{s:020}.seg");
    assert_eq!(segment_files(dir.path()), vec![seg(1), seg(4), seg(7)]);
    let full = HEADER + 3 * entry_len("t", 100);
    assert_eq!(file_len(&segment_path(dir.path(), 1)), full);

    spool.ack(2).unwrap();
    assert_eq!(
        segment_files(dir.path()),
        vec![seg(1), seg(4), seg(7)],
        "partial ack keeps it"
    );
    assert_eq!(spool.stats().entries, 5);

    spool.ack(3).unwrap();
    assert_eq!(segment_files(dir.path()), vec![seg(4), seg(7)]);
    let stats = spool.stats();
    assert_eq!((stats.first_seq, stats.entries, stats.acked_seq), (4, 4, 3));
    assert_eq!(stats.bytes, full + HEADER + entry_len("t", 100));

    spool.ack(5).unwrap();
    assert_eq!(segment_files(dir.path()), vec![seg(4), seg(7)]);
    assert_eq!(
        seqs(&read_all(&spool)),
        vec![4, 5, 6, 7],
        "acked entries stay readable"
    );

    spool.ack(7).unwrap();
    assert!(segment_files(dir.path()).is_empty());
    let stats = spool.stats();
    assert_eq!(
        (stats.bytes, stats.entries, stats.segments, stats.first_seq),
        (0, 0, 0, 0)
    );
    assert!(read_all(&spool).is_empty());
    // The next append starts a fresh segment.
    assert_eq!(
        spool.append("t", &chunk(8, 100)).unwrap(),
        Appended::Stored { seq: 8 }
    );
    assert_eq!(segment_files(dir.path()), vec![seg(8)]);
}

#[test]
fn full_at_the_cap_and_freed_by_ack() {
    let dir = tempfile::tempdir().unwrap();
    let e = entry_len("t", 100); // 139
    let config = SpoolConfig {
        max_bytes: 1000,
        ..small_segments(dir.path(), 3, 100)
    };
    let spool = open(config);
    for seq in 1..=6 {
        spool.append("t", &chunk(seq, 100)).unwrap();
    }
    let used = 2 * (HEADER + 3 * e);
    assert_eq!(spool.stats().bytes, used);
    let err = spool.append("t", &chunk(7, 100)).unwrap_err();
    assert!(
        matches!(err, Error::Full { used: u, max: 1000, needed } if u == used && needed == e + HEADER),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "spool is full: 882 of 1000 bytes retained and the entry needs 163; \
         retry once the backend has acked, or raise max_bytes"
    );
    assert_eq!(spool.last_seq(), 6, "nothing was written");
    spool.ack(2).unwrap();
    assert!(matches!(
        spool.append("t", &chunk(7, 100)),
        Err(Error::Full { .. })
    ));
    spool.ack(3).unwrap();
    assert_eq!(
        spool.append("t", &chunk(7, 100)).unwrap(),
        Appended::Stored { seq: 7 }
    );
    assert_eq!(seqs(&read_all(&spool)), vec![4, 5, 6, 7]);
}

#[test]
fn an_entry_bigger_than_the_cap_is_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        max_bytes: 1000,
        segment_bytes: 1000,
        ..SpoolConfig::new(dir.path())
    };
    let spool = open(config);
    // 24 header + 38 overhead + 1 tag + 937 data = 1000: fits exactly.
    assert_eq!(
        spool.append("t", &chunk(1, 937)).unwrap(),
        Appended::Stored { seq: 1 }
    );
    let err = spool.append("t", &chunk(2, 938)).unwrap_err();
    assert_eq!(err.to_string(), "entry is 977 bytes, over the limit of 976");
    assert!(matches!(
        err,
        Error::TooLarge {
            what: "entry",
            size: 977,
            limit: 976
        }
    ));
    let err = spool.append(&"x".repeat(70_000), b"").unwrap_err();
    assert_eq!(
        err.to_string(),
        "tag is 70000 bytes, over the limit of 65535"
    );
}
