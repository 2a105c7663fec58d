//! OKE workload identity (resource principal 2.2): the pod's service-account token is
//! exchanged at `https://$KUBERNETES_SERVICE_HOST:12250/resourcePrincipalSessionTokens` for a
//! resource principal session token (RPST), bound to a fresh in-memory RSA-2048 session
//! key; requests are then signed with `keyId="ST$<rpst>"` and that key. The exchange's TLS
//! is verified against the cluster CA only, for the IP address it names. Nothing is
//! stored: a new key and a new token at every refresh.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::Credentials;
use crate::oci::signing::PrivateKey;

pub const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The port the SDKs use; fixed there, configurable here (tests).
pub const PORT: u16 = 12250;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("workload identity: {0} is not set (is this a pod of an OKE enhanced cluster?)")]
    Unset(&'static str),
    #[error(
        "workload identity: OCI_RESOURCE_PRINCIPAL_VERSION is {0:?}; only 2.2 (OKE workload identity) is supported"
    )]
    Version(String),
    #[error("workload identity: {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("workload identity: {0}")]
    Client(String),
    #[error("workload identity: the token exchange at {url} failed: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "workload identity: the token exchange refused the service account (403): the cluster must \
         be an enhanced cluster, and the pod's service-account token valid ({body})"
    )]
    Refused { body: String },
    #[error("workload identity: the token exchange answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("workload identity: the token exchange's answer is not a session token: {0}")]
    Answer(&'static str),
    #[error(transparent)]
    Key(#[from] crate::oci::signing::Error),
}

/// Where the exchange is and what it is given: what an OKE pod has, every path overridable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub service_host: String,
    pub port: u16,
    pub token_path: PathBuf,
    pub ca_path: PathBuf,
    pub region: Option<String>,
}

impl Options {
    /// From the environment an OKE pod gets (`OCI_RESOURCE_PRINCIPAL_VERSION=2.2`,
    /// `KUBERNETES_SERVICE_HOST`, `OCI_RESOURCE_PRINCIPAL_REGION`,
    /// `OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH`), and the default token and CA files.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// From variables `get` looks up.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let var = |name| get(name).filter(|v| !v.is_empty());
        match var("OCI_RESOURCE_PRINCIPAL_VERSION").as_deref() {
            Some("2.2") => {}
            Some(other) => return Err(Error::Version(other.to_owned())),
            None => return Err(Error::Unset("OCI_RESOURCE_PRINCIPAL_VERSION")),
        }
        Ok(Options {
            service_host: var("KUBERNETES_SERVICE_HOST")
                .ok_or(Error::Unset("KUBERNETES_SERVICE_HOST"))?,
            port: PORT,
            token_path: PathBuf::from(TOKEN_PATH),
            ca_path: var("OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH")
                .map_or_else(|| PathBuf::from(CA_PATH), PathBuf::from),
            region: var("OCI_RESOURCE_PRINCIPAL_REGION"),
        })
    }

    fn url(&self) -> String {
        let host = if self.service_host.contains(':') {
            format!("[{}]", self.service_host)
        } else {
            self.service_host.clone()
        };
        format!(
            "https://{host}:{}/resourcePrincipalSessionTokens",
            self.port
        )
    }
}

/// One RPST and the key it is bound to.
#[derive(Clone)]
pub struct Session {
    rpst: String,
    key: Arc<PrivateKey>,
    pub issued: SystemTime,
    pub expires: SystemTime,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("issued", &self.issued)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn credentials(&self) -> Credentials {
        Credentials {
            key_id: format!("ST${}", self.rpst),
            key: self.key.clone(),
        }
    }

    /// When to refresh: half the token's life, as the SDKs do, moved by up to ±5%.
    pub fn refresh_at(&self, jitter: f64) -> SystemTime {
        let life = self.expires.duration_since(self.issued).unwrap_or_default();
        let half = life.as_secs_f64() / 2.0;
        let at = half + half * 0.1 * (jitter.clamp(0.0, 1.0) - 0.5);
        self.issued + Duration::from_secs_f64(at.max(0.0))
    }
}

/// The current session, refreshed in the background at half its life (a new key each
/// time); a failed refresh keeps the current one until it expires, and says so.
pub struct Refresher {
    opts: Options,
    current: std::sync::RwLock<Session>,
    last_error: std::sync::Mutex<Option<String>>,
    /// One exchange at a time (the background one, or one after a 401).
    exchanging: tokio::sync::Mutex<()>,
}

