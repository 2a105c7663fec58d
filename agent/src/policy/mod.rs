//! Policies: ValidatingAdmissionPolicy files (admissionregistration.k8s.io/v1) with their
//! bindings, loaded and checked once, then evaluated by the agent on every object of a
//! revision before anything is written, the way kube-apiserver 1.34 evaluates them
//! (`policy/validating` of k8s.io/apiserver): the policy's matchConstraints, each binding's
//! matchResources, params, matchConditions, variables, validations with message,
//! messageExpression and reason, failurePolicy, and the binding's validationActions. The
//! same files can be installed in a cluster as real admission control.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::admissionregistration::v1::{MatchResources, ParamRef};
use serde_json::Value;

pub mod expr;
pub mod matching;

use expr::{Activation, Compiled};
pub use matching::{Operation, Target};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Expression(Box<BadExpression>),
    #[error("{file}:{line}: {subject}: {reason}")]
    Invalid {
        file: String,
        line: usize,
        subject: String,
        reason: String,
    },
}

/// An expression of a policy that the agent refuses, and where it is.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {subject}: {field} {expression:?} {source}")]
pub struct BadExpression {
    pub file: String,
    pub line: usize,
    pub subject: String,
    pub field: String,
    pub expression: String,
    #[source]
    pub source: expr::Error,
}

/// Where a policy file's object was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct At {
    pub file: String,
    pub line: usize,
}

/// What a binding does with a failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// The revision is refused.
    Deny,
    /// Reported in the change set and alerts.
    Warn,
    /// Reported as an audit finding.
    Audit,
}

#[derive(Debug)]
struct Validation {
    expression: Compiled,
    message: Option<String>,
    message_expression: Option<Compiled>,
    reason: String,
}

/// A loaded, checked policy.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub at: At,
    fail_closed: bool,
    param_kind: Option<(String, String)>,
    constraints: MatchResources,
    conditions: Vec<(String, Compiled)>,
    variables: Vec<(String, Compiled)>,
    validations: Vec<Validation>,
}

/// A loaded, checked binding.
#[derive(Debug)]
pub struct Binding {
    pub name: String,
    pub at: At,
    pub policy: String,
    param_ref: Option<ParamRef>,
    resources: Option<MatchResources>,
    pub actions: Vec<Action>,
}

/// Policies and their bindings, ready to evaluate.
#[derive(Debug, Default)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
    pub bindings: Vec<Binding>,
}

/// One failed validation of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub policy: String,
    pub binding: String,
    pub actions: Vec<Action>,
    /// The validation's message (messageExpression, message, or the expression).
    pub message: String,
    pub reason: String,
}

impl Violation {
    pub fn denies(&self) -> bool {
        self.actions.contains(&Action::Deny)
    }

    /// As the apiserver words it: a denial, or a warning.
    pub fn text(&self) -> String {
        let (p, b, m) = (&self.policy, &self.binding, &self.message);
        match self.denies() {
            true => {
                format!("ValidatingAdmissionPolicy '{p}' with binding '{b}' denied request: {m}")
            }
            false => format!(
                "Validation failed for ValidatingAdmissionPolicy '{p}' with binding '{b}': {m}"
            ),
        }
    }
}

/// The objects params are looked up in: the revision's, then the cluster's.
pub trait Params {
    /// Objects of `api_version`/`kind` named `name` or selected by `selector`, in
    /// `namespace` when given.
    fn find(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        reference: &ParamRef,
    ) -> Vec<Value>;
}

/// No params anywhere.
pub struct NoParams;

impl Params for NoParams {
    fn find(&self, _: &str, _: &str, _: Option<&str>, _: &ParamRef) -> Vec<Value> {
        Vec::new()
    }
}

