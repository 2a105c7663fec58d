//! High availability's trigger relay: a replica that is not leading hands the webhook
//! triggers it receives to the one that is, through a ConfigMap both watch (webhooks reach
//! whichever replica is ready).

use std::collections::HashMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tracing::Instrument;

/// The ConfigMap through which a replica that is not leading hands webhook triggers to
/// the one that is: webhooks reach whichever replica is ready.
pub const RELAY_CONFIGMAP: &str = "gitops-agent-triggers";

pub async fn relay_trigger(client: &Client, namespace: &str, source: &str) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": RELAY_CONFIGMAP, "namespace": namespace},
        "data": {source: stamp.to_string()},
    });
    let pp = kube::api::PatchParams::apply("gitops-agent-relay").force();
    if let Err(e) = api
        .patch(RELAY_CONFIGMAP, &pp, &kube::api::Patch::Apply(&cm))
        .await
    {
        tracing::warn!(%source, error = %e, "relaying a webhook trigger to the leader");
    }
}

/// Watches the relay ConfigMap and forwards each source whose stamp changed.
pub fn watch_relay(
    client: Client,
    namespace: String,
    tx: mpsc::Sender<String>,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!("trigger_relay");
    tokio::spawn(
        async move {
            let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
            let cfg =
                watcher::Config::default().fields(&format!("metadata.name={RELAY_CONFIGMAP}"));
            let mut seen: HashMap<String, String> = HashMap::new();
            let mut first = true;
            let mut stream = std::pin::pin!(watcher(api, cfg).default_backoff());
            while let Some(ev) = stream.next().await {
                let cm = match ev {
                    Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => cm,
                    Ok(watcher::Event::InitDone) => {
                        first = false;
                        continue;
                    }
                    _ => continue,
                };
                for (source, stamp) in cm.data.unwrap_or_default() {
                    let changed =
                        seen.insert(source.clone(), stamp.clone()).as_ref() != Some(&stamp);
                    // Stamps present at start-up are old news: the first pass fetches everything.
                    if changed && !first && tx.send(source).await.is_err() {
                        return;
                    }
                }
            }
        }
        .instrument(span),
    )
}
