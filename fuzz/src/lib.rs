//! Shared parts of the fuzz targets: the layouts that turn one fuzz input into the
//! files or messages a target needs, and the seed corpora, built from the real Fluent
//! Bit chunks at fuzz time.
//!
//! Seeding: when a target starts with a corpus directory (its first positional
//! argument that is a directory, as `cargo fuzz run` passes `fuzz/corpus/<target>`),
//! it writes its seeds there as `seed-*` files before libFuzzer reads the corpus.
//! The seeds come from a small chunk built here and, when `LOGFERRY_FUZZ_FIXTURES`
//! names a directory, from every `*.msgpack` chunk in it (the repository's tests use
//! `../shared/fixtures/fluent-bit-chunks`). Nothing from the fixtures is committed.

use std::path::{Path, PathBuf};

use logferry_agent::batch;
use logferry_proto::v1::{AgentMessage, Compression, agent_message};
use prost::Message;

/// Environment variable naming the directory of Fluent Bit chunks to seed from.
pub const FIXTURES_ENV: &str = "LOGFERRY_FUZZ_FIXTURES";

/// Bound on the raw size of one batch in the targets (`--max-batch-bytes`): large
/// enough for every fixture but the 14,740-record one, small enough to keep each run
/// fast.
pub const MAX_BATCH_BYTES: u64 = 1 << 20;

/// One Fluent Bit chunk to seed from.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// File stem, used in seed names.
    pub name: String,
    /// The tag the chunk is spooled under.
    pub tag: String,
    pub data: Vec<u8>,
}

/// A small chunk in Fluent Bit's format: a group start, one record with metadata and
/// a few value kinds, the group end, and a record in the legacy `[time, body]` form.
pub fn synthetic_chunk() -> Vec<u8> {
    let event_time = |sec: u32, nsec: u32| {
        let mut v = vec![0xd7, 0x00];
        v.extend_from_slice(&sec.to_be_bytes());
        v.extend_from_slice(&nsec.to_be_bytes());
        v
    };
    let mut out = Vec::new();
    // [[time(start marker), {}], {"resource": "r"}]
    out.extend_from_slice(&[0x92, 0x92]);
    out.extend(event_time(0xFFFF_FFFF, 0));
    out.push(0x80);
    out.extend_from_slice(&[0x81, 0xa8]);
    out.extend_from_slice(b"resource");
    out.extend_from_slice(&[0xa1, b'r']);
    // [[time, {"k": 1}], {"log": "hello", "n": -2, "f": 1.5, "b": bin, "a": [nil, true]}]
    out.extend_from_slice(&[0x92, 0x92]);
    out.extend(event_time(1_700_000_000, 123_456_789));
    out.extend_from_slice(&[0x81, 0xa1, b'k', 0x01]);
    out.extend_from_slice(&[0x85, 0xa3]);
    out.extend_from_slice(b"log");
    out.push(0xa5);
    out.extend_from_slice(b"hello");
    out.extend_from_slice(&[0xa1, b'n', 0xfe]);
    out.extend_from_slice(&[0xa1, b'f', 0xcb]);
    out.extend_from_slice(&1.5f64.to_be_bytes());
    out.extend_from_slice(&[0xa1, b'b', 0xc4, 0x03, 0x00, 0xff, 0x10]);
    out.extend_from_slice(&[0xa1, b'a', 0x92, 0xc0, 0xc3]);
    // [[time(end marker), {}], {}]
    out.extend_from_slice(&[0x92, 0x92]);
    out.extend(event_time(0xFFFF_FFFE, 0));
    out.extend_from_slice(&[0x80, 0x80]);
    // [1700000001, {"msg": "legacy"}]
    out.extend_from_slice(&[0x92, 0xce]);
    out.extend_from_slice(&1_700_000_001u32.to_be_bytes());
    out.extend_from_slice(&[0x81, 0xa3]);
    out.extend_from_slice(b"msg");
    out.push(0xa6);
    out.extend_from_slice(b"legacy");
    out
}

/// The synthetic chunk, plus every `*.msgpack` in `LOGFERRY_FUZZ_FIXTURES` (sorted).
pub fn fixtures() -> Vec<Fixture> {
    let mut all = vec![Fixture {
        name: "synthetic".into(),
        tag: "fuzz.synthetic".into(),
        data: synthetic_chunk(),
    }];
    let Some(dir) = std::env::var_os(FIXTURES_ENV) else {
        return all;
    };
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "msgpack"))
            .collect(),
        Err(e) => panic!("{FIXTURES_ENV}={}: {e}", Path::new(&dir).display()),
    };
    paths.sort();
    for path in paths {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        all.push(Fixture {
            tag: format!("fixture.{name}"),
            name,
            data,
        });
    }
    all
}

