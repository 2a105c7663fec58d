//! One sync of one revision, end to end: render and validate everything first, check the
//! prune guard, apply in stages, prune, wait for health, then record inventory and status.
//! A revision that fails to render changes nothing in the cluster; the last good
//! revision stays applied and the error is recorded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use kube::Client;
use serde_json::value::RawValue;

use crate::apply::{self, Desired, ResourceManager};
use crate::cluster::discovery::Discovery;
use crate::config;
use crate::core::{Action, ChangeSet, OWNER_LABEL, ObjectKey};
use crate::health::{self, Assessment};
use crate::inventory::{self, Inventory, Record, Status, Stored};
use crate::prune;
use crate::render::{self, Scopes};
use crate::source;

mod claims;
mod infra;
pub mod policy;

/// Why a sync did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Source(String),
    #[error("revision {revision} is invalid; nothing was applied:\n{errors}")]
    Render {
        revision: String,
        errors: render::Errors,
    },
    #[error("revision {revision} held back; nothing was applied: {reason}")]
    HeldBack { revision: String, reason: String },
    #[error("{count} object(s) failed: {first}")]
    Apply { count: usize, first: String },
    #[error("{0}")]
    Health(String),
    #[error("{0}")]
    Store(String),
    #[error("revision {revision} is denied by policy; nothing was applied:\n{}", policy::lines(.findings))]
    Denied {
        revision: String,
        findings: Vec<policy::Finding>,
    },
    #[error("revision {revision}: its policies do not load; nothing was applied:\n{reason}")]
    Policies { revision: String, reason: String },
}

impl Failure {
    fn result(&self) -> &'static str {
        match self {
            Failure::HeldBack { .. } => "HeldBack",
            _ => "Failed",
        }
    }
}

/// What one sync did, as data.
#[derive(Debug)]
pub struct Outcome {
    pub sync: String,
    pub revision: String,
    pub changes: ChangeSet,
    /// Per-object health after the apply (empty when not waited for).
    pub health: Vec<(ObjectKey, Assessment)>,
    /// How long the health wait took (none when not waited for): the sync's time up to the
    /// wait is the apply's, the rest is the cluster's controllers.
    pub health_wait: Option<std::time::Duration>,
    pub failure: Option<Failure>,
    /// The objects as applied (owner labels included), for drift detection; empty when the
    /// revision was not applied.
    pub desired: Vec<DesiredObject>,
    /// The infra specs the revision declares (`Kind/name`), once they were planned.
    pub pools: Option<Vec<String>>,
    /// How the revision was built, when a renderer (kustomize, Helm) built it.
    pub render: Option<render::build::Built>,
    /// Policy warnings and audit findings about the revision's objects (denials are its
    /// failure instead).
    pub findings: Vec<policy::Finding>,
}

/// One object of the applied desired state: what drift detection compares the live one with.
/// Kept for as long as the daemon runs, for every managed object, so it is compact: the
/// rendered manifest's own JSON text, shared, and the kind's API resource, shared.
#[derive(Debug, Clone)]
pub struct DesiredObject {
    pub id: ObjectKey,
    pub resource: Arc<kube::api::ApiResource>,
    pub object: Arc<RawValue>,
}

impl Outcome {
    /// An outcome with nothing done yet.
    pub fn new(sync: &str, revision: &str) -> Self {
        Outcome {
            sync: sync.to_string(),
            revision: revision.to_string(),
            changes: ChangeSet::default(),
            health: Vec::new(),
            health_wait: None,
            failure: None,
            desired: Vec::new(),
            pools: None,
            render: None,
            findings: Vec::new(),
        }
    }

    /// The outcome, failed for `failure`.
    pub fn failed(mut self, failure: Failure) -> Self {
        self.failure = Some(failure);
        self
    }

    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }

    /// The sync's health: the worst of its objects', when it was assessed.
    pub fn overall_health(&self) -> Option<health::Status> {
        (!self.health.is_empty()).then(|| health::worst(self.health.iter().map(|(_, a)| a.status)))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Decide and diff only: nothing is written, health is not waited for, nothing recorded.
    pub dry_run: bool,
    /// Objects known unchanged on both sides skip their GET and dry-run (the daemon passes
    /// the drift detector's watch cache).
    pub cache: Option<std::sync::Arc<dyn apply::LiveCache>>,
    /// Told how the health wait goes, while it goes (`sync --once` shows it).
    pub progress: Option<health::OnProgress>,
}

