//! The result of a sync as data: one entry per object with its action, an optional
//! masked diff and a message. Logs, status, metrics and alerts are derived from it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::core::ObjectKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Deleted,
    Skipped,
    Failed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Deleted => "deleted",
            Action::Skipped => "skipped",
            Action::Failed => "failed",
        }
    }

    /// Whether this action wrote to the cluster.
    pub fn is_write(self) -> bool {
        matches!(self, Action::Created | Action::Configured | Action::Deleted)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub subject: ObjectKey,
    pub action: Action,
    /// Unified diff, live → desired, with Secret values masked.
    pub diff: Option<String>,
    /// Why it was skipped or failed.
    pub message: Option<String>,
}

impl Change {
    pub fn new(subject: ObjectKey, action: Action) -> Self {
        Change {
            subject,
            action,
            diff: None,
            message: None,
        }
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    pub fn with_diff(mut self, diff: Option<String>) -> Self {
        self.diff = diff;
        self
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub entries: Vec<Change>,
}

impl FromIterator<ChangeSet> for ChangeSet {
    /// The sets one after another.
    fn from_iter<I: IntoIterator<Item = ChangeSet>>(sets: I) -> Self {
        let mut all = ChangeSet::default();
        for s in sets {
            all.extend(s);
        }
        all
    }
}

impl ChangeSet {
    pub fn push(&mut self, change: Change) {
        self.entries.push(change);
    }

    pub fn extend(&mut self, other: ChangeSet) {
        self.entries.extend(other.entries);
    }

    pub fn counts(&self) -> BTreeMap<Action, usize> {
        let mut counts = BTreeMap::new();
        for e in &self.entries {
            *counts.entry(e.action).or_insert(0) += 1;
        }
        counts
    }

    pub fn failed(&self) -> impl Iterator<Item = &Change> {
        self.entries.iter().filter(|e| e.action == Action::Failed)
    }

    pub fn has_failures(&self) -> bool {
        self.failed().next().is_some()
    }

    /// Whether anything was (or, for a dry run, would be) written.
    pub fn has_writes(&self) -> bool {
        self.entries.iter().any(|e| e.action.is_write())
    }

    /// `created 3, configured 1, unchanged 12` (actions with a zero count left out).
    pub fn summary(&self) -> String {
        let counts = self.counts();
        if counts.is_empty() {
            return "no objects".into();
        }
        counts
            .iter()
            .map(|(a, n)| format!("{a} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for ChangeSet {
    /// One line per object: `Deployment/shop/web configured`, with the message when there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entries {
            write!(f, "{} {}", e.subject, e.action)?;
            if let Some(m) = &e.message {
                write!(f, ": {m}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(kind: &str, name: &str) -> ObjectKey {
        ObjectKey {
            group: String::new(),
            version: "v1".into(),
            kind: kind.into(),
            namespace: Some("ns".into()),
            name: name.into(),
        }
    }

    #[test]
    fn summary_counts_and_display() {
        let mut cs = ChangeSet::default();
        cs.push(Change::new(r("ConfigMap", "a"), Action::Created));
        cs.push(Change::new(r("ConfigMap", "b"), Action::Unchanged));
        cs.push(Change::new(r("ConfigMap", "c"), Action::Unchanged));
        cs.push(Change::new(r("Secret", "d"), Action::Failed).with_message("forbidden"));
        assert_eq!(cs.summary(), "created 1, unchanged 2, failed 1");
        assert!(cs.has_failures() && cs.has_writes());
        assert!(cs.to_string().contains("Secret/ns/d failed: forbidden\n"));
        assert_eq!(ChangeSet::default().summary(), "no objects");
    }
}
