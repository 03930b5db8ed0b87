//! Reading records back: [`EmbeddedLog::read`] and [`EmbeddedLog::scan_meta`].
//!
//! A read plans a run of consecutive records under the index lock (positions only), then reads
//! the run with one `pread` and no lock held. Deleting a segment while it is being read is
//! harmless: the reader holds its file open.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{self, MAX_HEADER_LEN, PREFIX_LEN};
use crate::log::{EmbeddedLog, read_lock};
use crate::record::{Record, RecordMeta};
use crate::segment::read_exact_at;

/// Most bytes read per `pread` when records are small.
const READ_WINDOW: u64 = 1 << 20;
/// A record this large is read on its own, straight into its payload buffer.
const BIG_RECORD: u64 = 64 << 10;
/// Bytes read first when only a header is wanted.
const HEADER_PROBE: usize = 1024;

/// A run of consecutive records in one segment.
struct Plan {
    file: Arc<File>,
    path: Arc<Path>,
    /// Offset of the first record.
    first: u64,
    /// Start of each record, then the end of the last one.
    starts: Vec<u64>,
}

impl Plan {
    fn records(&self) -> u64 {
        self.starts.len().saturating_sub(1) as u64
    }

    fn bytes(&self) -> u64 {
        match (self.starts.first(), self.starts.last()) {
            (Some(first), Some(last)) => last - first,
            _ => 0,
        }
    }

    fn corrupt(&self, position: u64, reason: String) -> Error {
        Error::Corrupt {
            file: self.path.to_path_buf(),
            offset: position,
            reason,
        }
    }

    /// Decodes record `i` of the run from `bytes` (exactly that record) and checks that it is
    /// the record the index says.
    fn decode<'a>(&self, i: usize, bytes: &'a [u8]) -> Result<format::Decoded<'a>> {
        let offset = self.first + i as u64;
        let position = self.starts[i];
        let decoded = format::decode_record(bytes)
            .map_err(|invalid| self.corrupt(position, format!("record {offset}: {invalid}")))?;
        if decoded.offset != offset {
            return Err(self.corrupt(
                position,
                format::Invalid::Offset {
                    found: decoded.offset,
                    expected: offset,
                }
                .to_string(),
            ));
        }
        if decoded.payload_start + decoded.payload.len() != bytes.len() {
            return Err(self.corrupt(
                position,
                format!("record {offset}: its length does not match the index"),
            ));
        }
        Ok(decoded)
    }
}

impl EmbeddedLog {
    /// Durable records with offset >= `from`, in order. Returns at least one record if one is
    /// available, and otherwise stops before the payloads would pass `max_bytes`. Empty when
    /// `from` is at or past [`durable_offset`](Self::durable_offset).
    ///
    /// Every record's CRC is checked. A bad record ends the batch before it; if it is the first,
    /// the error is [`Error::Corrupt`] (the consumer may dead-letter `from` and go on at
    /// `from + 1`). Offsets lost to damage found at open give [`Error::Lost`], which says where
    /// to continue. Offsets already released give [`Error::Truncated`].
    pub fn read(&self, from: u64, max_bytes: usize) -> Result<Vec<Record>> {
        let durable = self.durable_offset();
        let mut records: Vec<Record> = Vec::new();
        let mut payload_bytes = 0usize;
        let mut next = from;
        let mut buf = Vec::new();
        while next < durable {
            let remaining = max_bytes.saturating_sub(payload_bytes);
            let planned = self.plan(next, durable, remaining, records.is_empty(), READ_WINDOW);
            let plan = match planned {
                Ok(Some(plan)) => plan,
                Ok(None) => break,
                Err(e) if records.is_empty() => return Err(e),
                Err(_) => break,
            };
            let before = records.len();
            let done = self.read_plan(&plan, &mut buf, &mut records, &mut payload_bytes, max_bytes);
            match done {
                Err(e) if records.is_empty() => return Err(e),
                Err(_) => break,
                Ok(()) => {}
            }
            let read = (records.len() - before) as u64;
            if read < plan.records() {
                break; // the byte budget ran out
            }
            next += read;
        }
        Ok(records)
    }

