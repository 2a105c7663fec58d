//! The local control plane the benchmark runs against: started with `tests/cluster/up`
//! and stopped with `tests/cluster/down` when the guard drops, or one the caller names
//! with `--kubeconfig`, left running. Also what the rows do to it between contenders:
//! namespaces deleted, fake nodes added, objects' versions compared.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

/// A control plane this run uses; stops the one it started when dropped.
pub struct ControlPlane {
    pub kubeconfig: PathBuf,
    started: Option<(PathBuf, tempfile::TempDir)>,
}

impl ControlPlane {
    /// Starts one with `tests/cluster/up --dir <tmp>` (the script builds the binaries once).
    pub fn up(repo: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("gitops-agent-bench-cp-")
            .tempdir()?;
        let script = repo.join("tests/cluster/up");
        eprintln!(
            "starting the local control plane in {}",
            dir.path().display()
        );
        let out = Command::new(&script)
            .arg("--dir")
            .arg(dir.path())
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| script.display().to_string())?;
        anyhow::ensure!(out.status.success(), "{}: {}", script.display(), out.status);
        let kubeconfig = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(ControlPlane {
            kubeconfig,
            started: Some((repo.join("tests/cluster/down"), dir)),
        })
    }

    pub fn existing(kubeconfig: PathBuf) -> Self {
        ControlPlane {
            kubeconfig,
            started: None,
        }
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        // The raw bound runs dozens of requests at once; the default client-side limits
        // are not what is being measured.
        config.read_timeout = Some(std::time::Duration::from_secs(60));
        Ok(Client::try_from(config)?)
    }

    /// The server's `gitVersion`.
    pub async fn version(&self) -> String {
        match self.client().await {
            Ok(c) => c
                .apiserver_version()
                .await
                .map(|v| v.git_version)
                .unwrap_or_else(|e| format!("unknown ({e})")),
            Err(e) => format!("unknown ({e})"),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some((down, dir)) = &self.started {
            eprintln!("stopping the local control plane");
            let _ = Command::new(down).arg("--dir").arg(dir.path()).status();
        }
    }
}

/// Deletes namespaces and waits until they are gone (their objects with them), so the next
/// contender runs on a cluster no bigger than the last one did.
pub async fn delete_namespaces(
    client: &Client,
    names: &[String],
    limit: Duration,
) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    for n in names {
        match api.delete(n, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("Namespace/{n}: delete")),
        }
    }
    let started = Instant::now();
    for n in names {
        while api.get_opt(n).await?.is_some() {
            anyhow::ensure!(
                started.elapsed() < limit,
                "Namespace/{n} not gone after {limit:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

/// Every object in these namespaces (of the corpus's kinds): its resourceVersion and when
/// each field manager last wrote it. Two snapshots tell how many objects a contender wrote
/// in between, whatever it counts itself.
pub async fn versions(client: &Client, namespaces: &[String]) -> anyhow::Result<Versions> {
    let mut out = HashMap::new();
    for ns in namespaces {
        for (group, version, kind, plural) in crate::corpus::KINDS {
            let gvk = GroupVersionKind::gvk(group, version, kind);
            let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let list = api
                .list_metadata(&ListParams::default())
                .await
                .with_context(|| format!("list {plural} in {ns}"))?;
            for o in list {
                let key = format!(
                    "{kind}/{ns}/{}",
                    o.metadata.name.clone().unwrap_or_default()
                );
                let managers = o
                    .metadata
                    .managed_fields
                    .unwrap_or_default()
                    .into_iter()
                    .map(|m| {
                        (
                            m.manager.unwrap_or_default(),
                            m.time.map(|t| t.0.to_string()),
                            m.fields_v1.map(|f| f.0.to_string()),
                        )
                    })
                    .collect();
                out.insert(
                    key,
                    (o.metadata.resource_version.unwrap_or_default(), managers),
                );
            }
        }
    }
    Ok(out)
}

/// One managedFields entry: manager, time, fields.
type Managed = (String, Option<String>, Option<String>);
/// Per object: resourceVersion, and its managedFields entries.
pub type Versions = HashMap<String, (String, Vec<Managed>)>;

/// How many objects `manager` wrote between two snapshots: the object changed and so did
/// that manager's entry (another writer, a controller updating status, does not count).
pub fn written_by(before: &Versions, after: &Versions, manager: &str) -> usize {
    let entry = |v: &(String, Vec<Managed>)| {
        v.1.iter()
            .filter(|m| m.0 == manager)
            .cloned()
            .collect::<Vec<_>>()
    };
    after
        .iter()
        .filter(|(k, v)| match before.get(*k) {
            Some(b) => b.0 != v.0 && entry(b) != entry(v),
            None => true,
        })
        .count()
}

/// Pods each fake node takes (tests/cluster makes its nodes the same way).
const PODS_PER_NODE: usize = 500;

/// Adds kwok fake nodes until the cluster can run `pods` pods: the large rows keep two
/// contenders' Deployments at once, more than the control plane's two nodes hold.
pub async fn ensure_pod_capacity(client: &Client, pods: usize) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let have = api.list_metadata(&ListParams::default()).await?.items.len();
    let want = pods.div_ceil(PODS_PER_NODE) + 1;
    for i in have..want {
        let name = format!("bench-kwok-node-{i}");
        let resources = json!({"cpu": "32", "memory": "256Gi", "pods": PODS_PER_NODE.to_string()});
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", "kubernetes.io/role": "agent", "type": "kwok"}},
            "status": {"allocatable": resources, "capacity": resources},
        });
        let pp = PatchParams::apply("bench").force();
        api.patch(&name, &pp, &Patch::Apply(&node))
            .await
            .with_context(|| format!("Node/{name}"))?;
        api.patch_status(&name, &pp, &Patch::Apply(&node))
            .await
            .with_context(|| format!("Node/{name}: status"))?;
        eprintln!("added fake node {name}");
    }
    Ok(())
}
