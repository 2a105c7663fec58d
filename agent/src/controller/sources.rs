//! Sources as the configuration declares them: each opened once, with its credentials read
//! through the secret resolver, as a [`Source`] the controller fetches.

use std::sync::Arc;

use crate::config::{self, Config, GitRef};
use crate::secrets::SecretResolver;
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
    let credentials = match &src.secret_ref {
        None => Credentials::None,
        Some(r) => {
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
