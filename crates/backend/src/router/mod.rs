//! The router: one cursor per destination over the buffer.
//!
//! Each destination runs on its own task with its own checkpoint, so a failing
//! destination retries with backoff and never holds another back. The buffer
//! releases a segment only once every destination has checkpointed past it.

mod checkpoint;
pub mod decode;
mod destination;
pub mod stopped;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use logferry_buffer::EmbeddedLog;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use checkpoint::Checkpoint;
pub use destination::{Destination, Format, Replay, Route, STEP_BYTES, open_payload};

use crate::ingest::Marks;

/// Running destinations and the segment-release loop.
#[derive(Debug)]
pub struct Router {
    tasks: Vec<JoinHandle<()>>,
}

impl Router {
    /// Starts every destination. They stop after their current step once
    /// `shutdown` turns true.
    pub fn start(
        destinations: Vec<Destination>,
        log: Arc<EmbeddedLog>,
        marks: Arc<Marks>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut tasks = Vec::new();
        let mut progress = Vec::new();
        for destination in destinations {
            let done = Arc::new(AtomicU64::new(destination.next_offset()));
            progress.push(done.clone());
            tasks.push(tokio::spawn(destination::run(
                destination,
                log.clone(),
                done,
                shutdown.clone(),
            )));
        }
        tasks.push(tokio::spawn(release_loop(log, marks, progress, shutdown)));
        Self { tasks }
    }

    /// Waits for every destination to finish its current step.
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Deletes buffer segments every destination is done with. Dedup marks are made
/// durable first, because the records they were rebuilt from go away.
async fn release_loop(
    log: Arc<EmbeddedLog>,
    marks: Arc<Marks>,
    progress: Vec<Arc<AtomicU64>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut released = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
        let Some(low) = progress.iter().map(|p| p.load(Ordering::Acquire)).min() else {
            continue;
        };
        if low <= released {
            continue;
        }
        let (log, marks) = (log.clone(), marks.clone());
        let result = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            marks.persist()?;
            Ok(log.release(low)?)
        })
        .await;
        match result {
            Ok(Ok(segments)) => {
                released = low;
                if segments > 0 {
                    info!("released {segments} buffer segment(s) below offset {low}");
                }
            }
            Ok(Err(e)) => warn!("releasing buffer segments: {e:#}"),
            Err(e) => warn!("releasing buffer segments: {e}"),
        }
    }
}
