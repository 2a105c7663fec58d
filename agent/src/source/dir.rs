//! A local directory as a source (development: edit a file, the cluster follows), read with
//! the same rules as a Git tree. A fetch reads the whole directory once, so every sync of
//! the source sees the same snapshot; its revision is a hash of the contents.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;

use super::git::tree::resolve_link;
use super::{Error, File, Limits, Result, Revision, Source};

/// Reads every file under the local directory `dir`, with the rules of [`read_tree`];
/// paths are relative to `dir`. `.git` directories are skipped: a checkout's metadata is
/// not part of its content.
pub fn read_dir(dir: &Path, limits: &Limits) -> Result<Vec<File>> {
    read(dir, limits, false)
}

/// Like [`read_dir`], and also every other file that passes the same rules (a renderer's
/// inputs: `.env`, `.tpl`), best effort: one of those that breaks a rule (a link out, a
/// FIFO, too large, past a limit) is skipped rather than failing the read, as a working
/// directory holds much that is no input of anything.
pub fn read_dir_all(dir: &Path, limits: &Limits) -> Result<Vec<File>> {
    read(dir, limits, true)
}

/// An I/O error about `path`, for `map_err`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.display().to_string();
    move |source| Error::Io { path, source }
}

fn read(dir: &Path, limits: &Limits, others: bool) -> Result<Vec<File>> {
    let root = dir.canonicalize().map_err(io(dir))?;
    let mut reader = Reader {
        dir,
        root: &root,
        limits,
        files: Vec::new(),
        bytes: 0,
    };
    let mut stack = vec![(root.clone(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&abs).map_err(io(&abs))? {
            let entry = entry.map_err(io(&abs))?;
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| Error::BadPath {
                path: entry.path().display().to_string(),
                reason: "file name is not UTF-8",
            })?;
            let rel = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let path = entry.path();
            let kind = entry.file_type().map_err(io(&path))?;
            if kind.is_dir() {
                if rel.split('/').count() > limits.max_depth {
                    return Err(Error::TooDeep {
                        path: rel,
                        max: limits.max_depth,
                    });
                }
                if name != ".git" {
                    stack.push((path, rel));
                }
                continue;
            }
            if limits.reads(&rel) {
                reader.add(&path, rel, kind)?;
            } else if others && let Err(e) = reader.add(&path, rel, kind) {
                tracing::debug!(error = %e, "skipping a file no manifest needs");
            }
        }
    }
    let mut files = reader.files;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// The files read so far, and their bytes.
struct Reader<'a> {
    dir: &'a Path,
    root: &'a Path,
    limits: &'a Limits,
    files: Vec<File>,
    bytes: u64,
}

impl Reader<'_> {
    /// Reads the file at `path` (`rel` from the root) under the rules, or says which it
    /// breaks (and reads nothing).
    fn add(&mut self, path: &Path, rel: String, kind: std::fs::FileType) -> Result<()> {
        let limits = self.limits;
        let target = if kind.is_symlink() {
            link_target(self.dir, self.root, path, &rel)?
        } else if kind.is_file() {
            path.to_owned()
        } else {
            // A FIFO or a socket would block or fail on read.
            return Err(Error::BadPath {
                path: rel,
                reason: "not a regular file",
            });
        };
        if self.files.len() >= limits.max_files {
            return Err(Error::TooManyFiles {
                path: self.dir.display().to_string(),
                max: limits.max_files,
            });
        }
        let size = std::fs::metadata(&target).map_err(io(&target))?.len();
        if size > limits.max_file_size {
            return Err(Error::FileTooLarge {
                path: rel,
                size,
                max: limits.max_file_size,
            });
        }
        if self.bytes + size > limits.max_total_bytes {
            return Err(Error::TooManyBytes {
                path: self.dir.display().to_string(),
                max: limits.max_total_bytes,
            });
        }
        self.bytes += size;
        let content = std::fs::read(&target).map_err(io(&target))?;
        self.files.push(File { path: rel, content });
        Ok(())
    }
}

/// The file a symlink at `path` (`rel` from the root) names, when it is one inside `root`.
fn link_target(dir: &Path, root: &Path, path: &Path, rel: &str) -> Result<PathBuf> {
    let link = std::fs::read_link(path).map_err(io(path))?;
    let shown = link.display().to_string();
    let escape = || Error::SymlinkEscape {
        path: rel.to_owned(),
        target: shown.clone(),
        root: dir.display().to_string(),
    };
    // Lexically first (names the problem the way the author wrote it), then on the real
    // filesystem, where a directory link on the way could still lead out.
    if link.to_str().and_then(|t| resolve_link(rel, t)).is_none() {
        return Err(escape());
    }
    let broken = |reason| Error::Symlink {
        path: rel.to_owned(),
        target: shown.clone(),
        reason,
    };
    let real = path
        .canonicalize()
        .map_err(|_| broken("the target does not exist"))?;
    if !real.starts_with(root) {
        return Err(escape());
    }
    if real.is_dir() {
        return Err(broken("links to directories are not followed"));
    }
    if !real.is_file() {
        return Err(broken("the target is not a regular file"));
    }
    Ok(real)
}

/// A local directory, watched rather than fetched.
#[derive(Debug, Clone)]
pub struct DirSource {
    name: String,
    dir: PathBuf,
    limits: Limits,
}

impl DirSource {
    pub fn new(name: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        DirSource {
            name: name.into(),
            dir: dir.into(),
            limits: Limits::default(),
        }
    }
}

