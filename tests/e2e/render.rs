//! Rendered syncs against the real control plane, with the pinned binaries
//! (tests/renderers/build): a kustomize overlay (base, component, patches, a
//! configMapGenerator with its hash suffix) and a Helm chart (a dependency vendored in
//! `charts/`, values files, inline values, the live cluster's capabilities), each applied by
//! `gitops-agent sync --once` and compared with kubectl (tests/cluster/build) applying the
//! same `kustomize build` / `helm template` output: `kubectl diff --server-side` finds
//! nothing. A changed generator input applies the new ConfigMap and the Deployment that
//! uses it before the old ConfigMap is pruned (by the API server's own revision order). The
//! daemon serves an unchanged revision's resync from the render cache. Hostile inputs fail
//! clearly with nothing applied, and `validate` renders offline.

#[path = "../harness/git.rs"]
mod git;
#[path = "../harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use harness::{TestNamespace, control_plane};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};

const WAIT: Duration = Duration::from_secs(90);

/// `config.yaml` for `syncs` (YAML flow mappings) from the repository at `url` (source
/// `repo`), with `extra` top-level settings and `bounds` in the render section.
fn config(dir: &Path, agent_ns: &str, url: &str, syncs: &[String], extra: &str) -> PathBuf {
    config_with(dir, agent_ns, &[("repo", url)], syncs, extra, "")
}

fn config_with(
    dir: &Path,
    agent_ns: &str,
    sources: &[(&str, &str)],
    syncs: &[String],
    extra: &str,
    bounds: &str,
) -> PathBuf {
    let path = dir.join("config.yaml");
    let mut syncs: String = syncs.iter().map(|s| format!("  - {s}\n")).collect();
    if syncs.is_empty() {
        syncs = "  []\n".into();
    }
    let sources: String = sources
        .iter()
        .map(|(name, url)| format!("  - {{name: {name}, url: {url}}}\n"))
        .collect();
    std::fs::write(
        &path,
        format!(
            "stateDir: {state}\nnamespace: {agent_ns}\n\
             render: {{{bounds}kustomize: {k}, helm: {h}}}\n{extra}\
             sources:\n{sources}syncs:\n{syncs}",
            state = dir.display(),
            k = harness::renderer("kustomize").display(),
            h = harness::renderer("helm").display(),
        ),
    )
    .unwrap();
    path
}

/// `gitops-agent sync --once`: whether it succeeded, and all it printed.
fn sync_once(config: &Path) -> (bool, String) {
    let (code, text) = harness::agent_cli(&["sync", "--once"], config, None);
    (code == Some(0), text)
}

