//! The long-running agent: one event loop that fetches each source on its interval (or at
//! once on a webhook or a file change), syncs new revisions, judges drift from watches,
//! re-checks everything periodically, reloads its configuration when the file changes,
//! and on a shutdown signal lets the sync in flight finish before exiting.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::alert::{self, Dispatcher, Event as Alert};
use crate::cluster::RequestCounter;
use crate::leader;
use crate::metrics::{self, Health, Metrics};
use crate::webhook;

use crate::config::{self, Config};
use crate::drift::{self, Detector, Report};
use crate::files;
use crate::source::{self, File, GitSource};
use crate::sync::{self, Engine, Failure, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] crate::apply::Error),
    #[error(transparent)]
    Files(#[from] files::Error),
    #[error("listen on {0}: {1}")]
    Listen(String, #[source] std::io::Error),
    #[error(transparent)]
    Leader(leader::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct Options {
    /// Every object is judged afresh this often (drift a watch missed, or that happened
    /// while the agent was down). Self-heal syncs re-apply; detect-only syncs alert.
    pub resync: Duration,
    /// Wait after a failed sync before trying the same revision again (doubles up to `max_backoff`).
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub drift: drift::Options,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            resync: Duration::from_secs(600),
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            drift: drift::Options::default(),
        }
    }
}

/// Where a source's files come from.
#[derive(Clone)]
pub enum Origin {
    Git(GitSource),
    Directory(PathBuf),
}

impl Origin {
    pub async fn open(
        client: Option<&Client>,
        cfg: &Config,
        src: &config::Source,
    ) -> Result<Origin, Failure> {
        match &src.directory {
            Some(dir) => Ok(Origin::Directory(dir.clone())),
            None => sync::open_source(client, cfg, src).await.map(Origin::Git),
        }
    }

    /// The current revision and the files under `path` in it. A directory's revision is a
    /// hash of its contents, so an unchanged directory is an unchanged revision.
    pub async fn files(&self, path: &str) -> Result<(String, Vec<File>), Failure> {
        match self {
            Origin::Git(src) => {
                let fetched = src
                    .fetch()
                    .await
                    .map_err(|e| Failure::Source(e.to_string()))?;
                let files = src
                    .read(fetched.revision.commit, path)
                    .await
                    .map_err(|e| Failure::Source(e.to_string()))?;
                Ok((fetched.revision.to_string(), files))
            }
            Origin::Directory(dir) => {
                let root = if path.is_empty() {
                    dir.clone()
                } else {
                    dir.join(path)
                };
                let limits = source::Limits::default();
                let mut files =
                    tokio::task::spawn_blocking(move || source::read_dir(&root, &limits))
                        .await
                        .map_err(|e| Failure::Source(format!("read directory: {e}")))?
                        .map_err(|e| Failure::Source(e.to_string()))?;
                // Name files from the source root, as Git paths are, for messages.
                if !path.is_empty() {
                    for f in &mut files {
                        f.path = format!("{path}/{}", f.path);
                    }
                }
                let mut h = std::collections::hash_map::DefaultHasher::new();
                for f in &files {
                    f.path.hash(&mut h);
                    f.content.hash(&mut h);
                }
                Ok((format!("directory@{:016x}", h.finish()), files))
            }
        }
    }
}

/// Fetches a sync's source and syncs its current revision (the one-shot commands).
pub async fn sync_one(
    engine: &mut Engine,
    client: Option<&Client>,
    cfg: &Config,
    s: &config::Sync,
    opts: &sync::Options,
) -> Outcome {
    let Some(src) = cfg.sources.iter().find(|src| src.name == s.source) else {
        return failed(
            s,
            Failure::Source(format!("sync {}: no source named {}", s.name, s.source)),
        );
    };
    let origin = match Origin::open(client, cfg, src).await {
        Ok(o) => o,
        Err(f) => return failed(s, f),
    };
    match origin.files(&s.path).await {
        Ok((revision, files)) => engine.sync_revision(s, &revision, &files, opts).await,
        Err(f) => failed(s, f),
    }
}

fn failed(s: &config::Sync, f: Failure) -> Outcome {
    Outcome {
        sync: s.name.clone(),
        revision: String::new(),
        changes: Default::default(),
        health: vec![],
        failure: Some(f),
        desired: vec![],
    }
}

/// What one sync attempt in a pass did: the fetch (timing and result) and, when the
/// revision was synced, the outcome and how long it took.
pub struct Ran {
    pub source: String,
    pub fetch: Option<(Duration, Result<(), String>)>,
    pub outcome: Outcome,
    pub duration: Duration,
}

/// Per-sync memory between passes.
#[derive(Default)]
struct SyncState {
    last_revision: Option<String>,
    last_ok: bool,
    last_run: Option<Instant>,
    last_resync: Option<Instant>,
    failures: u32,
}

/// The running agent.
pub struct Agent {
    client: Client,
    config_path: PathBuf,
    cfg: Config,
    opts: Options,
    engine: Engine,
    detector: Detector,
    origins: HashMap<String, Origin>,
    next_fetch: HashMap<String, Instant>,
    /// Sources asked for by a trigger: their syncs resync even an unchanged revision.
    requested: HashSet<String>,
    states: HashMap<String, SyncState>,
    _files: Option<files::FileWatch>,
}

impl Agent {
    pub async fn new(
        client: Client,
        config_path: PathBuf,
        cfg: Config,
        opts: Options,
    ) -> Result<(Agent, mpsc::Receiver<Report>)> {
        let engine = Engine::new(client.clone(), &cfg.namespace).await?;
        let (detector, reports) = Detector::new(client.clone(), opts.drift.clone());
        let agent = Agent {
            client,
            config_path,
            cfg,
            opts,
            engine,
            detector,
            origins: HashMap::new(),
            next_fetch: HashMap::new(),
            requested: HashSet::new(),
            states: HashMap::new(),
            _files: None,
        };
        Ok((agent, reports))
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Starts watching the config file's folder and the local-directory sources.
    fn watch_files(&mut self, secrets_dir: Option<&Path>) -> Result<mpsc::Receiver<Vec<PathBuf>>> {
        let mut targets = Vec::new();
        if let Some(d) = secrets_dir {
            targets.push(files::Target {
                path: d.to_path_buf(),
                recursive: false,
            });
        }
        if let Some(dir) = self
            .config_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            targets.push(files::Target {
                path: dir.to_path_buf(),
                recursive: false,
            });
        }
        for s in &self.cfg.sources {
            if let Some(d) = &s.directory {
                targets.push(files::Target {
                    path: d.clone(),
                    recursive: true,
                });
            }
        }
        let (w, rx) = files::watch(&targets, Duration::from_millis(200))?;
        self._files = Some(w);
        Ok(rx)
    }

    /// Marks a source to be fetched now (a webhook, or a change in its directory). Like
    /// Flux's reconcile request, it also asks for a resync when the revision is unchanged.
    pub fn trigger(&mut self, source: &str) {
        if self.cfg.sources.iter().any(|s| s.name == source) {
            self.next_fetch.insert(source.to_string(), Instant::now());
            self.requested.insert(source.to_string());
        }
    }

    /// Re-reads the configuration; an invalid new one is rejected and the running one stays.
    /// Returns whether it changed.
    pub fn reload(&mut self) -> bool {
        let new = match config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "new configuration rejected; keeping the running one");
                return false;
            }
        };
        if new == self.cfg {
            return false;
        }
        for s in &self.cfg.syncs {
            if !new.syncs.iter().any(|n| n.name == s.name) {
                self.detector.forget(&s.name);
                self.states.remove(&s.name);
            }
        }
        // Sources whose spec changed are reopened; everything is fetched at once.
        for s in &self.cfg.sources {
            if new.sources.iter().find(|n| n.name == s.name) != Some(s) {
                self.origins.remove(&s.name);
            }
        }
        for s in &new.syncs {
            if self.cfg.syncs.iter().find(|o| o.name == s.name) != Some(s) {
                // A changed sync spec means its next pass must apply even the same revision.
                self.states.remove(&s.name);
            }
        }
        self.next_fetch = new
            .sources
            .iter()
            .map(|s| (s.name.clone(), Instant::now()))
            .collect();
        tracing::info!(
            sources = new.sources.len(),
            syncs = new.syncs.len(),
            "configuration reloaded"
        );
        self.cfg = new;
        true
    }

    /// Runs every source that is due; returns the syncs that ran.
    pub async fn pass(&mut self) -> Vec<Ran> {
        let now = Instant::now();
        let mut outcomes = Vec::new();
        let sources = self.cfg.sources.clone();
        for src_cfg in &sources {
            let due = self.next_fetch.get(&src_cfg.name).is_none_or(|t| *t <= now);
            if !due {
                continue;
            }
            self.next_fetch
                .insert(src_cfg.name.clone(), now + src_cfg.interval);
            let requested = self.requested.remove(&src_cfg.name);
            if !self.origins.contains_key(&src_cfg.name) {
                match Origin::open(Some(&self.client), &self.cfg, src_cfg).await {
                    Ok(o) => {
                        self.origins.insert(src_cfg.name.clone(), o);
                    }
                    Err(e) => {
                        tracing::error!(source = %src_cfg.name, error = %e, "opening source");
                        continue;
                    }
                }
            }
            let origin = self.origins[&src_cfg.name].clone();
            let syncs: Vec<config::Sync> = self
                .cfg
                .syncs
                .iter()
                .filter(|s| s.source == src_cfg.name && !s.suspend)
                .cloned()
                .collect();
            for s in syncs {
                if let Some(o) = self.sync_if_due(&origin, &s, requested).await {
                    outcomes.push(o);
                }
            }
        }
        outcomes
    }

    async fn sync_if_due(
        &mut self,
        origin: &Origin,
        s: &config::Sync,
        requested: bool,
    ) -> Option<Ran> {
        let started = Instant::now();
        let fetched = origin.files(&s.path).await;
        let fetch_took = started.elapsed();
        let is_git = matches!(origin, Origin::Git(_));
        let (revision, files) = match fetched {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(sync = %s.name, error = %e, "reading the source");
                // Reopen next time: that re-reads the credentials Secret, so a rotated
                // token or key is picked up without a restart.
                self.origins.remove(&s.source);
                let outcome = failed(s, e);
                let err = outcome
                    .failure
                    .as_ref()
                    .map(|f| f.to_string())
                    .unwrap_or_default();
                return Some(Ran {
                    source: s.source.clone(),
                    fetch: is_git.then_some((fetch_took, Err(err))),
                    outcome,
                    duration: fetch_took,
                });
            }
        };
        let fetch = is_git.then_some((fetch_took, Ok(())));
        let first = !self.states.contains_key(&s.name);
        if first {
            // After a restart, an unchanged revision in a detect-only sync is not re-applied:
            // applying would silently undo drift that the agent exists to report.
            let stored = self
                .engine
                .store()
                .load(&s.name)
                .await
                .ok()
                .and_then(|r| r.inventory.revision);
            let st = self.states.entry(s.name.clone()).or_default();
            if !s.self_heal && stored.as_deref() == Some(revision.as_str()) {
                st.last_revision = stored;
                let dry = self
                    .engine
                    .sync_revision(
                        s,
                        &revision,
                        &files,
                        &sync::Options {
                            dry_run: true,
                            ..Default::default()
                        },
                    )
                    .await;
                self.detector.set_desired(&s.name, false, dry.desired).await;
                self.detector.recheck_sync(&s.name).await;
                st_mark(self.states.get_mut(&s.name), true);
                return None;
            }
        }
        let st = self.states.entry(s.name.clone()).or_default();
        let backoff = self
            .opts
            .backoff
            .saturating_mul(2u32.saturating_pow(st.failures.min(16)))
            .min(self.opts.max_backoff);
        let new_revision = st.last_revision.as_deref() != Some(revision.as_str());
        let retry = !st.last_ok && st.last_run.is_none_or(|t| t.elapsed() >= backoff);
        if !new_revision && !retry {
            let resync_due = requested
                || st
                    .last_resync
                    .is_none_or(|t| t.elapsed() >= self.opts.resync);
            if !resync_due {
                return None;
            }
            st.last_resync = Some(Instant::now());
            // Judge first whatever the watch cache cannot vouch for, so drift that a watch
            // missed is reported (and healed) as drift rather than silently re-applied.
            self.detector.recheck_sync(&s.name).await;
            if !s.self_heal {
                // Detect-only: re-applying the same revision would undo the drift it reports.
                return None;
            }
            // Self-heal: a full sync of the same revision. Objects the watch cache knows
            // unchanged on both sides cost no request, so this is cheap when nothing moved.
        }
        self.detector.pause(&s.name);
        let mut outcome = self
            .engine
            .sync_revision(s, &revision, &files, &self.sync_options())
            .await;
        drop(files);
        if outcome.desired.is_empty() {
            self.detector.resume(&s.name).await;
        } else {
            let desired = std::mem::take(&mut outcome.desired);
            self.detector
                .set_desired(&s.name, s.self_heal, desired)
                .await;
            // Confirm, once and in the background, the objects the watch cache cannot vouch
            // for yet; later syncs then skip every object unchanged on both sides.
            let detector = self.detector.clone();
            let sync_name = s.name.clone();
            tokio::spawn(async move { detector.recheck_sync(&sync_name).await });
        }
        log_outcome(&outcome);
        let ran = Ran {
            source: s.source.clone(),
            fetch,
            outcome,
            duration: started.elapsed(),
        };
        let outcome = &ran.outcome;
        let st = self.states.entry(s.name.clone()).or_default();
        st.last_revision = Some(revision);
        st.last_ok = outcome.succeeded();
        st.failures = if st.last_ok { 0 } else { st.failures + 1 };
        st.last_run = Some(Instant::now());
        st.last_resync = Some(Instant::now());
        Some(ran)
    }

    /// Real syncs consult the watch cache: objects unchanged on both sides cost nothing,
    /// and what a sync finds unchanged by comparing is confirmed in the cache.
    fn sync_options(&self) -> sync::Options {
        sync::Options {
            dry_run: false,
            cache: Some(Arc::new(self.detector.clone())),
        }
    }

    fn next_wake(&self) -> Instant {
        let next = self.next_fetch.values().min().copied();
        let soonest = Instant::now() + Duration::from_secs(60);
        next.map_or(soonest, |n| n.min(soonest))
    }
}

