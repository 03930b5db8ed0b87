//! The operations surface of `logferry serve`: `/healthz`, `/readyz`, Prometheus
//! `/metrics` with exact counts after real traffic, and `grpc.health.v1`.

use std::time::{Duration, Instant};

use fluent_bit_sys::FLB_OK;
use logferry_e2e::backend::{Backend, http_get, wait_for_lines};
use logferry_e2e::host::Host;
use logferry_e2e::{expected_records, fixtures, plugin_path};
use logferry_proto::v1::GetConfigRequest;
use logferry_proto::v1::ingest_client::IngestClient;

#[test]
fn health_readiness_and_exact_metrics_after_traffic() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let credentials = backend.credentials();
    assert_eq!(backend.http_get("/healthz"), (200, "ok\n".to_string()));
    assert_eq!(backend.http_get("/readyz"), (200, "ready\n".to_string()));
    assert_eq!(backend.http_get("/nope").0, 404);

    let host = Host::load(&plugin_path()).unwrap();
    let instance = host
        .init(&credentials.plugin_properties(spool.path()))
        .unwrap();
    let mut records = 0;
    let fixtures = fixtures();
    for fixture in &fixtures {
        assert_eq!(instance.flush(&fixture.tag, &fixture.chunk), FLB_OK);
        records += expected_records(fixture, &fixture.tag).len();
    }
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();
    assert_eq!(
        wait_for_lines(data.path(), records, Duration::from_secs(60)),
        records
    );

    // Two refused calls: a forged token and none at all.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let health = runtime.block_on(async {
        let channel = credentials.channel().await;
        let mut client = IngestClient::new(channel.clone());
        for token in [Some("eyJhbGciOiJFZERTQSJ9.e30.AAAA"), None] {
            let request = credentials.request(GetConfigRequest::default(), token);
            assert_eq!(
                client.get_config(request).await.unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "logferry.v1.Ingest".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    });
    assert_eq!(
        health,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let chunks = fixtures.len() as f64;
    assert_eq!(
        backend.metric(r#"logferry_ingest_chunks_total{tenant="dev"}"#),
        Some(chunks)
    );
    assert!(backend.metric(r#"logferry_ingest_batches_total{tenant="dev"}"#) >= Some(1.0));
    let raw: f64 = fixtures.iter().map(|f| f.chunk.len() as f64).sum();
    let stored_raw = backend
        .metric(r#"logferry_ingest_raw_bytes_total{tenant="dev"}"#)
        .unwrap();
    assert!(
        stored_raw >= raw,
        "raw bytes {stored_raw} cover the chunks' {raw}"
    );
    assert_eq!(
        backend.metric(r#"logferry_destination_records_total{destination="files"}"#),
        Some(records as f64)
    );
    assert_eq!(
        backend.metric(r#"logferry_auth_failures_total{reason="unauthenticated"}"#),
        Some(2.0)
    );
    // The lag gauge follows each delivery step; the buffer gauges follow within 1 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lag = backend.metric(r#"logferry_destination_lag_batches{destination="files"}"#);
        let bytes = backend.metric("logferry_buffer_bytes");
        if lag == Some(0.0) && bytes.is_some_and(|b| b > raw * 0.1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag {lag:?}, buffer bytes {bytes:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    backend.stop();
}

/// An agent that goes quiet is flagged by `logferry_agent_silent` within the
/// configured window, and the alert rules shipped in `deploy/prometheus/alerts.yaml`
/// fire on exactly that gauge.
#[test]
fn an_agent_that_goes_quiet_is_flagged_within_the_silence_window() {
    const SILENCE: Duration = Duration::from_secs(2);
    const WINDOW: Duration = Duration::from_millis(200);
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let backend = Backend::start(
        data.path(),
        0,
        &[
            "--agent-silence-after",
            "2s",
            "--agent-rate-window",
            "200ms",
        ],
    );
    let host = Host::load(&plugin_path()).unwrap();
    let instance = host
        .init(&backend.credentials().plugin_properties(spool.path()))
        .unwrap();
    let fixture = &fixtures()[0];
    let want = expected_records(fixture, "quiet.soon").len();
    assert_eq!(instance.flush("quiet.soon", &fixture.chunk), FLB_OK);
    assert_eq!(
        wait_for_lines(data.path(), want, Duration::from_secs(20)),
        want
    );
    let last_sent = Instant::now();

    // The agent's label, from the gauge the detector publishes.
    let agent = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, body) = backend.http_get("/metrics");
            let label = body.lines().find_map(|l| {
                let rest = l.strip_prefix("logferry_agent_silent{agent=\"")?;
                Some(rest.split('"').next()?.to_string())
            });
            if let Some(label) = label {
                break label;
            }
            assert!(
                Instant::now() < deadline,
                "no logferry_agent_silent sample: {body}"
            );
            std::thread::sleep(WINDOW);
        }
    };
    let sample = format!("logferry_agent_silent{{agent=\"{agent}\",tenant=\"dev\"}}");
    assert_eq!(
        backend.metric(&sample),
        Some(0.0),
        "not silent while sending"
    );
    let flagged = backend.wait_for_metric(&sample, 1.0, Duration::from_secs(10));
    let after = last_sent.elapsed();
    assert_eq!(flagged, 1.0, "never flagged silent");
    // `last_sent` is taken once the records are in the file sink, a little after the
    // backend stored the batch, so only the upper bound is tight.
    assert!(
        after <= SILENCE + 2 * WINDOW + Duration::from_secs(1),
        "flagged {after:?} after the last batch; window {SILENCE:?}"
    );
    assert!(
        backend
            .stderr()
            .iter()
            .any(|l| l.contains("agent silent: nothing stored for")),
        "the state change is logged"
    );
    let last_seen = backend
        .metric(&format!(
            "logferry_agent_last_seen_seconds{{agent=\"{agent}\",tenant=\"dev\"}}"
        ))
        .unwrap();
    assert!(last_seen > 1.7e9, "{last_seen}");

    // It sends again: the flag clears.
    assert_eq!(instance.flush("quiet.soon", &fixtures()[1].chunk), FLB_OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.metric(&sample) != Some(0.0) {
        assert!(Instant::now() < deadline, "the silence flag did not clear");
        std::thread::sleep(WINDOW);
    }
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();

    // The shipped alert rule watches this very gauge.
    let rules = std::fs::read_to_string(
        logferry_e2e::workspace_root().join("deploy/prometheus/alerts.yaml"),
    )
    .unwrap();
    assert!(rules.contains("logferry_agent_silent == 1"), "{rules}");
    backend.stop();
}

/// The plugin's own metrics on `metrics.listen`: spool, seqs, lag, sessions, and send
/// errors by reason once the backend goes away.
#[test]
fn the_plugin_serves_its_own_metrics_on_metrics_listen() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let backend = Backend::start(data.path(), 0, &[]);
    let mut properties = backend.credentials().plugin_properties(spool.path());
    properties.push(("metrics.listen".into(), "127.0.0.1:0".into()));
    let host = Host::load(&plugin_path()).unwrap();
    let instance = host.init(&properties).unwrap();
    let addr: std::net::SocketAddr = instance
        .init_log()
        .iter()
        .find_map(|l| {
            let rest = l.text().split("metrics on http://").nth(1)?;
            rest.split('/').next()?.parse().ok()
        })
        .expect("the plugin logs where its metrics are");
    let sample = |body: &str, name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name) && (l.as_bytes()[name.len()] == b'{'))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
    };

    let fixtures = fixtures();
    let mut records = 0;
    for fixture in &fixtures {
        assert_eq!(instance.flush(&fixture.tag, &fixture.chunk), FLB_OK);
        records += expected_records(fixture, &fixture.tag).len();
    }
    wait_for_lines(data.path(), records, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200);
        if sample(&body, "logferry_agent_acked_seq") == fixtures.len() as f64 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "acked_seq never reached the flush count:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let n = fixtures.len() as f64;
    assert_eq!(sample(&body, "logferry_agent_last_seq"), n);
    assert_eq!(sample(&body, "logferry_agent_lag_chunks"), 0.0);
    assert_eq!(sample(&body, "logferry_agent_chunks_spooled_total"), n);
    assert_eq!(sample(&body, "logferry_agent_chunks_sent_total"), n);
    assert_eq!(sample(&body, "logferry_agent_sessions_total"), 1.0);
    assert!(sample(&body, "logferry_agent_ack_latency_seconds_mean") > 0.0);
    let agent_label = format!(
        "agent=\"{}\"",
        body.split("agent=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
    );
    assert_eq!(agent_label.len(), "agent=\"\"".len() + 32, "{agent_label}");

    // The backend goes away: the lag grows and the errors are counted by reason.
    backend.stop();
    assert_eq!(instance.flush("after.stop", &fixtures[0].chunk), FLB_OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(addr, "/metrics");
        let unavailable = body
            .lines()
            .filter(|l| l.starts_with("logferry_agent_send_errors_total{"))
            .filter(|l| l.contains("reason=\"unavailable\"") || l.contains("reason=\"connect\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        if unavailable >= 1.0 && sample(&body, "logferry_agent_lag_chunks") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no send error counted:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();
}
