//! End-to-end payload encryption: HPKE (RFC 9180) base mode with DHKEM(X25519,
//! HKDF-SHA256), HKDF-SHA256 and AES-256-GCM, one single-shot seal per batch.
//!
//! The agent seals a batch's compressed payload to its tenant's public key; only a
//! router holding the matching private key opens it. The ingest tier and the buffer
//! store the sealed bytes as they are.
//!
//! A sealed payload is `enc (32 bytes) || ciphertext+tag`. The associated data binds
//! the batch to where it belongs: tenant, agent id, seq range, key id and
//! compression. A ciphertext that is altered, or moved to another tenant, agent or
//! seq range, does not open.
//!
//! Keys travel as standard base64 of their 32 raw bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};

type Kem = X25519HkdfSha256;

/// HPKE `info`: names the protocol and its version.
const INFO: &[u8] = b"logferry/v1 batch";
/// Length of the encapsulated key that prefixes every sealed payload.
pub const ENC_LEN: usize = 32;

/// Where a batch belongs; the associated data of its seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchContext<'a> {
    pub tenant: &'a str,
    pub agent_id: [u8; 16],
    pub first_seq: u64,
    pub last_seq: u64,
    pub key_id: u32,
    pub compression: i32,
}

impl BatchContext<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64 + self.tenant.len());
        aad.extend_from_slice(b"logferry/v1");
        aad.extend_from_slice(&(self.tenant.len() as u32).to_be_bytes());
        aad.extend_from_slice(self.tenant.as_bytes());
        aad.extend_from_slice(&self.agent_id);
        aad.extend_from_slice(&self.first_seq.to_be_bytes());
        aad.extend_from_slice(&self.last_seq.to_be_bytes());
        aad.extend_from_slice(&self.key_id.to_be_bytes());
        aad.extend_from_slice(&self.compression.to_be_bytes());
        aad
    }
}

/// A tenant's public key: what agents seal to.
#[derive(Clone)]
pub struct PublicKey(<Kem as hpke::Kem>::PublicKey);

/// A tenant's private key: what routers open with.
#[derive(Clone)]
pub struct PrivateKey(<Kem as hpke::Kem>::PrivateKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.to_bytes() == other.to_bytes()
    }
}

impl Eq for PublicKey {}

fn decode_key(what: &str, text: &str) -> Result<Vec<u8>, String> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|e| format!("{what} is not base64: {e}"))?;
    if bytes.len() != 32 {
        return Err(format!(
            "{what} must be 32 bytes (X25519), got {}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        <Kem as hpke::Kem>::PublicKey::from_bytes(bytes)
            .map(Self)
            .map_err(|e| format!("not an X25519 public key: {e}"))
    }

    pub fn from_base64(text: &str) -> Result<Self, String> {
        Self::from_bytes(&decode_key("the public key", text)?)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes().to_vec()
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.to_bytes())
    }
}

impl PrivateKey {
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = decode_key("the private key", text)?;
        <Kem as hpke::Kem>::PrivateKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|e| format!("not an X25519 private key: {e}"))
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0.to_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(<Kem as hpke::Kem>::sk_to_pk(&self.0))
    }
}

/// A fresh key pair from the operating system's randomness.
pub fn generate() -> (PrivateKey, PublicKey) {
    let (private, public) = Kem::gen_keypair(&mut rand::rng());
    (PrivateKey(private), PublicKey(public))
}

/// Seals `plaintext` for the holder of `key`'s private half.
pub fn seal(key: &PublicKey, context: &BatchContext<'_>, plaintext: &[u8]) -> Vec<u8> {
    let (enc, ciphertext) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &key.0,
        INFO,
        plaintext,
        &context.aad(),
        &mut rand::rng(),
    )
    // Sealing fails only if the KEM's Diffie-Hellman output is all zeros, which a
    // valid X25519 public key (checked on decoding) never gives.
    .expect("HPKE seal to a valid X25519 public key");
    let mut sealed = Vec::with_capacity(ENC_LEN + ciphertext.len());
    sealed.extend_from_slice(&enc.to_bytes());
    sealed.extend_from_slice(&ciphertext);
    sealed
}

/// Opens a payload sealed by [`seal`] with the same context.
pub fn open(
    key: &PrivateKey,
    context: &BatchContext<'_>,
    sealed: &[u8],
) -> Result<Vec<u8>, String> {
    if sealed.len() < ENC_LEN + 16 {
        return Err(format!(
            "sealed payload of {} bytes is shorter than its header and tag",
            sealed.len()
        ));
    }
    let (enc, ciphertext) = sealed.split_at(ENC_LEN);
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc)
        .map_err(|e| format!("bad encapsulated key: {e}"))?;
    hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
        &OpModeR::Base,
        &key.0,
        &enc,
        INFO,
        ciphertext,
        &context.aad(),
    )
    .map_err(|_| {
        format!(
            "the sealed payload does not open with key id {}: it was altered, sealed to \
             another key, or moved from another tenant, agent or seq range",
            context.key_id
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> BatchContext<'static> {
        BatchContext {
            tenant: "acme",
            agent_id: [7; 16],
            first_seq: 10,
            last_seq: 12,
            key_id: 3,
            compression: 1,
        }
    }

    #[test]
    fn seals_and_opens() {
        let (private, public) = generate();
        let sealed = seal(&public, &context(), b"secret records");
        assert_eq!(sealed.len(), ENC_LEN + 14 + 16);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            open(&private, &context(), &sealed).unwrap(),
            b"secret records"
        );
        // Keys survive their text form.
        let private = PrivateKey::from_base64(&private.to_base64()).unwrap();
        assert_eq!(private.public_key(), public);
        assert_eq!(PublicKey::from_base64(&public.to_base64()).unwrap(), public);
        assert_eq!(
            open(&private, &context(), &sealed).unwrap(),
            b"secret records"
        );
    }

    #[test]
    fn refuses_tampering_and_moves() {
        let (private, public) = generate();
        let sealed = seal(&public, &context(), b"secret records");
        let mut tampered = sealed.clone();
        tampered[ENC_LEN + 3] ^= 1;
        assert!(open(&private, &context(), &tampered).is_err());
        let moves = [
            BatchContext {
                tenant: "globex",
                ..context()
            },
            BatchContext {
                agent_id: [8; 16],
                ..context()
            },
            BatchContext {
                first_seq: 11,
                ..context()
            },
            BatchContext {
                last_seq: 13,
                ..context()
            },
            BatchContext {
                key_id: 4,
                ..context()
            },
            BatchContext {
                compression: 0,
                ..context()
            },
        ];
        for moved in moves {
            let err = open(&private, &moved, &sealed).unwrap_err();
            assert!(err.contains("does not open"), "{err}");
        }
        let (other, _) = generate();
        assert!(open(&other, &context(), &sealed).is_err());
        assert!(
            open(&private, &context(), &sealed[..40])
                .unwrap_err()
                .contains("shorter")
        );
    }

    #[test]
    fn clear_key_errors() {
        assert_eq!(
            PublicKey::from_base64("AAAA").unwrap_err(),
            "the public key must be 32 bytes (X25519), got 3"
        );
        assert!(
            PrivateKey::from_base64("not base64!")
                .unwrap_err()
                .starts_with("the private key is not base64")
        );
    }
}
