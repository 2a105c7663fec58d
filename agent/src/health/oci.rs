//! The custom resources that bring OCI services into a cluster: External Secrets Operator's
//! stores and secrets (Ready conditions, as kstatus reads them, but an object its controller
//! has not reported on yet is still progressing, not healthy), and the OCI Service Operator's
//! resources in `oci.oracle.com` and the newer per-service `*.oracle.com` groups, whose
//! state is the last condition of `.status.status.conditions` (as OSOK's own printer column
//! reads it): `Active`/True healthy, `Failed` degraded, the rest progressing.

use serde_json::Value;

use super::Assessment;
use super::generic::generic;
use super::json::*;

/// External Secrets Operator's kinds.
pub(super) fn is_eso(group: &str, kind: &str) -> bool {
    group == "external-secrets.io"
        && matches!(
            kind,
            "ExternalSecret"
                | "ClusterExternalSecret"
                | "SecretStore"
                | "ClusterSecretStore"
                | "PushSecret"
        )
}

/// OSOK's groups: `oci.oracle.com` (v1.x) and one per service (`mysql.oracle.com`, ...).
pub(super) fn is_osok(group: &str) -> bool {
    group == "oci.oracle.com"
        || (group.ends_with(".oracle.com") && !group.starts_with("servicemesh."))
}

pub(super) fn eso(obj: &Value) -> Assessment {
    if condition(obj, "Ready").is_none() {
        return progressing("Waiting for External Secrets Operator to report Ready");
    }
    generic(obj)
}

pub(super) fn osok(obj: &Value) -> Assessment {
    let last = obj
        .pointer("/status/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.last());
    let Some(c) = last else {
        return progressing("Waiting for the OCI Service Operator to report a condition");
    };
    let kind = str_at(c, "/type").unwrap_or("");
    let text = {
        let message = str_at(c, "/message")
            .or_else(|| str_at(obj, "/status/status/message"))
            .unwrap_or("");
        if message.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}: {message}")
        }
    };
    match kind {
        "Active" if is_true(Some(c)) => healthy(text),
        "Failed" => degraded(text),
        "Terminating" => progressing(text),
        _ => progressing(text),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{Status, assess};

    #[track_caller]
    fn check(obj: serde_json::Value, status: Status, message: &str) {
        let a = assess(Some(&obj));
        assert_eq!(a.status, status, "{a}");
        assert!(
            a.message.contains(message),
            "{a:?} should mention {message:?}"
        );
    }

    /// Shapes from External Secrets Operator's documented status (external-secrets.io/v1).
    #[test]
    fn external_secrets_and_their_stores() {
        let store = |conditions: serde_json::Value| {
            json!({"apiVersion": "external-secrets.io/v1", "kind": "SecretStore",
                   "metadata": {"name": "oci-vault", "namespace": "shop", "generation": 1},
                   "spec": {"provider": {"oracle": {"vault": "ocid1.vault.oc1..v", "region": "us-ashburn-1", "principalType": "Workload"}}},
                   "status": {"conditions": conditions}})
        };
        check(
            store(
                json!([{"type": "Ready", "status": "True", "reason": "Valid", "message": "store validated"}]),
            ),
            Status::Healthy,
            "store validated",
        );
        check(
            store(
                json!([{"type": "Ready", "status": "False", "reason": "InvalidProviderConfig", "message": "region cannot be empty"}]),
            ),
            Status::Degraded,
            "region cannot be empty",
        );
        check(
            store(json!([])),
            Status::Progressing,
            "External Secrets Operator",
        );
        let secret = json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
            "metadata": {"name": "db", "namespace": "shop"},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "SecretSyncedError",
                                       "message": "could not get secret data from provider"}]}});
        check(secret, Status::Degraded, "could not get secret data");
    }

    /// Shapes from the OCI Service Operator's OSOKStatus (`.status.status`), in v1.x's
    /// group and in a per-service group of the newer line.
    #[test]
    fn oci_service_operator_resources() {
        let db = |group: &str, conditions: serde_json::Value| {
            json!({"apiVersion": format!("{group}/v1beta1"), "kind": "MySqlDbSystem",
                   "metadata": {"name": "shop-db", "namespace": "shop"},
                   "status": {"status": {"conditions": conditions, "ocid": "ocid1.mysqldbsystem.oc1..d"}}})
        };
        let c = |t: &str, s: &str, m: &str| json!({"type": t, "status": s, "message": m});
        check(
            db(
                "oci.oracle.com",
                json!([
                    c("Provisioning", "True", "creating"),
                    c("Active", "True", "MySqlDbSystem is active")
                ]),
            ),
            Status::Healthy,
            "is active",
        );
        check(
            db(
                "mysql.oracle.com",
                json!([c("Provisioning", "True", "creating")]),
            ),
            Status::Progressing,
            "Provisioning",
        );
        check(
            db(
                "oci.oracle.com",
                json!([
                    c("Active", "True", ""),
                    c("Failed", "True", "Out of capacity")
                ]),
            ),
            Status::Degraded,
            "Out of capacity",
        );
        check(
            db("database.oracle.com", json!([])),
            Status::Progressing,
            "OCI Service Operator",
        );
    }
}