/// Writes `make(fixtures)` into the corpus directory this process was given, if any.
/// Called from a target's `init`, which libFuzzer runs before it reads the corpus.
pub fn seed_corpus(make: fn(&[Fixture]) -> Vec<(String, Vec<u8>)>) {
    let Some(dir) = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .find(|p| p.is_dir())
    else {
        return;
    };
    for (name, bytes) in make(&fixtures()) {
        let path = dir.join(format!("seed-{name}"));
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// A scratch directory for one run, under `TMPDIR` (point it at a tmpfs for speed).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("logferry-fuzz-")
        .tempdir()
        .expect("creating a scratch directory")
}

/// Batches of the fixtures as the agent builds them: each chunk alone (zstd and
/// none), and all the small ones together.
pub fn fixture_batches(fixtures: &[Fixture]) -> Vec<(String, logferry_proto::v1::Batch)> {
    let entry = |seq: u64, f: &Fixture| logferry_spool::Entry {
        seq,
        tag: f.tag.clone(),
        data: f.data.clone(),
    };
    let mut out = Vec::new();
    for f in fixtures {
        for (compression, label) in [(Compression::Zstd, "zstd"), (Compression::None, "none")] {
            if compression == Compression::None && f.data.len() as u64 > MAX_BATCH_BYTES {
                continue;
            }
            let batch = batch::build(vec![entry(1, f)], compression, None).expect("batch");
            out.push((format!("{}-{label}", f.name), batch));
        }
    }
    let small: Vec<_> = fixtures
        .iter()
        .filter(|f| f.data.len() < 64 << 10)
        .enumerate()
        .map(|(i, f)| entry(i as u64 + 7, f))
        .collect();
    if small.len() > 1 {
        let batch = batch::build(small, Compression::Zstd, None).expect("batch");
        out.push(("all-small-zstd".into(), batch));
    }
    out
}

/// Seeds of `ingest_batch`: stream messages (a hello, and the fixture batches).
pub fn ingest_seeds(fixtures: &[Fixture]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![(
        "hello".to_string(),
        AgentMessage {
            msg: Some(agent_message::Msg::Hello(logferry_proto::v1::Hello {
                agent_id: vec![7; 16],
                acked_seq: 3,
                ..Default::default()
            })),
        }
        .encode_to_vec(),
    )];
    for (name, batch) in fixture_batches(fixtures) {
        let message = AgentMessage {
            msg: Some(agent_message::Msg::Batch(batch)),
        };
        out.push((name, message.encode_to_vec()));
    }
    out
}

/// The input of `router_batch`: a stored batch's header fields, then its payload.
///
/// ```text
///  0  u8   compression (as stored in the buffer)
///  1  u32  chunk_count
///  5  u64  first_seq
/// 13  u64  last_seq
/// 21  u64  raw_bytes
/// 29  ..   payload
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch<'a> {
    pub compression: u8,
    pub chunk_count: u32,
    pub first_seq: u64,
    pub last_seq: u64,
    pub raw_bytes: u64,
    pub payload: &'a [u8],
}

impl<'a> StoredBatch<'a> {
    const HEADER: usize = 29;

    pub fn parse(data: &'a [u8]) -> Option<Self> {
        if data.len() < Self::HEADER {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap());
        Some(Self {
            compression: data[0],
            chunk_count: u32_at(1),
            first_seq: u64_at(5),
            last_seq: u64_at(13),
            raw_bytes: u64_at(21),
            payload: &data[Self::HEADER..],
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.compression];
        out.extend_from_slice(&self.chunk_count.to_le_bytes());
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.last_seq.to_le_bytes());
        out.extend_from_slice(&self.raw_bytes.to_le_bytes());
        out.extend_from_slice(self.payload);
        out
    }

    /// The buffer header the router reads this batch with.
    pub fn meta(&self) -> logferry_buffer::RecordMeta {
        logferry_buffer::RecordMeta {
            tenant: "fuzz".into(),
            access_key: "fuzz-key".into(),
            agent_id: [7; 16],
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            key_id: 0,
            compression: self.compression,
            chunk_count: self.chunk_count,
            raw_bytes: self.raw_bytes,
            received_unix_ms: 0,
        }
    }
}

