//! The `events` alert sink against the real control plane: Events regarding the drifted
//! object and the agent's own reference object, found the way `kubectl describe` finds
//! them; Secrets read for the HTTP sinks; a sink without rights fails once, not forever.

#[path = "../harness/mod.rs"]
mod harness;

use std::sync::Arc;
use std::time::Duration;

use gitops_agent::core::ObjectKey;
use gitops_agent::http::signature::signature;
use gitops_agent::notify::{
    AgentInfo, AlertsConfig, DeliveryOptions, DeliveryResult, Dispatcher, Event, FieldDrift,
    OnResult, RetryPolicy, SecretKeyRef, SinkResources, sinks,
};
use gitops_agent::secrets::SecretResolver;
use harness::{TestNamespace, control_plane};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{ListParams, PostParams};
use kube::config::AuthInfo;
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);

async fn config_map(client: &Client, ns: &str, name: &str) -> ConfigMap {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name}, "data": {"color": "blue"}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap_or_else(|e| panic!("ConfigMap/{ns}/{name}: {e}"))
}

/// An events sink from configuration, as the agent builds it, with results in a channel.
fn dispatcher(
    client: &Client,
    ns: &str,
) -> (
    Dispatcher,
    mpsc::UnboundedReceiver<(String, DeliveryResult)>,
) {
    let cfg: AlertsConfig = serde_saphyr::from_str(
        "sinks:\n  - type: events\n    name: cluster\n    agentRef: {apiVersion: v1, kind: ConfigMap, name: gitops-agent}\n",
    )
    .unwrap();
    assert!(cfg.problems().is_empty());
    let sink = sinks::build(
        &cfg.sinks[0],
        SinkResources {
            client: Some(client.clone()),
            agent: AgentInfo::new(ns, "agent-0"),
            secret: None,
            http: Default::default(),
            oci: None,
        },
    )
    .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let on_result: OnResult = Arc::new(move |s: &str, r: DeliveryResult| {
        let _ = tx.send((s.to_string(), r));
    });
    let options = DeliveryOptions {
        retry: RetryPolicy {
            max_attempts: 3,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        on_result: Some(on_result),
        ..Default::default()
    };
    (Dispatcher::new([sink], options), rx)
}

async fn next_result(rx: &mut mpsc::UnboundedReceiver<(String, DeliveryResult)>) -> DeliveryResult {
    let (sink, r) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a delivery result in time")
        .expect("dispatcher running");
    assert_eq!(sink, "events/cluster");
    r
}

/// The agent's Events with this reason, oldest first.
async fn events(client: &Client, ns: &str, reason: &str) -> Vec<K8sEvent> {
    let mut list: Vec<K8sEvent> = Api::<K8sEvent>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.reporting_controller.as_deref() == Some("gitops-agent")
        })
        .collect();
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    list
}

fn regarding_name(e: &K8sEvent) -> &str {
    e.regarding
        .as_ref()
        .and_then(|r| r.name.as_deref())
        .unwrap_or("")
}

