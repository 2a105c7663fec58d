//! Jobs and CronJobs.

use serde_json::Value;

use super::json::*;
use super::{Assessment, Status};

pub(super) fn job(obj: &Value) -> Assessment {
    if let Some(c) = condition(obj, "Failed").filter(|c| is_true(Some(c))) {
        return degraded(format!("Job failed: {}", describe(c)));
    }
    if is_true(condition(obj, "Complete")) {
        return healthy(format!(
            "Job completed: {} succeeded",
            count(obj, "/status/succeeded")
        ));
    }
    if bool_at(obj, "/spec/suspend") {
        return Assessment::new(Status::Suspended, "Job is suspended");
    }
    progressing(format!(
        "Job is running: {} active, {} succeeded, {} failed",
        count(obj, "/status/active"),
        count(obj, "/status/succeeded"),
        count(obj, "/status/failed")
    ))
}

pub(super) fn cron_job(obj: &Value) -> Assessment {
    if bool_at(obj, "/spec/suspend") {
        return Assessment::new(Status::Suspended, "CronJob is suspended");
    }
    healthy("")
}
