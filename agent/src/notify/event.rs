//! The alert events as data: what happened to which object or sync, how serious it is,
//! the key that pairs an opening with its closing, and one line for people; and the
//! de-duplication of open drifts.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::{ObjectKey, truncate};
use crate::diff::FieldDrift;

/// An alert. Serialised with a `type` tag (`driftDetected`, `syncFailed`, …) and camelCase
/// fields; `subject` is written as people read it, `Kind/namespace/name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Event {
    /// The live object differs from Git in `fields`.
    DriftDetected {
        sync: String,
        #[serde(with = "subject_string")]
        subject: ObjectKey,
        fields: Vec<FieldDrift>,
        /// The field manager that made the change, when managedFields tell.
        manager: Option<String>,
    },
    /// The live object matches Git again.
    DriftResolved {
        sync: String,
        #[serde(with = "subject_string")]
        subject: ObjectKey,
    },
    /// Another controller keeps reverting what the sync applies.
    Fight {
        sync: String,
        #[serde(with = "subject_string")]
        subject: ObjectKey,
        manager: Option<String>,
        /// How many times the sync's change was reverted.
        count: u32,
    },
    SyncFailed {
        sync: String,
        revision: String,
        error: String,
    },
    /// A sync succeeded after failing.
    SyncRecovered { sync: String, revision: String },
    /// Pruning was not done (e.g. the prune guard judged the deletion too large).
    PruneHeldBack {
        sync: String,
        revision: String,
        reason: String,
    },
    /// A policy binding with the Warn or Audit action found something about an object
    /// (a Deny stops the revision: that is a SyncFailed).
    PolicyWarning {
        sync: String,
        revision: String,
        #[serde(with = "subject_string")]
        subject: ObjectKey,
        policy: String,
        binding: String,
        /// Where the object is written in Git.
        file: String,
        line: usize,
        message: String,
    },
    /// The agent's OCI identity cannot get credentials (a refresh or the first exchange
    /// failed); not about one sync.
    OciIdentityFailing { error: String },
    /// The OCI identity works again.
    OciIdentityRecovered,
}

/// How serious an event is; maps to the Kubernetes Event `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Severity {
    Normal,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Normal => "Normal",
            Severity::Warning => "Warning",
        }
    }
}

impl Event {
    /// A `DriftDetected` with Secret values masked.
    pub fn drift_detected(
        sync: impl Into<String>,
        subject: ObjectKey,
        fields: Vec<FieldDrift>,
        manager: Option<String>,
    ) -> Self {
        let fields = fields
            .into_iter()
            .map(|f| crate::diff::mask_field(&subject.kind, f))
            .collect();
        Event::DriftDetected {
            sync: sync.into(),
            subject,
            fields,
            manager,
        }
    }

    /// The event with drift values masked if its subject is a Secret.
    pub fn masked(self) -> Self {
        match self {
            Event::DriftDetected {
                sync,
                subject,
                fields,
                manager,
            } => Event::drift_detected(sync, subject, fields, manager),
            other => other,
        }
    }

    pub fn sync(&self) -> &str {
        match self {
            Event::DriftDetected { sync, .. }
            | Event::DriftResolved { sync, .. }
            | Event::Fight { sync, .. }
            | Event::SyncFailed { sync, .. }
            | Event::SyncRecovered { sync, .. }
            | Event::PruneHeldBack { sync, .. }
            | Event::PolicyWarning { sync, .. } => sync,
            Event::OciIdentityFailing { .. } | Event::OciIdentityRecovered => "",
        }
    }

    /// The object the event is about; `None` for events about a whole sync.
    pub fn subject(&self) -> Option<&ObjectKey> {
        match self {
            Event::DriftDetected { subject, .. }
            | Event::DriftResolved { subject, .. }
            | Event::Fight { subject, .. }
            | Event::PolicyWarning { subject, .. } => Some(subject),
            _ => None,
        }
    }

