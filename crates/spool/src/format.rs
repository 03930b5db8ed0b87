//! The segment file format: the bytes [`crate::Spool::append`] writes.
//!
//! A segment is named `<first_seq zero-padded to 20 digits>.seg` (so names sort in seq
//! order) and holds entries with consecutive seqs starting at `first_seq`. Integers are
//! little-endian. CRCs are CRC32C (Castagnoli).
//!
//! ```text
//! segment header, 24 bytes, written and synced when the segment is created
//!   0  [u8; 8]   magic b"LFSPOOL\0"
//!   8  u32       format version, 1
//!  12  u64       first_seq, equal to the number in the file name
//!  20  u32       CRC32C of bytes 0..20
//! entry, repeated until the end of the file
//!   0  u32       magic 0x3145_464C (the bytes b"LFE1")
//!   4  u32       body_len
//!   8  u32       CRC32C of the body
//!     body, body_len bytes
//!  12  u64       seq
//!  20  [u8; 16]  content hash: xxh3-128 over (tag_len as u16 LE, tag, chunk)
//!  36  u16       tag_len
//!  38  tag_len   tag, UTF-8
//!   .. rest      chunk, opaque bytes (body_len - 26 - tag_len of them)
//! ```
//!
//! **Never reorder, resize or reuse a field.** Recovery of spools written by older
//! builds depends on this layout; a change of layout gets a new version number and a
//! reader for the old one.
//!
//! An entry is written with one vectored write (header and tag from a small buffer,
//! the chunk straight from the caller), so a crash can leave a torn entry only at the
//! end of the segment being written. Recovery (`recovery.rs`) reads every entry and
//! checks magic, length, CRC and seq order. The first bad entry of the **last** segment
//! is a torn tail: the file is truncated there and the loss is logged and reported,
//! including any seqs still readable in the cut bytes (those seqs are never reused).
//! A bad entry in an **older** segment is corruption: the entries before it are kept,
//! the rest of that segment is reported lost, and the file is not modified.

use std::fmt;

use xxhash_rust::xxh3::Xxh3Default;

use crate::{Error, Result};

/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"LFSPOOL\0";
/// Segment format version written by this build.
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// Size of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 24;
/// First four bytes of every entry.
pub(crate) const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"LFE1");
/// Size of the entry header (magic, body_len, crc).
pub(crate) const ENTRY_HEADER_LEN: usize = 12;
/// Size of the fixed body fields (seq, hash, tag_len).
pub(crate) const BODY_FIXED_LEN: usize = 8 + 16 + 2;
/// Bytes an entry takes on disk besides its tag and chunk.
pub const ENTRY_OVERHEAD: usize = ENTRY_HEADER_LEN + BODY_FIXED_LEN;

/// Why bytes on disk are not a valid entry or header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Damage {
    ShortHeader { have: u64 },
    BadMagic(u32),
    ShortBody { need: u64, have: u64 },
    BadCrc { stored: u32, computed: u32 },
    Malformed(&'static str),
    SeqMismatch { expected: u64, found: u64 },
    BadSegmentHeader(&'static str),
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::ShortHeader { have } => {
                write!(f, "short entry header ({have} of {ENTRY_HEADER_LEN} bytes)")
            }
            Damage::BadMagic(m) => write!(f, "bad entry magic {m:#010x}"),
            Damage::ShortBody { need, have } => {
                write!(f, "short entry body ({have} of {need} bytes)")
            }
            Damage::BadCrc { stored, computed } => {
                write!(
                    f,
                    "crc mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            Damage::Malformed(what) => f.write_str(what),
            Damage::SeqMismatch { expected, found } => {
                write!(f, "seq {found} where {expected} was expected")
            }
            Damage::BadSegmentHeader(what) => write!(f, "bad segment header: {what}"),
        }
    }
}

/// The content hash used for dedup: xxh3-128 over tag length, tag and chunk, so that
/// the same bytes under another tag hash differently.
pub(crate) fn content_hash(tag: &[u8], chunk: &[u8]) -> u128 {
    let mut h = Xxh3Default::new();
    h.update(&(tag.len() as u16).to_le_bytes());
    h.update(tag);
    h.update(chunk);
    h.digest128()
}

/// Checks that an entry can be encoded and returns its size on disk.
pub(crate) fn entry_len(tag: &[u8], chunk: &[u8]) -> Result<u64> {
    if tag.len() > usize::from(u16::MAX) {
        return Err(Error::TooLarge {
            what: "tag",
            size: tag.len() as u64,
            limit: u64::from(u16::MAX),
        });
    }
    let body = (BODY_FIXED_LEN + tag.len()) as u64 + chunk.len() as u64;
    if body > u64::from(u32::MAX) {
        return Err(Error::TooLarge {
            what: "chunk",
            size: chunk.len() as u64,
            limit: u64::from(u32::MAX) - (BODY_FIXED_LEN + tag.len()) as u64,
        });
    }
    Ok(ENTRY_HEADER_LEN as u64 + body)
}

/// Encodes everything of an entry before its chunk. `chunk_crc` is `crc32c(chunk)`,
/// computed by the caller outside the write lock. The caller has checked sizes with
/// [`entry_len`].
pub(crate) fn encode_prefix(
    seq: u64,
    hash: u128,
    tag: &[u8],
    chunk: &[u8],
    chunk_crc: u32,
) -> Vec<u8> {
    let body_len = (BODY_FIXED_LEN + tag.len() + chunk.len()) as u32;
    let mut buf = Vec::with_capacity(ENTRY_OVERHEAD + tag.len());
    buf.extend_from_slice(&ENTRY_MAGIC.to_le_bytes());
    buf.extend_from_slice(&body_len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&hash.to_le_bytes());
    buf.extend_from_slice(&(tag.len() as u16).to_le_bytes());
    buf.extend_from_slice(tag);
    let crc = crc32c::crc32c_combine(
        crc32c::crc32c(&buf[ENTRY_HEADER_LEN..]),
        chunk_crc,
        chunk.len(),
    );
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// The decoded entry header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryHeader {
    pub body_len: u32,
    pub crc: u32,
}

impl EntryHeader {
    /// Size of the whole entry on disk.
    pub fn entry_len(&self) -> u64 {
        ENTRY_HEADER_LEN as u64 + u64::from(self.body_len)
    }
}

pub(crate) fn decode_header(bytes: &[u8; ENTRY_HEADER_LEN]) -> Result<EntryHeader, Damage> {
    let magic = le_u32(&bytes[0..4]);
    if magic != ENTRY_MAGIC {
        return Err(Damage::BadMagic(magic));
    }
    let body_len = le_u32(&bytes[4..8]);
    if (body_len as usize) < BODY_FIXED_LEN {
        return Err(Damage::Malformed("body shorter than its fixed fields"));
    }
    Ok(EntryHeader {
        body_len,
        crc: le_u32(&bytes[8..12]),
    })
}

/// The fixed fields at the start of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyFixed {
    pub seq: u64,
    pub hash: u128,
    pub tag_len: u16,
}