impl Refresher {
    /// Exchanges once (an error here is the caller's to report), then keeps refreshing
    /// until the returned handle is dropped.
    pub async fn start(opts: Options) -> Result<Arc<Self>, Error> {
        let session = exchange(&opts).await?;
        let me = Arc::new(Refresher {
            opts,
            current: std::sync::RwLock::new(session),
            last_error: std::sync::Mutex::new(None),
            exchanging: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(refresh_loop(Arc::downgrade(&me)));
        Ok(me)
    }

    pub fn session(&self) -> Session {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last refresh's error, until a refresh succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Exchanges now (after a 401), unless another exchange finished since `seen` was issued.
    pub async fn refresh(&self, seen: SystemTime) -> Result<(), Error> {
        let _one = self.exchanging.lock().await;
        if self.session().issued > seen {
            return Ok(());
        }
        let result = exchange(&self.opts).await;
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(session) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = session;
                *last = None;
                Ok(())
            }
            Err(e) => {
                *last = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// Sleeps to each refresh time and refreshes; after a failure, retries sooner (every 5 s
/// doubling to a minute), never past the token's expiry. Ends with its refresher.
async fn refresh_loop(me: std::sync::Weak<Refresher>) {
    let mut retry = Duration::from_secs(5);
    loop {
        let Some(r) = me.upgrade() else { return };
        let session = r.session();
        let at = if r.last_error().is_some() {
            SystemTime::now() + retry
        } else {
            session.refresh_at(jitter())
        };
        drop(r);
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait).await;
        let Some(r) = me.upgrade() else { return };
        match r.refresh(session.issued).await {
            Ok(()) => retry = Duration::from_secs(5),
            Err(e) => {
                let left = session
                    .expires
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tracing::error!(error = %e, valid_for = ?left, "OCI workload identity refresh failed; the current token is kept until it expires");
                retry = (retry * 2).min(Duration::from_secs(60));
            }
        }
    }
}

fn jitter() -> f64 {
    use rsa::rand_core::RngCore;
    f64::from(rsa::rand_core::OsRng.next_u32()) / f64::from(u32::MAX)
}

/// Exchanges the service-account token for a new session, with a new key.
pub async fn exchange(opts: &Options) -> Result<Session, Error> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let token = String::from_utf8_lossy(&read(&opts.token_path)?)
        .trim()
        .to_owned();
    let ca = read(&opts.ca_path)?;
    let client =
        crate::http::client::build_with_roots(&Default::default(), &ca).map_err(Error::Client)?;
    // RSA key generation takes a while: off the async threads.
    let key = tokio::task::spawn_blocking(PrivateKey::generate)
        .await
        .map_err(|e| Error::Client(e.to_string()))??;
    let url = opts.url();
    let response = client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("opc-request-id", request_id())
        .body(serde_json::json!({"podKey": key.public_spki_base64()}).to_string())
        .send()
        .await
        .map_err(|e| Error::Unreachable {
            url: url.clone(),
            reason: crate::http::client::describe(e),
        })?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| Error::Unreachable {
        url: url.clone(),
        reason: crate::http::client::describe(e),
    })?;
    let shown = || crate::core::truncate(&String::from_utf8_lossy(&body), 300);
    match status.as_u16() {
        200..=299 => {}
        403 => return Err(Error::Refused { body: shown() }),
        s => {
            return Err(Error::Status {
                status: s,
                body: shown(),
            });
        }
    }
    let rpst = decode_answer(&body)?;
    let (issued, expires) = lifetime(&rpst)?;
    Ok(Session {
        rpst,
        key: Arc::new(key),
        issued,
        expires,
    })
}

/// The RPST from the exchange's answer: a JSON string of base64 of `{"token": "ST$<rpst>"}`
/// (the first three characters dropped whatever they are, as every SDK does).
fn decode_answer(body: &[u8]) -> Result<String, Error> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Error::Answer("not UTF-8"))?
        .trim();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let decoded = STANDARD
        .decode(text)
        .map_err(|_| Error::Answer("not base64"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&decoded).map_err(|_| Error::Answer("not JSON"))?;
    let token = value["token"]
        .as_str()
        .ok_or(Error::Answer("no token field"))?;
    let rpst = token
        .get(3..)
        .filter(|t| !t.is_empty())
        .ok_or(Error::Answer("the token is empty"))?;
    Ok(rpst.to_owned())
}

/// `iat` and `exp` of a JWT (read, not verified: OCI verifies it).
fn lifetime(jwt: &str) -> Result<(SystemTime, SystemTime), Error> {
    let mut parts = jwt.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Answer("the token is not a JWT"));
    };
    let claims = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .ok_or(Error::Answer("the token's claims do not decode"))?;
    let at = |name: &str| {
        claims[name]
            .as_u64()
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
    };
    match (at("iat"), at("exp")) {
        (Some(iat), Some(exp)) if exp > iat => Ok((iat, exp)),
        _ => Err(Error::Answer(
            "the token has no iat and exp, or exp is not after iat",
        )),
    }
}

