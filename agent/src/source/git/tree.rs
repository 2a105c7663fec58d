//! Reading a commit's tree under a path: the rules every source applies (no submodules,
//! symlinks only to files inside the path, size and count caps), each error naming the path.

use std::path::{Component, Path};

use git2::{ObjectType, Oid, Repository};

use crate::source::{Error, File, Limits, Result};

/// Symlinks are followed at most this deep before giving up (a loop, or too convoluted).
const MAX_SYMLINK_HOPS: usize = 8;

/// Reads every file under `path` of `commit` from `repo`'s object database (no checkout),
/// recursively, sorted by path; paths are relative to the repository root.
///
/// Only the files `limits` reads are loaded (a link by its own name); the rest are
/// skipped unread. Rules, each an error naming the path: a submodule (gitlink) is refused; a file over
/// `limits.max_file_size` (checked from the object header, before loading it) and more
/// than `limits.max_files` files are refused. A symlink whose target stays under `path`
/// and is a file is followed (its content is the target's, at the link's path); one that
/// leaves `path`, dangles, loops or names a directory is refused: following directory
/// links would read a tree twice or forever.
pub fn read_tree(repo: &Repository, commit: Oid, path: &str, limits: &Limits) -> Result<Vec<File>> {
    let root = normalize(path)?;
    let git = |path: &str| {
        let path = path.to_owned();
        move |source| Error::Git { path, source }
    };
    let full = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(git(&root))?;
    let mut reader = TreeReader {
        repo,
        full: &full,
        root: &root,
        limits,
        files: Vec::new(),
        bytes: 0,
    };
    if root.is_empty() {
        reader.walk(&full, "")?;
    } else {
        let entry = full
            .get_path(Path::new(&root))
            .map_err(|e| match e.code() {
                git2::ErrorCode::NotFound => Error::MissingPath {
                    path: root.clone(),
                    commit,
                },
                _ => Error::Git {
                    path: root.clone(),
                    source: e,
                },
            })?;
        reader.entry(&root, entry.filemode(), entry.id())?;
    }
    reader.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(reader.files)
}

struct TreeReader<'a> {
    repo: &'a Repository,
    full: &'a git2::Tree<'a>,
    root: &'a str,
    limits: &'a Limits,
    files: Vec<File>,
    /// Bytes read so far.
    bytes: u64,
}

const MODE_TREE: i32 = 0o040000;
const MODE_LINK: i32 = 0o120000;
const MODE_GITLINK: i32 = 0o160000;

impl TreeReader<'_> {
    fn walk(&mut self, tree: &git2::Tree<'_>, dir: &str) -> Result<()> {
        for entry in tree.iter() {
            let name = entry.name().map_err(|_| Error::BadPath {
                path: format!("{dir}/{}", String::from_utf8_lossy(entry.name_bytes())),
                reason: "file name is not UTF-8",
            })?;
            let path = if dir.is_empty() {
                name.to_owned()
            } else {
                format!("{dir}/{name}")
            };
            self.entry(&path, entry.filemode(), entry.id())?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &str, mode: i32, id: Oid) -> Result<()> {
        match mode {
            MODE_TREE => {
                let depth = path.split('/').count()
                    - self.root.split('/').filter(|p| !p.is_empty()).count();
                if depth > self.limits.max_depth {
                    return Err(Error::TooDeep {
                        path: path.to_owned(),
                        max: self.limits.max_depth,
                    });
                }
                let tree = self.repo.find_tree(id).map_err(|source| Error::Git {
                    path: path.to_owned(),
                    source,
                })?;
                self.walk(&tree, path)
            }
            MODE_GITLINK => Err(Error::Submodule {
                path: path.to_owned(),
                commit: id,
            }),
            _ if !self.limits.reads(path) => Ok(()),
            MODE_LINK => {
                let target_id = self.follow(path, id)?;
                self.file(path, target_id)
            }
            _ => self.file(path, id),
        }
    }

    /// The blob a symlink finally names, within the synced path.
    fn follow(&self, path: &str, mut id: Oid) -> Result<Oid> {
        let mut at = path.to_owned();
        for _ in 0..MAX_SYMLINK_HOPS {
            let blob = self.repo.find_blob(id).map_err(|source| Error::Git {
                path: at.clone(),
                source,
            })?;
            let target = String::from_utf8_lossy(blob.content()).into_owned();
            let escape = || Error::SymlinkEscape {
                path: path.to_owned(),
                target: target.clone(),
                root: display_root(self.root),
            };
            let resolved = resolve_link(&at, &target).ok_or_else(escape)?;
            if !within(self.root, &resolved) {
                return Err(escape());
            }
            let broken = |reason| Error::Symlink {
                path: path.to_owned(),
                target: target.clone(),
                reason,
            };
            let entry = self
                .full
                .get_path(Path::new(&resolved))
                .map_err(|_| broken("the target does not exist"))?;
            match entry.filemode() {
                MODE_LINK => {
                    at = resolved;
                    id = entry.id();
                }
                MODE_TREE => return Err(broken("links to directories are not followed")),
                MODE_GITLINK => return Err(broken("the target is a submodule")),
                _ => return Ok(entry.id()),
            }
        }
        Err(Error::Symlink {
            path: path.to_owned(),
            target: at,
            reason: "too many levels of symbolic links",
        })
    }

    fn file(&mut self, path: &str, id: Oid) -> Result<()> {
        let git = |source| Error::Git {
            path: path.to_owned(),
            source,
        };
        if self.files.len() >= self.limits.max_files {
            return Err(Error::TooManyFiles {
                path: display_root(self.root),
                max: self.limits.max_files,
            });
        }
        let (size, kind) = self
            .repo
            .odb()
            .and_then(|odb| odb.read_header(id))
            .map_err(git)?;
        if kind != ObjectType::Blob {
            return Err(Error::BadPath {
                path: path.to_owned(),
                reason: "not a file",
            });
        }
        if size as u64 > self.limits.max_file_size {
            return Err(Error::FileTooLarge {
                path: path.to_owned(),
                size: size as u64,
                max: self.limits.max_file_size,
            });
        }
        self.bytes += size as u64;
        if self.bytes > self.limits.max_total_bytes {
            return Err(Error::TooManyBytes {
                path: display_root(self.root),
                max: self.limits.max_total_bytes,
            });
        }
        let blob = self.repo.find_blob(id).map_err(git)?;
        self.files.push(File {
            path: path.to_owned(),
            content: blob.content().to_vec(),
        });
        Ok(())
    }
}

/// `path` with `./`, leading and trailing `/` removed; `..` is refused.
pub(crate) fn normalize(path: &str) -> Result<String> {
    let mut parts = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().ok_or_else(|| Error::BadPath {
                path: path.to_owned(),
                reason: "not UTF-8",
            })?),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::BadPath {
                    path: path.to_owned(),
                    reason: "must not contain '..'",
                });
            }
        }
    }
    Ok(parts.join("/"))
}

pub(crate) fn display_root(root: &str) -> String {
    if root.is_empty() {
        ".".into()
    } else {
        root.to_owned()
    }
}

/// Resolves a link's target lexically against the link's directory; `None` when it is
/// absolute or climbs above the repository root.
pub(crate) fn resolve_link(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Whether `path` is `root` or below it (`""` holds everything).
pub(crate) fn within(root: &str, path: &str) -> bool {
    root.is_empty() || path == root || path.strip_prefix(root).is_some_and(|r| r.starts_with('/'))
}
