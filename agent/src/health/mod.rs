//! Health of live objects, one assessment per kind (after Argo CD and kstatus), and the
//! sync's health as the worst of them. `wait` polls applied objects until they are all
//! Healthy (or Suspended), or reports each one that is not when its timeout passes.

mod api;
mod batch;
mod generic;
mod json;
mod network;
mod oci;
mod pod;
mod storage;
mod wait;
mod workloads;

use std::fmt;
use std::time::Duration;

use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use serde_json::Value;

use crate::core::ObjectKey;
use json::str_at;
pub use wait::{OnProgress, Progress, WaitOptions, wait};

/// The health of one object. Variants are declared best to worst, so `Ord` is "worst
/// wins": Healthy < Suspended < Progressing < Missing < Degraded < Unknown. This is Argo
/// CD's order (gitops-engine `healthOrder`): Unknown is worst because we cannot vouch for
/// an object we could not assess, and Missing is worse than Progressing because nothing
/// is working towards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Healthy,
    Suspended,
    Progressing,
    Missing,
    Degraded,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "Healthy",
            Status::Suspended => "Suspended",
            Status::Progressing => "Progressing",
            Status::Missing => "Missing",
            Status::Degraded => "Degraded",
            Status::Unknown => "Unknown",
        }
    }

    /// Whether `wait` can stop waiting for an object: a suspended object is as done as it
    /// will get until someone resumes it.
    pub fn is_settled(self) -> bool {
        matches!(self, Status::Healthy | Status::Suspended)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub status: Status,
    pub message: String,
}

impl Assessment {
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Assessment {
            status,
            message: message.into(),
        }
    }
}

