//! Git sources: a bare mirror per source in the state directory, fetched incrementally
//! with git2, and the files of one commit's tree read straight from the object database.
//! Also reads a local directory with the same rules, for directory syncs and `validate`.

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, FetchOptions, FetchPrune,
    ObjectType, Oid, RemoteCallbacks, Repository,
};
use hmac::{Hmac, Mac};

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
    #[error("source {name}: background task: {source}")]
    Task {
        name: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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

/// How to authenticate to the Git server. `Debug` never prints a secret.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    None,
    /// HTTP(S) Basic auth with a token as password; the username defaults to `git`
    /// (GitHub, Gitea and Bitbucket ignore it, GitLab wants `oauth2`).
    Token {
        username: Option<String>,
        token: String,
    },
    /// An SSH key (OpenSSH or PEM text). `known_hosts` is mandatory: there is no
    /// connection without host key verification.
    Ssh {
        private_key: String,
        passphrase: Option<String>,
        known_hosts: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Token { username, .. } => f
                .debug_struct("Token")
                .field("username", username)
                .field("token", &"<redacted>")
                .finish(),
            Credentials::Ssh { passphrase, .. } => f
                .debug_struct("Ssh")
                .field("private_key", &"<redacted>")
                .field("passphrase", &passphrase.as_ref().map(|_| "<redacted>"))
                .field("known_hosts", &"..")
                .finish(),
        }
    }
}

impl Credentials {
    /// Secret values, to scrub from any message that comes back from libgit2.
    fn secrets(&self) -> Vec<String> {
        match self {
            Credentials::None => vec![],
            Credentials::Token { token, .. } => vec![token.clone()],
            Credentials::Ssh {
                private_key,
                passphrase,
                ..
            } => {
                let mut s = vec![private_key.clone()];
                s.extend(passphrase.clone());
                s
            }
        }
    }
}

/// Bounds on what one source may cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file, in bytes.
    pub max_file_size: u64,
    /// Most files under the synced path.
    pub max_files: usize,
    /// Longest a fetch may take, connection included.
    pub fetch_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_size: 4 * 1024 * 1024,
            max_files: 10_000,
            fetch_timeout: Duration::from_secs(120),
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
            .field("url", &redact_url(&self.url))
            .field("reference", &self.reference)
            .field("credentials", &self.credentials)
            .field("limits", &self.limits)
            .finish()
    }
}