    /// Reads a planned run, appending records to `out` until the payload budget is used.
    fn read_plan(
        &self,
        plan: &Plan,
        buf: &mut Vec<u8>,
        out: &mut Vec<Record>,
        payload_bytes: &mut usize,
        max_bytes: usize,
    ) -> Result<()> {
        let fits = |out: &Vec<Record>, len: usize, used: usize| {
            out.is_empty() || used.saturating_add(len) <= max_bytes
        };
        if plan.records() == 1 && plan.bytes() >= BIG_RECORD {
            // Header first, then the payload straight into the buffer the record keeps: a
            // large payload is never copied, nor read when it would not fit.
            let (prefix, meta, header_end) = self.read_header(plan, buf)?;
            let len = prefix.payload_len as usize;
            if !fits(out, len, *payload_bytes) {
                return Ok(());
            }
            let position = plan.starts[0];
            let mut payload = vec![0u8; len];
            read_exact_at(
                &plan.file,
                &plan.path,
                position + header_end as u64,
                &mut payload,
            )?;
            let computed =
                crc32c::crc32c_append(crc32c::crc32c(&buf[PREFIX_LEN..header_end]), &payload);
            if computed != prefix.crc {
                let invalid = format::Invalid::Checksum {
                    stored: prefix.crc,
                    computed,
                };
                return Err(plan.corrupt(position, format!("record {}: {invalid}", plan.first)));
            }
            *payload_bytes += len;
            out.push(Record {
                offset: plan.first,
                meta,
                payload,
            });
            return Ok(());
        }
        buf.resize(to_usize(plan.bytes())?, 0);
        read_exact_at(&plan.file, &plan.path, plan.starts[0], buf)?;
        let base = plan.starts[0];
        for (i, pair) in plan.starts.windows(2).enumerate() {
            let bytes = &buf[(pair[0] - base) as usize..(pair[1] - base) as usize];
            let d = plan.decode(i, bytes)?;
            if !fits(out, d.payload.len(), *payload_bytes) {
                break;
            }
            *payload_bytes += d.payload.len();
            out.push(Record {
                offset: d.offset,
                meta: d.meta,
                payload: d.payload.to_vec(),
            });
        }
        Ok(())
    }

