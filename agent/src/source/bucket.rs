//! OCI Object Storage as a source (the role Flux's Bucket plays): one archive object, whose
//! ETag is the revision, or the objects under a prefix, whose names and ETags together are.
//! A fetch that finds the same ETags downloads nothing; under a prefix only the objects
//! that changed are downloaded again. The same path, size and count rules as Git apply,
//! checked on the listing before anything is downloaded.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _};
use sha2::Digest as _;

use super::archive::Archive;
use super::{Error, File, Limits, Result, Revision};
use crate::oci::object_storage::{self, Object};

/// Downloads of a prefix's objects at once.
const PARALLEL_GETS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// A tar, tar.gz or zip object.
    Archive(String),
    /// Objects whose names start with this (`""`: the whole bucket), as a directory.
    Prefix(String),
}

#[derive(Debug, Clone)]
pub struct BucketSpec {
    pub name: String,
    pub namespace: String,
    pub bucket: String,
    pub select: Select,
    pub limits: Limits,
}

pub struct BucketSource {
    spec: BucketSpec,
    oci: Arc<crate::oci::Shared>,
    held: tokio::sync::Mutex<Held>,
}

/// What the last fetch downloaded, by ETag.
#[derive(Default)]
struct Held {
    archive: Option<(String, Arc<Archive>)>,
    /// Object name → (ETag, content).
    objects: BTreeMap<String, (String, Arc<Vec<u8>>)>,
}

/// A revision's own data.
enum Data {
    Archive(Arc<Archive>),
    /// Paths (prefix taken off) and contents.
    Files(Arc<Vec<File>>),
}

impl BucketSource {
    pub fn new(spec: BucketSpec, oci: Arc<crate::oci::Shared>) -> Self {
        BucketSource {
            spec,
            oci,
            held: Default::default(),
        }
    }

    fn oci_error(&self, source: crate::oci::Error) -> Error {
        Error::Oci {
            name: self.spec.name.clone(),
            source,
        }
    }

    async fn fetch_inner(&self) -> Result<Revision> {
        match &self.spec.select {
            Select::Archive(object) => self.fetch_archive(object).await,
            Select::Prefix(prefix) => self.fetch_prefix(prefix).await,
        }
    }

    async fn fetch_archive(&self, object: &str) -> Result<Revision> {
        let s = &self.spec;
        let meta = object_storage::head(&self.oci, &s.namespace, &s.bucket, object)
            .await
            .map_err(|e| self.oci_error(e))?;
        let id = |etag: &str| format!("{object}@etag:{}", etag.trim_matches('"'));
        let mut held = self.held.lock().await;
        if let Some((etag, archive)) = &held.archive
            && *etag == meta.etag
        {
            return Ok(Revision::new(id(etag), Data::Archive(archive.clone())));
        }
        let max = s.limits.max_archive_bytes;
        let (meta, bytes) = object_storage::get(&self.oci, &s.namespace, &s.bucket, object, max)
            .await
            .map_err(|e| self.oci_error(e))?;
        let what = format!("source {}: {object}", s.name);
        let archive = Archive::open(&s.name, what, bytes, None, &s.limits).await?;
        held.archive = Some((meta.etag.clone(), archive.clone()));
        Ok(Revision::new(id(&meta.etag), Data::Archive(archive)))
    }

    async fn fetch_prefix(&self, prefix: &str) -> Result<Revision> {
        let s = &self.spec;
        let listed = object_storage::list(
            &self.oci,
            &s.namespace,
            &s.bucket,
            prefix,
            s.limits.max_files * 4,
        )
        .await
        .map_err(|e| self.oci_error(e))?;
        let wanted = self.wanted(prefix, listed)?;
        let mut digest = sha2::Sha256::new();
        for (path, o) in &wanted {
            digest.update(format!("{path}\0{}\n", o.etag));
        }
        let id = format!("{prefix}@sha256:{:x}", digest.finalize());
        let mut held = self.held.lock().await;
        let max = s.limits.max_file_size;
        let gets: Vec<_> = wanted
            .values()
            .filter(|o| {
                held.objects
                    .get(&o.name)
                    .is_none_or(|(etag, _)| *etag != o.etag)
            })
            .map(|o| object_storage::get(&self.oci, &s.namespace, &s.bucket, &o.name, max))
            .collect();
        let got: Vec<(Object, Vec<u8>)> = futures::stream::iter(gets)
            .buffer_unordered(PARALLEL_GETS)
            .try_collect()
            .await
            .map_err(|e| self.oci_error(e))?;
        for (o, content) in got {
            held.objects.insert(o.name, (o.etag, Arc::new(content)));
        }
        let names: std::collections::HashSet<&str> =
            wanted.values().map(|o| o.name.as_str()).collect();
        held.objects.retain(|name, _| names.contains(name.as_str()));
        let files = wanted
            .iter()
            .filter_map(|(path, o)| {
                let (_, content) = held.objects.get(&o.name)?;
                Some(File {
                    path: path.clone(),
                    content: content.to_vec(),
                })
            })
            .collect();
        Ok(Revision::new(id, Data::Files(Arc::new(files))))
    }

