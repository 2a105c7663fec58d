//! How the agent reaches the Kubernetes API: kubeconfig resolution like kubectl's
//! (`--kubeconfig`, then `KUBECONFIG`, then `~/.kube/config`, then the in-cluster service
//! account), every request counted, API discovery, and the one way to address an object.
//! (Named `cluster`, not `kube`, so the module never shadows the kube crate.)

pub mod discovery;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Args;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig {path}: {source}")]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig {path}: {source}")]
    LoadKubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config) and not in a pod (KUBERNETES_SERVICE_HOST is not set)"
    )]
    NoConfig {
        #[source]
        kubeconfig: kube::config::KubeconfigError,
    },
    #[error("in-cluster service account {path}: {what}")]
    InCluster { path: PathBuf, what: String },
    #[error("kubeconfig from KUBECONFIG or ~/.kube/config: {0}")]
    Default(#[source] kube::config::KubeconfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("{what}: {source}")]
    Api {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Connection flags, shared by every command that talks to a cluster.
#[derive(Debug, Clone, Default, Args)]
#[group(skip)]
#[command(next_help_heading = "Cluster connection")]
pub struct Options {
    /// Path to a kubeconfig file; without it KUBECONFIG, then ~/.kube/config, then the in-cluster service account.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use instead of its current-context.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

/// Where a pod's service-account files are (`token`, `ca.crt`, `namespace`).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Moves [`SERVICE_ACCOUNT_DIR`], for running the binary as a pod would outside one.
pub const SERVICE_ACCOUNT_DIR_ENV: &str = "GITOPS_AGENT_SERVICE_ACCOUNT_DIR";

/// Where the connection settings came from, for logs and `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Environment,
    /// The pod's service account, from this directory.
    InCluster(PathBuf),
}

/// The in-cluster connection: `KUBERNETES_SERVICE_HOST`/`PORT`, the service account's CA
/// and namespace, and its token read from the file each time it is due, since a projected
/// token is rotated by the kubelet under a running pod.
fn in_cluster(host: &str, port: &str, dir: &std::path::Path) -> Result<Config> {
    let fail = |path: PathBuf, what: String| Error::InCluster { path, what };
    let port: u16 = if port.is_empty() {
        443
    } else {
        port.parse().map_err(|_| {
            fail(
                dir.into(),
                format!("KUBERNETES_SERVICE_PORT {port:?} is not a port"),
            )
        })?
    };
    let host = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host.to_string(),
    };
    let url = format!("https://{host}:{port}");
    let uri: http::Uri = url.parse().map_err(|e| {
        fail(
            dir.into(),
            format!("KUBERNETES_SERVICE_HOST gives {url:?}: {e}"),
        )
    })?;
    let ca = dir.join("ca.crt");
    let pem = std::fs::read(&ca).map_err(|e| fail(ca.clone(), e.to_string()))?;
    let certs = ca_certificates(&pem).map_err(|what| fail(ca.clone(), what))?;
    let token = dir.join("token");
    std::fs::metadata(&token).map_err(|e| fail(token.clone(), e.to_string()))?;
    let mut cfg = Config::new(uri);
    cfg.default_namespace = std::fs::read_to_string(dir.join("namespace"))
        .map(|n| n.trim().to_string())
        .unwrap_or_else(|_| "default".into());
    cfg.root_cert = Some(certs);
    cfg.root_cert_file = Some(ca);
    cfg.auth_info.token_file = Some(token.to_string_lossy().into_owned());
    Ok(cfg)
}

/// The DER certificates of a PEM bundle; none is an error.
fn ca_certificates(pem: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut out = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        out.push(
            cert.map_err(|e| format!("not a PEM certificate bundle: {e}"))?
                .to_vec(),
        );
    }
    if out.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(out)
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "kubeconfig {}", p.display()),
            Origin::Environment => f.write_str("KUBECONFIG or ~/.kube/config"),
            Origin::InCluster(dir) => write!(f, "in-cluster service account {}", dir.display()),
        }
    }
}

