//! Reading untyped objects: every field may be absent.

use serde_json::Value;

use super::{Assessment, Status};

pub(super) fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

pub(super) fn int_at(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

/// Counters in `status` are omitted when zero.
pub(super) fn count(v: &Value, ptr: &str) -> i64 {
    int_at(v, ptr).unwrap_or(0)
}

pub(super) fn bool_at(v: &Value, ptr: &str) -> bool {
    v.pointer(ptr).and_then(Value::as_bool).unwrap_or(false)
}

pub(super) fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| str_at(c, "/type") == Some(type_))
}

pub(super) fn is_true(c: Option<&Value>) -> bool {
    c.and_then(|c| str_at(c, "/status")) == Some("True")
}

pub(super) fn is_false(c: Option<&Value>) -> bool {
    c.and_then(|c| str_at(c, "/status")) == Some("False")
}

/// `reason: message` of a condition, whichever parts it has.
pub(super) fn describe(c: &Value) -> String {
    match (str_at(c, "/reason"), str_at(c, "/message")) {
        (Some(r), Some(m)) if !m.is_empty() => format!("{r}: {m}"),
        (Some(r), _) => r.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) => String::new(),
    }
}

/// The controller has not yet acted on the latest spec. `observedGeneration` absent counts
/// as not observed for the built-in workload controllers, which always set it.
pub(super) fn generation_pending(obj: &Value) -> Option<(i64, i64)> {
    let generation = int_at(obj, "/metadata/generation").unwrap_or(0);
    let observed = int_at(obj, "/status/observedGeneration").unwrap_or(0);
    (observed == 0 || generation > observed).then_some((generation, observed))
}

pub(super) fn progressing(msg: impl Into<String>) -> Assessment {
    Assessment::new(Status::Progressing, msg)
}

pub(super) fn healthy(msg: impl Into<String>) -> Assessment {
    Assessment::new(Status::Healthy, msg)
}

pub(super) fn degraded(msg: impl Into<String>) -> Assessment {
    Assessment::new(Status::Degraded, msg)
}
