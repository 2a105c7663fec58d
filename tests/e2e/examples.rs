//! The two reference architectures (`manifests/examples`), each synced by the binary into
//! the local control plane with its add-ons (tests/addons): the microservices example's
//! LoadBalancer Service gets its address from MetalLB's controller; the serverless
//! example's ExternalSecret becomes a Secret through External Secrets Operator's real
//! controller, its Ingress gets the ingress controller's load balancer address, and it
//! passes the virtual-nodes and secrets policy packs. Both reach Healthy; `status` and
//! `diff` then agree that nothing is left to do, and a hand edit shows in `diff`.

#[path = "../harness/git.rs"]
mod git;
#[path = "../harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;

use git::Upstream;
use harness::TestNamespace;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;

fn write_config(dir: &Path, agent_ns: &str, url: &str) -> PathBuf {
    let config = dir.join("config.yaml");
    let text = format!(
        "stateDir: {state}\nnamespace: {agent_ns}\n\
         render: {{kustomize: {kustomize}}}\n\
         policies: {{dir: {policies}}}\n\
         sources:\n  - {{name: examples, url: {url}}}\n\
         syncs:\n\
         \x20 - {{name: shop, source: examples, path: microservices/overlays/local, namespace: shop, health: {{timeout: 3m}}}}\n\
         \x20 - {{name: crud, source: examples, path: serverless/overlays/local, namespace: crud, health: {{timeout: 3m}}, policies: {{packs: [virtual-nodes, secrets]}}}}\n",
        state = dir.display(),
        kustomize = harness::renderer("kustomize").display(),
        policies = harness::repo_root().join("policies").display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// The README's main job, through the binary: the first sync of both examples, health
/// waited for, then `status` and `diff` agree that nothing is left to do.
#[tokio::test]
async fn both_reference_architectures_sync_and_become_healthy() {
    harness::init_logging();
    let cp = harness::with_addons();
    let admin = cp.client().await;
    let agent_ns = TestNamespace::create(&admin, "example").await;
    let upstream = Upstream::new();
    let repo = upstream.create("examples");
    let files = harness::files_under(&harness::repo_root().join("manifests"), "examples");
    // The example tree as one Git repository, as a user would publish it.
    let files: Vec<(String, String)> = files
        .into_iter()
        .map(|(p, c)| (p.trim_start_matches("examples/").to_string(), c))
        .collect();
    repo.push("main", &harness::borrowed(&files), &[]);
    let state = tempfile::tempdir().unwrap();
    let config = write_config(state.path(), &agent_ns.name, &repo.file_url());
    let run = |args: &[&str], config: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_gitops-agent"))
            .args(args)
            .arg("--config")
            .arg(config)
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = run(&["sync", "--once"], &config);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        !err.contains('\x1b'),
        "no colour codes in logs that go to a pipe:\n{err}"
    );
    for line in [
        "Namespace/shop created",
        "ConfigMap/shop/web-config-",
        "  rendered: kustomize in ",
        "Deployment/shop/web created",
        "Service/shop/web created",
        "Deployment/shop/redis created",
        "ExternalSecret/crud/db-credentials created",
        "SecretStore/crud/vault created",
        "HorizontalPodAutoscaler/crud/app-server created",
        "Ingress/crud/app-server created",
        "Deployment/ingress-nginx/ingress-nginx-controller created",
        "Job/ingress-nginx/ingress-nginx-admission-create created",
    ] {
        assert!(out.contains(line), "{line:?} missing in:\n{out}");
    }
    assert_eq!(out.matches("  health: Healthy").count(), 2, "{out}");
    assert!(
        !out.contains("ValidatingWebhookConfiguration"),
        "the local overlay drops it:\n{out}"
    );

    // What the add-ons did, as OKE's components would have.
    let lb = load_balancer_ip(&admin, "shop", "web").await;
    assert!(lb.starts_with("203.0.113."), "{lb}");
    let ingress_lb = load_balancer_ip(&admin, "ingress-nginx", "ingress-nginx-controller").await;
    assert!(
        ingress_lb.starts_with("203.0.113.") && ingress_lb != lb,
        "{ingress_lb}"
    );
    let ing = Api::<Ingress>::namespaced(admin.clone(), "crud")
        .get("app-server")
        .await
        .unwrap();
    let ing_ip = ing
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .unwrap_or_default();
    assert_eq!(ing_ip.first().and_then(|i| i.ip.clone()), Some(ingress_lb));
    let secret = Api::<Secret>::namespaced(admin.clone(), "crud")
        .get("db-credentials")
        .await
        .unwrap();
    let password = secret.data.unwrap_or_default().remove("password").unwrap();
    assert_eq!(password.0, b"local-only-password");

    let (code, out, err) = run(&["status"], &config);
    assert_eq!(code, Some(0), "{err}");
    for sync in ["shop ", "crud "] {
        let row = out
            .lines()
            .find(|l| l.starts_with(sync))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            row.contains("Succeeded") && row.contains("Healthy"),
            "{out}"
        );
    }
    let (code, out, err) = run(&["diff"], &config);
    assert_eq!(
        code,
        Some(0),
        "nothing to change; stdout:\n{out}\nstderr:\n{err}"
    );

    // A config that no longer has the shop: `status` shows its own syncs, and the
    // inventory the removed one left behind apart from them, with how to clean it up.
    let other = state.path().join("other.yaml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("{name: shop, source", "{name: other, source");
    std::fs::write(&other, text).unwrap();
    let (_, out, _) = run(&["status"], &other);
    let (mine, leftover) = out
        .split_once("Inventories in namespace")
        .unwrap_or_else(|| panic!("no leftover section in:\n{out}"));
    assert!(
        mine.lines()
            .any(|l| l.starts_with("other ") && l.contains("NeverSynced")),
        "{out}"
    );
    assert!(!mine.lines().any(|l| l.starts_with("shop ")), "{out}");
    assert!(
        leftover
            .lines()
            .any(|l| l.starts_with("shop ") && l.contains("Succeeded"))
            && leftover.contains("delete configmap gitops-agent-<sync>"),
        "{out}"
    );

    // Someone edits the ConfigMap behind Git's back: diff shows it and exits 1.
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "shop");
    // The generated ConfigMap's name carries its content hash.
    let name = cms
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .find(|n| n.starts_with("web-config-"))
        .unwrap();
    let edit = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
        "data": {"GREETING": "changed by hand"}
    });
    let pp = kube::api::PatchParams::apply("someone-else").force();
    cms.patch(&name, &pp, &kube::api::Patch::Apply(&edit))
        .await
        .unwrap();
    let (code, out, _) = run(&["diff"], &config);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("-  GREETING: changed by hand")
            && out.contains("+  GREETING: Hello from gitops-agent on the local control plane"),
        "{out}"
    );

    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for ns in ["shop", "crud", "ingress-nginx"] {
        namespaces.delete(ns, &Default::default()).await.unwrap();
    }
}

