//! Alerts: the events worth a person's attention (drift, fights, failed syncs, held-back
//! prunes), the sinks that carry them (Kubernetes Events, signed webhooks, Slack), and their
//! delivery: per sink a bounded queue, a rate limit and retries, so no sink can stall a sync.
//!
//! Secret values never belong in an alert. Callers mask what they put in messages (errors
//! already name subjects, not values); drift on a `Secret` is masked here as well, both by
//! [`Event::drift_detected`] and again by [`Dispatcher::send`] for events built by hand.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

use crate::object::ObjectRef;

// --- errors --------------------------------------------------------------------------

/// Every error names its sink as `type/name`; URLs are redacted (a Slack URL is itself the
/// secret), and no secret value is ever part of a message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("alert sink {sink}: POST {url}: {status}{}", detail(.body))]
    Status {
        sink: String,
        url: String,
        status: reqwest::StatusCode,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("alert sink {sink}: POST {url}: {source}")]
    Request {
        sink: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("alert sink {sink}: {target}: {source}")]
    Kube {
        sink: String,
        target: String,
        #[source]
        source: kube::Error,
    },
    #[error("alert sink {sink}: {message}")]
    Config { sink: String, message: String },
    #[error("{secret}: {message}")]
    Secret { secret: String, message: String },
    #[error("{secret}: {source}")]
    SecretRead {
        secret: String,
        #[source]
        source: kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn detail(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl Error {
    /// Whether another attempt may succeed: network trouble, timeouts, 408, 429 and 5xx.
    /// Other client errors (bad payload, wrong URL, forbidden) will not fix themselves.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Status { status, .. } => {
                status.is_server_error()
                    || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || *status == reqwest::StatusCode::REQUEST_TIMEOUT
            }
            Error::Request { source, .. } => !source.is_builder(),
            Error::Kube { source, .. } => match source {
                kube::Error::Api(s) => s.code == 429 || s.code >= 500,
                _ => true,
            },
            Error::Config { .. } | Error::Secret { .. } | Error::SecretRead { .. } => false,
        }
    }

    /// A server's `Retry-After` (seconds), when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

// --- events --------------------------------------------------------------------------

/// One field that differs between Git and the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldDrift {
    /// Dotted path, e.g. `spec.replicas` or `spec.template.spec.containers[0].image`.
    pub path: String,
    /// Git's value (`null` when Git does not set the field).
    pub before: Value,
    /// The live value (`null` when the field was removed).
    pub after: Value,
}

/// What replaces a masked value. Absence (`null`) is kept: it shows that a key appeared or
/// disappeared without saying anything about its content.
pub const MASK: &str = "*** (masked)";

impl FieldDrift {
    pub fn new(path: impl Into<String>, before: Value, after: Value) -> Self {
        FieldDrift {
            path: path.into(),
            before,
            after,
        }
    }

    /// The drift with its values masked when the object is a Secret (of any API group: a
    /// look-alike kind is as likely to hold credentials).
    pub fn masked_for(mut self, kind: &str) -> Self {
        if kind == "Secret" {
            for v in [&mut self.before, &mut self.after] {
                if !v.is_null() {
                    *v = Value::String(MASK.into());
                }
            }
        }
        self
    }
}

/// An alert. Serialised with a `type` tag (`driftDetected`, `syncFailed`, …) and camelCase
/// fields; `subject` is written as people read it, `Kind/namespace/name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Event {
    /// The live object differs from Git in `fields`.
    DriftDetected {
        sync: String,
        #[serde(with = "subject_string")]
        subject: ObjectRef,
        fields: Vec<FieldDrift>,
        /// The field manager that made the change, when managedFields tell.
        manager: Option<String>,
    },
    /// The live object matches Git again.
    DriftResolved {
        sync: String,
        #[serde(with = "subject_string")]
        subject: ObjectRef,
    },
    /// Another controller keeps reverting what the sync applies.
    Fight {
        sync: String,
        #[serde(with = "subject_string")]
        subject: ObjectRef,
        manager: Option<String>,
        /// How many times the sync's change was reverted.
        count: u32,
    },
    SyncFailed {
        sync: String,
        revision: String,
        error: String,
    },
    /// A sync succeeded after failing.
    SyncRecovered { sync: String, revision: String },
    /// Pruning was not done (e.g. the prune guard judged the deletion too large).
    PruneHeldBack {
        sync: String,
        revision: String,
        reason: String,
    },
}

/// How serious an event is; maps to the Kubernetes Event `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Severity {
    Normal,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Normal => "Normal",
            Severity::Warning => "Warning",
        }
    }
}

impl Event {
    /// A `DriftDetected` with Secret values masked.
    pub fn drift_detected(
        sync: impl Into<String>,
        subject: ObjectRef,
        fields: Vec<FieldDrift>,
        manager: Option<String>,
    ) -> Self {
        let fields = fields
            .into_iter()
            .map(|f| f.masked_for(&subject.kind))
            .collect();
        Event::DriftDetected {
            sync: sync.into(),
            subject,
            fields,
            manager,
        }
    }

