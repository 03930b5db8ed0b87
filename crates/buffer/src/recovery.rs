//! Opening a log directory: scan every segment, truncate a torn tail, report what was found.
//!
//! The rules are described with the format in [`crate::format`].

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::LogConfig;
use crate::error::{Error, IoContext, Result};
use crate::format::{self, Invalid, MIN_HEADER_LEN, PREFIX_LEN, SEGMENT_HEADER_LEN};
use crate::io::FileIo;
use crate::segment::{self, Index, Segment, read_exact_at};

/// Bytes read per call while scanning.
const SCAN_CHUNK: u64 = 1 << 20;
/// Smallest possible record: prefix plus a header with empty strings and an empty payload.
const MIN_RECORD_LEN: u64 = (PREFIX_LEN + MIN_HEADER_LEN) as u64;

/// What `open` found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub dir: PathBuf,
    /// The directory held no segment; a first, empty one was created.
    pub created: bool,
    /// Segment files retained.
    pub segments: usize,
    /// Readable records retained.
    pub records: u64,
    /// Bytes of all segment files after recovery.
    pub bytes: u64,
    /// Oldest retained offset.
    pub first_offset: u64,
    /// Offset the next appended record gets.
    pub end_offset: u64,
    /// Bytes cut from the active segment (the torn tail, or a torn segment header).
    pub truncated_bytes: u64,
    /// Where the active segment was cut, if it was.
    pub torn_tail: Option<TornTail>,
    /// Damage in older segments. Their records stay unreadable; `read` reports
    /// [`crate::Error::Lost`] for them.
    pub damage: Vec<Damage>,
}

/// The torn tail cut from the active segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    /// Byte position of the first bad record: the file's new length.
    pub position: u64,
    /// Bytes dropped.
    pub bytes: u64,
    /// Why the record at `position` was rejected.
    pub reason: String,
}

/// A damaged range in an older segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub file: PathBuf,
    /// Byte position where the damage starts.
    pub position: u64,
    /// First unreadable offset.
    pub first: u64,
    /// One past the last unreadable offset (`first == end` when no record was lost, only bytes).
    pub end: u64,
    /// Bytes skipped before the next valid record (or the end of the file).
    pub skipped_bytes: u64,
    pub reason: String,
}

impl RecoveryReport {
    /// Offsets that were lost to damage in older segments.
    pub fn lost_records(&self) -> u64 {
        self.damage.iter().map(|d| d.end - d.first).sum()
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "buffer {}: {}segments {}, records {} (offsets {}..{}), {} bytes",
            self.dir.display(),
            if self.created { "created, " } else { "" },
            self.segments,
            self.records,
            self.first_offset,
            self.end_offset,
            self.bytes,
        )?;
        match &self.torn_tail {
            Some(t) => write!(
                f,
                "; torn tail: dropped {} bytes at byte {} of {} ({})",
                t.bytes,
                t.position,
                t.file.display(),
                t.reason
            )?,
            None => write!(f, "; no torn tail")?,
        }
        if let Some(d) = self.damage.first() {
            write!(
                f,
                "; {} damaged ranges lost {} records, first at byte {} of {} ({})",
                self.damage.len(),
                self.lost_records(),
                d.position,
                d.file.display(),
                d.reason
            )?;
        }
        Ok(())
    }
}

/// Scans `config.dir` and returns the index of every retained record.
pub(crate) fn recover(config: &LogConfig, io: &dyn FileIo) -> Result<(Index, RecoveryReport)> {
    let dir = config.dir.as_path();
    let listed = list_segments(dir)?;
    let mut report = RecoveryReport {
        dir: dir.to_path_buf(),
        created: listed.is_empty(),
        segments: 0,
        records: 0,
        bytes: 0,
        first_offset: 0,
        end_offset: 0,
        truncated_bytes: 0,
        torn_tail: None,
        damage: Vec::new(),
    };
    let mut index = Index::default();
    if listed.is_empty() {
        index
            .segments
            .push_back(segment::create(dir, 0, io, config.sync)?);
    }
    for (i, &(base, ref path)) in listed.iter().enumerate() {
        let next_base = listed.get(i + 1).map(|&(b, _)| b);
        let segment = match next_base {
            Some(next_base) => open_sealed(path, base, next_base)?,
            None => open_active(path, base, io, &mut report)?,
        };
        report.damage.extend(segment.damage.iter().cloned());
        index.segments.push_back(segment);
    }

    // Whatever is on disk now is what we answer for: make it durable, whichever sync mode
    // wrote it. Cheap when the files are clean.
    for segment in &index.segments {
        io.sync_data(&segment.file)
            .context(|| format!("fsync {}", segment.path.display()))?;
    }
    segment::sync_dir(dir)?;

    report.segments = index.segments.len();
    report.first_offset = index.first_offset();
    report.end_offset = index.segments.back().map_or(0, |s| s.end_offset);
    report.bytes = index.segments.iter().map(|s| s.file_len).sum();
    report.records =
        (report.end_offset - report.first_offset).saturating_sub(report.lost_records());
    Ok((index, report))
}

