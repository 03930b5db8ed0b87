//! The plugin driven through Fluent Bit's proxy ABI by the host emulator, with no
//! backend: the endpoint is a closed loopback port, so everything stays in the spool.
//!
//! Needs the plugin built: `cargo build --workspace` (same profile and target dir).

use std::path::Path;
use std::sync::Arc;

use fluent_bit_sys::{FLB_ERROR, FLB_OK, FLB_RETRY};
use logferry_e2e::host::{self, Definition, Host, Instance, Level, LogLine, WorkerPool};
use logferry_e2e::{WORKERS_WARNING, agent_id, fixture, fixtures, plugin_path};

/// Nothing listens on port 1: the agent cannot connect and only spools.
const UNREACHABLE: &str = "http://127.0.0.1:1";

fn load() -> Host {
    Host::load(&plugin_path()).expect("the plugin loads")
}

/// A valid configuration spooling to `dir`, plus `extra` (which may override).
fn properties(dir: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut properties: Vec<(String, String)> = [
        ("Endpoint", UNREACHABLE),
        ("Access_Key", "ak_e2e"),
        ("Access_Token", "token-e2e"),
        ("Buffer.Path", &dir.display().to_string()),
        ("buffer.sync", "off"),
    ]
    .iter()
    .map(|(key, value)| (key.to_string(), value.to_string()))
    .collect();
    for (key, value) in extra {
        properties.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        properties.push((key.to_string(), value.to_string()));
    }
    properties
}

fn without(properties: Vec<(String, String)>, key: &str) -> Vec<(String, String)> {
    properties
        .into_iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(key))
        .collect()
}

/// The one error line a failed init logged, checked to carry an instance name.
fn single_error(log: &[LogLine]) -> &LogLine {
    let errors: Vec<&LogLine> = log
        .iter()
        .filter(|line| line.level == Level::Error)
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line, got {log:#?}");
    let name = errors[0]
        .instance()
        .expect("the line starts with [instance]");
    assert!(name.starts_with("logferry"), "instance name {name:?}");
    errors[0]
}

/// Exits the instance and returns its `stopped: ...` line.
fn exit(instance: Instance<'_>) -> String {
    let lines_of = instance.name().expect("an instance name").to_string();
    assert_eq!(instance.exit(), FLB_OK);
    let log = logferry_e2e::host::log::lines();
    log.iter()
        .filter(|line| line.instance() == Some(lines_of.as_str()))
        .find_map(|line| line.text().strip_prefix("stopped: ").map(str::to_string))
        .unwrap_or_else(|| panic!("{lines_of} logged no `stopped:` line"))
}

#[test]
fn register_fills_the_definition_exactly() {
    let host = load();
    assert_eq!(
        host.definition(),
        Definition {
            type_: 2,
            proxy: 11,
            flags: 0,
            name: "logferry".into(),
            description: "logferry: durable disk spool, streamed over gRPC to a logferry backend"
                .into(),
            event_type: 0,
            config_map_is_null: true,
        }
    );
    host.unload().unwrap();
}

#[test]
fn init_without_endpoint_fails_with_the_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let host = load();
    let error = host
        .init(&without(properties(dir.path(), &[]), "endpoint"))
        .unwrap_err();
    assert_eq!(error.code, FLB_ERROR);
    assert_eq!(
        single_error(&error.log).text(),
        "property `endpoint`: is required: the backend's host:port"
    );
    assert_eq!(error.log.len(), 1, "one line only: {:#?}", error.log);
}

#[test]
fn init_with_a_bad_buffer_sync_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let host = load();
    let error = host
        .init(&properties(dir.path(), &[("Buffer.Sync", "maybe")]))
        .unwrap_err();
    assert_eq!(error.code, FLB_ERROR);
    assert_eq!(
        single_error(&error.log).text(),
        "property `buffer.sync`: expected on or off, got `maybe`"
    );
}

#[test]
fn lines_follow_the_instance_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let host = load();
    let verbose = host.init(&properties(dir.path(), &[])).unwrap();
    let started = format!("started; sending to {UNREACHABLE}");
    assert!(
        verbose
            .init_log()
            .iter()
            .any(|line| line.level == Level::Info && line.text() == started),
        "{:#?}",
        verbose.init_log()
    );
    exit(verbose);

    // `Log_Level error` (served through `output_log_check`): no info line at all.
    let quiet = host
        .init(&properties(dir.path(), &[("Log_Level", "error")]))
        .unwrap();
    assert_eq!(quiet.init_log(), &[], "only errors pass");
    assert_eq!(quiet.exit(), FLB_OK);
}

