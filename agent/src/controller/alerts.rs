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

/// The alerts of a sync's policy warnings and audit findings, each once while it lasts:
/// `warned` remembers, per sync, the findings last seen, so a resync of the same revision
/// alerts nothing new, and a finding that went away and came back alerts again.
pub fn policy_alerts(
    warned: &mut HashMap<String, std::collections::BTreeSet<String>>,
    o: &Outcome,
) -> Vec<Alert> {
    let now: std::collections::BTreeSet<String> =
        o.findings.iter().map(ToString::to_string).collect();
    let before = warned.insert(o.sync.clone(), now).unwrap_or_default();
    o.findings
        .iter()
        .filter(|f| !before.contains(&f.to_string()))
        .map(|f| Alert::PolicyWarning {
            sync: o.sync.clone(),
            revision: o.revision.clone(),
            subject: f.id.clone(),
            policy: f.violation.policy.clone(),
            binding: f.violation.binding.clone(),
            file: f.file.clone(),
            line: f.line,
            message: crate::core::bounded(&f.violation.message, 5, 1024),
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ObjectKey;
    use crate::policy::{Action, Violation};
    use crate::sync::policy::Finding;

    fn warned(message: &str) -> Finding {
        let id = ObjectKey {
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
            namespace: Some("shop".into()),
            name: "web".into(),
        };
        Finding {
            subject: id.to_string(),
            id,
            file: "app/web.yaml".into(),
            line: 3,
            violation: Violation {
                policy: "spread".into(),
                binding: "spread".into(),
                actions: vec![Action::Warn],
                message: message.into(),
                reason: "Invalid".into(),
            },
        }
    }

    #[test]
    fn a_policy_warning_is_alerted_once_while_it_lasts() {
        let mut seen = HashMap::new();
        let mut o = Outcome::new("shop", "rev1");
        o.findings = vec![warned("no spread")];
        let alerts = policy_alerts(&mut seen, &o);
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            alerts[0].summary(),
            "Deployment/shop/web: policy spread (binding spread) at app/web.yaml:3: no spread"
        );
        assert_eq!(alerts[0].reason(), "PolicyWarning");
        assert!(
            policy_alerts(&mut seen, &o).is_empty(),
            "a resync alerts nothing new"
        );
        let clean = Outcome::new("shop", "rev2");
        assert!(policy_alerts(&mut seen, &clean).is_empty());
        assert_eq!(
            policy_alerts(&mut seen, &o).len(),
            1,
            "back again: alerted again"
        );
    }
}
