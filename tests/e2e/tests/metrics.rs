//! The operations surface of `logferry serve`: `/healthz`, `/readyz`, Prometheus
//! `/metrics` with exact counts after real traffic, and `grpc.health.v1`.

use std::time::{Duration, Instant};

use fluent_bit_sys::FLB_OK;
use logferry_e2e::backend::{Backend, wait_for_lines};
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
