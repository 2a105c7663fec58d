//! Where credentials come from, in one place: a key of a Kubernetes Secret, a whole Secret
//! (a Git source's credentials), or a file of a mounted Secret (webhook secrets). Values
//! come back as [`SecretBytes`], which never print; errors name the Secret and the key,
//! never a value. OCI Vault plugs in here as another backend.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::config::SecretKeyRef;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{secret}: {}", crate::cluster::api_message(.source))]
    Read {
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error("{secret}: no key {key:?}")]
    MissingKey { secret: String, key: String },
    #[error("{secret}: needed, but there is no cluster connection")]
    NoCluster { secret: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Bytes of a secret. `Debug` shows only their length; there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        SecretBytes(bytes.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

/// Reads secrets for the agent; Secrets that name no namespace are in the agent's own.
#[derive(Clone)]
pub struct SecretResolver {
    client: Option<Client>,
    default_namespace: String,
}

impl SecretResolver {
    pub fn new(client: Option<Client>, default_namespace: impl Into<String>) -> Self {
        SecretResolver {
            client,
            default_namespace: default_namespace.into(),
        }
    }

    /// `Secret/<ns>/<name>`, as messages name it.
    pub fn describe(&self, name: &str, namespace: Option<&str>) -> String {
        let ns = namespace.unwrap_or(&self.default_namespace);
        format!("Secret/{ns}/{name}")
    }

    /// Every key of a Secret (`data`, then `stringData` for keys `data` lacks).
    pub async fn secret(
        &self,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<BTreeMap<String, SecretBytes>> {
        let secret = self.describe(name, namespace);
        let Some(client) = &self.client else {
            return Err(Error::NoCluster { secret });
        };
        let ns = namespace.unwrap_or(&self.default_namespace);
        let s = Api::<Secret>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .map_err(|source| Error::Read { secret, source })?;
        let mut out: BTreeMap<String, SecretBytes> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, SecretBytes(v.0)))
            .collect();
        for (k, v) in s.string_data.unwrap_or_default() {
            out.entry(k).or_insert(SecretBytes(v.into_bytes()));
        }
        Ok(out)
    }

    /// One key of a Secret.
    pub async fn key(&self, r: &SecretKeyRef) -> Result<SecretBytes> {
        let mut all = self.secret(&r.name, r.namespace.as_deref()).await?;
        all.remove(&r.key).ok_or_else(|| Error::MissingKey {
            secret: self.describe(&r.name, r.namespace.as_deref()),
            key: r.key.clone(),
        })
    }
}

/// A file of a mounted Secret, without the trailing newline that hand-written secrets often
/// end in (it is not part of the secret); `None` when there is no such file.
pub fn read_file(path: &Path) -> Option<SecretBytes> {
    std::fs::read(path).ok().map(|mut b| {
        while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
            b.pop();
        }
        SecretBytes(b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_never_print_and_files_lose_their_newline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("github"), b"hunter2\r\n").unwrap();
        let s = read_file(&dir.path().join("github")).unwrap();
        assert_eq!(s.expose(), b"hunter2");
        assert_eq!(format!("{s:?}"), "SecretBytes(7 bytes)");
        assert!(read_file(&dir.path().join("gitlab")).is_none());
    }

    #[tokio::test]
    async fn without_a_cluster_the_secret_is_named() {
        let r = SecretResolver::new(None, "agent");
        let e = r.secret("git", None).await.unwrap_err().to_string();
        assert_eq!(
            e,
            "Secret/agent/git: needed, but there is no cluster connection"
        );
    }
}
