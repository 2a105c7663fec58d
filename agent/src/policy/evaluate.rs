//! One binding of one policy against one object, as `validating/dispatcher.go` and
//! `validating/validator.go` decide it: params (none, one by name, many by selector; none
//! found admits unless the binding says Deny), then for each param the matchConditions (a
//! false one skips, wins over errors), the variables, and every validation; an error goes
//! to the failurePolicy (Fail denies, Ignore admits), a result that is not true denies.

use serde_json::Value;

use super::expr::{self, Compiled};
use super::{Binding, Params, Policy, Subject, Violation};
use kube_cel::cel::Value as Cel;

/// Longest messageExpression result the apiserver takes.
const MAX_MESSAGE: usize = 5 * 1024;

/// The violations of binding `b` of policy `p` for `s`.
pub(super) fn binding(
    p: &Policy,
    b: &Binding,
    s: &Subject<'_>,
    bound: &expr::Bound,
    params: &dyn Params,
) -> Vec<Violation> {
    let deny = |message: String, reason: &str| Violation {
        policy: p.name.clone(),
        binding: b.name.clone(),
        actions: b.actions.clone(),
        message,
        reason: reason.to_owned(),
    };
    let found = match (&p.param_kind, &b.param_ref) {
        (Some((api_version, kind)), Some(r)) => {
            let namespace = match r.namespace.as_deref() {
                Some(ns) if !ns.is_empty() => Some(ns),
                _ if s.target.namespaced => Some(s.target.namespace.as_str()),
                _ => None,
            };
            let found = params.find(api_version, kind, namespace, r);
            if found.is_empty() {
                let deny_missing = r.parameter_not_found_action.as_deref() == Some("Deny");
                return match deny_missing && p.fail_closed {
                    true => vec![deny(
                        "failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction".into(),
                        "Invalid",
                    )],
                    false => Vec::new(),
                };
            }
            found
        }
        _ => vec![Value::Null],
    };
    let mut out = Vec::new();
    for param in found {
        for (message, reason) in validate(p, bound, &param) {
            out.push(deny(message, &reason));
        }
    }
    out
}

/// Every failed validation for one param, in order: its message and reason; none admits.
fn validate(p: &Policy, bound: &expr::Bound, param: &Value) -> Vec<(String, String)> {
    // matchConditions: a false one skips the policy, whatever the errors.
    let mut ctx = bound.context(param);
    let mut failed = None;
    for (name, c) in &p.conditions {
        let error = match c.eval(&ctx) {
            Ok(Cel::Bool(true)) => continue,
            Ok(Cel::Bool(false)) => return Vec::new(),
            Ok(_) => format!("matchCondition {name:?} did not evaluate to a boolean"),
            Err(e) => format!("matchCondition {name:?}: {e}"),
        };
        failed.get_or_insert(error);
    }
    if let Some(e) = failed {
        return match p.fail_closed {
            true => vec![(e, "Invalid".into())],
            false => Vec::new(),
        };
    }
    // Variables in order, each seeing the ones before; a failed one is left out.
    let mut variables = std::collections::HashMap::new();
    for (name, c) in &p.variables {
        if let Ok(v) = c.eval(&ctx) {
            variables.insert(name.clone(), v);
            expr::set_variables(&mut ctx, &variables);
        }
    }
    let mut out = Vec::new();
    for v in &p.validations {
        let failure = match v.expression.eval(&ctx) {
            Ok(Cel::Bool(true)) => continue,
            Ok(Cel::Bool(false)) => message(v, &ctx),
            Ok(_) => error(
                &v.expression,
                "the expression did not evaluate to a boolean",
            ),
            Err(e) => error(&v.expression, &e),
        };
        match failure {
            Failure::Denied(m) => out.push((m, v.reason.clone())),
            Failure::Error(m) if p.fail_closed => out.push((m, "Invalid".into())),
            Failure::Error(_) => {}
        }
    }
    out
}

enum Failure {
    Denied(String),
    Error(String),
}

fn error(c: &Compiled, e: &str) -> Failure {
    Failure::Error(format!("expression '{}' resulted in error: {e}", c.source))
}

/// A denial's message: the messageExpression's result when it is a usable string, else
/// the message, else the expression.
fn message(v: &super::Validation, ctx: &kube_cel::cel::Context<'_>) -> Failure {
    if let Some(m) = &v.message_expression
        && let Ok(Cel::String(text)) = m.eval(ctx)
    {
        let text = text.trim();
        if !text.is_empty() && text.len() <= MAX_MESSAGE && !text.contains('\n') {
            return Failure::Denied(text.to_owned());
        }
    }
    match v.message.as_deref().map(str::trim) {
        Some(m) if !m.is_empty() => Failure::Denied(m.to_owned()),
        _ => Failure::Denied(format!("failed expression: {}", v.expression.source)),
    }
}