impl Scopes for Discovery {
    fn namespaced(&self, group: &str, kind: &str) -> Option<bool> {
        Discovery::namespaced(self, group, kind)
    }
}

/// Applies revisions for the syncs of one agent.
pub struct Engine {
    rm: ResourceManager,
    store: inventory::Store,
    claims: claims::Claims,
    /// The OCI identity infra specs are applied with.
    oci: Option<Arc<crate::oci::Shared>>,
    /// Pools found drifted, by sync: a drift is reported once, and its end once.
    infra_drifted: std::sync::Mutex<HashSet<(String, ObjectKey)>>,
    /// Each sync's last good render, file by file: a new revision renders what it changed.
    memos: std::sync::Mutex<HashMap<String, render::Memo>>,
    /// Pools named by cluster and name, looked up once.
    resolved: crate::infra::Resolved,
    /// The renderers (kustomize, Helm) and their cache.
    renderers: render::build::Builder,
    /// The API server's version, for Helm's capabilities: read once, at the first chart.
    kube_version: tokio::sync::OnceCell<String>,
    /// The policy packs read at start, and those every sync must pass.
    packs: policy::Packs,
    global_packs: Vec<String>,
    /// Who the agent is (`request.userInfo` of its writes): asked once.
    identity: tokio::sync::OnceCell<(String, Vec<String>)>,
}

/// What changed in one poll of a sync's pools.
#[derive(Debug, Default, PartialEq)]
pub struct InfraDrift {
    /// Pools that newly differ from Git, with the fields.
    pub detected: Vec<(ObjectKey, Vec<crate::infra::FieldDiff>)>,
    /// Pools that match Git again.
    pub resolved: Vec<ObjectKey>,
}

impl Engine {
    pub async fn new(client: Client, agent_namespace: &str) -> Result<Self, apply::Error> {
        let store = inventory::Store::new(client.clone(), agent_namespace);
        Ok(Engine {
            rm: ResourceManager::new(client).await?,
            store,
            claims: claims::Claims::default(),
            oci: None,
            infra_drifted: Default::default(),
            memos: Default::default(),
            resolved: Default::default(),
            renderers: Default::default(),
            kube_version: Default::default(),
            packs: Default::default(),
            global_packs: Vec::new(),
            identity: Default::default(),
        })
    }

    /// Forgets what a sync that left the configuration declared.
    pub fn forget(&self, sync: &str) {
        self.claims.forget(sync);
        self.renderers.forget(sync);
    }

    pub fn client(&self) -> &Client {
        self.rm.client()
    }

    pub fn store(&self) -> &inventory::Store {
        &self.store
    }

