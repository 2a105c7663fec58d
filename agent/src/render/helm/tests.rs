use std::time::Duration;

use super::*;
use crate::render::testing::{file, pinned};

/// A chart with a dependency vendored in `charts/`, a values file beside it.
fn repo() -> Vec<File> {
    vec![
        file(
            "charts/web/Chart.yaml",
            "apiVersion: v2\nname: web\nversion: 0.1.0\n\
             dependencies:\n  - {name: cache, version: 0.1.0}\n",
        ),
        file("charts/web/values.yaml", "replicas: 1\nregion: unset\n"),
        file(
            "charts/web/templates/_helpers.tpl",
            "{{- define \"web.name\" -}}{{ .Release.Name }}-web{{- end -}}\n",
        ),
        file(
            "charts/web/templates/web.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ include \"web.name\" . }}\n\
             data:\n  replicas: {{ .Values.replicas | quote }}\n  region: {{ .Values.region | quote }}\n\
             \x20 kube: {{ .Capabilities.KubeVersion.Version | quote }}\n\
             \x20 monitoring: {{ .Capabilities.APIVersions.Has \"monitoring.coreos.com/v1/ServiceMonitor\" | quote }}\n\
             \x20 lookup: {{ lookup \"v1\" \"Namespace\" \"\" \"default\" | toJson | quote }}\n",
        ),
        file(
            "charts/web/charts/cache/Chart.yaml",
            "apiVersion: v2\nname: cache\nversion: 0.1.0\n",
        ),
        file(
            "charts/web/charts/cache/templates/cache.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: {{ .Release.Name }}-cache}\n\
             data: {size: {{ .Values.size | default \"1Gi\" | quote }}}\n",
        ),
        file("env/oke.yaml", "region: us-ashburn-1\ncache: {size: 2Gi}\n"),
    ]
}

fn chart(values: Value) -> Chart {
    Chart {
        chart: "charts/web".into(),
        values_files: vec!["env/oke.yaml".into()],
        values,
        release_name: "shop".into(),
        namespace: "shop".into(),
        post_render: None,
    }
}

fn caps() -> Capabilities {
    Capabilities {
        kube_version: "v1.34.4".into(),
        api_versions: vec!["monitoring.coreos.com/v1/ServiceMonitor".into()],
    }
}

async fn run(files: &[File], chart: &Chart, bounds: &Bounds) -> Result<Vec<File>, Error> {
    let kustomize = pinned("kustomize");
    template(
        &pinned("helm"),
        Some(&kustomize),
        files,
        chart,
        &caps(),
        bounds,
    )
    .await
}

#[tokio::test]
async fn a_chart_renders_with_its_vendored_dependency_values_and_the_clusters_capabilities() {
    let values = serde_json::json!({"replicas": 3});
    let out = run(&repo(), &chart(values), &Bounds::default())
        .await
        .unwrap();
    let names: Vec<&str> = out.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "charts/web/charts/cache/templates/cache.yaml (helm template).yaml",
            "charts/web/templates/web.yaml (helm template).yaml",
        ]
    );
    let web = String::from_utf8(out[1].content.clone()).unwrap();
    for want in [
        "name: shop-web",
        "replicas: \"3\"",
        "region: \"us-ashburn-1\"",
        "kube: \"v1.34.4\"",
        "monitoring: \"true\"",
        // `helm template` reaches no cluster: lookup finds nothing.
        "lookup: \"{}\"",
    ] {
        assert!(web.contains(want), "{want}: {web}");
    }
    let cache = String::from_utf8(out[0].content.clone()).unwrap();
    assert!(cache.contains("size: \"2Gi\""), "{cache}");
    // The output renders as any file would.
    let manifests = crate::render::render(
        &out,
        &crate::render::Options::default(),
        &crate::render::BuiltinScopes,
    )
    .unwrap();
    assert_eq!(manifests.len(), 2);
}

