//! The identity of a Kubernetes object, shared by every stage: group, kind, namespace and
//! name (the version travels along, outside identity), printed the way every message
//! names its subject (`Kind/ns/name`).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// Identifies one object: group, kind, namespace and name. The version it was read or
/// written at travels with it (requests need one) but is not part of its identity:
/// `apps/v1` and `apps/v1beta1` Deployments of the same name are the same object, so
/// equality, ordering and hashing leave it out.
#[derive(Debug, Clone)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub version: String,
}

impl ObjectKey {
    /// `apiVersion` as written in a manifest: `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Splits an `apiVersion` into (group, version).
    pub fn split_api_version(api_version: &str) -> (&str, &str) {
        match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        }
    }

    fn identity(&self) -> (&str, &str, Option<&str>, &str) {
        (
            &self.group,
            &self.kind,
            self.namespace.as_deref(),
            &self.name,
        )
    }
}

impl PartialEq for ObjectKey {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for ObjectKey {}

impl Hash for ObjectKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Group, kind, namespace, name.
impl Ord for ObjectKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.identity().cmp(&other.identity())
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind, ns, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(group: &str, version: &str, kind: &str, ns: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            namespace: ns.map(Into::into),
            name: name.into(),
        }
    }

    #[test]
    fn displays_as_kind_namespace_name() {
        assert_eq!(
            r("apps", "v1", "Deployment", Some("shop"), "web").to_string(),
            "Deployment/shop/web"
        );
        assert_eq!(
            r("", "v1", "Namespace", None, "shop").to_string(),
            "Namespace/shop"
        );
    }

    #[test]
    fn api_version_round_trips() {
        assert_eq!(r("", "v1", "ConfigMap", Some("a"), "b").api_version(), "v1");
        assert_eq!(
            r("apps", "v1", "Deployment", Some("a"), "b").api_version(),
            "apps/v1"
        );
        assert_eq!(ObjectKey::split_api_version("apps/v1"), ("apps", "v1"));
        assert_eq!(ObjectKey::split_api_version("v1"), ("", "v1"));
    }

    #[test]
    fn version_is_not_identity() {
        use std::collections::{BTreeSet, HashSet};
        let v1 = r("apps", "v1", "Deployment", Some("a"), "b");
        let beta = r("apps", "v1beta1", "Deployment", Some("a"), "b");
        assert_eq!(v1, beta);
        assert_eq!(v1.cmp(&beta), std::cmp::Ordering::Equal);
        assert_eq!(HashSet::from([v1.clone(), beta.clone()]).len(), 1);
        assert_eq!(BTreeSet::from([v1.clone(), beta]).len(), 1);
        assert_ne!(v1, r("apps", "v1", "Deployment", Some("a"), "c"));
        assert_ne!(v1, r("apps", "v1", "Deployment", None, "b"));
        assert_ne!(v1, r("extensions", "v1", "Deployment", Some("a"), "b"));
    }
}
