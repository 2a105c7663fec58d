//! CEL for ValidatingAdmissionPolicy, on `kube-cel` (the Kubernetes libraries) over `cel`.
//! Where they differ from kube-apiserver 1.34 the agent does it the apiserver's way: object
//! keys stay raw (kube-cel's converter escapes them as CRD schemas do), `params` and
//! `namespaceObject` are always bound (null when absent), and an evaluation error is kept
//! apart from `false`. An expression is checked when it is loaded: every identifier must be
//! a VAP variable or one a macro binds, and every function one the apiserver's environment
//! has and the agent evaluates; anything else is a load-time error, never a silent allow.

use std::collections::HashMap;
use std::sync::Arc;

use kube_cel::KubeCelExt;
use kube_cel::cel::common::ast::{EntryExpr, Expr, IdedExpr};
use kube_cel::cel::objects::{Key, Map};
use kube_cel::cel::parser::Parser;
use kube_cel::cel::{Context, Value};

/// The variables a VAP expression may name (`authorizer` is not among them: it needs the
/// apiserver's authorizer, which the agent does not have offline).
pub const VARIABLES: [&str; 6] = [
    "object",
    "oldObject",
    "params",
    "namespaceObject",
    "request",
    "variables",
];

/// Functions of kube-apiserver 1.34's CEL environment that the agent evaluates: cel's
/// standard ones, and the Kubernetes libraries (strings v2, lists, sets, regex, URLs,
/// IP/CIDR, quantity, semver, format). Operators are always allowed.
const FUNCTIONS: &[&str] = &[
    // standard
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    "has",
    "all",
    "exists",
    "exists_one",
    "existsOne",
    "map",
    "filter",
    "optional.of",
    "optional.none",
    "optional.ofNonZeroValue",
    "value",
    "hasValue",
    "or",
    "orValue",
    // strings
    "charAt",
    "indexOf",
    "lastIndexOf",
    "lowerAscii",
    "upperAscii",
    "replace",
    "split",
    "substring",
    "trim",
    "join",
    "strings.quote",
    "format",
    // lists (not ext.Lists v3: slice, flatten, distinct, sort, reverse, first, last and
    // lists.range came with 1.34, and its apiserver refuses them in a policy written to it,
    // its compatibility version being N-1) and sets
    "isSorted",
    "sum",
    "min",
    "max",
    "sets.contains",
    "sets.equivalent",
    "sets.intersects",
    // regex, URLs
    "find",
    "findAll",
    "url",
    "isURL",
    "getScheme",
    "getHost",
    "getHostname",
    "getPort",
    "getEscapedPath",
    "getQuery",
    // IP and CIDR
    "ip",
    "isIP",
    "ip.isCanonical",
    "family",
    "isUnspecified",
    "isLoopback",
    "isLinkLocalMulticast",
    "isLinkLocalUnicast",
    "isGlobalUnicast",
    "cidr",
    "isCIDR",
    "containsIP",
    "containsCIDR",
    "masked",
    "prefixLength",
    // quantity and semver
    "quantity",
    "isQuantity",
    "sign",
    "isInteger",
    "asInteger",
    "asApproximateFloat",
    "add",
    "sub",
    "isGreaterThan",
    "isLessThan",
    "compareTo",
    "semver",
    "isSemver",
    "major",
    "minor",
    "patch",
    // format
    "format.dns1123Label",
    "format.dns1123Subdomain",
    "format.dns1035Label",
    "format.qualifiedName",
    "format.dns1123LabelPrefix",
    "format.dns1123SubdomainPrefix",
    "format.dns1035LabelPrefix",
    "format.labelValue",
    "format.uri",
    "format.uuid",
    "format.byte",
    "format.date",
    "format.datetime",
    "format.named",
    "validate",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("does not compile: {0}")]
    Compile(String),
    #[error("names {0:?}, which is not a variable of a ValidatingAdmissionPolicy")]
    Undeclared(String),
    #[error(
        "uses `authorizer`, which needs the apiserver's authorizer: the agent cannot evaluate it"
    )]
    Authorizer,
    #[error("calls {0}(), which the agent cannot evaluate exactly as kube-apiserver 1.34 does")]
    Function(String),
}

