//! Fluent Bit chunks into output records, streamed: no value trees, no whole-chunk
//! event list.
//!
//! A chunk is a concatenation of msgpack values, one per event, with no outer array:
//! `[[timestamp, metadata], body]` (Fluent Bit 2.x+) or `[timestamp, body]` (the
//! legacy forward format). The timestamp is an EventTime (ext type 0: big-endian u32
//! seconds, u32 nanoseconds), an integer or a float. Group markers (seconds
//! `0xFFFFFFFF` start, `0xFFFFFFFE` end) carry the resource and scope of the records
//! between them: they become the `group` context of those records, never records.
//!
//! The output record is one JSON object per line:
//! `{"time": RFC 3339 with nanoseconds, "tag", "tenant", "agent", "metadata", "record"}`,
//! plus `"group": {"metadata", "body"}` inside a group. Binary values become base64
//! strings; other ext values `{"$ext": type, "b64": data}`; map keys that are not
//! strings are written as their JSON text; strings that are not UTF-8 are read
//! lossily; non-finite floats become `null`. The bytes are those `serde_json` wrote
//! for the same values before this module transcoded directly (strings escaped the
//! same way, floats through `ryu`).
//!
//! Memory: [`events`] walks the chunk in place and yields each event as slices of it,
//! so decoding holds one event's position at a time, whatever the chunk holds. A
//! caller renders each record into its own buffer and hands the buffer on when it is
//! large enough ([`Renderer`]); nesting is bounded by [`MAX_DEPTH`].

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat};

/// Deepest nesting accepted in one event (bounds the decoder's stack).
const MAX_DEPTH: usize = 256;

/// Most map keys that are not strings a value may sit inside. Such a key is written
/// as its JSON text in a JSON string, so each level escapes the quotes and
/// backslashes of the levels inside it again: the output doubles per level, and a
/// few kilobytes nested 70 deep would render to more than any memory.
const MAX_KEY_NESTING: usize = 4;

/// One decoded event. `metadata` and `body` are the msgpack bytes of their maps, in
/// the chunk; `metadata` is `None` for the legacy format (rendered as `{}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    Record {
        sec: i64,
        nsec: u32,
        metadata: Option<&'a [u8]>,
        body: &'a [u8],
    },
    GroupStart {
        metadata: Option<&'a [u8]>,
        body: &'a [u8],
    },
    GroupEnd,
}

/// Why a chunk could not be decoded; the whole chunk goes to dead letters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {index} at byte {offset}: {reason}")]
pub struct DecodeError {
    pub index: usize,
    pub offset: u64,
    pub reason: String,
}

/// The kind of a msgpack value, as far as decoding needs to tell.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Head {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    F32(f32),
    F64(f64),
    Str(usize),
    Bin(usize),
    Array(u64),
    Map(u64),
    Ext(i8, usize),
}

impl Head {
    fn name(self) -> &'static str {
        match self {
            Head::Nil => "nil",
            Head::Bool(_) => "a boolean",
            Head::Uint(_) | Head::Int(_) => "an integer",
            Head::F32(_) | Head::F64(_) => "a float",
            Head::Str(_) => "a string",
            Head::Bin(_) => "a binary",
            Head::Array(_) => "an array",
            Head::Map(_) => "a map",
            Head::Ext(..) => "an ext value",
        }
    }
}

