//! The append path under injected faults: short writes, ENOSPC, failed fsyncs.

use std::fs;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::io::faults::FaultyIo;
use crate::{EmbeddedLog, Error, LogConfig, RecordMeta};

fn meta(i: u64) -> RecordMeta {
    RecordMeta {
        tenant: "t".into(),
        access_key: "k".into(),
        first_seq: i,
        last_seq: i,
        ..RecordMeta::default()
    }
}

fn body(i: u64) -> Vec<u8> {
    vec![i as u8; 1000]
}

fn open(dir: &std::path::Path) -> (EmbeddedLog, Arc<FaultyIo>) {
    let io = Arc::new(FaultyIo::default());
    let (log, _) = EmbeddedLog::open_with_io(LogConfig::new(dir), io.clone()).unwrap();
    (log, io)
}

fn segment_len(dir: &std::path::Path) -> u64 {
    fs::metadata(dir.join("00000000000000000000.log"))
        .unwrap()
        .len()
}

fn payloads(log: &EmbeddedLog) -> Vec<(u64, Vec<u8>)> {
    log.read(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.offset, r.payload))
        .collect()
}

#[test]
fn short_writes_are_completed() {
    let dir = tempfile::tempdir().unwrap();
    let (log, io) = open(dir.path());
    io.short_writes(7);
    for i in 0..3 {
        assert_eq!(log.append(&meta(i), &body(i)).unwrap(), i);
    }
    let want: Vec<_> = (0..3).map(|i| (i, body(i))).collect();
    assert_eq!(payloads(&log), want);
    drop(log);
    let (log, report) = EmbeddedLog::open(LogConfig::new(dir.path())).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(payloads(&log), want);
}

#[test]
fn a_failed_write_leaves_no_partial_record_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (log, io) = open(dir.path());
    log.append(&meta(0), &body(0)).unwrap();
    let before = segment_len(dir.path());
    // The disk fills up 300 bytes into the next record.
    io.space_left(Some(300));
    let err = log.append(&meta(1), &body(1)).unwrap_err();
    match &err {
        Error::Io { context, source } => {
            assert!(context.starts_with("write record 1 to "), "{context}");
            assert_eq!(source.raw_os_error(), Some(28));
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(segment_len(dir.path()), before);
    assert_eq!((log.end_offset(), log.durable_offset()), (1, 1));

    io.space_left(None);
    assert_eq!(log.append(&meta(1), &body(1)).unwrap(), 1);
    assert_eq!(payloads(&log), vec![(0, body(0)), (1, body(1))]);
    drop(log);
    let (log, report) = EmbeddedLog::open(LogConfig::new(dir.path())).unwrap();
    assert_eq!((report.torn_tail, report.records), (None, 2));
    assert_eq!(payloads(&log), vec![(0, body(0)), (1, body(1))]);
}

#[test]
fn a_failed_fsync_stops_the_log_until_it_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let (log, io) = open(dir.path());
    log.append(&meta(0), &body(0)).unwrap();
    let mut rx = log.subscribe();
    rx.borrow_and_update();

    io.fail_sync(true);
    let err = log.append(&meta(1), &body(1)).unwrap_err();
    let message = err.to_string();
    assert!(message.starts_with("fsync "), "{message}");
    assert!(
        message.contains("(buffer stopped; restart to recover)"),
        "{message}"
    );
    // Not acknowledged, not visible to readers.
    assert_eq!(log.durable_offset(), 1);
    assert!(!rx.has_changed().unwrap());
    assert_eq!(payloads(&log), vec![(0, body(0))]);

    // The page cache can no longer be trusted: later appends fail too, even if fsync works.
    io.fail_sync(false);
    let syncs = io.syncs();
    let again = log.append(&meta(2), &body(2)).unwrap_err();
    assert_eq!(again.to_string(), message);
    assert_eq!(io.syncs(), syncs);
    assert_eq!(log.end_offset(), 2);
    drop(log);

    // Reopening re-reads the disk: record 1 was written, so it is there (unacknowledged; the
    // agent retries and ingest dedup drops the copy).
    let (log, report) = EmbeddedLog::open(LogConfig::new(dir.path())).unwrap();
    assert_eq!(report.end_offset, 2);
    assert_eq!(log.append(&meta(2), &body(2)).unwrap(), 2);
}

#[test]
fn concurrent_appenders_share_slow_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (log, io) = open(dir.path());
    io.slow_sync(Duration::from_millis(5));
    let log = Arc::new(log);
    let before = io.syncs();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                (0..20)
                    .map(|i| log.append(&meta(t * 100 + i), &body(i)).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut offsets: Vec<u64> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..160).collect::<Vec<_>>());
    let syncs = io.syncs() - before;
    // While one fsync runs, the other seven appenders queue up behind the next one.
    assert!(syncs <= 160 / 2, "{syncs} fsyncs for 160 appends");
    assert_eq!(log.stats().fsyncs, syncs);
    assert_eq!(log.durable_offset(), 160);
}
