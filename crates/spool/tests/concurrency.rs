//! Many flushing threads at once, with fsync: group commit.

mod common;

use std::{
    sync::{Arc, Barrier},
    thread,
};

use common::*;
use logferry_spool::{Appended, SpoolConfig};

#[test]
fn eight_threads_get_unique_contiguous_seqs_with_fewer_fsyncs_than_appends() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 150;
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(open(SpoolConfig {
        segment_bytes: 256 << 10,
        ..SpoolConfig::new(dir.path())
    }));
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (spool, barrier) = (spool.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                (0..PER_THREAD)
                    .map(|i| {
                        let id = t * 1000 + i;
                        let data = chunk(id, 64 + (id as usize % 4000));
                        let tag = format!("thread.{t}");
                        match spool.append(&tag, &data).unwrap() {
                            Appended::Stored { seq } => {
                                // Durable, hence visible to the sender, before returning.
                                assert!(spool.stats().durable_seq >= seq);
                                (seq, tag, data)
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut written: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    written.sort_by_key(|(seq, _, _)| *seq);
    let total = THREADS * PER_THREAD;
    assert_eq!(
        written.iter().map(|w| w.0).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    let got = read_all(&spool);
    assert_eq!(got.len() as u64, total);
    for (e, (seq, tag, data)) in got.iter().zip(&written) {
        assert_eq!((e.seq, &e.tag), (*seq, tag));
        assert!(e.data == *data, "seq {seq}");
    }
    let stats = spool.stats();
    assert_eq!(stats.appends, total);
    assert!(
        stats.syncs < total,
        "{} fsyncs for {total} appends",
        stats.syncs
    );
    eprintln!(
        "{} fsyncs for {total} appends in {} segments",
        stats.syncs, stats.segments
    );
}

#[test]
fn a_duplicate_from_another_thread_waits_for_the_original_to_be_durable() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(open(SpoolConfig::new(dir.path())));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let spool = spool.clone();
            thread::spawn(move || {
                let got = spool.append("t", b"same chunk").unwrap();
                assert!(spool.stats().durable_seq >= got.seq());
                got
            })
        })
        .collect();
    let results: Vec<Appended> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        results
            .iter()
            .filter(|r| matches!(r, Appended::Stored { .. }))
            .count(),
        1
    );
    assert!(results.iter().all(|r| r.seq() == 1));
    assert_eq!(spool.stats().duplicates_skipped, 7);
}
