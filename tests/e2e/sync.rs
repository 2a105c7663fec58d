//! The sync engine end to end: real Git repositories (file:// and smart HTTP with a token
//! from a Kubernetes Secret), the real local control plane, and the real binary for the
//! commands. Each test has its own namespace, which also holds its inventory.

#[path = "../harness/fixture.rs"]
mod fixture;
#[path = "../harness/git.rs"]
mod git;
#[path = "../harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;

use fixture::{Fixture, cm};
use git::{HttpGit, Upstream};
use gitops_agent::config;
use gitops_agent::core::change::Action;
use gitops_agent::sync::{self, Engine, Failure, Outcome};
use harness::{TestNamespace, control_plane};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::{Api, ResourceExt};

fn actions(o: &Outcome) -> BTreeMap<String, Action> {
    o.changes
        .entries
        .iter()
        .map(|c| (c.subject.to_string(), c.action))
        .collect()
}

#[tokio::test]
async fn pushed_change_is_applied_and_nothing_else_is_written() {
    let mut f = Fixture::new(
        "push",
        &[
            ("deploy/a.yaml", &cm("a", "1")),
            ("deploy/b.yaml", &cm("b", "1")),
            ("deploy/c.yaml", &cm("c", "1")),
        ],
        "",
    )
    .await;
    let (first, _) = f.sync().await;
    assert!(first.succeeded(), "{:?}", first.failure);
    assert_eq!(
        first.changes.counts().get(&Action::Created),
        Some(&3),
        "{}",
        first.changes
    );

    // A resync of the same revision writes nothing at all: no object, no inventory.
    let before = f.versions().await;
    let (resync, requests) = f.sync().await;
    assert!(resync.succeeded(), "{:?}", resync.failure);
    fixture::assert_all_unchanged(&resync);
    assert_eq!(
        requests.writes, 0,
        "no-change resync made write requests: {requests:?}"
    );
    assert_eq!(f.versions().await, before);

    // One changed file: exactly that object is configured.
    f.repo
        .push("main", &[("deploy/b.yaml", &cm("b", "2"))], &[]);
    let (pushed, requests) = f.sync().await;
    assert!(pushed.succeeded(), "{:?}", pushed.failure);
    let ns = &f.ns.name;
    let expected: BTreeMap<String, Action> = [
        (format!("ConfigMap/{ns}/a"), Action::Unchanged),
        (format!("ConfigMap/{ns}/b"), Action::Configured),
        (format!("ConfigMap/{ns}/c"), Action::Unchanged),
    ]
    .into_iter()
    .collect();
    assert_eq!(actions(&pushed), expected);
    let diff = pushed
        .changes
        .entries
        .iter()
        .find(|c| c.action == Action::Configured)
        .unwrap()
        .diff
        .clone()
        .unwrap();
    assert!(
        diff.contains("-  value: '1'") || diff.contains("-  value: \"1\""),
        "{diff}"
    );
    // One apply for the object and one for the inventory's new revision.
    assert_eq!(requests.writes, 2, "{requests:?}");
    let after = f.versions().await;
    assert_eq!(after["a"], before["a"]);
    assert_ne!(after["b"], before["b"]);
    assert_eq!(
        f.configmaps().get("b").await.unwrap().data.unwrap()["value"],
        "2"
    );
}

#[tokio::test]
async fn removed_file_is_pruned_but_prune_disabled_objects_survive() {
    let keep = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: keep\n  annotations:\n    gitops-agent.io/prune: disabled\ndata: {k: v}\n";
    let mut f = Fixture::new(
        "prune",
        &[
            ("deploy/a.yaml", &cm("a", "1")),
            ("deploy/keep.yaml", keep),
            ("deploy/c.yaml", &cm("c", "1")),
            ("deploy/d.yaml", &cm("d", "1")),
        ],
        "",
    )
    .await;
    assert!(f.sync().await.0.succeeded());
    f.repo
        .push("main", &[], &["deploy/a.yaml", "deploy/keep.yaml"]);
    let (o, _) = f.sync().await;
    assert!(o.succeeded(), "{:?}", o.failure);
    let ns = &f.ns.name;
    let a = actions(&o);
    assert_eq!(a[&format!("ConfigMap/{ns}/a")], Action::Deleted);
    assert_eq!(a[&format!("ConfigMap/{ns}/keep")], Action::Skipped);
    assert!(
        f.configmaps().get_opt("a").await.unwrap().is_none(),
        "pruned"
    );
    assert!(
        f.configmaps().get_opt("keep").await.unwrap().is_some(),
        "prune: disabled survives"
    );
    // The survivor is no longer in the inventory: a later sync does not try again.
    let (again, _) = f.sync().await;
    fixture::assert_all_unchanged(&again);
}