    /// The event with drift values masked if its subject is a Secret.
    pub fn masked(self) -> Self {
        match self {
            Event::DriftDetected {
                sync,
                subject,
                fields,
                manager,
            } => Event::drift_detected(sync, subject, fields, manager),
            other => other,
        }
    }

    pub fn sync(&self) -> &str {
        match self {
            Event::DriftDetected { sync, .. }
            | Event::DriftResolved { sync, .. }
            | Event::Fight { sync, .. }
            | Event::SyncFailed { sync, .. }
            | Event::SyncRecovered { sync, .. }
            | Event::PruneHeldBack { sync, .. } => sync,
        }
    }

    /// The object the event is about; `None` for events about a whole sync.
    pub fn subject(&self) -> Option<&ObjectRef> {
        match self {
            Event::DriftDetected { subject, .. }
            | Event::DriftResolved { subject, .. }
            | Event::Fight { subject, .. } => Some(subject),
            _ => None,
        }
    }

    /// PascalCase reason, as Kubernetes Events write it.
    pub fn reason(&self) -> &'static str {
        match self {
            Event::DriftDetected { .. } => "DriftDetected",
            Event::DriftResolved { .. } => "DriftResolved",
            Event::Fight { .. } => "Fight",
            Event::SyncFailed { .. } => "SyncFailed",
            Event::SyncRecovered { .. } => "SyncRecovered",
            Event::PruneHeldBack { .. } => "PruneHeldBack",
        }
    }

    /// What the agent was doing, for the Kubernetes Event `action`.
    pub fn action(&self) -> &'static str {
        match self {
            Event::DriftDetected { .. } | Event::DriftResolved { .. } => "DetectDrift",
            Event::Fight { .. } => "Apply",
            Event::SyncFailed { .. } | Event::SyncRecovered { .. } => "Sync",
            Event::PruneHeldBack { .. } => "Prune",
        }
    }

    pub fn severity(&self) -> Severity {
        match self {
            Event::DriftResolved { .. } | Event::SyncRecovered { .. } => Severity::Normal,
            _ => Severity::Warning,
        }
    }

    /// Identifies the condition an event opens or closes: a detection and its resolution
    /// share a key (`drift/shop/Deployment.apps/shop/web`), as do a failure and its
    /// recovery (`sync/shop`), so receivers can pair them the way incident tools do.
    pub fn key(&self) -> String {
        match self {
            Event::DriftDetected { sync, subject, .. } | Event::DriftResolved { sync, subject } => {
                format!("drift/{sync}/{}", subject_key(subject))
            }
            Event::Fight { sync, subject, .. } => format!("fight/{sync}/{}", subject_key(subject)),
            Event::SyncFailed { sync, .. } | Event::SyncRecovered { sync, .. } => {
                format!("sync/{sync}")
            }
            Event::PruneHeldBack { sync, revision, .. } => format!("prune/{sync}/{revision}"),
        }
    }

    /// One line for people, starting with the subject (`sync/<name>` for sync events):
    /// `Deployment/shop/web: drift in spec.replicas (2 → 5) by kubectl-scale`.
    pub fn summary(&self) -> String {
        const SHOWN_FIELDS: usize = 3;
        match self {
            Event::DriftDetected {
                subject,
                fields,
                manager,
                ..
            } => {
                let mut s = format!("{subject}: drift");
                if !fields.is_empty() {
                    let shown: Vec<String> = fields
                        .iter()
                        .take(SHOWN_FIELDS)
                        .map(|f| format!("{} ({} → {})", f.path, show(&f.before), show(&f.after)))
                        .collect();
                    s.push_str(" in ");
                    s.push_str(&shown.join(", "));
                    if fields.len() > SHOWN_FIELDS {
                        s.push_str(&format!(" and {} more", fields.len() - SHOWN_FIELDS));
                    }
                }
                if let Some(m) = manager {
                    s.push_str(&format!(" by {m}"));
                }
                s
            }
            Event::DriftResolved { subject, .. } => format!("{subject}: drift resolved"),
            Event::Fight {
                subject,
                manager,
                count,
                ..
            } => format!(
                "{subject}: {} keeps reverting the sync ({count} times)",
                manager.as_deref().unwrap_or("another field manager")
            ),
            Event::SyncFailed {
                sync,
                revision,
                error,
            } => format!("sync/{sync}: failed at {}: {error}", short(revision)),
            Event::SyncRecovered { sync, revision } => {
                format!("sync/{sync}: recovered at {}", short(revision))
            }
            Event::PruneHeldBack {
                sync,
                revision,
                reason,
            } => format!(
                "sync/{sync}: prune held back at {}: {reason}",
                short(revision)
            ),
        }
    }
}

/// `Kind.group/ns/name`: the display form is ambiguous across groups, a key must not be.
fn subject_key(s: &ObjectRef) -> String {
    if s.group.is_empty() {
        s.to_string()
    } else {
        let kind = format!("{}.{}", s.kind, s.group);
        match &s.namespace {
            Some(ns) => format!("{kind}/{ns}/{}", s.name),
            None => format!("{kind}/{}", s.name),
        }
    }
}

