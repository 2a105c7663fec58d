//! Infra specs reconciled with OCI (`spec` parses them): each declared pool read with its
//! etag, compared field by field with what the file declares (and only that), updated
//! with `if-match` when they differ, its work request polled until it ends, and the pool
//! confirmed ACTIVE with the new values. Results are [`Change`]s like any object's
//! (`NodePool/pool1: configured`), with a diff of field, Git value and live value.

pub mod spec;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::core::{Action, Change};
use crate::oci::containerengine::{self as ce, Live, PoolKind};
use crate::oci::{self, Shared};
use crate::render::{self, Manifest};
pub use spec::{Spec, Target};

/// Longest a work request may run before the sync gives up on it (it goes on in OCI).
const WORK_REQUEST_LIMIT: Duration = Duration::from_secs(30 * 60);
/// Polls of a work request: `retry-after` when OCI sends it, this otherwise, at most
/// the cap.
const POLL_DEFAULT: Duration = Duration::from_secs(2);
const POLL_CAP: Duration = Duration::from_secs(30);

/// One field where OCI differs from Git.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDiff {
    pub path: String,
    pub git: Value,
    pub live: Value,
}

/// A declared pool and OCI's: what differs.
#[derive(Debug, Clone)]
pub struct Planned {
    pub spec: Spec,
    pub live: Live,
    pub diffs: Vec<FieldDiff>,
}

impl Planned {
    /// The live size, where the pool has one.
    pub fn live_size(&self) -> Option<u64> {
        match self.spec.kind {
            PoolKind::NodePool => self.live.body["nodeConfigDetails"]["size"].as_u64(),
            PoolKind::VirtualNodePool => self.live.body["size"].as_u64(),
        }
    }

    /// A size decrease: applied after the Kubernetes objects (workloads leave first).
    pub fn shrinks(&self) -> bool {
        matches!((self.spec.size, self.live_size()), (Some(want), Some(have)) if u64::from(want) < have)
    }

    /// `field: live → git` lines.
    pub fn diff_text(&self) -> String {
        self.diffs
            .iter()
            .map(|d| format!("{}: {} → {}\n", d.path, d.live, d.git))
            .collect()
    }

    fn change(&self, action: Action) -> Change {
        let mut c = Change::new(self.spec.key.clone(), action);
        if !self.diffs.is_empty() {
            c.diff = Some(self.diff_text());
        }
        c
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{subject}: {source}")]
    Oci {
        subject: String,
        #[source]
        source: oci::Error,
    },
}

/// Every field of `desired` that `live` does not match. Objects compare by the keys Git
/// declares; lists compare whole, in a canonical order (labels by key, placements by
/// domain and subnet, strings sorted); a missing live list or map equals an empty one.
pub fn diff(desired: &Value, live: &Value) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    walk(desired, live, "", &mut out);
    out
}

fn walk(desired: &Value, live: &Value, path: &str, out: &mut Vec<FieldDiff>) {
    match desired {
        Value::Object(map) => {
            for (k, d) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(d, live.get(k).unwrap_or(&Value::Null), &p, out);
            }
        }
        _ if !matches(desired, live) => out.push(FieldDiff {
            path: path.to_owned(),
            git: desired.clone(),
            live: live.clone(),
        }),
        _ => {}
    }
}

fn matches(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Null, _) => true,
        (Value::Array(d), Value::Null) => d.is_empty(),
        (Value::Array(d), Value::Array(l)) => {
            let (d, l) = (canonical(d), canonical(l));
            d.len() == l.len() && d.iter().zip(&l).all(|(a, b)| matches(a, b))
        }
        (Value::Object(d), Value::Object(l)) => d
            .iter()
            .all(|(k, v)| matches(v, l.get(k).unwrap_or(&Value::Null))),
        (Value::Object(d), Value::Null) => d.values().all(|v| matches(v, &Value::Null)),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// A list in an order that does not depend on how it was written.
fn canonical(list: &[Value]) -> Vec<Value> {
    let mut sorted = list.to_vec();
    let key = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => ["key", "availabilityDomain", "subnetId"]
            .iter()
            .filter_map(|k| o.get(*k).and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\0"),
        other => other.to_string(),
    };
    sorted.sort_by_key(key);
    sorted
}

