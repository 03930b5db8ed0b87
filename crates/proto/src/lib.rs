//! The logferry gRPC contract (`proto/logferry/v1/logferry.proto`).
//!
//! Generated at build time by tonic-prost-build; this crate only re-exports it and
//! names the metadata keys both sides use.

/// Generated messages and services of package `logferry.v1`.
pub mod v1 {
    tonic::include_proto!("logferry.v1");
}

/// Metadata key carrying the access key on every call.
pub const ACCESS_KEY_HEADER: &str = "x-logferry-access-key";
/// Metadata key carrying `Bearer <token>` on every call.
pub const AUTHORIZATION_HEADER: &str = "authorization";
/// The largest encoded message either side accepts (a batch of whole chunks).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
