//! Tokens: JWTs the backend signs with its Ed25519 key, bound to one access key.
//!
//! Claims: `iss` (always `logferry`), `sub` (the access key), `tenant`, `iat`, `exp`,
//! `jti`. Verification accepts EdDSA only (no `none`, no algorithm switching),
//! requires every claim, allows 30 s of clock skew, and requires `sub` to equal the
//! access key presented with the call.
//!
//! The key pair lives in `<data-dir>/keys/signing.pem` (PKCS#8, owner-only) and
//! `signing.pub.pem`, created on first start.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::fsutil::write_private;

/// The issuer every token carries.
pub const ISSUER: &str = "logferry";
/// Clock skew tolerated on `exp` and `iat`.
pub const LEEWAY_SECS: u64 = 30;

/// The claims of a logferry token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The access key this token is bound to.
    pub sub: String,
    pub tenant: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

/// Why a token was refused. `Unauthenticated` errors mean "get a valid token";
/// `WrongKey` means the token is valid but for another access key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send `authorization: Bearer <token>`")]
    Missing,
    #[error("the token has expired; issue a new one with `logferry token issue`")]
    Expired,
    #[error("the token is not valid yet (issued in the future; check the clocks)")]
    NotYetValid,
    #[error("the token's signature does not verify: it was not signed by this backend's key")]
    BadSignature,
    #[error("the token uses algorithm {0}; only EdDSA tokens are accepted")]
    BadAlgorithm(String),
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token is bound to access key `{token_key}`, not `{presented}`")]
    WrongKey {
        token_key: String,
        presented: String,
    },
}

/// Signs and verifies tokens.
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenAuthority")
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenAuthority {
    /// Loads the signing key from `dir`, creating a new Ed25519 pair on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let private = dir.join("signing.pem");
        let public = dir.join("signing.pub.pem");
        if !private.exists() {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                .context("generating the Ed25519 signing key")?;
            write_private(&private, pair.serialize_pem().as_bytes())
                .with_context(|| format!("writing `{}`", private.display()))?;
            std::fs::write(&public, pair.public_key_pem())
                .with_context(|| format!("writing `{}`", public.display()))?;
        }
        let private_pem = std::fs::read(&private)
            .with_context(|| format!("reading the signing key `{}`", private.display()))?;
        let public_pem = std::fs::read(&public)
            .with_context(|| format!("reading the public key `{}`", public.display()))?;
        Self::from_pem(&private_pem, &public_pem)
    }

    /// Builds an authority from PKCS#8 PEM keys.
    pub fn from_pem(private_pem: &[u8], public_pem: &[u8]) -> Result<Self> {
        let encoding = EncodingKey::from_ed_pem(private_pem).context("bad Ed25519 signing key")?;
        let decoding = DecodingKey::from_ed_pem(public_pem).context("bad Ed25519 public key")?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
        validation.validate_exp = true;
        Ok(Self {
            encoding,
            decoding,
            validation,
        })
    }

    /// Issues a token for `access_key` of `tenant`, valid for `ttl`.
    pub fn issue(&self, tenant: &str, access_key: &str, ttl: Duration) -> Result<(String, Claims)> {
        let iat = now_secs();
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        let claims = Claims {
            iss: ISSUER.to_string(),
            sub: access_key.to_string(),
            tenant: tenant.to_string(),
            iat,
            exp: iat + ttl.as_secs(),
            jti: hex::encode(jti),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.encoding)
            .context("signing the token")?;
        Ok((token, claims))
    }

    /// Verifies `token` for a call that presented `access_key`.
    pub fn verify(&self, token: &str, access_key: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::BadAlgorithm(format!("{:?}", header.alg)));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm => AuthError::BadAlgorithm(format!("{:?}", header.alg)),
                _ => AuthError::Malformed(e.to_string()),
            })?;
        let claims = data.claims;
        if claims.iat > now_secs() + LEEWAY_SECS {
            return Err(AuthError::NotYetValid);
        }
        if claims.sub != access_key {
            return Err(AuthError::WrongKey {
                token_key: claims.sub,
                presented: access_key.to_string(),
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let auth = TokenAuthority::load_or_create(dir.path()).unwrap();
        let (token, claims) = auth.issue("acme", "ak_1", Duration::from_secs(60)).unwrap();
        assert_eq!(auth.verify(&token, "ak_1").unwrap(), claims);
        assert_eq!(claims.exp - claims.iat, 60);
        assert_eq!(
            auth.verify(&token, "ak_2").unwrap_err(),
            AuthError::WrongKey {
                token_key: "ak_1".into(),
                presented: "ak_2".into()
            }
        );
        // The same directory yields the same key.
        let again = TokenAuthority::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&token, "ak_1").is_ok());
        // Another key does not verify it.
        let other = TokenAuthority::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(
            other.verify(&token, "ak_1").unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[test]
    fn expired_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let auth = TokenAuthority::load_or_create(dir.path()).unwrap();
        let mut claims = auth.issue("t", "k", Duration::from_secs(1)).unwrap().1;
        claims.iat -= 1000;
        claims.exp = claims.iat + 10;
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &auth.encoding).unwrap();
        assert_eq!(auth.verify(&token, "k").unwrap_err(), AuthError::Expired);
        assert!(matches!(
            auth.verify("garbage", "k").unwrap_err(),
            AuthError::Malformed(_)
        ));
        assert_eq!(auth.verify("", "k").unwrap_err(), AuthError::Missing);
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(
            auth.verify(&hs, "k").unwrap_err(),
            AuthError::BadAlgorithm("HS256".into())
        );
    }
}
