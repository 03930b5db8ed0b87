//! Finding the batch that crashes the router: `<data-dir>/router/<destination>.step.json`
//! and `<data-dir>/router/crashed`.
//!
//! Before each step of the embedded buffer the destination writes which buffer
//! offsets the step covers, and removes the marker when the step ends, whether it
//! delivered or failed. A marker that survives the process therefore names the step
//! that was running when it stopped. How it stopped is in `router/crashed`: signal
//! handlers for `SIGABRT` (an allocation failure, a stack overflow, an abort),
//! `SIGSEGV`, `SIGBUS`, `SIGILL` and `SIGFPE` append a line to it as the process dies
//! (one `write`, async-signal-safe, to a descriptor opened at start). `SIGKILL`
//! (`kill -9`, and the kernel's OOM killer) and power loss leave no line: such a stop
//! is never held against a batch, so killing a healthy backend sets nothing aside.
//!
//! At the next start after a crash, each destination whose marker names its
//! checkpoint's offset steps one batch at a time through the offsets the marker
//! covered, and a batch in progress, alone in its step, at [`CRASHES`] crashes in a
//! row is dead-lettered whole, unopened, so delivery goes on. A panic needs none of
//! this: the router catches it and dead-letters the batch at once. A crash loop under
//! the OOM killer is not caught; memory per batch is bounded by `--max-batch-bytes`
//! so that it does not happen.
//!
//! Marker format (JSON, version 1; fields are never renamed or reused):
//! `{"version": 1, "from": u64, "to": u64, "stops": u32}`: the step covers offsets
//! `[from, to)`, and `stops` is how many crashes in a row were in a step starting at
//! `from`. Markers are replaced by rename and not fsynced: a process that crashes
//! leaves its writes in the page cache, and after a power loss a missing or stale
//! marker only means no batch is suspected. `crashed` holds one line `crash` per
//! crash; it is emptied at start.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use tracing::warn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    version: u32,
    from: u64,
    to: u64,
    stops: u32,
}

/// How many crashes in a row, with a batch in progress alone, set the batch aside.
pub const CRASHES: u32 = 2;

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
    /// [`CRASHES`] crashes in a row, alone in its step at the last.
    pub fn condemns(&self, from: u64, to: u64) -> bool {
        self.stops >= CRASHES && self.from == from && self.to == to
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

    /// The step the last run crashed in, if it crashed (`crashed`) in one that
    /// started at `next_offset` (the checkpoint's cursor).
    pub fn load(&self, destination: &str, next_offset: u64, crashed: bool) -> Option<Suspect> {
        let text = std::fs::read(&self.path).ok()?;
        if !crashed {
            // Killed or powered off mid-step: nothing to hold against the batch.
            self.finish();
            return None;
        }
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
            "the last run crashed while delivering buffer offsets {}..{} ({stops} crash(es) in \
             a row there); delivering them one batch at a time",
            marker.from,
            marker.to
        );
        Some(Suspect {
            from: marker.from,
            to: marker.to,
            stops,
        })
    }

    /// Records that the step has ended (delivered or failed).
    pub fn finish(&self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!("removing `{}`: {e}", self.path.display()),
        }
    }

    /// Records that a step over `[from, to)` starts, after `stops` crashes in a row
    /// in steps from `from`. A failure to write only costs the detection: it is
    /// logged.
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

/// Whether the last run of this data directory crashed (see the module docs); set
/// by [`watch_crashes`].
static LAST_RUN_CRASHED: AtomicBool = AtomicBool::new(false);
/// The descriptor of `router/crashed`, for the signal handlers.
static CRASH_FD: AtomicI32 = AtomicI32::new(-1);
/// The actions the handlers replaced, per signal, to run after ours.
static PREVIOUS: [AtomicUsize; 5] = [const { AtomicUsize::new(0) }; 5];
const SIGNALS: [libc::c_int; 5] = [
    libc::SIGABRT,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
];

/// Whether the last run crashed, as [`watch_crashes`] found.
pub fn last_run_crashed() -> bool {
    LAST_RUN_CRASHED.load(Ordering::Acquire)
}

