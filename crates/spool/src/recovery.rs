//! Opening an existing spool: scan every segment, cut a torn tail, rebuild the index
//! and the dedup window, delete what is acked.
//!
//! What is checked and what happens (formats in `format.rs`, `meta.rs`, `dedup.rs`):
//! - Every entry's magic, length, CRC and seq (consecutive from the file name's).
//! - Damage in the **last** segment is a torn tail from a crash mid-write: the file is
//!   truncated at the first bad entry (deleted if no valid entry is left) and a
//!   warning names the file, offset, byte count and lost seqs. Its seq, and any later
//!   seqs still readable in the cut bytes, are reported lost and never reused.
//! - Damage in an **older** segment (a segment is synced before the next one is
//!   created, so this is not a crash artefact): an error is logged, the entries before
//!   it are kept, the seqs up to the next segment are reported lost, the file is left
//!   as it is for inspection and deleted once acked past like any other segment.
//! - A segment header from a newer format version refuses to open, untouched.
//! - Segments whose entries are all at or below the acked cursor are deleted.
//! - A missing or damaged cursor means acked = 0 (at least the highest seq ever
//!   deleted), with a warning: entries are sent again and the backend drops them.

use std::{
    collections::VecDeque,
    fmt,
    fs::{File, OpenOptions},
    io::{BufReader, Read},
    path::{Path, PathBuf},
};

use crate::{
    Error, Result, SpoolConfig,
    dedup::{DEDUP_FILE, DedupWindow, Retired, decode_retired},
    error::IoContext,
    format::{
        self, Damage, ENTRY_HEADER_LEN, SEGMENT_HEADER_LEN, SegmentHeader, decode_body,
        decode_header,
    },
    io::{SegmentFile, open_read, read_optional, sync_dir},
    meta::{Cursor, read_cursor},
    retire::retire,
    segment::Segment,
};

/// What [`crate::Spool::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// This open created the spool.
    pub created: bool,
    /// Segments kept.
    pub segments: usize,
    /// Valid entries kept (acked entries in a partly acked segment included).
    pub entries: u64,
    /// Bytes cut from the end of the last segment.
    pub truncated_bytes: u64,
    /// Lowest and highest seq lost to damage, over all damage found.
    pub lost_seqs: Option<(u64, u64)>,
    /// Each damaged place, in file order.
    pub damage: Vec<DamageReport>,
    /// Segments deleted because all their entries were acked.
    pub deleted_segments: usize,
    /// The cursor after recovery.
    pub acked_seq: u64,
    /// The highest seq issued so far; the next append gets a higher one.
    pub last_seq: u64,
    /// The cursor file was missing or unreadable; acked restarted from the highest
    /// deleted seq.
    pub cursor_reset: bool,
}

/// One damaged place in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamageReport {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: String,
    /// Seqs lost here, if any could have been.
    pub lost_seqs: Option<(u64, u64)>,
    /// `true`: a torn tail, cut off. `false`: an older segment, left in place.
    pub truncated: bool,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.created {
            return f.write_str("created a new spool");
        }
        write!(
            f,
            "recovered spool: {} segments, {} entries, acked seq {}, last seq {}",
            self.segments, self.entries, self.acked_seq, self.last_seq
        )?;
        if self.deleted_segments > 0 {
            write!(f, ", deleted {} acked segments", self.deleted_segments)?;
        }
        if self.truncated_bytes > 0 {
            write!(f, ", truncated {} bytes of torn tail", self.truncated_bytes)?;
        }
        let older = self.damage.iter().filter(|d| !d.truncated).count();
        if older > 0 {
            write!(f, ", {older} damaged older segments")?;
        }
        if let Some((a, b)) = self.lost_seqs {
            write!(f, ", lost seqs {a}..={b}")?;
        }
        if self.cursor_reset {
            f.write_str(", cursor was missing or damaged")?;
        }
        Ok(())
    }
}

/// Everything the spool needs from recovery.
pub(crate) struct Recovered {
    pub segments: VecDeque<Segment>,
    pub dedup: DedupWindow,
    pub retired: Retired,
    pub acked: u64,
    pub last_seq: u64,
    pub report: RecoveryReport,
}

