//! The install, as a pod runs it: `manifests/install/{cluster-wide,namespaced}` built with
//! the pinned kustomize and server-side applied by the admin, then the real binary run with
//! exactly what the Deployment's pod gets and nothing else: the service-account token the
//! API server issues by TokenRequest, the cluster CA from the `kube-root-ca.crt` ConfigMap
//! its projected volume reads, the namespace file, `KUBERNETES_SERVICE_HOST`/`PORT`, and no
//! kubeconfig. Under each variant's RBAC the agent leads (the Lease), syncs, heals drift,
//! prunes and writes Events; an object outside the granted rights is refused by the API
//! server, and `status` (itself run in-cluster) names it and says forbidden. Under the
//! cluster-wide rights it also syncs both reference architectures (`manifests/examples`,
//! local overlays) to Healthy; the namespaced rights cannot hold them (they declare
//! Namespaces and cluster-scoped RBAC), and that variant syncs team-a's repository only.
//!
//! Both variants install into the `gitops-agent` namespace the manifests name, so they run
//! one after the other in one test.

#[path = "../harness/git.rs"]
mod git;
#[path = "../harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::control_plane;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};

const WAIT: Duration = Duration::from_secs(120);
const AGENT_NS: &str = "gitops-agent";
const POD: &str = "gitops-agent-6d9f7-x2k4q";

/// One RBAC variant: the overlay, the namespace its syncs target, and an object its rights
/// do not cover.
struct Variant {
    overlay: &'static str,
    target: &'static str,
    /// Whether the repository declares the target Namespace itself.
    declares_namespace: bool,
    forbidden: (&'static str, &'static str),
}

const VARIANTS: [Variant; 2] = [
    Variant {
        overlay: "cluster-wide",
        target: "apps-installed",
        declares_namespace: true,
        forbidden: (
            "PriorityClass/urgent",
            "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: urgent\nvalue: 1000\n",
        ),
    },
    Variant {
        overlay: "namespaced",
        target: "team-a",
        declares_namespace: false,
        forbidden: (
            "ConfigMap/default/elsewhere",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: elsewhere\n  namespace: default\ndata: {value: x}\n",
        ),
    },
];

#[tokio::test]
async fn the_install_runs_in_cluster_under_each_rbac_variant() {
    // The examples' LoadBalancers and ExternalSecret need the add-ons to become Healthy.
    let client = harness::with_addons().client().await;
    for v in &VARIANTS {
        run_variant(&client, v).await;
        uninstall(&client, v).await;
    }
}

