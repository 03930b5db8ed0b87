//! [`EmbeddedLog`]: open, append, release, stats. Reading lives in the `read` module.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, IoSlice, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

use crate::commit::{ActiveFile, Commit, lock};
use crate::config::LogConfig;
use crate::error::{Error, IoContext, Result};
use crate::format::{self, SEGMENT_HEADER_LEN};
use crate::io::{FileIo, StdIo, write_all_vectored};
use crate::record::RecordMeta;
use crate::recovery::{self, RecoveryReport};
use crate::segment::{self, Index};
use crate::stats::LogStats;

/// Name of the lock file inside the log directory.
pub const LOCK_FILE: &str = "LOCK";

/// The backend's durable buffer: a segmented append-only log of agent batches.
///
/// Share it as `Arc<EmbeddedLog>`; every method takes `&self`. Appends are serialised by a
/// write lock and group-committed (the `commit` module); reads run concurrently with
/// appends and with each other.
#[derive(Debug)]
pub struct EmbeddedLog {
    pub(crate) config: LogConfig,
    io: Arc<dyn FileIo>,
    writer: Mutex<Writer>,
    pub(crate) index: RwLock<Index>,
    pub(crate) commit: Commit,
    /// Offset the next record gets.
    end: AtomicU64,
    /// Bytes of all segment files.
    used: AtomicU64,
    /// Highest mark passed to `release`: sealed segments below it go as soon as they are sealed.
    released: AtomicU64,
    appends: AtomicU64,
    /// Holds the directory's exclusive lock for as long as the log is open.
    _lock: File,
}

/// State of the append path, guarded by the write lock.
#[derive(Debug)]
struct Writer {
    active: ActiveFile,
    /// Length of the active file: where the next record goes.
    pos: u64,
    /// Offset of the next record.
    next: u64,
    /// Prefix and header of the record being written; reused, so appends do not allocate.
    scratch: Vec<u8>,
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `config.dir`, taking an exclusive lock on it, and recovers
    /// what is on disk. See [`crate::format`] for what recovery does.
    pub fn open(config: LogConfig) -> Result<(EmbeddedLog, RecoveryReport)> {
        Self::open_with_io(config, Arc::new(StdIo))
    }

    pub(crate) fn open_with_io(
        config: LogConfig,
        io: Arc<dyn FileIo>,
    ) -> Result<(EmbeddedLog, RecoveryReport)> {
        config.validate()?;
        fs::create_dir_all(&config.dir)
            .context(|| format!("create buffer directory {}", config.dir.display()))?;
        let lock = lock_dir(&config.dir)?;
        let (index, report) = recovery::recover(&config, io.as_ref())?;
        let Some(active) = index.segments.back() else {
            return Err(Error::Corrupt {
                file: config.dir.clone(),
                offset: 0,
                reason: "recovery left no active segment".into(),
            });
        };
        let active_file = ActiveFile {
            file: Arc::clone(&active.file),
            path: Arc::clone(&active.path),
        };
        let writer = Writer {
            active: active_file.clone(),
            pos: active.file_len,
            next: active.end_offset,
            scratch: Vec::with_capacity(256),
        };
        let log = EmbeddedLog {
            commit: Commit::new(report.end_offset, active_file),
            end: AtomicU64::new(report.end_offset),
            used: AtomicU64::new(report.bytes),
            released: AtomicU64::new(report.first_offset),
            appends: AtomicU64::new(0),
            writer: Mutex::new(writer),
            index: RwLock::new(index),
            io,
            config,
            _lock: lock,
        };
        Ok((log, report))
    }

    /// Appends one record and returns its offset. With `sync` (the default) the record is
    /// durable when this returns; concurrent appenders share fsyncs.
    ///
    /// Fails with [`Error::Full`] when the record does not fit under `max_bytes`, and with
    /// [`Error::TooLarge`] when it is larger than a segment. Nothing is written then.
    pub fn append(&self, meta: &RecordMeta, payload: &[u8]) -> Result<u64> {
        let offset = {
            let mut writer = lock(&self.writer);
            self.commit.check()?;
            let offset = writer.next;
            format::encode_record(&mut writer.scratch, offset, meta, payload)?;
            let needed = (writer.scratch.len() + payload.len()) as u64;
            let max_record = self.config.max_record_bytes();
            if needed > max_record {
                return Err(Error::TooLarge {
                    size: needed,
                    max: max_record,
                });
            }
            let active_has_records = writer.pos > SEGMENT_HEADER_LEN;
            if active_has_records && writer.pos + needed > self.config.segment_bytes {
                self.roll(&mut writer)?;
            }
            let used = self.used.load(Ordering::Acquire);
            if used + needed > self.config.max_bytes {
                return Err(Error::Full {
                    used,
                    max: self.config.max_bytes,
                    needed,
                });
            }
            self.write_record(&mut writer, payload, needed)?;
            offset
        };
        self.appends.fetch_add(1, Ordering::Relaxed);
        if self.config.sync {
            self.commit.wait_durable(offset + 1, self.io.as_ref())?;
        } else {
            self.commit.mark_durable(offset + 1);
        }
        Ok(offset)
    }

