//! The gRPC channel to the backend.
//!
//! TLS is done here with rustls rather than through tonic's TLS options, because we
//! need what tonic does not expose: `tls.verify off` for tests, a server name that
//! differs from the address, and client certificates. tonic then speaks HTTP/2 over
//! the stream we hand it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint as TonicEndpoint, Uri};

use crate::config::{Endpoint, TlsSettings};

/// HTTP/2 flow-control windows: large, so one stream can carry hundreds of MB/s.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;

/// The process-wide rustls provider we use everywhere (ring).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from `{}`: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate PEM in `{}`: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from `{}`: {e}", path.display()))
}

/// Builds the rustls client config for these settings.
pub fn client_tls_config(tls: &TlsSettings) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if tls.verify {
        let mut roots = RootCertStore::empty();
        match &tls.ca_file {
            Some(path) => {
                for cert in load_certs(path)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("bad CA in `{}`: {e}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err("no system CA certificates found; set tls.ca_file".into());
                }
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(crypto_provider())))
    };
    let mut config = match (&tls.crt_file, &tls.key_file) {
        (Some(crt), Some(key)) => builder
            .with_client_auth_cert(load_certs(crt)?, load_key(key)?)
            .map_err(|e| format!("client certificate: {e}"))?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Opens a channel to the backend within `timeout`.
pub async fn connect(
    endpoint: &Endpoint,
    tls: &TlsSettings,
    timeout: Duration,
) -> Result<Channel, String> {
    let uri = if endpoint.host.contains(':') {
        format!("http://[{}]:{}", endpoint.host, endpoint.port)
    } else {
        format!("http://{}:{}", endpoint.host, endpoint.port)
    };
    let builder = TonicEndpoint::from_shared(uri)
        .map_err(|e| format!("bad endpoint `{endpoint}`: {e}"))?
        .connect_timeout(timeout)
        .timeout(Duration::from_secs(3600 * 24 * 365))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    let connecting = async {
        if !endpoint.tls {
            return builder
                .connect()
                .await
                .map_err(|e| describe_transport_error(&e));
        }
        let config = Arc::new(client_tls_config(tls)?);
        let name = tls
            .server_name
            .clone()
            .unwrap_or_else(|| endpoint.host.clone());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|_| format!("`{name}` is not a valid TLS server name"))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let host = endpoint.host.clone();
        let port = endpoint.port;
        builder
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let connector = connector.clone();
                let server_name = server_name.clone();
                let host = host.clone();
                async move {
                    let tcp = TcpStream::connect((host.as_str(), port)).await?;
                    tcp.set_nodelay(true)?;
                    let stream = connector.connect(server_name, tcp).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| describe_transport_error(&e))
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| format!("connecting to {endpoint} timed out after {timeout:?}"))?
}

/// tonic's transport errors hide their cause two or three levels down.
fn describe_transport_error(e: &tonic::transport::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        // An I/O error often wraps a TLS error and repeats its text.
        let text = s.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

/// Accepts any server certificate (`tls.verify off`), but still checks signatures so
/// the handshake itself is sound.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
