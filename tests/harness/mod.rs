//! End-to-end test harness: a real local control plane (tests/cluster) per test binary,
//! or a running one named by `GITOPS_AGENT_TEST_KUBECONFIG`, and a namespace per test.
//!
//! The control plane is started once, lazily, with `k8s-local supervise --exit-with-stdin`:
//! the child holds our stdin pipe, so when the test binary exits (however it exits) the
//! pipe closes and the supervisor tears the cluster down and removes its directory.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace as CoreNamespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// Names a kubeconfig of an already running cluster to use instead of starting one.
pub const KUBECONFIG_ENV: &str = "GITOPS_AGENT_TEST_KUBECONFIG";
/// Label on every namespace the harness creates, so leftovers are easy to find.
pub const TEST_LABEL: &str = "gitops-agent.io/e2e";

pub struct ControlPlane {
    kubeconfig: PathBuf,
    // Held for the life of the process: dropping it would close the supervisor's stdin.
    _supervisor: Option<Mutex<Child>>,
}

static CONTROL_PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The official `oci` Python SDK and CLI (the OCI oracle): the venv `tests/setup` makes
/// for the versions in `tests/oci/versions`.
pub fn oci_python() -> PathBuf {
    let versions = std::fs::read_to_string(repo_root().join("tests/oci/versions")).unwrap();
    let cli = versions
        .lines()
        .find_map(|l| l.strip_prefix("oci_cli="))
        .expect("tests/oci/versions names oci_cli");
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME"));
    let cache = std::env::var_os("XDG_CACHE_HOME").map_or(home.join(".cache"), PathBuf::from);
    let python = cache.join(format!("gitops-agent/python/oci-cli-{cli}/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run tests/setup (it installs the oci SDK the tests compare with)",
        python.display()
    );
    python
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

/// What a build script beside the tests prints: the directory holding its binaries.
fn built(script: &str) -> PathBuf {
    try_built(script).unwrap_or_else(|e| panic!("{e}"))
}

fn try_built(script: &str) -> Result<PathBuf, String> {
    let script = repo_root().join(script);
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed: {}", script.display(), out.status));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// kubectl at the control plane's version (tests/cluster/build), the peer tests compare with.
pub fn kubectl() -> PathBuf {
    built("tests/cluster/build").join("kubectl")
}

/// A pinned renderer (`kustomize`, `helm`), as tests/renderers/build builds it.
pub fn renderer(name: &str) -> PathBuf {
    built("tests/renderers/build").join(name)
}

/// `gitops-agent ARGS --config CONFIG`, in `dir` when given, against the test cluster
/// (`--kubeconfig`) unless it is `validate` (offline): its exit code and all it printed,
/// standard output first.
pub fn agent_cli(args: &[&str], config: &Path, dir: Option<&Path>) -> (Option<i32>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gitops-agent"));
    c.args(args).arg("--config").arg(config);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    if args.first() != Some(&"validate") {
        c.arg("--kubeconfig").arg(control_plane().kubeconfig());
    }
    let out = c.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// The shared control plane, started on first use. Panics (failing the test) with the
/// supervisor's own error when the cluster cannot start.
pub fn control_plane() -> &'static ControlPlane {
    match CONTROL_PLANE.get_or_init(start) {
        Ok(cp) => cp,
        Err(e) => panic!("local control plane: {e}"),
    }
}

/// The control plane with its add-ons running (tests/addons: MetalLB's controller, External
/// Secrets Operator, Ingress status), started once per test binary that asks for them.
pub fn with_addons() -> &'static ControlPlane {
    let cp = control_plane();
    static ADDONS: OnceLock<Result<Mutex<Child>, String>> = OnceLock::new();
    if let Err(e) = ADDONS.get_or_init(|| start_addons(cp)) {
        panic!("cluster add-ons: {e}");
    }
    cp
}

/// The directory tests/addons/build fills (built once per version): the add-ons, and
/// their CRDs in `crds/`.
pub fn addons_dir() -> Result<PathBuf, String> {
    try_built("tests/addons/build")
}

fn start_addons(cp: &ControlPlane) -> Result<Mutex<Child>, String> {
    let bin = addons_dir()?.join("addons");
    // Beside the cluster's own files, so that its clean-up removes them too.
    let dir = cp
        .kubeconfig
        .parent()
        .unwrap_or(Path::new("."))
        .join("addons");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ready = dir.join("ready");
    let log = std::fs::File::create(dir.join("addons.out")).map_err(|e| e.to_string())?;
    let mut child = Command::new(&bin)
        .arg("--kubeconfig")
        .arg(&cp.kubeconfig)
        .arg("--logs")
        .arg(&dir)
        .arg("--ready")
        .arg(&ready)
        .arg("--exit-with-stdin")
        .stdin(Stdio::piped())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(240);
    while !ready.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let out = std::fs::read_to_string(dir.join("addons.out")).unwrap_or_default();
            return Err(format!(
                "exited ({status}): {out}; logs in {}",
                dir.display()
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("not ready in 240s; logs in {}", dir.display()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Mutex::new(child))
}

fn start() -> Result<ControlPlane, String> {
    if let Ok(path) = std::env::var(KUBECONFIG_ENV) {
        return Ok(ControlPlane {
            kubeconfig: path.into(),
            _supervisor: None,
        });
    }
    // The supervisor picks free ports and then binds them; with test binaries running side
    // by side (tests/run), another process can take one in between. Start afresh then.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match start_once(attempt) {
            Err(e) if attempt < 3 && e.contains("address already in use") => continue,
            done => return done,
        }
    }
}

fn start_once(attempt: u32) -> Result<ControlPlane, String> {
    let bin_dir = try_built("tests/cluster/build")?;
    let dir =
        std::env::temp_dir().join(format!("gitops-agent-e2e-{}-{attempt}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log = std::fs::File::create(dir.join("supervisor.out")).map_err(|e| e.to_string())?;
    let mut child = Command::new(bin_dir.join("k8s-local"))
        .args(["supervise", "--exit-with-stdin", "--cleanup", "--dir"])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn k8s-local: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        // `ready` is written in place, not renamed into place: a read can see it empty or
        // cut short, so only a whole path to the kubeconfig counts.
        if let Ok(path) = std::fs::read_to_string(dir.join("ready"))
            && path.trim().ends_with("kubeconfig")
            && Path::new(path.trim()).is_file()
        {
            return Ok(ControlPlane {
                kubeconfig: path.trim().into(),
                _supervisor: Some(Mutex::new(child)),
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let why = std::fs::read_to_string(dir.join("failed")).unwrap_or_default();
            return Err(format!(
                "supervisor exited ({status}): {why}; logs in {}",
                dir.join("logs").display()
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "not ready in 240s; logs in {}",
                dir.join("logs").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl ControlPlane {
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Client configuration for the cluster admin (system:masters).
    pub async fn config(&self) -> Config {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("read test kubeconfig");
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("load test kubeconfig")
    }

    /// The API server's audit log: service accounts' writes, one JSON event a line.
    pub fn audit_log(&self) -> PathBuf {
        self.kubeconfig
            .parent()
            .expect("the kubeconfig is in the cluster's directory")
            .join("audit.log")
    }

    /// A new service account `namespace/name` and a token the API server issued for it
    /// (the TokenRequest API, an hour long).
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        use k8s_openapi::api::core::v1::ServiceAccount;
        let client = self.client().await;
        let sas: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let sa = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
        let sa: ServiceAccount = serde_json::from_value(sa).unwrap();
        sas.create(&PostParams::default(), &sa).await.unwrap();
        self.issue_token(namespace, name).await
    }

    /// A token the API server issues (TokenRequest, an hour long) for the existing service
    /// account `namespace/name`: what the kubelet projects into its pods.
    pub async fn issue_token(&self, namespace: &str, name: &str) -> String {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        let sas: Api<ServiceAccount> = Api::namespaced(self.client().await, namespace);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        sas.create_token_request(name, &PostParams::default(), &req)
            .await
            .unwrap()
            .status
            .unwrap()
            .token
    }

    /// A kubeconfig at `path` for service account `namespace/name`, with a fresh token, so
    /// that a process runs as that account (RBAC applies, and the audit log names it).
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str, path: &Path) {
        let token = self.service_account_token(namespace, name).await;
        let mut kc = Kubeconfig::read_from(&self.kubeconfig).expect("read test kubeconfig");
        for user in &mut kc.auth_infos {
            if let Some(auth) = user.auth_info.as_mut() {
                *auth = kube::config::AuthInfo {
                    token: Some(token.clone().into()),
                    ..Default::default()
                };
            }
        }
        // JSON is YAML: kubeconfig readers take it.
        std::fs::write(path, serde_json::to_string(&kc).unwrap()).unwrap();
    }

    /// A fresh admin client. Each test makes its own: a client's connections belong to the
    /// runtime it was made on, and every `#[tokio::test]` has its own runtime.
    pub async fn client(&self) -> Client {
        Client::try_from(self.config().await).expect("build client")
    }
}

/// A namespace for one test, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let name = format!("e2e-{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let ns: CoreNamespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {TEST_LABEL: "true"}}
        }))
        .unwrap();
        Api::<CoreNamespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("Namespace/{name}: create: {e}"));
        TestNamespace {
            name,
            kubeconfig: control_plane().kubeconfig.clone(),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be shutting down: delete from a
        // thread with its own runtime and client. Deletion is asynchronous in the cluster.
        let (name, kubeconfig) = (self.name.clone(), self.kubeconfig.clone());
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let kc = Kubeconfig::read_from(&kubeconfig).ok()?;
                let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .ok()?;
                let client = Client::try_from(cfg).ok()?;
                Api::<CoreNamespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await
                    .ok()
            })
        });
        let _ = handle.join();
    }
}

