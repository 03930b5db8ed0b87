//! Bytes as a token: the backend's verification (`TokenAuthority::verify`, what ingest
//! runs on every call's `authorization` header) with a key made once per process, and
//! `decode_unverified` (`logferry token inspect`). The first byte picks the mode (see
//! `logferry_fuzz::token_mode`): a token as presented, or claims (and a header) signed
//! with the right key, so decoding past the signature is fuzzed too. An accepted token
//! must hold what ingest relies on.
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use logferry_backend::auth::{ISSUER, LEEWAY_SECS, Revocations, TokenAuthority, decode_unverified};
use logferry_fuzz::token_mode;

struct Keys {
    authority: TokenAuthority,
    encoding: EncodingKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = logferry_fuzz::scratch();
        let (private, public) = logferry_backend::signing::load_or_create_pair(
            dir.path(),
            logferry_backend::signing::TOKEN_KEY,
        )
        .expect("a key pair");
        Keys {
            authority: TokenAuthority::from_pem(&private, &public).expect("an authority"),
            encoding: EncodingKey::from_ed_pem(&private).expect("a signing key"),
        }
    })
}

fn signed(header: &[u8], claims: &[u8]) -> String {
    let message = format!("{}.{}", BASE64URL.encode(header), BASE64URL.encode(claims));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &keys().encoding, Algorithm::EdDSA)
            .expect("signing");
    format!("{message}.{signature}")
}

fuzz_target!(init: {
    keys();
    logferry_fuzz::seed_corpus(logferry_fuzz::token_seeds);
}, |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = match mode {
        token_mode::RAW => match std::str::from_utf8(rest) {
            Ok(token) => token.to_string(),
            Err(_) => return,
        },
        token_mode::SIGNED_CLAIMS => {
            let header = format!(r#"{{"typ":"JWT","alg":"EdDSA","kid":"{}"}}"#, keys().authority.kid());
            signed(header.as_bytes(), rest)
        }
        token_mode::SIGNED_HEADER => {
            let Some(at) = rest.iter().position(|b| *b == b'\n') else {
                return;
            };
            let header = String::from_utf8_lossy(&rest[..at]).replace("{kid}", keys().authority.kid());
            signed(header.as_bytes(), &rest[at + 1..])
        }
        _ => return,
    };
    let _ = decode_unverified(&token);
    let Ok(claims) = keys().authority.verify(&token, "fuzz-key") else {
        return;
    };
    assert_eq!(claims.sub, "fuzz-key");
    assert_eq!(claims.iss, ISSUER);
    assert!(!claims.jti.is_empty());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(claims.exp.saturating_add(LEEWAY_SECS) >= now, "expired at {}", claims.exp);
    assert!(claims.iat <= now + LEEWAY_SECS, "issued at {}", claims.iat);
    // A jti `logferry token revoke` takes (no whitespace, no `#`) is revocable.
    if !claims.jti.contains(char::is_whitespace) && !claims.jti.contains('#') {
        let revoked = Revocations::parse(&format!("{} # revoked", claims.jti));
        assert!(revoked.check(&claims).is_err(), "jti {:?} is not revocable", claims.jti);
    }
});