#[test]
fn two_instances_accept_concurrent_flushes_of_every_fixture() {
    const THREADS: usize = 4;
    let fixtures = fixtures();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let host = load();
    let instances: Vec<Instance<'_>> = dirs
        .iter()
        .map(|dir| {
            host.init(&properties(dir.path(), &[]))
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    assert_ne!(instances[0].name(), instances[1].name());
    assert_ne!(instances[0].remote_context(), instances[1].remote_context());

    // `Workers 4` on each instance: 8 threads flushing at once. Each thread uses its
    // own tag, so every flush is a distinct spool entry.
    std::thread::scope(|scope| {
        for instance in &instances {
            for thread in 0..THREADS {
                let fixtures = &fixtures;
                scope.spawn(move || {
                    for fixture in fixtures {
                        let tag = format!("{}.w{thread}", fixture.tag);
                        assert_eq!(
                            instance.flush(&tag, &fixture.chunk),
                            FLB_OK,
                            "{}",
                            fixture.name
                        );
                    }
                });
            }
        }
    });

    // Nothing was acked, so every entry is still spooled: 4 threads x every fixture.
    let expected = format!("acked up to seq 0 of {}", THREADS * fixtures.len());
    let reports: Vec<String> = std::thread::scope(|scope| {
        let exits: Vec<_> = instances
            .into_iter()
            .map(|i| scope.spawn(move || exit(i)))
            .collect();
        exits.into_iter().map(|exit| exit.join().unwrap()).collect()
    });
    for report in reports {
        assert!(
            report.contains(&expected),
            "expected `{expected}` in `{report}`"
        );
    }
    host.unload().unwrap();
}

/// `Workers 2` as Fluent Bit 5.1.1 runs it: init on the engine thread (this one), a
/// first pool that never gets a flush, a second that gets them all, then
/// `FLBPluginOutputPreRun(1)`. Flushes on the engine thread say nothing; the first on
/// a worker says, once, on that worker, that `Workers` crashes Fluent Bit on hot reload.
/// The only test of this process that calls `FLBPluginOutputPreRun`, whose answer the
/// plugin keeps process-wide.
#[test]
fn workers_are_warned_about_once_with_the_exact_text() {
    const WORKERS: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let host = load();
    let (instance, first_pool) =
        host::workers::start_output(&host, &properties(dir.path(), &[]), WORKERS).unwrap();
    let chunk = fixture("tail-raw-lines");
    assert_eq!(instance.flush("engine.thread", &chunk.chunk), FLB_OK);
    let chunks: Vec<(String, Arc<[u8]>)> = (0..8)
        .map(|n| (format!("worker.{n}"), Arc::from(chunk.chunk.as_slice())))
        .collect();
    let workers = std::thread::scope(|scope| {
        let pool = WorkerPool::start(scope, &instance, WORKERS);
        assert_eq!(host.pre_run(true), Some(0));
        assert_eq!(pool.flush_all(&chunks), [FLB_OK; 8]);
        let workers = pool.thread_ids();
        pool.stop();
        workers
    });
    let warnings: Vec<LogLine> = instance
        .log()
        .into_iter()
        .filter(|line| line.text().contains("worker thread"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert_eq!(warnings[0].level, Level::Warn);
    assert_eq!(warnings[0].text(), WORKERS_WARNING);
    assert!(
        workers.contains(&warnings[0].thread),
        "logged on a worker of the second pool"
    );
    assert!(!first_pool.thread_ids().contains(&warnings[0].thread));
    let report = exit(instance);
    assert!(report.contains("acked up to seq 0 of 9"), "{report}");
    assert_eq!(first_pool.running(), WORKERS, "never stopped");
    host.unload().unwrap();
}

#[test]
fn a_retried_chunk_is_acknowledged_but_spooled_once() {
    let dir = tempfile::tempdir().unwrap();
    let host = load();
    let instance = host.init(&properties(dir.path(), &[])).unwrap();
    let chunk = fixture("tail-raw-lines");
    assert_eq!(instance.flush(&chunk.tag, &chunk.chunk), FLB_OK);
    assert_eq!(instance.flush(&chunk.tag, &chunk.chunk), FLB_OK);
    assert_eq!(
        instance.flush(&chunk.tag, &[]),
        FLB_OK,
        "an empty chunk has nothing to keep"
    );
    let report = exit(instance);
    assert!(report.contains("acked up to seq 0 of 1"), "{report}");
}

#[test]
fn exit_unload_load_again_and_init_on_the_same_spool() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = fixtures();

    let host = load();
    let first = host.init(&properties(dir.path(), &[])).unwrap();
    let id = agent_id(&first);
    for fixture in &fixtures {
        assert_eq!(first.flush(&fixture.tag, &fixture.chunk), FLB_OK);
    }
    exit(first);
    host.unload().unwrap();

    // Fluent Bit's hot reload: the same library, loaded again in the same process.
    let host = load();
    let second = host.init(&properties(dir.path(), &[])).unwrap();
    assert_eq!(
        agent_id(&second),
        id,
        "the reopened spool keeps its agent id"
    );
    let extra = fixture("dummy-with-metadata");
    assert_eq!(second.flush("after.reload", &extra.chunk), FLB_OK);
    let report = exit(second);
    let expected = format!("acked up to seq 0 of {}", fixtures.len() + 1);
    assert!(
        report.contains(&expected),
        "seqs continue across the reload: {report}"
    );
    host.unload().unwrap();
}

#[test]
fn a_full_spool_answers_retry_and_warns_once() {
    let dir = tempfile::tempdir().unwrap();
    let host = load();
    // The smallest spool the spool crate accepts is one 64M segment.
    let instance = host
        .init(&properties(dir.path(), &[("buffer.max_size", "64M")]))
        .unwrap();
    let chunk = fixture("tail-large-14740-records");
    let mut answers = Vec::new();
    for n in 0..100 {
        let rc = instance.flush(&format!("fill.{n}"), &chunk.chunk);
        answers.push(rc);
        if answers.iter().filter(|&&rc| rc == FLB_RETRY).count() == 3 {
            break;
        }
    }
    let first_retry = answers
        .iter()
        .position(|&rc| rc == FLB_RETRY)
        .expect("the spool fills up");
    assert!(
        first_retry > 0 && answers[..first_retry].iter().all(|&rc| rc == FLB_OK),
        "{answers:?}"
    );
    assert!(
        answers[first_retry..].iter().all(|&rc| rc == FLB_RETRY),
        "{answers:?}"
    );
    let warnings: Vec<LogLine> = instance
        .log()
        .into_iter()
        .filter(|line| line.level == Level::Warn && line.text().contains("spool is full"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per episode: {warnings:#?}");
    exit(instance);
}

/// The plugin's test hook (`_test.panic`) exists in debug builds only.
#[cfg(debug_assertions)]
mod panics {
    use super::*;

    #[test]
    fn a_panic_in_flush_is_answered_with_retry() {
        let dir = tempfile::tempdir().unwrap();
        let host = load();
        let instance = host
            .init(&properties(dir.path(), &[("_test.panic", "flush")]))
            .unwrap();
        let chunk = fixture("tail-raw-lines");
        assert_eq!(instance.flush(&chunk.tag, &chunk.chunk), FLB_RETRY);
        assert_eq!(
            instance.flush(&chunk.tag, &chunk.chunk),
            FLB_RETRY,
            "still serving"
        );
        let errors: Vec<String> = instance
            .log()
            .into_iter()
            .filter(|line| line.level == Level::Error)
            .map(|line| line.text().to_string())
            .collect();
        assert_eq!(
            errors.first().map(String::as_str),
            Some(
                "panic in FLBPluginFlushCtx: test hook: panic in flush (property `_test.panic`); \
                 answering FLB_RETRY: Fluent Bit keeps the chunk"
            ),
            "{errors:#?}"
        );
        let report = exit(instance);
        assert!(
            report.contains("acked up to seq 0 of 0") || report.starts_with("drained"),
            "{report}"
        );
    }

    #[test]
    fn a_panic_in_init_fails_the_init() {
        let dir = tempfile::tempdir().unwrap();
        let host = load();
        let error = host
            .init(&properties(dir.path(), &[("_test.panic", "init")]))
            .unwrap_err();
        assert_eq!(error.code, FLB_ERROR);
        let line = single_error(&error.log);
        assert_eq!(line.instance(), Some("logferry"));
        assert_eq!(
            line.text(),
            "panic in FLBPluginInit: test hook: panic in init (property `_test.panic`); \
             the instance is not started"
        );
        // The library still works.
        let instance = host.init(&properties(dir.path(), &[])).unwrap();
        exit(instance);
    }
}
