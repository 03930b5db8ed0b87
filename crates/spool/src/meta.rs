//! The two small files that give a spool its identity and its progress.
//!
//! Both are replaced atomically (`<name>.tmp`, fsync, rename, fsync dir). Integers are
//! little-endian, CRCs are CRC32C over every byte before them.
//!
//! ```text
//! spool.meta, 32 bytes, written once when the spool is created
//!   0  [u8; 8]   magic b"LFSPMETA"
//!   8  u32       format version, 1
//!  12  [u8; 16]  agent id: 128 random bits
//!  28  u32       CRC32C of bytes 0..28
//! cursor, 24 bytes, rewritten on every ack that advances it
//!   0  [u8; 8]   magic b"LFCURSOR"
//!   8  u32       format version, 1
//!  12  u64       acked seq: every seq <= this is stored by the backend
//!  20  u32       CRC32C of bytes 0..20
//! ```
//!
//! **Never reorder, resize or reuse a field**; a new layout gets a new version.
//!
//! A missing or damaged `spool.meta` in a directory that holds segments refuses to
//! open: a fresh agent id would make the backend store retained entries twice. A
//! missing or damaged cursor means acked = 0 (retained entries are sent again and the
//! backend drops them by seq), with a warning.

use std::path::Path;

use crate::{
    Error, Result,
    format::{array, le_u32, le_u64},
    io::{atomic_write, read_optional},
};

pub(crate) const META_FILE: &str = "spool.meta";
pub(crate) const CURSOR_FILE: &str = "cursor";

const META_MAGIC: [u8; 8] = *b"LFSPMETA";
const META_VERSION: u32 = 1;
const META_LEN: usize = 32;
const CURSOR_MAGIC: [u8; 8] = *b"LFCURSOR";
const CURSOR_VERSION: u32 = 1;
const CURSOR_LEN: usize = 24;

fn encode_meta(agent_id: [u8; 16]) -> [u8; META_LEN] {
    let mut buf = [0u8; META_LEN];
    buf[0..8].copy_from_slice(&META_MAGIC);
    buf[8..12].copy_from_slice(&META_VERSION.to_le_bytes());
    buf[12..28].copy_from_slice(&agent_id);
    let crc = crc32c::crc32c(&buf[0..28]);
    buf[28..32].copy_from_slice(&crc.to_le_bytes());
    buf
}

fn decode_meta(path: &Path, bytes: &[u8]) -> Result<[u8; 16]> {
    let corrupt = |reason: &str| Error::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        seq: None,
        reason: format!("{reason}; restore spool.meta from a backup or move the spool away"),
    };
    if bytes.len() != META_LEN {
        return Err(corrupt(&format!(
            "{} bytes, expected {META_LEN}",
            bytes.len()
        )));
    }
    if bytes[0..8] != META_MAGIC {
        return Err(corrupt("bad magic"));
    }
    if le_u32(&bytes[28..32]) != crc32c::crc32c(&bytes[0..28]) {
        return Err(corrupt("crc mismatch"));
    }
    let version = le_u32(&bytes[8..12]);
    if version != META_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: META_VERSION,
        });
    }
    Ok(array(&bytes[12..28]))
}

/// Reads the agent id, or creates `spool.meta` with a fresh random one when the
/// directory holds no spool yet (`has_data` is false). Returns `(id, created)`.
pub(crate) fn load_or_create_agent_id(dir: &Path, has_data: bool) -> Result<([u8; 16], bool)> {
    let path = dir.join(META_FILE);
    match read_optional(dir, META_FILE)? {
        Some(bytes) => Ok((decode_meta(&path, &bytes)?, false)),
        None if has_data => Err(Error::Corrupt {
            path,
            offset: 0,
            seq: None,
            reason: "missing while the spool holds data; restore it from a backup or move \
                     the spool away"
                .into(),
        }),
        None => {
            let id: [u8; 16] = rand::random();
            atomic_write(dir, META_FILE, &encode_meta(id))?;
            Ok((id, true))
        }
    }
}

pub(crate) fn encode_cursor(acked: u64) -> [u8; CURSOR_LEN] {
    let mut buf = [0u8; CURSOR_LEN];
    buf[0..8].copy_from_slice(&CURSOR_MAGIC);
    buf[8..12].copy_from_slice(&CURSOR_VERSION.to_le_bytes());
    buf[12..20].copy_from_slice(&acked.to_le_bytes());
    let crc = crc32c::crc32c(&buf[0..20]);
    buf[20..24].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// What the cursor file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cursor {
    Missing,
    Acked(u64),
    /// Unreadable; the reason is for the warning.
    Damaged(String),
}

pub(crate) fn decode_cursor(bytes: &[u8]) -> Cursor {
    if bytes.len() != CURSOR_LEN {
        return Cursor::Damaged(format!("{} bytes, expected {CURSOR_LEN}", bytes.len()));
    }
    if bytes[0..8] != CURSOR_MAGIC {
        return Cursor::Damaged("bad magic".into());
    }
    if le_u32(&bytes[20..24]) != crc32c::crc32c(&bytes[0..20]) {
        return Cursor::Damaged("crc mismatch".into());
    }
    let version = le_u32(&bytes[8..12]);
    if version != CURSOR_VERSION {
        return Cursor::Damaged(format!("unsupported version {version}"));
    }
    Cursor::Acked(le_u64(&bytes[12..20]))
}

pub(crate) fn read_cursor(dir: &Path) -> Result<Cursor> {
    Ok(match read_optional(dir, CURSOR_FILE)? {
        None => Cursor::Missing,
        Some(bytes) => decode_cursor(&bytes),
    })
}

pub(crate) fn write_cursor(dir: &Path, acked: u64) -> Result<()> {
    atomic_write(dir, CURSOR_FILE, &encode_cursor(acked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_keeps_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let (id, created) = load_or_create_agent_id(dir.path(), false).unwrap();
        assert!(created);
        assert_eq!(
            std::fs::read(dir.path().join(META_FILE)).unwrap().len(),
            META_LEN
        );
        let (again, created) = load_or_create_agent_id(dir.path(), true).unwrap();
        assert!(!created);
        assert_eq!(again, id);
    }

    #[test]
    fn missing_meta_with_data_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_or_create_agent_id(dir.path(), true).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "spool.meta at offset 0: missing while the spool holds data; restore it from \
                 a backup or move the spool away"
            ),
            "{err}"
        );
    }

    #[test]
    fn damaged_meta_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode_meta([7; 16]);
        bytes[14] ^= 0xff;
        std::fs::write(dir.path().join(META_FILE), bytes).unwrap();
        let err = load_or_create_agent_id(dir.path(), false).unwrap_err();
        assert!(
            matches!(err, Error::Corrupt { ref reason, .. } if reason.starts_with("crc mismatch"))
        );
    }

    #[test]
    fn cursor_round_trips_and_detects_damage() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Cursor::Acked(42));
        let mut bytes = encode_cursor(42);
        bytes[12] ^= 1;
        assert_eq!(
            decode_cursor(&bytes),
            Cursor::Damaged("crc mismatch".into())
        );
        assert_eq!(
            decode_cursor(&bytes[..5]),
            Cursor::Damaged("5 bytes, expected 24".into())
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_cursor(dir.path()).unwrap(), Cursor::Missing);
        write_cursor(dir.path(), 9).unwrap();
        assert_eq!(read_cursor(dir.path()).unwrap(), Cursor::Acked(9));
        assert!(!dir.path().join("cursor.tmp").exists());
    }
}