/// A fetched revision: the commit and the full ref name it was resolved from (the commit
/// id itself for a [`Reference::Commit`]).
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
        let display_url = redact_url(&spec.url);
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
        let ssh = match (ssh_host_port(&spec.url), &spec.credentials) {
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
            read_tree(&repo, commit, &path, &inner.spec.limits)
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

    fn fetch_blocking(&self, cancel: &AtomicBool) -> Result<Fetched> {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let repo = self.open_mirror()?;
        let spec = &self.spec;
        let not_found = |reference: String| Error::RefNotFound {
            name: spec.name.clone(),
            url: self.display_url.clone(),
            reference,
        };
        let (refspecs, want): (Vec<String>, Option<String>) = match &spec.reference {
            Reference::Branch(b) => (
                vec![format!("+refs/heads/{b}:refs/heads/{b}")],
                Some(format!("refs/heads/{b}")),
            ),
            Reference::Tag(t) => (
                vec![format!("+refs/tags/{t}:refs/tags/{t}")],
                Some(format!("refs/tags/{t}")),
            ),
            Reference::Commit(c) => {
                let oid = Oid::from_str(c).expect("validated in new");
                if repo.find_commit(oid).is_ok() {
                    return Ok(Fetched {
                        revision: Revision {
                            commit: oid,
                            reference: c.clone(),
                        },
                        received_objects: 0,
                        received_bytes: 0,
                    });
                }
                // Servers refuse arbitrary ids in `want` by default: fetch the heads and tags
                // and look for the commit among them.
                (
                    vec![
                        "+refs/heads/*:refs/heads/*".into(),
                        "+refs/tags/*:refs/tags/*".into(),
                    ],
                    None,
                )
            }
            Reference::Semver(r) => {
                // Ask the server for its tags first, so that only the chosen tag's objects
                // are fetched rather than every release's.
                let listed = self.transfer(&repo, Op::List, cancel)?.advertised;
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
                    .ok_or_else(|| not_found(format!("semver {r}: no matching tag")))?;
                (vec![format!("+{tag}:{tag}")], Some(tag))
            }
        };

        let Transfer {
            advertised,
            received_objects,
            received_bytes,
        } = self.transfer(&repo, Op::Fetch(&refspecs), cancel)?;
        let refname = match (&spec.reference, want) {
            (_, Some(want)) => {
                // A ref deleted on the server must not resolve to the mirror's stale copy.
                if !advertised.contains(&want) {
                    return Err(not_found(spec.reference.to_string()));
                }
                want
            }
            (Reference::Commit(c), None) => c.clone(),
            _ => unreachable!("only a commit has no single wanted ref"),
        };
        let commit = repo
            .revparse_single(&refname)
            .and_then(|o| o.peel_to_commit())
            .map_err(|_| not_found(spec.reference.to_string()))?
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

    /// One session with the server: a fetch of `refspecs`, or only listing its refs.
    fn transfer(&self, repo: &Repository, op: Op<'_>, cancel: &AtomicBool) -> Result<Transfer> {
        let spec = &self.spec;
        let auth_failure = std::cell::RefCell::new(None::<String>);
        let host_key_failure = std::cell::RefCell::new(None::<String>);
        let attempts = std::cell::Cell::new(0);
        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(|_url, username_from_url, allowed| {
            let fail = |why: &str| {
                *auth_failure.borrow_mut() = Some(why.to_owned());
                Err(git2::Error::from_str(why))
            };
            if allowed.contains(CredentialType::USERNAME) {
                // libssh2 first asks for the user name alone when the URL has none.
                return Cred::username(username_from_url.unwrap_or("git"));
            }
            attempts.set(attempts.get() + 1);
            if attempts.get() > 1 {
                // libgit2 asks again after a rejection; the same secret would only fail again.
                return fail("the server rejected the credentials");
            }
            match &spec.credentials {
                Credentials::Token { username, token }
                    if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) =>
                {
                    let user = username.as_deref().or(username_from_url).unwrap_or("git");
                    Cred::userpass_plaintext(user, token)
                }
                Credentials::Ssh {
                    private_key,
                    passphrase,
                    ..
                } if allowed.contains(CredentialType::SSH_KEY) => Cred::ssh_key_from_memory(
                    username_from_url.unwrap_or("git"),
                    None,
                    private_key,
                    passphrase.as_deref(),
                )
                .or_else(|_| {
                    fail("the SSH private key cannot be loaded (wrong passphrase or format?)")
                }),
                Credentials::None => {
                    fail("the server requires credentials and none are configured")
                }
                _ => fail("the server asks for a kind of credentials that is not configured"),
            }
        });
        if let Some(ssh) = &self.ssh {
            callbacks.certificate_check(|cert, _host| {
                let Some(hostkey) = cert.as_hostkey() else {
                    // Not SSH (an X.509 certificate): libgit2's own verification decides.
                    return Ok(CertificateCheckStatus::CertificatePassthrough);
                };
                let verdict = match (hostkey.hostkey(), hostkey.hostkey_type()) {
                    (Some(key), Some(kind)) => {
                        ssh.known_hosts
                            .verify(&ssh.host, ssh.port, kind.name(), key)
                    }
                    _ => Err("the server's raw host key is not available".to_owned()),
                };
                match verdict {
                    Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                    Err(why) => {
                        let fingerprint = hostkey
                            .hash_sha256()
                            .map(|h| format!(" (server key SHA256:{})", STANDARD_NO_PAD.encode(h)))
                            .unwrap_or_default();
                        let why = format!("{why}{fingerprint}");
                        *host_key_failure.borrow_mut() = Some(why.clone());
                        Err(git2::Error::from_str(&why))
                    }
                }
            });
        }
        let progress_cancel = |_: git2::Progress<'_>| !cancel.load(Ordering::Relaxed);
        callbacks.transfer_progress(progress_cancel);
        callbacks.sideband_progress(|_| !cancel.load(Ordering::Relaxed));

        // Anonymous: the URL, which may embed credentials, is never written to the mirror's config.
        let mut remote = repo.remote_anonymous(&spec.url).map_err(|e| Error::Fetch {
            name: spec.name.clone(),
            url: self.display_url.clone(),
            reason: self.scrub(e.message()),
        })?;
        let names = |heads: &[git2::RemoteHead<'_>]| -> HashSet<String> {
            heads.iter().map(|h| h.name().to_owned()).collect()
        };
        let result = match op {
            Op::Fetch(refspecs) => {
                let mut options = FetchOptions::new();
                options
                    .remote_callbacks(callbacks)
                    .download_tags(AutotagOption::None)
                    .update_fetchhead(false)
                    .prune(FetchPrune::On);
                remote
                    .fetch(refspecs, Some(&mut options), None)
                    .and_then(|()| {
                        let stats = remote.stats();
                        Ok(Transfer {
                            // Still available after the fetch has disconnected.
                            advertised: names(remote.list()?),
                            received_objects: stats.received_objects(),
                            received_bytes: stats.received_bytes(),
                        })
                    })
            }
            Op::List => remote
                .connect_auth(git2::Direction::Fetch, Some(callbacks), None)
                .and_then(|connection| {
                    Ok(Transfer {
                        advertised: names(connection.list()?),
                        received_objects: 0,
                        received_bytes: 0,
                    })
                }),
        };
        let e = match result {
            Ok(transfer) => {
                tracing::debug!(
                    source = %spec.name,
                    url = %self.display_url,
                    objects = transfer.received_objects,
                    bytes = transfer.received_bytes,
                    "fetched"
                );
                return Ok(transfer);
            }
            Err(e) => e,
        };
        let (name, url) = (spec.name.clone(), self.display_url.clone());
        if let Some(reason) = host_key_failure.into_inner() {
            return Err(Error::HostKey { name, url, reason });
        }
        if let Some(reason) = auth_failure.into_inner() {
            return Err(Error::Auth { name, url, reason });
        }
        // libssh2 reports a key it cannot decrypt or parse (a wrong passphrase) only
        // when authenticating, after the credentials callback has returned.
        if e.code() == git2::ErrorCode::Auth
            || e.class() == git2::ErrorClass::Ssh && e.message().contains("authenticat")
        {
            let reason = self.scrub(e.message());
            return Err(Error::Auth { name, url, reason });
        }
        Err(Error::Fetch {
            name,
            url,
            reason: self.scrub(e.message()),
        })
    }

    fn scrub(&self, message: &str) -> String {
        scrub(message, &self.spec.credentials.secrets())
    }
}

