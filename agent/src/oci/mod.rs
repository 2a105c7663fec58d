//! Oracle Cloud: the identity the agent holds (`auth`) and the request signature every
//! OCI call carries (`signing`), on the one HTTP client. A [`Request`] can also be signed
//! by hand, as the `oci raw-request` CLI command does: the tool for "why does OCI say 401".

pub mod auth;
pub mod containerengine;
pub mod devops;
pub mod object_storage;
pub mod signing;
pub mod vault;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Auth(#[from] auth::Error),
    #[error(transparent)]
    Signing(#[from] signing::Error),
    #[error("{url}: not a URL: {reason}")]
    Url { url: String, reason: String },
    #[error("--date {0:?}: not an HTTP date (like \"Tue, 01 Dec 2026 19:05:35 GMT\")")]
    Date(String),
    #[error("header {0:?}: expected NAME:VALUE with a valid name and value")]
    Header(String),
    #[error(transparent)]
    Workload(#[from] auth::workload::Error),
    #[error("{0}")]
    Client(String),
    #[error("{url}: {reason}")]
    Send { url: String, reason: String },
    #[error("OCI Vault secret {secret_id}: {reason}")]
    Vault { secret_id: String, reason: String },
    /// A service's refusal: `what` names the call and its object.
    #[error("{what}: {status} {code}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Api {
        what: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{what}: {reason}")]
    Answer { what: String, reason: String },
    /// An answer over its cap: `limit` says of what (`134217728 bytes`, `40000 objects`).
    #[error("{what}: more than {limit}")]
    TooLarge { what: String, limit: String },
    #[error(
        "{service}: no endpoint configured (oci.endpoints.{service}) and no region (oci.region or OCI_RESOURCE_PRINCIPAL_REGION)"
    )]
    NoEndpoint { service: &'static str },
}

impl Error {
    /// Worth trying again later: the service or the network failed, not the request.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Send { .. } => true,
            Error::Api { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// A failed answer as an error: OCI's error bodies are `{"code", "message"}`; the message
/// is kept short (these services put no secret material in it).
pub async fn api_error(what: String, response: reqwest::Response) -> Error {
    let status = response.status().as_u16();
    let body = read_capped(response, 4096, &what).await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let text = |k: &str| v[k].as_str().unwrap_or("").to_owned();
    let mut message = text("message");
    if message.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|i| message.is_char_boundary(*i))
            .unwrap_or(0);
        message.truncate(cut);
        message.push('…');
    }
    Error::Api {
        what,
        status,
        code: text("code"),
        message,
    }
}

/// Sends a signed request; a failed answer is an [`Error::Api`] naming `what`.
pub(crate) async fn call(
    shared: &Shared,
    method: &str,
    url: &str,
    body: Vec<u8>,
    headers: &[String],
    what: &str,
) -> Result<reqwest::Response, Error> {
    let client = shared.client().await?;
    let request = request(method, url, body, None, headers)?;
    let response = client.send(&request).await?;
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(api_error(what.to_owned(), response).await)
    }
}

/// A response header's value, when it is text.
pub(crate) fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A response's JSON body, at most `max` bytes.
pub(crate) async fn read_json(
    response: reqwest::Response,
    max: u64,
    what: &str,
) -> Result<serde_json::Value, Error> {
    let body = read_capped(response, max, what).await?;
    serde_json::from_slice(&body).map_err(|_| Error::Answer {
        what: what.to_owned(),
        reason: "the answer is not JSON".into(),
    })
}

