//! Ownership between syncs: an object labelled for another sync is never taken over
//! silently. Objects a sync has never applied are checked with one metadata list per kind
//! and namespace (only other syncs' objects match), before anything is written; objects
//! it has applied are checked on the GET that precedes their comparison.

use std::collections::{BTreeMap, HashMap, HashSet};

use kube::api::ListParams;
use serde_json::value::RawValue;

use super::ResourceManager;
use crate::core::{
    ADOPT_ANNOTATION, Action, Change, OWNER_LABEL, ObjectKey, adopts, parse_compact,
};

/// What the lists found.
#[derive(Debug, Default)]
pub struct Owners {
    /// Objects labelled for another sync, with that sync's name.
    pub foreign: HashMap<ObjectKey, String>,
    /// Objects whose kind could not be listed (not served yet, or no `list` right): they
    /// are read before they are written instead, and checked then.
    pub unchecked: HashSet<ObjectKey>,
}

impl ResourceManager {
    /// Which of `ids` carry another sync's owner label than `sync`'s.
    pub async fn foreign_owners(&self, sync: &str, ids: &[&ObjectKey]) -> Owners {
        let mut groups: BTreeMap<(&str, &str, &str, Option<&str>), Vec<&ObjectKey>> =
            BTreeMap::new();
        for id in ids {
            let key = (
                id.group.as_str(),
                id.version.as_str(),
                id.kind.as_str(),
                id.namespace.as_deref(),
            );
            groups.entry(key).or_default().push(id);
        }
        let discovery = self.discovery();
        let selector = format!("{OWNER_LABEL},{OWNER_LABEL}!={sync}");
        let mut out = Owners::default();
        for ((group, version, kind, namespace), members) in groups {
            let listed = match discovery.resolve(group, version, kind) {
                Some(res) => self
                    .api_for(res, namespace)
                    .list_metadata(&ListParams::default().labels(&selector))
                    .await
                    .ok(),
                None => None,
            };
            let Some(list) = listed else {
                out.unchecked.extend(members.into_iter().cloned());
                continue;
            };
            let owners: HashMap<String, String> = list
                .items
                .into_iter()
                .filter_map(|m| {
                    let owner = m.metadata.labels?.remove(OWNER_LABEL)?;
                    Some((m.metadata.name?, owner))
                })
                .collect();
            for id in members {
                if let Some(owner) = owners.get(&id.name) {
                    out.foreign.insert(id.clone(), owner.clone());
                }
            }
        }
        out
    }
}

/// The failure for an object `owner` owns that this sync (`body`'s owner label) declares,
/// unless Git annotates it for adoption or the owner is this sync.
pub fn conflict(id: &ObjectKey, owner: &str, body: &RawValue) -> Option<Change> {
    let desired = parse_compact(body);
    let me = desired
        .pointer(&format!(
            "/metadata/labels/{}",
            OWNER_LABEL.replace('/', "~1")
        ))
        .and_then(|v| v.as_str())?;
    if owner == me || adopts(body) {
        return None;
    }
    Some(Change::new(id.clone(), Action::Failed).with_message(format!(
        "owned by sync {owner} ({OWNER_LABEL}={owner}), declared by sync {me} too; not adopted: \
         remove it from one of them, or annotate it {ADOPT_ANNOTATION}: \"true\" in sync {me}'s Git"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::compact;
    use serde_json::json;

    fn body(annotations: serde_json::Value) -> Box<RawValue> {
        compact(&json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "labels": {OWNER_LABEL: "shop"}, "annotations": annotations}}))
    }

    #[test]
    fn another_syncs_object_fails_naming_both_unless_adopted() {
        let id = ObjectKey {
            group: "".into(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("ns".into()),
            name: "a".into(),
        };
        let c = conflict(&id, "billing", &body(json!({}))).expect("a conflict");
        assert_eq!(c.action, Action::Failed);
        let msg = c.message.unwrap();
        assert!(
            msg.contains("owned by sync billing") && msg.contains("sync shop"),
            "{msg}"
        );
        assert!(conflict(&id, "shop", &body(json!({}))).is_none(), "our own");
        let adopted = body(json!({ADOPT_ANNOTATION: "true"}));
        assert!(conflict(&id, "billing", &adopted).is_none(), "adopted");
    }
}