/// `kubectl diff --server-side` of `manifests` against the cluster: what it printed, after
/// checking it found no difference (exit code 0).
fn kubectl_diff_is_empty(manifests: &[u8], work: &Path) {
    let file = work.join("peer.yaml");
    std::fs::write(&file, manifests).unwrap();
    let out = Command::new(harness::kubectl())
        .args(["diff", "--server-side", "--field-manager=peer-check", "-f"])
        .arg(&file)
        .arg("--kubeconfig")
        .arg(control_plane().kubeconfig())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim().is_empty(),
        "kubectl diff --server-side after the agent's sync ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a pinned renderer as a peer would, in `dir`; its standard output.
fn render_as_peer(binary: &str, args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new(harness::renderer(binary))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{binary} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A checkout of `repo`'s main branch.
fn checkout(repo: &git::Repo, into: &Path) -> PathBuf {
    let dir = into.join("checkout");
    let _ = std::fs::remove_dir_all(&dir);
    let ok = Command::new("git")
        .args(["clone", "--quiet"])
        .arg(repo.path())
        .arg(&dir)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    dir
}

fn overlay_files(ns: &str) -> Vec<(&'static str, String)> {
    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\nspec:\n  replicas: 1\n  \
        selector: {matchLabels: {app: app}}\n  template:\n    metadata: {labels: {app: app}}\n    spec:\n      \
        containers:\n        - name: app\n          image: ghcr.io/example/app:1.0\n          \
        envFrom: [{configMapRef: {name: settings}}]\n";
    vec![
        (
            "base/kustomization.yaml",
            "resources: [deploy.yaml, web.yaml]\n\
             configMapGenerator:\n  - {name: settings, literals: [mode=base]}\n"
                .into(),
        ),
        ("base/deploy.yaml", deploy.into()),
        ("base/web.yaml", harness::cm("web", "1")),
        (
            "components/monitoring/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources: [scrape.yaml]\n\
             patches:\n  - target: {kind: Deployment}\n    patch: |-\n      \
             [{\"op\": \"add\", \"path\": \"/spec/template/metadata/annotations\", \"value\": {\"prometheus.io/scrape\": \"true\"}}]\n"
                .into(),
        ),
        ("components/monitoring/scrape.yaml", harness::cm("scrape", "on")),
        (
            "overlays/oke/kustomization.yaml",
            format!(
                "resources: [../../base]\ncomponents: [../../components/monitoring]\n\
                 namespace: {ns}\nnamePrefix: oke-\npatches:\n  - path: replicas.yaml\n\
                 configMapGenerator:\n  - name: settings\n    behavior: merge\n    envs: [settings.env]\n"
            ),
        ),
        (
            "overlays/oke/replicas.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\nspec: {replicas: 3}\n".into(),
        ),
        ("overlays/oke/settings.env", "mode=oke\nregion=us-ashburn-1\n".into()),
        ("README.md", "not a manifest, and not rendered".into()),
    ]
}

/// The ConfigMap the pod's first container takes its environment from.
fn uses_configmap(pod: k8s_openapi::api::core::v1::PodSpec) -> String {
    let from = pod.containers[0].env_from.clone().unwrap_or_default();
    from[0].config_map_ref.clone().unwrap().name
}

/// Every event of the namespace's Deployments and ConfigMaps, with the API server's
/// revision it happened at, from now on.
async fn record_events(client: kube::Client, ns: &str) -> Arc<Mutex<Vec<(u64, String)>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let deploys: Api<Deployment> = Api::namespaced(client, ns);
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut cm_stream = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let mut dep_stream = deploys
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let out = events.clone();
    tokio::spawn(async move {
        while let Some(Ok(e)) = cm_stream.next().await {
            let (what, cm) = match e {
                WatchEvent::Added(c) => ("added", c),
                WatchEvent::Deleted(c) => ("deleted", c),
                _ => continue,
            };
            let rv = cm.metadata.resource_version.unwrap().parse().unwrap();
            let name = cm.metadata.name.unwrap();
            out.lock()
                .unwrap()
                .push((rv, format!("{what} ConfigMap {name}")));
        }
    });
    let out = events.clone();
    tokio::spawn(async move {
        while let Some(Ok(e)) = dep_stream.next().await {
            let (WatchEvent::Added(d) | WatchEvent::Modified(d)) = e else {
                continue;
            };
            let rv = d
                .metadata
                .resource_version
                .clone()
                .unwrap()
                .parse()
                .unwrap();
            let uses = uses_configmap(d.spec.unwrap().template.spec.unwrap());
            out.lock()
                .unwrap()
                .push((rv, format!("Deployment uses {uses}")));
        }
    });
    events
}

/// What each test starts from: the agent's namespace, the sync's, and a Git server with
/// one repository.
struct Setup {
    client: kube::Client,
    agent_ns: TestNamespace,
    ns: TestNamespace,
    upstream: git::Upstream,
    repo: git::Repo,
}

async fn setup(name: &str) -> Setup {
    harness::init_logging();
    let client = control_plane().client().await;
    let agent_ns = TestNamespace::create(&client, &format!("{name}-agent")).await;
    let ns = TestNamespace::create(&client, name).await;
    let upstream = git::Upstream::new();
    let repo = upstream.create(name);
    Setup {
        client,
        agent_ns,
        ns,
        upstream,
        repo,
    }
}

/// The overlay's files and the chart's, in one repository.
fn overlay_and_chart(ns: &str) -> Vec<(&'static str, String)> {
    let mut files = overlay_files(ns);
    files.extend(chart_files().into_iter().map(|(p, c)| (p, c.to_owned())));
    files
}

#[tokio::test]
async fn a_kustomize_overlay_applies_as_kubectl_would_and_prunes_the_old_generated_configmap_last()
{
    let Setup {
        client,
        agent_ns,
        ns,
        repo,
        upstream: _upstream,
    } = setup("render").await;
    let files = overlay_files(&ns.name);
    let borrowed: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    repo.push("main", &borrowed, &[]);
    let work = tempfile::tempdir().unwrap();
    let sync = format!(
        "{{name: oke, source: repo, path: overlays/oke, namespace: {}, health: {{wait: false}}}}",
        ns.name
    );
    let config = config(work.path(), &agent_ns.name, &repo.file_url(), &[sync], "");
    let (ok, out) = sync_once(&config);
    assert!(ok, "{out}");
    assert!(out.contains("\n  rendered: kustomize in "), "{out}");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let names = || async {
        let mut n: Vec<String> = cms
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .filter(|n| n.starts_with("oke-"))
            .collect();
        n.sort();
        n
    };
    let first = names().await;
    assert_eq!(first.len(), 3, "{first:?}");
    assert_eq!(first[0], "oke-scrape", "the component's resource");
    let old = first[1].clone();
    assert!(old.starts_with("oke-settings-"), "hash suffix: {old}");
    let settings = cms.get(&old).await.unwrap().data.unwrap();
    assert_eq!(settings["mode"], "oke");
    assert_eq!(settings["region"], "us-ashburn-1");
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let app = deploys.get("oke-app").await.unwrap();
    let spec = app.spec.unwrap();
    assert_eq!(spec.replicas, Some(3), "the overlay's patch");
    let template = spec.template;
    let annotations = template.metadata.unwrap().annotations.unwrap();
    assert_eq!(
        annotations["prometheus.io/scrape"], "true",
        "the component's patch"
    );
    let uses = uses_configmap(template.spec.unwrap());
    assert_eq!(uses, old, "the reference follows the hashed name");

    // A peer applying the same build finds nothing to change.
    let tree = checkout(&repo, work.path());
    let built = render_as_peer("kustomize", &["build", "overlays/oke"], &tree);
    kubectl_diff_is_empty(&built, work.path());

    // The generator's input changes: a new hash. The new ConfigMap and the Deployment now
    // using it come before the old ConfigMap goes (the order users rely on with Flux).
    let events = record_events(client.clone(), &ns.name).await;
    repo.push(
        "main",
        &[(
            "overlays/oke/settings.env",
            "mode=oke\nregion=us-phoenix-1\n",
        )],
        &[],
    );
    let (ok, out) = sync_once(&config);
    assert!(ok, "{out}");
    let second = names().await;
    assert_eq!(second.len(), 3, "{second:?}");
    let new = second[1].clone();
    assert_ne!(new, old, "a new hash suffix");
    let settings = cms.get(&new).await.unwrap().data.unwrap();
    assert_eq!(settings["region"], "us-phoenix-1");
    let at = |what: String| {
        let started = Instant::now();
        loop {
            let found = events
                .lock()
                .unwrap()
                .iter()
                .find(|(_, e)| *e == what)
                .cloned();
            if let Some((rv, _)) = found {
                return rv;
            }
            assert!(
                started.elapsed() < WAIT,
                "no event {what:?}: {:?}",
                events.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let created = at(format!("added ConfigMap {new}"));
    let switched = at(format!("Deployment uses {new}"));
    let pruned = at(format!("deleted ConfigMap {old}"));
    assert!(
        created < switched && switched < pruned,
        "new ConfigMap at {created}, Deployment switched at {switched}, old pruned at {pruned}"
    );
}

/// A chart with a dependency vendored in `charts/`, values from the chart, a file and the
/// config, and templates that read the cluster's capabilities.
fn chart_files() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "charts/shop/Chart.yaml",
            "apiVersion: v2\nname: shop\nversion: 0.1.0\ndependencies:\n  - {name: cache, version: 0.1.0}\n",
        ),
        (
            "charts/shop/values.yaml",
            "replicas: 1\nimage: {repository: ghcr.io/example/shop, tag: \"1.0\"}\ngreeting: hello\n",
        ),
        (
            "charts/shop/templates/_helpers.tpl",
            "{{- define \"shop.labels\" -}}\napp.kubernetes.io/name: shop\napp.kubernetes.io/instance: {{ .Release.Name }}\n{{- end -}}\n",
        ),
        (
            "charts/shop/templates/deployment.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}-web\n  labels:\n    {{- include \"shop.labels\" . | nindent 4 }}\n\
             spec:\n  replicas: {{ .Values.replicas }}\n  selector:\n    matchLabels:\n      {{- include \"shop.labels\" . | nindent 6 }}\n  \
             template:\n    metadata:\n      labels:\n        {{- include \"shop.labels\" . | nindent 8 }}\n    spec:\n      containers:\n        \
             - name: web\n          image: \"{{ .Values.image.repository }}:{{ .Values.image.tag }}\"\n",
        ),
        (
            "charts/shop/templates/config.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-config\n  namespace: {{ .Release.Namespace }}\ndata:\n  \
             greeting: {{ .Values.greeting | quote }}\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n  \
             widgets: {{ .Capabilities.APIVersions.Has \"render-e2e.gitops-agent.io/v1/Widget\" | quote }}\n",
        ),
        (
            "charts/shop/templates/tests/ping.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ping\n  annotations: {\"helm.sh/hook\": test}\nspec:\n  containers: [{name: p, image: busybox}]\n",
        ),
        (
            "charts/shop/charts/cache/Chart.yaml",
            "apiVersion: v2\nname: cache\nversion: 0.1.0\n",
        ),
        ("charts/shop/charts/cache/values.yaml", "maxmemory: 64mb\n"),
        (
            "charts/shop/charts/cache/templates/cache.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: {{ .Release.Name }}-cache}\ndata: {maxmemory: {{ .Values.maxmemory | quote }}}\n",
        ),
        ("env/oke.yaml", "replicas: 2\ncache: {maxmemory: 256mb}\n"),
    ]
}

/// A CustomResourceDefinition only this test's cluster serves, so the chart can see it.
async fn widget_crd(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.render-e2e.gitops-agent.io"},
        "spec": {
            "group": "render-e2e.gitops-agent.io",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .unwrap();
    let pp = kube::api::PatchParams::apply("render-e2e").force();
    crds.patch(
        "widgets.render-e2e.gitops-agent.io",
        &pp,
        &kube::api::Patch::Apply(&crd),
    )
    .await
    .unwrap();
    let started = Instant::now();
    loop {
        let c = crds
            .get("widgets.render-e2e.gitops-agent.io")
            .await
            .unwrap();
        let established = c.status.and_then(|s| s.conditions).is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return;
        }
        assert!(started.elapsed() < WAIT, "the CRD was never established");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_helm_chart_applies_as_kubectl_would_with_the_live_clusters_capabilities() {
    let Setup {
        client,
        agent_ns,
        ns,
        repo,
        upstream: _upstream,
    } = setup("helm").await;
    widget_crd(&client).await;
    repo.push("main", &chart_files(), &[]);
    let work = tempfile::tempdir().unwrap();
    let sync = format!(
        "{{name: shop, source: repo, namespace: {ns}, health: {{wait: false}}, \
         helm: {{chart: charts/shop, valuesFiles: [env/oke.yaml], values: {{greeting: hi from the config}}, releaseName: shop}}}}",
        ns = ns.name
    );
    let config = config(work.path(), &agent_ns.name, &repo.file_url(), &[sync], "");
    let (ok, out) = sync_once(&config);
    assert!(ok, "{out}");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let data = cms.get("shop-config").await.unwrap().data.unwrap();
    assert_eq!(data["greeting"], "hi from the config", "inline values win");
    assert_eq!(data["kube"], "v1.34.4", "the live API server's version");
    assert_eq!(data["widgets"], "true", "the live cluster's API versions");
    let cache = cms.get("shop-cache").await.unwrap().data.unwrap();
    assert_eq!(
        cache["maxmemory"], "256mb",
        "the values file reaches the dependency"
    );
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let web = deploys.get("shop-web").await.unwrap().spec.unwrap();
    assert_eq!(web.replicas, Some(2));
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        pods.get_opt("ping").await.unwrap().is_none(),
        "no test hooks"
    );

    // A peer applying the same `helm template` finds nothing to change.
    let tree = checkout(&repo, work.path());
    std::fs::write(
        work.path().join("inline.yaml"),
        "greeting: hi from the config\n",
    )
    .unwrap();
    let inline = work.path().join("inline.yaml").display().to_string();
    let peer = render_as_peer(
        "helm",
        &[
            "template",
            "shop",
            "charts/shop",
            "--namespace",
            &ns.name,
            "--values",
            "env/oke.yaml",
            "--values",
            &inline,
            "--kube-version",
            "v1.34.4",
            "--api-versions",
            "render-e2e.gitops-agent.io/v1/Widget",
            "--include-crds",
            "--skip-tests",
        ],
        &tree,
    );
    // helm template leaves the namespace to the installer; the agent gives the sync's.
    let peer = add_namespace(&peer, &ns.name);
    kubectl_diff_is_empty(&peer, work.path());
}

/// Each document of `yaml` with `metadata.namespace`, as `helm install -n` would set it.
fn add_namespace(yaml: &[u8], ns: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(yaml);
    let mut out = String::new();
    for doc in text.split("\n---") {
        let doc = doc.trim_start_matches("---");
        if doc.trim().is_empty() {
            continue;
        }
        let mut value: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
        value["metadata"]["namespace"] = ns.into();
        out.push_str(&format!("---\n{value}\n"));
    }
    out.into_bytes()
}

#[tokio::test]
async fn a_resync_of_an_unchanged_revision_runs_no_renderer() {
    // The Git server lives as long as the bindings: none may be dropped with `..`.
    let Setup {
        agent_ns,
        ns,
        repo,
        upstream: _upstream,
        client: _client,
    } = setup("cache").await;
    let files = overlay_and_chart(&ns.name);
    let borrowed: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    repo.push("main", &borrowed, &[]);
    let work = tempfile::tempdir().unwrap();
    let metrics = git::free_port();
    let syncs = [
        format!(
            "{{name: overlay, source: repo, path: overlays/oke, namespace: {}, selfHeal: true, health: {{wait: false}}}}",
            ns.name
        ),
        format!(
            "{{name: chart, source: repo, namespace: {}, selfHeal: true, health: {{wait: false}}, helm: {{chart: charts/shop, releaseName: cached}}}}",
            ns.name
        ),
    ];
    let extra = format!("resync: 10s\nmetrics: {{listen: \"127.0.0.1:{metrics}\"}}\n");
    let config = config(
        work.path(),
        &agent_ns.name,
        &repo.file_url(),
        &syncs,
        &extra,
    );
    let log = std::fs::File::create(work.path().join("agent.log")).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_gitops-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .arg("--kubeconfig")
        .arg(control_plane().kubeconfig())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{metrics}/metrics");
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let started = Instant::now();
    let text = loop {
        let text = match http.get(&url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let hits = |sync: &str, renderer: &str| {
            value(
                &text,
                &format!(
                    "gitops_agent_renders_total{{sync=\"{sync}\",renderer=\"{renderer}\",cache=\"hit\"}}"
                ),
            )
        };
        if hits("overlay", "kustomize") >= 1.0 && hits("chart", "helm") >= 1.0 {
            break text;
        }
        if started.elapsed() > WAIT {
            let _ = agent.kill();
            let log = std::fs::read_to_string(work.path().join("agent.log")).unwrap();
            panic!("no cache hits on resync:\n{text}\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = agent.kill();
    let _ = agent.wait();
    for (sync, renderer) in [("overlay", "kustomize"), ("chart", "helm")] {
        let misses = value(
            &text,
            &format!(
                "gitops_agent_renders_total{{sync=\"{sync}\",renderer=\"{renderer}\",cache=\"miss\"}}"
            ),
        );
        assert_eq!(misses, 1.0, "{sync}: one build of one revision:\n{text}");
        let labels = format!("{{sync=\"{sync}\",renderer=\"{renderer}\"}}");
        let took = value(
            &text,
            &format!("gitops_agent_render_duration_seconds_sum{labels}"),
        );
        assert!(took > 0.0, "{text}");
        // The number the closing note reports (no assertion on time).
        println!(
            "render time of {sync} ({renderer}): {:.0} ms",
            took * 1000.0
        );
    }
}

#[tokio::test]
async fn hostile_renders_fail_clearly_and_apply_nothing() {
    let Setup {
        client,
        agent_ns,
        ns,
        upstream,
        repo,
    } = setup("hostile").await;
    let chart = |name: &str| format!("apiVersion: v2\nname: {name}\nversion: 0.1.0\n");
    let (loop_chart, big_chart, plain_chart) = (chart("loop"), chart("big"), chart("plain"));
    let cm = harness::cm("innocent", "1");
    repo.push(
        "main",
        &[
            ("escape/kustomization.yaml", "resources: [../../../etc/kubernetes]\n"),
            (
                "remote/kustomization.yaml",
                "resources:\n  - https://github.com/kubernetes-sigs/kustomize//examples/helloWorld?ref=v5.0.0\n",
            ),
            ("exec/kustomization.yaml", "resources: [cm.yaml]\ngenerators: [gen.yaml]\n"),
            ("exec/cm.yaml", &cm),
            (
                "exec/gen.yaml",
                "apiVersion: gitops.example/v1\nkind: Gen\nmetadata:\n  name: g\n  annotations:\n    \
                 config.kubernetes.io/function: |\n      exec:\n        path: /bin/sh\n",
            ),
            ("charts/loop/Chart.yaml", &loop_chart),
            (
                "charts/loop/templates/loop.yaml",
                "{{ range until 100000 }}{{ range until 100000 }}{{ end }}{{ end }}\n",
            ),
            ("charts/big/Chart.yaml", &big_chart),
            (
                "charts/big/templates/big.yaml",
                "{{ range until 1000000 }}# {{ \"x\" | repeat 1000 }}\n{{ end }}\n",
            ),
            ("charts/plain/Chart.yaml", &plain_chart),
            ("charts/plain/templates/cm.yaml", &cm),
            ("env/bad.yaml", "region: x\npassword: \"hunter2-secret\n"),
        ],
        &[],
    );
    // A link out of the tree fails the whole repository's read (every file of it is read
    // for a render), so it has its own.
    let linked = upstream.create("linked");
    repo_with_link(&linked, &cm);
    let work = tempfile::tempdir().unwrap();
    let sync = |name: &str, rest: &str| {
        format!(
            "{{name: {name}, source: repo, namespace: {}, health: {{wait: false}}, {rest}}}",
            ns.name
        )
    };
    let syncs = [
        sync("escape", "path: escape"),
        sync("remote", "path: remote"),
        sync("exec", "path: exec"),
        format!(
            "{{name: link, source: linked, path: link, namespace: {}, health: {{wait: false}}}}",
            ns.name
        ),
        sync("loop", "helm: {chart: charts/loop}"),
        sync("big", "helm: {chart: charts/big}"),
        sync(
            "values",
            "helm: {chart: charts/plain, valuesFiles: [env/bad.yaml]}",
        ),
    ];
    let bounds = "timeout: 5s, maxOutputBytes: 1048576, maxMemoryBytes: 536870912, ";
    let sources = [("repo", repo.file_url()), ("linked", linked.file_url())];
    let sources: Vec<(&str, &str)> = sources.iter().map(|(n, u)| (*n, u.as_str())).collect();
    let config = config_with(work.path(), &agent_ns.name, &sources, &syncs, "", bounds);
    let (ok, out) = sync_once(&config);
    assert!(!ok, "{out}");
    for want in [
        "escape/kustomization.yaml:1: a resource or base outside the repository",
        "remote/kustomization.yaml:1: remote bases and resources are not fetched",
        "exec/kustomization.yaml:1: exec: kustomize build: kustomize: failed (exit status: 1): \
         Error: loading generator plugins: failed to load generator: external plugins disabled",
        "error: link/stolen.yaml: symlink to /etc/passwd leaves link",
        "charts/loop/Chart.yaml:1: charts/loop: helm template: helm: killed after 5s",
        "charts/big/Chart.yaml:1: charts/big: helm template: helm:",
        "env/bad.yaml:2: a values file must be a YAML mapping",
    ] {
        assert!(out.contains(want), "{want:?} in:\n{out}");
    }
    assert!(!out.contains("hunter2"), "{out}");
    assert!(!out.contains("root:x:0"), "{out}");
    let cms: Api<ConfigMap> = Api::namespaced(client, &ns.name);
    assert!(
        cms.get_opt("innocent").await.unwrap().is_none(),
        "nothing applied"
    );
}

fn repo_with_link(repo: &git::Repo, cm: &str) {
    repo.push(
        "main",
        &[
            (
                "link/kustomization.yaml",
                "resources: [cm.yaml, stolen.yaml]\n",
            ),
            ("link/cm.yaml", cm),
        ],
        &[],
    );
    repo.push_link("main", "link/stolen.yaml", "/etc/passwd");
}

#[tokio::test]
async fn validate_renders_overlays_and_charts_offline() {
    let upstream = git::Upstream::new();
    let repo = upstream.create("validated");
    let mut files = overlay_and_chart("shop");
    files.push((
        "broken/kustomization.yaml",
        "resources: [missing.yaml]\n".into(),
    ));
    let borrowed: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    repo.push("main", &borrowed, &[]);
    let work = tempfile::tempdir().unwrap();
    let tree = checkout(&repo, work.path());
    let cfg = config(work.path(), "agent", "file:///nowhere", &[], "");
    let validate = |args: &[&str]| {
        let args: Vec<&str> = ["validate"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        harness::agent_cli(&args, &cfg, Some(&tree))
    };
    let (code, out) = validate(&["overlays/oke"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("overlays/oke: 4 objects valid"), "{out}");
    let (code, out) = validate(&[
        "charts/shop",
        "--kube-version",
        "v1.33.0",
        "-f",
        "env/oke.yaml",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("charts/shop: 3 objects valid"), "{out}");
    let (code, out) = validate(&["charts/shop"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("pass --kube-version"), "{out}");
    let (code, out) = validate(&["broken"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("broken: kustomize build: kustomize: failed"),
        "{out}"
    );
    // `check` names the binaries and their versions.
    let (_, text) = harness::agent_cli(&["check"], &cfg, None);
    assert!(text.contains("\nkustomize: v5.8.1 ("), "{text}");
    assert!(text.contains("\nhelm:     v3.22.0 ("), "{text}");
}
