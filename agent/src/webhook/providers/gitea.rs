//! Gitea and Forgejo: bare-hex `X-Gitea-Signature` / `X-Forgejo-Signature`, their event
//! and delivery headers, and GitHub's payload shape.

use super::{Check, Spec, github_like};

pub(super) const SPEC: Spec = Spec {
    credential_headers: &["x-gitea-signature", "x-forgejo-signature"],
    check: Check::Hex,
    event_headers: &["x-gitea-event", "x-forgejo-event"],
    push_events: &["push"],
    ping_events: &[],
    delivery_headers: &["x-gitea-delivery", "x-forgejo-delivery"],
    push: github_like,
};
