//! Turns call metadata into a [`Principal`], or a status that tells the agent what
//! to fix.

use std::sync::{Arc, RwLock};

use logferry_proto::{ACCESS_KEY_HEADER, AUTHORIZATION_HEADER};
use tonic::Status;
use tonic::metadata::MetadataMap;
use tracing::warn;

use crate::auth::{AuthError, TokenAuthority};
use crate::tenants::{Principal, TenantStore};

/// Authenticates calls against the tenant registry and the token authority.
#[derive(Clone)]
pub struct Authenticator {
    pub tokens: Arc<TokenAuthority>,
    pub tenants: Arc<RwLock<Arc<dyn TenantStore>>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator")
    }
}

/// UNAUTHENTICATED for a bad token, PERMISSION_DENIED for a token of another key.
pub fn status_for(error: &AuthError) -> Status {
    match error {
        AuthError::WrongKey { .. } => Status::permission_denied(error.to_string()),
        _ => Status::unauthenticated(error.to_string()),
    }
}

impl Authenticator {
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
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
        let store = self
            .tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let principal = store.lookup(access_key).ok_or_else(|| {
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