#[tokio::test]
async fn bad_yaml_commit_changes_nothing_and_reports_file_and_line() {
    let mut f = Fixture::new(
        "badyaml",
        &[
            ("deploy/a.yaml", &cm("a", "1")),
            ("deploy/b.yaml", &cm("b", "1")),
        ],
        "",
    )
    .await;
    let (good, _) = f.sync().await;
    assert!(good.succeeded());
    let before = f.versions().await;

    // A valid change to a.yaml and a broken b.yaml in one commit: all or nothing.
    f.repo.push(
        "main",
        &[
            ("deploy/a.yaml", &cm("a", "2")),
            (
                "deploy/b.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n data: [unclosed\n",
            ),
        ],
        &[],
    );
    let (bad, requests) = f.sync().await;
    let err = match &bad.failure {
        Some(e @ Failure::Render { .. }) => e.to_string(),
        other => panic!("expected a render failure, got {other:?}"),
    };
    assert!(err.contains("deploy/b.yaml:5"), "{err}");
    assert!(bad.changes.entries.is_empty());
    assert_eq!(f.versions().await, before, "nothing in the cluster changed");
    assert_eq!(
        f.configmaps().get("a").await.unwrap().data.unwrap()["value"],
        "1"
    );
    // Only the status was recorded; the inventory still holds the last good revision.
    assert_eq!(requests.writes, 1, "{requests:?}");
    let record = f.engine.store().load("apps").await.unwrap();
    assert_eq!(
        record.inventory.revision.as_deref(),
        Some(good.revision.as_str())
    );
    assert_eq!(record.status.result, "Failed");
    assert!(
        record
            .status
            .error
            .as_deref()
            .unwrap()
            .contains("deploy/b.yaml:5")
    );
}

#[tokio::test]
async fn mass_deletion_guard_holds_back_the_revision() {
    let files = harness::configmap_files(4);
    let refs = harness::borrowed(&files);
    let mut f = Fixture::new("guard", &refs, "").await;
    assert!(f.sync().await.0.succeeded());

    f.repo.push(
        "main",
        &[],
        &["deploy/cm0.yaml", "deploy/cm1.yaml", "deploy/cm2.yaml"],
    );
    let (o, _) = f.sync().await;
    match &o.failure {
        Some(Failure::HeldBack { reason, .. }) => assert!(reason.contains("3 of 4"), "{reason}"),
        other => panic!("expected the guard to hold, got {other:?}"),
    }
    assert_eq!(f.versions().await.len(), 4, "nothing was deleted");

    // An empty render (no manifests left, only a README) is always held back.
    f.repo.push(
        "main",
        &[("deploy/README.md", "moved elsewhere\n")],
        &["deploy/cm3.yaml"],
    );
    let (o, _) = f.sync().await;
    assert!(
        matches!(&o.failure, Some(Failure::HeldBack { reason, .. }) if reason.contains("all 4")),
        "{:?}",
        o.failure
    );
    assert_eq!(f.versions().await.len(), 4);
    assert_eq!(
        f.engine.store().load("apps").await.unwrap().status.result,
        "HeldBack"
    );

    // The sync path gone altogether is a source error: nothing is touched either.
    f.repo.push("main", &[], &["deploy/README.md"]);
    let (o, _) = f.sync().await;
    assert!(
        matches!(&o.failure, Some(Failure::Source(m)) if m.contains("deploy")),
        "{:?}",
        o.failure
    );
    assert_eq!(f.versions().await.len(), 4);
}

