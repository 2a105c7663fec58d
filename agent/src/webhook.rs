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

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::{self, GitRef};

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
        };
        s.as_deref().filter(|s| !s.is_empty())
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Secrets");
        for p in Provider::ALL {
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
        }
    }

    /// Whether the push is to this source's repository and to the ref it follows.
    pub fn matches(&self, push: &Push) -> bool {
        let ref_matches = push.refs.iter().any(|r| match &self.reference {
            MatchRef::Branch(b) => r.strip_prefix("refs/heads/") == Some(b.as_str()),
            MatchRef::Tag(t) => r.strip_prefix("refs/tags/") == Some(t.as_str()),
            MatchRef::AnyTag => r.starts_with("refs/tags/"),
            MatchRef::Commit => false,
        });
        if !ref_matches {
            return false;
        }
        let Some(mine) = normalize_url(&self.url) else {
            return false;
        };
        push.urls
            .iter()
            .any(|u| normalize_url(u).as_deref() == Some(mine.as_str()))
    }
}

/// The sources of a configuration, as the receiver matches them.
pub fn sources_from_config(cfg: &config::Config) -> Vec<SourceMatch> {
    cfg.sources.iter().map(SourceMatch::from_source).collect()
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
        let delivery = delivery_header(provider, req.headers()).map(str::to_owned);
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
        let body = read_body(body, headers, opts.max_body, opts.body_timeout).await?;
        // Authenticity first: nothing below looks at an unverified byte.
        verify(provider, headers, &secret, &body)?;
        drop(secret);
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
            limiter.forget_except(&matched, &self.inner.sources.borrow());
            for name in matched {
                // A pending trigger already covers this push, and costs no token: the rate
                // limit bounds fetches, not requests.
                if pending.contains(&name) {
                    report.coalesced.push(name);
                    continue;
                }
                if let Err(wait) = limiter.take(&name, now) {
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

/// The router: `POST /hooks/{github,gitlab,gitea,bitbucket,generic}`.
pub fn app(hooks: Webhooks) -> Router {
    let mut router = Router::new();
    for provider in Provider::ALL {
        router = router.route(
            provider.path(),
            post(move |State(w): State<Webhooks>, req: Request| w.handle(provider, req)),
        );
    }
    router.with_state(hooks)
}

// --- reading and verifying ------------------------------------------------------------

async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes> {
    // Refuse a declared oversize body without reading any of it.
    let declared = header_str(headers, header::CONTENT_LENGTH.as_str())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Error::TooLarge { limit });
    }
    let collect = async {
        let mut stream = body.into_data_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Error::BodyRead)?;
            if buf.len() + chunk.len() > limit {
                return Err(Error::TooLarge { limit });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(timeout, collect)
        .await
        .map_err(|_| Error::BodyTimeout(timeout))?
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn first_header<'h>(headers: &'h HeaderMap, names: &[&str]) -> Option<&'h str> {
    names.iter().find_map(|n| header_str(headers, n))
}

fn verify(provider: Provider, headers: &HeaderMap, secret: &[u8], body: &[u8]) -> Result<()> {
    let ok = match provider {
        Provider::Gitlab => header_str(headers, "x-gitlab-token")
            .is_some_and(|token| token_eq(token.as_bytes(), secret)),
        Provider::Github => header_str(headers, "x-hub-signature-256")
            .is_some_and(|sig| verify_signature(secret, body, sig)),
        Provider::Bitbucket => header_str(headers, "x-hub-signature")
            .is_some_and(|sig| verify_signature(secret, body, sig)),
        Provider::Generic => header_str(headers, "x-signature")
            .is_some_and(|sig| verify_signature(secret, body, sig)),
        // Gitea and Forgejo send bare hex.
        Provider::Gitea => first_header(headers, &["x-gitea-signature", "x-forgejo-signature"])
            .is_some_and(|hex| verify_hex(secret, body, hex)),
    };
    if ok { Ok(()) } else { Err(Error::Unauthorized) }
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`, as senders put it in
/// `X-Hub-Signature-256`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = hmac_sha256(secret);
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::from("sha256=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`;
/// compared in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    header
        .strip_prefix("sha256=")
        .is_some_and(|hex| verify_hex(secret, body, hex))
}

fn verify_hex(secret: &[u8], body: &[u8], hex: &str) -> bool {
    let Some(tag) = decode_hex(hex) else {
        return false;
    };
    let mut mac = hmac_sha256(secret);
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&tag).is_ok()
}

