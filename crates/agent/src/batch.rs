//! Whole spool entries into one `Batch` message: encode a `BatchPayload`, compress
//! it, then seal it when the tenant encrypts. The batch carries the seq range it
//! covers.

use bytes::Bytes;
use logferry_proto::v1::{Batch, BatchPayload, Chunk, Compression};
use logferry_spool::Entry;
use prost::Message;

use crate::seal::{self, BatchContext, PublicKey};

/// What sealing a batch needs: the tenant's key and where the batch belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealer {
    pub tenant: String,
    pub agent_id: [u8; 16],
    pub key_id: u32,
    pub key: PublicKey,
}

/// zstd level used for batches: level 1 keeps one core ahead of the network.
pub const ZSTD_LEVEL: i32 = 1;

/// Builds a batch from entries in seq order, sealed when `sealer` is given.
/// `entries` must not be empty.
pub fn build(
    entries: Vec<Entry>,
    compression: Compression,
    sealer: Option<&Sealer>,
) -> std::io::Result<Batch> {
    let first_seq = entries.first().map_or(0, |e| e.seq);
    let last_seq = entries.last().map_or(0, |e| e.seq);
    let chunk_count = entries.len() as u32;
    let mut tags: Vec<String> = Vec::new();
    for entry in &entries {
        if !tags.contains(&entry.tag) {
            tags.push(entry.tag.clone());
        }
    }
    let payload = BatchPayload {
        chunks: entries
            .into_iter()
            .map(|e| Chunk {
                seq: e.seq,
                tag: e.tag,
                data: Bytes::from(e.data),
            })
            .collect(),
    };
    let raw = payload.encode_to_vec();
    let raw_bytes = raw.len() as u64;
    let mut payload = match compression {
        Compression::Zstd => zstd::bulk::compress(&raw, ZSTD_LEVEL)?,
        Compression::None => raw,
    };
    let mut key_id = 0;
    if let Some(sealer) = sealer {
        let context = BatchContext {
            tenant: &sealer.tenant,
            agent_id: sealer.agent_id,
            first_seq,
            last_seq,
            key_id: sealer.key_id,
            compression: compression as i32,
        };
        payload = seal::seal(&sealer.key, &context, &payload);
        key_id = sealer.key_id;
    }
    Ok(Batch {
        first_seq,
        last_seq,
        compression: compression as i32,
        key_id,
        payload: Bytes::from(payload),
        raw_bytes,
        chunk_count,
        tags,
        declared_lost: 0,
    })
}

/// How many seqs `batch` skips after `sent_to` (the last seq sent before it): the
/// seqs between the two and the gaps inside the batch. What an agent declares lost
/// in `Batch.declared_lost`, and what the backend counts.
pub fn skipped(batch: &Batch, sent_to: u64) -> u64 {
    let before = batch.first_seq.saturating_sub(sent_to.saturating_add(1));
    let span = batch
        .last_seq
        .saturating_sub(batch.first_seq)
        .saturating_add(1);
    before.saturating_add(span.saturating_sub(u64::from(batch.chunk_count)))
}

/// The inverse of [`build`], used by the backend's router. `max_raw_bytes` bounds
/// the decompressed size, so a hostile batch cannot balloon memory.
pub fn open(
    payload: &[u8],
    compression: Compression,
    max_raw_bytes: usize,
) -> Result<BatchPayload, String> {
    decode(&decompress(payload, compression, max_raw_bytes)?)
}

/// A batch's payload decompressed, refused once it would exceed `max_raw_bytes`.
pub fn decompress(
    payload: &[u8],
    compression: Compression,
    max_raw_bytes: usize,
) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    match compression {
        Compression::Zstd => zstd::bulk::decompress(payload, max_raw_bytes)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| format!("zstd decompression failed (limit {max_raw_bytes} bytes): {e}")),
        Compression::None if payload.len() > max_raw_bytes => Err(format!(
            "the payload holds {} bytes, over the limit of {max_raw_bytes}",
            payload.len()
        )),
        Compression::None => Ok(std::borrow::Cow::Borrowed(payload)),
    }
}

/// Decodes a decompressed payload.
pub fn decode(raw: &[u8]) -> Result<BatchPayload, String> {
    BatchPayload::decode(raw).map_err(|e| format!("batch payload does not decode: {e}"))
}

/// How many bytes a payload decompresses to, streamed through a fixed buffer: it
/// stops with an error as soon as the output passes `max_raw_bytes`, and never holds
/// the output. For checking a declared size without paying for it in memory.
pub fn raw_len(
    payload: &[u8],
    compression: Compression,
    max_raw_bytes: u64,
) -> Result<u64, String> {
    use std::io::Read;
    match compression {
        Compression::None => Ok(payload.len() as u64),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(payload)
                .map_err(|e| format!("zstd decompression failed: {e}"))?;
            let mut limited = decoder.take(max_raw_bytes.saturating_add(1));
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0u64;
            loop {
                match limited.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) => return Err(format!("zstd decompression failed: {e}")),
                }
            }
            if total > max_raw_bytes {
                return Err(format!("decompresses to more than {max_raw_bytes} bytes"));
            }
            Ok(total)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let entries = vec![
            Entry {
                seq: 7,
                tag: "a".into(),
                data: vec![1, 2, 3],
            },
            Entry {
                seq: 8,
                tag: "b.c".into(),
                data: vec![0; 10_000],
            },
            Entry {
                seq: 9,
                tag: "a".into(),
                data: vec![4],
            },
        ];
        for compression in [Compression::Zstd, Compression::None] {
            let batch = build(entries.clone(), compression, None).unwrap();
            assert_eq!(
                (batch.first_seq, batch.last_seq, batch.chunk_count),
                (7, 9, 3)
            );
            assert_eq!(
                batch.tags,
                ["a", "b.c"],
                "distinct, in order of first appearance"
            );
            let opened = open(&batch.payload, compression, 1 << 20).unwrap();
            assert_eq!(opened.chunks.len(), 3);
            assert_eq!(opened.chunks[1].seq, 8);
            assert_eq!(opened.chunks[1].tag, "b.c");
            assert_eq!(&opened.chunks[0].data[..], &[1, 2, 3]);
        }
        let batch = build(entries.clone(), Compression::Zstd, None).unwrap();
        assert!(
            open(&batch.payload, Compression::Zstd, 100)
                .unwrap_err()
                .contains("zstd")
        );

        let (private, public) = seal::generate();
        let sealer = Sealer {
            tenant: "acme".into(),
            agent_id: [1; 16],
            key_id: 9,
            key: public,
        };
        let batch = build(entries, Compression::Zstd, Some(&sealer)).unwrap();
        assert_eq!(batch.key_id, 9);
        assert_eq!(
            batch.tags,
            ["a", "b.c"],
            "tags stay in the clear when sealed"
        );
        let context = BatchContext {
            tenant: "acme",
            agent_id: [1; 16],
            first_seq: 7,
            last_seq: 9,
            key_id: 9,
            compression: Compression::Zstd as i32,
        };
        let plain = seal::open(&private, &context, &batch.payload).unwrap();
        let opened = open(&plain, Compression::Zstd, 1 << 20).unwrap();
        assert_eq!(opened.chunks[1].tag, "b.c");
    }
}
