//! Mutual TLS: a client certificate from the configured CA, whose subject CN is an
//! access key's `client_cert_cn`, stands in for the token; through the real plugin
//! too. A certificate from another CA, or of another key, is refused, and a
//! certificate's session can be revoked like a token.

use std::path::Path;
use std::time::Duration;

use fluent_bit_sys::FLB_OK;
use logferry_e2e::backend::{Backend, Credentials, backend_bin, wait_for_lines};
use logferry_e2e::host::Host;
use logferry_e2e::{expected_records, fixture, plugin_path};
use logferry_proto::v1::GetConfigRequest;
use logferry_proto::v1::ingest_client::IngestClient;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use tonic::Code;
use tonic::transport::Identity;

const REGISTRY: &str = "\
tenants:
  - name: acme
    access_keys:
      - key: ak_web
        client_cert_cn: web-01.acme.internal
      - key: ak_db
";

/// A CA; returns its PEM and an issuer for client certificates.
fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A client certificate with subject CN `cn` and serial `serial`: (cert PEM, key PEM).
fn client(issuer: &Issuer<'static, KeyPair>, cn: &str, serial: &[u8]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(SerialNumber::from_slice(serial));
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

async fn get_config(
    credentials: &Credentials,
    identity: Option<(&str, &str)>,
    access_key: Option<&str>,
) -> Result<String, tonic::Status> {
    let identity = identity.map(|(cert, key)| Identity::from_pem(cert, key));
    let channel = credentials
        .try_channel(identity)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    let mut request = tonic::Request::new(GetConfigRequest::default());
    if let Some(key) = access_key {
        request
            .metadata_mut()
            .insert(logferry_proto::ACCESS_KEY_HEADER, key.parse().unwrap());
    }
    IngestClient::new(channel)
        .get_config(request)
        .await
        .map(|r| r.into_inner().tenant)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_client_certificate_stands_in_for_the_token() {
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("tenants.yaml"), REGISTRY).unwrap();
    let (ca_pem, issuer) = ca("acme clients");
    let (_, rogue_issuer) = ca("someone else");
    let client_ca = write(certs.path(), "client-ca.pem", &ca_pem);
    let backend = Backend::start(data.path(), 0, &["--tls-client-ca", &client_ca]);
    let credentials = backend.credentials();

    let (web_cert, web_key) = client(&issuer, "web-01.acme.internal", &[0x0a, 0x0b, 0x0c]);
    let web = Some((web_cert.as_str(), web_key.as_str()));
    // The certificate alone, with or without the access key header.
    assert_eq!(
        get_config(&credentials, web, Some("ak_web")).await.unwrap(),
        "acme"
    );
    assert_eq!(get_config(&credentials, web, None).await.unwrap(), "acme");

    // The certificate of one key does not open another.
    let status = get_config(&credentials, web, Some("ak_db"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("is for access key `ak_web`, not `ak_db`"),
        "{status:?}"
    );
    // A valid certificate of a CN no key maps to.
    let (other_cert, other_key) = client(&issuer, "db-01.acme.internal", &[0x01]);
    let status = get_config(&credentials, Some((&other_cert, &other_key)), Some("ak_db"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("CN `db-01.acme.internal`"),
        "{status:?}"
    );
    // Another CA's certificate, even with the right CN, fails the TLS handshake.
    let (rogue_cert, rogue_key) =
        client(&rogue_issuer, "web-01.acme.internal", &[0x0a, 0x0b, 0x0c]);
    let rogue = get_config(
        &credentials,
        Some((&rogue_cert, &rogue_key)),
        Some("ak_web"),
    )
    .await;
    assert!(rogue.is_err(), "a certificate of another CA was accepted");
    // No certificate and no token.
    let status = get_config(&credentials, None, Some("ak_web"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Through the real plugin: tls_crt_file and tls_key_file, no token at all.
    let spool = tempfile::tempdir().unwrap();
    let mut properties: Vec<(String, String)> = credentials
        .plugin_properties(spool.path())
        .into_iter()
        .filter(|(k, _)| k != "access_token" && k != "access_key")
        .collect();
    properties.extend([
        ("access_key".to_string(), "ak_web".to_string()),
        (
            "tls_crt_file".to_string(),
            write(certs.path(), "web.pem", &web_cert),
        ),
        (
            "tls_key_file".to_string(),
            write(certs.path(), "web.key", &web_key),
        ),
    ]);
    let small = fixture("dummy-with-metadata");
    let host = Host::load(&plugin_path()).unwrap();
    let instance = host.init(&properties).unwrap();
    assert_eq!(instance.flush("mtls", &small.chunk), FLB_OK);
    let want = expected_records(&small, "mtls").len();
    assert_eq!(
        wait_for_lines(data.path(), want, Duration::from_secs(20)),
        want
    );
    assert_eq!(instance.exit(), FLB_OK);
    host.unload().unwrap();
    assert!(data.path().join("files/acme/ak_web").is_dir());

    // A certificate's session is revoked by `x509:<serial>`, like a token's jti.
    let revoke = std::process::Command::new(backend_bin())
        .args(["token", "revoke", "x509:0a0b0c"])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(revoke.status.success());
    backend.wait_for_metric("logferry_revoked_tokens", 1.0, Duration::from_secs(10));
    let status = get_config(&credentials, web, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("x509:0a0b0c"), "{status:?}");
    backend.stop();
}
