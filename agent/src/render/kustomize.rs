//! kustomize overlays: a directory with a `kustomization.yaml` (`.yml`, `Kustomization`) is
//! built with the pinned `kustomize` binary. The revision's files (already read under the
//! source's rules: no escaping symlinks, caps) are written as plain files into a fresh
//! private directory, so the binary sees nothing else of the machine; it runs with the
//! default load restrictor (files only from inside each kustomization's root), without
//! plugins, exec functions, network or Helm, and through [`exec::run`]'s sandbox. The
//! output is one multi-document stream, rendered like any file, named `<dir> (kustomize
//! build).yaml` in messages.

use std::path::{Component, Path, PathBuf};

use super::exec::{self, Bounds};
use crate::source::File;

/// The names kustomize looks for, in its order.
pub const FILE_NAMES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {reason}")]
    Path { path: String, reason: &'static str },
    #[error("{dir}: writing the files for kustomize: {source}")]
    Write {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir}: kustomize build: {source}")]
    Build {
        dir: String,
        #[source]
        source: exec::Error,
    },
}

/// The kustomization file directly in `dir` (`""` for the root), if any.
pub fn kustomization<'a>(files: &'a [File], dir: &str) -> Option<&'a File> {
    let dir = dir.trim_matches('/');
    FILE_NAMES.iter().find_map(|name| {
        let want = if dir.is_empty() {
            (*name).to_owned()
        } else {
            format!("{dir}/{name}")
        };
        files.iter().find(|f| f.path == want)
    })
}

/// Builds the kustomization in `dir` of `files` (paths from the repository root) with
/// `binary`; its output, as one file named after the kustomization.
pub async fn build(
    binary: &Path,
    files: &[File],
    dir: &str,
    bounds: &Bounds,
) -> Result<File, Error> {
    let dir = dir.trim_matches('/');
    let shown = if dir.is_empty() { "." } else { dir }.to_owned();
    refuse_remote(files)?;
    let tree = tempfile::Builder::new()
        .prefix("gitops-agent-kustomize-")
        .tempdir()
        .map_err(|source| Error::Write {
            dir: shown.clone(),
            source,
        })?;
    for f in files {
        let to = inside(tree.path(), &f.path)?;
        let write = || -> std::io::Result<()> {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&to, &f.content)
        };
        write().map_err(|source| Error::Write {
            dir: shown.clone(),
            source,
        })?;
    }
    let target = inside(tree.path(), if dir.is_empty() { "." } else { dir })?;
    // `--load-restrictor LoadRestrictionsRootOnly` is the default; said anyway, so that no
    // configuration of the binary's can loosen it.
    let args = vec![
        "build".to_owned(),
        "--load-restrictor".to_owned(),
        "LoadRestrictionsRootOnly".to_owned(),
        target.display().to_string(),
    ];
    let out = exec::run(binary, &args, tree.path(), bounds)
        .await
        .map_err(|source| Error::Build {
            dir: shown.clone(),
            source: scrub(source, tree.path()),
        })?;
    // Named so that errors say where the objects came from, and read as YAML.
    Ok(File {
        path: format!("{shown} (kustomize build).yaml"),
        content: out,
    })
}

