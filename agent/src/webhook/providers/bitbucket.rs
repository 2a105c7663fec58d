//! Bitbucket Server: `X-Hub-Signature`, `X-Event-Key` (repo:refs_changed,
//! diagnostics:ping), `X-Request-Id`; clone links and the changed refs in `changes`.

use serde_json::Value;

use super::{Check, Spec};

pub(super) const SPEC: Spec = Spec {
    credential_headers: &["x-hub-signature"],
    check: Check::Signature,
    event_headers: &["x-event-key"],
    push_events: &["repo:refs_changed"],
    ping_events: &["diagnostics:ping"],
    delivery_headers: &["x-request-id"],
    push,
};

fn push(payload: &Value) -> (Vec<String>, Vec<String>) {
    let urls = payload
        .pointer("/repository/links/clone")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("href").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    let refs = payload
        .get("changes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            c.pointer("/ref/id")
                .or_else(|| c.get("refId"))
                .and_then(Value::as_str)
        })
        .map(str::to_owned)
        .collect();
    (urls, refs)
}