/// The largest segment base offset recovery accepts.
const MAX_BASE: u64 = 1 << 63;

/// Segment files in `dir`, sorted by base offset. Other files are left alone.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).context(|| format!("list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.context(|| format!("list {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match format::parse_segment_file_name(name) {
            // No log reaches 2^63 records; a larger base is a damaged or foreign name,
            // and offsets counted from it would overflow.
            Some(base) if base > MAX_BASE => {
                return Err(Error::Corrupt {
                    file: entry.path(),
                    offset: 0,
                    reason: format!(
                        "segment base offset {base} is past the largest a log reaches \
                         ({MAX_BASE}); move the file away"
                    ),
                });
            }
            Some(base) => segments.push((base, entry.path())),
            None if name.ends_with(".log") => {
                tracing::warn!(file = %entry.path().display(), "ignoring a .log file that is not named like a buffer segment");
            }
            None => {}
        }
    }
    segments.sort_unstable_by_key(|&(base, _)| base);
    Ok(segments)
}

/// Opens a segment that has a successor: damage is reported, never truncated.
fn open_sealed(path: &Path, base: u64, next_base: u64) -> Result<Segment> {
    let file = File::open(path).context(|| format!("open segment {}", path.display()))?;
    let file_len = file_len(&file, path)?;
    let mut window = Window::new(&file, path, file_len);
    let mut scan = Scan::new(base, SEGMENT_HEADER_LEN);
    if let Err(reason) = read_segment_header(&mut window)? {
        // Report it, then look for records behind it anyway.
        scan.damage.push(Damage {
            file: path.to_path_buf(),
            position: 0,
            first: base,
            end: base,
            skipped_bytes: SEGMENT_HEADER_LEN.min(file_len),
            reason,
        });
    }
    scan.run(&mut window, Some(next_base))?;
    // Offsets between the last record found and the next segment's base are lost, unless the
    // last damage entry already covers them.
    if scan.expected < next_base && scan.damage.last().is_none_or(|d| d.end != next_base) {
        scan.damage.push(Damage {
            file: path.to_path_buf(),
            position: scan.pos,
            first: scan.expected,
            end: next_base,
            skipped_bytes: file_len.saturating_sub(scan.pos),
            reason: format!(
                "segment ends at offset {} but the next segment starts at offset {next_base}",
                scan.expected
            ),
        });
    }
    for d in &scan.damage {
        tracing::error!(
            file = %d.file.display(),
            position = d.position,
            first = d.first,
            end = d.end,
            skipped_bytes = d.skipped_bytes,
            reason = %d.reason,
            "damaged buffer segment: records in this range are unreadable"
        );
    }
    Ok(Segment {
        base,
        path: path.into(),
        file: Arc::new(file),
        positions: scan.positions,
        end: scan.pos,
        end_offset: next_base,
        file_len,
        damage: scan.damage,
    })
}

