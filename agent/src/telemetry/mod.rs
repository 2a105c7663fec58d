//! What the agent tells its operators about itself: logs (text or JSON, through
//! tracing-subscriber) and Prometheus metrics with the health endpoints.

pub mod logging;
pub mod metrics;
