//! The checkpoint-signing key, kept apart from the token-signing key.
//!
//! `<data-dir>/keys/checkpoint.pem` (PKCS#8 Ed25519, owner-only 0600) and
//! `checkpoint.pub.pem`, created on first start beside the token key
//! (`signing.pem`, [`crate::auth`]). It signs the file sink's chain checkpoints
//! ([`crate::chain`]) and manifests ([`crate::manifest`]) and nothing else; the
//! token key signs tokens and nothing else. So the key that can forge a history
//! cannot mint credentials, and the key that mints credentials cannot forge a
//! history.
//!
//! Releases before this split signed checkpoints with the token key. `verify`
//! accepts that key for such checkpoints as [`KeyRole::Legacy`] and says so; it is
//! never accepted for a manifest, nor for a checkpoint after one signed by the
//! checkpoint key in the same chain.
//!
//! Every JWS names its key in the header's `kid`: the first 16 hex digits of the
//! SHA-256 of the public key's PEM, as tokens do.

use std::path::Path;

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::fsutil::write_private;

/// File stem of the checkpoint-signing key pair in `<data-dir>/keys`.
pub const CHECKPOINT_KEY: &str = "checkpoint";
/// File stem of the token-signing key pair in `<data-dir>/keys`.
pub const TOKEN_KEY: &str = "signing";

/// `<dir>/<stem>.pub.pem`.
pub fn public_path(dir: &Path, stem: &str) -> std::path::PathBuf {
    dir.join(format!("{stem}.pub.pem"))
}

/// Reads the Ed25519 pair `<dir>/<stem>.pem` (0600) and `<stem>.pub.pem`, creating
/// it on first use. Returns (private PEM, public PEM).
pub fn load_or_create_pair(dir: &Path, stem: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    let private = dir.join(format!("{stem}.pem"));
    let public = public_path(dir, stem);
    if !private.exists() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .context("generating an Ed25519 key")?;
        write_private(&private, pair.serialize_pem().as_bytes())
            .with_context(|| format!("writing `{}`", private.display()))?;
        std::fs::write(&public, pair.public_key_pem())
            .with_context(|| format!("writing `{}`", public.display()))?;
    }
    let private_pem = std::fs::read(&private)
        .with_context(|| format!("reading the private key `{}`", private.display()))?;
    let public_pem = std::fs::read(&public)
        .with_context(|| format!("reading the public key `{}`", public.display()))?;
    Ok((private_pem, public_pem))
}

/// The `kid` of a public key: the first 16 hex digits of SHA-256 of its PEM.
pub fn kid(public_pem: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_pem)[..8])
}

/// Signs `claims` as a compact JWS (EdDSA) naming `kid`.
pub fn sign_jws<T: Serialize>(claims: &T, key: &EncodingKey, kid: &str) -> Result<String> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, key).context("signing")
}

/// Signs chain checkpoints and manifests.
pub struct CheckpointSigner {
    encoding: EncodingKey,
    public_pem: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("kid", &self.kid)
            .finish()
    }
}