/// Segment files in `dir` as `(first_seq, path)`, in seq order. Removes stale `.tmp`
/// files left by an interrupted atomic write.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).context(|| format!("list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.context(|| format!("list {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = format::parse_segment_file_name(name) {
            out.push((seq, entry.path()));
        } else if name.ends_with(".tmp") {
            let path = entry.path();
            std::fs::remove_file(&path).context(|| format!("remove {}", path.display()))?;
        }
    }
    out.sort();
    Ok(out)
}

/// Recovers the spool in `dir`; `listing` comes from [`list_segments`].
pub(crate) fn recover(
    dir: &Path,
    config: &SpoolConfig,
    listing: Vec<(u64, PathBuf)>,
    created: bool,
) -> Result<Recovered> {
    let mut report = RecoveryReport {
        created,
        ..RecoveryReport::default()
    };
    let retired = match read_optional(dir, DEDUP_FILE)? {
        None => Retired::default(),
        Some(bytes) => decode_retired(&bytes).unwrap_or_else(|reason| {
            tracing::warn!(
                "spool: ignoring damaged {} ({reason}); re-delivered chunks of deleted \
                 segments will not be recognised",
                dir.join(DEDUP_FILE).display()
            );
            Retired::default()
        }),
    };
    let mut acked = match read_cursor(dir)? {
        Cursor::Acked(seq) => seq,
        Cursor::Missing if created => 0,
        Cursor::Missing | Cursor::Damaged(_) => {
            report.cursor_reset = true;
            0
        }
    };
    if report.cursor_reset {
        acked = acked.max(retired.high_seq);
        tracing::warn!(
            "spool: cursor file {} is missing or damaged; acked restarts at {acked} and \
             retained entries will be sent again (the backend drops duplicates)",
            dir.join(crate::meta::CURSOR_FILE).display()
        );
    }

    let mut segments = VecDeque::new();
    let mut last_seq = acked.max(retired.high_seq);
    let mut prev_bound: Option<(u64, PathBuf)> = None;
    let count = listing.len();
    for (i, (first_seq, path)) in listing.iter().enumerate() {
        if let Some((bound, prev)) = &prev_bound
            && *first_seq <= *bound
        {
            return Err(Error::Corrupt {
                path: path.clone(),
                offset: 0,
                seq: Some(*first_seq),
                reason: format!(
                    "segment starts at seq {first_seq}, which {} already holds; move one \
                     of them away",
                    prev.display()
                ),
            });
        }
        let scan = scan_segment(path, *first_seq)?;
        let is_last = i + 1 == count;
        let kept = scan.entries.len() as u64;
        let expected = first_seq.saturating_add(kept);
        if let Some((offset, damage)) = &scan.damage {
            let lost = if is_last {
                cut_tail(path, &scan, expected, *offset, damage, &mut report)?
            } else {
                let next_first = listing.get(i + 1).map_or(expected, |(s, _)| *s);
                let lost = (expected < next_first).then(|| (expected, next_first - 1));
                tracing::error!(
                    "spool: segment {} is damaged at offset {offset}: {damage}; keeping its \
                     {kept} entries before that, {} after it are lost",
                    path.display(),
                    lost_text(lost),
                );
                report.damage.push(DamageReport {
                    path: path.clone(),
                    offset: *offset,
                    reason: damage.to_string(),
                    lost_seqs: lost,
                    truncated: false,
                });
                lost
            };
            if let Some((a, b)) = lost {
                last_seq = last_seq.max(b);
                report.lost_seqs = Some(match report.lost_seqs {
                    None => (a, b),
                    Some((x, y)) => (x.min(a), y.max(b)),
                });
            }
        }
        if is_last && kept == 0 {
            // Nothing valid is left of a torn last segment and `cut_tail` deleted it; an
            // undamaged empty one (a crash right after creating it) goes too, so that
            // the next append can create a segment of that name.
            if scan.damage.is_none() {
                std::fs::remove_file(path)
                    .context(|| format!("remove empty segment {}", path.display()))?;
                sync_dir(dir)?;
            }
            continue;
        }
        let segment = Segment::sealed(
            *first_seq,
            path.clone(),
            open_read(path).context(|| format!("open segment {}", path.display()))?,
            scan.entries.iter().map(|e| (e.offset, e.tag_len)).collect(),
            scan.end,
            if is_last { scan.end } else { scan.disk_len },
        );
        last_seq = last_seq.max(segment.seq_bound());
        prev_bound = Some((segment.seq_bound().max(*first_seq), path.clone()));
        segments.push_back((segment, scan.entries));
    }

    // Entries recovered from the last segment were on disk but maybe not synced (a
    // process crash with sync off): make them durable before anyone relies on them.
    if let Some((last, _)) = segments.back() {
        last.file
            .sync_data()
            .context(|| format!("fdatasync segment {}", last.path.display()))?;
    }

    let first_retained = segments.front().map_or(u64::MAX, |(s, _)| s.first_seq);
    let mut dedup = DedupWindow::new(config.dedup_window);
    for &(seq, hash) in retired
        .hashes
        .iter()
        .filter(|(seq, _)| *seq < first_retained)
    {
        dedup.insert(seq, hash);
    }
    for (segment, entries) in &segments {
        for (i, e) in entries.iter().enumerate() {
            dedup.insert(segment.first_seq.saturating_add(i as u64), e.hash);
        }
    }
    let mut segments: VecDeque<Segment> = segments.into_iter().map(|(s, _)| s).collect();

    let mut retired = retired;
    let doomed_count = segments
        .iter()
        .take_while(|s| s.seq_bound() <= acked)
        .count();
    if doomed_count > 0 {
        let doomed: Vec<Segment> = segments.drain(..doomed_count).collect();
        let first_left = segments.front().map_or(u64::MAX, |s| s.first_seq);
        retired = Retired {
            high_seq: doomed
                .iter()
                .map(Segment::seq_bound)
                .fold(retired.high_seq, u64::max),
            hashes: dedup.below(first_left),
        };
        retire(dir, &doomed, &retired)?;
        report.deleted_segments = doomed.len();
    }

    report.segments = segments.len();
    report.entries = segments.iter().map(Segment::entries).sum();
    report.acked_seq = acked;
    report.last_seq = last_seq;
    Ok(Recovered {
        segments,
        dedup,
        retired,
        acked,
        last_seq,
        report,
    })
}

