//! The places alerts go: one [`Sink`] per configured sink, built from its configuration
//! and its secret. Each delivers one alert per call; the dispatcher retries.

pub mod events;
pub mod oci_notifications;
pub mod slack;
pub mod vault_held;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use serde::{Deserialize, Serialize};

use super::{Error, Event, Result};
use crate::config::alerts::{AlertsConfig, Credential, SinkConfig};
use crate::core::ObjectKey;
use crate::http::client;
use crate::secrets::{SecretBytes, SecretResolver};

pub use events::EventsSink;
pub use slack::SlackSink;
pub use webhook::{SIGNATURE_HEADER, WebhookSink};

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

/// What building a sink needs besides its configuration.
#[derive(Clone)]
pub struct SinkResources {
    /// Required by `events` sinks.
    pub client: Option<Client>,
    pub agent: AgentInfo,
    /// The value behind the sink's [`SinkConfig::secret_ref`], resolved by the caller.
    pub secret: Option<SecretBytes>,
    pub http: client::Options,
    /// Required by `ociNotifications` sinks: the agent's OCI client.
    pub oci: Option<Arc<crate::oci::Shared>>,
}

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

    /// Several alerts at once, when more are waiting than the rate limit lets through one
    /// by one: a sink that can send them in one request overrides this. By default each is
    /// delivered in turn (a retry repeats them all: at least once).
    fn deliver_batch<'a>(&'a self, alerts: &'a [Arc<Alert>]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for a in alerts {
                self.deliver(a).await?;
            }
            Ok(())
        })
    }
}

/// POSTs `body` and maps the outcome to our errors (body of an error response cut short:
/// it helps, e.g. Slack's `invalid_payload`, but must not flood logs).
pub(crate) async fn post(sink: &str, shown_url: &str, req: reqwest::RequestBuilder) -> Result<()> {
    let resp = req.send().await.map_err(|e| Error::Request {
        sink: sink.to_string(),
        url: shown_url.to_string(),
        source: e.without_url(),
    })?;
    if resp.status().is_success() {
        return Ok(());
    }
    Err(status_error(sink, shown_url, resp).await)
}

/// The error for a response that is not a success: its status, `Retry-After` (seconds),
/// and the first line of its body, read through a cap.
pub(crate) async fn status_error(sink: &str, shown_url: &str, resp: reqwest::Response) -> Error {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = read_capped(resp, ERROR_BODY_MAX).await;
    let body = crate::core::truncate(body.trim().lines().next().unwrap_or(""), 200);
    Error::Status {
        sink: sink.to_string(),
        url: shown_url.to_string(),
        status,
        body,
        retry_after,
    }
}

/// Builds one sink from its configuration and what it needs.
pub fn build(cfg: &SinkConfig, res: SinkResources) -> Result<Arc<dyn Sink>> {
    let id = cfg.id();
    let missing = |what: &str| Error::Config {
        sink: id.clone(),
        message: format!("{what} is required"),
    };
    Ok(match cfg {
        SinkConfig::Events {
            agent_ref,
            reporting_controller,
            ..
        } => {
            let client = res.client.ok_or_else(|| missing("a Kubernetes client"))?;
            let (group, version) = ObjectKey::split_api_version(&agent_ref.api_version);
            let agent_ref = ObjectKey {
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
        SinkConfig::OciNotifications {
            topic_id, endpoint, ..
        } => {
            let oci = res.oci.ok_or_else(|| missing("the oci: section"))?;
            Arc::new(oci_notifications::OciNotificationsSink::new(
                id,
                topic_id.clone(),
                endpoint.clone(),
                oci,
            ))
        }
        SinkConfig::Slack { blocks, .. } => {
            let secret = res.secret.ok_or_else(|| missing("the secretRef value"))?;
            Arc::new(SlackSink::new(id, &secret, *blocks, res.agent, &res.http)?)
        }
    })
}

/// Builds every sink, reading each `secretRef` from the cluster (`agent.namespace` by
/// default). The first sink that cannot be built fails the whole set, naming the sink.
pub async fn build_all(
    cfg: &AlertsConfig,
    client: &Client,
    agent: &AgentInfo,
    http: &client::Options,
    oci: Option<Arc<crate::oci::Shared>>,
) -> Result<Vec<Arc<dyn Sink>>> {
    let secrets = SecretResolver::new(Some(client.clone()), &agent.namespace);
    let mut sinks = Vec::with_capacity(cfg.sinks.len());
    for s in &cfg.sinks {
        let failed = |message: String| Error::Config {
            sink: s.id(),
            message,
        };
        let res = SinkResources {
            client: Some(client.clone()),
            agent: agent.clone(),
            secret: None,
            http: http.clone(),
            oci: oci.clone(),
        };
        let sink: Arc<dyn Sink> = match s.credential() {
            Some(Credential::Kubernetes(r)) => {
                let secret = secrets.key(r).await.map_err(|e| failed(e.to_string()))?;
                let secret = Some(secret);
                build(s, SinkResources { secret, ..res })?
            }
            Some(Credential::OciVault(v)) => {
                let oci = oci
                    .clone()
                    .ok_or_else(|| failed("ociVault needs the oci: section".into()))?;
                let value = crate::oci::vault::secret(&oci, v).await;
                let value = SecretBytes::new(value.map_err(|e| failed(e.to_string()))?);
                let every = oci.vault_refresh();
                Arc::new(vault_held::VaultHeld::new(s, res, v, oci, every, value)?)
            }
            None => build(s, res)?,
        };
        sinks.push(sink);
    }
    Ok(sinks)
}

/// How much of an error response's body is read: enough for a reason, never a flood.
const ERROR_BODY_MAX: usize = 4096;

/// At most `max` bytes of a response's body, as text (a receiver's error page can be of
/// any size, or never end).
async fn read_capped(mut resp: reqwest::Response, max: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < max {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk[..chunk.len().min(max - buf.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The URL rule of [`client::parse_url`], as this module's error naming the sink; a URL
/// that came from a Secret (Slack's) is never shown.
pub(crate) fn parse_url(sink: &str, raw: &str, secret: bool) -> Result<reqwest::Url> {
    client::parse_url(raw).map_err(|why| Error::Config {
        sink: sink.to_string(),
        message: if secret {
            format!("URL from the Secret: {why}")
        } else {
            format!("url {}: {why}", client::redact(raw, false))
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_error_body_is_read_only_up_to_its_cap() {
        // A receiver that answers 400 with 8 MiB on one line.
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    "x".repeat(8 * 1024 * 1024),
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = client::build(&client::Options::default()).unwrap();
        let req = http.post(format!("http://{addr}/hook")).body("{}");
        match post("webhook/ops", "http://127.0.0.1/hook", req).await {
            Err(Error::Status { status, body, .. }) => {
                assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
                assert!(
                    body.len() <= 200 && body.starts_with("xxx"),
                    "{}",
                    body.len()
                );
            }
            other => panic!("{other:?}"),
        }
        let big = http
            .post(format!("http://{addr}/hook"))
            .send()
            .await
            .unwrap();
        assert_eq!(read_capped(big, ERROR_BODY_MAX).await.len(), ERROR_BODY_MAX);
    }
}
