//! Live drift detection: one watch per kind over objects carrying the owner label. A change
//! that touches more than status is checked with a server-side dry-run of the desired
//! object: if applying Git again would change nothing, the change was to fields Git does not
//! declare (an HPA's replicas, controller annotations) and is not drift. Otherwise the
//! report names the fields, Git's and the live values (Secrets masked) and the field
//! manager that wrote last. With self-heal the object is re-applied; a controller that keeps
//! reverting us gets one "fight" report and a back-off instead of a loop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::apply;
use crate::cluster::to_json;
use crate::core::{OWNER_LABEL, ObjectKey};
use crate::diff;
use crate::health::{self, Assessment};
use crate::sync::DesiredObject;

/// How many of a sync's objects are in each state worth a gauge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub drifted: usize,
    /// Not confirmed to match Git (a resync reads each of them).
    pub unconfirmed: usize,
    /// Not known healthy from the watch (progressing, degraded, gone, or not seen yet).
    pub unhealthy: usize,
}

/// What the detector reports, as data; alerts and metrics are derived from it.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// A distinct drift (reported once until resolved). `deleted` when the object is gone.
    Detected {
        sync: String,
        subject: ObjectKey,
        fields: Vec<diff::FieldDrift>,
        manager: Option<String>,
        deleted: bool,
    },
    Resolved {
        sync: String,
        subject: ObjectKey,
    },
    /// Self-heal gave up for a while: something keeps changing the object back.
    Fight {
        sync: String,
        subject: ObjectKey,
        manager: Option<String>,
        count: u32,
    },
    /// Self-heal re-applied the object (or failed to).
    Healed {
        sync: String,
        subject: ObjectKey,
        error: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Options {
    pub field_manager: String,
    /// This many heals of one object within `fight_window` is a fight.
    pub fight_threshold: u32,
    pub fight_window: Duration,
    /// How long self-heal leaves a fought-over object alone.
    pub fight_backoff: Duration,
    /// The agent holds rights in some namespaces only: watch each kind in each namespace
    /// it manages objects in, not cluster-wide (which would be forbidden).
    pub namespaced: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            field_manager: crate::FIELD_MANAGER.to_string(),
            fight_threshold: 3,
            fight_window: Duration::from_secs(60),
            fight_backoff: Duration::from_secs(300),
            namespaced: false,
        }
    }
}

type Key = ObjectKey;

/// Objects re-judged at once (each a GET and a dry-run), like a sync's apply concurrency.
const RECHECK_CONCURRENCY: usize = 16;

/// How the live object differs from Git: the fields, or that it is gone.
struct Drift {
    fields: Vec<diff::FieldDrift>,
    manager: Option<String>,
    deleted: bool,
}

struct Entry {
    sync: String,
    self_heal: bool,
    target: DesiredObject,
    /// Hash of the last live object seen (normalised, status excluded).
    seen: Option<u64>,
    /// Hash of the live object when it was last found to match Git: while `seen` equals
    /// it, nothing changed on the cluster's side and no request is needed to know that.
    checked: Option<u64>,
    /// Hash of the drift currently reported, if any.
    active: Option<u64>,
    /// The object's health as the watch last saw it (status changes included), so that a
    /// sync that did not write the object can know its health without a request.
    health: Option<Assessment>,
    /// The resourceVersion the watch last saw (status changes included): what the watch
    /// knows of the object is current once this is the live one.
    seen_version: Option<String>,
    heals: VecDeque<Instant>,
    fight_until: Option<Instant>,
    /// The `set_desired` that last kept this entry.
    stamp: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    /// What the sync now applying found unchanged by comparing, for objects not yet
    /// watched: (hash of the desired text, fingerprint of the live object). Taken by the
    /// next `set_desired`, so a restart need not compare every object twice.
    compared: HashMap<Key, (u64, u64)>,
    paused: HashSet<String>,
    dirty: HashSet<Key>,
    /// One watch per API resource, and per namespace under namespaced rights.
    watches: HashMap<WatchKey, tokio::task::JoinHandle<()>>,
    /// Watches whose initial list is done.
    listed: HashSet<WatchKey>,
    /// Counts `set_desired` calls, for the entries' stamps.
    generation: u64,
}