/// A value as a summary shows it: strings bare, `none` for absent, long values cut.
fn show(v: &Value) -> String {
    const MAX: usize = 40;
    let s = match v {
        Value::Null => "none".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    truncate(&s, MAX)
}

/// Commit ids are cut to 12 hex digits, as people quote them.
fn short(revision: &str) -> &str {
    if revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        &revision[..12]
    } else {
        revision
    }
}

/// At most `max` bytes, cut at a character boundary, with `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `subject` on the wire: `Kind/ns/name` (or `Kind/name`). Group and version are not
/// written, so a deserialised subject has them empty.
mod subject_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use crate::object::ObjectRef;

    pub fn serialize<S: Serializer>(r: &ObjectRef, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(r)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectRef, D::Error> {
        let s = String::deserialize(d)?;
        let parts: Vec<&str> = s.split('/').collect();
        let (kind, namespace, name) = match parts.as_slice() {
            [k, n] => (*k, None, *n),
            [k, ns, n] => (*k, Some(ns.to_string()), *n),
            _ => {
                return Err(D::Error::custom(format!(
                    "subject {s:?}: expected Kind/namespace/name or Kind/name"
                )));
            }
        };
        if kind.is_empty() || name.is_empty() {
            return Err(D::Error::custom(format!(
                "subject {s:?}: empty kind or name"
            )));
        }
        Ok(ObjectRef {
            group: String::new(),
            version: String::new(),
            kind: kind.into(),
            namespace,
            name: name.into(),
        })
    }
}

// --- de-duplication ------------------------------------------------------------------

/// One alert per distinct drift until it is resolved. The drift module owns the decision;
/// this keeps the set of open drifts for it. State is in memory: after a restart an open
/// drift is reported once more, which is the safe side.
#[derive(Debug, Default)]
pub struct Deduper {
    active: HashSet<String>,
}

impl Deduper {
    pub fn new() -> Self {
        Self::default()
    }

    /// False for a `DriftDetected` already reported and not resolved since, and for a
    /// `DriftResolved` of a drift never reported (a resolution nobody saw open is noise).
    /// Every other event is sent.
    pub fn should_send(&mut self, event: &Event) -> bool {
        match event {
            Event::DriftDetected { .. } => self.active.insert(event.key()),
            Event::DriftResolved { .. } => self.active.remove(&event.key()),
            _ => true,
        }
    }

    /// Whether a drift is open under this key.
    pub fn is_active(&self, key: &str) -> bool {
        self.active.contains(key)
    }
}

// --- configuration -------------------------------------------------------------------

/// A key of a Kubernetes Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
    /// Defaults to the agent's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The object the agent's own Events are recorded on (its Pod, Deployment, a Lease…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// Defaults to the agent's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The `alerts:` section of the agent configuration.
///
/// ```yaml
/// alerts:
///   sinks:
///     - type: events
///       name: cluster
///       agentRef: {apiVersion: apps/v1, kind: Deployment, name: gitops-agent}
///     - type: webhook
///       name: ops
///       url: https://alerts.example.com/gitops
///       secretRef: {name: alert-hmac, key: secret}
///     - type: slack
///       name: team
///       secretRef: {name: slack, key: url}   # the incoming-webhook URL is the secret
///       blocks: true
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertsConfig {
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
}

impl AlertsConfig {
    /// Every problem of the section, one message each (empty when valid).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for s in &self.sinks {
            if !crate::config::is_dns_label(s.name()) {
                out.push(format!(
                    "alert sink {}: name must be a DNS label (lowercase letters, digits, '-')",
                    s.id()
                ));
            }
            if !seen.insert(s.name()) {
                out.push(format!(
                    "alert sink {}: name {:?} is already used by another sink",
                    s.id(),
                    s.name()
                ));
            }
            if let SinkConfig::Webhook { url, .. } = s
                && let Err(e) = parse_url(&s.id(), url, false)
            {
                out.push(e.to_string());
            }
        }
        out
    }
}

impl AlertsConfig {
    /// Builds every sink, reading each `secretRef` from the cluster (`agent.namespace` by
    /// default). The first sink that cannot be built fails the whole set, naming the sink.
    pub async fn build(
        &self,
        client: &Client,
        agent: &AgentInfo,
        http: &HttpOptions,
    ) -> Result<Vec<Arc<dyn Sink>>> {
        let mut sinks = Vec::with_capacity(self.sinks.len());
        for s in &self.sinks {
            let secret =
                match s.secret_ref() {
                    Some(r) => Some(read_secret(client, &agent.namespace, r).await.map_err(
                        |e| Error::Config {
                            sink: s.id(),
                            message: e.to_string(),
                        },
                    )?),
                    None => None,
                };
            sinks.push(s.build(SinkResources {
                client: Some(client.clone()),
                agent: agent.clone(),
                secret,
                http: http.clone(),
            })?);
        }
        Ok(sinks)
    }
}

