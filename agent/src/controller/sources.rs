//! Sources as the configuration declares them: each opened once, with its credentials read
//! through the secret resolver, as a [`Source`] the controller fetches.

use std::sync::Arc;

use crate::config::{self, Config, GitRef, OciSource};
use crate::secrets::SecretResolver;
use crate::source::bucket::{BucketSource, BucketSpec, Select};
use crate::source::devops::{DevOpsRef, DevOpsSource, DevOpsSpec};
use crate::source::{Credentials, DirSource, GitSource, Reference, Source, SourceSpec};
use crate::sync::Failure;

/// Opens a configured source: a local directory, or a Git mirror with its credentials.
pub async fn open(
    secrets: &SecretResolver,
    cfg: &Config,
    src: &config::Source,
) -> Result<Arc<dyn Source>, Failure> {
    if let Some(dir) = &src.directory {
        return Ok(Arc::new(DirSource::new(&src.name, dir)));
    }
    if let Some(oci) = &src.oci {
        return open_oci(cfg, src, oci);
    }
    let credentials = match (&src.secret_ref, &src.oci_vault) {
        (_, Some(v)) => vault_credentials(cfg, src, v).await?,
        (None, None) => Credentials::None,
        (Some(r), None) => {
            let shown = secrets.describe(&r.name, r.namespace.as_deref());
            let keys = secrets
                .secret(&r.name, r.namespace.as_deref())
                .await
                .map_err(|e| Failure::Source(format!("source {}: {e}", src.name)))?;
            Credentials::from_secret(&keys, src.is_ssh())
                .map_err(|m| Failure::Source(format!("source {}: {shown}: {m}", src.name)))?
        }
    };
    let reference = match &src.reference {
        GitRef::Branch(b) => Reference::Branch(b.clone()),
        GitRef::Tag(t) => Reference::Tag(t.clone()),
        GitRef::Commit(c) => Reference::Commit(c.clone()),
        GitRef::Semver(s) => Reference::Semver(s.clone()),
    };
    let spec = SourceSpec {
        name: src.name.clone(),
        url: src.url.clone(),
        reference,
        credentials,
        limits: Default::default(),
    };
    let git = GitSource::new(spec, &cfg.state_dir).map_err(|e| Failure::Source(e.to_string()))?;
    Ok(Arc::new(git))
}

/// An OCI DevOps or Object Storage source, signing with the process's OCI identity.
fn open_oci(
    cfg: &Config,
    src: &config::Source,
    oci: &OciSource,
) -> Result<Arc<dyn Source>, Failure> {
    let Some(identity) = &cfg.oci else {
        return Err(Failure::Source(format!(
            "source {}: needs the oci: section",
            src.name
        )));
    };
    let shared = crate::oci::Shared::for_config(identity);
    let mut limits = crate::source::Limits::default();
    Ok(match oci {
        OciSource::DevOps(d) => {
            limits.max_archive_bytes = d.max_archive_bytes.unwrap_or(limits.max_archive_bytes);
            let r = &d.reference;
            let reference = match (&r.branch, &r.tag, &r.commit) {
                (_, Some(t), _) => DevOpsRef::Tag(t.clone()),
                (_, _, Some(c)) => DevOpsRef::Commit(c.clone()),
                (b, _, _) => DevOpsRef::Branch(b.clone().unwrap_or_else(|| "main".into())),
            };
            let spec = DevOpsSpec {
                name: src.name.clone(),
                repository_id: d.repository_id.clone(),
                reference,
                archive_format: d.archive_format.clone(),
                limits,
            };
            Arc::new(DevOpsSource::new(spec, shared))
        }
        OciSource::ObjectStorage(o) => {
            limits.max_archive_bytes = o.max_archive_bytes.unwrap_or(limits.max_archive_bytes);
            let select = match (&o.object, &o.prefix) {
                (Some(object), _) => Select::Archive(object.clone()),
                // A prefix is a directory: `manifests` means `manifests/`.
                (None, p) => Select::Prefix(match p.as_deref().unwrap_or("") {
                    "" => String::new(),
                    p if p.ends_with('/') => p.to_owned(),
                    p => format!("{p}/"),
                }),
            };
            let spec = BucketSpec {
                name: src.name.clone(),
                namespace: o.namespace.clone(),
                bucket: o.bucket.clone(),
                select,
                limits,
            };
            Arc::new(BucketSource::new(spec, shared))
        }
    })
}

/// Git credentials from OCI Vault: the secret's content is a YAML map of the Secret's keys.
/// Read at each open, so a source reopened after a failed fetch sees a rotated secret.
async fn vault_credentials(
    cfg: &Config,
    src: &config::Source,
    v: &crate::config::OciVaultRef,
) -> Result<Credentials, Failure> {
    let failed = |why: String| Failure::Source(format!("source {}: ociVault {v}: {why}", src.name));
    let identity = cfg
        .oci
        .as_ref()
        .ok_or_else(|| failed("needs the oci: section".into()))?;
    let shared = crate::oci::Shared::for_config(identity);
    let value = crate::oci::vault::secret(&shared, v)
        .await
        .map_err(|e| Failure::Source(format!("source {}: {e}", src.name)))?;
    // serde's message could quote the content: say only what is wrong with its shape.
    let keys: std::collections::BTreeMap<String, String> =
        serde_saphyr::from_slice(&value).map_err(|_| {
            failed("the content is not a YAML map of keys (username, password, token, identity, known_hosts, passphrase)".into())
        })?;
    let keys = keys
        .into_iter()
        .map(|(k, v)| (k, crate::secrets::SecretBytes::new(v.into_bytes())))
        .collect();
    Credentials::from_secret(&keys, src.is_ssh()).map_err(failed)
}