fn st_mark(st: Option<&mut SyncState>, ok: bool) {
    if let Some(st) = st {
        st.last_ok = ok;
        st.last_run = Some(Instant::now());
        st.last_resync = Some(Instant::now());
    }
}

/// Reads the webhook secrets from a mounted Secret directory: one file per provider.
pub fn read_webhook_secrets(dir: &Path) -> webhook::Secrets {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).ok().map(|mut b| {
            // Secrets written by hand often end in a newline that is not part of the secret.
            while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                b.pop();
            }
            b
        })
    };
    webhook::Secrets {
        github: read("github"),
        gitlab: read("gitlab"),
        gitea: read("gitea"),
        bitbucket: read("bitbucket"),
        generic: read("generic"),
    }
}

/// The ConfigMap through which a replica that is not leading hands webhook triggers to
/// the one that is: webhooks reach whichever replica is ready.
pub const RELAY_CONFIGMAP: &str = "gitops-agent-triggers";

async fn relay_trigger(client: &Client, namespace: &str, source: &str) {
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), namespace);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": RELAY_CONFIGMAP, "namespace": namespace},
        "data": {source: stamp.to_string()},
    });
    let pp = kube::api::PatchParams::apply("gitops-agent-relay").force();
    if let Err(e) = api
        .patch(RELAY_CONFIGMAP, &pp, &kube::api::Patch::Apply(&cm))
        .await
    {
        tracing::warn!(%source, error = %e, "relaying a webhook trigger to the leader");
    }
}