    /// Polls the pools `files` declare (OCI has no watch): those that differ from Git now
    /// and did not before, and those that match again. Reads only; nothing is written.
    pub async fn infra_drift(
        &self,
        sync: &config::Sync,
        revision: &str,
        files: &[source::File],
    ) -> InfraDrift {
        let mut out = InfraDrift::default();
        let (Ok(manifests), _, _) = self.render(sync, revision, files, &Recorded::new()).await
        else {
            return out;
        };
        let (pools, _) = infra::split(manifests);
        let Ok(specs) = infra::parse(&pools) else {
            return out;
        };
        let Some(oci) = self.oci.as_ref() else {
            return out;
        };
        for spec in &specs {
            let planned = match crate::infra::plan(oci, spec, &self.resolved).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(sync = %sync.name, error = %e, "polling a pool for drift");
                    continue;
                }
            };
            let key = (sync.name.clone(), spec.key.clone());
            let mut drifted = self.infra_drifted.lock().expect("drifted lock");
            match (planned.diffs.is_empty(), drifted.contains(&key)) {
                (false, false) => {
                    drifted.insert(key);
                    out.detected.push((spec.key.clone(), planned.diffs));
                }
                (true, true) => {
                    drifted.remove(&key);
                    out.resolved.push(spec.key.clone());
                }
                _ => {}
            }
        }
        out
    }

    /// Every sync must pass `global` of `packs`, and each the packs it names.
    pub fn set_policies(&mut self, packs: policy::Packs, global: Vec<String>) {
        self.packs = packs;
        self.global_packs = global;
    }

    /// Kustomizations and charts are built with these renderers (none: a sync that needs
    /// one fails, saying so).
    pub fn set_renderers(&mut self, renderers: render::build::Builder) {
        self.renderers = renderers;
    }

    /// The sync's chart, or the kustomization at its path, built (or taken from the cache):
    /// its output is then what is rendered. `files` is the whole repository then (see the
    /// worker).
    async fn built(
        &self,
        sync: &config::Sync,
        revision: &str,
        files: &[source::File],
    ) -> Result<Option<(Arc<Vec<source::File>>, render::build::Built)>, render::Errors> {
        let chart = sync.helm.as_ref().map(helm_chart);
        let Some(recipe) = render::build::Recipe::of(files, &sync.path, chart.as_ref()) else {
            return Ok(None);
        };
        let caps = match recipe {
            render::build::Recipe::Helm(_) => self.capabilities().await,
            render::build::Recipe::Kustomize(_) => Default::default(),
        };
        let built = self
            .renderers
            .build(&sync.name, revision, recipe, files, &caps);
        built.await.map(Some).map_err(|e| {
            let (file, line) = e.location();
            // The location leads the line already; the message need not say it again.
            let text = e.to_string();
            let text = [format!("{file}:{line}: "), format!("{file}: ")]
                .iter()
                .find_map(|p| text.strip_prefix(p.as_str()))
                .unwrap_or(&text)
                .to_owned();
            render::Errors(vec![render::Located {
                file,
                line,
                column: None,
                subject: None,
                item: None,
                error: render::Error::Renderer(text),
            }])
        })
    }

    /// What Helm's `.Capabilities` should say: the API server's version and every
    /// apiVersion and kind discovery knows.
    async fn capabilities(&self) -> render::helm::Capabilities {
        let version = self.kube_version.get_or_try_init(|| async {
            self.rm
                .client()
                .apiserver_version()
                .await
                .map(|v| v.git_version)
        });
        let kube_version = match version.await {
            Ok(v) => v.clone(),
            Err(e) => {
                // Helm then assumes its own default; the next chart asks again.
                tracing::warn!(error = %e, "reading the API server's version for Helm");
                String::new()
            }
        };
        render::helm::Capabilities {
            kube_version,
            api_versions: self.rm.discovery().api_versions(),
        }
    }

    /// Infra specs are applied with this OCI identity (none: a revision with any fails).
    pub fn set_oci(&mut self, oci: Option<Arc<crate::oci::Shared>>) {
        self.oci = oci;
    }

    /// A sync whose source could not be fetched or read: its status says so (Failed, with
    /// the error), keeping the revision it last applied, which stays applied; no object is
    /// touched, and an unchanged failure writes nothing.
    pub async fn record_source_failure(&self, sync: &config::Sync, failure: Failure) {
        let mut stored = match self.store.load(&sync.name).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(sync = %sync.name, error = %e, "reading status");
                return;
            }
        };
        let revision = stored.record.status.revision.clone().unwrap_or_default();
        let mut outcome = Outcome::new(&sync.name, &revision).failed(failure);
        let previous = stored.inventory.clone();
        self.record(
            sync,
            &mut stored,
            &previous,
            &mut outcome,
            &Options::default(),
        )
        .await;
    }

    /// Syncs one revision's files (already limited to the sync's path).
    pub async fn sync_revision(
        &self,
        sync: &config::Sync,
        revision: &str,
        files: &[source::File],
        opts: &Options,
    ) -> Outcome {
        let mut outcome = Outcome::new(&sync.name, revision);
        let mut stored = match self.store.load(&sync.name).await {
            Ok(r) => r,
            Err(e) => return outcome.failed(Failure::Store(e.to_string())),
        };
        let previous = stored.inventory.clone();
        // Built once: thousands of lookups (is this object recorded?) in the steps below.
        let recorded = previous.index();
        // 1. Render, validate and judge the whole revision before any write.
        let (manifests, discovery) = match self
            .admit(sync, revision, files, &previous, &recorded, &mut outcome)
            .await
        {
            Ok(admitted) => admitted,
            Err(failure) => {
                return self
                    .stop(sync, &mut stored, &previous, outcome, failure, opts)
                    .await;
            }
        };
        // Infra specs go to OCI, not the Kubernetes API: compared and guarded now.
        let (pools, manifests) = infra::split(manifests);
        let staged = match self.plan_infra(sync, revision, &pools).await {
            Ok(staged) => staged,
            Err(failure) => {
                return self
                    .stop(sync, &mut stored, &previous, outcome, failure, opts)
                    .await;
            }
        };
        let removed = staged.removed(&stored.status.pools);
        outcome.pools = Some(staged.subjects());
        // 2. What would be pruned, and whether the guard allows it.
        let stale = stale_objects(&previous, &manifests);
        if let Some(reason) = held_back(sync, &previous, &stale, manifests.len()) {
            let failure = Failure::HeldBack {
                revision: revision.to_string(),
                reason,
            };
            return self
                .stop(sync, &mut stored, &previous, outcome, failure, opts)
                .await;
        }
        // 3. Find what other syncs own, record the intent, then apply in stages.
        let owners = self.owners(sync, &manifests, &recorded, opts).await;
        let intent = manifests.iter().filter(|m| !conflicted(m, &owners));
        if let Err(e) = self
            .record_intent(sync, &mut stored, intent, &recorded, opts)
            .await
        {
            return outcome.failed(e);
        }
        // Capacity first: a pool that cannot grow stops the revision before its workloads.
        let grown = self.apply_infra(&staged, true, opts).await;
        if let Some(failure) = apply_failure(&grown) {
            outcome.changes = grown;
            return self
                .stop(sync, &mut stored, &previous, outcome, failure, opts)
                .await;
        }
        outcome.changes = match self.apply(&manifests, &recorded, &owners, opts).await {
            Ok(changes) => changes,
            Err(e) => return outcome.failed(Failure::Source(e.to_string())),
        };
        if let Some(failure) = apply_failure(&outcome.changes) {
            // Keep tracking all we may have written (the intent); prune waits for a clean apply.
            let inventory = stored.inventory.clone();
            return self
                .stop(sync, &mut stored, &inventory, outcome, failure, opts)
                .await;
        }
        // 4. Prune, then shrink capacity the workloads have left.
        let mut inventory = applied_inventory(revision, &outcome.changes);
        self.prune(sync, &stale, &mut inventory, &mut outcome, opts)
            .await;
        let shrunk = self.apply_infra(&staged, false, opts).await;
        let objects = std::mem::take(&mut outcome.changes);
        outcome.changes = [grown, shrunk, removed, objects].into_iter().collect();
        outcome.desired = desired_objects(&manifests, &discovery);
        // 5. Health.
        if sync.health.wait && !opts.dry_run {
            self.health(sync, &manifests, &discovery, &mut outcome, opts)
                .await;
        }
        if outcome.failure.is_none() {
            outcome.failure = apply_failure(&outcome.changes);
        }
        self.record(sync, &mut stored, &inventory, &mut outcome, opts)
            .await;
        outcome
    }

    /// The revision rendered, validated and judged by the policies: its objects, or why it
    /// stops. How it was built and the policies' warnings go to `outcome`.
    async fn admit(
        &self,
        sync: &config::Sync,
        revision: &str,
        files: &[source::File],
        previous: &Inventory,
        recorded: &Recorded<'_>,
        outcome: &mut Outcome,
    ) -> Result<(Vec<render::Manifest>, Arc<Discovery>), Failure> {
        let (rendered, discovery, built) = self.render(sync, revision, files, recorded).await;
        outcome.render = built;
        let manifests = rendered.map_err(|errors| Failure::Render {
            revision: revision.to_string(),
            errors,
        })?;
        let policed = self.police(sync, revision, &manifests, previous, &discovery);
        outcome.findings = policed.await?;
        Ok((manifests, discovery))
    }

    /// Ends the sync with `failure`, recording `inventory` and the status.
    async fn stop(
        &self,
        sync: &config::Sync,
        stored: &mut Stored,
        inventory: &Inventory,
        mut outcome: Outcome,
        failure: Failure,
        opts: &Options,
    ) -> Outcome {
        outcome.failure = Some(failure);
        self.record(sync, stored, inventory, &mut outcome, opts)
            .await;
        outcome
    }

    /// Renders and validates the whole revision; a kind discovery does not know yet makes
    /// it look again (once in a while) before that counts as an error. The objects are then
    /// claimed for this sync (one object belongs to one sync).
    async fn render(
        &self,
        sync: &config::Sync,
        revision: &str,
        files: &[source::File],
        recorded: &Recorded<'_>,
    ) -> (
        Result<Vec<render::Manifest>, render::Errors>,
        Arc<Discovery>,
        Option<render::build::Built>,
    ) {
        let (output, built) = match self.built(sync, revision, files).await {
            Ok(Some((output, built))) => (Some(output), Some(built)),
            Ok(None) => (None, None),
            Err(errors) => return (Err(errors), self.rm.discovery(), None),
        };
        let files = output.as_deref().map(Vec::as_slice).unwrap_or(files);
        let mut discovery = self.rm.discovery();
        // 1. Render and validate the whole revision before any write; a kind discovery does
        // not know yet makes it look again (once in a while) before that counts as an error.
        let mut rendered = self.render_revision(sync, files, &discovery);
        if let Err(errors) = &rendered
            && errors.iter().any(|e| {
                matches!(
                    e.error,
                    render::Error::UnknownKind { .. } | render::Error::UnknownVersion { .. }
                )
            })
            && matches!(self.rm.refresh_for_unknown_kind().await, Ok(true))
        {
            discovery = self.rm.discovery();
            rendered = self.render_revision(sync, files, &discovery);
        }
        let rendered = rendered.and_then(|manifests| {
            let declared = self
                .claims
                .declare(&sync.name, &manifests, |k| recorded.contains(k));
            declared.map(|()| manifests)
        });
        (rendered, discovery, built)
    }

    /// Renders with the sync's memo: only the files the revision changed are parsed and
    /// validated again (a kustomization's or chart's output arrives here as files).
    fn render_revision(
        &self,
        sync: &config::Sync,
        files: &[source::File],
        discovery: &Arc<Discovery>,
    ) -> Result<Vec<render::Manifest>, render::Errors> {
        let ropts = render::Options {
            default_namespace: sync.namespace.clone(),
            labels: BTreeMap::from([(OWNER_LABEL.to_string(), sync.name.clone())]),
            ..Default::default()
        };
        // Taken out while rendering: syncs render at the same time, each its own memo.
        let taken = self
            .memos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sync.name);
        let mut memo = taken.unwrap_or_default();
        let scopes: Arc<dyn render::Scopes + Send + Sync> = discovery.clone();
        let (rendered, reuse) = render::render_with_memo(files, &ropts, &scopes, &mut memo);
        tracing::debug!(sync = %sync.name, ?reuse, "rendered");
        let mut memos = self.memos.lock().unwrap_or_else(|p| p.into_inner());
        memos.insert(sync.name.clone(), memo);
        rendered
    }

    /// The revision's infra specs parsed, compared with OCI and guarded (no write).
    async fn plan_infra(
        &self,
        sync: &config::Sync,
        revision: &str,
        pools: &[render::Manifest],
    ) -> Result<infra::Staged, Failure> {
        let specs = infra::parse(pools).map_err(|errors| Failure::Render {
            revision: revision.to_string(),
            errors,
        })?;
        let step = sync.pool_guard.max_size_step;
        infra::plan(self.oci.as_ref(), &specs, revision, &self.resolved, step).await
    }

    /// The pools that grow or change (`before`), or those that shrink; a dry run reports
    /// them all at once, with the first.
    async fn apply_infra(&self, staged: &infra::Staged, before: bool, opts: &Options) -> ChangeSet {
        if staged.is_empty() || (opts.dry_run && !before) {
            return ChangeSet::default();
        }
        if opts.dry_run {
            return staged.dry_run();
        }
        let pools = if before {
            &staged.before
        } else {
            &staged.after
        };
        infra::apply(self.oci.as_ref(), pools).await
    }

    /// Adds every object the revision may create to the stored inventory before the first
    /// write (keeping the old revision and status), so that a sync that dies at any point
    /// leaves all it may have created on record for the next sync to prune or keep. Only
    /// a revision that adds objects writes.
    async fn record_intent<'a>(
        &self,
        sync: &config::Sync,
        stored: &mut Stored,
        manifests: impl Iterator<Item = &'a render::Manifest>,
        recorded: &Recorded<'_>,
        opts: &Options,
    ) -> Result<(), Failure> {
        if opts.dry_run {
            return Ok(());
        }
        let new: Vec<&ObjectKey> = manifests
            .map(|m| &m.id)
            .filter(|id| !recorded.contains(*id))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let intent = stored.inventory.with_intent(new);
        let record = Record {
            inventory: intent,
            status: stored.status.clone(),
        };
        match self.store.store(&sync.name, stored, &record).await {
            Ok(_) => Ok(()),
            Err(e) => Err(Failure::Store(format!(
                "the objects about to be applied were not recorded, so nothing was applied: {e}"
            ))),
        }
    }

    /// Which objects this sync has never applied carry another sync's label (a dry run
    /// reads every object, and checks it then).
    async fn owners(
        &self,
        sync: &config::Sync,
        manifests: &[render::Manifest],
        recorded: &Recorded<'_>,
        opts: &Options,
    ) -> apply::Owners {
        if opts.dry_run {
            return apply::Owners::default();
        }
        let unseen: Vec<&ObjectKey> = manifests
            .iter()
            .map(|m| &m.id)
            .filter(|id| !recorded.contains(*id))
            .collect();
        if unseen.is_empty() {
            return apply::Owners::default();
        }
        self.rm.foreign_owners(&sync.name, &unseen).await
    }

    async fn apply(
        &self,
        manifests: &[render::Manifest],
        recorded: &Recorded<'_>,
        owners: &apply::Owners,
        opts: &Options,
    ) -> Result<ChangeSet, apply::Error> {
        let desired: Vec<Desired<'_>> = manifests
            .iter()
            .map(|m| Desired {
                id: &m.id,
                object: &m.object,
                inventoried: recorded.contains(&m.id) || owners.unchecked.contains(&m.id),
                foreign_owner: owners.foreign.get(&m.id).map(String::as_str),
            })
            .collect();
        let aopts = apply::Options {
            dry_run: opts.dry_run,
            cache: opts.cache.clone(),
            ..Default::default()
        };
        self.rm.apply_all_staged(&desired, &aopts).await
    }

    /// Deletes what left Git (when the sync prunes), keeping in the inventory what could
    /// not be deleted; with pruning off, what left Git stays tracked.
    async fn prune(
        &self,
        sync: &config::Sync,
        stale: &[ObjectKey],
        inventory: &mut Inventory,
        outcome: &mut Outcome,
        opts: &Options,
    ) {
        if stale.is_empty() {
            return;
        }
        if !sync.prune {
            inventory.entries.extend(stale.iter().cloned());
            return;
        }
        let popts = prune::Options {
            sync: sync.name.clone(),
            dry_run: opts.dry_run,
        };
        let pruned = prune::prune(&self.rm, stale, &popts).await;
        for c in &pruned.entries {
            if c.action == Action::Failed {
                inventory.entries.insert(c.subject.clone());
            }
        }
        outcome.changes.extend(pruned);
    }

    /// The health wait, and how long it took, into the outcome.
    async fn health(
        &self,
        sync: &config::Sync,
        manifests: &[render::Manifest],
        discovery: &Discovery,
        outcome: &mut Outcome,
        opts: &Options,
    ) {
        let started = std::time::Instant::now();
        let waited = self.wait_healthy(sync, manifests, &outcome.changes, discovery, opts);
        match waited.await {
            Ok(h) => outcome.health = h,
            Err(e) => outcome.failure = Some(Failure::Health(e.to_string())),
        }
        outcome.health_wait = Some(started.elapsed());
    }

    /// Waits for the revision's objects to be healthy. An object this sync did not write
    /// and the watch cache last saw Healthy is taken as it is, without a request: a
    /// no-change resync makes no GET for health. So is an applied object of a kind that
    /// has no status (a ConfigMap). The rest are polled.
    async fn wait_healthy(
        &self,
        sync: &config::Sync,
        manifests: &[render::Manifest],
        changes: &ChangeSet,
        discovery: &Discovery,
        opts: &Options,
    ) -> health::Result<Vec<(ObjectKey, Assessment)>> {
        let cache = opts.cache.as_deref();
        let actions: HashMap<&ObjectKey, Action> = changes
            .entries
            .iter()
            .map(|c| (&c.subject, c.action))
            .collect();
        let mut known = HashMap::new();
        let mut targets = Vec::new();
        for m in manifests {
            match known_health(m, actions.get(&m.id).copied(), cache) {
                Some(a) => {
                    known.insert(&m.id, a);
                }
                None => {
                    if let Some(r) = discovery.resolve(&m.id.group, &m.id.version, &m.id.kind) {
                        targets.push((m.id.clone(), r.api.clone()));
                    }
                }
            }
        }
        let wopts = health::WaitOptions {
            timeout: sync.health.timeout,
            poll_interval: std::time::Duration::from_millis(500),
            progress: opts.progress.clone(),
            ..Default::default()
        };
        let mut polled: HashMap<ObjectKey, Assessment> =
            health::wait(self.rm.client(), &targets, &wopts)
                .await?
                .into_iter()
                .collect();
        Ok(manifests
            .iter()
            .filter_map(|m| {
                let a = known.remove(&m.id).or_else(|| polled.remove(&m.id))?;
                Some((m.id.clone(), a))
            })
            .collect())
    }

    /// Stores inventory and status, writing only when either changed. A write that fails
    /// fails the sync: what the agent owns must be on record before it counts as synced.
    async fn record(
        &self,
        sync: &config::Sync,
        stored: &mut Stored,
        inventory: &Inventory,
        outcome: &mut Outcome,
        opts: &Options,
    ) {
        if opts.dry_run {
            return;
        }
        let previous = &stored.record;
        let mut status = Status {
            revision: Some(outcome.revision.clone()),
            result: outcome
                .failure
                .as_ref()
                .map(Failure::result)
                .unwrap_or("Succeeded")
                .to_string(),
            health: outcome.overall_health().map(|h| h.to_string()),
            error: outcome
                .failure
                .as_ref()
                .map(|f| crate::core::bounded(&f.to_string(), ERROR_LINES, ERROR_BYTES)),
            last_change_time: previous.status.last_change_time.clone(),
            last_change_counts: previous.status.last_change_counts.clone(),
            // A revision that was not applied leaves the pools of the one that was.
            pools: match (&outcome.failure, &outcome.pools) {
                (None, Some(pools)) => pools.clone(),
                _ => previous.status.pools.clone(),
            },
        };
        if outcome.changes.has_writes() {
            status.last_change_counts = outcome
                .changes
                .counts()
                .into_iter()
                .map(|(a, n)| (a.to_string(), n))
                .collect();
        }
        // `status` still carries the previous change time, so equal means nothing changed.
        if *inventory == previous.inventory && status == previous.status {
            return;
        }
        status.last_change_time =
            Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        let record = Record {
            inventory: inventory.clone(),
            status,
        };
        if let Err(e) = self.store.store(&sync.name, stored, &record).await {
            tracing::error!(sync = %sync.name, error = %e, "recording status");
            if outcome.failure.is_none() {
                outcome.failure = Some(Failure::Store(format!(
                    "the inventory and status were not recorded: {e}"
                )));
            }
        }
    }
}

