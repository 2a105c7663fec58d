//! GitLab: the secret token itself in `X-Gitlab-Token`, `X-Gitlab-Event` (Push Hook, Tag
//! Push Hook), and `Idempotency-Key`, which stays the same across GitLab's retries.

use serde_json::Value;

use super::{Check, Spec, strings};

pub(super) const SPEC: Spec = Spec {
    credential_headers: &["x-gitlab-token"],
    check: Check::Token,
    event_headers: &["x-gitlab-event"],
    push_events: &["Push Hook", "Tag Push Hook"],
    ping_events: &[],
    delivery_headers: &["idempotency-key", "x-gitlab-event-uuid"],
    push,
};

fn push(payload: &Value) -> (Vec<String>, Vec<String>) {
    let urls = strings(
        payload,
        &[
            &["project", "git_http_url"],
            &["project", "git_ssh_url"],
            &["project", "web_url"],
            &["repository", "git_http_url"],
            &["repository", "git_ssh_url"],
            &["repository", "homepage"],
            &["repository", "url"],
        ],
    );
    (urls, strings(payload, &[&["ref"]]))
}
