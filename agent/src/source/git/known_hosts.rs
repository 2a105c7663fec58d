//! known_hosts, as OpenSSH reads it: how a Git source verifies an SSH server's host key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};

/// Parsed known_hosts: plain (`host`, `[host]:port`, with `*`/`?` wildcards and `!`
/// negation) and hashed (`|1|salt|hash`) entries; `@revoked` keys are refused and
/// `@cert-authority` lines are ignored (libssh2 does not present certificates).
#[derive(Debug, Clone)]
pub(super) struct KnownHosts {
    entries: Vec<KnownHost>,
}

#[derive(Debug, Clone)]
struct KnownHost {
    revoked: bool,
    patterns: Vec<String>,
    key_type: String,
    key: Vec<u8>,
}

impl KnownHosts {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let mut revoked = false;
            if first.starts_with('@') {
                match first {
                    "@revoked" => revoked = true,
                    "@cert-authority" => continue,
                    m => return Err(format!("line {}: unknown marker {m}", n + 1)),
                }
                first = fields.next().unwrap_or_default();
            }
            let (Some(key_type), Some(key)) = (fields.next(), fields.next()) else {
                return Err(format!(
                    "line {}: expected `hosts key-type base64-key`",
                    n + 1
                ));
            };
            let key = STANDARD
                .decode(key)
                .map_err(|e| format!("line {}: key is not base64: {e}", n + 1))?;
            entries.push(KnownHost {
                revoked,
                patterns: first.split(',').map(str::to_owned).collect(),
                key_type: key_type.to_owned(),
                key,
            });
        }
        if entries.iter().all(|e| e.revoked) {
            return Err("no host keys".into());
        }
        Ok(KnownHosts { entries })
    }

    /// Ok when a non-revoked entry for the host has exactly this key.
    pub(super) fn verify(
        &self,
        host: &str,
        port: u16,
        key_type: &str,
        key: &[u8],
    ) -> Result<(), String> {
        let lookup = if port == 22 {
            host.to_owned()
        } else {
            format!("[{host}]:{port}")
        };
        let for_host: Vec<_> = self
            .entries
            .iter()
            .filter(|e| host_matches(&e.patterns, &lookup))
            .collect();
        if for_host.iter().any(|e| e.revoked && e.key == key) {
            return Err(format!(
                "{lookup}: the server's {key_type} key is marked @revoked"
            ));
        }
        if for_host.iter().any(|e| !e.revoked && e.key == key) {
            return Ok(());
        }
        let known: Vec<_> = for_host
            .iter()
            .filter(|e| !e.revoked)
            .map(|e| e.key_type.as_str())
            .collect();
        if known.is_empty() {
            Err(format!("{lookup}: no known_hosts entry for this host"))
        } else {
            Err(format!(
                "{lookup}: the server's {key_type} key does not match known_hosts ({})",
                known.join(", ")
            ))
        }
    }
}

fn host_matches(patterns: &[String], lookup: &str) -> bool {
    let mut matched = false;
    for p in patterns {
        if let Some(hashed) = p.strip_prefix("|1|") {
            matched |= hashed_matches(hashed, lookup);
        } else if let Some(neg) = p.strip_prefix('!') {
            if glob(&neg.to_ascii_lowercase(), &lookup.to_ascii_lowercase()) {
                return false;
            }
        } else {
            matched |= glob(&p.to_ascii_lowercase(), &lookup.to_ascii_lowercase());
        }
    }
    matched
}

/// `salt|hash`, both base64: the entry is HMAC-SHA1(key = salt, message = host).
fn hashed_matches(salt_hash: &str, lookup: &str) -> bool {
    let Some((salt, hash)) = salt_hash.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(lookup.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// OpenSSH host pattern matching: `*` any run, `?` one character.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.as_bytes().first() {
        None => text.is_empty(),
        Some(b'*') => {
            (0..=text.len()).any(|i| text.is_char_boundary(i) && glob(&pattern[1..], &text[i..]))
        }
        Some(b'?') => {
            let mut chars = text.chars();
            chars.next().is_some() && glob(&pattern[1..], chars.as_str())
        }
        Some(_) => {
            let c = pattern.chars().next().unwrap();
            text.starts_with(c) && glob(&pattern[c.len_utf8()..], &text[c.len_utf8()..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_plain_port_hashed_wildcard_and_revoked() {
        let key_a = STANDARD.encode(b"key-a");
        let key_b = STANDARD.encode(b"key-b");
        let salt = b"0123456789abcdefghij";
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(salt).unwrap();
        mac.update(b"[hashed.example]:2222");
        let hashed = format!(
            "|1|{}|{}",
            STANDARD.encode(salt),
            STANDARD.encode(mac.finalize().into_bytes())
        );
        let text = format!(
            "# comment\n\
             plain.example,10.0.0.1 ssh-ed25519 {key_a}\n\
             [ported.example]:2222 ssh-ed25519 {key_a} comment here\n\
             {hashed} ssh-ed25519 {key_a}\n\
             *.wild.example,!bad.wild.example ssh-rsa {key_a}\n\
             @revoked plain.example ssh-ed25519 {key_b}\n"
        );
        let kh = KnownHosts::parse(&text).unwrap();
        let ok = |h: &str, p: u16, k: &[u8]| kh.verify(h, p, "ssh-ed25519", k);
        assert_eq!(ok("plain.example", 22, b"key-a"), Ok(()));
        assert_eq!(ok("PLAIN.example", 22, b"key-a"), Ok(()));
        assert_eq!(ok("10.0.0.1", 22, b"key-a"), Ok(()));
        assert_eq!(ok("ported.example", 2222, b"key-a"), Ok(()));
        assert_eq!(ok("hashed.example", 2222, b"key-a"), Ok(()));
        assert_eq!(ok("a.wild.example", 22, b"key-a"), Ok(()));
        // A port makes a different host: `[host]:port` entries only.
        assert!(
            ok("plain.example", 2222, b"key-a")
                .unwrap_err()
                .contains("no known_hosts entry")
        );
        assert!(ok("hashed.example", 22, b"key-a").is_err());
        assert!(ok("bad.wild.example", 22, b"key-a").is_err());
        let err = ok("ported.example", 2222, b"key-x").unwrap_err();
        assert_eq!(
            err,
            "[ported.example]:2222: the server's ssh-ed25519 key does not match known_hosts (ssh-ed25519)"
        );
        assert!(
            ok("plain.example", 22, b"key-b")
                .unwrap_err()
                .contains("@revoked")
        );
        assert!(
            KnownHosts::parse("host ssh-ed25519 !!notbase64")
                .unwrap_err()
                .starts_with("line 1:")
        );
    }
}