/// How much of an error the status keeps: the first problems and a count of the rest.
const ERROR_LINES: usize = 20;
const ERROR_BYTES: usize = 4096;

/// An object's health known without a request, given what this sync did to it: an
/// applied object of a kind without status is Healthy; one the sync did not write is as
/// the watch cache last saw it, when that was Healthy.
fn known_health(
    m: &render::Manifest,
    action: Option<Action>,
    cache: Option<&dyn apply::LiveCache>,
) -> Option<Assessment> {
    let applied = action.is_some_and(|a| a != Action::Failed);
    if applied && health::without_status(&m.id.group, &m.id.kind) {
        return Some(Assessment::new(
            health::Status::Healthy,
            "applied; has no status",
        ));
    }
    cache
        .filter(|_| action == Some(Action::Unchanged))
        .and_then(|c| c.health(&m.id))
        .filter(|a| a.status == health::Status::Healthy)
}

/// Whether another sync owns the object and Git does not say to adopt it: then it is not
/// applied, and not recorded as this sync's.
fn conflicted(m: &render::Manifest, owners: &apply::Owners) -> bool {
    owners
        .foreign
        .get(&m.id)
        .is_some_and(|owner| apply::conflict(&m.id, owner, &m.object).is_some())
}

/// The renderers the configuration names, or those on PATH, each asked for its version;
/// one that does not answer is left out (a sync that needs it fails, saying so), with a
/// warning naming why.
pub async fn renderers(cfg: &config::Render) -> render::build::Builder {
    use render::build::{Renderer, Tool};
    async fn probe(path: Option<std::path::PathBuf>, renderer: Renderer) -> Option<Tool> {
        let path = path?;
        match Tool::probe(&path, renderer).await {
            Ok(tool) => Some(tool),
            Err(e) => {
                let path = path.display();
                tracing::warn!(renderer = renderer.as_str(), %path, error = %e, "renderer unusable");
                None
            }
        }
    }
    let bounds = render::exec::Bounds {
        timeout: cfg.timeout,
        max_output: cfg.max_output_bytes,
        max_memory: cfg.max_memory_bytes,
    };
    render::build::Builder::new(
        probe(cfg.kustomize_binary(), Renderer::Kustomize).await,
        probe(cfg.helm_binary(), Renderer::Helm).await,
        bounds,
    )
}

