//! The webhook receiver: turns signed push webhooks from GitHub, GitLab, Gitea/Forgejo,
//! Bitbucket Server and a generic sender into sync triggers for the sources they concern.
//! It verifies, matches, deduplicates, coalesces and rate-limits; fetching and syncing
//! stay on the normal path, in the consumer of the trigger channel.
//!
//! Status codes: 202 a push was handled (the body lists the sources triggered, coalesced
//! into a pending trigger, or rate-limited; `"result": "unmatched"` when none matched);
//! 200 ping, ignored event or duplicate delivery; 401 missing or wrong signature (empty
//! body); 404 provider without a secret (the endpoint is off); 408 body too slow; 413 body
//! too large; 415 wrong content type; 400 malformed body or headers; 422 payload without
//! a repository URL or a branch/tag ref; 429 every matching source is over its rate limit;
//! 503 the trigger queue is full or closed.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{self, GitRef};
mod oci;
mod payload;
mod providers;
mod replay;
mod verify;

pub use payload::{Push, parse_push};
use replay::{Deliveries, Limiter};
use verify::{Event, decode, delivery_header, event, has_credentials, read_body, verify};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("webhook provider not configured")]
    NotConfigured,
    #[error("missing or invalid signature")]
    Unauthorized,
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request body not received within {0:?}")]
    BodyTimeout(Duration),
    #[error("could not read request body")]
    BodyRead(#[source] axum::Error),
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("malformed JSON body")]
    Json(#[source] serde_json::Error),
    #[error("malformed form body: {0}")]
    Form(&'static str),
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("delivery id longer than {MAX_DELIVERY_ID} bytes")]
    DeliveryId,
    #[error("{0}")]
    Payload(&'static str),
    #[error("rate limit exceeded")]
    RateLimited { retry_after: Duration },
    #[error("trigger queue unavailable")]
    Unavailable,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotConfigured => StatusCode::NOT_FOUND,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::BodyRead(_)
            | Error::Json(_)
            | Error::Form(_)
            | Error::MissingHeader(_)
            | Error::DeliveryId => StatusCode::BAD_REQUEST,
            Error::Payload(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            Error::NotConfigured => Outcome::NotConfigured,
            Error::Unauthorized => Outcome::Unauthorized,
            Error::TooLarge { .. } => Outcome::PayloadTooLarge,
            Error::BodyTimeout(_) => Outcome::Timeout,
            Error::UnsupportedMediaType => Outcome::UnsupportedMediaType,
            Error::BodyRead(_)
            | Error::Json(_)
            | Error::Form(_)
            | Error::MissingHeader(_)
            | Error::DeliveryId => Outcome::BadRequest,
            Error::Payload(_) => Outcome::Unprocessable,
            Error::RateLimited { .. } => Outcome::RateLimited,
            Error::Unavailable => Outcome::Unavailable,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        match self {
            // Nothing for a prober to learn from: no reason, no hint which header was wrong.
            Error::NotConfigured | Error::Unauthorized => status.into_response(),
            Error::RateLimited { retry_after } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let mut resp = (status, "rate limit exceeded\n").into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                resp
            }
            // Every Display above is a fixed text about the request itself; sources
            // (serde or I/O details) are only logged.
            other => (status, format!("{other}\n")).into_response(),
        }
    }
}

/// The Git hosting service a webhook came from; one endpoint each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Github,
    Gitlab,
    Gitea,
    Bitbucket,
    Generic,
    /// OCI Notifications (not a Git host: it triggers by topic, see [`Push::topic`]).
    OciNotifications,
}