#[tokio::test]
async fn a_values_file_that_is_not_yaml_is_named_with_its_line_and_never_quoted() {
    let mut files = repo();
    files.push(file(
        "env/bad.yaml",
        "region: x\npassword: \"hunter2-secret\n",
    ));
    let mut c = chart(Value::Null);
    c.values_files.push("env/bad.yaml".into());
    let err = run(&files, &c, &Bounds::default()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("env/bad.yaml:2: a values file must be a YAML mapping"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert_eq!(err.location(), ("env/bad.yaml".to_owned(), 2));
    c.values_files = vec!["env/none.yaml".into()];
    let err = run(&files, &c, &Bounds::default()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "env/none.yaml: values file not in the repository"
    );
}

#[tokio::test]
async fn values_never_appear_in_helms_errors() {
    let mut files = repo();
    files.push(file(
        "charts/web/templates/fail.yaml",
        "{{ if .Values.password }}{{ fail (printf \"bad password %s\" .Values.password) }}{{ end }}\n",
    ));
    let values = serde_json::json!({"password": "hunter2-secret"});
    let err = run(&files, &chart(values), &Bounds::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("charts/web: helm template: helm: failed"),
        "{err}"
    );
    assert!(
        err.contains("(charts/web/templates/fail.yaml:1:"),
        "names the template by its path in the repository: {err}"
    );
    assert!(err.contains("bad password ***"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(!err.contains("gitops-agent-render-"), "{err}");
}

/// The error of the chart with one more template, under `bounds`.
async fn failing(template: &str, bounds: Bounds) -> String {
    let mut files = repo();
    files.push(file("charts/web/templates/extra.yaml", template));
    run(&files, &chart(Value::Null), &bounds)
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn a_template_that_loops_forever_is_killed() {
    let bounds = Bounds {
        timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let forever = "{{ range until 100000 }}{{ range until 100000 }}{{ end }}{{ end }}\n";
    assert_eq!(
        failing(forever, bounds).await,
        "charts/web: helm template: helm: killed after 3s: a render must finish in that time"
    );
}

#[tokio::test]
async fn output_past_the_cap_and_memory_past_the_cap_fail() {
    let bounds = Bounds {
        max_output: 1024 * 1024,
        ..Default::default()
    };
    let big = "{{ range until 2000 }}# {{ \"x\" | repeat 1000 }}\n{{ end }}\n";
    assert_eq!(
        failing(big, bounds).await,
        "charts/web: helm template: helm: killed: its output passed 1048576 bytes"
    );
    let bounds = Bounds {
        max_memory: 1024 * 1024 * 1024,
        ..Default::default()
    };
    let err = failing("{{ $l := until 300000000 }}# {{ len $l }}\n", bounds).await;
    assert!(err.contains("out of memory"), "{err}");
}

#[tokio::test]
async fn a_chart_output_goes_through_a_post_render_kustomization() {
    let mut files = repo();
    files.push(file(
        "overlays/helm-oke/kustomization.yaml",
        "namespace: shop\ncommonLabels: {platform: oke}\n",
    ));
    let mut c = chart(Value::Null);
    c.post_render = Some("overlays/helm-oke".into());
    let out = run(&files, &c, &Bounds::default()).await.unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].path, "overlays/helm-oke (kustomize build).yaml");
    let text = String::from_utf8(out[0].content.clone()).unwrap();
    assert!(text.contains("platform: oke"), "{text}");
    assert!(text.contains("name: shop-web"), "{text}");
    assert!(text.contains("name: shop-cache"), "{text}");
    c.post_render = Some("env".into());
    let err = run(&files, &c, &Bounds::default()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "env: helm.postRender must name a directory holding a kustomization"
    );
}

#[tokio::test]
async fn a_directory_without_a_chart_is_refused() {
    let mut c = chart(Value::Null);
    c.chart = "env".into();
    let err = run(&repo(), &c, &Bounds::default()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "env/Chart.yaml: not in the repository: helm.chart must name a chart's directory"
    );
}

#[test]
fn output_is_cut_per_template_and_named_by_its_path_in_the_repository() {
    let out = b"---\n# Source: web/templates/a.yaml\nkind: A\n---\n# Source: web/templates/a.yaml\nkind: A2\n---\n# Source: web/charts/db/templates/b.yaml\nkind: B\n";
    let files = split(out, "web", "deploy/web");
    assert_eq!(files.len(), 2);
    assert_eq!(
        files[0].path,
        "deploy/web/templates/a.yaml (helm template).yaml"
    );
    let a = String::from_utf8(files[0].content.clone()).unwrap();
    assert!(a.contains("kind: A\n") && a.contains("kind: A2\n"), "{a}");
    assert_eq!(
        files[1].path,
        "deploy/web/charts/db/templates/b.yaml (helm template).yaml"
    );
    let root = split(out, "web", ".");
    assert_eq!(root[0].path, "templates/a.yaml (helm template).yaml");
}