    /// Writes the encoded record in `writer.scratch` plus `payload` in one `writev` and indexes
    /// it. A failed write is cut off again so the file stays a clean sequence of records.
    fn write_record(&self, writer: &mut Writer, payload: &[u8], needed: u64) -> Result<()> {
        let Writer {
            active,
            pos,
            next,
            scratch,
        } = writer;
        let start = u32::try_from(*pos).map_err(|_| Error::Corrupt {
            file: active.path.to_path_buf(),
            offset: *pos,
            reason: "active segment is larger than 4 GiB".into(),
        })?;
        let mut bufs = [IoSlice::new(scratch), IoSlice::new(payload)];
        if let Err(error) = write_all_vectored(self.io.as_ref(), &active.file, &mut bufs) {
            let undo = active
                .file
                .set_len(*pos)
                .and_then(|()| (&*active.file).seek(SeekFrom::Start(*pos)).map(drop));
            if let Err(undo_error) = undo {
                let context = format!(
                    "cut a partial record from {} at byte {pos}",
                    active.path.display()
                );
                self.commit.fail(context, &undo_error);
            }
            return Err(Error::io(
                format!("write record {next} to {}", active.path.display()),
                error,
            ));
        }
        *pos += needed;
        *next += 1;
        if let Some(segment) = write_lock(&self.index).active_mut() {
            segment.positions.push(start);
            segment.end = *pos;
            segment.end_offset = *next;
            segment.file_len = *pos;
        }
        self.used.fetch_add(needed, Ordering::AcqRel);
        self.end.store(*next, Ordering::Release);
        self.commit.publish_written(*next, None);
        Ok(())
    }

    /// Seals the active segment (fsynced, so only the active file ever needs a sync) and
    /// starts a new one at the next offset.
    fn roll(&self, writer: &mut Writer) -> Result<()> {
        let sync = self.config.sync;
        if sync {
            if let Err(error) = self.io.sync_data(&writer.active.file) {
                let context = format!("fsync {}", writer.active.path.display());
                self.commit.fail(context.clone(), &error);
                return Err(Error::io(context, error));
            }
            self.commit.count_fsync();
        }
        let segment = segment::create(&self.config.dir, writer.next, self.io.as_ref(), sync)?;
        if sync {
            // The new file and its directory entry.
            self.commit.count_fsync();
            self.commit.count_fsync();
        }
        let active = ActiveFile {
            file: Arc::clone(&segment.file),
            path: Arc::clone(&segment.path),
        };
        self.used.fetch_add(segment.file_len, Ordering::AcqRel);
        write_lock(&self.index).segments.push_back(segment);
        writer.active = active.clone();
        writer.pos = SEGMENT_HEADER_LEN;
        self.commit.publish_written(writer.next, Some(active));
        // A segment that consumers released while it was still active can go now.
        if let Err(error) = self.delete_below(self.released.load(Ordering::Acquire)) {
            tracing::warn!(%error, "could not delete a released buffer segment");
        }
        Ok(())
    }

    /// Offset the next record will get. Offsets are never reused, across restarts and after
    /// every record was released.
    pub fn end_offset(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// Every record below this offset is durable (with `sync = false`: handed to the OS).
    pub fn durable_offset(&self) -> u64 {
        self.commit.durable()
    }

    /// Watches [`durable_offset`](Self::durable_offset); routers wait on it for new records.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.commit.subscribe()
    }

    /// Oldest retained offset: reading below it fails with [`Error::Truncated`].
    pub fn first_offset(&self) -> u64 {
        read_lock(&self.index).first_offset()
    }

    /// Declares that every consumer is done with all offsets below `upto`, and deletes the
    /// segments whose records all lie below it. Returns how many were deleted.
    ///
    /// The active segment is never deleted. If it is wholly below `upto`, it is deleted as soon
    /// as the next append seals it. `upto` is capped at [`end_offset`](Self::end_offset).
    pub fn release(&self, upto: u64) -> Result<usize> {
        let upto = upto.min(self.end_offset());
        self.released.fetch_max(upto, Ordering::AcqRel);
        self.delete_below(upto)
    }

    /// Deletes sealed segments whose successor starts at or below `mark`, oldest first.
    fn delete_below(&self, mark: u64) -> Result<usize> {
        let mut index = write_lock(&self.index);
        let mut deleted = 0;
        while index.segments.len() > 1 && index.segments.get(1).is_some_and(|s| s.base <= mark) {
            let Some(oldest) = index.segments.front() else {
                break;
            };
            match fs::remove_file(&oldest.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("delete released segment {}", oldest.path.display()),
                        e,
                    ));
                }
            }
            if let Some(segment) = index.segments.pop_front() {
                self.used.fetch_sub(segment.file_len, Ordering::AcqRel);
                tracing::debug!(file = %segment.path.display(), "deleted released buffer segment");
            }
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Counters for metrics.
    pub fn stats(&self) -> LogStats {
        let (segments, first_offset) = {
            let index = read_lock(&self.index);
            (index.segments.len(), index.first_offset())
        };
        LogStats {
            bytes: self.used.load(Ordering::Acquire),
            max_bytes: self.config.max_bytes,
            segments,
            first_offset,
            end_offset: self.end_offset(),
            durable_offset: self.durable_offset(),
            fsyncs: self.commit.fsyncs(),
            appends: self.appends.load(Ordering::Relaxed),
        }
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }
}

/// Takes the directory's exclusive lock.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .context(|| format!("open lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(Error::io(format!("lock {}", path.display()), e)),
    }
}

pub(crate) fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
