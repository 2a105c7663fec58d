//! Prometheus metrics and the health endpoints: one [`Metrics`] registry with typed
//! families and small methods to feed them, and the router that serves `/metrics`
//! (OpenMetrics text), `/healthz` and `/readyz` on the metrics port.
//!
//! Sync metrics are derived from a sync's [`Outcome`](crate::sync::Outcome), never counted
//! on the side: the change set is the single source of what happened.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::cluster::RequestCounts;
use crate::core::change::Action;
use crate::sync::{Failure, Outcome};

/// The content type of an OpenMetrics text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("encoding metrics: {0}")]
    Encode(#[from] std::fmt::Error),
    #[error("serving metrics: {0}")]
    Serve(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        // Logged here in full; the scraper gets a fixed message.
        tracing::error!(error = %self, "metrics endpoint");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
    }
}

// --- label values ----------------------------------------------------------------

/// Writes a `&'static str` label value; every typed label below is one.
fn encode_str(s: &str, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
    EncodeLabelValue::encode(&s, encoder)
}

/// How a sync ended, as the `result` label of `gitops_agent_sync_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncResult {
    Succeeded,
    Failed,
    /// The prune guard held the revision back; nothing was applied.
    HeldBack,
}

impl SyncResult {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncResult::Succeeded => "succeeded",
            SyncResult::Failed => "failed",
            SyncResult::HeldBack => "held_back",
        }
    }

    pub fn of(outcome: &Outcome) -> Self {
        match &outcome.failure {
            None => SyncResult::Succeeded,
            Some(Failure::HeldBack { .. }) => SyncResult::HeldBack,
            Some(_) => SyncResult::Failed,
        }
    }
}

impl EncodeLabelValue for SyncResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encode_str(self.as_str(), encoder)
    }
}

/// What became of one webhook request: the receiver's own outcome is the label, so 413s,
/// 429s and replays stay distinguishable.
pub use crate::webhook::Outcome as WebhookResult;

impl EncodeLabelValue for WebhookResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encode_str(self.as_str(), encoder)
    }
}

/// What became of one alert sent to one sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertResult {
    Delivered,
    /// Tried and failed (after the sink's retries).
    Failed,
    /// Never tried: the sink's queue was full or it was rate limited.
    Dropped,
}

impl AlertResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertResult::Delivered => "delivered",
            AlertResult::Failed => "failed",
            AlertResult::Dropped => "dropped",
        }
    }
}

impl EncodeLabelValue for AlertResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encode_str(self.as_str(), encoder)
    }
}

/// `Action` lives in `change`; the orphan rule wants a local type to carry the encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ActionLabel(Action);

impl EncodeLabelValue for ActionLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encode_str(self.0.as_str(), encoder)
    }
}

/// Which count of a [`RequestCounts`] a series carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ApiKind {
    Total,
    Writes,
    DryRuns,
}

impl EncodeLabelValue for ApiKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encode_str(
            match self {
                ApiKind::Total => "total",
                ApiKind::Writes => "writes",
                ApiKind::DryRuns => "dry_runs",
            },
            encoder,
        )
    }
}

