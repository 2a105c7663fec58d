//! Parsing a file under the limits: YAML (multi-document, under a budget that stops alias
//! bombs and deep nesting) or JSON, each document with its line; lists expanded.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{Error, Limits, Located};
use crate::source::File;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Yaml,
    Json,
}

pub(super) fn format_of(path: &str) -> Option<Format> {
    let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
    match ext.as_str() {
        "yaml" | "yml" => Some(Format::Yaml),
        "json" => Some(Format::Json),
        _ => None,
    }
}

/// One non-empty document of a file.
pub(super) struct Document {
    pub(super) line: usize,
    pub(super) value: Value,
}

/// A candidate waiting for validation, as compact JSON.
pub(super) struct Compact {
    pub(super) file: String,
    pub(super) line: usize,
    pub(super) item: Option<usize>,
    pub(super) json: Box<RawValue>,
}

/// One object to validate: a document, or an item of a `List` document.
pub(super) struct Candidate {
    pub(super) file: String,
    pub(super) line: usize,
    pub(super) item: Option<usize>,
    pub(super) value: Value,
}

pub(super) fn parse_file(file: &File, limits: &Limits) -> Result<Vec<Document>, ParseError> {
    let size = file.content.len();
    if size > limits.max_file_bytes {
        let limit = limits.max_file_bytes;
        return Err((1, None, Error::FileTooLarge { size, limit }));
    }
    let text = std::str::from_utf8(&file.content).map_err(|e| {
        (
            line_of(&file.content, e.valid_up_to()),
            None,
            Error::NotUtf8,
        )
    })?;
    match format_of(&file.path) {
        Some(Format::Json) => parse_json(text, limits),
        _ => parse_yaml(text, limits),
    }
}

pub(super) type ParseError = (usize, Option<usize>, Error);

pub(super) fn yaml_options(limits: &Limits) -> serde_saphyr::Options {
    let documents = limits.max_documents_per_file;
    let nodes = limits.max_nodes_per_file;
    let depth = depth_limit(limits);
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: documents,
            max_depth: depth,
            // The parser caps flow collections (`[[[...`) separately; one limit for both.
            flow_nesting_limit: depth,
            max_nodes: nodes,
            // Every node has at most one end event, every document a start and an end, so
            // the node limit is the one users meet.
            max_events: nodes.saturating_mul(2).saturating_add(documents.saturating_mul(2)).saturating_add(2),
            max_total_scalar_bytes: limits.max_file_bytes,
            max_aliases: limits.max_alias_replay,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: limits.max_alias_replay,
        },
        // Snippets would quote the source, which may be a Secret.
        with_snippet: false,
        // Kubernetes reads YAML 1.1 (go-yaml): `defaultMode: 0644` is octal 420.
        legacy_octal_numbers: true,
    }
}

pub(super) fn parse_yaml(text: &str, limits: &Limits) -> Result<Vec<Document>, ParseError> {
    let documents: Vec<serde_saphyr::Spanned<Value>> =
        serde_saphyr::from_multiple_with_options(text, yaml_options(limits))
            .map_err(|e| yaml_error(&e, limits))?;
    // serde-saphyr already skips empty, comment-only and null documents.
    Ok(documents
        .into_iter()
        .map(|d| Document {
            line: (d.referenced.line() as usize).max(1),
            value: d.value,
        })
        .collect())
}

pub(super) fn yaml_error(err: &serde_saphyr::Error, limits: &Limits) -> ParseError {
    use serde_saphyr::Error as E;
    use serde_saphyr::MessageFormatter;
    use serde_saphyr::budget::BudgetBreach as B;

    let (line, column) = match err.location() {
        Some(l) if l.line() > 0 => (l.line() as usize, Some(l.column() as usize)),
        _ => (1, None),
    };
    let mut original = err.without_snippet();
    while let E::AliasError { error, .. } = original {
        original = error.without_snippet();
    }
    let alias_bomb = || {
        Error::Limit(format!(
            "aliases expand to more than {} nodes (an alias bomb?)",
            limits.max_alias_replay
        ))
    };
    let error = match original {
        E::Budget { breach, .. } => match breach {
            B::Depth { .. } => Error::Limit(format!(
                "nested more than {} levels deep",
                depth_limit(limits)
            )),
            B::Documents { .. } => Error::Limit(format!(
                "more than {} documents in one file",
                limits.max_documents_per_file
            )),
            B::Nodes { .. } | B::Events { .. } => Error::Limit(format!(
                "more than {} nodes in one file",
                limits.max_nodes_per_file
            )),
            B::ScalarBytes { .. } => Error::Limit(format!(
                "more than {} bytes of text in one file",
                limits.max_file_bytes
            )),
            B::Aliases { .. } | B::AliasAnchorRatio { .. } => alias_bomb(),
            other => Error::Limit(format!("{other:?}")),
        },
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::AliasReplayCounterOverflow { .. } => alias_bomb(),
        other => {
            let message = serde_saphyr::DefaultMessageFormatter.format_message(other);
            // The parser's flow-collection cap has no budget variant of its own.
            if message.contains("recursion limit") {
                Error::Limit(format!(
                    "nested more than {} levels deep",
                    depth_limit(limits)
                ))
            } else {
                Error::Yaml(printable(&message))
            }
        }
    };
    (line, column, error)
}

