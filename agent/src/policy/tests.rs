use serde_json::json;

use super::*;

fn at() -> At {
    At {
        file: "policies/p.yaml".into(),
        line: 1,
    }
}

fn load_all(objects: Vec<Value>) -> PolicySet {
    let objects: Vec<(At, Value)> = objects.into_iter().map(|o| (at(), o)).collect();
    load(&objects).unwrap_or_else(|e| panic!("{e:?}"))
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name}, "spec": spec})
}

fn binding(name: &str, policy: &str, extra: Value) -> Value {
    let mut spec = json!({"policyName": policy, "validationActions": ["Deny"]});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name}, "spec": spec})
}

fn pods() -> Value {
    json!({"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
        "operations": ["CREATE", "UPDATE"], "resources": ["pods"]}]})
}

fn pod(host_network: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop",
        "labels": {"app": "web"}}, "spec": {"hostNetwork": host_network,
        "containers": [{"name": "web", "image": "iad.ocir.io/t/web:1"}]}})
}

fn decide(set: &PolicySet, object: &Value, params: &dyn Params) -> Vec<Violation> {
    let user = User::default();
    let s = Subject {
        target: Target {
            version: "v1".into(),
            kind: "Pod".into(),
            resource: "pods".into(),
            namespaced: true,
            name: "web".into(),
            namespace: "shop".into(),
            labels: labels(object),
            ..Default::default()
        },
        operation: Operation::Create,
        object,
        old_object: None,
        namespace: None,
        user: &user,
        dry_run: false,
    };
    set.evaluate(&s, params)
}

#[test]
fn a_failed_validation_denies_with_its_message_expression_and_reason() {
    let set = load_all(vec![
        policy(
            "no-host-network",
            json!({"matchConstraints": pods(), "validations": [{
                "expression": "!object.spec.?hostNetwork.orValue(false)",
                "messageExpression": "'pod ' + object.metadata.name + ' uses the host network'",
                "reason": "Forbidden"}]}),
        ),
        binding("no-host-network", "no-host-network", json!({})),
    ]);
    assert!(decide(&set, &pod(false), &NoParams).is_empty());
    let v = decide(&set, &pod(true), &NoParams);
    assert_eq!(v.len(), 1);
    assert!(v[0].denies());
    assert_eq!(v[0].reason, "Forbidden");
    assert_eq!(
        v[0].text(),
        "ValidatingAdmissionPolicy 'no-host-network' with binding 'no-host-network' denied request: pod web uses the host network"
    );
}

/// Params: a ConfigMap of allowed registries.
struct Registries(Option<Value>);

impl Params for Registries {
    fn find(&self, api_version: &str, kind: &str, ns: Option<&str>, r: &ParamRef) -> Vec<Value> {
        assert_eq!((api_version, kind, ns), ("v1", "ConfigMap", Some("shop")));
        assert_eq!(r.name.as_deref(), Some("registries"));
        self.0.clone().into_iter().collect()
    }
}

#[test]
fn params_come_from_the_binding_and_missing_ones_follow_the_not_found_action() {
    let spec = json!({"matchConstraints": pods(),
        "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
        "variables": [{"name": "allowed", "expression": "params.data.registries.split(',')"}],
        "validations": [{"expression":
            "object.spec.containers.all(c, variables.allowed.exists(r, c.image.startsWith(r + '/')))",
            "message": "images only from allowed registries"}]});
    let deny_missing =
        json!({"paramRef": {"name": "registries", "parameterNotFoundAction": "Deny"}});
    let set = load_all(vec![
        policy("registries", spec),
        binding("registries", "registries", deny_missing),
    ]);
    let allowed = Registries(Some(
        json!({"data": {"registries": "iad.ocir.io,phx.ocir.io"}}),
    ));
    assert!(decide(&set, &pod(false), &allowed).is_empty());
    let elsewhere = Registries(Some(json!({"data": {"registries": "docker.io"}})));
    let v = decide(&set, &pod(false), &elsewhere);
    assert_eq!(v[0].message, "images only from allowed registries");
    let v = decide(&set, &pod(false), &Registries(None));
    assert!(v[0].message.contains("no params found"), "{v:?}");
}

#[test]
fn match_conditions_skip_and_errors_follow_the_failure_policy() {
    let validation = json!([{"expression": "false", "message": "always"}]);
    let skip = json!({"matchConstraints": pods(), "validations": validation,
        "matchConditions": [{"name": "only-db", "expression": "object.metadata.labels.app == 'db'"}]});
    let broken = |failure: &str| {
        json!({"matchConstraints": pods(), "validations": validation, "failurePolicy": failure,
            "matchConditions": [{"name": "broken", "expression": "object.spec.missing.field"}]})
    };
    let set = load_all(vec![
        policy("skip", skip),
        binding("skip", "skip", json!({})),
        policy("ignored", broken("Ignore")),
        binding("ignored", "ignored", json!({})),
        policy("failed", broken("Fail")),
        binding("failed", "failed", json!({})),
    ]);
    let v = decide(&set, &pod(false), &NoParams);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].policy, "failed");
    assert!(
        v[0].message.starts_with("matchCondition \"broken\""),
        "{v:?}"
    );
}