/// What one session with the server does.
enum Op<'a> {
    Fetch(&'a [String]),
    List,
}

struct Transfer {
    /// Every ref the server advertised.
    advertised: HashSet<String>,
    received_objects: usize,
    received_bytes: usize,
}

/// Removes URL credentials and the given secret values from a message.
fn scrub(message: &str, secrets: &[String]) -> String {
    let mut out = message
        .split(' ')
        .map(|word| {
            if word.contains("://") {
                redact_url(word)
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "<redacted>");
    }
    out
}

/// The URL with credentials removed: `https://user:token@host/x` → `https://***@host/x`.
/// A bare user name is kept for SSH (`ssh://git@host/x`), where it is not a secret; for
/// HTTP(S) a lone user name may be a token, so it goes too.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let is_ssh = scheme.contains("ssh");
    if is_ssh && !userinfo.contains(':') {
        return url.to_owned();
    }
    format!("{scheme}://***@{host}{path}")
}

/// Host and port of an SSH URL (`ssh://[user@]host[:port]/path`, or scp-like `[user@]host:path`).
fn ssh_host_port(url: &str) -> Option<(String, u16)> {
    let authority = if let Some((scheme, rest)) = url.split_once("://") {
        if !matches!(scheme, "ssh" | "git+ssh" | "ssh+git") {
            return None;
        }
        &rest[..rest.find('/').unwrap_or(rest.len())]
    } else {
        // scp-like: a colon before any slash, and not a Windows drive letter.
        let colon = url.find(':')?;
        if url[..colon].contains('/') || colon < 2 {
            return None;
        }
        &url[..colon]
    };
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .map_or(Some(22), |p| p.parse().ok())?;
        return Some((host.to_owned(), port));
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) if url.contains("://") => Some((host.to_owned(), port.parse().ok()?)),
        _ => Some((hostport.to_owned(), 22)),
    }
}

/// Parsed known_hosts: plain (`host`, `[host]:port`, with `*`/`?` wildcards and `!`
/// negation) and hashed (`|1|salt|hash`) entries; `@revoked` keys are refused and
/// `@cert-authority` lines are ignored (libssh2 does not present certificates).
#[derive(Debug, Clone)]
struct KnownHosts {
    entries: Vec<KnownHost>,
}

#[derive(Debug, Clone)]
struct KnownHost {
    revoked: bool,
    patterns: Vec<String>,
    key_type: String,
    key: Vec<u8>,
}

impl KnownHosts {
    fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let mut revoked = false;
            if first.starts_with('@') {
                match first {
                    "@revoked" => revoked = true,
                    "@cert-authority" => continue,
                    m => return Err(format!("line {}: unknown marker {m}", n + 1)),
                }
                first = fields.next().unwrap_or_default();
            }
            let (Some(key_type), Some(key)) = (fields.next(), fields.next()) else {
                return Err(format!(
                    "line {}: expected `hosts key-type base64-key`",
                    n + 1
                ));
            };
            let key = STANDARD
                .decode(key)
                .map_err(|e| format!("line {}: key is not base64: {e}", n + 1))?;
            entries.push(KnownHost {
                revoked,
                patterns: first.split(',').map(str::to_owned).collect(),
                key_type: key_type.to_owned(),
                key,
            });
        }
        if entries.iter().all(|e| e.revoked) {
            return Err("no host keys".into());
        }
        Ok(KnownHosts { entries })
    }

    /// Ok when a non-revoked entry for the host has exactly this key.
    fn verify(&self, host: &str, port: u16, key_type: &str, key: &[u8]) -> Result<(), String> {
        let lookup = if port == 22 {
            host.to_owned()
        } else {
            format!("[{host}]:{port}")
        };
        let for_host: Vec<_> = self
            .entries
            .iter()
            .filter(|e| host_matches(&e.patterns, &lookup))
            .collect();
        if for_host.iter().any(|e| e.revoked && e.key == key) {
            return Err(format!(
                "{lookup}: the server's {key_type} key is marked @revoked"
            ));
        }
        if for_host.iter().any(|e| !e.revoked && e.key == key) {
            return Ok(());
        }
        let known: Vec<_> = for_host
            .iter()
            .filter(|e| !e.revoked)
            .map(|e| e.key_type.as_str())
            .collect();
        if known.is_empty() {
            Err(format!("{lookup}: no known_hosts entry for this host"))
        } else {
            Err(format!(
                "{lookup}: the server's {key_type} key does not match known_hosts ({})",
                known.join(", ")
            ))
        }
    }
}

fn host_matches(patterns: &[String], lookup: &str) -> bool {
    let mut matched = false;
    for p in patterns {
        if let Some(hashed) = p.strip_prefix("|1|") {
            matched |= hashed_matches(hashed, lookup);
        } else if let Some(neg) = p.strip_prefix('!') {
            if glob(&neg.to_ascii_lowercase(), &lookup.to_ascii_lowercase()) {
                return false;
            }
        } else {
            matched |= glob(&p.to_ascii_lowercase(), &lookup.to_ascii_lowercase());
        }
    }
    matched
}

/// `salt|hash`, both base64: the entry is HMAC-SHA1(key = salt, message = host).
fn hashed_matches(salt_hash: &str, lookup: &str) -> bool {
    let Some((salt, hash)) = salt_hash.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(lookup.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// OpenSSH host pattern matching: `*` any run, `?` one character.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.as_bytes().first() {
        None => text.is_empty(),
        Some(b'*') => {
            (0..=text.len()).any(|i| text.is_char_boundary(i) && glob(&pattern[1..], &text[i..]))
        }
        Some(b'?') => {
            let mut chars = text.chars();
            chars.next().is_some() && glob(&pattern[1..], chars.as_str())
        }
        Some(_) => {
            let c = pattern.chars().next().unwrap();
            text.starts_with(c) && glob(&pattern[c.len_utf8()..], &text[c.len_utf8()..])
        }
    }
}