/// One sink, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum SinkConfig {
    /// Kubernetes Events (events.k8s.io/v1) on the subject and on `agentRef`.
    Events {
        name: String,
        agent_ref: AgentRef,
        /// `reportingController` of the Events.
        #[serde(default = "default_controller")]
        reporting_controller: String,
    },
    /// JSON POST signed with HMAC-SHA256 (`X-Signature-256: sha256=<hex>`).
    Webhook {
        name: String,
        /// `https://`; `http://` only to a loopback address.
        url: String,
        /// The HMAC key.
        secret_ref: SecretKeyRef,
    },
    /// A Slack-compatible incoming webhook.
    Slack {
        name: String,
        /// The incoming-webhook URL (it is the credential).
        secret_ref: SecretKeyRef,
        /// Add Block Kit `blocks` beside the plain `text`.
        #[serde(default = "yes")]
        blocks: bool,
    },
}

fn default_controller() -> String {
    crate::FIELD_MANAGER.to_string()
}

fn yes() -> bool {
    true
}

/// Bytes read from a Secret. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        SecretBytes(bytes.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

/// Who sends the alerts, as webhook bodies name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentInfo {
    pub name: String,
    pub version: String,
    /// The Pod name (or host name) of this replica.
    pub instance: String,
    /// The agent's namespace; the default for `secretRef` and `agentRef`.
    pub namespace: String,
}

impl AgentInfo {
    pub fn new(namespace: impl Into<String>, instance: impl Into<String>) -> Self {
        AgentInfo {
            name: crate::FIELD_MANAGER.to_string(),
            version: crate::VERSION.to_string(),
            instance: instance.into(),
            namespace: namespace.into(),
        }
    }
}

/// Timeouts of the HTTP sinks.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The whole request, connection to response body. A sink slower than this counts as down.
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What building a sink needs besides its configuration.
#[derive(Clone)]
pub struct SinkResources {
    /// Required by `events` sinks.
    pub client: Option<Client>,
    pub agent: AgentInfo,
    /// The value behind the sink's [`SinkConfig::secret_ref`], resolved by the caller.
    pub secret: Option<SecretBytes>,
    pub http: HttpOptions,
}

impl SinkConfig {
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Events { name, .. }
            | SinkConfig::Webhook { name, .. }
            | SinkConfig::Slack { name, .. } => name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Events { .. } => "events",
            SinkConfig::Webhook { .. } => "webhook",
            SinkConfig::Slack { .. } => "slack",
        }
    }

    /// `type/name`, how errors and metrics name the sink.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind(), self.name())
    }

    /// The Secret whose value the caller resolves into [`SinkResources::secret`].
    pub fn secret_ref(&self) -> Option<&SecretKeyRef> {
        match self {
            SinkConfig::Events { .. } => None,
            SinkConfig::Webhook { secret_ref, .. } | SinkConfig::Slack { secret_ref, .. } => {
                Some(secret_ref)
            }
        }
    }

    pub fn build(&self, res: SinkResources) -> Result<Arc<dyn Sink>> {
        let id = self.id();
        let missing = |what: &str| Error::Config {
            sink: id.clone(),
            message: format!("{what} is required"),
        };
        Ok(match self {
            SinkConfig::Events {
                agent_ref,
                reporting_controller,
                ..
            } => {
                let client = res.client.ok_or_else(|| missing("a Kubernetes client"))?;
                let (group, version) = ObjectRef::split_api_version(&agent_ref.api_version);
                let agent_ref = ObjectRef {
                    group: group.into(),
                    version: version.into(),
                    kind: agent_ref.kind.clone(),
                    namespace: Some(
                        agent_ref
                            .namespace
                            .clone()
                            .unwrap_or_else(|| res.agent.namespace.clone()),
                    ),
                    name: agent_ref.name.clone(),
                };
                Arc::new(EventsSink::new(
                    id,
                    client,
                    agent_ref,
                    reporting_controller.clone(),
                    res.agent.instance,
                ))
            }
            SinkConfig::Webhook { url, .. } => {
                let secret = res.secret.ok_or_else(|| missing("the secretRef value"))?;
                Arc::new(WebhookSink::new(id, url, secret, res.agent, &res.http)?)
            }
            SinkConfig::Slack { blocks, .. } => {
                let secret = res.secret.ok_or_else(|| missing("the secretRef value"))?;
                Arc::new(SlackSink::new(id, &secret, *blocks, res.agent, &res.http)?)
            }
        })
    }
}

/// Reads one key of a Secret (for [`SinkResources::secret`]). Errors name the Secret and
/// key, never the value.
pub async fn read_secret(
    client: &Client,
    default_namespace: &str,
    r: &SecretKeyRef,
) -> Result<SecretBytes> {
    let ns = r.namespace.as_deref().unwrap_or(default_namespace);
    let secret = format!("Secret/{ns}/{}", r.name);
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&r.name)
        .await
        .map_err(|source| Error::SecretRead {
            secret: secret.clone(),
            source,
        })?;
    if let Some(v) = s.data.as_ref().and_then(|d| d.get(&r.key)) {
        return Ok(SecretBytes(v.0.clone()));
    }
    if let Some(v) = s.string_data.as_ref().and_then(|d| d.get(&r.key)) {
        return Ok(SecretBytes(v.clone().into_bytes()));
    }
    Err(Error::Secret {
        secret,
        message: format!("no key {:?}", r.key),
    })
}

// --- sinks ---------------------------------------------------------------------------