#[tokio::test]
async fn crd_and_its_custom_resources_apply_in_order_in_one_commit() {
    let group = format!(
        "e2e{:06x}.gitops-agent.io",
        rand::random::<u32>() & 0xff_ffff
    );
    let crd = format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.{group}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: widgets, singular: widget, kind: Widget}}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec:\n            type: object\n            x-kubernetes-preserve-unknown-fields: true\n"
    );
    let widgets = format!(
        "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: one\nspec: {{size: 1}}\n---\napiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: two\nspec: {{size: 2}}\n"
    );
    // The custom resources sort before their CRD by file name: order must come from kinds.
    let mut f = Fixture::new(
        "crd",
        &[
            ("deploy/a-widgets.yaml", &widgets),
            ("deploy/z-crd.yaml", &crd),
        ],
        "",
    )
    .await;
    // `diff` first: the custom resources would be created with their CRD, not "failed".
    let dry = sync::Options {
        dry_run: true,
        ..Default::default()
    };
    let (d, requests) = f.sync_with(&dry).await;
    assert!(d.succeeded(), "{:?}\n{}", d.failure, d.changes);
    let one = change_of(&d, "one");
    assert_eq!(one.action, Action::Created, "{}", d.changes);
    assert!(
        one.message
            .as_deref()
            .unwrap()
            .contains("would be created with its")
    );
    assert_eq!(requests.writes, 0);
    let (o, _) = f.sync().await;
    assert!(o.succeeded(), "{:?}\n{}", o.failure, o.changes);
    let subjects: Vec<String> = o
        .changes
        .entries
        .iter()
        .map(|c| c.subject.to_string())
        .collect();
    assert_eq!(
        subjects[0],
        format!("CustomResourceDefinition/widgets.{group}")
    );
    assert!(
        o.changes
            .entries
            .iter()
            .all(|c| c.action == Action::Created),
        "{}",
        o.changes
    );
    let gvk = GroupVersionKind::gvk(&group, "v1", "Widget");
    let ar = kube::api::ApiResource::from_gvk(&gvk);
    let api: Api<DynamicObject> = Api::namespaced_with(f.client.clone(), &f.ns.name, &ar);
    assert_eq!(api.get("two").await.unwrap().data["spec"]["size"], 2);
    let (again, requests) = f.sync().await;
    fixture::assert_all_unchanged(&again);
    assert_eq!(requests.writes, 0);

    // A CRD someone else installs after the engine discovered the cluster: a revision with
    // its custom resources makes discovery look again instead of failing until a restart.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(f.client.clone());
    let gadgets = crd
        .replace("widgets", "gadgets")
        .replace("widget", "gadget")
        .replace("Widget", "Gadget");
    let gadgets: serde_json::Value = serde_saphyr::from_str(&gadgets).unwrap();
    let gadgets = serde_json::from_value(gadgets).unwrap();
    crds.create(&PostParams::default(), &gadgets).await.unwrap();
    let name = format!("gadgets.{group}");
    let started = std::time::Instant::now();
    while !crds
        .get(&name)
        .await
        .unwrap()
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True")
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{name} never established"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let gadget =
        format!("apiVersion: {group}/v1\nkind: Gadget\nmetadata:\n  name: g\nspec: {{size: 3}}\n");
    f.repo.push("main", &[("deploy/gadget.yaml", &gadget)], &[]);
    let (o, _) = f.sync().await;
    assert!(o.succeeded(), "{:?}\n{}", o.failure, o.changes);
    assert_eq!(change_of(&o, "g").action, Action::Created);

    // The CRDs are cluster-scoped: remove them so test runs do not accumulate.
    for name in [format!("widgets.{group}"), name] {
        crds.delete(&name, &Default::default()).await.unwrap();
    }
}

#[tokio::test]
async fn immutable_field_conflict_is_reported_and_recreate_needs_the_annotation() {
    let deploy = |selector: &str, annotate: bool| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n{ann}spec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: {selector}}}\n  template:\n    metadata:\n      labels: {{app: {selector}}}\n    spec:\n      containers: [{{name: web, image: registry.example/web:1}}]\n",
            ann = if annotate {
                "  annotations:\n    gitops-agent.io/recreate: \"true\"\n"
            } else {
                ""
            }
        )
    };
    let mut f = Fixture::new(
        "immutable",
        &[("deploy/web.yaml", &deploy("web", false))],
        "",
    )
    .await;
    assert!(f.sync().await.0.succeeded());
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns.name);
    let uid = deployments.get("web").await.unwrap().uid();

    f.repo
        .push("main", &[("deploy/web.yaml", &deploy("web2", false))], &[]);
    let (o, _) = f.sync().await;
    let c = &o.changes.entries[0];
    assert_eq!(c.action, Action::Failed);
    let msg = c.message.clone().unwrap();
    assert!(
        msg.contains("immutable") && msg.contains("gitops-agent.io/recreate"),
        "{msg}"
    );
    assert_eq!(
        deployments.get("web").await.unwrap().uid(),
        uid,
        "not recreated without the annotation"
    );

    f.repo
        .push("main", &[("deploy/web.yaml", &deploy("web2", true))], &[]);
    let (o, _) = f.sync().await;
    assert!(o.succeeded(), "{:?}\n{}", o.failure, o.changes);
    assert!(
        o.changes.entries[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("recreated")
    );
    let now = deployments.get("web").await.unwrap();
    assert_ne!(now.uid(), uid);
    assert_eq!(
        now.spec.unwrap().selector.match_labels.unwrap()["app"],
        "web2"
    );
}

