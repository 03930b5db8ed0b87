//! Bytes as one message of an agent's ingest stream: prost decoding, then the checks
//! ingest makes on a batch (`check_batch`: shape, declared raw size against what an
//! unsealed payload decompresses to, duplicate, seq gap), against three stored marks.
//! A batch ingest accepts unsealed is then opened as the router opens it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logferry_backend::ingest::{BatchCheck, check_batch};
use logferry_backend::limits::{BatchLimits, DEFAULT_MAX_SEQ_GAP};
use logferry_backend::router::open_payload;
use logferry_fuzz::MAX_BATCH_BYTES;
use logferry_proto::v1::{AgentMessage, Compression, agent_message};
use prost::Message;

fuzz_target!(init: logferry_fuzz::seed_corpus(logferry_fuzz::ingest_seeds), |data: &[u8]| {
    let Ok(message) = AgentMessage::decode(data) else {
        return;
    };
    let Some(agent_message::Msg::Batch(batch)) = message.msg else {
        return;
    };
    let limits = BatchLimits {
        max_batch_bytes: MAX_BATCH_BYTES,
        max_seq_gap: DEFAULT_MAX_SEQ_GAP,
        ..BatchLimits::default()
    };
    let mut accepted = false;
    for stored in [0, batch.first_seq.saturating_sub(1), batch.last_seq] {
        match check_batch(&batch, &limits, [7; 16], stored) {
            Ok(BatchCheck::Duplicate) => assert!(batch.last_seq <= stored),
            Ok(BatchCheck::Store { skipped }) => {
                accepted = true;
                assert!(batch.first_seq >= 1 && batch.first_seq <= batch.last_seq);
                assert!(batch.last_seq > stored);
                let span = batch.last_seq - batch.first_seq + 1;
                assert!(batch.chunk_count >= 1 && u64::from(batch.chunk_count) <= span);
                assert!(batch.raw_bytes <= limits.max_batch_bytes);
                assert!(skipped <= limits.max_seq_gap || batch.declared_lost >= skipped);
                assert!(!batch.payload.is_empty());
            }
            Err((reason, message)) => assert!(!reason.is_empty() && !message.is_empty()),
        }
    }
    if !accepted || batch.key_id != 0 {
        return;
    }
    // Ingest checked that the payload decompresses to `raw_bytes`: the router, capped
    // at that size, gets exactly as many bytes.
    let compression = Compression::try_from(batch.compression).expect("validated");
    if batch.raw_bytes > 0 {
        let raw = logferry_agent::batch::decompress(
            &batch.payload,
            compression,
            batch.raw_bytes as usize,
        );
        match raw {
            Ok(raw) => assert_eq!(raw.len() as u64, batch.raw_bytes),
            Err(e) => panic!("ingest accepted {} raw bytes, the router cannot: {e}", batch.raw_bytes),
        }
    }
    let meta = logferry_buffer::RecordMeta {
        tenant: "fuzz".into(),
        access_key: "fuzz-key".into(),
        agent_id: [7; 16],
        first_seq: batch.first_seq,
        last_seq: batch.last_seq,
        key_id: 0,
        compression: batch.compression as u8,
        chunk_count: batch.chunk_count,
        raw_bytes: batch.raw_bytes,
        received_unix_ms: 0,
    };
    if let Ok(opened) = open_payload(&meta, compression, &batch.payload, limits.max_batch_bytes) {
        assert_eq!(opened.chunks.len(), batch.chunk_count as usize);
    }
});
