//! Sources: where a sync's files come from. A [`Source`] fetches (brings itself up to date
//! and names the revision it now points at) and reads the files under a path of a revision;
//! every source applies the same path, size, symlink and file-count rules. Git (`git/`), a
//! local directory (`dir`), an OCI DevOps code repository (`devops`) and OCI Object Storage
//! (`bucket`) are the sources; the last two download archives (`archive`).

pub mod archive;
pub mod bucket;
pub mod devops;
pub mod dir;
pub mod git;

use std::any::Any;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use git2::Oid;

pub use dir::{DirSource, read_dir, read_dir_all};
pub use git::{Credentials, Fetched, GitSource, Reference, SourceSpec, read_tree};

/// One file of a revision, as read from Git (or a local directory): its path relative to
/// the repository root, with `/` separators, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub content: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("source {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("source {name}: mirror {path}: {source}")]
    Mirror {
        name: String,
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("source {name}: fetch {url}: {reason}")]
    Fetch {
        name: String,
        url: String,
        /// libgit2's message, scrubbed of URL credentials and configured secrets.
        reason: String,
    },
    #[error("source {name}: fetch {url}: authentication failed: {reason}")]
    Auth {
        name: String,
        url: String,
        reason: String,
    },
    #[error("source {name}: fetch {url}: host key verification failed: {reason}")]
    HostKey {
        name: String,
        url: String,
        reason: String,
    },
    #[error("source {name}: fetch {url}: timed out after {}", humantime::format_duration(*.after))]
    Timeout {
        name: String,
        url: String,
        after: Duration,
    },
    #[error("source {name}: {reference}: not found at {url}")]
    RefNotFound {
        name: String,
        url: String,
        reference: String,
    },
    #[error("source {name}: commit {commit}: {source}")]
    Commit {
        name: String,
        commit: Oid,
        #[source]
        source: git2::Error,
    },
    #[error("{path}: not found in commit {commit}")]
    MissingPath { path: String, commit: Oid },
    #[error("{path}: symlink to {target} leaves {root}")]
    SymlinkEscape {
        path: String,
        target: String,
        root: String,
    },
    #[error("{path}: symlink to {target}: {reason}")]
    Symlink {
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("{path}: submodule (gitlink to {commit}) is not supported")]
    Submodule { path: String, commit: Oid },
    #[error("{path}: {size} bytes is over the {max}-byte file size limit")]
    FileTooLarge { path: String, size: u64, max: u64 },
    #[error("{path}: more than {max} files")]
    TooManyFiles { path: String, max: usize },
    #[error("{path}: the files under it are over the {max}-byte limit of a revision")]
    TooManyBytes { path: String, max: u64 },
    #[error("{path}: directories nested deeper than {max}")]
    TooDeep { path: String, max: usize },
    #[error("{path}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Git {
        path: String,
        #[source]
        source: git2::Error,
    },
    #[error("{what}: {reason}")]
    Archive { what: String, reason: String },
    #[error("source {name}: {source}")]
    Oci {
        name: String,
        #[source]
        source: crate::oci::Error,
    },
    #[error("source {name}: background task: {source}")]
    Task {
        name: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Bounds on what one source may cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file, in bytes.
    pub max_file_size: u64,
    /// Most files under the synced path.
    pub max_files: usize,
    /// Most bytes of all the files under the synced path together.
    pub max_total_bytes: u64,
    /// Deepest directory nesting under the synced path.
    pub max_depth: usize,
    /// Longest a fetch may take, connection included.
    pub fetch_timeout: Duration,
    /// Largest archive a source downloads (OCI DevOps, Object Storage), as sent.
    pub max_archive_bytes: u64,
    /// The file name endings read (case-insensitive); `None` reads every file. Anything
    /// else is skipped before its content is read and counts toward no limit: a repository
    /// may hold docs, images and binaries beside its manifests.
    pub only: Option<Vec<String>>,
}

impl Limits {
    /// The endings a plain manifest directory is made of, and kustomize's extension-less
    /// `Kustomization` (so that a sync path holding one is seen to be a kustomization).
    pub const MANIFESTS: [&'static str; 4] = [".yaml", ".yml", ".json", "kustomization"];

    /// These limits, reading every file whatever its name (what [`Source::read_all`] reads).
    pub fn every_file(&self) -> Limits {
        Limits {
            only: None,
            ..self.clone()
        }
    }

    /// Whether the file at `path` is read at all.
    pub fn reads(&self, path: &str) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
        self.only
            .as_ref()
            .is_none_or(|ends| ends.iter().any(|end| name.ends_with(end.as_str())))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_size: 4 * 1024 * 1024,
            max_files: 10_000,
            max_total_bytes: 256 * 1024 * 1024,
            max_depth: 32,
            fetch_timeout: Duration::from_secs(120),
            max_archive_bytes: 128 * 1024 * 1024,
            only: Some(Self::MANIFESTS.map(String::from).to_vec()),
        }
    }
}

/// A revision of a source as the stages see it: an id to record and compare
/// (`main@sha1:<commit>`, `directory@<hash>`), and what the source needs to read it again.
#[derive(Clone)]
pub struct Revision {
    pub id: String,
    data: Arc<dyn Any + Send + Sync>,
}

impl Revision {
    pub fn new(id: impl Into<String>, data: impl Any + Send + Sync) -> Self {
        Revision {
            id: id.into(),
            data: Arc::new(data),
        }
    }

    /// The source's own data for this revision, if it is of type `T`.
    pub fn data<T: Any>(&self) -> Option<&T> {
        self.data.downcast_ref()
    }
}

impl fmt::Debug for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl PartialEq for Revision {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// `fetch`, given up after `after` (a source's fetch timeout), naming what it fetched.
async fn bounded_fetch(
    name: &str,
    url: String,
    after: Duration,
    fetch: impl std::future::Future<Output = Result<Revision>>,
) -> Result<Revision> {
    tokio::time::timeout(after, fetch)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Timeout {
                name: name.to_owned(),
                url,
                after,
            })
        })
}

/// Where a sync's files come from.
pub trait Source: Send + Sync {
    /// The source's configured name.
    fn name(&self) -> &str;
    /// Brings the source up to date and returns the revision it now points at.
    fn fetch(&self) -> BoxFuture<'_, Result<Revision>>;
    /// Every file under `path` (`""` for all) of `revision`, sorted, with paths from the
    /// source's root.
    fn read<'a>(
        &'a self,
        revision: &'a Revision,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Vec<File>>>;

    /// Like [`Source::read`], but every file, whatever its name (a renderer's inputs:
    /// kustomize generators read `.env` and `.properties` files), under the same other
    /// limits. A source that filters when it fetches (an Object Storage prefix) gives what
    /// it has.
    fn read_all<'a>(
        &'a self,
        revision: &'a Revision,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Vec<File>>> {
        self.read(revision, path)
    }
}