impl Source for DirSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Revision>> {
        Box::pin(async move {
            let (dir, limits) = (self.dir.clone(), self.limits.clone());
            // Every file a renderer may need, so the revision covers them too.
            let files = tokio::task::spawn_blocking(move || read_dir_all(&dir, &limits))
                .await
                .map_err(|source| Error::Task {
                    name: self.name.clone(),
                    source,
                })??;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for f in &files {
                f.path.hash(&mut h);
                f.content.hash(&mut h);
            }
            Ok(Revision::new(
                format!("directory@{:016x}", h.finish()),
                Arc::new(files),
            ))
        })
    }

    fn read<'a>(
        &'a self,
        revision: &'a Revision,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Vec<File>>> {
        Box::pin(async move {
            let mut files = self.read_all(revision, path).await?;
            files.retain(|f| self.limits.reads(&f.path));
            Ok(files)
        })
    }

    fn read_all<'a>(
        &'a self,
        revision: &'a Revision,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Vec<File>>> {
        Box::pin(async move {
            let files = revision
                .data::<Arc<Vec<File>>>()
                .ok_or_else(|| Error::Invalid {
                    name: self.name.clone(),
                    reason: format!("revision {revision} is not one of this directory"),
                })?;
            let path = super::git::tree::normalize(path)?;
            if path.is_empty() {
                return Ok(files.as_ref().clone());
            }
            let under: Vec<File> = files
                .iter()
                .filter(|f| {
                    f.path
                        .strip_prefix(path.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
                })
                .cloned()
                .collect();
            if under.is_empty() && !self.dir.join(&path).is_dir() {
                return Err(Error::BadPath {
                    path: format!("{}/{path}", self.dir.display()),
                    reason: "no such directory",
                });
            }
            Ok(under)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(files: &[File]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    #[tokio::test]
    async fn a_directory_source_gives_renderers_every_input_and_syncs_their_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(root.join("app/kustomization.yaml"), "resources: []\n").unwrap();
        std::fs::write(root.join("app/settings.env"), "a=b\n").unwrap();
        // Others that break a rule are skipped, not fatal: a big README, a link out.
        std::fs::write(root.join("app/README.md"), "x".repeat(5 << 20)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("app/passwd")).unwrap();
        let source = DirSource::new("dev", root);
        let revision = source.fetch().await.unwrap();
        let manifests = source.read(&revision, "app").await.unwrap();
        assert_eq!(paths(&manifests), ["app/kustomization.yaml"]);
        let all = source.read_all(&revision, "").await.unwrap();
        assert_eq!(paths(&all), ["app/kustomization.yaml", "app/settings.env"]);
        // An input's change is a new revision.
        std::fs::write(root.join("app/settings.env"), "a=c\n").unwrap();
        assert_ne!(source.fetch().await.unwrap().id, revision.id);
        // A manifest still breaks the read when it breaks a rule.
        std::os::unix::fs::symlink("/etc/passwd", root.join("app/stolen.yaml")).unwrap();
        assert!(source.fetch().await.is_err());
    }

    #[test]
    fn read_dir_applies_the_same_rules() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("apps/sub")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join(".git/config"), "x").unwrap();
        std::fs::write(root.join("apps/b.yaml"), "b").unwrap();
        std::fs::write(root.join("apps/sub/a.yaml"), "a").unwrap();
        std::fs::write(root.join("apps/a.yaml"), "a").unwrap();
        std::os::unix::fs::symlink("a.yaml", root.join("apps/link.yaml")).unwrap();
        // Not manifests: skipped unread, even a FIFO or a link that leads out.
        std::fs::write(root.join("apps/README.md"), "x".repeat(5 << 20)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("apps/passwd")).unwrap();
        let limits = Limits::default();
        let files = read_dir(&root, &limits).unwrap();
        assert_eq!(
            paths(&files),
            [
                "apps/a.yaml",
                "apps/b.yaml",
                "apps/link.yaml",
                "apps/sub/a.yaml"
            ]
        );
        assert_eq!(files[2].content, b"a");

        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("apps/escape.yaml")).unwrap();
        let err = read_dir(&root, &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "apps/escape.yaml: symlink to ../../secret leaves {}",
                root.display()
            )
        );
        std::fs::remove_file(root.join("apps/escape.yaml")).unwrap();
        // Through a directory link that itself leads out.
        std::os::unix::fs::symlink(dir.path(), root.join("apps/out.yaml")).unwrap();
        let err = read_dir(&root, &limits).unwrap_err();
        assert!(
            err.to_string().starts_with("apps/out.yaml: symlink to"),
            "{err}"
        );
        std::fs::remove_file(root.join("apps/out.yaml")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("apps/dir.yaml")).unwrap();
        let err = read_dir(&root, &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "apps/dir.yaml: symlink to sub: links to directories are not followed"
        );
        std::fs::remove_file(root.join("apps/dir.yaml")).unwrap();

        let small = Limits {
            max_file_size: 0,
            ..Limits::default()
        };
        let err = read_dir(&root, &small).unwrap_err();
        assert!(
            err.to_string()
                .ends_with(".yaml: 1 bytes is over the 0-byte file size limit"),
            "{err}"
        );
        let few = Limits {
            max_files: 2,
            ..Limits::default()
        };
        let err = read_dir(&root, &few).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: more than 2 files", root.display())
        );
        let thin = Limits {
            max_total_bytes: 2,
            ..Limits::default()
        };
        let err = read_dir(&root, &thin).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: the files under it are over the 2-byte limit of a revision",
                root.display()
            )
        );
        let shallow = Limits {
            max_depth: 1,
            ..Limits::default()
        };
        let err = read_dir(&root, &shallow).unwrap_err();
        assert_eq!(
            err.to_string(),
            "apps/sub: directories nested deeper than 1"
        );
        let err = read_dir(&dir.path().join("nope"), &limits).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}/nope: ", dir.path().display())),
            "{err}"
        );
    }
}
