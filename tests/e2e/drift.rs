//! Drift detection from watches against the real control plane: out-of-band changes by
//! another field manager are reported once with fields, values and manager; detect-only
//! leaves the object alone; self-heal restores edited and deleted objects; fields Git does
//! not declare (an autoscaler's replicas) are not drift; a fight backs off.

#[path = "../harness/fixture.rs"]
mod fixture;
#[path = "../harness/git.rs"]
mod git;
#[path = "../harness/mod.rs"]
mod harness;

use std::time::Duration;

use std::sync::Arc;

use fixture::{Fixture, cm};
use gitops_agent::core::ObjectKey;
use gitops_agent::core::change::Action;
use gitops_agent::drift::{Detector, Options, Report};
use gitops_agent::sync;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::mpsc::Receiver;

const WAIT: Duration = Duration::from_secs(20);

fn web(replicas: Option<u32>) -> String {
    let r = replicas
        .map(|r| format!("  replicas: {r}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n{r}  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers: [{{name: web, image: registry.example/web:1}}]\n"
    )
}

async fn next(rx: &mut Receiver<Report>) -> Report {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a drift report in time")
        .expect("detector alive")
}

/// Syncs, then starts a detector on what was applied and waits until its watches listed.
async fn detected(
    prefix: &str,
    files: &[(&str, &str)],
    self_heal: bool,
    opts: Options,
) -> (Fixture, Detector, Receiver<Report>) {
    let mut f = Fixture::new(prefix, files, "").await;
    let (o, _) = f.sync().await;
    assert!(o.succeeded(), "{:?}", o.failure);
    // Its own client: the fixture's counts requests of the sync alone.
    let (det, rx) = Detector::new(harness::control_plane().client().await, opts);
    det.set_desired("apps", self_heal, o.desired).await;
    assert!(det.wait_ready(WAIT).await, "watches listed");
    (f, det, rx)
}

/// Waits until the detector's watch is current with Deployment `name` as it is now, so it
/// has seen every change made to it before the call. Versions are opaque (equality is all
/// a client may check), so it compares with the live object, read again each time.
async fn seen(det: &Detector, api: &Api<Deployment>, name: &str, ns: &str) {
    let id = ObjectKey {
        group: "apps".into(),
        kind: "Deployment".into(),
        namespace: Some(ns.into()),
        name: name.into(),
        version: "v1".into(),
    };
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let live = api.get(name).await.unwrap().metadata.resource_version;
        if live.is_some() && det.seen_version(&id) == live {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watch never caught up with {name} at {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn edit_cm(f: &Fixture, manager: &str, value: &str) {
    let pp = PatchParams {
        field_manager: Some(manager.into()),
        ..Default::default()
    };
    f.configmaps()
        .patch("a", &pp, &Patch::Merge(json!({"data": {"value": value}})))
        .await
        .unwrap();
}

#[tokio::test]
async fn out_of_band_change_is_reported_once_with_fields_and_manager_detect_only() {
    let (f, det, mut rx) = detected(
        "detect",
        &[
            ("deploy/web.yaml", &web(Some(2))),
            ("deploy/a.yaml", &cm("a", "1")),
        ],
        false,
        Options::default(),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns.name);
    harness::scale(&deployments, "web", "kubectl-scale", 5).await;

    match next(&mut rx).await {
        Report::Detected {
            subject,
            fields,
            manager,
            deleted,
            ..
        } => {
            assert_eq!(subject.to_string(), format!("Deployment/{}/web", f.ns.name));
            assert!(!deleted);
            assert_eq!(manager.as_deref(), Some("kubectl-scale"));
            let replicas = fields
                .iter()
                .find(|x| x.path == "spec.replicas")
                .unwrap_or_else(|| panic!("{fields:?}"));
            assert_eq!(
                (replicas.before.clone(), replicas.after.clone()),
                (json!(2), json!(5))
            );
        }
        other => panic!("expected drift, got {other:?}"),
    }
    assert_eq!(det.counts()["apps"].drifted, 1);

    // Further events on the same drifted object (its status churns as pods start) do not
    // repeat the alert: the next report is about the next, different change. Once all 5
    // replicas are available and the watch has judged that, any repeat would be queued.
    let deadline = std::time::Instant::now() + WAIT;
    while deployments
        .get("web")
        .await
        .unwrap()
        .status
        .and_then(|s| s.available_replicas)
        != Some(5)
    {
        assert!(std::time::Instant::now() < deadline, "never 5 available");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen(&det, &deployments, "web", &f.ns.name).await;
    edit_cm(&f, "kubectl-edit", "changed").await;
    match next(&mut rx).await {
        Report::Detected {
            subject,
            fields,
            manager,
            ..
        } => {
            assert_eq!(subject.name, "a", "no repeated report for the Deployment");
            assert_eq!(manager.as_deref(), Some("kubectl-edit"));
            assert_eq!(fields[0].path, "data.value");
        }
        other => panic!("expected the ConfigMap's drift, got {other:?}"),
    }
    // Detect-only: nothing was changed back.
    assert_eq!(
        deployments.get("web").await.unwrap().spec.unwrap().replicas,
        Some(5)
    );
    assert_eq!(
        f.configmaps().get("a").await.unwrap().data.unwrap()["value"],
        "changed"
    );
}

#[tokio::test]
async fn self_heal_restores_edited_and_deleted_objects() {
    let (f, _det, mut rx) = detected(
        "heal",
        &[("deploy/a.yaml", &cm("a", "1"))],
        true,
        Options::default(),
    )
    .await;
    edit_cm(&f, "kubectl-edit", "tampered").await;
    assert!(matches!(
        next(&mut rx).await,
        Report::Detected { deleted: false, .. }
    ));
    assert!(matches!(
        next(&mut rx).await,
        Report::Healed { error: None, .. }
    ));
    assert!(matches!(next(&mut rx).await, Report::Resolved { .. }));
    assert_eq!(
        f.configmaps().get("a").await.unwrap().data.unwrap()["value"],
        "1"
    );

    f.configmaps()
        .delete("a", &Default::default())
        .await
        .unwrap();
    assert!(matches!(
        next(&mut rx).await,
        Report::Detected { deleted: true, .. }
    ));
    assert!(matches!(
        next(&mut rx).await,
        Report::Healed { error: None, .. }
    ));
    assert!(matches!(next(&mut rx).await, Report::Resolved { .. }));
    assert_eq!(
        f.configmaps().get("a").await.unwrap().data.unwrap()["value"],
        "1",
        "recreated"
    );
}

#[tokio::test]
async fn autoscaler_owned_replicas_are_not_drift() {
    // Git leaves replicas to an autoscaler.
    let (f, det, mut rx) = detected(
        "hpa",
        &[
            ("deploy/web.yaml", &web(None)),
            ("deploy/a.yaml", &cm("a", "1")),
        ],
        true,
        Options::default(),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns.name);
    harness::scale(&deployments, "web", "horizontal-pod-autoscaler", 4).await;
    // Judged (and anything it reported queued) before the marker.
    seen(&det, &deployments, "web", &f.ns.name).await;
    // A marker change afterwards: the first report must be about it, not the replicas.
    edit_cm(&f, "kubectl-edit", "marker").await;
    match next(&mut rx).await {
        Report::Detected { subject, .. } => assert_eq!(subject.name, "a"),
        other => panic!("expected only the marker's drift, got {other:?}"),
    }
    assert_eq!(
        deployments.get("web").await.unwrap().spec.unwrap().replicas,
        Some(4),
        "left alone"
    );
}

#[tokio::test]
async fn a_controller_that_keeps_reverting_us_gets_one_fight_report() {
    let opts = Options {
        fight_threshold: 2,
        ..Default::default()
    };
    let (f, _det, mut rx) =
        detected("fight", &[("deploy/a.yaml", &cm("a", "1"))], true, opts).await;
    let mut fights = 0;
    let mut heals = 0;
    for round in 0..4 {
        edit_cm(&f, "rogue-controller", &format!("rogue-{round}")).await;
        // Drain what this round produced until the object is healed, fought over, or quiet.
        loop {
            match tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
                Ok(Some(Report::Healed { .. })) => heals += 1,
                Ok(Some(Report::Fight { manager, count, .. })) => {
                    fights += 1;
                    assert_eq!(manager.as_deref(), Some("rogue-controller"));
                    assert!(count > 2);
                }
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
    }
    assert_eq!(heals, 2, "healed up to the threshold");
    assert_eq!(fights, 1, "one fight report, then back-off");
    assert_eq!(
        f.configmaps().get("a").await.unwrap().data.unwrap()["value"],
        "rogue-3",
        "backed off: left as the other controller set it"
    );
}

#[tokio::test]
async fn the_watch_cache_lets_a_resync_skip_objects_unchanged_on_both_sides() {
    let files = harness::configmap_files(20);
    let refs = harness::borrowed(&files);
    let (mut f, det, mut rx) = detected("cache", &refs, false, Options::default()).await;
    // The periodic re-check confirms each object once; from then on the cache knows.
    det.recheck_sync("apps").await;
    let opts = sync::Options {
        dry_run: false,
        cache: Some(Arc::new(det.clone())),
        ..Default::default()
    };
    let (o, requests) = f.sync_with(&opts).await;
    fixture::assert_all_unchanged(&o);
    assert_eq!((requests.writes, requests.dry_runs), (0, 0), "{requests:?}");
    assert!(
        requests.total <= 2,
        "only the inventory is read: {requests:?}"
    );

    // An out-of-band edit is seen by the watch, so the next sync does not skip that object.
    let pp = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    f.configmaps()
        .patch(
            "cm7",
            &pp,
            &Patch::Merge(json!({"data": {"value": "edited"}})),
        )
        .await
        .unwrap();
    assert!(matches!(next(&mut rx).await, Report::Detected { .. }));
    let (o, requests) = f.sync_with(&opts).await;
    let configured: Vec<String> = o
        .changes
        .entries
        .iter()
        .filter(|c| c.action == Action::Configured)
        .map(|c| c.subject.name.clone())
        .collect();
    assert_eq!(configured, ["cm7"]);
    // One dry-run and one apply for cm7, one write for the inventory's status.
    assert_eq!((requests.dry_runs, requests.writes), (1, 2), "{requests:?}");
    assert_eq!(
        f.configmaps().get("cm7").await.unwrap().data.unwrap()["value"],
        "1"
    );
}

#[tokio::test]
async fn a_status_update_while_a_sync_applies_leaves_the_object_known_unchanged() {
    let (mut f, det, _rx) = detected(
        "status",
        &[("deploy/web.yaml", &web(Some(1)))],
        true,
        Options::default(),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns.name);
    // The deployment controller writes the revision annotation once (metadata, so judged);
    // confirm the object once the watch has seen that.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let live = deployments.get("web").await.unwrap();
        if live
            .metadata
            .annotations
            .is_some_and(|a| a.contains_key("deployment.kubernetes.io/revision"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no revision annotation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen(&det, &deployments, "web", &f.ns.name).await;
    det.recheck_sync("apps").await;
    let opts = sync::Options {
        dry_run: false,
        cache: Some(Arc::new(det.clone())),
        ..Default::default()
    };

    // While the sync is paused (as during an apply), only the status changes.
    det.pause("apps");
    let pp = PatchParams {
        field_manager: Some("status-writer".into()),
        ..Default::default()
    };
    deployments
        .patch_status(
            "web",
            &pp,
            &Patch::Merge(json!({"status": {"observedGeneration": 99}})),
        )
        .await
        .unwrap();
    seen(&det, &deployments, "web", &f.ns.name).await;
    let (o, requests) = f.sync_with(&opts).await;
    assert!(o.succeeded(), "{:?}", o.failure);
    assert_eq!(requests.dry_runs, 0, "status is not drift: {requests:?}");
}

#[tokio::test]
async fn what_a_sync_compares_confirms_objects_for_the_watch_cache() {
    // As after a restart: the objects exist and are inventoried, the detector knows nothing.
    let files = harness::configmap_files(6);
    let mut f = Fixture::new("compared", &harness::borrowed(&files), "").await;
    assert!(f.sync().await.0.succeeded());
    let (det, _rx) = Detector::new(harness::control_plane().client().await, Options::default());
    let opts = sync::Options {
        dry_run: false,
        cache: Some(Arc::new(det.clone())),
        ..Default::default()
    };
    // The first sync compares every object (a GET and a dry-run each) ...
    let (o, requests) = f.sync_with(&opts).await;
    assert!(o.succeeded(), "{:?}", o.failure);
    assert_eq!(requests.dry_runs, 6, "{requests:?}");
    det.set_desired("apps", true, o.desired).await;
    assert!(det.wait_ready(WAIT).await, "watches listed");
    // ... and those comparisons confirm the objects: no re-check, and the next sync skips
    // them all.
    let (o, requests) = f.sync_with(&opts).await;
    assert!(o.succeeded(), "{:?}", o.failure);
    assert_eq!((requests.dry_runs, requests.writes), (0, 0), "{requests:?}");
    assert!(requests.total <= 2, "{requests:?}");
}
