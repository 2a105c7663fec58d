//! The controller's state and its reactions: it asks the scheduler what is due, starts
//! fetches and syncs as tasks (syncs bounded by the configured concurrency, one run per
//! sync at a time), and turns what they report into metrics, alerts and the next actions.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kube::Client;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::leader::Claim;
use super::scheduler::{self, Action, Reason, Scheduler};
use super::worker::{self, Ran};
use super::{Options, alerts, sources};
use crate::config::{self, Config};
use crate::drift::Detector;
use crate::notify::Dispatcher;
use crate::secrets::SecretResolver;
use crate::source::{Revision, Source};
use crate::sync::{Engine, Failure, Outcome};
use crate::telemetry::metrics::Metrics;

/// What a task reports when it ends.
pub enum Done {
    Fetched {
        source: String,
        opened: Option<Arc<dyn Source>>,
        took: Duration,
        result: Result<Revision, Failure>,
    },
    Synced {
        sync: String,
        revision: String,
        /// Boxed: an outcome is far larger than the other reports.
        ran: Option<Box<Ran>>,
    },
    /// Stopped when this replica lost the lease; due again should it lead again.
    Stopped { sync: String, reason: Reason },
}

pub struct Controller {
    pub cfg: Arc<Config>,
    pub config_path: PathBuf,
    pub detector: Detector,
    pub tasks: JoinSet<Done>,
    pub metrics: Arc<Metrics>,
    pub dispatcher: Dispatcher,
    engine: Arc<Engine>,
    secrets: SecretResolver,
    scheduler: Scheduler,
    sources: HashMap<String, Arc<dyn Source>>,
    revisions: HashMap<String, Revision>,
    /// Syncs that ran since start (the first run of a detect-only sync only judges).
    seen: HashSet<String>,
    slots: Arc<Semaphore>,
    alerted: HashMap<String, String>,
    /// The policy findings last alerted, per sync.
    warned: HashMap<String, std::collections::BTreeSet<String>>,
    /// Only the leader starts fetches and syncs.
    leading: bool,
    /// Syncs run under it: losing the lease stops them at once.
    claim: Claim,
    background: worker::Background,
}

/// What the controller is made of.
pub struct Parts {
    pub client: Client,
    pub config_path: PathBuf,
    pub cfg: Config,
    pub opts: Options,
    pub engine: Engine,
    pub detector: Detector,
    pub metrics: Arc<Metrics>,
    pub dispatcher: Dispatcher,
    pub claim: Claim,
}

impl Controller {
    pub fn new(p: Parts) -> Self {
        let mut scheduler = Scheduler::new(p.opts.scheduler.clone());
        let (sources, syncs) = specs(&p.cfg);
        scheduler.configure(&sources, &syncs, Instant::now());
        Controller {
            secrets: SecretResolver::new(Some(p.client), &p.cfg.namespace),
            slots: Arc::new(Semaphore::new(p.cfg.concurrency.max(1))),
            cfg: Arc::new(p.cfg),
            config_path: p.config_path,
            detector: p.detector,
            tasks: JoinSet::new(),
            metrics: p.metrics,
            dispatcher: p.dispatcher,
            engine: Arc::new(p.engine),
            scheduler,
            sources: HashMap::new(),
            revisions: HashMap::new(),
            seen: HashSet::new(),
            alerted: HashMap::new(),
            warned: HashMap::new(),
            leading: false,
            claim: p.claim,
            background: Default::default(),
        }
    }

    /// Whether this replica leads: a follower starts nothing, not even what a task that
    /// ended while it led would have started next.
    pub fn set_leading(&mut self, leading: bool) {
        self.leading = leading;
    }

    /// Starts whatever is due now (the leader only).
    pub fn tick(&mut self) {
        if !self.leading {
            return;
        }
        for action in self.scheduler.poll(Instant::now()) {
            self.act(action);
        }
    }

    /// When the loop should look again.
    pub fn next_wake(&self) -> Instant {
        self.scheduler
            .next_wake(Instant::now(), Duration::from_secs(60))
    }

    /// A webhook or a file change asks for `source` now.
    pub fn trigger(&mut self, source: &str) {
        self.scheduler.trigger(source, Instant::now());
    }

