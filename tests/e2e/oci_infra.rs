//! Infra specs end to end on loopback: OKE virtual node pools declared in Git, compared with
//! the Container Engine stand-in of tests/oci/standin.py (every signature verified, pools
//! with etags, work requests that take seconds) and updated with nothing but the
//! service-account token. The official `oci` SDK, as a client of the same stand-in, shows
//! it speaks the real wire format.

#[path = "../harness/git.rs"]
mod git;
#[path = "../harness/mod.rs"]
mod harness;
#[path = "../harness/oci.rs"]
mod standin;

use std::time::{Duration, Instant};

use harness::control_plane;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use serde_json::{Value, json};
use standin::{Agent, StandIn, TOPIC_ID, WAIT, setup, token_file, wait_value};

const CLUSTER: &str = "ocid1.cluster.oc1.iad.standin";
const COMPARTMENT: &str = "ocid1.compartment.oc1..standin";
const POOL: &str = "ocid1.virtualnodepool.oc1.iad.standin";
const SUBNET: &str = "ocid1.subnet.oc1.iad.standin";
const NODE_POOL: &str = "ocid1.nodepool.oc1.iad.standin";

/// A managed node pool of 2 across three fault domains, named by its OCID.
fn node_pool_file(size: u32) -> String {
    format!(
        "apiVersion: oke.gitops-agent.io/v1alpha1\nkind: NodePool\nmetadata:\n  name: batch\n\
         spec:\n  nodePoolId: {NODE_POOL}\n  size: {size}\n  nodeShape: VM.Standard.E4.Flex\n  placement:\n\
         \x20   - availabilityDomain: Uocm:IAD-AD-1\n      subnetId: {SUBNET}\n      faultDomains: [FAULT-DOMAIN-1, FAULT-DOMAIN-2, FAULT-DOMAIN-3]\n"
    )
}

/// One virtual node pool of size 1 in FAULT-DOMAIN-1, in one cluster.
fn seed(s: &StandIn) {
    let pool = json!({
        "displayName": "web", "clusterId": CLUSTER, "compartmentId": COMPARTMENT,
        "lifecycleState": "ACTIVE", "kubernetesVersion": "v1.34.1", "size": 1,
        "placementConfigurations": [{"availabilityDomain": "Uocm:IAD-AD-1", "subnetId": SUBNET, "faultDomain": ["FAULT-DOMAIN-1"]}],
        "podConfiguration": {"shape": "Pod.Standard.E4.Flex", "subnetId": SUBNET, "nsgIds": []},
        "taints": [], "initialVirtualNodeLabels": [],
    });
    let write = |name: &str, v: Value| {
        std::fs::write(s.dir.path().join(name), v.to_string()).unwrap();
    };
    let node_pool = json!({
        "name": "batch", "clusterId": CLUSTER, "compartmentId": COMPARTMENT,
        "lifecycleState": "ACTIVE", "kubernetesVersion": "v1.34.1", "nodeShape": "VM.Standard.E4.Flex",
        "nodeConfigDetails": {"size": 2, "placementConfigs": [{"availabilityDomain": "Uocm:IAD-AD-1", "subnetId": SUBNET,
                              "faultDomains": ["FAULT-DOMAIN-3", "FAULT-DOMAIN-2", "FAULT-DOMAIN-1"]}]},
    });
    write("pools.json", json!({ POOL: pool, NODE_POOL: node_pool }));
    write("clusters.json", json!({ CLUSTER: COMPARTMENT }));
}

/// The official SDK reads the pool with its etag, updates it with if-match (a stale etag
/// is refused with 412), follows the work request to SUCCEEDED, and reads a work request's
/// errors, all against the stand-in.
#[tokio::test]
async fn the_oci_sdk_is_a_client_of_the_container_engine_stand_in() {
    let (ns, s, work) = setup("oci-sdk-ce", 600, gitops_agent::oci::auth::workload::PORT).await;
    let token = token_file(&ns, work.path()).await;
    seed(&s);
    let script = format!(
        r#"
import time, oci
signer = oci.auth.signers.get_oke_workload_identity_resource_principal_signer(service_account_token_path={token:?})
ce = oci.container_engine.ContainerEngineClient({{}}, signer=signer, service_endpoint="https://127.0.0.1:{port}")
got = ce.get_virtual_node_pool({POOL:?})
print("pool", got.data.display_name, got.data.size, got.data.placement_configurations[0].fault_domain)
details = oci.container_engine.models.UpdateVirtualNodePoolDetails(size=2)
wr = ce.update_virtual_node_pool({POOL:?}, details, if_match=got.headers["etag"]).headers["opc-work-request-id"]
try:
    ce.update_virtual_node_pool({POOL:?}, details, if_match="stale")
except oci.exceptions.ServiceError as e:
    print("stale", e.status, e.code)
while True:
    w = ce.get_work_request(wr)
    if w.data.status in ("SUCCEEDED", "FAILED"):
        break
    time.sleep(int(w.headers.get("retry-after", "1")))
print("work", w.data.status, w.data.operation_type)
print("errors", len(ce.list_work_request_errors({COMPARTMENT:?}, wr).data))
after = ce.get_virtual_node_pool({POOL:?})
print("after", after.data.size, after.data.lifecycle_state, after.headers["etag"] != got.headers["etag"])
listed = ce.list_virtual_node_pools({COMPARTMENT:?}, cluster_id={CLUSTER:?}, name="web").data
print("listed", [p.id for p in listed])
"#,
        token = token.display().to_string(),
        port = s.services,
    );
    let stdout = s.sdk(&script);
    for want in [
        "pool web 1 ['FAULT-DOMAIN-1']",
        "stale 412 NoEtagMatch",
        "work SUCCEEDED VIRTUALNODEPOOL_UPDATE",
        "errors 0",
        "after 2 ACTIVE True",
        &format!("listed ['{POOL}']"),
    ] {
        assert!(stdout.contains(want), "{want:?} missing in:\n{stdout}");
    }
}

