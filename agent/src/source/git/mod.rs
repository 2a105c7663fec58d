//! Git sources: a bare mirror per source in the state directory, fetched incrementally
//! with git2 (only the configured ref), and the files of one commit's tree read straight
//! from the object database, with no checkout.

mod credentials;
mod known_hosts;
mod transfer;
pub(crate) mod tree;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use git2::{Oid, Repository};

pub use credentials::Credentials;
use known_hosts::KnownHosts;
use transfer::{Op, Transfer, scrub};
pub use tree::read_tree;

use super::{Error, File, Limits, Result};

/// What to sync: a branch head, a tag, a fixed commit, or the highest tag in a semver range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Branch(String),
    Tag(String),
    /// A full 40-hex-digit commit id. Once in the mirror it is never fetched again: a commit is immutable.
    Commit(String),
    /// A semver range over tags (`>=1.2.0, <2`, `^1.4`); tags may carry a `v` prefix.
    /// Pre-releases are considered only when the range names one, as Cargo does.
    Semver(String),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Branch(b) => write!(f, "branch {b}"),
            Reference::Tag(t) => write!(f, "tag {t}"),
            Reference::Commit(c) => write!(f, "commit {c}"),
            Reference::Semver(r) => write!(f, "semver {r}"),
        }
    }
}

/// One Git source as configured. `Debug` redacts credentials, in the URL too.
#[derive(Clone)]
pub struct SourceSpec {
    /// Names the mirror (`<state>/sources/<name>.git`) and every message about it.
    pub name: String,
    pub url: String,
    pub reference: Reference,
    pub credentials: Credentials,
    pub limits: Limits,
}

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceSpec")
            .field("name", &self.name)
            .field("url", &crate::core::url::redact(&self.url))
            .field("reference", &self.reference)
            .field("credentials", &self.credentials)
            .field("limits", &self.limits)
            .finish()
    }
}

/// A fetched Git revision: the commit and the full ref name it was resolved from (the
/// commit id itself for a [`Reference::Commit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub commit: Oid,
    pub reference: String,
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@sha1:{}", self.reference, self.commit)
    }
}

/// The outcome of one fetch: the revision and what crossed the network for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub revision: Revision,
    /// Objects received in this fetch: 0 when the mirror was already up to date.
    pub received_objects: usize,
    pub received_bytes: usize,
}

/// A Git source with its bare mirror. Cheap to clone; fetches of one source are serialised.
#[derive(Clone)]
pub struct GitSource {
    inner: Arc<Inner>,
}

struct Inner {
    spec: SourceSpec,
    /// The URL with any `user:pass@` removed, for messages.
    display_url: String,
    mirror: PathBuf,
    ssh: Option<SshTarget>,
    semver: Option<semver::VersionReq>,
    lock: Mutex<()>,
}

struct SshTarget {
    host: String,
    port: u16,
    known_hosts: KnownHosts,
}

impl fmt::Debug for GitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitSource")
            .field("name", &self.inner.spec.name)
            .field("url", &self.inner.display_url)
            .field("reference", &self.inner.spec.reference)
            .field("mirror", &self.inner.mirror)
            .finish()
    }
}

