//! An OCI DevOps code repository as a source: the ref resolved to its commit through the
//! signed DevOps API, that commit's archive downloaded once (a fetch that finds the same
//! commit downloads nothing) and read with the rules of every source. No Git protocol: OCI
//! documents Git over HTTPS only with a user's auth token, and the agent holds none.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::archive::Archive;
use super::{Error, File, Limits, Result, Revision};
use crate::oci::devops::{self, RefType};

/// Which revision of the repository to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevOpsRef {
    Branch(String),
    Tag(String),
    Commit(String),
}

#[derive(Debug, Clone)]
pub struct DevOpsSpec {
    pub name: String,
    pub repository_id: String,
    pub reference: DevOpsRef,
    /// Asked of the service; the answer is read by its bytes.
    pub archive_format: String,
    pub limits: Limits,
}

pub struct DevOpsSource {
    spec: DevOpsSpec,
    oci: Arc<crate::oci::Shared>,
    /// The commit last downloaded, and its archive.
    held: tokio::sync::Mutex<Option<(String, Arc<Archive>)>>,
}

/// A revision's own data: the archive its files come from.
struct Held(Arc<Archive>);

impl DevOpsSource {
    pub fn new(spec: DevOpsSpec, oci: Arc<crate::oci::Shared>) -> Self {
        DevOpsSource {
            spec,
            oci,
            held: tokio::sync::Mutex::new(None),
        }
    }

    fn oci_error(&self, source: crate::oci::Error) -> Error {
        Error::Oci {
            name: self.spec.name.clone(),
            source,
        }
    }

    /// The full ref name and commit the configured reference is at now.
    async fn resolve(&self) -> Result<(String, String)> {
        let repo = &self.spec.repository_id;
        let (kind, name) = match &self.spec.reference {
            DevOpsRef::Branch(b) => (RefType::Branch, b),
            DevOpsRef::Tag(t) => (RefType::Tag, t),
            DevOpsRef::Commit(c) => {
                devops::commit(&self.oci, repo, c)
                    .await
                    .map_err(|e| self.oci_error(e))?;
                return Ok((c.clone(), c.to_ascii_lowercase()));
            }
        };
        let found = devops::resolve(&self.oci, repo, kind, name)
            .await
            .map_err(|e| self.oci_error(e))?;
        let full = if found.full_name.is_empty() {
            match kind {
                RefType::Branch => format!("refs/heads/{name}"),
                RefType::Tag => format!("refs/tags/{name}"),
            }
        } else {
            found.full_name
        };
        Ok((full, found.object))
    }

    async fn fetch_inner(&self) -> Result<Revision> {
        let (full, commit) = self.resolve().await?;
        let id = format!("{full}@sha1:{commit}");
        let mut held = self.held.lock().await;
        if let Some((c, archive)) = held.as_ref()
            && *c == commit
        {
            return Ok(Revision::new(id, Held(archive.clone())));
        }
        let limits = &self.spec.limits;
        let bytes = devops::archive(
            &self.oci,
            &self.spec.repository_id,
            &commit,
            &self.spec.archive_format,
            limits.max_archive_bytes,
        )
        .await
        .map_err(|e| self.oci_error(e))?;
        let what = format!("source {}: archive of {commit}", self.spec.name);
        let archive =
            Archive::open(&self.spec.name, what, bytes, Some(commit.clone()), limits).await?;
        *held = Some((commit, archive.clone()));
        Ok(Revision::new(id, Held(archive)))
    }
}

impl super::Source for DevOpsSource {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Revision>> {
        let (name, url) = (&self.spec.name, self.spec.repository_id.clone());
        Box::pin(super::bounded_fetch(
            name,
            url,
            self.spec.limits.fetch_timeout,
            self.fetch_inner(),
        ))
    }

    fn read<'a>(
        &'a self,
        revision: &'a Revision,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Vec<File>>> {
        Box::pin(self.read_under(revision, path, self.spec.limits.clone()))
    }

    fn read_all<'a>(
        &'a self,
        revision: &'a Revision,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Vec<File>>> {
        let limits = self.spec.limits.every_file();
        Box::pin(self.read_under(revision, path, limits))
    }
}

impl DevOpsSource {
    async fn read_under(
        &self,
        revision: &Revision,
        path: &str,
        limits: Limits,
    ) -> Result<Vec<File>> {
        let Held(archive) = revision.data::<Held>().ok_or_else(|| Error::Invalid {
            name: self.spec.name.clone(),
            reason: format!("revision {revision} is not one of this DevOps source"),
        })?;
        archive.read_in_task(&self.spec.name, path, &limits).await
    }
}