/// Every overlay of both examples validates offline, the serverless ones with the
/// virtual-nodes and secrets packs, given the CRDs of the add-ons the cluster runs (ESO's),
/// which the examples do not carry.
#[test]
fn every_overlay_validates_offline_with_the_packs() {
    let examples = harness::repo_root().join("manifests/examples");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let kustomize = harness::renderer("kustomize");
    std::fs::write(
        &config,
        format!("render: {{kustomize: {}}}\n", kustomize.display()),
    )
    .unwrap();
    let crds = harness::addons_dir().unwrap().join("crds");
    let policies = harness::repo_root().join("policies");
    for overlay in [
        "microservices/overlays/local",
        "microservices/overlays/oke",
        "serverless/overlays/local",
        "serverless/overlays/oke",
    ] {
        let path = examples.join(overlay);
        let mut args = vec![
            "validate",
            "--root",
            examples.to_str().unwrap(),
            path.to_str().unwrap(),
        ];
        if overlay.starts_with("serverless") {
            args.extend(["--pack", "virtual-nodes", "--pack", "secrets"]);
            args.extend([
                "--policies",
                policies.to_str().unwrap(),
                "--crds",
                crds.to_str().unwrap(),
            ]);
        }
        let (code, text) = harness::agent_cli(&args, &config, None);
        assert_eq!(code, Some(0), "{overlay}:\n{text}");
        assert!(text.contains("objects valid"), "{overlay}:\n{text}");
    }
    // Without the cluster's CRDs, the ExternalSecret's kind is unknown offline, and said so.
    let path = examples.join("serverless/overlays/oke");
    let args = [
        "validate",
        "--root",
        examples.to_str().unwrap(),
        path.to_str().unwrap(),
    ];
    let (code, text) = harness::agent_cli(&args, &config, None);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("ExternalSecret/crud/db-credentials: unknown kind ExternalSecret"),
        "{text}"
    );
}

async fn load_balancer_ip(client: &kube::Client, ns: &str, name: &str) -> String {
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    let ingress = svc
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .unwrap_or_default();
    ingress
        .first()
        .and_then(|i| i.ip.clone())
        .unwrap_or_else(|| panic!("Service/{ns}/{name}: no load balancer address"))
}
