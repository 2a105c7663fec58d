//! `validate --crds`: the CustomResourceDefinitions the target cluster already has (an
//! operator's install, such as External Secrets Operator's), read from files, so that a
//! repository using their kinds validates offline without carrying the CRDs itself.

use std::path::{Path, PathBuf};

use gitops_agent::render::{self, Scopes};

/// One kind a CRD defines: (group, kind, plural, namespaced).
type Defined = (String, String, String, bool);

/// The built-in kinds, then those of the given CRDs.
#[derive(Debug, Default)]
pub struct ClusterCrds {
    kinds: Vec<Defined>,
}

impl ClusterCrds {
    /// Reads every `.yaml`/`.yml`/`.json` file of each path (a file, or a directory, not
    /// recursively); documents that are not CustomResourceDefinitions are skipped.
    pub fn read(paths: &[PathBuf]) -> anyhow::Result<ClusterCrds> {
        let mut kinds = Vec::new();
        for path in paths {
            for file in files(path)? {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                for d in docs
                    .iter()
                    .filter(|d| d["kind"] == "CustomResourceDefinition")
                {
                    kinds.push(defined(d).ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}: CustomResourceDefinition/{}: needs spec.group, spec.names.kind, spec.names.plural and spec.scope",
                            file.display(),
                            d["metadata"]["name"].as_str().unwrap_or("?")
                        )
                    })?);
                }
            }
        }
        Ok(ClusterCrds { kinds })
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

fn defined(crd: &serde_json::Value) -> Option<Defined> {
    let s = &crd["spec"];
    let text = |v: &serde_json::Value| v.as_str().filter(|t| !t.is_empty()).map(str::to_owned);
    let scope = s["scope"].as_str()?;
    Some((
        text(&s["group"])?,
        text(&s["names"]["kind"])?,
        text(&s["names"]["plural"])?,
        scope == "Namespaced",
    ))
}

fn files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))? {
        let p = entry?.path();
        let manifest = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if p.is_file() && manifest {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
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
             spec: {group: external-secrets.io, scope: Namespaced, names: {kind: ExternalSecret, plural: externalsecrets}, versions: []}\n\
             ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: skipped}\n",
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
        std::fs::write(
            dir.path().join("bad.yaml"),
            "kind: CustomResourceDefinition\nmetadata: {name: broken}\nspec: {group: x}\n",
        )
        .unwrap();
        let err = ClusterCrds::read(&[dir.path().to_owned()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.yaml: CustomResourceDefinition/broken: needs"),
            "{err}"
        );
    }
}