    fn act(&mut self, action: Action) {
        let started = self.leading
            && match &action {
                Action::Fetch { source } => self.spawn_fetch(source),
                Action::Run { sync, reason } => self.spawn_run(sync, *reason),
            };
        if !started {
            // Handed back, so it comes due again: a follower starts nothing, and a sync
            // whose source has no revision to read (its fetch failed, or the source
            // changed) runs after that source's next fetch.
            self.scheduler.not_started(&action, Instant::now());
        }
    }

    /// Starts a fetch of `name`; false when it is not configured.
    fn spawn_fetch(&mut self, name: &str) -> bool {
        let Some(spec) = self.cfg.sources.iter().find(|s| s.name == name).cloned() else {
            return false;
        };
        let name = name.to_string();
        let open = self.sources.get(&name).cloned();
        let (secrets, cfg) = (self.secrets.clone(), self.cfg.clone());
        let span = tracing::info_span!("fetch", source = %name);
        self.tasks.spawn(
            async move {
                let started = Instant::now();
                let (opened, source) = match open {
                    Some(s) => (None, s),
                    None => match sources::open(&secrets, &cfg, &spec).await {
                        Ok(s) => (Some(s.clone()), s),
                        Err(f) => {
                            let took = started.elapsed();
                            return Done::Fetched {
                                source: name,
                                opened: None,
                                took,
                                result: Err(f),
                            };
                        }
                    },
                };
                let result = source
                    .fetch()
                    .await
                    .map_err(|e| Failure::Source(e.to_string()));
                let took = started.elapsed();
                Done::Fetched {
                    source: name,
                    opened,
                    took,
                    result,
                }
            }
            .instrument(span),
        );
        true
    }

    /// Starts a run of `name`; false when its source has no revision to read.
    fn spawn_run(&mut self, name: &str, reason: Reason) -> bool {
        let Some(s) = self.cfg.syncs.iter().find(|s| s.name == name).cloned() else {
            return false;
        };
        let (Some(source), Some(revision)) = (
            self.sources.get(&s.source).cloned(),
            self.revisions.get(&s.source).cloned(),
        ) else {
            return false;
        };
        let name = name.to_string();
        let first = self.seen.insert(name.clone());
        let ctx = worker::Context {
            engine: self.engine.clone(),
            detector: self.detector.clone(),
            background: self.background.clone(),
        };
        let (slots, claim) = (self.slots.clone(), self.claim.clone());
        let span = tracing::info_span!("sync", sync = %name, ?reason);
        self.tasks.spawn(
            async move {
                let _slot = slots.acquire_owned().await;
                let run = worker::run(&ctx, &s, &*source, &revision, reason, first);
                let ran = match claim.run(AssertUnwindSafe(run).catch_unwind()).await {
                    Some(Ok(ran)) => ran,
                    Some(Err(_)) => {
                        let failure = Failure::Source(format!("sync {name}: the run panicked"));
                        Some(Ran {
                            outcome: Outcome::new(&name, &revision.id).failed(failure),
                            duration: Duration::ZERO,
                        })
                    }
                    None => {
                        // Stopped where it was: the stored intent keeps what it may have
                        // created on record, for whichever replica syncs next.
                        tracing::warn!("sync stopped: this replica no longer leads");
                        ctx.detector.resume(&name).await;
                        return Done::Stopped { sync: name, reason };
                    }
                };
                Done::Synced {
                    sync: name,
                    revision: revision.id,
                    ran: ran.map(Box::new),
                }
            }
            .instrument(span),
        );
        true
    }

    /// A task ended: record what it did and start what follows from it.
    pub fn done(&mut self, done: Done) {
        let now = Instant::now();
        let next = match done {
            Done::Fetched {
                source,
                opened,
                took,
                result,
            } => self.fetched(&source, opened, took, result, now),
            Done::Synced {
                sync,
                revision,
                ran,
            } => {
                let applied = ran.as_ref().map(|r| r.outcome.succeeded());
                if let Some(ran) = ran {
                    self.report(&ran.outcome, ran.duration);
                }
                self.scheduler.finished(&sync, &revision, applied, now)
            }
            Done::Stopped { sync, reason } => {
                self.scheduler
                    .not_started(&Action::Run { sync, reason }, now);
                Vec::new()
            }
        };
        for action in next {
            self.act(action);
        }
    }

