//! One of each HTTP piece the agent needs, shared by every stage that speaks HTTP: the
//! hardened server behind the webhook and metrics ports, the client builder behind the
//! alert sinks (rustls, ring, no redirects), the HMAC-SHA256 signature both webhook
//! directions use, the rate limiter (governor) and the retry backoff (backon).

pub mod backoff;
pub mod client;
pub mod limit;
pub mod server;
pub mod signature;
