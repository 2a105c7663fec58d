//! The `oci:` section: the identity every OCI call signs with. Only the schema; the
//! identity itself is built in `oci`.
//!
//! ```yaml
//! oci:
//!   auth: workloadIdentity          # or configFile (an API key or session token profile)
//!   region: us-ashburn-1            # default: OCI_RESOURCE_PRINCIPAL_REGION, or the profile's
//!   # configFile: {path: /etc/oci/config, profile: DEFAULT}
//!   # caFile: /etc/oci/ca.pem       # trust only this CA for OCI endpoints (private endpoints)
//!   # tokenExchange: {host: 10.96.0.1, port: 12250, serviceAccountToken: PATH, clusterCa: PATH}
//!   # endpoints: {secrets: https://secrets.vaults.us-ashburn-1.oci.oraclecloud.com, notifications: ...}
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OciConfig {
    #[serde(default)]
    pub auth: OciAuth,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<ConfigFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Overrides of what an OKE pod's environment says (for workload identity).
    #[serde(default)]
    pub token_exchange: TokenExchange,
    /// Service endpoints instead of the region's (`secrets`: Vault's secret bundles;
    /// `notifications`: where subscription confirmations may also go).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub endpoints: std::collections::BTreeMap<String, String>,
    /// How often Vault-held credentials are read again (a rotation is picked up within
    /// it); default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_refresh: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OciAuth {
    /// OKE workload identity: the pod's service-account token, exchanged.
    #[default]
    WorkloadIdentity,
    /// A profile of an OCI config file: an API key or a session token.
    ConfigFile,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigFile {
    pub path: PathBuf,
    #[serde(default = "default_profile")]
    pub profile: String,
}

fn default_profile() -> String {
    "DEFAULT".into()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenExchange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_token: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ca: Option<PathBuf>,
}

/// The services `endpoints` may name.
pub const SERVICES: [&str; 5] = [
    "secrets",
    "notifications",
    "devops",
    "objectstorage",
    "containerengine",
];

/// A source in an OCI DevOps code repository: `ociDevOps: {repositoryId, ref}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DevOpsSource {
    pub repository_id: String,
    /// `{branch: main}` (the default), `{tag: v1}` or `{commit: <40 hex digits>}`.
    #[serde(rename = "ref", default)]
    pub reference: DevOpsRef,
    /// The `format` asked of GetRepositoryArchiveContent; the answer is read by its bytes
    /// (tar, tar.gz or zip) whatever it says.
    #[serde(default = "default_archive_format")]
    pub archive_format: String,
    /// The largest archive downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_archive_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevOpsRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

fn default_archive_format() -> String {
    "tar.gz".into()
}

/// A source in OCI Object Storage: one archive object, or the objects under a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectStorageSource {
    pub namespace: String,
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// A "directory" of objects: names under it, with the prefix taken off, are the paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_archive_bytes: Option<u64>,
}

impl DevOpsSource {
    pub fn problems(&self, source: &str) -> Vec<String> {
        let mut out = Vec::new();
        if !self.repository_id.starts_with("ocid1.devopsrepository.") {
            out.push(format!(
                "source {source:?}: ociDevOps.repositoryId must be an ocid1.devopsrepository OCID"
            ));
        }
        let r = &self.reference;
        let set = [&r.branch, &r.tag, &r.commit]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set > 1 {
            out.push(format!(
                "source {source:?}: ociDevOps.ref must name one of branch, tag, commit"
            ));
        }
        if let Some(c) = &r.commit
            && !(c.len() == 40 && c.chars().all(|ch| ch.is_ascii_hexdigit()))
        {
            out.push(format!(
                "source {source:?}: ociDevOps.ref.commit must be a full 40-hex-digit commit id"
            ));
        }
        if [&r.branch, &r.tag]
            .into_iter()
            .flatten()
            .any(|n| n.is_empty() || n.starts_with("refs/"))
        {
            out.push(format!(
                "source {source:?}: ociDevOps.ref: give the short name, without refs/"
            ));
        }
        out
    }
}

impl ObjectStorageSource {
    pub fn problems(&self, source: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.namespace.is_empty() || self.bucket.is_empty() {
            out.push(format!(
                "source {source:?}: ociObjectStorage needs namespace and bucket"
            ));
        }
        match (&self.object, &self.prefix) {
            (Some(o), None) if !o.is_empty() => {}
            (None, Some(_)) => {}
            _ => out.push(format!(
                "source {source:?}: ociObjectStorage needs object (an archive) or prefix, one of them"
            )),
        }
        out
    }
}

