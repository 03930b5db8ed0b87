//! A running plugin follows the backend's registry with no restart: a new encryption
//! key within seconds, a disabled access key (spooling on, one log line), a revoked
//! token replaced in `access_token_file`. Every chunk lands exactly once.

use std::time::{Duration, Instant};

use fluent_bit_sys::FLB_OK;
use logferry_backend::auth::{TokenAuthority, decode_unverified};
use logferry_backend::keys::{KeyRing, encryption_spec, keys_dir};
use logferry_e2e::backend::{
    Backend, assert_landed_once, backend_bin, read_jsonl_tree, wait_for_lines,
};
use logferry_e2e::host::log::Level;
use logferry_e2e::host::{Host, log};
use logferry_e2e::{expected_records, fixture, plugin_path, without_origin};

/// Waits until a plugin log line since `mark` contains `text`; returns how long it took.
fn wait_for_log(mark: usize, text: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if log::lines_since(mark)
            .iter()
            .any(|l| l.text().contains(text))
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "no plugin log line with {text:?} within {timeout:?}; lines: {:#?}",
            log::lines_since(mark)
                .iter()
                .map(|l| l.text().to_string())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Warnings and errors since `mark` that contain `text` (retries log at debug).
fn count_warnings(mark: usize, text: &str) -> usize {
    log::lines_since(mark)
        .iter()
        .filter(|l| matches!(l.level, Level::Warn | Level::Error) && l.text().contains(text))
        .count()
}

#[test]
fn a_running_plugin_follows_key_rotation_disabled_keys_and_token_rotation() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let credentials = backend.credentials();
    let token_file = data.path().join("agent.token");
    std::fs::write(&token_file, &credentials.access_token).unwrap();
    let mut properties = credentials.plugin_properties(spool.path());
    properties.retain(|(k, _)| k != "access_token");
    properties.push(("access_token_file".into(), token_file.display().to_string()));
    let opened = |key_id: u32| {
        backend
            .metric(&format!(
                "logferry_destination_batches_opened_total{{destination=\"files\",key_id=\"{key_id}\"}}"
            ))
            .unwrap_or(0.0)
    };

    let small = fixture("dummy-with-metadata");
    let host = Host::load(&plugin_path()).unwrap();
    let mark = log::mark();
    let instance = host.init(&properties).unwrap();
    assert_eq!(instance.flush("key.one", &small.chunk), FLB_OK);
    let per_chunk = expected_records(&small, "key.one").len();
    wait_for_lines(data.path(), per_chunk, Duration::from_secs(20));
    assert!(opened(1) >= 1.0);
    wait_for_log(mark, "sealed to key id 1", Duration::ZERO);

    // Key rotation: the running plugin seals to key 2 within 5 s of the registry write.
    let ring = KeyRing::new(keys_dir(data.path()));
    let (two, public) = ring.generate("dev", None).unwrap();
    let mut registry = backend.registry();
    registry.tenants[0].encryption = Some(encryption_spec(two, &public));
    let written = Instant::now();
    backend.set_registry(&registry, 2);
    wait_for_log(mark, "sealed to key id 2", Duration::from_secs(5));
    eprintln!(
        "the plugin switched to key 2 {:?} after the registry was written",
        written.elapsed()
    );
    assert_eq!(instance.flush("key.two", &small.chunk), FLB_OK);
    wait_for_lines(data.path(), 2 * per_chunk, Duration::from_secs(20));
    assert_eq!((opened(1), opened(2)), (1.0, 1.0));

    // The key is disabled: the stream is closed, the plugin says so once, keeps
    // retrying with backoff and keeps spooling.
    registry.tenants[0].access_keys[0].disabled = true;
    backend.set_registry(&registry, 3);
    wait_for_log(mark, "access key", Duration::from_secs(5));
    wait_for_log(mark, "is disabled", Duration::from_secs(5));
    assert_eq!(instance.flush("while.disabled", &small.chunk), FLB_OK);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count_warnings(mark, "is disabled"),
        1,
        "one log line per state change, not one per retry"
    );
    assert!(
        backend
            .metric("logferry_auth_failures_total{reason=\"permission_denied\"}")
            .unwrap()
            >= 2.0,
        "the plugin kept retrying"
    );

    // The key comes back, but its token was revoked meanwhile: refused again, and a
    // new token written to access_token_file is picked up without a restart.
    let (_, claims) = decode_unverified(&credentials.access_token).unwrap();
    let revoke = std::process::Command::new(backend_bin())
        .args(["token", "revoke"])
        .arg("--data-dir")
        .arg(data.path())
        .arg(claims["jti"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(revoke.status.success());
    registry.tenants[0].access_keys[0].disabled = false;
    backend.set_registry(&registry, 5);
    wait_for_log(mark, "has been revoked", Duration::from_secs(40));
    let authority = TokenAuthority::load_or_create(&data.path().join("keys")).unwrap();
    let (fresh, _) = authority
        .issue("dev", &credentials.access_key, Duration::from_secs(3600))
        .unwrap();
    std::fs::write(&token_file, fresh).unwrap();
    assert_eq!(
        wait_for_lines(data.path(), 3 * per_chunk, Duration::from_secs(45)),
        3 * per_chunk
    );
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();

    let records = read_jsonl_tree(&data.path().join("files"));
    for tag in ["key.one", "key.two", "while.disabled"] {
        let got: Vec<_> = records
            .iter()
            .filter(|r| r["tag"] == tag)
            .map(without_origin)
            .collect();
        assert_eq!(got, expected_records(&small, tag), "records of {tag}");
    }
    assert_eq!(opened(0), 0.0, "nothing went unsealed");
    backend.stop();
}

/// Fluent Bit's hot reload (SIGHUP or `/api/v2/reload`): every output is exited, the
/// library unloaded and loaded again, and the instances re-initialised with the same
/// properties, while chunks keep coming. Three reloads, each right after a burst of
/// flushes: every record lands once.
#[test]
fn hot_reloads_mid_stream_lose_and_duplicate_nothing() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let properties = backend.credentials().plugin_properties(spool.path());
    let fixtures = logferry_e2e::fixtures();
    let mut want = Vec::new();
    for cycle in 0..4 {
        let host = Host::load(&plugin_path()).unwrap();
        let instance = host.init(&properties).unwrap();
        for fixture in &fixtures {
            let tag = format!("cycle{cycle}.{}", fixture.tag);
            assert_eq!(instance.flush(&tag, &fixture.chunk), FLB_OK);
            want.push((tag.clone(), expected_records(fixture, &tag)));
        }
        // Exit right away: what is not acked yet stays spooled for the next load.
        assert_eq!(instance.exit(), FLB_OK);
        host.unload().unwrap();
    }
    assert_landed_once(data.path(), &want, Duration::from_secs(60));
    backend.stop();
}