/// Reads the fixed fields; `bytes` holds at least [`BODY_FIXED_LEN`] bytes.
pub(crate) fn decode_fixed(bytes: &[u8]) -> Result<BodyFixed, Damage> {
    if bytes.len() < BODY_FIXED_LEN {
        return Err(Damage::Malformed("body shorter than its fixed fields"));
    }
    Ok(BodyFixed {
        seq: le_u64(&bytes[0..8]),
        hash: u128::from_le_bytes(array(&bytes[8..24])),
        tag_len: u16::from_le_bytes(array(&bytes[24..26])),
    })
}

/// A verified entry borrowed from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DecodedEntry<'a> {
    pub seq: u64,
    pub hash: u128,
    pub tag: &'a str,
    pub chunk: &'a [u8],
}

/// Verifies a body (CRC, tag bounds, UTF-8) against its header.
pub(crate) fn decode_body<'a>(
    header: &EntryHeader,
    body: &'a [u8],
) -> Result<DecodedEntry<'a>, Damage> {
    if body.len() != header.body_len as usize {
        return Err(Damage::ShortBody {
            need: u64::from(header.body_len),
            have: body.len() as u64,
        });
    }
    let computed = crc32c::crc32c(body);
    if computed != header.crc {
        return Err(Damage::BadCrc {
            stored: header.crc,
            computed,
        });
    }
    let fixed = decode_fixed(body)?;
    let rest = &body[BODY_FIXED_LEN..];
    let tag_len = usize::from(fixed.tag_len);
    if tag_len > rest.len() {
        return Err(Damage::Malformed("tag runs past the body"));
    }
    let (tag, chunk) = rest.split_at(tag_len);
    let tag = std::str::from_utf8(tag).map_err(|_| Damage::Malformed("tag is not utf-8"))?;
    Ok(DecodedEntry {
        seq: fixed.seq,
        hash: fixed.hash,
        tag,
        chunk,
    })
}

/// Decodes one whole entry at the start of `bytes`; returns it and its size on disk.
#[cfg(test)]
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<(DecodedEntry<'_>, usize), Damage> {
    let Some(head) = bytes.first_chunk::<ENTRY_HEADER_LEN>() else {
        return Err(Damage::ShortHeader {
            have: bytes.len() as u64,
        });
    };
    let header = decode_header(head)?;
    let len = header.entry_len();
    let have = bytes.len() as u64;
    if have < len {
        return Err(Damage::ShortBody {
            need: u64::from(header.body_len),
            have: have - ENTRY_HEADER_LEN as u64,
        });
    }
    let body = &bytes[ENTRY_HEADER_LEN..len as usize];
    Ok((decode_body(&header, body)?, len as usize))
}

pub(crate) fn encode_segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut buf = [0u8; SEGMENT_HEADER_LEN];
    buf[0..8].copy_from_slice(&SEGMENT_MAGIC);
    buf[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    buf[12..20].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&buf[0..20]);
    buf[20..24].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentHeader {
    Valid {
        first_seq: u64,
    },
    /// Magic and CRC are fine but the version is not one this build reads.
    Unsupported {
        version: u32,
    },
}