/// Parses every spec; the problems of all of them, each at its file and line.
pub fn parse_manifests(infra: &[Manifest]) -> Result<Vec<Spec>, render::Errors> {
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for m in infra {
        match spec::parse(&m.id, &m.value()) {
            Ok(s) => specs.push(s),
            Err(problems) => errors.extend(problems.into_iter().map(|p| render::Located {
                file: m.file.clone(),
                line: m.line,
                column: None,
                subject: Some(m.subject()),
                item: None,
                error: render::Error::InfraSpec(p),
            })),
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(render::Errors(errors))
    }
}

/// Pool ids found by cluster and name, so that a pool named that way costs one GET per
/// reconcile after the first (GetCluster and the List are needed once).
#[derive(Debug, Default)]
pub struct Resolved(
    std::sync::Mutex<std::collections::HashMap<(PoolKind, String, String), String>>,
);

impl Resolved {
    fn get(&self, key: &(PoolKind, String, String)) -> Option<String> {
        self.0.lock().expect("resolved lock").get(key).cloned()
    }

    fn set(&self, key: (PoolKind, String, String), id: Option<String>) {
        let mut map = self.0.lock().expect("resolved lock");
        match id {
            Some(id) => map.insert(key, id),
            None => map.remove(&key),
        };
    }
}

/// The Update body: only the fields that differ, each at its path, taken from `desired`
/// (a list goes whole). Sending what already matches could make OCI do work for nothing,
/// such as cycling nodes for a placement that did not change.
pub fn patch(desired: &Value, diffs: &[FieldDiff]) -> Value {
    let mut body = Value::Object(Default::default());
    for d in diffs {
        let parts: Vec<&str> = d.path.split('.').collect();
        let value = parts.iter().fold(desired, |v, p| &v[*p]).clone();
        set(&mut body, &parts, value);
    }
    body
}

fn set(at: &mut Value, path: &[&str], value: Value) {
    let (Some((first, rest)), Some(obj)) = (path.split_first(), at.as_object_mut()) else {
        return;
    };
    if rest.is_empty() {
        obj.insert((*first).to_owned(), value);
    } else {
        let next = obj
            .entry((*first).to_owned())
            .or_insert_with(|| Value::Object(Default::default()));
        set(next, rest, value);
    }
}

/// Reads the pool a spec names and compares it.
pub async fn plan(shared: &Shared, spec: &Spec, resolved: &Resolved) -> Result<Planned, Error> {
    let failed = |source| Error::Oci {
        subject: spec.key.to_string(),
        source,
    };
    let live = match &spec.target {
        Target::Id(id) => ce::get(shared, spec.kind, id).await.map_err(failed)?,
        Target::Named { cluster_id, name } => {
            let key = (spec.kind, cluster_id.clone(), name.clone());
            let cached = match resolved.get(&key) {
                Some(id) => ce::get(shared, spec.kind, &id).await.ok(),
                None => None,
            };
            match cached {
                Some(live) => live,
                None => {
                    // Not looked up yet, or gone (recreated under the same name): look again.
                    let compartment = ce::cluster_compartment(shared, cluster_id)
                        .await
                        .map_err(failed)?;
                    let found = ce::find(shared, spec.kind, &compartment, cluster_id, name).await;
                    let id = found
                        .inspect_err(|_| resolved.set(key.clone(), None))
                        .map_err(failed)?;
                    resolved.set(key, Some(id.clone()));
                    ce::get(shared, spec.kind, &id).await.map_err(failed)?
                }
            }
        }
    };
    let diffs = diff(&spec.desired, &live.body);
    Ok(Planned {
        spec: spec.clone(),
        live,
        diffs,
    })
}

/// Why the size change is held back, when it is: to zero, or by more than `max_step`,
/// without the allow annotation.
pub fn held_back(p: &Planned, max_step: u32) -> Option<String> {
    let (Some(want), Some(have)) = (p.spec.size, p.live_size()) else {
        return None;
    };
    let want = u64::from(want);
    if p.spec.allow_scale || want == have {
        return None;
    }
    let allow = format!(
        "add the annotation {}: \"true\" to the file to allow it",
        spec::ALLOW_SCALE_ANNOTATION
    );
    if want == 0 {
        return Some(format!("{}: scaling from {have} to 0; {allow}", p.spec.key));
    }
    let step = want.abs_diff(have);
    (step > u64::from(max_step)).then(|| {
        format!(
            "{}: size {have} → {want} changes by {step}, more than the step of {max_step}; {allow}",
            p.spec.key
        )
    })
}

/// Makes OCI match: nothing when nothing differs, else Update with `if-match`, the work
/// request followed to its end, the pool confirmed ACTIVE with the declared values.
pub async fn apply(shared: &Shared, p: &Planned) -> Change {
    if p.diffs.is_empty() {
        return p.change(Action::Unchanged);
    }
    match update(shared, p).await {
        Ok(()) => p.change(Action::Configured),
        Err(why) => p.change(Action::Failed).with_message(why),
    }
}

async fn update(shared: &Shared, p: &Planned) -> Result<(), String> {
    let kind = p.spec.kind;
    let work = ce::update(shared, kind, &p.live, &patch(&p.spec.desired, &p.diffs))
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let done = loop {
        let wr = ce::work_request(shared, &work)
            .await
            .map_err(|e| e.to_string())?;
        match wr.status.as_str() {
            "SUCCEEDED" => break wr,
            "FAILED" | "CANCELED" => {
                let errors = ce::work_request_errors(shared, &work, &wr.compartment_id)
                    .await
                    .unwrap_or_else(|e| e.to_string());
                return Err(format!("work request {work} {}: {errors}", wr.status));
            }
            _ if started.elapsed() > WORK_REQUEST_LIMIT => {
                return Err(format!(
                    "work request {work} still {} after {}",
                    wr.status,
                    humantime::format_duration(WORK_REQUEST_LIMIT)
                ));
            }
            _ => tokio::time::sleep(wr.retry_after.unwrap_or(POLL_DEFAULT).min(POLL_CAP)).await,
        }
    };
    let _ = done;
    confirm(shared, p, started).await
}

/// After the work request: the pool ACTIVE, and holding what Git declares.
async fn confirm(shared: &Shared, p: &Planned, started: Instant) -> Result<(), String> {
    loop {
        let live = ce::get(shared, p.spec.kind, &p.live.id)
            .await
            .map_err(|e| e.to_string())?;
        let state = live.body["lifecycleState"].as_str().unwrap_or_default();
        let left = diff(&p.spec.desired, &live.body);
        match state {
            "ACTIVE" if left.is_empty() => return Ok(()),
            "ACTIVE" => {
                let fields: Vec<&str> = left.iter().map(|d| d.path.as_str()).collect();
                return Err(format!(
                    "the work request succeeded, but OCI still differs in {}",
                    fields.join(", ")
                ));
            }
            "FAILED" | "NEEDS_ATTENTION" | "DELETED" | "DELETING" => {
                let details = live.body["lifecycleDetails"].as_str().unwrap_or_default();
                return Err(format!("the pool is {state} after the update {details}")
                    .trim()
                    .to_owned());
            }
            _ if started.elapsed() > WORK_REQUEST_LIMIT => {
                return Err(format!("the pool is still {state} after the update"));
            }
            _ => tokio::time::sleep(POLL_DEFAULT).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_declared_fields_are_compared_in_a_canonical_order() {
        let desired = json!({
            "size": 3,
            "placementConfigurations": [
                {"availabilityDomain": "AD-2", "subnetId": "s", "faultDomain": ["FAULT-DOMAIN-2", "FAULT-DOMAIN-1"]},
                {"availabilityDomain": "AD-1", "subnetId": "s"}
            ],
            "nsgIds": [],
            "taints": [{"key": "a", "value": null, "effect": "NoSchedule"}],
        });
        let live = json!({
            "size": 3.0, "displayName": "kept", "lifecycleState": "ACTIVE",
            "placementConfigurations": [
                {"availabilityDomain": "AD-1", "subnetId": "s", "faultDomain": ["FAULT-DOMAIN-3"]},
                {"availabilityDomain": "AD-2", "subnetId": "s", "faultDomain": ["FAULT-DOMAIN-1", "FAULT-DOMAIN-2"]}
            ],
            "taints": [{"key": "a", "effect": "NoSchedule"}],
        });
        assert_eq!(diff(&desired, &live), []);
        let live = json!({"size": 2, "placementConfigurations": [], "nsgIds": ["x"]});
        let paths: Vec<String> = diff(&desired, &live).into_iter().map(|d| d.path).collect();
        assert_eq!(
            paths,
            ["nsgIds", "placementConfigurations", "size", "taints"]
        );
    }
}

#[cfg(test)]
mod examples {
    /// The bundled examples (one per reference architecture) parse as the sync would.
    #[test]
    fn the_bundled_infra_examples_are_valid() {
        let examples =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
        let parse = |dir: &str| {
            let files = crate::source::read_dir(&examples.join(dir), &Default::default()).unwrap();
            let manifests =
                crate::render::render(&files, &Default::default(), &crate::render::BuiltinScopes)
                    .unwrap_or_else(|e| panic!("{e}"));
            super::parse_manifests(&manifests).unwrap_or_else(|e| panic!("{e}"))
        };
        let managed = parse("microservices/infra");
        assert_eq!(managed.len(), 1);
        assert_eq!(managed[0].key.kind, "NodePool");
        assert_eq!(
            managed[0].desired["nodeConfigDetails"]["size"], 2,
            "{}",
            managed[0].desired
        );
        let virt = parse("serverless/infra");
        assert_eq!(virt[0].key.kind, "VirtualNodePool");
        assert_eq!(
            virt[0].desired["placementConfigurations"][0]["faultDomain"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }
}
