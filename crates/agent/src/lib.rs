//! The logferry agent core, shared by the Fluent Bit plugin and `logferry send`.
//!
//! - [`config`]: the agent's settings, parsed from Fluent Bit-style properties.
//! - [`Agent`]: owns the spool and a sender runtime. `flush` only touches the local
//!   spool; the sender streams spooled chunks to the backend in batches.
//! - [`batch`]: whole chunks into a compressed, optionally sealed `Batch` message.
//! - [`seal`]: HPKE payload encryption, end to end from agent to router.
//! - [`transport`]: the gRPC channel over rustls, with our own certificate handling.
//! - [`sender`]: the stream loop: hello/welcome, a window of in-flight batches, acks,
//!   timeouts, jittered exponential backoff.

mod agent;
mod backoff;
pub mod batch;
pub mod config;
mod error;
mod metrics;
pub mod seal;
pub mod sender;
pub mod transport;

pub use agent::{Agent, AgentHooks, AgentStats, FlushOutcome, ShutdownReport};
pub use config::{ALIASES, AgentConfig, ConfigError, PROPERTIES, Property};
pub use error::{Error, Result};
pub use logferry_spool as spool;
