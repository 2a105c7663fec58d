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
            if service != "secrets" && service != "notifications" {
                out.push(format!(
                    "oci: endpoints.{service}: unknown service (secrets, notifications)"
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
