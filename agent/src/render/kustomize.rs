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
    #[error("{dir}: writing the files for the renderer: {source}")]
    Write {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir}: kustomize build: {source}")]
    Build {
        dir: String,
        /// The kustomization file built.
        file: String,
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
    check_references(files, dir)?;
    let tree = write_tree(files, &shown)?;
    let target = inside(&tree.repo(), if dir.is_empty() { "." } else { dir })?;
    // `--load-restrictor LoadRestrictionsRootOnly` is the default; said anyway, so that no
    // configuration of the binary's can loosen it.
    let args = vec![
        "build".to_owned(),
        "--load-restrictor".to_owned(),
        "LoadRestrictionsRootOnly".to_owned(),
        target.display().to_string(),
    ];
    let out = exec::run(binary, &args, &tree.repo(), bounds)
        .await
        .map_err(|source| Error::Build {
            dir: shown.clone(),
            file: kustomization(files, dir)
                .map(|k| k.path.clone())
                .unwrap_or_else(|| shown.clone()),
            source: tree.scrub(source),
        })?;
    // Named so that errors say where the objects came from, and read as YAML.
    Ok(File {
        path: format!("{shown} (kustomize build).yaml"),
        content: out,
    })
}

impl Error {
    /// The repository file (or directory) the error is about.
    pub fn file(&self) -> String {
        match self {
            Error::Path { path, .. } => path.clone(),
            Error::Write { dir, .. } => dir.clone(),
            Error::Build { file, .. } => file.clone(),
        }
    }
}

/// A private temporary directory holding a revision's files under `repo/`, for a renderer
/// to read; gone when dropped.
pub struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    /// Where the repository's root is.
    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// Where the renderer's own inputs (not the repository's) may go.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The temporary directory's name out of a renderer's messages: they name repository
    /// paths.
    pub fn scrub(&self, e: exec::Error) -> exec::Error {
        match e {
            exec::Error::Failed {
                program,
                status,
                stderr,
            } => {
                let repo = self.repo().display().to_string();
                let top = self.dir.path().display().to_string();
                let stderr = stderr
                    .replace(&format!("{repo}/"), "")
                    .replace(&repo, ".")
                    .replace(&format!("{top}/"), "")
                    .replace(&top, ".");
                exec::Error::Failed {
                    program,
                    status,
                    stderr,
                }
            }
            other => other,
        }
    }
}

/// Writes `files` as plain files (the source already resolved symlinks, inside the tree
/// only) under a fresh private directory, for the render of `shown`.
pub fn write_tree(files: &[File], shown: &str) -> Result<Tree, Error> {
    let io = |source| Error::Write {
        dir: shown.to_owned(),
        source,
    };
    let dir = tempfile::Builder::new()
        .prefix("gitops-agent-render-")
        .tempdir()
        .map_err(io)?;
    let tree = Tree { dir };
    let repo = tree.repo();
    std::fs::create_dir(&repo).map_err(io)?;
    for f in files {
        let to = inside(&repo, &f.path)?;
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&to, &f.content).map_err(io)?;
    }
    Ok(tree)
}

/// Remote bases and resources would be fetched over the network, bypassing the source (its
/// revision, limits and credentials) and letting a repository pull anything from anywhere,
/// as Flux's `--no-remote-bases` says; a base may sit anywhere in the repository, but the
/// load restrictor does not stop a directory reference from leaving it (`../../etc`); Helm
/// inflation from kustomize runs a chart outside the agent's Helm sandbox. All are refused
/// before the binary runs, naming the file, for the kustomization in `dir` and every one
/// it reaches (others in the repository are not this build's business).
fn check_references(files: &[File], dir: &str) -> Result<(), Error> {
    let mut todo = vec![dir.to_owned()];
    let mut seen = std::collections::HashSet::new();
    while let Some(dir) = todo.pop() {
        if !seen.insert(dir.clone()) {
            continue;
        }
        // A file resource, or a directory without one: kustomize reads or reports it.
        let Some(f) = kustomization(files, &dir) else {
            continue;
        };
        let Ok(doc) = serde_saphyr::from_slice::<serde_json::Value>(&f.content) else {
            continue; // kustomize says what is wrong with it
        };
        let refused = |reason| {
            Err(Error::Path {
                path: f.path.clone(),
                reason,
            })
        };
        let references = ["resources", "components", "bases", "crds"]
            .iter()
            .flat_map(|k| doc[*k].as_array().into_iter().flatten())
            .filter_map(|v| v.as_str());
        for r in references {
            if is_remote(r) {
                return refused(
                    "remote bases and resources are not fetched: vendor them into the repository",
                );
            }
            match resolve(&dir, r) {
                Some(path) => todo.push(path),
                None => return refused("a resource or base outside the repository"),
            }
        }
        if doc.get("helmCharts").is_some() || doc.get("helmChartInflationGenerator").is_some() {
            return refused(
                "Helm inflation from kustomize is off: give the sync a helm: chart instead",
            );
        }
    }
    Ok(())
}

/// Where `reference`, from the directory `dir` (repository-relative), points in the
/// repository; `None` when it leaves it.
fn resolve(dir: &str, reference: &str) -> Option<String> {
    if reference.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
    for c in reference.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            _ => parts.push(c),
        }
    }
    Some(parts.join("/"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::testing::{file, pinned};

    #[test]
    fn references_are_followed_to_see_whether_they_leave_the_repository() {
        assert_eq!(
            resolve("overlays/oke", "../../base").as_deref(),
            Some("base")
        );
        assert_eq!(resolve("", "base").as_deref(), Some("base"));
        assert_eq!(resolve("a", "./b/../c").as_deref(), Some("a/c"));
        assert_eq!(resolve("overlays/oke", "../../../etc"), None);
        assert_eq!(resolve("a", "b/../../.."), None);
        assert_eq!(resolve("a", "/etc/kubernetes"), None);
    }

    fn binary() -> PathBuf {
        pinned("kustomize")
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
        // Only what the build reaches counts: the overlay does not reach `remote/`.
        build(&bin, &files, "overlays/oke", &Bounds::default())
            .await
            .unwrap();
        files.push(file("via/kustomization.yaml", "resources: [../remote]\n"));
        let err = build(&bin, &files, "via", &Bounds::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("remote/kustomization.yaml: remote bases"),
            "{err}"
        );
        files.retain(|f| !f.path.starts_with("remote/") && !f.path.starts_with("via/"));
        files.push(file(
            "up/kustomization.yaml",
            "resources: [../base, ../../etc/kubernetes]\n",
        ));
        let err = build(&bin, &files, "up", &Bounds::default())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "up/kustomization.yaml: a resource or base outside the repository"
        );
        files.retain(|f| !f.path.starts_with("up/"));
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
                !err.contains("gitops-agent-render-"),
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
