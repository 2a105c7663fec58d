//! Any other sender: `X-Signature: sha256=<hex>` over `{"repository": URL, "ref": REF}`,
//! `X-Delivery-Id`; every request is a push.

use super::{Check, Spec, strings};

pub(super) const SPEC: Spec = Spec {
    credential_headers: &["x-signature"],
    check: Check::Signature,
    event_headers: &[],
    push_events: &[],
    ping_events: &[],
    delivery_headers: &["x-delivery-id"],
    push: |payload| {
        (
            strings(payload, &[&["repository"]]),
            strings(payload, &[&["ref"]]),
        )
    },
};