/// A response's body, refused as soon as it passes `max` bytes (the declared length is
/// checked first, then what actually arrives).
pub async fn read_capped(
    mut response: reqwest::Response,
    max: u64,
    what: &str,
) -> Result<Vec<u8>, Error> {
    let too_large = || Error::TooLarge {
        what: what.to_owned(),
        limit: format!("{max} bytes"),
    };
    if response.content_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| Error::Send {
        url: what.to_owned(),
        reason: crate::http::client::describe(e),
    })? {
        if out.len() as u64 + chunk.len() as u64 > max {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A path segment as the SDKs encode one (`quote(v, safe='')`: all but unreserved).
pub fn segment(value: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let encoded = percent_encoding::utf8_percent_encode(value, SET).to_string();
    // Object Storage keeps a name of "." or ".." a literal key, not a path step.
    match encoded.as_str() {
        "." => "%2E".into(),
        ".." => "%2E%2E".into(),
        _ => encoded,
    }
}

/// The agent's OCI client, made on first use from the `oci:` configuration, and again on
/// a later use when that failed: an exchange that fails at start must not stop what needs
/// no OCI, and may work a minute later.
pub struct Shared {
    cfg: crate::config::oci::OciConfig,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// Why the client could not be made, the last time that was tried.
    failed: std::sync::Mutex<Option<String>>,
}

/// What is wrong with the identity, as an alert or a status says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// `None` while it works.
    pub problem: Option<String>,
    pub expires: Option<SystemTime>,
}

impl Shared {
    /// The process's one client for `cfg`: sources, sinks and the webhook share one
    /// identity (one token exchange, one refresh), and a reload with another `oci:`
    /// section gets a new one.
    pub fn for_config(cfg: &crate::config::oci::OciConfig) -> Arc<Self> {
        static ONE: std::sync::Mutex<Option<Arc<Shared>>> = std::sync::Mutex::new(None);
        let mut one = ONE.lock().unwrap_or_else(|p| p.into_inner());
        match one.as_ref() {
            Some(s) if s.cfg == *cfg => s.clone(),
            _ => {
                let s = Shared::new(cfg.clone());
                *one = Some(s.clone());
                s
            }
        }
    }

    pub fn new(cfg: crate::config::oci::OciConfig) -> Arc<Self> {
        Arc::new(Shared {
            cfg,
            client: tokio::sync::Mutex::new(None),
            failed: std::sync::Mutex::new(None),
        })
    }

    /// How often Vault-held credentials are read again.
    pub fn vault_refresh(&self) -> Duration {
        self.cfg.vault_refresh()
    }

    /// The configured endpoint of a service (`secrets`, `notifications`), if any.
    pub fn endpoint(&self, service: &str) -> Option<String> {
        self.cfg.endpoints.get(service).cloned()
    }

    /// Where `service` is: the configured endpoint, else `template` with `{region}` filled.
    pub fn base(&self, service: &'static str, template: &str) -> Result<String, Error> {
        let base = match self.endpoint(service) {
            Some(e) => e,
            None => template.replace(
                "{region}",
                &self.region().ok_or(Error::NoEndpoint { service })?,
            ),
        };
        Ok(base.trim_end_matches('/').to_owned())
    }

    /// The region calls go to: the configuration's, else the pod's.
    pub fn region(&self) -> Option<String> {
        let env = std::env::var("OCI_RESOURCE_PRINCIPAL_REGION").ok();
        self.cfg.region.clone().or(env.filter(|r| !r.is_empty()))
    }

    pub async fn client(&self) -> Result<Arc<Client>, Error> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let made = match identity(&self.cfg, self.region()).await {
            Ok(identity) => Client::new(identity, self.cfg.ca_file.as_deref()),
            Err(e) => Err(e),
        };
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let client = Arc::new(made.inspect_err(|e| *failed = Some(e.to_string()))?);
        *failed = None;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The identity's state now; `None` while it is being made (nothing to say yet).
    pub fn state(&self) -> Option<State> {
        let slot = self.client.try_lock().ok()?;
        Some(match slot.as_ref() {
            None => State {
                problem: self
                    .failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                expires: None,
            },
            Some(c) => {
                let identity = c.identity();
                let expires = identity.expires();
                let expired = expires.is_some_and(|t| t <= SystemTime::now());
                let problem = identity.refresh_error().map(|e| {
                    let when = match expires.and_then(|t| t.duration_since(SystemTime::now()).ok())
                    {
                        Some(left) if !expired => format!(
                            "the current token is kept; it expires in {}",
                            humantime::format_duration(Duration::from_secs(left.as_secs()))
                        ),
                        _ => "the token has expired: OCI calls fail until a refresh works".into(),
                    };
                    format!("token refresh failed: {e}; {when}")
                });
                State { problem, expires }
            }
        })
    }
}

/// The identity the configuration names, what an OKE pod's environment says filling in.
async fn identity(
    cfg: &crate::config::oci::OciConfig,
    region: Option<String>,
) -> Result<auth::Identity, Error> {
    use crate::config::oci::OciAuth;
    use auth::workload;
    if let (OciAuth::ConfigFile, Some(f)) = (cfg.auth, &cfg.config_file) {
        return Ok(auth::Identity::from_config_file(&f.path, &f.profile)?);
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let t = &cfg.token_exchange;
    let host = t.host.clone().or_else(|| env("KUBERNETES_SERVICE_HOST"));
    let ca = t
        .cluster_ca
        .clone()
        .or_else(|| env("OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH").map(Into::into));
    let opts = workload::Options {
        service_host: host.ok_or(workload::Error::Unset("KUBERNETES_SERVICE_HOST"))?,
        port: t.port.unwrap_or(workload::PORT),
        token_path: t
            .service_account_token
            .clone()
            .unwrap_or_else(|| workload::TOKEN_PATH.into()),
        ca_path: ca.unwrap_or_else(|| workload::CA_PATH.into()),
        region,
    };
    Ok(auth::Identity::workload(opts).await?)
}

/// Signs and sends OCI requests with one identity; a 401 renews the credentials once (a
/// workload identity's token) and sends the request again, and an idempotent request whose
/// pooled connection was closed goes once more.
pub struct Client {
    http: reqwest::Client,
    identity: auth::Identity,
}

impl Client {
    /// `ca_file`: the only CA to trust (PEM), instead of the platform's roots.
    pub fn new(identity: auth::Identity, ca_file: Option<&std::path::Path>) -> Result<Self, Error> {
        Ok(Client {
            http: http_client(ca_file)?,
            identity,
        })
    }

    pub fn identity(&self) -> &auth::Identity {
        &self.identity
    }

    /// Sends `request`, signed afresh at each attempt.
    pub async fn send(&self, request: &Request) -> Result<reqwest::Response, Error> {
        let mut renewed = false;
        loop {
            let creds = self.identity.credentials();
            let headers = request.sign(&creds)?;
            let url = request.uri.to_string();
            let send = || {
                let req = self.http.request(request.method.clone(), &url);
                req.headers(headers.clone())
                    .body(request.body.clone())
                    .send()
            };
            let response = match send().await {
                // A pooled connection the server closed meanwhile: an idempotent request
                // goes once more, on a new connection.
                Err(e) if e.is_request() && request.method.is_idempotent() => send().await,
                other => other,
            };
            let response = response.map_err(|e| Error::Send {
                url: crate::http::client::redact(&url, false),
                reason: crate::http::client::describe(e),
            })?;
            if response.status() != reqwest::StatusCode::UNAUTHORIZED || renewed {
                return Ok(response);
            }
            renewed = true;
            if !self.identity.renew(&creds).await? {
                return Ok(response);
            }
        }
    }
}

/// The HTTP client for OCI endpoints: trusting only the CA in `ca_file` (a private or test
/// endpoint), else the platform's roots.
pub fn http_client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, Error> {
    let opts = Default::default();
    let client = match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| Error::Client(format!("{}: {e}", path.display())))?;
            crate::http::client::build_with_roots(&opts, &pem)
        }
        None => crate::http::client::build(&opts),
    };
    client.map_err(Error::Client)
}

