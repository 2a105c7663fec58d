//! Staged server-side apply, modelled on Flux's `ssa.ResourceManager`: CRDs and Namespaces
//! first (waiting until CRDs are Established), then everything else in a fixed kind order.
//! Drift is decided by a server-side dry-run compared with the live object after
//! normalisation; only objects that differ are written.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use http::StatusCode;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource as _, ResourceExt};
use serde_json::Value;
use serde_json::value::RawValue;

mod owners;

pub use owners::{Owners, conflict};

use crate::cluster::discovery::{self, Discovery, Resource};
use crate::core::{
    Action, Change, ChangeSet, OWNER_LABEL, ObjectKey, RECREATE_ANNOTATION, parse_compact,
};
use crate::diff;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Discovery(#[from] discovery::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One object to apply: its identity and the manifest as rendered from Git (owner labels
/// included), as compact JSON.
#[derive(Debug, Clone, Copy)]
pub struct Desired<'a> {
    pub id: &'a ObjectKey,
    pub object: &'a RawValue,
    /// The sync's inventory lists it: it was applied before, so it probably exists and is
    /// compared before any write. An object never applied is applied directly.
    pub inventoried: bool,
    /// Another sync that owns it (by label), as found before the apply.
    pub foreign_owner: Option<&'a str>,
}

/// What a sync can learn from, and tell, a cache of the live state (the drift detector's
/// watches): which objects need no request at all, and which it found unchanged by
/// comparing, so the cache need not compare them again.
pub trait LiveCache: Send + Sync + std::fmt::Debug {
    /// Whether applying `desired` would change nothing, known without a request; `false`
    /// when unsure.
    fn known_unchanged(&self, id: &ObjectKey, desired: &RawValue) -> bool;
    /// A dry-run of `desired` against `live` (this exact object, at its resourceVersion)
    /// changed nothing.
    fn compared_unchanged(&self, id: &ObjectKey, desired: &RawValue, live: &Value);
    /// The object's health as the cache last saw it; `None` when it has not seen it.
    fn health(&self, _id: &ObjectKey) -> Option<crate::health::Assessment> {
        None
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub field_manager: String,
    /// Decide and diff, but write nothing.
    pub dry_run: bool,
    /// Requests in flight at once within a stage.
    pub concurrency: usize,
    /// How long to wait for applied CRDs to become Established.
    pub crd_timeout: Duration,
    /// Objects this says are unchanged are reported so without any request, and it hears
    /// of the objects found unchanged by comparing.
    pub cache: Option<std::sync::Arc<dyn LiveCache>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            field_manager: crate::FIELD_MANAGER.to_string(),
            dry_run: false,
            concurrency: 16,
            crd_timeout: Duration::from_secs(60),
            cache: None,
        }
    }
}

