//! Destinations the router delivers to.
//!
//! A sink appends rendered JSON lines and, on `commit`, makes them durable and
//! returns its state for the destination's checkpoint. After a crash the router
//! calls `recover` with the state of the last checkpoint: the sink drops anything
//! written after it, and the router re-delivers from the checkpoint's cursor. That
//! pair is what makes each sink exactly-once.

mod file;
mod fileset;
mod stdout;

pub use file::FileSink;
pub use fileset::FileSet;
pub use stdout::StdoutSink;

/// One destination's output.
pub trait Sink: Send {
    /// The kind, for logs (`file`, `stdout`).
    fn kind(&self) -> &'static str;
    /// Restores the state of the last checkpoint (`Null` on first start), dropping
    /// whatever was written after it.
    fn recover(&mut self, state: &serde_json::Value) -> anyhow::Result<()>;
    /// Appends JSON lines of one tenant's access key.
    fn write(&mut self, tenant: &str, access_key: &str, lines: &[u8]) -> anyhow::Result<()>;
    /// Makes everything written durable; returns the state to checkpoint.
    fn commit(&mut self) -> anyhow::Result<serde_json::Value>;
}