/// A cursor over msgpack bytes. Every length it reads is checked against what is
/// left before anything is taken, so a declared size that lies is an error.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "not msgpack: {n} byte(s) declared at byte {}, {} left",
                    self.pos,
                    self.data.len() - self.pos
                )
            })?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len8(&mut self) -> Result<usize, String> {
        Ok(usize::from(self.byte()?))
    }

    fn len16(&mut self) -> Result<usize, String> {
        Ok(usize::from(u16::from_be_bytes(self.be()?)))
    }

    fn len32(&mut self) -> Result<usize, String> {
        Ok(u32::from_be_bytes(self.be()?) as usize)
    }

    /// Reads the head of the next value (its payload, for strings, binaries and
    /// exts, is read by the caller).
    fn head(&mut self) -> Result<Head, String> {
        let at = self.pos;
        let b = self.byte()?;
        Ok(match b {
            0x00..=0x7f => Head::Uint(u64::from(b)),
            0x80..=0x8f => Head::Map(u64::from(b & 0x0f)),
            0x90..=0x9f => Head::Array(u64::from(b & 0x0f)),
            0xa0..=0xbf => Head::Str(usize::from(b & 0x1f)),
            0xc0 => Head::Nil,
            0xc2 => Head::Bool(false),
            0xc3 => Head::Bool(true),
            0xc4 => Head::Bin(self.len8()?),
            0xc5 => Head::Bin(self.len16()?),
            0xc6 => Head::Bin(self.len32()?),
            0xc7 => {
                let n = self.len8()?;
                Head::Ext(self.byte()? as i8, n)
            }
            0xc8 => {
                let n = self.len16()?;
                Head::Ext(self.byte()? as i8, n)
            }
            0xc9 => {
                let n = self.len32()?;
                Head::Ext(self.byte()? as i8, n)
            }
            0xca => Head::F32(f32::from_be_bytes(self.be()?)),
            0xcb => Head::F64(f64::from_be_bytes(self.be()?)),
            0xcc => Head::Uint(u64::from(self.byte()?)),
            0xcd => Head::Uint(u64::from(u16::from_be_bytes(self.be()?))),
            0xce => Head::Uint(u64::from(u32::from_be_bytes(self.be()?))),
            0xcf => Head::Uint(u64::from_be_bytes(self.be()?)),
            0xd0 => Head::Int(i64::from(self.byte()? as i8)),
            0xd1 => Head::Int(i64::from(i16::from_be_bytes(self.be()?))),
            0xd2 => Head::Int(i64::from(i32::from_be_bytes(self.be()?))),
            0xd3 => Head::Int(i64::from_be_bytes(self.be()?)),
            0xd4 => Head::Ext(self.byte()? as i8, 1),
            0xd5 => Head::Ext(self.byte()? as i8, 2),
            0xd6 => Head::Ext(self.byte()? as i8, 4),
            0xd7 => Head::Ext(self.byte()? as i8, 8),
            0xd8 => Head::Ext(self.byte()? as i8, 16),
            0xd9 => Head::Str(self.len8()?),
            0xda => Head::Str(self.len16()?),
            0xdb => Head::Str(self.len32()?),
            0xdc => Head::Array(self.len16()? as u64),
            0xdd => Head::Array(self.len32()? as u64),
            0xde => Head::Map(self.len16()? as u64),
            0xdf => Head::Map(self.len32()? as u64),
            0xe0..=0xff => Head::Int(i64::from(b as i8)),
            0xc1 => return Err(format!("not msgpack: reserved byte 0xc1 at byte {at}")),
        })
    }

    /// Skips one whole value, checking it is well formed; returns its bytes. `keys`
    /// counts the map keys that are not strings around it.
    fn skip(&mut self, depth: usize, keys: usize) -> Result<&'a [u8], String> {
        let start = self.pos;
        let head = self.head()?;
        self.skip_rest(head, depth, keys)?;
        Ok(&self.data[start..self.pos])
    }

    fn skip_rest(&mut self, head: Head, depth: usize, keys: usize) -> Result<(), String> {
        match head {
            Head::Str(n) | Head::Bin(n) | Head::Ext(_, n) => {
                self.take(n)?;
            }
            Head::Array(n) | Head::Map(n) => {
                if depth >= MAX_DEPTH {
                    return Err(format!("nested deeper than {MAX_DEPTH}"));
                }
                let is_map = matches!(head, Head::Map(_));
                let items = if is_map { 2 * n } else { n };
                // Each item takes at least one byte, so a count that lies runs out of
                // data here rather than being trusted.
                for i in 0..items {
                    let key = is_map && i % 2 == 0;
                    if key && !matches!(self.clone().head()?, Head::Str(_)) {
                        if keys >= MAX_KEY_NESTING {
                            return Err(format!(
                                "map keys that are not strings nested more than \
                                 {MAX_KEY_NESTING} deep"
                            ));
                        }
                        self.skip(depth + 1, keys + 1)?;
                    } else {
                        self.skip(depth + 1, keys)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn timestamp(cursor: &mut Cursor<'_>) -> Result<(i64, u32), String> {
    match cursor.head()? {
        Head::Ext(0, 8) => {
            let data = cursor.take(8)?;
            let sec = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            let nsec = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
            Ok((i64::from(sec), nsec))
        }
        Head::Uint(u) => i64::try_from(u)
            .map(|s| (s, 0))
            .map_err(|_| "integer timestamp out of range".to_string()),
        Head::Int(i) => Ok((i, 0)),
        Head::F64(f) if f.is_finite() => Ok((f.floor() as i64, ((f - f.floor()) * 1e9) as u32)),
        Head::F32(f) if f.is_finite() => {
            let f = f64::from(f);
            Ok((f.floor() as i64, ((f - f.floor()) * 1e9) as u32))
        }
        other => Err(format!(
            "timestamp is not an EventTime, integer or float: {}",
            other.name()
        )),
    }
}

/// A map, checked whole; its bytes.
fn map<'a>(cursor: &mut Cursor<'a>, what: &str) -> Result<&'a [u8], String> {
    let start = cursor.pos;
    let head = cursor.head()?;
    if !matches!(head, Head::Map(_)) {
        return Err(format!("event {what} is not a map"));
    }
    cursor.skip_rest(head, 1, 0)?;
    Ok(&cursor.data[start..cursor.pos])
}

fn event<'a>(cursor: &mut Cursor<'a>) -> Result<Event<'a>, String> {
    let Head::Array(n) = cursor.head()? else {
        return Err("event is not an array".into());
    };
    if n != 2 {
        return Err(format!("event array has {n} elements, expected 2"));
    }
    let mut peek = cursor.clone();
    let (sec, nsec, metadata) = match peek.head()? {
        Head::Array(2) => {
            *cursor = peek;
            let (sec, nsec) = timestamp(cursor)?;
            (sec, nsec, Some(map(cursor, "metadata")?))
        }
        Head::Array(h) => {
            return Err(format!("event header has {h} elements, expected 2"));
        }
        _ => {
            let (sec, nsec) = timestamp(cursor)?;
            (sec, nsec, None)
        }
    };
    let body = map(cursor, "body")?;
    match sec {
        0xFFFF_FFFF | -1 => Ok(Event::GroupStart { metadata, body }),
        0xFFFF_FFFE | -2 => Ok(Event::GroupEnd),
        _ => Ok(Event::Record {
            sec,
            nsec,
            metadata,
            body,
        }),
    }
}

/// The events of a chunk, in order; after the first error it yields nothing more.
pub fn events(data: &[u8]) -> Events<'_> {
    Events {
        cursor: Cursor { data, pos: 0 },
        index: 0,
        failed: false,
    }
}

