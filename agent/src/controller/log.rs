//! Log lines derived from results: a drift report, a sync outcome and its changes.

use crate::core::Action;
use crate::drift::Report;
use crate::sync::Outcome;

pub fn log_report(r: &Report) {
    match r {
        Report::Detected {
            sync,
            subject,
            fields,
            manager,
            deleted,
        } => {
            let paths: Vec<&str> = fields.iter().map(|f| f.path.as_str()).collect();
            tracing::warn!(%sync, object = %subject, fields = ?paths, manager = manager.as_deref().unwrap_or("-"), deleted, "drift detected");
        }
        Report::Resolved { sync, subject } => {
            tracing::info!(%sync, object = %subject, "drift resolved")
        }
        Report::Fight {
            sync,
            subject,
            manager,
            count,
        } => {
            tracing::warn!(%sync, object = %subject, manager = manager.as_deref().unwrap_or("-"), count, "another writer keeps reverting this object; self-heal backs off")
        }
        Report::Healed {
            sync,
            subject,
            error,
        } => match error {
            None => tracing::info!(%sync, object = %subject, "self-healed"),
            Some(e) => tracing::error!(%sync, object = %subject, error = %e, "self-heal failed"),
        },
    }
}

pub fn log_outcome(o: &Outcome) {
    let summary = o.changes.summary();
    match &o.failure {
        None => {
            tracing::info!(sync = %o.sync, revision = %o.revision, changes = %summary, health = ?o.overall_health().map(|h| h.to_string()), "synced")
        }
        Some(f) => {
            tracing::error!(sync = %o.sync, revision = %o.revision, changes = %summary, error = %f, "sync failed")
        }
    }
    for c in o
        .changes
        .entries
        .iter()
        .filter(|c| c.action.is_write() || matches!(c.action, Action::Failed | Action::Skipped))
    {
        tracing::info!(sync = %o.sync, object = %c.subject, action = %c.action, message = c.message.as_deref().unwrap_or(""), "change");
    }
    for f in &o.findings {
        tracing::warn!(sync = %o.sync, object = %f.subject, file = %f.file, line = f.line, policy = %f.violation.policy, binding = %f.violation.binding, message = %f.violation.message, "policy warning");
    }
}