#[tokio::test]
async fn drift_is_recorded_on_the_object_and_on_the_agent() {
    harness::init_logging();
    let client = control_plane().client().await;
    let ns = TestNamespace::create(&client, "alert").await;
    let web = config_map(&client, &ns.name, "web-config").await;
    let agent = config_map(&client, &ns.name, "gitops-agent").await;
    let (d, mut results) = dispatcher(&client, &ns.name);

    let subject = ObjectKey {
        group: String::new(),
        version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some(ns.name.clone()),
        name: "web-config".into(),
    };
    let drift = Event::drift_detected(
        "shop",
        subject.clone(),
        vec![FieldDrift::new("data.color", json!("blue"), json!("red"))],
        Some("kubectl-edit".into()),
    );
    d.send(drift.clone());
    assert_eq!(
        next_result(&mut results).await,
        DeliveryResult::Delivered { attempts: 1 }
    );

    let found = events(&client, &ns.name, "DriftDetected").await;
    assert_eq!(found.len(), 2, "{found:#?}");
    let summary = format!(
        "ConfigMap/{}/web-config: drift in data.color (blue → red) by kubectl-edit",
        ns.name
    );
    let on_subject = found
        .iter()
        .find(|e| regarding_name(e) == "web-config")
        .expect("an Event regarding the drifted ConfigMap");
    let on_agent = found
        .iter()
        .find(|e| regarding_name(e) == "gitops-agent")
        .expect("an Event regarding the agent");
    for e in [on_subject, on_agent] {
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.note.as_deref(), Some(summary.as_str()));
        assert_eq!(e.action.as_deref(), Some("DetectDrift"));
        assert_eq!(e.reporting_instance.as_deref(), Some("agent-0"));
    }
    // Each names the other as related, and carries the object's UID.
    let regarding = on_subject.regarding.as_ref().unwrap();
    assert_eq!(regarding.uid, web.metadata.uid);
    assert_eq!(regarding.api_version.as_deref(), Some("v1"));
    assert_eq!(
        on_subject.related.as_ref().unwrap().name.as_deref(),
        Some("gitops-agent")
    );
    assert_eq!(on_agent.regarding.as_ref().unwrap().uid, agent.metadata.uid);
    assert_eq!(
        on_agent.related.as_ref().unwrap().name.as_deref(),
        Some("web-config")
    );

    // `kubectl describe configmap web-config` finds it: core/v1 Events by involvedObject.uid.
    let uid = web.metadata.uid.clone().unwrap();
    let described = Api::<CoreEvent>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await
        .unwrap();
    assert!(
        described
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("DriftDetected")
                && e.message.as_deref() == Some(summary.as_str())),
        "{:#?}",
        described.items
    );

    // Resolution is Normal.
    d.send(Event::DriftResolved {
        sync: "shop".into(),
        subject,
    });
    assert!(matches!(
        next_result(&mut results).await,
        DeliveryResult::Delivered { .. }
    ));
    let resolved = events(&client, &ns.name, "DriftResolved").await;
    assert_eq!(resolved.len(), 2, "{resolved:#?}");
    assert!(
        resolved
            .iter()
            .all(|e| e.type_.as_deref() == Some("Normal"))
    );
    assert_eq!(
        resolved
            .iter()
            .find(|e| regarding_name(e) == "web-config")
            .unwrap()
            .note
            .as_deref(),
        Some(format!("ConfigMap/{}/web-config: drift resolved", ns.name).as_str())
    );

    // A sync's failure concerns no one object: one Event, on the agent.
    d.send(Event::SyncFailed {
        sync: "shop".into(),
        revision: "0123456789abcdef0123456789abcdef01234567".into(),
        error: "Deployment/shop/web: field is immutable: spec.selector".into(),
    });
    assert!(matches!(
        next_result(&mut results).await,
        DeliveryResult::Delivered { .. }
    ));
    let failed = events(&client, &ns.name, "SyncFailed").await;
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(regarding_name(&failed[0]), "gitops-agent");
    assert_eq!(failed[0].type_.as_deref(), Some("Warning"));
    assert_eq!(
        failed[0].note.as_deref(),
        Some(
            "sync/shop: failed at 0123456789ab: Deployment/shop/web: field is immutable: spec.selector"
        )
    );
    assert_eq!(d.stats()["events/cluster"].delivered, 3);
}

