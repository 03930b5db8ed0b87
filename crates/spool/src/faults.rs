//! The spool under injected faults: a short write followed by `ENOSPC`, a failed
//! rollback, a failed `fdatasync`. Same assertions as on a healthy disk: exact
//! entries, exact seqs, nothing acknowledged that is not durable.

use std::{
    io::{self, IoSlice},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::{
    Appended, Error, Spool, SpoolConfig,
    io::{RealStorage, SegmentFile, Storage},
};

#[derive(Default)]
struct Faults {
    /// Next entry write stops with ENOSPC after this many bytes (one shot).
    short_write: Mutex<Option<usize>>,
    fail_sync: AtomicBool,
    fail_set_len: AtomicBool,
}

struct FaultyStorage(Arc<Faults>);

struct FaultyFile {
    real: Arc<dyn SegmentFile>,
    faults: Arc<Faults>,
}

impl Storage for FaultyStorage {
    fn create(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        Ok(Arc::new(FaultyFile {
            real: RealStorage.create(path)?,
            faults: self.0.clone(),
        }))
    }
}

impl SegmentFile for FaultyFile {
    fn write_all_at(&self, offset: u64, bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
        let Some(n) = self.faults.short_write.lock().unwrap().take() else {
            return self.real.write_all_at(offset, bufs);
        };
        let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let n = n.min(all.len());
        self.real
            .write_all_at(offset, &mut [IoSlice::new(&all[..n])])?;
        Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "no space left on device",
        ))
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("input/output error"));
        }
        self.real.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.faults.fail_set_len.load(Ordering::SeqCst) {
            return Err(io::Error::other("input/output error"));
        }
        self.real.set_len(len)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.real.read_exact_at(buf, offset)
    }
}

fn open_faulty(dir: &Path) -> (Spool, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let (spool, _) = Spool::open_with(
        SpoolConfig::new(dir),
        Arc::new(FaultyStorage(faults.clone())),
    )
    .unwrap();
    (spool, faults)
}

fn segment_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("00000000000000000001.seg"))
        .unwrap()
        .len()
}

fn all(spool: &Spool) -> Vec<(u64, String, Vec<u8>)> {
    let entries = spool.read_from(0, usize::MAX).unwrap();
    entries
        .into_iter()
        .map(|e| (e.seq, e.tag, e.data))
        .collect()
}

#[test]
fn short_write_then_enospc_is_rolled_back_and_the_next_append_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, faults) = open_faulty(dir.path());
    spool.append("a", b"one").unwrap();
    spool.append("a", b"two").unwrap();
    let before = segment_len(dir.path());
    *faults.short_write.lock().unwrap() = Some(20);
    let err = spool.append("a", b"three").unwrap_err();
    assert!(
        err.to_string().starts_with("write entry seq 3 to ")
            && err.to_string().ends_with(": no space left on device"),
        "{err}"
    );
    assert_eq!(segment_len(dir.path()), before);
    assert_eq!(
        spool.append("a", b"three").unwrap(),
        Appended::Stored { seq: 3 }
    );
    let want = vec![
        (1, "a".to_string(), b"one".to_vec()),
        (2, "a".to_string(), b"two".to_vec()),
        (3, "a".to_string(), b"three".to_vec()),
    ];
    assert_eq!(all(&spool), want);
    drop(spool);
    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.entries, 3);
    assert_eq!(all(&spool), want);
}

#[test]
fn failed_rollback_refuses_appends_and_recovery_cuts_the_partial_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, faults) = open_faulty(dir.path());
    spool.append("a", b"one").unwrap();
    spool.append("a", b"two").unwrap();
    *faults.short_write.lock().unwrap() = Some(30);
    faults.fail_set_len.store(true, Ordering::SeqCst);
    let err = spool.append("a", b"three").unwrap_err();
    assert!(
        err.to_string()
            .contains("cutting back the partial entry failed too"),
        "{err}"
    );
    let err = spool.append("a", b"four").unwrap_err();
    assert!(matches!(err, Error::Poisoned(_)), "{err}");
    assert_eq!(all(&spool).len(), 2, "reads keep working");
    drop(spool);

    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    // The 30 partial bytes were cut; seq 3 is readable in them, so it is not reused.
    assert_eq!(report.truncated_bytes, 30);
    assert_eq!(report.lost_seqs, Some((3, 3)));
    assert_eq!(report.damage.len(), 1);
    assert_eq!(report.damage[0].offset, 24 + 2 * (38 + 1 + 3));
    assert_eq!(
        spool.append("a", b"three").unwrap(),
        Appended::Stored { seq: 4 }
    );
}

#[test]
fn failed_fdatasync_fails_the_append_and_every_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, faults) = open_faulty(dir.path());
    spool.append("a", b"one").unwrap();
    faults.fail_sync.store(true, Ordering::SeqCst);
    let err = spool.append("a", b"two").unwrap_err();
    assert_eq!(
        err.to_string(),
        "spool refuses appends after an earlier failure \
         (fdatasync failed: input/output error); reopen it"
    );
    faults.fail_sync.store(false, Ordering::SeqCst);
    assert!(matches!(
        spool.append("a", b"three"),
        Err(Error::Poisoned(_))
    ));
    assert_eq!(
        spool.read_from(1, usize::MAX).unwrap().len(),
        1,
        "seq 2 is not durable"
    );
    drop(spool);

    // The bytes did reach the file: recovery finds seq 2, and Fluent Bit's retry of
    // the same chunk is recognised.
    let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(report.entries, 2);
    assert_eq!(
        spool.append("a", b"two").unwrap(),
        Appended::Duplicate { seq: 2 }
    );
    assert_eq!(
        spool.append("a", b"three").unwrap(),
        Appended::Stored { seq: 3 }
    );
}
