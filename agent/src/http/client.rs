//! The one HTTP client builder for outgoing calls (the alert sinks; OCI plugs in later):
//! rustls with ring, as kube uses (one crypto provider in the binary), roots from the
//! platform, timeouts, no redirects; and the rule every configured endpoint URL passes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Timeouts of a client.
#[derive(Debug, Clone)]
pub struct Options {
    /// The whole request, connection to response body. A peer slower than this counts as down.
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A client with `opts`' timeouts; the error is a message fit for a log line.
pub fn build(opts: &Options) -> Result<reqwest::Client, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth();
    finish(opts, tls)
}

/// A client that trusts only the certificates in `pem` (a cluster's CA, a test CA): for
/// endpoints whose CA the platform does not know, such as OKE's token exchange.
pub fn build_with_roots(opts: &Options, pem: &[u8]) -> Result<reqwest::Client, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("CA certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("CA certificates: none in the file".into());
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    finish(opts, tls)
}

/// A client error with its causes (`error sending request: connection refused`), the URL
/// left out: the caller names the endpoint, redacted as it needs.
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn finish(opts: &Options, tls: rustls::ClientConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(opts.timeout)
        .connect_timeout(opts.connect_timeout)
        // A redirect would carry the body and its signature to a place nobody configured.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(format!("gitops-agent/{}", crate::VERSION))
        .build()
        .map_err(|e| e.without_url().to_string())
}

/// `https://`, or `http://` to a loopback address; a host; no credentials in the URL.
/// The error says why, without the URL (the caller names it, redacted as it needs).
pub fn parse_url(raw: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| e.to_string())?;
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
        "http" => return Err("http:// is only allowed to a loopback address; use https://".into()),
        other => return Err(format!("scheme {other:?} is not https")),
    }
    if host.is_empty() {
        return Err("no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not allowed".into());
    }
    Ok(url)
}

/// A URL fit for messages: scheme, host and port always; the path only when the URL is not
/// itself a secret; never userinfo, query or fragment (tokens live there).
pub fn redact(raw: &str, secret: bool) -> String {
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
