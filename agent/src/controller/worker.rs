//! One run of one sync, as the controller starts it: read the sync's path from the
//! revision its source was fetched at, apply it through the engine with drift judging
//! paused, then hand the applied objects to the drift detector. Also the one-shot form the
//! commands use (fetch, read, sync) without a controller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;

use super::log::log_outcome;
use super::scheduler::Reason;
use crate::config::{self, Config};
use crate::drift::Detector;
use crate::secrets::SecretResolver;
use crate::source::{Revision, Source};
use crate::sync::{self, Engine, Failure, Outcome};

/// What one run did, when it ran the engine.
pub struct Ran {
    pub outcome: Outcome,
    pub duration: Duration,
}

/// What every run shares.
#[derive(Clone)]
pub struct Context {
    pub engine: Arc<Engine>,
    pub detector: Detector,
    /// Work a run leaves behind (confirming the cache), tracked so shutdown can end it.
    pub background: Background,
}

/// Tasks that outlive the run that started them, tracked and instrumented.
pub type Background = Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>;

/// Runs `s` with `revision` of its source. `None` when nothing needed applying: a
/// detect-only sync whose revision is unchanged only has its drift judged, since applying
/// would undo the drift it exists to report.
pub async fn run(
    ctx: &Context,
    s: &config::Sync,
    source: &dyn Source,
    revision: &Revision,
    reason: Reason,
    first: bool,
) -> Option<Ran> {
    let started = Instant::now();
    let files = match read_files(source, revision, s).await {
        Ok(f) => f,
        Err(e) => {
            let outcome =
                Outcome::new(&s.name, &revision.id).failed(Failure::Source(e.to_string()));
            log_outcome(&outcome);
            return Some(Ran {
                outcome,
                duration: started.elapsed(),
            });
        }
    };
    if first && !s.self_heal && stored_revision(ctx, s).await.as_deref() == Some(&revision.id) {
        // After a restart, an unchanged revision of a detect-only sync is not re-applied:
        // its objects are only handed to the detector, which judges them.
        let dry = ctx
            .engine
            .sync_revision(s, &revision.id, &files, &dry_run())
            .await;
        ctx.detector.set_desired(&s.name, false, dry.desired).await;
        ctx.detector.recheck_sync(&s.name).await;
        return None;
    }
    if matches!(reason, Reason::Resync | Reason::Requested) {
        // Judge first whatever the watch cache cannot vouch for, so drift that a watch
        // missed is reported (and healed) as drift rather than silently re-applied.
        ctx.detector.recheck_sync(&s.name).await;
        report_infra_drift(ctx, s, &revision.id, &files).await;
        if !s.self_heal {
            return None;
        }
    }
    let outcome = apply(ctx, s, revision, files).await;
    log_outcome(&outcome);
    Some(Ran {
        outcome,
        duration: started.elapsed(),
    })
}

/// A full sync with the watch cache, drift judging paused for its objects meanwhile.
async fn apply(
    ctx: &Context,
    s: &config::Sync,
    revision: &Revision,
    files: Vec<crate::source::File>,
) -> Outcome {
    ctx.detector.pause(&s.name);
    let opts = sync::Options {
        dry_run: false,
        cache: Some(Arc::new(ctx.detector.clone())),
        ..Default::default()
    };
    let mut outcome = ctx
        .engine
        .sync_revision(s, &revision.id, &files, &opts)
        .await;
    drop(files);
    if outcome.desired.is_empty() {
        ctx.detector.resume(&s.name).await;
        return outcome;
    }
    let desired = std::mem::take(&mut outcome.desired);
    ctx.detector
        .set_desired(&s.name, s.self_heal, desired)
        .await;
    // Confirm, once and in the background, the objects the watch cache cannot vouch for
    // yet; later syncs then skip every object unchanged on both sides.
    let detector = ctx.detector.clone();
    let name = s.name.clone();
    let span = tracing::info_span!("confirm", sync = %name);
    let confirm =
        tracing::Instrument::instrument(async move { detector.recheck_sync(&name).await }, span);
    let mut background = ctx.background.lock().expect("background lock");
    // Reap what has finished, so the set holds only what runs.
    while background.try_join_next().is_some() {}
    background.spawn(confirm);
    drop(background);
    outcome
}

/// The files of a sync's path; for a chart, or a kustomization there, the whole
/// repository, every file (bases and values files may be anywhere in it, generators and
/// templates read any file).
pub async fn read_files(
    source: &dyn Source,
    revision: &Revision,
    s: &config::Sync,
) -> crate::source::Result<Vec<crate::source::File>> {
    if s.helm.is_some() {
        return source.read_all(revision, "").await;
    }
    let files = source.read(revision, &s.path).await?;
    if crate::render::kustomize::kustomization(&files, &s.path).is_none() {
        return Ok(files);
    }
    source.read_all(revision, "").await
}

/// The sync's pools polled (OCI has no watch), their drift reported as the watches' is.
async fn report_infra_drift(
    ctx: &Context,
    s: &config::Sync,
    revision: &str,
    files: &[crate::source::File],
) {
    use crate::drift::Report;
    let drift = ctx.engine.infra_drift(s, revision, files).await;
    for (subject, diffs) in drift.detected {
        let fields = diffs
            .into_iter()
            .map(|d| crate::diff::FieldDrift::new(d.path, d.git, d.live))
            .collect();
        let report = Report::Detected {
            sync: s.name.clone(),
            subject,
            fields,
            manager: None,
            deleted: false,
        };
        ctx.detector.report_external(report).await;
    }
    for subject in drift.resolved {
        let sync = s.name.clone();
        let report = Report::Resolved { sync, subject };
        ctx.detector.report_external(report).await;
    }
}

async fn stored_revision(ctx: &Context, s: &config::Sync) -> Option<String> {
    ctx.engine
        .store()
        .load(&s.name)
        .await
        .ok()
        .and_then(|r| r.record.inventory.revision)
}

fn dry_run() -> sync::Options {
    sync::Options {
        dry_run: true,
        ..Default::default()
    }
}

/// Fetches a sync's source and syncs its current revision: what `sync --once` and `diff`
/// do, without a controller.
pub async fn sync_once(
    engine: &Engine,
    client: Option<&Client>,
    cfg: &Config,
    s: &config::Sync,
    opts: &sync::Options,
) -> Outcome {
    let Some(src) = cfg.sources.iter().find(|src| src.name == s.source) else {
        let why = format!("sync {}: no source named {}", s.name, s.source);
        return Outcome::new(&s.name, "").failed(Failure::Source(why));
    };
    let secrets = SecretResolver::new(client.cloned(), &cfg.namespace);
    let source = match super::sources::open(&secrets, cfg, src).await {
        Ok(o) => o,
        Err(f) => return Outcome::new(&s.name, "").failed(f),
    };
    let revision = match source.fetch().await {
        Ok(r) => r,
        Err(e) => return Outcome::new(&s.name, "").failed(Failure::Source(e.to_string())),
    };
    match read_files(&*source, &revision, s).await {
        Ok(files) => engine.sync_revision(s, &revision.id, &files, opts).await,
        Err(e) => Outcome::new(&s.name, &revision.id).failed(Failure::Source(e.to_string())),
    }
}
