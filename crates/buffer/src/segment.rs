//! Segment files and the in-memory index of where each record lives.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::format::{self, SEGMENT_HEADER_LEN};
use crate::io::{FileIo, write_all_vectored};
use crate::recovery::Damage;

/// One segment file and the byte position of each of its records.
///
/// Memory per record is 4 bytes; payloads are never held.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Offset of the first record.
    pub base: u64,
    pub path: Arc<Path>,
    pub file: Arc<File>,
    /// `positions[i]` is where record `base + i` starts. Offsets lost to damage found at open
    /// point at the start of the damage.
    pub positions: Vec<u32>,
    /// Where the last record ends (or the damage that closes the segment begins).
    pub end: u64,
    /// Offset one past the last record. Above `base + positions.len()` only when damage found
    /// at open ends the segment early; the missing offsets are listed in `damage`.
    pub end_offset: u64,
    /// Bytes the file occupies; what counts against `max_bytes`.
    pub file_len: u64,
    /// Unreadable offset ranges found at open. Almost always empty.
    pub damage: Vec<Damage>,
}

impl Segment {
    /// The damage report covering `offset`, if the record was lost.
    pub fn damage_at(&self, offset: u64) -> Option<&Damage> {
        self.damage
            .iter()
            .find(|d| (d.first..d.end).contains(&offset))
    }

    /// Byte range `[start, end)` of the record at `offset`, which must lie in this segment.
    pub fn span(&self, offset: u64) -> Option<(u64, u64)> {
        let i = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        let start = u64::from(*self.positions.get(i)?);
        let end = self
            .positions
            .get(i + 1)
            .map_or(self.end, |&next| u64::from(next));
        Some((start, end))
    }
}

/// All retained segments, oldest first. The last one is the active segment.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub segments: VecDeque<Segment>,
}

impl Index {
    /// Offset of the oldest retained record.
    pub fn first_offset(&self) -> u64 {
        self.segments.front().map_or(0, |s| s.base)
    }

    /// The segment holding `offset`, if any.
    pub fn locate(&self, offset: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.base <= offset);
        let segment = self.segments.get(i.checked_sub(1)?)?;
        (offset < segment.end_offset).then_some(segment)
    }

    pub fn active_mut(&mut self) -> Option<&mut Segment> {
        self.segments.back_mut()
    }
}

/// Path of the segment with base offset `base` in `dir`.
pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format::segment_file_name(base))
}

/// Creates (or empties) the segment file for `base`, writes its header and, with `sync`,
/// fsyncs the file and the directory so the new name survives a crash.
pub(crate) fn create(dir: &Path, base: u64, io: &dyn FileIo, sync: bool) -> Result<Segment> {
    let path = segment_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .context(|| format!("create segment {}", path.display()))?;
    let written = write_header(&file, &path, io, sync).and_then(|()| {
        if sync {
            sync_dir(dir)?;
        }
        Ok(())
    });
    if let Err(e) = written {
        // Best effort: a header-less file would be rewritten by recovery anyway.
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(Segment {
        base,
        path: path.into(),
        file: Arc::new(file),
        positions: Vec::new(),
        end: SEGMENT_HEADER_LEN,
        end_offset: base,
        file_len: SEGMENT_HEADER_LEN,
        damage: Vec::new(),
    })
}

/// Writes the segment header at the file's cursor (which must be at 0).
pub(crate) fn write_header(file: &File, path: &Path, io: &dyn FileIo, sync: bool) -> Result<()> {
    let header = format::segment_header();
    write_all_vectored(io, file, &mut [IoSlice::new(&header)])
        .context(|| format!("write segment header to {}", path.display()))?;
    if sync {
        io.sync_data(file)
            .context(|| format!("fsync {}", path.display()))?;
    }
    Ok(())
}

/// fsyncs a directory so created, renamed or truncated entries are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .context(|| format!("fsync directory {}", dir.display()))
}

/// Reads exactly `buf.len()` bytes at `pos`.
pub(crate) fn read_exact_at(file: &File, path: &Path, pos: u64, buf: &mut [u8]) -> Result<()> {
    file.read_exact_at(buf, pos).map_err(|source| Error::Io {
        context: format!(
            "read {} bytes at byte {pos} of {}",
            buf.len(),
            path.display()
        ),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(base: u64, positions: Vec<u32>, end: u64) -> Segment {
        Segment {
            base,
            end_offset: base + positions.len() as u64,
            path: Path::new("x.log").into(),
            file: Arc::new(tempfile::tempfile().unwrap()),
            positions,
            end,
            file_len: end,
            damage: Vec::new(),
        }
    }

    #[test]
    fn spans_and_lookup() {
        let mut index = Index::default();
        index
            .segments
            .push_back(segment(10, vec![12, 100, 250], 300));
        index.segments.push_back(segment(13, vec![12], 40));
        index.segments.push_back(segment(14, vec![], 12));
        let s = index.locate(11).unwrap();
        assert_eq!(s.base, 10);
        assert_eq!(s.span(10), Some((12, 100)));
        assert_eq!(s.span(12), Some((250, 300)));
        assert_eq!(s.span(13), None);
        assert_eq!(s.span(9), None);
        assert_eq!(index.locate(13).unwrap().base, 13);
        assert!(index.locate(14).is_none());
        assert!(index.locate(9).is_none());
        assert_eq!(index.first_offset(), 10);
    }
}