/// A checked, compiled expression and its source.
#[derive(Debug)]
pub struct Compiled {
    pub source: String,
    expression: IdedExpr,
}

/// Compiles `source` (optional syntax on: `object.spec.?x.orValue(y)`, in the apiserver's
/// environment since 1.28) and checks every identifier and function it uses.
pub fn compile(source: &str) -> Result<Compiled, Error> {
    let mut expression = Parser::new()
        .enable_optional_syntax(true)
        .parse(source)
        .map_err(|e| Error::Compile(e.to_string()))?;
    check(&expression, &mut Vec::new())?;
    optional_select_as_index(&mut expression);
    Ok(Compiled {
        source: source.to_owned(),
        expression,
    })
}

/// `a.?f` evaluated as `a[?'f']`: cel's optional select fails on a missing key where CEL
/// gives `optional.none()`; its optional index does what the spec says for both.
fn optional_select_as_index(e: &mut IdedExpr) {
    match &mut e.expr {
        Expr::Call(call) => {
            if call.func_name == "_?._" {
                call.func_name = "_[?_]".into();
            }
            if let Some(t) = call.target.as_mut() {
                optional_select_as_index(t);
            }
            call.args.iter_mut().for_each(optional_select_as_index);
        }
        Expr::Comprehension(c) => {
            for x in [
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ] {
                optional_select_as_index(x);
            }
        }
        Expr::List(l) => l.elements.iter_mut().for_each(optional_select_as_index),
        Expr::Map(m) => {
            for en in &mut m.entries {
                match &mut en.expr {
                    EntryExpr::MapEntry(me) => {
                        optional_select_as_index(&mut me.key);
                        optional_select_as_index(&mut me.value);
                    }
                    EntryExpr::StructField(f) => optional_select_as_index(&mut f.value),
                }
            }
        }
        Expr::Select(sel) => optional_select_as_index(&mut sel.operand),
        Expr::Struct(_) | Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// Walks `e` with the names macros bind in `scope`.
fn check(e: &IdedExpr, scope: &mut Vec<String>) -> Result<(), Error> {
    match &e.expr {
        Expr::Ident(name) => {
            if scope.iter().any(|s| s == name) || VARIABLES.contains(&name.as_str()) {
                Ok(())
            } else if name == "authorizer" {
                Err(Error::Authorizer)
            } else {
                Err(Error::Undeclared(name.clone()))
            }
        }
        Expr::Call(call) => {
            let mut name = call.func_name.clone();
            // The receiver first: `authorizer.check()` is about the authorizer. A receiver
            // that is no variable is a library's name: `sets.contains()`, `cel.bind()`.
            match call.target.as_deref() {
                Some(IdedExpr {
                    expr: Expr::Ident(ns),
                    ..
                }) if ns != "authorizer"
                    && !VARIABLES.contains(&ns.as_str())
                    && !scope.contains(ns) =>
                {
                    name = format!("{ns}.{name}");
                }
                Some(t) => check(t, scope)?,
                None => {}
            }
            let operator = name.starts_with('_') || name.starts_with('@') || name == "!_";
            if !operator && !FUNCTIONS.contains(&name.as_str()) {
                return Err(Error::Function(name));
            }
            call.args.iter().try_for_each(|a| check(a, scope))
        }
        Expr::Comprehension(c) => {
            check(&c.iter_range, scope)?;
            check(&c.accu_init, scope)?;
            let bound = [Some(&c.iter_var), c.iter_var2.as_ref(), Some(&c.accu_var)];
            let added: Vec<String> = bound.into_iter().flatten().cloned().collect();
            let n = added.len();
            scope.extend(added);
            let inner = [&c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .try_for_each(|x| check(x, scope));
            scope.truncate(scope.len() - n);
            inner
        }
        Expr::List(l) => l.elements.iter().try_for_each(|x| check(x, scope)),
        Expr::Map(m) => m.entries.iter().try_for_each(|en| match &en.expr {
            EntryExpr::MapEntry(me) => {
                check(&me.key, scope)?;
                check(&me.value, scope)
            }
            EntryExpr::StructField(f) => check(&f.value, scope),
        }),
        Expr::Select(s) => check(&s.operand, scope),
        Expr::Struct(s) => Err(Error::Function(format!(
            "{} (a message literal)",
            s.type_name
        ))),
        Expr::Literal(_) | Expr::Unspecified => Ok(()),
    }
}

/// What one evaluation sees.
#[derive(Debug, Clone, Default)]
pub struct Activation {
    pub object: serde_json::Value,
    pub old_object: serde_json::Value,
    pub params: serde_json::Value,
    pub namespace_object: serde_json::Value,
    pub request: serde_json::Value,
    /// The policy's variables evaluated so far; one that failed is left out, so only the
    /// expressions that use it fail (the apiserver's lazy variables behave so).
    pub variables: HashMap<String, Value>,
}

/// The outcome of one expression: a value, or why it could not be had.
pub type Outcome = Result<Value, String>;

impl Compiled {
    /// Evaluates against `a`.
    pub fn eval(&self, ctx: &Context<'_>) -> Outcome {
        ctx.resolve(&self.expression).map_err(|e| e.to_string())
    }
}

/// The functions, registered once: every evaluation's context is a scope inside it.
static LIBRARIES: std::sync::LazyLock<Context<'static>> = std::sync::LazyLock::new(|| {
    let mut ctx = Context::default();
    ctx.register_all();
    ctx
});

/// An activation's object, old object, namespace and request as CEL, converted once for
/// every policy that judges the same object.
pub struct Bound {
    values: Vec<(&'static str, Value)>,
}

impl Bound {
    pub fn new(a: &Activation) -> Bound {
        let values = vec![
            ("object", to_cel(&a.object)),
            ("oldObject", to_cel(&a.old_object)),
            ("namespaceObject", to_cel(&a.namespace_object)),
            ("request", to_cel(&a.request)),
        ];
        Bound { values }
    }

    /// A context with the Kubernetes libraries, these values and `params` bound.
    pub fn context(&self, params: &serde_json::Value) -> Context<'static> {
        let mut ctx = LIBRARIES.new_inner_scope();
        for (name, value) in &self.values {
            ctx.add_variable_from_value(*name, value.clone());
        }
        ctx.add_variable_from_value("params", to_cel(params));
        set_variables(&mut ctx, &HashMap::new());
        ctx
    }
}

/// A context with the Kubernetes libraries and `a`'s variables bound.
pub fn context(a: &Activation) -> Context<'static> {
    let mut ctx = Bound::new(a).context(&a.params);
    set_variables(&mut ctx, &a.variables);
    ctx
}

/// Binds `variables` (the policy's, evaluated so far) in `ctx`.
pub fn set_variables(ctx: &mut Context<'_>, variables: &HashMap<String, Value>) {
    let vars: HashMap<Key, Value> = variables
        .iter()
        .map(|(k, v)| (Key::String(Arc::new(k.clone())), v.clone()))
        .collect();
    let map = Map {
        map: Arc::new(vars),
    };
    ctx.add_variable_from_value("variables", Value::Map(map));
}

/// JSON as CEL, keys as they are (`metadata.labels['app.kubernetes.io/name']` finds its
/// key); integers as int, others as double, as the apiserver's unstructured conversion.
pub fn to_cel(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.iter().map(to_cel).collect()))
        }
        serde_json::Value::Object(m) => {
            let map: HashMap<Key, Value> = m
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
mod tests;
