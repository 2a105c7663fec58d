//! One file per Git hosting service: the header it signs with and how the signature is
//! checked, the headers that name its events and deliveries, and where its push payload
//! keeps the repository's URLs and the refs that changed.

mod bitbucket;
mod generic;
mod gitea;
mod github;
mod gitlab;
mod oci;

use serde_json::Value;

use super::Provider;

/// How a provider proves a request is its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// The shared secret itself, compared in constant time (GitLab).
    Token,
    /// `sha256=<hex>` of HMAC-SHA256 over the body.
    Signature,
    /// Bare hex of HMAC-SHA256 over the body (Gitea, Forgejo).
    Hex,
    /// HTTP Basic: the password is the shared secret, compared in constant time (OCI
    /// Notifications, from the subscription URL's userinfo).
    Basic,
}

/// What the receiver needs to know of one provider.
pub(super) struct Spec {
    pub credential_headers: &'static [&'static str],
    pub check: Check,
    /// Headers naming the event; none means every request is a push.
    pub event_headers: &'static [&'static str],
    pub push_events: &'static [&'static str],
    pub ping_events: &'static [&'static str],
    pub delivery_headers: &'static [&'static str],
    /// The payload's repository URLs and changed refs.
    pub push: fn(&Value) -> (Vec<String>, Vec<String>),
}

impl Provider {
    pub(super) fn spec(self) -> &'static Spec {
        match self {
            Provider::Github => &github::SPEC,
            Provider::Gitlab => &gitlab::SPEC,
            Provider::Gitea => &gitea::SPEC,
            Provider::Bitbucket => &bitbucket::SPEC,
            Provider::Generic => &generic::SPEC,
            Provider::OciNotifications => &oci::SPEC,
        }
    }
}

/// The strings found at `paths` of the payload.
fn strings(payload: &Value, paths: &[&[&str]]) -> Vec<String> {
    paths
        .iter()
        .filter_map(|path| {
            path.iter()
                .try_fold(payload, |v, k| v.get(k))
                .and_then(Value::as_str)
        })
        .map(str::to_owned)
        .collect()
}

/// GitHub's payload shape, which Gitea and Forgejo copy.
fn github_like(payload: &Value) -> (Vec<String>, Vec<String>) {
    let urls = strings(
        payload,
        &[
            &["repository", "clone_url"],
            &["repository", "ssh_url"],
            &["repository", "html_url"],
            &["repository", "git_url"],
        ],
    );
    (urls, strings(payload, &[&["ref"]]))
}
