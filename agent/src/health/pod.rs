//! Pods: phases, restart policies and containers stuck waiting.

use serde_json::Value;

use super::json::*;
use super::{Assessment, Status};

/// Waiting reasons that will not clear without a change: Argo's rule, any reason starting
/// with `Err` or ending in `Error` or `BackOff` (CrashLoopBackOff, ImagePullBackOff,
/// ErrImagePull, CreateContainerConfigError, ...).
pub(super) fn is_stuck_waiting(reason: &str) -> bool {
    reason.starts_with("Err") || reason.ends_with("Error") || reason.ends_with("BackOff")
}

pub(super) fn container_statuses(obj: &Value) -> impl Iterator<Item = &Value> {
    ["/status/initContainerStatuses", "/status/containerStatuses"]
        .into_iter()
        .filter_map(|p| obj.pointer(p).and_then(Value::as_array))
        .flatten()
}

pub(super) fn pod(obj: &Value) -> Assessment {
    let restart = str_at(obj, "/spec/restartPolicy").unwrap_or("Always");
    let message = str_at(obj, "/status/message").unwrap_or("").to_string();
    // Only pods that restart forever are judged by their waiting reasons: a run-once pod
    // (a hook, a Job's pod) may still succeed after a slow image pull.
    if restart == "Always" {
        let stuck: Vec<String> = container_statuses(obj)
            .filter_map(|cs| {
                let reason = str_at(cs, "/state/waiting/reason")?;
                is_stuck_waiting(reason).then(|| {
                    let name = str_at(cs, "/name").unwrap_or("?");
                    match str_at(cs, "/state/waiting/message") {
                        Some(m) if !m.is_empty() => format!("container {name}: {reason}: {m}"),
                        _ => format!("container {name}: {reason}"),
                    }
                })
            })
            .collect();
        if !stuck.is_empty() {
            return degraded(stuck.join(", "));
        }
    }
    match str_at(obj, "/status/phase").unwrap_or("") {
        "Pending" => {
            // The scheduler explains itself on PodScheduled ("0/3 nodes are available: ...").
            let why = condition(obj, "PodScheduled")
                .filter(|c| is_false(Some(c)))
                .map(describe)
                .unwrap_or(message);
            progressing(if why.is_empty() {
                "Pod is pending".to_string()
            } else {
                format!("Pod is pending: {why}")
            })
        }
        "Succeeded" => healthy("Pod succeeded"),
        "Failed" => {
            if !message.is_empty() {
                return degraded(message);
            }
            let why = container_statuses(obj).find_map(|cs| {
                let t = cs.pointer("/state/terminated")?;
                let name = str_at(cs, "/name").unwrap_or("?");
                match (
                    str_at(t, "/message"),
                    str_at(t, "/reason"),
                    int_at(t, "/exitCode"),
                ) {
                    (Some(m), _, _) if !m.is_empty() => Some(m.to_string()),
                    (_, Some("OOMKilled"), _) => Some(format!("container {name}: OOMKilled")),
                    (_, _, Some(code)) if code != 0 => {
                        Some(format!("container {name} failed with exit code {code}"))
                    }
                    _ => None,
                }
            });
            degraded(why.unwrap_or_else(|| "Pod failed".into()))
        }
        "Running" if restart == "Always" => {
            if is_true(condition(obj, "Ready")) {
                return healthy("Pod is running and ready");
            }
            if container_statuses(obj).any(|cs| cs.pointer("/lastState/terminated").is_some()) {
                return degraded("Pod is not ready and a container has restarted");
            }
            progressing("Pod is running, waiting to be ready")
        }
        // A run-once pod is done only when it succeeds.
        "Running" => progressing("Pod is running"),
        other => Assessment::new(Status::Unknown, format!("Pod phase {other:?}")),
    }
}