    /// The listed objects to read, by path under the prefix: names checked as archive
    /// entries are (relative, no `..`), the filter applied, the caps checked on the listed sizes.
    fn wanted(&self, prefix: &str, listed: Vec<Object>) -> Result<BTreeMap<String, Object>> {
        let limits = &self.spec.limits;
        let mut out = BTreeMap::new();
        let mut bytes = 0u64;
        for o in listed {
            let Some(rest) = o.name.strip_prefix(prefix) else {
                continue;
            };
            // The console's "folders" are empty objects named `dir/`.
            if rest.is_empty() || rest.ends_with('/') || !limits.reads(rest) {
                continue;
            }
            if rest.starts_with('/')
                || rest
                    .split('/')
                    .any(|p| p == ".." || p == "." || p.is_empty())
            {
                return Err(Error::BadPath {
                    path: o.name.clone(),
                    reason: "object name is not a plain relative path",
                });
            }
            if o.size > limits.max_file_size {
                return Err(Error::FileTooLarge {
                    path: o.name.clone(),
                    size: o.size,
                    max: limits.max_file_size,
                });
            }
            bytes += o.size;
            if bytes > limits.max_total_bytes {
                return Err(Error::TooManyBytes {
                    path: prefix.to_owned(),
                    max: limits.max_total_bytes,
                });
            }
            if out.len() >= limits.max_files {
                return Err(Error::TooManyFiles {
                    path: prefix.to_owned(),
                    max: limits.max_files,
                });
            }
            out.insert(rest.to_owned(), o);
        }
        Ok(out)
    }
}

/// The files of a prefix under `path`, with the depth rule.
fn under(files: &[File], path: &str, limits: &Limits) -> Result<Vec<File>> {
    let root = super::git::tree::normalize(path)?;
    let base = root.split('/').filter(|p| !p.is_empty()).count();
    let mut out = Vec::new();
    for f in files {
        let inside = root.is_empty()
            || f.path
                .strip_prefix(&root)
                .is_some_and(|r| r.starts_with('/'));
        if !inside {
            continue;
        }
        if f.path.split('/').count() - 1 - base > limits.max_depth {
            return Err(Error::TooDeep {
                path: f.path.clone(),
                max: limits.max_depth,
            });
        }
        out.push(f.clone());
    }
    if out.is_empty() && !root.is_empty() {
        return Err(Error::Archive {
            what: format!("{root}/"),
            reason: "no objects under this path".into(),
        });
    }
    Ok(out)
}

impl super::Source for BucketSource {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Revision>> {
        let url = format!("{}/{}", self.spec.namespace, self.spec.bucket);
        let after = self.spec.limits.fetch_timeout;
        Box::pin(super::bounded_fetch(
            &self.spec.name,
            url,
            after,
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

    /// Every file of an archive object; a prefix gives what its fetch downloaded (its
    /// manifests only).
    fn read_all<'a>(
        &'a self,
        revision: &'a Revision,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Vec<File>>> {
        let limits = self.spec.limits.every_file();
        Box::pin(self.read_under(revision, path, limits))
    }
}

impl BucketSource {
    async fn read_under(
        &self,
        revision: &Revision,
        path: &str,
        limits: Limits,
    ) -> Result<Vec<File>> {
        match revision.data::<Data>() {
            Some(Data::Files(files)) => under(files, path, &limits),
            Some(Data::Archive(archive)) => {
                archive.read_in_task(&self.spec.name, path, &limits).await
            }
            None => Err(Error::Invalid {
                name: self.spec.name.clone(),
                reason: format!("revision {revision} is not one of this Object Storage source"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(limits: Limits) -> BucketSource {
        let spec = BucketSpec {
            name: "b".into(),
            namespace: "ns".into(),
            bucket: "bk".into(),
            select: Select::Prefix("live/".into()),
            limits,
        };
        BucketSource::new(spec, crate::oci::Shared::new(Default::default()))
    }

    fn object(name: &str, size: u64) -> Object {
        Object {
            name: name.into(),
            etag: format!("etag-{name}"),
            size,
        }
    }

    #[test]
    fn a_listing_is_checked_before_anything_is_downloaded() {
        let s = source(Limits {
            max_file_size: 10,
            ..Default::default()
        });
        let listed = vec![
            object("live/", 0),
            object("live/apps/", 0),
            object("live/apps/a.yaml", 5),
            object("live/notes.txt", 500),
            object("other/x.yaml", 5),
        ];
        let wanted = s.wanted("live/", listed).unwrap();
        assert_eq!(wanted.keys().collect::<Vec<_>>(), ["apps/a.yaml"]);
        for (name, want) in [
            (
                "live/../x.yaml",
                "live/../x.yaml: object name is not a plain relative path",
            ),
            (
                "live/a//b.yaml",
                "live/a//b.yaml: object name is not a plain relative path",
            ),
            (
                "live//abs.yaml",
                "live//abs.yaml: object name is not a plain relative path",
            ),
            (
                "live/big.yaml",
                "live/big.yaml: 11 bytes is over the 10-byte file size limit",
            ),
        ] {
            let size = if name.contains("big") { 11 } else { 1 };
            let err = s.wanted("live/", vec![object(name, size)]).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        let few = source(Limits {
            max_files: 1,
            ..Default::default()
        });
        let two = vec![object("live/a.yaml", 1), object("live/b.yaml", 1)];
        assert_eq!(
            few.wanted("live/", two).unwrap_err().to_string(),
            "live/: more than 1 files"
        );
    }

    #[test]
    fn a_path_under_a_prefix_keeps_the_depth_rule() {
        let files = vec![
            File {
                path: "apps/a.yaml".into(),
                content: b"a".to_vec(),
            },
            File {
                path: "apps/x/y/z.yaml".into(),
                content: b"z".to_vec(),
            },
        ];
        let shallow = Limits {
            max_depth: 1,
            ..Default::default()
        };
        assert_eq!(under(&files, "apps", &Limits::default()).unwrap().len(), 2);
        assert_eq!(
            under(&files, "apps", &shallow).unwrap_err().to_string(),
            "apps/x/y/z.yaml: directories nested deeper than 1"
        );
        assert_eq!(
            under(&files, "nope", &shallow).unwrap_err().to_string(),
            "nope/: no objects under this path"
        );
    }
}
