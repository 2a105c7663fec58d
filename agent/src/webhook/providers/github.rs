//! GitHub: `X-Hub-Signature-256`, `X-GitHub-Event` (push, ping), `X-GitHub-Delivery`.

use super::{Check, Spec, github_like};

pub(super) const SPEC: Spec = Spec {
    credential_headers: &["x-hub-signature-256"],
    check: Check::Signature,
    event_headers: &["x-github-event"],
    push_events: &["push"],
    ping_events: &["ping"],
    delivery_headers: &["x-github-delivery"],
    push: github_like,
};