#[tokio::test]
async fn sinks_read_their_secrets_by_reference() {
    harness::init_logging();
    let client = control_plane().client().await;
    let ns = TestNamespace::create(&client, "alert-secret").await;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "alert-hmac"},
        "stringData": {"secret": "hmac-key-value"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let r = |name: &str, key: &str| SecretKeyRef {
        name: name.into(),
        key: key.into(),
        namespace: None,
    };
    let secrets = SecretResolver::new(Some(client.clone()), &ns.name);
    let value = secrets.key(&r("alert-hmac", "secret")).await.unwrap();
    assert_eq!(value.expose(), b"hmac-key-value");

    let e = secrets
        .key(&r("alert-hmac", "url"))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(e, format!("Secret/{}/alert-hmac: no key \"url\"", ns.name));
    assert!(!e.contains("hmac-key-value"));
    let e = secrets
        .key(&r("missing", "k"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("Secret/{}/missing: ", ns.name)),
        "{e}"
    );

    // From configuration to delivery: the webhook signs with the key from the Secret, the
    // Slack sink posts to the URL from its Secret.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((uri.path().to_string(), headers, body.to_vec()));
                "ok"
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let slack: Secret = serde_json::from_value(json!({
        "metadata": {"name": "slack"},
        "stringData": {"url": format!("http://{addr}/services/T0/B0/XYZ")}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &slack)
        .await
        .unwrap();
    let cfg: AlertsConfig = serde_saphyr::from_str(&format!(
        "\
sinks:
  - type: webhook
    name: ops
    url: http://{addr}/hook
    secretRef: {{name: alert-hmac, key: secret}}
  - type: slack
    name: team
    secretRef: {{name: slack, key: url}}
"
    ))
    .unwrap();
    let agent = AgentInfo::new(&ns.name, "agent-0");
    let built = sinks::build_all(&cfg, &client, &agent, &Default::default(), None)
        .await
        .unwrap();
    let d = Dispatcher::new(built, DeliveryOptions::default());
    d.send(Event::PruneHeldBack {
        sync: "shop".into(),
        revision: "v3".into(),
        reason: "would delete 9 of 10 objects".into(),
    });
    let mut got = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let (path, headers, body) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a request in time")
            .unwrap();
        got.insert(path, (headers, body));
    }
    let (headers, body) = &got["/hook"];
    assert_eq!(
        headers["x-signature-256"].to_str().unwrap(),
        signature(b"hmac-key-value", body)
    );
    let (_, body) = &got["/services/T0/B0/XYZ"];
    let body: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        body["text"],
        "sync/shop: prune held back at v3: would delete 9 of 10 objects"
    );

    // A missing Secret stops the build, naming the sink and the Secret.
    let cfg: AlertsConfig = serde_saphyr::from_str(&format!(
        "sinks:\n  - {{type: webhook, name: ops, url: 'http://{addr}/', secretRef: {{name: gone, key: k}}}}\n"
    ))
    .unwrap();
    let e = sinks::build_all(&cfg, &client, &agent, &Default::default(), None)
        .await
        .err()
        .expect("no Secret")
        .to_string();
    assert!(
        e.starts_with(&format!(
            "alert sink webhook/ops: Secret/{}/gone: ",
            ns.name
        )),
        "{e}"
    );
}

#[tokio::test]
async fn an_events_sink_without_rights_fails_once() {
    harness::init_logging();
    let cp = control_plane();
    let admin = cp.client().await;
    let ns = TestNamespace::create(&admin, "alert-rbac").await;
    config_map(&admin, &ns.name, "gitops-agent").await;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns.name);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "nobody"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let token = sas
        .create_token_request("nobody", &PostParams::default(), &TokenRequest::default())
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let mut cfg = cp.config().await;
    cfg.auth_info = AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    let nobody = Client::try_from(cfg).unwrap();

    let (d, mut results) = dispatcher(&nobody, &ns.name);
    d.send(Event::SyncRecovered {
        sync: "shop".into(),
        revision: "v2".into(),
    });
    // 403 will not fix itself: one attempt, and the error names the sink and the target.
    match next_result(&mut results).await {
        DeliveryResult::Failed { attempts, error } => {
            assert_eq!(attempts, 1);
            assert!(
                error.starts_with(&format!(
                    "alert sink events/cluster: Event/{} regarding ConfigMap/gitops-agent: ",
                    ns.name
                )),
                "{error}"
            );
            assert!(error.contains("forbidden"), "{error}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(events(&admin, &ns.name, "SyncRecovered").await.is_empty());
}
