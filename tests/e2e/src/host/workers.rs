//! Output workers as Fluent Bit 5.1.1 runs them for an external output with `Workers N`.
//!
//! Fluent Bit starts the pool twice. The proxy's init callback (`flb_proxy_output_cb_init`
//! in `src/flb_plugin_proxy.c`) starts one right after `FLBPluginInit` returns, then
//! `flb_output_init_all` (`src/flb_output.c`) starts another and overwrites the
//! instance's pool pointer with it; both go through `flb_output_enable_multi_threading`.
//! Only the second pool ([`WorkerPool`]) gets flushes, round robin; at exit Fluent Bit
//! stops and joins it, then calls the exit callback. The first ([`OrphanedPool`]) is
//! never stopped: its threads idle on across exit, `dlclose` and the next load, until
//! the process ends. In Fluent Bit they then use the freed instance and crash it on a
//! hot reload; here they touch nothing, so what the tests see is whether the plugin
//! relies on them in any way.
//!
//! [`start_output`] runs that sequence for one instance; the test then starts the
//! second pool inside a [`std::thread::scope`], since its threads borrow the instance.
//! Threads are named as Fluent Bit names them, `flb-out-<instance>-w<N>`, which Linux
//! cuts to 15 bytes (`flb-out-logferr`).

use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle, Scope, ScopedJoinHandle, ThreadId};

use super::instance::{InitError, Instance};
use super::library::Host;

/// `FLBPluginInit` on the calling thread (Fluent Bit's engine thread), then the first
/// worker pool, started and never stopped. Returns both; the caller starts the second
/// pool ([`WorkerPool::start`]) and then runs [`Host::pre_run`].
pub fn start_output<'h, K: AsRef<str>, V: AsRef<str>>(
    host: &'h Host,
    properties: &[(K, V)],
    workers: usize,
) -> Result<(Instance<'h>, OrphanedPool), InitError> {
    let instance = host.init(properties)?;
    let orphaned = OrphanedPool::start(instance.name().unwrap_or("logferry"), workers);
    Ok((instance, orphaned))
}

/// The name Fluent Bit gives worker `n` of `instance`, as the kernel keeps it.
fn thread_name(instance: &str, n: usize) -> String {
    let mut name = format!("flb-out-{instance}-w{n}");
    name.truncate(15);
    name
}

/// One flush handed to a worker.
struct Job {
    tag: String,
    chunk: Arc<[u8]>,
    answer: mpsc::Sender<c_int>,
}

/// The pool `flb_output_init_all` starts, the one that gets the flushes. Its threads
/// borrow the instance, so it lives inside a [`std::thread::scope`]; dropping it (or
/// [`stop`](Self::stop)) ends and joins them, as Fluent Bit does before the exit
/// callback.
pub struct WorkerPool<'scope> {
    workers: Vec<(mpsc::Sender<Job>, ScopedJoinHandle<'scope, ()>)>,
    next: AtomicUsize,
}

impl<'scope> WorkerPool<'scope> {
    /// Starts `workers` threads that flush into `instance`.
    pub fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        instance: &'env Instance<'_>,
        workers: usize,
    ) -> Self {
        let name = instance.name().unwrap_or("logferry");
        let workers = (0..workers)
            .map(|n| {
                let (jobs, queue) = mpsc::channel::<Job>();
                let thread = thread::Builder::new()
                    .name(thread_name(name, n))
                    .spawn_scoped(scope, move || {
                        for job in queue {
                            let rc = instance.flush(&job.tag, &job.chunk);
                            let _ = job.answer.send(rc);
                        }
                    })
                    .expect("a worker thread starts");
                (jobs, thread)
            })
            .collect();
        Self {
            workers,
            next: AtomicUsize::new(0),
        }
    }

    /// The ids of the pool's threads.
    pub fn thread_ids(&self) -> Vec<ThreadId> {
        self.workers
            .iter()
            .map(|(_, thread)| thread.thread().id())
            .collect()
    }

    /// Hands each chunk to the next worker, round robin, without waiting, as Fluent
    /// Bit's engine dispatches tasks; then waits for every answer. Answers are in the
    /// order of `chunks`.
    pub fn flush_all(&self, chunks: &[(String, Arc<[u8]>)]) -> Vec<c_int> {
        let answers: Vec<mpsc::Receiver<c_int>> = chunks
            .iter()
            .map(|(tag, chunk)| {
                let (answer, receiver) = mpsc::channel();
                let n = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
                let job = Job {
                    tag: tag.clone(),
                    chunk: chunk.clone(),
                    answer,
                };
                self.workers[n].0.send(job).expect("the worker runs");
                receiver
            })
            .collect();
        answers
            .into_iter()
            .map(|answer| answer.recv().expect("the worker answers"))
            .collect()
    }

    /// Ends and joins every thread (`flb_output_thread_pool_destroy`).
    pub fn stop(self) {
        for (jobs, thread) in self.workers {
            drop(jobs);
            thread.join().expect("a worker thread does not panic");
        }
    }
}

/// The pool the proxy's init callback starts and Fluent Bit never stops: idle threads
/// that never call the plugin. Dropping it ends them, which Fluent Bit never does; keep
/// it until the end of the test.
pub struct OrphanedPool {
    threads: Vec<JoinHandle<()>>,
    _keep_idle: mpsc::Sender<()>,
}

impl OrphanedPool {
    fn start(instance: &str, workers: usize) -> Self {
        let (keep_idle, idle) = mpsc::channel::<()>();
        let idle = Arc::new(std::sync::Mutex::new(idle));
        let threads = (0..workers)
            .map(|n| {
                let idle = idle.clone();
                thread::Builder::new()
                    .name(thread_name(instance, n))
                    .spawn(move || {
                        // Blocks until the pool is dropped: nothing is ever sent.
                        let _ = idle.lock().map(|idle| idle.recv());
                    })
                    .expect("a worker thread starts")
            })
            .collect();
        Self {
            threads,
            _keep_idle: keep_idle,
        }
    }

    /// How many of its threads still run.
    pub fn running(&self) -> usize {
        self.threads.iter().filter(|t| !t.is_finished()).count()
    }

    /// The ids of its threads.
    pub fn thread_ids(&self) -> Vec<ThreadId> {
        self.threads.iter().map(|t| t.thread().id()).collect()
    }
}