/// Truncates the torn tail of the last segment (or deletes it when nothing valid is
/// left), logs it and returns the seqs lost.
fn cut_tail(
    path: &Path,
    scan: &Scan,
    expected: u64,
    offset: u64,
    damage: &Damage,
    report: &mut RecoveryReport,
) -> Result<Option<(u64, u64)>> {
    let cut = scan.disk_len - scan.end;
    // A bad header means the crash hit while the segment was being created, before any
    // entry could be written: no seq was handed out.
    let lost = if scan.header_ok {
        let readable = readable_seqs_after(path, scan.disk_len, offset, expected)?;
        Some((expected, readable.unwrap_or(expected)))
    } else {
        None
    };
    tracing::warn!(
        "spool: torn tail in {} at offset {offset}: {damage}; cutting {cut} bytes, {} lost",
        path.display(),
        lost_text(lost),
    );
    if scan.entries.is_empty() {
        std::fs::remove_file(path).context(|| format!("remove torn segment {}", path.display()))?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    } else {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .context(|| format!("open {} to truncate it", path.display()))?;
        file.set_len(scan.end)
            .and_then(|()| file.sync_all())
            .context(|| format!("truncate torn tail of {}", path.display()))?;
    }
    report.truncated_bytes += cut;
    report.damage.push(DamageReport {
        path: path.to_path_buf(),
        offset,
        reason: damage.to_string(),
        lost_seqs: lost,
        truncated: true,
    });
    Ok(lost)
}

fn lost_text(lost: Option<(u64, u64)>) -> String {
    match lost {
        Some((a, b)) if a == b => format!("seq {a}"),
        Some((a, b)) => format!("seqs {a}..={b}"),
        None => "no seqs".into(),
    }
}

/// One valid entry found by a scan.
#[derive(Debug, Clone, Copy)]
struct ScannedEntry {
    offset: u64,
    tag_len: u16,
    hash: u128,
}

