//! The Slack sink: a Slack-compatible incoming webhook, plain text plus Block Kit.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{AgentInfo, Alert, Sink, parse_url, post};
use crate::http::client;
use crate::notify::event::show;
use crate::notify::{Error, Event, Result, Severity};
use crate::secrets::SecretBytes;

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
        http: &client::Options,
    ) -> Result<Self> {
        let id = id.into();
        let raw = std::str::from_utf8(url.expose()).map_err(|_| Error::Config {
            sink: id.clone(),
            message: "URL from the Secret is not UTF-8".into(),
        })?;
        let parsed = parse_url(&id, raw, true)?;
        let client = client::build(http).map_err(|message| Error::Config {
            sink: id.clone(),
            message,
        })?;
        Ok(SlackSink {
            shown_url: client::redact(raw, true),
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
        // Agent-wide events (the OCI identity) name no sync.
        let sync = match e.sync() {
            "" => String::new(),
            s => format!("sync `{}` · ", mrkdwn(s)),
        };
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": format!(
                "{sync}{} {} · {}",
                mrkdwn(&self.agent.name), mrkdwn(&self.agent.instance), alert.time
            )}],
        }));
        json!({ "text": text, "blocks": blocks })
    }
}

/// How many alerts a batched Slack message lists; the rest are counted.
const BATCH_LINES: usize = 40;

impl SlackSink {
    /// One message for alerts that waited on the rate limit: a count, then one line per
    /// alert (the first [`BATCH_LINES`]), then how many more.
    pub fn batch_body(&self, alerts: &[Arc<Alert>]) -> Value {
        let mut lines: Vec<String> = alerts
            .iter()
            .take(BATCH_LINES)
            .map(|a| format!("• {}", mrkdwn(&a.event.summary())))
            .collect();
        if alerts.len() > BATCH_LINES {
            lines.push(format!("… and {} more", alerts.len() - BATCH_LINES));
        }
        let text = format!(
            "{} alerts from {} {}:\n{}",
            alerts.len(),
            mrkdwn(&self.agent.name),
            mrkdwn(&self.agent.instance),
            lines.join("\n")
        );
        json!({ "text": text })
    }

    async fn post_json(&self, body: &Value) -> Result<()> {
        let body = serde_json::to_vec(body).expect("JSON value");
        let req = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        post(&self.id, &self.shown_url, req).await
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
        Box::pin(async move { self.post_json(&self.body(alert)).await })
    }

    fn deliver_batch<'a>(&'a self, alerts: &'a [Arc<Alert>]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.post_json(&self.batch_body(alerts)).await })
    }
}