// --- label sets ------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SyncResultLabels {
    sync: String,
    result: SyncResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ObjectLabels {
    sync: String,
    action: ActionLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SyncLabels {
    sync: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RevisionLabels {
    sync: String,
    revision: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookLabels {
    provider: String,
    result: WebhookResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AlertLabels {
    sink: String,
    result: AlertResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RenderLabels {
    sync: String,
    renderer: String,
    /// `hit`: served from the render cache, no binary ran; `miss`: the binary ran.
    cache: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RendererLabels {
    sync: String,
    renderer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiLabels {
    kind: ApiKind,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A sync takes from well under a second (nothing changed) to minutes (waiting for health).
fn sync_buckets() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

/// A fetch is a network round trip, or a clone of a large repository.
fn fetch_buckets() -> Histogram {
    Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0])
}

// --- the registry ----------------------------------------------------------------

/// Every metric the agent exports. Share it as `Arc<Metrics>`: each method takes `&self`
/// and touches only atomics (plus a short lock when a series is first created).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sync_duration: HistogramFamily<SyncResultLabels>,
    objects: Family<ObjectLabels, Counter>,
    drifted: Family<SyncLabels, Gauge>,
    unconfirmed: Family<SyncLabels, Gauge>,
    unhealthy: Family<SyncLabels, Gauge>,
    webhook_requests: Family<WebhookLabels, Counter>,
    fetch_duration: HistogramFamily<SourceLabels>,
    fetch_failures: Family<SourceLabels, Counter>,
    alert_deliveries: Family<AlertLabels, Counter>,
    revision: Family<RevisionLabels, Gauge>,
    /// The revision each sync's series currently carries, so that a new one replaces it.
    revisions: Mutex<HashMap<String, String>>,
    api_requests: Family<ApiLabels, Counter>,
    renders: Family<RenderLabels, Counter>,
    render_duration: HistogramFamily<RendererLabels>,
    /// Read at every scrape, so the request counters are current even while the event
    /// loop sleeps (drift checks make requests between its passes).
    requests: std::sync::OnceLock<crate::cluster::RequestCounter>,
    /// Run at every scrape, to set gauges from state kept elsewhere.
    on_scrape: std::sync::OnceLock<ScrapeHook>,
    leader: Gauge,
    oci_identity_ok: Gauge,
    oci_token_expiry: Gauge,
}

struct ScrapeHook(Box<dyn Fn(&Metrics) + Send + Sync>);

impl std::fmt::Debug for ScrapeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScrapeHook")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            sync_duration: Family::new_with_constructor(sync_buckets),
            objects: Family::default(),
            drifted: Family::default(),
            unconfirmed: Family::default(),
            unhealthy: Family::default(),
            webhook_requests: Family::default(),
            fetch_duration: Family::new_with_constructor(fetch_buckets),
            fetch_failures: Family::default(),
            alert_deliveries: Family::default(),
            revision: Family::default(),
            revisions: Mutex::new(HashMap::new()),
            api_requests: Family::default(),
            renders: Family::default(),
            render_duration: Family::new_with_constructor(fetch_buckets),
            requests: std::sync::OnceLock::new(),
            on_scrape: std::sync::OnceLock::new(),
            leader: Gauge::default(),
            oci_identity_ok: Gauge::default(),
            oci_token_expiry: Gauge::default(),
        };
        // The registry appends the unit and the counter `_total` suffix itself.
        let r = &mut m.registry;
        r.register_with_unit(
            "gitops_agent_sync_duration",
            "Duration of one sync of one revision, by result",
            Unit::Seconds,
            m.sync_duration.clone(),
        );
        r.register(
            "gitops_agent_objects",
            "Objects handled by syncs, by the action taken",
            m.objects.clone(),
        );
        r.register(
            "gitops_agent_drifted_objects",
            "Objects whose live state differs from Git, as last detected",
            m.drifted.clone(),
        );
        r.register(
            "gitops_agent_unconfirmed_objects",
            "Objects of a sync the watch cache cannot vouch for yet: a resync reads each of them",
            m.unconfirmed.clone(),
        );
        r.register(
            "gitops_agent_unhealthy_objects",
            "Objects of a sync not known healthy from the watches (progressing, degraded, gone or not seen yet)",
            m.unhealthy.clone(),
        );
        r.register(
            "gitops_agent_webhook_requests",
            "Webhook requests received, by provider and result",
            m.webhook_requests.clone(),
        );
        r.register_with_unit(
            "gitops_agent_git_fetch_duration",
            "Duration of Git fetches, failed ones included",
            Unit::Seconds,
            m.fetch_duration.clone(),
        );
        r.register(
            "gitops_agent_git_fetch_failures",
            "Git fetches that failed",
            m.fetch_failures.clone(),
        );
        r.register(
            "gitops_agent_alert_deliveries",
            "Alerts handed to sinks, by result",
            m.alert_deliveries.clone(),
        );
        r.register(
            "gitops_agent_last_applied_revision",
            "The revision last applied successfully: 1 on exactly one series per sync",
            m.revision.clone(),
        );
        r.register(
            "gitops_agent_api_requests",
            "Kubernetes API requests made; writes and dry_runs are subsets of total",
            m.api_requests.clone(),
        );
        m.register_identity();
        m.register_renders();
        m
    }

    /// Who this replica is: leader or not, and its OCI identity's state.
    fn register_identity(&mut self) {
        let r = &mut self.registry;
        r.register(
            "gitops_agent_leader",
            "1 while this replica holds the leader lease",
            self.leader.clone(),
        );
        r.register(
            "gitops_agent_oci_identity_ok",
            "1 while the OCI identity has valid credentials and its last refresh worked",
            self.oci_identity_ok.clone(),
        );
        r.register_with_unit(
            "gitops_agent_oci_token_expiry",
            "When the OCI session token in use expires (Unix time; 0 for an API key)",
            prometheus_client::registry::Unit::Seconds,
            self.oci_token_expiry.clone(),
        );
    }

    fn register_renders(&mut self) {
        let r = &mut self.registry;
        r.register(
            "gitops_agent_renders",
            "Builds of a sync's kustomization or chart, by renderer and whether the render cache served it",
            self.renders.clone(),
        );
        r.register_with_unit(
            "gitops_agent_render_duration",
            "Time a renderer binary (kustomize, helm) took for one build",
            Unit::Seconds,
            self.render_duration.clone(),
        );
    }

    /// Records one finished sync: its duration by result, one count per object and
    /// action, and (when it succeeded) the revision now applied. Not for dry runs: they
    /// change nothing and would count objects twice.
    pub fn observe_sync(&self, sync: &str, outcome: &Outcome, duration: Duration) {
        let result = SyncResult::of(outcome);
        self.sync_duration
            .get_or_create(&SyncResultLabels {
                sync: sync.to_string(),
                result,
            })
            .observe(duration.as_secs_f64());
        for (action, n) in outcome.changes.counts() {
            self.objects
                .get_or_create(&ObjectLabels {
                    sync: sync.to_string(),
                    action: ActionLabel(action),
                })
                .inc_by(n as u64);
        }
        if let Some(built) = &outcome.render {
            let renderer = built.renderer.as_str().to_owned();
            let cache = if built.cached { "hit" } else { "miss" };
            self.renders
                .get_or_create(&RenderLabels {
                    sync: sync.to_string(),
                    renderer: renderer.clone(),
                    cache: cache.to_owned(),
                })
                .inc();
            if !built.cached {
                let labels = RendererLabels {
                    sync: sync.to_string(),
                    renderer,
                };
                let h = self.render_duration.get_or_create(&labels);
                h.observe(built.took.as_secs_f64());
            }
        }
        if result == SyncResult::Succeeded && !outcome.revision.is_empty() {
            self.set_applied_revision(sync, &outcome.revision);
        }
    }

    /// Makes `revision` the one series of `gitops_agent_last_applied_revision` for `sync`
    /// (also used at start-up, from the recorded status).
    pub fn set_applied_revision(&self, sync: &str, revision: &str) {
        // Held across remove and insert so that two callers cannot leave two series.
        let mut current = self
            .revisions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(previous) = current.get(sync) {
            if previous == revision {
                return;
            }
            self.revision.remove(&RevisionLabels {
                sync: sync.to_string(),
                revision: previous.clone(),
            });
        }
        self.revision
            .get_or_create(&RevisionLabels {
                sync: sync.to_string(),
                revision: revision.to_string(),
            })
            .set(1);
        current.insert(sync.to_string(), revision.to_string());
    }

    /// Removes every series of a sync that is no longer configured.
    pub fn forget_sync(&self, sync: &str) {
        let mut current = self
            .revisions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(previous) = current.remove(sync) {
            self.revision.remove(&RevisionLabels {
                sync: sync.to_string(),
                revision: previous,
            });
        }
        self.drifted.remove(&SyncLabels {
            sync: sync.to_string(),
        });
        self.unconfirmed.remove(&SyncLabels {
            sync: sync.to_string(),
        });
        self.unhealthy.remove(&SyncLabels {
            sync: sync.to_string(),
        });
        for result in [
            SyncResult::Succeeded,
            SyncResult::Failed,
            SyncResult::HeldBack,
        ] {
            self.sync_duration.remove(&SyncResultLabels {
                sync: sync.to_string(),
                result,
            });
        }
        for action in [
            Action::Created,
            Action::Configured,
            Action::Unchanged,
            Action::Deleted,
            Action::Skipped,
            Action::Failed,
        ] {
            self.objects.remove(&ObjectLabels {
                sync: sync.to_string(),
                action: ActionLabel(action),
            });
        }
        for renderer in ["kustomize", "helm"] {
            for cache in ["hit", "miss"] {
                self.renders.remove(&RenderLabels {
                    sync: sync.to_string(),
                    renderer: renderer.to_owned(),
                    cache: cache.to_owned(),
                });
            }
            self.render_duration.remove(&RendererLabels {
                sync: sync.to_string(),
                renderer: renderer.to_owned(),
            });
        }
    }

    /// The detector's gauges of one sync.
    pub fn set_watched(&self, sync: &str, counts: crate::drift::Counts) {
        let labels = SyncLabels {
            sync: sync.to_string(),
        };
        for (family, n) in [
            (&self.drifted, counts.drifted),
            (&self.unconfirmed, counts.unconfirmed),
            (&self.unhealthy, counts.unhealthy),
        ] {
            family
                .get_or_create(&labels)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn webhook_request(&self, provider: &str, result: WebhookResult) {
        self.webhook_requests
            .get_or_create(&WebhookLabels {
                provider: provider.to_string(),
                result,
            })
            .inc();
    }

    /// Records one fetch of a source: its duration, and a failure when `result` is an error.
    pub fn observe_git_fetch<T, E>(
        &self,
        source: &str,
        duration: Duration,
        result: &std::result::Result<T, E>,
    ) {
        let labels = SourceLabels {
            source: source.to_string(),
        };
        self.fetch_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        // Created on the first fetch so the failure series exists (at 0) for rate() and alerts.
        let failures = self.fetch_failures.get_or_create(&labels);
        if result.is_err() {
            failures.inc();
        }
    }

    pub fn alert_delivery(&self, sink: &str, result: AlertResult) {
        self.alert_deliveries
            .get_or_create(&AlertLabels {
                sink: sink.to_string(),
                result,
            })
            .inc();
    }

    /// Feeds the API request counters from a snapshot of the agent's
    /// [`RequestCounter`](crate::cluster::RequestCounter). Snapshots are cumulative: each
    /// series moves up to the snapshot's value and never down, whatever order they arrive in.
    fn record_api(&self, counts: RequestCounts) {
        for (kind, value) in [
            (ApiKind::Total, counts.total),
            (ApiKind::Writes, counts.writes),
            (ApiKind::DryRuns, counts.dry_runs),
        ] {
            self.api_requests
                .get_or_create(&ApiLabels { kind })
                .inner()
                .fetch_max(value, Ordering::Relaxed);
        }
    }

    /// Publishes this counter's values at every scrape from now on.
    pub fn track_requests(&self, counter: crate::cluster::RequestCounter) {
        let _ = self.requests.set(counter);
    }

    /// Runs `hook` before every scrape from now on (the first hook set stays).
    pub fn on_scrape(&self, hook: impl Fn(&Metrics) + Send + Sync + 'static) {
        let _ = self.on_scrape.set(ScrapeHook(Box::new(hook)));
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The OCI identity's state: whether it works, and when its token expires.
    pub fn set_oci_identity(&self, ok: bool, expires: Option<std::time::SystemTime>) {
        self.oci_identity_ok.set(i64::from(ok));
        let at = expires
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        self.oci_token_expiry.set(at);
    }

    /// The OpenMetrics text exposition, `# EOF` included.
    pub fn encode(&self) -> Result<String> {
        if let Some(counter) = self.requests.get() {
            self.record_api(counter.snapshot());
        }
        if let Some(hook) = self.on_scrape.get() {
            (hook.0)(self);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

// --- health ----------------------------------------------------------------------

/// Readiness, shared between whoever decides it and `/readyz`. Starts not ready.
#[derive(Debug, Clone)]
pub struct Health(Arc<Mutex<Option<String>>>);

impl Default for Health {
    fn default() -> Self {
        Health(Arc::new(Mutex::new(Some("starting".into()))))
    }
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_ready(&self, ready: bool) {
        *self.lock() = (!ready).then(|| "not ready".to_string());
    }

    /// Not ready, with the reason `/readyz` reports (short, and free of secrets).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.lock() = Some(reason.into());
    }

    pub fn is_ready(&self) -> bool {
        self.lock().is_none()
    }

    /// `None` when ready, otherwise why not.
    pub fn reason(&self) -> Option<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

// --- HTTP ------------------------------------------------------------------------

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Health,
}

/// `GET /metrics`, `GET /healthz` and `GET /readyz`, for the metrics port.
pub fn router(metrics: Arc<Metrics>, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn scrape(State(state): State<AppState>) -> Result<Response> {
    let body = state.metrics.encode()?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response())
}

/// The process is alive and serving: nothing more is checked, so a slow cluster never
/// gets the agent restarted.
async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.reason() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in
/// flight finish.
pub async fn serve<F>(listener: tokio::net::TcpListener, router: Router, shutdown: F) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ObjectKey;
    use crate::core::change::{Change, ChangeSet};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn cm(name: &str) -> ObjectKey {
        ObjectKey {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("shop".into()),
            name: name.into(),
        }
    }

    fn outcome(revision: &str, actions: &[Action], failure: Option<Failure>) -> Outcome {
        let mut changes = ChangeSet::default();
        for (i, a) in actions.iter().enumerate() {
            changes.push(Change::new(cm(&format!("cm{i}")), *a));
        }
        Outcome {
            sync: "shop".into(),
            revision: revision.into(),
            changes,
            health: vec![],
            health_wait: None,
            failure,
            desired: vec![],
            pools: None,
            render: None,
            findings: vec![],
        }
    }

    async fn get(app: Router, path: &str) -> (StatusCode, Option<String>, String) {
        let resp = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn scrape(m: &Arc<Metrics>) -> String {
        let (status, ctype, body) = get(router(m.clone(), Health::new()), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype.as_deref(), Some(CONTENT_TYPE));
        assert!(body.ends_with("# EOF\n"), "{body}");
        body
    }

    fn has_line(body: &str, line: &str) {
        assert!(
            body.lines().any(|l| l == line),
            "missing line {line:?} in:\n{body}"
        );
    }

    #[tokio::test]
    async fn exposition_has_every_family_with_its_labels() {
        let m = Arc::new(Metrics::new());
        let ok = outcome(
            "main@sha1:aaaa",
            &[
                Action::Created,
                Action::Configured,
                Action::Unchanged,
                Action::Unchanged,
                Action::Deleted,
                Action::Skipped,
            ],
            None,
        );
        m.observe_sync("shop", &ok, Duration::from_millis(1500));
        let failed = outcome(
            "main@sha1:bbbb",
            &[Action::Unchanged, Action::Failed],
            Some(Failure::Apply {
                count: 1,
                first: "ConfigMap/shop/cm1: forbidden".into(),
            }),
        );
        m.observe_sync("shop", &failed, Duration::from_millis(200));
        let held = outcome(
            "main@sha1:cccc",
            &[],
            Some(Failure::HeldBack {
                revision: "main@sha1:cccc".into(),
                reason: "would delete 90%".into(),
            }),
        );
        m.observe_sync("shop", &held, Duration::from_millis(50));
        m.set_watched(
            "shop",
            crate::drift::Counts {
                drifted: 2,
                unconfirmed: 3,
                unhealthy: 1,
            },
        );
        m.webhook_request("github", WebhookResult::Accepted);
        m.webhook_request("github", WebhookResult::Unauthorized);
        m.observe_git_fetch::<(), ()>("repo", Duration::from_millis(300), &Ok(()));
        m.observe_git_fetch::<(), &str>("repo", Duration::from_secs(3), &Err("timeout"));
        m.alert_delivery("slack", AlertResult::Delivered);
        m.alert_delivery("slack", AlertResult::Dropped);
        m.record_api(RequestCounts {
            total: 10,
            writes: 3,
            dry_runs: 4,
        });
        m.set_leader(true);

        let body = scrape(&m).await;
        has_line(&body, "# TYPE gitops_agent_sync_duration_seconds histogram");
        has_line(
            &body,
            r#"gitops_agent_sync_duration_seconds_count{sync="shop",result="succeeded"} 1"#,
        );
        has_line(
            &body,
            r#"gitops_agent_sync_duration_seconds_sum{sync="shop",result="succeeded"} 1.5"#,
        );
        // 1.5 s falls in the 2.5 s bucket, not the 1 s one.
        has_line(
            &body,
            r#"gitops_agent_sync_duration_seconds_bucket{le="1.0",sync="shop",result="succeeded"} 0"#,
        );
        has_line(
            &body,
            r#"gitops_agent_sync_duration_seconds_bucket{le="2.5",sync="shop",result="succeeded"} 1"#,
        );
        has_line(
            &body,
            r#"gitops_agent_sync_duration_seconds_count{sync="shop",result="failed"} 1"#,
        );
        has_line(
            &body,
            r#"gitops_agent_sync_duration_seconds_count{sync="shop",result="held_back"} 1"#,
        );
        has_line(&body, "# TYPE gitops_agent_objects counter");
        for (action, n) in [
            ("created", 1),
            ("configured", 1),
            ("unchanged", 3),
            ("deleted", 1),
            ("skipped", 1),
            ("failed", 1),
        ] {
            has_line(
                &body,
                &format!(r#"gitops_agent_objects_total{{sync="shop",action="{action}"}} {n}"#),
            );
        }
        has_line(&body, r#"gitops_agent_drifted_objects{sync="shop"} 2"#);
        has_line(&body, r#"gitops_agent_unconfirmed_objects{sync="shop"} 3"#);
        has_line(&body, r#"gitops_agent_unhealthy_objects{sync="shop"} 1"#);
        has_line(
            &body,
            r#"gitops_agent_webhook_requests_total{provider="github",result="accepted"} 1"#,
        );
        has_line(
            &body,
            r#"gitops_agent_webhook_requests_total{provider="github",result="unauthorized"} 1"#,
        );
        has_line(
            &body,
            r#"gitops_agent_git_fetch_duration_seconds_count{source="repo"} 2"#,
        );
        has_line(
            &body,
            r#"gitops_agent_git_fetch_failures_total{source="repo"} 1"#,
        );
        has_line(
            &body,
            r#"gitops_agent_alert_deliveries_total{sink="slack",result="delivered"} 1"#,
        );
        has_line(
            &body,
            r#"gitops_agent_alert_deliveries_total{sink="slack",result="dropped"} 1"#,
        );
        // Only the successful sync set the applied revision.
        has_line(
            &body,
            r#"gitops_agent_last_applied_revision{sync="shop",revision="main@sha1:aaaa"} 1"#,
        );
        assert!(!body.contains("sha1:bbbb") && !body.contains("sha1:cccc"));
        has_line(&body, r#"gitops_agent_api_requests_total{kind="total"} 10"#);
        has_line(&body, r#"gitops_agent_api_requests_total{kind="writes"} 3"#);
        has_line(
            &body,
            r#"gitops_agent_api_requests_total{kind="dry_runs"} 4"#,
        );
        has_line(&body, "gitops_agent_leader 1");
    }

    #[tokio::test]
    async fn applied_revision_keeps_one_series_per_sync() {
        let m = Arc::new(Metrics::new());
        m.observe_sync(
            "shop",
            &outcome("main@sha1:aaaa", &[], None),
            Duration::ZERO,
        );
        m.set_applied_revision("infra", "main@sha1:1111");
        m.observe_sync(
            "shop",
            &outcome("main@sha1:bbbb", &[], None),
            Duration::ZERO,
        );
        m.observe_sync(
            "shop",
            &outcome("main@sha1:bbbb", &[], None),
            Duration::ZERO,
        );

        let body = scrape(&m).await;
        let mut series: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("gitops_agent_last_applied_revision{"))
            .collect();
        series.sort();
        assert_eq!(
            series,
            [
                r#"gitops_agent_last_applied_revision{sync="infra",revision="main@sha1:1111"} 1"#,
                r#"gitops_agent_last_applied_revision{sync="shop",revision="main@sha1:bbbb"} 1"#,
            ]
        );
        assert!(!body.contains("sha1:aaaa"), "{body}");

        m.forget_sync("shop");
        let body = scrape(&m).await;
        assert!(!body.contains(r#"sync="shop""#), "{body}");
        assert!(body.contains(r#"revision="main@sha1:1111""#), "{body}");
    }

    #[test]
    fn builds_are_counted_by_renderer_and_cache_and_timed_when_a_binary_ran() {
        use crate::render::build::{Built, Renderer};
        let m = Metrics::new();
        let mut o = outcome("abc", &[], None);
        for cached in [false, true, true] {
            o.render = Some(Built {
                renderer: Renderer::Helm,
                cached,
                took: if cached {
                    Duration::ZERO
                } else {
                    Duration::from_millis(250)
                },
            });
            m.observe_sync("shop", &o, Duration::from_secs(1));
        }
        let text = m.encode().unwrap();
        for want in [
            "gitops_agent_renders_total{sync=\"shop\",renderer=\"helm\",cache=\"miss\"} 1",
            "gitops_agent_renders_total{sync=\"shop\",renderer=\"helm\",cache=\"hit\"} 2",
            "gitops_agent_render_duration_seconds_sum{sync=\"shop\",renderer=\"helm\"} 0.25",
            "gitops_agent_render_duration_seconds_count{sync=\"shop\",renderer=\"helm\"} 1",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        m.forget_sync("shop");
        assert!(!m.encode().unwrap().contains("sync=\"shop\",renderer"));
    }

    #[test]
    fn a_tracked_request_counter_is_current_at_every_scrape() {
        let m = Metrics::new();
        let counter = crate::cluster::RequestCounter::default();
        m.track_requests(counter.clone());
        let uri: http::Uri = "/api/v1/namespaces/a/configmaps/b?dryRun=All"
            .parse()
            .unwrap();
        counter.record(&http::Method::PATCH, &uri);
        has_line(
            &m.encode().unwrap(),
            r#"gitops_agent_api_requests_total{kind="dry_runs"} 1"#,
        );
        counter.record(&http::Method::GET, &uri);
        has_line(
            &m.encode().unwrap(),
            r#"gitops_agent_api_requests_total{kind="total"} 2"#,
        );
    }

    #[test]
    fn api_counters_follow_cumulative_snapshots_and_never_go_down() {
        let m = Metrics::new();
        let snap = |total, writes, dry_runs| RequestCounts {
            total,
            writes,
            dry_runs,
        };
        m.record_api(snap(5, 1, 2));
        m.record_api(snap(9, 1, 6));
        // A stale snapshot arriving late changes nothing.
        m.record_api(snap(7, 0, 3));
        let body = m.encode().unwrap();
        has_line(&body, r#"gitops_agent_api_requests_total{kind="total"} 9"#);
        has_line(&body, r#"gitops_agent_api_requests_total{kind="writes"} 1"#);
        has_line(
            &body,
            r#"gitops_agent_api_requests_total{kind="dry_runs"} 6"#,
        );
    }

    #[tokio::test]
    async fn readyz_flips_with_health_and_healthz_is_always_ok() {
        let health = Health::new();
        let app = router(Arc::new(Metrics::new()), health.clone());

        let (status, _, body) = get(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: starting\n");
        assert_eq!(get(app.clone(), "/healthz").await.0, StatusCode::OK);

        health.set_ready(true);
        let (status, _, body) = get(app.clone(), "/readyz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));

        health.set_not_ready("cluster unreachable");
        let (status, _, body) = get(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: cluster unreachable\n");
        assert_eq!(get(app.clone(), "/healthz").await.0, StatusCode::OK);

        health.set_ready(false);
        assert_eq!(get(app, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn serve_answers_on_a_socket_and_stops_on_shutdown() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            router(Arc::new(Metrics::new()), Health::new()),
            async {
                let _ = stopped.await;
            },
        ));

        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        conn.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with("ok\n"), "{resp}");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server stops on shutdown")
            .unwrap()
            .unwrap();
    }
}
