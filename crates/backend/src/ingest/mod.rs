//! The gRPC ingest path: authenticate, deduplicate by (tenant, agent, seq), append
//! durably to the buffer, then ack.

mod auth;
pub mod conn;
mod limit;
mod marks;
mod service;

pub use auth::{Authenticator, Session, status_for};
pub use limit::Limiter;
pub use marks::{AgentKey, ClaimError, Marks};
pub use service::{BatchCheck, IngestService, Refusal, Storage, Watchers, check_batch};
