//! The stdout sink: every record as a JSON line on standard output (the seed's
//! `--print-events`). A terminal cannot be truncated, so after a crash the records
//! since the last checkpoint are printed again: at-least-once, by nature.

use std::io::Write;

use anyhow::{Context, Result};

use super::{Chunk, Sink};
use crate::router::Checkpoint;

#[derive(Debug, Default)]
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn kind(&self) -> &'static str {
        "stdout"
    }

    fn recover(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }

    fn write(&mut self, chunk: &Chunk<'_>) -> Result<()> {
        std::io::stdout()
            .lock()
            .write_all(chunk.data)
            .context("writing to stdout")
    }

    fn commit(&mut self, _cursor: &Checkpoint) -> Result<serde_json::Value> {
        std::io::stdout()
            .lock()
            .flush()
            .context("flushing stdout")?;
        Ok(serde_json::Value::Null)
    }
}
