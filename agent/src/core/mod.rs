//! What every stage shares and none owns, with no Kubernetes client in it: an object's
//! identity ([`ObjectKey`]), the change set a sync produces ([`ChangeSet`]), and the name
//! rules the configuration and the renderer both apply.

pub mod change;
pub mod key;
pub mod names;
pub mod url;

pub use change::{Action, Change, ChangeSet};
pub use key::ObjectKey;

use serde_json::Value;
use serde_json::value::RawValue;

/// Label that marks an object as managed by a sync; prune only ever deletes objects carrying it.
pub const OWNER_LABEL: &str = "gitops-agent.io/sync";
/// Annotation allowing delete-and-recreate when an immutable field changes.
pub const RECREATE_ANNOTATION: &str = "gitops-agent.io/recreate";
/// Annotation that keeps an object from ever being pruned (`disabled`).
pub const PRUNE_ANNOTATION: &str = "gitops-agent.io/prune";

/// Compact JSON of a tree; a `Value` always serialises, so the fallback is unreachable.
/// Objects travel between stages in this form: one copy, shared, never re-parsed to compare.
pub fn compact(value: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// The tree of compact JSON made by [`compact`]; it always parses, so the fallback
/// (`null`) is unreachable.
pub fn parse_compact(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// At most `max` bytes of `s`, cut at a character boundary, with `…` when cut: names and
/// messages from Git may hold any Unicode, and a cut inside a character would panic.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_stay_on_character_boundaries() {
        assert_eq!(truncate("abcdef", 10), "abcdef");
        assert_eq!(truncate("abcdef", 4), "a…");
        let s = "ünïcødé-ñame";
        for max in 0..s.len() + 2 {
            assert!(truncate(s, max).len() <= max.max('…'.len_utf8()));
            assert!(prefix(s, max).len() <= max);
            assert!(s.starts_with(prefix(s, max)));
        }
    }
}
