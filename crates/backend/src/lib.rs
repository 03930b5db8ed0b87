//! The logferry backend, behind the `logferry` binary.
//!
//! - [`activity`]: per-agent silence and surge detection.
//! - [`tenants`]: the tenant registry (YAML), access keys and agent settings.
//! - [`auth`]: Ed25519-signed JWTs bound to access keys, and the revocation list.
//! - [`keys`]: tenants' payload decryption keys, for routers.
//! - [`live`]: the registry and revocation list, reloaded while running.
//! - [`pki`]: the development CA and server certificate, and server TLS.
//! - [`ingest`]: the gRPC `Ingest` service: authentication, dedup marks, durable append.
//! - [`router`]: one cursor per destination over the buffer; decodes chunks and
//!   delivers records exactly once through [`sinks`].
//! - [`serve`]: wires it all together for `logferry serve`.
//! - [`send`]: `logferry send`, a one-shot shipper on the agent core.
//! - [`fsutil`]: atomic file replacement and directory fsync.

pub mod activity;
pub mod auth;
pub mod chain;
pub mod deadletter;
pub mod fsutil;
pub mod ingest;
pub mod kafka;
pub mod keys;
pub mod limits;
pub mod live;
pub mod manifest;
pub mod metrics;
pub mod pki;
pub mod router;
pub mod send;
pub mod serve;
pub mod signing;
pub mod sinks;
pub mod tenants;
pub mod verify;

/// Makes ring rustls's crypto provider for the whole process. rustls is built with
/// both ring (ours) and aws-lc-rs (the S3 sink's HTTP client), and then has no default:
/// TLS configs built without an explicit provider (tonic's) would panic. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
