//! OCI Notifications, as an HTTPS (custom URL) subscription delivers: HTTP Basic
//! credentials from the subscription's URL (`https://user:<secret>@host/hooks/oci-notifications`;
//! OCI's own message signature is undocumented, so it is not relied on), the topic in
//! `X-OCI-NS-TopicOcid`, the message id in `X-OCI-NS-MessageId`. The payload is never
//! trusted: a message only says "fetch the sources of this topic now".

use super::{Check, Spec};

pub(super) const SPEC: Spec = Spec {
    credential_headers: &["authorization"],
    check: Check::Basic,
    event_headers: &[],
    push_events: &[],
    ping_events: &[],
    delivery_headers: &["x-oci-ns-messageid"],
    push: |_| (Vec::new(), Vec::new()),
};
