//! Finding the batch that stops the router: `<data-dir>/router/<destination>.step.json`.
//!
//! Before each step of the embedded buffer the destination writes which buffer
//! offsets the step covers. A step that completes moves the checkpoint past them, so
//! the marker is stale from then on. If the marker still names the checkpoint's
//! offset at the next start, the process stopped during that step: a crash the
//! router could not catch (out of memory, an abort, a stack overflow), or a
//! `kill -9`. The destination then steps one batch at a time through the offsets the
//! marker covered, and a batch in progress at [`STOPS`] stops in a row, alone in its
//! step at the last of them, is dead-lettered whole, unopened, so delivery goes on.
//! Three, not two: two quick `kill -9`s of a healthy backend (a restart loop, an
//! impatient operator) would otherwise land on the first batch after a restart and
//! set a good batch aside. (A panic needs none of this: the router catches it and
//! dead-letters the batch at once.)
//!
//! Format (JSON, version 1; fields are never renamed or reused):
//! `{"version": 1, "from": u64, "to": u64, "stops": u32}`: the step covers offsets
//! `[from, to)`, and `stops` is how many stops in a row were in a step starting at
//! `from`. The file is replaced by rename and not fsynced: a process that crashes
//! leaves its writes in the page cache, and after a power loss a missing or stale
//! marker only means no batch is suspected.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tracing::warn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    version: u32,
    from: u64,
    to: u64,
    stops: u32,
}

/// How many stops in a row, with a batch in progress, set the batch aside.
pub const STOPS: u32 = 3;

/// Buffer offsets `[from, to)` a step was delivering when the process stopped,
/// `stops` times in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suspect {
    pub from: u64,
    pub to: u64,
    pub stops: u32,
}

impl Suspect {
    /// Whether `offset` lies in the offsets it covers.
    pub fn covers(&self, offset: u64) -> bool {
        (self.from..self.to).contains(&offset)
    }

    /// Whether the one-batch step `[from, to)` is the batch that was in progress at
    /// [`STOPS`] stops in a row, alone in its step at the last.
    pub fn condemns(&self, from: u64, to: u64) -> bool {
        self.stops >= STOPS && self.from == from && self.to == to
    }
}

/// Where a destination records the step in progress.
#[derive(Debug)]
pub struct StepMarker {
    path: PathBuf,
}

impl StepMarker {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The step the last run stopped in, if it stopped in one that started at
    /// `next_offset` (the checkpoint's cursor).
    pub fn load(&self, destination: &str, next_offset: u64) -> Option<Suspect> {
        let text = std::fs::read(&self.path).ok()?;
        let marker: Marker = match serde_json::from_slice(&text) {
            Ok(marker) => marker,
            Err(e) => {
                warn!(destination, "ignoring `{}`: {e}", self.path.display());
                return None;
            }
        };
        if marker.version != 1 || marker.from != next_offset || marker.to <= marker.from {
            return None;
        }
        let stops = marker.stops.saturating_add(1);
        warn!(
            destination,
            "the last run stopped while delivering buffer offsets {}..{} ({stops} stop(s) in a \
             row there); delivering them one batch at a time",
            marker.from,
            marker.to
        );
        Some(Suspect {
            from: marker.from,
            to: marker.to,
            stops,
        })
    }

    /// Records that a step over `[from, to)` starts, after `stops` stops in a row in
    /// steps from `from`. A failure to write only costs the detection: it is logged.
    pub fn start(&self, from: u64, to: u64, stops: u32) {
        let marker = Marker {
            version: 1,
            from,
            to,
            stops,
        };
        let tmp = self.path.with_extension("json.tmp");
        let written = serde_json::to_vec(&marker)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&tmp, json)
            })
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            warn!("writing `{}`: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_condemned_after_three_stops_the_last_alone() {
        let dir = tempfile::tempdir().unwrap();
        let marker = StepMarker::new(dir.path().join("router").join("d.step.json"));
        assert_eq!(marker.load("d", 0), None, "no marker");
        marker.start(10, 20, 0);
        assert_eq!(marker.load("d", 12), None, "a completed step is stale");
        let first = marker.load("d", 10).unwrap();
        assert_eq!(
            first,
            Suspect {
                from: 10,
                to: 20,
                stops: 1
            }
        );
        assert!(first.covers(19) && !first.covers(20));
        assert!(!first.condemns(10, 11), "one stop condemns nothing");
        // The one-batch steps that follow stop twice more: that batch is condemned.
        marker.start(10, 11, first.stops);
        let second = marker.load("d", 10).unwrap();
        assert_eq!(second.stops, 2);
        assert!(
            !second.condemns(10, 11),
            "two quick kill -9s condemn nothing"
        );
        marker.start(10, 11, second.stops);
        let third = marker.load("d", 10).unwrap();
        assert_eq!(third.stops, 3);
        assert!(third.condemns(10, 11));
        assert!(!third.condemns(11, 12));
        assert!(
            !Suspect {
                from: 10,
                to: 20,
                stops: 3
            }
            .condemns(10, 11),
            "not alone"
        );
        std::fs::write(dir.path().join("router").join("d.step.json"), b"{not json").unwrap();
        assert_eq!(
            marker.load("d", 10),
            None,
            "a damaged marker suspects nothing"
        );
    }
}
