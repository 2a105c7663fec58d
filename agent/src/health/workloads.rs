//! Workload controllers: Deployment, StatefulSet, DaemonSet, ReplicaSet, with the
//! messages `kubectl rollout status` gives.

use serde_json::Value;

use super::json::*;
use super::{Assessment, Status};

pub(super) fn deployment(obj: &Value) -> Assessment {
    if bool_at(obj, "/spec/paused") {
        return Assessment::new(Status::Suspended, "Deployment is paused");
    }
    if let Some((generation, observed)) = generation_pending(obj) {
        return progressing(format!(
            "Waiting for rollout to finish: observed generation {observed} is behind generation {generation}"
        ));
    }
    // The controller sets this reason once progressDeadlineSeconds passes without progress.
    if let Some(c) = condition(obj, "Progressing")
        && str_at(c, "/reason") == Some("ProgressDeadlineExceeded")
    {
        return degraded(format!("Progress deadline exceeded: {}", describe(c)));
    }
    let replicas = int_at(obj, "/spec/replicas").unwrap_or(1);
    let updated = count(obj, "/status/updatedReplicas");
    let total = count(obj, "/status/replicas");
    let available = count(obj, "/status/availableReplicas");
    if updated < replicas {
        return progressing(format!(
            "Waiting for rollout to finish: {updated} of {replicas} new replicas have been updated"
        ));
    }
    if total > updated {
        return progressing(format!(
            "Waiting for rollout to finish: {} old replicas are pending termination",
            total - updated
        ));
    }
    if available < updated {
        return progressing(format!(
            "Waiting for rollout to finish: {available} of {updated} updated replicas are available"
        ));
    }
    healthy(format!("{available} of {replicas} replicas available"))
}

pub(super) fn stateful_set(obj: &Value) -> Assessment {
    if generation_pending(obj).is_some() {
        return progressing("Waiting for the StatefulSet spec update to be observed");
    }
    let replicas = int_at(obj, "/spec/replicas").unwrap_or(1);
    let ready = count(obj, "/status/readyReplicas");
    if ready < replicas {
        return progressing(format!(
            "Waiting for {} pods to be ready: {ready} of {replicas} ready",
            replicas - ready
        ));
    }
    let updated = count(obj, "/status/updatedReplicas");
    match str_at(obj, "/spec/updateStrategy/type").unwrap_or("RollingUpdate") {
        // Pods are replaced only when someone deletes them: there is no rollout to wait for.
        "OnDelete" => healthy(format!(
            "{ready} pods ready; update strategy OnDelete, {updated} at the update revision"
        )),
        _ => {
            // Pods with an ordinal below the partition stay at the old revision on purpose.
            let partition =
                int_at(obj, "/spec/updateStrategy/rollingUpdate/partition").unwrap_or(0);
            let want = (replicas - partition).max(0);
            if updated < want {
                return progressing(format!(
                    "Waiting for partitioned rollout to finish: {updated} of {want} new pods have been updated"
                ));
            }
            if partition > 0 {
                return healthy(format!(
                    "Partitioned rollout complete: {updated} new pods have been updated"
                ));
            }
            let (current, update) = (
                str_at(obj, "/status/currentRevision"),
                str_at(obj, "/status/updateRevision"),
            );
            if update.is_some() && current != update {
                return progressing(format!(
                    "Waiting for rolling update to complete: {updated} pods at revision {}",
                    update.unwrap_or_default()
                ));
            }
            healthy(format!("{ready} of {replicas} pods ready and updated"))
        }
    }
}

pub(super) fn daemon_set(obj: &Value) -> Assessment {
    if generation_pending(obj).is_some() {
        return progressing("Waiting for the DaemonSet spec update to be observed");
    }
    let desired = count(obj, "/status/desiredNumberScheduled");
    let available = count(obj, "/status/numberAvailable");
    if str_at(obj, "/spec/updateStrategy/type") == Some("OnDelete") {
        return healthy(format!(
            "{available} of {desired} pods available; update strategy OnDelete"
        ));
    }
    let updated = count(obj, "/status/updatedNumberScheduled");
    if updated < desired {
        return progressing(format!(
            "Waiting for daemon set rollout to finish: {updated} of {desired} new pods have been updated"
        ));
    }
    if available < desired {
        return progressing(format!(
            "Waiting for daemon set rollout to finish: {available} of {desired} updated pods are available"
        ));
    }
    healthy(format!("{available} of {desired} pods available"))
}

pub(super) fn replica_set(obj: &Value) -> Assessment {
    if generation_pending(obj).is_some() {
        return progressing("Waiting for the ReplicaSet spec update to be observed");
    }
    if let Some(c) = condition(obj, "ReplicaFailure").filter(|c| is_true(Some(c))) {
        return degraded(describe(c));
    }
    let replicas = int_at(obj, "/spec/replicas").unwrap_or(1);
    let available = count(obj, "/status/availableReplicas");
    if available < replicas {
        return progressing(format!(
            "Waiting for rollout to finish: {available} of {replicas} replicas are available"
        ));
    }
    healthy(format!("{available} of {replicas} replicas available"))
}
