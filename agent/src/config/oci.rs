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
pub const SERVICES: [&str; 4] = ["secrets", "notifications", "devops", "objectstorage"];

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
            err.contains("slack/c: ociVault.secretId must be an ocid1.vaultsecret OCID"),
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
}