pub(crate) fn decode_segment_header(
    bytes: &[u8; SEGMENT_HEADER_LEN],
) -> Result<SegmentHeader, Damage> {
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err(Damage::BadSegmentHeader("bad magic"));
    }
    if le_u32(&bytes[20..24]) != crc32c::crc32c(&bytes[0..20]) {
        return Err(Damage::BadSegmentHeader("crc mismatch"));
    }
    let version = le_u32(&bytes[8..12]);
    if version != SEGMENT_VERSION {
        return Ok(SegmentHeader::Unsupported { version });
    }
    Ok(SegmentHeader::Valid {
        first_seq: le_u64(&bytes[12..20]),
    })
}

/// File name of the segment whose first entry has `first_seq`.
pub(crate) fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The first seq named by a segment file name, if it is one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(array(bytes))
}

pub(crate) fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(array(bytes))
}

/// Copies the first `N` bytes of `bytes` (zero-padded if shorter; callers pass exact
/// slices, this only keeps the code free of panics).
pub(crate) fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = bytes.len().min(N);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn encode(seq: u64, tag: &str, chunk: &[u8]) -> Vec<u8> {
        let hash = content_hash(tag.as_bytes(), chunk);
        let mut bytes = encode_prefix(seq, hash, tag.as_bytes(), chunk, crc32c::crc32c(chunk));
        bytes.extend_from_slice(chunk);
        bytes
    }

    #[test]
    fn layout_is_stable() {
        let bytes = encode(0x0102_0304_0506_0708, "ab", b"xyz");
        assert_eq!(bytes.len() as u64, entry_len(b"ab", b"xyz").unwrap());
        assert_eq!(bytes.len(), ENTRY_OVERHEAD + 2 + 3);
        assert_eq!(&bytes[0..4], b"LFE1");
        assert_eq!(le_u32(&bytes[4..8]), 26 + 2 + 3);
        assert_eq!(le_u32(&bytes[8..12]), crc32c::crc32c(&bytes[12..]));
        assert_eq!(&bytes[12..20], &[8, 7, 6, 5, 4, 3, 2, 1]);
        let hash = content_hash(b"ab", b"xyz");
        assert_eq!(&bytes[20..36], &hash.to_le_bytes());
        assert_eq!(&bytes[36..38], &[2, 0]);
        assert_eq!(&bytes[38..40], b"ab");
        assert_eq!(&bytes[40..], b"xyz");
    }

    #[test]
    fn hash_depends_on_tag_boundary() {
        assert_ne!(content_hash(b"ab", b"c"), content_hash(b"a", b"bc"));
        assert_ne!(content_hash(b"a", b"x"), content_hash(b"b", b"x"));
        assert_eq!(content_hash(b"a", b"x"), content_hash(b"a", b"x"));
    }

    #[test]
    fn oversized_tag_is_too_large() {
        let tag = vec![b'a'; 70_000];
        let err = entry_len(&tag, b"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "tag is 70000 bytes, over the limit of 65535"
        );
    }

    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let mut h = encode_segment_header(42);
        assert_eq!(&h[0..8], b"LFSPOOL\0");
        assert_eq!(
            decode_segment_header(&h),
            Ok(SegmentHeader::Valid { first_seq: 42 })
        );
        h[13] ^= 1;
        assert_eq!(
            decode_segment_header(&h),
            Err(Damage::BadSegmentHeader("crc mismatch"))
        );
    }

    #[test]
    fn segment_names_sort_by_seq_and_parse_back() {
        assert_eq!(segment_file_name(7), "00000000000000000007.seg");
        assert_eq!(parse_segment_file_name("00000000000000000007.seg"), Some(7));
        assert_eq!(parse_segment_file_name("7.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000x.seg"), None);
        assert_eq!(parse_segment_file_name("00000000000000000007.tmp"), None);
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    proptest! {
        #[test]
        fn entry_round_trips(
            seq in any::<u64>(),
            tag in "[a-z0-9._-]{0,40}",
            chunk in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let bytes = encode(seq, &tag, &chunk);
            let (entry, len) = decode_entry(&bytes).unwrap();
            prop_assert_eq!(len, bytes.len());
            prop_assert_eq!(entry.seq, seq);
            prop_assert_eq!(entry.tag, tag.as_str());
            prop_assert_eq!(entry.chunk, &chunk[..]);
            prop_assert_eq!(entry.hash, content_hash(tag.as_bytes(), &chunk));
        }

        #[test]
        fn any_truncation_is_detected(
            tag in "[a-z]{0,10}",
            chunk in proptest::collection::vec(any::<u8>(), 0..512),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = encode(1, &tag, &chunk);
            let cut = cut.index(bytes.len());
            prop_assert!(decode_entry(&bytes[..cut]).is_err());
        }

        #[test]
        fn any_byte_flip_is_detected(
            tag in "[a-z]{0,10}",
            chunk in proptest::collection::vec(any::<u8>(), 0..512),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut bytes = encode(1, &tag, &chunk);
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
            // A flip in body_len changes the length read; the result is still an error
            // (short body or CRC mismatch), never a silently different entry.
            prop_assert!(decode_entry(&bytes).is_err());
        }
    }
}
