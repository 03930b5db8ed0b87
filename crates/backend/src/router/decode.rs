//! Fluent Bit chunks into output records.
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
//! strings are written as their JSON text.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat};
use rmpv::ValueRef as Value;
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq};

/// Deepest nesting accepted in one event (bounds the decoder's stack).
const MAX_DEPTH: usize = 256;

/// One decoded event. Strings and binaries borrow from the chunk: decoding allocates
/// only the arrays and maps.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    Record {
        sec: i64,
        nsec: u32,
        metadata: Value<'a>,
        body: Value<'a>,
    },
    GroupStart {
        metadata: Value<'a>,
        body: Value<'a>,
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

fn timestamp(value: &Value<'_>) -> Result<(i64, u32), String> {
    match value {
        &Value::Ext(0, data) if data.len() == 8 => {
            let sec = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            let nsec = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
            Ok((i64::from(sec), nsec))
        }
        Value::Integer(i) => i
            .as_i64()
            .map(|s| (s, 0))
            .ok_or_else(|| "integer timestamp out of range".to_string()),
        Value::F64(f) if f.is_finite() => Ok((f.floor() as i64, ((f - f.floor()) * 1e9) as u32)),
        Value::F32(f) if f.is_finite() => {
            let f = f64::from(*f);
            Ok((f.floor() as i64, ((f - f.floor()) * 1e9) as u32))
        }
        other => Err(format!(
            "timestamp is not an EventTime, integer or float: {other}"
        )),
    }
}

fn event(value: Value<'_>) -> Result<Event<'_>, String> {
    let Value::Array(mut parts) = value else {
        return Err("event is not an array".into());
    };
    if parts.len() != 2 {
        return Err(format!(
            "event array has {} elements, expected 2",
            parts.len()
        ));
    }
    let body = parts.pop().unwrap_or(Value::Nil);
    let header = parts.pop().unwrap_or(Value::Nil);
    let (ts, metadata) = match header {
        Value::Array(mut h) if h.len() == 2 => {
            let metadata = h.pop().unwrap_or(Value::Nil);
            let ts = h.pop().unwrap_or(Value::Nil);
            (ts, metadata)
        }
        Value::Array(h) => {
            return Err(format!("event header has {} elements, expected 2", h.len()));
        }
        ts => (ts, Value::Map(Vec::new())),
    };
    if !matches!(metadata, Value::Map(_)) {
        return Err("event metadata is not a map".into());
    }
    if !matches!(body, Value::Map(_)) {
        return Err("event body is not a map".into());
    }
    let (sec, nsec) = timestamp(&ts)?;
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

/// Decodes every event of a chunk, or says where it went wrong.
pub fn decode_chunk(data: &[u8]) -> Result<Vec<Event<'_>>, DecodeError> {
    let mut rest = data;
    let mut events = Vec::new();
    while !rest.is_empty() {
        let offset = (data.len() - rest.len()) as u64;
        let index = events.len();
        let fail = |reason: String| DecodeError {
            index,
            offset,
            reason,
        };
        let value = rmpv::decode::read_value_ref_with_max_depth(&mut rest, MAX_DEPTH)
            .map_err(|e| fail(format!("not msgpack: {e}")))?;
        events.push(event(value).map_err(fail)?);
    }
    Ok(events)
}

/// Serialises an rmpv value as JSON without building an intermediate tree.
pub struct Json<'v, 'a>(pub &'v Value<'a>);

impl Serialize for Json<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Nil => s.serialize_unit(),
            Value::Boolean(b) => s.serialize_bool(*b),
            Value::Integer(i) => match i.as_u64() {
                Some(u) => s.serialize_u64(u),
                None => s.serialize_i64(i.as_i64().unwrap_or_default()),
            },
            Value::F32(f) if f.is_finite() => s.serialize_f64(f64::from(*f)),
            Value::F64(f) if f.is_finite() => s.serialize_f64(*f),
            Value::F32(_) | Value::F64(_) => s.serialize_unit(),
            Value::String(text) => match text.as_str() {
                Some(text) => s.serialize_str(text),
                None => s.serialize_str(&String::from_utf8_lossy(&text.into_bytes())),
            },
            Value::Binary(bytes) => s.serialize_str(&BASE64.encode(bytes)),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Json(item))?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    match k {
                        Value::String(text) => match text.as_str() {
                            Some(key) => map.serialize_entry(key, &Json(v))?,
                            None => map.serialize_entry(
                                &String::from_utf8_lossy(&text.into_bytes()),
                                &Json(v),
                            )?,
                        },
                        other => {
                            let key = serde_json::to_string(&Json(other)).unwrap_or_default();
                            map.serialize_entry(&key, &Json(v))?;
                        }
                    }
                }
                map.end()
            }
            Value::Ext(kind, data) => {
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("$ext", kind)?;
                map.serialize_entry("b64", &BASE64.encode(data))?;
                map.end()
            }
        }
    }
}

