//! The agent's configuration file: Git sources and the syncs that apply paths of them.
//! Parsed once, strictly (unknown fields are errors), and validated as a whole: every
//! problem is reported with its file, line and column, not just the first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

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
    pub alerts: crate::alert::AlertsConfig,
}

/// The webhook receiver: where it listens, and a directory holding one file per
/// provider (`github`, `gitlab`, `gitea`, `bitbucket`, `generic`) with its secret: a
/// mounted Kubernetes Secret, watched so rotation needs no restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Webhook {
    pub listen: String,
    pub secrets_dir: PathBuf,
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
    /// Set for a local-directory source (then `url` is empty): watched, not fetched.
    pub directory: Option<PathBuf>,
}

impl Source {
    pub fn is_ssh(&self) -> bool {
        is_ssh_url(&self.url)
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

// --- the file as written -------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    state_dir: Option<String>,
    #[serde(default)]
    namespace: Option<Spanned<String>>,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    syncs: Vec<RawSync>,
    #[serde(default)]
    webhook: Option<Webhook>,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    leader_election: Option<LeaderElection>,
    #[serde(default)]
    resync: Option<Spanned<String>>,
    #[serde(default)]
    alerts: Option<Spanned<crate::alert::AlertsConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSource {
    name: Spanned<String>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    /// A local directory instead of Git (development: edit a file, the cluster follows).
    #[serde(default)]
    directory: Option<Spanned<String>>,
    #[serde(rename = "ref", default)]
    reference: Option<Spanned<RawRef>>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    secret_ref: Option<SecretRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRef {
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    commit: Option<String>,
    #[serde(default)]
    semver: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSync {
    name: Spanned<String>,
    source: Spanned<String>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    namespace: Spanned<String>,
    #[serde(default = "yes")]
    prune: bool,
    #[serde(default)]
    self_heal: bool,
    #[serde(default)]
    health: Option<RawHealth>,
    #[serde(default)]
    suspend: bool,
    #[serde(default)]
    prune_guard: Option<RawPruneGuard>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default = "yes")]
    wait: bool,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPruneGuard {
    #[serde(default)]
    max_ratio: Option<Spanned<f64>>,
    #[serde(default)]
    allow_mass_deletion: bool,
}

fn yes() -> bool {
    true
}

// --- loading and validation ----------------------------------------------------------

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
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| {
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

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    /// Relative local directories are relative to the config file's folder.
    base: PathBuf,
}

impl Validator {
    fn at<T>(&mut self, s: &Spanned<T>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: s.referenced.line(),
            column: s.referenced.column(),
            message: message.into(),
        });
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let resync = self.duration(
            raw.resync.as_ref(),
            DEFAULT_RESYNC,
            Duration::from_secs(10),
            "resync",
        );
        let namespace = match &raw.namespace {
            Some(ns) => {
                self.dns_label(ns, "namespace");
                ns.value.clone()
            }
            None => DEFAULT_NAMESPACE.to_string(),
        };
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        let mut sources = Vec::new();
        for s in raw.sources {
            if let Some(first) = seen.insert(s.name.value.clone(), s.name.referenced.line()) {
                self.at(
                    &s.name,
                    format!(
                        "source {:?} is already defined at line {first}",
                        s.name.value
                    ),
                );
            }
            if let Some(src) = self.source(s) {
                sources.push(src);
            }
        }
        let mut seen_syncs: BTreeMap<String, u64> = BTreeMap::new();
        let mut syncs = Vec::new();
        for s in raw.syncs {
            if let Some(first) = seen_syncs.insert(s.name.value.clone(), s.name.referenced.line()) {
                self.at(
                    &s.name,
                    format!("sync {:?} is already defined at line {first}", s.name.value),
                );
            }
            if !seen.contains_key(&s.source.value) {
                self.at(
                    &s.source,
                    format!(
                        "sync {:?}: no source named {:?}",
                        s.name.value, s.source.value
                    ),
                );
            }
            syncs.push(self.sync(s));
        }
        Config {
            state_dir: PathBuf::from(
                raw.state_dir
                    .unwrap_or_else(|| DEFAULT_STATE_DIR.to_string()),
            ),
            namespace,
            sources,
            syncs,
            webhook: raw.webhook.map(|mut w| {
                w.secrets_dir = self.base.join(&w.secrets_dir);
                w
            }),
            metrics_listen: raw.metrics.map(|m| m.listen),
            leader_election: raw.leader_election.unwrap_or_default(),
            resync,
            alerts: match raw.alerts {
                Some(a) => {
                    for p in a.value.problems() {
                        self.at(&a, p);
                    }
                    a.value
                }
                None => Default::default(),
            },
        }
    }

    fn source(&mut self, s: RawSource) -> Option<Source> {
        self.dns_label(&s.name, "source name");
        let url_span = match (&s.url, &s.directory) {
            (Some(u), None) => u,
            (None, Some(d)) => {
                let dir = self.base.join(d.value.trim());
                let interval = self.duration(
                    s.interval.as_ref(),
                    DEFAULT_INTERVAL,
                    Duration::from_secs(1),
                    "interval",
                );
                return Some(Source {
                    name: s.name.value,
                    url: String::new(),
                    reference: GitRef::Branch(String::new()),
                    interval,
                    secret_ref: None,
                    directory: Some(dir),
                });
            }
            (Some(u), Some(_)) => {
                self.at(
                    u,
                    format!("source {:?}: set url or directory, not both", s.name.value),
                );
                return None;
            }
            (None, None) => {
                self.at(
                    &s.name,
                    format!(
                        "source {:?}: needs url (Git) or directory (local)",
                        s.name.value
                    ),
                );
                return None;
            }
        };
        let url = url_span.value.trim().to_string();
        if !supported_url(&url) {
            self.at(url_span, format!(
                "source {:?}: url must be https://, http://, ssh://, git://, file:// or user@host:path",
                s.name.value
            ));
        }
        if url_has_password(&url) {
            self.at(
                url_span,
                format!(
                    "source {:?}: url must not embed credentials; use secretRef",
                    s.name.value
                ),
            );
        }
        if is_ssh_url(&url) && s.secret_ref.is_none() {
            // Without known_hosts there is no host key verification; we refuse to connect blind.
            self.at(url_span, format!(
                "source {:?}: SSH needs secretRef to a Secret with identity and known_hosts (host keys are always verified)",
                s.name.value
            ));
        }
        let reference = match &s.reference {
            None => GitRef::Branch("main".into()),
            Some(r) => {
                let set: Vec<GitRef> = [
                    r.value.branch.clone().map(GitRef::Branch),
                    r.value.tag.clone().map(GitRef::Tag),
                    r.value.commit.clone().map(GitRef::Commit),
                    r.value.semver.clone().map(GitRef::Semver),
                ]
                .into_iter()
                .flatten()
                .collect();
                match set.as_slice() {
                    [one] => {
                        if let GitRef::Commit(c) = one
                            && !(c.len() >= 7
                                && c.len() <= 40
                                && c.chars().all(|ch| ch.is_ascii_hexdigit()))
                        {
                            self.at(
                                r,
                                format!(
                                    "source {:?}: ref.commit must be a full 40-hex-digit commit id",
                                    s.name.value
                                ),
                            );
                        }
                        one.clone()
                    }
                    _ => {
                        self.at(r, format!(
                            "source {:?}: ref must name exactly one of branch, tag, commit, semver",
                            s.name.value
                        ));
                        GitRef::Branch("main".into())
                    }
                }
            }
        };
        let interval = self.duration(
            s.interval.as_ref(),
            DEFAULT_INTERVAL,
            Duration::from_secs(1),
            "interval",
        );
        Some(Source {
            name: s.name.value,
            url,
            reference,
            interval,
            secret_ref: s.secret_ref,
            directory: None,
        })
    }

    fn sync(&mut self, s: RawSync) -> Sync {
        self.dns_label(&s.name, "sync name");
        self.dns_label(&s.namespace, "namespace");
        let path = match &s.path {
            None => String::new(),
            Some(p) => {
                let cleaned = p.value.trim_matches('/').to_string();
                let cleaned = if cleaned == "." {
                    String::new()
                } else {
                    cleaned
                };
                if p.value.starts_with('/') || cleaned.split('/').any(|c| c == "..") {
                    self.at(
                        p,
                        format!(
                            "sync {:?}: path must be relative to the repository root, without ..",
                            s.name.value
                        ),
                    );
                }
                cleaned.trim_start_matches("./").to_string()
            }
        };
        let health = match &s.health {
            None => HealthWait {
                wait: true,
                timeout: DEFAULT_HEALTH_TIMEOUT,
            },
            Some(h) => HealthWait {
                wait: h.wait,
                timeout: self.duration(
                    h.timeout.as_ref(),
                    DEFAULT_HEALTH_TIMEOUT,
                    Duration::from_secs(1),
                    "health.timeout",
                ),
            },
        };
        let mut prune_guard = PruneGuard::default();
        if let Some(g) = &s.prune_guard {
            prune_guard.allow_mass_deletion = g.allow_mass_deletion;
            if let Some(r) = &g.max_ratio {
                if !(0.0..=1.0).contains(&r.value) {
                    self.at(
                        r,
                        format!(
                            "sync {:?}: pruneGuard.maxRatio must be between 0 and 1",
                            s.name.value
                        ),
                    );
                }
                prune_guard.max_ratio = r.value;
            }
        }
        Sync {
            name: s.name.value,
            source: s.source.value,
            path,
            namespace: s.namespace.value,
            prune: s.prune,
            self_heal: s.self_heal,
            health,
            suspend: s.suspend,
            prune_guard,
        }
    }

    fn duration(
        &mut self,
        s: Option<&Spanned<String>>,
        default: Duration,
        min: Duration,
        what: &str,
    ) -> Duration {
        let Some(s) = s else { return default };
        match humantime::parse_duration(s.value.trim()) {
            Ok(d) if d >= min => d,
            Ok(_) => {
                self.at(
                    s,
                    format!(
                        "{what}: must be at least {}",
                        humantime::format_duration(min)
                    ),
                );
                default
            }
            Err(e) => {
                self.at(
                    s,
                    format!(
                        "{what}: {:?} is not a duration like 30s or 5m: {e}",
                        s.value
                    ),
                );
                default
            }
        }
    }

    fn dns_label(&mut self, s: &Spanned<String>, what: &str) {
        if !is_dns_label(&s.value) {
            self.at(
                s,
                format!(
                    "{what} {:?}: must be a DNS label (lowercase letters, digits, '-', at most 63)",
                    s.value
                ),
            );
        }
    }
}

/// RFC 1123 label, as Kubernetes validates namespace names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_ssh_url(url: &str) -> bool {
    url.starts_with("ssh://") || is_scp_like(url)
}

