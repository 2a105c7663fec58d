//! The alerts the controller raises, derived from results (drift reports and sync
//! outcomes), and the dispatcher that delivers them, with a metric per delivery.

use std::collections::HashMap;
use std::sync::Arc;

use kube::Client;

use crate::config::{AlertsConfig, Config};
use crate::drift::Report;
use crate::notify::{self, Dispatcher, Event as Alert};
use crate::sync::{Failure, Outcome};
use crate::telemetry::metrics::{self, Metrics};

/// Builds the alert sinks one by one: a sink that cannot be built (its Secret is missing,
/// say) is logged and left out, and the others still deliver.
pub async fn dispatcher(client: &Client, cfg: &Config, metrics: Arc<Metrics>) -> Dispatcher {
    let info = notify::AgentInfo::new(&cfg.namespace, super::identity());
    let mut sinks = Vec::new();
    // One OCI client for every sink that signs (made on first use).
    let oci = cfg.oci.as_ref().map(crate::oci::Shared::for_config);
    for s in &cfg.alerts.sinks {
        let one = AlertsConfig {
            sinks: vec![s.clone()],
        };
        match notify::sinks::build_all(&one, client, &info, &Default::default(), oci.clone()).await
        {
            Ok(mut built) => sinks.append(&mut built),
            Err(e) => tracing::error!(error = %e, "alert sink left out"),
        }
    }
    let on_result: notify::OnResult = Arc::new(move |sink, r| {
        let result = match r {
            notify::DeliveryResult::Delivered { .. } => metrics::AlertResult::Delivered,
            notify::DeliveryResult::Failed { .. } => metrics::AlertResult::Failed,
            notify::DeliveryResult::Dropped => metrics::AlertResult::Dropped,
        };
        metrics.alert_delivery(sink, result);
    });
    Dispatcher::new(
        sinks,
        notify::DeliveryOptions {
            on_result: Some(on_result),
            ..Default::default()
        },
    )
}

/// How often the OCI identity's state is looked at.
const OCI_WATCH: std::time::Duration = std::time::Duration::from_secs(5);

/// Watches the OCI identity, when the configuration has one: its state in the metrics,
/// and an alert (on `tx`) when it starts failing and when it works again. Ends with `tx`'s
/// receiver.
pub fn watch_oci(cfg: &Config, metrics: Arc<Metrics>, tx: tokio::sync::mpsc::Sender<Alert>) {
    let Some(oci) = &cfg.oci else { return };
    let shared = crate::oci::Shared::for_config(oci);
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(OCI_WATCH).await;
            let Some(state) = shared.state() else {
                continue;
            };
            metrics.set_oci_identity(state.problem.is_none(), state.expires);
            let alert = match (&state.problem, failing) {
                (Some(error), false) => {
                    tracing::error!(%error, "OCI identity");
                    Alert::OciIdentityFailing {
                        error: error.clone(),
                    }
                }
                (None, true) => Alert::OciIdentityRecovered,
                _ => continue,
            };
            failing = state.problem.is_some();
            if tx.send(alert).await.is_err() {
                return;
            }
        }
    });
}

/// The alert a drift report raises (a heal is logged, not alerted).
pub fn drift_alert(r: Report) -> Option<Alert> {
    match r {
        Report::Detected {
            sync,
            subject,
            fields,
            manager,
            deleted,
        } => {
            let mut fields = fields;
            if deleted {
                fields = vec![notify::FieldDrift::new(
                    "(object)",
                    serde_json::json!("present in Git"),
                    serde_json::Value::Null,
                )];
            }
            Some(Alert::drift_detected(sync, subject, fields, manager))
        }
        Report::Resolved { sync, subject } => Some(Alert::DriftResolved { sync, subject }),
        Report::Fight {
            sync,
            subject,
            manager,
            count,
        } => Some(Alert::Fight {
            sync,
            subject,
            manager,
            count,
        }),
        Report::Healed { .. } => None,
    }
}

/// The alert a sync outcome raises, once per distinct failure: `alerted` remembers, per
/// sync, what was last alerted, so a failing revision retried every few seconds alerts once.
pub fn sync_alert(alerted: &mut HashMap<String, String>, o: &Outcome) -> Option<Alert> {
    let sync = o.sync.clone();
    let revision = o.revision.clone();
    match &o.failure {
        None => alerted
            .remove(&sync)
            .map(|_| Alert::SyncRecovered { sync, revision }),
        Some(f) => {
            let text = f.to_string();
            if alerted.get(&sync) == Some(&text) {
                return None;
            }
            alerted.insert(sync.clone(), text.clone());
            Some(match f {
                Failure::HeldBack { reason, .. } => Alert::PruneHeldBack {
                    sync,
                    revision,
                    reason: reason.clone(),
                },
                _ => Alert::SyncFailed {
                    sync,
                    revision,
                    // The first problems and a count: a revision with thousands of
                    // errors must not make an alert of megabytes.
                    error: crate::core::bounded(&text, 20, 4096),
                },
            })
        }
    }
}
