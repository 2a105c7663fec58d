//! What each sync manages, stored in the cluster: one ConfigMap per sync in the agent's
//! namespace holding the applied revision, the object list, and the sync's status.
//! It is written only when its content changes, so a no-change resync writes nothing.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};

use crate::core::ObjectKey;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ConfigMap/{namespace}/{name}: {what}: {source}")]
    Api {
        namespace: String,
        name: String,
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("ConfigMap/{namespace}/{name}: line {line}: {message}")]
    Corrupt {
        namespace: String,
        name: String,
        line: usize,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub const INVENTORY_LABEL: &str = "gitops-agent.io/inventory";

/// The objects a sync applied at a revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub revision: Option<String>,
    pub entries: BTreeSet<ObjectKey>,
}

impl Inventory {
    /// Adds the objects of `older` this one lacks (they are still ours to track).
    pub fn keep_missing(&mut self, older: &Inventory) {
        for e in &older.entries {
            if !self.entries.contains(e) {
                self.entries.insert(e.clone());
            }
        }
    }
}

/// The last outcome of a sync, as `gitops-agent status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The revision last attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Succeeded, Failed or HeldBack.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the cluster or this status last changed (a resync that changes nothing keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_time: Option<String>,
    /// Counts per action of the last sync that changed something.
    #[serde(default)]
    pub last_change_counts: BTreeMap<String, usize>,
}

/// Everything stored for one sync.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    pub inventory: Inventory,
    pub status: Status,
}

pub fn configmap_name(sync: &str) -> String {
    format!("gitops-agent-{sync}")
}

/// One line per object: `apiVersion kind namespace name` (`-` for cluster-scoped).
/// Plain text keeps it readable with kubectl; about 60 bytes an object, so a ConfigMap's
/// 1 MiB holds some 15,000 objects per sync.
pub fn encode_entries(entries: &BTreeSet<ObjectKey>) -> String {
    let mut out = String::with_capacity(entries.len() * 64);
    for e in entries {
        out.push_str(&format!(
            "{} {} {} {}\n",
            e.api_version(),
            e.kind,
            e.namespace.as_deref().unwrap_or("-"),
            e.name
        ));
    }
    out
}

pub fn decode_entries(text: &str) -> std::result::Result<BTreeSet<ObjectKey>, (usize, String)> {
    let mut out = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split(' ').collect();
        let [api_version, kind, ns, name] = parts.as_slice() else {
            return Err((i + 1, format!("expected 4 fields, got {}", parts.len())));
        };
        let (group, version) = ObjectKey::split_api_version(api_version);
        out.insert(ObjectKey {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            namespace: (*ns != "-").then(|| ns.to_string()),
            name: name.to_string(),
        });
    }
    Ok(out)
}

pub struct Store {
    api: Api<ConfigMap>,
    client: Client,
    namespace: String,
}

impl Store {
    pub fn new(client: Client, namespace: &str) -> Self {
        Store {
            api: Api::namespaced(client.clone(), namespace),
            client,
            namespace: namespace.to_string(),
        }
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
    pub async fn load(&self, sync: &str) -> Result<Record> {
        let name = configmap_name(sync);
        let Some(cm) = self
            .api
            .get_opt(&name)
            .await
            .map_err(|e| self.err(&name, "get", e))?
        else {
            return Ok(Record::default());
        };
        let data = cm.data.unwrap_or_default();
        let entries = decode_entries(data.get("inventory").map(String::as_str).unwrap_or(""))
            .map_err(|(line, message)| Error::Corrupt {
                namespace: self.namespace.clone(),
                name: name.clone(),
                line,
                message,
            })?;
        let status = data
            .get("status")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        Ok(Record {
            inventory: Inventory {
                revision: data.get("revision").cloned(),
                entries,
            },
            status,
        })
    }

    /// Lists every stored sync record (for `status`).
    pub async fn list(&self) -> Result<Vec<(String, Record)>> {
        let lp = kube::api::ListParams::default().labels(INVENTORY_LABEL);
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
            out.push((sync.clone(), self.load(&sync).await?));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Stores the record if it differs from `previous`; returns whether it wrote.
    pub async fn store(&self, sync: &str, previous: &Record, record: &Record) -> Result<bool> {
        if previous == record {
            return Ok(false);
        }
        let name = configmap_name(sync);
        let mut data = BTreeMap::new();
        data.insert(
            "inventory".to_string(),
            encode_entries(&record.inventory.entries),
        );
        if let Some(r) = &record.inventory.revision {
            data.insert("revision".to_string(), r.clone());
        }
        data.insert(
            "status".to_string(),
            serde_json::to_string(&record.status).unwrap_or_default(),
        );
        let cm = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {INVENTORY_LABEL: sync, "app.kubernetes.io/managed-by": "gitops-agent"}},
            "data": data,
        });
        let pp = PatchParams::apply(crate::FIELD_MANAGER).force();
        match self.api.patch(&name, &pp, &Patch::Apply(&cm)).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                // The agent's namespace is missing (first run outside the install manifests).
                self.ensure_namespace().await?;
                self.api
                    .patch(&name, &pp, &Patch::Apply(&cm))
                    .await
                    .map_err(|e| self.err(&name, "apply", e))?;
                Ok(true)
            }
            Err(e) => Err(self.err(&name, "apply", e)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let set: BTreeSet<ObjectKey> = [
            ObjectKey {
                group: "".into(),
                version: "v1".into(),
                kind: "Namespace".into(),
                namespace: None,
                name: "shop".into(),
            },
            ObjectKey {
                group: "apps".into(),
                version: "v1".into(),
                kind: "Deployment".into(),
                namespace: Some("shop".into()),
                name: "web".into(),
            },
        ]
        .into_iter()
        .collect();
        let text = encode_entries(&set);
        assert!(
            text.contains("apps/v1 Deployment shop web\n")
                && text.contains("v1 Namespace - shop\n"),
            "{text}"
        );
        assert_eq!(decode_entries(&text).unwrap(), set);
    }

    #[test]
    fn corrupt_lines_are_located() {
        assert_eq!(
            decode_entries("v1 ConfigMap a b\nbroken\n").unwrap_err().0,
            2
        );
    }
}