fn pool_file(size: u32, fault_domains: &[&str], extra_annotations: &str) -> String {
    format!(
        "apiVersion: oke.gitops-agent.io/v1alpha1\nkind: VirtualNodePool\nmetadata:\n  name: web\n{extra_annotations}\
         spec:\n  clusterId: {CLUSTER}\n  size: {size}\n  placement:\n    - availabilityDomain: Uocm:IAD-AD-1\n      subnetId: {SUBNET}\n      faultDomains: {fds:?}\n",
        fds = fault_domains,
    )
}

/// What the stand-in's pool is now, read as a client would.
fn updates(s: &StandIn) -> Vec<Value> {
    s.log("updates.jsonl")
}

/// A commit that raises a virtual node pool's size and spreads it over three fault domains
/// is applied through the stand-in (one Update, with if-match), before the revision's
/// ConfigMap; a commit to zero is held back; a failing work request fails the sync with
/// OCI's error text and leaves that revision's ConfigMap unapplied (capacity first).
#[tokio::test]
async fn a_commit_changes_a_virtual_node_pool_through_oci() {
    let (ns, s, work) = setup("oci-infra", 600, 0).await;
    let token = token_file(&ns, work.path()).await;
    seed(&s);
    let upstream = git::Upstream::new();
    let repo = upstream.create("infra");
    let one = ["FAULT-DOMAIN-1"];
    repo.push(
        "main",
        &[
            ("deploy/pool.yaml", &pool_file(1, &one, "")),
            ("deploy/nodepool.yaml", &node_pool_file(2)),
            ("deploy/cm.yaml", &harness::cm("a", "1")),
        ],
        &[],
    );
    let config = format!(
        "stateDir: {dir}/state\nnamespace: {ns}\n\
         resync: 10s\n\
         sources:\n  - {{name: infra, url: {url}, interval: 1s}}\n\
         syncs:\n  - {{name: infra, source: infra, path: deploy, namespace: {ns}, selfHeal: true, poolGuard: {{maxSizeStep: 5}}, health: {{wait: false}}}}\n\
         alerts:\n  sinks:\n    - {{type: ociNotifications, name: ons, topicId: {TOPIC_ID}, endpoint: \"https://127.0.0.1:{port}\"}}\n\
         {oci}",
        dir = work.path().display(),
        ns = ns.name,
        url = repo.file_url(),
        port = s.services,
        oci = s.oci_section(&token, &["containerengine", "notifications"], ""),
    );
    let (agent, path) = Agent::run(work.path(), &config);
    let cms: Api<ConfigMap> = Api::namespaced(control_plane().client().await, &ns.name);
    wait_value(
        &cms,
        "a",
        "1",
        &agent,
        "the first revision was never applied",
    )
    .await;
    assert!(
        updates(&s).is_empty(),
        "nothing differed, nothing was written"
    );

    // Size 3 across three fault domains.
    let three = ["FAULT-DOMAIN-1", "FAULT-DOMAIN-2", "FAULT-DOMAIN-3"];
    let started = Instant::now();
    repo.push(
        "main",
        &[
            ("deploy/pool.yaml", &pool_file(3, &three, "")),
            ("deploy/nodepool.yaml", &node_pool_file(3)),
            ("deploy/cm.yaml", &harness::cm("a", "2")),
        ],
        &[],
    );
    wait_value(
        &cms,
        "a",
        "2",
        &agent,
        "the revision with the pool change was never applied",
    )
    .await;
    let took = started.elapsed();
    let ups = updates(&s);
    assert_eq!(ups.len(), 2, "one Update per pool: {ups:?}");
    let of = |id: &str| ups.iter().find(|u| u["pool"] == id).unwrap().clone();
    let (virt, node) = (of(POOL), of(NODE_POOL));
    assert_eq!(virt["details"]["size"], 3);
    assert_eq!(
        virt["details"]["placementConfigurations"][0]["faultDomain"],
        json!(three)
    );
    // A node pool's size is in nodeConfigDetails; its fault domains did not change (same
    // set, another order), so they are not sent.
    assert_eq!(node["details"], json!({"nodeConfigDetails": {"size": 3}}));
    assert!(
        virt["if-match"].is_string() && node["if-match"].is_string(),
        "updated with if-match"
    );
    eprintln!("commit → work request SUCCEEDED and the revision applied: {took:?}");

    // Out of band (another client, signed as OCI requires): the pool shrinks to 2. The
    // next resync polls it, reports the drift with its field and values, and heals it.
    let body = work.path().join("oob.json");
    std::fs::write(&body, r#"{"size": 2}"#).unwrap();
    let url = s.url(&format!("/20180222/virtualNodePools/{POOL}"));
    let out = s.raw_request(&token, &["PUT", &url, "--body", body.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    let drift = loop {
        let found = s.log("messages.jsonl").into_iter().find(|m| {
            m["message"]["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("VirtualNodePool/web: drift"))
        });
        if let Some(m) = found {
            break m["message"]["body"].as_str().unwrap().to_owned();
        }
        assert!(started.elapsed() < WAIT, "no drift alert:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(drift.contains("size (3 → 2)"), "{drift}");
    let started = Instant::now();
    while !updates(&s)
        .iter()
        .skip(3)
        .any(|u| u["pool"] == POOL && u["details"]["size"] == 3)
    {
        assert!(started.elapsed() < WAIT, "never healed:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let healed = updates(&s).len();
    // An unchanged pool's reconcile writes nothing and looks the pool up by name no more:
    // the next resyncs (each a drift poll and, self-healing, the sync) only GET the pool.
    let engine = |s: &StandIn| -> Vec<String> {
        s.log("requests.jsonl")
            .iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/20180222/"))
            })
            .map(|r| {
                format!(
                    "{} {}",
                    r["method"].as_str().unwrap(),
                    r["path"].as_str().unwrap()
                )
            })
            .collect()
    };
    let before = engine(&s).len();
    let started = Instant::now();
    while engine(&s).len() < before + 7 {
        assert!(started.elapsed() < WAIT, "no resync:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let window = engine(&s)[before..].to_vec();
    let pool_get = |r: &&String| {
        **r == format!("GET /20180222/virtualNodePools/{POOL}")
            || **r == format!("GET /20180222/nodePools/{NODE_POOL}")
    };
    let pool_gets = window.iter().filter(pool_get).count();
    let others: Vec<&String> = window
        .iter()
        .filter(|r| !r.starts_with("GET /20180222/workRequests/") && !pool_get(r))
        .collect();
    assert!(others.is_empty() && pool_gets >= 4, "{window:?}");

    // To zero: held back, nothing written, the ConfigMap of that revision not applied.
    repo.push(
        "main",
        &[
            ("deploy/pool.yaml", &pool_file(0, &three, "")),
            ("deploy/cm.yaml", &harness::cm("a", "3")),
        ],
        &[],
    );
    let status = || standin::status(&path);
    let started = Instant::now();
    while !status().contains("HeldBack") {
        assert!(
            started.elapsed() < WAIT,
            "not held back:\n{}\n{}",
            status(),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(updates(&s).len(), healed);
    let cm = cms.get("a").await.unwrap();
    assert_eq!(cm.data.unwrap()["value"], "2");

    // A work request that fails: the sync fails with OCI's text, the ConfigMap waits.
    std::fs::write(s.dir.path().join("fail-updates"), "").unwrap();
    repo.push(
        "main",
        &[
            ("deploy/pool.yaml", &pool_file(4, &three, "")),
            ("deploy/cm.yaml", &harness::cm("a", "4")),
        ],
        &[],
    );
    let started = Instant::now();
    loop {
        let log = agent.log();
        if log.contains("Out of host capacity.") {
            break;
        }
        assert!(started.elapsed() < WAIT, "no failure:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(status().contains("Failed"), "{}", status());
    let cm = cms.get("a").await.unwrap();
    assert_eq!(
        cm.data.unwrap()["value"],
        "2",
        "the capacity did not come, nor the objects"
    );

    // The pool leaves Git: reported as no longer managed, never deleted nor changed.
    std::fs::remove_file(s.dir.path().join("fail-updates")).unwrap();
    repo.push(
        "main",
        &[("deploy/cm.yaml", &harness::cm("a", "5"))],
        &["deploy/pool.yaml"],
    );
    wait_value(
        &cms,
        "a",
        "5",
        &agent,
        "the revision without the pool was never applied",
    )
    .await;
    // The outcome is logged once the sync ends, which may be after the ConfigMap changed.
    let started = Instant::now();
    while !agent
        .log()
        .contains("object=VirtualNodePool/web action=skipped no longer in Git")
    {
        assert!(started.elapsed() < WAIT, "{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sizes: Vec<Value> = updates(&s)
        .iter()
        .map(|u| u["details"]["size"].clone())
        .collect();
    assert!(
        sizes.iter().all(|n| *n != json!(0)),
        "nothing ever scaled the pool to 0 or deleted it: {sizes:?}"
    );
}
