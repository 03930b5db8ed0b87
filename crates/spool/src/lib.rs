//! The agent's durable on-disk spool: one entry per Fluent Bit chunk.
//!
//! The plugin's flush calls [`Spool::append`] and answers `FLB_OK` only once it
//! returns (the entry is fsynced, group-committed with concurrent appends) or
//! `FLB_RETRY` on [`Error::Full`]. The sender reads entries in seq order with
//! [`Spool::read_from`], ships them and calls [`Spool::ack`] once the backend has
//! stored them; segments whose entries are all acked are deleted.
//!
//! A spool directory holds:
//! - `LOCK`: held with an exclusive file lock while a [`Spool`] is open;
//! - `spool.meta`: the agent id (format in `meta.rs`);
//! - `cursor`: the acked seq (format in `meta.rs`);
//! - `<first_seq>.seg`: segments of entries (format in `format.rs`);
//! - `dedup.hashes`: content hashes of deleted entries (format in `dedup.rs`).
//!
//! Modules:
//! - `config`: [`SpoolConfig`] and its validation.
//! - `error`: [`Error`] and [`Result`].
//! - `format`: the segment and entry layout, encode and decode.
//! - `meta`: `spool.meta` and `cursor`.
//! - `dedup`: the window of recent content hashes and `dedup.hashes`.
//! - `segment`: one segment file and the index of its entries.
//! - `commit`: group commit (one fdatasync for many appends).
//! - `recovery`: scanning on open, torn tails, [`RecoveryReport`].
//! - `retire`: deleting wholly acked segments.
//! - `spool`: [`Spool`] itself.
//! - `stats`: [`SpoolStats`].
//! - `io`: file-system helpers and the seam tests inject faults through.

mod commit;
mod config;
mod dedup;
mod error;
mod format;
mod io;
mod meta;
mod recovery;
mod retire;
mod segment;
mod spool;
mod stats;

#[cfg(test)]
mod faults;

pub use config::SpoolConfig;
pub use error::{Error, Result};
pub use format::{ENTRY_OVERHEAD, SEGMENT_HEADER_LEN};
pub use recovery::{DamageReport, RecoveryReport};
pub use spool::{Appended, Entry, Spool};
pub use stats::SpoolStats;