/// The fixed apply order: what others depend on first, admission webhooks last (so a
/// broken webhook cannot block the rest of the revision). Unknown kinds (custom
/// resources) go after the built-in workloads and before webhooks.
const KIND_ORDER: &[&str] = &[
    "CustomResourceDefinition",
    "Namespace",
    "ResourceQuota",
    "LimitRange",
    "PriorityClass",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
];
const WEBHOOK_KINDS: &[&str] = &[
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// Rank of a kind in the apply order (prune uses the reverse).
pub fn kind_rank(kind: &str) -> usize {
    if let Some(i) = KIND_ORDER.iter().position(|k| *k == kind) {
        return i;
    }
    if let Some(i) = WEBHOOK_KINDS.iter().position(|k| *k == kind) {
        return KIND_ORDER.len() + 1 + i;
    }
    KIND_ORDER.len()
}

/// Sort key for apply: kind order, then namespace, then name.
pub fn order_key(id: &ObjectKey) -> (usize, String, String, Option<String>, String) {
    (
        kind_rank(&id.kind),
        id.kind.clone(),
        id.group.clone(),
        id.namespace.clone(),
        id.name.clone(),
    )
}

fn is_stage_one(id: &ObjectKey) -> bool {
    (id.group == "apiextensions.k8s.io" && id.kind == "CustomResourceDefinition")
        || (id.group.is_empty() && id.kind == "Namespace")
}

/// Applies desired objects to the cluster with server-side apply. Shared by syncs that run
/// at once: discovery is swapped whole when a sync's CRDs make it refresh.
pub struct ResourceManager {
    client: Client,
    discovery: RwLock<Arc<Discovery>>,
    /// When discovery was last refreshed for a kind it did not know.
    refreshed: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// At most one refresh for unknown kinds this often: a revision that names a kind no
/// cluster serves (a typo) must not re-discover on every sync.
const UNKNOWN_KIND_REFRESH: Duration = Duration::from_secs(10);

impl ResourceManager {
    pub async fn new(client: Client) -> Result<Self> {
        let discovery = Discovery::run(&client).await?;
        Ok(Self::with_discovery(client, discovery))
    }

    pub fn with_discovery(client: Client, discovery: Discovery) -> Self {
        ResourceManager {
            client,
            discovery: RwLock::new(Arc::new(discovery)),
            refreshed: std::sync::Mutex::new(None),
        }
    }

    /// Runs discovery again because a revision names a kind it does not know (a CRD
    /// installed by someone else since the last discovery). Rate-limited; returns whether it
    /// refreshed.
    pub async fn refresh_for_unknown_kind(&self) -> Result<bool> {
        {
            let mut last = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < UNKNOWN_KIND_REFRESH) {
                return Ok(false);
            }
            *last = Some(now);
        }
        let fresh = Discovery::run(&self.client).await?;
        self.set_discovery(fresh);
        Ok(true)
    }

    /// The API resources as last discovered.
    pub fn discovery(&self) -> Arc<Discovery> {
        self.discovery
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_discovery(&self, discovery: Discovery) {
        *self.discovery.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(discovery);
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Applies everything in two stages and returns one change per object, in apply order.
    pub async fn apply_all_staged(
        &self,
        desired: &[Desired<'_>],
        opts: &Options,
    ) -> Result<ChangeSet> {
        let mut sorted: Vec<Desired<'_>> = desired.to_vec();
        sorted.sort_by_key(|d| order_key(d.id));
        let (stage_one, stage_two): (Vec<_>, Vec<_>) =
            sorted.into_iter().partition(|d| is_stage_one(d.id));

        let mut changes = self.apply_group(&stage_one, opts).await;
        let crds_changed: Vec<ObjectKey> = changes
            .entries
            .iter()
            .filter(|c| {
                c.subject.kind == "CustomResourceDefinition"
                    && matches!(c.action, Action::Created | Action::Configured)
            })
            .map(|c| c.subject.clone())
            .collect();
        if !crds_changed.is_empty() && !opts.dry_run {
            let failures = self.wait_established(&crds_changed, opts.crd_timeout).await;
            for (name, why) in failures {
                if let Some(c) = changes.entries.iter_mut().find(|c| {
                    c.subject.kind == "CustomResourceDefinition" && c.subject.name == name
                }) {
                    c.action = Action::Failed;
                    c.message = Some(why);
                }
            }
        }
        let crd_kinds: Vec<(String, String)> = stage_one
            .iter()
            .filter(|d| d.id.kind == "CustomResourceDefinition")
            .filter_map(|d| {
                let crd = parse_compact(d.object);
                let spec = crd.get("spec")?;
                let group = spec.get("group")?.as_str()?;
                let kind = spec.pointer("/names/kind")?.as_str()?;
                Some((group.to_string(), kind.to_string()))
            })
            .collect();
        if !crd_kinds.is_empty() && !opts.dry_run {
            self.refresh_until_served(&crd_kinds, opts.crd_timeout)
                .await?;
        }

        // Within stage two, kinds go one rank at a time so that, say, ServiceAccounts
        // exist before the Deployments that use them; objects of a rank go concurrently.
        let mut by_rank: BTreeMap<usize, Vec<Desired<'_>>> = BTreeMap::new();
        for d in stage_two {
            if opts.dry_run && self.served_only_by(&crd_kinds, d.id) {
                changes.push(would_create_with_crd(d));
                continue;
            }
            by_rank.entry(kind_rank(&d.id.kind)).or_default().push(d);
        }
        for group in by_rank.values() {
            changes.extend(self.apply_group(group, opts).await);
        }
        Ok(changes)
    }

    /// Whether `id`'s kind is not served yet and one of the revision's CRDs defines it: a
    /// dry run cannot create the CRD, so it cannot dry-run the object either.
    fn served_only_by(&self, crd_kinds: &[(String, String)], id: &ObjectKey) -> bool {
        self.discovery()
            .resolve(&id.group, &id.version, &id.kind)
            .is_none()
            && crd_kinds
                .iter()
                .any(|(g, k)| *g == id.group && *k == id.kind)
    }

    async fn apply_group(&self, group: &[Desired<'_>], opts: &Options) -> ChangeSet {
        // Objects the cache knows unchanged are settled here, without a future each: a
        // resync of thousands would otherwise build (and page in) thousands of them.
        let mut settled: Vec<Option<Change>> = group
            .iter()
            .map(|d| {
                let cache = opts.cache.as_ref()?;
                cache
                    .known_unchanged(d.id, d.object)
                    .then(|| Change::new(d.id.clone(), Action::Unchanged))
            })
            .collect();
        // The futures are made first, so the stream holds no closure over borrowed
        // objects: that keeps a sync's future `Send` for the task it runs in.
        let work: Vec<_> = group
            .iter()
            .enumerate()
            .filter(|(i, _)| settled[*i].is_none())
            .map(|(i, d)| {
                let d = *d;
                async move { (i, self.apply_one(d, opts).await) }
            })
            .collect();
        let results: Vec<(usize, Change)> = futures::stream::iter(work)
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        for (i, c) in results {
            settled[i] = Some(c);
        }
        ChangeSet {
            entries: settled.into_iter().flatten().collect(),
        }
    }

    fn api_for(&self, res: &Resource, namespace: Option<&str>) -> Api<DynamicObject> {
        crate::cluster::api_for(
            &self.client,
            &res.api,
            res.namespaced.then_some(namespace).flatten(),
        )
    }

    /// Decides and (unless dry-run) applies one object. Never panics, never returns an
    /// error: a failure is a `Failed` change naming the object.
    pub async fn apply_one(&self, d: Desired<'_>, opts: &Options) -> Change {
        let id = d.id;
        let body = d.object;
        // First, as most objects of a resync are known unchanged: they cost no lookup.
        if let Some(cache) = &opts.cache {
            if cache.known_unchanged(id, body) {
                return Change::new(id.clone(), Action::Unchanged);
            }
            tracing::debug!(object = %id, "not known unchanged: compared with the cluster");
        }
        let discovery = self.discovery();
        let Some(res) = discovery.resolve(&id.group, &id.version, &id.kind) else {
            return Change::new(id.clone(), Action::Failed).with_message(format!(
                "no API resource for {} {} in this cluster",
                id.api_version(),
                id.kind
            ));
        };
        let api = self.api_for(res, id.namespace.as_deref());

        if let Some(owner) = d.foreign_owner
            && let Some(c) = conflict(id, owner, body)
        {
            return c;
        }
        if !d.inventoried && !opts.dry_run {
            return self.apply_unseen(res, d, opts).await;
        }

        let live = match api.get_opt(&id.name).await {
            Ok(l) => l,
            Err(e) => return failed(id, "get", &e),
        };
        if let Some(owner) = live.as_ref().and_then(|l| l.labels().get(OWNER_LABEL))
            && let Some(c) = conflict(id, owner, body)
        {
            return c;
        }
        let Some(live) = live else {
            // Absent: nothing to compare, so no dry-run first.
            let diff = created_diff(id, body);
            if !opts.dry_run
                && let Err(e) = self.write(res, id, body, opts).await
            {
                return failed(id, "apply", &e);
            }
            return Change::new(id.clone(), Action::Created).with_diff(diff);
        };

        let live_json = match serde_json::to_value(&live) {
            Ok(v) => v,
            Err(e) => {
                return Change::new(id.clone(), Action::Failed)
                    .with_message(format!("encode live object: {e}"));
            }
        };
        let merged = match self.dry_run(&api, id, body, opts).await {
            Ok(m) => m,
            Err(e) if is_immutable(&e) => {
                return self.recreate(res, id, body, &live, opts, &e).await;
            }
            Err(e) => return failed(id, "dry-run apply", &e),
        };
        let merged_json = match serde_json::to_value(&merged) {
            Ok(v) => v,
            Err(e) => {
                return Change::new(id.clone(), Action::Failed)
                    .with_message(format!("encode dry-run result: {e}"));
            }
        };
        if diff::normalize(&live_json) == diff::normalize(&merged_json) {
            if let Some(cache) = &opts.cache {
                cache.compared_unchanged(id, body, &live_json);
            }
            return Change::new(id.clone(), Action::Unchanged);
        }
        let diff = diff::unified(&id.to_string(), Some(&live_json), Some(&merged_json));
        if !opts.dry_run
            && let Err(e) = self.write(res, id, body, opts).await
        {
            return failed(id, "apply", &e);
        }
        Change::new(id.clone(), Action::Configured).with_diff(diff)
    }

    /// An object this sync never applied: there is nothing of ours to compare with, so it is
    /// applied at once, one request instead of a GET that (on a first sync) finds nothing,
    /// then the apply. The status code tells creation (201) from an object that existed
    /// (200) and is now adopted. Adoption usually changes the object (the owner label), so
    /// skipping the read costs at most a no-op write, when an inventory was lost.
    async fn apply_unseen(&self, res: &Resource, d: Desired<'_>, opts: &Options) -> Change {
        let (id, body) = (d.id, d.object);
        match self.write(res, id, body, opts).await {
            Ok(StatusCode::CREATED) => {
                Change::new(id.clone(), Action::Created).with_diff(created_diff(id, body))
            }
            Ok(_) => Change::new(id.clone(), Action::Configured)
                .with_message("existed before this sync applied it; now managed by it"),
            Err(e) if is_immutable(&e) => match self
                .api_for(res, id.namespace.as_deref())
                .get_opt(&id.name)
                .await
            {
                Ok(Some(live)) => self.recreate(res, id, body, &live, opts, &e).await,
                Ok(None) => failed(id, "apply", &e),
                Err(e) => failed(id, "get", &e),
            },
            Err(e) => failed(id, "apply", &e),
        }
    }

    /// The server-side dry-run of applying `body`: the object as it would be.
    async fn dry_run(
        &self,
        api: &Api<DynamicObject>,
        id: &ObjectKey,
        body: &RawValue,
        opts: &Options,
    ) -> kube::Result<DynamicObject> {
        let pp = PatchParams::apply(&opts.field_manager).force().dry_run();
        api.patch(&id.name, &pp, &Patch::Apply(body)).await
    }

    /// Every real apply: forced, returning only the status code (the response body, the
    /// whole object, is not decoded, as nothing here reads it).
    async fn write(
        &self,
        res: &Resource,
        id: &ObjectKey,
        body: &RawValue,
        opts: &Options,
    ) -> kube::Result<StatusCode> {
        let pp = PatchParams::apply(&opts.field_manager).force();
        let namespace = res.namespaced.then_some(id.namespace.as_deref()).flatten();
        apply_with_status(&self.client, &res.api, namespace, &id.name, &pp, body).await
    }

    /// An immutable field changed. Only an explicit annotation on the object in Git allows
    /// deleting and recreating it; otherwise the conflict is reported on the object.
    async fn recreate(
        &self,
        res: &Resource,
        id: &ObjectKey,
        raw: &RawValue,
        live: &DynamicObject,
        opts: &Options,
        cause: &kube::Error,
    ) -> Change {
        let api = self.api_for(res, id.namespace.as_deref());
        let body = &parse_compact(raw);
        let allowed = body
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(RECREATE_ANNOTATION))
            .and_then(Value::as_str)
            .is_some_and(|v| v == "true" || v == "enabled");
        if !allowed {
            return Change::new(id.clone(), Action::Failed).with_message(format!(
                "{} (annotate it {RECREATE_ANNOTATION}: \"true\" in Git to allow delete and recreate)",
                crate::cluster::api_message(cause)
            ));
        }
        let diff = serde_json::to_value(live)
            .ok()
            .and_then(|l| diff::unified(&id.to_string(), Some(&l), Some(body)));
        if opts.dry_run {
            return Change::new(id.clone(), Action::Configured)
                .with_diff(diff)
                .with_message("would be recreated: immutable field changed");
        }
        let dp = DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
            ..Default::default()
        };
        if let Err(e) = api.delete(&id.name, &dp).await {
            return failed(id, "delete for recreate", &e);
        }
        // Wait for the old object (same uid) to be gone before creating the new one.
        let uid = live.uid();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match api.get_opt(&id.name).await {
                Ok(None) => break,
                Ok(Some(o)) if o.uid() != uid => break,
                Ok(Some(_)) if tokio::time::Instant::now() > deadline => {
                    return Change::new(id.clone(), Action::Failed)
                        .with_message("recreate: old object still terminating after 60s");
                }
                Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(250)).await,
                Err(e) => return failed(id, "wait for deletion", &e),
            }
        }
        match self.write(res, id, raw, opts).await {
            Ok(_) => Change::new(id.clone(), Action::Configured)
                .with_diff(diff)
                .with_message("recreated: immutable field changed"),
            Err(e) => failed(id, "apply after recreate", &e),
        }
    }

    /// New kinds resolve only after a fresh discovery, and the API server publishes a new
    /// group in its aggregated discovery a moment after the CRD is Established: refresh
    /// until every kind the CRDs define is served, or the timeout passes (the custom
    /// resources then fail with "no API resource", naming themselves). Kinds already
    /// known cost nothing, so a resync makes no discovery requests.
    async fn refresh_until_served(
        &self,
        kinds: &[(String, String)],
        timeout: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let served = kinds
                .iter()
                .all(|(g, k)| self.discovery().resolve_kind(g, k).is_some());
            if served || tokio::time::Instant::now() > deadline {
                return Ok(());
            }
            let fresh = Discovery::run(&self.client).await?;
            let missing = kinds
                .iter()
                .any(|(g, k)| fresh.resolve_kind(g, k).is_none());
            self.set_discovery(fresh);
            if missing {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Waits until each CRD reports Established; returns the ones that did not, with why.
    async fn wait_established(
        &self,
        crds: &[ObjectKey],
        timeout: Duration,
    ) -> Vec<(String, String)> {
        let discovery = self.discovery();
        let Some(res) = discovery.resolve("apiextensions.k8s.io", "v1", "CustomResourceDefinition")
        else {
            return crds
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        "CustomResourceDefinition API not found".to_string(),
                    )
                })
                .collect();
        };
        let api = self.api_for(res, None);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pending: Vec<String> = crds.iter().map(|c| c.name.clone()).collect();
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for name in pending {
                match api.get_opt(&name).await {
                    Ok(Some(o)) if condition_true(&o.data, "Established") => {}
                    Ok(_) => {
                        last.insert(name.clone(), "not Established".into());
                        still.push(name)
                    }
                    Err(e) => {
                        last.insert(name.clone(), crate::cluster::api_message(&e));
                        still.push(name)
                    }
                }
            }
            pending = still;
            if pending.is_empty() || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        pending
            .into_iter()
            .map(|n| {
                let why = last.remove(&n).unwrap_or_default();
                (
                    n,
                    format!("not Established within {}s: {why}", timeout.as_secs()),
                )
            })
            .collect()
    }
}

