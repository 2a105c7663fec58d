//! Alerts: the events worth a person's attention (drift, fights, failed syncs, held-back
//! prunes), the sinks that carry them (Kubernetes Events, signed webhooks, Slack), and their
//! delivery: per sink a bounded queue, a rate limit and retries, so no sink can stall a sync.
//!
//! Secret values never belong in an alert. Callers mask what they put in messages (errors
//! already name subjects, not values); drift on a `Secret` is masked here as well, both by
//! [`Event::drift_detected`] and again by [`Dispatcher::send`] for events built by hand.

pub mod dispatch;
pub mod event;
pub mod sinks;

use std::time::Duration;

pub use crate::config::alerts::{AgentRef, AlertsConfig, SecretKeyRef, SinkConfig};
pub use crate::diff::{FieldDrift, MASK};
pub use dispatch::{
    DeliveryOptions, DeliveryResult, Dispatcher, OnResult, RateLimit, RetryPolicy, SinkStats,
};
pub use event::{Deduper, Event, Severity};
pub use sinks::{AgentInfo, Alert, Sink, SinkResources};

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
    /// OCI could not be reached or refused (an identity not yet obtained, a failed send).
    #[error("alert sink {sink}: {message}")]
    Oci { sink: String, message: String },
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
            Error::Oci { .. } => true,
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

#[cfg(test)]
mod tests;
