use serde_json::json;

use super::*;

fn eval(source: &str, a: &Activation) -> Outcome {
    compile(source).unwrap().eval(&context(a))
}

fn deployment() -> Activation {
    Activation {
        object: json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app.kubernetes.io/name": "web", "tier-1": "x"}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [
                {"name": "web", "image": "iad.ocir.io/tenancy/web:1.2", "resources": {"limits": {"memory": "256Mi"}}},
                {"name": "side", "image": "busybox"}
            ]}}}
        }),
        ..Default::default()
    }
}

#[test]
fn keys_stay_raw_and_absent_variables_are_null() {
    let a = deployment();
    for (expr, want) in [
        (
            "object.metadata.labels['app.kubernetes.io/name'] == 'web'",
            true,
        ),
        ("object.metadata.labels['tier-1'] == 'x'", true),
        ("has(object.metadata.labels)", true),
        ("has(object.spec.paused)", false),
        ("params == null", true),
        ("namespaceObject == null", true),
        ("oldObject == null", true),
        ("object.spec.replicas > 1", true),
    ] {
        assert_eq!(eval(expr, &a), Ok(Value::Bool(want)), "{expr}");
    }
}

#[test]
fn the_kubernetes_libraries_are_there() {
    let a = deployment();
    for expr in [
        "object.spec.template.spec.containers.all(c, c.image != '')",
        "!object.spec.?paused.orValue(false)",
        "object.metadata.?labels['tier-1'].hasValue()",
        "object.spec.template.spec.containers.exists(c, c.name == 'side')",
        "object.spec.template.spec.containers.map(c, c.name).join(',') == 'web,side'",
        "quantity(object.spec.template.spec.containers[0].resources.limits.memory).isLessThan(quantity('1Gi'))",
        "'Web'.lowerAscii() == 'web'",
        "'a,b'.split(',').size() == 2",
        "object.spec.template.spec.containers[0].image.find('[a-z]+\\\\.ocir\\\\.io') == 'iad.ocir.io'",
        "isCIDR('10.0.0.0/16') && cidr('10.0.0.0/16').containsIP(ip('10.0.1.1'))",
        "url('https://iad.ocir.io/v2/').getHost() == 'iad.ocir.io'",
        "[1, 2, 3].isSorted() && [1, 2, 3].sum() == 6",
        "sets.contains([1, 2, 3], [1])",
        "!format.dns1123Label().validate('web').hasValue()",
        "semver('1.2.3').isLessThan(semver('1.10.0'))",
    ] {
        assert_eq!(eval(expr, &a), Ok(Value::Bool(true)), "{expr}");
    }
}

#[test]
fn an_error_is_not_false() {
    let a = deployment();
    let e = eval("object.spec.missing.field == 1", &a).unwrap_err();
    assert!(!e.is_empty());
}

#[test]
fn what_the_agent_cannot_evaluate_exactly_is_refused_when_loaded() {
    for (expr, want) in [
        (
            "authorizer.group('').resource('pods').check('create').allowed()",
            Error::Authorizer,
        ),
        ("self.x > 0", Error::Undeclared("self".into())),
        ("cel.bind(x, 1, x > 0)", Error::Function("cel.bind".into())),
        (
            "math.greatest(1, 2) == 2",
            Error::Function("math.greatest".into()),
        ),
        (
            "base64.encode(b'x') == 'eA=='",
            Error::Function("base64.encode".into()),
        ),
        // ext.Lists v3: the 1.34 apiserver refuses it in a policy written to it.
        (
            "[[1], [2]].flatten() == [1, 2]",
            Error::Function("flatten".into()),
        ),
    ] {
        let got = compile(expr).map(|_| ()).unwrap_err();
        assert_eq!(got, want, "{expr}");
    }
    assert!(matches!(
        compile("object.spec ==").map(|_| ()),
        Err(Error::Compile(_))
    ));
    // Two-variable comprehensions (the apiserver's since 1.32) are not cel's.
    assert!(
        compile("{'a': 1}.all(k, v, v > 0)").is_err(),
        "two-variable all() must be refused"
    );
    // A macro's variable is in scope inside it, and only there.
    compile("object.spec.template.spec.containers.all(c, c.name != '')").unwrap();
    assert_eq!(
        compile("object.spec.template.spec.containers.all(c, true) && c.name == ''")
            .map(|_| ())
            .unwrap_err(),
        Error::Undeclared("c".into())
    );
}
