//! Turns call metadata into a [`Session`], or a status that tells the agent what
//! to fix.
//!
//! - UNAUTHENTICATED: no token, a bad, expired or revoked token.
//! - PERMISSION_DENIED: an unknown or disabled access key, or a token for another
//!   key or tenant.
//!
//! With mutual TLS (`--tls-client-ca`), a verified client certificate whose subject
//! CN is some key's `client_cert_cn` authenticates that key without a token; its
//! session id for revocation is `x509:<serial in hex>`, and it lasts until the
//! certificate's `notAfter`.
//!
//! A session's credentials are checked again on every registry or revocation
//! change ([`Authenticator::authorize`]), so open streams end when their key is
//! disabled or their token revoked.

use std::sync::Arc;

use logferry_proto::{ACCESS_KEY_HEADER, AUTHORIZATION_HEADER};
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic::transport::CertificateDer;
use tracing::warn;

use crate::auth::{AuthError, Claims, ISSUER, TokenAuthority};
use crate::live::Live;
use crate::tenants::Principal;

/// Authenticates calls against the token authority and the live registry.
#[derive(Clone)]
pub struct Authenticator {
    pub tokens: Arc<TokenAuthority>,
    pub live: Arc<Live>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator")
    }
}

/// Who is calling, with the token that says so.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    pub claims: Claims,
}

/// UNAUTHENTICATED for a bad token, PERMISSION_DENIED for a token of another key.
pub fn status_for(error: &AuthError) -> Status {
    match error {
        AuthError::WrongKey { .. } => Status::permission_denied(error.to_string()),
        _ => Status::unauthenticated(error.to_string()),
    }
}

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientCert {
    cn: String,
    serial: String,
    not_after: u64,
}

fn client_cert(certs: Option<&[CertificateDer<'static>]>) -> Result<Option<ClientCert>, Status> {
    let Some(der) = certs.and_then(|c| c.first()) else {
        return Ok(None);
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
        Status::unauthenticated(format!("the client certificate does not parse: {e}"))
    })?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| Status::unauthenticated("the client certificate has no subject CN"))?;
    Ok(Some(ClientCert {
        cn: cn.to_string(),
        serial: hex::encode(cert.raw_serial()),
        not_after: u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
    }))
}

impl Authenticator {
    /// Authenticates a call by its metadata and, with mutual TLS, the client
    /// certificate the TLS layer verified.
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer_certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<Session, Status> {
        let header_key = metadata
            .get(ACCESS_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty());
        let token = metadata
            .get(AUTHORIZATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().strip_prefix("Bearer ").unwrap_or(v).trim())
            .unwrap_or("");
        if token.is_empty()
            && let Some(cert) = client_cert(peer_certs)?
        {
            return self.authenticate_cert(&cert, header_key);
        }
        let access_key = header_key.ok_or_else(|| {
            Status::unauthenticated(format!(
                "no access key: send the `{ACCESS_KEY_HEADER}` header"
            ))
        })?;
        let claims = self.tokens.verify(token, access_key).map_err(|e| {
            warn!(access_key, "refused a call: {e}");
            status_for(&e)
        })?;
        let principal = self.authorize(&claims)?;
        Ok(Session { principal, claims })
    }

    fn authenticate_cert(
        &self,
        cert: &ClientCert,
        header_key: Option<&str>,
    ) -> Result<Session, Status> {
        let principal = self.live.tenants().lookup_cert(&cert.cn).ok_or_else(|| {
            warn!(cn = %cert.cn, "refused a call: client certificate of no access key");
            Status::permission_denied(format!(
                "the client certificate (CN `{}`) is not the `client_cert_cn` of any access \
                 key in the registry; add it there, or send a token",
                cert.cn
            ))
        })?;
        if let Some(presented) = header_key
            && presented != principal.access_key
        {
            warn!(cn = %cert.cn, presented, "refused a call: certificate of another key");
            return Err(Status::permission_denied(format!(
                "the client certificate (CN `{}`) is for access key `{}`, not `{presented}`",
                cert.cn, principal.access_key
            )));
        }
        let claims = Claims {
            iss: ISSUER.to_string(),
            sub: principal.access_key.clone(),
            tenant: principal.tenant.clone(),
            iat: 0,
            exp: cert.not_after,
            jti: format!("x509:{}", cert.serial),
        };
        let principal = self.authorize(&claims)?;
        Ok(Session { principal, claims })
    }

    /// Checks a verified token against the revocation list and the registry in
    /// force now.
    pub fn authorize(&self, claims: &Claims) -> Result<Principal, Status> {
        let access_key = claims.sub.as_str();
        self.live.revoked().check(claims).map_err(|e| {
            warn!(access_key, "refused a call: {e}");
            status_for(&e)
        })?;
        let principal = self.live.tenants().lookup(access_key).ok_or_else(|| {
            warn!(access_key, "refused a call: unknown access key");
            Status::permission_denied(format!(
                "access key `{access_key}` is not in the tenant registry"
            ))
        })?;
        if principal.disabled {
            warn!(access_key, "refused a call: access key disabled");
            return Err(Status::permission_denied(format!(
                "access key `{access_key}` is disabled"
            )));
        }
        if claims.tenant != principal.tenant {
            warn!(
                access_key,
                "refused a call: token for tenant `{}`", claims.tenant
            );
            return Err(Status::permission_denied(format!(
                "the token is for tenant `{}`, but access key `{access_key}` belongs to `{}`",
                claims.tenant, principal.tenant
            )));
        }
        Ok(principal)
    }
}