#[tokio::test]
async fn a_first_sync_applies_unseen_objects_in_one_request_and_tells_created_from_adopted() {
    let mut f = Fixture::new(
        "unseen",
        &[
            ("deploy/new.yaml", &cm("new", "1")),
            ("deploy/old.yaml", &cm("old", "git")),
            (
                "deploy/frozen.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: frozen\nimmutable: true\ndata:\n  value: git\n",
            ),
        ],
        "",
    )
    .await;
    // Two objects exist before the agent ever ran, made by someone else: one it adopts,
    // one immutable ConfigMap whose data Git changes.
    let pp = PostParams {
        field_manager: Some("kubectl-create".into()),
        ..Default::default()
    };
    let existing = |name: &str, immutable: bool| ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        immutable: immutable.then_some(true),
        data: Some(BTreeMap::from([(
            "value".to_string(),
            "hand-made".to_string(),
        )])),
        ..Default::default()
    };
    f.configmaps()
        .create(&pp, &existing("old", false))
        .await
        .unwrap();
    f.configmaps()
        .create(&pp, &existing("frozen", true))
        .await
        .unwrap();

    let (o, requests) = f.sync().await;
    let by_name: BTreeMap<&str, &gitops_agent::core::change::Change> = o
        .changes
        .entries
        .iter()
        .map(|c| (c.subject.name.as_str(), c))
        .collect();
    assert_eq!(by_name["new"].action, Action::Created, "{}", o.changes);
    assert_eq!(by_name["old"].action, Action::Configured, "{}", o.changes);
    assert!(
        by_name["old"]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("existed before"),
        "{:?}",
        by_name["old"].message
    );
    assert_eq!(by_name["frozen"].action, Action::Failed, "{}", o.changes);
    let msg = by_name["frozen"].message.clone().unwrap_or_default();
    assert!(
        msg.contains("immutable") && msg.contains("gitops-agent.io/recreate"),
        "{msg}"
    );
    // Nothing was read before writing: one list of other syncs' ConfigMaps, one apply per
    // object, then the failed object's read (for the recreate decision), and the
    // inventory's read, intent and final write.
    assert_eq!(requests.dry_runs, 0, "{requests:?}");
    assert!(requests.total <= 1 + 3 + 1 + 3, "{requests:?}");
    assert_eq!(
        f.configmaps().get("old").await.unwrap().data.unwrap()["value"],
        "git"
    );
    assert_eq!(
        f.configmaps().get("frozen").await.unwrap().data.unwrap()["value"],
        "hand-made"
    );

    // Once in the inventory, an object is compared before it is written: a resync writes
    // only the inventory's status (the failure is still there), never the objects. The
    // failed object is on record too (a failed sync keeps all it meant to apply), so it
    // is compared as well, and its dry-run fails again.
    let before = f.versions().await;
    let (again, requests) = f.sync().await;
    assert!(
        again
            .changes
            .entries
            .iter()
            .filter(|c| c.subject.name != "frozen")
            .all(|c| c.action == Action::Unchanged),
        "{}",
        again.changes
    );
    assert_eq!(requests.dry_runs, 3, "{requests:?}");
    let after = f.versions().await;
    assert_eq!(before.get("new"), after.get("new"));
    assert_eq!(before.get("old"), after.get("old"));
}

