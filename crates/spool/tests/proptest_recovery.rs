//! Recovery of a segment cut at any byte.

mod common;

use common::*;
use logferry_spool::{Appended, Spool, SpoolConfig};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_cut_keeps_exactly_the_whole_entries_before_it(
        entries in proptest::collection::vec(("[a-z.]{0,12}", 0usize..600), 1..16),
        cut in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig { sync: false, ..SpoolConfig::new(dir.path()) };
        let spool = open(config.clone());
        let mut ends = Vec::new();
        let mut end = HEADER;
        for (i, (tag, len)) in entries.iter().enumerate() {
            let seq = i as u64 + 1;
            prop_assert_eq!(spool.append(tag, &chunk(seq, *len)).unwrap(), Appended::Stored { seq });
            end += entry_len(tag, *len);
            ends.push(end);
        }
        drop(spool);
        let path = segment_path(dir.path(), 1);
        prop_assert_eq!(file_len(&path), end);
        let cut = cut.index(end as usize + 1) as u64;
        truncate(&path, cut);

        let (spool, report) = Spool::open(config).unwrap();
        let kept = if cut < HEADER { 0 } else { ends.iter().filter(|&&e| e <= cut).count() };
        let kept_end = if kept == 0 { HEADER.min(cut) } else { ends[kept - 1] };
        let got = read_all(&spool);
        prop_assert_eq!(got.len(), kept);
        for (e, (tag, len)) in got.iter().zip(&entries) {
            prop_assert_eq!(&e.tag, tag);
            prop_assert!(e.data == chunk(e.seq, *len));
        }
        prop_assert_eq!(seqs(&got), (1..=kept as u64).collect::<Vec<_>>());
        let torn = cut > kept_end;
        let expected_cut = if cut < HEADER { cut } else { cut - kept_end };
        prop_assert_eq!(report.truncated_bytes, expected_cut);
        // A cut inside an entry loses that entry's seq; a cut inside the segment
        // header or on an entry boundary loses none.
        let lost = (torn && cut >= HEADER).then_some((kept as u64 + 1, kept as u64 + 1));
        prop_assert_eq!(report.lost_seqs, lost);
        if kept == 0 {
            prop_assert!(!path.exists(), "a segment without entries is deleted");
        } else {
            prop_assert_eq!(file_len(&path), kept_end);
        }
        let next = kept as u64 + 1 + u64::from(lost.is_some());
        prop_assert_eq!(spool.append("after", b"x").unwrap(), Appended::Stored { seq: next });
    }
}
