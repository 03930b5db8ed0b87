//! Small durable-file helpers shared by the backend's stores.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `contents` atomically and durably: write a temp file, fsync
/// it, rename it over `path`, fsync the directory.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// fsyncs a directory, so a create, rename or delete inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a secret file readable by its owner only, unless it exists already.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// `<data-dir>/router.lock`: every backend that delivers holds it shared for its
/// lifetime; `logferry dead-letter replay` takes it exclusively, so it never writes
/// a destination a running backend writes too. The lock is released when the file
/// is dropped (or the process dies).
pub fn lock_router(data_dir: &Path, exclusive: bool) -> anyhow::Result<File> {
    use anyhow::Context;
    let path = data_dir.join("router.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening `{}`", path.display()))?;
    let locked = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match locked {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) if exclusive => anyhow::bail!(
            "a backend (`logferry serve` or `logferry route`) is running on `{}`: stop it, \
             run this again, then start it (records keep waiting in the buffer meanwhile)",
            data_dir.display()
        ),
        Err(fs::TryLockError::WouldBlock) => anyhow::bail!(
            "`logferry dead-letter replay` is running on `{}`; start the backend once it ends",
            data_dir.display()
        ),
        Err(fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking `{}`", path.display()))
        }
    }
}

/// Takes an exclusive lock on `path` (created if missing) without waiting: `None`
/// while another process holds it. Released when the file is dropped or the process
/// dies.
pub fn try_lock_exclusive(path: &Path) -> io::Result<Option<File>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}
