//! Health against the real local control plane: the deployment and job controllers, the
//! scheduler and kwok move objects through their states, and `health::wait` follows them
//! to Healthy, or names what is stuck and why when its timeout passes.

#[path = "../harness/mod.rs"]
mod harness;

use std::time::Duration;

use gitops_agent::core::ObjectKey;
use gitops_agent::health::{self, Assessment, Error, Status, WaitOptions};
use harness::{TestNamespace, control_plane};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::{Api, Client, Resource};
use serde_json::{Value, json};

/// A target for `wait`: the object's identity and how to reach it.
fn target<K: Resource<DynamicType = ()>>(ns: &str, name: &str) -> (ObjectKey, ApiResource) {
    let ar = ApiResource::erase::<K>(&());
    let r = ObjectKey {
        group: ar.group.clone(),
        version: ar.version.clone(),
        kind: ar.kind.clone(),
        namespace: Some(ns.into()),
        name: name.into(),
    };
    (r, ar)
}

async fn apply(client: &Client, (r, ar): &(ObjectKey, ApiResource), mut body: Value) {
    body["apiVersion"] = json!(ar.api_version);
    body["kind"] = json!(ar.kind);
    body["metadata"]["name"] = json!(r.name);
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), r.namespace.as_deref().unwrap(), ar);
    api.patch(
        &r.name,
        &PatchParams::apply(gitops_agent::FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .unwrap_or_else(|e| panic!("{r}: apply: {e}"));
}

/// What a single GET shows right now.
async fn assess_now(client: &Client, (r, ar): &(ObjectKey, ApiResource)) -> Assessment {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), r.namespace.as_deref().unwrap(), ar);
    let obj = api.get_opt(&r.name).await.unwrap();
    health::assess_object(obj.as_ref(), ar)
}

fn deployment(replicas: i64, extra_pod_spec: Value) -> Value {
    let mut pod_spec = json!({"containers": [{"name": "web", "image": "registry.example/web:1"}]});
    pod_spec
        .as_object_mut()
        .unwrap()
        .extend(extra_pod_spec.as_object().cloned().unwrap_or_default());
    json!({
        "metadata": {},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec}
        }
    })
}

fn opts(timeout_secs: u64) -> WaitOptions {
    WaitOptions {
        timeout: Duration::from_secs(timeout_secs),
        poll_interval: Duration::from_millis(500),
        ..WaitOptions::default()
    }
}

#[tokio::test]
async fn rollout_and_job_go_from_progressing_to_healthy() {
    harness::init_logging();
    let client = control_plane().client().await;
    let ns = TestNamespace::create(&client, "health-ok").await;

    let web = target::<Deployment>(&ns.name, "web");
    let once = target::<Job>(&ns.name, "once");
    let config = target::<ConfigMap>(&ns.name, "settings");
    apply(&client, &web, deployment(2, json!({}))).await;
    apply(
        &client,
        &once,
        json!({"metadata": {}, "spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "registry.example/once:1"}]
        }}}}),
    )
    .await;
    apply(
        &client,
        &config,
        json!({"metadata": {}, "data": {"k": "v"}}),
    )
    .await;

    // Straight after apply no controller has caught up: pods need scheduling and kwok.
    let first = assess_now(&client, &web).await;
    assert_eq!(first.status, Status::Progressing, "{first}");
    assert!(first.message.starts_with("Waiting for rollout"), "{first}");

    let targets = [web.clone(), once.clone(), config.clone()];
    let got = health::wait(&client, &targets, &opts(90))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let by_name = |name: &str| &got.iter().find(|(r, _)| r.name == name).unwrap().1;
    assert_eq!(by_name("web").status, Status::Healthy);
    assert_eq!(by_name("web").message, "2 of 2 replicas available");
    assert_eq!(by_name("once").status, Status::Healthy);
    assert!(by_name("once").message.starts_with("Job completed"));
    assert_eq!(by_name("settings").status, Status::Healthy);
    assert_eq!(
        health::worst(got.iter().map(|(_, a)| a.status)),
        Status::Healthy
    );

    // A new spec sends it back to Progressing until the controller observes it.
    apply(&client, &web, deployment(3, json!({}))).await;
    assert_eq!(assess_now(&client, &web).await.status, Status::Progressing);
    let got = health::wait(&client, std::slice::from_ref(&web), &opts(90))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got[0].1.message, "3 of 3 replicas available");
}