/// See [`events`].
#[derive(Debug, Clone)]
pub struct Events<'a> {
    cursor: Cursor<'a>,
    index: usize,
    failed: bool,
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<Event<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.cursor.pos >= self.cursor.data.len() {
            return None;
        }
        let offset = self.cursor.pos as u64;
        let index = self.index;
        self.index += 1;
        Some(event(&mut self.cursor).map_err(|reason| {
            self.failed = true;
            DecodeError {
                index,
                offset,
                reason,
            }
        }))
    }
}

/// Checks a whole chunk without keeping anything; returns how many records it holds.
pub fn check_chunk(data: &[u8]) -> Result<usize, DecodeError> {
    let mut records = 0;
    for event in events(data) {
        if matches!(event?, Event::Record { .. }) {
            records += 1;
        }
    }
    Ok(records)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `text` as a JSON string, escaped as `serde_json` escapes.
fn write_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_text(out: &mut Vec<u8>, raw: &[u8]) {
    match std::str::from_utf8(raw) {
        Ok(text) => write_str(out, text),
        Err(_) => write_str(out, &String::from_utf8_lossy(raw)),
    }
}

fn write_f64(out: &mut Vec<u8>, f: f64) {
    if f.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(f).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Writes the msgpack value at `cursor` as JSON. The value was checked by
/// [`events`], so errors here only come from bytes that changed since.
fn write_json(cursor: &mut Cursor<'_>, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH}"));
    }
    match cursor.head()? {
        Head::Nil => out.extend_from_slice(b"null"),
        Head::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Head::Uint(u) => out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes()),
        Head::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        Head::F32(f) => write_f64(out, f64::from(f)),
        Head::F64(f) => write_f64(out, f),
        Head::Str(n) => write_text(out, cursor.take(n)?),
        Head::Bin(n) => {
            out.push(b'"');
            let data = cursor.take(n)?;
            let at = out.len();
            out.resize(at + data.len().div_ceil(3) * 4, 0);
            let written = BASE64
                .encode_slice(data, &mut out[at..])
                .map_err(|e| e.to_string())?;
            out.truncate(at + written);
            out.push(b'"');
        }
        Head::Array(n) => {
            out.push(b'[');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                write_json(cursor, out, depth + 1)?;
            }
            out.push(b']');
        }
        Head::Map(n) => {
            out.push(b'{');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                let mut key = cursor.clone();
                match key.head()? {
                    Head::Str(len) => {
                        write_text(out, key.take(len)?);
                        *cursor = key;
                    }
                    _ => {
                        // A key that is not a string: its JSON text, as a string.
                        let mut text = Vec::new();
                        write_json(cursor, &mut text, depth + 1)?;
                        write_str(out, &String::from_utf8_lossy(&text));
                    }
                }
                out.push(b':');
                write_json(cursor, out, depth + 1)?;
            }
            out.push(b'}');
        }
        Head::Ext(kind, n) => {
            out.extend_from_slice(b"{\"$ext\":");
            out.extend_from_slice(itoa::Buffer::new().format(kind).as_bytes());
            out.extend_from_slice(b",\"b64\":");
            let data = cursor.take(n)?;
            write_str(out, &BASE64.encode(data));
            out.push(b'}');
        }
    }
    Ok(())
}

/// Writes the msgpack map `bytes` (or `{}` for `None`) as JSON.
fn write_map(out: &mut Vec<u8>, bytes: Option<&[u8]>) -> Result<(), String> {
    match bytes {
        None => {
            out.extend_from_slice(b"{}");
            Ok(())
        }
        Some(data) => write_json(&mut Cursor { data, pos: 0 }, out, 1),
    }
}

/// RFC 3339 UTC with nanoseconds, e.g. `2026-11-23T06:00:00.620898015Z`.
pub fn rfc3339(sec: i64, nsec: u32) -> String {
    DateTime::from_timestamp(sec, nsec.min(999_999_999))
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Nanos, true))
        .unwrap_or_else(|| format!("{sec}.{nsec:09}"))
}

/// Who a chunk came from, for the output records.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub tag: &'a str,
    pub tenant: &'a str,
    pub agent: &'a str,
}

/// Renders the records of chunks as JSON lines, one event at a time. It keeps the
/// last second's date text and the current group's rendered context, so neither is
/// formatted again for every record.
#[derive(Debug, Default)]
pub struct Renderer {
    /// `(sec, "YYYY-MM-DDTHH:MM:SS")` of the last record's time.
    second: Option<(i64, String)>,
    /// `,"group":{...}` of the group being read, empty outside a group.
    group: Vec<u8>,
    /// `","tag":...,"agent":...,"metadata":` of the chunk being read.
    origin: Vec<u8>,
}

impl Renderer {
    /// Starts a chunk: clears the group context and takes its origin.
    pub fn start(&mut self, origin: Origin<'_>) {
        self.group.clear();
        self.origin.clear();
        self.origin.extend_from_slice(b"\",\"tag\":");
        write_str(&mut self.origin, origin.tag);
        self.origin.extend_from_slice(b",\"tenant\":");
        write_str(&mut self.origin, origin.tenant);
        self.origin.extend_from_slice(b",\"agent\":");
        write_str(&mut self.origin, origin.agent);
        self.origin.extend_from_slice(b",\"metadata\":");
    }