/// Keeps one error one line.
pub(super) fn printable(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub(super) fn parse_json(text: &str, limits: &Limits) -> Result<Vec<Document>, ParseError> {
    // serde_json refuses a byte-order mark; removing it shifts no line.
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let bytes = body.as_bytes();
    // serde_json limits nesting on its own (JSON_MAX_DEPTH); `deeper_than` applies a lower limit.
    let mut stream = serde_json::Deserializer::from_str(body).into_iter::<Value>();
    let mut documents = Vec::new();
    let mut count = 0;
    let (mut counted_to, mut line) = (0, 1);
    loop {
        let start = stream.byte_offset()
            + bytes[stream.byte_offset()..]
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
        match stream.next() {
            None => break,
            Some(Ok(value)) => {
                count += 1;
                if count > limits.max_documents_per_file {
                    return Err((
                        line,
                        None,
                        Error::Limit(format!(
                            "more than {} documents in one file",
                            limits.max_documents_per_file
                        )),
                    ));
                }
                // Counted incrementally: rescanning from the top would be quadratic.
                line += bytes[counted_to..start]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                counted_to = start;
                if deeper_than(&value, limits.max_depth) {
                    return Err((
                        line,
                        None,
                        Error::Limit(format!(
                            "nested more than {} levels deep",
                            depth_limit(limits)
                        )),
                    ));
                }
                if !value.is_null() {
                    documents.push(Document { line, value });
                }
            }
            Some(Err(e)) => {
                let message = e.to_string();
                let message = match message.rfind(" at line ") {
                    Some(i) => &message[..i],
                    None => &message,
                };
                let error = if message.contains("recursion limit") {
                    Error::Limit(format!(
                        "nested more than {} levels deep",
                        depth_limit(limits)
                    ))
                } else {
                    Error::Json(message.to_owned())
                };
                return Err((e.line().max(1), Some(e.column()), error));
            }
        }
    }
    Ok(documents)
}

/// serde_json's own, fixed nesting limit (its recursion limit of 128 admits 127 levels).
pub(super) const JSON_MAX_DEPTH: usize = 127;

/// The nesting limit in force: the configured one, never past serde_json's.
pub(super) fn depth_limit(limits: &Limits) -> usize {
    limits.max_depth.min(JSON_MAX_DEPTH)
}

/// Whether `value` nests deeper than `max` (iterative: the value may be deep).
pub(super) fn deeper_than(value: &Value, max: usize) -> bool {
    if max >= JSON_MAX_DEPTH {
        return false;
    }
    let mut stack = vec![(value, 0)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth + 1 > max {
            return true;
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    false
}

pub(super) fn line_of(bytes: &[u8], offset: usize) -> usize {
    1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count()
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

pub(super) fn str_field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

pub(super) fn is_list(value: &Value) -> bool {
    value.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && value.get("kind").and_then(Value::as_str) == Some("List")
}

/// A `v1` `List` becomes its items; any other document is one candidate.
pub(super) fn expand_list(
    file: &str,
    mut document: Document,
    errors: &mut Vec<Located>,
) -> Vec<Candidate> {
    let candidate = |value, item| Candidate {
        file: file.to_owned(),
        line: document.line,
        item,
        value,
    };
    if !is_list(&document.value) {
        return vec![candidate(document.value, None)];
    }
    let items = document
        .value
        .as_object_mut()
        .and_then(|m| m.remove("items"))
        .unwrap_or(Value::Null);
    match items {
        Value::Null => Vec::new(),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                if is_list(&item) {
                    errors.push(Located {
                        item: Some(i),
                        ..Located::new(
                            file,
                            document.line,
                            Error::InvalidList("a List inside a List is not supported"),
                        )
                    });
                } else {
                    out.push(candidate(item, Some(i)));
                }
            }
            out
        }
        _ => {
            errors.push(Located::new(
                file,
                document.line,
                Error::InvalidList("items must be a sequence of objects"),
            ));
            Vec::new()
        }
    }
}