/// Seeds of `router_batch`: the fixture batches as stored.
pub fn router_batch_seeds(fixtures: &[Fixture]) -> Vec<(String, Vec<u8>)> {
    fixture_batches(fixtures)
        .into_iter()
        .map(|(name, b)| {
            let stored = StoredBatch {
                compression: b.compression as u8,
                chunk_count: b.chunk_count,
                first_seq: b.first_seq,
                last_seq: b.last_seq,
                raw_bytes: b.raw_bytes,
                payload: &b.payload,
            };
            (name, stored.encode())
        })
        .collect()
}

/// Seeds of `router_chunk`: the chunks themselves.
pub fn chunk_seeds(fixtures: &[Fixture]) -> Vec<(String, Vec<u8>)> {
    fixtures
        .iter()
        .map(|f| (f.name.clone(), f.data.clone()))
        .collect()
}

/// The input of the recovery targets: flags, a number, a split point, then the bytes
/// of up to two segment files (`data[..split]` and `data[split..]`).
///
/// ```text
///  0  u8   flags: bit 0 write a second segment, bit 1 write the spool cursor,
///          bit 2 leave out spool.meta (spool only)
///  1  u64  the cursor's acked seq (spool only)
///  9  u32  split
/// 13  ..   data
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments<'a> {
    pub flags: u8,
    pub cursor: u64,
    pub first: &'a [u8],
    pub second: Option<&'a [u8]>,
}

pub const TWO_SEGMENTS: u8 = 1;
pub const WRITE_CURSOR: u8 = 2;
pub const NO_META: u8 = 4;

impl<'a> Segments<'a> {
    const HEADER: usize = 13;

    pub fn parse(data: &'a [u8]) -> Option<Self> {
        if data.len() < Self::HEADER {
            return None;
        }
        let flags = data[0];
        let cursor = u64::from_le_bytes(data[1..9].try_into().unwrap());
        let split = u32::from_le_bytes(data[9..13].try_into().unwrap()) as usize;
        let rest = &data[Self::HEADER..];
        let (first, second) = if flags & TWO_SEGMENTS != 0 {
            let split = split.min(rest.len());
            (&rest[..split], Some(&rest[split..]))
        } else {
            (rest, None)
        };
        Some(Self {
            flags,
            cursor,
            first,
            second,
        })
    }

    pub fn encode(flags: u8, cursor: u64, first: &[u8], second: Option<&[u8]>) -> Vec<u8> {
        let flags = if second.is_some() {
            flags | TWO_SEGMENTS
        } else {
            flags & !TWO_SEGMENTS
        };
        let mut out = vec![flags];
        out.extend_from_slice(&cursor.to_le_bytes());
        out.extend_from_slice(&(first.len() as u32).to_le_bytes());
        out.extend_from_slice(first);
        out.extend_from_slice(second.unwrap_or_default());
        out
    }
}

/// The segment files in `dir` with `extension`, sorted by name (= by first seq or
/// offset).
pub fn segment_files(dir: &Path, extension: &str) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("listing")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("reading a segment"))
        .collect()
}

/// Seeds of `spool_recovery`: real segments, written by appending the fixtures.
pub fn spool_seeds(fixtures: &[Fixture]) -> Vec<(String, Vec<u8>)> {
    use logferry_spool::{Spool, SpoolConfig};
    let mut out = Vec::new();
    for f in fixtures {
        let dir = scratch();
        let config = SpoolConfig {
            sync: false,
            ..SpoolConfig::new(dir.path().join("spool"))
        };
        let (spool, _) = Spool::open(config).expect("spool");
        spool.append(&f.tag, &f.data).expect("append");
        spool.append("fuzz.after", b"\x92\x01\x80").expect("append");
        drop(spool);
        let segments = segment_files(&dir.path().join("spool"), "seg");
        out.push((
            f.name.clone(),
            Segments::encode(WRITE_CURSOR, 1, &segments[0], None),
        ));
    }
    // Two segments: small entries with a segment size that rolls after a few.
    let dir = scratch();
    let config = SpoolConfig {
        sync: false,
        segment_bytes: 1024,
        ..SpoolConfig::new(dir.path().join("spool"))
    };
    let (spool, _) = Spool::open(config).expect("spool");
    let small = fixtures.iter().filter(|f| f.data.len() < 400);
    for (i, f) in small.cycle().take(8).enumerate() {
        let mut data = f.data.clone();
        data.push(i as u8); // not a duplicate of an earlier entry
        spool.append(&f.tag, &data).expect("append");
    }
    drop(spool);
    let segments = segment_files(&dir.path().join("spool"), "seg");
    if segments.len() >= 2 {
        out.push((
            "two-segments".into(),
            Segments::encode(0, 0, &segments[0], Some(&segments[1])),
        ));
    }
    out
}

