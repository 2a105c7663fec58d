//! What a push event says, read from each provider's payload.

use serde_json::Value;

use super::{Error, Provider, Result};

/// What a push event says: the repository's URLs and the refs that changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Push {
    pub urls: Vec<String>,
    /// Full refs, only `refs/heads/<branch>` and `refs/tags/<tag>`.
    pub refs: Vec<String>,
}

/// Reads a provider's push payload.
pub fn parse_push(provider: Provider, payload: &Value) -> Result<Push> {
    let strs = |paths: &[&[&str]]| -> Vec<String> {
        paths
            .iter()
            .filter_map(|path| {
                path.iter()
                    .try_fold(payload, |v, k| v.get(k))
                    .and_then(Value::as_str)
            })
            .map(str::to_owned)
            .collect()
    };
    let (urls, refs) = match provider {
        Provider::Github | Provider::Gitea => (
            strs(&[
                &["repository", "clone_url"],
                &["repository", "ssh_url"],
                &["repository", "html_url"],
                &["repository", "git_url"],
            ]),
            strs(&[&["ref"]]),
        ),
        Provider::Gitlab => (
            strs(&[
                &["project", "git_http_url"],
                &["project", "git_ssh_url"],
                &["project", "web_url"],
                &["repository", "git_http_url"],
                &["repository", "git_ssh_url"],
                &["repository", "homepage"],
                &["repository", "url"],
            ]),
            strs(&[&["ref"]]),
        ),
        Provider::Bitbucket => {
            let urls = payload
                .pointer("/repository/links/clone")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("href").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            let refs = payload
                .get("changes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    c.pointer("/ref/id")
                        .or_else(|| c.get("refId"))
                        .and_then(Value::as_str)
                })
                .map(str::to_owned)
                .collect();
            (urls, refs)
        }
        Provider::Generic => (strs(&[&["repository"]]), strs(&[&["ref"]])),
    };
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
    Ok(Push { urls, refs })
}
