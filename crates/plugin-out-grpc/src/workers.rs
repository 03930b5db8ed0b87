//! Telling the operator that `Workers` on this output crashes Fluent Bit on hot reload.
//!
//! Fluent Bit (5.1.1 and its main branch as of this writing) starts the worker pool of
//! an external output twice: `flb_proxy_output_cb_init` (`src/flb_plugin_proxy.c`)
//! calls `flb_output_enable_multi_threading` right after `FLBPluginInit`, and
//! `flb_output_init_all` (`src/flb_output.c`) calls it again. The second call replaces
//! the instance's pool pointer, so only the second pool gets flushes and is stopped at
//! exit. The first is never stopped; after a hot reload its threads use memory Fluent
//! Bit has freed, and Fluent Bit crashes.
//!
//! The plugin cannot read `workers`: `flb_output_set_property` keeps it in the
//! instance's `tp_workers` field, not in the property list `output_get_property`
//! reads, so the property reads as unset. What it can see is the thread: Fluent Bit runs
//! `FLBPluginInit` on its engine thread, and without workers every flush too (in a
//! coroutine of the engine's event loop). With workers, flushes run on the pool's
//! threads. The first flush on a thread other than the init thread is therefore the
//! sign of `Workers`, and the instance warns then, once ([`WorkerCheck`]).
//!
//! Whether hot reload is on, Fluent Bit says in `FLBPluginOutputPreRun`, after every
//! init and before the pipeline runs ([`set_hot_reload`]). A host that never calls it
//! leaves it unknown, and the warning says so.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread::{self, ThreadId};

/// What the last `FLBPluginOutputPreRun` said: the host's `enable_hot_reload` is one
/// value for the whole process, and the ABI passes it without an instance.
static HOT_RELOAD: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

/// Records Fluent Bit's `enable_hot_reload`, from `FLBPluginOutputPreRun`.
pub(crate) fn set_hot_reload(enabled: bool) {
    HOT_RELOAD.store(if enabled { ON } else { OFF }, Ordering::Relaxed);
}

/// Whether Fluent Bit has hot reload on; `None` when it has not said.
fn hot_reload() -> Option<bool> {
    match HOT_RELOAD.load(Ordering::Relaxed) {
        ON => Some(true),
        OFF => Some(false),
        _ => None,
    }
}

/// Watches the threads an instance's flushes arrive on. Created on the init thread.
#[derive(Debug)]
pub(crate) struct WorkerCheck {
    init_thread: ThreadId,
    warned: AtomicBool,
}

impl WorkerCheck {
    /// A check for an instance being initialised on the calling thread.
    pub(crate) fn on_init_thread() -> Self {
        Self {
            init_thread: thread::current().id(),
            warned: AtomicBool::new(false),
        }
    }

    /// The warning to log, the first time a flush arrives on a thread other than the
    /// init thread; `None` otherwise.
    pub(crate) fn on_flush(&self) -> Option<String> {
        if self.warned.load(Ordering::Relaxed) || thread::current().id() == self.init_thread {
            return None;
        }
        if self.warned.swap(true, Ordering::Relaxed) {
            return None;
        }
        Some(warning(hot_reload()))
    }
}

/// The warning, for what the host said about hot reload.
pub(crate) fn warning(hot_reload: Option<bool>) -> String {
    let state = match hot_reload {
        Some(true) => "Hot reload is on in this Fluent Bit.",
        Some(false) => "Hot reload is off in this Fluent Bit for now.",
        None => "The plugin cannot tell whether hot reload is on.",
    };
    format!(
        "flushes arrive on a Fluent Bit worker thread, so this output has `Workers` set. \
         Fluent Bit (5.1.1 and other releases with this defect) starts a second worker pool \
         for an external output and orphans the first, whose threads use freed memory after \
         a hot reload: Fluent Bit crashes on hot reload (SIGHUP, /api/v2/reload, a config \
         change on Kubernetes). {state} Remove `Workers` from this logferry output, or never \
         hot-reload."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_on_the_init_thread_are_not_workers() {
        let check = WorkerCheck::on_init_thread();
        assert_eq!(check.on_flush(), None);
        assert_eq!(check.on_flush(), None);
    }

    #[test]
    fn the_first_flush_on_another_thread_warns_once() {
        let check = WorkerCheck::on_init_thread();
        let warnings: Vec<Option<String>> = thread::scope(|scope| {
            let workers: Vec<_> = (0..4).map(|_| scope.spawn(|| check.on_flush())).collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(warnings.iter().flatten().count(), 1, "{warnings:?}");
        let again = thread::scope(|scope| scope.spawn(|| check.on_flush()).join().unwrap());
        assert_eq!(again, None);
    }

    #[test]
    fn the_warning_names_cause_consequence_advice_and_what_is_known() {
        let on = warning(Some(true));
        assert!(on.contains("starts a second worker pool"), "{on}");
        assert!(on.contains("Fluent Bit crashes on hot reload"), "{on}");
        assert!(
            on.contains(" Hot reload is on in this Fluent Bit. "),
            "{on}"
        );
        assert!(
            on.ends_with("Remove `Workers` from this logferry output, or never hot-reload."),
            "{on}"
        );
        assert!(warning(Some(false)).contains(" Hot reload is off in this Fluent Bit for now. "));
        assert!(warning(None).contains(" The plugin cannot tell whether hot reload is on. "));
    }
}
