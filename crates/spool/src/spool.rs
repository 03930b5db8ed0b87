//! [`Spool`]: append, read, ack.
//!
//! Locks, always taken in this order: `ack_lock` (one ack at a time), `inner` (the
//! index and the active segment; appends write under it), the group-commit state.
//! `fdatasync` and reads of entry bytes happen with no lock held.

use std::{
    collections::VecDeque,
    fs::File,
    io,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{
    Error, RecoveryReport, Result, SpoolConfig, SpoolStats,
    commit::GroupCommit,
    dedup::{DedupWindow, Retired},
    error::IoContext,
    format::{self, SEGMENT_HEADER_LEN},
    io::{RealStorage, SegmentFile, Storage, lock_dir, sync_dir},
    meta::{self, write_cursor},
    recovery::{list_segments, recover},
    retire::retire,
    segment::{EntryLoc, Segment, read_entry},
};

/// What [`Spool::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// A new entry with this seq.
    Stored { seq: u64 },
    /// The same (tag, chunk) is already in the spool (or was, and is acked) as `seq`.
    Duplicate { seq: u64 },
}

impl Appended {
    /// The seq that holds the chunk.
    pub fn seq(&self) -> u64 {
        match *self {
            Appended::Stored { seq } | Appended::Duplicate { seq } => seq,
        }
    }
}

/// One spooled chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub tag: String,
    pub data: Vec<u8>,
}

/// The durable on-disk spool. `Send + Sync`: share it as `Arc<Spool>` between the
/// flushing threads and the sender.
pub struct Spool {
    config: SpoolConfig,
    agent_id: [u8; 16],
    storage: Arc<dyn Storage>,
    inner: Mutex<Inner>,
    commit: GroupCommit,
    ack_lock: Mutex<()>,
    acked: AtomicU64,
    last: AtomicU64,
    appends: AtomicU64,
    duplicates: AtomicU64,
    syncs: AtomicU64,
    /// Holds the `LOCK` file's lock until the spool is dropped.
    _lock: File,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.config.dir)
            .field("last_seq", &self.last_seq())
            .field("acked_seq", &self.acked_seq())
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// Oldest first.
    segments: VecDeque<Segment>,
    /// The back segment was created by this process and takes appends. Segments found
    /// on open are never appended to.
    active: bool,
    next_seq: u64,
    /// Sum of `disk_len` over `segments`.
    used: u64,
    dedup: DedupWindow,
    /// Highest seq of any deleted segment.
    retired_high: u64,
    /// Why appends are refused, after a failure that left the disk state unknown.
    poisoned: Option<String>,
}

impl Inner {
    fn active_file(&self) -> Option<Arc<dyn SegmentFile>> {
        self.segments
            .back()
            .filter(|_| self.active)
            .map(|s| s.file.clone())
    }
}

/// The entries of one segment that a read will fetch.
struct ReadPlan {
    path: PathBuf,
    file: Arc<dyn SegmentFile>,
    locs: Vec<EntryLoc>,
}

impl Spool {
    /// Opens (or creates) the spool in `config.dir`, recovering whatever a crash left.
    /// Fails with [`Error::Locked`] if another process has it open.
    pub fn open(config: SpoolConfig) -> Result<(Spool, RecoveryReport)> {
        Self::open_with(config, Arc::new(RealStorage))
    }

