//! The agent's policy verdicts against the real apiserver's, fixture by fixture: each pack
//! of `policies/` is installed in the local control plane as the ValidatingAdmissionPolicy
//! objects it is, every fixture is sent with `kubectl apply --server-side --dry-run=server`
//! (kubectl built at the control plane's version), and the apiserver's answer (denied with
//! which message, warned, admitted) must be the agent's, evaluated on the same object. The
//! agent is asked twice: on the manifest as written, and on the apiserver's dry-run result
//! (defaulted); both must agree for every fixture of the packs.

#[path = "../harness/mod.rs"]
mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gitops_agent::policy::{self, Action, At, Operation, Params, PolicySet, Subject, Target, User};
use harness::control_plane;
use k8s_openapi::api::admissionregistration::v1::ParamRef;
use serde_json::{Value, json};

const PACKS: [&str; 3] = ["virtual-nodes", "secrets", "baseline"];
const WAIT: Duration = Duration::from_secs(60);

/// What one side decided about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Allow,
    /// The warnings, sorted.
    Warn(Vec<String>),
    /// The denial's message (the apiserver gives the first only).
    Deny(Vec<String>),
}

fn read(pack: &str, file: &str) -> Vec<Value> {
    let path = harness::repo_root().join("policies").join(pack).join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_multiple(&text).unwrap()
}

/// `kubectl` with the test cluster's kubeconfig, `stdin` fed to it.
fn kubectl(args: &[&str], stdin: &Value) -> std::process::Output {
    let mut child = Command::new(harness::kubectl())
        .args(args)
        .arg("--kubeconfig")
        .arg(control_plane().kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.to_string().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The apiserver's verdict on `object` (a server-side dry run), and the object it admitted.
fn apiserver(object: &Value) -> (Verdict, Option<Value>) {
    let out = kubectl(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=parity",
            "-o",
            "json",
            "-f",
            "-",
        ],
        object,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<String> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("Warning: "))
        .map(str::to_owned)
        .collect();
    if !out.status.success() {
        let denied = stderr
            .lines()
            .find_map(|l| {
                l.find("ValidatingAdmissionPolicy '")
                    .map(|i| l[i..].to_owned())
            })
            .unwrap_or_else(|| panic!("not a policy denial: {stderr}"));
        return (Verdict::Deny(vec![denied]), None);
    }
    let admitted: Value = serde_json::from_slice(&out.stdout).unwrap();
    match warnings.is_empty() {
        true => (Verdict::Allow, Some(admitted)),
        false => (Verdict::Warn(sorted(warnings)), Some(admitted)),
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The params the apiserver finds: the allowed-registries ConfigMap this test creates.
struct Registries;

impl Params for Registries {
    fn find(&self, _: &str, kind: &str, ns: Option<&str>, r: &ParamRef) -> Vec<Value> {
        match (kind, ns, r.name.as_deref()) {
            ("ConfigMap", Some("gitops-agent"), Some("allowed-registries")) => {
                vec![registries()]
            }
            _ => Vec::new(),
        }
    }
}

fn registries() -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "allowed-registries", "namespace": "gitops-agent"},
        "data": {"registries": "*.ocir.io, ghcr.io"}})
}

