//! Bytes as the files of an agent's spool directory (up to two segments, the cursor,
//! `spool.meta`): `Spool::open` recovers, then every entry is read. Errors are fine;
//! a panic is not. When the spool opens, an entry appended after recovery reads back
//! after a clean reopen.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use logferry_fuzz::{NO_META, Segments, WRITE_CURSOR};
use logferry_spool::{Error, Spool, SpoolConfig};

/// `spool.meta` with agent id 07..07 (layout in the spool's `meta.rs`).
fn meta_file() -> Vec<u8> {
    let mut buf = b"LFSPMETA".to_vec();
    buf.extend_from_slice(&1u32.to_le_bytes());
    buf.extend_from_slice(&[7; 16]);
    let crc = crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

fn cursor_file(acked: u64) -> Vec<u8> {
    let mut buf = b"LFCURSOR".to_vec();
    buf.extend_from_slice(&1u32.to_le_bytes());
    buf.extend_from_slice(&acked.to_le_bytes());
    let crc = crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

/// CRC32C (Castagnoli), bitwise: the fuzz crate keeps its own, so a bug shared with
/// the spool's cannot hide.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A segment's first seq as its header states it (name and header must agree).
fn first_seq(segment: &[u8], fallback: u64) -> u64 {
    segment
        .get(12..20)
        .map_or(fallback, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        sync: false,
        ..SpoolConfig::new(dir)
    }
}

/// Reads every entry from the oldest; returns the last seq read.
fn read_all(spool: &Spool) -> u64 {
    let mut next = 0u64;
    let mut last = 0;
    for _ in 0..10_000 {
        match spool.read_from(next, 1 << 20) {
            Ok(entries) if entries.is_empty() => return last,
            Ok(entries) => {
                for e in &entries {
                    assert!(e.seq >= next, "seq {} read from {next}", e.seq);
                    assert!(e.seq > last || last == 0, "seq {} after {last}", e.seq);
                    last = e.seq;
                }
                match last.checked_add(1) {
                    Some(n) => next = n,
                    None => return last,
                }
            }
            // The sender logs a damaged entry and moves past it.
            Err(Error::Corrupt { seq: Some(seq), .. }) if seq >= next => match seq.checked_add(1) {
                Some(n) => next = n,
                None => return last,
            },
            Err(_) => return last,
        }
    }
    panic!("reading never ended");
}

fuzz_target!(init: logferry_fuzz::seed_corpus(logferry_fuzz::spool_seeds), |data: &[u8]| {
    let Some(input) = Segments::parse(data) else {
        return;
    };
    let scratch = logferry_fuzz::scratch();
    let dir = scratch.path().join("spool");
    std::fs::create_dir(&dir).unwrap();
    if input.flags & NO_META == 0 {
        std::fs::write(dir.join("spool.meta"), meta_file()).unwrap();
    }
    if input.flags & WRITE_CURSOR != 0 {
        std::fs::write(dir.join("cursor"), cursor_file(input.cursor)).unwrap();
    }
    let a = first_seq(input.first, 1);
    std::fs::write(dir.join(format!("{a:020}.seg")), input.first).unwrap();
    if let Some(second) = input.second {
        let mut b = first_seq(second, a.wrapping_add(1));
        if b == a {
            b = a.wrapping_add(1);
        }
        std::fs::write(dir.join(format!("{b:020}.seg")), second).unwrap();
    }

    let Ok((spool, _report)) = Spool::open(config(&dir)) else {
        return;
    };
    read_all(&spool);
    let chunk = b"\x92\xce\x00\x00\x00\x01\x81\xa3fuz\xa5after";
    let Ok(appended) = spool.append("fuzz.after", chunk) else {
        return;
    };
    let seq = appended.seq();
    drop(spool);
    let (spool, _) = Spool::open(config(&dir)).expect("reopening a spool that was just open");
    let entries = spool.read_from(seq, 1 << 20).expect("reading what was appended");
    let entry = entries.first().expect("the appended entry is gone");
    assert_eq!(entry.seq, seq);
    assert_eq!(entry.data, chunk);
    read_all(&spool);
});
