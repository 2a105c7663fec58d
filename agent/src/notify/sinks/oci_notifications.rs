//! The OCI Notifications sink: PublishMessage (`POST /20181201/topics/{topicId}/messages`,
//! `{"title", "body"}`) signed with the agent's OCI identity. A burst over the rate limit
//! goes as one message listing the alerts (a topic takes about 60 messages a minute).

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::json;

use super::{Alert, Sink};
use crate::notify::{Error, Result};
use crate::oci;

/// OCI caps a message at 64 KiB; the body stays under it.
const MAX_BODY: usize = 60 * 1024;

pub struct OciNotificationsSink {
    id: String,
    topic: String,
    endpoint: Option<String>,
    oci: Arc<oci::Shared>,
}

impl OciNotificationsSink {
    pub fn new(id: String, topic: String, endpoint: Option<String>, oci: Arc<oci::Shared>) -> Self {
        OciNotificationsSink {
            id,
            topic,
            endpoint,
            oci,
        }
    }

    fn url(&self) -> Result<String> {
        let base = match &self.endpoint {
            Some(e) => e.trim_end_matches('/').to_owned(),
            None => match self.oci.region() {
                Some(r) => format!("https://notification.{r}.oraclecloud.com"),
                None => {
                    return Err(Error::Config {
                        sink: self.id.clone(),
                        message: "no endpoint, and no region (oci.region or OCI_RESOURCE_PRINCIPAL_REGION)".into(),
                    });
                }
            },
        };
        Ok(format!("{base}/20181201/topics/{}/messages", self.topic))
    }

    async fn publish(&self, title: &str, body: &str) -> Result<()> {
        let url = self.url()?;
        let failed = |message: String| Error::Oci {
            sink: self.id.clone(),
            message,
        };
        let client = self.oci.client().await.map_err(|e| failed(e.to_string()))?;
        let payload = json!({"title": crate::core::truncate(title, 255), "body": crate::core::truncate(body, MAX_BODY)});
        let body = payload.to_string().into_bytes();
        let request =
            oci::request("POST", &url, body, None, &[]).map_err(|e| failed(e.to_string()))?;
        let response = client
            .send(&request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if response.status().is_success() {
            return Ok(());
        }
        let shown = crate::http::client::redact(&url, false);
        Err(super::status_error(&self.id, &shown, response).await)
    }
}

impl Sink for OciNotificationsSink {
    fn name(&self) -> &str {
        &self.id
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let e = &alert.event;
            self.publish(&format!("gitops-agent: {}", e.reason()), &e.summary())
                .await
        })
    }

    fn deliver_batch<'a>(&'a self, alerts: &'a [Arc<Alert>]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let lines: Vec<String> = alerts.iter().map(|a| a.event.summary()).collect();
            let title = format!("gitops-agent: {} alerts", alerts.len());
            self.publish(&title, &lines.join("\n")).await
        })
    }
}
