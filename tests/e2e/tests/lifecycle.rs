//! What Fluent Bit relies on before it `dlclose`s the plugin: once `FLBPluginExitCtx`
//! has returned, no thread the plugin started is left. Its own process, so the thread
//! list holds only this test's threads.

use fluent_bit_sys::FLB_OK;
use logferry_e2e::host::Host;
use logferry_e2e::{fixtures, plugin_path, plugin_threads};

#[test]
fn exit_leaves_no_thread_behind() {
    assert_eq!(plugin_threads(), Vec::<String>::new());
    let dir = tempfile::tempdir().unwrap();
    let host = Host::load(&plugin_path()).unwrap();
    let instance = host
        .init(&[
            ("endpoint", "http://127.0.0.1:1"),
            ("access_key", "ak_e2e"),
            ("access_token", "token-e2e"),
            ("buffer.path", &dir.path().display().to_string()),
        ])
        .unwrap();
    // A new thread names itself once it runs, which may be a moment after init.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while plugin_threads().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent runs its own threads"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for fixture in fixtures() {
        assert_eq!(instance.flush(&fixture.tag, &fixture.chunk), FLB_OK);
    }
    assert_eq!(instance.exit(), FLB_OK);
    assert_eq!(
        plugin_threads(),
        Vec::<String>::new(),
        "threads left after FLBPluginExitCtx"
    );
    host.unload().unwrap();
}
