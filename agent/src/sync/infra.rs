//! The infra stage of a sync: the revision's infra specs (OKE node pools) split from its
//! Kubernetes objects, parsed, compared with OCI and guarded before any write, then applied
//! around the Kubernetes stage: capacity that grows or changes before the objects (so it
//! exists when workloads arrive), capacity that shrinks after them (workloads leave first).

use std::sync::Arc;

use crate::core::{Action, ChangeSet, INFRA_GROUP};
use crate::infra::{self, Planned};
use crate::oci::Shared;
use crate::render::{self, Manifest};

use super::Failure;

/// The planned pools, by when they are applied.
#[derive(Debug, Default)]
pub(super) struct Staged {
    pub before: Vec<Planned>,
    pub after: Vec<Planned>,
}

impl Staged {
    pub fn is_empty(&self) -> bool {
        self.before.is_empty() && self.after.is_empty()
    }

    /// The pools declared, as `Kind/name`.
    pub fn subjects(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .before
            .iter()
            .chain(&self.after)
            .map(|p| p.spec.key.to_string())
            .collect();
        all.sort();
        all
    }

    /// The pools `previous` declared that this revision does not: reported as no longer
    /// managed, and left in OCI as they are (deleting capacity from a commit is too
    /// dangerous to be a default).
    pub fn removed(&self, previous: &[String]) -> ChangeSet {
        let now = self.subjects();
        let mut set = ChangeSet::default();
        for gone in previous.iter().filter(|p| !now.contains(p)) {
            let Some((kind, name)) = gone.split_once('/') else {
                continue;
            };
            let key = crate::core::ObjectKey {
                group: INFRA_GROUP.into(),
                version: "v1alpha1".into(),
                kind: kind.into(),
                namespace: None,
                name: name.into(),
            };
            let why = "no longer in Git: no longer managed, and left in OCI as it is";
            set.push(crate::core::Change::new(key, Action::Skipped).with_message(why));
        }
        set
    }

    /// What a dry run reports: each pool configured (with its diff) or unchanged.
    pub fn dry_run(&self) -> ChangeSet {
        let mut set = ChangeSet::default();
        for p in self.before.iter().chain(&self.after) {
            let action = if p.diffs.is_empty() {
                Action::Unchanged
            } else {
                Action::Configured
            };
            let mut c = crate::core::Change::new(p.spec.key.clone(), action);
            if !p.diffs.is_empty() {
                c.diff = Some(p.diff_text());
            }
            set.push(c);
        }
        set
    }
}

/// The revision's infra specs, and the rest.
pub(super) fn split(manifests: Vec<Manifest>) -> (Vec<Manifest>, Vec<Manifest>) {
    manifests
        .into_iter()
        .partition(|m| m.id.group == INFRA_GROUP)
}

/// Parses every spec; the problems of all of them, each at its file and line.
pub(super) fn parse(infra: &[Manifest]) -> Result<Vec<infra::Spec>, render::Errors> {
    infra::parse_manifests(infra)
}

/// Reads and compares every declared pool, and holds the revision back when a size
/// change is too large; nothing is written.
pub(super) async fn plan(
    oci: Option<&Arc<Shared>>,
    specs: &[infra::Spec],
    revision: &str,
    resolved: &infra::Resolved,
    max_step: u32,
) -> Result<Staged, Failure> {
    let mut staged = Staged::default();
    if specs.is_empty() {
        return Ok(staged);
    }
    let Some(oci) = oci else {
        return Err(Failure::Source(format!(
            "{}: infra specs need the oci: section (the identity that updates OCI)",
            specs[0].key
        )));
    };
    for s in specs {
        let planned = infra::plan(oci, s, resolved)
            .await
            .map_err(|e| Failure::Source(e.to_string()))?;
        if let Some(reason) = infra::held_back(&planned, max_step) {
            return Err(Failure::HeldBack {
                revision: revision.to_owned(),
                reason,
            });
        }
        if planned.shrinks() {
            staged.after.push(planned);
        } else {
            staged.before.push(planned);
        }
    }
    Ok(staged)
}

/// Applies the pools one after another (each waits for its work request).
pub(super) async fn apply(oci: Option<&Arc<Shared>>, pools: &[Planned]) -> ChangeSet {
    let mut set = ChangeSet::default();
    let Some(oci) = oci else { return set };
    for p in pools {
        set.push(infra::apply(oci, p).await);
    }
    set
}
