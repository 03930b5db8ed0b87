//! Group commit: one `fdatasync` for every append written since the last one.
//!
//! Appends are written under the spool's write lock; syncing happens outside it. The
//! state here is `durable`, the highest seq known to be on stable storage (a
//! generation counter that only grows). An appender waiting for seq `s`:
//! - returns at once if `durable >= s` (a completed sync already covered it);
//! - otherwise, if no sync is running, becomes the leader: it notes the last seq
//!   written so far, syncs the active segment without holding any lock, then raises
//!   `durable` to that seq and wakes everyone;
//! - otherwise waits for the running sync and checks again.
//!
//! While a leader syncs, more appends are written; the next leader covers all of them
//! with one sync. A failed sync is sticky: on Linux the kernel may have dropped the
//! dirty pages, so a later "successful" fsync proves nothing. Every waiter and every
//! later append gets the error until the spool is reopened.

use std::{
    io,
    sync::{
        Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{Error, Result};

#[derive(Debug)]
struct State {
    durable: u64,
    syncing: bool,
    failure: Option<String>,
}

#[derive(Debug)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
    /// Mirror of `state.durable` for lock-free readers.
    durable: AtomicU64,
}

impl GroupCommit {
    pub fn new(durable: u64) -> Self {
        Self {
            state: Mutex::new(State {
                durable,
                syncing: false,
                failure: None,
            }),
            done: Condvar::new(),
            durable: AtomicU64::new(durable),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Highest seq on stable storage.
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Records that everything up to `seq` is durable (a segment synced on roll).
    pub fn mark_durable(&self, seq: u64) {
        let mut state = self.lock();
        if seq > state.durable {
            state.durable = seq;
            self.durable.store(seq, Ordering::Release);
            self.done.notify_all();
        }
    }

    /// Returns once `seq` is durable. `sync` is called by the leader: it makes every
    /// entry written so far durable and returns the highest seq it covered.
    pub fn wait_durable(&self, seq: u64, sync: impl Fn() -> io::Result<u64>) -> Result<()> {
        let mut state = self.lock();
        loop {
            if state.durable >= seq {
                return Ok(());
            }
            if let Some(failure) = &state.failure {
                return Err(Error::Poisoned(failure.clone()));
            }
            if state.syncing {
                state = self
                    .done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.syncing = true;
            drop(state);
            let result = sync();
            state = self.lock();
            state.syncing = false;
            match result {
                Ok(covered) => {
                    if covered > state.durable {
                        state.durable = covered;
                        self.durable.store(covered, Ordering::Release);
                    }
                }
                Err(e) => state.failure = Some(format!("fdatasync failed: {e}")),
            }
            self.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Barrier},
        thread,
    };

    use super::*;

    #[test]
    fn covered_seq_returns_without_syncing() {
        let gc = GroupCommit::new(5);
        gc.wait_durable(5, || panic!("no sync needed")).unwrap();
        gc.mark_durable(7);
        gc.wait_durable(6, || panic!("no sync needed")).unwrap();
        assert_eq!(gc.durable(), 7);
    }

    #[test]
    fn leader_covers_followers() {
        let gc = Arc::new(GroupCommit::new(0));
        let syncs = Arc::new(AtomicU64::new(0));
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (1..=8u64)
            .map(|seq| {
                let (gc, syncs, barrier) = (gc.clone(), syncs.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    gc.wait_durable(seq, || {
                        syncs.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(std::time::Duration::from_millis(20));
                        Ok(8)
                    })
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        assert_eq!(gc.durable(), 8);
        assert!(syncs.load(Ordering::SeqCst) < 8);
    }

    #[test]
    fn failed_sync_is_sticky() {
        let gc = GroupCommit::new(0);
        let err = gc
            .wait_durable(1, || Err(io::Error::other("eio")))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "spool refuses appends after an earlier failure (fdatasync failed: eio); reopen it"
        );
        let err = gc.wait_durable(1, || Ok(1)).unwrap_err();
        assert!(matches!(err, Error::Poisoned(_)));
        assert_eq!(gc.durable(), 0);
    }
}
