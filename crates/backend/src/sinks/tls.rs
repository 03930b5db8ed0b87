//! TLS for the sinks that connect out (Elasticsearch, Loki, PostgreSQL): the server's
//! certificate is checked against a destination's `ca_file`, or Mozilla's roots.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The certificates of a PEM file of CA certificates.
pub fn ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading CA file `{}`", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("CA file `{}` is not PEM", path.display()))?;
    if certs.is_empty() {
        bail!("CA file `{}` holds no certificate", path.display());
    }
    Ok(certs)
}

/// A rustls client that trusts `ca`, or Mozilla's roots when it is `None`.
pub fn client_config(ca: Option<&[CertificateDer<'static>]>) -> Result<rustls::ClientConfig> {
    crate::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(certs) => {
            for cert in certs {
                roots
                    .add(cert.clone())
                    .context("a CA certificate rustls does not take")?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}
