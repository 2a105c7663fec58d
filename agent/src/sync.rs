//! One sync of one revision, end to end: render and validate everything first, check the
//! prune guard, apply in stages, prune, wait for health, then record inventory and status.
//! A revision that fails to render changes nothing in the cluster; the last good
//! revision stays applied and the error is recorded.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use serde_json::value::RawValue;

use crate::apply::{self, Desired, OWNER_LABEL, ResourceManager};
use crate::change::{Action, ChangeSet};
use crate::config;
use crate::discovery::Discovery;
use crate::health::{self, Assessment};
use crate::inventory::{self, Inventory, Record, Status};
use crate::object::ObjectRef;
use crate::prune;
use crate::render::{self, Scopes};
use crate::source::{self, Credentials, GitSource, Reference, SourceSpec};

/// Why a sync did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Source(String),
    #[error("revision {revision} is invalid; nothing was applied:\n{errors}")]
    Render {
        revision: String,
        errors: render::Errors,
    },
    #[error("revision {revision} held back; nothing was applied: {reason}")]
    HeldBack { revision: String, reason: String },
    #[error("{count} object(s) failed: {first}")]
    Apply { count: usize, first: String },
    #[error("{0}")]
    Health(String),
    #[error("{0}")]
    Store(String),
}

impl Failure {
    fn result(&self) -> &'static str {
        match self {
            Failure::HeldBack { .. } => "HeldBack",
            _ => "Failed",
        }
    }
}

/// What one sync did, as data.
#[derive(Debug)]
pub struct Outcome {
    pub sync: String,
    pub revision: String,
    pub changes: ChangeSet,
    /// Per-object health after the apply (empty when not waited for).
    pub health: Vec<(ObjectRef, Assessment)>,
    pub failure: Option<Failure>,
    /// The objects as applied (owner labels included), for drift detection; empty when the
    /// revision was not applied.
    pub desired: Vec<DesiredObject>,
}

/// One object of the applied desired state: what drift detection compares the live one with.
/// Kept for as long as the daemon runs, for every managed object, so it is compact: the
/// rendered manifest's own JSON text, shared, and the kind's API resource, shared.
#[derive(Debug, Clone)]
pub struct DesiredObject {
    pub id: ObjectRef,
    pub resource: Arc<kube::api::ApiResource>,
    pub object: Arc<RawValue>,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }

    /// The sync's health: the worst of its objects', when it was assessed.
    pub fn overall_health(&self) -> Option<health::Status> {
        (!self.health.is_empty()).then(|| health::worst(self.health.iter().map(|(_, a)| a.status)))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Decide and diff only: nothing is written, health is not waited for, nothing recorded.
    pub dry_run: bool,
    /// Objects known unchanged on both sides skip their GET and dry-run (the daemon passes
    /// the drift detector's watch cache).
    pub cache: Option<std::sync::Arc<dyn apply::LiveCache>>,
}

impl Scopes for Discovery {
    fn namespaced(&self, group: &str, kind: &str) -> Option<bool> {
        Discovery::namespaced(self, group, kind)
    }
}

/// Applies revisions for the syncs of one agent.
pub struct Engine {
    rm: ResourceManager,
    store: inventory::Store,
}

impl Engine {
    pub async fn new(client: Client, agent_namespace: &str) -> Result<Self, apply::Error> {
        let store = inventory::Store::new(client.clone(), agent_namespace);
        Ok(Engine {
            rm: ResourceManager::new(client).await?,
            store,
        })
    }

    pub fn client(&self) -> &Client {
        self.rm.client()
    }

    pub fn store(&self) -> &inventory::Store {
        &self.store
    }

