//! The Slack sink: a Slack-compatible incoming webhook, plain text plus Block Kit.

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
