//! Append and read back: exact contents, order and seqs.

mod common;

use common::*;
use logferry_spool::{Appended, Spool, SpoolConfig};

#[test]
fn many_entries_of_every_size_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        segment_bytes: 1 << 20,
        ..SpoolConfig::new(dir.path())
    };
    let spool = open(config);
    let tags = [
        "app",
        "kube.var.log.containers.web-7f9c_default_web-0123.log",
        "ünï",
    ];
    let sizes = [
        0,
        1,
        37,
        4096,
        65_536,
        3 << 20,
        0,
        5 << 20 | 123,
        999_999,
        2,
    ];
    let mut want = Vec::new();
    for round in 0..3u64 {
        for (i, &size) in sizes.iter().enumerate() {
            let seq = want.len() as u64 + 1;
            // Distinct tags keep the repeated 0-byte chunks from being deduplicated.
            let tag = match seq {
                3 => String::new(),
                _ => format!("{}.{seq}", tags[(i + round as usize) % tags.len()]),
            };
            let tag = tag.as_str();
            let data = chunk(seq, size);
            assert_eq!(spool.append(tag, &data).unwrap(), Appended::Stored { seq });
            want.push((seq, tag.to_string(), data));
        }
    }
    let check = |spool: &Spool| {
        let got = read_all(spool);
        assert_eq!(got.len(), want.len());
        for (e, (seq, tag, data)) in got.iter().zip(&want) {
            assert_eq!((e.seq, &e.tag, e.data.len()), (*seq, tag, data.len()));
            assert!(e.data == *data, "data of seq {seq} differs");
        }
    };
    check(&spool);
    let stats = spool.stats();
    assert_eq!(
        (stats.first_seq, stats.last_seq, stats.entries),
        (1, 30, 30)
    );
    assert_eq!(stats.appends, 30);
    // Multi-MB entries each start a segment of their own once one is non-empty.
    assert!(
        segment_files(dir.path()).len() > 6,
        "{:?}",
        segment_files(dir.path())
    );
    let on_disk: u64 = segment_files(dir.path())
        .iter()
        .map(|n| file_len(&dir.path().join(n)))
        .sum();
    assert_eq!(stats.bytes, on_disk);
    drop(spool);
    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(
        (report.entries, report.truncated_bytes, report.lost_seqs),
        (30, 0, None)
    );
    check(&spool);
}

#[test]
fn read_from_respects_max_bytes_and_always_returns_the_first_entry() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(small_segments(dir.path(), 3, 100));
    for seq in 1..=7 {
        spool.append("t", &chunk(seq, 100)).unwrap();
    }
    assert_eq!(seqs(&spool.read_from(1, 250).unwrap()), vec![1, 2]);
    assert_eq!(seqs(&spool.read_from(1, 300).unwrap()), vec![1, 2, 3]);
    // Across a segment boundary (segments start at 1, 4, 7).
    assert_eq!(seqs(&spool.read_from(3, 400).unwrap()), vec![3, 4, 5, 6]);
    assert_eq!(
        seqs(&spool.read_from(2, 10_000).unwrap()),
        vec![2, 3, 4, 5, 6, 7]
    );
    // Smaller than one entry: that entry, whole.
    let one = spool.read_from(5, 1).unwrap();
    assert_eq!(seqs(&one), vec![5]);
    assert_eq!(one[0].data, chunk(5, 100));
    assert_eq!(seqs(&spool.read_from(7, 0).unwrap()), vec![7]);
    // Nothing there yet.
    assert!(spool.read_from(8, 10_000).unwrap().is_empty());
    assert!(spool.read_from(u64::MAX, 10_000).unwrap().is_empty());
    // Older than anything retained: from the oldest.
    spool.ack(3).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert_eq!(seqs(&spool.read_from(1, 250).unwrap()), vec![4, 5]);
    assert_eq!(seqs(&spool.read_from(0, 250).unwrap()), vec![4, 5]);
}

#[test]
fn empty_spool_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert!(report.created);
    assert_eq!(report.to_string(), "created a new spool");
    assert!(read_all(&spool).is_empty());
    assert_eq!((spool.last_seq(), spool.acked_seq()), (0, 0));
    assert_eq!(spool.stats().first_seq, 0);
    assert!(segment_files(dir.path()).is_empty());
}

#[test]
fn without_sync_appends_are_readable_at_once_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        sync: false,
        ..SpoolConfig::new(dir.path())
    };
    let spool = open(config.clone());
    for seq in 1..=50 {
        spool.append("t", &chunk(seq, seq as usize * 10)).unwrap();
    }
    assert_eq!(spool.stats().syncs, 1, "only the segment header was synced");
    assert_eq!(seqs(&read_all(&spool)), (1..=50).collect::<Vec<_>>());
    spool.sync().unwrap();
    assert_eq!(spool.stats().durable_seq, 50);
    drop(spool);
    let spool = open(config);
    let got = read_all(&spool);
    assert_eq!(got.len(), 50);
    assert!(
        got.iter()
            .all(|e| e.data == chunk(e.seq, e.seq as usize * 10))
    );
}

#[test]
fn without_sync_a_roll_does_not_sync_the_sealed_segment_but_sync_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        sync: false,
        segment_bytes: 4096,
        max_bytes: 1 << 20,
        ..SpoolConfig::new(dir.path())
    };
    let spool = open(config.clone());
    for seq in 1..=40 {
        spool.append("t", &chunk(seq, 500)).unwrap();
    }
    let segments = segment_files(dir.path()).len() as u64;
    assert!(segments >= 4, "{segments} segments");
    // One header sync per segment created, none for sealing one.
    assert_eq!(spool.stats().syncs, segments);
    spool.sync().unwrap();
    assert_eq!(
        spool.stats().syncs,
        2 * segments,
        "every retained segment synced"
    );
    assert_eq!(spool.stats().durable_seq, 40);
    drop(spool);
    assert_eq!(seqs(&read_all(&open(config))), (1..=40).collect::<Vec<_>>());
}

/// The spool holds plaintext until it is acknowledged: whatever the host process's
/// umask (Fluent Bit's is usually 022), only the owner can read it.
#[test]
fn everything_the_spool_creates_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a").join("spool");
    // SAFETY: `umask` cannot fail; a permissive mask like Fluent Bit's, for this
    // process (the test binary runs this test's files only).
    let previous = unsafe { libc::umask(0o022) };
    let spool = open(SpoolConfig::new(&dir));
    spool.append("t", &chunk(1, 100)).unwrap();
    spool.ack(1).unwrap();
    drop(spool);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the spool directory");
    assert_eq!(mode(&root.path().join("a")), 0o700, "a parent it created");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    assert!(
        files >= 3,
        "a segment, the metadata and the lock: {files} files"
    );
}