    /// Calls `f` with the offset and header of every retained record, oldest first, for
    /// rebuilding dedup marks at start-up. Offsets lost to damage found at open are skipped.
    ///
    /// Small records are read whole and CRC-checked. Of records over 64 KiB only the header
    /// is read: their CRC was checked when the log was opened.
    pub fn scan_meta(&self, mut f: impl FnMut(u64, &RecordMeta)) -> Result<()> {
        let end = self.durable_offset();
        let mut next = self.first_offset();
        let mut buf = Vec::new();
        while next < end {
            let plan = match self.plan(next, end, usize::MAX, true, READ_WINDOW) {
                Ok(Some(plan)) => plan,
                Ok(None) => break,
                Err(Error::Lost { end: resume, .. }) => {
                    next = resume;
                    continue;
                }
                // Released while we scanned.
                Err(Error::Truncated { oldest, .. }) => {
                    next = oldest;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if plan.records() == 1 && plan.bytes() >= BIG_RECORD {
                let (_, meta, _) = self.read_header(&plan, &mut buf)?;
                f(plan.first, &meta);
            } else {
                buf.resize(to_usize(plan.bytes())?, 0);
                read_exact_at(&plan.file, &plan.path, plan.starts[0], &mut buf)?;
                let base = plan.starts[0];
                for (i, pair) in plan.starts.windows(2).enumerate() {
                    let bytes = &buf[(pair[0] - base) as usize..(pair[1] - base) as usize];
                    let d = plan.decode(i, bytes)?;
                    f(d.offset, &d.meta);
                }
            }
            next = plan.first + plan.records();
        }
        Ok(())
    }

    /// Reads the prefix and header of the single record in `plan` into `buf` and checks what
    /// can be checked without the payload. Returns them and where the payload starts.
    fn read_header(
        &self,
        plan: &Plan,
        buf: &mut Vec<u8>,
    ) -> Result<(format::Prefix, RecordMeta, usize)> {
        let position = plan.starts[0];
        let offset = plan.first;
        let probe = HEADER_PROBE.min(to_usize(plan.bytes())?);
        buf.resize(probe, 0);
        read_exact_at(&plan.file, &plan.path, position, buf)?;
        let prefix: &[u8; PREFIX_LEN] = buf
            .get(..PREFIX_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| plan.corrupt(position, format!("record {offset} is too short")))?;
        let prefix = format::decode_prefix(prefix)
            .map_err(|invalid| plan.corrupt(position, format!("record {offset}: {invalid}")))?;
        let header_end = PREFIX_LEN + prefix.header_len as usize;
        if prefix.record_len() != plan.bytes() {
            return Err(plan.corrupt(
                position,
                format!("record {offset}: its length does not match the index"),
            ));
        }
        if header_end > buf.len() {
            buf.resize(header_end, 0);
            read_exact_at(&plan.file, &plan.path, position, buf)?;
        }
        let (found, meta) = format::decode_header(&buf[PREFIX_LEN..header_end])
            .map_err(|invalid| plan.corrupt(position, format!("record {offset}: {invalid}")))?;
        if found != offset {
            return Err(plan.corrupt(
                position,
                format::Invalid::Offset {
                    found,
                    expected: offset,
                }
                .to_string(),
            ));
        }
        Ok((prefix, meta, header_end))
    }

    /// Plans the run of records starting at `from`: below `stop`, in one segment, no lost
    /// offsets, about `window` bytes, and (past the first record when `take_first`) payloads
    /// that could still fit in `remaining`. Holds the index lock only while planning.
    fn plan(
        &self,
        from: u64,
        stop: u64,
        remaining: usize,
        take_first: bool,
        window: u64,
    ) -> Result<Option<Plan>> {
        let index = read_lock(&self.index);
        let oldest = index.first_offset();
        if from < oldest {
            return Err(Error::Truncated {
                requested: from,
                oldest,
            });
        }
        let Some(segment) = index.locate(from) else {
            return Ok(None);
        };
        if let Some(d) = segment.damage_at(from) {
            return Err(Error::Lost {
                file: d.file.clone(),
                position: d.position,
                first: d.first,
                end: d.end,
                reason: d.reason.clone(),
            });
        }
        let stop = stop.min(segment.end_offset);
        let mut starts = Vec::new();
        // Payload bytes the run holds at the least (headers are at most MAX_HEADER_LEN).
        let mut least_payload = 0u64;
        let mut offset = from;
        while offset < stop && segment.damage_at(offset).is_none() {
            let Some((start, end)) = segment.span(offset) else {
                break;
            };
            let first = starts.first().copied();
            let least = (end - start).saturating_sub((PREFIX_LEN + MAX_HEADER_LEN) as u64);
            let must_take = first.is_none() && take_first;
            if !must_take {
                if first.is_some_and(|first| end - first > window) {
                    break;
                }
                if least_payload + least > remaining as u64 {
                    break;
                }
            }
            if first.is_none() {
                starts.push(start);
            }
            starts.push(end);
            least_payload += least;
            offset += 1;
        }
        if starts.len() < 2 {
            return Ok(None);
        }
        Ok(Some(Plan {
            file: Arc::clone(&segment.file),
            path: Arc::clone(&segment.path),
            first: from,
            starts,
        }))
    }
}

fn to_usize(n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| Error::TooLarge {
        size: n,
        max: usize::MAX as u64,
    })
}
