//! The chunks the benchmarks send: real Fluent Bit chunks from the shared fixtures,
//! made unique per flush so the spool's dedup window never skips one.

use anyhow::{Context, Result, bail, ensure};

/// The 2.2 MB chunk of 14,740 `tail` records.
pub const LARGE: &str = "tail-large-14740-records";
/// Small chunks, for the fixed cost of one flush.
pub const SMALL: &[&str] = &["tail-json-parsed", "tail-raw-lines"];

/// Every chunk starts with its first event, `[[EventTime, metadata], body]`:
/// `92 92 d7 00 <seconds: u32 BE> <nanoseconds: u32 BE>`.
const FIRST_EVENT: [u8; 4] = [0x92, 0x92, 0xd7, 0x00];
/// Where the first event's nanoseconds sit.
const NANOS: std::ops::Range<usize> = 8..12;

/// One fixture chunk, ready to flush.
#[derive(Debug, Clone)]
pub struct BenchChunk {
    pub name: String,
    pub tag: String,
    pub bytes: Vec<u8>,
    /// Records (not group markers) in the chunk.
    pub records: u64,
}

impl BenchChunk {
    /// Loads fixture `name` from [`logferry_e2e::fixtures`].
    pub fn load(name: &str) -> Result<Self> {
        let Some(fixture) = logferry_e2e::fixtures()
            .into_iter()
            .find(|fixture| fixture.name == name)
        else {
            bail!(
                "no fixture `{name}` in {}",
                logferry_e2e::fixtures_dir().display()
            );
        };
        ensure!(
            fixture.chunk.len() >= NANOS.end && fixture.chunk[..4] == FIRST_EVENT,
            "fixture `{name}` does not start with a Fluent Bit v2 event"
        );
        let expected = std::fs::read_to_string(&fixture.expected_jsonl)
            .with_context(|| format!("reading {}", fixture.expected_jsonl.display()))?;
        let records = expected
            .lines()
            .filter(|line| line.contains("\"kind\": \"record\""))
            .count() as u64;
        Ok(Self {
            name: fixture.name,
            tag: fixture.tag,
            bytes: fixture.chunk,
            records,
        })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Makes the chunk differ from every other stamp `n` (below 10⁹) by writing `n`
    /// into the first event's nanoseconds. The chunk stays valid msgpack of the same
    /// size; only that one timestamp changes.
    pub fn stamp(&mut self, n: u64) {
        let nanos = (n % 1_000_000_000) as u32;
        self.bytes[NANOS].copy_from_slice(&nanos.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_changes_only_the_first_nanoseconds() {
        let mut chunk = BenchChunk {
            name: "x".into(),
            tag: "t".into(),
            bytes: vec![0x92, 0x92, 0xd7, 0x00, 1, 2, 3, 4, 0, 0, 0, 0, 0xc0],
            records: 1,
        };
        chunk.stamp(0x0102_0304);
        assert_eq!(
            chunk.bytes,
            [0x92, 0x92, 0xd7, 0x00, 1, 2, 3, 4, 1, 2, 3, 4, 0xc0]
        );
    }
}