async fn run_variant(client: &Client, v: &Variant) {
    let built = kustomize_build(v.overlay);
    harness::apply_documents(client, &built, "gitops-agent-install").await;
    let status_of = |pod: &Pod, dir: &Path| pod.cli(&["status", "--config"], dir);

    let upstream = git::Upstream::new();
    let repo = upstream.create("platform");
    let mut files = if v.overlay == "cluster-wide" {
        harness::files_under(&harness::repo_root().join("manifests"), "examples")
    } else {
        Vec::new()
    };
    files.extend(own(&[
        ("apps/settings.yaml", harness::cm("settings", "v1")),
        ("apps/extra.yaml", harness::cm("extra", "x")),
        ("apps/web.yaml", WEB.to_string()),
    ]));
    if v.declares_namespace {
        let ns = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n",
            v.target
        );
        files.push(("apps/namespace.yaml".into(), ns));
    }
    repo.push("main", &harness::borrowed(&files), &[]);
    let daemon = git::GitDaemon::start(upstream.root());
    let dir = tempfile::tempdir().unwrap();
    let pod = Pod::start(
        client,
        dir.path(),
        &config(dir.path(), v, &daemon.url("platform")),
    )
    .await;

    // It leads: the Lease names this pod.
    let leases: Api<Lease> = Api::namespaced(client.clone(), AGENT_NS);
    wait(&pod, "the pod holds the leader Lease", || async {
        let l = leases.get_opt("gitops-agent").await.unwrap();
        l.and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .as_deref()
            == Some(POD)
    })
    .await;

    // It syncs.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), v.target);
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), v.target);
    wait(&pod, "the revision is applied", || async {
        value(&cms, "settings").await.as_deref() == Some("v1")
            && deploys.get_opt("web").await.unwrap().is_some()
    })
    .await;

    // It heals drift, and says so in an Event about the object.
    let pp = PatchParams::apply("someone-else").force();
    let edit =
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"value": "edited"}});
    cms.patch("settings", &pp, &Patch::Apply(&edit))
        .await
        .unwrap();
    wait(&pod, "the edit is reverted", || async {
        value(&cms, "settings").await.as_deref() == Some("v1")
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), v.target);
    wait(
        &pod,
        "a DriftDetected Event about ConfigMap/settings",
        || async {
            let list = events.list(&ListParams::default()).await.unwrap();
            list.items.iter().any(|e| {
                e.reason.as_deref() == Some("DriftDetected")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("settings")
            })
        },
    )
    .await;

    // It prunes what left Git.
    repo.push("main", &[], &["apps/extra.yaml"]);
    wait(&pod, "ConfigMap/extra is pruned", || async {
        cms.get_opt("extra").await.unwrap().is_none()
    })
    .await;

    // A write its rights do not cover is refused, and reported naming the object.
    if v.overlay == "cluster-wide" {
        wait(&pod, "both examples are synced and Healthy", || async {
            let s = status_of(&pod, dir.path());
            ["shop ", "crud "].iter().all(|sync| {
                s.lines().any(|l| {
                    l.starts_with(sync) && l.contains("Succeeded") && l.contains("Healthy")
                })
            })
        })
        .await;
    }
    let (subject, manifest) = v.forbidden;
    repo.push("main", &[("apps/forbidden.yaml", manifest)], &[]);
    wait(&pod, "status reports the forbidden write", || async {
        let s = status_of(&pod, dir.path());
        s.contains(subject) && s.contains("forbidden")
    })
    .await;
    let deploy_events: Api<Event> = Api::namespaced(client.clone(), AGENT_NS);
    wait(&pod, "a SyncFailed Event about the agent", || async {
        let list = deploy_events.list(&ListParams::default()).await.unwrap();
        list.items.iter().any(|e| {
            e.reason.as_deref() == Some("SyncFailed")
                && e.note.as_deref().is_some_and(|n| n.contains(subject))
        })
    })
    .await;
    drop(pod);
}

const WEB: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: iad.ocir.io/example/web:1.0
";

fn own(files: &[(&str, String)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(p, c)| (p.to_string(), c.clone()))
        .collect()
}