/// Seeds of `buffer_recovery`: real segments, written by appending the fixture
/// batches.
pub fn buffer_seeds(fixtures: &[Fixture]) -> Vec<(String, Vec<u8>)> {
    use logferry_buffer::{EmbeddedLog, LogConfig};
    let meta = |b: &logferry_proto::v1::Batch| logferry_buffer::RecordMeta {
        tenant: "fuzz".into(),
        access_key: "fuzz-key".into(),
        agent_id: [7; 16],
        first_seq: b.first_seq,
        last_seq: b.last_seq,
        key_id: 0,
        compression: b.compression as u8,
        chunk_count: b.chunk_count,
        raw_bytes: b.raw_bytes,
        received_unix_ms: 1_700_000_000_000,
    };
    let batches = fixture_batches(fixtures);
    let mut out = Vec::new();
    for (name, b) in &batches {
        let dir = scratch();
        let config = LogConfig {
            sync: false,
            ..LogConfig::new(dir.path().join("buffer"))
        };
        let (log, _) = EmbeddedLog::open(config).expect("buffer");
        log.append(&meta(b), &b.payload).expect("append");
        log.append(&meta(b), b"second").expect("append");
        drop(log);
        let segments = segment_files(&dir.path().join("buffer"), "log");
        out.push((name.clone(), Segments::encode(0, 0, &segments[0], None)));
    }
    // Two segments: the smallest segment size, and small batches to fill them.
    let dir = scratch();
    let config = LogConfig {
        sync: false,
        segment_bytes: 4 << 10,
        max_bytes: 1 << 20,
        ..LogConfig::new(dir.path().join("buffer"))
    };
    let (log, _) = EmbeddedLog::open(config).expect("buffer");
    let small = batches.iter().filter(|(_, b)| b.payload.len() < 1500);
    for (_, b) in small.cycle().take(12) {
        log.append(&meta(b), &b.payload).expect("append");
    }
    drop(log);
    let segments = segment_files(&dir.path().join("buffer"), "log");
    if segments.len() >= 2 {
        out.push((
            "two-segments".into(),
            Segments::encode(0, 0, &segments[0], Some(&segments[1])),
        ));
    }
    out
}

/// The modes of the `token` target, chosen by the input's first byte.
pub mod token_mode {
    /// The rest is a token string, verified as presented.
    pub const RAW: u8 = 0;
    /// The rest is the claims JSON, signed with the target's key.
    pub const SIGNED_CLAIMS: u8 = 1;
    /// The rest is a header JSON, a newline, and the claims JSON, signed with the
    /// target's key (its `kid` replaces `{kid}` in the header).
    pub const SIGNED_HEADER: u8 = 2;
}

/// Seeds of `token`. `valid_claims` are claims the target's verifier accepts.
pub fn token_seeds(_: &[Fixture]) -> Vec<(String, Vec<u8>)> {
    let claims = r#"{"iss":"logferry","sub":"fuzz-key","tenant":"fuzz","iat":1700000000,"exp":4000000000,"jti":"00112233445566778899aabbccddeeff"}"#;
    let header = r#"{"typ":"JWT","alg":"EdDSA","kid":"{kid}"}"#;
    // A token signed by another key: the shape of a real one.
    let foreign = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFZERTQSIsImtpZCI6IjAxMjM0NTY3ODlhYmNkZWYifQ.\
                   eyJpc3MiOiJsb2dmZXJyeSIsInN1YiI6ImZ1enota2V5IiwidGVuYW50IjoiZnV6eiIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MDAwMDAwMDAwLCJqdGkiOiIwMCJ9.\
                   AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let with = |mode: u8, rest: &str| {
        let mut v = vec![mode];
        v.extend_from_slice(rest.as_bytes());
        v
    };
    vec![
        ("raw".into(), with(token_mode::RAW, foreign)),
        ("claims".into(), with(token_mode::SIGNED_CLAIMS, claims)),
        (
            "header".into(),
            with(token_mode::SIGNED_HEADER, &format!("{header}\n{claims}")),
        ),
    ]
}
