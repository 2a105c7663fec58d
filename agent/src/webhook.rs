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

/// The header that carries the provider's signature or token.
fn credential_headers(provider: Provider) -> &'static [&'static str] {
    match provider {
        Provider::Gitlab => &["x-gitlab-token"],
        Provider::Github => &["x-hub-signature-256"],
        Provider::Bitbucket => &["x-hub-signature"],
        Provider::Generic => &["x-signature"],
        Provider::Gitea => &["x-gitea-signature", "x-forgejo-signature"],
    }
}

fn has_credentials(provider: Provider, headers: &HeaderMap) -> bool {
    first_header(headers, credential_headers(provider)).is_some()
}

fn verify(provider: Provider, headers: &HeaderMap, secret: &[u8], body: &[u8]) -> Result<()> {
    let given = first_header(headers, credential_headers(provider));
    let ok = given.is_some_and(|given| match provider {
        Provider::Gitlab => token_eq(given.as_bytes(), secret),
        Provider::Github | Provider::Bitbucket | Provider::Generic => {
            verify_signature(secret, body, given)
        }
        // Gitea and Forgejo send bare hex.
        Provider::Gitea => verify_hex(secret, body, given),
    });
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
    if s.is_empty() || !s.len().is_multiple_of(2) {
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
    fn forget_removed(&mut self, sources: &[SourceMatch]) {
        // Buckets are only made for configured names, so more buckets than sources
        // means some were removed.
        if self.buckets.len() > sources.len() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request as HttpRequest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
        }
    }

    fn sources() -> Vec<SourceMatch> {
        use MatchRef::*;
        vec![
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
        };
        if let Some(d) = delivery {
            let name = match provider {
                Provider::Github => "x-github-delivery",
                Provider::Gitlab => "x-gitlab-event-uuid",
                Provider::Gitea => "x-gitea-delivery",
                Provider::Bitbucket => "x-request-id",
                Provider::Generic => "x-delivery-id",
            };
            b = b.header(name, d);
        }
        b.body(Body::from(body.to_vec())).expect("request")
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

    #[test]
    fn github_published_test_vector() {
        let secret = b"It's a Secret to Everybody";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(signature(secret, b"Hello, World!"), sig);
        assert!(verify_signature(secret, b"Hello, World!", sig));
        assert!(verify_signature(
            secret,
            b"Hello, World!",
            &sig.to_uppercase().replace("SHA256=", "sha256=")
        ));
        assert!(!verify_signature(secret, b"Hello, World?", sig));
        assert!(!verify_signature(
            b"It's a secret to everybody",
            b"Hello, World!",
            sig
        ));
        assert!(!verify_signature(
            secret,
            b"Hello, World!",
            &sig[..sig.len() - 2]
        ));
        assert!(!verify_signature(
            secret,
            b"Hello, World!",
            sig.trim_start_matches("sha256=")
        ));
        assert!(!verify_signature(
            secret,
            b"Hello, World!",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d"
        ));
    }

    #[test]
    fn hex_and_token_helpers() {
        assert_eq!(decode_hex("00ffA0"), Some(vec![0, 255, 160]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex(""), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("é1"), None);
        assert!(token_eq(b"abc", b"abc"));
        assert!(!token_eq(b"abc", b"abcd"));
        assert!(!token_eq(b"", b"abc"));
    }

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
    fn urls_normalise_across_forms() {
        let same = [
            "https://github.com/Acme/deploy-config",
            "https://github.com/acme/deploy-config.git",
            "https://github.com/acme/deploy-config/",
            "https://github.com/acme/deploy-config.git/",
            "http://GitHub.COM/acme/deploy-config",
            "https://user@github.com/acme/deploy-config",
            "https://x-access-token:tok@github.com:443/acme/deploy-config",
            "git@github.com:Acme/deploy-config.git",
            "github.com:acme/deploy-config",
            "ssh://git@github.com/acme/deploy-config.git",
            "ssh://git@github.com:22/acme/deploy-config",
            "git+ssh://git@github.com/acme/deploy-config",
            "git://github.com/Acme/deploy-config.git",
            "  https://github.com/acme/deploy-config?x=1#frag ",
        ];
        for u in same {
            assert_eq!(
                normalize_url(u).as_deref(),
                Some("github.com/acme/deploy-config"),
                "{u}"
            );
        }
        let different = [
            "https://github.com/acme/deploy-config-2",
            "https://github.com/acme/deploy",
            "https://gitlab.com/acme/deploy-config",
            "https://github.com/other/deploy-config",
            "https://github.com/acme/deploy-config/sub",
        ];
        for u in different {
            assert_ne!(
                normalize_url(u).as_deref(),
                Some("github.com/acme/deploy-config"),
                "{u}"
            );
        }
        assert_eq!(
            normalize_url("ssh://[::1]:2222/repo.git").as_deref(),
            Some("::1/repo")
        );
        assert_eq!(
            normalize_url("file:///srv/git/repo.git").as_deref(),
            Some("/srv/git/repo")
        );
        for bad in [
            "",
            "https://github.com",
            "https://github.com/",
            "no-colon",
            "/local/path:x",
            "ssh://[::1/x",
            ":repo",
        ] {
            assert_eq!(normalize_url(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn source_matches_by_ref_kind() {
        let push = |r: &str| Push {
            urls: vec!["https://h/o/r.git".into()],
            refs: vec![r.into()],
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
            directory: None,
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
        let now = Instant::now();
        for name in ["a", "b", "c"] {
            assert!(l.take(name, now).is_ok());
        }
        l.forget_removed(&[source("b", "https://h/o/r", MatchRef::AnyTag)]);
        assert_eq!(l.buckets.keys().collect::<Vec<_>>(), ["b"]);
        let mut off = Limiter::new(None);
        for _ in 0..100 {
            assert!(off.take("a", now).is_ok());
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
