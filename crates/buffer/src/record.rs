//! What one record holds: one agent batch.

/// Routing metadata stored in front of every payload. The buffer never interprets it beyond
/// storing and returning it exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RecordMeta {
    /// Tenant the batch belongs to (at most 65535 bytes).
    pub tenant: String,
    /// Access key the agent presented (at most 65535 bytes).
    pub access_key: String,
    /// The agent's 128-bit id.
    pub agent_id: [u8; 16],
    /// First spool sequence number in the batch.
    pub first_seq: u64,
    /// Last spool sequence number in the batch (inclusive).
    pub last_seq: u64,
    /// Id of the tenant key the payload is sealed to.
    pub key_id: u32,
    /// Compression of the payload, as the protocol numbers it.
    pub compression: u8,
    /// Fluent Bit chunks in the batch.
    pub chunk_count: u32,
    /// Uncompressed size of the batch.
    pub raw_bytes: u64,
    /// When the backend received the batch (Unix milliseconds).
    pub received_unix_ms: u64,
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's index in the log: 0, 1, 2, ... never reused.
    pub offset: u64,
    pub meta: RecordMeta,
    /// The opaque payload, byte for byte as appended.
    pub payload: Vec<u8>,
}