    /// Syncs one revision's files (already limited to the sync's path).
    pub async fn sync_revision(
        &mut self,
        sync: &config::Sync,
        revision: &str,
        files: &[source::File],
        opts: &Options,
    ) -> Outcome {
        let mut outcome = Outcome {
            sync: sync.name.clone(),
            revision: revision.to_string(),
            changes: ChangeSet::default(),
            health: Vec::new(),
            failure: None,
            desired: Vec::new(),
        };
        let previous = match self.store.load(&sync.name).await {
            Ok(r) => r,
            Err(e) => {
                outcome.failure = Some(Failure::Store(e.to_string()));
                return outcome;
            }
        };

        // 1. Render and validate the whole revision before any write.
        let ropts = render::Options {
            default_namespace: sync.namespace.clone(),
            labels: BTreeMap::from([(OWNER_LABEL.to_string(), sync.name.clone())]),
            ..Default::default()
        };
        let manifests = match render::render(files, &ropts, self.rm.discovery()) {
            Ok(m) => m,
            Err(errors) => {
                outcome.failure = Some(Failure::Render {
                    revision: revision.to_string(),
                    errors,
                });
                self.record(sync, &previous, &previous.inventory, &outcome, opts)
                    .await;
                return outcome;
            }
        };

        // 2. What would be pruned, and whether the guard allows it.
        let desired_keys: HashSet<(String, String, Option<String>, String)> =
            manifests.iter().map(|m| identity(&m.id)).collect();
        let stale: Vec<ObjectRef> = previous
            .inventory
            .entries
            .iter()
            .filter(|e| !desired_keys.contains(&identity(e)))
            .cloned()
            .collect();
        if sync.prune
            && let Some(reason) = prune::held_back(
                previous.inventory.entries.len(),
                stale.len(),
                manifests.len(),
                &sync.prune_guard,
            )
        {
            outcome.failure = Some(Failure::HeldBack {
                revision: revision.to_string(),
                reason,
            });
            self.record(sync, &previous, &previous.inventory, &outcome, opts)
                .await;
            return outcome;
        }

        // 3. Apply in stages.
        let inventoried: HashSet<_> = previous.inventory.entries.iter().map(identity).collect();
        let desired: Vec<Desired<'_>> = manifests
            .iter()
            .map(|m| Desired {
                id: &m.id,
                object: &m.object,
                inventoried: inventoried.contains(&identity(&m.id)),
            })
            .collect();
        let aopts = apply::Options {
            dry_run: opts.dry_run,
            cache: opts.cache.clone(),
            ..Default::default()
        };
        match self.rm.apply_all_staged(&desired, &aopts).await {
            Ok(changes) => outcome.changes = changes,
            Err(e) => {
                outcome.failure = Some(Failure::Source(e.to_string()));
                return outcome;
            }
        }
        let failed_apply = apply_failure(&outcome.changes);

        // The new inventory: what was applied, plus (until they are really gone) what
        // could not be pruned. An object that failed to apply stays if it was there before.
        let applied: BTreeSet<ObjectRef> = outcome
            .changes
            .entries
            .iter()
            .filter(|c| c.action != Action::Failed)
            .map(|c| c.subject.clone())
            .collect();
        let mut inventory = Inventory {
            revision: Some(revision.to_string()),
            entries: applied,
        };

        if let Some(failure) = failed_apply {
            // Keep tracking everything we managed before; prune waits for a clean apply.
            let kept: Vec<ObjectRef> = previous
                .inventory
                .entries
                .iter()
                .filter(|e| !has_identity(&inventory.entries, e))
                .cloned()
                .collect();
            inventory.entries.extend(kept);
            inventory.revision = previous.inventory.revision.clone();
            outcome.failure = Some(failure);
            self.record(sync, &previous, &inventory, &outcome, opts)
                .await;
            return outcome;
        }

        // 4. Prune.
        if sync.prune && !stale.is_empty() {
            let pruned = prune::prune(
                &self.rm,
                &stale,
                &prune::Options {
                    sync: sync.name.clone(),
                    dry_run: opts.dry_run,
                },
            )
            .await;
            for c in &pruned.entries {
                if c.action == Action::Failed {
                    inventory.entries.insert(c.subject.clone());
                }
            }
            outcome.changes.extend(pruned);
        } else if !stale.is_empty() {
            // Pruning is off: what left Git is still ours to track, not to delete.
            inventory.entries.extend(stale.iter().cloned());
        }

        let mut resources: HashMap<(&str, &str, &str), Arc<kube::api::ApiResource>> =
            HashMap::new();
        outcome.desired = manifests
            .iter()
            .filter_map(|m| {
                let id = &m.id;
                let resource = match resources.get(&(&id.group, &id.version, &id.kind)) {
                    Some(r) => r.clone(),
                    None => {
                        let r = self
                            .rm
                            .discovery()
                            .resolve(&id.group, &id.version, &id.kind)?;
                        let r = Arc::new(r.api.clone());
                        resources.insert((&id.group, &id.version, &id.kind), r.clone());
                        r
                    }
                };
                Some(DesiredObject {
                    id: id.clone(),
                    resource,
                    object: m.object.clone(),
                })
            })
            .collect();

        // 5. Health.
        if sync.health.wait && !opts.dry_run {
            let targets: Vec<(ObjectRef, kube::api::ApiResource)> = manifests
                .iter()
                .filter_map(|m| {
                    self.rm
                        .discovery()
                        .resolve(&m.id.group, &m.id.version, &m.id.kind)
                        .map(|r| (m.id.clone(), r.api.clone()))
                })
                .collect();
            let wopts = health::WaitOptions {
                timeout: sync.health.timeout,
                poll_interval: std::time::Duration::from_millis(500),
                ..Default::default()
            };
            match health::wait(self.rm.client(), &targets, &wopts).await {
                Ok(h) => outcome.health = h,
                Err(e) => outcome.failure = Some(Failure::Health(e.to_string())),
            }
        }

        if outcome.failure.is_none() {
            outcome.failure = apply_failure(&outcome.changes);
        }
        self.record(sync, &previous, &inventory, &outcome, opts)
            .await;
        outcome
    }

