//! How to authenticate to a Git server, and reading that from a Secret's keys.

use std::collections::BTreeMap;
use std::fmt;

use crate::secrets::SecretBytes;

/// How to authenticate to the Git server. `Debug` never prints a secret.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    None,
    /// HTTP(S) Basic auth with a token as password; the username defaults to `git`
    /// (GitHub, Gitea and Bitbucket ignore it, GitLab wants `oauth2`).
    Token {
        username: Option<String>,
        token: String,
    },
    /// An SSH key (OpenSSH or PEM text). `known_hosts` is mandatory: there is no
    /// connection without host key verification.
    Ssh {
        private_key: String,
        passphrase: Option<String>,
        known_hosts: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Token { username, .. } => f
                .debug_struct("Token")
                .field("username", username)
                .field("token", &"<redacted>")
                .finish(),
            Credentials::Ssh { passphrase, .. } => f
                .debug_struct("Ssh")
                .field("private_key", &"<redacted>")
                .field("passphrase", &passphrase.as_ref().map(|_| "<redacted>"))
                .field("known_hosts", &"..")
                .finish(),
        }
    }
}

impl Credentials {
    /// Secret values, to scrub from any message that comes back from libgit2.
    pub(super) fn secrets(&self) -> Vec<String> {
        match self {
            Credentials::None => vec![],
            Credentials::Token { token, .. } => vec![token.clone()],
            Credentials::Ssh {
                private_key,
                passphrase,
                ..
            } => {
                let mut s = vec![private_key.clone()];
                s.extend(passphrase.clone());
                s
            }
        }
    }
}

impl Credentials {
    /// From a Secret's keys, as Flux uses them: `username`/`password` (or `token`) for
    /// HTTPS; `identity`, `known_hosts` and optionally `passphrase` for SSH. Messages name
    /// keys, never values.
    pub fn from_secret(data: &BTreeMap<String, SecretBytes>, ssh: bool) -> Result<Self, String> {
        let get = |k: &str| -> Result<Option<String>, String> {
            match data.get(k) {
                None => Ok(None),
                Some(v) => String::from_utf8(v.expose().to_vec())
                    .map(Some)
                    .map_err(|_| format!("key {k} is not UTF-8")),
            }
        };
        if ssh {
            let private_key =
                get("identity")?.ok_or("missing key identity (the SSH private key)")?;
            let known_hosts = get("known_hosts")?
                .ok_or("missing key known_hosts (host keys are always verified)")?;
            return Ok(Credentials::Ssh {
                private_key,
                passphrase: get("passphrase")?,
                known_hosts,
            });
        }
        let token = match (get("token")?, get("password")?) {
            (Some(t), _) => t,
            (None, Some(p)) => p,
            (None, None) => return Err("missing key token or password".into()),
        };
        Ok(Credentials::Token {
            username: get("username")?,
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretBytes> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretBytes::new(v.as_bytes())))
            .collect()
    }

    #[test]
    fn https_credentials_take_token_or_password() {
        match Credentials::from_secret(&secret(&[("username", "bot"), ("password", "p4ss")]), false)
            .unwrap()
        {
            Credentials::Token { username, token } => {
                assert_eq!((username.as_deref(), token.as_str()), (Some("bot"), "p4ss"))
            }
            other => panic!("{other:?}"),
        }
        let err = Credentials::from_secret(&secret(&[("username", "bot")]), false).unwrap_err();
        assert!(err.contains("token or password"));
    }

    #[test]
    fn ssh_credentials_need_known_hosts_and_never_echo_the_key() {
        let err =
            Credentials::from_secret(&secret(&[("identity", "-----BEGIN KEY-----secret")]), true)
                .unwrap_err();
        assert!(
            err.contains("known_hosts") && !err.contains("secret"),
            "{err}"
        );
    }
}