/// RFC 3339 UTC with nanoseconds, e.g. `2026-11-23T06:00:00.620898015Z`.
pub fn rfc3339(sec: i64, nsec: u32) -> String {
    DateTime::from_timestamp(sec, nsec.min(999_999_999))
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Nanos, true))
        .unwrap_or_else(|| format!("{sec}.{nsec:09}"))
}

#[derive(Serialize)]
struct Group<'v, 'a> {
    metadata: Json<'v, 'a>,
    body: Json<'v, 'a>,
}

#[derive(Serialize)]
struct Output<'v, 'a> {
    time: String,
    tag: &'v str,
    tenant: &'v str,
    agent: &'v str,
    metadata: Json<'v, 'a>,
    record: Json<'v, 'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<Group<'v, 'a>>,
}

/// Who a chunk came from, for the output records.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub tag: &'a str,
    pub tenant: &'a str,
    pub agent: &'a str,
}

/// Appends one JSON line per record to `out`; returns how many records.
pub fn render(events: &[Event<'_>], origin: Origin<'_>, out: &mut Vec<u8>) -> usize {
    let mut group: Option<(&Value<'_>, &Value<'_>)> = None;
    let mut records = 0;
    for event in events {
        match event {
            Event::GroupStart { metadata, body } => group = Some((metadata, body)),
            Event::GroupEnd => group = None,
            Event::Record {
                sec,
                nsec,
                metadata,
                body,
            } => {
                let output = Output {
                    time: rfc3339(*sec, *nsec),
                    tag: origin.tag,
                    tenant: origin.tenant,
                    agent: origin.agent,
                    metadata: Json(metadata),
                    record: Json(body),
                    group: group.map(|(m, b)| Group {
                        metadata: Json(m),
                        body: Json(b),
                    }),
                };
                // Writing into a Vec cannot fail, and every value serialises.
                let _ = serde_json::to_writer(&mut *out, &output);
                out.push(b'\n');
                records += 1;
            }
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::{Origin, decode_chunk, render};
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
        let events = decode_chunk(&chunk).unwrap();
        assert_eq!(events.len(), 4);
        let mut out = Vec::new();
        let origin = Origin {
            tag: "t",
            tenant: "acme",
            agent: "00ff",
        };
        assert_eq!(render(&events, origin, &mut out), 2);
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

    #[test]
    fn garbage_is_an_error_with_a_position() {
        let mut chunk = encode(&[Value::Array(vec![
            Value::Array(vec![event_time(1, 0), map(&[])]),
            map(&[]),
        ])]);
        let good = chunk.len() as u64;
        chunk.extend_from_slice(b"not msgpack at all");
        let err = decode_chunk(&chunk).unwrap_err();
        assert_eq!((err.index, err.offset), (1, good));
        let err = decode_chunk(&encode(&[Value::from("x")])).unwrap_err();
        assert_eq!(err.to_string(), "event 0 at byte 0: event is not an array");
    }
}
