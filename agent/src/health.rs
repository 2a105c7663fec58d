//! Health of live objects, one assessment per kind (after Argo CD and kstatus), and the
//! sync's health as the worst of them. `wait` polls applied objects until they are all
//! Healthy (or Suspended), or reports each one that is not when its timeout passes.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use serde_json::Value;

use crate::object::ObjectRef;

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
        subject: ObjectRef,
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
        unhealthy: Vec<(ObjectRef, Assessment)>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn human(d: &Duration) -> humantime::FormattedDuration {
    humantime::format_duration(*d)
}

fn list(items: &[(ObjectRef, Assessment)]) -> String {
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

/// Assesses one live object given as raw JSON (`apiVersion`, `kind`, `metadata`, `spec`,
/// `status`); `None` means it does not exist.
pub fn assess(obj: Option<&Value>) -> Assessment {
    let Some(obj) = obj else {
        return Assessment::new(Status::Missing, "object does not exist");
    };
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return Assessment::new(Status::Progressing, "Pending deletion");
    }
    let (group, _) = ObjectRef::split_api_version(str_at(obj, "/apiVersion").unwrap_or(""));
    match (group, str_at(obj, "/kind").unwrap_or("")) {
        ("apps" | "extensions", "Deployment") => deployment(obj),
        ("apps", "StatefulSet") => stateful_set(obj),
        ("apps" | "extensions", "DaemonSet") => daemon_set(obj),
        ("apps" | "extensions", "ReplicaSet") => replica_set(obj),
        ("batch", "Job") => job(obj),
        ("batch", "CronJob") => cron_job(obj),
        ("", "Pod") => pod(obj),
        ("", "PersistentVolumeClaim") => pvc(obj),
        ("", "Service") => service(obj),
        ("networking.k8s.io" | "extensions", "Ingress") => ingress(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(obj),
        ("apiregistration.k8s.io", "APIService") => api_service(obj),
        _ => generic(obj),
    }
}

/// Assesses a live object as kube returns it. List items and some responses omit
/// `apiVersion` and `kind`, so they are taken from `ar` when absent.
pub fn assess_object(obj: Option<&DynamicObject>, ar: &ApiResource) -> Assessment {
    let obj = obj.map(|o| to_json(o.clone(), ar));
    assess(obj.as_ref())
}

/// The object as JSON with `apiVersion` and `kind` set (list items arrive without them).
pub(crate) fn to_json(obj: DynamicObject, ar: &ApiResource) -> Value {
    // Serialising a DynamicObject cannot fail: it is metadata and a JSON value.
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.entry("apiVersion")
            .or_insert_with(|| ar.api_version.clone().into());
        m.entry("kind").or_insert_with(|| ar.kind.clone().into());
    }
    v
}

// ---- JSON access: objects arrive untyped, and every field may be absent. ----

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn int_at(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

/// Counters in `status` are omitted when zero.
fn count(v: &Value, ptr: &str) -> i64 {
    int_at(v, ptr).unwrap_or(0)
}

fn bool_at(v: &Value, ptr: &str) -> bool {
    v.pointer(ptr).and_then(Value::as_bool).unwrap_or(false)
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| str_at(c, "/type") == Some(type_))
}

fn is_true(c: Option<&Value>) -> bool {
    c.and_then(|c| str_at(c, "/status")) == Some("True")
}

fn is_false(c: Option<&Value>) -> bool {
    c.and_then(|c| str_at(c, "/status")) == Some("False")
}

/// `reason: message` of a condition, whichever parts it has.
fn describe(c: &Value) -> String {
    match (str_at(c, "/reason"), str_at(c, "/message")) {
        (Some(r), Some(m)) if !m.is_empty() => format!("{r}: {m}"),
        (Some(r), _) => r.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) => String::new(),
    }
}

/// The controller has not yet acted on the latest spec. `observedGeneration` absent counts
/// as not observed for the built-in workload controllers, which always set it.
fn generation_pending(obj: &Value) -> Option<(i64, i64)> {
    let generation = int_at(obj, "/metadata/generation").unwrap_or(0);
    let observed = int_at(obj, "/status/observedGeneration").unwrap_or(0);
    (observed == 0 || generation > observed).then_some((generation, observed))
}

fn progressing(msg: impl Into<String>) -> Assessment {
    Assessment::new(Status::Progressing, msg)
}

fn healthy(msg: impl Into<String>) -> Assessment {
    Assessment::new(Status::Healthy, msg)
}

fn degraded(msg: impl Into<String>) -> Assessment {
    Assessment::new(Status::Degraded, msg)
}

// ---- One function per kind. Messages follow `kubectl rollout status` where it has one. ----