impl CheckpointSigner {
    /// Loads `<dir>/checkpoint.pem`, creating the pair on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let (private, public) = load_or_create_pair(dir, CHECKPOINT_KEY)?;
        Self::from_pem(&private, &public)
    }

    /// From PKCS#8 PEM keys.
    pub fn from_pem(private_pem: &[u8], public_pem: &[u8]) -> Result<Self> {
        let encoding =
            EncodingKey::from_ed_pem(private_pem).context("bad Ed25519 checkpoint key")?;
        DecodingKey::from_ed_pem(public_pem).context("bad Ed25519 public key")?;
        Ok(Self {
            encoding,
            kid: kid(public_pem),
            public_pem: public_pem.to_vec(),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` as a compact JWS with this key's `kid`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String> {
        sign_jws(claims, &self.encoding, &self.kid)
    }

    /// A verifier that trusts this key only.
    pub fn verifier(&self) -> Result<CheckpointVerifier> {
        let mut verifier = CheckpointVerifier::default();
        verifier.trust(&self.public_pem, KeyRole::Checkpoint, "this backend")?;
        Ok(verifier)
    }
}

/// What a trusted public key may have signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// The checkpoint key: checkpoints and manifests.
    Checkpoint,
    /// The token key of a release before the checkpoint key: old checkpoints only.
    Legacy,
}

/// A public key `verify` trusts, and where it came from.
pub struct TrustedKey {
    pub kid: String,
    pub role: KeyRole,
    /// The file it was read from, for messages.
    pub source: String,
    key: DecodingKey,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKey")
            .field("kid", &self.kid)
            .field("role", &self.role)
            .finish()
    }
}

impl TrustedKey {
    /// "the checkpoint key `kid`" or "the token-signing key `kid` (an earlier
    /// release's checkpoints)".
    pub fn describe(&self) -> String {
        match self.role {
            KeyRole::Checkpoint => format!("the checkpoint key `{}`", self.kid),
            KeyRole::Legacy => format!("the token-signing key `{}`", self.kid),
        }
    }
}

/// Checks checkpoint and manifest signatures against trusted public keys.
pub struct CheckpointVerifier {
    keys: Vec<TrustedKey>,
    validation: Validation,
}

impl Default for CheckpointVerifier {
    fn default() -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        Self {
            keys: Vec::new(),
            validation,
        }
    }
}

impl std::fmt::Debug for CheckpointVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.kid, k.role)))
            .finish()
    }
}

impl CheckpointVerifier {
    /// A verifier trusting one checkpoint key (PEM).
    pub fn from_pem(public_pem: &[u8]) -> Result<Self> {
        let mut verifier = Self::default();
        verifier.trust(public_pem, KeyRole::Checkpoint, "a PEM")?;
        Ok(verifier)
    }

    /// Trusts `public_pem` in `role`; `source` names it in messages.
    pub fn trust(&mut self, public_pem: &[u8], role: KeyRole, source: &str) -> Result<()> {
        let key = DecodingKey::from_ed_pem(public_pem).context("bad Ed25519 public key")?;
        self.keys.push(TrustedKey {
            kid: kid(public_pem),
            role,
            source: source.to_string(),
            key,
        });
        Ok(())
    }

    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// The claims of `jws` and the key that signed it; the error says why not.
    pub fn verify<T: DeserializeOwned>(&self, jws: &str) -> Result<(T, &TrustedKey), String> {
        let header = jsonwebtoken::decode_header(jws).map_err(|e| e.to_string())?;
        let candidates: Vec<&TrustedKey> = match &header.kid {
            Some(kid) => self.keys.iter().filter(|k| &k.kid == kid).collect(),
            None => self.keys.iter().collect(),
        };
        if candidates.is_empty() {
            return Err(format!(
                "signed by key `{}`, which is not trusted here",
                header.kid.unwrap_or_default()
            ));
        }
        let mut last = String::new();
        for key in candidates {
            match jsonwebtoken::decode::<T>(jws, &key.key, &self.validation) {
                Ok(data) => return Ok((data.claims, key)),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_key_is_its_own_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tokens = crate::auth::TokenAuthority::load_or_create(dir.path()).unwrap();
        let signer = CheckpointSigner::load_or_create(dir.path()).unwrap();
        assert_ne!(signer.kid(), tokens.kid());
        let mode = std::fs::metadata(dir.path().join("checkpoint.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The same directory yields the same key.
        let again = CheckpointSigner::load_or_create(dir.path()).unwrap();
        assert_eq!(again.kid(), signer.kid());

        // A token does not verify as a checkpoint, and a checkpoint is not a token.
        let verifier = signer.verifier().unwrap();
        let (token, _) = tokens
            .issue("t", "k", std::time::Duration::from_secs(60))
            .unwrap();
        let refused = verifier.verify::<serde_json::Value>(&token).unwrap_err();
        assert_eq!(
            refused,
            format!(
                "signed by key `{}`, which is not trusted here",
                tokens.kid()
            )
        );
        let checkpoint = signer.sign(&serde_json::json!({"sub": "k"})).unwrap();
        assert!(matches!(
            tokens.verify(&checkpoint, "k").unwrap_err(),
            crate::auth::AuthError::UnknownKeyId(..)
        ));
        let (claims, key) = verifier.verify::<serde_json::Value>(&checkpoint).unwrap();
        assert_eq!(
            (claims["sub"].as_str(), key.role),
            (Some("k"), KeyRole::Checkpoint)
        );
    }
}