/// An OCI request as given: signed by [`Request::sign`], by [`Client::send`] at each
/// attempt, or once by hand (`oci raw-request --print-only`).
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub uri: Uri,
    /// What the caller set (`date` when it gave one); signing fills in the rest.
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Request {
    /// The headers to send: the request's own, completed and signed with `creds` (a
    /// missing `date` is now).
    pub fn sign(&self, creds: &auth::Credentials) -> Result<HeaderMap, Error> {
        let mut headers = self.headers.clone();
        headers.remove(http::header::AUTHORIZATION);
        let credentials = (creds.key_id.as_str(), creds.key.as_ref());
        let body_headers = signing::BodyHeaders::ForMethod;
        let (method, uri, body) = (&self.method, &self.uri, &self.body);
        signing::sign(
            method,
            uri,
            &mut headers,
            body,
            credentials,
            body_headers,
            SystemTime::now(),
        )?;
        Ok(headers)
    }
}

/// `method url` with `body`: `date` (an HTTP date, sent as given) instead of the time of
/// signing, and extra `headers` (`name:value`) sent and, where the scheme signs them,
/// signed as given.
pub fn request(
    method: &str,
    url: &str,
    body: Vec<u8>,
    date: Option<&str>,
    headers: &[String],
) -> Result<Request, Error> {
    let method =
        Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|e| Error::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| Error::Url {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    if uri.scheme().is_none() {
        return Err(Error::Url {
            url: url.to_owned(),
            reason: "no scheme (https://...)".into(),
        });
    }
    let mut map = HeaderMap::new();
    for h in headers {
        let (name, value) = h.split_once(':').ok_or_else(|| Error::Header(h.clone()))?;
        let name = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes());
        let value = HeaderValue::from_str(value.trim());
        match (name, value) {
            (Ok(n), Ok(v)) => map.insert(n, v),
            _ => return Err(Error::Header(h.clone())),
        };
    }
    if let Some(d) = date {
        // Sent as given (the signature covers the text), once it reads as a date.
        httpdate::parse_http_date(d).map_err(|_| Error::Date(d.to_owned()))?;
        let value = HeaderValue::from_str(d).map_err(|_| Error::Date(d.to_owned()))?;
        map.insert(http::header::DATE, value);
    }
    Ok(Request {
        method,
        uri,
        headers: map,
        body,
    })
}
