//! Reading and writing a sync's record. The head ConfigMap is the one atomic switch: shards
//! of a long object list are written first under names that carry the list's digest, then
//! the head is replaced to point at them, then shards of other lists are deleted. A crash
//! at any step leaves the head naming a complete list. The head is replaced only at the
//! resourceVersion it was read at, so a writer that lost the lease fails instead of
//! overwriting what the new leader wrote.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use sha2::{Digest, Sha256};

use crate::core::ObjectKey;

use super::{
    DIGEST_LABEL, Error, INVENTORY_LABEL, Inventory, Record, Result, SHARD_LABEL, configmap_name,
    decode_entries, encode_entries, split_lines,
};

/// The most a ConfigMap holds of an object list; the API server refuses a ConfigMap whose
/// data exceeds 1 MiB, and the head also keeps the status.
const SHARD_BYTES: usize = 900 * 1024;

/// A record as read, with what a later write must check.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub record: Record,
    /// The head's resourceVersion; `None` when it does not exist.
    version: Option<String>,
    /// The digest of the shards the head names; `None` when the list is inline.
    digest: Option<String>,
}

impl std::ops::Deref for Stored {
    type Target = Record;
    fn deref(&self) -> &Record {
        &self.record
    }
}

pub struct Store {
    api: Api<ConfigMap>,
    client: Client,
    namespace: String,
    shard_bytes: usize,
    /// Per sync, the sharded list last read or written, by digest: shards are named by
    /// their list's digest and never change, so a head naming the same digest needs them
    /// neither read nor decoded again.
    lists: std::sync::Mutex<HashMap<String, (String, BTreeSet<ObjectKey>)>>,
}

impl Store {
    pub fn new(client: Client, namespace: &str) -> Self {
        Store {
            api: Api::namespaced(client.clone(), namespace),
            client,
            namespace: namespace.to_string(),
            shard_bytes: SHARD_BYTES,
            lists: Default::default(),
        }
    }

    /// A store that shards lists longer than `bytes` (tests use small shards).
    pub fn with_shard_bytes(mut self, bytes: usize) -> Self {
        self.shard_bytes = bytes.max(1);
        self
    }

    fn err(&self, name: &str, what: &'static str, source: kube::Error) -> Error {
        Error::Api {
            namespace: self.namespace.clone(),
            name: name.to_string(),
            what,
            source,
        }
    }

    /// The stored record of a sync; an empty one when it has never synced.
    pub async fn load(&self, sync: &str) -> Result<Stored> {
        let name = configmap_name(sync);
        let Some(cm) = self
            .api
            .get_opt(&name)
            .await
            .map_err(|e| self.err(&name, "get", e))?
        else {
            return Ok(Stored::default());
        };
        self.decode(sync, &name, cm).await
    }

    /// What an undecodable list is, as the error naming its ConfigMap and line.
    fn corrupt<'a>(&'a self, name: &'a str) -> impl FnOnce((usize, String)) -> Error + 'a {
        move |(line, message)| Error::Corrupt {
            namespace: self.namespace.clone(),
            name: name.to_string(),
            line,
            message,
        }
    }

    /// The list a head's `shards` (`<digest> <count>`) names, when it is the one last seen.
    fn known_list(
        &self,
        sync: &str,
        shards: &str,
    ) -> Option<(BTreeSet<ObjectKey>, Option<String>)> {
        let digest = shards.split_once(' ')?.0;
        let lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
        let (known, entries) = lists.get(sync)?;
        (known == digest).then(|| (entries.clone(), Some(known.clone())))
    }

    fn remember_list(&self, sync: &str, digest: &str, entries: &BTreeSet<ObjectKey>) {
        let mut lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
        if lists.get(sync).is_none_or(|(d, _)| d != digest) {
            lists.insert(sync.to_string(), (digest.to_string(), entries.clone()));
        }
    }