/// The packs the configuration names (for every sync, and for each), read from its
/// policies directory.
pub fn policy_packs(cfg: &config::Config) -> Result<policy::Packs, String> {
    let mut names: Vec<String> = cfg.policies.packs.clone();
    for s in &cfg.syncs {
        names.extend(s.policies.packs.iter().cloned());
    }
    names.sort();
    names.dedup();
    policy::Packs::read(&cfg.policies.dir, &names)
}

/// A sync's Helm settings as the renderer takes them.
fn helm_chart(h: &config::Helm) -> render::helm::Chart {
    render::helm::Chart {
        chart: h.chart.clone(),
        values_files: h.values_files.clone(),
        values: h.values.clone(),
        release_name: h.release_name.clone(),
        namespace: h.namespace.clone(),
        post_render: h.post_render.clone(),
    }
}

/// The revision rendered with the sync's namespace and owner label.
/// The previous inventory's objects, for lookups (see [`Inventory::index`]).
type Recorded<'a> = HashSet<&'a ObjectKey>;

/// The objects of the previous inventory that the revision no longer has.
fn stale_objects(previous: &Inventory, manifests: &[render::Manifest]) -> Vec<ObjectKey> {
    let desired: HashSet<&ObjectKey> = manifests.iter().map(|m| &m.id).collect();
    previous
        .entries
        .iter()
        .filter(|e| !desired.contains(e))
        .cloned()
        .collect()
}

