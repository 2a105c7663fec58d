//! OCI Notifications messages, once their Basic credentials are verified. A subscription
//! confirmation (`X-OCI-NS-ConfirmationURL`) is confirmed by a GET of that URL, but only for
//! a topic some source names and only to a permitted origin; any other message for such a
//! topic triggers a fetch of those sources, through the same coalescing and rate limits as
//! a push. The body is never read for meaning.

use axum::http::HeaderMap;

use super::verify::header_str;
use super::{Accepted, Error, Provider, Push, Result, Webhooks};

const TOPIC: &str = "x-oci-ns-topicocid";
const CONFIRMATION_URL: &str = "x-oci-ns-confirmationurl";
const MESSAGE_ID: &str = "x-oci-ns-messageid";

impl Webhooks {
    pub(super) async fn oci_notification(&self, headers: &HeaderMap) -> Result<Accepted> {
        let topic = header_str(headers, TOPIC).ok_or(Error::MissingHeader(TOPIC))?;
        let push = Push {
            topic: Some(topic.to_owned()),
            ..Default::default()
        };
        let known = self.inner.sources.borrow().iter().any(|s| s.matches(&push));
        if !known {
            // A topic nobody follows: confirmed for no one, triggers nothing.
            return Ok(Accepted::Ignored);
        }
        if let Some(url) = header_str(headers, CONFIRMATION_URL) {
            self.confirm(topic, url).await?;
            return Ok(Accepted::Ignored);
        }
        let delivery = header_str(headers, MESSAGE_ID).map(str::to_owned);
        self.dispatch(Provider::OciNotifications, delivery, &push)
    }

    async fn confirm(&self, topic: &str, raw: &str) -> Result<()> {
        let confirm = self.inner.opts.oci_confirm.as_ref().ok_or(Error::Payload(
            "subscription confirmation is not configured",
        ))?;
        let url = reqwest::Url::parse(raw)
            .map_err(|_| Error::Payload("the confirmation URL is not a URL"))?;
        if !confirm.permits(&url) || !url.username().is_empty() {
            return Err(Error::Payload(
                "the confirmation URL is not an OCI Notifications endpoint",
            ));
        }
        let response = confirm.client.get(url).send().await;
        match response {
            Ok(r) if r.status().is_success() => {
                tracing::info!(%topic, "OCI Notifications subscription confirmed");
                Ok(())
            }
            Ok(r) => {
                tracing::warn!(%topic, status = %r.status(), "OCI Notifications confirmation refused");
                Err(Error::Unavailable)
            }
            Err(e) => {
                tracing::warn!(%topic, error = %crate::http::client::describe(e), "OCI Notifications confirmation failed");
                Err(Error::Unavailable)
            }
        }
    }
}
