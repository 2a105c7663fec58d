//! HMAC-SHA256 request signatures (`sha256=<hex>`), as GitHub and others send them in
//! `X-Hub-Signature-256` and as the webhook alert sink signs its bodies: one
//! implementation for both directions.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = hmac_sha256(secret);
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::from("sha256=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`;
/// compared in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    header
        .strip_prefix("sha256=")
        .is_some_and(|hex| verify_hex(secret, body, hex))
}

/// Whether `hex` (bare, as Gitea sends it) is the HMAC-SHA256 of `body` under `secret`.
pub fn verify_hex(secret: &[u8], body: &[u8], hex: &str) -> bool {
    let Some(tag) = decode_hex(hex) else {
        return false;
    };
    let mut mac = hmac_sha256(secret);
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&tag).is_ok()
}

fn hmac_sha256(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length (long keys are hashed), so this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// Constant-time token comparison; hashing first hides the secret's length too.
pub fn token_eq(given: &[u8], secret: &[u8]) -> bool {
    Sha256::digest(given).ct_eq(&Sha256::digest(secret)).into()
}

pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2)
        .map(|c| Some(nibble(c[0])? << 4 | nibble(c[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_published_test_vector() {
        let secret = b"It's a Secret to Everybody";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(signature(secret, b"Hello, World!"), sig);
        assert!(verify_signature(secret, b"Hello, World!", sig));
        assert!(verify_signature(
            secret,
            b"Hello, World!",
            &sig.to_uppercase().replace("SHA256=", "sha256=")
        ));
        assert!(!verify_signature(secret, b"Hello, World?", sig));
        assert!(!verify_signature(
            b"It's a secret to everybody",
            b"Hello, World!",
            sig
        ));
        assert!(!verify_signature(
            secret,
            b"Hello, World!",
            &sig[..sig.len() - 2]
        ));
        assert!(!verify_signature(
            secret,
            b"Hello, World!",
            sig.trim_start_matches("sha256=")
        ));
        assert!(!verify_signature(
            secret,
            b"Hello, World!",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d"
        ));
    }

    #[test]
    fn hex_and_token_helpers() {
        assert_eq!(decode_hex("00ffA0"), Some(vec![0, 255, 160]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex(""), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("é1"), None);
        assert!(token_eq(b"abc", b"abc"));
        assert!(!token_eq(b"abc", b"abcd"));
        assert!(!token_eq(b"", b"abc"));
    }
}