/// What a segment file holds.
#[derive(Debug)]
struct Scan {
    header_ok: bool,
    entries: Vec<ScannedEntry>,
    /// End of the last valid entry (0 when the header is bad).
    end: u64,
    disk_len: u64,
    /// The first damage: offset and what.
    damage: Option<(u64, Damage)>,
}

fn scan_segment(path: &Path, first_seq: u64) -> Result<Scan> {
    let ctx = || format!("read segment {}", path.display());
    let file = File::open(path).context(ctx)?;
    let disk_len = file.metadata().context(ctx)?.len();
    let mut scan = Scan {
        header_ok: false,
        entries: Vec::new(),
        end: 0,
        disk_len,
        damage: None,
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    if disk_len < SEGMENT_HEADER_LEN as u64 {
        scan.damage = Some((0, Damage::BadSegmentHeader("file shorter than the header")));
        return Ok(scan);
    }
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    reader.read_exact(&mut header).context(ctx)?;
    match format::decode_segment_header(&header) {
        Ok(SegmentHeader::Valid { first_seq: s }) if s == first_seq => {}
        Ok(SegmentHeader::Valid { .. }) => {
            scan.damage = Some((
                0,
                Damage::BadSegmentHeader("first seq differs from the file name"),
            ));
            return Ok(scan);
        }
        Ok(SegmentHeader::Unsupported { version }) => {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: format::SEGMENT_VERSION,
            });
        }
        Err(damage) => {
            scan.damage = Some((0, damage));
            return Ok(scan);
        }
    }
    scan.header_ok = true;
    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut expected = first_seq;
    let mut body = Vec::new();
    while pos < disk_len {
        let left = disk_len - pos;
        if left < ENTRY_HEADER_LEN as u64 {
            scan.damage = Some((pos, Damage::ShortHeader { have: left }));
            break;
        }
        let mut head = [0u8; ENTRY_HEADER_LEN];
        reader.read_exact(&mut head).context(ctx)?;
        let header = match decode_header(&head) {
            Ok(h) => h,
            Err(damage) => {
                scan.damage = Some((pos, damage));
                break;
            }
        };
        if header.entry_len() > left {
            let have = left - ENTRY_HEADER_LEN as u64;
            let need = u64::from(header.body_len);
            scan.damage = Some((pos, Damage::ShortBody { need, have }));
            break;
        }
        body.resize(header.body_len as usize, 0);
        reader.read_exact(&mut body).context(ctx)?;
        match decode_body(&header, &body) {
            Ok(entry) if entry.seq == expected => scan.entries.push(ScannedEntry {
                offset: pos,
                tag_len: entry.tag.len() as u16,
                hash: entry.hash,
            }),
            Ok(entry) => {
                let found = entry.seq;
                scan.damage = Some((pos, Damage::SeqMismatch { expected, found }));
                break;
            }
            Err(damage) => {
                scan.damage = Some((pos, damage));
                break;
            }
        }
        pos += header.entry_len();
        expected = expected.saturating_add(1);
    }
    scan.end = pos;
    Ok(scan)
}

/// Seqs `expected, expected + 1, ...` still readable in entry headers from `offset` on
/// (CRC aside): the highest one, if any.
fn readable_seqs_after(
    path: &Path,
    disk_len: u64,
    offset: u64,
    expected: u64,
) -> Result<Option<u64>> {
    let file = File::open(path).context(|| format!("read segment {}", path.display()))?;
    let mut pos = offset;
    let mut next = expected;
    let mut last = None;
    let mut buf = [0u8; ENTRY_HEADER_LEN + 8];
    while disk_len.saturating_sub(pos) >= buf.len() as u64 {
        if SegmentFile::read_exact_at(&file, &mut buf, pos).is_err() {
            break;
        }
        let Ok(header) = decode_header(&format::array(&buf[..ENTRY_HEADER_LEN])) else {
            break;
        };
        if format::le_u64(&buf[ENTRY_HEADER_LEN..]) != next {
            break;
        }
        last = Some(next);
        next = next.saturating_add(1);
        pos += header.entry_len();
    }
    Ok(last)
}