fn namespace(name: &str) -> Value {
    let labels = match name {
        "managed" => json!({"oke.gitops-agent.io/virtual-nodes": "false"}),
        _ => json!({}),
    };
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// The agent's verdict on `object`, as the apiserver would word it.
fn agent(set: &PolicySet, object: &Value, user: &User) -> Verdict {
    let kind = object["kind"].as_str().unwrap();
    let api_version = object["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let ns_name = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let ns = namespace(ns_name);
    let s = Subject {
        target: Target {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            resource: format!("{}s", kind.to_lowercase()),
            namespaced: !ns_name.is_empty(),
            name: object["metadata"]["name"].as_str().unwrap().into(),
            namespace: ns_name.into(),
            labels: policy::labels(object),
            old_labels: None,
            namespace_labels: policy::labels(&ns),
        },
        operation: Operation::Create,
        object,
        old_object: None,
        namespace: Some(&ns),
        user,
        dry_run: true,
    };
    let violations = set.evaluate(&s, &Registries);
    let denials: Vec<String> = violations
        .iter()
        .filter(|v| v.denies())
        .map(|v| v.text())
        .collect();
    if !denials.is_empty() {
        return Verdict::Deny(denials);
    }
    // Audit findings are no warning: the apiserver writes them to its audit log.
    let warnings: Vec<String> = violations
        .iter()
        .filter(|v| v.actions.contains(&Action::Warn))
        .map(|v| v.text())
        .collect();
    match warnings.is_empty() {
        true => Verdict::Allow,
        false => Verdict::Warn(sorted(warnings)),
    }
}

/// Whether the two agree: the same kind of verdict, the same warnings, and the apiserver's
/// one denial among the agent's.
fn agree(server: &Verdict, agent: &Verdict) -> bool {
    match (server, agent) {
        (Verdict::Deny(s), Verdict::Deny(a)) => a.contains(&s[0]),
        (s, a) => s == a,
    }
}

/// `kubectl apply --server-side` of `object` as the test's field manager.
fn apply(object: &Value) {
    let out = kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager=parity",
            "-f",
            "-",
        ],
        object,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Applies (or deletes) the pack's policies and waits until the apiserver enforces (or
/// stops enforcing) every one of them: each policy is judged by the first fixture that
/// expects it to deny or warn (the apiserver loads each policy and binding on its own).
fn install(pack: &str, on: bool, cases: &[Value]) {
    for o in read(pack, "policies.yaml") {
        match on {
            true => apply(&o),
            false => {
                let out = kubectl(&["delete", "-f", "-"], &o);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    let expect = |c: &Value| {
        c["metadata"]["annotations"]["policy.gitops-agent.io/expect"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let mut probes: Vec<&Value> = Vec::new();
    for c in cases {
        let e = expect(c);
        if e != "allow" && !probes.iter().any(|p| expect(p) == e) {
            probes.push(c);
        }
    }
    let started = Instant::now();
    for probe in probes {
        while (apiserver(probe).0 != Verdict::Allow) != on {
            assert!(
                started.elapsed() < WAIT,
                "{pack}: the apiserver never {} {}",
                if on { "enforced" } else { "let go of" },
                expect(probe)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[tokio::test]
async fn every_fixture_gets_the_apiservers_verdict_from_the_agent() {
    harness::init_logging();
    let cp = control_plane();
    for ns in ["plain", "managed", "gitops-agent"] {
        apply(&namespace(ns));
    }
    apply(&registries());
    let id = gitops_agent::cluster::identify(&cp.client().await)
        .await
        .unwrap();
    let user = User {
        username: id.username,
        groups: id.groups,
        ..Default::default()
    };
    let (mut fixtures, mut disagreements) = (0, Vec::new());
    for pack in PACKS {
        let objects: Vec<(At, Value)> = read(pack, "policies.yaml")
            .into_iter()
            .map(|o| (At::default(), o))
            .collect();
        let set = policy::load(&objects).unwrap_or_else(|e| panic!("{pack}: {e:?}"));
        let cases = read(pack, "fixtures.yaml");
        // The defaulted objects, before the pack is enforced (nothing denies them then).
        let defaulted: Vec<Value> = cases
            .iter()
            .map(|c| {
                apiserver(c)
                    .1
                    .unwrap_or_else(|| panic!("{pack}: {c} refused without policies"))
            })
            .collect();
        install(pack, true, &cases);
        for (case, defaulted) in cases.iter().zip(&defaulted) {
            let (server, _) = apiserver(case);
            let subject = format!(
                "{pack}: {}/{}",
                case["kind"].as_str().unwrap(),
                case["metadata"]["name"].as_str().unwrap()
            );
            for (input, object) in [("manifest", case), ("dry-run result", defaulted)] {
                let mine = agent(&set, object, &user);
                if !agree(&server, &mine) {
                    disagreements.push(format!(
                        "{subject} ({input}): apiserver {server:?}, agent {mine:?}"
                    ));
                }
            }
            fixtures += 1;
        }
        install(pack, false, &cases);
    }
    println!("{fixtures} fixtures compared with the apiserver");
    assert!(fixtures >= 60, "{fixtures}");
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}