fn deployment(obj: &Value) -> Assessment {
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

fn stateful_set(obj: &Value) -> Assessment {
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

fn daemon_set(obj: &Value) -> Assessment {
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

fn replica_set(obj: &Value) -> Assessment {
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

fn job(obj: &Value) -> Assessment {
    if let Some(c) = condition(obj, "Failed").filter(|c| is_true(Some(c))) {
        return degraded(format!("Job failed: {}", describe(c)));
    }
    if is_true(condition(obj, "Complete")) {
        return healthy(format!(
            "Job completed: {} succeeded",
            count(obj, "/status/succeeded")
        ));
    }
    if bool_at(obj, "/spec/suspend") {
        return Assessment::new(Status::Suspended, "Job is suspended");
    }
    progressing(format!(
        "Job is running: {} active, {} succeeded, {} failed",
        count(obj, "/status/active"),
        count(obj, "/status/succeeded"),
        count(obj, "/status/failed")
    ))
}

fn cron_job(obj: &Value) -> Assessment {
    if bool_at(obj, "/spec/suspend") {
        return Assessment::new(Status::Suspended, "CronJob is suspended");
    }
    healthy("")
}

/// Waiting reasons that will not clear without a change: Argo's rule, any reason starting
/// with `Err` or ending in `Error` or `BackOff` (CrashLoopBackOff, ImagePullBackOff,
/// ErrImagePull, CreateContainerConfigError, ...).
fn is_stuck_waiting(reason: &str) -> bool {
    reason.starts_with("Err") || reason.ends_with("Error") || reason.ends_with("BackOff")
}

fn container_statuses(obj: &Value) -> impl Iterator<Item = &Value> {
    ["/status/initContainerStatuses", "/status/containerStatuses"]
        .into_iter()
        .filter_map(|p| obj.pointer(p).and_then(Value::as_array))
        .flatten()
}

fn pod(obj: &Value) -> Assessment {
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

fn pvc(obj: &Value) -> Assessment {
    match str_at(obj, "/status/phase").unwrap_or("") {
        "Bound" => healthy("Bound"),
        "Pending" => progressing("Pending: waiting for a volume to be bound"),
        "Lost" => degraded("Lost: the bound volume no longer exists"),
        other => Assessment::new(Status::Unknown, format!("phase {other:?}")),
    }
}

fn has_lb_address(obj: &Value) -> bool {
    obj.pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .is_some_and(|ingress| {
            ingress
                .iter()
                .any(|i| str_at(i, "/ip").is_some() || str_at(i, "/hostname").is_some())
        })
}

fn service(obj: &Value) -> Assessment {
    if str_at(obj, "/spec/type") == Some("LoadBalancer") && !has_lb_address(obj) {
        return progressing("Waiting for the load balancer to be assigned an address");
    }
    healthy("")
}

fn ingress(obj: &Value) -> Assessment {
    if has_lb_address(obj) {
        healthy("")
    } else {
        progressing("Waiting for the ingress controller to publish an address")
    }
}

fn crd(obj: &Value) -> Assessment {
    if let Some(c) = condition(obj, "NamesAccepted").filter(|c| is_false(Some(c))) {
        return degraded(format!("Names not accepted: {}", describe(c)));
    }
    if let Some(c) = condition(obj, "NonStructuralSchema").filter(|c| is_true(Some(c))) {
        return degraded(format!("Non-structural schema: {}", describe(c)));
    }
    match condition(obj, "Established") {
        Some(c) if is_true(Some(c)) => healthy(""),
        Some(c) => progressing(format!("Not yet established: {}", describe(c))),
        None => progressing("Waiting to be established"),
    }
}

fn api_service(obj: &Value) -> Assessment {
    match condition(obj, "Available") {
        Some(c) if is_true(Some(c)) => healthy(""),
        Some(c) => progressing(format!("Not available: {}", describe(c))),
        None => progressing("Waiting for the aggregated API to become available"),
    }
}

/// `Ready=False` reasons that mean "still working on it" rather than "failed". There is no
/// standard, so this lists the ones common controllers use (Flux, cert-manager, Crossplane,
/// Cluster API); any other reason is taken as a failure.
const IN_PROGRESS_REASONS: &[&str] = &[
    "Progressing",
    "ProgressingWithRetry",
    "Reconciling",
    "InProgress",
    "Pending",
    "Creating",
    "Updating",
    "Provisioning",
    "Initializing",
    "Issuing",
    "DependencyNotReady",
    "Waiting",
];

/// Any other kind, kstatus-like: a controller that has not seen the latest generation is
/// still working; `Stalled`/`Reconciling` (kstatus's abnormal-true conditions) say so
/// directly; otherwise a `Ready` condition decides. No status at all means nothing to wait for.
fn generic(obj: &Value) -> Assessment {
    if let (Some(generation), Some(observed)) = (
        int_at(obj, "/metadata/generation"),
        int_at(obj, "/status/observedGeneration"),
    ) && observed < generation
    {
        return progressing(format!(
            "Waiting for the controller to observe generation {generation} (observed {observed})"
        ));
    }
    if let Some(c) = condition(obj, "Stalled").filter(|c| is_true(Some(c))) {
        return degraded(format!("Stalled: {}", describe(c)));
    }
    if let Some(c) = condition(obj, "Reconciling").filter(|c| is_true(Some(c))) {
        return progressing(format!("Reconciling: {}", describe(c)));
    }
    match condition(obj, "Ready") {
        Some(c) if is_true(Some(c)) => healthy(str_at(c, "/message").unwrap_or("")),
        Some(c) if is_false(Some(c)) => {
            let reason = str_at(c, "/reason").unwrap_or("");
            if IN_PROGRESS_REASONS.contains(&reason) {
                progressing(format!("Not ready: {}", describe(c)))
            } else {
                degraded(format!("Not ready: {}", describe(c)))
            }
        }
        Some(c) => progressing(format!("Readiness unknown: {}", describe(c))),
        None => healthy(""),
    }
}

// ---- Waiting ----

/// How `wait` waits.
#[derive(Debug, Clone)]
pub struct WaitOptions {
    /// Give up, and report what is not healthy, after this long.
    pub timeout: Duration,
    /// Time between polls of objects that are not yet healthy.
    pub poll_interval: Duration,
    /// At most this many GETs in flight at once.
    pub concurrency: usize,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
            concurrency: 16,
        }
    }
}

/// Waits until every target is Healthy or Suspended and returns each one's assessment, in
/// target order; after `opts.timeout`, fails listing every object that is not, with why.
///
/// Polls rather than watches: a sync waits on a few dozen objects of many kinds, once, for
/// minutes at most. A GET per unsettled object per interval, with bounded concurrency, is
/// cheap, needs only `get` RBAC (a watch needs `list`/`watch` too), and has no stream
/// to re-establish. Objects are not polled again once settled.
///
/// Errors that retrying cannot fix (401, 403) fail at once; other API errors count as
/// Unknown and are retried until the timeout.
#[tracing::instrument(skip_all, fields(objects = targets.len(), timeout = %human(&opts.timeout)))]
pub async fn wait(
    client: &kube::Client,
    targets: &[(ObjectRef, ApiResource)],
    opts: &WaitOptions,
) -> Result<Vec<(ObjectRef, Assessment)>> {
    let refs: Vec<ObjectRef> = targets.iter().map(|(r, _)| r.clone()).collect();
    poll(&refs, opts, |i| {
        let (r, ar) = &targets[i];
        let api: Api<DynamicObject> = match &r.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
            None => Api::all_with(client.clone(), ar),
        };
        async move {
            let obj = api.get_opt(&r.name).await?;
            Ok(obj.map(|o| to_json(o, ar)))
        }
    })
    .await
}

fn is_permanent(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 401 || s.code == 403)
}

/// The wait loop, apart from how an object is fetched (so that its timing can be tested
/// with paused time).
async fn poll<F, Fut>(
    targets: &[ObjectRef],
    opts: &WaitOptions,
    fetch: F,
) -> Result<Vec<(ObjectRef, Assessment)>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<Option<Value>, kube::Error>>,
{
    let start = tokio::time::Instant::now();
    let deadline = start + opts.timeout;
    let mut current: Vec<Assessment> = targets
        .iter()
        .map(|_| Assessment::new(Status::Unknown, "not checked yet"))
        .collect();
    let fetch = &fetch;
    loop {
        let pending: Vec<usize> = (0..targets.len())
            .filter(|&i| !current[i].status.is_settled())
            .collect();
        if pending.is_empty() {
            return Ok(targets.iter().cloned().zip(current).collect());
        }
        let round = async {
            let mut results = futures::stream::iter(pending)
                .map(|i| async move { (i, fetch(i).await) })
                .buffer_unordered(opts.concurrency.max(1));
            while let Some((i, got)) = results.next().await {
                current[i] = match got {
                    Ok(obj) => assess(obj.as_ref()),
                    Err(e) if is_permanent(&e) => {
                        return Err(Error::Get {
                            subject: targets[i].clone(),
                            source: e,
                        });
                    }
                    Err(e) => Assessment::new(Status::Unknown, format!("get failed: {e}")),
                };
                tracing::debug!(subject = %targets[i], health = %current[i], "assessed");
            }
            Ok(())
        };
        // A slow API server must not hold us past the deadline; the last poll gets at least
        // one interval so that a poll started at the deadline can finish.
        let budget = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(opts.poll_interval);
        if let Ok(r) = tokio::time::timeout(budget, round).await {
            r?;
        }
        if current.iter().all(|a| a.status.is_settled()) {
            continue;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let unhealthy = targets
                .iter()
                .zip(&current)
                .filter(|(_, a)| !a.status.is_settled())
                .map(|(r, a)| (r.clone(), a.clone()))
                .collect();
            return Err(Error::Timeout {
                timeout: opts.timeout,
                total: targets.len(),
                unhealthy,
            });
        }
        // The final poll happens at the deadline, not an interval past it.
        tokio::time::sleep_until((now + opts.poll_interval).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

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

    fn target(kind: &str, name: &str) -> ObjectRef {
        ObjectRef {
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
        }
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
        let targets: Vec<ObjectRef> = (0..10)
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
