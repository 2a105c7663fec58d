//! Deleting what left Git: only objects in the previous inventory that are no longer
//! desired, that still carry the sync's owner label, and that are not opted out with
//! `gitops-agent.io/prune: disabled`; in reverse apply order. A guard holds back
//! revisions that would delete too much.

use kube::api::{DeleteParams, PropagationPolicy};

use crate::apply::{self, ResourceManager};
use crate::config::PruneGuard;
use crate::core::{Action, Change, ChangeSet, OWNER_LABEL, ObjectKey, PRUNE_ANNOTATION};

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub sync: String,
    pub dry_run: bool,
}

/// Why a revision's deletions are held back, or `None` when they may go ahead.
/// Deleting a single object is never "mass" deletion; deleting everything always is.
pub fn held_back(
    previous: usize,
    stale: usize,
    desired: usize,
    guard: &PruneGuard,
) -> Option<String> {
    if guard.allow_mass_deletion || stale == 0 {
        return None;
    }
    if desired == 0 {
        return Some(format!(
            "revision would delete all {previous} managed objects and apply none"
        ));
    }
    let ratio = stale as f64 / previous.max(1) as f64;
    if stale > 1 && ratio > guard.max_ratio {
        return Some(format!(
            "revision would delete {stale} of {previous} managed objects ({:.0}% > {:.0}% allowed by pruneGuard.maxRatio)",
            ratio * 100.0,
            guard.max_ratio * 100.0
        ));
    }
    None
}

/// Deletes the stale objects that are still ours, in reverse apply order.
pub async fn prune(rm: &ResourceManager, stale: &[ObjectKey], opts: &Options) -> ChangeSet {
    let mut order: Vec<&ObjectKey> = stale.iter().collect();
    order.sort_by_key(|id| std::cmp::Reverse(apply::order_key(id)));
    let mut changes = ChangeSet::default();
    for id in order {
        if let Some(c) = prune_one(rm, id, opts).await {
            changes.push(c);
        }
    }
    changes
}

async fn prune_one(rm: &ResourceManager, id: &ObjectKey, opts: &Options) -> Option<Change> {
    let d = rm.discovery();
    let res = d
        .resolve(&id.group, &id.version, &id.kind)
        .or_else(|| d.resolve_kind(&id.group, &id.kind));
    let Some(res) = res else {
        // The kind is no longer served (its CRD went away): nothing left to delete.
        return Some(
            Change::new(id.clone(), Action::Skipped)
                .with_message("kind no longer served by the cluster"),
        );
    };
    let namespace = res.namespaced.then_some(id.namespace.as_deref()).flatten();
    let api = crate::cluster::api_for(rm.client(), &res.api, namespace);
    let live = match api.get_opt(&id.name).await {
        Ok(Some(l)) => l,
        Ok(None) => return None, // already gone
        Err(e) => {
            return Some(
                Change::new(id.clone(), Action::Failed)
                    .with_message(format!("get: {}", crate::cluster::api_message(&e))),
            );
        }
    };
    let owner = live
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(OWNER_LABEL));
    if owner.map(String::as_str) != Some(opts.sync.as_str()) {
        return Some(
            Change::new(id.clone(), Action::Skipped).with_message(format!(
                "not deleted: no longer labelled {OWNER_LABEL}={}",
                opts.sync
            )),
        );
    }
    if live
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PRUNE_ANNOTATION))
        .is_some_and(|v| v == "disabled")
    {
        return Some(
            Change::new(id.clone(), Action::Skipped)
                .with_message(format!("not deleted: {PRUNE_ANNOTATION}: disabled")),
        );
    }
    if live.metadata.deletion_timestamp.is_some() {
        return Some(Change::new(id.clone(), Action::Deleted).with_message("already terminating"));
    }
    if !opts.dry_run {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        if let Err(e) = api.delete(&id.name, &dp).await
            && !matches!(&e, kube::Error::Api(s) if s.code == 404)
        {
            return Some(
                Change::new(id.clone(), Action::Failed)
                    .with_message(format!("delete: {}", crate::cluster::api_message(&e))),
            );
        }
    }
    Some(Change::new(id.clone(), Action::Deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_holds_back_mass_and_total_deletion() {
        let g = PruneGuard::default();
        assert_eq!(held_back(10, 0, 10, &g), None);
        assert_eq!(held_back(10, 5, 5, &g), None, "exactly half is allowed");
        assert!(held_back(10, 6, 4, &g).unwrap().contains("6 of 10"));
        assert!(held_back(10, 10, 0, &g).unwrap().contains("all 10"));
        assert_eq!(
            held_back(2, 1, 1, &g),
            None,
            "one object is never mass deletion"
        );
        assert!(
            held_back(1, 1, 0, &g).is_some(),
            "but an empty render is always held"
        );
        let open = PruneGuard {
            allow_mass_deletion: true,
            ..g
        };
        assert_eq!(held_back(10, 10, 0, &open), None);
    }
}