/// What the ConfigMap in the install would hold for this test's repository.
fn config(dir: &Path, v: &Variant, url: &str) -> PathBuf {
    let scope = if v.overlay == "namespaced" {
        format!("scope: {{namespaces: [{}]}}\n", v.target)
    } else {
        String::new()
    };
    // Under cluster-wide rights, the reference architectures too.
    let examples = if v.overlay == "cluster-wide" {
        "  - {name: shop, source: platform, path: examples/microservices/overlays/local, namespace: shop}\n\
         \x20 - {name: crud, source: platform, path: examples/serverless/overlays/local, namespace: crud}\n"
            .to_string()
    } else {
        String::new()
    };
    let kustomize = harness::renderer("kustomize");
    let text = format!(
        "stateDir: {state}\nnamespace: {AGENT_NS}\n{scope}\
         render: {{kustomize: {kustomize}}}\n\
         leaderElection: {{enabled: true, leaseName: gitops-agent}}\n\
         alerts:\n  sinks:\n    - {{type: events, name: cluster, agentRef: {{apiVersion: apps/v1, kind: Deployment, name: gitops-agent}}}}\n\
         sources:\n  - {{name: platform, url: {url}, interval: 1s}}\n\
         syncs:\n  - {{name: apps, source: platform, path: apps, namespace: {ns}, selfHeal: true, health: {{wait: false}}}}\n{examples}",
        state = dir.join("state").display(),
        ns = v.target,
        kustomize = kustomize.display(),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn kustomize_build(overlay: &str) -> String {
    let dir = harness::repo_root().join("manifests/install").join(overlay);
    let out = Command::new(harness::renderer("kustomize"))
        .arg("build")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kustomize build {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The agent as the install's pod: its service-account files in a directory, the
/// environment the kubelet sets, no kubeconfig anywhere.
struct Pod {
    child: Child,
    log: PathBuf,
    env: Vec<(String, String)>,
}

impl Pod {
    async fn start(client: &Client, dir: &Path, config: &Path) -> Pod {
        let sa_dir = dir.join("serviceaccount");
        std::fs::create_dir_all(&sa_dir).unwrap();
        // The token the kubelet would project for the install's service account.
        let token = control_plane().issue_token(AGENT_NS, "gitops-agent").await;
        std::fs::write(sa_dir.join("token"), token).unwrap();
        std::fs::write(sa_dir.join("ca.crt"), root_ca(client).await).unwrap();
        std::fs::write(sa_dir.join("namespace"), AGENT_NS).unwrap();
        let server = control_plane().config().await.cluster_url;
        let env = vec![
            (
                "KUBERNETES_SERVICE_HOST".into(),
                server.host().unwrap().to_string(),
            ),
            (
                "KUBERNETES_SERVICE_PORT".into(),
                server.port_u16().unwrap().to_string(),
            ),
            (
                "GITOPS_AGENT_SERVICE_ACCOUNT_DIR".into(),
                sa_dir.display().to_string(),
            ),
            ("POD_NAME".into(), POD.into()),
            ("HOME".into(), dir.display().to_string()),
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ];
        let log = dir.join("agent.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gitops-agent"))
            .args(["run", "--config"])
            .arg(config)
            .env_clear()
            .envs(env.iter().cloned())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Pod { child, log, env }
    }

    /// Another command of the binary, with the pod's environment and its config.
    fn cli(&self, args: &[&str], dir: &Path) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_gitops-agent"))
            .args(args)
            .arg(dir.join("config.yaml"))
            .env_clear()
            .envs(self.env.iter().cloned())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ca.crt` of the `kube-root-ca.crt` ConfigMap the controller-manager publishes in every
/// namespace (what the projected volume mounts).
async fn root_ca(client: &Client) -> String {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), AGENT_NS);
    let deadline = Instant::now() + WAIT;
    loop {
        let ca = cms.get_opt("kube-root-ca.crt").await.unwrap();
        if let Some(ca) = ca
            .and_then(|c| c.data)
            .and_then(|d| d.get("ca.crt").cloned())
        {
            return ca;
        }
        assert!(
            Instant::now() < deadline,
            "no kube-root-ca.crt in {AGENT_NS}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn value(cms: &Api<ConfigMap>, name: &str) -> Option<String> {
    let cm = cms.get_opt(name).await.unwrap()?;
    cm.data?.get("value").cloned()
}

async fn wait<F, Fut>(pod: &Pod, what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < WAIT,
            "{what}: not within {WAIT:?}\n{}",
            pod.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Removes the install (and the variant's target namespace), and waits until its namespace
/// is gone, so that the next variant installs afresh.
async fn uninstall(client: &Client, v: &Variant) {
    let dp = DeleteParams::background();
    let nss: Api<Namespace> = Api::all(client.clone());
    for ns in [AGENT_NS, v.target, "shop", "crud", "ingress-nginx"] {
        let _ = nss.delete(ns, &dp).await;
    }
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete("gitops-agent-sync", &dp)
        .await;
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete("gitops-agent-sync", &dp)
        .await;
    let deadline = Instant::now() + WAIT;
    while nss.get_opt(AGENT_NS).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "Namespace/{AGENT_NS} not deleted"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