impl GitSource {
    /// Validates the spec; the mirror is created on the first fetch. An SSH URL without
    /// SSH credentials and their known_hosts is an error here, before any connection.
    pub fn new(spec: SourceSpec, state_dir: &Path) -> Result<Self> {
        let invalid = |reason: String| Error::Invalid {
            name: spec.name.clone(),
            reason,
        };
        let name_ok = !spec.name.is_empty()
            && !spec.name.starts_with('.')
            && spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(invalid(
                "name must be letters, digits, '-', '_' or '.', not starting with '.'".into(),
            ));
        }
        let display_url = crate::core::url::redact(&spec.url);
        let semver = match &spec.reference {
            Reference::Branch(b) | Reference::Tag(b) if b.is_empty() || b.starts_with("refs/") => {
                return Err(invalid(format!(
                    "{}: give the short name, without refs/",
                    spec.reference
                )));
            }
            // A valid ref name cannot smuggle a refspec (`:`, `*`) into the fetch.
            Reference::Branch(b) if !git2::Reference::is_valid_name(&format!("refs/heads/{b}")) => {
                return Err(invalid(format!("branch {b}: not a valid branch name")));
            }
            Reference::Tag(t) if !git2::Reference::is_valid_name(&format!("refs/tags/{t}")) => {
                return Err(invalid(format!("tag {t}: not a valid tag name")));
            }
            Reference::Commit(c) if c.len() != 40 || !c.chars().all(|c| c.is_ascii_hexdigit()) => {
                return Err(invalid(format!("commit {c}: not a full 40-hex-digit id")));
            }
            Reference::Semver(r) => Some(
                semver::VersionReq::parse(r)
                    .map_err(|e| invalid(format!("semver range {r:?}: {e}")))?,
            ),
            _ => None,
        };
        let ssh = match (
            crate::core::url::ssh_host_port(&spec.url),
            &spec.credentials,
        ) {
            (Some((host, port)), Credentials::Ssh { known_hosts, .. }) => Some(SshTarget {
                known_hosts: KnownHosts::parse(known_hosts)
                    .map_err(|e| invalid(format!("known_hosts: {e}")))?,
                host,
                port,
            }),
            (Some(_), _) => {
                return Err(invalid(format!(
                    "{display_url}: SSH needs SSH credentials with known_hosts; \
                     connections without host key verification are refused"
                )));
            }
            (None, Credentials::Ssh { .. }) => {
                return Err(invalid(format!(
                    "{display_url}: SSH credentials given for a URL that is not SSH"
                )));
            }
            (None, _) => None,
        };
        let mirror = state_dir.join("sources").join(format!("{}.git", spec.name));
        Ok(GitSource {
            inner: Arc::new(Inner {
                display_url,
                mirror,
                ssh,
                semver,
                spec,
                lock: Mutex::new(()),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.spec.name
    }

    pub fn spec(&self) -> &SourceSpec {
        &self.inner.spec
    }

    /// `<state>/sources/<name>.git`
    pub fn mirror_path(&self) -> &Path {
        &self.inner.mirror
    }

    /// Brings the mirror up to date with the configured reference and resolves it.
    /// Only that reference is fetched; objects already in the mirror are not sent again.
    pub async fn fetch(&self) -> Result<Fetched> {
        let inner = self.inner.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let task = tokio::task::spawn_blocking({
            let cancel = cancel.clone();
            move || inner.fetch_blocking(&cancel)
        });
        let after = self.inner.spec.limits.fetch_timeout;
        match tokio::time::timeout(after, task).await {
            Ok(joined) => joined.map_err(|source| Error::Task {
                name: self.inner.spec.name.clone(),
                source,
            })?,
            Err(_) => {
                // The blocking thread cannot be killed: the flag makes the next progress
                // callback abort the transfer. A connection that stalls before any progress
                // ends when the socket gives up (libgit2's own timeouts are process-global
                // and set only through unsafe code).
                cancel.store(true, Ordering::Relaxed);
                Err(Error::Timeout {
                    name: self.inner.spec.name.clone(),
                    url: self.inner.display_url.clone(),
                    after,
                })
            }
        }
    }

    /// Every file under `path` (`""` or `"."` for the whole tree) of `commit`, read from
    /// the mirror's object database, sorted by path. See [`read_tree`] for the rules.
    pub async fn read(&self, commit: Oid, path: &str) -> Result<Vec<File>> {
        self.read_with(commit, path, self.inner.spec.limits.clone())
            .await
    }

    /// [`GitSource::read`] under other limits (every file, for a renderer).
    pub async fn read_with(&self, commit: Oid, path: &str, limits: Limits) -> Result<Vec<File>> {
        let inner = self.inner.clone();
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let repo = inner.open_mirror()?;
            // A commit that is not in the mirror is the caller's mistake, not a path's.
            repo.find_commit(commit).map_err(|source| Error::Commit {
                name: inner.spec.name.clone(),
                commit,
                source,
            })?;
            read_tree(&repo, commit, &path, &limits)
        })
        .await
        .map_err(|source| Error::Task {
            name: self.inner.spec.name.clone(),
            source,
        })?
    }
}

impl Inner {
    fn open_mirror(&self) -> Result<Repository> {
        let err = |source| Error::Mirror {
            name: self.spec.name.clone(),
            path: self.mirror.clone(),
            source,
        };
        if self.mirror.exists() {
            Repository::open_bare(&self.mirror).map_err(err)
        } else {
            if let Some(parent) = self.mirror.parent() {
                std::fs::create_dir_all(parent).map_err(|source| Error::Io {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
            Repository::init_bare(&self.mirror).map_err(err)
        }
    }

    fn not_found(&self, reference: String) -> Error {
        Error::RefNotFound {
            name: self.spec.name.clone(),
            url: self.display_url.clone(),
            reference,
        }
    }

    fn fetch_blocking(&self, cancel: &AtomicBool) -> Result<Fetched> {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let repo = self.open_mirror()?;
        let spec = &self.spec;
        if let Reference::Commit(c) = &spec.reference {
            let oid = Oid::from_str(c).expect("validated in new");
            if repo.find_commit(oid).is_ok() {
                // A commit is immutable: once in the mirror it is never fetched again.
                return Ok(Fetched {
                    revision: Revision {
                        commit: oid,
                        reference: c.clone(),
                    },
                    received_objects: 0,
                    received_bytes: 0,
                });
            }
        }
        let (refspecs, want) = self.refspecs(&repo, cancel)?;
        let Transfer {
            advertised,
            received_objects,
            received_bytes,
        } = self.transfer(&repo, Op::Fetch(&refspecs), cancel)?;
        let refname = match (&spec.reference, want) {
            (_, Some(want)) => {
                // A ref deleted on the server must not resolve to the mirror's stale copy.
                if !advertised.contains(&want) {
                    return Err(self.not_found(spec.reference.to_string()));
                }
                want
            }
            (Reference::Commit(c), None) => c.clone(),
            _ => unreachable!("only a commit has no single wanted ref"),
        };
        let commit = repo
            .revparse_single(&refname)
            .and_then(|o| o.peel_to_commit())
            .map_err(|_| self.not_found(spec.reference.to_string()))?
            .id();
        Ok(Fetched {
            revision: Revision {
                commit,
                reference: refname,
            },
            received_objects,
            received_bytes,
        })
    }

    /// What to fetch for the configured reference, and the one ref it resolves to (none
    /// for a commit, which is looked for among the heads and tags).
    fn refspecs(
        &self,
        repo: &Repository,
        cancel: &AtomicBool,
    ) -> Result<(Vec<String>, Option<String>)> {
        Ok(match &self.spec.reference {
            Reference::Branch(b) => (
                vec![format!("+refs/heads/{b}:refs/heads/{b}")],
                Some(format!("refs/heads/{b}")),
            ),
            Reference::Tag(t) => (
                vec![format!("+refs/tags/{t}:refs/tags/{t}")],
                Some(format!("refs/tags/{t}")),
            ),
            // Servers refuse arbitrary ids in `want` by default: fetch the heads and tags
            // and look for the commit among them.
            Reference::Commit(_) => (
                vec![
                    "+refs/heads/*:refs/heads/*".into(),
                    "+refs/tags/*:refs/tags/*".into(),
                ],
                None,
            ),
            Reference::Semver(r) => {
                // Ask the server for its tags first, so that only the chosen tag's objects
                // are fetched rather than every release's.
                let listed = self.transfer(repo, Op::List, cancel)?.advertised;
                let req = self.semver.as_ref().expect("validated in new");
                let tag = listed
                    .iter()
                    .filter_map(|name| name.strip_prefix("refs/tags/").map(|t| (name, t)))
                    .filter(|(name, _)| !name.ends_with("^{}"))
                    .filter_map(|(name, tag)| {
                        let v =
                            semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()?;
                        req.matches(&v).then_some((v, name))
                    })
                    .max()
                    .map(|(_, name)| name.clone())
                    .ok_or_else(|| self.not_found(format!("semver {r}: no matching tag")))?;
                (vec![format!("+{tag}:{tag}")], Some(tag))
            }
        })
    }

    fn scrub(&self, message: &str) -> String {
        scrub(message, &self.spec.credentials.secrets())
    }
}

impl super::Source for GitSource {
    fn name(&self) -> &str {
        GitSource::name(self)
    }

    fn fetch(&self) -> BoxFuture<'_, Result<super::Revision>> {
        Box::pin(async move {
            let fetched = GitSource::fetch(self).await?;
            let r = fetched.revision;
            Ok(super::Revision::new(r.to_string(), r.commit))
        })
    }

    fn read<'a>(
        &'a self,
        revision: &'a super::Revision,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Vec<File>>> {
        self.read_revision(revision, path, self.inner.spec.limits.clone())
    }

    fn read_all<'a>(
        &'a self,
        revision: &'a super::Revision,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Vec<File>>> {
        let limits = self.inner.spec.limits.every_file();
        self.read_revision(revision, path, limits)
    }
}

impl GitSource {
    fn read_revision<'a>(
        &'a self,
        revision: &'a super::Revision,
        path: &'a str,
        limits: Limits,
    ) -> BoxFuture<'a, Result<Vec<File>>> {
        Box::pin(async move {
            let commit = *revision.data::<Oid>().ok_or_else(|| Error::Invalid {
                name: self.name().to_string(),
                reason: format!("revision {revision} is not one of this Git source"),
            })?;
            GitSource::read_with(self, commit, path, limits).await
        })
    }
}

#[cfg(test)]
mod tests;