impl Options {
    /// Resolves the client configuration the way kubectl does.
    pub async fn config(&self) -> Result<(Config, Origin)> {
        let kopts = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        if let Some(path) = &self.kubeconfig {
            let kc = Kubeconfig::read_from(path).map_err(|source| Error::ReadKubeconfig {
                path: path.clone(),
                source,
            })?;
            let cfg = Config::from_custom_kubeconfig(kc, &kopts)
                .await
                .map_err(|source| Error::LoadKubeconfig {
                    path: path.clone(),
                    source,
                })?;
            return Ok((cfg, Origin::File(path.clone())));
        }
        if self.context.is_some() {
            // A context only means something in a kubeconfig: do not fall back to in-cluster.
            let cfg = Config::from_kubeconfig(&kopts)
                .await
                .map_err(Error::Default)?;
            return Ok((cfg, Origin::Environment));
        }
        // kube's own inference reads the service account only from its fixed path; ours
        // takes the same files from a directory that can move (tests run the binary
        // exactly as a pod would, without writing to /var/run).
        let mut cfg = match Config::from_kubeconfig(&kopts).await {
            Ok(cfg) => cfg,
            Err(kubeconfig) => match std::env::var("KUBERNETES_SERVICE_HOST") {
                Ok(host) if !host.is_empty() => {
                    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_default();
                    let dir = std::env::var_os(SERVICE_ACCOUNT_DIR_ENV)
                        .map_or_else(|| PathBuf::from(SERVICE_ACCOUNT_DIR), PathBuf::from);
                    return Ok((in_cluster(&host, &port, &dir)?, Origin::InCluster(dir)));
                }
                _ => return Err(Error::NoConfig { kubeconfig }),
            },
        };
        cfg.apply_debug_overrides();
        Ok((cfg, Origin::Environment))
    }

    pub async fn client(&self) -> Result<(Client, Origin)> {
        let (cfg, origin) = self.config().await?;
        let client = Client::try_from(cfg).map_err(Error::Client)?;
        Ok((client, origin))
    }

    /// A client whose every request is counted by `counter`.
    pub async fn counted_client(&self, counter: &RequestCounter) -> Result<(Client, Origin)> {
        let (cfg, origin) = self.config().await?;
        Ok((counted_client(cfg, counter)?, origin))
    }
}

/// Counts API requests as they leave the client: all of them, real writes (mutating
/// verbs without `dryRun`), and server-side dry-runs. This is how "a resync of an unchanged
/// revision writes nothing" is measured rather than assumed.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    total: AtomicU64,
    writes: AtomicU64,
    dry_runs: AtomicU64,
}

/// A snapshot of a [`RequestCounter`]; subtract two to count what happened between them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub total: u64,
    pub writes: u64,
    pub dry_runs: u64,
}

impl std::ops::Sub for RequestCounts {
    type Output = RequestCounts;
    fn sub(self, o: RequestCounts) -> RequestCounts {
        RequestCounts {
            total: self.total - o.total,
            writes: self.writes - o.writes,
            dry_runs: self.dry_runs - o.dry_runs,
        }
    }
}

impl RequestCounter {
    pub fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            total: self.0.total.load(Ordering::Relaxed),
            writes: self.0.writes.load(Ordering::Relaxed),
            dry_runs: self.0.dry_runs.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn record(&self, method: &http::Method, uri: &http::Uri) {
        self.0.total.fetch_add(1, Ordering::Relaxed);
        if matches!(
            *method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        ) {
            return;
        }
        let dry_run = uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("dryRun=")));
        if dry_run {
            self.0.dry_runs.fetch_add(1, Ordering::Relaxed);
        } else {
            self.0.writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Builds a client from `cfg` with `counter` in its request path.
pub fn counted_client(cfg: Config, counter: &RequestCounter) -> Result<Client> {
    let counter = counter.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        counter.record(req.method(), req.uri());
        req
    });
    let builder = kube::client::ClientBuilder::try_from(cfg).map_err(Error::Client)?;
    Ok(builder.with_layer(&layer).build())
}

