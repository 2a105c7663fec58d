//! One session with a Git server (a fetch, or listing its refs): credentials, host key
//! verification against known_hosts, cancellation, and errors scrubbed of secrets.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, FetchOptions, FetchPrune,
    RemoteCallbacks, Repository,
};

use super::{Credentials, Inner};
use crate::source::{Error, Result};

/// What one session with the server does.
pub(super) enum Op<'a> {
    Fetch(&'a [String]),
    List,
}

pub(super) struct Transfer {
    /// Every ref the server advertised.
    pub(super) advertised: HashSet<String>,
    pub(super) received_objects: usize,
    pub(super) received_bytes: usize,
}

/// Removes URL credentials and the given secret values from a message.
pub(super) fn scrub(message: &str, secrets: &[String]) -> String {
    let mut out = message
        .split(' ')
        .map(|word| {
            if word.contains("://") {
                crate::core::url::redact(word)
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "<redacted>");
    }
    out
}

/// What the callbacks learned when a session fails: the reason to report.
#[derive(Default)]
struct Failures {
    auth: RefCell<Option<String>>,
    host_key: RefCell<Option<String>>,
}

impl Inner {
    /// One session with the server: a fetch of `refspecs`, or only listing its refs.
    pub(super) fn transfer(
        &self,
        repo: &Repository,
        op: Op<'_>,
        cancel: &AtomicBool,
    ) -> Result<Transfer> {
        let spec = &self.spec;
        let failures = Failures::default();
        let callbacks = self.callbacks(&failures, cancel);
        // Anonymous: the URL, which may embed credentials, is never written to the mirror's config.
        let mut remote = repo.remote_anonymous(&spec.url).map_err(|e| Error::Fetch {
            name: spec.name.clone(),
            url: self.display_url.clone(),
            reason: self.scrub(e.message()),
        })?;
        let names = |heads: &[git2::RemoteHead<'_>]| -> HashSet<String> {
            heads.iter().map(|h| h.name().to_owned()).collect()
        };
        let result = match op {
            Op::Fetch(refspecs) => {
                let mut options = FetchOptions::new();
                options
                    .remote_callbacks(callbacks)
                    .download_tags(AutotagOption::None)
                    .update_fetchhead(false)
                    .prune(FetchPrune::On);
                remote
                    .fetch(refspecs, Some(&mut options), None)
                    .and_then(|()| {
                        let stats = remote.stats();
                        Ok(Transfer {
                            // Still available after the fetch has disconnected.
                            advertised: names(remote.list()?),
                            received_objects: stats.received_objects(),
                            received_bytes: stats.received_bytes(),
                        })
                    })
            }
            Op::List => remote
                .connect_auth(git2::Direction::Fetch, Some(callbacks), None)
                .and_then(|connection| {
                    Ok(Transfer {
                        advertised: names(connection.list()?),
                        received_objects: 0,
                        received_bytes: 0,
                    })
                }),
        };
        let e = match result {
            Ok(transfer) => {
                tracing::debug!(
                    source = %spec.name,
                    url = %self.display_url,
                    objects = transfer.received_objects,
                    bytes = transfer.received_bytes,
                    "fetched"
                );
                return Ok(transfer);
            }
            Err(e) => e,
        };
        Err(self.failure(e, failures))
    }

    /// Credentials (each offered once), host key verification and cancellation.
    fn callbacks<'a>(
        &'a self,
        failures: &'a Failures,
        cancel: &'a AtomicBool,
    ) -> RemoteCallbacks<'a> {
        let spec = &self.spec;
        let auth_failure = &failures.auth;
        let host_key_failure = &failures.host_key;
        let attempts = std::cell::Cell::new(0);
        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(move |_url, username_from_url, allowed| {
            let fail = |why: &str| {
                *auth_failure.borrow_mut() = Some(why.to_owned());
                Err(git2::Error::from_str(why))
            };
            if allowed.contains(CredentialType::USERNAME) {
                // libssh2 first asks for the user name alone when the URL has none.
                return Cred::username(username_from_url.unwrap_or("git"));
            }
            attempts.set(attempts.get() + 1);
            if attempts.get() > 1 {
                // libgit2 asks again after a rejection; the same secret would only fail again.
                return fail("the server rejected the credentials");
            }
            match &spec.credentials {
                Credentials::Token { username, token }
                    if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) =>
                {
                    let user = username.as_deref().or(username_from_url).unwrap_or("git");
                    Cred::userpass_plaintext(user, token)
                }
                Credentials::Ssh {
                    private_key,
                    passphrase,
                    ..
                } if allowed.contains(CredentialType::SSH_KEY) => Cred::ssh_key_from_memory(
                    username_from_url.unwrap_or("git"),
                    None,
                    private_key,
                    passphrase.as_deref(),
                )
                .or_else(|_| {
                    fail("the SSH private key cannot be loaded (wrong passphrase or format?)")
                }),
                Credentials::None => {
                    fail("the server requires credentials and none are configured")
                }
                _ => fail("the server asks for a kind of credentials that is not configured"),
            }
        });
        if let Some(ssh) = &self.ssh {
            callbacks.certificate_check(|cert, _host| {
                let Some(hostkey) = cert.as_hostkey() else {
                    // Not SSH (an X.509 certificate): libgit2's own verification decides.
                    return Ok(CertificateCheckStatus::CertificatePassthrough);
                };
                let verdict = match (hostkey.hostkey(), hostkey.hostkey_type()) {
                    (Some(key), Some(kind)) => {
                        ssh.known_hosts
                            .verify(&ssh.host, ssh.port, kind.name(), key)
                    }
                    _ => Err("the server's raw host key is not available".to_owned()),
                };
                match verdict {
                    Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                    Err(why) => {
                        let fingerprint = hostkey
                            .hash_sha256()
                            .map(|h| format!(" (server key SHA256:{})", STANDARD_NO_PAD.encode(h)))
                            .unwrap_or_default();
                        let why = format!("{why}{fingerprint}");
                        *host_key_failure.borrow_mut() = Some(why.clone());
                        Err(git2::Error::from_str(&why))
                    }
                }
            });
        }
        let progress_cancel = |_: git2::Progress<'_>| !cancel.load(Ordering::Relaxed);
        callbacks.transfer_progress(progress_cancel);
        callbacks.sideband_progress(|_| !cancel.load(Ordering::Relaxed));
        callbacks
    }

    /// The error of a failed session, from what the callbacks saw or libgit2's message.
    fn failure(&self, e: git2::Error, failures: Failures) -> Error {
        let spec = &self.spec;
        let (name, url) = (spec.name.clone(), self.display_url.clone());
        if let Some(reason) = failures.host_key.into_inner() {
            return Error::HostKey { name, url, reason };
        }
        if let Some(reason) = failures.auth.into_inner() {
            return Error::Auth { name, url, reason };
        }
        // libssh2 reports a key it cannot decrypt or parse (a wrong passphrase) only
        // when authenticating, after the credentials callback has returned.
        if e.code() == git2::ErrorCode::Auth
            || e.class() == git2::ErrorClass::Ssh && e.message().contains("authenticat")
        {
            let reason = self.scrub(e.message());
            return Error::Auth { name, url, reason };
        }
        Error::Fetch {
            name,
            url,
            reason: self.scrub(e.message()),
        }
    }
}