/// Installs a test log subscriber once (RUST_LOG or warn), so agent logs show in failing tests.
pub fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// A ConfigMap manifest with one key, `value`.
pub fn cm(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: {value:?}\n"
    )
}

/// `n` files `deploy/cm<i>.yaml`, each ConfigMap `cm<i>` with value "1".
pub fn configmap_files(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("deploy/cm{i}.yaml"), cm(&format!("cm{i}"), "1")))
        .collect()
}

/// The (path, text) pairs borrowed, as repositories and fixtures take them.
pub fn borrowed(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect()
}

/// Scales a Deployment through its scale subresource as `manager` (as `kubectl scale` or
/// an autoscaler would), so drift can be told apart by field manager.
pub async fn scale(
    api: &Api<k8s_openapi::api::apps::v1::Deployment>,
    name: &str,
    manager: &str,
    replicas: i32,
) {
    let pp = kube::api::PatchParams {
        field_manager: Some(manager.into()),
        ..Default::default()
    };
    let patch = kube::api::Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}}));
    api.patch_scale(name, &pp, &patch).await.unwrap();
}

/// Server-side applies every document of `yaml` (a `kustomize build`, a manifest file) as
/// the cluster admin with field manager `manager`, CustomResourceDefinitions first (and
/// waited on until served), the way an operator installs something before the agent runs.
pub async fn apply_documents(client: &Client, yaml: &str, manager: &str) {
    use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams};
    use kube::discovery::{Discovery, Scope};
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("YAML documents: {e}"));
    let docs: Vec<serde_json::Value> = docs.into_iter().filter(|d| d.is_object()).collect();
    let is_crd = |d: &serde_json::Value| d["kind"] == "CustomResourceDefinition";
    let pp = PatchParams::apply(manager).force();
    for pass in [true, false] {
        // Discovery after the CRDs, so that their kinds resolve.
        let discovery = Discovery::new(client.clone()).run().await.unwrap();
        for doc in docs.iter().filter(|d| is_crd(d) == pass) {
            let (api_version, kind) = (
                doc["apiVersion"].as_str().unwrap(),
                doc["kind"].as_str().unwrap(),
            );
            let name = doc["metadata"]["name"].as_str().unwrap();
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let gvk = GroupVersionKind::gvk(group, version, kind);
            let (ar, caps) = discovery
                .resolve_gvk(&gvk)
                .unwrap_or_else(|| panic!("{kind}/{name}: {api_version} is not served"));
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Namespaced => {
                    let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
                    Api::namespaced_with(client.clone(), ns, &ar)
                }
                Scope::Cluster => Api::all_with(client.clone(), &ar),
            };
            api.patch(name, &pp, &Patch::Apply(doc))
                .await
                .unwrap_or_else(|e| panic!("{kind}/{name}: apply: {e}"));
        }
        if pass {
            for doc in docs.iter().filter(|d| is_crd(d)) {
                crd_served(client, doc["metadata"]["name"].as_str().unwrap()).await;
            }
        }
    }
}

/// Waits until the CRD `name` is Established.
pub async fn crd_served(client: &Client, name: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let crd = crds.get(name).await.unwrap();
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "CustomResourceDefinition/{name}: not Established in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every file under `root/dir`, as (path relative to `root`, content): a directory of the
/// repository published as a Git repository's tree.
pub fn files_under(root: &Path, dir: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut dirs = vec![root.join(dir)];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
                files.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    files
}
