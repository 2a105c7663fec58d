//! Maps group/version/kind to API resources (plural, scope) from the API server's
//! aggregated discovery; refreshed after CustomResourceDefinitions change.

use std::collections::HashMap;

use kube::Client;
use kube::api::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API discovery: {0}")]
    Discover(#[source] kube::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A resolved kind: how to reach it and whether it lives in namespaces.
#[derive(Debug, Clone)]
pub struct Resource {
    pub api: ApiResource,
    pub namespaced: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Discovery {
    // (group, version, kind) and, for version-free questions, (group, kind).
    by_gvk: HashMap<(String, String, String), Resource>,
    by_gk: HashMap<(String, String), Resource>,
}

impl Discovery {
    pub async fn run(client: &Client) -> Result<Self> {
        let d = kube::Discovery::new(client.clone())
            .run_aggregated()
            .await
            .map_err(Error::Discover)?;
        let mut out = Discovery::default();
        for group in d.groups() {
            let preferred = group.preferred_version_or_latest().to_string();
            for version in group.versions() {
                for (ar, caps) in group.versioned_resources(version) {
                    // Subresources (pods/status) share the kind; only the main resource counts.
                    if ar.plural.contains('/') {
                        continue;
                    }
                    let res = Resource {
                        namespaced: caps.scope == Scope::Namespaced,
                        api: ar.clone(),
                    };
                    let gk = (ar.group.clone(), ar.kind.clone());
                    if version == preferred || !out.by_gk.contains_key(&gk) {
                        out.by_gk.insert(gk, res.clone());
                    }
                    out.by_gvk
                        .insert((ar.group.clone(), ar.version.clone(), ar.kind.clone()), res);
                }
            }
        }
        Ok(out)
    }

    /// The resource for an exact apiVersion and kind.
    pub fn resolve(&self, group: &str, version: &str, kind: &str) -> Option<&Resource> {
        self.by_gvk
            .get(&(group.to_string(), version.to_string(), kind.to_string()))
    }

    /// The preferred resource for a kind, whatever the version.
    pub fn resolve_kind(&self, group: &str, kind: &str) -> Option<&Resource> {
        self.by_gk.get(&(group.to_string(), kind.to_string()))
    }

    /// Whether a kind is namespaced, whatever the version; `None` when unknown.
    pub fn namespaced(&self, group: &str, kind: &str) -> Option<bool> {
        self.by_gk
            .get(&(group.to_string(), kind.to_string()))
            .map(|r| r.namespaced)
    }

    pub fn gvk_known(&self, gvk: &GroupVersionKind) -> bool {
        self.resolve(&gvk.group, &gvk.version, &gvk.kind).is_some()
    }

    /// Every `group/version` and `group/version/Kind` served (`v1`, `v1/Pod` for the core
    /// group), sorted: what Helm's `.Capabilities.APIVersions` holds.
    pub fn api_versions(&self) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        for (group, version, kind) in self.by_gvk.keys() {
            let gv = if group.is_empty() {
                version.clone()
            } else {
                format!("{group}/{version}")
            };
            out.insert(format!("{gv}/{kind}"));
            out.insert(gv);
        }
        out.into_iter().collect()
    }

    pub fn len(&self) -> usize {
        self.by_gvk.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_gvk.is_empty()
    }
}
