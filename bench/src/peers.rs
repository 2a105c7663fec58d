//! The peers the agent's cold sync is compared with: `kubectl apply --server-side` on the
//! same files, and the raw bound, a tight concurrent client that does nothing but
//! server-side applies (forced, no GETs, no dry-runs), Namespaces first.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;

/// `kubectl apply --server-side --force-conflicts -R -f dir`, bounded by `limit`.
pub async fn kubectl(kubeconfig: &Path, dir: &Path, limit: Duration) -> anyhow::Result<Duration> {
    let mut c = tokio::process::Command::new("kubectl");
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "bench-kubectl",
            "-R",
            "-f",
        ])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(limit, c.output())
        .await
        .with_context(|| format!("kubectl apply did not finish in {limit:?}"))??;
    let took = started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "kubectl apply: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(took)
}

/// Requests the raw bound keeps in flight.
pub const CONCURRENCY: usize = 48;

/// Server-side applies every object, Namespaces first, `concurrency` at a time.
pub async fn raw(
    client: &Client,
    objects: &[Value],
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let (namespaces, rest): (Vec<&Value>, Vec<&Value>) =
        objects.iter().partition(|o| o["kind"] == "Namespace");
    let started = Instant::now();
    for batch in [namespaces, rest] {
        futures::stream::iter(batch)
            .map(|o| apply(client, o))
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
    }
    Ok(started.elapsed())
}

async fn apply(client: &Client, obj: &Value) -> anyhow::Result<()> {
    let (group, version) = match obj["apiVersion"].as_str().unwrap_or("v1").split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", obj["apiVersion"].as_str().unwrap_or("v1")),
    };
    let kind = obj["kind"].as_str().unwrap_or_default();
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = format!("{}s", kind.to_lowercase());
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let pp = PatchParams::apply("bench-raw").force();
    api.patch(name, &pp, &Patch::Apply(obj))
        .await
        .with_context(|| format!("{kind}/{name}"))?;
    Ok(())
}
