//! Anything else: kstatus's conventions (Ready, Stalled and Reconciling conditions,
//! observedGeneration).

use serde_json::Value;

use super::Assessment;
use super::json::*;

/// `Ready=False` reasons that mean "still working on it" rather than "failed". There is no
/// standard, so this lists the ones common controllers use (Flux, cert-manager, Crossplane,
/// Cluster API); any other reason is taken as a failure.
pub(super) const IN_PROGRESS_REASONS: &[&str] = &[
    "Progressing",
    "ProgressingWithRetry",
    "Reconciling",
    "InProgress",
    "Pending",
    "Creating",
    "Updating",
    "Provisioning",
    "Initializing",
    "Issuing",
    "DependencyNotReady",
    "Waiting",
];

/// Any other kind, kstatus-like: a controller that has not seen the latest generation is
/// still working; `Stalled`/`Reconciling` (kstatus's abnormal-true conditions) say so
/// directly; otherwise a `Ready` condition decides. No status at all means nothing to wait for.
pub(super) fn generic(obj: &Value) -> Assessment {
    if let (Some(generation), Some(observed)) = (
        int_at(obj, "/metadata/generation"),
        int_at(obj, "/status/observedGeneration"),
    ) && observed < generation
    {
        return progressing(format!(
            "Waiting for the controller to observe generation {generation} (observed {observed})"
        ));
    }
    if let Some(c) = condition(obj, "Stalled").filter(|c| is_true(Some(c))) {
        return degraded(format!("Stalled: {}", describe(c)));
    }
    if let Some(c) = condition(obj, "Reconciling").filter(|c| is_true(Some(c))) {
        return progressing(format!("Reconciling: {}", describe(c)));
    }
    match condition(obj, "Ready") {
        Some(c) if is_true(Some(c)) => healthy(str_at(c, "/message").unwrap_or("")),
        Some(c) if is_false(Some(c)) => {
            let reason = str_at(c, "/reason").unwrap_or("");
            if IN_PROGRESS_REASONS.contains(&reason) {
                progressing(format!("Not ready: {}", describe(c)))
            } else {
                degraded(format!("Not ready: {}", describe(c)))
            }
        }
        Some(c) => progressing(format!("Readiness unknown: {}", describe(c))),
        None => healthy(""),
    }
}
