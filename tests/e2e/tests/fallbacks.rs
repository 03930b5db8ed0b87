//! `FLBPluginFlush`/`FLBPluginExit`, which Fluent Bit calls only when a plugin lacks
//! the `Ctx` exports: the host is told to ignore ours. They reach the plugin's single
//! live instance; these tests run one at a time (the live instances are per process).

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use fluent_bit_sys::{FLB_OK, FLB_RETRY};
use logferry_e2e::host::{Host, Level, LoadOptions};
use logferry_e2e::{fixture, plugin_path};

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

fn properties(dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("endpoint", "http://127.0.0.1:1".into()),
        ("access_key", "ak_e2e".into()),
        ("access_token", "token-e2e".into()),
        ("buffer.path", dir.display().to_string()),
        ("buffer.sync", "off".into()),
    ]
}

#[test]
fn fallback_flush_reaches_the_single_instance_and_refuses_to_guess() {
    let _serial = one_at_a_time();
    let options = LoadOptions {
        use_flush_ctx: false,
        ..LoadOptions::default()
    };
    let host = Host::load_with(&plugin_path(), options).unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let chunk = fixture("tail-raw-lines");

    let a = host.init(&properties(dir_a.path())).unwrap();
    assert_eq!(a.flush(&chunk.tag, &chunk.chunk), FLB_OK);

    let b = host.init(&properties(dir_b.path())).unwrap();
    assert_eq!(
        b.flush(&chunk.tag, &chunk.chunk),
        FLB_RETRY,
        "two instances: which one?"
    );
    let refused = a
        .log()
        .into_iter()
        .chain(b.log())
        .find(|line| line.level == Level::Error)
        .expect("the refusal is logged");
    assert_eq!(
        refused.text(),
        "FLBPluginFlush: 2 live instances and no context to tell them apart (use \
         FLBPluginFlushCtx); answering FLB_RETRY: Fluent Bit keeps the chunk"
    );

    assert_eq!(b.exit(), FLB_OK);
    assert_eq!(a.flush(&chunk.tag, &chunk.chunk), FLB_OK, "single again");
    assert_eq!(a.exit(), FLB_OK);
    host.unload().unwrap();
}

#[test]
fn fallback_exit_stops_the_single_instance() {
    let _serial = one_at_a_time();
    let options = LoadOptions {
        use_exit_ctx: false,
        ..LoadOptions::default()
    };
    let host = Host::load_with(&plugin_path(), options).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chunk = fixture("tail-raw-lines");

    let instance = host.init(&properties(dir.path())).unwrap();
    let name = instance.name().unwrap().to_string();
    assert_eq!(instance.flush(&chunk.tag, &chunk.chunk), FLB_OK);
    assert_eq!(instance.exit(), FLB_OK);
    let stopped = logferry_e2e::host::log::lines()
        .into_iter()
        .filter(|line| line.instance() == Some(name.as_str()))
        .any(|line| line.text().starts_with("stopped: "));
    assert!(stopped, "{name} logged no `stopped:` line");

    host.unload().unwrap();
}