#[tokio::test]
async fn health_wait_times_out_naming_the_unhealthy_object() {
    let stuck = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: stuck\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: stuck}\n  template:\n    metadata:\n      labels: {app: stuck}\n    spec:\n      nodeSelector: {no-such-node: \"true\"}\n      containers: [{name: c, image: registry.example/c:1}]\n";
    let mut f = Fixture::new("health", &[("deploy/stuck.yaml", stuck)], "").await;
    f.cfg.syncs[0].health = config::HealthWait {
        wait: true,
        timeout: std::time::Duration::from_secs(4),
    };
    let (o, _) = f.sync().await;
    match &o.failure {
        Some(Failure::Health(m)) => assert!(
            m.contains(&format!("Deployment/{}/stuck", f.ns.name)),
            "{m}"
        ),
        other => panic!("expected a health failure, got {other:?}"),
    }
}

#[tokio::test]
async fn http_source_with_token_from_a_kubernetes_secret() {
    harness::init_logging();
    let admin = control_plane().client().await;
    let ns = TestNamespace::create(&admin, "httpsrc").await;
    let upstream = Upstream::new();
    let repo = upstream.create("apps");
    repo.push("main", &[("deploy/a.yaml", &cm("a", "from-http"))], &[]);
    let token = "e2e-token-4f1c";
    let server = HttpGit::start(upstream.root(), token);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "git-creds"}, "stringData": {"username": "bot", "password": token}
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let source = format!(
        "url: {}\n    secretRef: {{name: git-creds}}",
        server.url("apps")
    );
    let mut f = Fixture::with_source(upstream, repo, ns, &source, "").await;
    let (o, _) = f.sync().await;
    assert!(o.succeeded(), "{:?}", o.failure);
    assert_eq!(
        f.configmaps().get("a").await.unwrap().data.unwrap()["value"],
        "from-http"
    );

    // A wrong token in the Secret fails clearly, without the token in the message.
    let patch = serde_json::json!({"stringData": {"password": "wrong-token-77"}});
    Api::<Secret>::namespaced(admin.clone(), &f.ns.name)
        .patch(
            "git-creds",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    f.cfg.state_dir = state.path().to_path_buf();
    let (o, _) = f.sync().await;
    let err = o.failure.expect("wrong token fails").to_string();
    assert!(!err.contains("wrong-token-77"), "{err}");
    assert!(
        err.to_lowercase().contains("auth") || err.contains("401"),
        "{err}"
    );
    drop(server);
}

/// A sync whose inventory cannot be recorded has not synced: it fails, naming the
/// inventory, rather than reporting success with nothing on record.
#[tokio::test]
async fn a_failed_inventory_write_fails_the_sync() {
    let mut f = Fixture::new("storefail", &[("deploy/a.yaml", &cm("a", "1"))], "").await;
    // An immutable inventory ConfigMap: every write to it is refused by the API server.
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "gitops-agent-apps", "labels": {"gitops-agent.io/inventory": "apps"}},
        "immutable": true,
        "data": {"inventory": ""},
    }))
    .unwrap();
    f.configmaps()
        .create(&Default::default(), &cm)
        .await
        .unwrap();
    let (o, _) = f.sync().await;
    match &o.failure {
        Some(Failure::Store(m)) => assert!(
            m.contains("not recorded")
                && m.contains("ConfigMap/")
                && m.contains("gitops-agent-apps"),
            "{m}"
        ),
        other => panic!("expected a store failure, got {other:?}"),
    }
    assert!(!o.succeeded());
}

/// `n` ConfigMaps `settings-of-component-<i>` (from `from`), a hundred to a file; with the
/// test namespace, some 60 bytes a line in the inventory, as real names are.
fn configmap_blocks(from: usize, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for start in (from..from + n).step_by(100) {
        let text: String = (start..(start + 100).min(from + n))
            .map(|i| format!("---\n{}", cm(&format!("settings-of-component-{i}"), "1")))
            .collect();
        out.push((format!("deploy/cm-{start}.yaml"), text));
    }
    out
}