/// Watches the relay ConfigMap and forwards each source whose stamp changed.
fn watch_relay(
    client: Client,
    namespace: String,
    tx: mpsc::Sender<String>,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    tokio::spawn(async move {
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client, &namespace);
        let cfg = kube::runtime::watcher::Config::default()
            .fields(&format!("metadata.name={RELAY_CONFIGMAP}"));
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut first = true;
        let mut stream = std::pin::pin!(kube::runtime::watcher(api, cfg).default_backoff());
        while let Some(ev) = stream.next().await {
            let cm = match ev {
                Ok(
                    kube::runtime::watcher::Event::Apply(cm)
                    | kube::runtime::watcher::Event::InitApply(cm),
                ) => cm,
                Ok(kube::runtime::watcher::Event::InitDone) => {
                    first = false;
                    continue;
                }
                _ => continue,
            };
            for (source, stamp) in cm.data.unwrap_or_default() {
                let changed = seen.insert(source.clone(), stamp.clone()).as_ref() != Some(&stamp);
                // Stamps present at start-up are old news: the first pass fetches everything.
                if changed && !first && tx.send(source).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// Builds the alert sinks one by one: a sink that cannot be built (its Secret is missing,
/// say) is logged and left out, and the others still deliver.
async fn build_alerts(client: &Client, cfg: &Config, metrics: Arc<Metrics>) -> Dispatcher {
    let info = alert::AgentInfo::new(&cfg.namespace, identity());
    let mut sinks = Vec::new();
    for s in &cfg.alerts.sinks {
        let one = alert::AlertsConfig {
            sinks: vec![s.clone()],
        };
        match one
            .build(client, &info, &alert::HttpOptions::default())
            .await
        {
            Ok(mut built) => sinks.append(&mut built),
            Err(e) => tracing::error!(error = %e, "alert sink left out"),
        }
    }
    let on_result: alert::OnResult = Arc::new(move |sink, r| {
        let result = match r {
            alert::DeliveryResult::Delivered { .. } => metrics::AlertResult::Delivered,
            alert::DeliveryResult::Failed { .. } => metrics::AlertResult::Failed,
            alert::DeliveryResult::Dropped => metrics::AlertResult::Dropped,
        };
        metrics.alert_delivery(sink, result);
    });
    Dispatcher::new(
        sinks,
        alert::DeliveryOptions {
            on_result: Some(on_result),
            ..Default::default()
        },
    )
}

/// The alert a drift report raises (a heal is logged, not alerted).
fn drift_alert(r: Report) -> Option<Alert> {
    match r {
        Report::Detected {
            sync,
            subject,
            fields,
            manager,
            deleted,
        } => {
            let mut fields: Vec<alert::FieldDrift> = fields
                .into_iter()
                .map(|f| alert::FieldDrift::new(f.path, f.git, f.live))
                .collect();
            if deleted {
                fields = vec![alert::FieldDrift::new(
                    "(object)",
                    serde_json::json!("present in Git"),
                    serde_json::Value::Null,
                )];
            }
            Some(Alert::drift_detected(sync, subject, fields, manager))
        }
        Report::Resolved { sync, subject } => Some(Alert::DriftResolved { sync, subject }),
        Report::Fight {
            sync,
            subject,
            manager,
            count,
        } => Some(Alert::Fight {
            sync,
            subject,
            manager,
            count,
        }),
        Report::Healed { .. } => None,
    }
}

/// The alert a sync outcome raises, once per distinct failure: `alerted` remembers, per
/// sync, what was last alerted, so a failing revision retried every few seconds alerts once.
fn sync_alert(alerted: &mut HashMap<String, String>, o: &Outcome) -> Option<Alert> {
    let sync = o.sync.clone();
    let revision = o.revision.clone();
    match &o.failure {
        None => alerted
            .remove(&sync)
            .map(|_| Alert::SyncRecovered { sync, revision }),
        Some(f) => {
            let text = f.to_string();
            if alerted.get(&sync) == Some(&text) {
                return None;
            }
            alerted.insert(sync.clone(), text.clone());
            Some(match f {
                Failure::HeldBack { reason, .. } => Alert::PruneHeldBack {
                    sync,
                    revision,
                    reason: reason.clone(),
                },
                _ => Alert::SyncFailed {
                    sync,
                    revision,
                    error: text,
                },
            })
        }
    }
}

fn identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("gitops-agent-{}", std::process::id()))
}

/// Runs until SIGTERM or Ctrl-C: webhooks, metrics, leader election, syncing and drift.
pub async fn run(
    client: Client,
    counter: RequestCounter,
    config_path: PathBuf,
    cfg: Config,
    opts: Options,
) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    metrics.track_requests(counter.clone());
    let health = Health::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    if let Some(addr) = &cfg.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Listen(addr.clone(), e))?;
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
        tokio::spawn(metrics::serve(
            listener,
            metrics::router(metrics.clone(), health.clone()),
            stopped(),
        ));
    }

    let (trigger_tx, mut triggers) = mpsc::channel::<webhook::Trigger>(256);
    let pending = webhook::Pending::new();
    let (sources_tx, sources_rx) = watch::channel(webhook::sources_from_config(&cfg));
    let secrets_dir = cfg.webhook.as_ref().map(|w| w.secrets_dir.clone());
    let (secrets_tx, secrets_rx) = watch::channel(
        secrets_dir
            .as_deref()
            .map(read_webhook_secrets)
            .unwrap_or_default(),
    );
    if let Some(w) = &cfg.webhook {
        let listener = TcpListener::bind(&w.listen)
            .await
            .map_err(|e| Error::Listen(w.listen.clone(), e))?;
        tracing::info!(addr = %w.listen, "serving push webhooks");
        let m = metrics.clone();
        let hook: webhook::OutcomeHook = Arc::new(move |p, o| m.webhook_request(p.as_str(), o));
        let hooks = webhook::Webhooks::new(
            sources_rx,
            secrets_rx,
            trigger_tx.clone(),
            pending.clone(),
            webhook::Options {
                on_outcome: Some(hook),
                ..Default::default()
            },
        );
        tokio::spawn(webhook::serve(listener, webhook::app(hooks), stopped()));
    }

    let (mut leading, lease) = if cfg.leader_election.enabled {
        // A 10 s lease (renewed every 2 s, given up after 7 s without renewal) bounds a
        // takeover after a crash to about 12 s: inside the 15 s we promise.
        let lo = leader::Options {
            lease_duration: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(7),
            retry_period: Duration::from_secs(2),
            ..leader::Options::new(&cfg.namespace, &cfg.leader_election.lease_name, identity())
        };
        let (rx, handle) = leader::spawn(client.clone(), lo).map_err(Error::Leader)?;
        (rx, Some(handle))
    } else {
        let (tx, rx) = watch::channel(true);
        // Nobody else decides: keep the sender for the life of the loop.
        std::mem::forget(tx);
        (rx, None)
    };
    let (relay_tx, mut relayed) = mpsc::channel::<String>(64);
    let _relay = watch_relay(client.clone(), cfg.namespace.clone(), relay_tx);

    let dispatcher = build_alerts(&client, &cfg, metrics.clone()).await;
    let mut alerted: HashMap<String, String> = HashMap::new();

    let (mut agent, mut reports) = Agent::new(client.clone(), config_path, cfg, opts).await?;
    let mut file_events = agent.watch_files(secrets_dir.as_deref())?;
    let mut shutdown = std::pin::pin!(shutdown_signal());
    health.set_ready(true);
    loop {
        let is_leader = *leading.borrow();
        metrics.set_leader(is_leader);
        agent.detector.set_active(is_leader);
        if is_leader {
            for o in agent.pass().await {
                metrics.observe_sync(&o.outcome.sync, &o.outcome, o.duration);
                if let Some(a) = sync_alert(&mut alerted, &o.outcome) {
                    dispatcher.send(a);
                }
                if let Some(f) = o.fetch {
                    metrics.observe_git_fetch(&o.source, f.0, &f.1);
                }
            }
        }
        for (sync, n) in agent.detector.drifted() {
            metrics.set_drifted(&sync, n);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(agent.next_wake()) => {}
            Some(t) = triggers.recv() => {
                pending.take(&t.source);
                if *leading.borrow() {
                    agent.trigger(&t.source);
                } else {
                    relay_trigger(&client, &agent.cfg.namespace, &t.source).await;
                }
            }
            Some(source) = relayed.recv() => {
                if *leading.borrow() {
                    agent.trigger(&source);
                }
            }
            Some(batch) = file_events.recv() => {
                if batch.iter().any(|p| files::concerns(p, &agent.config_path)) && agent.reload() {
                    let _ = sources_tx.send(webhook::sources_from_config(&agent.cfg));
                    file_events = agent.watch_files(secrets_dir.as_deref())?;
                }
                if let Some(dir) = &secrets_dir
                    && batch.iter().any(|p| files::concerns(p, dir))
                {
                    let _ = secrets_tx.send(read_webhook_secrets(dir));
                    tracing::info!("webhook secrets reloaded");
                }
                let touched: Vec<String> = agent.cfg.sources.iter()
                    .filter(|s| s.directory.as_deref().is_some_and(|d| batch.iter().any(|p| files::concerns(p, d))))
                    .map(|s| s.name.clone())
                    .collect();
                for s in touched {
                    agent.trigger(&s);
                }
            }
            Some(report) = reports.recv() => {
                log_report(&report);
                if let Some(a) = drift_alert(report) {
                    dispatcher.send(a);
                }
            }
            _ = leading.changed() => {
                tracing::info!(leader = *leading.borrow(), "leadership changed");
            }
            _ = &mut shutdown => {
                // Between passes: no sync is in flight, inventory and cluster agree.
                tracing::info!("shutting down");
                health.set_not_ready("shutting down");
                let _ = stop_tx.send(true);
                dispatcher.shutdown(Duration::from_secs(5)).await;
                if let Some(l) = lease
                    && let Err(e) = l.release().await
                {
                    tracing::warn!(error = %e, "releasing the leader lease");
                }
                return Ok(());
            }
        }
    }
}