    /// PascalCase reason, as Kubernetes Events write it.
    pub fn reason(&self) -> &'static str {
        match self {
            Event::DriftDetected { .. } => "DriftDetected",
            Event::DriftResolved { .. } => "DriftResolved",
            Event::Fight { .. } => "Fight",
            Event::SyncFailed { .. } => "SyncFailed",
            Event::SyncRecovered { .. } => "SyncRecovered",
            Event::PruneHeldBack { .. } => "PruneHeldBack",
            Event::PolicyWarning { .. } => "PolicyWarning",
            Event::OciIdentityFailing { .. } => "OciIdentityFailing",
            Event::OciIdentityRecovered => "OciIdentityRecovered",
        }
    }

    /// What the agent was doing, for the Kubernetes Event `action`.
    pub fn action(&self) -> &'static str {
        match self {
            Event::DriftDetected { .. } | Event::DriftResolved { .. } => "DetectDrift",
            Event::Fight { .. } => "Apply",
            Event::SyncFailed { .. } | Event::SyncRecovered { .. } => "Sync",
            Event::PruneHeldBack { .. } => "Prune",
            Event::PolicyWarning { .. } => "Validate",
            Event::OciIdentityFailing { .. } | Event::OciIdentityRecovered => "Authenticate",
        }
    }

    pub fn severity(&self) -> Severity {
        match self {
            Event::DriftResolved { .. }
            | Event::SyncRecovered { .. }
            | Event::OciIdentityRecovered => Severity::Normal,
            _ => Severity::Warning,
        }
    }

    /// Identifies the condition an event opens or closes: a detection and its resolution
    /// share a key (`drift/shop/Deployment.apps/shop/web`), as do a failure and its
    /// recovery (`sync/shop`), so receivers can pair them the way incident tools do.
    pub fn key(&self) -> String {
        match self {
            Event::DriftDetected { sync, subject, .. } | Event::DriftResolved { sync, subject } => {
                format!("drift/{sync}/{}", subject_key(subject))
            }
            Event::Fight { sync, subject, .. } => format!("fight/{sync}/{}", subject_key(subject)),
            Event::SyncFailed { sync, .. } | Event::SyncRecovered { sync, .. } => {
                format!("sync/{sync}")
            }
            Event::PruneHeldBack { sync, revision, .. } => format!("prune/{sync}/{revision}"),
            Event::PolicyWarning {
                sync,
                subject,
                policy,
                ..
            } => format!("policy/{sync}/{}/{policy}", subject_key(subject)),
            Event::OciIdentityFailing { .. } | Event::OciIdentityRecovered => "oci/identity".into(),
        }
    }

    /// One line for people, starting with the subject (`sync/<name>` for sync events):
    /// `Deployment/shop/web: drift in spec.replicas (2 → 5) by kubectl-scale`.
    pub fn summary(&self) -> String {
        const SHOWN_FIELDS: usize = 3;
        match self {
            Event::DriftDetected {
                subject,
                fields,
                manager,
                ..
            } => {
                let mut s = format!("{subject}: drift");
                if !fields.is_empty() {
                    let shown: Vec<String> = fields
                        .iter()
                        .take(SHOWN_FIELDS)
                        .map(|f| format!("{} ({} → {})", f.path, show(&f.before), show(&f.after)))
                        .collect();
                    s.push_str(" in ");
                    s.push_str(&shown.join(", "));
                    if fields.len() > SHOWN_FIELDS {
                        s.push_str(&format!(" and {} more", fields.len() - SHOWN_FIELDS));
                    }
                }
                if let Some(m) = manager {
                    s.push_str(&format!(" by {m}"));
                }
                s
            }
            Event::DriftResolved { subject, .. } => format!("{subject}: drift resolved"),
            Event::Fight {
                subject,
                manager,
                count,
                ..
            } => format!(
                "{subject}: {} keeps reverting the sync ({count} times)",
                manager.as_deref().unwrap_or("another field manager")
            ),
            Event::SyncFailed {
                sync,
                revision,
                error,
            } if revision.is_empty() => format!("sync/{sync}: failed: {error}"),
            Event::SyncFailed {
                sync,
                revision,
                error,
            } => format!("sync/{sync}: failed at {}: {error}", short(revision)),
            Event::SyncRecovered { sync, revision } => {
                format!("sync/{sync}: recovered at {}", short(revision))
            }
            Event::PruneHeldBack {
                sync,
                revision,
                reason,
            } => format!(
                "sync/{sync}: prune held back at {}: {reason}",
                short(revision)
            ),
            Event::PolicyWarning {
                subject,
                policy,
                binding,
                file,
                line,
                message,
                ..
            } => format!(
                "{subject}: policy {policy} (binding {binding}) at {file}:{line}: {message}"
            ),
            Event::OciIdentityFailing { error } => format!("oci/identity: {error}"),
            Event::OciIdentityRecovered => "oci/identity: credentials work again".into(),
        }
    }
}

