//! Extensions of the API: CustomResourceDefinitions and APIServices.

use serde_json::Value;

use super::Assessment;
use super::json::*;

pub(super) fn crd(obj: &Value) -> Assessment {
    if let Some(c) = condition(obj, "NamesAccepted").filter(|c| is_false(Some(c))) {
        return degraded(format!("Names not accepted: {}", describe(c)));
    }
    if let Some(c) = condition(obj, "NonStructuralSchema").filter(|c| is_true(Some(c))) {
        return degraded(format!("Non-structural schema: {}", describe(c)));
    }
    match condition(obj, "Established") {
        Some(c) if is_true(Some(c)) => healthy(""),
        Some(c) => progressing(format!("Not yet established: {}", describe(c))),
        None => progressing("Waiting to be established"),
    }
}

pub(super) fn api_service(obj: &Value) -> Assessment {
    match condition(obj, "Available") {
        Some(c) if is_true(Some(c)) => healthy(""),
        Some(c) => progressing(format!("Not available: {}", describe(c))),
        None => progressing("Waiting for the aggregated API to become available"),
    }
}