/// Why the prune guard holds the revision back, when the sync prunes and it does.
fn held_back(
    sync: &config::Sync,
    previous: &Inventory,
    stale: &[ObjectKey],
    desired: usize,
) -> Option<String> {
    if !sync.prune {
        return None;
    }
    prune::held_back(
        previous.entries.len(),
        stale.len(),
        desired,
        &sync.prune_guard,
    )
}

/// What was applied (anything but a failure), as the revision's inventory.
fn applied_inventory(revision: &str, changes: &ChangeSet) -> Inventory {
    Inventory {
        revision: Some(revision.to_string()),
        entries: changes
            .entries
            .iter()
            .filter(|c| c.action != Action::Failed)
            .map(|c| c.subject.clone())
            .collect(),
    }
}

/// The applied objects as drift detection keeps them, sharing one API resource per kind.
fn desired_objects(manifests: &[render::Manifest], discovery: &Discovery) -> Vec<DesiredObject> {
    let mut resources: HashMap<(&str, &str, &str), Arc<kube::api::ApiResource>> = HashMap::new();
    manifests
        .iter()
        .filter_map(|m| {
            let id = &m.id;
            let key = (id.group.as_str(), id.version.as_str(), id.kind.as_str());
            let resource = match resources.get(&key) {
                Some(r) => r.clone(),
                None => {
                    let r = Arc::new(discovery.resolve(key.0, key.1, key.2)?.api.clone());
                    resources.insert(key, r.clone());
                    r
                }
            };
            Some(DesiredObject {
                id: id.clone(),
                resource,
                object: m.object.clone(),
            })
        })
        .collect()
}

/// How many objects failed, naming the first: the sync's failure, if any.
fn apply_failure(changes: &ChangeSet) -> Option<Failure> {
    let first = changes.failed().next()?;
    Some(Failure::Apply {
        count: changes.failed().count(),
        first: format!(
            "{}: {}",
            first.subject,
            first.message.as_deref().unwrap_or("")
        ),
    })
}