/// Three random 16-byte hex strings joined by `/`, as the SDKs make them.
pub fn request_id() -> String {
    use rsa::rand_core::RngCore;
    let hex = || {
        let mut bytes = [0u8; 16];
        rsa::rand_core::OsRng.fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    format!("{}/{}/{}", hex(), hex(), hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    #[test]
    fn the_answer_decodes_quoted_or_not_and_the_prefix_is_dropped() {
        let rpst = jwt(serde_json::json!({"iat": 100, "exp": 160}));
        let inner = STANDARD.encode(serde_json::json!({"token": format!("ST${rpst}")}).to_string());
        assert_eq!(
            decode_answer(format!("\"{inner}\"").as_bytes()).unwrap(),
            rpst
        );
        assert_eq!(decode_answer(inner.as_bytes()).unwrap(), rpst);
        let (iat, exp) = lifetime(&rpst).unwrap();
        assert_eq!(exp.duration_since(iat).unwrap(), Duration::from_secs(60));
        for (body, why) in [
            ("\"!!\"", "not base64"),
            ("\"e30=\"", "no token field"),
            (
                &*format!("\"{}\"", STANDARD.encode("{\"token\":\"ST$\"}")),
                "the token is empty",
            ),
        ] {
            let err = decode_answer(body.as_bytes()).unwrap_err();
            assert!(err.to_string().ends_with(why), "{err}");
        }
        assert!(lifetime("a.b").is_err());
        assert!(lifetime(&jwt(serde_json::json!({"iat": 5}))).is_err());
    }

    #[test]
    fn refresh_is_at_half_life_within_five_percent() {
        let issued = UNIX_EPOCH + Duration::from_secs(1000);
        let s = Session {
            rpst: "x".into(),
            key: Arc::new(PrivateKey::generate().unwrap()),
            issued,
            expires: issued + Duration::from_secs(200),
        };
        assert_eq!(s.refresh_at(0.5), issued + Duration::from_secs(100));
        assert_eq!(s.refresh_at(0.0), issued + Duration::from_secs(95));
        assert_eq!(s.refresh_at(1.0), issued + Duration::from_secs(105));
        assert!(!format!("{s:?}").contains("rpst"));
    }

    #[test]
    fn the_environment_of_an_oke_pod_is_required() {
        let vars = |pairs: &[(&str, &str)]| {
            let map: std::collections::HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Options::from_vars(move |k| map.get(k).cloned())
        };
        let err = vars(&[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("OCI_RESOURCE_PRINCIPAL_VERSION is not set"),
            "{err}"
        );
        let err = vars(&[("OCI_RESOURCE_PRINCIPAL_VERSION", "1.1")]).unwrap_err();
        assert!(err.to_string().contains("only 2.2"), "{err}");
        let err = vars(&[("OCI_RESOURCE_PRINCIPAL_VERSION", "2.2")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("KUBERNETES_SERVICE_HOST is not set"),
            "{err}"
        );
        let pod = [
            ("OCI_RESOURCE_PRINCIPAL_VERSION", "2.2"),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("OCI_RESOURCE_PRINCIPAL_REGION", "us-ashburn-1"),
        ];
        let o = vars(&pod).unwrap();
        assert_eq!(
            o.url(),
            "https://10.96.0.1:12250/resourcePrincipalSessionTokens"
        );
        assert_eq!(o.region.as_deref(), Some("us-ashburn-1"));
        assert_eq!(o.token_path, PathBuf::from(TOKEN_PATH));
    }
}