/// More objects than one ConfigMap can list (about 15,000): the inventory goes into
/// shards that the head names and is read back whole (the load above), and a revision
/// that prunes most of them back under the cap folds the list into the head and deletes
/// the shards. (A no-change resync of 20,000 is left out: 40,000 requests to show what
/// the load already shows.)
#[tokio::test]
async fn a_sync_beyond_one_configmaps_cap_is_sharded_and_prunes() {
    let files = configmap_blocks(0, 20_000);
    let mut f = Fixture::new(
        "shards",
        &harness::borrowed(&files),
        "pruneGuard: {allowMassDeletion: true}",
    )
    .await;
    let (o, _) = f.sync().await;
    assert!(o.succeeded(), "{:?}", o.failure);
    let head = f.configmaps().get("gitops-agent-apps").await.unwrap();
    let data = head.data.unwrap();
    assert!(!data.contains_key("inventory"), "the list is not inline");
    let (_, count) = data["shards"].split_once(' ').unwrap();
    let shards = shards_of(&f).await;
    assert_eq!(shards.len().to_string(), count);
    let lines: usize = shards
        .iter()
        .map(|s| s.data.as_ref().unwrap()["inventory"].lines().count())
        .sum();
    assert_eq!(lines, 20_000, "one readable line per object");
    assert!(shards[0].data.as_ref().unwrap()["inventory"].starts_with("v1 ConfigMap "));
    let record = f.engine.store().load("apps").await.unwrap();
    assert_eq!(record.inventory.entries.len(), 20_000);
    assert_eq!(record.status.result, "Succeeded");

    // Prune 14,000: the 6,000 left fit the head, and the shards go.
    let removed: Vec<&str> = files[60..].iter().map(|(p, _)| p.as_str()).collect();
    f.repo.push("main", &[], &removed);
    let (pruned, _) = f.sync().await;
    assert!(pruned.succeeded(), "{:?}", pruned.failure);
    assert_eq!(pruned.changes.counts()[&Action::Deleted], 14_000);
    assert_eq!(f.versions().await.len(), 6_000);
    let data = f
        .configmaps()
        .get("gitops-agent-apps")
        .await
        .unwrap()
        .data
        .unwrap();
    assert!(!data.contains_key("shards"));
    assert_eq!(data["inventory"].lines().count(), 6_000);
    let left = shards_of(&f).await;
    assert!(left.is_empty(), "{} shards left", left.len());
}

async fn shards_of(f: &Fixture) -> Vec<ConfigMap> {
    let lp = ListParams::default().labels("gitops-agent.io/inventory-shard=apps");
    f.configmaps().list(&lp).await.unwrap().items
}

/// Two syncs of two agents (each sees only its own declarations) declare one object: the
/// second never takes it over silently. Its sync fails for that object naming both syncs,
/// the object keeps its owner and stays out of the second's inventory; Git's adopt
/// annotation hands it over, and then the first sync, which still lists it, is the one
/// refused.
#[tokio::test]
async fn an_object_of_another_sync_is_not_adopted_without_the_annotation() {
    let (mut f, other) = shared_fixture("owners").await;
    let adopt = format!("---\n{ADOPT_SHARED}");
    let label = |c: &ConfigMap| c.labels().get("gitops-agent.io/sync").cloned();
    let agent2 = Engine::new(f.client.clone(), &f.ns.name).await.unwrap();
    let sync_other = || sync_on(&agent2, &f, &other);

    let o = sync_other().await;
    let shared = change_of(&o, "shared");
    assert_eq!(shared.action, Action::Failed, "{}", o.changes);
    let msg = shared.message.as_deref().unwrap();
    assert!(
        msg.contains("owned by sync apps") && msg.contains("declared by sync other"),
        "{msg}"
    );
    assert!(!o.succeeded());
    let live = f.configmaps().get("shared").await.unwrap();
    assert_eq!(label(&live).as_deref(), Some("apps"));
    assert_eq!(live.data.unwrap()["value"], "apps", "not written");
    assert!(
        f.configmaps().get("theirs").await.is_ok(),
        "the rest applied"
    );
    let record = f.engine.store().load("other").await.unwrap();
    assert!(
        record.inventory.entries.iter().all(|e| e.name != "shared"),
        "not recorded as the other sync's"
    );

    // Git says adopt: the other sync takes it over.
    f.repo.push(
        "main",
        &[(
            "other/b.yaml",
            &format!("{adopt}---\n{}", cm("theirs", "1")),
        )],
        &[],
    );
    let o = sync_other().await;
    assert!(o.succeeded(), "{:?}", o.failure);
    assert_eq!(
        label(&f.configmaps().get("shared").await.unwrap()).as_deref(),
        Some("other")
    );

    // The first sync still lists it, and is now the one refused (on the read before writing).
    let (o, _) = f.sync().await;
    let shared = change_of(&o, "shared");
    assert_eq!(shared.action, Action::Failed, "{}", o.changes);
    assert!(
        shared
            .message
            .as_deref()
            .unwrap()
            .contains("owned by sync other")
    );
    assert_eq!(
        f.configmaps().get("shared").await.unwrap().data.unwrap()["value"],
        "other"
    );
}

