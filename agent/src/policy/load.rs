//! Loading policies: each ValidatingAdmissionPolicy and binding parsed with its file and
//! line, checked the way the apiserver's validation would check it when it is written, and
//! every expression compiled and checked. All problems are reported at once.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use serde_json::Value;

use super::expr::{self, Compiled};
use super::{Action, At, BadExpression, Binding, Error, Policy, PolicySet, Validation};

const GROUP_VERSION: &str = "admissionregistration.k8s.io/v1";

/// The policies and bindings among `objects` (others are ignored); every problem found.
pub fn load(objects: &[(At, Value)]) -> Result<PolicySet, Vec<Error>> {
    let mut set = PolicySet::default();
    let mut errors = Vec::new();
    for (at, object) in objects {
        if object["apiVersion"] != GROUP_VERSION {
            continue;
        }
        match object["kind"].as_str() {
            Some("ValidatingAdmissionPolicy") => match policy(at, object) {
                Ok(p) => set.policies.push(p),
                Err(mut e) => errors.append(&mut e),
            },
            Some("ValidatingAdmissionPolicyBinding") => match binding(at, object) {
                Ok(b) => set.bindings.push(b),
                Err(e) => errors.push(e),
            },
            _ => {}
        }
    }
    for b in &set.bindings {
        if !set.policies.iter().any(|p| p.name == b.policy) {
            errors.push(invalid(
                &b.at,
                &format!("ValidatingAdmissionPolicyBinding/{}", b.name),
                format!("names policy {:?}, which is not loaded", b.policy),
            ));
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

fn invalid(at: &At, subject: &str, reason: String) -> Error {
    Error::Invalid {
        file: at.file.clone(),
        line: at.line,
        subject: subject.to_owned(),
        reason,
    }
}

/// Compiles the expressions of one policy, collecting every failure.
struct Compiler<'a> {
    at: &'a At,
    subject: String,
    errors: Vec<Error>,
}

impl Compiler<'_> {
    fn compile(&mut self, field: String, source: &str) -> Option<Compiled> {
        match expr::compile(source) {
            Ok(c) => Some(c),
            Err(source_err) => {
                self.errors.push(Error::Expression(Box::new(BadExpression {
                    file: self.at.file.clone(),
                    line: self.at.line,
                    subject: self.subject.clone(),
                    field,
                    expression: source.to_owned(),
                    source: source_err,
                })));
                None
            }
        }
    }

    fn reject(&mut self, reason: String) {
        self.errors.push(invalid(self.at, &self.subject, reason));
    }
}

fn policy(at: &At, object: &Value) -> Result<Policy, Vec<Error>> {
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let subject = format!("ValidatingAdmissionPolicy/{name}");
    let vap: ValidatingAdmissionPolicy = serde_json::from_value(object.clone()).map_err(|e| {
        vec![invalid(
            at,
            &subject,
            format!("not a ValidatingAdmissionPolicy: {e}"),
        )]
    })?;
    let mut c = Compiler {
        at,
        subject,
        errors: Vec::new(),
    };
    let spec = vap.spec.unwrap_or_default();
    let Some(constraints) = spec.match_constraints else {
        c.reject("spec.matchConstraints is required".into());
        return Err(c.errors);
    };
    if spec
        .audit_annotations
        .as_ref()
        .is_some_and(|a| !a.is_empty())
    {
        c.reject("spec.auditAnnotations: the agent does not evaluate audit annotations".into());
    }
    let conditions = spec.match_conditions.unwrap_or_default();
    if conditions.len() > 64 {
        c.reject("spec.matchConditions: at most 64".into());
    }
    let conditions: Vec<(String, Compiled)> = conditions
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let field = format!("spec.matchConditions[{i}] ({})", m.name);
            Some((m.name.clone(), c.compile(field, &m.expression)?))
        })
        .collect();
    let variables: Vec<(String, Compiled)> = spec
        .variables
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let field = format!("spec.variables[{i}] ({})", v.name);
            Some((v.name.clone(), c.compile(field, &v.expression)?))
        })
        .collect();
    let validations = validations(&mut c, spec.validations.unwrap_or_default());
    if validations.is_empty() && c.errors.is_empty() {
        c.reject("spec.validations: at least one is required".into());
    }
    let param_kind = spec.param_kind.map(|k| {
        (
            k.api_version.unwrap_or_default(),
            k.kind.unwrap_or_default(),
        )
    });
    let fail_closed = spec.failure_policy.as_deref() != Some("Ignore");
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(Policy {
        name,
        at: at.clone(),
        fail_closed,
        param_kind,
        constraints,
        conditions,
        variables,
        validations,
    })
}

fn validations(
    c: &mut Compiler<'_>,
    list: Vec<k8s_openapi::api::admissionregistration::v1::Validation>,
) -> Vec<Validation> {
    let mut out = Vec::new();
    for (i, v) in list.into_iter().enumerate() {
        let expression = c.compile(format!("spec.validations[{i}].expression"), &v.expression);
        let message_expression = match &v.message_expression {
            Some(m) => match c.compile(format!("spec.validations[{i}].messageExpression"), m) {
                Some(m) => Some(m),
                None => continue,
            },
            None => None,
        };
        if v.message.as_deref().is_some_and(|m| m.contains('\n')) {
            c.reject(format!(
                "spec.validations[{i}].message must not contain line breaks"
            ));
        }
        if let Some(expression) = expression {
            out.push(Validation {
                expression,
                message: v.message,
                message_expression,
                reason: v.reason.unwrap_or_else(|| "Invalid".into()),
            });
        }
    }
    out
}

fn binding(at: &At, object: &Value) -> Result<Binding, Error> {
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let subject = format!("ValidatingAdmissionPolicyBinding/{name}");
    let b: ValidatingAdmissionPolicyBinding =
        serde_json::from_value(object.clone()).map_err(|e| {
            invalid(
                at,
                &subject,
                format!("not a ValidatingAdmissionPolicyBinding: {e}"),
            )
        })?;
    let spec = b.spec.unwrap_or_default();
    let policy = spec.policy_name.unwrap_or_default();
    if policy.is_empty() {
        return Err(invalid(at, &subject, "spec.policyName is required".into()));
    }
    let mut actions = Vec::new();
    for a in spec.validation_actions.unwrap_or_default() {
        let action = match a.as_str() {
            "Deny" => Action::Deny,
            "Warn" => Action::Warn,
            "Audit" => Action::Audit,
            other => {
                let why = format!("spec.validationActions: unknown action {other:?}");
                return Err(invalid(at, &subject, why));
            }
        };
        if actions.contains(&action) {
            let why = format!("spec.validationActions: {a} twice");
            return Err(invalid(at, &subject, why));
        }
        actions.push(action);
    }
    if actions.is_empty() {
        return Err(invalid(
            at,
            &subject,
            "spec.validationActions is required".into(),
        ));
    }
    if actions.contains(&Action::Deny) && actions.contains(&Action::Warn) {
        let why = "spec.validationActions: Deny and Warn together are not allowed (the apiserver refuses them)";
        return Err(invalid(at, &subject, why.into()));
    }
    Ok(Binding {
        name,
        at: at.clone(),
        policy,
        param_ref: spec.param_ref,
        resources: spec.match_resources,
        actions,
    })
}