impl OciConfig {
    pub const DEFAULT_VAULT_REFRESH: std::time::Duration = std::time::Duration::from_secs(300);

    /// How often Vault-held credentials are read again.
    pub fn vault_refresh(&self) -> std::time::Duration {
        self.vault_refresh
            .as_deref()
            .and_then(|v| humantime::parse_duration(v).ok())
            .unwrap_or(Self::DEFAULT_VAULT_REFRESH)
    }

    /// Every problem of the section, one message each (empty when valid).
    pub fn problems(&self) -> Vec<String> {
        let mut out = match (self.auth, &self.config_file) {
            (OciAuth::ConfigFile, None) => {
                vec!["oci: auth configFile needs configFile: {path, profile}".into()]
            }
            (OciAuth::WorkloadIdentity, Some(_)) => {
                vec!["oci: configFile is only for auth: configFile".into()]
            }
            _ => Vec::new(),
        };
        if let Some(v) = &self.vault_refresh {
            match humantime::parse_duration(v) {
                Ok(d) if d >= std::time::Duration::from_secs(1) => {}
                _ => out.push(format!(
                    "oci: vaultRefresh {v:?}: expected a duration of at least 1s (like 5m)"
                )),
            }
        }
        for (service, url) in &self.endpoints {
            if !SERVICES.contains(&service.as_str()) {
                out.push(format!(
                    "oci: endpoints.{service}: unknown service ({})",
                    SERVICES.join(", ")
                ));
            }
            if let Err(why) = crate::http::client::parse_url(url) {
                out.push(format!("oci: endpoints.{service}: {why}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const BASE: &str = "namespace: gitops\nsources: []\nsyncs: []\n";

    #[test]
    fn the_section_parses_and_an_oci_sink_needs_it() {
        let text = format!(
            "{BASE}oci:\n  region: us-ashburn-1\n  tokenExchange: {{host: 127.0.0.1, port: 12250}}\n\
             alerts:\n  sinks:\n    - {{type: ociNotifications, name: ons, topicId: ocid1.onstopic.oc1..t}}\n"
        );
        let cfg = crate::config::parse(Path::new("c.yaml"), &text).unwrap();
        let oci = cfg.oci.unwrap();
        assert_eq!(oci.auth, super::OciAuth::WorkloadIdentity);
        assert_eq!(oci.token_exchange.port, Some(12250));

        let text = format!(
            "{BASE}alerts:\n  sinks:\n    - {{type: ociNotifications, name: ons, topicId: nope}}\n"
        );
        let err = crate::config::parse(Path::new("c.yaml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs the oci: section"), "{err}");
        assert!(
            err.contains("topicId must be an ocid1.onstopic OCID"),
            "{err}"
        );

        let sinks = "alerts:\n  sinks:\n    - {type: webhook, name: a, url: https://h.example/x, secretRef: {name: s, key: k}, ociVault: {secretId: ocid1.vaultsecret.oc1..s}}\n    - {type: slack, name: b}\n    - {type: slack, name: c, ociVault: {secretId: x}}\n";
        let err = crate::config::parse(Path::new("c.yaml"), &format!("{BASE}{sinks}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("webhook/a: give secretRef or ociVault, not both"),
            "{err}"
        );
        assert!(
            err.contains("slack/b: secretRef or ociVault is required"),
            "{err}"
        );
        assert!(
            err.contains("slack/c: ociVault: secretId must be an ocid1.vaultsecret OCID"),
            "{err}"
        );
        assert!(
            err.contains(
                "an ociNotifications sink or an ociVault credential needs the oci: section"
            ),
            "{err}"
        );

        let text = format!("{BASE}oci: {{auth: configFile}}\n");
        let err = crate::config::parse(Path::new("c.yaml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth configFile needs configFile"), "{err}");
        let text = format!("{BASE}oci: {{endpoints: {{vault: 'ftp://x'}}}}\n");
        let err = crate::config::parse(Path::new("c.yaml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("endpoints.vault: unknown service"), "{err}");
        let text = "namespace: gitops\nsyncs: []\nsources:\n  - {name: a, url: https://h.example/o/r.git, triggers: {ociNotifications: [nope]}}\n";
        let err = crate::config::parse(Path::new("c.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("triggers.ociNotifications: \"nope\" is not an ocid1.onstopic OCID"),
            "{err}"
        );
        let text = format!("{BASE}oci: {{auth: magic}}\n");
        assert!(crate::config::parse(Path::new("c.yaml"), &text).is_err());
    }

    #[test]
    fn oci_sources_and_vault_held_webhook_secrets_parse_and_are_checked() {
        let oci = "oci: {region: us-ashburn-1}\n";
        let text = format!(
            "namespace: gitops\nsyncs: []\n{oci}\
             webhook: {{listen: ':8080', ociVault: {{oci-notifications: {{secretId: ocid1.vaultsecret.oc1..h}}}}}}\n\
             sources:\n  - {{name: a, ociDevOps: {{repositoryId: ocid1.devopsrepository.oc1..r, ref: {{tag: v1}}}}}}\n\
             \x20 - {{name: b, ociObjectStorage: {{namespace: ns, bucket: bk, prefix: live}}}}\n"
        );
        let cfg = crate::config::parse(Path::new("c.yaml"), &text).unwrap();
        let crate::config::OciSource::DevOps(d) = cfg.sources[0].oci.clone().unwrap() else {
            panic!("not DevOps")
        };
        assert_eq!(d.reference.tag.as_deref(), Some("v1"));
        assert_eq!(d.archive_format, "tar.gz");
        assert!(!cfg.sources[0].is_git());
        let hook = cfg.webhook.unwrap();
        assert!(hook.secrets_dir.as_os_str().is_empty());
        assert_eq!(
            hook.oci_vault["oci-notifications"].secret_id,
            "ocid1.vaultsecret.oc1..h"
        );

        let text = "namespace: gitops\nsyncs: []\n\
             webhook: {listen: ':8080', ociVault: {gitlub: {secretId: nope}}}\n\
             sources:\n  - {name: a, ociDevOps: {repositoryId: r, ref: {branch: refs/heads/x, commit: abc}}}\n\
             \x20 - {name: b, url: 'https://h.example/r.git', ociObjectStorage: {namespace: ns, bucket: bk}}\n\
             \x20 - {name: c, ociObjectStorage: {namespace: ns, bucket: bk}}\n\
             \x20 - {name: d, url: 'https://h.example/r.git', secretRef: {name: s}, ociVault: {secretName: x}}\n";
        let err = crate::config::parse(Path::new("c.yaml"), text)
            .unwrap_err()
            .to_string();
        for want in [
            "ociDevOps.repositoryId must be an ocid1.devopsrepository OCID",
            "ociDevOps.ref must name one of branch, tag, commit",
            "ociDevOps.ref.commit must be a full 40-hex-digit commit id",
            "ociDevOps.ref: give the short name, without refs/",
            "source \"b\": set exactly one of url (Git), directory (local), ociDevOps, ociObjectStorage",
            "source \"c\": ociObjectStorage needs object (an archive) or prefix, one of them",
            "c.yaml:5:26: an ociDevOps or ociObjectStorage source, or ociVault credentials, need the oci: section",
            "webhook.ociVault.gitlub: not a provider",
            "webhook.ociVault.gitlub: secretId must be an ocid1.vaultsecret OCID",
            "webhook.ociVault needs the oci: section",
            "source \"d\": ociVault: give secretId, or secretName with vaultId",
            "source \"d\": give secretRef or ociVault, not both",
        ] {
            assert!(err.contains(want), "{want:?} missing in:\n{err}");
        }
        let text = format!("{BASE}oci: {{vaultRefresh: soon}}\n");
        let err = crate::config::parse(Path::new("c.yaml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vaultRefresh \"soon\": expected a duration"),
            "{err}"
        );
    }

    #[test]
    fn the_pool_guard_is_a_step_of_at_least_one() {
        let text = |step: u32| {
            format!(
                "namespace: gitops\nsources: [{{name: a, directory: ./d}}]\n\
                 syncs: [{{name: s, source: a, namespace: ns, poolGuard: {{maxSizeStep: {step}}}}}]\n"
            )
        };
        let cfg = crate::config::parse(Path::new("c.yaml"), &text(3)).unwrap();
        assert_eq!(cfg.syncs[0].pool_guard.max_size_step, 3);
        let err = crate::config::parse(Path::new("c.yaml"), &text(0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("poolGuard.maxSizeStep must be at least 1"),
            "{err}"
        );
    }
}