/// An event stamped with the time it was raised (not delivered: retries keep it).
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub event: Event,
    pub time: Timestamp,
}

/// Somewhere alerts go. One delivery attempt per call; the [`Dispatcher`] retries.
pub trait Sink: Send + Sync {
    /// `type/name`.
    fn name(&self) -> &str;
    fn deliver<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<()>>;
}

fn http_client(http: &HttpOptions) -> std::result::Result<reqwest::Client, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    // ring, as kube uses: one crypto provider in the binary. Roots from the platform.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(http.timeout)
        .connect_timeout(http.connect_timeout)
        // A redirect would carry the body and its signature to a place nobody configured.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(format!("gitops-agent/{}", crate::VERSION))
        .build()
        .map_err(|e| e.without_url().to_string())
}

/// `https://`, or `http://` to a loopback address; no credentials in the URL.
fn parse_url(sink: &str, raw: &str, secret: bool) -> Result<reqwest::Url> {
    let bad = |why: &str| Error::Config {
        sink: sink.to_string(),
        message: if secret {
            format!("URL from the Secret: {why}")
        } else {
            format!("url {}: {why}", redact(raw, false))
        },
    };
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| bad(&e.to_string()))?;
    let host = url.host_str().unwrap_or("");
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(bad(
                "http:// is only allowed to a loopback address; use https://",
            ));
        }
        other => return Err(bad(&format!("scheme {other:?} is not https"))),
    }
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in the URL are not allowed"));
    }
    Ok(url)
}

/// A URL fit for messages: scheme, host and port always; the path only when the URL is not
/// itself a secret; never userinfo, query or fragment (tokens live there).
fn redact(raw: &str, secret: bool) -> String {
    let Ok(url) = reqwest::Url::parse(raw.trim()) else {
        return "<invalid URL>".into();
    };
    let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(p) = url.port() {
        out.push_str(&format!(":{p}"));
    }
    if secret {
        out.push_str("/…");
    } else {
        out.push_str(url.path());
        if url.query().is_some() {
            out.push_str("?…");
        }
    }
    out
}

/// POSTs `body` and maps the outcome to our errors (body of an error response cut short:
/// it helps, e.g. Slack's `invalid_payload`, but must not flood logs).
async fn post(sink: &str, shown_url: &str, req: reqwest::RequestBuilder) -> Result<()> {
    let resp = req.send().await.map_err(|e| Error::Request {
        sink: sink.to_string(),
        url: shown_url.to_string(),
        source: e.without_url(),
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.text().await.unwrap_or_default();
    let body = truncate(body.trim().lines().next().unwrap_or(""), 200);
    Err(Error::Status {
        sink: sink.to_string(),
        url: shown_url.to_string(),
        status,
        body,
        retry_after,
    })
}

/// Generic JSON webhook, signed.
pub struct WebhookSink {
    id: String,
    url: reqwest::Url,
    shown_url: String,
    key: SecretBytes,
    agent: AgentInfo,
    client: reqwest::Client,
}

/// The signature header: `sha256=` and the hex HMAC-SHA256 of the exact body bytes.
pub const SIGNATURE_HEADER: &str = "X-Signature-256";

/// `sha256=<hex>` of HMAC-SHA256(key, body): what [`SIGNATURE_HEADER`] carries.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    // The same `sha256=<hex>` HMAC the webhook receiver verifies: one implementation.
    crate::webhook::signature(key, body)
}

impl WebhookSink {
    pub fn new(
        id: impl Into<String>,
        url: &str,
        key: SecretBytes,
        agent: AgentInfo,
        http: &HttpOptions,
    ) -> Result<Self> {
        let id = id.into();
        let parsed = parse_url(&id, url, false)?;
        if key.0.is_empty() {
            return Err(Error::Config {
                sink: id,
                message: "the signing secret is empty".into(),
            });
        }
        let client = http_client(http).map_err(|message| Error::Config {
            sink: id.clone(),
            message,
        })?;
        Ok(WebhookSink {
            shown_url: redact(url, false),
            id,
            url: parsed,
            key,
            agent,
            client,
        })
    }

    /// `{"event": …, "key": …, "agent": …, "time": RFC 3339}`.
    pub fn body(&self, alert: &Alert) -> Vec<u8> {
        let v = json!({
            "event": alert.event,
            "key": alert.event.key(),
            "agent": self.agent,
            "time": alert.time.to_string(),
        });
        serde_json::to_vec(&v).expect("alert JSON has string keys only")
    }
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.id
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let body = self.body(alert);
            let req = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, sign(self.key.expose(), &body))
                .body(body);
            post(&self.id, &self.shown_url, req).await
        })
    }
}

/// Slack-compatible incoming webhook: `{"text": …, "blocks": […]}`.
pub struct SlackSink {
    id: String,
    url: reqwest::Url,
    shown_url: String,
    blocks: bool,
    agent: AgentInfo,
    client: reqwest::Client,
}