/// A watch: the API resource (group, version, plural), and its namespace when the agent's
/// rights are namespaced (cluster-wide otherwise).
type WatchKey = (String, String, String, Option<String>);

/// Watches managed objects and reports drift. Cheap to clone.
#[derive(Clone)]
pub struct Detector {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    opts: Options,
    /// Only the leader judges and heals; a follower keeps its watches warm.
    active: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
    reports: mpsc::Sender<Report>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(state) = self.state.lock() {
            for w in state.watches.values() {
                w.abort();
            }
        }
    }
}

impl Detector {
    /// A detector and the channel its reports arrive on.
    pub fn new(client: Client, opts: Options) -> (Detector, mpsc::Receiver<Report>) {
        let (tx, rx) = mpsc::channel(1024);
        let inner = Inner {
            client,
            opts,
            active: std::sync::atomic::AtomicBool::new(true),
            state: Mutex::new(State::default()),
            reports: tx,
        };
        (
            Detector {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// Turns judging and healing on (the leader) or off (a follower: watches stay warm, and
    /// changes are only recorded as seen, so two replicas never alert or heal twice).
    /// A drift judged elsewhere (an infra spec's pool, which OCI cannot watch), reported
    /// as the watches' are; a follower reports nothing.
    pub async fn report_external(&self, report: Report) {
        if self.inner.active.load(std::sync::atomic::Ordering::Relaxed) {
            self.report(report).await;
        }
    }

    pub fn set_active(&self, active: bool) {
        self.inner
            .active
            .store(active, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops judging a sync's objects while it applies: its own writes are not drift.
    pub fn pause(&self, sync: &str) {
        self.lock().paused.insert(sync.to_string());
    }

    /// Resumes a paused sync without changing what it wants (its revision failed).
    pub async fn resume(&self, sync: &str) {
        let dirty = {
            let mut st = self.lock();
            st.paused.remove(sync);
            st.compared.clear();
            take_dirty(&mut st, sync)
        };
        self.recheck(dirty).await;
    }

    /// Sets what a sync wants after it applied a revision, starts watches for new kinds,
    /// and checks the objects that changed while it was paused.
    pub async fn set_desired(&self, sync: &str, self_heal: bool, desired: Vec<DesiredObject>) {
        let dirty = {
            let mut guard = self.lock();
            let st = &mut *guard;
            // Entries are updated where they are: a revision that changed one object of
            // thousands moves no others. The stamp tells which this call kept.
            st.generation += 1;
            let stamp = st.generation;
            // The kinds (shared resources, so told apart by address) and, under namespaced
            // rights, namespaces this sync's objects need watched.
            let mut resources: HashMap<(usize, Option<String>), Arc<ApiResource>> = HashMap::new();
            let namespaced = self.inner.opts.namespaced;
            for target in &desired {
                let ns = target.id.namespace.as_ref().filter(|_| namespaced).cloned();
                // Cluster-scoped under namespaced rights: not watchable (nor appliable).
                if !namespaced || ns.is_some() {
                    let ar = &target.resource;
                    let at = Arc::as_ptr(ar) as usize;
                    resources.entry((at, ns)).or_insert_with(|| ar.clone());
                }
            }
            for target in desired {
                let compared = st.compared.remove(&target.id);
                let entry = match st.entries.get_mut(&target.id) {
                    Some(e) if e.sync == sync => {
                        e.self_heal = self_heal;
                        if e.target.object.get() != target.object.get() {
                            // Git changed: the last confirmation no longer holds.
                            e.checked = None;
                        }
                        e.target = target;
                        e
                    }
                    _ => {
                        let k = target.id.clone();
                        st.entries
                            .insert(k.clone(), Entry::new(sync, self_heal, target));
                        st.entries.get_mut(&k).expect("just inserted")
                    }
                };
                entry.stamp = stamp;
                if let Some((text, live)) = compared
                    && text == text_hash(entry.target.object.get())
                {
                    entry.confirm(live);
                }
            }
            st.entries.retain(|_, e| e.sync != sync || e.stamp == stamp);
            st.compared.clear();
            st.paused.remove(sync);
            for ((_, ns), ar) in resources {
                let wk = (ar.group.clone(), ar.version.clone(), ar.plural.clone(), ns);
                if let std::collections::hash_map::Entry::Vacant(slot) = st.watches.entry(wk) {
                    let w = self.spawn_watch((*ar).clone(), slot.key().clone());
                    slot.insert(w);
                }
            }
            take_dirty(st, sync)
        };
        self.recheck(dirty).await;
    }

    /// Judges every object of a sync afresh (the periodic full resync: catches whatever a
    /// watch missed, and drift that happened while the agent was down).
    pub async fn recheck_sync(&self, sync: &str) {
        let keys: Vec<Key> = self
            .lock()
            .entries
            .iter()
            .filter(|(_, e)| e.sync == sync && !e.confirmed())
            .map(|(k, _)| k.clone())
            .collect();
        self.recheck(keys).await;
    }

    /// The resourceVersion of `id` the watch saw last, status updates included, once any
    /// report about it is sent.
    pub fn seen_version(&self, id: &ObjectKey) -> Option<String> {
        self.lock().entries.get(id)?.seen_version.clone()
    }

    /// Forgets a sync that left the configuration.
    pub fn forget(&self, sync: &str) {
        let mut st = self.lock();
        st.entries.retain(|_, e| e.sync != sync);
        st.paused.remove(sync);
    }

    /// Whether every watch has listed its objects: before that, a change can go unjudged.
    pub fn is_ready(&self) -> bool {
        let st = self.lock();
        st.watches.keys().all(|k| st.listed.contains(k))
    }

    /// Waits (polling) until [`Detector::is_ready`], up to `timeout`; returns whether it is.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_ready() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Per sync, the objects currently drifted, those not confirmed to match (which a
    /// resync reads) and those not known healthy, for the gauges.
    pub fn counts(&self) -> HashMap<String, Counts> {
        let st = self.lock();
        // Every scrape walks every object: keyed by the borrowed name, nothing is
        // allocated per object.
        let mut out: HashMap<&str, Counts> = HashMap::new();
        for (k, e) in &st.entries {
            let c = out.entry(e.sync.as_str()).or_default();
            c.drifted += usize::from(e.active.is_some());
            let dirty = !st.dirty.is_empty() && st.dirty.contains(k);
            c.unconfirmed += usize::from(!e.confirmed() || dirty);
            let healthy = e.health.as_ref().map(|h| h.status) == Some(health::Status::Healthy);
            c.unhealthy += usize::from(!healthy);
        }
        out.into_iter().map(|(s, c)| (s.to_owned(), c)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way that
        // matters more than losing drift reports, so recover the guard.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn_watch(&self, ar: ApiResource, key: WatchKey) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let ns = key.3.clone();
        let span = tracing::info_span!("drift_watch", kind = %ar.kind, group = %ar.group, namespace = ns.as_deref().unwrap_or(""));
        tokio::spawn(
            async move {
                let api = crate::cluster::api_for(&me.inner.client, &ar, ns.as_deref());
                let cfg = watcher::Config::default().labels(OWNER_LABEL);
                let mut stream = std::pin::pin!(watcher(api, cfg).default_backoff());
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(watcher::Event::Apply(o)) => me.observe(&ar, o, false).await,
                        Ok(watcher::Event::Delete(o)) => me.observe(&ar, o, true).await,
                        // The initial list only records what is there; a full resync judges it.
                        Ok(watcher::Event::InitApply(o)) => me.observe_listed(&ar, o).await,
                        Ok(watcher::Event::InitDone) => {
                            me.lock().listed.insert(key.clone());
                        }
                        Ok(watcher::Event::Init) => {}
                        Err(e) => tracing::warn!(error = %e, "drift watch"),
                    }
                }
            }
            .instrument(span),
        )
    }

    fn live_key(ar: &ApiResource, o: &DynamicObject) -> Key {
        ObjectKey {
            group: ar.group.clone(),
            kind: ar.kind.clone(),
            namespace: o.metadata.namespace.clone(),
            name: o.metadata.name.clone().unwrap_or_default(),
            version: ar.version.clone(),
        }
    }

    fn record_seen(&self, ar: &ApiResource, o: DynamicObject) {
        let k = Self::live_key(ar, &o);
        let version = o.metadata.resource_version.clone();
        let live = to_json(o, ar);
        let fp = fingerprint(&live);
        if let Some(e) = self.lock().entries.get_mut(&k) {
            e.seen = Some(fp);
            e.health = Some(health::assess(Some(&live)));
            e.seen_version = version;
        }
    }

    /// An object from a (re)list: the first sighting is only recorded; after a watch gap,
    /// one that changed meanwhile is judged like any change.
    async fn observe_listed(&self, ar: &ApiResource, o: DynamicObject) {
        let k = Self::live_key(ar, &o);
        let known = self
            .lock()
            .entries
            .get(&k)
            .is_some_and(|e| e.seen.is_some());
        if known {
            self.observe(ar, o, false).await;
        } else {
            self.record_seen(ar, o);
        }
    }

    async fn observe(&self, ar: &ApiResource, o: DynamicObject, deleted: bool) {
        if !self.inner.active.load(std::sync::atomic::Ordering::Relaxed) {
            if !deleted {
                self.record_seen(ar, o);
            }
            return;
        }
        let k = Self::live_key(ar, &o);
        let version = o.metadata.resource_version.clone();
        let live = to_json(o, ar);
        let fp = fingerprint(&live);
        let assessed = health::assess((!deleted).then_some(&live));
        {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(e) = st.entries.get_mut(&k) else {
                return; // not ours (any more)
            };
            e.health = Some(assessed);
            // Only status or server-managed metadata changed: nothing to judge, now or
            // after a pause (a controller's status updates must not make a sync re-read).
            if !deleted && e.seen == Some(fp) {
                e.seen_version = version;
                return;
            }
            if st.paused.contains(&e.sync) {
                e.seen_version = version;
                st.dirty.insert(k);
                return;
            }
            e.seen = if deleted { None } else { Some(fp) };
        }
        self.check(&k, if deleted { None } else { Some(live) })
            .await;
        // Last, so that a caller who sees this version also sees what judging it reported.
        if let Some(e) = self.lock().entries.get_mut(&k) {
            e.seen_version = version;
        }
    }

    /// Judges these objects afresh, a bounded number at a time: after a restart every
    /// object is unconfirmed, and one by one that would take minutes at thousands.
    async fn recheck(&self, keys: Vec<Key>) {
        futures::stream::iter(keys)
            .for_each_concurrent(RECHECK_CONCURRENCY, |k| async move {
                let target = match self.lock().entries.get(&k) {
                    Some(e) => e.target.clone(),
                    None => return,
                };
                if let Ok(live) = self.get_live(&target).await {
                    if let (Some(l), Some(e)) = (&live, self.lock().entries.get_mut(&k)) {
                        e.seen = Some(fingerprint(l));
                    }
                    self.check(&k, live).await;
                }
            })
            .await;
    }

    fn api(&self, target: &DesiredObject) -> Api<DynamicObject> {
        crate::cluster::api_for(
            &self.inner.client,
            &target.resource,
            target.id.namespace.as_deref(),
        )
    }

    async fn get_live(&self, target: &DesiredObject) -> kube::Result<Option<Value>> {
        let o = self.api(target).get_opt(&target.id.name).await?;
        Ok(o.map(|o| to_json(o, &target.resource)))
    }

    /// Judges one object and reports, heals or backs off.
    async fn check(&self, k: &Key, live: Option<Value>) {
        let Some((target, sync)) = self.target_to_judge(k) else {
            return;
        };
        tracing::debug!(object = %target.id, "judging drift with a dry-run");
        let Some((verdict, live)) = self.judge(&target, live).await else {
            return;
        };
        let subject = target.id.clone();
        let Some(drift) = verdict else {
            let fp = live.as_ref().map(fingerprint);
            let resolved = self.lock().entries.get_mut(k).is_some_and(|e| {
                e.checked = fp;
                e.seen = fp;
                e.active.take().is_some()
            });
            if resolved {
                self.report(Report::Resolved { sync, subject }).await;
            }
            return;
        };
        let Some((new_drift, heal, fight)) = self.record_drift(k, &drift) else {
            return;
        };
        let Drift {
            fields,
            manager,
            deleted,
        } = drift;
        if new_drift {
            let (sync, subject, manager) = (sync.clone(), subject.clone(), manager.clone());
            self.report(Report::Detected {
                sync,
                subject,
                fields,
                manager,
                deleted,
            })
            .await;
        }
        if let Some(count) = fight {
            self.report(Report::Fight {
                sync,
                subject,
                manager,
                count,
            })
            .await;
            return;
        }
        if heal {
            self.heal(&target, sync).await;
        }
    }

    /// The object's target and sync, unless its sync is applying (judged after, then).
    fn target_to_judge(&self, k: &Key) -> Option<(DesiredObject, String)> {
        let mut st = self.lock();
        let (target, sync) = st
            .entries
            .get(k)
            .map(|e| (e.target.clone(), e.sync.clone()))?;
        // Mid-apply, the live object may already be the next revision's: judging it
        // against this one would report drift that is not there. Judge it after.
        if st.paused.contains(&sync) {
            st.dirty.insert(k.clone());
            return None;
        }
        Some((target, sync))
    }

    /// Whether applying Git again would change the live object, and how: `None` when it
    /// could not be judged now (an error, or an object that keeps changing). The live
    /// object it was judged against comes back with the verdict.
    async fn judge(
        &self,
        target: &DesiredObject,
        mut live: Option<Value>,
    ) -> Option<(Option<Drift>, Option<Value>)> {
        let subject = &target.id;
        for _ in 0..=5 {
            let Some(current) = &live else {
                let deleted = Drift {
                    fields: Vec::new(),
                    manager: None,
                    deleted: true,
                };
                return Some((Some(deleted), None));
            };
            let pp = PatchParams::apply(&self.inner.opts.field_manager)
                .force()
                .dry_run();
            let merged = match self
                .api(target)
                .patch(&target.id.name, &pp, &Patch::Apply(&*target.object))
                .await
            {
                Ok(m) => to_json(m, &target.resource),
                Err(e) => {
                    tracing::warn!(object = %subject, error = %crate::cluster::api_message(&e), "drift check dry-run");
                    return None;
                }
            };
            // A dry-run works on the current object, an event may carry an older one: judge
            // only a pair at the same resourceVersion, re-reading the object when they differ
            // (else a change racing this check, say an autoscaler's, would look like drift).
            let rv = |v: &Value| v.pointer("/metadata/resourceVersion").cloned();
            if rv(&merged) != rv(current) {
                match self.get_live(target).await {
                    Ok(l) => live = l,
                    Err(e) => {
                        tracing::warn!(object = %subject, error = %crate::cluster::api_message(&e), "drift check get");
                        return None;
                    }
                }
                continue;
            }
            let (g, l) = (diff::normalize(&merged), diff::normalize(current));
            if g == l {
                return Some((None, live));
            }
            let mut fields = Vec::new();
            diff::field_diffs(&g, &l, "", &mut fields);
            let fields = fields
                .into_iter()
                .map(|f| diff::mask_field(&subject.kind, f))
                .collect();
            let manager = last_manager(current, &self.inner.opts.field_manager);
            let drift = Drift {
                fields,
                manager,
                deleted: false,
            };
            return Some((Some(drift), live));
        }
        tracing::debug!(object = %subject, "object keeps changing; judged on a later event");
        None
    }

    /// Records an open drift: whether it is new, whether to heal it, and whether healing
    /// has turned into a fight (how many heals, then self-heal backs off).
    fn record_drift(&self, k: &Key, drift: &Drift) -> Option<(bool, bool, Option<u32>)> {
        let h = drift_hash(&drift.fields, drift.deleted);
        let mut st = self.lock();
        let e = st.entries.get_mut(k)?;
        let new_drift = e.active != Some(h);
        e.active = Some(h);
        let now = Instant::now();
        let mut heal = e.self_heal && e.fight_until.is_none_or(|t| now >= t);
        let mut fight = None;
        if heal {
            let window = self.inner.opts.fight_window;
            while e
                .heals
                .front()
                .is_some_and(|t| now.duration_since(*t) > window)
            {
                e.heals.pop_front();
            }
            e.heals.push_back(now);
            if e.heals.len() as u32 > self.inner.opts.fight_threshold {
                fight = Some(e.heals.len() as u32);
                e.heals.clear();
                e.fight_until = Some(now + self.inner.opts.fight_backoff);
                heal = false;
            }
        }
        Some((new_drift, heal, fight))
    }

    /// Applies Git's object again.
    async fn heal(&self, target: &DesiredObject, sync: String) {
        if !self.inner.active.load(std::sync::atomic::Ordering::Relaxed) {
            // Leadership was lost since the drift was judged: the next leader heals it.
            return;
        }
        let pp = PatchParams::apply(&self.inner.opts.field_manager).force();
        let error = self
            .api(target)
            .patch(&target.id.name, &pp, &Patch::Apply(&*target.object))
            .await
            .err()
            .map(|e| crate::cluster::api_message(&e));
        self.report(Report::Healed {
            sync,
            subject: target.id.clone(),
            error,
        })
        .await;
    }

    /// Hands a report to the consumer, waiting for room rather than dropping it: a drift
    /// is marked reported when judged, so a dropped report would never be raised. The
    /// consumer (the controller's loop) takes reports while syncs run, so a burst only
    /// slows the watches that found it.
    async fn report(&self, r: Report) {
        if self.inner.reports.send(r).await.is_err() {
            tracing::debug!("drift report after the consumer stopped (shutting down)");
        }
    }
}

impl Entry {
    fn new(sync: &str, self_heal: bool, target: DesiredObject) -> Self {
        Entry {
            sync: sync.to_string(),
            self_heal,
            target,
            seen: None,
            checked: None,
            health: None,
            seen_version: None,
            active: None,
            heals: VecDeque::new(),
            fight_until: None,
            stamp: 0,
        }
    }

    fn confirmed(&self) -> bool {
        self.active.is_none() && self.seen.is_some() && self.seen == self.checked
    }

    /// Records that the live object with fingerprint `live` matches Git. Only when it is
    /// what the watch last saw (or the watch has seen nothing yet): an older comparison
    /// says nothing about a newer object.
    fn confirm(&mut self, live: u64) {
        if self.seen.is_none_or(|seen| seen == live) {
            self.seen = Some(live);
            self.checked = Some(live);
        }
    }
}

impl apply::LiveCache for Detector {
    /// Whether applying `desired` for `id` would change nothing, known without a request:
    /// Git's side is what was last applied, and the watch has seen no change on the
    /// cluster's side since the object was last confirmed to match.
    fn known_unchanged(&self, id: &ObjectKey, desired: &RawValue) -> bool {
        let st = self.lock();
        // Both sides are the renderer's compact JSON of the object, so equal text is an
        // equal object; a file the revision did not touch hands over the very same text.
        let same = |target: &RawValue| {
            std::ptr::eq(target.get(), desired.get()) || target.get() == desired.get()
        };
        !st.dirty.contains(id)
            && st
                .entries
                .get(id)
                .is_some_and(|e| e.confirmed() && same(&e.target.object))
    }

    fn health(&self, id: &ObjectKey) -> Option<Assessment> {
        self.lock().entries.get(id)?.health.clone()
    }

    /// A sync compared `desired` with `live` and found nothing to change: as good as a
    /// judgement of the detector's own, so the object is confirmed without another request.
    fn compared_unchanged(&self, id: &ObjectKey, desired: &RawValue, live: &Value) {
        let k = id.clone();
        let fp = fingerprint(live);
        let mut st = self.lock();
        match st.entries.get_mut(&k) {
            Some(e) if e.target.object.get() == desired.get() => e.confirm(fp),
            // Not watched yet (the daemon's first sync), or about to change: kept for the
            // `set_desired` that follows this sync.
            _ => {
                st.compared.insert(k, (text_hash(desired.get()), fp));
            }
        }
    }
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Detector(..)")
    }
}

fn text_hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn take_dirty(st: &mut State, sync: &str) -> Vec<Key> {
    let mine: Vec<Key> = st
        .dirty
        .iter()
        .filter(|k| st.entries.get(*k).is_some_and(|e| e.sync == sync))
        .cloned()
        .collect();
    for k in &mine {
        st.dirty.remove(k);
    }
    mine
}

fn fingerprint(live: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // serde_json maps are ordered, so the text is canonical.
    diff::normalize(live).to_string().hash(&mut h);
    h.finish()
}

fn drift_hash(fields: &[diff::FieldDrift], deleted: bool) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    deleted.hash(&mut h);
    for f in fields {
        f.path.hash(&mut h);
        f.before.to_string().hash(&mut h);
        f.after.to_string().hash(&mut h);
    }
    h.finish()
}

/// The field manager that wrote last, other than us and status writers.
fn last_manager(live: &Value, us: &str) -> Option<String> {
    live.pointer("/metadata/managedFields")?
        .as_array()?
        .iter()
        .filter(|m| {
            m["manager"].as_str() != Some(us) && m["subresource"].as_str() != Some("status")
        })
        .max_by(|a, b| {
            a["time"]
                .as_str()
                .unwrap_or("")
                .cmp(b["time"].as_str().unwrap_or(""))
        })
        .and_then(|m| m["manager"].as_str().map(String::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn last_manager_skips_us_and_status_writers() {
        let live = json!({"metadata": {"managedFields": [
            {"manager": "gitops-agent", "operation": "Apply", "time": "2026-01-01T00:00:09Z"},
            {"manager": "kubectl-edit", "operation": "Update", "time": "2026-01-01T00:00:05Z"},
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "time": "2026-01-01T00:00:08Z"},
            {"manager": "kubectl-scale", "operation": "Update", "subresource": "scale", "time": "2026-01-01T00:00:07Z"}
        ]}});
        assert_eq!(
            last_manager(&live, "gitops-agent").as_deref(),
            Some("kubectl-scale")
        );
    }

    #[test]
    fn fingerprint_ignores_status_and_server_metadata() {
        let a = json!({"metadata": {"name": "a", "resourceVersion": "1"}, "spec": {"x": 1}, "status": {"ready": 1}});
        let b = json!({"metadata": {"name": "a", "resourceVersion": "2"}, "spec": {"x": 1}, "status": {"ready": 2}});
        let c = json!({"metadata": {"name": "a", "resourceVersion": "3"}, "spec": {"x": 2}});
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }
}
