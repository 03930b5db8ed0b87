//! Bytes as a batch stored in the buffer (header fields, then the payload): what the
//! router does after unsealing (`open_payload`: raw size cap, decompression capped at
//! the declared size, protobuf decoding, each chunk's seq against the header's range),
//! then the chunk decoder's check on every chunk it delivers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logferry_backend::router::decode::check_chunk;
use logferry_backend::router::open_payload;
use logferry_fuzz::{MAX_BATCH_BYTES, StoredBatch};
use logferry_proto::v1::Compression;

fuzz_target!(init: logferry_fuzz::seed_corpus(logferry_fuzz::router_batch_seeds), |data: &[u8]| {
    let Some(stored) = StoredBatch::parse(data) else {
        return;
    };
    let meta = stored.meta();
    let Ok(compression) = Compression::try_from(i32::from(meta.compression)) else {
        return;
    };
    let Ok(opened) = open_payload(&meta, compression, stored.payload, MAX_BATCH_BYTES) else {
        return;
    };
    // What the router then relies on: chunks inside the range, ascending, and as many
    // as the header says (0: a replayed batch that keeps only its range).
    assert!(!opened.chunks.is_empty());
    if meta.chunk_count != 0 {
        assert_eq!(opened.chunks.len(), meta.chunk_count as usize);
        assert_eq!(opened.chunks[0].seq, meta.first_seq);
        assert_eq!(opened.chunks[opened.chunks.len() - 1].seq, meta.last_seq);
    }
    let mut previous = None;
    for chunk in &opened.chunks {
        assert!(chunk.seq >= meta.first_seq && chunk.seq <= meta.last_seq);
        assert!(previous.is_none_or(|p| chunk.seq > p));
        previous = Some(chunk.seq);
        let _ = check_chunk(&chunk.data);
    }
});
