//! Waiting for applied objects to become healthy: polled with bounded concurrency, settled
//! objects no longer polled, a timeout that names each object still unhealthy and why.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::discovery::ApiResource;
use serde_json::Value;

use kube::api::DynamicObject;

use super::{Assessment, Error, Result, Status, assess, human};
use crate::core::ObjectKey;

/// How `wait` waits.
#[derive(Debug, Clone)]
pub struct WaitOptions {
    /// Give up, and report what is not healthy, after this long.
    pub timeout: Duration,
    /// Time between polls of objects that are not yet healthy.
    pub poll_interval: Duration,
    /// At most this many GETs in flight at once.
    pub concurrency: usize,
    /// Told after every poll that leaves objects unsettled (a person is waiting).
    pub progress: Option<OnProgress>,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
            concurrency: 16,
            progress: None,
        }
    }
}

/// Where a wait stands: what is still not settled and why, and the time left.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub total: usize,
    pub pending: Vec<(ObjectKey, Assessment)>,
    pub elapsed: Duration,
    pub left: Duration,
}

/// A callback for [`Progress`]; cheap to clone.
#[derive(Clone)]
pub struct OnProgress(pub std::sync::Arc<dyn Fn(&Progress) + Send + Sync>);

impl std::fmt::Debug for OnProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnProgress")
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
    targets: &[(ObjectKey, ApiResource)],
    opts: &WaitOptions,
) -> Result<Vec<(ObjectKey, Assessment)>> {
    let refs: Vec<ObjectKey> = targets.iter().map(|(r, _)| r.clone()).collect();
    poll(&refs, opts, |i| {
        let (r, ar) = &targets[i];
        let api: Api<DynamicObject> = match &r.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
            None => Api::all_with(client.clone(), ar),
        };
        async move {
            let obj = api.get_opt(&r.name).await?;
            Ok(obj.map(|o| crate::cluster::to_json(o, ar)))
        }
    })
    .await
}

fn is_permanent(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 401 || s.code == 403)
}

/// The wait loop, apart from how an object is fetched (so that its timing can be tested
/// with paused time).
pub(super) async fn poll<F, Fut>(
    targets: &[ObjectKey],
    opts: &WaitOptions,
    fetch: F,
) -> Result<Vec<(ObjectKey, Assessment)>>
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
        let unsettled = || -> Vec<(ObjectKey, Assessment)> {
            targets
                .iter()
                .zip(&current)
                .filter(|(_, a)| !a.status.is_settled())
                .map(|(r, a)| (r.clone(), a.clone()))
                .collect()
        };
        if let Some(p) = &opts.progress {
            (p.0)(&Progress {
                total: targets.len(),
                pending: unsettled(),
                elapsed: now - start,
                left: deadline.saturating_duration_since(now),
            });
        }
        if now >= deadline {
            return Err(Error::Timeout {
                timeout: opts.timeout,
                total: targets.len(),
                unhealthy: unsettled(),
            });
        }
        // The final poll happens at the deadline, not an interval past it.
        tokio::time::sleep_until((now + opts.poll_interval).min(deadline)).await;
    }
}