#[tokio::test]
async fn unschedulable_rollout_times_out_naming_the_object_and_reason() {
    harness::init_logging();
    let client = control_plane().client().await;
    let ns = TestNamespace::create(&client, "health-stuck").await;

    let stuck = target::<Deployment>(&ns.name, "stuck");
    let mut body = deployment(
        1,
        json!({"nodeSelector": {"gitops-agent.io/no-such-node": "true"}}),
    );
    // The deployment controller marks it ProgressDeadlineExceeded after 3 s without progress.
    body["spec"]["progressDeadlineSeconds"] = json!(3);
    apply(&client, &stuck, body).await;
    let data = target::<PersistentVolumeClaim>(&ns.name, "data");
    // No StorageClass of this name and no provisioner: the claim can never bind.
    apply(
        &client,
        &data,
        json!({"metadata": {}, "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "no-provisioner",
            "resources": {"requests": {"storage": "1Gi"}}
        }}),
    )
    .await;
    let paused = target::<Deployment>(&ns.name, "paused");
    let mut body = deployment(1, json!({}));
    body["spec"]["paused"] = json!(true);
    apply(&client, &paused, body).await;

    let started = std::time::Instant::now();
    let err = health::wait(
        &client,
        &[paused.clone(), stuck.clone(), data.clone()],
        &opts(20),
    )
    .await
    .expect_err("an unschedulable Deployment and an unbindable PVC never become healthy");
    // It waited the whole timeout (a slow machine can only make that longer, so no upper
    // bound), and says so.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(20),
        "gave up after {elapsed:?}"
    );
    assert!(err.to_string().contains("timed out after 20s"), "{err}");

    let msg = err.to_string();
    assert!(
        msg.starts_with("timed out after 20s waiting for 2 of 3 objects: "),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "Deployment/{}/stuck: Degraded: Progress deadline exceeded: ProgressDeadlineExceeded",
            ns.name
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "PersistentVolumeClaim/{}/data: Progressing: Pending",
            ns.name
        )),
        "{msg}"
    );
    // The paused Deployment is settled (Suspended), so it is not among the failures.
    assert!(!msg.contains("/paused"), "{msg}");
    let Error::Timeout { unhealthy, .. } = err else {
        panic!("{msg}")
    };
    let names: Vec<&str> = unhealthy.iter().map(|(r, _)| r.name.as_str()).collect();
    assert_eq!(names, ["stuck", "data"]);

    let p = assess_now(&client, &paused).await;
    assert_eq!(p.status, Status::Suspended, "{p}");
    assert_eq!(
        health::worst([p.status, unhealthy[0].1.status, unhealthy[1].1.status]),
        Status::Degraded
    );

    // Its pod says why the rollout is stuck: the scheduler found no matching node.
    let pod_type = ApiResource::erase::<Pod>(&());
    let pods: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &pod_type);
    let list = pods.list(&Default::default()).await.unwrap();
    let pod = list
        .items
        .into_iter()
        .find(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("stuck-"))
        })
        .expect("the stuck Deployment created a pod");
    // List items carry no kind: assess_object takes it from the ApiResource.
    let a = health::assess_object(Some(&pod), &pod_type);
    assert_eq!(a.status, Status::Progressing, "{a}");
    assert!(a.message.contains("Unschedulable"), "{a}");
}

#[tokio::test]
async fn missing_object_is_reported_missing() {
    harness::init_logging();
    let client = control_plane().client().await;
    let ns = TestNamespace::create(&client, "health-missing").await;
    let ghost = target::<ConfigMap>(&ns.name, "never-applied");
    let err = health::wait(&client, std::slice::from_ref(&ghost), &opts(2))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "timed out after 2s waiting for 1 of 1 objects: ConfigMap/{}/never-applied: Missing: object does not exist",
            ns.name
        )
    );
}

/// `sync --once` is not silent while it waits: piped, it prints a line every 10 s naming
/// what is still not ready, why, and the time left, then fails naming it at the timeout.
#[tokio::test]
async fn sync_once_shows_what_it_waits_for_while_it_waits() {
    let client = control_plane().client().await;
    let ns = TestNamespace::create(&client, "health-progress").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("apps")).unwrap();
    let mut body = deployment(
        1,
        json!({"nodeSelector": {"gitops-agent.io/no-such-node": "true"}}),
    );
    body["apiVersion"] = json!("apps/v1");
    body["kind"] = json!("Deployment");
    body["metadata"] = json!({"name": "stuck"});
    std::fs::write(dir.path().join("apps/stuck.yaml"), body.to_string()).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "stateDir: {d}/state\nnamespace: {ns}\nsources:\n  - {{name: local, directory: {d}/apps}}\n\
             syncs:\n  - {{name: stuck, source: local, namespace: {ns}, health: {{timeout: 15s}}}}\n",
            d = dir.path().display(),
            ns = ns.name
        ),
    )
    .unwrap();
    let (code, text) = harness::agent_cli(&["sync", "--once"], &config, None);
    assert_eq!(code, Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("sync stuck: waiting on health, 1 of 1 objects not ready, "))
        .unwrap_or_else(|| panic!("no progress line in:\n{text}"));
    assert!(
        line.contains(&format!(
            "s left: Deployment/{}/stuck (Progressing",
            ns.name
        )),
        "{line}"
    );
    assert!(
        !text.contains('\x1b'),
        "no terminal codes when piped:\n{text}"
    );
}