/// Reads and empties `<router_dir>/crashed`, then installs the handlers that write
/// to it when this process crashes. Call once, before destinations open.
pub fn watch_crashes(router_dir: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek};
    use std::os::fd::IntoRawFd;
    std::fs::create_dir_all(router_dir)?;
    let path = router_dir.join("crashed");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let crashed = text.lines().any(|line| line == "crash");
    if crashed {
        warn!(
            "the last run crashed (`{}`); its batches in progress are suspected",
            path.display()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    LAST_RUN_CRASHED.store(crashed, Ordering::Release);
    let fd = file.into_raw_fd();
    let old = CRASH_FD.swap(fd, Ordering::AcqRel);
    if old >= 0 {
        // SAFETY: `old` is the descriptor an earlier call leaked for the handlers;
        // nothing else uses it now that the new one is in place.
        unsafe { libc::close(old) };
        return Ok(crashed);
    }
    for (signal, previous) in SIGNALS.iter().zip(&PREVIOUS) {
        // SAFETY: `sigaction` reads the new action and writes the old one into
        // structs we own; the handler only calls async-signal-safe functions.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_crash as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(*signal, &action, &mut old) == 0 {
                previous.store(Box::into_raw(Box::new(old)) as usize, Ordering::Release);
            }
        }
    }
    Ok(crashed)
}

/// Appends `crash` to `router/crashed`, then hands the signal to the action it
/// replaced (std's stack-overflow report for `SIGSEGV`), or to the default action.
extern "C" fn on_crash(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let fd = CRASH_FD.load(Ordering::Acquire);
    if fd >= 0 {
        let line = b"crash\n";
        // SAFETY: `write` is async-signal-safe; the buffer is a static byte string.
        unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
    }
    let index = SIGNALS.iter().position(|s| *s == signal);
    let previous = index.map_or(0, |i| PREVIOUS[i].load(Ordering::Acquire));
    // SAFETY: `previous` is null or the `sigaction` stored by `watch_crashes`, never
    // freed. Restoring it and returning re-runs the fault (or the abort) under it; a
    // handler of its own is called as the kernel would have called it.
    unsafe {
        if previous == 0 {
            libc::signal(signal, libc::SIG_DFL);
            return;
        }
        let old = &*(previous as *const libc::sigaction);
        libc::sigaction(signal, old, std::ptr::null_mut());
        let handler = old.sa_sigaction;
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            if handler == libc::SIG_IGN {
                libc::signal(signal, libc::SIG_DFL);
            }
            return;
        }
        if old.sa_flags & libc::SA_SIGINFO != 0 {
            let call: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            call(signal, info, context);
        } else {
            let call: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            call(signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_condemned_after_two_crashes_alone_and_kills_count_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let marker = StepMarker::new(dir.path().join("router").join("d.step.json"));
        assert_eq!(marker.load("d", 0, true), None, "no marker");
        marker.start(10, 20, 0);
        assert_eq!(
            marker.load("d", 12, true),
            None,
            "a completed step is stale"
        );
        assert_eq!(
            marker.load("d", 10, false),
            None,
            "a kill is held against nothing"
        );
        assert!(!dir.path().join("router").join("d.step.json").exists());
        marker.start(10, 20, 0);
        let first = marker.load("d", 10, true).unwrap();
        assert_eq!(
            first,
            Suspect {
                from: 10,
                to: 20,
                stops: 1
            }
        );
        assert!(first.covers(19) && !first.covers(20));
        assert!(!first.condemns(10, 11), "one crash condemns nothing");
        // The one-batch step that follows crashes again: that batch is condemned.
        marker.start(10, 11, first.stops);
        let second = marker.load("d", 10, true).unwrap();
        assert_eq!(second.stops, 2);
        assert!(second.condemns(10, 11));
        assert!(!second.condemns(11, 12));
        assert!(
            !Suspect {
                from: 10,
                to: 20,
                stops: 2
            }
            .condemns(10, 11),
            "not alone"
        );
        marker.finish();
        assert_eq!(
            marker.load("d", 10, true),
            None,
            "a finished step is no suspect"
        );
        std::fs::create_dir_all(dir.path().join("router")).unwrap();
        std::fs::write(dir.path().join("router").join("d.step.json"), b"{not json").unwrap();
        assert_eq!(
            marker.load("d", 10, true),
            None,
            "a damaged marker suspects nothing"
        );
    }
}
