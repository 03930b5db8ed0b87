//! What the HTTP sinks (Elasticsearch, Loki) share: one blocking client, retries of
//! answers that say "later", and readable errors for the rest.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls_pki_types::CertificateDer;

/// How often a request that got a retryable answer is sent before the step fails
/// (the destination then retries the whole step with its own backoff).
pub const ATTEMPTS: u32 = 5;

/// The longest response body read.
const MAX_RESPONSE: u64 = 64 << 20;

/// Basic credentials for a sink's endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A response: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// 429 and 5xx: the far side asks to try again later.
    pub fn retryable(&self) -> bool {
        self.status == 429 || self.status >= 500
    }

    /// The body, cut for a log line.
    pub fn excerpt(&self) -> &str {
        let mut end = self.body.len().min(512);
        while !self.body.is_char_boundary(end) {
            end -= 1;
        }
        self.body[..end].trim_end()
    }
}

/// A blocking HTTP client with a 30 s timeout per request.
pub struct Client {
    agent: ureq::Agent,
    auth: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// `ca`: the CA certificates `https` servers are checked against; `None`:
    /// Mozilla's roots.
    pub fn new(auth: Option<&BasicAuth>, ca: Option<&[CertificateDer<'static>]>) -> Self {
        let roots = match ca {
            Some(certs) => ureq::tls::RootCerts::Specific(std::sync::Arc::new(
                certs
                    .iter()
                    .map(|c| ureq::tls::Certificate::from_der(c).to_owned())
                    .collect(),
            )),
            None => ureq::tls::RootCerts::WebPki,
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            .build()
            .into();
        Self {
            agent,
            auth: auth.map(|a| {
                format!(
                    "Basic {}",
                    BASE64.encode(format!("{}:{}", a.username, a.password))
                )
            }),
        }
    }

    /// POSTs `body`; a connection failure is an error, any status is an answer.
    pub fn post(
        &self,
        url: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer> {
        let mut request = self.agent.post(url).header("content-type", content_type);
        if let Some(auth) = &self.auth {
            request = request.header("authorization", auth);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = request.send(body).with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_string()
            .with_context(|| format!("reading the answer of POST {url}"))?;
        Ok(Answer { status, body })
    }

    /// POSTs until the answer is not retryable, at most [`ATTEMPTS`] times, with a
    /// growing pause; connection failures count as retryable.
    pub fn post_retrying(
        &self,
        url: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(backoff(attempt));
            }
            match self.post(url, content_type, headers, body) {
                Ok(answer) if !answer.retryable() => return Ok(answer),
                Ok(answer) => last = format!("HTTP {}: {}", answer.status, answer.excerpt()),
                Err(e) => last = format!("{e:#}"),
            }
        }
        bail!("POST {url} failed {ATTEMPTS} times; the last time: {last}")
    }
}

/// The pause before attempt `attempt` (1-based): 100 ms, 200 ms, ... up to 2 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.saturating_sub(1).min(4)).min(Duration::from_secs(2))
}

/// `base` without a trailing slash, then `path`.
pub fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}