pub fn log_report(r: &Report) {
    match r {
        Report::Detected {
            sync,
            subject,
            fields,
            manager,
            deleted,
        } => {
            let paths: Vec<&str> = fields.iter().map(|f| f.path.as_str()).collect();
            tracing::warn!(%sync, object = %subject, fields = ?paths, manager = manager.as_deref().unwrap_or("-"), deleted, "drift detected");
        }
        Report::Resolved { sync, subject } => {
            tracing::info!(%sync, object = %subject, "drift resolved")
        }
        Report::Fight {
            sync,
            subject,
            manager,
            count,
        } => {
            tracing::warn!(%sync, object = %subject, manager = manager.as_deref().unwrap_or("-"), count, "another writer keeps reverting this object; self-heal backs off")
        }
        Report::Healed {
            sync,
            subject,
            error,
        } => match error {
            None => tracing::info!(%sync, object = %subject, "self-healed"),
            Some(e) => tracing::error!(%sync, object = %subject, error = %e, "self-heal failed"),
        },
    }
}

pub fn log_outcome(o: &Outcome) {
    let summary = o.changes.summary();
    match &o.failure {
        None => {
            tracing::info!(sync = %o.sync, revision = %o.revision, changes = %summary, health = ?o.overall_health().map(|h| h.to_string()), "synced")
        }
        Some(f) => {
            tracing::error!(sync = %o.sync, revision = %o.revision, changes = %summary, error = %f, "sync failed")
        }
    }
    for c in o
        .changes
        .entries
        .iter()
        .filter(|c| c.action.is_write() || c.action == crate::change::Action::Failed)
    {
        tracing::info!(sync = %o.sync, object = %c.subject, action = %c.action, message = c.message.as_deref().unwrap_or(""), "change");
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The path as the config watcher sees it (absolute), so events compare equal.
pub fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}
