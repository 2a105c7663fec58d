//! The generic webhook sink: a JSON body signed with HMAC-SHA256.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::json;

use super::{AgentInfo, Alert, Sink, parse_url, post};
use crate::http::client;
use crate::http::signature::signature;
use crate::notify::{Error, Result};
use crate::secrets::SecretBytes;

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

impl WebhookSink {
    pub fn new(
        id: impl Into<String>,
        url: &str,
        key: SecretBytes,
        agent: AgentInfo,
        http: &client::Options,
    ) -> Result<Self> {
        let id = id.into();
        let parsed = parse_url(&id, url, false)?;
        if key.is_empty() {
            return Err(Error::Config {
                sink: id,
                message: "the signing secret is empty".into(),
            });
        }
        let client = client::build(http).map_err(|message| Error::Config {
            sink: id.clone(),
            message,
        })?;
        Ok(WebhookSink {
            shown_url: client::redact(url, false),
            id,
            url: parsed,
            key,
            agent,
            client,
        })
    }

    /// `{"event": …, "key": …, "agent": …, "time": RFC 3339}`.
    pub fn body(&self, alert: &Alert) -> Vec<u8> {
        serde_json::to_vec(&self.value(alert)).expect("alert JSON has string keys only")
    }

    fn value(&self, alert: &Alert) -> serde_json::Value {
        json!({
            "event": alert.event,
            "key": alert.event.key(),
            "agent": self.agent,
            "time": alert.time.to_string(),
        })
    }

    /// `{"batch": [<body>, …], "count": n, "agent": …}`: alerts that waited on the rate
    /// limit, in the order they were raised, signed as one body.
    pub fn batch_body(&self, alerts: &[Arc<Alert>]) -> Vec<u8> {
        let v = json!({
            "batch": alerts.iter().map(|a| self.value(a)).collect::<Vec<_>>(),
            "count": alerts.len(),
            "agent": self.agent,
        });
        serde_json::to_vec(&v).expect("alert JSON has string keys only")
    }

    async fn post_signed(&self, body: Vec<u8>) -> Result<()> {
        let req = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature(self.key.expose(), &body))
            .body(body);
        post(&self.id, &self.shown_url, req).await
    }
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.id
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.post_signed(self.body(alert)))
    }

    fn deliver_batch<'a>(&'a self, alerts: &'a [Arc<Alert>]) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.post_signed(self.batch_body(alerts)))
    }
}
