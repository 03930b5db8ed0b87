//! TLS material for the backend.
//!
//! On embedded defaults `logferry serve` creates, once, a development CA and a server
//! certificate for `localhost`, `127.0.0.1` and `::1` under `<data-dir>/tls/`. Agents
//! trust `ca.pem` (`tls.ca_file`). Production deployments pass their own certificate
//! and key instead.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::fsutil::write_private;

/// Paths of the server's certificate chain and key, and of the CA agents trust.
#[derive(Debug, Clone)]
pub struct ServerPki {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Only known for the generated development CA.
    pub ca: Option<PathBuf>,
}

/// Returns the development PKI under `dir`, creating it on first use.
pub fn ensure_dev_pki(dir: &Path) -> Result<ServerPki> {
    let pki = ServerPki {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        ca: Some(dir.join("ca.pem")),
    };
    if pki.cert.exists() && pki.key.exists() && dir.join("ca.pem").exists() {
        return Ok(pki);
    }
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "logferry development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("signing the CA certificate")?;

    let server_key = KeyPair::generate().context("generating the server key")?;
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "logferry backend (development)");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = Issuer::new(ca_params, ca_key);
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .context("signing the server certificate")?;

    for path in [
        &pki.cert,
        &pki.key,
        &dir.join("ca.pem"),
        &dir.join("ca.key"),
    ] {
        let _ = std::fs::remove_file(path);
    }
    write_private(&dir.join("ca.key"), issuer.key().serialize_pem().as_bytes())?;
    write_private(&pki.key, server_key.serialize_pem().as_bytes())?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    // The chain: leaf first, then the CA.
    std::fs::write(&pki.cert, format!("{}{}", server_cert.pem(), ca_cert.pem()))?;
    Ok(pki)
}

/// tonic's server TLS settings for this certificate and key.
pub fn server_tls(pki: &ServerPki) -> Result<tonic::transport::ServerTlsConfig> {
    crate::install_crypto_provider();
    let cert = std::fs::read(&pki.cert)
        .with_context(|| format!("reading the TLS certificate `{}`", pki.cert.display()))?;
    let key = std::fs::read(&pki.key)
        .with_context(|| format!("reading the TLS key `{}`", pki.key.display()))?;
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key)))
}