    /// A head as read (its shards read too, when it names them).
    async fn decode(&self, sync: &str, name: &str, cm: ConfigMap) -> Result<Stored> {
        let data = cm.data.unwrap_or_default();
        let (entries, digest) = match data.get("shards") {
            Some(shards) => match self.known_list(sync, shards) {
                Some(known) => known,
                None => {
                    let (digest, text) = self.load_shards(sync, name, shards).await?;
                    let entries = decode_entries(&text).map_err(self.corrupt(name))?;
                    self.remember_list(sync, &digest, &entries);
                    (entries, Some(digest))
                }
            },
            None => {
                let text = data
                    .get("inventory")
                    .map(String::as_str)
                    .unwrap_or_default();
                (decode_entries(text).map_err(self.corrupt(name))?, None)
            }
        };
        let status = data
            .get("status")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        Ok(Stored {
            record: Record {
                inventory: Inventory {
                    revision: data.get("revision").cloned(),
                    entries,
                },
                status,
            },
            version: cm.metadata.resource_version,
            digest,
        })
    }

    /// The list the head's `shards: <digest> <count>` names, checked against its digest.
    async fn load_shards(&self, sync: &str, head: &str, shards: &str) -> Result<(String, String)> {
        let corrupt = |message: String| Error::Shards {
            namespace: self.namespace.clone(),
            name: head.to_string(),
            message,
        };
        let (digest, count) = shards
            .split_once(' ')
            .and_then(|(d, n)| Some((d.to_string(), n.parse::<usize>().ok()?)))
            .ok_or_else(|| {
                corrupt(format!(
                    "shards: expected `<digest> <count>`, got {shards:?}"
                ))
            })?;
        let lp =
            ListParams::default().labels(&format!("{SHARD_LABEL}={sync},{DIGEST_LABEL}={digest}"));
        let list = self
            .api
            .list(&lp)
            .await
            .map_err(|e| self.err(head, "list shards", e))?;
        let mut by_name: BTreeMap<String, String> = list
            .items
            .into_iter()
            .filter_map(|cm| Some((cm.metadata.name?, cm.data?.remove("inventory")?)))
            .collect();
        let mut text = String::new();
        for i in 0..count {
            let shard = shard_name(head, &digest, i);
            let part = by_name
                .remove(&shard)
                .ok_or_else(|| corrupt(format!("shard ConfigMap {shard} is missing")))?;
            text.push_str(&part);
        }
        if list_digest(&text) != digest {
            return Err(corrupt(format!(
                "the {count} shards do not add up to list {digest}"
            )));
        }
        Ok((digest, text))
    }

    /// Lists every stored sync record (for `status`), from the one list of heads.
    pub async fn list(&self) -> Result<Vec<(String, Record)>> {
        let lp = ListParams::default().labels(INVENTORY_LABEL);
        let list = self
            .api
            .list(&lp)
            .await
            .map_err(|e| self.err("*", "list", e))?;
        let mut out = Vec::new();
        for cm in list.items {
            let Some(sync) = cm
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(INVENTORY_LABEL))
                .cloned()
            else {
                continue;
            };
            let name = cm.metadata.name.clone().unwrap_or_default();
            out.push((sync.clone(), self.decode(&sync, &name, cm).await?.record));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Stores the record if it differs from what `stored` holds, at the version it was read
    /// at; returns whether it wrote. `stored` then holds what was written.
    pub async fn store(&self, sync: &str, stored: &mut Stored, record: &Record) -> Result<bool> {
        if stored.record == *record {
            return Ok(false);
        }
        let name = configmap_name(sync);
        let text = encode_entries(&record.inventory.entries);
        let mut data = BTreeMap::new();
        let digest = if text.len() <= self.shard_bytes {
            data.insert("inventory".to_string(), text);
            None
        } else {
            let digest = list_digest(&text);
            let parts = split_lines(&text, self.shard_bytes);
            if stored.digest.as_deref() != Some(digest.as_str()) {
                self.write_shards(sync, &name, &digest, &parts).await?;
            }
            data.insert("shards".to_string(), format!("{digest} {}", parts.len()));
            self.remember_list(sync, &digest, &record.inventory.entries);
            Some(digest)
        };
        if let Some(r) = &record.inventory.revision {
            data.insert("revision".to_string(), r.clone());
        }
        data.insert(
            "status".to_string(),
            serde_json::to_string(&record.status).unwrap_or_default(),
        );
        let version = self
            .write_head(sync, &name, stored.version.clone(), data)
            .await?;
        let had_shards = stored.digest.is_some();
        *stored = Stored {
            record: record.clone(),
            version,
            digest,
        };
        if had_shards || stored.digest.is_some() {
            self.delete_other_shards(sync, &name, stored.digest.as_deref())
                .await;
        }
        Ok(true)
    }

    /// Replaces the head at `version`, or creates it when there was none; a head changed or
    /// created by another writer meanwhile is a conflict.
    async fn write_head(
        &self,
        sync: &str,
        name: &str,
        version: Option<String>,
        data: BTreeMap<String, String>,
    ) -> Result<Option<String>> {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels(INVENTORY_LABEL, sync)),
                resource_version: version.clone(),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        let pp = PostParams {
            field_manager: Some(crate::FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        let written = match &version {
            Some(_) => self.api.replace(name, &pp, &cm).await,
            None => match self.api.create(&pp, &cm).await {
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    // The agent's namespace is missing (first run outside the install manifests).
                    self.ensure_namespace().await?;
                    self.api.create(&pp, &cm).await
                }
                other => other,
            },
        };
        match written {
            Ok(cm) => Ok(cm.metadata.resource_version),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict {
                namespace: self.namespace.clone(),
                name: name.to_string(),
            }),
            Err(e) => Err(self.err(name, "write", e)),
        }
    }

