//! Rendered syncs against the real control plane: a kustomize overlay (a base elsewhere in
//! the repository, a configMapGenerator with its hash suffix) built with the pinned binary
//! (tests/renderers/build) and applied by `gitops-agent sync --once`; a change of the
//! generator's input applies the new ConfigMap and prunes the old one.

#[path = "../harness/git.rs"]
mod git;
#[path = "../harness/mod.rs"]
mod harness;

use std::path::PathBuf;
use std::process::Command;

use harness::{TestNamespace, control_plane};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};

fn kustomize() -> PathBuf {
    let out = Command::new(harness::repo_root().join("tests/renderers/build"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("kustomize")
}

fn overlay(ns: &str, mode: &str) -> String {
    format!(
        "resources: [../../base]\nnamespace: {ns}\nnamePrefix: oke-\n\
         configMapGenerator:\n  - name: settings\n    behavior: merge\n    envs: [settings.env]\n\
         # mode: {mode}\n"
    )
}

#[tokio::test]
async fn a_kustomize_overlay_is_built_and_applied_and_its_old_generated_configmap_pruned() {
    harness::init_logging();
    let cp = control_plane();
    let client = cp.client().await;
    let agent_ns = TestNamespace::create(&client, "render-agent").await;
    let ns = TestNamespace::create(&client, "render").await;
    let upstream = git::Upstream::new();
    let repo = upstream.create("kustomized");
    let base_k =
        "resources: [web.yaml]\nconfigMapGenerator:\n  - {name: settings, literals: [mode=base]}\n";
    let web = harness::cm("web", "1");
    repo.push(
        "main",
        &[
            ("base/kustomization.yaml", base_k),
            ("base/web.yaml", &web),
            ("overlays/oke/kustomization.yaml", &overlay(&ns.name, "a")),
            (
                "overlays/oke/settings.env",
                "mode=oke\nregion=us-ashburn-1\n",
            ),
            ("README.md", "not a manifest, and not rendered"),
        ],
        &[],
    );
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "stateDir: {dir}\nnamespace: {agent}\nrender: {{kustomize: {bin}}}\n\
             sources:\n  - {{name: k, url: {url}}}\n\
             syncs:\n  - {{name: oke, source: k, path: overlays/oke, namespace: {ns}, health: {{wait: false}}}}\n",
            dir = state.path().display(),
            agent = agent_ns.name,
            bin = kustomize().display(),
            url = repo.file_url(),
            ns = ns.name,
        ),
    )
    .unwrap();
    let sync = || {
        let out = Command::new(env!("CARGO_BIN_EXE_gitops-agent"))
            .args(["sync", "--once", "--config"])
            .arg(&config)
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        text
    };
    sync();
    let cms: Api<ConfigMap> = Api::namespaced(client, &ns.name);
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
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(first[0], "oke-settings-".to_owned() + &first[0][13..]);
    let settings = cms.get(&first[0]).await.unwrap().data.unwrap();
    assert_eq!(settings["mode"], "oke");
    assert_eq!(settings["region"], "us-ashburn-1");
    assert_eq!(first[1], "oke-web");

    // The generator's input changes: a new hash, applied, and the old ConfigMap pruned.
    repo.push(
        "main",
        &[(
            "overlays/oke/settings.env",
            "mode=oke\nregion=us-phoenix-1\n",
        )],
        &[],
    );
    sync();
    let second = names().await;
    assert_eq!(second.len(), 2, "{second:?}");
    assert_ne!(second[0], first[0], "a new hash suffix");
    let settings = cms.get(&second[0]).await.unwrap().data.unwrap();
    assert_eq!(settings["region"], "us-phoenix-1");
}