/// A server-side apply that returns only its status code; errors as kube's own.
async fn apply_with_status(
    client: &Client,
    resource: &kube::api::ApiResource,
    namespace: Option<&str>,
    name: &str,
    pp: &PatchParams,
    body: &RawValue,
) -> kube::Result<StatusCode> {
    let request = kube::core::Request::new(DynamicObject::url_path(resource, namespace))
        .patch(name, pp, &Patch::Apply(body))
        .map_err(kube::Error::BuildRequest)?;
    let response = client.send(request.map(kube::client::Body::from)).await?;
    let status = response.status();
    if status.is_success() {
        return Ok(status);
    }
    let bytes = response.into_body().collect_bytes().await?;
    let api_status = serde_json::from_slice::<kube::core::Status>(&bytes).unwrap_or_else(|_| {
        kube::core::Status::failure(String::from_utf8_lossy(&bytes).trim(), "")
            .with_code(status.as_u16())
    });
    Err(kube::Error::Api(api_status.boxed()))
}

fn condition_true(data: &Value, type_: &str) -> bool {
    data.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == type_ && c["status"] == "True")
        })
}

/// The diff of an object about to be created: every line added.
/// A custom resource whose CRD comes in the same revision, in a dry run: it would be
/// created once its CRD is.
fn would_create_with_crd(d: Desired<'_>) -> Change {
    Change::new(d.id.clone(), Action::Created)
        .with_message("would be created with its CustomResourceDefinition (in this revision)")
        .with_diff(created_diff(d.id, d.object))
}

