//! OCI DevOps code repositories (`/20210630`, signed GETs): a branch or tag resolved to the
//! object it points at (ListRefs, matched on the exact name: the deprecated GetRef cannot
//! take a name with `/`), a commit checked to exist (GetCommit), and the archive of a
//! commit (GetRepositoryArchiveContent), refused as soon as it passes its size cap.

use super::{Error, Shared};

const TEMPLATE: &str = "https://devops.{region}.oci.oraclecloud.com";
/// Pages of ListRefs read before giving up: a name matches one ref, so this bounds only a
/// hostile or broken pager.
const MAX_PAGES: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefType {
    Branch,
    Tag,
}

impl RefType {
    fn as_str(self) -> &'static str {
        match self {
            RefType::Branch => "BRANCH",
            RefType::Tag => "TAG",
        }
    }
}

/// A resolved ref: its full name and what it points at (a branch's commit; a tag's object,
/// which is the tag object for an annotated tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    pub full_name: String,
    pub object: String,
}

fn url(shared: &Shared, repository: &str, rest: &str) -> Result<String, Error> {
    let base = shared.base("devops", TEMPLATE)?;
    Ok(format!(
        "{base}/20210630/repositories/{}{rest}",
        super::segment(repository)
    ))
}

/// A signed GET, asking for JSON.
async fn get(shared: &Shared, url: &str, what: &str) -> Result<reqwest::Response, Error> {
    let accept = ["accept:application/json".to_owned()];
    super::call(shared, "GET", url, Vec::new(), &accept, what).await
}

/// What the branch or tag `name` of `repository` points at now.
pub async fn resolve(
    shared: &Shared,
    repository: &str,
    kind: RefType,
    name: &str,
) -> Result<Ref, Error> {
    let what = format!("DevOps repository {repository}: ListRefs {name}");
    let mut page: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut query = format!(
            "?refName={}&refType={}&limit=100",
            super::segment(name),
            kind.as_str()
        );
        if let Some(p) = &page {
            query.push_str(&format!("&page={}", super::segment(p)));
        }
        let response = get(
            shared,
            &url(shared, repository, &format!("/refs{query}"))?,
            &what,
        )
        .await?;
        page = response
            .headers()
            .get("opc-next-page")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let v = super::read_json(response, 4 * 1024 * 1024, &what).await?;
        let items = v["items"].as_array().ok_or_else(|| Error::Answer {
            what: what.clone(),
            reason: "the answer has no items".into(),
        })?;
        if let Some(found) = items.iter().find(|i| i["refName"] == name) {
            return ref_of(found, kind, &what);
        }
        if page.is_none() {
            break;
        }
    }
    Err(Error::Api {
        what,
        status: 404,
        code: "NotFound".into(),
        message: format!("no {} named {name}", kind.as_str().to_ascii_lowercase()),
    })
}

fn ref_of(item: &serde_json::Value, kind: RefType, what: &str) -> Result<Ref, Error> {
    let field = match kind {
        RefType::Branch => "commitId",
        RefType::Tag => "objectId",
    };
    let object = item[field]
        .as_str()
        .filter(|c| c.len() == 40 && c.chars().all(|ch| ch.is_ascii_hexdigit()))
        .ok_or_else(|| Error::Answer {
            what: what.to_owned(),
            reason: format!("the ref has no 40-hex-digit {field}"),
        })?;
    let full_name = item["fullRefName"].as_str().unwrap_or_default().to_owned();
    Ok(Ref {
        full_name,
        object: object.to_ascii_lowercase(),
    })
}

/// Whether `commit` is a commit of `repository` (an error when not).
pub async fn commit(shared: &Shared, repository: &str, commit: &str) -> Result<(), Error> {
    let what = format!("DevOps repository {repository}: GetCommit {commit}");
    let path = format!("/commits/{}", super::segment(commit));
    get(shared, &url(shared, repository, &path)?, &what).await?;
    Ok(())
}

/// The archive of `reference` (a commit id, for a revision that cannot move under us) in
/// `format`, at most `max` bytes.
pub async fn archive(
    shared: &Shared,
    repository: &str,
    reference: &str,
    format: &str,
    max: u64,
) -> Result<Vec<u8>, Error> {
    let what = format!("DevOps repository {repository}: archive of {reference}");
    let query = format!(
        "/archive/content?refName={}&format={}",
        super::segment(reference),
        super::segment(format)
    );
    let response = get(shared, &url(shared, repository, &query)?, &what).await?;
    super::read_capped(response, max, &what).await
}
