//! Proves the local control plane is a real one: server-side apply with field ownership,
//! controllers and kwok driving workloads to Available/Complete, the namespace controller
//! finalizing deletions, TokenRequest-issued service-account tokens and RBAC denying them.

#[path = "../harness/mod.rs"]
mod harness;

use std::time::Duration;

use harness::{TestNamespace, control_plane};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::AuthInfo;
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

fn deployment_available(d: Option<&Deployment>) -> bool {
    d.and_then(|d| d.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Available" && c.status == "True")
        })
}

fn job_complete(j: Option<&Job>) -> bool {
    j.and_then(|j| j.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
}

async fn apply<K>(api: &Api<K>, name: &str, body: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let pp = PatchParams::apply(gitops_agent::FIELD_MANAGER).force();
    api.patch(name, &pp, &Patch::Apply(body))
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {e}"))
}

#[tokio::test]
async fn server_side_applied_workloads_run_on_kwok_nodes() {
    harness::init_logging();
    let client = control_plane().client().await;
    let ns = TestNamespace::create(&client, "workloads").await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let applied = apply(
        &deployments,
        "web",
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]}
                }
            }
        }),
    )
    .await;
    // Server-side apply recorded our field manager as the owner of what we sent.
    let managers = applied.metadata.managed_fields.unwrap_or_default();
    assert!(
        managers
            .iter()
            .any(|m| m.manager.as_deref() == Some("gitops-agent")
                && m.operation.as_deref() == Some("Apply")),
        "managedFields: {managers:?}"
    );

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    apply(
        &jobs,
        "once",
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "once"},
            "spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "c", "image": "registry.example/once:1"}]
            }}}
        }),
    )
    .await;

    // The deployment and replicaset controllers, the scheduler and kwok all have to work for these.
    let available = tokio::time::timeout(
        WAIT,
        await_condition(deployments.clone(), "web", deployment_available),
    );
    let complete = tokio::time::timeout(WAIT, await_condition(jobs.clone(), "once", job_complete));
    let (available, complete) = tokio::join!(available, complete);
    let d = available
        .expect("Deployment/web Available in time")
        .unwrap()
        .unwrap();
    assert_eq!(d.status.unwrap().available_replicas, Some(2));
    complete.expect("Job/once Complete in time").unwrap();

    // A pod marked not ready, as the node lifecycle controller does when a node's heartbeat
    // is late, is reported ready again (by our kwok stage, as a kubelet would).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .remove(0);
    let name = pod.metadata.name.unwrap();
    pods.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Strategic(
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        ),
    )
    .await
    .unwrap();
    let ready_again = tokio::time::timeout(
        WAIT,
        await_condition(pods.clone(), &name, |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        }),
    )
    .await;
    ready_again.expect("pod Ready again in time").unwrap();
}

#[tokio::test]
async fn deleted_namespace_is_finalized_by_the_namespace_controller() {
    harness::init_logging();
    let client = control_plane().client().await;
    let name = format!("e2e-finalize-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    apply(
        &namespaces,
        &name,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
    apply(&cms, "content", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "content"}, "data": {"k": "v"}})).await;

    namespaces
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    // Deletion first leaves it Terminating with the "kubernetes" finalizer; only the
    // namespace controller, after emptying it, removes the finalizer and the object.
    let gone = tokio::time::timeout(
        WAIT,
        await_condition(namespaces.clone(), &name, |ns: Option<&Namespace>| {
            ns.is_none()
        }),
    );
    gone.await.expect("Namespace finalized in time").unwrap();
    assert!(cms.get_opt("content").await.unwrap().is_none());
}

#[tokio::test]
async fn rbac_denies_a_service_account_token_without_rights() {
    harness::init_logging();
    let cp = control_plane();
    let client = cp.client().await;
    let ns = TestNamespace::create(&client, "rbac").await;

    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    apply(
        &sas,
        "nobody",
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}}),
    )
    .await;
    let token = sas
        .create_token_request("nobody", &PostParams::default(), &TokenRequest::default())
        .await
        .expect("TokenRequest API issues a token")
        .status
        .expect("token status")
        .token;

    let mut cfg = cp.config().await;
    cfg.auth_info = AuthInfo {
        token: Some(token.clone().into()),
        ..Default::default()
    };
    let as_sa = Client::try_from(cfg).unwrap();

    let id = gitops_agent::cluster::identify(&as_sa).await.unwrap();
    assert_eq!(
        id.username,
        format!("system:serviceaccount:{}:nobody", ns.name)
    );

    let secrets: Api<Secret> = Api::namespaced(as_sa.clone(), &ns.name);
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("listing secrets without rights must be forbidden, got {other:?}"),
    }

    // RBAC is evaluated, not merely closed: a Role grants exactly what it names.
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns.name);
    apply(&roles, "read-cm", json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "read-cm"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]
    }))
    .await;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns.name);
    apply(&bindings, "read-cm", json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "read-cm"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-cm"},
        "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": ns.name}]
    }))
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(as_sa.clone(), &ns.name);
    // The API server's RBAC authorizer learns of the new binding from its watch a moment
    // later: wait for the grant to take effect, rather than race it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match cms.list(&Default::default()).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 403 && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the Role grants listing configmaps: {e:?}"),
        }
    }
    assert!(
        secrets.list(&Default::default()).await.is_err(),
        "secrets stay forbidden"
    );
}

#[tokio::test]
async fn binary_check_reports_server_and_identity() {
    let cp = control_plane();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gitops-agent"))
        .args(["check", "--log-format", "json", "--kubeconfig"])
        .arg(cp.kubeconfig())
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("server:   v1.34.4"), "{stdout}");
    assert!(stdout.contains("user:     admin"), "{stdout}");
    assert!(stdout.contains("system:masters"), "{stdout}");
    // --log-format json: every log line on stderr is a JSON object.
    for line in stderr.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    assert!(stderr.contains("\"message\":\"connecting\""), "{stderr}");
}
