//! Comparing live and desired objects: normalisation (server-managed metadata and
//! status removed), the one Secret masker (`mask`), field-level differences (`fields`),
//! and unified diffs for people to read.

pub mod fields;
pub mod mask;

pub use fields::{FieldDrift, field_diffs};
pub use mask::{MASK, mask_field, mask_secrets};

use serde_json::Value;
use similar::TextDiff;

/// Metadata the server owns; never part of a comparison or a diff.
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionGracePeriodSeconds",
];

/// Annotations that can carry a copy of the whole object (and so of Secret values).
const COPY_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// Returns the object without status and server-owned metadata: what Git can declare.
pub fn normalize(obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Some(map) = out.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in SERVER_METADATA {
                meta.remove(*k);
            }
            if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                for k in COPY_ANNOTATIONS {
                    ann.remove(*k);
                }
                if ann.is_empty() {
                    meta.remove("annotations");
                }
            }
        }
    }
    out
}

/// Renders an object as YAML for people (a rendering failure falls back to JSON).
pub fn to_yaml(obj: &Value) -> String {
    serde_saphyr::to_string(obj)
        .unwrap_or_else(|_| serde_json::to_string_pretty(obj).unwrap_or_default())
}

/// A unified diff, live → desired, of the normalised, masked objects; `None` when equal.
/// `subject` names the object in the `---`/`+++` headers, as `kubectl diff` does.
pub fn unified(subject: &str, live: Option<&Value>, desired: Option<&Value>) -> Option<String> {
    let mut before = live.map(normalize);
    let mut after = desired.map(normalize);
    mask_secrets(before.as_mut(), after.as_mut());
    if before == after {
        return None;
    }
    let b = before.as_ref().map(to_yaml).unwrap_or_default();
    let a = after.as_ref().map(to_yaml).unwrap_or_default();
    let diff = TextDiff::from_lines(&b, &a);
    Some(
        diff.unified_diff()
            .context_radius(3)
            .header(&format!("live/{subject}"), &format!("git/{subject}"))
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalize_drops_server_fields() {
        let live = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "resourceVersion": "7", "uid": "u", "managedFields": [],
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "data": {"k": "v"}, "status": {"x": 1}});
        assert_eq!(
            normalize(&live),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}})
        );
    }

    #[test]
    fn secret_values_never_appear_in_diffs() {
        let live = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"same": "c2FtZQ==", "old": "aHVudGVyMg=="}});
        let desired = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"same": "c2FtZQ==", "old": "bmV3LXBhc3N3b3Jk"}, "stringData": {"token": "plain-secret"}});
        let d = unified("Secret/ns/s", Some(&live), Some(&desired)).expect("changed");
        for secret in [
            "c2FtZQ==",
            "aHVudGVyMg==",
            "bmV3LXBhc3N3b3Jk",
            "plain-secret",
        ] {
            assert!(!d.contains(secret), "{secret} leaked:\n{d}");
        }
        assert!(
            d.contains("-  old: '*** (masked, before)'")
                || d.contains("-  old: \"*** (masked, before)\"")
                || d.contains("*** (masked, before)"),
            "{d}"
        );
        assert!(d.contains("*** (masked, after)"), "{d}");
        // An unchanged value is masked identically on both sides, so it is not in the diff as a change.
        assert!(
            !d.lines().any(|l| l.starts_with('-') && l.contains("same")),
            "{d}"
        );
    }

    #[test]
    fn equal_objects_have_no_diff() {
        let a = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "1"}, "data": {"k": "v"}});
        let b = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "2"}, "data": {"k": "v"}});
        assert_eq!(unified("ConfigMap/ns/a", Some(&a), Some(&b)), None);
    }

    #[test]
    fn diff_has_kubectl_style_headers() {
        let a = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v1"}});
        let b = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v2"}});
        let d = unified("ConfigMap/ns/a", Some(&a), Some(&b)).unwrap();
        assert!(
            d.starts_with("--- live/ConfigMap/ns/a\n+++ git/ConfigMap/ns/a\n"),
            "{d}"
        );
        assert!(d.contains("-  k: v1") && d.contains("+  k: v2"), "{d}");
        let created = unified("ConfigMap/ns/a", None, Some(&b)).unwrap();
        assert!(created.contains("+kind: ConfigMap"), "{created}");
    }
}