/// The object as JSON with `apiVersion` and `kind` set (list items arrive without them).
pub fn to_json(obj: kube::api::DynamicObject, ar: &kube::api::ApiResource) -> serde_json::Value {
    // Serialising a DynamicObject cannot fail: it is metadata and a JSON value.
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.entry("apiVersion")
            .or_insert_with(|| ar.api_version.clone().into());
        m.entry("kind").or_insert_with(|| ar.kind.clone().into());
    }
    v
}

/// The one way to address objects of a kind: in `namespace` when given (a namespaced
/// object), cluster-wide otherwise.
pub fn api_for(
    client: &Client,
    resource: &kube::api::ApiResource,
    namespace: Option<&str>,
) -> Api<kube::api::DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

/// The API server's own message, without kube's wrapping.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// What `check` reports: the server and who the agent is to it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub server_version: String,
    pub username: String,
    pub groups: Vec<String>,
}

/// Asks the API server for its version and for our own identity (SelfSubjectReview, GA since 1.28).
pub async fn identify(client: &Client) -> Result<Identity> {
    let version = client
        .apiserver_version()
        .await
        .map_err(|source| Error::Api {
            what: "GET /version",
            source,
        })?;
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = reviews
        .create(&Default::default(), &SelfSubjectReview::default())
        .await
        .map_err(|source| Error::Api {
            what: "SelfSubjectReview",
            source,
        })?;
    let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
    Ok(Identity {
        server_version: version.git_version,
        username: user.username.unwrap_or_default(),
        groups: user.groups.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_cluster_names_the_file_or_setting_it_cannot_use() {
        let dir = tempfile::tempdir().unwrap();
        let err = |port: &str| {
            in_cluster("10.96.0.1", port, dir.path())
                .unwrap_err()
                .to_string()
        };
        assert!(
            err("x").contains("KUBERNETES_SERVICE_PORT \"x\" is not a port"),
            "{}",
            err("x")
        );
        let ca = dir.path().join("ca.crt");
        assert!(
            err("443").contains(&format!("{}:", ca.display())),
            "{}",
            err("443")
        );
        std::fs::write(&ca, "not pem").unwrap();
        assert!(
            err("443").ends_with("no certificate in it"),
            "{}",
            err("443")
        );
    }

    #[test]
    fn counter_tells_writes_from_reads_and_dry_runs() {
        let c = RequestCounter::default();
        let u = |s: &str| s.parse::<http::Uri>().unwrap();
        c.record(&http::Method::GET, &u("/api/v1/namespaces/a/configmaps/b"));
        c.record(
            &http::Method::PATCH,
            &u("/api/v1/namespaces/a/configmaps/b?fieldManager=x&dryRun=All&force=true"),
        );
        c.record(
            &http::Method::PATCH,
            &u("/api/v1/namespaces/a/configmaps/b?fieldManager=x&force=true"),
        );
        c.record(
            &http::Method::DELETE,
            &u("/api/v1/namespaces/a/configmaps/b"),
        );
        assert_eq!(
            c.snapshot(),
            RequestCounts {
                total: 4,
                writes: 2,
                dry_runs: 1
            }
        );
    }

    #[tokio::test]
    async fn missing_kubeconfig_names_the_path() {
        let opts = Options {
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            context: None,
        };
        let err = opts.config().await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("kubeconfig /nonexistent/kubeconfig:"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unknown_context_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("gitops-agent-kc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\n\
             users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: a\n  context: {cluster: c, user: u}\n\
             current-context: a\n",
        )
        .unwrap();
        let ok = Options {
            kubeconfig: Some(path.clone()),
            context: None,
        }
        .config()
        .await
        .unwrap();
        assert_eq!(ok.0.cluster_url.to_string(), "https://127.0.0.1:1/");
        assert_eq!(ok.1, Origin::File(path.clone()));
        let err = Options {
            kubeconfig: Some(path.clone()),
            context: Some("nope".into()),
        }
        .config()
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