fn created_diff(id: &ObjectKey, body: &RawValue) -> Option<String> {
    diff::unified(&id.to_string(), None, Some(&parse_compact(body)))
}

fn is_immutable(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422 && s.message.contains("immutable"))
}

fn failed(id: &ObjectKey, what: &str, e: &kube::Error) -> Change {
    Change::new(id.clone(), Action::Failed)
        .with_message(format!("{what}: {}", crate::cluster::api_message(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(group: &str, kind: &str, ns: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
            namespace: ns.map(Into::into),
            name: name.into(),
        }
    }

    #[test]
    fn order_is_dependencies_first_webhooks_last() {
        let mut ids = [
            r(
                "admissionregistration.k8s.io",
                "ValidatingWebhookConfiguration",
                None,
                "v",
            ),
            r("apps", "Deployment", Some("a"), "web"),
            r("example.com", "Widget", Some("a"), "w"),
            r("", "ServiceAccount", Some("a"), "sa"),
            r("", "ConfigMap", Some("b"), "c2"),
            r("", "ConfigMap", Some("a"), "c1"),
            r("", "Namespace", None, "a"),
            r(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                None,
                "widgets.example.com",
            ),
        ];
        ids.sort_by_key(order_key);
        let names: Vec<&str> = ids.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "widgets.example.com",
                "a",
                "sa",
                "c1",
                "c2",
                "web",
                "w",
                "v"
            ]
        );
    }

    #[test]
    fn stage_one_is_crds_and_namespaces() {
        assert!(is_stage_one(&r("", "Namespace", None, "a")));
        assert!(is_stage_one(&r(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            None,
            "a"
        )));
        assert!(!is_stage_one(&r("example.com", "Namespace", None, "a")));
    }
}
