//! The long-running agent: each source is fetched on its interval, and each of its syncs
//! runs when the revision is new, when the last attempt failed, or when a periodic full
//! resync is due. A shutdown signal lets the sync in flight finish before exiting.

use std::collections::HashMap;
use std::time::Duration;

use kube::Client;
use tokio::time::Instant;

use crate::config::{self, Config};
use crate::source::GitSource;
use crate::sync::{self, Engine, Failure, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] crate::apply::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct Options {
    /// A sync whose revision has not changed is still re-applied this often, to repair
    /// anything changed behind Git's back.
    pub resync: Duration,
    /// Wait after a failed sync before trying again (doubles up to `max_backoff`).
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            resync: Duration::from_secs(600),
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Fetches a sync's source and syncs its latest revision.
pub async fn sync_one(
    engine: &mut Engine,
    client: Option<&Client>,
    cfg: &Config,
    s: &config::Sync,
    opts: &sync::Options,
) -> Outcome {
    let source = match cfg.sources.iter().find(|src| src.name == s.source) {
        Some(src) => sync::open_source(client, cfg, src).await,
        None => Err(Failure::Source(format!(
            "sync {}: no source named {}",
            s.name, s.source
        ))),
    };
    match source {
        Ok(src) => sync_from(engine, &src, s, opts).await,
        Err(f) => failed(s, f),
    }
}

async fn sync_from(
    engine: &mut Engine,
    src: &GitSource,
    s: &config::Sync,
    opts: &sync::Options,
) -> Outcome {
    let fetched = match src.fetch().await {
        Ok(f) => f,
        Err(e) => return failed(s, Failure::Source(e.to_string())),
    };
    let files = match src.read(fetched.revision.commit, &s.path).await {
        Ok(f) => f,
        Err(e) => return failed(s, Failure::Source(e.to_string())),
    };
    engine
        .sync_revision(s, &fetched.revision.to_string(), &files, opts)
        .await
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

/// Per-sync memory between passes.
#[derive(Default)]
struct State {
    last_revision: Option<String>,
    last_ok: bool,
    last_run: Option<Instant>,
    failures: u32,
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(client: Client, cfg: Config, opts: Options) -> Result<()> {
    let mut engine = Engine::new(client.clone(), &cfg.namespace).await?;
    let mut sources: HashMap<String, GitSource> = HashMap::new();
    let mut next_fetch: HashMap<String, Instant> = cfg
        .sources
        .iter()
        .map(|s| (s.name.clone(), Instant::now()))
        .collect();
    let mut states: HashMap<String, State> = HashMap::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());

    loop {
        let now = Instant::now();
        for src_cfg in &cfg.sources {
            if next_fetch.get(&src_cfg.name).is_some_and(|t| *t > now) {
                continue;
            }
            next_fetch.insert(src_cfg.name.clone(), now + src_cfg.interval);
            if !sources.contains_key(&src_cfg.name) {
                match sync::open_source(Some(&client), &cfg, src_cfg).await {
                    Ok(s) => {
                        sources.insert(src_cfg.name.clone(), s);
                    }
                    Err(e) => {
                        tracing::error!(source = %src_cfg.name, error = %e, "opening source");
                        continue;
                    }
                }
            }
            let src = &sources[&src_cfg.name];
            let fetched = match src.fetch().await {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(source = %src_cfg.name, error = %e, "fetch failed");
                    continue;
                }
            };
            let revision = fetched.revision.to_string();
            for s in cfg
                .syncs
                .iter()
                .filter(|s| s.source == src_cfg.name && !s.suspend)
            {
                let st = states.entry(s.name.clone()).or_default();
                let backoff = opts
                    .backoff
                    .saturating_mul(2u32.saturating_pow(st.failures.min(16)))
                    .min(opts.max_backoff);
                let due = st.last_revision.as_deref() != Some(revision.as_str())
                    || (!st.last_ok && st.last_run.is_none_or(|t| t.elapsed() >= backoff))
                    || st.last_run.is_none_or(|t| t.elapsed() >= opts.resync);
                if !due {
                    continue;
                }
                let files = match src.read(fetched.revision.commit, &s.path).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::error!(sync = %s.name, error = %e, "reading revision");
                        st.last_ok = false;
                        st.failures += 1;
                        st.last_run = Some(Instant::now());
                        continue;
                    }
                };
                // A shutdown signal does not interrupt a sync in flight: the apply and the
                // inventory it records stay consistent.
                let outcome = engine
                    .sync_revision(s, &revision, &files, &sync::Options::default())
                    .await;
                log_outcome(&outcome);
                st.last_revision = Some(revision.clone());
                st.last_ok = outcome.succeeded();
                st.failures = if st.last_ok { 0 } else { st.failures + 1 };
                st.last_run = Some(Instant::now());
            }
        }

        let next = next_fetch
            .values()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                return Ok(());
            }
        }
    }
}

fn log_outcome(o: &Outcome) {
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