/// Symlinks are followed at most this deep before giving up (a loop, or too convoluted).
const MAX_SYMLINK_HOPS: usize = 8;

/// Reads every file under `path` of `commit` from `repo`'s object database (no checkout),
/// recursively, sorted by path; paths are relative to the repository root.
///
/// Rules, each an error naming the path: a submodule (gitlink) is refused; a file over
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
        let blob = self.repo.find_blob(id).map_err(git)?;
        self.files.push(File {
            path: path.to_owned(),
            content: blob.content().to_vec(),
        });
        Ok(())
    }
}

/// `path` with `./`, leading and trailing `/` removed; `..` is refused.
fn normalize(path: &str) -> Result<String> {
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

fn display_root(root: &str) -> String {
    if root.is_empty() {
        ".".into()
    } else {
        root.to_owned()
    }
}

/// Resolves a link's target lexically against the link's directory; `None` when it is
/// absolute or climbs above the repository root.
fn resolve_link(link: &str, target: &str) -> Option<String> {
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

fn within(root: &str, path: &str) -> bool {
    root.is_empty() || path == root || path.strip_prefix(root).is_some_and(|r| r.starts_with('/'))
}

/// Reads every file under the local directory `dir`, with the rules of [`read_tree`];
/// paths are relative to `dir`. `.git` directories are skipped: a checkout's metadata is
/// not part of its content.
pub fn read_dir(dir: &Path, limits: &Limits) -> Result<Vec<File>> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    let root = dir.canonicalize().map_err(io(dir))?;
    let mut files = Vec::new();
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
                if name != ".git" {
                    stack.push((path, rel));
                }
                continue;
            }
            let target = if kind.is_symlink() {
                let link = std::fs::read_link(&path).map_err(io(&path))?;
                let shown = link.display().to_string();
                let escape = || Error::SymlinkEscape {
                    path: rel.clone(),
                    target: shown.clone(),
                    root: dir.display().to_string(),
                };
                // Lexically first (names the problem the way the author wrote it), then on the
                // real filesystem, where a directory link on the way could still lead out.
                let lexical = link.to_str().and_then(|t| resolve_link(&rel, t));
                if lexical.is_none() {
                    return Err(escape());
                }
                let broken = |reason| Error::Symlink {
                    path: rel.clone(),
                    target: shown.clone(),
                    reason,
                };
                let real = path
                    .canonicalize()
                    .map_err(|_| broken("the target does not exist"))?;
                if !real.starts_with(&root) {
                    return Err(escape());
                }
                if real.is_dir() {
                    return Err(broken("links to directories are not followed"));
                }
                if !real.is_file() {
                    return Err(broken("the target is not a regular file"));
                }
                real
            } else if kind.is_file() {
                path
            } else {
                // A FIFO or a socket would block or fail on read.
                return Err(Error::BadPath {
                    path: rel,
                    reason: "not a regular file",
                });
            };
            if files.len() >= limits.max_files {
                return Err(Error::TooManyFiles {
                    path: dir.display().to_string(),
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
            let content = std::fs::read(&target).map_err(io(&target))?;
            files.push(File { path: rel, content });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::{IndexEntry, IndexTime, Signature};

    enum Entry<'a> {
        Blob(&'a [u8]),
        Link(&'a str),
        Gitlink(Oid),
    }
    use Entry::*;

    /// Commits exactly `files` on `branch` (on top of its current head, if any).
    fn commit(repo: &Repository, branch: &str, files: &[(&str, Entry<'_>)]) -> Oid {
        let mut index = git2::Index::new().unwrap();
        for (path, e) in files {
            let (mode, id) = match e {
                Blob(bytes) => (0o100644, repo.blob(bytes).unwrap()),
                Link(target) => (0o120000, repo.blob(target.as_bytes()).unwrap()),
                Gitlink(id) => (0o160000, *id),
            };
            index
                .add(&IndexEntry {
                    ctime: IndexTime::new(0, 0),
                    mtime: IndexTime::new(0, 0),
                    dev: 0,
                    ino: 0,
                    mode,
                    uid: 0,
                    gid: 0,
                    file_size: 0,
                    id,
                    flags: path.len().min(0xfff) as u16,
                    flags_extended: 0,
                    path: path.as_bytes().to_vec(),
                })
                .unwrap();
        }
        let tree = repo.find_tree(index.write_tree_to(repo).unwrap()).unwrap();
        let refname = format!("refs/heads/{branch}");
        let parent = repo
            .refname_to_id(&refname)
            .ok()
            .map(|id| repo.find_commit(id).unwrap());
        let sig = Signature::new(
            "Test",
            "test@example.com",
            &git2::Time::new(1_700_000_000, 0),
        )
        .unwrap();
        repo.commit(
            Some(&refname),
            &sig,
            &sig,
            "test commit",
            &tree,
            &parent.iter().collect::<Vec<_>>(),
        )
        .unwrap()
    }

    fn bare() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        (dir, repo)
    }

    fn paths(files: &[File]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn reads_files_recursively_sorted_with_repository_paths() {
        let (_d, repo) = bare();
        let c = commit(
            &repo,
            "main",
            &[
                ("deploy/z.yaml", Blob(b"z")),
                ("deploy/a/b.yaml", Blob(b"b")),
                ("deploy/a.yaml", Blob(b"a")),
                ("README.md", Blob(b"readme")),
            ],
        );
        let limits = Limits::default();
        let all = read_tree(&repo, c, "", &limits).unwrap();
        assert_eq!(
            paths(&all),
            [
                "README.md",
                "deploy/a.yaml",
                "deploy/a/b.yaml",
                "deploy/z.yaml"
            ]
        );
        for path in ["deploy", "./deploy/", "/deploy"] {
            let sub = read_tree(&repo, c, path, &limits).unwrap();
            assert_eq!(
                paths(&sub),
                ["deploy/a.yaml", "deploy/a/b.yaml", "deploy/z.yaml"]
            );
            assert_eq!(sub[1].content, b"b");
        }
        let one = read_tree(&repo, c, "deploy/z.yaml", &limits).unwrap();
        assert_eq!(
            one,
            vec![super::File {
                path: "deploy/z.yaml".into(),
                content: b"z".to_vec()
            }]
        );
    }

    #[test]
    fn missing_path_and_parent_path_are_errors_naming_the_path() {
        let (_d, repo) = bare();
        let c = commit(&repo, "main", &[("a.yaml", Blob(b"a"))]);
        let err = read_tree(&repo, c, "apps/shop", &Limits::default()).unwrap_err();
        assert!(matches!(err, Error::MissingPath { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("apps/shop: not found in commit"),
            "{err}"
        );
        let err = read_tree(&repo, c, "../x", &Limits::default()).unwrap_err();
        assert!(
            err.to_string().starts_with("../x: must not contain '..'"),
            "{err}"
        );
    }

    #[test]
    fn symlinks_inside_are_followed_and_escapes_are_refused() {
        let (_d, repo) = bare();
        let limits = Limits::default();
        let c = commit(
            &repo,
            "main",
            &[
                ("apps/base.yaml", Blob(b"base")),
                ("apps/link.yaml", Link("base.yaml")),
                ("apps/chain.yaml", Link("./link.yaml")),
                ("outside.yaml", Blob(b"secret")),
            ],
        );
        let files = read_tree(&repo, c, "apps", &limits).unwrap();
        assert_eq!(
            paths(&files),
            ["apps/base.yaml", "apps/chain.yaml", "apps/link.yaml"]
        );
        assert!(files.iter().all(|f| f.content == b"base"));

        let escapes = [
            ("apps/up.yaml", "../outside.yaml"),
            ("apps/abs.yaml", "/etc/passwd"),
            ("apps/far.yaml", "../../../etc/passwd"),
        ];
        for (path, target) in escapes {
            let c = commit(
                &repo,
                "main",
                &[("apps/a.yaml", Blob(b"a")), (path, Link(target))],
            );
            let err = read_tree(&repo, c, "apps", &limits).unwrap_err();
            assert!(matches!(err, Error::SymlinkEscape { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!("{path}: symlink to {target} leaves apps")
            );
        }
        // Leaving the synced path is refused even when the target is in the repository.
        let c = commit(
            &repo,
            "main",
            &[
                ("apps/up.yaml", Link("../outside.yaml")),
                ("outside.yaml", Blob(b"x")),
            ],
        );
        assert!(read_tree(&repo, c, "", &limits).is_ok());
        assert!(read_tree(&repo, c, "apps", &limits).is_err());

        let c = commit(
            &repo,
            "main",
            &[("apps/d/x.yaml", Blob(b"x")), ("apps/dir", Link("d"))],
        );
        let err = read_tree(&repo, c, "apps", &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "apps/dir: symlink to d: links to directories are not followed"
        );
        let c = commit(&repo, "main", &[("apps/loop", Link("loop"))]);
        let err = read_tree(&repo, c, "apps", &limits).unwrap_err();
        assert!(
            err.to_string().starts_with("apps/loop: symlink to"),
            "{err}"
        );
        let c = commit(&repo, "main", &[("apps/dangling", Link("nope.yaml"))]);
        let err = read_tree(&repo, c, "apps", &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "apps/dangling: symlink to nope.yaml: the target does not exist"
        );
    }

    #[test]
    fn submodules_are_refused_naming_the_path() {
        let (_d, repo) = bare();
        let sub = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
        let c = commit(
            &repo,
            "main",
            &[
                ("apps/a.yaml", Blob(b"a")),
                ("apps/vendor/lib", Gitlink(sub)),
            ],
        );
        let err = read_tree(&repo, c, "apps", &Limits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "apps/vendor/lib: submodule (gitlink to 0123456789abcdef0123456789abcdef01234567) is not supported"
        );
    }

    #[test]
    fn file_size_and_file_count_caps() {
        let (_d, repo) = bare();
        let limits = Limits {
            max_file_size: 10,
            max_files: 3,
            ..Limits::default()
        };
        let c = commit(
            &repo,
            "main",
            &[
                ("a/ten.yaml", Blob(b"0123456789")),
                ("a/x", Blob(b"x")),
                ("a/y", Blob(b"y")),
            ],
        );
        assert_eq!(read_tree(&repo, c, "a", &limits).unwrap().len(), 3);

        let c = commit(&repo, "main", &[("a/big.yaml", Blob(b"0123456789A"))]);
        let err = read_tree(&repo, c, "a", &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a/big.yaml: 11 bytes is over the 10-byte file size limit"
        );
        // A link is measured by its target, not by the link itself.
        let c = commit(
            &repo,
            "main",
            &[("a/big", Blob(b"0123456789A")), ("b/l", Link("../a/big"))],
        );
        let err = read_tree(&repo, c, "", &limits).unwrap_err();
        assert!(err.to_string().starts_with("a/big: 11 bytes"), "{err}");

        let c = commit(
            &repo,
            "main",
            &[
                ("a/1", Blob(b"")),
                ("a/2", Blob(b"")),
                ("a/3", Blob(b"")),
                ("a/4", Blob(b"")),
            ],
        );
        let err = read_tree(&repo, c, "a", &limits).unwrap_err();
        assert_eq!(err.to_string(), "a: more than 3 files");
        let err = read_tree(&repo, c, "", &limits).unwrap_err();
        assert_eq!(err.to_string(), ".: more than 3 files");
    }

    fn spec(name: &str, url: &str, reference: Reference) -> SourceSpec {
        SourceSpec {
            name: name.into(),
            url: url.into(),
            reference,
            credentials: Credentials::None,
            limits: Limits::default(),
        }
    }

    fn upstream() -> (tempfile::TempDir, Repository, String) {
        let (dir, repo) = bare();
        let url = format!("file://{}", dir.path().display());
        (dir, repo, url)
    }

    #[tokio::test]
    async fn branch_fetch_is_incremental_and_reads_each_commit() {
        let (_u, up, url) = upstream();
        let state = tempfile::tempdir().unwrap();
        let first = commit(&up, "main", &[("deploy/cm.yaml", Blob(b"v1"))]);
        let source = GitSource::new(
            spec("shop", &url, Reference::Branch("main".into())),
            state.path(),
        )
        .unwrap();
        let f1 = source.fetch().await.unwrap();
        assert_eq!(
            f1.revision,
            Revision {
                commit: first,
                reference: "refs/heads/main".into()
            }
        );
        assert_eq!(
            f1.revision.to_string(),
            format!("refs/heads/main@sha1:{first}")
        );
        assert!(state.path().join("sources/shop.git/objects").is_dir());
        assert_eq!(
            source.read(first, "deploy").await.unwrap()[0].content,
            b"v1"
        );

        let again = source.fetch().await.unwrap();
        assert_eq!((again.revision.commit, again.received_objects), (first, 0));

        let second = commit(
            &up,
            "main",
            &[
                ("deploy/cm.yaml", Blob(b"v1")),
                ("deploy/new.yaml", Blob(b"v2")),
            ],
        );
        let f2 = source.fetch().await.unwrap();
        assert_eq!(f2.revision.commit, second);
        // Only the new commit, its tree(s) and the new blob travel; v1's blob is already here.
        assert!(f2.received_objects > 0 && f2.received_objects < 5, "{f2:?}");
        let files = source.read(second, "deploy").await.unwrap();
        assert_eq!(paths(&files), ["deploy/cm.yaml", "deploy/new.yaml"]);
        // The older commit stays readable from the mirror.
        assert_eq!(source.read(first, "").await.unwrap().len(), 1);
        let unknown = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
        let err = source.read(unknown, "").await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("source shop: commit {unknown}: ")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn only_the_configured_branch_is_fetched() {
        let (_u, up, url) = upstream();
        let state = tempfile::tempdir().unwrap();
        commit(&up, "main", &[("a", Blob(b"a"))]);
        commit(&up, "other", &[("b", Blob(b"b"))]);
        let source = GitSource::new(
            spec("s", &url, Reference::Branch("main".into())),
            state.path(),
        )
        .unwrap();
        source.fetch().await.unwrap();
        let mirror = Repository::open_bare(source.mirror_path()).unwrap();
        // (libgit2's file:// transport may copy more objects than asked for; over the network
        // only the branch's objects travel, see tests/e2e/git_source.rs.)
        assert!(mirror.find_reference("refs/heads/other").is_err());
        // The URL is not recorded in the mirror (it may carry credentials).
        assert!(mirror.remotes().unwrap().is_empty());
    }

    #[tokio::test]
    async fn tags_commits_and_semver_ranges_resolve() {
        let (_u, up, url) = upstream();
        let state = tempfile::tempdir().unwrap();
        let sig = Signature::now("T", "t@example.com").unwrap();
        let mut ids = Vec::new();
        for (i, tag) in [
            "v1.0.0",
            "v1.2.0",
            "1.4.1",
            "v2.0.0",
            "v1.5.0-rc.1",
            "not-a-version",
        ]
        .iter()
        .enumerate()
        {
            let id = commit(&up, "main", &[("n", Blob(i.to_string().as_bytes()))]);
            let obj = up.find_object(id, None).unwrap();
            if i % 2 == 0 {
                up.tag(tag, &obj, &sig, "annotated", false).unwrap();
            } else {
                up.tag_lightweight(tag, &obj, false).unwrap();
            }
            ids.push(id);
        }
        let fetch = |name: &str, r: Reference| {
            let source = GitSource::new(spec(name, &url, r), state.path()).unwrap();
            async move { source.fetch().await }
        };
        let annotated = fetch("t1", Reference::Tag("v1.0.0".into())).await.unwrap();
        assert_eq!(
            annotated.revision,
            Revision {
                commit: ids[0],
                reference: "refs/tags/v1.0.0".into()
            }
        );
        let light = fetch("t2", Reference::Tag("v1.2.0".into())).await.unwrap();
        assert_eq!(light.revision.commit, ids[1]);

        let pinned = fetch("c", Reference::Commit(ids[2].to_string()))
            .await
            .unwrap();
        assert_eq!(
            pinned.revision,
            Revision {
                commit: ids[2],
                reference: ids[2].to_string()
            }
        );
        // A commit already in the mirror needs no network at all.
        let again = fetch("c", Reference::Commit(ids[2].to_string()))
            .await
            .unwrap();
        assert_eq!(again.received_objects, 0);

        let range = fetch("r", Reference::Semver(">=1.2.0, <2".into()))
            .await
            .unwrap();
        assert_eq!(
            range.revision,
            Revision {
                commit: ids[2],
                reference: "refs/tags/1.4.1".into()
            }
        );
        // Only the chosen tag is fetched into the mirror.
        let mirror = Repository::open_bare(state.path().join("sources/r.git")).unwrap();
        let tags: Vec<String> = mirror
            .references_glob("refs/tags/*")
            .unwrap()
            .map(|r| r.unwrap().name().unwrap().to_owned())
            .collect();
        assert_eq!(tags, ["refs/tags/1.4.1"]);
        let pre = fetch("r2", Reference::Semver(">=1.5.0-rc.0, <2".into()))
            .await
            .unwrap();
        assert_eq!(pre.revision.reference, "refs/tags/v1.5.0-rc.1");
        let any = fetch("r3", Reference::Semver("*".into())).await.unwrap();
        assert_eq!(any.revision.reference, "refs/tags/v2.0.0");

        let err = fetch("r4", Reference::Semver(">=3".into()))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("source r4: semver >=3: no matching tag: not found at {url}")
        );
        let err = fetch("t3", Reference::Tag("v9".into())).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("source t3: tag v9: not found at {url}")
        );
        let missing = "0123456789abcdef0123456789abcdef01234567";
        let err = fetch("c2", Reference::Commit(missing.into()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::RefNotFound { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_deleted_branch_is_not_found_rather_than_stale() {
        let (_u, up, url) = upstream();
        let state = tempfile::tempdir().unwrap();
        commit(&up, "main", &[("a", Blob(b"a"))]);
        commit(&up, "gone", &[("a", Blob(b"a"))]);
        let source = GitSource::new(
            spec("s", &url, Reference::Branch("gone".into())),
            state.path(),
        )
        .unwrap();
        source.fetch().await.unwrap();
        up.find_reference("refs/heads/gone")
            .unwrap()
            .delete()
            .unwrap();
        let err = source.fetch().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("source s: branch gone: not found at {url}")
        );
    }

    #[tokio::test]
    async fn a_stalled_server_times_out() {
        // Accepts connections into the backlog and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://127.0.0.1:{}/repo.git",
            listener.local_addr().unwrap().port()
        );
        let state = tempfile::tempdir().unwrap();
        let mut s = spec("slow", &url, Reference::Branch("main".into()));
        s.limits.fetch_timeout = Duration::from_millis(300);
        let err = GitSource::new(s, state.path())
            .unwrap()
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("source slow: fetch {url}: timed out after 300ms")
        );
    }

    #[test]
    fn ssh_without_known_hosts_is_refused_at_construction() {
        let state = tempfile::tempdir().unwrap();
        for url in [
            "ssh://git@example.com/x.git",
            "git@example.com:x.git",
            "ssh://example.com:2222/x",
        ] {
            let err = GitSource::new(
                spec("s", url, Reference::Branch("main".into())),
                state.path(),
            )
            .unwrap_err();
            assert!(
                err.to_string()
                    .contains("connections without host key verification are refused"),
                "{err}"
            );
        }
        let mut s = spec(
            "s",
            "ssh://git@example.com/x.git",
            Reference::Branch("main".into()),
        );
        s.credentials = Credentials::Ssh {
            private_key: "KEY".into(),
            passphrase: None,
            known_hosts: "# nothing\n".into(),
        };
        let err = GitSource::new(s.clone(), state.path()).unwrap_err();
        assert_eq!(err.to_string(), "source s: known_hosts: no host keys");
        s.url = "https://example.com/x.git".into();
        assert!(GitSource::new(s, state.path()).is_err());
    }

    #[test]
    fn invalid_specs_are_refused() {
        let state = tempfile::tempdir().unwrap();
        let bad = [
            spec("../x", "file:///x", Reference::Branch("main".into())),
            spec(
                "s",
                "file:///x",
                Reference::Branch("refs/heads/main".into()),
            ),
            spec("s", "file:///x", Reference::Commit("abc123".into())),
            spec(
                "s",
                "file:///x",
                Reference::Branch("main:refs/heads/x".into()),
            ),
            spec("s", "file:///x", Reference::Tag("v*".into())),
            spec("s", "file:///x", Reference::Semver("not a range".into())),
        ];
        for s in bad {
            let err = GitSource::new(s.clone(), state.path()).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("source {}: ", s.name)),
                "{err}"
            );
        }
    }

    #[test]
    fn urls_and_debug_output_carry_no_secrets() {
        assert_eq!(
            redact_url("https://user:tok3n@host/r.git"),
            "https://***@host/r.git"
        );
        assert_eq!(
            redact_url("https://tok3n@host/r.git"),
            "https://***@host/r.git"
        );
        assert_eq!(redact_url("ssh://git@host/r.git"), "ssh://git@host/r.git");
        assert_eq!(
            redact_url("ssh://git:pw@host/r.git"),
            "ssh://***@host/r.git"
        );
        assert_eq!(redact_url("https://host/a@b"), "https://host/a@b");
        assert_eq!(
            scrub(
                "failed to connect to https://u:tok3n@h/x: tok3n rejected",
                &["tok3n".into()]
            ),
            "failed to connect to https://***@h/x: <redacted> rejected"
        );
        let creds = Credentials::Ssh {
            private_key: "PRIVATE-KEY-TEXT".into(),
            passphrase: Some("hunter22".into()),
            known_hosts: "h ssh-ed25519 AAAA".into(),
        };
        let token = Credentials::Token {
            username: None,
            token: "tok3n".into(),
        };
        let shown = format!("{creds:?} {token:?}");
        assert!(
            !shown.contains("PRIVATE-KEY-TEXT")
                && !shown.contains("hunter22")
                && !shown.contains("tok3n"),
            "{shown}"
        );
        let state = tempfile::tempdir().unwrap();
        let mut s = spec(
            "s",
            "https://u:tok3n@host/r.git",
            Reference::Branch("main".into()),
        );
        s.credentials = token;
        let source = GitSource::new(s, state.path()).unwrap();
        assert!(!format!("{source:?} {:?}", source.spec()).contains("tok3n"));
    }

    #[test]
    fn ssh_urls_give_host_and_port() {
        assert_eq!(
            ssh_host_port("ssh://git@h.example:2222/x"),
            Some(("h.example".into(), 2222))
        );
        assert_eq!(
            ssh_host_port("ssh://h.example/x"),
            Some(("h.example".into(), 22))
        );
        assert_eq!(
            ssh_host_port("ssh://git@[::1]:2200/x"),
            Some(("::1".into(), 2200))
        );
        assert_eq!(
            ssh_host_port("git@h.example:org/x.git"),
            Some(("h.example".into(), 22))
        );
        assert_eq!(ssh_host_port("https://h.example/x"), None);
        assert_eq!(ssh_host_port("file:///x"), None);
        assert_eq!(ssh_host_port("/srv/git/x.git"), None);
    }

    #[test]
    fn known_hosts_plain_port_hashed_wildcard_and_revoked() {
        let key_a = STANDARD.encode(b"key-a");
        let key_b = STANDARD.encode(b"key-b");
        let salt = b"0123456789abcdefghij";
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(salt).unwrap();
        mac.update(b"[hashed.example]:2222");
        let hashed = format!(
            "|1|{}|{}",
            STANDARD.encode(salt),
            STANDARD.encode(mac.finalize().into_bytes())
        );
        let text = format!(
            "# comment\n\
             plain.example,10.0.0.1 ssh-ed25519 {key_a}\n\
             [ported.example]:2222 ssh-ed25519 {key_a} comment here\n\
             {hashed} ssh-ed25519 {key_a}\n\
             *.wild.example,!bad.wild.example ssh-rsa {key_a}\n\
             @revoked plain.example ssh-ed25519 {key_b}\n"
        );
        let kh = KnownHosts::parse(&text).unwrap();
        let ok = |h: &str, p: u16, k: &[u8]| kh.verify(h, p, "ssh-ed25519", k);
        assert_eq!(ok("plain.example", 22, b"key-a"), Ok(()));
        assert_eq!(ok("PLAIN.example", 22, b"key-a"), Ok(()));
        assert_eq!(ok("10.0.0.1", 22, b"key-a"), Ok(()));
        assert_eq!(ok("ported.example", 2222, b"key-a"), Ok(()));
        assert_eq!(ok("hashed.example", 2222, b"key-a"), Ok(()));
        assert_eq!(ok("a.wild.example", 22, b"key-a"), Ok(()));
        // A port makes a different host: `[host]:port` entries only.
        assert!(
            ok("plain.example", 2222, b"key-a")
                .unwrap_err()
                .contains("no known_hosts entry")
        );
        assert!(ok("hashed.example", 22, b"key-a").is_err());
        assert!(ok("bad.wild.example", 22, b"key-a").is_err());
        let err = ok("ported.example", 2222, b"key-x").unwrap_err();
        assert_eq!(
            err,
            "[ported.example]:2222: the server's ssh-ed25519 key does not match known_hosts (ssh-ed25519)"
        );
        assert!(
            ok("plain.example", 22, b"key-b")
                .unwrap_err()
                .contains("@revoked")
        );
        assert!(
            KnownHosts::parse("host ssh-ed25519 !!notbase64")
                .unwrap_err()
                .starts_with("line 1:")
        );
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
        std::os::unix::fs::symlink("../../secret", root.join("apps/escape")).unwrap();
        let err = read_dir(&root, &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "apps/escape: symlink to ../../secret leaves {}",
                root.display()
            )
        );
        std::fs::remove_file(root.join("apps/escape")).unwrap();
        // Through a directory link that itself leads out.
        std::os::unix::fs::symlink(dir.path(), root.join("apps/out")).unwrap();
        let err = read_dir(&root, &limits).unwrap_err();
        assert!(err.to_string().starts_with("apps/out: symlink to"), "{err}");
        std::fs::remove_file(root.join("apps/out")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("apps/dir")).unwrap();
        let err = read_dir(&root, &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "apps/dir: symlink to sub: links to directories are not followed"
        );
        std::fs::remove_file(root.join("apps/dir")).unwrap();

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
        let err = read_dir(&dir.path().join("nope"), &limits).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}/nope: ", dir.path().display())),
            "{err}"
        );
    }
}