/// Remote bases and resources would be fetched over the network, bypassing the source (its
/// revision, limits and credentials) and letting a repository pull anything from anywhere,
/// as Flux's `--no-remote-bases` says; Helm inflation from kustomize runs a chart outside the
/// agent's Helm sandbox. Both are refused before the binary runs, naming the file.
fn refuse_remote(files: &[File]) -> Result<(), Error> {
    for f in files {
        let name = f.path.rsplit('/').next().unwrap_or(&f.path);
        if !FILE_NAMES.contains(&name) {
            continue;
        }
        let Ok(doc) = serde_saphyr::from_slice::<serde_json::Value>(&f.content) else {
            continue; // kustomize says what is wrong with it
        };
        let remote = ["resources", "components", "bases"].iter().any(|k| {
            doc[*k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .any(is_remote)
        });
        if remote {
            return Err(Error::Path {
                path: f.path.clone(),
                reason: "remote bases and resources are not fetched: vendor them into the repository",
            });
        }
        if doc.get("helmCharts").is_some() || doc.get("helmChartInflationGenerator").is_some() {
            return Err(Error::Path {
                path: f.path.clone(),
                reason: "Helm inflation from kustomize is off: give the sync a helm: chart instead",
            });
        }
    }
    Ok(())
}

/// A reference kustomize would fetch: a URL, an scp-like Git address, or a hosted repo path.
fn is_remote(r: &str) -> bool {
    r.contains("://")
        || r.starts_with("git@")
        || r.contains("?ref=")
        || ["github.com/", "gitlab.com/", "bitbucket.org/"]
            .iter()
            .any(|h| r.starts_with(h))
}

/// `rel` under `root`, refusing what would leave it (the source's rules already did; this
/// is the second lock on the door).
fn inside(root: &Path, rel: &str) -> Result<PathBuf, Error> {
    let p = Path::new(rel);
    let ok = p
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !ok {
        return Err(Error::Path {
            path: rel.to_owned(),
            reason: "must stay inside the repository",
        });
    }
    Ok(root.join(p))
}

/// The temporary directory's name out of kustomize's messages: they name repository paths.
fn scrub(e: exec::Error, tree: &Path) -> exec::Error {
    match e {
        exec::Error::Failed {
            program,
            status,
            stderr,
        } => {
            let prefix = format!("{}/", tree.display());
            exec::Error::Failed {
                program,
                status,
                stderr: stderr
                    .replace(&prefix, "")
                    .replace(&tree.display().to_string(), "."),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pinned binary, as tests/setup builds it.
    fn binary() -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::process::Command::new(root.join("tests/renderers/build"))
            .output()
            .expect("tests/renderers/build");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("kustomize")
    }

    fn file(path: &str, content: &str) -> File {
        File {
            path: path.into(),
            content: content.as_bytes().to_vec(),
        }
    }

    fn repo() -> Vec<File> {
        vec![
            file(
                "base/kustomization.yaml",
                "resources: [cm.yaml]\nconfigMapGenerator:\n  - {name: settings, literals: [mode=base]}\n",
            ),
            file(
                "base/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {a: b}\n",
            ),
            file(
                "overlays/oke/kustomization.yaml",
                "resources: [../../base]\nnamespace: shop\nnamePrefix: oke-\n\
                 configMapGenerator:\n  - {name: settings, behavior: merge, literals: [mode=oke]}\n",
            ),
        ]
    }

    #[tokio::test]
    async fn an_overlay_builds_with_its_base_and_a_hashed_generator() {
        let files = repo();
        assert!(kustomization(&files, "overlays/oke").is_some());
        assert!(kustomization(&files, "overlays").is_none());
        let out = build(&binary(), &files, "overlays/oke", &Bounds::default())
            .await
            .unwrap();
        assert_eq!(out.path, "overlays/oke (kustomize build).yaml");
        let text = String::from_utf8(out.content).unwrap();
        assert!(text.contains("name: oke-web"), "{text}");
        assert!(text.contains("namespace: shop"), "{text}");
        assert!(text.contains("mode: oke"), "{text}");
        // The generated ConfigMap's name carries its content hash.
        assert!(text.contains("name: oke-settings-"), "{text}");
    }

    #[tokio::test]
    async fn a_kustomization_cannot_reach_out_of_its_tree_or_the_network() {
        let mut files = repo();
        files.push(file(
            "escape/kustomization.yaml",
            "configMapGenerator:\n  - {name: stolen, files: [../../../../etc/passwd]}\n",
        ));
        files.push(file(
            "remote/kustomization.yaml",
            "resources:\n  - https://github.com/kubernetes-sigs/kustomize//examples/helloWorld?ref=v5.0.0\n",
        ));
        files.push(file("exec/kustomization.yaml", "generators: [gen.yaml]\n"));
        files.push(file(
            "exec/gen.yaml",
            "apiVersion: gitops.example/v1\nkind: Gen\nmetadata:\n  name: g\n  annotations:\n    config.kubernetes.io/function: |\n      exec:\n        path: /bin/sh\n",
        ));
        let bin = binary();
        let err = build(&bin, &files, "remote", &Bounds::default())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "remote/kustomization.yaml: remote bases and resources are not fetched: vendor them into the repository"
        );
        files.retain(|f| !f.path.starts_with("remote/"));
        for dir in ["escape", "exec"] {
            let err = build(&bin, &files, dir, &Bounds::default())
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("{dir}: kustomize build: kustomize: failed")),
                "{err}"
            );
            assert!(
                !err.contains("gitops-agent-kustomize-"),
                "no temporary path: {err}"
            );
            assert!(!err.contains("root:x:0:0"), "{err}");
        }
        let err = build(
            &bin,
            &[file("../x/kustomization.yaml", "")],
            "../x",
            &Bounds::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "../x/kustomization.yaml: must stay inside the repository"
        );
    }
}