    /// Stores inventory and status, writing only when either changed.
    async fn record(
        &self,
        sync: &config::Sync,
        previous: &Record,
        inventory: &Inventory,
        outcome: &Outcome,
        opts: &Options,
    ) {
        if opts.dry_run {
            return;
        }
        let mut status = Status {
            revision: Some(outcome.revision.clone()),
            result: outcome
                .failure
                .as_ref()
                .map(Failure::result)
                .unwrap_or("Succeeded")
                .to_string(),
            health: outcome.overall_health().map(|h| h.to_string()),
            error: outcome.failure.as_ref().map(|f| f.to_string()),
            last_change_time: previous.status.last_change_time.clone(),
            last_change_counts: previous.status.last_change_counts.clone(),
        };
        if outcome.changes.has_writes() {
            status.last_change_counts = outcome
                .changes
                .counts()
                .into_iter()
                .map(|(a, n)| (a.to_string(), n))
                .collect();
        }
        // `status` still carries the previous change time, so equal means nothing changed.
        if *inventory == previous.inventory && status == previous.status {
            return;
        }
        status.last_change_time =
            Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        let record = Record {
            inventory: inventory.clone(),
            status,
        };
        if let Err(e) = self.store.store(&sync.name, previous, &record).await {
            tracing::error!(sync = %sync.name, error = %e, "recording status");
        }
    }
}

/// How many objects failed, naming the first: the sync's failure, if any.
fn apply_failure(changes: &ChangeSet) -> Option<Failure> {
    let first = changes.failed().next()?;
    Some(Failure::Apply {
        count: changes.failed().count(),
        first: format!(
            "{}: {}",
            first.subject,
            first.message.as_deref().unwrap_or("")
        ),
    })
}

fn identity(id: &ObjectRef) -> (String, String, Option<String>, String) {
    (
        id.group.clone(),
        id.kind.clone(),
        id.namespace.clone(),
        id.name.clone(),
    )
}

fn has_identity(set: &BTreeSet<ObjectRef>, id: &ObjectRef) -> bool {
    set.iter().any(|e| e.same_object(id))
}