impl Provider {
    pub const ALL: [Provider; 5] = [
        Provider::Github,
        Provider::Gitlab,
        Provider::Gitea,
        Provider::Bitbucket,
        Provider::Generic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Bitbucket => "bitbucket",
            Provider::Generic => "generic",
            Provider::OciNotifications => "oci-notifications",
        }
    }

    /// The endpoint's path, `/hooks/<provider>`.
    pub fn path(self) -> &'static str {
        match self {
            Provider::Github => "/hooks/github",
            Provider::Gitlab => "/hooks/gitlab",
            Provider::Gitea => "/hooks/gitea",
            Provider::Bitbucket => "/hooks/bitbucket",
            Provider::Generic => "/hooks/generic",
            Provider::OciNotifications => "/hooks/oci-notifications",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of one request, for metrics (`webhook requests by provider and result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A push triggered (or joined a pending trigger of) at least one source.
    Accepted,
    /// A verified push that matched no source.
    Unmatched,
    /// A ping, or an event that is not a push.
    Ignored,
    Duplicate,
    RateLimited,
    Unauthorized,
    NotConfigured,
    UnsupportedMediaType,
    BadRequest,
    Unprocessable,
    PayloadTooLarge,
    Timeout,
    Unavailable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Unmatched => "unmatched",
            Outcome::Ignored => "ignored",
            Outcome::Duplicate => "duplicate",
            Outcome::RateLimited => "rate_limited",
            Outcome::Unauthorized => "unauthorized",
            Outcome::NotConfigured => "not_configured",
            Outcome::UnsupportedMediaType => "unsupported_media_type",
            Outcome::BadRequest => "bad_request",
            Outcome::Unprocessable => "unprocessable",
            Outcome::PayloadTooLarge => "payload_too_large",
            Outcome::Timeout => "timeout",
            Outcome::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shared secrets per provider; `None` (or empty) turns that endpoint off.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    pub github: Option<Vec<u8>>,
    pub gitlab: Option<Vec<u8>>,
    pub gitea: Option<Vec<u8>>,
    pub bitbucket: Option<Vec<u8>>,
    pub generic: Option<Vec<u8>>,
    /// The HTTP Basic password of the OCI Notifications subscription URL.
    pub oci_notifications: Option<Vec<u8>>,
}

impl Secrets {
    /// The provider's secret; an empty one counts as none, since an empty HMAC key or
    /// token is no secret at all.
    pub fn get(&self, provider: Provider) -> Option<&[u8]> {
        let s = match provider {
            Provider::Github => &self.github,
            Provider::Gitlab => &self.gitlab,
            Provider::Gitea => &self.gitea,
            Provider::Bitbucket => &self.bitbucket,
            Provider::Generic => &self.generic,
            Provider::OciNotifications => &self.oci_notifications,
        };
        s.as_deref().filter(|s| !s.is_empty())
    }

    /// The secret of the provider named `name` (its file name), set to `value`.
    pub fn set(&mut self, name: &str, value: Vec<u8>) {
        let slot = match name {
            "github" => &mut self.github,
            "gitlab" => &mut self.gitlab,
            "gitea" => &mut self.gitea,
            "bitbucket" => &mut self.bitbucket,
            "generic" => &mut self.generic,
            "oci-notifications" => &mut self.oci_notifications,
            _ => return,
        };
        *slot = Some(value);
    }

    /// These secrets, with `over`'s where it has one.
    pub fn overlay(&self, over: &Secrets) -> Secrets {
        let pick = |a: &Option<Vec<u8>>, b: &Option<Vec<u8>>| b.clone().or_else(|| a.clone());
        Secrets {
            github: pick(&self.github, &over.github),
            gitlab: pick(&self.gitlab, &over.gitlab),
            gitea: pick(&self.gitea, &over.gitea),
            bitbucket: pick(&self.bitbucket, &over.bitbucket),
            generic: pick(&self.generic, &over.generic),
            oci_notifications: pick(&self.oci_notifications, &over.oci_notifications),
        }
    }

    /// Reads the secrets from a mounted Secret directory: one file per provider (none for
    /// an empty path).
    pub fn read(dir: &std::path::Path) -> Self {
        if dir.as_os_str().is_empty() {
            return Secrets::default();
        }
        let read =
            |name: &str| crate::secrets::read_file(&dir.join(name)).map(|s| s.expose().to_vec());
        Secrets {
            github: read("github"),
            gitlab: read("gitlab"),
            gitea: read("gitea"),
            bitbucket: read("bitbucket"),
            generic: read("generic"),
            oci_notifications: read("oci-notifications"),
        }
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Secrets");
        for p in Provider::ALL
            .into_iter()
            .chain([Provider::OciNotifications])
        {
            d.field(
                p.as_str(),
                &if self.get(p).is_some() {
                    "<set>"
                } else {
                    "<unset>"
                },
            );
        }
        d.finish()
    }
}

/// Which pushes concern a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchRef {
    Branch(String),
    Tag(String),
    /// Any tag: the source follows a semver range, which the fetch resolves.
    AnyTag,
    /// Pinned to a commit: no push changes what it deploys, so it is never triggered.
    Commit,
}

/// A source the receiver may trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMatch {
    pub name: String,
    pub url: String,
    pub reference: MatchRef,
    /// OCI Notifications topics that trigger it.
    pub oci_topics: Vec<String>,
}

impl SourceMatch {
    pub fn from_source(s: &config::Source) -> Self {
        SourceMatch {
            name: s.name.clone(),
            url: s.url.clone(),
            reference: match &s.reference {
                GitRef::Branch(b) => MatchRef::Branch(b.clone()),
                GitRef::Tag(t) => MatchRef::Tag(t.clone()),
                GitRef::Semver(_) => MatchRef::AnyTag,
                GitRef::Commit(_) => MatchRef::Commit,
            },
            oci_topics: s.oci_topics.clone(),
        }
    }

    /// Whether the push is to this source's repository and to the ref it follows.
    pub fn matches(&self, push: &Push) -> bool {
        if let Some(topic) = &push.topic {
            return self.oci_topics.iter().any(|t| t == topic);
        }
        let ref_matches = push.refs.iter().any(|r| match &self.reference {
            MatchRef::Branch(b) => r.strip_prefix("refs/heads/") == Some(b.as_str()),
            MatchRef::Tag(t) => r.strip_prefix("refs/tags/") == Some(t.as_str()),
            MatchRef::AnyTag => r.starts_with("refs/tags/"),
            MatchRef::Commit => false,
        });
        if !ref_matches {
            return false;
        }
        let Some(mine) = crate::core::url::normalize(&self.url) else {
            return false;
        };
        push.urls
            .iter()
            .any(|u| crate::core::url::normalize(u).as_deref() == Some(mine.as_str()))
    }
}

/// The sources of a configuration, as the receiver matches them.
pub fn sources_from_config(cfg: &config::Config) -> Vec<SourceMatch> {
    // Local-directory sources have no repository to match.
    cfg.sources
        .iter()
        .filter(|s| s.directory.is_none())
        .map(SourceMatch::from_source)
        .collect()
}

/// A request to fetch a source now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub source: String,
    pub provider: Provider,
    pub delivery: Option<String>,
}

/// Sources with a trigger sent but not yet taken. While a source is pending, further
/// pushes for it join that trigger instead of queueing another fetch; the consumer calls
/// [`Pending::take`] when it starts the fetch, so a push that arrives during the fetch
/// triggers one more (nothing is lost).
#[derive(Debug, Clone, Default)]
pub struct Pending(Arc<Mutex<HashSet<String>>>);

impl Pending {
    pub fn new() -> Self {
        Self::default()
    }

    /// Clears the source's pending flag; true if it was set.
    pub fn take(&self, source: &str) -> bool {
        lock(&self.0).remove(source)
    }

    pub fn is_pending(&self, source: &str) -> bool {
        lock(&self.0).contains(source)
    }
}

/// A per-source token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Triggers allowed at once.
    pub burst: u32,
    /// One more trigger is allowed after each such period.
    pub every: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            burst: 5,
            every: Duration::from_secs(1),
        }
    }
}

/// Receives every request's outcome (for metrics); must be quick and must not panic.
pub type OutcomeHook = Arc<dyn Fn(Provider, Outcome) + Send + Sync>;

#[derive(Clone)]
pub struct Options {
    /// Larger bodies are refused with 413.
    pub max_body: usize,
    /// The whole body must arrive within this, or 408.
    pub body_timeout: Duration,
    /// A delivery id seen within this window is a duplicate.
    pub replay_window: Duration,
    /// At most this many delivery ids are remembered; the oldest go first.
    pub replay_capacity: usize,
    /// `None` turns rate limiting off.
    pub rate_limit: Option<RateLimit>,
    pub on_outcome: Option<OutcomeHook>,
    /// How OCI Notifications subscriptions are confirmed; `None` confirms none.
    pub oci_confirm: Option<OciConfirm>,
}

/// The client that GETs an OCI Notifications confirmation URL, and where it may go: HTTPS
/// to `*.oraclecloud.com`, or one of `allowed` origins (`scheme://host:port`, a private or
/// test endpoint). Anything else is refused: the URL comes from the request.
#[derive(Clone)]
pub struct OciConfirm {
    pub client: reqwest::Client,
    pub allowed: Vec<String>,
}

impl OciConfirm {
    fn permits(&self, url: &reqwest::Url) -> bool {
        let origin = url.origin().ascii_serialization();
        let oci = url.scheme() == "https"
            && url
                .host_str()
                .is_some_and(|h| h.ends_with(".oraclecloud.com"));
        oci || self
            .allowed
            .iter()
            .any(|a| a.trim_end_matches('/') == origin)
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_body: 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            replay_window: Duration::from_secs(600),
            replay_capacity: 10_000,
            rate_limit: Some(RateLimit::default()),
            on_outcome: None,
            oci_confirm: None,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("max_body", &self.max_body)
            .field("body_timeout", &self.body_timeout)
            .field("replay_window", &self.replay_window)
            .field("replay_capacity", &self.replay_capacity)
            .field("rate_limit", &self.rate_limit)
            .field("on_outcome", &self.on_outcome.as_ref().map(|_| "<fn>"))
            .field(
                "oci_confirm",
                &self.oci_confirm.as_ref().map(|c| &c.allowed),
            )
            .finish()
    }
}

/// The receiver's state, shared by every request.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    sources: watch::Receiver<Vec<SourceMatch>>,
    secrets: watch::Receiver<Secrets>,
    triggers: mpsc::Sender<Trigger>,
    pending: Pending,
    deliveries: Mutex<Deliveries>,
    limiter: Mutex<Limiter>,
    opts: Options,
}

impl Webhooks {
    pub fn new(
        sources: watch::Receiver<Vec<SourceMatch>>,
        secrets: watch::Receiver<Secrets>,
        triggers: mpsc::Sender<Trigger>,
        pending: Pending,
        opts: Options,
    ) -> Self {
        Webhooks {
            inner: Arc::new(Inner {
                sources,
                secrets,
                triggers,
                pending,
                deliveries: Mutex::new(Deliveries::new(opts.replay_window, opts.replay_capacity)),
                limiter: Mutex::new(Limiter::new(opts.rate_limit)),
                opts,
            }),
        }
    }

    async fn handle(self, provider: Provider, req: Request) -> Response {
        // Logged as sent, but only if short: the header is the sender's to fill.
        let delivery = delivery_header(provider, req.headers())
            .filter(|d| d.len() <= MAX_DELIVERY_ID)
            .map(str::to_owned);
        let result = self.process(provider, req).await;
        let outcome = match &result {
            Ok(a) => a.outcome(),
            Err(e) => e.outcome(),
        };
        if let Some(hook) = &self.inner.opts.on_outcome {
            hook(provider, outcome);
        }
        match &result {
            Ok(Accepted::Pushed(r)) => tracing::info!(
                %provider, %outcome, delivery = ?delivery, triggered = ?r.triggered,
                coalesced = ?r.coalesced, rate_limited = ?r.rate_limited, "webhook"
            ),
            Ok(_) => tracing::debug!(%provider, %outcome, delivery = ?delivery, "webhook"),
            // The error's source (serde position, I/O error) is about the request, never a secret.
            Err(e) => tracing::warn!(
                %provider, %outcome, delivery = ?delivery, error = %e,
                cause = ?std::error::Error::source(e).map(|s| s.to_string()), "webhook refused"
            ),
        }
        match result {
            Ok(a) => a.into_response(),
            Err(e) => e.into_response(),
        }
    }

    async fn process(&self, provider: Provider, req: Request) -> Result<Accepted> {
        // Copied out so that no borrow of the watch is held across an await.
        let secret = self
            .inner
            .secrets
            .borrow()
            .get(provider)
            .map(<[u8]>::to_vec)
            .ok_or(Error::NotConfigured)?;
        let (parts, body) = req.into_parts();
        let headers = &parts.headers;
        let opts = &self.inner.opts;
        // Unsigned requests are refused before their body costs anything.
        if !has_credentials(provider, headers) {
            return Err(Error::Unauthorized);
        }
        let body = read_body(body, headers, opts.max_body, opts.body_timeout).await?;
        // Authenticity first: nothing below looks at an unverified byte.
        verify(provider, headers, &secret, &body)?;
        drop(secret);
        if provider == Provider::OciNotifications {
            return self.oci_notification(headers).await;
        }
        match event(provider, headers)? {
            Event::Push => {}
            Event::Ping | Event::Other => return Ok(Accepted::Ignored),
        }
        let delivery = delivery_header(provider, headers);
        if delivery.is_some_and(|d| d.len() > MAX_DELIVERY_ID) {
            return Err(Error::DeliveryId);
        }
        let payload = decode(provider, headers, &body)?;
        let push = parse_push(provider, &payload)?;
        self.dispatch(provider, delivery.map(str::to_owned), &push)
    }

    fn dispatch(
        &self,
        provider: Provider,
        delivery: Option<String>,
        push: &Push,
    ) -> Result<Accepted> {
        let now = Instant::now();
        let key = delivery.as_ref().map(|d| format!("{provider}:{d}"));
        if let Some(k) = &key
            && lock(&self.inner.deliveries).seen(k, now)
        {
            return Ok(Accepted::Duplicate);
        }
        let matched: Vec<String> = self
            .inner
            .sources
            .borrow()
            .iter()
            .filter(|s| s.matches(push))
            .map(|s| s.name.clone())
            .collect();
        let mut report = Report::default();
        let mut retry_after = Duration::ZERO;
        {
            // Lock order: pending, then limiter; nowhere else takes both.
            let mut pending = lock(&self.inner.pending.0);
            let mut limiter = lock(&self.inner.limiter);
            limiter.forget_removed(&self.inner.sources.borrow());
            for name in matched {
                // A pending trigger already covers this push, and costs no token: the rate
                // limit bounds fetches, not requests.
                if pending.contains(&name) {
                    report.coalesced.push(name);
                    continue;
                }
                if let Err(wait) = limiter.take(&name) {
                    retry_after = retry_after.max(wait);
                    report.rate_limited.push(name);
                    continue;
                }
                let trigger = Trigger {
                    source: name.clone(),
                    provider,
                    delivery: delivery.clone(),
                };
                match self.inner.triggers.try_send(trigger) {
                    Ok(()) => {
                        pending.insert(name.clone());
                        report.triggered.push(name);
                    }
                    Err(_) => report.failed.push(name),
                }
            }
        }
        if report.triggered.is_empty() && report.coalesced.is_empty() {
            // Nothing was done: let the sender's retry (same delivery id) through.
            let refusal = if !report.failed.is_empty() {
                Some(Error::Unavailable)
            } else if !report.rate_limited.is_empty() {
                Some(Error::RateLimited { retry_after })
            } else {
                None
            };
            if let Some(e) = refusal {
                if let Some(k) = &key {
                    lock(&self.inner.deliveries).forget(k);
                }
                return Err(e);
            }
        }
        Ok(Accepted::Pushed(report))
    }
}

/// Longest delivery id remembered; real ones are UUIDs or short hex.
const MAX_DELIVERY_ID: usize = 256;

/// What a push did, per source; returned to the sender.
#[derive(Debug, Default)]
struct Report {
    triggered: Vec<String>,
    coalesced: Vec<String>,
    rate_limited: Vec<String>,
    failed: Vec<String>,
}

enum Accepted {
    Ignored,
    Duplicate,
    Pushed(Report),
}

impl Accepted {
    fn outcome(&self) -> Outcome {
        match self {
            Accepted::Ignored => Outcome::Ignored,
            Accepted::Duplicate => Outcome::Duplicate,
            Accepted::Pushed(r) if r.triggered.is_empty() && r.coalesced.is_empty() => {
                Outcome::Unmatched
            }
            Accepted::Pushed(_) => Outcome::Accepted,
        }
    }
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let outcome = self.outcome();
        match self {
            Accepted::Ignored | Accepted::Duplicate => {
                (StatusCode::OK, Json(json!({ "result": outcome.as_str() }))).into_response()
            }
            Accepted::Pushed(r) => (
                StatusCode::ACCEPTED,
                Json(json!({
                    "result": outcome.as_str(),
                    "triggered": r.triggered,
                    "coalesced": r.coalesced,
                    "rateLimited": r.rate_limited,
                    "failed": r.failed,
                })),
            )
                .into_response(),
        }
    }
}