    pub(crate) fn open_with(
        config: SpoolConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<(Spool, RecoveryReport)> {
        config.validate()?;
        let dir = config.dir.clone();
        let existed = dir.is_dir();
        crate::io::create_private_dir(&dir)
            .context(|| format!("create spool dir {}", dir.display()))?;
        if !existed && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let lock = lock_dir(&dir)?;
        let listing = list_segments(&dir)?;
        let has_data = !listing.is_empty() || dir.join(crate::dedup::DEDUP_FILE).exists();
        if !has_data && !dir.join(meta::META_FILE).exists() {
            // A new spool: the cursor goes first so that a spool.meta always has one.
            write_cursor(&dir, 0)?;
        }
        let (agent_id, created) = meta::load_or_create_agent_id(&dir, has_data)?;
        let rec = recover(&dir, &config, listing, created)?;
        let used = rec.segments.iter().map(|s| s.disk_len).sum();
        let spool = Spool {
            agent_id,
            storage,
            commit: GroupCommit::new(rec.last_seq),
            ack_lock: Mutex::new(()),
            acked: AtomicU64::new(rec.acked),
            last: AtomicU64::new(rec.last_seq),
            appends: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                segments: rec.segments,
                active: false,
                next_seq: rec.last_seq.saturating_add(1),
                used,
                dedup: rec.dedup,
                retired_high: rec.retired.high_seq,
                poisoned: None,
            }),
            config,
            _lock: lock,
        };
        Ok((spool, rec.report))
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// 128 random bits created with the spool and stored in `spool.meta`.
    pub fn agent_id(&self) -> [u8; 16] {
        self.agent_id
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores one chunk. With `sync` on it returns once the entry is on stable storage
    /// (one `fdatasync` shared by all concurrent appends). A (tag, chunk) identical to
    /// one of the last `dedup_window` entries is not stored again.
    ///
    /// Errors: [`Error::Full`] (retry after acks), [`Error::TooLarge`] (never fits),
    /// [`Error::Io`], [`Error::Poisoned`].
    pub fn append(&self, tag: &str, chunk: &[u8]) -> Result<Appended> {
        let len = format::entry_len(tag.as_bytes(), chunk)?;
        let max = self.config.max_bytes;
        let room = max - SEGMENT_HEADER_LEN as u64;
        if len > room {
            return Err(Error::TooLarge {
                what: "entry",
                size: len,
                limit: room,
            });
        }
        // Both passes over the chunk run before the write lock is taken.
        let hash = format::content_hash(tag.as_bytes(), chunk);
        let chunk_crc = crc32c::crc32c(chunk);

        let mut inner = self.lock_inner();
        if let Some(reason) = &inner.poisoned {
            return Err(Error::Poisoned(reason.clone()));
        }
        if let Some(seq) = inner.dedup.get(hash) {
            drop(inner);
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            if self.config.sync {
                self.wait_durable(seq)?;
            }
            return Ok(Appended::Duplicate { seq });
        }
        let seq = inner.next_seq;
        if seq == u64::MAX {
            return Err(Error::Poisoned("the seq space is used up".into()));
        }
        let roll = match inner.segments.back() {
            Some(seg) if inner.active => {
                seg.entries() > 0 && seg.end() + len > self.config.segment_bytes
            }
            _ => true,
        };
        let needed = len + if roll { SEGMENT_HEADER_LEN as u64 } else { 0 };
        if inner.used + needed > max {
            return Err(Error::Full {
                used: inner.used,
                max,
                needed,
            });
        }
        if roll {
            self.roll(&mut inner, seq)?;
        }
        let prefix = format::encode_prefix(seq, hash, tag.as_bytes(), chunk, chunk_crc);
        let Some(segment) = inner.segments.back_mut() else {
            return Err(Error::Poisoned("no active segment after a roll".into()));
        };
        if let Err(e) = segment.append(seq, &prefix, chunk, tag.len() as u16) {
            if segment.torn {
                inner.poisoned = Some(e.to_string());
            }
            return Err(e);
        }
        inner.used += len;
        inner.next_seq += 1;
        inner.dedup.insert(seq, hash);
        self.last.store(seq, Ordering::Release);
        drop(inner);
        self.appends.fetch_add(1, Ordering::Relaxed);
        if self.config.sync {
            self.wait_durable(seq)?;
        }
        Ok(Appended::Stored { seq })
    }

    /// Seals the active segment (synced first, with `sync: true`) and starts a new one
    /// at `first_seq`.
    fn roll(&self, inner: &mut Inner, first_seq: u64) -> Result<()> {
        // With `sync: false` a roll does not hold every append up for the fdatasync of a
        // whole segment; `Spool::sync` covers all retained segments instead.
        let old = inner.segments.back().filter(|_| inner.active);
        if let Some(old) = old.filter(|_| self.config.sync) {
            let synced = old
                .file
                .sync_data()
                .context(|| format!("fdatasync segment {}", old.path.display()));
            self.syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = synced {
                inner.poisoned = Some(e.to_string());
                return Err(e);
            }
            self.commit.mark_durable(old.seq_bound());
        }
        let segment = Segment::create(&*self.storage, &self.config.dir, first_seq)?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        inner.used += segment.disk_len;
        inner.segments.push_back(segment);
        inner.active = true;
        Ok(())
    }

    /// Group commit (see `commit.rs`): returns once `seq` is durable.
    fn wait_durable(&self, seq: u64) -> Result<()> {
        self.commit.wait_durable(seq, || self.sync_written())
    }

    /// The leader's sync: everything written so far. With `sync: true` older segments
    /// were synced when they were rolled, so only the active one needs it; with
    /// `sync: false` every retained segment is synced (clean ones cost next to nothing).
    fn sync_written(&self) -> io::Result<u64> {
        let (covered, files) = {
            let inner = self.lock_inner();
            let files: Vec<Arc<dyn SegmentFile>> = if self.config.sync {
                inner.active_file().into_iter().collect()
            } else {
                inner.segments.iter().map(|s| s.file.clone()).collect()
            };
            (inner.next_seq - 1, files)
        };
        for file in files {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = file.sync_data() {
                self.lock_inner().poisoned = Some(format!("fdatasync failed: {e}"));
                return Err(e);
            }
        }
        Ok(covered)
    }

    /// Makes every entry written so far durable. Only needed with `sync: false`.
    pub fn sync(&self) -> Result<()> {
        self.wait_durable(self.last_seq())
    }

    /// Entries with seq `>= seq` (from the oldest retained one if `seq` is older), in
    /// order, whole. Their chunk bytes total at most `max_bytes`, except that the first
    /// entry is always returned. Empty when there is nothing (yet). With `sync` on,
    /// only durable entries are returned, so nothing is sent that a crash could lose.
    ///
    /// Every entry's CRC is checked. A damaged entry is [`Error::Corrupt`] naming the
    /// file, offset and seq; entries before it in the same call are returned first and
    /// the error comes on the next call. Nothing can be recovered from a damaged
    /// entry: the caller logs it and moves past it with [`Spool::ack`] of that seq.
    pub fn read_from(&self, seq: u64, max_bytes: usize) -> Result<Vec<Entry>> {
        let plans = self.plan_read(seq, max_bytes as u64);
        let mut out = Vec::new();
        for plan in plans {
            for loc in &plan.locs {
                match read_entry(&*plan.file, &plan.path, loc) {
                    Ok(entry) => out.push(entry),
                    Err(e) if out.is_empty() => return Err(e),
                    Err(_) => return Ok(out),
                }
            }
        }
        Ok(out)
    }

    fn plan_read(&self, seq: u64, max_bytes: u64) -> Vec<ReadPlan> {
        let inner = self.lock_inner();
        let visible = if self.config.sync {
            self.commit.durable().min(inner.next_seq - 1)
        } else {
            inner.next_seq - 1
        };
        let mut plans = Vec::new();
        let mut total = 0u64;
        let mut first = true;
        let start = inner.segments.partition_point(|s| s.seq_bound() < seq);
        'segments: for segment in inner.segments.range(start..) {
            let mut plan = ReadPlan {
                path: segment.path.clone(),
                file: segment.file.clone(),
                locs: Vec::new(),
            };
            let mut next = seq.max(segment.first_seq);
            while let Some(loc) = segment.loc(next).filter(|_| next <= visible) {
                let data = loc.data_len();
                if !first && total + data > max_bytes {
                    plans.push(plan);
                    break 'segments;
                }
                first = false;
                total += data;
                plan.locs.push(loc);
                let Some(after) = next.checked_add(1) else {
                    break;
                };
                next = after;
            }
            let done = next <= segment.seq_bound();
            plans.push(plan);
            if done {
                break;
            }
        }
        plans
    }

