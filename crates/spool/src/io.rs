//! File-system helpers and the seam the write path goes through.
//!
//! [`SegmentFile`] is the handful of operations done on a segment once it exists:
//! positioned vectored append, `fdatasync`, truncate and positioned read. [`Storage`]
//! creates segment files. [`RealStorage`] is std on a real directory; unit tests wrap
//! it to inject short writes, `ENOSPC` and fsync failures.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{self, IoSlice, Seek, SeekFrom, Write},
    path::Path,
    sync::Arc,
};

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

use crate::{Error, Result, error::IoContext};

/// Mode of every file the spool creates: it holds records in plaintext until the
/// backend acknowledges them, so only the owner reads it, whatever the host
/// process's umask (Fluent Bit's is usually 022).
pub(crate) const PRIVATE_FILE: u32 = 0o600;
/// Mode of the spool directories it creates.
pub(crate) const PRIVATE_DIR: u32 = 0o700;

/// Creates `dir` and any missing parents with [`PRIVATE_DIR`]; an existing one is
/// left as the operator made it.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
}

/// One segment file, shared between the writer, the syncing thread and readers.
pub(crate) trait SegmentFile: Send + Sync {
    /// Writes all of `bufs` at `offset` (the current end of the file).
    fn write_all_at(&self, offset: u64, bufs: &mut [IoSlice<'_>]) -> io::Result<()>;
    /// `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates (or extends) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Fills `buf` from `offset`; a short file is `UnexpectedEof`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// Creates segment files.
pub(crate) trait Storage: Send + Sync {
    /// Creates a new, empty file at `path`; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>>;
}

/// std on a real directory.
#[derive(Debug, Default)]
pub(crate) struct RealStorage;

impl Storage for RealStorage {
    fn create(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE)
            .open(path)?;
        Ok(Arc::new(file))
    }
}

/// Opens an existing segment for reading (sealed segments found by recovery).
pub(crate) fn open_read(path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
    Ok(Arc::new(File::open(path)?))
}

impl SegmentFile for File {
    fn write_all_at(&self, offset: u64, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
        let mut file = self;
        file.seek(SeekFrom::Start(offset))?;
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            match file.write_vectored(bufs) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut bufs, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_exact_at(self, buf, offset)
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes creations, renames and deletions in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .context(|| format!("fsync directory {}", dir.display()))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Replaces `dir/name` with `bytes` atomically and durably: write `name.tmp`, fsync
/// it, rename it over `name`, fsync the directory. A crash leaves the old or the new
/// file, never a mix (a stray `.tmp` is removed on open).
pub(crate) fn atomic_write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE_FILE)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)
        .context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    sync_dir(dir)
}

/// Reads `dir/name`; `Ok(None)` when it does not exist.
pub(crate) fn read_optional(dir: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context(|| format!("read {}", path.display())),
    }
}

/// Takes the exclusive lock on `dir/LOCK`, held until the returned file is dropped.
pub(crate) fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(PRIVATE_FILE)
        .open(&path)
        .context(|| format!("open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(e).context(|| format!("lock {}", path.display())),
    }
}
