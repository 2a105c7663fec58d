//! PersistentVolumeClaims.

use serde_json::Value;

use super::json::*;
use super::{Assessment, Status};

pub(super) fn pvc(obj: &Value) -> Assessment {
    match str_at(obj, "/status/phase").unwrap_or("") {
        "Bound" => healthy("Bound"),
        "Pending" => progressing("Pending: waiting for a volume to be bound"),
        "Lost" => degraded("Lost: the bound volume no longer exists"),
        other => Assessment::new(Status::Unknown, format!("phase {other:?}")),
    }
}