// --- sources ---------------------------------------------------------------------

/// Builds a Git source from configuration, reading its credentials Secret.
pub async fn open_source(
    client: Option<&Client>,
    cfg: &config::Config,
    src: &config::Source,
) -> Result<GitSource, Failure> {
    let credentials = match (&src.secret_ref, client) {
        (None, _) => Credentials::None,
        (Some(r), Some(client)) => {
            let ns = r.namespace.clone().unwrap_or_else(|| cfg.namespace.clone());
            let secret = Api::<Secret>::namespaced(client.clone(), &ns)
                .get(&r.name)
                .await
                .map_err(|e| {
                    Failure::Source(format!(
                        "source {}: Secret/{ns}/{}: {}",
                        src.name,
                        r.name,
                        apply::api_message(&e)
                    ))
                })?;
            credentials_from_secret(&secret, src.is_ssh()).map_err(|m| {
                Failure::Source(format!("source {}: Secret/{ns}/{}: {m}", src.name, r.name))
            })?
        }
        (Some(r), None) => {
            return Err(Failure::Source(format!(
                "source {}: needs Secret {} but there is no cluster connection",
                src.name, r.name
            )));
        }
    };
    let reference = match &src.reference {
        config::GitRef::Branch(b) => Reference::Branch(b.clone()),
        config::GitRef::Tag(t) => Reference::Tag(t.clone()),
        config::GitRef::Commit(c) => Reference::Commit(c.clone()),
        config::GitRef::Semver(s) => Reference::Semver(s.clone()),
    };
    let spec = SourceSpec {
        name: src.name.clone(),
        url: src.url.clone(),
        reference,
        credentials,
        limits: Default::default(),
    };
    GitSource::new(spec, &cfg.state_dir).map_err(|e| Failure::Source(e.to_string()))
}

/// Secret keys, as Flux uses them: `username`/`password` (or `token`) for HTTPS;
/// `identity`, `known_hosts` and optionally `passphrase` for SSH. Messages name keys, never values.
pub fn credentials_from_secret(secret: &Secret, ssh: bool) -> Result<Credentials, String> {
    let data = secret.data.clone().unwrap_or_default();
    let get = |k: &str| -> Result<Option<String>, String> {
        match data.get(k) {
            None => Ok(None),
            Some(v) => String::from_utf8(v.0.clone())
                .map(Some)
                .map_err(|_| format!("key {k} is not UTF-8")),
        }
    };
    if ssh {
        let private_key = get("identity")?.ok_or("missing key identity (the SSH private key)")?;
        let known_hosts =
            get("known_hosts")?.ok_or("missing key known_hosts (host keys are always verified)")?;
        return Ok(Credentials::Ssh {
            private_key,
            passphrase: get("passphrase")?,
            known_hosts,
        });
    }
    let token = match (get("token")?, get("password")?) {
        (Some(t), _) => t,
        (None, Some(p)) => p,
        (None, None) => return Err("missing key token or password".into()),
    };
    Ok(Credentials::Token {
        username: get("username")?,
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn https_credentials_take_token_or_password() {
        match credentials_from_secret(&secret(&[("username", "bot"), ("password", "p4ss")]), false)
            .unwrap()
        {
            Credentials::Token { username, token } => {
                assert_eq!((username.as_deref(), token.as_str()), (Some("bot"), "p4ss"))
            }
            other => panic!("{other:?}"),
        }
        let err = credentials_from_secret(&secret(&[("username", "bot")]), false).unwrap_err();
        assert!(err.contains("token or password"));
    }

    #[test]
    fn ssh_credentials_need_known_hosts_and_never_echo_the_key() {
        let err =
            credentials_from_secret(&secret(&[("identity", "-----BEGIN KEY-----secret")]), true)
                .unwrap_err();
        assert!(
            err.contains("known_hosts") && !err.contains("secret"),
            "{err}"
        );
    }
}
