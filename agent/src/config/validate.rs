//! Validation of the whole file at once: every problem is collected with its line and
//! column, so a user fixes them all in one go.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::raw::{RawConfig, RawHelm, RawRender, RawSource, RawSync};
use super::*;

/// The webhook receiver's providers, as its secret files are named.
pub const WEBHOOK_PROVIDERS: [&str; 6] = [
    "github",
    "gitlab",
    "gitea",
    "bitbucket",
    "generic",
    "oci-notifications",
];

#[derive(Default)]
pub(super) struct Validator {
    pub(super) problems: Vec<Problem>,
    /// Relative local directories are relative to the config file's folder.
    pub(super) base: PathBuf,
    /// Where OCI sources are declared: they need the `oci:` section.
    pub(super) oci_sources: Vec<(u64, u64)>,
    /// Where the webhook section is.
    pub(super) webhook_at: (u64, u64),
}

impl Validator {
    fn at<T>(&mut self, s: &Spanned<T>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: s.referenced.line(),
            column: s.referenced.column(),
            message: message.into(),
        });
    }

    /// The webhook section's own rules: `ociVault` names providers, with vaultsecret OCIDs.
    fn webhook(&mut self, w: &Spanned<Webhook>) {
        self.webhook_at = (w.referenced.line(), w.referenced.column());
        for (provider, v) in &w.value.oci_vault {
            if !WEBHOOK_PROVIDERS.contains(&provider.as_str()) {
                self.at(w, format!("webhook.ociVault.{provider}: not a provider (github, gitlab, gitea, bitbucket, generic, oci-notifications)"));
            }
            if let Some(why) = v.problem() {
                self.at(w, format!("webhook.ociVault.{provider}: {why}"));
            }
        }
    }

    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        if let Some(w) = &raw.webhook {
            self.webhook(w);
        }
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
        let (sources, syncs) = self.sources_and_syncs(raw.sources, raw.syncs);
        let scope = raw
            .scope
            .map(|sc| self.scope(sc, &syncs))
            .unwrap_or_default();
        Config {
            state_dir: PathBuf::from(
                raw.state_dir
                    .unwrap_or_else(|| DEFAULT_STATE_DIR.to_string()),
            ),
            namespace,
            sources,
            syncs,
            webhook: raw.webhook.map(|w| {
                let mut w = w.value;
                if !w.secrets_dir.as_os_str().is_empty() {
                    w.secrets_dir = self.base.join(&w.secrets_dir);
                }
                w
            }),
            metrics_listen: raw.metrics.map(|m| m.listen),
            leader_election: raw.leader_election.unwrap_or_default(),
            resync,
            concurrency: match &raw.concurrency {
                Some(c) if !(1..=64).contains(&c.value) => {
                    self.at(c, "concurrency: must be between 1 and 64");
                    DEFAULT_CONCURRENCY
                }
                Some(c) => c.value,
                None => DEFAULT_CONCURRENCY,
            },
            alerts: match raw.alerts {
                Some(a) => {
                    for p in a.value.problems() {
                        self.at(&a, p);
                    }
                    if raw.oci.is_none()
                        && a.value.sinks.iter().any(|s| {
                            s.kind() == "ociNotifications"
                                || matches!(s.credential(), Some(super::Credential::OciVault(_)))
                        })
                    {
                        self.at(&a, "alerts: an ociNotifications sink or an ociVault credential needs the oci: section (the identity it signs with)");
                    }
                    a.value
                }
                None => Default::default(),
            },
            render: self.render(raw.render),
            policies: raw.policies.unwrap_or_default(),
            scope,
            oci: raw.oci.map(|o| {
                for p in o.value.problems() {
                    self.at(&o, p);
                }
                o.value
            }),
        }
    }

    /// The sources and the syncs, each name once, each sync naming a source.
    fn sources_and_syncs(
        &mut self,
        raw_sources: Vec<RawSource>,
        raw_syncs: Vec<RawSync>,
    ) -> (Vec<Source>, Vec<Sync>) {
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        let mut sources = Vec::new();
        for s in raw_sources {
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
        let names: Vec<String> = raw_syncs.iter().map(|s| s.name.value.clone()).collect();
        for s in raw_syncs {
            if let Some(p) = &s.policies {
                for other in &p.value.from_syncs {
                    if *other == s.name.value || !names.contains(other) {
                        let why = format!(
                            "sync {:?}: policies.fromSyncs names {other:?}, which is no other sync",
                            s.name.value
                        );
                        self.at(p, why);
                    }
                }
            }
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
        (sources, syncs)
    }

    /// An OCI source without the `oci:` section has no identity to sign with.
    pub(super) fn oci_sources_need_oci(&mut self, cfg: &Config) {
        if cfg.oci.is_some() {
            return;
        }
        if cfg
            .webhook
            .as_ref()
            .is_some_and(|w| !w.oci_vault.is_empty())
        {
            let (line, column) = self.webhook_at;
            self.problems.push(Problem {
                line,
                column,
                message: "webhook.ociVault needs the oci: section (the identity it reads with)"
                    .into(),
            });
        }
        for (line, column) in std::mem::take(&mut self.oci_sources) {
            self.problems.push(Problem {
                line,
                column,
                message: "an ociDevOps or ociObjectStorage source, or ociVault credentials, need the oci: section (the identity it signs with)".into(),
            });
        }
    }

    /// The OCI Notifications topics that trigger the source.
    fn topics(&mut self, s: &RawSource) -> Vec<String> {
        let mut oci_topics = Vec::new();
        for t in s
            .triggers
            .as_ref()
            .map(|t| t.oci_notifications.as_slice())
            .unwrap_or_default()
        {
            if !t.value.starts_with("ocid1.onstopic.") {
                let why = format!(
                    "source {:?}: triggers.ociNotifications: {:?} is not an ocid1.onstopic OCID",
                    s.name.value, t.value
                );
                self.at(t, why);
            }
            oci_topics.push(t.value.clone());
        }
        oci_topics
    }

    /// The source's OCI part (DevOps or Object Storage), checked; `None` for other kinds.
    fn oci_source(&mut self, s: &RawSource) -> Option<OciSource> {
        let (problems, at, oci) = match (&s.oci_dev_ops, &s.oci_object_storage) {
            (Some(d), _) => (
                d.value.problems(&s.name.value),
                d.referenced,
                OciSource::DevOps(d.value.clone()),
            ),
            (_, Some(o)) => (
                o.value.problems(&s.name.value),
                o.referenced,
                OciSource::ObjectStorage(o.value.clone()),
            ),
            _ => return None,
        };
        for p in problems {
            self.problems.push(Problem {
                line: at.line(),
                column: at.column(),
                message: p,
            });
        }
        if s.secret_ref.is_some() || s.reference.is_some() || s.oci_vault.is_some() {
            let why = format!(
                "source {:?}: an OCI source signs with the oci: identity and takes its ref inside ociDevOps; remove secretRef, ociVault and ref",
                s.name.value
            );
            self.at(&s.name, why);
        }
        self.oci_sources.push((at.line(), at.column()));
        Some(oci)
    }

    fn source(&mut self, s: RawSource) -> Option<Source> {
        self.dns_label(&s.name, "source name");
        let interval = self.duration(
            s.interval.as_ref(),
            DEFAULT_INTERVAL,
            Duration::from_secs(1),
            "interval",
        );
        let oci_topics = self.topics(&s);
        let kinds = [
            s.url.is_some(),
            s.directory.is_some(),
            s.oci_dev_ops.is_some(),
            s.oci_object_storage.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            let why = format!(
                "source {:?}: set exactly one of url (Git), directory (local), ociDevOps, ociObjectStorage",
                s.name.value
            );
            self.at(&s.name, why);
            return None;
        }
        let plain = |directory, oci| Source {
            name: s.name.value.clone(),
            url: String::new(),
            reference: GitRef::Branch(String::new()),
            interval,
            secret_ref: None,
            oci_vault: None,
            directory,
            oci,
            oci_topics: oci_topics.clone(),
        };
        if let Some(d) = &s.directory {
            return Some(plain(Some(self.base.join(d.value.trim())), None));
        }
        if let Some(oci) = self.oci_source(&s) {
            return Some(plain(None, Some(oci)));
        }
        let url_span = s.url.as_ref().expect("one kind is set");
        let url = url_span.value.trim().to_string();
        if let Some(v) = &s.oci_vault {
            if let Some(why) = v.value.problem() {
                self.at(v, format!("source {:?}: ociVault: {why}", s.name.value));
            }
            if s.secret_ref.is_some() {
                self.at(
                    v,
                    format!(
                        "source {:?}: give secretRef or ociVault, not both",
                        s.name.value
                    ),
                );
            }
            self.oci_sources
                .push((v.referenced.line(), v.referenced.column()));
        }
        let has_secret = s.secret_ref.is_some() || s.oci_vault.is_some();
        self.git_url(&s.name.value, url_span, &url, has_secret);
        let reference = match &s.reference {
            None => GitRef::Branch("main".into()),
            Some(r) => self.git_ref(&s.name.value, r),
        };
        Some(Source {
            name: s.name.value,
            url,
            reference,
            interval,
            secret_ref: s.secret_ref,
            oci_vault: s.oci_vault.map(|v| v.value),
            directory: None,
            oci: None,
            oci_topics,
        })
    }

    /// A Git URL's rules: a supported form, no embedded password, SSH only with host keys.
    fn git_url(&mut self, name: &str, span: &Spanned<String>, url: &str, has_secret: bool) {
        if !crate::core::url::is_supported(url) {
            self.at(span, format!(
                "source {name:?}: url must be https://, http://, ssh://, git://, file:// or user@host:path"
            ));
        }
        if crate::core::url::has_password(url) {
            self.at(
                span,
                format!("source {name:?}: url must not embed credentials; use secretRef"),
            );
        }
        if crate::core::url::is_ssh(url) && !has_secret {
            // Without known_hosts there is no host key verification; we refuse to connect blind.
            self.at(span, format!(
                "source {name:?}: SSH needs secretRef to a Secret with identity and known_hosts (host keys are always verified)"
            ));
        }
    }

    /// Exactly one of branch, tag, commit (7 to 40 hex digits) or semver.
    fn git_ref(&mut self, name: &str, r: &Spanned<super::raw::RawRef>) -> GitRef {
        let set: Vec<GitRef> = [
            r.value.branch.clone().map(GitRef::Branch),
            r.value.tag.clone().map(GitRef::Tag),
            r.value.commit.clone().map(GitRef::Commit),
            r.value.semver.clone().map(GitRef::Semver),
        ]
        .into_iter()
        .flatten()
        .collect();
        let [one] = set.as_slice() else {
            self.at(
                r,
                format!(
                    "source {name:?}: ref must name exactly one of branch, tag, commit, semver"
                ),
            );
            return GitRef::Branch("main".into());
        };
        if let GitRef::Commit(c) = one
            && !(c.len() >= 7 && c.len() <= 40 && c.chars().all(|ch| ch.is_ascii_hexdigit()))
        {
            self.at(
                r,
                format!("source {name:?}: ref.commit must be a full 40-hex-digit commit id"),
            );
        }
        one.clone()
    }

    fn sync(&mut self, mut s: RawSync) -> Sync {
        self.dns_label(&s.name, "sync name");
        self.dns_label(&s.namespace, "namespace");
        let what = format!("sync {:?}: path", s.name.value);
        let path = match &s.path {
            None => String::new(),
            Some(p) => self.repo_path(p, &what),
        };
        let helm = s.helm.take().map(|h| self.helm(h, &s));
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
        let mut pool_guard = PoolGuard::default();
        if let Some(step) = s.pool_guard.as_ref().and_then(|g| g.max_size_step.as_ref()) {
            if step.value == 0 {
                let why = format!(
                    "sync {:?}: poolGuard.maxSizeStep must be at least 1",
                    s.name.value
                );
                self.at(step, why);
            }
            pool_guard.max_size_step = step.value;
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
            pool_guard,
            helm,
            policies: s.policies.map(|p| p.value).unwrap_or_default(),
        }
    }

    /// A path from the repository root: relative, without `..`; `.` is the root.
    fn repo_path(&mut self, p: &Spanned<String>, what: &str) -> String {
        let cleaned = p.value.trim_matches('/').to_string();
        let cleaned = if cleaned == "." {
            String::new()
        } else {
            cleaned
        };
        if p.value.starts_with('/') || cleaned.split('/').any(|c| c == "..") {
            self.at(
                p,
                format!("{what} must be relative to the repository root, without .."),
            );
        }
        cleaned.trim_start_matches("./").to_string()
    }

    fn helm(&mut self, h: RawHelm, s: &RawSync) -> Helm {
        let name = &s.name.value;
        if let Some(p) = &s.path {
            let why = format!(
                "sync {name:?}: a helm sync names its chart in helm.chart; path is for directories and kustomizations"
            );
            self.at(p, why);
        }
        let release_name = match &h.release_name {
            Some(r) => {
                self.dns_label(r, "helm.releaseName");
                r.value.clone()
            }
            None => name.clone(),
        };
        let namespace = match &h.namespace {
            Some(n) => {
                self.dns_label(n, "helm.namespace");
                n.value.clone()
            }
            None => s.namespace.value.clone(),
        };
        let values = match h.values {
            Some(v) if !v.value.is_object() && !v.value.is_null() => {
                self.at(&v, format!("sync {name:?}: helm.values must be a mapping"));
                serde_json::Value::Null
            }
            Some(v) => v.value,
            None => serde_json::Value::Null,
        };
        Helm {
            chart: self.repo_path(&h.chart, &format!("sync {name:?}: helm.chart")),
            values_files: h
                .values_files
                .iter()
                .map(|f| self.repo_path(f, &format!("sync {name:?}: helm.valuesFiles")))
                .collect(),
            values,
            release_name,
            namespace,
            post_render: h
                .post_render
                .as_ref()
                .map(|p| self.repo_path(p, &format!("sync {name:?}: helm.postRender"))),
        }
    }

    fn render(&mut self, raw: Option<RawRender>) -> Render {
        let d = Render::default();
        let Some(r) = raw else { return d };
        let output = d.max_output_bytes as u64;
        Render {
            timeout: self.duration(
                r.timeout.as_ref(),
                d.timeout,
                Duration::from_secs(1),
                "render.timeout",
            ),
            max_output_bytes: self.positive(&r.max_output_bytes, "maxOutputBytes", output) as usize,
            max_memory_bytes: self.positive(
                &r.max_memory_bytes,
                "maxMemoryBytes",
                d.max_memory_bytes,
            ),
            kustomize: r.kustomize,
            helm: r.helm,
        }
    }

    /// A `render.` bound: more than 0, else `default`.
    fn positive(&mut self, v: &Option<Spanned<u64>>, what: &str, default: u64) -> u64 {
        match v {
            Some(v) if v.value == 0 => {
                self.at(v, format!("render.{what} must be more than 0"));
                default
            }
            Some(v) => v.value,
            None => default,
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

    /// Namespaced rights: names that are namespaces, and every sync inside them.
    fn scope(&mut self, sc: Spanned<super::Scope>, syncs: &[super::Sync]) -> super::Scope {
        if sc.value.namespaces.is_empty() {
            self.at(&sc, "scope.namespaces: name at least one namespace (without scope: the agent is cluster-wide)");
        }
        for ns in &sc.value.namespaces {
            if !crate::core::names::is_dns_label(ns) {
                self.at(
                    &sc,
                    format!("scope.namespaces: {ns:?} is not a namespace name"),
                );
            }
        }
        for s in syncs {
            if !sc.value.namespaces.contains(&s.namespace) {
                let why = format!(
                    "sync {:?}: namespace {:?} is outside scope.namespaces {:?}",
                    s.name, s.namespace, sc.value.namespaces
                );
                self.at(&sc, why);
            }
        }
        sc.value
    }

    fn dns_label(&mut self, s: &Spanned<String>, what: &str) {
        if !crate::core::names::is_dns_label(&s.value) {
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
