//! Whole spool entries into one `Batch` message: encode a `BatchPayload`, then
//! compress it. The batch carries the contiguous seq range it covers.

use bytes::Bytes;
use logferry_proto::v1::{Batch, BatchPayload, Chunk, Compression};
use logferry_spool::Entry;
use prost::Message;

/// zstd level used for batches: level 1 keeps one core ahead of the network.
pub const ZSTD_LEVEL: i32 = 1;

/// Builds a batch from entries with contiguous seqs. `entries` must not be empty.
pub fn build(entries: Vec<Entry>, compression: Compression) -> std::io::Result<Batch> {
    let first_seq = entries.first().map_or(0, |e| e.seq);
    let last_seq = entries.last().map_or(0, |e| e.seq);
    let chunk_count = entries.len() as u32;
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
    let payload = match compression {
        Compression::Zstd => zstd::bulk::compress(&raw, ZSTD_LEVEL)?,
        Compression::None => raw,
    };
    Ok(Batch {
        first_seq,
        last_seq,
        compression: compression as i32,
        key_id: 0,
        payload: Bytes::from(payload),
        raw_bytes,
        chunk_count,
    })
}

/// The inverse of [`build`], used by the backend's router. `max_raw_bytes` bounds
/// the decompressed size, so a hostile batch cannot balloon memory.
pub fn open(
    payload: &[u8],
    compression: Compression,
    max_raw_bytes: usize,
) -> Result<BatchPayload, String> {
    let raw;
    let bytes = match compression {
        Compression::Zstd => {
            raw = zstd::bulk::decompress(payload, max_raw_bytes)
                .map_err(|e| format!("zstd decompression failed: {e}"))?;
            &raw[..]
        }
        Compression::None => payload,
    };
    BatchPayload::decode(bytes).map_err(|e| format!("batch payload does not decode: {e}"))
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
        ];
        for compression in [Compression::Zstd, Compression::None] {
            let batch = build(entries.clone(), compression).unwrap();
            assert_eq!(
                (batch.first_seq, batch.last_seq, batch.chunk_count),
                (7, 8, 2)
            );
            let opened = open(&batch.payload, compression, 1 << 20).unwrap();
            assert_eq!(opened.chunks.len(), 2);
            assert_eq!(opened.chunks[1].seq, 8);
            assert_eq!(opened.chunks[1].tag, "b.c");
            assert_eq!(&opened.chunks[0].data[..], &[1, 2, 3]);
        }
        let batch = build(entries, Compression::Zstd).unwrap();
        assert!(
            open(&batch.payload, Compression::Zstd, 100)
                .unwrap_err()
                .contains("zstd")
        );
    }
}
