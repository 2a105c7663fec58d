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
/// The API group of infra specs (OKE node pools): documents the agent reconciles with OCI
/// itself, never sent to the Kubernetes API.
pub const INFRA_GROUP: &str = "oke.gitops-agent.io";
/// Annotation allowing delete-and-recreate when an immutable field changes.
pub const RECREATE_ANNOTATION: &str = "gitops-agent.io/recreate";
/// Annotation that keeps an object from ever being pruned (`disabled`).
pub const PRUNE_ANNOTATION: &str = "gitops-agent.io/prune";
/// Annotation (`"true"`, in Git) that lets a sync take over an object another sync owns.
pub const ADOPT_ANNOTATION: &str = "gitops-agent.io/adopt";

/// Whether an object (compact JSON) carries the adopt annotation set to `"true"`. Looks
/// for the name in the text before parsing: nearly no object has it.
pub fn adopts(object: &RawValue) -> bool {
    object.get().contains(ADOPT_ANNOTATION)
        && parse_compact(object)
            .pointer(&format!(
                "/metadata/annotations/{}",
                ADOPT_ANNOTATION.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            == Some("true")
}

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
    format!("{}…", prefix(s, max.saturating_sub('…'.len_utf8())))
}

/// The first `lines` lines of `text`, in at most about `max` bytes, and how many lines
/// were left out: stored and alerted errors stay readable (and a ConfigMap stays under its
/// size limit) when a revision has thousands of problems.
pub fn bounded(text: &str, lines: usize, max: usize) -> String {
    let total = text.lines().count();
    let mut out = String::new();
    let mut kept = 0;
    for line in text.lines().take(lines) {
        if out.len() + line.len() + 1 > max {
            break;
        }
        if kept > 0 {
            out.push('\n');
        }
        out.push_str(line);
        kept += 1;
    }
    if kept == 0 && total > 0 {
        out = truncate(text.lines().next().unwrap_or(""), max);
        kept = 1;
    }
    if total > kept {
        out.push_str(&format!("\n… and {} more lines", total - kept));
    }
    out
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
    fn bounded_keeps_the_first_problems_and_counts_the_rest() {
        let text: String = (1..=100).map(|i| format!("problem {i}\n")).collect();
        let b = bounded(&text, 3, 4096);
        assert_eq!(b, "problem 1\nproblem 2\nproblem 3\n… and 97 more lines");
        let b = bounded(&text, 50, 25);
        assert_eq!(b, "problem 1\nproblem 2\n… and 98 more lines");
        assert_eq!(bounded("one line", 3, 4096), "one line");
        let long = "é".repeat(1000);
        assert!(bounded(&long, 3, 10).starts_with(&truncate(&long, 10)));
    }

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