/// The router: `POST /hooks/{github,gitlab,gitea,bitbucket,generic,oci-notifications}`.
pub fn app(hooks: Webhooks) -> Router {
    let mut router = Router::new();
    for provider in Provider::ALL
        .into_iter()
        .chain([Provider::OciNotifications])
    {
        router = router.route(
            provider.path(),
            post(move |State(w): State<Webhooks>, req: Request| w.handle(provider, req)),
        );
    }
    router.with_state(hooks)
}

/// A poisoned lock only means another request panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::replay::{Deliveries, Limiter};
    use super::*;
    use crate::http::server::{Options as ServeOptions, serve_with};
    use crate::http::signature::signature;
    use axum::body::Body;
    use axum::http::HeaderMap;
    use axum::http::Request as HttpRequest;
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tower::ServiceExt;

    const SECRET: &[u8] = b"s3cret-for-tests";

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/testdata/webhook/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn source(name: &str, url: &str, reference: MatchRef) -> SourceMatch {
        SourceMatch {
            name: name.into(),
            url: url.into(),
            reference,
            oci_topics: Vec::new(),
        }
    }

    const TOPIC: &str = "ocid1.onstopic.oc1.iad.deploys";

    fn sources() -> Vec<SourceMatch> {
        use MatchRef::*;
        vec![
            SourceMatch {
                oci_topics: vec![TOPIC.into()],
                ..source(
                    "ons-apps",
                    "https://devops.example/only-by-topic",
                    Branch("main".into()),
                )
            },
            source(
                "gh-main",
                "https://github.com/acme/deploy-config",
                Branch("main".into()),
            ),
            source(
                "gh-dev",
                "git@github.com:Acme/deploy-config.git",
                Branch("dev".into()),
            ),
            source(
                "gh-pinned",
                "https://github.com/Acme/deploy-config.git",
                Commit,
            ),
            source(
                "gh-other",
                "https://github.com/Acme/other.git",
                Branch("main".into()),
            ),
            source(
                "gl-main",
                "ssh://git@gitlab.example.com/mike/diaspora.git",
                Branch("main".into()),
            ),
            source(
                "gitea-develop",
                "https://git.example.org/platform/manifests",
                Branch("develop".into()),
            ),
            source(
                "gitea-main",
                "https://git.example.org/platform/manifests",
                Branch("main".into()),
            ),
            source(
                "bb-semver",
                "https://bitbucket.example.com/scm/proj/repository.git",
                AnyTag,
            ),
            source(
                "bb-old-tag",
                "ssh://git@bitbucket.example.com:7999/proj/repository.git",
                Tag("v1.3.0".into()),
            ),
            source(
                "bb-tag",
                "ssh://git@bitbucket.example.com:7999/PROJ/repository",
                Tag("v1.4.0".into()),
            ),
            source(
                "generic-release",
                "https://git.internal.example/team/apps",
                Branch("release".into()),
            ),
        ]
    }

    fn all_secrets() -> Secrets {
        Secrets {
            github: Some(SECRET.to_vec()),
            gitlab: Some(SECRET.to_vec()),
            gitea: Some(SECRET.to_vec()),
            bitbucket: Some(SECRET.to_vec()),
            generic: Some(SECRET.to_vec()),
            oci_notifications: Some(SECRET.to_vec()),
        }
    }

    struct Harness {
        app: Router,
        rx: mpsc::Receiver<Trigger>,
        pending: Pending,
        sources: watch::Sender<Vec<SourceMatch>>,
        secrets: watch::Sender<Secrets>,
        outcomes: Arc<Mutex<Vec<(Provider, Outcome)>>>,
    }

    impl Harness {
        fn new(opts: Options) -> Self {
            Self::with_capacity(opts, 64)
        }

        fn with_capacity(mut opts: Options, capacity: usize) -> Self {
            let (sources, sources_rx) = watch::channel(sources());
            let (secrets, secrets_rx) = watch::channel(all_secrets());
            let (tx, rx) = mpsc::channel(capacity);
            let pending = Pending::new();
            let outcomes: Arc<Mutex<Vec<(Provider, Outcome)>>> = Arc::default();
            let seen = outcomes.clone();
            opts.on_outcome = Some(Arc::new(move |p, o| lock(&seen).push((p, o))));
            let hooks = Webhooks::new(sources_rx, secrets_rx, tx, pending.clone(), opts);
            Harness {
                app: app(hooks),
                rx,
                pending,
                sources,
                secrets,
                outcomes,
            }
        }

        async fn send(&self, req: HttpRequest<Body>) -> (StatusCode, HeaderMap, String) {
            let resp = self.app.clone().oneshot(req).await.expect("infallible");
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .expect("body");
            (status, headers, String::from_utf8_lossy(&body).into_owned())
        }

        /// Names of the triggers sent so far, in order.
        fn triggered(&mut self) -> Vec<String> {
            let mut out = Vec::new();
            while let Ok(t) = self.rx.try_recv() {
                out.push(t.source);
            }
            out
        }

        fn last_outcome(&self) -> Option<(Provider, Outcome)> {
            lock(&self.outcomes).last().copied()
        }
    }

    /// A request as the provider would sign it, with `secret`.
    fn signed(
        provider: Provider,
        secret: &[u8],
        body: &[u8],
        delivery: Option<&str>,
    ) -> HttpRequest<Body> {
        let mut b = HttpRequest::post(provider.path()).header("content-type", "application/json");
        let sig = signature(secret, body);
        b = match provider {
            Provider::Github => b
                .header("x-hub-signature-256", &sig)
                .header("x-github-event", "push"),
            Provider::Gitlab => b
                .header("x-gitlab-token", secret)
                .header("x-gitlab-event", "Push Hook"),
            Provider::Gitea => b
                .header("x-gitea-signature", sig.trim_start_matches("sha256="))
                .header("x-gitea-event", "push"),
            Provider::Bitbucket => b
                .header("x-hub-signature", &sig)
                .header("x-event-key", "repo:refs_changed"),
            Provider::Generic => b.header("x-signature", &sig),
            Provider::OciNotifications => b.header("authorization", basic(secret)),
        };
        if let Some(d) = delivery {
            let name = match provider {
                Provider::Github => "x-github-delivery",
                Provider::Gitlab => "x-gitlab-event-uuid",
                Provider::Gitea => "x-gitea-delivery",
                Provider::Bitbucket => "x-request-id",
                Provider::Generic => "x-delivery-id",
                Provider::OciNotifications => "x-oci-ns-messageid",
            };
            b = b.header(name, d);
        }
        b.body(Body::from(body.to_vec())).expect("request")
    }

    fn basic(password: &[u8]) -> String {
        use base64::Engine as _;
        let mut creds = b"ons:".to_vec();
        creds.extend_from_slice(password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds)
        )
    }

    /// An OCI Notifications delivery for `topic`, as a subscription with `password` sends it.
    fn ons(password: &[u8], topic: &str, extra: &[(&str, &str)]) -> HttpRequest<Body> {
        let mut b = HttpRequest::post(Provider::OciNotifications.path())
            .header("content-type", "application/json")
            .header("authorization", basic(password))
            .header("x-oci-ns-topicocid", topic);
        for (n, v) in extra {
            b = b.header(*n, *v);
        }
        b.body(Body::from(r#"{"anything": "is ignored"}"#))
            .expect("request")
    }

    #[tokio::test]
    async fn oci_notifications_confirm_followed_topics_and_trigger_their_sources() {
        // Where confirmations go: counts its GETs.
        let gets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = gets.clone();
        let confirm = axum::Router::new().route(
            "/confirm",
            axum::routing::get(move || async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                "confirmed"
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, confirm).await.unwrap() });
        let opts = Options {
            oci_confirm: Some(OciConfirm {
                client: crate::http::client::build(&Default::default()).unwrap(),
                allowed: vec![origin.clone()],
            }),
            ..Options::default()
        };
        let mut h = Harness::new(opts);
        let count = || gets.load(std::sync::atomic::Ordering::SeqCst);
        let confirmation = format!("{origin}/confirm?token=t");

        // Confirmed for a topic a source follows, with a GET of the URL; nothing is fetched.
        let req = ons(
            SECRET,
            TOPIC,
            &[("x-oci-ns-confirmationurl", &confirmation)],
        );
        assert_eq!(h.send(req).await.0, StatusCode::OK);
        assert_eq!((count(), h.triggered().len()), (1, 0));
        // Not for a topic nobody follows, nor to a URL elsewhere, nor without the password.
        let req = ons(
            SECRET,
            "ocid1.onstopic.oc1..other",
            &[("x-oci-ns-confirmationurl", &confirmation)],
        );
        assert_eq!(h.send(req).await.0, StatusCode::OK);
        let elsewhere = [("x-oci-ns-confirmationurl", "http://127.0.0.2:9/confirm")];
        assert_eq!(
            h.send(ons(SECRET, TOPIC, &elsewhere)).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let req = ons(
            b"wrong",
            TOPIC,
            &[("x-oci-ns-confirmationurl", &confirmation)],
        );
        assert_eq!(h.send(req).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(count(), 1);

        // A message is a hint: the topic's sources are fetched; a redelivery is a duplicate.
        let message = [("x-oci-ns-messageid", "m-1")];
        let (status, _, body) = h.send(ons(SECRET, TOPIC, &message)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(h.triggered(), ["ons-apps"]);
        assert_eq!(
            h.last_outcome(),
            Some((Provider::OciNotifications, Outcome::Accepted))
        );
        h.pending.take("ons-apps");
        assert_eq!(h.send(ons(SECRET, TOPIC, &message)).await.0, StatusCode::OK);
        assert!(h.triggered().is_empty());
        let req = ons(
            SECRET,
            "ocid1.onstopic.oc1..other",
            &[("x-oci-ns-messageid", "m-2")],
        );
        assert_eq!(h.send(req).await.0, StatusCode::OK);
        assert!(
            h.triggered().is_empty(),
            "a topic nobody follows triggers nothing"
        );
        let missing = HttpRequest::post(Provider::OciNotifications.path())
            .header("authorization", basic(SECRET))
            .body(Body::empty())
            .unwrap();
        assert_eq!(h.send(missing).await.0, StatusCode::BAD_REQUEST);
    }

    fn generic_body(url: &str, reference: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({ "repository": url, "ref": reference })).expect("json")
    }

    // --- each provider, recorded-shape payloads ---

    async fn provider_case(provider: Provider, fixture_name: &str, expected: &[&str]) {
        let mut h = Harness::new(Options::default());
        let (status, _, body) = h
            .send(signed(
                provider,
                SECRET,
                &fixture(fixture_name),
                Some("d-1"),
            ))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{provider}: {body}");
        let mut got = h.triggered();
        got.sort();
        assert_eq!(got, expected, "{provider}");
        let reply: Value = serde_json::from_str(&body).expect("json reply");
        assert_eq!(reply["result"], "accepted");
        assert_eq!(
            reply["triggered"].as_array().map(Vec::len),
            Some(expected.len())
        );
        assert_eq!(h.last_outcome(), Some((provider, Outcome::Accepted)));
    }

    #[tokio::test]
    async fn github_push_triggers_the_matching_branch_source_only() {
        // gh-dev (other branch), gh-pinned (commit) and gh-other (other repo) stay quiet.
        provider_case(Provider::Github, "github-push.json", &["gh-main"]).await;
    }

    #[tokio::test]
    async fn gitlab_push_hook_triggers_the_matching_source() {
        provider_case(Provider::Gitlab, "gitlab-push.json", &["gl-main"]).await;
    }

    #[tokio::test]
    async fn gitea_push_triggers_the_matching_branch_only() {
        provider_case(Provider::Gitea, "gitea-push.json", &["gitea-develop"]).await;
    }

    #[tokio::test]
    async fn bitbucket_refs_changed_triggers_semver_and_exact_tag_sources() {
        provider_case(
            Provider::Bitbucket,
            "bitbucket-refs-changed.json",
            &["bb-semver", "bb-tag"],
        )
        .await;
    }

    #[tokio::test]
    async fn generic_push_triggers_the_matching_source() {
        provider_case(Provider::Generic, "generic.json", &["generic-release"]).await;
    }

    #[tokio::test]
    async fn trigger_carries_provider_and_delivery() {
        let mut h = Harness::new(Options::default());
        h.send(signed(
            Provider::Github,
            SECRET,
            &fixture("github-push.json"),
            Some("72d3162e"),
        ))
        .await;
        let t = h.rx.try_recv().expect("trigger");
        assert_eq!(
            t,
            Trigger {
                source: "gh-main".into(),
                provider: Provider::Github,
                delivery: Some("72d3162e".into()),
            }
        );
        assert!(h.pending.is_pending("gh-main"));
    }

    #[tokio::test]
    async fn forgejo_signature_header_and_gitlab_tag_push_are_accepted() {
        let mut h = Harness::new(Options::default());
        let body = fixture("gitea-push.json");
        let req = HttpRequest::post("/hooks/gitea")
            .header("content-type", "application/json")
            .header(
                "x-forgejo-signature",
                signature(SECRET, &body).trim_start_matches("sha256="),
            )
            .header("x-forgejo-event", "push")
            .body(Body::from(body))
            .expect("request");
        assert_eq!(h.send(req).await.0, StatusCode::ACCEPTED);
        assert_eq!(h.triggered(), ["gitea-develop"]);

        h.sources.send_modify(|s| {
            s.push(source(
                "gl-tags",
                "http://gitlab.example.com/mike/diaspora",
                MatchRef::AnyTag,
            ))
        });
        let mut payload: Value =
            serde_json::from_slice(&fixture("gitlab-push.json")).expect("json");
        payload["ref"] = json!("refs/tags/v2.0.0");
        let body = serde_json::to_vec(&payload).expect("json");
        let mut req = signed(Provider::Gitlab, SECRET, &body, None);
        req.headers_mut()
            .insert("x-gitlab-event", HeaderValue::from_static("Tag Push Hook"));
        assert_eq!(h.send(req).await.0, StatusCode::ACCEPTED);
        assert_eq!(h.triggered(), ["gl-tags"]);
    }

    #[tokio::test]
    async fn github_form_encoded_payload_is_accepted() {
        let mut h = Harness::new(Options::default());
        let json = String::from_utf8(fixture("github-push.json")).expect("utf8");
        let mut encoded = String::from("payload=");
        for b in json.bytes() {
            match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    encoded.push(b as char)
                }
                b' ' => encoded.push('+'),
                _ => encoded.push_str(&format!("%{b:02X}")),
            }
        }
        let mut req = signed(Provider::Github, SECRET, encoded.as_bytes(), None);
        req.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let (status, _, body) = h.send(req).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(h.triggered(), ["gh-main"]);
    }

    #[tokio::test]
    async fn pings_and_other_events_are_answered_without_triggering() {
        let mut h = Harness::new(Options::default());
        let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
        let mut req = signed(Provider::Github, SECRET, body, None);
        req.headers_mut()
            .insert("x-github-event", HeaderValue::from_static("ping"));
        let (status, _, reply) = h.send(req).await;
        assert_eq!(
            (status, reply.as_str()),
            (StatusCode::OK, r#"{"result":"ignored"}"#)
        );

        let mut req = signed(Provider::Bitbucket, SECRET, br#"{"test":true}"#, None);
        req.headers_mut()
            .insert("x-event-key", HeaderValue::from_static("diagnostics:ping"));
        assert_eq!(h.send(req).await.0, StatusCode::OK);

        let mut req = signed(Provider::Github, SECRET, &fixture("github-push.json"), None);
        req.headers_mut()
            .insert("x-github-event", HeaderValue::from_static("issues"));
        assert_eq!(h.send(req).await.0, StatusCode::OK);
        assert_eq!(h.last_outcome(), Some((Provider::Github, Outcome::Ignored)));

        // A ping still has to be signed.
        let req = HttpRequest::post("/hooks/github")
            .header("x-github-event", "ping")
            .body(Body::from(&body[..]))
            .expect("request");
        assert_eq!(h.send(req).await.0, StatusCode::UNAUTHORIZED);
        assert!(h.triggered().is_empty());
    }

    // --- signatures ---

    async fn assert_unauthorized(h: &mut Harness, req: HttpRequest<Body>, case: &str) {
        let (status, _, body) = h.send(req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}");
        assert!(
            body.is_empty(),
            "{case}: 401 body must say nothing, got {body:?}"
        );
        assert!(h.triggered().is_empty(), "{case}");
    }

    #[tokio::test]
    async fn unsigned_or_wrongly_signed_requests_are_refused_without_detail() {
        let mut h = Harness::new(Options::default());
        let body = fixture("github-push.json");

        let mut req = signed(Provider::Github, SECRET, &body, None);
        req.headers_mut().remove("x-hub-signature-256");
        assert_unauthorized(&mut h, req, "no signature").await;

        let mut req = signed(Provider::Github, SECRET, &body, None);
        req.headers_mut().insert(
            "x-hub-signature-256",
            HeaderValue::from_static("sha256=deadbeef"),
        );
        assert_unauthorized(&mut h, req, "garbage signature").await;

        let mut req = signed(Provider::Github, SECRET, &body, None);
        req.headers_mut().insert(
            "x-hub-signature-256",
            HeaderValue::from_static("sha256=not-hex!"),
        );
        assert_unauthorized(&mut h, req, "non-hex signature").await;

        let other = signature(SECRET, b"{}");
        let mut req = signed(Provider::Github, SECRET, &body, None);
        req.headers_mut().insert(
            "x-hub-signature-256",
            HeaderValue::from_str(&other).expect("hv"),
        );
        assert_unauthorized(&mut h, req, "signature of another body").await;

        let mut tampered = body.clone();
        let i = tampered.len() / 2;
        tampered[i] ^= 1;
        let mut req = signed(Provider::Github, SECRET, &body, None);
        *req.body_mut() = Body::from(tampered);
        assert_unauthorized(&mut h, req, "body changed after signing").await;

        for provider in Provider::ALL {
            let name = match provider {
                Provider::Github => "github-push.json",
                Provider::Gitlab => "gitlab-push.json",
                Provider::Gitea => "gitea-push.json",
                Provider::Bitbucket => "bitbucket-refs-changed.json",
                Provider::Generic => "generic.json",
                Provider::OciNotifications => unreachable!("not a Git host"),
            };
            let req = signed(provider, b"wrong-secret", &fixture(name), None);
            assert_unauthorized(&mut h, req, &format!("{provider}: wrong secret")).await;
            assert_eq!(h.last_outcome(), Some((provider, Outcome::Unauthorized)));
        }

        let mut req = signed(Provider::Gitlab, SECRET, &fixture("gitlab-push.json"), None);
        req.headers_mut().remove("x-gitlab-token");
        assert_unauthorized(&mut h, req, "gitlab without token").await;

        // Bitbucket's signature header carries the algorithm; a SHA-1 claim is not accepted.
        let mut req = signed(
            Provider::Bitbucket,
            SECRET,
            &fixture("bitbucket-refs-changed.json"),
            None,
        );
        req.headers_mut().insert(
            "x-hub-signature",
            HeaderValue::from_static("sha1=0000000000000000000000000000000000000000"),
        );
        assert_unauthorized(&mut h, req, "bitbucket sha1").await;
    }

    #[tokio::test]
    async fn a_provider_without_a_secret_is_off() {
        let mut h = Harness::new(Options::default());
        h.secrets.send_modify(|s| s.gitea = None);
        let body = fixture("gitea-push.json");
        let (status, _, reply) = h.send(signed(Provider::Gitea, SECRET, &body, None)).await;
        assert_eq!((status, reply.as_str()), (StatusCode::NOT_FOUND, ""));
        // An empty secret is no secret.
        h.secrets.send_modify(|s| s.gitea = Some(vec![]));
        assert_eq!(
            h.send(signed(Provider::Gitea, b"", &body, None)).await.0,
            StatusCode::NOT_FOUND
        );
        assert!(h.triggered().is_empty());
        assert_eq!(
            h.last_outcome(),
            Some((Provider::Gitea, Outcome::NotConfigured))
        );
    }

    #[tokio::test]
    async fn rotated_secrets_apply_without_restart() {
        let mut h = Harness::new(Options::default());
        let body = fixture("generic.json");
        h.secrets
            .send_modify(|s| s.generic = Some(b"rotated".to_vec()));
        assert_eq!(
            h.send(signed(Provider::Generic, SECRET, &body, None))
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            h.send(signed(Provider::Generic, b"rotated", &body, None))
                .await
                .0,
            StatusCode::ACCEPTED
        );
        assert_eq!(h.triggered(), ["generic-release"]);
    }

    #[test]
    fn secrets_debug_prints_no_values() {
        let s = all_secrets();
        let printed = format!("{s:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("github: \"<set>\""), "{printed}");
        let printed = format!("{:?}", Secrets::default());
        assert!(printed.contains("generic: \"<unset>\""), "{printed}");
    }

    #[tokio::test]
    async fn unsigned_requests_are_refused_before_the_body_is_read() {
        let mut h = Harness::new(Options {
            max_body: 16,
            ..Options::default()
        });
        let mut req = signed(Provider::Generic, SECRET, &fixture("generic.json"), None);
        req.headers_mut().remove("x-signature");
        req.headers_mut()
            .insert("content-length", HeaderValue::from(1u64 << 40));
        assert_unauthorized(&mut h, req, "unsigned, huge declared body").await;
    }

    #[tokio::test]
    async fn an_overlong_delivery_id_is_400() {
        let mut h = Harness::new(Options::default());
        let id = "x".repeat(MAX_DELIVERY_ID + 1);
        let req = signed(
            Provider::Generic,
            SECRET,
            &fixture("generic.json"),
            Some(&id),
        );
        let (status, _, reply) = h.send(req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        assert!(h.triggered().is_empty());
    }

    // --- bad bodies ---

    #[tokio::test]
    async fn wrong_content_type_is_415() {
        let mut h = Harness::new(Options::default());
        let body = fixture("generic.json");
        let mut req = signed(Provider::Generic, SECRET, &body, None);
        req.headers_mut()
            .insert("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(h.send(req).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let mut req = signed(Provider::Generic, SECRET, &body, None);
        req.headers_mut().remove("content-type");
        assert_eq!(h.send(req).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        // Form encoding is GitHub's alone.
        let mut req = signed(Provider::Gitea, SECRET, &fixture("gitea-push.json"), None);
        req.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert_eq!(h.send(req).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        // Parameters and case are fine.
        let mut req = signed(Provider::Generic, SECRET, &body, None);
        req.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert_eq!(h.send(req).await.0, StatusCode::ACCEPTED);
        assert_eq!(h.triggered(), ["generic-release"]);
        assert_eq!(
            h.last_outcome(),
            Some((Provider::Generic, Outcome::Accepted))
        );
    }

    #[tokio::test]
    async fn malformed_json_is_400() {
        let mut h = Harness::new(Options::default());
        let (status, _, body) = h
            .send(signed(
                Provider::Generic,
                SECRET,
                br#"{"repository": "#,
                None,
            ))
            .await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::BAD_REQUEST, "malformed JSON body\n")
        );
        let mut req = signed(Provider::Github, SECRET, b"payload=%zz", None);
        req.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert_eq!(h.send(req).await.0, StatusCode::BAD_REQUEST);
        assert!(h.triggered().is_empty());
        assert_eq!(
            h.last_outcome(),
            Some((Provider::Github, Outcome::BadRequest))
        );
    }

    #[tokio::test]
    async fn missing_fields_are_422_with_a_clear_message() {
        let mut h = Harness::new(Options::default());
        let cases: [(&[u8], &str); 5] = [
            (
                br#"{"ref": "refs/heads/main"}"#,
                "payload has no repository URL\n",
            ),
            (
                br#"{"repository": "https://h/o/r"}"#,
                "payload has no ref\n",
            ),
            (
                br#"{"repository": 7, "ref": "refs/heads/main"}"#,
                "payload has no repository URL\n",
            ),
            (
                br#"{"repository": "https://h/o/r", "ref": "main"}"#,
                "ref must be refs/heads/<branch> or refs/tags/<tag>\n",
            ),
            (br#"[1, 2]"#, "payload has no repository URL\n"),
        ];
        for (body, message) in cases {
            let (status, _, reply) = h.send(signed(Provider::Generic, SECRET, body, None)).await;
            assert_eq!(
                (status, reply.as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, message)
            );
        }
        let mut github: Value = serde_json::from_slice(&fixture("github-push.json")).expect("json");
        github.as_object_mut().expect("object").remove("repository");
        let body = serde_json::to_vec(&github).expect("json");
        assert_eq!(
            h.send(signed(Provider::Github, SECRET, &body, None))
                .await
                .0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        // A push without the event header is malformed, not ignored.
        let mut req = signed(Provider::Gitlab, SECRET, &fixture("gitlab-push.json"), None);
        req.headers_mut().remove("x-gitlab-event");
        let (status, _, reply) = h.send(req).await;
        assert_eq!(
            (status, reply.as_str()),
            (StatusCode::BAD_REQUEST, "missing header x-gitlab-event\n")
        );
        assert!(h.triggered().is_empty());
    }

    #[tokio::test]
    async fn oversized_bodies_are_413() {
        let mut h = Harness::new(Options {
            max_body: 1024,
            ..Options::default()
        });
        let mut body = fixture("generic.json");
        body.resize(2048, b' ');
        // Streamed, no length declared.
        let (status, _, _) = h.send(signed(Provider::Generic, SECRET, &body, None)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        // Declared up front: refused before reading.
        let mut req = signed(Provider::Generic, SECRET, &body, None);
        req.headers_mut()
            .insert("content-length", HeaderValue::from(body.len()));
        assert_eq!(h.send(req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            h.last_outcome(),
            Some((Provider::Generic, Outcome::PayloadTooLarge))
        );
        // Exactly at the cap is fine.
        body.truncate(1024);
        assert_eq!(
            h.send(signed(Provider::Generic, SECRET, &body, None))
                .await
                .0,
            StatusCode::ACCEPTED
        );
        assert_eq!(h.triggered(), ["generic-release"]);
    }

    #[tokio::test]
    async fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut h = Harness::new(Options::default());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let shapes: [&[u8]; 8] = [
            b"",
            b"null",
            b"{}",
            br#"{"repository": {"links": {"clone": [{"href": 1}, null]}}, "changes": [{"ref": null}]}"#,
            br#"{"repository": "git@:", "ref": "refs/heads/"}"#,
            br#"{"repository": "://", "ref": "refs/tags/x"}"#,
            br#"{"project": [], "repository": "[::1"}"#,
            "{\"repository\": \"\u{0}\u{7f}é\", \"ref\": \"refs/heads/\u{fffd}\"}".as_bytes(),
        ];
        for i in 0..200 {
            let body: Vec<u8> = if i < shapes.len() {
                shapes[i].to_vec()
            } else {
                (0..rng.random_range(0..300))
                    .map(|_| rng.random())
                    .collect()
            };
            for provider in Provider::ALL {
                let (status, _, _) = h.send(signed(provider, SECRET, &body, None)).await;
                assert!(
                    [
                        StatusCode::BAD_REQUEST,
                        StatusCode::UNPROCESSABLE_ENTITY,
                        StatusCode::ACCEPTED
                    ]
                    .contains(&status),
                    "{provider} {body:?}: {status}"
                );
            }
        }
        assert!(h.triggered().is_empty());
    }

    // --- matching ---

    #[tokio::test]
    async fn a_push_to_another_branch_triggers_nothing() {
        let mut h = Harness::new(Options::default());
        let body = generic_body(
            "https://git.internal.example/team/apps.git",
            "refs/heads/feature/x",
        );
        let (status, _, reply) = h.send(signed(Provider::Generic, SECRET, &body, None)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let reply: Value = serde_json::from_str(&reply).expect("json");
        assert_eq!(reply["result"], "unmatched");
        assert_eq!(reply["triggered"], json!([]));
        assert!(h.triggered().is_empty());
        assert_eq!(
            h.last_outcome(),
            Some((Provider::Generic, Outcome::Unmatched))
        );
        // Nor does a tag named like the branch.
        let body = generic_body(
            "https://git.internal.example/team/apps.git",
            "refs/tags/release",
        );
        h.send(signed(Provider::Generic, SECRET, &body, None)).await;
        assert!(h.triggered().is_empty());
    }

    #[tokio::test]
    async fn commit_pinned_sources_are_never_triggered() {
        let mut h = Harness::new(Options::default());
        h.sources.send_replace(vec![source(
            "pinned",
            "https://github.com/Acme/deploy-config.git",
            MatchRef::Commit,
        )]);
        h.send(signed(
            Provider::Github,
            SECRET,
            &fixture("github-push.json"),
            None,
        ))
        .await;
        assert!(h.triggered().is_empty());
    }

    #[tokio::test]
    async fn reloaded_sources_apply_to_the_next_request() {
        let mut h = Harness::new(Options::default());
        let body = generic_body("git@git.internal.example:team/new.git", "refs/heads/main");
        h.send(signed(Provider::Generic, SECRET, &body, None)).await;
        assert!(h.triggered().is_empty());
        h.sources.send_modify(|s| {
            s.push(source(
                "new",
                "https://git.internal.example/team/new",
                MatchRef::Branch("main".into()),
            ))
        });
        h.send(signed(Provider::Generic, SECRET, &body, None)).await;
        assert_eq!(h.triggered(), ["new"]);
    }

    #[test]
    fn source_matches_by_ref_kind() {
        let push = |r: &str| Push {
            urls: vec!["https://h/o/r.git".into()],
            refs: vec![r.into()],
            topic: None,
        };
        let s = |reference| source("s", "git@h:o/r", reference);
        assert!(s(MatchRef::Branch("main".into())).matches(&push("refs/heads/main")));
        assert!(!s(MatchRef::Branch("main".into())).matches(&push("refs/heads/main2")));
        assert!(!s(MatchRef::Branch("main".into())).matches(&push("refs/tags/main")));
        assert!(s(MatchRef::Tag("v1".into())).matches(&push("refs/tags/v1")));
        assert!(!s(MatchRef::Tag("v1".into())).matches(&push("refs/tags/v1.1")));
        assert!(s(MatchRef::AnyTag).matches(&push("refs/tags/v9.9.9")));
        assert!(!s(MatchRef::AnyTag).matches(&push("refs/heads/v9.9.9")));
        assert!(!s(MatchRef::Commit).matches(&push("refs/heads/main")));
        let cfg = config::Source {
            name: "x".into(),
            url: "https://h/o/r".into(),
            reference: GitRef::Semver(">=1".into()),
            interval: Duration::from_secs(60),
            secret_ref: None,
            oci_vault: None,
            directory: None,
            oci: None,
            oci_topics: Vec::new(),
        };
        assert_eq!(SourceMatch::from_source(&cfg).reference, MatchRef::AnyTag);
    }

    // --- replay, coalescing, rate limiting ---

    #[tokio::test(start_paused = true)]
    async fn a_replayed_delivery_is_a_duplicate_for_ten_minutes() {
        let mut h = Harness::new(Options::default());
        let body = fixture("github-push.json");
        let req = || signed(Provider::Github, SECRET, &body, Some("5f3b-delivery"));
        assert_eq!(h.send(req()).await.0, StatusCode::ACCEPTED);
        assert_eq!(h.triggered(), ["gh-main"]);
        assert!(h.pending.take("gh-main"));

        let (status, _, reply) = h.send(req()).await;
        assert_eq!(
            (status, reply.as_str()),
            (StatusCode::OK, r#"{"result":"duplicate"}"#)
        );
        assert!(h.triggered().is_empty());
        assert_eq!(
            h.last_outcome(),
            Some((Provider::Github, Outcome::Duplicate))
        );

        // The same id from another provider is another delivery.
        let generic = fixture("generic.json");
        assert_eq!(
            h.send(signed(
                Provider::Generic,
                SECRET,
                &generic,
                Some("5f3b-delivery")
            ))
            .await
            .0,
            StatusCode::ACCEPTED
        );
        assert_eq!(h.triggered(), ["generic-release"]);

        tokio::time::advance(Duration::from_secs(599)).await;
        assert_eq!(h.send(req()).await.0, StatusCode::OK);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(h.send(req()).await.0, StatusCode::ACCEPTED);
        assert_eq!(h.triggered(), ["gh-main"]);
    }

    #[test]
    fn remembered_deliveries_are_bounded() {
        let mut d = Deliveries::new(Duration::from_secs(600), 3);
        let now = Instant::now();
        for id in ["a", "b", "c"] {
            assert!(!d.seen(id, now));
        }
        assert!(d.seen("c", now));
        assert!(!d.seen("d", now)); // evicts "a"
        assert!(d.seen.len() <= 3 && d.order.len() <= 3);
        assert!(!d.seen("a", now));
        d.forget("d");
        assert!(!d.seen("d", now));
        for i in 0..100 {
            d.seen(&i.to_string(), now);
        }
        assert!(d.seen.len() <= 3 && d.order.len() <= 3);
    }

    #[test]
    fn rate_buckets_of_removed_sources_are_dropped() {
        let mut l = Limiter::new(Some(RateLimit::default()));
        for name in ["a", "b", "c"] {
            assert!(l.take(name).is_ok());
        }
        l.forget_removed(&[source("b", "https://h/o/r", MatchRef::AnyTag)]);
        assert_eq!(l.buckets.keys().collect::<Vec<_>>(), ["b"]);
        let mut off = Limiter::new(None);
        for _ in 0..100 {
            assert!(off.take("a").is_ok());
        }
    }

    #[tokio::test]
    async fn a_burst_for_one_source_coalesces_into_one_trigger() {
        let mut h = Harness::new(Options::default());
        let body = fixture("github-push.json");
        for i in 0..20 {
            let (status, _, reply) = h
                .send(signed(
                    Provider::Github,
                    SECRET,
                    &body,
                    Some(&format!("burst-{i}")),
                ))
                .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
            if i > 0 {
                let reply: Value = serde_json::from_str(&reply).expect("json");
                assert_eq!(reply["coalesced"], json!(["gh-main"]));
            }
        }
        assert_eq!(h.triggered(), ["gh-main"]);
        // The consumer starts the fetch; the next push asks for another.
        assert!(h.pending.take("gh-main"));
        assert!(!h.pending.take("gh-main"));
        h.send(signed(Provider::Github, SECRET, &body, Some("after")))
            .await;
        assert_eq!(h.triggered(), ["gh-main"]);
    }

    #[tokio::test(start_paused = true)]
    async fn fetches_per_source_are_rate_limited() {
        let mut h = Harness::new(Options::default());
        let body = fixture("github-push.json");
        for i in 0..5 {
            assert_eq!(
                h.send(signed(
                    Provider::Github,
                    SECRET,
                    &body,
                    Some(&format!("r{i}"))
                ))
                .await
                .0,
                StatusCode::ACCEPTED
            );
            assert_eq!(h.triggered(), ["gh-main"]);
            h.pending.take("gh-main");
        }
        let (status, headers, _) = h
            .send(signed(Provider::Github, SECRET, &body, Some("r5")))
            .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            headers.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1")
        );
        assert!(h.triggered().is_empty());
        assert_eq!(
            h.last_outcome(),
            Some((Provider::Github, Outcome::RateLimited))
        );
        // Another source is not affected.
        let generic = fixture("generic.json");
        assert_eq!(
            h.send(signed(Provider::Generic, SECRET, &generic, None))
                .await
                .0,
            StatusCode::ACCEPTED
        );
        assert_eq!(h.triggered(), ["generic-release"]);

        tokio::time::advance(Duration::from_secs(1)).await;
        // The refused delivery is not remembered, so the sender's retry gets through.
        assert_eq!(
            h.send(signed(Provider::Github, SECRET, &body, Some("r5")))
                .await
                .0,
            StatusCode::ACCEPTED
        );
        assert_eq!(h.triggered(), ["gh-main"]);
    }

    #[tokio::test]
    async fn a_full_trigger_queue_is_503_and_leaves_nothing_pending() {
        let mut h = Harness::with_capacity(Options::default(), 1);
        h.send(signed(
            Provider::Generic,
            SECRET,
            &fixture("generic.json"),
            None,
        ))
        .await;
        let (status, _, _) = h
            .send(signed(
                Provider::Github,
                SECRET,
                &fixture("github-push.json"),
                Some("q"),
            ))
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!h.pending.is_pending("gh-main"));
        assert_eq!(h.triggered(), ["generic-release"]);
        assert_eq!(
            h.last_outcome(),
            Some((Provider::Github, Outcome::Unavailable))
        );
    }

    #[tokio::test]
    async fn unknown_paths_and_methods() {
        let h = Harness::new(Options::default());
        let get = HttpRequest::get("/hooks/github")
            .body(Body::empty())
            .expect("req");
        assert_eq!(h.send(get).await.0, StatusCode::METHOD_NOT_ALLOWED);
        let other = HttpRequest::post("/hooks/svn")
            .body(Body::empty())
            .expect("req");
        assert_eq!(h.send(other).await.0, StatusCode::NOT_FOUND);
    }

    // --- real sockets: slow senders and shutdown ---

    async fn spawn_server(
        h: &Harness,
        opts: ServeOptions,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = h.app.clone();
        let task = tokio::spawn(serve_with(listener, router, opts, async {
            let _ = stopped.await;
        }));
        (addr, stop, task)
    }

    async fn read_all(stream: &mut tokio::net::TcpStream) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
            .await
            .expect("server answers or closes in time")
            .ok();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_slow_body_is_408() {
        let mut h = Harness::new(Options {
            body_timeout: Duration::from_millis(300),
            ..Options::default()
        });
        let (addr, stop, task) = spawn_server(&h, ServeOptions::default()).await;
        let body = fixture("generic.json");
        let sig = signature(SECRET, &body);
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST /hooks/generic HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nX-Signature: {sig}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.expect("write");
        // Dribble a few bytes, then stall.
        for b in &body[..5] {
            s.write_all(&[*b]).await.expect("write");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reply = read_all(&mut s).await;
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        assert!(h.triggered().is_empty());
        assert_eq!(
            h.last_outcome(),
            Some((Provider::Generic, Outcome::Timeout))
        );
        let _ = stop.send(());
        task.await.expect("server task");
    }

    #[tokio::test]
    async fn slow_headers_close_the_connection() {
        let h = Harness::new(Options::default());
        let (addr, stop, task) = spawn_server(
            &h,
            ServeOptions {
                header_timeout: Duration::from_millis(300),
                ..ServeOptions::default()
            },
        )
        .await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let started = std::time::Instant::now();
        s.write_all(b"POST /hooks/generic HTTP/1.1\r\nHost: t\r\n")
            .await
            .expect("write");
        let reply = read_all(&mut s).await;
        assert!(!reply.contains("202"), "{reply}");
        assert!(started.elapsed() < Duration::from_secs(3));
        // An idle connection that sends nothing at all is closed too.
        let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let reply = read_all(&mut idle).await;
        assert!(reply.is_empty(), "{reply}");
        assert!(
            lock(&h.outcomes).is_empty(),
            "no request reached the handler"
        );
        let _ = stop.send(());
        task.await.expect("server task");
    }

    #[tokio::test]
    async fn served_over_tcp_with_graceful_shutdown() {
        let mut h = Harness::new(Options::default());
        let (addr, stop, task) = spawn_server(&h, ServeOptions::default()).await;
        let body = fixture("generic.json");
        let sig = signature(SECRET, &body);
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "POST /hooks/generic HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nX-Signature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        s.write_all(&body).await.expect("write");
        let reply = read_all(&mut s).await;
        assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
        assert_eq!(h.triggered(), ["generic-release"]);

        // A kept-alive idle connection does not hold shutdown up.
        let _idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("shut down in time")
            .expect("server task");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "listener closed"
        );
    }
}
