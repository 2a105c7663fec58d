//! What a push event says, read from each provider's payload.

use serde_json::Value;

use super::{Error, Provider, Result};

/// What a push event says: the repository's URLs and the refs that changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Push {
    pub urls: Vec<String>,
    /// Full refs, only `refs/heads/<branch>` and `refs/tags/<tag>`.
    pub refs: Vec<String>,
    /// An OCI Notifications message's topic: it concerns the sources that name it, not a
    /// repository and ref.
    pub topic: Option<String>,
}

/// Reads a provider's push payload.
pub fn parse_push(provider: Provider, payload: &Value) -> Result<Push> {
    let (urls, refs) = (provider.spec().push)(payload);
    let urls: Vec<String> = urls.into_iter().filter(|u| !u.trim().is_empty()).collect();
    if urls.is_empty() {
        return Err(Error::Payload("payload has no repository URL"));
    }
    if refs.is_empty() {
        return Err(Error::Payload("payload has no ref"));
    }
    let refs: Vec<String> = refs
        .into_iter()
        .filter(|r| {
            ["refs/heads/", "refs/tags/"]
                .iter()
                .any(|p| r.strip_prefix(p).is_some_and(|name| !name.is_empty()))
        })
        .collect();
    if refs.is_empty() {
        return Err(Error::Payload(
            "ref must be refs/heads/<branch> or refs/tags/<tag>",
        ));
    }
    Ok(Push {
        urls,
        refs,
        topic: None,
    })
}