impl SlackSink {
    pub fn new(
        id: impl Into<String>,
        url: &SecretBytes,
        blocks: bool,
        agent: AgentInfo,
        http: &HttpOptions,
    ) -> Result<Self> {
        let id = id.into();
        let raw = std::str::from_utf8(url.expose()).map_err(|_| Error::Config {
            sink: id.clone(),
            message: "URL from the Secret is not UTF-8".into(),
        })?;
        let parsed = parse_url(&id, raw, true)?;
        let client = http_client(http).map_err(|message| Error::Config {
            sink: id.clone(),
            message,
        })?;
        Ok(SlackSink {
            shown_url: redact(raw, true),
            id,
            url: parsed,
            blocks,
            agent,
            client,
        })
    }

    pub fn body(&self, alert: &Alert) -> Value {
        let e = &alert.event;
        let text = e.summary();
        if !self.blocks {
            return json!({ "text": text });
        }
        let icon = match e.severity() {
            Severity::Warning => ":warning:",
            Severity::Normal => ":white_check_mark:",
        };
        let mut blocks = vec![json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("{icon} *{}* {}", e.reason(), mrkdwn(&text))},
        })];
        if let Event::DriftDetected { fields, .. } = e
            && !fields.is_empty()
        {
            let lines: Vec<String> = fields
                .iter()
                .take(10)
                .map(|f| {
                    format!(
                        "`{}`: {} → {}",
                        mrkdwn(&f.path),
                        mrkdwn(&show(&f.before)),
                        mrkdwn(&show(&f.after))
                    )
                })
                .collect();
            blocks.push(json!({
                "type": "section",
                "text": {"type": "mrkdwn", "text": lines.join("\n")},
            }));
        }
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": format!(
                "sync `{}` · {} {} · {}",
                mrkdwn(e.sync()), mrkdwn(&self.agent.name), mrkdwn(&self.agent.instance), alert.time
            )}],
        }));
        json!({ "text": text, "blocks": blocks })
    }
}

/// Slack's mrkdwn needs `&`, `<`, `>` escaped; nothing else.
fn mrkdwn(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Sink for SlackSink {
    fn name(&self) -> &str {
        &self.id
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let body = serde_json::to_vec(&self.body(alert)).expect("JSON value");
            let req = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            post(&self.id, &self.shown_url, req).await
        })
    }
}

/// Kubernetes Events (events.k8s.io/v1): one regarding the subject (related: the agent),
/// and one regarding the agent (related: the subject); sync events only on the agent.
///
/// Written directly rather than through `kube::runtime::events::Recorder`: the Recorder
/// folds repeats into a series under a key without the note, so a second drift of the same
/// object within six minutes would keep the first drift's text. Repeats are rare here (the
/// caller de-duplicates, the dispatcher rate-limits), so every alert gets its own Event.
///
/// RBAC: `create` on `events.k8s.io/events`; `get` on subjects (for their UID, so
/// `kubectl describe` finds the Event; without it the Event is still written).
pub struct EventsSink {
    id: String,
    client: Client,
    agent_ref: ObjectRef,
    controller: String,
    instance: String,
    resources: Mutex<HashMap<GroupVersionKind, ApiResource>>,
}

/// Limits the API server enforces on events.k8s.io/v1.
const NOTE_MAX: usize = 1024;
const NAME_BASE_MAX: usize = 200;

impl EventsSink {
    pub fn new(
        id: impl Into<String>,
        client: Client,
        agent_ref: ObjectRef,
        reporting_controller: impl Into<String>,
        instance: impl Into<String>,
    ) -> Self {
        EventsSink {
            id: id.into(),
            client,
            agent_ref,
            controller: reporting_controller.into(),
            instance: truncate(&instance.into(), 128),
            resources: Mutex::default(),
        }
    }

    /// The reference with the object's UID when it can be read (best effort).
    async fn reference(&self, r: &ObjectRef) -> ObjectReference {
        let mut out = ObjectReference {
            api_version: (!r.version.is_empty()).then(|| r.api_version()),
            kind: Some(r.kind.clone()),
            namespace: r.namespace.clone(),
            name: Some(r.name.clone()),
            ..Default::default()
        };
        if r.version.is_empty() {
            return out;
        }
        match self.uid(r).await {
            Ok(uid) => out.uid = uid,
            Err(e) => debug!(subject = %r, error = %e, "no UID for the Event's reference"),
        }
        out
    }

    async fn uid(&self, r: &ObjectRef) -> Result<Option<String>, kube::Error> {
        let gvk = GroupVersionKind::gvk(&r.group, &r.version, &r.kind);
        let cached = self.resources.lock().expect("lock").get(&gvk).cloned();
        let ar = match cached {
            Some(ar) => ar,
            None => {
                let (ar, _) = kube::discovery::pinned_kind(&self.client, &gvk).await?;
                self.resources.lock().expect("lock").insert(gvk, ar.clone());
                ar
            }
        };
        let api: Api<DynamicObject> = match &r.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        Ok(api
            .get_metadata_opt(&r.name)
            .await?
            .and_then(|m| m.metadata.uid))
    }