    /// Marks every seq `<= seq` as stored by the backend: persists the cursor (atomic
    /// replace, fsync) and deletes segments whose entries are all acked. Values at or
    /// below the current cursor are ignored; values above the last seq are clamped.
    pub fn ack(&self, seq: u64) -> Result<()> {
        let _one_ack = self.ack_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = seq.min(self.last_seq());
        if seq <= self.acked_seq() {
            return Ok(());
        }
        write_cursor(&self.config.dir, seq)?;
        self.acked.store(seq, Ordering::Release);

        let (doomed, retired) = {
            let mut inner = self.lock_inner();
            let n = inner
                .segments
                .iter()
                .take_while(|s| s.seq_bound() <= seq)
                .count();
            if n == 0 {
                return Ok(());
            }
            let doomed: Vec<Segment> = inner.segments.drain(..n).collect();
            if inner.segments.is_empty() {
                inner.active = false;
            }
            inner.used = inner
                .used
                .saturating_sub(doomed.iter().map(|s| s.disk_len).sum());
            let high = doomed.iter().map(Segment::seq_bound).max().unwrap_or(0);
            inner.retired_high = inner.retired_high.max(high);
            let first_left = inner
                .segments
                .front()
                .map_or(inner.next_seq, |s| s.first_seq);
            let retired = Retired {
                high_seq: inner.retired_high,
                hashes: inner.dedup.below(first_left),
            };
            (doomed, retired)
        };
        retire(&self.config.dir, &doomed, &retired)
    }

    /// Every seq up to this one is acked; 0 when none is.
    pub fn acked_seq(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Highest seq written, 0 if none ever was. Survives restarts, including after
    /// every segment was acked and deleted.
    pub fn last_seq(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> SpoolStats {
        let acked = self.acked_seq();
        let inner = self.lock_inner();
        let entries = inner
            .segments
            .iter()
            .filter(|s| s.entries() > 0)
            .map(|s| {
                (s.seq_bound().saturating_add(1))
                    .saturating_sub(s.first_seq.max(acked.saturating_add(1)))
            })
            .sum();
        SpoolStats {
            bytes: inner.used,
            max_bytes: self.config.max_bytes,
            segments: inner.segments.len(),
            entries,
            first_seq: inner
                .segments
                .iter()
                .find(|s| s.entries() > 0)
                .map_or(0, |s| s.first_seq),
            last_seq: inner.next_seq - 1,
            durable_seq: self.commit.durable(),
            acked_seq: acked,
            appends: self.appends.load(Ordering::Relaxed),
            duplicates_skipped: self.duplicates.load(Ordering::Relaxed),
            dedup_hashes: inner.dedup.len(),
            syncs: self.syncs.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Spool>();
    }
}