#[test]
fn a_failing_variable_fails_only_what_uses_it_and_warn_bindings_do_not_deny() {
    let spec = json!({"matchConstraints": pods(),
        "variables": [{"name": "broken", "expression": "object.spec.missing.field"},
                      {"name": "name", "expression": "object.metadata.name"}],
        "validations": [
            {"expression": "variables.name == 'db'", "message": "name"},
            {"expression": "variables.broken == 1", "message": "broken"}]});
    let set = load_all(vec![
        policy("vars", spec),
        binding(
            "vars",
            "vars",
            json!({"validationActions": ["Warn", "Audit"]}),
        ),
    ]);
    let v = decide(&set, &pod(false), &NoParams);
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(v[0].message, "name");
    assert!(
        v[1].message
            .starts_with("expression 'variables.broken == 1' resulted in error"),
        "{v:?}"
    );
    assert!(!v[0].denies());
    assert!(v[0].text().starts_with(
        "Validation failed for ValidatingAdmissionPolicy 'vars' with binding 'vars': "
    ));
}

#[test]
fn what_the_apiserver_or_the_agent_would_refuse_is_a_load_error_naming_the_place() {
    let objects: Vec<(At, Value)> = vec![
        policy(
            "authz",
            json!({"matchConstraints": pods(), "validations": [
            {"expression": "authorizer.group('').resource('pods').check('create').allowed()"}]}),
        ),
        policy("nomatch", json!({"validations": [{"expression": "true"}]})),
        binding(
            "both",
            "authz",
            json!({"validationActions": ["Deny", "Warn"]}),
        ),
        binding("orphan", "missing", json!({})),
    ]
    .into_iter()
    .map(|o| (at(), o))
    .collect();
    let errors: Vec<String> = load(&objects)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        errors,
        [
            "policies/p.yaml:1: ValidatingAdmissionPolicy/authz: spec.validations[0].expression \"authorizer.group('').resource('pods').check('create').allowed()\" uses `authorizer`, which needs the apiserver's authorizer: the agent cannot evaluate it",
            "policies/p.yaml:1: ValidatingAdmissionPolicy/nomatch: spec.matchConstraints is required",
            "policies/p.yaml:1: ValidatingAdmissionPolicyBinding/both: spec.validationActions: Deny and Warn together are not allowed (the apiserver refuses them)",
            "policies/p.yaml:1: ValidatingAdmissionPolicyBinding/orphan: names policy \"missing\", which is not loaded",
        ]
    );
}

/// A pack's policies and fixtures, from `policies/<pack>/`.
fn pack(name: &str) -> (PolicySet, Vec<Value>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .join(name);
    let read = |file: &str| -> Vec<Value> {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        serde_saphyr::from_multiple(&text).unwrap()
    };
    let objects: Vec<(At, Value)> = read("policies.yaml")
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let at = At {
                file: format!("policies/{name}/policies.yaml"),
                line: i,
            };
            (at, o)
        })
        .collect();
    let set = load(&objects).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    (set, read("fixtures.yaml"))
}

/// The allowed-registries ConfigMap the baseline fixtures assume.
struct AllowedRegistries;

impl Params for AllowedRegistries {
    fn find(&self, _: &str, kind: &str, ns: Option<&str>, r: &ParamRef) -> Vec<Value> {
        assert_eq!(kind, "ConfigMap");
        match (ns, r.name.as_deref()) {
            (Some("gitops-agent"), Some("allowed-registries")) => {
                vec![json!({"data": {"registries": "*.ocir.io, ghcr.io"}})]
            }
            _ => Vec::new(),
        }
    }
}

/// The verdict of the pack on one fixture, as the fixtures write it.
fn verdict(set: &PolicySet, object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap();
    let api_version = object["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let resource = match kind {
        "Pod" | "Secret" | "ConfigMap" | "Service" | "Deployment" | "DaemonSet" | "StatefulSet"
        | "ReplicaSet" | "Job" | "CronJob" | "RoleBinding" | "ClusterRoleBinding" => {
            format!("{}s", kind.to_lowercase())
        }
        other => panic!("no plural for {other}"),
    };
    let ns_labels = match namespace {
        "managed" => json!({"oke.gitops-agent.io/virtual-nodes": "false"}),
        _ => json!({}),
    };
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": namespace, "labels": ns_labels}});
    let user = User::default();
    let s = Subject {
        target: Target {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            resource,
            namespaced: !namespace.is_empty(),
            name: object["metadata"]["name"].as_str().unwrap().into(),
            namespace: namespace.into(),
            labels: labels(object),
            old_labels: None,
            namespace_labels: labels(&ns),
        },
        operation: Operation::Create,
        object,
        old_object: None,
        namespace: Some(&ns),
        user: &user,
        dry_run: true,
    };
    let v = set.evaluate(&s, &AllowedRegistries);
    match (v.iter().find(|v| v.denies()), v.first()) {
        (Some(d), _) => format!("deny {}", d.policy),
        (None, Some(w)) => format!("warn {}", w.policy),
        (None, None) => "allow".into(),
    }
}

#[test]
fn every_pack_fixture_gets_the_verdict_it_expects() {
    let mut count = 0;
    for name in ["virtual-nodes", "secrets", "baseline"] {
        let (set, fixtures) = pack(name);
        for f in &fixtures {
            let want = f["metadata"]["annotations"]["policy.gitops-agent.io/expect"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: a fixture without expect: {f}"));
            let subject = format!("{}/{}", f["kind"], f["metadata"]["name"]);
            assert_eq!(verdict(&set, f), want, "{name}: {subject}");
            count += 1;
        }
    }
    assert!(count >= 60, "{count} fixtures");
}