    async fn publish(
        &self,
        alert: &Alert,
        regarding: &ObjectReference,
        related: Option<&ObjectReference>,
    ) -> Result<()> {
        let e = &alert.event;
        // Events of cluster-scoped objects live in `default`, as the API server requires.
        let ns = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let now = Timestamp::now();
        // Object names are ASCII; a cut one must still end alphanumeric (a DNS subdomain).
        let name = regarding.name.as_deref().unwrap_or("gitops-agent");
        let base = name[..name.len().min(NAME_BASE_MAX)].trim_end_matches(['-', '.']);
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!("{base}.{:x}", now.as_nanosecond())),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(alert.time)),
            type_: Some(e.severity().as_str().into()),
            reason: Some(e.reason().into()),
            action: Some(e.action().into()),
            note: Some(truncate(&e.summary(), NOTE_MAX)),
            regarding: Some(regarding.clone()),
            related: related.cloned(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        Api::<K8sEvent>::namespaced(self.client.clone(), &ns)
            .create(&PostParams::default(), &event)
            .await
            .map_err(|source| Error::Kube {
                sink: self.id.clone(),
                target: format!(
                    "Event/{ns} regarding {}/{}",
                    regarding.kind.as_deref().unwrap_or(""),
                    regarding.name.as_deref().unwrap_or("")
                ),
                source,
            })?;
        Ok(())
    }
}

impl Sink for EventsSink {
    fn name(&self) -> &str {
        &self.id
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let agent = self.reference(&self.agent_ref).await;
            match alert.event.subject() {
                Some(subject) => {
                    let regarding = self.reference(subject).await;
                    self.publish(alert, &regarding, Some(&agent)).await?;
                    // A retry after this one fails repeats the first Event: at least once.
                    self.publish(alert, &agent, Some(&regarding)).await
                }
                None => self.publish(alert, &agent, None).await,
            }
        })
    }
}

// --- delivery ------------------------------------------------------------------------

/// What became of one alert at one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    Delivered {
        attempts: u32,
    },
    /// Gave up: attempts exhausted or an error that retrying cannot fix.
    Failed {
        attempts: u32,
        error: String,
    },
    /// Pushed out of a full queue by a newer alert, or still queued at shutdown.
    Dropped,
}

/// Called for every outcome with the sink's `type/name`. Runs inline (for drops, in
/// [`Dispatcher::send`]'s caller), so it must be quick: count, don't do I/O.
pub type OnResult = Arc<dyn Fn(&str, DeliveryResult) + Send + Sync>;

/// Counts per sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub delivered: u64,
    pub failed: u64,
    pub dropped: u64,
}

/// Token bucket: `burst` requests at once, then `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub burst: u32,
    pub per_second: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            burst: 10,
            per_second: 1.0,
        }
    }
}

/// Jittered exponential backoff between attempts of one alert; each alert starts afresh.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `n` (1-based): half of `initial·2ⁿ⁻¹` (capped at
    /// `max`) plus a random share of the other half, so retries of many agents spread out
    /// without ever becoming immediate.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max);
        let half = exp / 2;
        half + half.mul_f64(random_unit())
    }
}

/// A number in [0, 1). Jitter needs no cryptographic randomness; std's randomly keyed
/// hasher gives enough without another dependency.
fn random_unit() -> f64 {
    let bits = RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Clone)]
pub struct DeliveryOptions {
    /// Alerts waiting per sink; when full the oldest is dropped.
    pub queue_capacity: usize,
    pub rate: RateLimit,
    pub retry: RetryPolicy,
    pub on_result: Option<OnResult>,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            queue_capacity: 1000,
            rate: RateLimit::default(),
            retry: RetryPolicy::default(),
            on_result: None,
        }
    }
}

impl fmt::Debug for DeliveryOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryOptions")
            .field("queue_capacity", &self.queue_capacity)
            .field("rate", &self.rate)
            .field("retry", &self.retry)
            .field("on_result", &self.on_result.is_some())
            .finish()
    }
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// A sink's queue: a mutex held only to push or pop, so `send` never waits on delivery.
struct Queue {
    items: Mutex<VecDeque<Arc<Alert>>>,
    capacity: usize,
    closed: std::sync::atomic::AtomicBool,
    // One consumer: notify_one keeps a permit when nobody waits, so no wake-up is lost.
    ready: Notify,
}

