//! Concurrent appenders, group commit, and watching the durable offset.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use logferry_buffer::{LogConfig, RecordMeta};
use support::*;

#[test]
fn eight_threads_get_unique_contiguous_offsets_and_share_fsyncs() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 150;
    // Under the target dir rather than /tmp, which may be a tmpfs where fsync costs nothing
    // and so nothing would be batched.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // Small segments so that appenders also race with segment rolls.
    let cfg = LogConfig {
        segment_bytes: 64 << 10,
        ..LogConfig::new(dir.path())
    };
    let (log, _) = open(&cfg);
    let log = Arc::new(log);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                (0..PER_THREAD)
                    .map(|i| {
                        let m = RecordMeta {
                            first_seq: i,
                            last_seq: i,
                            agent_id: [t as u8; 16],
                            ..meta(t)
                        };
                        let body = format!("thread {t} record {i}").repeat(20);
                        let offset = log.append(&m, body.as_bytes()).unwrap();
                        // Durable on return.
                        assert!(log.durable_offset() > offset);
                        (offset, t, i)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut written: Vec<(u64, u64, u64)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    written.sort_unstable();
    let total = THREADS * PER_THREAD;
    let offsets: Vec<u64> = written.iter().map(|w| w.0).collect();
    assert_eq!(offsets, (0..total).collect::<Vec<_>>());

    let records = read_all(&log, 0);
    assert_eq!(records.len() as u64, total);
    for (record, &(offset, t, i)) in records.iter().zip(&written) {
        assert_eq!(record.offset, offset);
        assert_eq!(record.meta.agent_id, [t as u8; 16]);
        assert_eq!((record.meta.first_seq, record.meta.last_seq), (i, i));
        assert_eq!(
            record.payload,
            format!("thread {t} record {i}").repeat(20).into_bytes()
        );
    }
    // Each thread's records are in its own order.
    for t in 0..THREADS {
        let seqs: Vec<u64> = written.iter().filter(|w| w.1 == t).map(|w| w.2).collect();
        assert_eq!(seqs, (0..PER_THREAD).collect::<Vec<_>>());
    }
    let stats = log.stats();
    assert_eq!(stats.appends, total);
    assert_eq!(stats.durable_offset, total);
    assert!(
        stats.fsyncs < stats.appends,
        "group commit did not batch: {} fsyncs for {} appends",
        stats.fsyncs,
        stats.appends
    );
    assert!(stats.segments > 1, "the test should cross segment rolls");
    let distinct: BTreeSet<u64> = offsets.into_iter().collect();
    assert_eq!(distinct.len() as u64, total);
}

#[test]
fn subscribe_sees_the_durable_offset_advance() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&LogConfig::new(dir.path()));
    let mut rx = log.subscribe();
    assert_eq!(*rx.borrow_and_update(), 0);
    assert!(!rx.has_changed().unwrap());
    log.append(&meta(0), b"a").unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), 1);
    log.append(&meta(1), b"b").unwrap();
    log.append(&meta(2), b"c").unwrap();
    assert_eq!(*rx.borrow_and_update(), 3);
}

#[test]
fn a_router_task_wakes_up_for_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&LogConfig::new(dir.path()));
    let log = Arc::new(log);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let writer = {
        let log = Arc::clone(&log);
        thread::spawn(move || {
            for i in 0..5 {
                thread::sleep(Duration::from_millis(5));
                log.append(&meta(i), &payload(i, 10)).unwrap();
            }
        })
    };
    let got = runtime.block_on(async {
        let mut rx = log.subscribe();
        let mut next = 0;
        let mut got = Vec::new();
        while next < 5 {
            let durable = *rx.borrow_and_update();
            if durable > next {
                let batch = log.read(next, usize::MAX).unwrap();
                next = batch.last().map_or(next, |r| r.offset + 1);
                got.extend(batch);
                continue;
            }
            tokio::time::timeout(Duration::from_secs(10), rx.changed())
                .await
                .expect("durable offset advanced")
                .unwrap();
        }
        got
    });
    writer.join().unwrap();
    assert_eq!(got, (0..5).map(|i| expected(i, 10)).collect::<Vec<_>>());
}
