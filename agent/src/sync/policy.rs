//! The policy stage of a sync: every object of the revision is judged, before anything is
//! written, by the ValidatingAdmissionPolicies that apply to the sync: the packs the
//! configuration names (for every sync, and for this one), those the revision itself
//! carries, and those other syncs applied (a platform team's). A denial stops the whole
//! revision, naming the object, its file and line, the policy and the binding; warnings and
//! audit findings are reported with the outcome.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use k8s_openapi::api::admissionregistration::v1::ParamRef;
use kube::api::{Api, ListParams};
use serde_json::Value;

use super::{Discovery, Engine};
use crate::config;
use crate::core::{OWNER_LABEL, ObjectKey};
use crate::inventory::Inventory;
use crate::policy::{self, At, Operation, PolicySet, Subject, Target, User};
use crate::render::Manifest;

/// One policy finding about one object of a revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub id: ObjectKey,
    /// `Kind/ns/name`.
    pub subject: String,
    pub file: String,
    pub line: usize,
    pub violation: policy::Violation,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.violation.text();
        write!(f, "{}:{}: {}: {text}", self.file, self.line, self.subject)
    }
}

/// Findings, a line each.
pub fn lines(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The packs of a policies directory (`<dir>/<pack>/policies.yaml`), read once.
#[derive(Debug, Default, Clone)]
pub struct Packs {
    by_name: BTreeMap<String, Vec<(At, Value)>>,
}

impl Packs {
    /// Reads the packs `names` from `dir`; a pack that is missing or does not parse is an
    /// error naming its file.
    pub fn read(dir: &Path, names: &[String]) -> Result<Packs, String> {
        let mut by_name = BTreeMap::new();
        for name in names {
            let path = dir.join(name).join("policies.yaml");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("{}: policy pack {name:?}: {e}", path.display()))?;
            let file = crate::source::File {
                path: path.display().to_string(),
                content: text.into_bytes(),
            };
            let manifests =
                crate::render::render(&[file], &Default::default(), &crate::render::BuiltinScopes)
                    .map_err(|e| e.to_string())?;
            by_name.insert(name.clone(), manifests.iter().map(object).collect());
        }
        Ok(Packs { by_name })
    }

    fn get(&self, name: &str) -> &[(At, Value)] {
        self.by_name
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// The policies of the packs `names`, of `manifests` and `more`, loaded; `None` when there
/// are none.
pub fn load_set(
    packs: &Packs,
    names: &[&String],
    manifests: &[Manifest],
    more: Vec<(At, Value)>,
) -> Result<Option<PolicySet>, String> {
    let mut objects: Vec<(At, Value)> = Vec::new();
    for pack in names {
        objects.extend(packs.get(pack).iter().cloned());
    }
    objects.extend(manifests.iter().filter(|m| is_policy(m)).map(object));
    objects.extend(more);
    if objects.is_empty() {
        return Ok(None);
    }
    policy::load(&objects).map(Some).map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// A manifest as a policy object with its place.
fn object(m: &Manifest) -> (At, Value) {
    let at = At {
        file: m.file.clone(),
        line: m.line,
    };
    (at, m.value())
}

fn is_policy(m: &Manifest) -> bool {
    m.id.group == "admissionregistration.k8s.io"
        && matches!(
            m.id.kind.as_str(),
            "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding"
        )
}

impl Engine {
    /// The policies that judge `sync`'s revision: packs, the revision's own, and those
    /// the syncs it names applied; an error when one does not load.
    async fn policies(
        &self,
        sync: &config::Sync,
        manifests: &[Manifest],
    ) -> Result<Option<PolicySet>, String> {
        let mut applied = Vec::new();
        for other in &sync.policies.from_syncs {
            applied.extend(self.applied_policies(other).await?);
        }
        let names: Vec<&String> = self
            .global_packs
            .iter()
            .chain(&sync.policies.packs)
            .collect();
        load_set(&self.packs, &names, manifests, applied)
    }

    /// The policies and bindings sync `other` applied, from the cluster (its owner label).
    async fn applied_policies(&self, other: &str) -> Result<Vec<(At, Value)>, String> {
        let mut out = Vec::new();
        let discovery = self.rm.discovery();
        for kind in [
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ] {
            let Some(r) = discovery.resolve("admissionregistration.k8s.io", "v1", kind) else {
                return Err(format!("{kind}: not served by this cluster"));
            };
            let api = crate::cluster::api_for(self.client(), &r.api, None);
            let lp = ListParams::default().labels(&format!("{OWNER_LABEL}={other}"));
            let list = api
                .list(&lp)
                .await
                .map_err(|e| format!("{kind}s of sync {other:?}: {e}"))?;
            for o in list.items {
                let at = At {
                    file: format!("(applied by sync {other})"),
                    line: 1,
                };
                let mut v = serde_json::to_value(&o).map_err(|e| e.to_string())?;
                v["apiVersion"] = "admissionregistration.k8s.io/v1".into();
                v["kind"] = kind.into();
                out.push((at, v));
            }
        }
        Ok(out)
    }

    /// Judges every object of the revision: the findings, or why the policies could not be
    /// loaded. Reads only (namespaces and params the revision does not carry).
    pub(super) async fn judge(
        &self,
        sync: &config::Sync,
        manifests: &[Manifest],
        previous: &Inventory,
        discovery: &Discovery,
    ) -> Result<Vec<Finding>, String> {
        let Some(set) = self.policies(sync, manifests).await? else {
            return Ok(Vec::new());
        };
        let mut lookups = Lookups::from_revision(manifests, &set);
        lookups.live(self, manifests, &set).await;
        let user = self.user().await;
        let resolve = |id: &ObjectKey| {
            let r = discovery.resolve(&id.group, &id.version, &id.kind)?;
            Some((r.api.plural.clone(), r.namespaced))
        };
        Ok(findings(
            &set, manifests, previous, &resolve, &lookups, &user,
        ))
    }

    /// The revision judged: its warnings and audit findings, or the failure that stops it
    /// (a denial, or policies that do not load).
    pub(super) async fn police(
        &self,
        sync: &config::Sync,
        revision: &str,
        manifests: &[Manifest],
        previous: &Inventory,
        discovery: &Discovery,
    ) -> Result<Vec<Finding>, super::Failure> {
        let findings = self
            .judge(sync, manifests, previous, discovery)
            .await
            .map_err(|reason| super::Failure::Policies {
                revision: revision.to_owned(),
                reason,
            })?;
        let (denied, reported): (Vec<Finding>, Vec<Finding>) =
            findings.into_iter().partition(|f| f.violation.denies());
        if denied.is_empty() {
            return Ok(reported);
        }
        Err(super::Failure::Denied {
            revision: revision.to_owned(),
            findings: denied,
        })
    }

    /// Who the agent is to the apiserver (`request.userInfo`), asked once.
    async fn user(&self) -> User {
        let id = self
            .identity
            .get_or_init(|| async {
                crate::cluster::identify(self.client())
                    .await
                    .map(|i| (i.username, i.groups))
                    .unwrap_or_default()
            })
            .await;
        User {
            username: id.0.clone(),
            uid: String::new(),
            groups: id.1.clone(),
        }
    }
}

/// How a kind resolves: its plural resource name and whether it is namespaced.
pub type Resolve<'a> = dyn Fn(&ObjectKey) -> Option<(String, bool)> + 'a;

/// Every finding of `set` about `manifests` (offline: `validate` calls it too).
pub fn findings(
    set: &PolicySet,
    manifests: &[Manifest],
    previous: &Inventory,
    resolve: &Resolve<'_>,
    lookups: &Lookups,
    user: &User,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for m in manifests {
        let object = m.value();
        let Some(target) = target(m, &object, resolve, lookups) else {
            continue;
        };
        let namespace = lookups.namespaces.get(&target.namespace);
        let s = Subject {
            target,
            operation: match previous.entries.contains(&m.id) {
                true => Operation::Update,
                false => Operation::Create,
            },
            object: &object,
            old_object: None,
            namespace: namespace.and_then(Option::as_ref),
            user,
            dry_run: false,
        };
        for violation in set.evaluate(&s, lookups) {
            out.push(Finding {
                id: m.id.clone(),
                subject: m.subject(),
                file: m.file.clone(),
                line: m.line,
                violation,
            });
        }
    }
    out
}

/// The object as matching sees it; `None` for a kind that does not resolve (infra specs;
/// unknown kinds were refused at render already).
fn target(m: &Manifest, object: &Value, resolve: &Resolve<'_>, l: &Lookups) -> Option<Target> {
    let (plural, namespaced) = resolve(&m.id)?;
    let namespace = m.id.namespace.clone().unwrap_or_default();
    let ns_labels = match (m.id.group.as_str(), m.id.kind.as_str()) {
        ("", "Namespace") => policy::labels(object),
        _ => l
            .namespaces
            .get(&namespace)
            .and_then(Option::as_ref)
            .map(policy::labels)
            .unwrap_or_default(),
    };
    Some(Target {
        group: m.id.group.clone(),
        version: m.id.version.clone(),
        kind: m.id.kind.clone(),
        resource: plural,
        namespaced,
        name: m.id.name.clone(),
        namespace,
        labels: policy::labels(object),
        old_labels: None,
        namespace_labels: ns_labels,
    })
}

/// Namespaces and params for one judgement: the revision's, else the cluster's, read
/// before evaluating (CEL runs synchronously).
#[derive(Default)]
pub struct Lookups {
    /// By name: the revision's Namespace, else the live one, else none.
    namespaces: HashMap<String, Option<Value>>,
    /// ConfigMaps and other param objects by (apiVersion, kind, namespace, name).
    params: HashMap<(String, String, String, String), Value>,
}

impl Lookups {
    /// The revision's Namespaces and the param objects it carries.
    pub fn from_revision(manifests: &[Manifest], set: &PolicySet) -> Lookups {
        let mut l = Lookups::default();
        let param_kinds = set.param_kinds();
        for m in manifests {
            let namespace = m.id.group.is_empty() && m.id.kind == "Namespace";
            let api_version = match m.id.group.is_empty() {
                true => m.id.version.clone(),
                false => format!("{}/{}", m.id.group, m.id.version),
            };
            let param = param_kinds.contains(&(api_version.clone(), m.id.kind.clone()));
            if !namespace && !param {
                continue;
            }
            let v = m.value();
            if namespace {
                l.namespaces.insert(m.id.name.clone(), Some(v.clone()));
            }
            if param {
                let ns = m.id.namespace.clone().unwrap_or_default();
                let key = (api_version, m.id.kind.clone(), ns, m.id.name.clone());
                l.params.insert(key, v);
            }
        }
        l
    }

    /// The Namespaces and named params the revision does not carry, from the cluster.
    async fn live(&mut self, engine: &Engine, manifests: &[Manifest], set: &PolicySet) {
        let l = self;
        // Each namespace once, however many objects it holds.
        let wanted: std::collections::BTreeSet<String> = manifests
            .iter()
            .filter_map(|m| m.id.namespace.clone())
            .filter(|ns| !l.namespaces.contains_key(ns))
            .collect();
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(engine.client().clone());
        for ns in wanted {
            let live = api.get_opt(&ns).await.ok().flatten();
            let live = live.and_then(|n| serde_json::to_value(n).ok());
            l.namespaces.insert(ns, live);
        }
        l.live_params(engine, set).await;
    }

    /// The params bindings name by name that the revision does not carry, from the cluster.
    async fn live_params(&mut self, engine: &Engine, set: &PolicySet) {
        let discovery = engine.rm.discovery();
        for (api_version, kind, namespace, name) in set.named_params() {
            let key = (
                api_version.clone(),
                kind.clone(),
                namespace.clone(),
                name.clone(),
            );
            if self.params.contains_key(&key) {
                continue;
            }
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
            let Some(r) = discovery.resolve(group, version, &kind) else {
                continue;
            };
            let ns = Some(namespace.as_str()).filter(|n| !n.is_empty());
            let api = crate::cluster::api_for(engine.client(), &r.api, ns);
            if let Ok(Some(o)) = api.get_opt(&name).await
                && let Ok(v) = serde_json::to_value(o)
            {
                self.params.insert(key, v);
            }
        }
    }
}

impl policy::Params for Lookups {
    fn find(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        r: &ParamRef,
    ) -> Vec<Value> {
        let ns = namespace.unwrap_or_default();
        self.params
            .iter()
            .filter(|((a, k, n, name), _)| {
                a == api_version
                    && k == kind
                    && n == ns
                    && r.name.as_ref().is_none_or(|want| want == name)
            })
            .filter(|(_, v)| {
                r.selector
                    .as_ref()
                    .is_none_or(|s| policy::matching::selects(s, &policy::labels(v)))
            })
            .map(|(_, v)| v.clone())
            .collect()
    }
}