impl Queue {
    /// Pushes, returning whether the oldest alert was dropped to make room.
    fn push(&self, alert: Arc<Alert>) -> bool {
        let dropped = {
            let mut q = self.items.lock().expect("queue lock");
            let dropped = q.len() >= self.capacity && q.pop_front().is_some();
            q.push_back(alert);
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    async fn next(&self) -> Option<Arc<Alert>> {
        loop {
            if let Some(a) = self.items.lock().expect("queue lock").pop_front() {
                return Some(a);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            self.ready.notified().await;
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    fn drain(&self) -> usize {
        let mut q = self.items.lock().expect("queue lock");
        let n = q.len();
        q.clear();
        n
    }
}

struct Worker {
    name: String,
    queue: Arc<Queue>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

/// Fans alerts out to sinks. [`send`](Self::send) only queues: each sink has its own
/// queue and task, so a slow or dead sink delays nothing but its own alerts.
pub struct Dispatcher {
    workers: Vec<Worker>,
    on_result: Option<OnResult>,
}

impl Dispatcher {
    /// Starts one task per sink. Must be called within a Tokio runtime.
    pub fn new(sinks: impl IntoIterator<Item = Arc<dyn Sink>>, options: DeliveryOptions) -> Self {
        let workers = sinks
            .into_iter()
            .map(|sink| {
                let name = sink.name().to_string();
                let queue = Arc::new(Queue {
                    items: Mutex::default(),
                    capacity: options.queue_capacity.max(1),
                    closed: Default::default(),
                    ready: Notify::new(),
                });
                let counters = Arc::new(Counters::default());
                let task = tokio::spawn(
                    run(sink, queue.clone(), counters.clone(), options.clone())
                        .instrument(info_span!("alert_sink", sink = %name)),
                );
                Worker {
                    name,
                    queue,
                    counters,
                    task,
                }
            })
            .collect();
        Dispatcher {
            workers,
            on_result: options.on_result,
        }
    }

    /// Queues the event for every sink and returns at once. Drift on a Secret is masked.
    pub fn send(&self, event: Event) {
        let alert = Arc::new(Alert {
            event: event.masked(),
            time: Timestamp::now(),
        });
        for w in &self.workers {
            if w.queue.push(alert.clone()) {
                w.counters.dropped.fetch_add(1, Ordering::Relaxed);
                warn!(sink = %w.name, "alert queue full: dropped the oldest alert");
                if let Some(cb) = &self.on_result {
                    cb(&w.name, DeliveryResult::Dropped);
                }
            }
        }
    }

    /// Counts per sink, by `type/name`.
    pub fn stats(&self) -> BTreeMap<String, SinkStats> {
        self.workers
            .iter()
            .map(|w| {
                let c = &w.counters;
                (
                    w.name.clone(),
                    SinkStats {
                        delivered: c.delivered.load(Ordering::Relaxed),
                        failed: c.failed.load(Ordering::Relaxed),
                        dropped: c.dropped.load(Ordering::Relaxed),
                    },
                )
            })
            .collect()
    }

    /// Stops taking alerts and gives the sinks `grace` to deliver what is queued; what is
    /// left after that is counted as dropped.
    pub async fn shutdown(mut self, grace: Duration) {
        for w in &self.workers {
            w.queue.close();
        }
        let all = futures::future::join_all(self.workers.iter_mut().map(|w| &mut w.task));
        let _ = tokio::time::timeout(grace, all).await;
        for w in &self.workers {
            w.task.abort();
            let left = w.queue.drain() as u64;
            if left > 0 {
                w.counters.dropped.fetch_add(left, Ordering::Relaxed);
                warn!(sink = %w.name, left, "alerts not delivered before shutdown");
                if let Some(cb) = &self.on_result {
                    for _ in 0..left {
                        cb(&w.name, DeliveryResult::Dropped);
                    }
                }
            }
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        // Tasks must not outlive their dispatcher (and keep sinks' connections open).
        for w in &self.workers {
            w.task.abort();
        }
    }
}

struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: RateLimit) -> Self {
        let burst = f64::from(rate.burst.max(1));
        TokenBucket {
            tokens: burst,
            burst,
            per_second: if rate.per_second > 0.0 {
                rate.per_second
            } else {
                f64::MIN_POSITIVE
            },
            last: Instant::now(),
        }
    }

    async fn take(&mut self) {
        loop {
            let now = Instant::now();
            let elapsed = now.duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                return;
            }
            let wait = (1.0 - self.tokens) / self.per_second;
            tokio::time::sleep(Duration::from_secs_f64(wait.min(3600.0))).await;
        }
    }
}

async fn run(
    sink: Arc<dyn Sink>,
    queue: Arc<Queue>,
    counters: Arc<Counters>,
    options: DeliveryOptions,
) {
    let mut bucket = TokenBucket::new(options.rate);
    let name = sink.name().to_string();
    while let Some(alert) = queue.next().await {
        let result = deliver(&*sink, &alert, &options.retry, &mut bucket).await;
        match &result {
            DeliveryResult::Delivered { .. } => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            DeliveryResult::Failed { attempts, error } => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                warn!(attempts, "alert not delivered: {error}");
            }
            DeliveryResult::Dropped => {}
        }
        if let Some(cb) = &options.on_result {
            cb(&name, result);
        }
    }
}

/// One alert to one sink, with retries. Every attempt takes a token: the limit protects
/// the receiver, which sees retries as requests like any other.
async fn deliver(
    sink: &dyn Sink,
    alert: &Alert,
    retry: &RetryPolicy,
    bucket: &mut TokenBucket,
) -> DeliveryResult {
    let mut attempts = 0;
    loop {
        attempts += 1;
        bucket.take().await;
        match sink.deliver(alert).await {
            Ok(()) => return DeliveryResult::Delivered { attempts },
            Err(e) if e.is_retryable() && attempts < retry.max_attempts.max(1) => {
                let wait = e
                    .retry_after()
                    .unwrap_or_else(|| retry.delay(attempts))
                    .min(retry.max);
                debug!(attempts, ?wait, "alert delivery failed, retrying: {e}");
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                return DeliveryResult::Failed {
                    attempts,
                    error: e.to_string(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests;
