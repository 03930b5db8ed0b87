//! The file calls on the write path, behind a trait so tests can inject short writes, ENOSPC
//! and failed fsyncs.

use std::fmt;
use std::fs::File;
use std::io::{self, IoSlice, Write};

/// Writes and syncs segment files. [`StdIo`] is the real implementation.
pub(crate) trait FileIo: Send + Sync + fmt::Debug {
    /// One `writev` at the file's cursor. May write fewer bytes than given.
    fn write_vectored(&self, file: &File, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// `fdatasync`.
    fn sync_data(&self, file: &File) -> io::Result<()>;
}

/// The operating system.
#[derive(Debug, Default)]
pub(crate) struct StdIo;

impl FileIo for StdIo {
    fn write_vectored(&self, mut file: &File, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        file.write_vectored(bufs)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}

/// Writes all of `bufs`, looping over short writes and `EINTR`.
pub(crate) fn write_all_vectored(
    io: &dyn FileIo,
    file: &File,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match io.write_vectored(file, bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod faults {
    //! A [`FileIo`] that fails on command.

    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    struct Plan {
        /// Each write call writes at most this many bytes.
        max_write: Option<usize>,
        /// Bytes that may still be written before writes fail with ENOSPC.
        space_left: Option<u64>,
        /// Fail every fsync with EIO.
        fail_sync: bool,
        /// Make every fsync take at least this long, like a slow disk.
        sync_delay: Option<std::time::Duration>,
        syncs: u64,
    }

    /// Injects short writes, ENOSPC after a byte budget, and fsync failures.
    #[derive(Debug, Default)]
    pub(crate) struct FaultyIo {
        plan: Mutex<Plan>,
    }

    impl FaultyIo {
        fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
            self.plan.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub(crate) fn short_writes(&self, max_write: usize) {
            self.plan().max_write = Some(max_write);
        }

        pub(crate) fn space_left(&self, bytes: Option<u64>) {
            self.plan().space_left = bytes;
        }

        pub(crate) fn fail_sync(&self, fail: bool) {
            self.plan().fail_sync = fail;
        }

        pub(crate) fn slow_sync(&self, delay: std::time::Duration) {
            self.plan().sync_delay = Some(delay);
        }

        pub(crate) fn syncs(&self) -> u64 {
            self.plan().syncs
        }
    }

    impl FileIo for FaultyIo {
        fn write_vectored(&self, mut file: &File, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut plan = self.plan();
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            let mut allowed = plan.max_write.map_or(total, |m| m.min(total));
            if let Some(left) = plan.space_left {
                if left == 0 {
                    return Err(io::Error::from_raw_os_error(28)); // ENOSPC
                }
                allowed = allowed.min(usize::try_from(left).unwrap_or(usize::MAX));
            }
            let mut flat = Vec::with_capacity(allowed);
            for b in bufs {
                let take = (allowed - flat.len()).min(b.len());
                flat.extend_from_slice(&b[..take]);
            }
            let n = file.write(&flat)?;
            if let Some(left) = plan.space_left.as_mut() {
                *left -= n as u64;
            }
            Ok(n)
        }

        fn sync_data(&self, file: &File) -> io::Result<()> {
            let delay = {
                let mut plan = self.plan();
                plan.syncs += 1;
                if plan.fail_sync {
                    return Err(io::Error::from_raw_os_error(5)); // EIO
                }
                plan.sync_delay
            };
            if let Some(delay) = delay {
                std::thread::sleep(delay);
            }
            file.sync_data()
        }
    }
}
