//! Infra spec files: OKE node pools (`kind: NodePool`) and virtual node pools
//! (`kind: VirtualNodePool`) of `apiVersion: oke.gitops-agent.io/v1alpha1`, parsed strictly
//! (unknown fields are errors) and checked (OCIDs, sizes, fault domains, taint effects).
//! Each becomes the fragment of OCI's Update body it declares, in the API's own names:
//! only what the file declares is managed, as with server-side apply.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::core::{INFRA_GROUP, ObjectKey};
use crate::oci::containerengine::PoolKind;

pub const API_VERSION: &str = "oke.gitops-agent.io/v1alpha1";
/// Lets a commit change a pool's size by more than the step, or to zero.
pub const ALLOW_SCALE_ANNOTATION: &str = "oke.gitops-agent.io/allow-scale";
/// Sizes OKE allows a pool (node pools: 0 to 1,000 nodes).
pub const MAX_SIZE: u32 = 1000;

/// Which pool a spec is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Id(String),
    /// By cluster and name (the name is the pool's `name`, or `displayName` for a virtual one).
    Named {
        cluster_id: String,
        name: String,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Id(id) => f.write_str(id),
            Target::Named { cluster_id, name } => write!(f, "{name} in {cluster_id}"),
        }
    }
}

/// One parsed infra spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub key: ObjectKey,
    pub kind: PoolKind,
    pub target: Target,
    /// What the file declares, as the Update body's fields.
    pub desired: Value,
    /// The declared size, for the scale guard.
    pub size: Option<u32>,
    /// The file allows a large or to-zero size change.
    pub allow_scale: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Doc {
    #[allow(dead_code)]
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    name: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Placement {
    availability_domain: String,
    subnet_id: String,
    #[serde(default)]
    fault_domains: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NodePool {
    #[serde(default)]
    node_pool_id: Option<String>,
    #[serde(default)]
    cluster_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    size: Option<u32>,
    #[serde(default)]
    placement: Option<Vec<Placement>>,
    #[serde(default)]
    node_shape: Option<String>,
    #[serde(default)]
    node_shape_config: Option<ShapeConfig>,
    #[serde(default)]
    initial_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    kubernetes_version: Option<String>,
    #[serde(default)]
    nsg_ids: Option<Vec<String>>,
    #[serde(default)]
    eviction: Option<Eviction>,
    #[serde(default)]
    cycling: Option<Cycling>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ShapeConfig {
    #[serde(default)]
    ocpus: Option<f64>,
    #[serde(default, rename = "memoryInGBs")]
    memory_in_gbs: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Eviction {
    /// ISO 8601 duration, `PT60M`.
    #[serde(default)]
    grace_duration: Option<String>,
    #[serde(default)]
    force_delete_after_grace_duration: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Cycling {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    maximum_surge: Option<String>,
    #[serde(default)]
    maximum_unavailable: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VirtualNodePool {
    #[serde(default)]
    virtual_node_pool_id: Option<String>,
    #[serde(default)]
    cluster_id: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    size: Option<u32>,
    #[serde(default)]
    placement: Option<Vec<Placement>>,
    #[serde(default)]
    pod_configuration: Option<PodConfiguration>,
    #[serde(default)]
    nsg_ids: Option<Vec<String>>,
    #[serde(default)]
    initial_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    taints: Option<Vec<Taint>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodConfiguration {
    shape: String,
    subnet_id: String,
    #[serde(default)]
    nsg_ids: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Taint {
    key: String,
    #[serde(default)]
    value: Option<String>,
    effect: String,
}

/// Collects a spec's problems; the first few lines of a message name the field.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn ocid(&mut self, field: &str, value: &str, kind: &str) {
        if !value.starts_with(&format!("ocid1.{kind}.")) {
            self.0
                .push(format!("{field}: {value:?} is not an ocid1.{kind} OCID"));
        }
    }

    fn placement(&mut self, placement: &[Placement]) {
        if placement.is_empty() {
            self.0.push("spec.placement: give at least one".into());
        }
        for (i, p) in placement.iter().enumerate() {
            if p.availability_domain.is_empty() {
                self.0
                    .push(format!("spec.placement[{i}].availabilityDomain is empty"));
            }
            self.ocid(
                &format!("spec.placement[{i}].subnetId"),
                &p.subnet_id,
                "subnet",
            );
            for fd in p.fault_domains.iter().flatten() {
                if !matches!(
                    fd.as_str(),
                    "FAULT-DOMAIN-1" | "FAULT-DOMAIN-2" | "FAULT-DOMAIN-3"
                ) {
                    self.0.push(format!(
                        "spec.placement[{i}].faultDomains: {fd:?} is not FAULT-DOMAIN-1, -2 or -3"
                    ));
                }
            }
        }
    }

    fn size(&mut self, size: Option<u32>) {
        if let Some(n) = size
            && n > MAX_SIZE
        {
            self.0.push(format!(
                "spec.size: {n} is over the {MAX_SIZE} a pool may have"
            ));
        }
    }

    fn nsgs(&mut self, field: &str, ids: Option<&Vec<String>>) {
        for id in ids.into_iter().flatten() {
            self.ocid(field, id, "networksecuritygroup");
        }
    }
}

/// `{k: v}` as OCI's `[{key, value}]`, in key order.
fn labels(map: &BTreeMap<String, String>) -> Value {
    Value::Array(
        map.iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect(),
    )
}

/// Placements in the API's shape; the fault-domain list is `faultDomains` in a node pool's
/// and `faultDomain` in a virtual node pool's.
fn placements(list: Vec<Placement>, fault_domains: &str) -> Value {
    list.into_iter()
        .map(|p| {
            let mut o =
                json!({"availabilityDomain": p.availability_domain, "subnetId": p.subnet_id});
            let fds = p.fault_domains.map(|f| json!(f));
            put(o.as_object_mut().expect("object"), fault_domains, fds);
            o
        })
        .collect()
}

/// Sets `obj[key] = value` when the file declared it.
fn put(obj: &mut serde_json::Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        obj.insert(key.to_owned(), v);
    }
}

/// Parses one infra spec document (a rendered manifest's object); its problems, one
/// message each, when it is not valid.
pub fn parse(key: &ObjectKey, object: &Value) -> Result<Spec, Vec<String>> {
    if key.group != INFRA_GROUP || key.version != "v1alpha1" {
        return Err(vec![format!(
            "apiVersion must be {API_VERSION} for infra specs"
        )]);
    }
    let doc: Doc = serde_json::from_value(object.clone()).map_err(|e| vec![e.to_string()])?;
    let allow_scale = doc
        .metadata
        .annotations
        .get(ALLOW_SCALE_ANNOTATION)
        .is_some_and(|v| v == "true");
    let (kind, target, desired, size) = match doc.kind.as_str() {
        "NodePool" => node_pool(&doc)?,
        "VirtualNodePool" => virtual_node_pool(&doc)?,
        other => {
            return Err(vec![format!(
                "kind {other}: infra specs are NodePool or VirtualNodePool"
            )]);
        }
    };
    Ok(Spec {
        key: key.clone(),
        kind,
        target,
        desired,
        size,
        allow_scale,
    })
}

type Parsed = (PoolKind, Target, Value, Option<u32>);

fn target(
    id: Option<String>,
    cluster_id: Option<String>,
    name: Option<String>,
    default_name: &str,
    (id_field, id_kind): (&str, &str),
    problems: &mut Problems,
) -> Target {
    match (id, cluster_id) {
        (Some(id), None) => {
            problems.ocid(&format!("spec.{id_field}"), &id, id_kind);
            Target::Id(id)
        }
        (None, Some(cluster)) => {
            problems.ocid("spec.clusterId", &cluster, "cluster");
            Target::Named {
                cluster_id: cluster,
                name: name.unwrap_or_else(|| default_name.to_owned()),
            }
        }
        _ => {
            problems.0.push(format!(
                "spec: name the pool by {id_field}, or by clusterId (and name), one of them"
            ));
            Target::Id(String::new())
        }
    }
}

fn spec_of<T: for<'de> Deserialize<'de>>(doc: &Doc) -> Result<T, Vec<String>> {
    serde_json::from_value(doc.spec.clone()).map_err(|e| vec![format!("spec: {e}")])
}

fn node_pool(doc: &Doc) -> Result<Parsed, Vec<String>> {
    let s: NodePool = spec_of(doc)?;
    let mut p = Problems::default();
    let target = target(
        s.node_pool_id,
        s.cluster_id,
        s.name,
        &doc.metadata.name,
        ("nodePoolId", "nodepool"),
        &mut p,
    );
    p.size(s.size);
    if let Some(pl) = &s.placement {
        p.placement(pl);
    }
    p.nsgs("spec.nsgIds", s.nsg_ids.as_ref());
    let mut body = serde_json::Map::new();
    let mut config = serde_json::Map::new();
    put(&mut config, "size", s.size.map(Value::from));
    put(&mut config, "nsgIds", s.nsg_ids.map(|v| json!(v)));
    put(
        &mut config,
        "placementConfigs",
        s.placement.map(|pl| placements(pl, "faultDomains")),
    );
    if !config.is_empty() {
        body.insert("nodeConfigDetails".into(), Value::Object(config));
    }
    put(&mut body, "nodeShape", s.node_shape.map(Value::from));
    if let Some(c) = s.node_shape_config {
        let mut o = serde_json::Map::new();
        put(&mut o, "ocpus", c.ocpus.map(|v| json!(v)));
        put(&mut o, "memoryInGBs", c.memory_in_gbs.map(|v| json!(v)));
        body.insert("nodeShapeConfig".into(), Value::Object(o));
    }
    put(
        &mut body,
        "initialNodeLabels",
        s.initial_labels.as_ref().map(labels),
    );
    put(
        &mut body,
        "kubernetesVersion",
        s.kubernetes_version.map(Value::from),
    );
    if let Some(e) = s.eviction {
        let mut o = serde_json::Map::new();
        put(
            &mut o,
            "evictionGraceDuration",
            e.grace_duration.map(Value::from),
        );
        put(
            &mut o,
            "isForceDeleteAfterGraceDuration",
            e.force_delete_after_grace_duration.map(Value::from),
        );
        body.insert("nodeEvictionNodePoolSettings".into(), Value::Object(o));
    }
    if let Some(c) = s.cycling {
        let mut o = serde_json::Map::new();
        put(&mut o, "isNodeCyclingEnabled", c.enabled.map(Value::from));
        put(&mut o, "maximumSurge", c.maximum_surge.map(Value::from));
        put(
            &mut o,
            "maximumUnavailable",
            c.maximum_unavailable.map(Value::from),
        );
        body.insert("nodePoolCyclingDetails".into(), Value::Object(o));
    }
    finish(p, (PoolKind::NodePool, target, Value::Object(body), s.size))
}

fn virtual_node_pool(doc: &Doc) -> Result<Parsed, Vec<String>> {
    let s: VirtualNodePool = spec_of(doc)?;
    let mut p = Problems::default();
    let target = target(
        s.virtual_node_pool_id,
        s.cluster_id,
        s.display_name,
        &doc.metadata.name,
        ("virtualNodePoolId", "virtualnodepool"),
        &mut p,
    );
    p.size(s.size);
    if let Some(pl) = &s.placement {
        p.placement(pl);
    }
    p.nsgs("spec.nsgIds", s.nsg_ids.as_ref());
    let mut body = serde_json::Map::new();
    put(&mut body, "size", s.size.map(Value::from));
    // The API's virtual-node placement names the list `faultDomain`, singular.
    put(
        &mut body,
        "placementConfigurations",
        s.placement.map(|pl| placements(pl, "faultDomain")),
    );
    if let Some(pc) = s.pod_configuration {
        p.ocid("spec.podConfiguration.subnetId", &pc.subnet_id, "subnet");
        p.nsgs("spec.podConfiguration.nsgIds", pc.nsg_ids.as_ref());
        let mut o = json!({"shape": pc.shape, "subnetId": pc.subnet_id});
        put(
            o.as_object_mut().expect("object"),
            "nsgIds",
            pc.nsg_ids.map(|v| json!(v)),
        );
        body.insert("podConfiguration".into(), o);
    }
    put(&mut body, "nsgIds", s.nsg_ids.map(|v| json!(v)));
    put(
        &mut body,
        "initialVirtualNodeLabels",
        s.initial_labels.as_ref().map(labels),
    );
    if let Some(taints) = s.taints {
        for (i, t) in taints.iter().enumerate() {
            if !matches!(
                t.effect.as_str(),
                "NoSchedule" | "PreferNoSchedule" | "NoExecute"
            ) {
                p.0.push(format!(
                    "spec.taints[{i}].effect: {:?} is not NoSchedule, PreferNoSchedule or NoExecute",
                    t.effect
                ));
            }
        }
        let list = taints
            .into_iter()
            .map(|t| json!({"key": t.key, "value": t.value, "effect": t.effect}))
            .collect();
        body.insert("taints".into(), Value::Array(list));
    }
    finish(
        p,
        (
            PoolKind::VirtualNodePool,
            target,
            Value::Object(body),
            s.size,
        ),
    )
}

fn finish(p: Problems, parsed: Parsed) -> Result<Parsed, Vec<String>> {
    if p.0.is_empty() { Ok(parsed) } else { Err(p.0) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(kind: &str) -> ObjectKey {
        ObjectKey {
            group: INFRA_GROUP.into(),
            version: "v1alpha1".into(),
            kind: kind.into(),
            namespace: None,
            name: "pool1".into(),
        }
    }

    fn doc(kind: &str, spec: Value) -> Value {
        json!({"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": "pool1"}, "spec": spec})
    }

    #[test]
    fn a_virtual_node_pool_becomes_the_fields_it_declares_in_the_apis_names() {
        let spec = json!({
            "clusterId": "ocid1.cluster.oc1..c",
            "size": 3,
            "placement": [{"availabilityDomain": "AD-1", "subnetId": "ocid1.subnet.oc1..s",
                           "faultDomains": ["FAULT-DOMAIN-1", "FAULT-DOMAIN-2"]}],
            "podConfiguration": {"shape": "Pod.Standard.E4.Flex", "subnetId": "ocid1.subnet.oc1..p"},
            "initialLabels": {"tier": "web"},
            "taints": [{"key": "virtual", "effect": "NoSchedule"}],
        });
        let s = parse(&key("VirtualNodePool"), &doc("VirtualNodePool", spec)).unwrap();
        assert_eq!(
            s.target,
            Target::Named {
                cluster_id: "ocid1.cluster.oc1..c".into(),
                name: "pool1".into()
            }
        );
        assert_eq!(s.size, Some(3));
        assert_eq!(
            s.desired,
            json!({
                "size": 3,
                "placementConfigurations": [{"availabilityDomain": "AD-1", "subnetId": "ocid1.subnet.oc1..s",
                                             "faultDomain": ["FAULT-DOMAIN-1", "FAULT-DOMAIN-2"]}],
                "podConfiguration": {"shape": "Pod.Standard.E4.Flex", "subnetId": "ocid1.subnet.oc1..p"},
                "initialVirtualNodeLabels": [{"key": "tier", "value": "web"}],
                "taints": [{"key": "virtual", "value": null, "effect": "NoSchedule"}],
            })
        );
    }

    #[test]
    fn a_node_pool_nests_size_and_placement_as_the_api_does() {
        let spec = json!({"nodePoolId": "ocid1.nodepool.oc1..n", "size": 6, "nodeShape": "VM.Standard.E4.Flex",
                          "nodeShapeConfig": {"ocpus": 2, "memoryInGBs": 16}, "kubernetesVersion": "v1.34.1",
                          "cycling": {"enabled": true, "maximumSurge": "1"}});
        let s = parse(&key("NodePool"), &doc("NodePool", spec)).unwrap();
        assert_eq!(s.target, Target::Id("ocid1.nodepool.oc1..n".into()));
        assert_eq!(s.desired["nodeConfigDetails"], json!({"size": 6}));
        assert_eq!(
            s.desired["nodeShapeConfig"],
            json!({"ocpus": 2.0, "memoryInGBs": 16.0})
        );
        assert_eq!(
            s.desired["nodePoolCyclingDetails"],
            json!({"isNodeCyclingEnabled": true, "maximumSurge": "1"})
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong_with_each_field() {
        let spec = json!({
            "virtualNodePoolId": "ocid1.nodepool.oc1..wrongkind",
            "size": 5000,
            "placement": [{"availabilityDomain": "AD-1", "subnetId": "nope", "faultDomains": ["FAULT-DOMAIN-4"]}],
            "taints": [{"key": "k", "effect": "Sometimes"}],
        });
        let errs = parse(&key("VirtualNodePool"), &doc("VirtualNodePool", spec)).unwrap_err();
        for want in [
            "spec.virtualNodePoolId: \"ocid1.nodepool.oc1..wrongkind\" is not an ocid1.virtualnodepool OCID",
            "spec.size: 5000 is over the 1000 a pool may have",
            "spec.placement[0].subnetId: \"nope\" is not an ocid1.subnet OCID",
            "spec.placement[0].faultDomains: \"FAULT-DOMAIN-4\" is not FAULT-DOMAIN-1, -2 or -3",
            "spec.taints[0].effect: \"Sometimes\" is not NoSchedule, PreferNoSchedule or NoExecute",
        ] {
            assert!(errs.iter().any(|e| e == want), "{want:?} not in {errs:?}");
        }
        let unknown = parse(
            &key("NodePool"),
            &doc(
                "NodePool",
                json!({"nodePoolId": "ocid1.nodepool.oc1..n", "replicas": 3}),
            ),
        );
        let errs = unknown.unwrap_err();
        assert!(
            errs[0].starts_with("spec: unknown field `replicas`"),
            "{errs:?}"
        );
        let neither = parse(&key("NodePool"), &doc("NodePool", json!({"size": 1}))).unwrap_err();
        assert!(
            neither[0].contains("name the pool by nodePoolId, or by clusterId"),
            "{neither:?}"
        );
        let kind = parse(&key("Cluster"), &doc("Cluster", json!({}))).unwrap_err();
        assert_eq!(
            kind,
            ["kind Cluster: infra specs are NodePool or VirtualNodePool"]
        );
    }
}
