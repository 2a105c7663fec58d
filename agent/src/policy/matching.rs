//! Which objects a policy or binding is about: `matchResources` as kube-apiserver matches
//! them (`policy/matching` and `webhook/predicates` of k8s.io/apiserver): resource rules
//! with operations, groups, versions, resources, names and scope, exclusions winning; the
//! namespace selector (a cluster-scoped object that is not a Namespace always matches, a
//! Namespace is matched by its own labels); the object selector (the object's labels or the
//! old object's).

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{MatchResources, NamedRuleWithOperations};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The write an admission decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// The object being admitted, as matching sees it.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The plural resource name (`deployments`).
    pub resource: String,
    pub namespaced: bool,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub old_labels: Option<BTreeMap<String, String>>,
    /// The labels of the object's namespace (its own, for a Namespace).
    pub namespace_labels: BTreeMap<String, String>,
}

/// Whether `m` selects `t` under `op`.
pub fn matches(m: &MatchResources, t: &Target, op: Operation) -> bool {
    let rules = m.resource_rules.as_deref().unwrap_or_default();
    let excluded = m.exclude_resource_rules.as_deref().unwrap_or_default();
    // An empty list of rules matches everything; exclusions win.
    let included = rules.is_empty() || rules.iter().any(|r| rule_matches(r, t, op));
    if !included || excluded.iter().any(|r| rule_matches(r, t, op)) {
        return false;
    }
    namespace_matches(m.namespace_selector.as_ref(), t)
        && object_matches(m.object_selector.as_ref(), t)
}

fn namespace_matches(selector: Option<&LabelSelector>, t: &Target) -> bool {
    let Some(s) = selector else { return true };
    let is_namespace = t.group.is_empty() && t.kind == "Namespace";
    if !t.namespaced && !is_namespace {
        return true;
    }
    selects(s, &t.namespace_labels)
}

fn object_matches(selector: Option<&LabelSelector>, t: &Target) -> bool {
    let Some(s) = selector else { return true };
    selects(s, &t.labels) || t.old_labels.as_ref().is_some_and(|old| selects(s, old))
}

/// One rule: every list `*` or containing the value; an empty `resourceNames` matches any.
fn rule_matches(r: &NamedRuleWithOperations, t: &Target, op: Operation) -> bool {
    let has = |list: &Option<Vec<String>>, v: &str| {
        list.as_deref()
            .unwrap_or_default()
            .iter()
            .any(|x| x == "*" || x == v)
    };
    let scope = match r.scope.as_deref().unwrap_or("*") {
        "Cluster" => !t.namespaced,
        "Namespaced" => t.namespaced,
        _ => true,
    };
    // Main resources only: the agent writes no subresource, so `pods/status` never
    // matches and `*/*` is as good as `*`.
    let resource = r
        .resources
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|x| x == "*" || x == "*/*" || *x == t.resource);
    let names = r.resource_names.as_deref().unwrap_or_default();
    has(&r.operations, op.as_str())
        && has(&r.api_groups, &t.group)
        && has(&r.api_versions, &t.version)
        && resource
        && scope
        && (names.is_empty() || names.contains(&t.name))
}

/// A label selector against labels: matchLabels and every matchExpression; an empty
/// selector selects everything.
pub fn selects(s: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exact = s
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    exact
        && s.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(kind: &str, namespaced: bool) -> Target {
        Target {
            group: if kind == "Deployment" {
                "apps".into()
            } else {
                String::new()
            },
            version: "v1".into(),
            kind: kind.into(),
            resource: format!("{}s", kind.to_lowercase()),
            namespaced,
            name: "web".into(),
            namespace: if namespaced {
                "shop".into()
            } else {
                String::new()
            },
            labels: BTreeMap::from([("app".into(), "web".into())]),
            old_labels: None,
            namespace_labels: BTreeMap::from([("env".into(), "prod".into())]),
        }
    }

    fn resources(v: serde_json::Value) -> MatchResources {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn rules_match_on_every_field_and_exclusions_win() {
        let m = resources(
            json!({"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]}),
        );
        let d = target("Deployment", true);
        assert!(matches(&m, &d, Operation::Create));
        assert!(!matches(&m, &d, Operation::Delete));
        assert!(!matches(&m, &target("Pod", true), Operation::Create));
        let m = resources(
            json!({"resourceRules": [{"apiGroups": ["*"], "apiVersions": ["*"],
            "operations": ["*"], "resources": ["*"], "scope": "Namespaced"}],
            "excludeResourceRules": [{"apiGroups": ["apps"], "apiVersions": ["*"],
            "operations": ["*"], "resources": ["deployments"], "resourceNames": ["web"]}]}),
        );
        assert!(!matches(&m, &d, Operation::Create), "excluded by name");
        assert!(matches(&m, &target("Pod", true), Operation::Create));
        assert!(
            !matches(&m, &target("Namespace", false), Operation::Create),
            "scope"
        );
        assert!(!matches(
            &resources(
                json!({"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["*"], "resources": ["pods/status"]}]})
            ),
            &target("Pod", true),
            Operation::Update
        ));
    }

    #[test]
    fn selectors_follow_the_apiservers_rules() {
        let m = resources(json!({"namespaceSelector": {"matchExpressions": [
            {"key": "env", "operator": "In", "values": ["prod"]}]}}));
        assert!(matches(&m, &target("Deployment", true), Operation::Create));
        let mut other = target("Deployment", true);
        other.namespace_labels.clear();
        assert!(!matches(&m, &other, Operation::Create));
        // Cluster-scoped objects other than Namespaces always match a namespace selector.
        let mut crb = target("ClusterRoleBinding", false);
        crb.namespace_labels.clear();
        assert!(matches(&m, &crb, Operation::Create));
        // A Namespace is matched by its own labels.
        let mut ns = target("Namespace", false);
        ns.namespace_labels = BTreeMap::from([("env".into(), "dev".into())]);
        assert!(!matches(&m, &ns, Operation::Create));
        // The object selector: the object's labels, or the old object's.
        let m = resources(json!({"objectSelector": {"matchLabels": {"app": "db"}}}));
        let mut d = target("Deployment", true);
        assert!(!matches(&m, &d, Operation::Update));
        d.old_labels = Some(BTreeMap::from([("app".into(), "db".into())]));
        assert!(matches(&m, &d, Operation::Update));
        let s: LabelSelector = serde_json::from_value(json!({"matchExpressions": [
            {"key": "app", "operator": "NotIn", "values": ["db"]},
            {"key": "gone", "operator": "DoesNotExist"}]}))
        .unwrap();
        assert!(selects(&s, &d.labels));
        assert!(selects(&LabelSelector::default(), &BTreeMap::new()));
    }
}
