//! Field-level differences between Git's object and the live one: the leaf paths that
//! differ, with both values, as drift reports and alerts carry them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One field that differs between Git and the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldDrift {
    /// Dotted path, e.g. `spec.replicas` or `spec.template.spec.containers[0].image`.
    pub path: String,
    /// Git's value (`null` when Git does not set the field).
    pub before: Value,
    /// The live value (`null` when the field was removed).
    pub after: Value,
}

impl FieldDrift {
    pub fn new(path: impl Into<String>, before: Value, after: Value) -> Self {
        FieldDrift {
            path: path.into(),
            before,
            after,
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (prefix.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{prefix}.{key}"),
        (_, false) => format!("{prefix}[{key:?}]"),
    }
}

/// Leaf paths where `git` and `live` differ (`spec.template.spec.containers[0].image`).
pub fn field_diffs(git: &Value, live: &Value, path: &str, out: &mut Vec<FieldDrift>) {
    match (git, live) {
        (Value::Object(g), Value::Object(l)) => {
            let keys: std::collections::BTreeSet<&String> = g.keys().chain(l.keys()).collect();
            for k in keys {
                let (gv, lv) = (
                    g.get(k).unwrap_or(&Value::Null),
                    l.get(k).unwrap_or(&Value::Null),
                );
                if gv != lv {
                    field_diffs(gv, lv, &join(path, k), out);
                }
            }
        }
        (Value::Array(g), Value::Array(l)) if g.len() == l.len() => {
            for (i, (gv, lv)) in g.iter().zip(l).enumerate() {
                if gv != lv {
                    field_diffs(gv, lv, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ if git != live => out.push(FieldDrift::new(path, git.clone(), live.clone())),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_paths_name_the_leaves_that_differ() {
        let git = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "a:1"}]}}},
                         "metadata": {"labels": {"app.kubernetes.io/name": "web"}}});
        let live = json!({"spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "web", "image": "a:2"}]}}},
                          "metadata": {"labels": {"app.kubernetes.io/name": "other"}}});
        let mut out = Vec::new();
        field_diffs(&git, &live, "", &mut out);
        let paths: Vec<&str> = out.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "metadata.labels[\"app.kubernetes.io/name\"]",
                "spec.replicas",
                "spec.template.spec.containers[0].image"
            ]
        );
        assert_eq!(
            (out[1].before.clone(), out[1].after.clone()),
            (json!(2), json!(5))
        );
    }

    #[test]
    fn secret_values_are_masked_in_drift() {
        let f = crate::diff::mask_field(
            "Secret",
            FieldDrift::new("data.password", json!("aHVudGVyMg=="), json!("c2VjcmV0")),
        );
        assert_eq!(f.before, json!("*** (masked)"));
        assert_eq!(f.after, json!("*** (masked)"));
        let gone = crate::diff::mask_field(
            "Secret",
            FieldDrift::new("data.token", json!("dG9r"), serde_json::Value::Null),
        );
        assert_eq!(gone.after, serde_json::Value::Null, "absence is kept");
        let cm = FieldDrift::new("data.k", json!("v"), json!("w"));
        assert_eq!(crate::diff::mask_field("ConfigMap", cm.clone()), cm);
    }
}
