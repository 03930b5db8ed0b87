//! One segment file and the in-memory index of its entries.
//!
//! The byte layout is in `format.rs`. A segment is created by [`Segment::create`] (the
//! active segment) or found by recovery ([`Segment::sealed`]); entries are only ever
//! appended to the segment this process created.

use std::{
    io::{self, IoSlice},
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    Entry, Error, Result,
    error::IoContext,
    format::{
        self, Damage, ENTRY_HEADER_LEN, ENTRY_OVERHEAD, SEGMENT_HEADER_LEN, decode_fixed,
        decode_header,
    },
    io::{SegmentFile, Storage, sync_dir},
};

/// Where one entry sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryLoc {
    pub seq: u64,
    pub offset: u64,
    pub len: u64,
    pub tag_len: u16,
}

impl EntryLoc {
    /// Length of the chunk stored in this entry.
    pub fn data_len(&self) -> u64 {
        self.len
            .saturating_sub(ENTRY_OVERHEAD as u64 + u64::from(self.tag_len))
    }
}

/// A segment file with the offsets of its valid entries.
pub(crate) struct Segment {
    pub first_seq: u64,
    pub path: PathBuf,
    pub file: Arc<dyn SegmentFile>,
    /// Offset of each valid entry; entry `i` has seq `first_seq + i`.
    offsets: Vec<u64>,
    /// Tag length of each valid entry, to size reads without touching the disk.
    tag_lens: Vec<u16>,
    /// End of the last valid entry; the next append goes here.
    end: u64,
    /// Bytes the file takes on disk; more than `end` when an older segment has a
    /// damaged rest that recovery left in place.
    pub disk_len: u64,
    /// A failed write could not be rolled back: the file holds bytes past `end`.
    pub torn: bool,
}

impl Segment {
    /// Creates `dir/<first_seq>.seg` with its header, durably (file and directory).
    pub fn create(storage: &dyn Storage, dir: &Path, first_seq: u64) -> Result<Segment> {
        let path = dir.join(format::segment_file_name(first_seq));
        let file = storage
            .create(&path)
            .context(|| format!("create segment {}", path.display()))?;
        let header = format::encode_segment_header(first_seq);
        let written = file
            .write_all_at(0, &mut [IoSlice::new(&header)])
            .and_then(|()| file.sync_data())
            .context(|| format!("write header of segment {}", path.display()))
            .and_then(|()| sync_dir(dir));
        if let Err(e) = written {
            // Best effort: a half-made segment must not block the next attempt.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Segment {
            first_seq,
            path,
            file,
            offsets: Vec::new(),
            tag_lens: Vec::new(),
            end: SEGMENT_HEADER_LEN as u64,
            disk_len: SEGMENT_HEADER_LEN as u64,
            torn: false,
        })
    }

    /// A segment found on disk by recovery. `entries` are `(offset, tag_len)` of the
    /// valid entries in seq order, `end` is the end of the last of them.
    pub fn sealed(
        first_seq: u64,
        path: PathBuf,
        file: Arc<dyn SegmentFile>,
        entries: Vec<(u64, u16)>,
        end: u64,
        disk_len: u64,
    ) -> Segment {
        let (offsets, tag_lens) = entries.into_iter().unzip();
        Segment {
            first_seq,
            path,
            file,
            offsets,
            tag_lens,
            end,
            disk_len,
            torn: false,
        }
    }

    /// Number of valid entries.
    pub fn entries(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// Bytes used so far by header and entries; where the next entry goes.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The highest seq this segment accounts for: its last entry, or `first_seq - 1`
    /// when it holds none. The segment may be deleted once this is acked.
    pub fn seq_bound(&self) -> u64 {
        self.first_seq
            .saturating_add(self.entries())
            .saturating_sub(1)
    }

    /// Location of the entry with this seq, if the segment holds it.
    pub fn loc(&self, seq: u64) -> Option<EntryLoc> {
        let i = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        let offset = *self.offsets.get(i)?;
        let next = self.offsets.get(i + 1).copied().unwrap_or(self.end);
        Some(EntryLoc {
            seq,
            offset,
            len: next - offset,
            tag_len: *self.tag_lens.get(i)?,
        })
    }

    /// Appends one encoded entry (`prefix` from `format::encode_prefix`, then the
    /// chunk) with a single vectored write. On failure the file is cut back to its
    /// previous end; if even that fails, `torn` is set.
    pub fn append(&mut self, seq: u64, prefix: &[u8], chunk: &[u8], tag_len: u16) -> Result<()> {
        let len = (prefix.len() + chunk.len()) as u64;
        let mut bufs = [IoSlice::new(prefix), IoSlice::new(chunk)];
        if let Err(e) = self.file.write_all_at(self.end, &mut bufs) {
            let rollback = self.file.set_len(self.end);
            let path = self.path.display();
            let context = match rollback {
                Ok(()) => format!("write entry seq {seq} to {path}"),
                Err(r) => {
                    self.torn = true;
                    format!(
                        "write entry seq {seq} to {path} (cutting back the partial entry failed too: {r})"
                    )
                }
            };
            return Err(Error::Io { context, source: e });
        }
        self.offsets.push(self.end);
        self.tag_lens.push(tag_len);
        self.end += len;
        self.disk_len = self.end;
        Ok(())
    }
}

/// Reads and verifies one entry (magic, length, seq, CRC, UTF-8 tag) of the segment
/// at `path`. Damage is an [`Error::Corrupt`] naming the file, the offset and the seq.
pub(crate) fn read_entry(file: &dyn SegmentFile, path: &Path, loc: &EntryLoc) -> Result<Entry> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        offset: loc.offset,
        seq: Some(loc.seq),
        reason,
    };
    let read = |buf: &mut [u8], offset: u64| {
        file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                corrupt("the file ends inside the entry".into())
            } else {
                Error::Io {
                    context: format!("read seq {} from {}", loc.seq, path.display()),
                    source: e,
                }
            }
        })
    };
    let prefix_len = ENTRY_OVERHEAD + usize::from(loc.tag_len);
    let mut prefix = vec![0u8; prefix_len];
    read(&mut prefix, loc.offset)?;
    let check = || -> Result<(), Damage> {
        let header = decode_header(&format::array(&prefix[..ENTRY_HEADER_LEN]))?;
        if header.entry_len() != loc.len {
            return Err(Damage::Malformed("entry length differs from the index"));
        }
        let fixed = decode_fixed(&prefix[ENTRY_HEADER_LEN..])?;
        if fixed.seq != loc.seq {
            return Err(Damage::SeqMismatch {
                expected: loc.seq,
                found: fixed.seq,
            });
        }
        if fixed.tag_len != loc.tag_len {
            return Err(Damage::Malformed("tag length differs from the index"));
        }
        Ok(())
    };
    check().map_err(|d| corrupt(d.to_string()))?;
    let data_len = usize::try_from(loc.data_len())
        .map_err(|_| corrupt("entry does not fit in memory".into()))?;
    let mut data = vec![0u8; data_len];
    read(&mut data, loc.offset + prefix_len as u64)?;
    let stored = format::le_u32(&prefix[8..12]);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&prefix[ENTRY_HEADER_LEN..]), &data);
    if stored != computed {
        return Err(corrupt(Damage::BadCrc { stored, computed }.to_string()));
    }
    prefix.drain(..ENTRY_OVERHEAD);
    let tag = String::from_utf8(prefix).map_err(|_| corrupt("tag is not utf-8".into()))?;
    Ok(Entry {
        seq: loc.seq,
        tag,
        data,
    })
}