/// `user@host:path`, the scp-like form git accepts for SSH.
fn is_scp_like(url: &str) -> bool {
    !url.contains("://")
        && url.split_once(':').is_some_and(|(head, tail)| {
            head.contains('@') && !head.contains('/') && !tail.is_empty()
        })
}

fn supported_url(url: &str) -> bool {
    ["https://", "http://", "ssh://", "git://", "file://"]
        .iter()
        .any(|p| url.starts_with(p) && url.len() > p.len())
        || is_scp_like(url)
}

fn url_has_password(url: &str) -> bool {
    url.split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
        .is_some_and(|authority| {
            authority
                .split_once('@')
                .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        })
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
    fn url_forms() {
        assert!(is_ssh_url("ssh://git@host:22/r.git"));
        assert!(is_ssh_url("git@host:org/r.git"));
        assert!(!is_ssh_url("https://host/r.git"));
        assert!(!is_ssh_url("file:///tmp/r"));
        assert!(supported_url("file:///tmp/r"));
        assert!(!supported_url("/tmp/r"));
    }

    #[test]
    fn the_install_manifests_carry_a_valid_config() {
        // The ConfigMap in manifests/install is what users start from: it must load.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/install/config.yaml"
        );
        let cm: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let text = cm["data"]["config.yaml"].as_str().unwrap();
        let c = parse(Path::new("config.yaml"), text).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.leader_election.enabled);
        assert_eq!(
            c.webhook.unwrap().secrets_dir,
            PathBuf::from("/etc/gitops-agent/webhook")
        );
        assert_eq!(c.alerts.sinks.len(), 1);
        assert_eq!(c.resync, Duration::from_secs(600));
    }

    #[test]
    fn type_errors_are_located() {
        let p =
            problems("syncs:\n  - name: a\n    source: b\n    namespace: c\n    prune: maybe\n");
        assert_eq!(p[0].line, 5);
    }
}