    fn write_time(&mut self, out: &mut Vec<u8>, sec: i64, nsec: u32) {
        if self.second.as_ref().is_none_or(|(s, _)| *s != sec) {
            self.second = DateTime::from_timestamp(sec, 0).map(|t| {
                let mut text = t.to_rfc3339_opts(SecondsFormat::Secs, true);
                text.pop(); // the `Z`
                (sec, text)
            });
        }
        match &self.second {
            Some((_, date)) => {
                let nsec = nsec.min(999_999_999);
                out.extend_from_slice(date.as_bytes());
                out.push(b'.');
                let digits = itoa::Buffer::new().format(nsec).len();
                out.extend(std::iter::repeat_n(b'0', 9 - digits));
                out.extend_from_slice(itoa::Buffer::new().format(nsec).as_bytes());
                out.push(b'Z');
            }
            None => out.extend_from_slice(format!("{sec}.{nsec:09}").as_bytes()),
        }
    }

    /// Appends one event's output to `out`: one JSON line for a record, nothing for a
    /// group marker (which changes the context of the records after it). Returns
    /// whether it wrote a record.
    pub fn event(&mut self, event: &Event<'_>, out: &mut Vec<u8>) -> Result<bool, String> {
        match *event {
            Event::GroupStart { metadata, body } => {
                self.group.clear();
                self.group.extend_from_slice(b",\"group\":{\"metadata\":");
                write_map(&mut self.group, metadata)?;
                self.group.extend_from_slice(b",\"body\":");
                write_map(&mut self.group, Some(body))?;
                self.group.push(b'}');
                Ok(false)
            }
            Event::GroupEnd => {
                self.group.clear();
                Ok(false)
            }
            Event::Record {
                sec,
                nsec,
                metadata,
                body,
            } => {
                let start = out.len();
                out.extend_from_slice(b"{\"time\":\"");
                self.write_time(out, sec, nsec);
                out.extend_from_slice(&self.origin);
                let written = write_map(out, metadata).and_then(|()| {
                    out.extend_from_slice(b",\"record\":");
                    write_map(out, Some(body))
                });
                if let Err(e) = written {
                    out.truncate(start);
                    return Err(e);
                }
                out.extend_from_slice(&self.group);
                out.extend_from_slice(b"}\n");
                Ok(true)
            }
        }
    }
}