    /// Writes the shards of a list; they are unreferenced until the head names them.
    async fn write_shards(
        &self,
        sync: &str,
        head: &str,
        digest: &str,
        parts: &[&str],
    ) -> Result<()> {
        let pp = PatchParams::apply(crate::FIELD_MANAGER).force();
        for (i, part) in parts.iter().enumerate() {
            let shard = shard_name(head, digest, i);
            let mut l = labels(SHARD_LABEL, sync);
            l.insert(DIGEST_LABEL.to_string(), digest.to_string());
            let cm = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": shard, "namespace": self.namespace, "labels": l},
                "data": {"inventory": part},
            });
            let written = match self.api.patch(&shard, &pp, &Patch::Apply(&cm)).await {
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    self.ensure_namespace().await?;
                    self.api.patch(&shard, &pp, &Patch::Apply(&cm)).await
                }
                other => other,
            };
            written.map_err(|e| self.err(&shard, "write shard", e))?;
        }
        Ok(())
    }

    /// Deletes the sync's shards of lists other than `keep`: those the head no longer names,
    /// and those of a write that died before its head. Failing leaves unreferenced ConfigMaps
    /// for the next write to delete, so it is logged, not failed.
    async fn delete_other_shards(&self, sync: &str, head: &str, keep: Option<&str>) {
        let lp = ListParams::default().labels(&format!("{SHARD_LABEL}={sync}"));
        let list = match self.api.list_metadata(&lp).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(configmap = head, error = %e, "listing old inventory shards");
                return;
            }
        };
        for cm in list.items {
            let digest = cm
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(DIGEST_LABEL));
            let Some(name) = cm.metadata.name.as_deref() else {
                continue;
            };
            if digest.map(String::as_str) == keep {
                continue;
            }
            if let Err(e) = self.api.delete(name, &DeleteParams::default()).await {
                tracing::warn!(configmap = name, error = %e, "deleting an old inventory shard");
            }
        }
    }

    async fn ensure_namespace(&self) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}});
        api.patch(
            &self.namespace,
            &PatchParams::apply(crate::FIELD_MANAGER),
            &Patch::Apply(&ns),
        )
        .await
        .map_err(|e| Error::Api {
            namespace: self.namespace.clone(),
            name: self.namespace.clone(),
            what: "create namespace",
            source: e,
        })?;
        Ok(())
    }
}

fn labels(key: &str, sync: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (key.to_string(), sync.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "gitops-agent".to_string(),
        ),
    ])
}

fn shard_name(head: &str, digest: &str, i: usize) -> String {
    format!("{head}-{digest}-{i}")
}

/// The first 16 hex digits of the list's SHA-256: names its shards and checks them on read.
fn list_digest(text: &str) -> String {
    let full = format!("{:x}", Sha256::digest(text.as_bytes()));
    full[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_carry_the_list_digest() {
        let d = list_digest("v1 ConfigMap a b\n");
        assert_eq!(d.len(), 16);
        assert_ne!(d, list_digest("v1 ConfigMap a c\n"));
        assert_eq!(
            shard_name("gitops-agent-apps", &d, 2),
            format!("gitops-agent-apps-{d}-2")
        );
    }
}