/// Who writes, as `request.userInfo` says.
#[derive(Debug, Clone, Default)]
pub struct User {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// One object to decide on.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub target: Target,
    pub operation: Operation,
    pub object: &'a Value,
    pub old_object: Option<&'a Value>,
    /// The object's Namespace (live, or from the revision); none for cluster-scoped ones.
    pub namespace: Option<&'a Value>,
    pub user: &'a User,
    pub dry_run: bool,
}

mod evaluate;
mod load;

pub use load::load;

impl PolicySet {
    /// The (apiVersion, kind) of every policy's params.
    pub fn param_kinds(&self) -> std::collections::HashSet<(String, String)> {
        self.policies
            .iter()
            .filter_map(|p| p.param_kind.clone())
            .collect()
    }

    /// The params bindings name: (apiVersion, kind, namespace, name); the namespace empty
    /// when the binding gives none.
    pub fn named_params(&self) -> Vec<(String, String, String, String)> {
        let mut out = Vec::new();
        for b in &self.bindings {
            let Some(p) = self.policies.iter().find(|p| p.name == b.policy) else {
                continue;
            };
            let (Some((api_version, kind)), Some(r)) = (&p.param_kind, &b.param_ref) else {
                continue;
            };
            if let Some(name) = &r.name {
                let ns = r.namespace.clone().unwrap_or_default();
                out.push((api_version.clone(), kind.clone(), ns, name.clone()));
            }
        }
        out
    }

    /// Every violation of `s`: each matching policy, each matching binding of it, each
    /// param.
    pub fn evaluate(&self, s: &Subject<'_>, params: &dyn Params) -> Vec<Violation> {
        let mut out = Vec::new();
        // Converted to CEL once, at the first policy that matches.
        let mut bound: Option<expr::Bound> = None;
        for p in &self.policies {
            if !matching::matches(&p.constraints, &s.target, s.operation) {
                continue;
            }
            for b in self.bindings.iter().filter(|b| b.policy == p.name) {
                let narrowed = b.resources.as_ref();
                if narrowed.is_some_and(|m| !matching::matches(m, &s.target, s.operation)) {
                    continue;
                }
                let bound = bound.get_or_insert_with(|| expr::Bound::new(&activation(s)));
                out.extend(evaluate::binding(p, b, s, bound, params));
            }
        }
        out
    }
}

/// `request` as VAP sees it: every field of the typed AdmissionRequest, zero when unset.
fn request(s: &Subject<'_>) -> Value {
    let t = &s.target;
    let kind = serde_json::json!({"group": t.group, "version": t.version, "kind": t.kind});
    let resource =
        serde_json::json!({"group": t.group, "version": t.version, "resource": t.resource});
    serde_json::json!({
        "uid": "",
        "kind": kind, "resource": resource, "subResource": "",
        "requestKind": kind, "requestResource": resource, "requestSubResource": "",
        "name": t.name, "namespace": t.namespace,
        "operation": s.operation.as_str(),
        "userInfo": {"username": s.user.username, "uid": s.user.uid, "groups": s.user.groups, "extra": {}},
        "dryRun": s.dry_run,
        "options": null,
    })
}

/// `namespaceObject`: the Namespace without managedFields and ownerReferences, as the
/// apiserver filters it; null for cluster-scoped objects.
fn namespace_object(s: &Subject<'_>) -> Value {
    if !s.target.namespaced {
        return Value::Null;
    }
    let Some(ns) = s.namespace else {
        return Value::Null;
    };
    let mut ns = ns.clone();
    if let Some(m) = ns.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("ownerReferences");
    }
    ns
}

/// The labels of `object`, for matching.
pub fn labels(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The activation for one object, params and variables still to come.
fn activation(s: &Subject<'_>) -> Activation {
    Activation {
        object: s.object.clone(),
        old_object: s.old_object.cloned().unwrap_or(Value::Null),
        params: Value::Null,
        namespace_object: namespace_object(s),
        request: request(s),
        variables: HashMap::new(),
    }
}

#[cfg(test)]
mod tests;
