//! The agent's configuration file: Git sources and the syncs that apply paths of them.
//! Parsed once, strictly (unknown fields are errors), and validated as a whole: every
//! problem is reported with its file, line and column, not just the first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod alerts;
pub mod oci;
mod raw;
mod validate;

pub use alerts::{AgentRef, AlertsConfig, Credential, OciVaultRef, SecretKeyRef, SinkConfig};
use validate::Validator;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", format_problems(.path, .problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One validation problem at a place in the file (line and column are 1-based; 0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

fn format_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = format!("{}: {} problem(s)", path.display(), problems.len());
    for p in problems {
        out.push_str(&format!(
            "\n  {}:{}:{}: {}",
            path.display(),
            p.line,
            p.column,
            p.message
        ));
    }
    out
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where Git mirrors live.
    pub state_dir: PathBuf,
    /// The agent's own namespace: inventories and status are stored there.
    pub namespace: String,
    pub sources: Vec<Source>,
    pub syncs: Vec<Sync>,
    /// The push-webhook receiver; `None` serves none.
    pub webhook: Option<Webhook>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None` serves none.
    pub metrics_listen: Option<String>,
    pub leader_election: LeaderElection,
    /// How often every managed object is judged afresh for drift.
    pub resync: Duration,
    /// Where alerts go.
    pub alerts: AlertsConfig,
    /// The OCI identity, when anything uses OCI.
    pub oci: Option<oci::OciConfig>,
    /// How many syncs the daemon runs at once (one sync never runs twice at once).
    pub concurrency: usize,
    /// Where the renderer binaries are.
    pub render: Render,
    /// The policy packs every sync must pass, and where packs are.
    pub policies: Policies,
    /// Namespaced rights: the namespaces the agent may manage. Empty: cluster-wide.
    pub scope: Scope,
}

/// `scope: {namespaces: [...]}`: the agent runs with Roles in these namespaces only (the
/// `namespaced` install), so it watches for drift in each of them rather than
/// cluster-wide, and every sync must target one of them. Read at start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    pub namespaces: Vec<String>,
}

/// Policy packs: `<dir>/<pack>/policies.yaml`, ValidatingAdmissionPolicies and bindings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policies {
    #[serde(default = "default_policies_dir")]
    pub dir: PathBuf,
    /// Packs every sync must pass.
    #[serde(default)]
    pub packs: Vec<String>,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            dir: default_policies_dir(),
            packs: Vec::new(),
        }
    }
}

fn default_policies_dir() -> PathBuf {
    PathBuf::from("/etc/gitops-agent/policies")
}

/// The policies one sync must pass besides the global packs and the ones its revision
/// carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyncPolicies {
    /// More packs, for this sync.
    #[serde(default)]
    pub packs: Vec<String>,
    /// Syncs whose applied policies this one must pass too (a platform team's sync).
    #[serde(default)]
    pub from_syncs: Vec<String>,
}

/// The renderer binaries (given here, else found on PATH) and the bounds of one render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Render {
    pub kustomize: Option<PathBuf>,
    pub helm: Option<PathBuf>,
    /// Longest one render may take; its process group is killed then.
    pub timeout: Duration,
    /// Most bytes one render may print.
    pub max_output_bytes: usize,
    /// Most bytes of memory one render may allocate.
    pub max_memory_bytes: u64,
}

impl Default for Render {
    fn default() -> Self {
        Render {
            kustomize: None,
            helm: None,
            timeout: Duration::from_secs(90),
            max_output_bytes: 64 * 1024 * 1024,
            max_memory_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

impl Render {
    /// The kustomize binary: the configured one, else `kustomize` on PATH.
    pub fn kustomize_binary(&self) -> Option<PathBuf> {
        self.kustomize.clone().or_else(|| on_path("kustomize"))
    }

    /// The helm binary: the configured one, else `helm` on PATH.
    pub fn helm_binary(&self) -> Option<PathBuf> {
        self.helm.clone().or_else(|| on_path("helm"))
    }
}

/// A Helm chart in the repository, rendered with `helm template`. Paths are from the
/// repository root.
#[derive(Debug, Clone, PartialEq)]
pub struct Helm {
    pub chart: String,
    pub values_files: Vec<String>,
    /// Inline values (a mapping, or null), over the files.
    pub values: serde_json::Value,
    pub release_name: String,
    pub namespace: String,
    /// A directory holding a kustomization the chart's output goes through.
    pub post_render: Option<String>,
}

/// `name` in a directory of PATH, when it is a file there.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The webhook receiver: where it listens, and a directory holding one file per
/// provider (`github`, `gitlab`, `gitea`, `bitbucket`, `generic`, `oci-notifications`)
/// with its secret: a mounted Kubernetes Secret, watched so rotation needs no restart.
/// A provider's secret may instead be held in OCI Vault (`ociVault: {github: {secretId}}`),
/// read again every `oci.vaultRefresh`, so a rotation there needs no restart either.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Webhook {
    pub listen: String,
    /// Empty: no directory (every secret from Vault, or none).
    #[serde(default)]
    pub secrets_dir: PathBuf,
    #[serde(default)]
    pub oci_vault: std::collections::BTreeMap<String, OciVaultRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LeaderElection {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_lease")]
    pub lease_name: String,
}

impl Default for LeaderElection {
    fn default() -> Self {
        LeaderElection {
            enabled: false,
            lease_name: default_lease(),
        }
    }
}

fn default_lease() -> String {
    "gitops-agent".into()
}

pub const DEFAULT_RESYNC: Duration = Duration::from_secs(600);
/// Syncs at once, as Flux's controllers default to.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// Which revision of a repository to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitRef {
    Branch(String),
    Tag(String),
    Commit(String),
    /// The highest tag matching a semver range, e.g. `>=1.2.0, <2`.
    Semver(String),
}

/// A Kubernetes Secret holding credentials (keys: `username`/`password` or `token` for
/// HTTPS; `identity`, `known_hosts` and optionally `passphrase` for SSH).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub name: String,
    /// Defaults to the agent's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub name: String,
    pub url: String,
    pub reference: GitRef,
    pub interval: Duration,
    pub secret_ref: Option<SecretRef>,
    /// The credentials held in OCI Vault instead of a Secret: the secret's content is a
    /// YAML map of the same keys (`username` and `password` or `token`; `identity`,
    /// `known_hosts`, `passphrase` for SSH).
    pub oci_vault: Option<OciVaultRef>,
    /// Set for a local-directory source (then `url` is empty): watched, not fetched.
    pub directory: Option<PathBuf>,
    /// Set for a source in OCI (then `url` is empty): fetched with the `oci:` identity.
    pub oci: Option<OciSource>,
    /// OCI Notifications topics whose messages trigger a fetch.
    pub oci_topics: Vec<String>,
}

/// Where in OCI a source's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciSource {
    DevOps(oci::DevOpsSource),
    ObjectStorage(oci::ObjectStorageSource),
}

impl Source {
    /// A Git repository (not a local directory, not OCI).
    pub fn is_git(&self) -> bool {
        self.directory.is_none() && self.oci.is_none()
    }

    pub fn is_ssh(&self) -> bool {
        crate::core::url::is_ssh(&self.url)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sync {
    pub name: String,
    pub source: String,
    /// Directory inside the repository, `/`-separated, no leading `/`; empty for the root.
    pub path: String,
    /// Namespace given to namespaced objects that name none.
    pub namespace: String,
    pub prune: bool,
    pub self_heal: bool,
    pub health: HealthWait,
    pub suspend: bool,
    pub prune_guard: PruneGuard,
    /// Holds back a revision that resizes an OKE pool too much at once.
    pub pool_guard: PoolGuard,
    /// Render a Helm chart instead of the path's files.
    pub helm: Option<Helm>,
    pub policies: SyncPolicies,
}

/// Holds back a revision that changes an infra spec's pool size by more than a step, or to
/// zero, unless the file carries the allow-scale annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolGuard {
    pub max_size_step: u32,
}

impl Default for PoolGuard {
    fn default() -> Self {
        PoolGuard { max_size_step: 10 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthWait {
    pub wait: bool,
    pub timeout: Duration,
}

/// Holds back a revision that would delete too much of what the sync manages.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneGuard {
    /// The largest share of the inventory one revision may delete (0.0..=1.0).
    pub max_ratio: f64,
    /// Lift the guard entirely (including deleting everything).
    pub allow_mass_deletion: bool,
}

impl Default for PruneGuard {
    fn default() -> Self {
        PruneGuard {
            max_ratio: 0.5,
            allow_mass_deletion: false,
        }
    }
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_NAMESPACE: &str = "gitops-agent";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gitops-agent";

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and validates configuration text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Config> {
    let raw: raw::RawConfig = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        // The snippet form quotes surrounding lines; the plain message is enough here.
        let message = e.without_snippet().to_string();
        let message = strip_location_prefix(&message);
        Error::Invalid {
            path: path.to_path_buf(),
            problems: vec![Problem {
                line,
                column,
                message,
            }],
        }
    })?;
    let mut v = Validator {
        base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        ..Default::default()
    };
    let config = v.config(raw);
    v.oci_sources_need_oci(&config);
    if v.problems.is_empty() {
        Ok(config)
    } else {
        v.problems.sort_by_key(|p| (p.line, p.column));
        Err(Error::Invalid {
            path: path.to_path_buf(),
            problems: v.problems,
        })
    }
}

/// serde-saphyr prefixes `error: line L column C: `; we print our own `file:L:C:`.
fn strip_location_prefix(message: &str) -> String {
    let m = message.strip_prefix("error: ").unwrap_or(message);
    match m.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => {
            rest.to_string()
        }
        _ => m.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Config {
        parse(Path::new("config.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(Path::new("config.yaml"), text) {
            Err(Error::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    const GOOD: &str = "\
namespace: gitops
sources:
  - name: shop
    url: https://git.example/shop.git
    ref: {tag: v1.2.0}
    interval: 30s
    secretRef: {name: shop-git}
syncs:
  - name: shop
    source: shop
    path: ./apps/shop/
    namespace: shop
    selfHeal: true
    health: {timeout: 2m}
    pruneGuard: {maxRatio: 0.25}
";

    #[test]
    fn a_good_config_loads_with_defaults() {
        let c = parse_ok(GOOD);
        assert_eq!(c.namespace, "gitops");
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        let s = &c.sources[0];
        assert_eq!(s.reference, GitRef::Tag("v1.2.0".into()));
        assert_eq!(s.interval, Duration::from_secs(30));
        assert_eq!(s.secret_ref.as_ref().unwrap().name, "shop-git");
        let y = &c.syncs[0];
        assert_eq!(y.path, "apps/shop");
        assert!(y.prune && y.self_heal && !y.suspend);
        assert_eq!(
            y.health,
            HealthWait {
                wait: true,
                timeout: Duration::from_secs(120)
            }
        );
        assert_eq!(y.prune_guard.max_ratio, 0.25);
    }

    #[test]
    fn a_helm_sync_and_the_render_bounds_load_with_their_defaults_and_checks() {
        let text = "\
render: {helm: /opt/helm, timeout: 30s, maxOutputBytes: 1048576}
sources:
  - {name: apps, url: https://git.example/apps.git}
syncs:
  - name: web
    source: apps
    namespace: shop
    helm:
      chart: ./charts/web/
      valuesFiles: [env/oke.yaml]
      values: {replicas: 2, image: {tag: \"1.2\"}}
      postRender: overlays/helm-oke
";
        let c = parse_ok(text);
        assert_eq!(c.render.helm.as_deref(), Some(Path::new("/opt/helm")));
        assert_eq!(c.render.timeout, Duration::from_secs(30));
        assert_eq!(c.render.max_output_bytes, 1024 * 1024);
        assert_eq!(
            c.render.max_memory_bytes,
            Render::default().max_memory_bytes
        );
        let h = c.syncs[0].helm.as_ref().unwrap();
        assert_eq!(h.chart, "charts/web");
        assert_eq!(h.values_files, ["env/oke.yaml"]);
        assert_eq!(h.values["image"]["tag"], "1.2");
        assert_eq!(
            (h.release_name.as_str(), h.namespace.as_str()),
            ("web", "shop")
        );
        assert_eq!(h.post_render.as_deref(), Some("overlays/helm-oke"));

        let bad = "\
render: {maxMemoryBytes: 0}
sources:
  - {name: apps, url: https://git.example/apps.git}
syncs:
  - name: web
    source: apps
    namespace: shop
    path: charts
    helm: {chart: ../up, valuesFiles: [/etc/values.yaml], values: [1], releaseName: Web}
";
        let p: Vec<String> = problems(bad).into_iter().map(|p| p.message).collect();
        for want in [
            "render.maxMemoryBytes must be more than 0",
            "a helm sync names its chart in helm.chart; path is for directories and kustomizations",
            "helm.chart must be relative to the repository root, without ..",
            "helm.valuesFiles must be relative to the repository root, without ..",
            "helm.values must be a mapping",
            "helm.releaseName \"Web\": must be a DNS label",
        ] {
            assert!(p.iter().any(|m| m.contains(want)), "{want}: {p:?}");
        }
    }

    #[test]
    fn policy_packs_and_other_syncs_policies_are_named_and_checked() {
        let text = "\
policies: {packs: [baseline]}
sources:
  - {name: apps, url: https://git.example/apps.git}
syncs:
  - {name: platform, source: apps, namespace: default}
  - {name: web, source: apps, namespace: shop, policies: {packs: [virtual-nodes], fromSyncs: [platform]}}
";
        let c = parse_ok(text);
        assert_eq!(c.policies.packs, ["baseline"]);
        assert_eq!(c.policies.dir, PathBuf::from("/etc/gitops-agent/policies"));
        assert_eq!(c.syncs[1].policies.packs, ["virtual-nodes"]);
        assert_eq!(c.syncs[1].policies.from_syncs, ["platform"]);
        assert_eq!(c.syncs[0].policies, SyncPolicies::default());
        let bad = text.replace("fromSyncs: [platform]", "fromSyncs: [web, nowhere]");
        let p: Vec<String> = problems(&bad).into_iter().map(|p| p.message).collect();
        assert!(
            p.iter()
                .any(|m| m.contains("policies.fromSyncs names \"web\", which is no other sync")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("\"nowhere\", which is no other sync")),
            "{p:?}"
        );
    }

    #[test]
    fn a_namespaced_scope_holds_every_sync() {
        let text = "\
scope: {namespaces: [shop, web]}
sources:
  - {name: apps, url: https://git.example/apps.git}
syncs:
  - {name: shop, source: apps, namespace: shop}
";
        assert_eq!(parse_ok(text).scope.namespaces, ["shop", "web"]);
        assert!(
            parse_ok(&text.replace("scope: {namespaces: [shop, web]}\n", ""))
                .scope
                .namespaces
                .is_empty()
        );
        let p: Vec<String> = problems(&text.replace("[shop, web]", "[web, Web]"))
            .into_iter()
            .map(|p| p.message)
            .collect();
        assert!(
            p.iter()
                .any(|m| m.contains("\"Web\" is not a namespace name")),
            "{p:?}"
        );
        assert!(
            p.iter().any(
                |m| m.contains("sync \"shop\": namespace \"shop\" is outside scope.namespaces")
            ),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_fields_are_errors_with_their_line() {
        let p = problems("sources:\n  - name: a\n    url: https://h/r\n    branch: main\n");
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].line, p[0].column), (4, 5));
        assert!(
            p[0].message.contains("unknown field `branch`"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn every_semantic_problem_is_reported_with_its_place() {
        let text = "\
sources:
  - name: Bad_Name
    url: ftp://host/repo
  - name: ok
    url: git@github.com:org/repo.git
    ref: {branch: main, tag: v1}
    interval: soon
syncs:
  - name: s
    source: missing
    namespace: shop
    path: ../etc
  - name: s
    source: ok
    namespace: shop
    pruneGuard: {maxRatio: 2}
";
        let p = problems(text);
        let lines: Vec<u64> = p.iter().map(|p| p.line).collect();
        let all = p
            .iter()
            .map(|p| format!("{}: {}", p.line, p.message))
            .collect::<Vec<_>>()
            .join("\n");
        for (line, needle) in [
            (2, "source name \"Bad_Name\""),
            (3, "url must be"),
            (5, "SSH needs secretRef"),
            (6, "exactly one of"),
            (7, "not a duration"),
            (10, "no source named \"missing\""),
            (12, "without .."),
            (13, "already defined at line 9"),
            (16, "maxRatio"),
        ] {
            assert!(
                p.iter()
                    .any(|p| p.line == line && p.message.contains(needle)),
                "line {line} {needle:?} in\n{all}"
            );
        }
        assert!(lines.windows(2).all(|w| w[0] <= w[1]), "sorted by line");
        // The rendered error names file:line:column for each.
        let err = parse(Path::new("/etc/agent.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/agent.yaml:2:11: source name"), "{err}");
    }

    #[test]
    fn credentials_in_urls_are_refused_without_echoing_them() {
        let p = problems("sources:\n  - name: a\n    url: https://user:s3cret@host/r.git\n");
        assert!(p[0].message.contains("must not embed credentials"));
        assert!(!p[0].message.contains("s3cret"));
    }

    #[test]
    fn the_install_manifests_carry_valid_configs() {
        // The ConfigMaps in manifests/install are what users start from: each must load.
        let install = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/install");
        let load = |file: &str| {
            let path = format!("{install}/{file}");
            let cm: serde_json::Value =
                serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let text = cm["data"]["config.yaml"].as_str().unwrap().to_string();
            parse(Path::new(&path), &text).unwrap_or_else(|e| panic!("{e}"))
        };
        let c = load("base/config.yaml");
        assert!(c.leader_election.enabled);
        assert_eq!(
            c.webhook.unwrap().secrets_dir,
            PathBuf::from("/etc/gitops-agent/webhook")
        );
        assert_eq!(c.alerts.sinks.len(), 1);
        assert_eq!(c.resync, Duration::from_secs(600));
        assert!(c.scope.namespaces.is_empty());
        assert_eq!(load("namespaced/config.yaml").scope.namespaces, ["team-a"]);
        let oke = load("oke/config.yaml");
        assert!(oke.oci.is_some());
        assert_eq!(oke.alerts.sinks.len(), 2);
    }

    #[test]
    fn type_errors_are_located() {
        let p =
            problems("syncs:\n  - name: a\n    source: b\n    namespace: c\n    prune: maybe\n");
        assert_eq!(p[0].line, 5);
    }
}