/// Opens the last segment for appending; a torn tail is truncated and fsynced.
fn open_active(
    path: &Path,
    base: u64,
    io: &dyn FileIo,
    report: &mut RecoveryReport,
) -> Result<Segment> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .context(|| format!("open segment {}", path.display()))?;
    let file_len = file_len(&file, path)?;
    let mut window = Window::new(&file, path, file_len);
    let mut scan = Scan::new(base, SEGMENT_HEADER_LEN);
    let torn = match read_segment_header(&mut window)? {
        Ok(()) => {
            scan.resync = false;
            scan.run(&mut window, None)?;
            scan.torn.take()
        }
        // A crash while the segment was being created: nothing was ever written to it.
        Err(reason) if file_len < SEGMENT_HEADER_LEN => Some((0, reason)),
        Err(reason) => {
            return Err(Error::Corrupt {
                file: path.to_path_buf(),
                offset: 0,
                reason: format!("{reason}; move the file out of the directory to continue"),
            });
        }
    };
    let mut len = file_len;
    if let Some((position, reason)) = torn {
        let dropped = file_len - position;
        tracing::warn!(
            file = %path.display(),
            position,
            bytes_dropped = dropped,
            reason = %reason,
            "truncating torn tail of the active buffer segment"
        );
        file.set_len(position)
            .context(|| format!("truncate {} to {position} bytes", path.display()))?;
        if position == 0 {
            file.seek(SeekFrom::Start(0))
                .context(|| format!("seek in {}", path.display()))?;
            segment::write_header(&file, path, io, false)?;
            len = SEGMENT_HEADER_LEN;
            scan.pos = SEGMENT_HEADER_LEN;
        } else {
            len = position;
        }
        io.sync_data(&file)
            .context(|| format!("fsync {}", path.display()))?;
        report.truncated_bytes += dropped;
        report.torn_tail = Some(TornTail {
            file: path.to_path_buf(),
            position,
            bytes: dropped,
            reason,
        });
    }
    file.seek(SeekFrom::Start(len))
        .context(|| format!("seek in {}", path.display()))?;
    let end_offset = base + scan.positions.len() as u64;
    Ok(Segment {
        base,
        path: path.into(),
        file: Arc::new(file),
        positions: scan.positions,
        end: scan.pos,
        end_offset,
        file_len: len,
        damage: Vec::new(),
    })
}

fn file_len(file: &File, path: &Path) -> Result<u64> {
    Ok(file
        .metadata()
        .context(|| format!("stat {}", path.display()))?
        .len())
}