impl fmt::Display for Assessment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.status)
        } else {
            write!(f, "{}: {}", self.status, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{subject}: get: {source}")]
    Get {
        subject: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error(
        "timed out after {} waiting for {} of {total} objects: {}",
        human(.timeout),
        .unhealthy.len(),
        list(.unhealthy)
    )]
    Timeout {
        timeout: Duration,
        total: usize,
        /// Every object that was not Healthy or Suspended when time ran out, in target order.
        unhealthy: Vec<(ObjectKey, Assessment)>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn human(d: &Duration) -> humantime::FormattedDuration {
    humantime::format_duration(*d)
}

pub(crate) fn list(items: &[(ObjectKey, Assessment)]) -> String {
    items
        .iter()
        .map(|(r, a)| format!("{r}: {a}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The health of a set of objects: the worst of them, Healthy when there are none.
pub fn worst(statuses: impl IntoIterator<Item = Status>) -> Status {
    statuses.into_iter().max().unwrap_or(Status::Healthy)
}

/// Kinds with no status at all: once applied they are as healthy as they will ever be,
/// so the health wait need not read them.
pub fn without_status(group: &str, kind: &str) -> bool {
    match group {
        "" => matches!(
            kind,
            "ConfigMap" | "Secret" | "ServiceAccount" | "LimitRange"
        ),
        "rbac.authorization.k8s.io" => {
            matches!(
                kind,
                "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding"
            )
        }
        "scheduling.k8s.io" => kind == "PriorityClass",
        "storage.k8s.io" => kind == "StorageClass",
        "networking.k8s.io" => kind == "IngressClass",
        _ => false,
    }
}

/// Assesses one live object given as raw JSON (`apiVersion`, `kind`, `metadata`, `spec`,
/// `status`); `None` means it does not exist.
pub fn assess(obj: Option<&Value>) -> Assessment {
    let Some(obj) = obj else {
        return Assessment::new(Status::Missing, "object does not exist");
    };
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return Assessment::new(Status::Progressing, "Pending deletion");
    }
    let (group, _) = ObjectKey::split_api_version(str_at(obj, "/apiVersion").unwrap_or(""));
    match (group, str_at(obj, "/kind").unwrap_or("")) {
        ("apps" | "extensions", "Deployment") => workloads::deployment(obj),
        ("apps", "StatefulSet") => workloads::stateful_set(obj),
        ("apps" | "extensions", "DaemonSet") => workloads::daemon_set(obj),
        ("apps" | "extensions", "ReplicaSet") => workloads::replica_set(obj),
        ("batch", "Job") => batch::job(obj),
        ("batch", "CronJob") => batch::cron_job(obj),
        ("", "Pod") => pod::pod(obj),
        ("", "PersistentVolumeClaim") => storage::pvc(obj),
        ("", "Service") => network::service(obj),
        ("networking.k8s.io" | "extensions", "Ingress") => network::ingress(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => api::crd(obj),
        ("apiregistration.k8s.io", "APIService") => api::api_service(obj),
        (g, k) if oci::is_eso(g, k) => oci::eso(obj),
        (g, _) if oci::is_osok(g) => oci::osok(obj),
        _ => generic::generic(obj),
    }
}

/// Assesses a live object as kube returns it. List items and some responses omit
/// `apiVersion` and `kind`, so they are taken from `ar` when absent.
pub fn assess_object(obj: Option<&DynamicObject>, ar: &ApiResource) -> Assessment {
    let obj = obj.map(|o| crate::cluster::to_json(o.clone(), ar));
    assess(obj.as_ref())
}

#[cfg(test)]
mod tests {
    use super::wait::poll;
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    #[test]
    fn kinds_without_status_are_only_those_that_have_none() {
        assert!(without_status("", "ConfigMap"));
        assert!(without_status("rbac.authorization.k8s.io", "ClusterRole"));
        for (group, kind) in [
            ("", "Service"),
            ("apps", "Deployment"),
            ("", "Namespace"),
            ("x.io", "ConfigMap"),
        ] {
            assert!(!without_status(group, kind), "{group}/{kind}");
        }
    }

    #[track_caller]
    fn check(obj: Value, status: Status, message: &str) {
        let a = assess(Some(&obj));
        assert_eq!(a.status, status, "{a}");
        assert!(
            a.message.contains(message),
            "{a:?} should mention {message:?}"
        );
    }

    fn deploy(spec: Value, status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "shop", "generation": 2},
               "spec": spec, "status": status})
    }

    #[test]
    fn order_is_worst_wins_as_in_argo() {
        use Status::*;
        let order = [Healthy, Suspended, Progressing, Missing, Degraded, Unknown];
        assert!(order.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(worst([]), Healthy);
        assert_eq!(worst([Healthy, Suspended]), Suspended);
        assert_eq!(worst([Progressing, Healthy, Missing]), Missing);
        assert_eq!(worst([Degraded, Missing, Progressing]), Degraded);
        assert_eq!(worst([Unknown, Degraded]), Unknown);
    }

    #[test]
    fn missing_and_deleting() {
        assert_eq!(assess(None).status, Status::Missing);
        let mut d = deploy(json!({}), json!({}));
        d["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        check(d, Status::Progressing, "Pending deletion");
    }

    #[test]
    fn deployment() {
        let observed = json!({"observedGeneration": 2});
        check(
            deploy(json!({"replicas": 2}), json!({"observedGeneration": 1})),
            Status::Progressing,
            "observed generation 1 is behind generation 2",
        );
        check(
            deploy(
                json!({"replicas": 2}),
                json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
            ),
            Status::Progressing,
            "Waiting for rollout to finish: 1 of 2 updated replicas are available",
        );
        check(
            deploy(
                json!({"replicas": 2}),
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}),
            ),
            Status::Progressing,
            "1 old replicas are pending termination",
        );
        check(
            deploy(
                json!({"replicas": 3}),
                json!({"observedGeneration": 2, "updatedReplicas": 1}),
            ),
            Status::Progressing,
            "1 of 3 new replicas have been updated",
        );
        check(
            deploy(
                json!({"replicas": 2}),
                json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
            ),
            Status::Healthy,
            "2 of 2 replicas available",
        );
        // replicas defaults to 1 when omitted
        check(
            deploy(json!({}), observed.clone()),
            Status::Progressing,
            "0 of 1",
        );
        check(
            deploy(json!({"replicas": 0}), observed.clone()),
            Status::Healthy,
            "",
        );
        check(
            deploy(
                json!({"replicas": 1}),
                json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
                       "conditions": [{"type": "Progressing", "status": "False",
                           "reason": "ProgressDeadlineExceeded",
                           "message": "ReplicaSet \"web-1\" has timed out progressing."}]}),
            ),
            Status::Degraded,
            "Progress deadline exceeded: ProgressDeadlineExceeded: ReplicaSet \"web-1\" has timed out",
        );
        // paused wins over everything: nobody is rolling it out
        check(
            deploy(json!({"paused": true}), json!({})),
            Status::Suspended,
            "paused",
        );
    }

    fn sts(spec: Value, status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": "db", "generation": 1}, "spec": spec, "status": status})
    }

    #[test]
    fn stateful_set() {
        check(
            sts(json!({"replicas": 3}), json!({})),
            Status::Progressing,
            "observed",
        );
        check(
            sts(
                json!({"replicas": 3}),
                json!({"observedGeneration": 1, "readyReplicas": 1}),
            ),
            Status::Progressing,
            "Waiting for 2 pods to be ready",
        );
        let rolling = json!({"observedGeneration": 1, "readyReplicas": 3, "updatedReplicas": 3,
                             "currentRevision": "db-1", "updateRevision": "db-1"});
        check(
            sts(
                json!({"replicas": 3, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}}),
                rolling,
            ),
            Status::Healthy,
            "3 of 3 pods ready",
        );
        check(
            sts(
                json!({"replicas": 3, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}}),
                json!({"observedGeneration": 1, "readyReplicas": 3, "updatedReplicas": 1,
                       "currentRevision": "db-1", "updateRevision": "db-2"}),
            ),
            Status::Progressing,
            "1 of 3 new pods have been updated",
        );
        // A partition of 2 leaves ordinals 0 and 1 at the old revision: only 1 pod must update.
        let part = json!({"replicas": 3, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}});
        check(
            sts(
                part.clone(),
                json!({"observedGeneration": 1, "readyReplicas": 3, "updatedReplicas": 0,
                                     "currentRevision": "db-1", "updateRevision": "db-2"}),
            ),
            Status::Progressing,
            "Waiting for partitioned rollout to finish: 0 of 1",
        );
        check(
            sts(
                part,
                json!({"observedGeneration": 1, "readyReplicas": 3, "updatedReplicas": 1,
                             "currentRevision": "db-1", "updateRevision": "db-2"}),
            ),
            Status::Healthy,
            "Partitioned rollout complete",
        );
        // Without a rollingUpdate block, the revisions tell whether the update finished.
        check(
            sts(
                json!({"replicas": 1}),
                json!({"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1,
                                               "currentRevision": "db-1", "updateRevision": "db-2"}),
            ),
            Status::Progressing,
            "revision db-2",
        );
        check(
            sts(
                json!({"replicas": 2, "updateStrategy": {"type": "OnDelete"}}),
                json!({"observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 0,
                       "currentRevision": "db-1", "updateRevision": "db-2"}),
            ),
            Status::Healthy,
            "OnDelete",
        );
    }

    fn ds(spec: Value, status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
               "metadata": {"name": "agent", "generation": 4}, "spec": spec, "status": status})
    }

    #[test]
    fn daemon_set() {
        check(
            ds(json!({}), json!({"observedGeneration": 3})),
            Status::Progressing,
            "observed",
        );
        check(
            ds(
                json!({}),
                json!({"observedGeneration": 4, "desiredNumberScheduled": 3, "updatedNumberScheduled": 2, "numberAvailable": 3}),
            ),
            Status::Progressing,
            "2 of 3 new pods have been updated",
        );
        check(
            ds(
                json!({}),
                json!({"observedGeneration": 4, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 1}),
            ),
            Status::Progressing,
            "1 of 3 updated pods are available",
        );
        check(
            ds(
                json!({}),
                json!({"observedGeneration": 4, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 3}),
            ),
            Status::Healthy,
            "3 of 3 pods available",
        );
        check(
            ds(
                json!({"updateStrategy": {"type": "OnDelete"}}),
                json!({"observedGeneration": 4, "desiredNumberScheduled": 3, "updatedNumberScheduled": 0, "numberAvailable": 3}),
            ),
            Status::Healthy,
            "OnDelete",
        );
    }

    #[test]
    fn replica_set() {
        let rs = |status: Value| {
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-1", "generation": 1},
                   "spec": {"replicas": 2}, "status": status})
        };
        check(rs(json!({})), Status::Progressing, "observed");
        check(
            rs(json!({"observedGeneration": 1, "availableReplicas": 1})),
            Status::Progressing,
            "1 of 2",
        );
        check(
            rs(json!({"observedGeneration": 1, "availableReplicas": 2})),
            Status::Healthy,
            "2 of 2",
        );
        check(
            rs(
                json!({"observedGeneration": 1, "conditions": [{"type": "ReplicaFailure", "status": "True",
                "reason": "FailedCreate", "message": "pods \"web-1-x\" is forbidden: exceeded quota"}]}),
            ),
            Status::Degraded,
            "FailedCreate: pods \"web-1-x\" is forbidden: exceeded quota",
        );
    }

    #[test]
    fn job_and_cron_job() {
        let job = |spec: Value, status: Value| json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"}, "spec": spec, "status": status});
        check(
            job(json!({}), json!({"active": 1})),
            Status::Progressing,
            "1 active",
        );
        check(
            job(
                json!({}),
                json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
            ),
            Status::Healthy,
            "1 succeeded",
        );
        check(
            job(
                json!({}),
                json!({"failed": 7, "conditions": [{"type": "Failed", "status": "True",
                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
            ),
            Status::Degraded,
            "Job failed: BackoffLimitExceeded: Job has reached the specified backoff limit",
        );
        check(
            job(json!({"suspend": true}), json!({})),
            Status::Suspended,
            "suspended",
        );
        let cron = |suspend: bool| json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"}, "spec": {"suspend": suspend}});
        check(cron(true), Status::Suspended, "suspended");
        check(cron(false), Status::Healthy, "");
    }

    fn pod(restart: &str, status: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1-abc"},
               "spec": {"restartPolicy": restart, "containers": [{"name": "web"}]}, "status": status})
    }

    #[test]
    fn pod_phases() {
        check(
            pod(
                "Always",
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."}]}),
            ),
            Status::Progressing,
            "Pod is pending: Unschedulable: 0/2 nodes are available",
        );
        check(
            pod(
                "Always",
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
            ),
            Status::Healthy,
            "ready",
        );
        check(
            pod(
                "Always",
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": "web", "state": {"running": {}}}]}),
            ),
            Status::Progressing,
            "waiting to be ready",
        );
        check(
            pod(
                "Always",
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": "web", "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 1}}}]}),
            ),
            Status::Degraded,
            "restarted",
        );
        check(
            pod("Never", json!({"phase": "Running"})),
            Status::Progressing,
            "running",
        );
        check(
            pod("Never", json!({"phase": "Succeeded"})),
            Status::Healthy,
            "succeeded",
        );
        check(
            pod(
                "Never",
                json!({"phase": "Failed", "containerStatuses": [{"name": "web",
                "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]}),
            ),
            Status::Degraded,
            "container web failed with exit code 3",
        );
        check(
            pod(
                "OnFailure",
                json!({"phase": "Failed", "containerStatuses": [{"name": "web",
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
            ),
            Status::Degraded,
            "OOMKilled",
        );
        check(
            pod(
                "Always",
                json!({"phase": "Failed", "message": "Pod was rejected: Node didn't have enough resource: cpu"}),
            ),
            Status::Degraded,
            "enough resource",
        );
        check(
            pod("Always", json!({"phase": "Unknown"})),
            Status::Unknown,
            "Unknown",
        );
    }

    #[test]
    fn pod_stuck_waiting_reasons_are_degraded_only_when_it_restarts_forever() {
        let waiting = |reason: &str, message: &str| {
            json!({"phase": "Running", "containerStatuses": [{"name": "web",
                "state": {"waiting": {"reason": reason, "message": message}}}]})
        };
        check(
            pod(
                "Always",
                waiting(
                    "CrashLoopBackOff",
                    "back-off 5m0s restarting failed container",
                ),
            ),
            Status::Degraded,
            "container web: CrashLoopBackOff: back-off 5m0s",
        );
        check(
            pod(
                "Always",
                waiting("ImagePullBackOff", "Back-off pulling image \"web:nope\""),
            ),
            Status::Degraded,
            "ImagePullBackOff",
        );
        check(
            pod("Always", waiting("ErrImagePull", "")),
            Status::Degraded,
            "ErrImagePull",
        );
        check(
            pod(
                "Always",
                waiting("CreateContainerConfigError", "secret \"db\" not found"),
            ),
            Status::Degraded,
            "secret \"db\" not found",
        );
        // ContainerCreating is normal start-up, not stuck.
        check(
            pod("Always", waiting("ContainerCreating", "")),
            Status::Progressing,
            "",
        );
        // A run-once pod may still get its image: not judged by waiting reasons.
        check(
            pod("Never", waiting("ImagePullBackOff", "")),
            Status::Progressing,
            "",
        );
        // Init containers count too.
        check(
            pod(
                "Always",
                json!({"phase": "Pending", "initContainerStatuses": [{"name": "init",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
            ),
            Status::Degraded,
            "container init: CrashLoopBackOff",
        );
    }

    #[test]
    fn persistent_volume_claim() {
        let pvc = |phase: &str| {
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                   "status": {"phase": phase}})
        };
        check(pvc("Bound"), Status::Healthy, "Bound");
        check(pvc("Pending"), Status::Progressing, "Pending");
        check(pvc("Lost"), Status::Degraded, "Lost");
        check(pvc("Odd"), Status::Unknown, "Odd");
    }

    #[test]
    fn service_and_ingress_need_an_address_only_when_load_balanced() {
        let svc = |type_: &str, status: Value| {
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                   "spec": {"type": type_}, "status": status})
        };
        check(svc("ClusterIP", json!({})), Status::Healthy, "");
        check(svc("NodePort", json!({})), Status::Healthy, "");
        check(
            svc("LoadBalancer", json!({"loadBalancer": {}})),
            Status::Progressing,
            "load balancer",
        );
        check(
            svc(
                "LoadBalancer",
                json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.7"}]}}),
            ),
            Status::Healthy,
            "",
        );
        check(
            svc(
                "LoadBalancer",
                json!({"loadBalancer": {"ingress": [{"hostname": "lb.example"}]}}),
            ),
            Status::Healthy,
            "",
        );
        let ing = |status: Value| json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"}, "status": status});
        check(
            ing(json!({"loadBalancer": {}})),
            Status::Progressing,
            "address",
        );
        check(
            ing(json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.8"}]}})),
            Status::Healthy,
            "",
        );
    }

    #[test]
    fn crd_and_api_service() {
        let crd = |conditions: Value| {
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                   "metadata": {"name": "widgets.example.com"}, "status": {"conditions": conditions}})
        };
        check(crd(json!([])), Status::Progressing, "established");
        check(
            crd(
                json!([{"type": "NamesAccepted", "status": "True"}, {"type": "Established", "status": "True"}]),
            ),
            Status::Healthy,
            "",
        );
        check(
            crd(json!([{"type": "Established", "status": "False", "reason": "Installing"}])),
            Status::Progressing,
            "Installing",
        );
        check(
            crd(
                json!([{"type": "NamesAccepted", "status": "False", "reason": "MultipleNamesNotAllowed",
                        "message": "\"widget\" is already in use"}, {"type": "Established", "status": "False"}]),
            ),
            Status::Degraded,
            "\"widget\" is already in use",
        );
        check(
            crd(
                json!([{"type": "NonStructuralSchema", "status": "True", "message": "spec.foo: type missing"},
                       {"type": "Established", "status": "True"}]),
            ),
            Status::Degraded,
            "type missing",
        );
        let apisvc = |conditions: Value| {
            json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                   "metadata": {"name": "v1beta1.metrics.k8s.io"}, "status": {"conditions": conditions}})
        };
        check(
            apisvc(json!([{"type": "Available", "status": "True"}])),
            Status::Healthy,
            "",
        );
        check(
            apisvc(json!([{"type": "Available", "status": "False", "reason": "MissingEndpoints"}])),
            Status::Progressing,
            "MissingEndpoints",
        );
        check(apisvc(json!([])), Status::Progressing, "available");
    }

    fn custom(generation: i64, status: Value) -> Value {
        json!({"apiVersion": "example.com/v1", "kind": "Widget",
               "metadata": {"name": "w", "generation": generation}, "status": status})
    }

    #[test]
    fn other_kinds_by_ready_condition_and_observed_generation() {
        let ready = |status: &str, reason: &str| json!({"observedGeneration": 2, "conditions": [{"type": "Ready", "status": status, "reason": reason, "message": "m"}]});
        check(custom(2, ready("True", "Succeeded")), Status::Healthy, "");
        check(
            custom(2, ready("False", "Progressing")),
            Status::Progressing,
            "Not ready: Progressing: m",
        );
        check(
            custom(2, ready("False", "DependencyNotReady")),
            Status::Progressing,
            "",
        );
        check(
            custom(2, ready("False", "AuthenticationFailed")),
            Status::Degraded,
            "Not ready: AuthenticationFailed: m",
        );
        check(
            custom(2, ready("Unknown", "Reconciling")),
            Status::Progressing,
            "unknown",
        );
        // Ready=True from an older generation does not describe the current spec.
        let mut stale = ready("True", "Succeeded");
        stale["observedGeneration"] = json!(1);
        check(
            custom(2, stale),
            Status::Progressing,
            "observe generation 2 (observed 1)",
        );
        check(
            custom(
                1,
                json!({"conditions": [{"type": "Stalled", "status": "True", "reason": "InvalidSpec"}]}),
            ),
            Status::Degraded,
            "Stalled: InvalidSpec",
        );
        check(
            custom(
                1,
                json!({"conditions": [{"type": "Reconciling", "status": "True", "reason": "Working"}]}),
            ),
            Status::Progressing,
            "Reconciling: Working",
        );
        // Kinds with no status (ConfigMap, Role, ...) exist, which is all they can do.
        check(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}}),
            Status::Healthy,
            "",
        );
    }

    #[test]
    fn assess_object_fills_in_the_type_that_list_items_lack() {
        let ar = ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&());
        // As in a PodList: no apiVersion or kind on the item.
        let item: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "web-1-abc"},
            "spec": {"containers": [{"name": "web"}]},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        let a = assess_object(Some(&item), &ar);
        assert_eq!(a.status, Status::Progressing, "{a}");
        assert_eq!(assess_object(None, &ar).status, Status::Missing);
    }

    // ---- the wait loop, with a scripted cluster and paused time ----

    fn target(kind: &str, name: &str) -> ObjectKey {
        ObjectKey {
            group: "apps".into(),
            version: "v1".into(),
            kind: kind.into(),
            namespace: Some("shop".into()),
            name: name.into(),
        }
    }

    fn rolled_out(available: i64) -> Value {
        deploy(
            json!({"replicas": 2}),
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": available}),
        )
    }

    fn opts(timeout: u64) -> WaitOptions {
        WaitOptions {
            timeout: Duration::from_secs(timeout),
            poll_interval: Duration::from_secs(2),
            concurrency: 4,
            progress: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn progress_names_what_is_still_waited_for_and_the_time_left() {
        let start = tokio::time::Instant::now();
        let targets = [target("Deployment", "web"), target("Deployment", "api")];
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let mut o = opts(60);
        o.progress = Some(OnProgress(std::sync::Arc::new(move |p: &Progress| {
            sink.lock().unwrap().push(p.clone())
        })));
        poll(&targets, &o, |i| {
            let elapsed = start.elapsed();
            async move {
                Ok(Some(match i {
                    0 if elapsed >= Duration::from_secs(3) => rolled_out(2),
                    0 => rolled_out(1),
                    _ => rolled_out(2),
                }))
            }
        })
        .await
        .unwrap();
        let seen = seen.lock().unwrap();
        // Told after the polls at 0 and 2 s, not after the one at 4 s that settles all.
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].total, 2);
        assert_eq!(seen[0].pending.len(), 1);
        assert_eq!(seen[0].pending[0].0, targets[0]);
        assert_eq!(seen[0].pending[0].1.status, Status::Progressing);
        assert_eq!(seen[0].left, Duration::from_secs(60));
        assert_eq!(seen[1].left, Duration::from_secs(58));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_returns_once_everything_settles_and_stops_polling_settled_objects() {
        let start = tokio::time::Instant::now();
        let targets = [target("Deployment", "web"), target("Deployment", "paused")];
        let gets = Mutex::new(vec![0usize; 2]);
        let got = poll(&targets, &opts(60), |i| {
            gets.lock().unwrap()[i] += 1;
            let elapsed = start.elapsed();
            async move {
                Ok(Some(match i {
                    // becomes available 5 s in
                    0 if elapsed >= Duration::from_secs(5) => rolled_out(2),
                    0 => rolled_out(1),
                    _ => deploy(json!({"paused": true}), json!({})),
                }))
            }
        })
        .await
        .unwrap();
        assert_eq!(got[0].1.status, Status::Healthy);
        assert_eq!(got[1].1.status, Status::Suspended);
        assert_eq!(got[0].0, targets[0]);
        // polls at 0, 2, 4, 6 s: healthy on the first poll after 5 s
        assert_eq!(start.elapsed(), Duration::from_secs(6));
        assert_eq!(*gets.lock().unwrap(), vec![4, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_times_out_naming_each_unhealthy_object_and_why() {
        let start = tokio::time::Instant::now();
        let targets = [
            target("Deployment", "web"),
            target("Deployment", "api"),
            target("Deployment", "gone"),
        ];
        let err = poll(&targets, &opts(9), |i| async move {
            Ok(match i {
                0 => Some(rolled_out(1)),
                1 => Some(rolled_out(2)),
                _ => None,
            })
        })
        .await
        .unwrap_err();
        // gives up at the deadline itself, not an interval past it
        assert_eq!(start.elapsed(), Duration::from_secs(9));
        let msg = err.to_string();
        assert_eq!(
            msg,
            "timed out after 9s waiting for 2 of 3 objects: \
             Deployment/shop/web: Progressing: Waiting for rollout to finish: 1 of 2 updated replicas are available; \
             Deployment/shop/gone: Missing: object does not exist"
        );
        let Error::Timeout { unhealthy, .. } = err else {
            panic!("{msg}")
        };
        assert_eq!(unhealthy.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_fails_at_once_when_forbidden_and_retries_other_errors() {
        let forbidden = || {
            kube::Error::Api(
                kube::core::Status::failure("deployments.apps \"web\" is forbidden", "Forbidden")
                    .with_code(403)
                    .boxed(),
            )
        };
        let start = tokio::time::Instant::now();
        let err = poll(&[target("Deployment", "web")], &opts(60), |_| async move {
            Err(forbidden())
        })
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Get { .. }), "{err}");
        assert!(
            err.to_string().starts_with("Deployment/shop/web: get: "),
            "{err}"
        );
        assert_eq!(start.elapsed(), Duration::ZERO);

        // A 500 is retried, and reported as Unknown if it never clears.
        let calls = Mutex::new(0);
        let got = poll(&[target("Deployment", "web")], &opts(60), |_| {
            *calls.lock().unwrap() += 1;
            let n = *calls.lock().unwrap();
            async move {
                if n < 3 {
                    Err(kube::Error::Api(
                        kube::core::Status::failure("etcdserver: leader changed", "InternalError")
                            .with_code(500)
                            .boxed(),
                    ))
                } else {
                    Ok(Some(rolled_out(2)))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got[0].1.status, Status::Healthy);
        assert_eq!(*calls.lock().unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_bounds_concurrency_and_a_hung_get_cannot_outlast_the_timeout() {
        let in_flight = Mutex::new((0usize, 0usize)); // (now, max)
        let targets: Vec<ObjectKey> = (0..10)
            .map(|i| target("Deployment", &format!("d{i}")))
            .collect();
        let got = poll(&targets, &opts(60), |_| {
            let in_flight = &in_flight;
            async move {
                {
                    let mut f = in_flight.lock().unwrap();
                    f.0 += 1;
                    f.1 = f.1.max(f.0);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                in_flight.lock().unwrap().0 -= 1;
                Ok(Some(rolled_out(2)))
            }
        })
        .await
        .unwrap();
        assert_eq!(got.len(), 10);
        assert_eq!(in_flight.lock().unwrap().1, 4);

        let start = tokio::time::Instant::now();
        let err = poll(&[target("Deployment", "web")], &opts(10), |_| async {
            std::future::pending::<()>().await;
            Ok(None)
        })
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(
            err.to_string().contains("Unknown: not checked yet"),
            "{err}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
