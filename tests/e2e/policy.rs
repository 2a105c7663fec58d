//! Policies in a sync, against the real control plane: with the virtual-nodes pack, a commit
//! that adds a DaemonSet is denied with its file, line, policy and binding, and nothing of
//! it reaches the cluster (the last good revision stays applied); a warning is reported and
//! does not stop a revision; a policy the repository carries judges the sync's own objects;
//! `validate` exits 1 on the denied directory and 0 on the good one.

#[path = "../harness/git.rs"]
mod git;
#[path = "../harness/mod.rs"]
mod harness;

use std::path::Path;
use std::process::Command;

use harness::{TestNamespace, control_plane};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;

fn run(args: &[&str], config: &Path, dir: Option<&Path>) -> (i32, String) {
    let (code, text) = harness::agent_cli(args, config, dir);
    (code.unwrap_or(-1), text)
}

fn deployment(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  \
         selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    \
         spec: {{containers: [{{name: {name}, image: \"iad.ocir.io/t/{name}:1\"}}]}}\n"
    )
}

const DAEMONSET: &str = "# the node agent, one per node\napiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: log-agent}\n\
    spec:\n  selector: {matchLabels: {app: log}}\n  template:\n    metadata: {labels: {app: log}}\n    \
    spec: {containers: [{name: log, image: \"iad.ocir.io/t/log:1\"}]}\n";

/// A policy the repository carries: every ConfigMap of the sync says who owns it.
const OWNED: &str = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\n\
    metadata: {name: owned-configmaps}\nspec:\n  matchConstraints:\n    resourceRules:\n      \
    - {apiGroups: [\"\"], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [configmaps]}\n  \
    validations:\n    - expression: \"has(object.metadata.labels) && 'team' in object.metadata.labels\"\n      \
    messageExpression: \"'ConfigMap ' + object.metadata.name + ' names no team'\"\n---\n\
    apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\n\
    metadata: {name: owned-configmaps}\nspec: {policyName: owned-configmaps, validationActions: [Deny]}\n";

#[tokio::test]
async fn a_denied_revision_changes_nothing_and_names_file_line_and_policy() {
    harness::init_logging();
    let client = control_plane().client().await;
    let agent_ns = TestNamespace::create(&client, "policy-agent").await;
    let ns = TestNamespace::create(&client, "policy").await;
    let upstream = git::Upstream::new();
    let repo = upstream.create("policed");
    repo.push(
        "main",
        &[
            ("app/web.yaml", &deployment("web", 1)),
            ("app/settings.yaml", &harness::cm("settings", "1")),
        ],
        &[],
    );
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "stateDir: {state}\nnamespace: {agent}\npolicies: {{dir: {dir}, packs: [virtual-nodes]}}\n\
             sources:\n  - {{name: repo, url: {url}}}\n\
             syncs:\n  - {{name: app, source: repo, path: app, namespace: {ns}, health: {{wait: false}}}}\n",
            state = work.path().display(),
            agent = agent_ns.name,
            dir = harness::repo_root().join("policies").display(),
            url = repo.file_url(),
            ns = ns.name,
        ),
    )
    .unwrap();
    let (code, out) = run(&["sync", "--once"], &config, None);
    assert_eq!(code, 0, "{out}");

    // A DaemonSet arrives with a ConfigMap change: the whole revision stops.
    let commit = repo.push(
        "main",
        &[
            ("app/log-agent.yaml", DAEMONSET),
            ("app/settings.yaml", &harness::cm("settings", "2")),
        ],
        &[],
    );
    let (code, out) = run(&["sync", "--once"], &config, None);
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "app/log-agent.yaml:2: DaemonSet/{ns}/log-agent: ValidatingAdmissionPolicy 'virtual-nodes-no-daemonsets' \
         with binding 'virtual-nodes-no-daemonsets' denied request: DaemonSet log-agent: OKE virtual nodes cannot run DaemonSets",
        ns = ns.name
    );
    assert!(out.contains(&want), "{want}\nin:\n{out}");
    assert!(
        out.contains(&format!(
            "{commit} is denied by policy; nothing was applied"
        )),
        "{out}"
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let value = cms.get("settings").await.unwrap().data.unwrap()["value"].clone();
    assert_eq!(value, "1", "the last good revision stays applied");
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    assert!(daemonsets.get_opt("log-agent").await.unwrap().is_none());

    // `validate` says the same offline, with exit codes.
    let tree = work.path().join("checkout");
    let ok = Command::new("git")
        .args(["clone", "--quiet"])
        .arg(repo.path())
        .arg(&tree)
        .status()
        .unwrap();
    assert!(ok.success());
    let dir = harness::repo_root().join("policies").display().to_string();
    let validate = || {
        let args = [
            "validate",
            "app",
            "--pack",
            "virtual-nodes",
            "--policies",
            &dir,
        ];
        run(&args, &config, Some(&tree))
    };
    let (code, out) = validate();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("log-agent.yaml:2: DaemonSet/default/log-agent: ValidatingAdmissionPolicy 'virtual-nodes-no-daemonsets'"), "{out}");

    // Without the DaemonSet, and three replicas without a fault-domain spread: a warning,
    // applied all the same.
    repo.push(
        "main",
        &[("app/web.yaml", &deployment("web", 3))],
        &["app/log-agent.yaml"],
    );
    let (code, out) = run(&["sync", "--once"], &config, None);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("  policy: app/web.yaml:1: Deployment/") && out.contains("Validation failed for ValidatingAdmissionPolicy 'virtual-nodes-fault-domain-spread'"),
        "{out}"
    );
    let value = cms.get("settings").await.unwrap().data.unwrap()["value"].clone();
    assert_eq!(value, "2");
    let checkout = Command::new("git")
        .args(["-C"])
        .arg(&tree)
        .args(["pull", "--quiet"])
        .status()
        .unwrap();
    assert!(checkout.success());
    let (code, out) = validate();
    assert_eq!(code, 0, "{out}");

    // A policy the repository carries judges the sync's own objects.
    repo.push(
        "main",
        &[
            ("app/policy.yaml", OWNED),
            ("app/other.yaml", &harness::cm("other", "1")),
        ],
        &[],
    );
    let (code, out) = run(&["sync", "--once"], &config, None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("app/other.yaml:1: ConfigMap/{}/other: ValidatingAdmissionPolicy 'owned-configmaps' with binding 'owned-configmaps' denied request: ConfigMap other names no team", ns.name)), "{out}");
    assert!(cms.get_opt("other").await.unwrap().is_none());
}

/// A platform team's sync applies a policy (bound to the application's namespace, so the
/// apiserver enforces it there too); the application's sync names it in
/// `policies.fromSyncs` and its revision is judged by it before anything is written.
#[tokio::test]
async fn an_application_sync_passes_the_policies_a_platform_sync_applied() {
    harness::init_logging();
    let client = control_plane().client().await;
    let agent_ns = TestNamespace::create(&client, "platform-agent").await;
    let app_ns = TestNamespace::create(&client, "tenant").await;
    let upstream = git::Upstream::new();
    let repo = upstream.create("platform");
    let bound = OWNED.replace(
        "spec: {policyName: owned-configmaps, validationActions: [Deny]}",
        &format!(
            "spec: {{policyName: owned-configmaps, validationActions: [Deny], matchResources: \
             {{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {}}}}}}}}}",
            app_ns.name
        ),
    );
    assert_ne!(bound, OWNED);
    repo.push(
        "main",
        &[
            ("platform/owned.yaml", &bound),
            ("app/settings.yaml", &harness::cm("settings", "1")),
        ],
        &[],
    );
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "stateDir: {state}\nnamespace: {agent}\nsources:\n  - {{name: repo, url: {url}}}\n\
             syncs:\n  - {{name: platform, source: repo, path: platform, namespace: default, health: {{wait: false}}}}\n  \
             - {{name: app, source: repo, path: app, namespace: {ns}, health: {{wait: false}}, policies: {{fromSyncs: [platform]}}}}\n",
            state = work.path().display(),
            agent = agent_ns.name,
            url = repo.file_url(),
            ns = app_ns.name,
        ),
    )
    .unwrap();
    let (code, out) = run(&["sync", "--once", "--sync", "platform"], &config, None);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["sync", "--once", "--sync", "app"], &config, None);
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "app/settings.yaml:1: ConfigMap/{}/settings: ValidatingAdmissionPolicy 'owned-configmaps' with binding \
         'owned-configmaps' denied request: ConfigMap settings names no team",
        app_ns.name
    );
    assert!(out.contains(&want), "{want}\nin:\n{out}");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &app_ns.name);
    assert!(cms.get_opt("settings").await.unwrap().is_none());
    // With the label, it passes both the agent and the apiserver.
    let labelled = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, labels: {team: shop}}\ndata: {value: \"1\"}\n";
    repo.push("main", &[("app/settings.yaml", labelled)], &[]);
    let (code, out) = run(&["sync", "--once", "--sync", "app"], &config, None);
    assert_eq!(code, 0, "{out}");
    assert!(cms.get_opt("settings").await.unwrap().is_some());
    // The policy and binding are cluster-wide: removed, for whatever runs next.
    let api: Api<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy> =
        Api::all(client.clone());
    let _ = api.delete("owned-configmaps", &Default::default()).await;
    let bindings: Api<
        k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding,
    > = Api::all(client);
    let _ = bindings
        .delete("owned-configmaps", &Default::default())
        .await;
}
