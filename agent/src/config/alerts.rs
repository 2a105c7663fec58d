//! The `alerts:` section of the configuration: which sinks alerts go to. Only the schema
//! and its validation; the sinks themselves are built in `notify`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// A key of a Kubernetes Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
    /// Defaults to the agent's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A secret of OCI Vault, read with GetSecretBundle (its CURRENT version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OciVaultRef {
    /// `ocid1.vaultsecret...`...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_id: String,
    /// ...or the secret's name in the vault `vault_id` (GetSecretBundleByName).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_id: Option<String>,
}

impl OciVaultRef {
    pub fn by_id(secret_id: &str) -> Self {
        OciVaultRef {
            secret_id: secret_id.to_owned(),
            secret_name: None,
            vault_id: None,
        }
    }

    /// What is wrong with the reference, for a message after `where_: ociVault`.
    pub fn problem(&self) -> Option<&'static str> {
        match (self.secret_id.is_empty(), &self.secret_name, &self.vault_id) {
            (false, None, None) if self.secret_id.starts_with("ocid1.vaultsecret.") => None,
            (false, None, None) => Some("secretId must be an ocid1.vaultsecret OCID"),
            (true, Some(n), Some(v)) if !n.is_empty() && v.starts_with("ocid1.vault.") => None,
            (true, Some(_), Some(_)) => {
                Some("vaultId must be an ocid1.vault OCID, with a secretName")
            }
            _ => Some("give secretId, or secretName with vaultId"),
        }
    }
}

impl std::fmt::Display for OciVaultRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.secret_name, &self.vault_id) {
            (Some(n), Some(v)) if self.secret_id.is_empty() => write!(f, "{n} in {v}"),
            _ => f.write_str(&self.secret_id),
        }
    }
}

/// Where a credential is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    Kubernetes(&'a SecretKeyRef),
    OciVault(&'a OciVaultRef),
}

/// The object the agent's own Events are recorded on (its Pod, Deployment, a Lease…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// Defaults to the agent's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The `alerts:` section of the agent configuration.
///
/// ```yaml
/// alerts:
///   sinks:
///     - type: events
///       name: cluster
///       agentRef: {apiVersion: apps/v1, kind: Deployment, name: gitops-agent}
///     - type: webhook
///       name: ops
///       url: https://alerts.example.com/gitops
///       secretRef: {name: alert-hmac, key: secret}
///     - type: slack
///       name: team
///       secretRef: {name: slack, key: url}   # the incoming-webhook URL is the secret
///       blocks: true
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertsConfig {
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
}

impl AlertsConfig {
    /// Every problem of the section, one message each (empty when valid).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for s in &self.sinks {
            if !crate::core::names::is_dns_label(s.name()) {
                out.push(format!(
                    "alert sink {}: name must be a DNS label (lowercase letters, digits, '-')",
                    s.id()
                ));
            }
            if !seen.insert(s.name()) {
                out.push(format!(
                    "alert sink {}: name {:?} is already used by another sink",
                    s.id(),
                    s.name()
                ));
            }
            if let Some(why) = s.credential_problem() {
                out.push(format!("alert sink {}: {why}", s.id()));
            }
            if let Some(Credential::OciVault(v)) = s.credential()
                && let Some(why) = v.problem()
            {
                out.push(format!("alert sink {}: ociVault: {why}", s.id()));
            }
            if let SinkConfig::OciNotifications {
                topic_id, endpoint, ..
            } = s
            {
                if !topic_id.starts_with("ocid1.onstopic.") {
                    out.push(format!(
                        "alert sink {}: topicId must be an ocid1.onstopic OCID",
                        s.id()
                    ));
                }
                if let Some(Err(why)) = endpoint.as_deref().map(crate::http::client::parse_url) {
                    out.push(format!("alert sink {}: endpoint: {why}", s.id()));
                }
            }
            if let SinkConfig::Webhook { url, .. } = s
                && let Err(why) = crate::http::client::parse_url(url)
            {
                out.push(format!(
                    "alert sink {}: url {}: {why}",
                    s.id(),
                    crate::http::client::redact(url, false)
                ));
            }
        }
        out
    }
}

/// One sink, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum SinkConfig {
    /// Kubernetes Events (events.k8s.io/v1) on the subject and on `agentRef`.
    Events {
        name: String,
        agent_ref: AgentRef,
        /// `reportingController` of the Events.
        #[serde(default = "default_controller")]
        reporting_controller: String,
    },
    /// JSON POST signed with HMAC-SHA256 (`X-Signature-256: sha256=<hex>`).
    Webhook {
        name: String,
        /// `https://`; `http://` only to a loopback address.
        url: String,
        /// The HMAC key, from a Kubernetes Secret...
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_ref: Option<SecretKeyRef>,
        /// ...or from OCI Vault.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        oci_vault: Option<OciVaultRef>,
    },
    /// OCI Notifications: PublishMessage to a topic, signed with the `oci:` identity.
    OciNotifications {
        name: String,
        /// `ocid1.onstopic...`.
        topic_id: String,
        /// The Notifications endpoint; default `https://notification.<region>.oraclecloud.com`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
    /// A Slack-compatible incoming webhook.
    Slack {
        name: String,
        /// The incoming-webhook URL (it is the credential), from a Kubernetes Secret...
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_ref: Option<SecretKeyRef>,
        /// ...or from OCI Vault.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        oci_vault: Option<OciVaultRef>,
        /// Add Block Kit `blocks` beside the plain `text`.
        #[serde(default = "yes")]
        blocks: bool,
    },
}

fn default_controller() -> String {
    crate::FIELD_MANAGER.to_string()
}

fn yes() -> bool {
    true
}

impl SinkConfig {
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Events { name, .. }
            | SinkConfig::Webhook { name, .. }
            | SinkConfig::OciNotifications { name, .. }
            | SinkConfig::Slack { name, .. } => name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Events { .. } => "events",
            SinkConfig::Webhook { .. } => "webhook",
            SinkConfig::OciNotifications { .. } => "ociNotifications",
            SinkConfig::Slack { .. } => "slack",
        }
    }

    /// `type/name`, how errors and metrics name the sink.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind(), self.name())
    }

    /// Where the credential the caller resolves into [`SinkResources::secret`] is.
    pub fn credential(&self) -> Option<Credential<'_>> {
        match self.credential_fields()? {
            (Some(r), _) => Some(Credential::Kubernetes(r)),
            (None, Some(v)) => Some(Credential::OciVault(v)),
            (None, None) => None,
        }
    }

    /// Whether the sink names its credential once, as a Secret key or a Vault secret.
    fn credential_problem(&self) -> Option<&'static str> {
        match self.credential_fields()? {
            (Some(_), Some(_)) => Some("give secretRef or ociVault, not both"),
            (None, None) => Some("secretRef or ociVault is required"),
            _ => None,
        }
    }

    /// A sink's two ways of naming its credential; `None` for sinks that have none.
    fn credential_fields(&self) -> Option<(&Option<SecretKeyRef>, &Option<OciVaultRef>)> {
        match self {
            SinkConfig::Events { .. } | SinkConfig::OciNotifications { .. } => None,
            SinkConfig::Webhook {
                secret_ref,
                oci_vault,
                ..
            }
            | SinkConfig::Slack {
                secret_ref,
                oci_vault,
                ..
            } => Some((secret_ref, oci_vault)),
        }
    }
}
