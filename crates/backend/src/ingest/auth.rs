//! Turns call metadata into a [`Session`], or a status that tells the agent what
//! to fix.
//!
//! - UNAUTHENTICATED: no token, a bad, expired or revoked token.
//! - PERMISSION_DENIED: an unknown or disabled access key, or a token for another
//!   key or tenant.
//!
//! A session's credentials are checked again on every registry or revocation
//! change ([`Authenticator::authorize`]), so open streams end when their key is
//! disabled or their token revoked.

use std::sync::Arc;

use logferry_proto::{ACCESS_KEY_HEADER, AUTHORIZATION_HEADER};
use tonic::Status;
use tonic::metadata::MetadataMap;
use tracing::warn;

use crate::auth::{AuthError, Claims, TokenAuthority};
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

impl Authenticator {
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Session, Status> {
        let access_key = metadata
            .get(ACCESS_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "no access key: send the `{ACCESS_KEY_HEADER}` header"
                ))
            })?;
        let token = metadata
            .get(AUTHORIZATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().strip_prefix("Bearer ").unwrap_or(v).trim())
            .unwrap_or("");
        let claims = self.tokens.verify(token, access_key).map_err(|e| {
            warn!(access_key, "refused a call: {e}");
            status_for(&e)
        })?;
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