/// Appends one JSON line per record of a whole chunk to `out`; returns how many
/// records. For tests and small chunks: the router renders piece by piece.
pub fn render(data: &[u8], origin: Origin<'_>, out: &mut Vec<u8>) -> Result<usize, DecodeError> {
    check_chunk(data)?;
    let mut renderer = Renderer::default();
    renderer.start(origin);
    let mut records = 0;
    for (index, event) in events(data).enumerate() {
        let event = event?;
        let wrote = renderer.event(&event, out).map_err(|reason| DecodeError {
            index,
            offset: 0,
            reason,
        })?;
        records += usize::from(wrote);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::{Origin, check_chunk, render, rfc3339};
    use rmpv::Value;

    fn event_time(sec: u32, nsec: u32) -> Value {
        let mut data = sec.to_be_bytes().to_vec();
        data.extend_from_slice(&nsec.to_be_bytes());
        Value::Ext(0, data)
    }

    fn encode(values: &[Value]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in values {
            rmpv::encode::write_value(&mut out, v).unwrap();
        }
        out
    }

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map(
            pairs
                .iter()
                .map(|(k, v)| (Value::from(*k), v.clone()))
                .collect(),
        )
    }

    const ORIGIN: Origin<'static> = Origin {
        tag: "t",
        tenant: "acme",
        agent: "00ff",
    };

    #[test]
    fn v2_legacy_and_groups() {
        let chunk = encode(&[
            Value::Array(vec![
                Value::Array(vec![
                    event_time(0xFFFF_FFFF, 0),
                    map(&[("schema", "otlp".into())]),
                ]),
                map(&[("resource", map(&[]))]),
            ]),
            Value::Array(vec![
                Value::Array(vec![event_time(1_700_000_000, 5), map(&[("m", 1.into())])]),
                map(&[("log", "hi".into()), ("bin", Value::Binary(vec![0, 255]))]),
            ]),
            Value::Array(vec![
                Value::Array(vec![event_time(0xFFFF_FFFE, 0), map(&[])]),
                map(&[]),
            ]),
            Value::Array(vec![
                Value::from(1_700_000_001),
                map(&[("legacy", true.into())]),
            ]),
        ]);
        assert_eq!(check_chunk(&chunk), Ok(2));
        let mut out = Vec::new();
        assert_eq!(render(&chunk, ORIGIN, &mut out), Ok(2));
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"time":"2023-11-14T22:13:20.000000005Z","tag":"t","tenant":"acme","agent":"00ff","metadata":{"m":1},"record":{"log":"hi","bin":"AP8="},"group":{"metadata":{"schema":"otlp"},"body":{"resource":{}}}}"#
        );
        assert_eq!(
            lines[1],
            r#"{"time":"2023-11-14T22:13:21.000000000Z","tag":"t","tenant":"acme","agent":"00ff","metadata":{},"record":{"legacy":true}}"#
        );
    }

    /// The bytes `serde_json` wrote for the same values through `rmpv` trees, which
    /// this module replaced: every kind of value, escapes, odd keys.
    #[test]
    fn values_render_as_before() {
        let body = Value::Map(vec![
            (
                Value::from("s"),
                Value::from("q\"b\\n\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}é/"),
            ),
            (Value::from("u"), Value::from(u64::MAX)),
            (Value::from("i"), Value::from(i64::MIN)),
            (Value::from("f"), Value::F64(1.5e300)),
            (Value::from("g"), Value::F32(0.1)),
            (Value::from("h"), Value::F64(1.0)),
            (Value::from("nan"), Value::F64(f64::NAN)),
            (Value::from("n"), Value::Nil),
            (Value::from("b"), Value::Boolean(false)),
            (
                Value::from("a"),
                Value::Array(vec![1.into(), Value::Array(vec![])]),
            ),
            (Value::from("x"), Value::Ext(-5, vec![1, 2, 3])),
            (Value::from(7), Value::from("int key")),
            (Value::Binary(vec![0, 255]), Value::from("bin key")),
            (Value::Nil, Value::from("nil key")),
        ]);
        let Value::Map(entries) = body else {
            unreachable!()
        };
        // [[EventTime, {}], {...entries, "\xffk": "v\xfe"}]: strings that are not
        // UTF-8 cannot be built as rmpv values, so the map is framed by hand.
        let mut chunk = encode(&[Value::Array(vec![
            event_time(1_700_000_000, 1_000_000_123),
            map(&[]),
        ])]);
        chunk.insert(0, 0x92);
        chunk.push(0x80 | (entries.len() as u8 + 1));
        for (k, v) in &entries {
            chunk.extend(encode(&[k.clone(), v.clone()]));
        }
        chunk.extend_from_slice(&[0xa2, 0xff, b'k', 0xa2, b'v', 0xfe]);
        let mut out = Vec::new();
        assert_eq!(render(&chunk, ORIGIN, &mut out), Ok(1));
        let expected = concat!(
            r#"{"time":"2023-11-14T22:13:20.999999999Z","tag":"t","tenant":"acme","agent":"00ff","metadata":{},"record":{"#,
            r#""s":"q\"b\\n\n\r\t\b\f\u0001\u001f"#,
            "\u{7f}é/\",",
            r#""u":18446744073709551615,"i":-9223372036854775808,"f":1.5e300,"g":0.10000000149011612,"h":1.0,"nan":null,"n":null,"b":false,"a":[1,[]],"#,
            r#""x":{"$ext":-5,"b64":"AQID"},"7":"int key","\"AP8=\"":"bin key","null":"nil key","#,
            "\"\u{fffd}k\":\"v\u{fffd}\"}}\n"
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn garbage_is_an_error_with_a_position() {
        let mut chunk = encode(&[Value::Array(vec![
            Value::Array(vec![event_time(1, 0), map(&[])]),
            map(&[]),
        ])]);
        let good = chunk.len() as u64;
        chunk.extend_from_slice(b"not msgpack at all");
        let err = check_chunk(&chunk).unwrap_err();
        assert_eq!((err.index, err.offset), (1, good));
        let err = check_chunk(&encode(&[Value::from("x")])).unwrap_err();
        assert_eq!(err.to_string(), "event 0 at byte 0: event is not an array");
    }

    /// Declared sizes that lie, counts past the end, nesting past the limit: each is
    /// an error naming the event, never a panic or an allocation of the declared size.
    /// Found by the `router_chunk` fuzz target: 2,675 bytes whose map keys are maps
    /// nested about 70 deep. Each level's key is written as an escaped JSON string of
    /// the level inside, so rendering doubled per level and ran out of memory. The
    /// check now refuses the chunk (it goes to the dead letters) before any rendering.
    #[test]
    fn keys_nested_in_keys_are_refused_before_rendering() {
        const FUZZ_OOM: &[u8] = b"\
        \x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xec\x01\x2b\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\xa3\x73\
        \x65\x71\x00\xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\x72\x20\
        \x6c\x6f\x67\x69\x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x00\xa4\x6e\x61\x6d\x65\xa2\x75\x30\xa5\
        \x72\x6f\x6c\x65\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc3\xa5\x72\x61\x74\x69\x6f\xcb\x00\x00\x00\
        \x00\x00\x00\x00\x00\x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xec\x23\x16\xdf\x00\x00\x00\x00\xdf\x00\
        \x00\x00\x06\xa3\x73\x65\x71\x01\xa5\x6c\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\
        \x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\
        \x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\x81\
        \x81\x81\x81\x81\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\x72\x20\x6c\
        \x6f\x67\x69\x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x01\xa4\x6e\x61\x6d\x65\xa2\x75\x31\xa5\x72\
        \x6f\x6c\x65\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc2\xa5\x72\x61\x74\x69\x6f\xcb\x3f\xc2\x49\x24\
        \x92\x49\x24\x92\x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xec\x2f\x90\xdf\x00\x00\x00\x00\xdf\x00\x00\
        \x00\x06\xa3\x73\x65\x71\x02\xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\
        \x73\x65\x72\x20\x6c\x6f\x67\x69\x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x02\xa4\x6e\x61\x6d\x65\
        \xa2\x75\x32\xa5\x72\x6f\x6c\x65\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc3\xa5\x72\x61\x74\x69\x6f\
        \xcb\x3f\xd2\x49\x24\x92\x49\x24\x92\x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xec\x37\xc8\xdf\x00\x00\
        \x00\x00\xdf\x00\x00\x00\x06\xa3\x73\x65\x71\x03\xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\
        \x6d\x73\x67\xaa\x75\x73\x65\x72\x20\x6c\x6f\x67\x69\x6e\x92\x6b\x00\x92\xd6\x03\x9c\x9c\x9c\x9c\
        \x9c\x9c\x9c\x9c\x9c\x9c\x9c\x75\x72\x63\x65\xa5\x64\x75\x6d\x24\x24\x24\x24\x24\x24\x24\x24\x24\
        \x24\x24\x24\x00\x6b\x03\xd6\x1d\x35\x6a\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x01\x00\x07\xd0\
        \x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x93\x24\x24\x24\x24\x24\x24\x6b\xc2\xa5\x72\
        \x61\x74\x69\x6f\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xec\x5c\
        \xc0\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\xa3\x73\x65\x71\x08\xa5\x6c\x65\x76\x65\x6c\xa4\x69\
        \x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\x72\x20\x6c\x6f\x67\x69\x6e\xa4\x75\x73\x65\x72\x83\
        \xa2\x69\x64\x08\xa4\x6e\x61\x6d\x65\xa2\x75\x38\xa5\x72\x6f\x6c\x65\x73\x92\xa1\x61\xa1\x62\xa2\
        \x6f\x6b\xc3\xa5\x72\x61\x74\x69\x6f\xcb\x3f\xf2\x49\x24\x92\x49\x24\x92\x92\x92\xd7\x00\x6b\x03\
        \xd6\x31\x05\xec\x64\x10\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\xa3\x73\x65\x71\x09\xa5\x6c\x65\
        \x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\x72\x20\x6c\x6f\x67\x69\x6e\xa4\
        \x75\x73\x65\x72\x83\xa2\x69\x64\x09\xa4\x6e\x61\x6d\x65\xa2\x75\x39\xa5\x72\x6f\x6c\x65\x73\x92\
        \xa1\x61\xa1\x62\xa2\x6f\x6b\xc2\xa5\x72\x61\x74\x69\x6f\xcb\x3f\xf4\x92\x49\x24\x92\x49\x25\x92\
        \x92\xd7\x00\x6b\x03\xd6\x31\x05\xec\x6c\x0b\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\xa3\x73\x65\
        \x71\x0a\xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\x72\x20\x6c\
        \x6f\x67\x69\x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x0a\xa4\x6e\x61\x6d\x65\xa3\x75\x31\x30\xa5\
        \x72\x6f\x6c\x65\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\
        \xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\
        \xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\
        \xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\xe7\
        \xe7\xe7\xe7\xe7\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc3\xa5\x72\x61\x74\x69\x6f\xcb\x3f\xf6\xdb\
        \x6d\x62\xa2\x6f\x6b\xc2\xa5\x72\x61\x74\x69\x6f\xcb\x3f\xe6\xdb\x6d\xb6\xdb\x6d\xb7\x92\x92\xd7\
        \x00\x6b\x03\xd6\x31\x05\xec\x4d\x06\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\xa3\x73\x65\x71\x06\
        \xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\x72\x20\x6c\x6f\x67\
        \x69\x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x06\xa4\x6e\x61\x6d\x65\xa2\x75\x36\xa5\x72\x6f\x6c\
        \x65\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc3\xa5\x72\x61\x74\x69\x6f\xcb\x3f\xeb\x6d\xb6\xdb\x6d\
        \xb6\xdb\x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xec\x55\x1f\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\
        \xa3\x73\x65\x71\x07\xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\
        \x72\x20\x6c\x6f\x67\x69\x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x07\xa4\x6e\x61\x6d\x65\xa2\x75\
        \x37\xa5\x72\x6f\x6c\x65\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc2\xa5\x72\x61\x74\x69\x6f\xcb\x3f\
        \xf0\x00\x00\x00\x00\x00\x00\x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xec\x5c\xc0\xdf\x00\x00\x00\x00\
        \xdf\x00\x00\x00\x06\xa3\x73\x65\x71\x08\xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\
        \x67\xaa\x75\x73\x65\x72\x20\x6c\x6f\x67\x69\x6e\x34\x35\xa5\x72\x6f\x6c\x65\x73\x92\xa1\x61\xa1\
        \x62\xa2\x6f\x6b\xc2\xa5\x72\x61\x74\x69\x6f\xcb\x40\x19\xb6\xdb\x6d\xb6\xdb\x6e\x92\x92\xd7\x00\
        \x6b\x03\xd6\x31\x05\xed\x74\x3a\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\xa3\x73\x65\x71\x2e\x24\
        \x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\x24\
        \x24\x00\x00\x00\x00\x00\xa1\x62\xc3\xa3\x6e\x69\x6c\xc0\xa3\x61\x72\x72\x93\x01\xa3\x74\x77\x6f\
        \xcb\x40\x08\x00\x00\x00\x00\x00\x00\xa3\x6d\x61\x70\x81\xa1\x6b\xa1\x76\x92\x49\x24\x92\x92\x92\
        \xd7\x00\x6b\x03\xd6\x31\x05\xec\x45\xfb\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\xa3\x73\x65\x71\
        \x05\xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\x72\x20\x6c\x6f\
        \x67\x69\x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x05\xa4\x6e\x61\x6d\x65\xa2\x75\x35\xa5\x72\x6f\
        \x6c\x65\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc2\xa5\x72\x61\x74\x69\x6f\xcb\x3f\xe6\xdb\x6d\xb6\
        \xdb\x6d\xb7\x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xec\x4d\x06\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\
        \x06\xa3\x73\x65\x71\x06\xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\
        \x65\x72\x20\x6c\x6f\x67\x69\x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x06\xa4\x6e\x61\x6d\x65\xa2\
        \x75\x36\xa5\x72\x6f\x6c\x65\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc3\xa5\x72\x61\x74\x69\x6f\xcb\
        \x3f\xeb\x6d\xb6\xdb\x6d\xb6\xdb\x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xec\x55\x1f\xdf\x00\x00\x00\
        \x00\xdf\x00\x00\x00\x06\xa3\x73\x65\x71\x07\xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\
        \x73\x67\xaa\x75\x73\x65\x72\x20\x6c\x6f\x67\x69\x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x07\xa4\
        \x6e\x61\x6d\x65\xa2\x75\x37\xa5\x72\x6f\x6c\x65\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc2\xa5\x72\
        \x61\x74\x69\x6f\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xec\x5c\
        \xc0\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\xa3\x73\x65\x71\x08\xa5\x6c\x65\x76\x65\x6c\xa4\x69\
        \x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\x72\x20\x6c\x6f\x67\x69\x6e\xa4\x75\x73\x65\x72\x83\
        \xa2\x69\x64\x08\xa4\x6e\x61\x6d\x65\xa2\x75\x38\xa5\x72\x6f\x6c\x65\x73\x92\xa1\x61\xa1\x62\xa2\
        \x6f\x6b\xc3\xa5\x72\x61\x74\x69\x6f\xcb\x3f\xf2\x49\x24\x92\x49\x24\x92\x92\x92\xd7\x00\x6b\x03\
        \xd6\x31\x05\xec\x64\x10\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\xa3\x73\x65\x71\x09\xa5\x6c\x65\
        \x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\x72\x20\x6c\x6f\x67\x69\x6e\xa4\
        \x75\x73\x65\x72\x83\xa2\x69\x64\x09\xa4\x6e\x61\x6d\x65\xa2\x75\x39\xa5\x72\x6f\x6c\x65\x73\x92\
        \xa1\x61\xa1\x62\xa2\x6f\x6b\xc2\xa5\x72\x61\x74\x69\x6f\xcb\x3f\xf4\x92\x49\x24\x92\x49\x25\x92\
        \x92\xd7\x00\x6b\x03\xd6\x31\x05\xec\x6c\x0b\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\xa3\x73\x65\
        \x71\x0a\xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\x72\x20\x6c\
        \x6f\x67\x69\x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x0a\xa4\x6e\x61\x6d\x65\xa3\x75\x31\x30\xa5\
        \x72\x6f\x6c\x65\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc3\xa5\x72\x61\x74\x69\x6f\xcb\x3f\xf6\xdb\
        \x6d\x62\xa2\x6f\x6b\xc2\xa5\x72\x61\x74\x69\x6f\xcb\x3f\xe6\xdb\x6d\xb6\xdb\x6d\xb7\x92\x92\xd7\
        \x00\x6b\x03\xd6\x31\x05\xec\x4d\x06\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\xa3\x73\x65\x71\x06\
        \xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\x72\x20\x6c\x6f\x67\
        \x69\x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x06\xa4\x6e\x61\x6d\x65\xa2\x75\x36\xa5\x72\x6f\x6c\
        \x65\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc3\xa5\x72\x61\x74\x69\x6f\xcb\x3f\xeb\x6d\xb6\xdb\x6d\
        \xb6\xdb\x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xec\x55\x1f\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\
        \xa3\x73\x65\x71\x07\xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\
        \x72\x20\x6c\x6f\x67\x69\x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x07\xa4\x6e\x61\x6d\x65\xa2\x75\
        \x37\xa5\x72\x6f\x6c\x65\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc2\xa5\x72\x61\x74\x69\x6f\xcb\x3f\
        \xf0\x00\x00\x00\x00\x00\x00\x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xec\x5c\xc0\xdf\x00\x00\x00\x00\
        \xdf\x00\x00\x00\x06\xa3\x73\x65\x71\x08\xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\
        \x67\xaa\x75\x73\x65\x72\x20\x6c\x6f\x67\x69\x6e\x34\x35\xa5\x72\x6f\x6c\x65\x73\x92\xa1\x61\xa1\
        \x62\xa2\x6f\x6b\xc2\xa5\x72\x61\x74\x69\x6f\xcb\x40\x19\xb6\xdb\x6d\xb6\xdb\x6e\x92\x92\xd7\x00\
        \x6b\x03\xd6\x31\x05\xed\x74\x3a\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\xa3\x73\x65\x71\x2e\xa5\
        \x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\x72\x20\x6c\x6f\x67\x69\
        \x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x2e\xa4\x6e\x61\x6d\x65\xa3\x75\x34\x36\xa5\x72\x6f\x6c\
        \x65\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc3\xa5\x72\x61\x74\x69\x6f\xcb\x40\x1a\x49\x24\x92\x49\
        \x24\x92\x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xed\x7b\x1d\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\
        \xa3\x73\x65\x71\x2f\xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\
        \x72\x20\x6c\x6f\x67\x69\x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x2f\xa4\x6e\x61\x6d\x65\xa3\x75\
        \x34\x37\xa5\x72\x6f\x6c\x65\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc2\xa5\x72\x61\x74\x69\x6f\xcb\
        \x40\x1a\xdb\x6d\xb6\xdb\x6d\xb7\x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xed\x82\x64\xdf\x00\x00\x00\
        \x00\xdf\x00\x00\x00\x06\xa3\x73\x65\x71\x30\xa5\x6c\x65\x76\x65\x6c\xa4\x69\x6e\x66\x6f\xa3\x6d\
        \x73\x67\xaa\x75\x73\x65\x72\x20\x6c\x6f\x67\x69\x6e\xa4\x75\x73\x65\x72\x83\xa2\x69\x64\x30\xa4\
        \x6e\x61\x6d\x65\xa3\x75\x34\x38\xa5\x72\x6f\x6c\x65\x73\x92\xa1\x61\xa1\x62\xa2\x6f\x6b\xc3\xa5\
        \x72\x61\x74\x69\x6f\xcb\x40\x1b\x6d\xb6\xdb\x6d\xb6\xdb\x92\x92\xd7\x00\x6b\x03\xd6\x31\x05\xed\
        \x89\xc9\xdf\x00\x00\x00\x00\xdf\x00\x00\x00\x06\xa3\x73\x65\x71\x31\xa5\x6c\x65\x76\x65\x6c\xa4\
        \x69\x6e\x66\x6f\xa3\x6d\x73\x67\xaa\x75\x73\x65\x72\x20\x6c\x6f\x67\x69\x6e\xa4\x75\x73\x65\x72\
        \x83\xa2\x69\x64\x31\xa4\x6e\x61\x6d\x65\xa3\x75\x34\x39\xa5\x72\x6f\x6c\x65\x73\x92\xa1\x61\xa1\
        \x62\xa2\x6f\x6b\xc2\xa5\x72\x61\x74\x69\x6f\xcb\x40\x1c\x00\x00\x00\x00\x00\x6f\x67\xae\x70\x61\
        \x79\x6d\x65\x6e\x74\x20\x66\x61\x69\x6c\x65\x64\x92\x92\xd7\x00\xff\xff\xff\xfe\x00\x00\x00\x00\
        \xdf\x00\x00\x00\x00\x00\xdf\x00\x00\x00\x00\
    ";
        let err = check_chunk(FUZZ_OOM).unwrap_err();
        assert_eq!(err.index, 1);
        assert_eq!(
            err.reason,
            "map keys that are not strings nested more than 4 deep"
        );

        // {K: nil} where K is a map whose key is a map ... `levels` deep, then "a".
        let nested = |levels: usize| {
            let mut chunk = vec![0x92, 0x92, 0xd7, 0x00, 0, 0, 0, 1, 0, 0, 0, 0, 0x80];
            chunk.extend(std::iter::repeat_n(0x81, levels + 1));
            chunk.extend_from_slice(&[0xa1, b'a', 0xc0]);
            chunk.extend(std::iter::repeat_n(0xc0, levels));
            chunk
        };
        let origin = Origin {
            tag: "t",
            tenant: "x",
            agent: "a",
        };
        let mut out = Vec::new();
        assert_eq!(render(&nested(4), origin, &mut out).unwrap(), 1);
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        // Each level's key is the JSON text of the map inside it, down to "a".
        let mut map = line["record"].as_object().unwrap().clone();
        for _ in 0..4 {
            let (key, value) = map.iter().next().unwrap();
            assert_eq!(value, &serde_json::Value::Null);
            map = serde_json::from_str::<serde_json::Value>(key)
                .unwrap()
                .as_object()
                .unwrap()
                .clone();
        }
        assert_eq!(map.keys().collect::<Vec<_>>(), ["a"]);
        let err = check_chunk(&nested(5)).unwrap_err();
        assert_eq!(
            err.reason,
            "map keys that are not strings nested more than 4 deep"
        );
    }

    #[test]
    fn crafted_sizes_and_depths_are_refused() {
        let header = |rest: &[u8]| {
            // [[EventTime(1, 0), {}], <rest>]
            let mut chunk = vec![0x92, 0x92, 0xd7, 0x00, 0, 0, 0, 1, 0, 0, 0, 0, 0x80];
            chunk.extend_from_slice(rest);
            chunk
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                header(&[0x81, 0xdb, 0xff, 0xff, 0xff, 0xff]),
                "4294967295 byte(s) declared",
            ),
            (header(&[0xdf, 0xff, 0xff, 0xff, 0xff]), "0 left"),
            (
                header(&[0x81, 0xa1, b'k', 0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]),
                "0 left",
            ),
            (
                header(&[0x81, 0xa1, b'k', 0xc9, 0xff, 0xff, 0xff, 0xff, 0x01]),
                "declared",
            ),
            (header(&[0xc1]), "reserved byte 0xc1"),
            (header(&[0x90]), "event body is not a map"),
            (
                vec![0x92, 0x93, 0x01, 0x80, 0x80, 0x80],
                "event header has 3 elements",
            ),
            (vec![0x93, 0x01, 0x80, 0x80], "event array has 3 elements"),
            (
                vec![0x92, 0xa1, b'x', 0x80],
                "timestamp is not an EventTime, integer or float: a string",
            ),
            (
                vec![
                    0x92, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x80,
                ],
                "integer timestamp out of range",
            ),
        ];
        for (chunk, reason) in cases {
            let err = check_chunk(&chunk).unwrap_err();
            assert!(err.reason.contains(reason), "{:?}: {err}", chunk);
        }
        let mut deep = header(&[0x81, 0xa1, b'k']);
        deep.extend(std::iter::repeat_n(0x91, 300));
        deep.push(0xc0);
        let err = check_chunk(&deep).unwrap_err();
        assert_eq!(err.reason, "nested deeper than 256");
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(0, 5), "1970-01-01T00:00:00.000000005Z");
        let mut renderer = super::Renderer::default();
        let mut out = Vec::new();
        for (sec, nsec) in [
            (0, 5),
            (0, 999_999_999),
            (1_700_000_000, 0),
            (-1, 1),
            (i64::MAX, 0),
        ] {
            out.clear();
            renderer.write_time(&mut out, sec, nsec);
            assert_eq!(String::from_utf8(out.clone()).unwrap(), rfc3339(sec, nsec));
        }
    }
}
