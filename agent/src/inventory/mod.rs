//! What each sync manages, stored in the cluster: a head ConfigMap per sync in the agent's
//! namespace holding the applied revision, the sync's status and the object list (in
//! shards beside it when the list outgrows one ConfigMap). It is written only when its
//! content changes, so a no-change resync writes nothing.

mod store;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::core::ObjectKey;

pub use store::{Store, Stored};

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
    #[error("ConfigMap/{namespace}/{name}: {message}")]
    Shards {
        namespace: String,
        name: String,
        message: String,
    },
    #[error(
        "ConfigMap/{namespace}/{name}: changed since this replica read it (another writer, or this replica is no longer the leader); not overwritten"
    )]
    Conflict { namespace: String, name: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub const INVENTORY_LABEL: &str = "gitops-agent.io/inventory";
/// On a shard of a sync's object list: the sync it belongs to.
pub const SHARD_LABEL: &str = "gitops-agent.io/inventory-shard";
/// On a shard: the digest of the whole list it is part of (the head names it).
pub const DIGEST_LABEL: &str = "gitops-agent.io/inventory-digest";

/// The objects a sync applied at a revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub revision: Option<String>,
    pub entries: BTreeSet<ObjectKey>,
}

impl Inventory {
    /// This inventory with `more` objects added and its revision kept: what a sync records
    /// before its first write, so that whatever it creates is on record should it die.
    /// The entries for lookups: a hash set answers thousands of them far sooner than the
    /// ordered set, whose every step compares keys string by string.
    pub fn index(&self) -> std::collections::HashSet<&ObjectKey> {
        self.entries.iter().collect()
    }

    pub fn with_intent<'a>(&self, more: impl IntoIterator<Item = &'a ObjectKey>) -> Inventory {
        let mut out = self.clone();
        out.entries.extend(more.into_iter().cloned());
        out
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
    /// The infra specs (OKE pools, `Kind/name`) the last applied revision declared: one
    /// that leaves Git is reported as no longer managed, never deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
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
/// 1 MiB holds some 15,000 objects, and larger lists are split into shards.
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
    // Collected, then built at once: the text is in set order, so that is a linear build
    // where inserting one by one searches the tree for each of thousands of keys.
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split(' ').collect();
        let [api_version, kind, ns, name] = parts.as_slice() else {
            return Err((i + 1, format!("expected 4 fields, got {}", parts.len())));
        };
        if name.is_empty() || kind.is_empty() {
            return Err((i + 1, "empty kind or name".to_string()));
        }
        let (group, version) = ObjectKey::split_api_version(api_version);
        out.push(ObjectKey {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            namespace: (*ns != "-").then(|| ns.to_string()),
            name: name.to_string(),
        });
    }
    Ok(out.into_iter().collect())
}

/// Splits an encoded list into pieces of at most `max` bytes, on line boundaries.
pub fn split_lines(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for line in text.split_inclusive('\n') {
        if end > start && end - start + line.len() > max {
            out.push(&text[start..end]);
            start = end;
        }
        end += line.len();
    }
    if end > start {
        out.push(&text[start..end]);
    }
    out
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
    fn split_lines_cuts_on_line_boundaries_within_the_limit() {
        let text = "aaaa\nbb\ncccccc\nd\n";
        let parts = split_lines(text, 8);
        assert_eq!(parts, ["aaaa\nbb\n", "cccccc\n", "d\n"]);
        assert_eq!(parts.concat(), text);
        // A line longer than the limit still goes whole, alone.
        assert_eq!(split_lines("0123456789\nx\n", 4), ["0123456789\n", "x\n"]);
        assert!(split_lines("", 4).is_empty());
    }

    #[test]
    fn intent_adds_without_changing_the_revision() {
        let inv = Inventory {
            revision: Some("r1".into()),
            entries: decode_entries("v1 ConfigMap a x\n").unwrap(),
        };
        let more = decode_entries("v1 ConfigMap a y\nv1 ConfigMap a x\n").unwrap();
        let intent = inv.with_intent(&more);
        assert_eq!(intent.revision.as_deref(), Some("r1"));
        assert_eq!(intent.entries.len(), 2);
    }

    #[test]
    fn corrupt_lines_are_located() {
        assert_eq!(
            decode_entries("v1 ConfigMap a b\nbroken\n").unwrap_err().0,
            2
        );
    }
}
