//! `logferry-buffer`: the backend's embedded durable buffer.
//!
//! A segmented append-only log on local disk. Ingest appends one record per agent batch (a
//! header of routing metadata plus the still-encrypted payload) and acknowledges the agent once
//! [`EmbeddedLog::append`] returns: the record is then fsynced. Routers read from their own
//! offsets, wait on [`EmbeddedLog::subscribe`] for more, and call [`EmbeddedLog::release`] with
//! the lowest offset any destination still needs. Whole segments below it are deleted. At its
//! size cap the log answers [`Error::Full`]; it never drops a record.
//!
//! Map of the crate:
//!
//! - [`config`]: [`LogConfig`] and its defaults.
//! - [`format`](mod@format): the on-disk format, and what recovery does with a torn tail.
//! - [`log`]: [`EmbeddedLog`]: open, append, release, stats.
//! - `read`: reading records and headers back.
//! - `commit`: group commit (leader/follower fsync generations).
//! - [`recovery`]: scanning segments on open; [`RecoveryReport`].
//! - `segment`: segment files and the in-memory offset index.
//! - `io`: the write path's file calls, behind a trait for fault injection in tests.
//! - [`record`], [`stats`], [`error`]: the types in the API.

mod commit;
pub mod config;

pub mod error;
#[cfg(test)]
mod fault_tests;
pub mod format;
mod io;
pub mod log;
mod read;
pub mod record;
pub mod recovery;
mod segment;
pub mod stats;

pub use config::LogConfig;
pub use error::{Error, Result};
pub use log::EmbeddedLog;
pub use record::{Record, RecordMeta};
pub use recovery::{Damage, RecoveryReport, TornTail};
pub use stats::LogStats;
