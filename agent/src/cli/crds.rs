//! `validate --crds`: the CustomResourceDefinitions the target cluster already has (an
//! operator's install, such as External Secrets Operator's), read from files, so that a
//! repository using their kinds validates offline without carrying the CRDs itself.

use std::path::PathBuf;

use gitops_agent::render::{self, Scopes};
use gitops_agent::source;

/// One kind a CRD defines: (group, kind, plural, namespaced).
type Defined = (String, String, String, bool);

/// The built-in kinds, then those of the given CRDs.
#[derive(Debug, Default)]
pub struct ClusterCrds {
    kinds: Vec<Defined>,
}

impl ClusterCrds {
    /// Reads each path (a file, or a directory as a sync reads one: the same limits and
    /// parser), renders it, and keeps the kinds its CustomResourceDefinitions define.
    pub fn read(paths: &[PathBuf]) -> anyhow::Result<ClusterCrds> {
        let mut kinds = Vec::new();
        for path in paths {
            let files = match path.is_dir() {
                true => source::read_dir(path, &Default::default())?,
                false => vec![source::File {
                    path: path.display().to_string(),
                    content: std::fs::read(path)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                }],
            };
            let manifests = render::render(&files, &Default::default(), &render::BuiltinScopes)
                .map_err(|e| anyhow::anyhow!("--crds {}:\n{e}", path.display()))?;
            kinds.extend(ClusterCrds::from_manifests(&manifests).kinds);
        }
        Ok(ClusterCrds { kinds })
    }

    /// The kinds the CustomResourceDefinitions among `manifests` define.
    pub fn from_manifests(manifests: &[render::Manifest]) -> ClusterCrds {
        ClusterCrds {
            kinds: manifests.iter().filter_map(render::crd_resource).collect(),
        }
    }

    /// The plural and scope of a kind, built-in or defined by these CRDs.
    pub fn resource(&self, group: &str, kind: &str) -> Option<(String, bool)> {
        if let Some((plural, namespaced)) = render::BuiltinScopes::resource(group, kind) {
            return Some((plural.to_owned(), namespaced));
        }
        self.kinds
            .iter()
            .find(|(g, k, _, _)| g == group && k == kind)
            .map(|(_, _, plural, namespaced)| (plural.clone(), *namespaced))
    }
}

impl Scopes for ClusterCrds {
    fn namespaced(&self, group: &str, kind: &str) -> Option<bool> {
        self.resource(group, kind).map(|(_, namespaced)| namespaced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_crds_and_the_built_in_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("eso.yaml"),
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: externalsecrets.external-secrets.io}\n\
             spec: {group: external-secrets.io, scope: Namespaced, names: {kind: ExternalSecret, plural: externalsecrets},\n\
             \x20 versions: [{name: v1, served: true, storage: true}]}\n\
             ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: skipped, namespace: default}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("README.md"), "not read").unwrap();
        let crds = ClusterCrds::read(&[dir.path().to_owned()]).unwrap();
        assert_eq!(
            crds.resource("external-secrets.io", "ExternalSecret"),
            Some(("externalsecrets".into(), true))
        );
        assert_eq!(crds.namespaced("apps", "Deployment"), Some(true));
        assert_eq!(crds.namespaced("example.com", "Widget"), None);
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: broken}\nspec: {group: x}\n",
        )
        .unwrap();
        let err = ClusterCrds::read(&[bad]).unwrap_err().to_string();
        assert!(
            err.contains("bad.yaml") && err.contains("CustomResourceDefinition/broken"),
            "{err}"
        );
    }
}
