//! The configuration file as written: serde structs, strict (unknown fields are errors),
//! with the places of values kept for messages. Validation turns them into [`super::Config`].

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{LeaderElection, SecretRef, Webhook};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) state_dir: Option<String>,
    #[serde(default)]
    pub(super) namespace: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) sources: Vec<RawSource>,
    #[serde(default)]
    pub(super) syncs: Vec<RawSync>,
    #[serde(default)]
    pub(super) webhook: Option<Spanned<Webhook>>,
    #[serde(default)]
    pub(super) metrics: Option<RawMetrics>,
    #[serde(default)]
    pub(super) leader_election: Option<LeaderElection>,
    #[serde(default)]
    pub(super) resync: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) alerts: Option<Spanned<super::alerts::AlertsConfig>>,
    #[serde(default)]
    pub(super) concurrency: Option<Spanned<usize>>,
    #[serde(default)]
    pub(super) oci: Option<Spanned<super::oci::OciConfig>>,
    #[serde(default)]
    pub(super) render: Option<RawRender>,
    #[serde(default)]
    pub(super) policies: Option<super::Policies>,
    #[serde(default)]
    pub(super) scope: Option<Spanned<super::Scope>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSource {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) url: Option<Spanned<String>>,
    /// A local directory instead of Git (development: edit a file, the cluster follows).
    #[serde(default)]
    pub(super) directory: Option<Spanned<String>>,
    /// An OCI DevOps code repository instead of Git.
    #[serde(default)]
    pub(super) oci_dev_ops: Option<Spanned<super::oci::DevOpsSource>>,
    /// OCI Object Storage instead of Git.
    #[serde(default)]
    pub(super) oci_object_storage: Option<Spanned<super::oci::ObjectStorageSource>>,
    #[serde(rename = "ref", default)]
    pub(super) reference: Option<Spanned<RawRef>>,
    #[serde(default)]
    pub(super) interval: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) secret_ref: Option<SecretRef>,
    /// The credentials in OCI Vault instead: a YAML map of the Secret's keys.
    #[serde(default)]
    pub(super) oci_vault: Option<Spanned<super::OciVaultRef>>,
    #[serde(default)]
    pub(super) triggers: Option<RawTriggers>,
}

/// What else may trigger a fetch of a source, besides its interval and push webhooks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTriggers {
    /// OCI Notifications topics whose messages (to the webhook receiver) mean "fetch now".
    #[serde(default)]
    pub(super) oci_notifications: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRef {
    #[serde(default)]
    pub(super) branch: Option<String>,
    #[serde(default)]
    pub(super) tag: Option<String>,
    #[serde(default)]
    pub(super) commit: Option<String>,
    #[serde(default)]
    pub(super) semver: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSync {
    pub(super) name: Spanned<String>,
    pub(super) source: Spanned<String>,
    #[serde(default)]
    pub(super) path: Option<Spanned<String>>,
    pub(super) namespace: Spanned<String>,
    #[serde(default = "yes")]
    pub(super) prune: bool,
    #[serde(default)]
    pub(super) self_heal: bool,
    #[serde(default)]
    pub(super) health: Option<RawHealth>,
    #[serde(default)]
    pub(super) suspend: bool,
    #[serde(default)]
    pub(super) prune_guard: Option<RawPruneGuard>,
    #[serde(default)]
    pub(super) pool_guard: Option<RawPoolGuard>,
    #[serde(default)]
    pub(super) helm: Option<RawHelm>,
    #[serde(default)]
    pub(super) policies: Option<Spanned<super::SyncPolicies>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRender {
    #[serde(default)]
    pub(super) kustomize: Option<std::path::PathBuf>,
    #[serde(default)]
    pub(super) helm: Option<std::path::PathBuf>,
    #[serde(default)]
    pub(super) timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) max_output_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) max_memory_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawHelm {
    pub(super) chart: Spanned<String>,
    #[serde(default)]
    pub(super) values_files: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) values: Option<Spanned<serde_json::Value>>,
    #[serde(default)]
    pub(super) release_name: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) namespace: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) post_render: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPoolGuard {
    #[serde(default)]
    pub(super) max_size_step: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    #[serde(default = "yes")]
    pub(super) wait: bool,
    #[serde(default)]
    pub(super) timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPruneGuard {
    #[serde(default)]
    pub(super) max_ratio: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) allow_mass_deletion: bool,
}

pub(super) fn yes() -> bool {
    true
}
