//! Property tests: recovery after a crash at any byte keeps exactly the complete records.

mod support;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use proptest::prelude::*;
use support::*;

/// Where each record landed: (segment base, start byte, end byte).
fn layout(sizes: &[usize]) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let (mut base, mut pos) = (0u64, 12u64);
    for (i, &size) in sizes.iter().enumerate() {
        let len = record_len(&meta(i as u64), size);
        if pos > 12 && pos + len > SEGMENT {
            base = i as u64;
            pos = 12;
        }
        out.push((base, pos, pos + len));
        pos += len;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn cut_anywhere_in_the_active_segment(
        sizes in proptest::collection::vec(0usize..2500, 1..12),
        cut in any::<proptest::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), SEGMENT, Some(1 << 20));
        {
            let (log, _) = open(&cfg);
            for (i, &size) in sizes.iter().enumerate() {
                prop_assert_eq!(log.append(&meta(i as u64), &payload(i as u64, size)).unwrap(), i as u64);
            }
        }
        let layout = layout(&sizes);
        let last_base = layout.last().unwrap().0;
        let path = segment_path(dir.path(), last_base);
        let len = fs::metadata(&path).unwrap().len();
        prop_assert_eq!(len, layout.last().unwrap().2);
        let cut = cut.index(len as usize + 1) as u64;
        OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();

        // Records survive if they lie wholly below the cut (or in an older segment).
        let kept = layout.iter().filter(|&&(base, _, end)| base < last_base || end <= cut).count() as u64;
        let kept_end = layout.iter().filter(|&&(base, _, end)| base == last_base && end <= cut).map(|r| r.2).max().unwrap_or(12);
        let (log, report) = open(&cfg);
        prop_assert_eq!(report.end_offset, kept);
        prop_assert_eq!(report.records, kept);
        prop_assert!(report.damage.is_empty());
        if cut < 12 {
            prop_assert_eq!(report.truncated_bytes, cut);
            prop_assert_eq!(report.torn_tail.as_ref().map(|t| t.position), Some(0));
        } else if cut == kept_end {
            prop_assert_eq!(report.torn_tail.as_ref(), None);
            prop_assert_eq!(report.truncated_bytes, 0);
        } else {
            prop_assert_eq!(report.truncated_bytes, cut - kept_end);
            prop_assert_eq!(report.torn_tail.as_ref().map(|t| (t.position, t.bytes)), Some((kept_end, cut - kept_end)));
        }
        let want: Vec<_> = (0..kept).map(|i| expected(i, sizes[i as usize])).collect();
        prop_assert_eq!(read_all(&log, 0), want);
        prop_assert_eq!(log.append(&meta(kept), b"next").unwrap(), kept);
    }

    #[test]
    fn a_flipped_byte_in_the_active_segment_drops_its_record_and_all_after(
        sizes in proptest::collection::vec(0usize..2500, 1..12),
        at in any::<proptest::sample::Index>(),
        bit in 0u8..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), SEGMENT, Some(1 << 20));
        {
            let (log, _) = open(&cfg);
            for (i, &size) in sizes.iter().enumerate() {
                log.append(&meta(i as u64), &payload(i as u64, size)).unwrap();
            }
        }
        let layout = layout(&sizes);
        let last_base = layout.last().unwrap().0;
        let path = segment_path(dir.path(), last_base);
        let len = fs::metadata(&path).unwrap().len();
        // Any byte after the segment header.
        let position = 12 + at.index((len - 12) as usize) as u64;
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, position).unwrap();
        byte[0] ^= 1 << bit;
        file.write_all_at(&byte, position).unwrap();
        drop(file);

        let hit = layout.iter().position(|&(base, start, end)| base == last_base && (start..end).contains(&position)).unwrap() as u64;
        let hit_start = layout[hit as usize].1;
        let (log, report) = open(&cfg);
        prop_assert_eq!(report.end_offset, hit);
        prop_assert_eq!(report.truncated_bytes, len - hit_start);
        prop_assert_eq!(report.torn_tail.as_ref().map(|t| t.position), Some(hit_start));
        let want: Vec<_> = (0..hit).map(|i| expected(i, sizes[i as usize])).collect();
        prop_assert_eq!(read_all(&log, 0), want);
    }

    #[test]
    fn a_flipped_byte_in_a_sealed_segment_loses_exactly_its_record(
        sizes in proptest::collection::vec(0usize..2500, 6..14),
        at in any::<proptest::sample::Index>(),
        bit in 0u8..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), SEGMENT, Some(1 << 20));
        {
            let (log, _) = open(&cfg);
            for (i, &size) in sizes.iter().enumerate() {
                log.append(&meta(i as u64), &payload(i as u64, size)).unwrap();
            }
        }
        let layout = layout(&sizes);
        let last_base = layout.last().unwrap().0;
        // A byte of any record outside the active segment.
        let sealed: Vec<usize> = (0..layout.len()).filter(|&i| layout[i].0 < last_base).collect();
        prop_assume!(!sealed.is_empty());
        let victim = sealed[at.index(sealed.len())];
        let (base, start, end) = layout[victim];
        let position = start + (at.index((end - start) as usize) as u64);
        let path = segment_path(dir.path(), base);
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, position).unwrap();
        byte[0] ^= 1 << bit;
        file.write_all_at(&byte, position).unwrap();
        drop(file);

        let (log, report) = open(&cfg);
        let victim = victim as u64;
        prop_assert_eq!(report.torn_tail.as_ref(), None);
        prop_assert_eq!(report.damage.len(), 1);
        let d = &report.damage[0];
        prop_assert_eq!((d.first, d.end, d.position), (victim, victim + 1, start));
        prop_assert_eq!(report.records, sizes.len() as u64 - 1);
        let mut got = Vec::new();
        let mut next = 0;
        while next < sizes.len() as u64 {
            match log.read(next, usize::MAX) {
                Ok(batch) => {
                    next = batch.last().unwrap().offset + 1;
                    got.extend(batch);
                }
                Err(logferry_buffer::Error::Lost { first, end, .. }) => {
                    prop_assert_eq!((first, end), (victim, victim + 1));
                    next = end;
                }
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            }
        }
        let want: Vec<_> = (0..sizes.len() as u64)
            .filter(|&i| i != victim)
            .map(|i| expected(i, sizes[i as usize]))
            .collect();
        prop_assert_eq!(got, want);
    }
}
