//! The live instances of this loaded library: the plugin's only global.
//!
//! Per-instance state lives behind Fluent Bit's `remote_context` pointer, and
//! `FLBPluginFlushCtx`/`FLBPluginExitCtx` receive it. This registry exists only for the
//! context-free fallbacks `FLBPluginFlush`/`FLBPluginExit`, which Fluent Bit calls when
//! a plugin lacks the `Ctx` exports (ours has them, so Fluent Bit never does): with
//! exactly one live instance they go to it, otherwise they fail. It also numbers
//! instances (`logferry.0`, `logferry.1`, ... in init order).
//!
//! The statics live in the loaded library: a `dlclose` that really unmaps it and a new
//! `dlopen` start from an empty registry and number 0.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::instance::Instance;

struct Live {
    next_id: u64,
    instances: Vec<Arc<Instance>>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    next_id: 0,
    instances: Vec::new(),
});

fn live() -> MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The name of the next instance: `logferry.N`.
pub(crate) fn next_name() -> String {
    let mut live = live();
    let id = live.next_id;
    live.next_id += 1;
    format!("logferry.{id}")
}

pub(crate) fn insert(instance: Arc<Instance>) {
    live().instances.push(instance);
}

pub(crate) fn remove(instance: &Arc<Instance>) {
    live().instances.retain(|live| !Arc::ptr_eq(live, instance));
}

/// The only live instance, or how many there are when that is not exactly one.
pub(crate) fn single() -> Result<Arc<Instance>, Vec<Arc<Instance>>> {
    let live = live();
    match live.instances.as_slice() {
        [only] => Ok(only.clone()),
        many => Err(many.to_vec()),
    }
}
