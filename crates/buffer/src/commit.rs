//! Group commit: many appenders, one fsync.
//!
//! Appenders write their record under the write lock, publish the new written end here, drop
//! the write lock and call [`Commit::wait_durable`]. Each fsync is a *generation*, named by the
//! written end it covers. If no generation is running, the caller becomes its leader: it takes
//! the current written end as the target, fsyncs the active segment with no lock held, then
//! publishes the target as durable and wakes everyone. Callers whose record lies below the
//! target return; the rest elect the next leader, whose generation covers every record written
//! meanwhile. So a burst of N appenders costs about two fsyncs, not N.
//!
//! Records in older segments were fsynced when their segment was sealed, so syncing the active
//! file covers everything below the target.
//!
//! A failed fsync leaves the page cache in an unknown state (the kernel may have dropped the
//! dirty pages), so the log stops: every later append fails until the process reopens the log
//! and recovery re-reads what is really on disk.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::io::FileIo;

/// The file that holds the newest records, shared with the leader that syncs it.
#[derive(Debug, Clone)]
pub(crate) struct ActiveFile {
    pub file: Arc<File>,
    pub path: Arc<Path>,
}

#[derive(Debug)]
struct State {
    /// Every record below this is written (not necessarily synced).
    written: u64,
    active: ActiveFile,
    /// Every record below this is durable.
    durable: u64,
    /// A leader is fsyncing.
    leading: bool,
    /// Set forever by a failed fsync.
    failed: Option<Failure>,
}

#[derive(Debug, Clone)]
struct Failure {
    context: String,
    kind: std::io::ErrorKind,
    message: String,
}

impl Failure {
    fn new(context: String, error: &std::io::Error) -> Self {
        tracing::error!(%context, %error, "buffer stopped accepting writes");
        Failure {
            context: format!("{context} (buffer stopped; restart to recover)"),
            kind: error.kind(),
            message: error.to_string(),
        }
    }

    fn to_error(&self) -> Error {
        Error::Io {
            context: self.context.clone(),
            source: std::io::Error::new(self.kind, self.message.clone()),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Commit {
    state: Mutex<State>,
    cond: Condvar,
    durable: AtomicU64,
    fsyncs: AtomicU64,
    watch: watch::Sender<u64>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding our locks; if something did, the state is still whole.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Commit {
    /// Starts with everything below `end` durable (recovery synced it).
    pub fn new(end: u64, active: ActiveFile) -> Self {
        Commit {
            state: Mutex::new(State {
                written: end,
                active,
                durable: end,
                leading: false,
                failed: None,
            }),
            cond: Condvar::new(),
            durable: AtomicU64::new(end),
            fsyncs: AtomicU64::new(0),
            watch: watch::Sender::new(end),
        }
    }

    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.watch.subscribe()
    }

    /// Counts an fsync done outside a generation (sealing a segment).
    pub fn count_fsync(&self) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// The error every write returns once an fsync failed.
    pub fn check(&self) -> Result<()> {
        match &lock(&self.state).failed {
            Some(failure) => Err(failure.to_error()),
            None => Ok(()),
        }
    }

    /// Stops the log for good: `context` and `error` are what every later write reports.
    pub fn fail(&self, context: String, error: &std::io::Error) {
        let mut state = lock(&self.state);
        if state.failed.is_none() {
            state.failed = Some(Failure::new(context, error));
        }
        self.cond.notify_all();
    }

    /// Records that everything below `written` is in `active` or in already-synced segments.
    /// Called under the write lock, so `written` only grows and `active` is the newest file.
    pub fn publish_written(&self, written: u64, active: Option<ActiveFile>) {
        let mut state = lock(&self.state);
        state.written = state.written.max(written);
        if let Some(active) = active {
            state.active = active;
        }
    }

    /// Without fsync: everything written counts as durable at once.
    pub fn mark_durable(&self, end: u64) {
        let mut state = lock(&self.state);
        self.advance(&mut state, end);
    }

    fn advance(&self, state: &mut State, end: u64) {
        if end > state.durable {
            state.durable = end;
            self.durable.store(end, Ordering::Release);
            self.watch.send_replace(end);
        }
    }

    /// Returns once every record below `end` is durable, leading an fsync generation if none
    /// is running.
    pub fn wait_durable(&self, end: u64, io: &dyn FileIo) -> Result<()> {
        let mut state = lock(&self.state);
        loop {
            if state.durable >= end {
                return Ok(());
            }
            if let Some(failure) = &state.failed {
                return Err(failure.to_error());
            }
            if state.leading {
                state = self.cond.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.leading = true;
            let target = state.written;
            let active = state.active.clone();
            drop(state);

            let synced = io.sync_data(&active.file);
            self.fsyncs.fetch_add(1, Ordering::Relaxed);

            state = lock(&self.state);
            state.leading = false;
            match synced {
                Ok(()) => self.advance(&mut state, target),
                Err(error) => {
                    if state.failed.is_none() {
                        let context = format!("fsync {}", active.path.display());
                        state.failed = Some(Failure::new(context, &error));
                    }
                }
            }
            self.cond.notify_all();
        }
    }
}