/// `shared` as the second sync declares it to take it over.
const ADOPT_SHARED: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n  annotations: {gitops-agent.io/adopt: \"true\"}\ndata:\n  value: other\n";

/// A repository where sync `apps` (synced once) and sync `other` (returned, not synced)
/// both declare ConfigMap `shared`, beside one ConfigMap of their own each.
async fn shared_fixture(name: &str) -> (Fixture, config::Sync) {
    let mut f = Fixture::new(
        name,
        &[
            (
                "deploy/a.yaml",
                &format!("{}---\n{}", cm("mine", "1"), cm("shared", "apps")),
            ),
            (
                "other/b.yaml",
                &format!("{}---\n{}", cm("theirs", "1"), cm("shared", "other")),
            ),
        ],
        "",
    )
    .await;
    assert!(f.sync().await.0.succeeded());
    let mut other = f.cfg.syncs[0].clone();
    other.name = "other".into();
    other.path = "other".into();
    (f, other)
}

/// Syncs `s` (another sync of the fixture's repository) once.
async fn sync_as(f: &Fixture, s: &config::Sync) -> Outcome {
    sync_on(&f.engine, f, s).await
}

/// Syncs `s` once on `engine` (another agent's, or the fixture's).
async fn sync_on(engine: &Engine, f: &Fixture, s: &config::Sync) -> Outcome {
    let opts = Default::default();
    gitops_agent::controller::sync_once(engine, Some(&f.client), &f.cfg, s, &opts).await
}

/// Two syncs of one agent declare one object: the second is stopped at render, before it
/// writes anything, naming the file, line, object and both syncs; then the first keeps
/// syncing, and the adopt annotation in Git hands the object over, after which the first
/// is the one stopped until its Git drops the object.
#[tokio::test]
async fn two_syncs_of_one_agent_declaring_one_object_are_stopped_at_render() {
    let (mut f, other) = shared_fixture("declared").await;
    let adopt = ADOPT_SHARED;

    let before = f.counter.snapshot();
    let o = sync_as(&f, &other).await;
    let failure = o.failure.as_ref().expect("stopped").to_string();
    assert!(
        failure.contains("other/b.yaml:")
            && failure.contains("ConfigMap/")
            && failure.contains("/shared: also declared by sync \"apps\""),
        "{failure}"
    );
    assert!(o.changes.entries.is_empty(), "{}", o.changes);
    assert!(
        f.configmaps().get("theirs").await.is_err(),
        "nothing applied"
    );
    let status = f.engine.store().load("other").await.unwrap();
    assert!(
        status
            .status
            .error
            .as_deref()
            .is_some_and(|e| e.contains("also declared by sync")),
        "{:?}",
        status.status
    );
    assert_eq!(
        (f.counter.snapshot() - before).writes,
        1,
        "only the status of the stopped sync"
    );
    assert!(f.sync().await.0.succeeded(), "the first keeps syncing");

    // Git hands it over: the second takes it, and the first is stopped until it drops it.
    f.repo.push(
        "main",
        &[(
            "other/b.yaml",
            &format!("{}---\n{adopt}", cm("theirs", "1")),
        )],
        &[],
    );
    let o = sync_as(&f, &other).await;
    assert!(o.succeeded(), "{:?}", o.failure);
    let live = f.configmaps().get("shared").await.unwrap();
    assert_eq!(live.labels()["gitops-agent.io/sync"], "other");
    let (o, _) = f.sync().await;
    let failure = o.failure.expect("stopped").to_string();
    assert!(
        failure.contains("also declared by sync \"other\""),
        "{failure}"
    );
    f.repo
        .push("main", &[("deploy/a.yaml", &cm("mine", "1"))], &[]);
    let (o, _) = f.sync().await;
    assert!(o.succeeded(), "{:?}", o.failure);
    let live = f.configmaps().get("shared").await.unwrap();
    assert_eq!(
        live.data.unwrap()["value"],
        "other",
        "not pruned by the first"
    );
}

fn change_of<'a>(o: &'a Outcome, name: &str) -> &'a gitops_agent::core::change::Change {
    let found = o.changes.entries.iter().find(|c| c.subject.name == name);
    found.unwrap_or_else(|| panic!("no change for {name}: {}", o.changes))
}