    fn fetched(
        &mut self,
        source: &str,
        opened: Option<Arc<dyn Source>>,
        took: Duration,
        result: Result<Revision, Failure>,
        now: Instant,
    ) -> Vec<Action> {
        if let Some(s) = opened {
            self.sources.insert(source.to_string(), s);
        }
        let remote = self
            .cfg
            .sources
            .iter()
            .any(|s| s.name == source && s.directory.is_none());
        match result {
            Ok(revision) => {
                if remote {
                    self.metrics
                        .observe_git_fetch(source, took, &Ok::<(), String>(()));
                }
                let id = revision.id.clone();
                self.revisions.insert(source.to_string(), revision);
                self.scheduler.fetched(source, Some(&id), now)
            }
            Err(failure) => {
                tracing::error!(%source, error = %failure, "reading the source");
                // Reopen next time: that re-reads the credentials Secret, so a rotated
                // token or key is picked up without a restart.
                self.sources.remove(source);
                let text = failure.to_string();
                if remote {
                    self.metrics
                        .observe_git_fetch(source, took, &Err::<(), String>(text.clone()));
                }
                for sync in self.scheduler.syncs_of(source) {
                    let outcome = Outcome::new(&sync, "").failed(Failure::Source(text.clone()));
                    self.report(&outcome, took);
                    self.record_source_failure(&sync, &text);
                }
                self.scheduler.fetched(source, None, now)
            }
        }
    }

    /// The failure in the sync's status, written by the leader only (in the background:
    /// the loop does not wait on the API server).
    fn record_source_failure(&self, sync: &str, text: &str) {
        let Some(s) = self.cfg.syncs.iter().find(|s| s.name == sync).cloned() else {
            return;
        };
        let (engine, claim) = (self.engine.clone(), self.claim.clone());
        let failure = Failure::Source(text.to_owned());
        tokio::spawn(async move {
            claim.run(engine.record_source_failure(&s, failure)).await;
        });
    }

    /// Metrics and alerts of one outcome.
    fn report(&mut self, outcome: &Outcome, duration: Duration) {
        self.metrics.observe_sync(&outcome.sync, outcome, duration);
        if let Some(a) = alerts::sync_alert(&mut self.alerted, outcome) {
            self.dispatcher.send(a);
        }
        for a in alerts::policy_alerts(&mut self.warned, outcome) {
            self.dispatcher.send(a);
        }
    }

    /// Takes a new configuration: removed syncs are forgotten, changed sources reopened,
    /// changed syncs run again, and every source is fetched now.
    pub fn reconfigure(&mut self, new: Config) {
        for s in &self.cfg.syncs {
            if !new.syncs.iter().any(|n| n.name == s.name) {
                self.detector.forget(&s.name);
                self.engine.forget(&s.name);
                self.seen.remove(&s.name);
                self.metrics.forget_sync(&s.name);
            }
        }
        for s in &self.cfg.sources {
            if new.sources.iter().find(|n| n.name == s.name) != Some(s) {
                self.sources.remove(&s.name);
                self.revisions.remove(&s.name);
            }
        }
        let (sources, syncs) = specs(&new);
        self.scheduler.configure(&sources, &syncs, Instant::now());
        self.cfg = Arc::new(new);
    }

    /// Waits for every task in flight (shutdown: a sync in flight finishes).
    pub async fn drain(&mut self) {
        while let Some(done) = self.tasks.join_next().await {
            if let Ok(Done::Synced { ran: Some(ran), .. }) = done {
                self.report(&ran.outcome, ran.duration);
            }
        }
        // Confirming the cache is worth nothing to a process that is about to exit.
        self.background.lock().expect("background lock").abort_all();
    }
}

/// The scheduler's view of a configuration.
fn specs(cfg: &Config) -> (Vec<scheduler::SourceSpec>, Vec<scheduler::SyncSpec>) {
    let sources = cfg
        .sources
        .iter()
        .map(|s| scheduler::SourceSpec {
            name: s.name.clone(),
            interval: s.interval,
        })
        .collect();
    let syncs = cfg
        .syncs
        .iter()
        .map(|s: &config::Sync| scheduler::SyncSpec {
            name: s.name.clone(),
            source: s.source.clone(),
            suspended: s.suspend,
            generation: {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&format!("{s:?}"), &mut h);
                std::hash::Hasher::finish(&h)
            },
        })
        .collect();
    (sources, syncs)
}