/// `Kind.group/ns/name`: the display form is ambiguous across groups, a key must not be.
fn subject_key(s: &ObjectKey) -> String {
    if s.group.is_empty() {
        s.to_string()
    } else {
        let kind = format!("{}.{}", s.kind, s.group);
        match &s.namespace {
            Some(ns) => format!("{kind}/{ns}/{}", s.name),
            None => format!("{kind}/{}", s.name),
        }
    }
}

/// A value as a summary shows it: strings bare, `none` for absent, long values cut.
pub(crate) fn show(v: &Value) -> String {
    const MAX: usize = 40;
    let s = match v {
        Value::Null => "none".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    truncate(&s, MAX)
}

/// Commit ids are cut to 12 hex digits, as people quote them.
pub(crate) fn short(revision: &str) -> &str {
    if revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        &revision[..12]
    } else {
        revision
    }
}

/// `subject` on the wire: `Kind/ns/name` (or `Kind/name`). Group and version are not
/// written, so a deserialised subject has them empty.
mod subject_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use crate::core::ObjectKey;

    pub fn serialize<S: Serializer>(r: &ObjectKey, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(r)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectKey, D::Error> {
        let s = String::deserialize(d)?;
        let parts: Vec<&str> = s.split('/').collect();
        let (kind, namespace, name) = match parts.as_slice() {
            [k, n] => (*k, None, *n),
            [k, ns, n] => (*k, Some(ns.to_string()), *n),
            _ => {
                return Err(D::Error::custom(format!(
                    "subject {s:?}: expected Kind/namespace/name or Kind/name"
                )));
            }
        };
        if kind.is_empty() || name.is_empty() {
            return Err(D::Error::custom(format!(
                "subject {s:?}: empty kind or name"
            )));
        }
        Ok(ObjectKey {
            group: String::new(),
            version: String::new(),
            kind: kind.into(),
            namespace,
            name: name.into(),
        })
    }
}

/// One alert per distinct drift until it is resolved. The drift module owns the decision;
/// this keeps the set of open drifts for it. State is in memory: after a restart an open
/// drift is reported once more, which is the safe side.
#[derive(Debug, Default)]
pub struct Deduper {
    active: HashSet<String>,
}

impl Deduper {
    pub fn new() -> Self {
        Self::default()
    }

    /// False for a `DriftDetected` already reported and not resolved since, and for a
    /// `DriftResolved` of a drift never reported (a resolution nobody saw open is noise).
    /// Every other event is sent.
    pub fn should_send(&mut self, event: &Event) -> bool {
        match event {
            Event::DriftDetected { .. } => self.active.insert(event.key()),
            Event::DriftResolved { .. } => self.active.remove(&event.key()),
            _ => true,
        }
    }

    /// Whether a drift is open under this key.
    pub fn is_active(&self, key: &str) -> bool {
        self.active.contains(key)
    }
}
