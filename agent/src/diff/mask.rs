//! The one Secret masker: whatever shows an object or a field to a person (a diff, a drift
//! report, an alert) goes through here, so a Secret's values never leave the agent.

use serde_json::{Map, Value};

use super::FieldDrift;

/// A Secret, of any API group: a look-alike kind is as likely to hold credentials.
pub fn is_secret_kind(kind: &str) -> bool {
    kind == "Secret"
}

fn is_secret(obj: &Value) -> bool {
    obj.get("kind")
        .and_then(Value::as_str)
        .is_some_and(is_secret_kind)
}

/// What replaces a masked value. Absence (`null`) is kept: it shows that a key appeared or
/// disappeared without saying anything about its content.
pub const MASK: &str = "*** (masked)";
const MASK_BEFORE: &str = "*** (masked, before)";
const MASK_AFTER: &str = "*** (masked, after)";

/// Masks every value of a Secret's `data` and `stringData`. When both sides are given,
/// a value that differs is masked differently on each side, so the diff still shows
/// *that* it changed, never *what* it is.
pub fn mask_secrets(before: Option<&mut Value>, after: Option<&mut Value>) {
    let before_vals = before
        .as_ref()
        .map(|b| secret_values(b))
        .unwrap_or_default();
    let after_vals = after.as_ref().map(|a| secret_values(a)).unwrap_or_default();
    if let Some(b) = before
        && is_secret(b)
    {
        mask_side(b, &after_vals, MASK_BEFORE);
    }
    if let Some(a) = after
        && is_secret(a)
    {
        mask_side(a, &before_vals, MASK_AFTER);
    }
}

/// (field, key) → value, with stringData folded into data's base64 form for comparison.
fn secret_values(obj: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for field in ["data", "stringData"] {
        if let Some(m) = obj.get(field).and_then(Value::as_object) {
            for (k, v) in m {
                out.insert(format!("{field}/{k}"), v.clone());
            }
        }
    }
    out
}

fn mask_side(obj: &mut Value, other: &Map<String, Value>, changed_mask: &str) {
    for field in ["data", "stringData"] {
        if let Some(m) = obj.get_mut(field).and_then(Value::as_object_mut) {
            for (k, v) in m.iter_mut() {
                let same = other.get(&format!("{field}/{k}")).is_some_and(|o| o == v);
                *v = Value::String(
                    if same || other.is_empty() {
                        MASK
                    } else {
                        changed_mask
                    }
                    .into(),
                );
            }
        }
    }
}

/// The field with both values masked when the object is a Secret.
pub fn mask_field(kind: &str, mut field: FieldDrift) -> FieldDrift {
    if is_secret_kind(kind) {
        for v in [&mut field.before, &mut field.after] {
            if !v.is_null() {
                *v = Value::String(MASK.into());
            }
        }
    }
    field
}
