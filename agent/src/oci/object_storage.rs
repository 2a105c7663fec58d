//! OCI Object Storage (`/n/{namespace}/b/{bucket}/o`, signed): an object's metadata
//! (HeadObject), its content (GetObject, capped, checked against `content-md5` when the
//! service sends one) and the objects under a prefix (ListObjects with name, size, etag
//! and md5, paged by `nextStartWith`).

use base64::Engine as _;
use md5::Digest as _;

use super::{Error, Shared};

const TEMPLATE: &str = "https://objectstorage.{region}.oraclecloud.com";

/// What identifies one version of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub name: String,
    pub etag: String,
    pub size: u64,
}

fn url(shared: &Shared, namespace: &str, bucket: &str, rest: &str) -> Result<String, Error> {
    let base = shared.base("objectstorage", TEMPLATE)?;
    Ok(format!(
        "{base}/n/{}/b/{}/o{rest}",
        super::segment(namespace),
        super::segment(bucket)
    ))
}

fn meta(response: &reqwest::Response, name: &str, what: &str) -> Result<Object, Error> {
    let etag = super::header(response, "etag").ok_or_else(|| Error::Answer {
        what: what.to_owned(),
        reason: "no etag in the answer".into(),
    })?;
    let size = super::header(response, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Object {
        name: name.to_owned(),
        etag,
        size,
    })
}

/// The object's current version (HeadObject).
pub async fn head(
    shared: &Shared,
    namespace: &str,
    bucket: &str,
    name: &str,
) -> Result<Object, Error> {
    let what = format!("Object Storage {namespace}/{bucket}/{name}: HeadObject");
    let url = url(
        shared,
        namespace,
        bucket,
        &format!("/{}", super::segment(name)),
    )?;
    let response = super::call(shared, "HEAD", &url, Vec::new(), &[], &what).await?;
    meta(&response, name, &what)
}

/// The object's content, at most `max` bytes, with the version it is.
pub async fn get(
    shared: &Shared,
    namespace: &str,
    bucket: &str,
    name: &str,
    max: u64,
) -> Result<(Object, Vec<u8>), Error> {
    let what = format!("Object Storage {namespace}/{bucket}/{name}");
    let url = url(
        shared,
        namespace,
        bucket,
        &format!("/{}", super::segment(name)),
    )?;
    let response = super::call(
        shared,
        "GET",
        &url,
        Vec::new(),
        &[],
        &format!("{what}: GetObject"),
    )
    .await?;
    let object = meta(&response, name, &what)?;
    // A multipart object's `content-md5` is absent (it has opc-multipart-md5 instead).
    let md5 = super::header(&response, "content-md5");
    let body = super::read_capped(response, max, &what).await?;
    if let Some(want) = md5 {
        let got = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
        if got != want {
            return Err(Error::Answer {
                what,
                reason: "the content does not match its content-md5".into(),
            });
        }
    }
    Ok((
        Object {
            size: body.len() as u64,
            ..object
        },
        body,
    ))
}

/// Every object whose name starts with `prefix`, in name order; more than `max` is an error.
pub async fn list(
    shared: &Shared,
    namespace: &str,
    bucket: &str,
    prefix: &str,
    max: usize,
) -> Result<Vec<Object>, Error> {
    let what = format!("Object Storage {namespace}/{bucket}: ListObjects {prefix}");
    let mut out = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let mut query = format!(
            "?prefix={}&fields=name,size,etag&limit=1000",
            super::segment(prefix)
        );
        if let Some(s) = &start {
            query.push_str(&format!("&start={}", super::segment(s)));
        }
        let response = super::call(
            shared,
            "GET",
            &url(shared, namespace, bucket, &query)?,
            Vec::new(),
            &[],
            &what,
        )
        .await?;
        let v = super::read_json(response, 16 * 1024 * 1024, &what).await?;
        let answer = |reason: &str| Error::Answer {
            what: what.clone(),
            reason: reason.into(),
        };
        for o in v["objects"]
            .as_array()
            .ok_or_else(|| answer("the answer has no objects"))?
        {
            let (Some(name), Some(etag)) = (o["name"].as_str(), o["etag"].as_str()) else {
                return Err(answer("an object without name or etag"));
            };
            out.push(Object {
                name: name.to_owned(),
                etag: etag.to_owned(),
                size: o["size"].as_u64().unwrap_or(0),
            });
            if out.len() > max {
                return Err(Error::TooLarge {
                    what,
                    limit: format!("{max} objects"),
                });
            }
        }
        match v["nextStartWith"].as_str() {
            // A pager that does not move on would loop forever.
            Some(next) if start.as_deref() != Some(next) && !next.is_empty() => {
                start = Some(next.to_owned())
            }
            _ => break,
        }
    }
    Ok(out)
}
