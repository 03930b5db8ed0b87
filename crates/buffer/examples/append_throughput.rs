//! Prints append throughput of the embedded log next to a plain baseline measured in the same
//! run: the same bytes written sequentially to one file with an fdatasync after each write.
//!
//! ```text
//! cargo run --release -p logferry-buffer --example append_throughput -- [DIR [PAYLOAD COUNT THREADS]]
//! ```

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use logferry_buffer::{EmbeddedLog, LogConfig, RecordMeta};

fn meta() -> RecordMeta {
    RecordMeta {
        tenant: "tenant-a".into(),
        access_key: "access-key-1".into(),
        agent_id: [9; 16],
        first_seq: 1,
        last_seq: 100,
        key_id: 1,
        compression: 1,
        chunk_count: 100,
        raw_bytes: 1 << 20,
        received_unix_ms: 1_700_000_000_000,
    }
}

/// Sequential writes of `record`-sized buffers, `threads` writers sharing one file under a
/// mutex, each write followed by fdatasync: what an fsync-per-batch store costs at best.
fn baseline(dir: &Path, record: usize, count: usize, threads: usize) -> Duration {
    let path = dir.join("baseline.dat");
    let file = Arc::new(std::sync::Mutex::new(File::create(&path).unwrap()));
    let buf = vec![0x5au8; record];
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let file = Arc::clone(&file);
            let buf = buf.clone();
            thread::spawn(move || {
                for _ in 0..count / threads {
                    let mut f = file.lock().unwrap();
                    f.write_all(&buf).unwrap();
                    f.sync_data().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let took = start.elapsed();
    std::fs::remove_file(path).unwrap();
    took
}

fn log_run(dir: &Path, payload: usize, count: usize, threads: usize) -> (Duration, u64) {
    let log_dir = dir.join("log");
    let (log, _) = EmbeddedLog::open(LogConfig::new(&log_dir)).unwrap();
    let log = Arc::new(log);
    let body = vec![0x5au8; payload];
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let log = Arc::clone(&log);
            let body = body.clone();
            thread::spawn(move || {
                let m = meta();
                for _ in 0..count / threads {
                    log.append(&m, &body).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let took = start.elapsed();
    let fsyncs = log.stats().fsyncs;
    drop(log);
    std::fs::remove_dir_all(log_dir).unwrap();
    (took, fsyncs)
}

const TRIALS: usize = 6;

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() {
    let tmp;
    let dir = match std::env::args().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir().unwrap();
            tmp.path().to_path_buf()
        }
    };
    let overhead = 16 + 69 + meta().tenant.len() + meta().access_key.len();
    println!("dir {}", dir.display());
    println!(
        "{:>9} {:>7} {:>7} {:>12} {:>12} {:>7} {:>8}",
        "payload", "records", "threads", "baseline MB/s", "log MB/s", "ratio", "fsyncs"
    );
    // Optional: PAYLOAD COUNT THREADS for a single configuration.
    let args: Vec<usize> = std::env::args()
        .skip(2)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (configs, thread_counts) = match args[..] {
        [payload, count, threads] => (vec![(payload, count)], vec![threads]),
        _ => (
            vec![(1024usize, 2000usize), (64 << 10, 1000), (1 << 20, 150)],
            vec![1usize, 8],
        ),
    };
    for &(payload, count) in &configs {
        for &threads in &thread_counts {
            // Same bytes on disk: the baseline writes record-sized buffers.
            let record = payload + overhead;
            let mb = (record * count) as f64 / 1e6;
            // Alternate the two so drifting disk speed hits both alike; report medians.
            let (mut bases, mut logs, mut fsyncs) = (Vec::new(), Vec::new(), 0);
            for trial in 0..TRIALS {
                if trial % 2 == 0 {
                    bases.push(baseline(&dir, record, count, threads));
                    let (took, f) = log_run(&dir, payload, count, threads);
                    logs.push(took);
                    fsyncs = f;
                } else {
                    let (took, f) = log_run(&dir, payload, count, threads);
                    logs.push(took);
                    fsyncs = f;
                    bases.push(baseline(&dir, record, count, threads));
                }
            }
            let (base, took) = (median(&mut bases), median(&mut logs));
            println!(
                "{:>9} {:>7} {:>7} {:>12.1} {:>12.1} {:>7.2} {:>8}",
                payload,
                count,
                threads,
                mb / base.as_secs_f64(),
                mb / took.as_secs_f64(),
                base.as_secs_f64() / took.as_secs_f64(),
                fsyncs
            );
        }
    }
}
