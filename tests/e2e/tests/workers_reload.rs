//! Hot reloads of an output with `Workers 2`, driven as Fluent Bit 5.1.1 drives them
//! (`logferry_e2e::host::workers`): init on the engine thread, a first worker pool that
//! is started and never stopped, a second that gets every flush, `PreRun`, then on
//! reload the second pool stopped, `PreExit(1)`, `ExitCtx`, `dlclose`, and a new load
//! and init on the same spool while every earlier first pool still idles.
//!
//! Its own process: it counts the plugin's threads, and the plugin keeps what
//! `FLBPluginOutputPreRun` said process-wide.

use std::sync::Arc;
use std::time::Duration;

use fluent_bit_sys::FLB_OK;
use logferry_e2e::backend::{Backend, assert_landed_once};
use logferry_e2e::host::{Host, OrphanedPool, WorkerPool, log, workers};
use logferry_e2e::{
    WORKERS_WARNING, agent_id, expected_records, fixtures, plugin_path, plugin_threads,
};

const WORKERS: usize = 2;
const RELOADS: usize = 4;

/// Nothing in the plugin waits for, or relies on, the first pool being stopped: with
/// every first pool still running, each exit leaves no plugin thread behind, each
/// reload reopens the same spool (same agent id), and every record of every burst lands
/// exactly once. Each instance warns once about `Workers`.
#[test]
fn reloads_with_an_orphaned_worker_pool_lose_and_duplicate_nothing() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let properties = backend.credentials().plugin_properties(spool.path());
    let fixtures = fixtures();
    let mark = log::mark();
    let mut orphaned: Vec<OrphanedPool> = Vec::new();
    let mut first_id = None;
    let mut want = Vec::new();
    for cycle in 0..RELOADS {
        let host = Host::load(&plugin_path()).unwrap();
        let (instance, first_pool) = workers::start_output(&host, &properties, WORKERS)
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        let id = agent_id(&instance);
        assert_eq!(
            first_id.get_or_insert_with(|| id.clone()),
            &id,
            "same spool"
        );
        orphaned.push(first_pool);

        // Two bursts of every fixture, each chunk under its own tag.
        let bursts: Vec<Vec<(String, Arc<[u8]>)>> = (0..2)
            .map(|burst| {
                fixtures
                    .iter()
                    .map(|fixture| {
                        let tag = format!("cycle{cycle}.burst{burst}.{}", fixture.tag);
                        want.push((tag.clone(), expected_records(fixture, &tag)));
                        (tag, Arc::from(fixture.chunk.as_slice()))
                    })
                    .collect()
            })
            .collect();
        std::thread::scope(|scope| {
            let pool = WorkerPool::start(scope, &instance, WORKERS);
            assert_eq!(host.pre_run(true), Some(0));
            for burst in &bursts {
                assert_eq!(pool.flush_all(burst), vec![FLB_OK; burst.len()]);
            }
            pool.stop();
        });

        // Reload right after the bursts: what is not acked yet stays spooled.
        assert_eq!(instance.exit_for_hot_reload(), FLB_OK);
        assert_eq!(
            plugin_threads(),
            Vec::<String>::new(),
            "cycle {cycle}: plugin threads left after FLBPluginExitCtx"
        );
        host.unload().unwrap();
        let running: usize = orphaned.iter().map(OrphanedPool::running).sum();
        assert_eq!(
            running,
            WORKERS * (cycle + 1),
            "every first pool still idles"
        );
    }

    let warnings: Vec<String> = log::lines_since(mark)
        .iter()
        .filter(|line| line.text().contains("worker thread"))
        .map(|line| line.text().to_string())
        .collect();
    assert_eq!(warnings, vec![WORKERS_WARNING.to_string(); RELOADS]);

    assert_landed_once(data.path(), &want, Duration::from_secs(90));
    backend.stop();
    drop(orphaned);
}