/// Checks the segment header. The outer `Result` is I/O, the inner one the verdict.
fn read_segment_header(window: &mut Window<'_>) -> Result<Result<(), String>> {
    let bytes = window.get(0, SEGMENT_HEADER_LEN)?;
    let Ok(header) = <&[u8; SEGMENT_HEADER_LEN as usize]>::try_from(bytes) else {
        return Ok(Err(format!(
            "segment header is incomplete ({} of {SEGMENT_HEADER_LEN} bytes)",
            bytes.len()
        )));
    };
    match format::check_segment_header(header) {
        Ok(()) => Ok(Ok(())),
        // Never rewrite a file that a newer build wrote.
        Err(e @ format::BadSegmentHeader::Version(_)) => Err(Error::Corrupt {
            file: window.path.to_path_buf(),
            offset: 8,
            reason: e.to_string(),
        }),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Walks the records of one segment.
struct Scan {
    pos: u64,
    expected: u64,
    positions: Vec<u32>,
    /// Look for the next valid record after damage (older segments) instead of stopping.
    resync: bool,
    damage: Vec<Damage>,
    /// Where the first bad record starts and why, when not resyncing.
    torn: Option<(u64, String)>,
}

impl Scan {
    fn new(base: u64, pos: u64) -> Self {
        Scan {
            pos,
            expected: base,
            positions: Vec::new(),
            resync: true,
            damage: Vec::new(),
            torn: None,
        }
    }

    fn run(&mut self, window: &mut Window<'_>, next_base: Option<u64>) -> Result<()> {
        let limit = next_base.unwrap_or(u64::MAX);
        while self.pos < window.file_len {
            let verdict = match u32::try_from(self.pos) {
                Err(_) => Err("segment is larger than 4 GiB".to_string()),
                Ok(_) => match try_record(window, self.pos)? {
                    Ok((_, offset)) if offset != self.expected => Err(Invalid::Offset {
                        found: offset,
                        expected: self.expected,
                    }
                    .to_string()),
                    Ok(_) if self.expected >= limit => Err(format!(
                        "record {} lies past the next segment's base {limit}",
                        self.expected
                    )),
                    Ok((len, _)) => Ok(len),
                    Err(invalid) => Err(invalid.to_string()),
                },
            };
            match verdict {
                Ok(len) => {
                    // Checked above: pos fits in u32.
                    self.positions.push(self.pos as u32);
                    self.pos += len;
                    self.expected += 1;
                }
                Err(reason) if !self.resync => {
                    self.torn = Some((self.pos, reason));
                    return Ok(());
                }
                Err(reason) => {
                    let damage_at = self.pos;
                    // Lost offsets point at the damage, which must fit a u32 position.
                    let found = match u32::try_from(damage_at) {
                        Ok(_) => resync(window, damage_at, self.expected, limit)?,
                        Err(_) => None,
                    };
                    let (resume, end) = found.unwrap_or((window.file_len, limit));
                    let first = self.expected;
                    // `end - first` is bounded: resync only accepts offsets that the skipped
                    // bytes could have held, and a lost tail is not materialised.
                    if found.is_some() {
                        self.positions.extend(std::iter::repeat_n(
                            damage_at as u32,
                            (end - first) as usize,
                        ));
                        self.expected = end;
                    }
                    self.damage.push(Damage {
                        file: window.path.to_path_buf(),
                        position: damage_at,
                        first,
                        end,
                        skipped_bytes: resume - damage_at,
                        reason,
                    });
                    if found.is_none() {
                        self.pos = damage_at;
                        return Ok(());
                    }
                    self.pos = resume;
                }
            }
        }
        Ok(())
    }
}

/// Length and offset of the valid record at `pos`. The outer `Result` is I/O.
fn try_record(window: &mut Window<'_>, pos: u64) -> Result<Result<(u64, u64), Invalid>> {
    let available = window.file_len - pos;
    let bytes = window.get(pos, PREFIX_LEN as u64)?;
    let Ok(prefix) = <&[u8; PREFIX_LEN]>::try_from(bytes) else {
        return Ok(Err(Invalid::Incomplete {
            needed: PREFIX_LEN as u64,
            available,
        }));
    };
    let prefix = match format::decode_prefix(prefix) {
        Ok(prefix) => prefix,
        Err(invalid) => return Ok(Err(invalid)),
    };
    let len = prefix.record_len();
    if len > available {
        return Ok(Err(Invalid::Incomplete {
            needed: len,
            available,
        }));
    }
    let bytes = window.get(pos, len)?;
    Ok(format::decode_record(bytes).map(|d| (len, d.offset)))
}

/// Finds the first valid record after damage at `damage_at` whose offset fits: at least
/// `expected`, below `limit`, and no more records skipped than the skipped bytes could hold.
/// Returns its position and offset.
fn resync(
    window: &mut Window<'_>,
    damage_at: u64,
    expected: u64,
    limit: u64,
) -> Result<Option<(u64, u64)>> {
    let magic = format::RECORD_MAGIC.to_le_bytes();
    let mut from = damage_at + 1;
    while from + (PREFIX_LEN as u64) <= window.file_len {
        let chunk = window.get(from, SCAN_CHUNK)?;
        let hit = chunk.windows(magic.len()).position(|w| w == magic);
        let Some(i) = hit else {
            // Keep the last bytes: the magic may straddle two chunks.
            from += (chunk.len() as u64)
                .saturating_sub(magic.len() as u64 - 1)
                .max(1);
            continue;
        };
        let candidate = from + i as u64;
        if let Ok((_, offset)) = try_record(window, candidate)? {
            let room = (candidate - damage_at) / MIN_RECORD_LEN + 1;
            if offset >= expected && offset < limit && offset - expected <= room {
                return Ok(Some((candidate, offset)));
            }
        }
        from = candidate + 1;
    }
    Ok(None)
}

/// A read-ahead buffer over a file, for sequential scans with short jumps.
struct Window<'a> {
    file: &'a File,
    path: &'a Path,
    file_len: u64,
    buf: Vec<u8>,
    start: u64,
}

impl<'a> Window<'a> {
    fn new(file: &'a File, path: &'a Path, file_len: u64) -> Self {
        Window {
            file,
            path,
            file_len,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Bytes `[pos, pos + len)`, cut short at the end of the file.
    fn get(&mut self, pos: u64, len: u64) -> Result<&[u8]> {
        let len = len.min(self.file_len.saturating_sub(pos));
        let cached = pos >= self.start && pos + len <= self.start + self.buf.len() as u64;
        if !cached {
            let read = len.max(SCAN_CHUNK).min(self.file_len.saturating_sub(pos));
            let read = usize::try_from(read).map_err(|_| Error::Corrupt {
                file: self.path.to_path_buf(),
                offset: pos,
                reason: format!("a {read}-byte read does not fit in memory"),
            })?;
            self.buf.resize(read, 0);
            read_exact_at(self.file, self.path, pos, &mut self.buf)?;
            self.start = pos;
        }
        let at = (pos - self.start) as usize;
        Ok(&self.buf[at..at + len as usize])
    }
}