fn hmac_sha256(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length (long keys are hashed), so this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// Constant-time token comparison; hashing first hides the secret's length too.
fn token_eq(given: &[u8], secret: &[u8]) -> bool {
    Sha256::digest(given).ct_eq(&Sha256::digest(secret)).into()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if s.is_empty() || s.len() % 2 != 0 {
        return None;
    }
    s.chunks(2)
        .map(|c| Some(nibble(c[0])? << 4 | nibble(c[1])?))
        .collect()
}

enum Event {
    Push,
    Ping,
    Other,
}

fn event(provider: Provider, headers: &HeaderMap) -> Result<Event> {
    let (names, push, ping): (&[&'static str], &[&str], &[&str]) = match provider {
        Provider::Github => (&["x-github-event"], &["push"], &["ping"]),
        Provider::Gitlab => (&["x-gitlab-event"], &["Push Hook", "Tag Push Hook"], &[]),
        Provider::Gitea => (&["x-gitea-event", "x-forgejo-event"], &["push"], &[]),
        Provider::Bitbucket => (
            &["x-event-key"],
            &["repo:refs_changed"],
            &["diagnostics:ping"],
        ),
        Provider::Generic => return Ok(Event::Push),
    };
    let value = first_header(headers, names).ok_or(Error::MissingHeader(names[0]))?;
    Ok(if push.contains(&value) {
        Event::Push
    } else if ping.contains(&value) {
        Event::Ping
    } else {
        Event::Other
    })
}

fn delivery_header(provider: Provider, headers: &HeaderMap) -> Option<&str> {
    let names: &[&str] = match provider {
        Provider::Github => &["x-github-delivery"],
        // Idempotency-Key stays the same across GitLab's retries of one event.
        Provider::Gitlab => &["idempotency-key", "x-gitlab-event-uuid"],
        Provider::Gitea => &["x-gitea-delivery", "x-forgejo-delivery"],
        Provider::Bitbucket => &["x-request-id"],
        Provider::Generic => &["x-delivery-id"],
    };
    first_header(headers, names)
}

/// The JSON document of a verified body.
fn decode(provider: Provider, headers: &HeaderMap, body: &[u8]) -> Result<Value> {
    let media = header_str(headers, header::CONTENT_TYPE.as_str())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .ok_or(Error::UnsupportedMediaType)?;
    let json = match media.as_str() {
        "application/json" => body.to_vec(),
        // GitHub's "application/x-www-form-urlencoded" content type: JSON in `payload=`.
        "application/x-www-form-urlencoded" if provider == Provider::Github => form_payload(body)?,
        _ => return Err(Error::UnsupportedMediaType),
    };
    serde_json::from_slice(&json).map_err(Error::Json)
}

fn form_payload(body: &[u8]) -> Result<Vec<u8>> {
    let value = body
        .split(|b| *b == b'&')
        .find_map(|pair| pair.strip_prefix(b"payload="))
        .ok_or(Error::Form("no payload field"))?;
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = value
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(decode_hex)
                    .ok_or(Error::Form("bad percent-encoding"))?;
                out.extend_from_slice(&hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

// --- payloads --------------------------------------------------------------------------

/// What a push event says: the repository's URLs and the refs that changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Push {
    pub urls: Vec<String>,
    /// Full refs, only `refs/heads/<branch>` and `refs/tags/<tag>`.
    pub refs: Vec<String>,
}

/// Reads a provider's push payload.
pub fn parse_push(provider: Provider, payload: &Value) -> Result<Push> {
    let strs = |paths: &[&[&str]]| -> Vec<String> {
        paths
            .iter()
            .filter_map(|path| {
                path.iter()
                    .try_fold(payload, |v, k| v.get(k))
                    .and_then(Value::as_str)
            })
            .map(str::to_owned)
            .collect()
    };
    let (urls, refs) = match provider {
        Provider::Github | Provider::Gitea => (
            strs(&[
                &["repository", "clone_url"],
                &["repository", "ssh_url"],
                &["repository", "html_url"],
                &["repository", "git_url"],
            ]),
            strs(&[&["ref"]]),
        ),
        Provider::Gitlab => (
            strs(&[
                &["project", "git_http_url"],
                &["project", "git_ssh_url"],
                &["project", "web_url"],
                &["repository", "git_http_url"],
                &["repository", "git_ssh_url"],
                &["repository", "homepage"],
                &["repository", "url"],
            ]),
            strs(&[&["ref"]]),
        ),
        Provider::Bitbucket => {
            let urls = payload
                .pointer("/repository/links/clone")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("href").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            let refs = payload
                .get("changes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    c.pointer("/ref/id")
                        .or_else(|| c.get("refId"))
                        .and_then(Value::as_str)
                })
                .map(str::to_owned)
                .collect();
            (urls, refs)
        }
        Provider::Generic => (strs(&[&["repository"]]), strs(&[&["ref"]])),
    };
    let urls: Vec<String> = urls.into_iter().filter(|u| !u.trim().is_empty()).collect();
    if urls.is_empty() {
        return Err(Error::Payload("payload has no repository URL"));
    }
    if refs.is_empty() {
        return Err(Error::Payload("payload has no ref"));
    }
    let refs: Vec<String> = refs
        .into_iter()
        .filter(|r| {
            ["refs/heads/", "refs/tags/"]
                .iter()
                .any(|p| r.strip_prefix(p).is_some_and(|name| !name.is_empty()))
        })
        .collect();
    if refs.is_empty() {
        return Err(Error::Payload(
            "ref must be refs/heads/<branch> or refs/tags/<tag>",
        ));
    }
    Ok(Push { urls, refs })
}

/// A repository URL reduced to `host/path` for comparison: scheme, user, port, `.git`
/// suffix and slashes dropped, everything lowercased; scp-like `git@host:org/repo` gives
/// the same as `ssh://git@host/org/repo` and `https://host/org/repo`. `None` if it has no
/// path. Lenient on purpose: a false match costs one fetch that finds nothing new, a
/// missed one loses the push (the hosts treat owner and repository names without case).
pub fn normalize_url(url: &str) -> Option<String> {
    let url = url.trim();
    let (authority, path) = match url.split_once("://") {
        Some((_, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            rest.split_at(end)
        }
        None => {
            let (head, tail) = url.split_once(':')?;
            if head.is_empty() || head.contains('/') {
                return None;
            }
            (head, tail)
        }
    };
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match hostport.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => hostport.split_once(':').map_or(hostport, |(h, _)| h),
    };
    let path = path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .trim_matches('/');
    let path = path
        .strip_suffix(".git")
        .unwrap_or(path)
        .trim_end_matches('/');
    if path.is_empty() {
        return None;
    }
    Some(format!(
        "{}/{}",
        host.to_ascii_lowercase(),
        path.to_lowercase()
    ))
}

// --- replay and rate state -------------------------------------------------------------

/// Delivery ids seen recently, oldest first; bounded in time and in number.
struct Deliveries {
    seen: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
    window: Duration,
    capacity: usize,
}

impl Deliveries {
    fn new(window: Duration, capacity: usize) -> Self {
        Deliveries {
            seen: HashMap::new(),
            order: VecDeque::new(),
            window,
            capacity: capacity.max(1),
        }
    }

    /// True if `key` was seen within the window; otherwise records it.
    fn seen(&mut self, key: &str, now: Instant) -> bool {
        while let Some((_, t)) = self.order.front() {
            if now.duration_since(*t) < self.window && self.order.len() < self.capacity {
                break;
            }
            self.pop_oldest();
        }
        if self.seen.contains_key(key) {
            return true;
        }
        self.seen.insert(key.to_owned(), now);
        self.order.push_back((key.to_owned(), now));
        false
    }

    fn pop_oldest(&mut self) {
        if let Some((k, t)) = self.order.pop_front()
            && self.seen.get(&k) == Some(&t)
        {
            self.seen.remove(&k);
        }
    }

    /// Forgets `key`, so that a retry of a refused delivery is not a duplicate.
    fn forget(&mut self, key: &str) {
        self.seen.remove(key);
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Limiter {
    limit: Option<RateLimit>,
    buckets: HashMap<String, Bucket>,
}

impl Limiter {
    fn new(limit: Option<RateLimit>) -> Self {
        Limiter {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for `source`, or says how long until one is available.
    fn take(&mut self, source: &str, now: Instant) -> Result<(), Duration> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let burst = f64::from(limit.burst.max(1));
        let every = limit.every.as_secs_f64().max(1e-6);
        let b = self.buckets.entry(source.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() / every).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) * every))
        }
    }

    /// Drops buckets of sources no longer configured, so reloads cannot grow the map.
    fn forget_except(&mut self, matched: &[String], sources: &[SourceMatch]) {
        if self.buckets.len() > sources.len() + matched.len() {
            self.buckets
                .retain(|name, _| sources.iter().any(|s| &s.name == name));
        }
    }
}

/// A poisoned lock only means another request panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// --- serving --------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A client must send the request line and headers within this, or the connection
    /// is closed (hyper answers no status here).
    pub header_timeout: Duration,
    /// After the shutdown signal, requests in flight get this long to finish.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in
/// flight finish; see [`serve_with`].
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()>) {
    serve_with(listener, router, ServeOptions::default(), shutdown).await
}

/// Like [`serve`], with options. HTTP/1.1 only (webhook senders use nothing else); our
/// own accept loop, because axum::serve has no header read timeout.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "webhook listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                let mut drain = drain_rx.clone();
                let header_timeout = opts.header_timeout;
                conns.spawn(
                    async move {
                        let mut builder = hyper::server::conn::http1::Builder::new();
                        builder
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(header_timeout);
                        let conn = builder
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                        let mut conn = std::pin::pin!(conn);
                        let result = tokio::select! {
                            r = conn.as_mut() => r,
                            _ = drain.changed() => {
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                        };
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "webhook connection ended");
                        }
                    }
                    .instrument(tracing::debug_span!("webhook_connection", %peer)),
                );
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let drained = tokio::time::timeout(opts.drain_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "webhook listener: requests still running after the drain timeout; aborting them"
        );
        conns.abort_all();
    }
}
