//! The identity of a Kubernetes object, shared by every stage: group, version, kind,
//! namespace and name, printed the way every message names its subject (`Kind/ns/name`).

use std::fmt;

/// Identifies one object. Ordering is by group, kind, namespace, name (the version is
/// not part of identity: `apps/v1` and `apps/v1beta1` Deployments are the same object).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub version: String,
}

impl ObjectRef {
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

    /// Identity without the version, for comparing objects across API versions.
    pub fn same_object(&self, other: &ObjectRef) -> bool {
        self.group == other.group
            && self.kind == other.kind
            && self.namespace == other.namespace
            && self.name == other.name
    }
}

impl fmt::Display for ObjectRef {
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

    fn r(group: &str, version: &str, kind: &str, ns: Option<&str>, name: &str) -> ObjectRef {
        ObjectRef {
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
        assert_eq!(ObjectRef::split_api_version("apps/v1"), ("apps", "v1"));
        assert_eq!(ObjectRef::split_api_version("v1"), ("", "v1"));
    }

    #[test]
    fn version_is_not_identity() {
        assert!(
            r("apps", "v1", "Deployment", Some("a"), "b").same_object(&r(
                "apps",
                "v1beta1",
                "Deployment",
                Some("a"),
                "b"
            ))
        );
    }
}
