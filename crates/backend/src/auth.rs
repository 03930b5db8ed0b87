//! Tokens: JWTs the backend signs with its Ed25519 key, bound to one access key.
//!
//! Claims: `iss` (always `logferry`), `sub` (the access key), `tenant`, `iat`, `exp`,
//! `jti`. The header names the signing key in `kid` (the first 16 hex digits of the
//! SHA-256 of its public key). Verification accepts EdDSA only (`none`, HMAC and
//! RSA are refused before any signature check, so no algorithm confusion), refuses
//! an unknown `kid`, requires every claim, allows 30 s of clock skew, requires `sub`
//! to equal the access key presented with the call, and refuses revoked `jti`s.
//!
//! The key pair lives in `<data-dir>/keys/signing.pem` (PKCS#8, owner-only) and
//! `signing.pub.pem`, created on first start. It signs tokens only; the file sink's
//! checkpoints have a key of their own ([`crate::signing`]). The revocation list is
//! `<data-dir>/revoked-tokens`: one `jti` per line, then optional words (when and
//! why); `#` starts a comment.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

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
    #[error(
        "the token names signing key `{0}`, which this backend does not have (it signs with `{1}`)"
    )]
    UnknownKeyId(String, String),
    #[error("the token (jti {0}) has been revoked; issue a new one with `logferry token issue`")]
    Revoked(String),
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
    kid: String,
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
        let (private_pem, public_pem) =
            crate::signing::load_or_create_pair(dir, crate::signing::TOKEN_KEY)?;
        Self::from_pem(&private_pem, &public_pem)
    }

    /// Builds an authority from PKCS#8 PEM keys.
    pub fn from_pem(private_pem: &[u8], public_pem: &[u8]) -> Result<Self> {
        let encoding = EncodingKey::from_ed_pem(private_pem).context("bad Ed25519 signing key")?;
        let decoding = DecodingKey::from_ed_pem(public_pem).context("bad Ed25519 public key")?;
        let kid = crate::signing::kid(public_pem);
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
        validation.validate_exp = true;
        Ok(Self {
            encoding,
            decoding,
            validation,
            kid,
        })
    }

    /// The `kid` this authority signs with.
    pub fn kid(&self) -> &str {
        &self.kid
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
        Ok((self.sign(&claims)?, claims))
    }

    /// Signs `claims` as they are.
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        self.sign_json(claims)
    }

    /// Signs any claims as a compact JWS (EdDSA, with this key's `kid`). Only tokens:
    /// chain checkpoints have a key of their own ([`crate::signing`]).
    pub fn sign_json<T: Serialize>(&self, claims: &T) -> Result<String> {
        crate::signing::sign_jws(claims, &self.encoding, &self.kid)
    }

    /// Verifies `token` for a call that presented `access_key`. Revocation is checked
    /// separately, against the live list ([`Revocations::check`]).
    pub fn verify(&self, token: &str, access_key: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // The algorithm is read from the raw header first: `none` and names the JWT
        // library does not know must get a clear refusal, not a parse error.
        let alg = raw_header_alg(token)?;
        if alg != "EdDSA" {
            return Err(AuthError::BadAlgorithm(alg));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        match header.kid {
            Some(kid) if kid == self.kid => {}
            Some(kid) => return Err(AuthError::UnknownKeyId(kid, self.kid.clone())),
            None => {
                return Err(AuthError::Malformed(
                    "the header has no `kid` (key id)".into(),
                ));
            }
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
        if claims.jti.is_empty() {
            return Err(AuthError::Malformed("the `jti` claim is empty".into()));
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

/// The `alg` of a compact JWT's header, read without the JWT library.
fn raw_header_alg(token: &str) -> Result<String, AuthError> {
    let header = token
        .split('.')
        .next()
        .filter(|_| token.split('.').count() == 3)
        .ok_or_else(|| {
            AuthError::Malformed("not a JWT (expected three dot-separated parts)".into())
        })?;
    let json = BASE64URL
        .decode(header.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed("the header is not base64url".into()))?;
    let value: serde_json::Value = serde_json::from_slice(&json)
        .map_err(|_| AuthError::Malformed("the header is not JSON".into()))?;
    value
        .get("alg")
        .and_then(|a| a.as_str())
        .map(str::to_string)
        .ok_or_else(|| AuthError::Malformed("the header has no `alg`".into()))
}

/// Decodes a token's header and claims without checking anything, for
/// `logferry token inspect`.
pub fn decode_unverified(token: &str) -> Result<(serde_json::Value, serde_json::Value), String> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    if parts.len() != 3 {
        return Err("not a JWT (expected three dot-separated parts)".into());
    }
    let part = |i: usize, what: &str| -> Result<serde_json::Value, String> {
        let bytes = BASE64URL
            .decode(parts[i].trim_end_matches('='))
            .map_err(|e| format!("the {what} is not base64url: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("the {what} is not JSON: {e}"))
    };
    Ok((part(0, "header")?, part(1, "claims")?))
}

/// The revocation list: `jti`s refused from now on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    jtis: HashSet<String>,
}

impl Revocations {
    /// Parses the list: the first word of each line is a `jti`; `#` starts a comment.
    pub fn parse(text: &str) -> Self {
        let jtis = text
            .lines()
            .filter_map(|line| line.split('#').next())
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_string)
            .collect();
        Self { jtis }
    }

    /// Reads the list at `path`; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading `{}`", path.display())),
        }
    }

    pub fn len(&self) -> usize {
        self.jtis.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jtis.is_empty()
    }

    pub fn check(&self, claims: &Claims) -> Result<(), AuthError> {
        if self.jtis.contains(&claims.jti) {
            return Err(AuthError::Revoked(claims.jti.clone()));
        }
        Ok(())
    }
}

/// Appends `jti` to the revocation list at `path`, durably. Returns false if it
/// was listed already.
pub fn revoke(path: &Path, jti: &str, reason: Option<&str>) -> Result<bool> {
    if jti.is_empty() || jti.contains(char::is_whitespace) || jti.contains('#') {
        anyhow::bail!("`{jti}` is not a token id (jti)");
    }
    if Revocations::load(path)?.jtis.contains(jti) {
        return Ok(false);
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening `{}`", path.display()))?;
    let when = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let reason = reason
        .map(|r| format!(" {}", r.replace('\n', " ")))
        .unwrap_or_default();
    writeln!(file, "{jti} # revoked {when}{reason}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing `{}`", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::Header;

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
        // Another key does not verify it: by kid, and by signature when the kid is forged.
        let other = TokenAuthority::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(
            other.verify(&token, "ak_1").unwrap_err(),
            AuthError::UnknownKeyId(auth.kid().into(), other.kid().into())
        );
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(auth.kid().into());
        let forged = jsonwebtoken::encode(&header, &claims, &other.encoding).unwrap();
        assert_eq!(
            auth.verify(&forged, "ak_1").unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[test]
    fn algorithm_none_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let auth = TokenAuthority::load_or_create(dir.path()).unwrap();
        let (token, claims) = auth.issue("t", "k", Duration::from_secs(60)).unwrap();
        let body = token.split('.').nth(1).unwrap();
        let none = format!(
            "{}.{body}.",
            BASE64URL.encode(r#"{"alg":"none","typ":"JWT"}"#)
        );
        assert_eq!(
            auth.verify(&none, "k").unwrap_err(),
            AuthError::BadAlgorithm("none".into())
        );
        let (header, decoded) = decode_unverified(&token).unwrap();
        assert_eq!(header["kid"], auth.kid());
        assert_eq!(decoded["jti"], claims.jti.as_str());

        let list = dir.path().join("revoked-tokens");
        assert!(Revocations::load(&list).unwrap().is_empty());
        assert!(revoke(&list, &claims.jti, Some("laptop stolen")).unwrap());
        assert!(!revoke(&list, &claims.jti, None).unwrap());
        assert!(revoke(&list, "a b", None).is_err());
        let revoked = Revocations::load(&list).unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!(
            revoked.check(&claims).unwrap_err(),
            AuthError::Revoked(claims.jti.clone())
        );
        let text = std::fs::read_to_string(&list).unwrap();
        assert!(text.ends_with("laptop stolen\n"), "{text}");
    }

    #[test]
    fn expired_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let auth = TokenAuthority::load_or_create(dir.path()).unwrap();
        let mut claims = auth.issue("t", "k", Duration::from_secs(1)).unwrap().1;
        claims.iat -= 1000;
        claims.exp = claims.iat + 10;
        let token = auth.sign(&claims).unwrap();
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
