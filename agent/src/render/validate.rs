//! Validating one object as the API server would: identity fields, name rules, scope
//! (built-in, discovered, or from a CRD in the revision), Secret and ConfigMap data; the
//! sync's namespace and labels given; duplicates across the revision found.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::crd::CrdKind;
use super::parse::{Candidate, str_field, type_name};
use super::{Error, Located, Manifest, Options, Scopes};
use crate::core::{ObjectKey, compact, names};

/// `Kind/ns/name` from whatever the object gives, for errors raised before it is valid.
pub(super) fn subject_of(obj: &Map<String, Value>) -> String {
    let kind = str_field(obj, "kind")
        .filter(|s| !s.is_empty())
        .unwrap_or("?");
    let meta = obj.get("metadata").and_then(Value::as_object);
    let name = meta
        .and_then(|m| str_field(m, "name"))
        .filter(|s| !s.is_empty())
        .unwrap_or("?");
    match meta
        .and_then(|m| str_field(m, "namespace"))
        .filter(|s| !s.is_empty())
    {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

pub(super) type Invalid = (Option<String>, Vec<Error>);

/// An object's identity fields as written, before their rules are checked.
pub(super) struct Identity {
    pub(super) api_version: String,
    pub(super) group: String,
    pub(super) version: String,
    pub(super) kind: String,
    pub(super) name: String,
    pub(super) namespace: Option<String>,
}

/// Validates one object and gives it its namespace and the sync's labels.
pub(super) fn validate(
    candidate: Candidate,
    options: &Options,
    scopes: &dyn Scopes,
    crds: &HashMap<(String, String), CrdKind>,
) -> Result<Manifest, Invalid> {
    let Candidate {
        file,
        line,
        mut value,
        ..
    } = candidate;
    let Some(obj) = value.as_object_mut() else {
        let found = type_name(&value);
        return Err((None, vec![Error::NotAnObject { found }]));
    };
    let subject = subject_of(obj);
    let mut errors = Vec::new();
    let Some(id) = identity(obj, &mut errors) else {
        return Err((Some(subject), errors));
    };
    check_names(&id, &mut errors);
    let namespaced = scope(&id, scopes, crds, &mut errors);
    let namespace = match (namespaced, id.namespace.clone()) {
        (Some(true), None) => Some(options.default_namespace.clone()),
        (Some(false), Some(ns)) => {
            errors.push(Error::NamespaceOnClusterScoped {
                kind: id.kind.clone(),
                namespace: ns,
            });
            None
        }
        (_, ns) => ns,
    };
    check_kind_data(&id, obj, &mut errors);
    if !errors.is_empty() {
        return Err((Some(subject), errors));
    }
    if let (Some(ns), Some(Value::Object(meta))) = (&namespace, obj.get_mut("metadata")) {
        meta.insert("namespace".into(), Value::String(ns.clone()));
    }
    add_labels(&mut value, &options.labels);
    Ok(Manifest {
        id: ObjectKey {
            group: id.group,
            kind: id.kind,
            namespace,
            name: id.name,
            version: id.version,
        },
        file,
        line,
        object: Arc::from(compact(&value)),
    })
}

/// A required string field: absent, null, empty or not a string is an error.
pub(super) fn required(
    map: &Map<String, Value>,
    key: &str,
    field: &'static str,
    errors: &mut Vec<Error>,
) -> Option<String> {
    match map.get(key) {
        None | Some(Value::Null) => {
            errors.push(Error::MissingField { field });
            None
        }
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            errors.push(Error::NotAString { field });
            None
        }
    }
}

/// apiVersion, kind, metadata.name and metadata.namespace, or `None` when one that is
/// required is missing or the apiVersion is malformed (the errors say which).
pub(super) fn identity(obj: &Map<String, Value>, errors: &mut Vec<Error>) -> Option<Identity> {
    let api_version = required(obj, "apiVersion", "apiVersion", errors);
    let kind = required(obj, "kind", "kind", errors);
    let (name, namespace) = match obj.get("metadata") {
        None | Some(Value::Null) => {
            errors.push(Error::MissingField {
                field: "metadata.name",
            });
            (None, None)
        }
        Some(Value::Object(meta)) => {
            let name = required(meta, "name", "metadata.name", errors);
            let namespace = match meta.get("namespace") {
                None | Some(Value::Null) => None,
                // An empty namespace means "not set", as with kubectl.
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    errors.push(Error::NotAString {
                        field: "metadata.namespace",
                    });
                    None
                }
            };
            (name, namespace)
        }
        Some(_) => {
            errors.push(Error::MetadataNotAMapping);
            (None, None)
        }
    };
    let (api_version, kind, name) = (api_version?, kind?, name?);
    let (group, version) = ObjectKey::split_api_version(&api_version);
    if version.is_empty()
        || version.contains('/')
        || (api_version.contains('/') && group.is_empty())
    {
        // Scope questions about a malformed group would only add noise.
        errors.push(Error::InvalidApiVersion(api_version.clone()));
        return None;
    }
    Some(Identity {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version,
        kind,
        name,
        namespace,
    })
}

/// The API server's rules for the object's name and namespace.
pub(super) fn check_names(id: &Identity, errors: &mut Vec<Error>) {
    if let Err(reason) = names::rule(&id.group, &id.kind)(&id.name) {
        errors.push(Error::InvalidName {
            field: "metadata.name",
            value: id.name.clone(),
            reason,
        });
    }
    if let Some(ns) = &id.namespace
        && let Err(reason) = names::dns1123_label(ns)
    {
        errors.push(Error::InvalidName {
            field: "metadata.namespace",
            value: ns.clone(),
            reason,
        });
    }
}

/// Whether the kind is namespaced: the scopes (built-in kinds, or the cluster's discovery)
/// are authoritative; a CRD in the revision covers kinds the cluster does not serve yet.
pub(super) fn scope(
    id: &Identity,
    scopes: &dyn Scopes,
    crds: &HashMap<(String, String), CrdKind>,
    errors: &mut Vec<Error>,
) -> Option<bool> {
    if let Some(namespaced) = scopes.namespaced(&id.group, &id.kind) {
        return Some(namespaced);
    }
    // Infra specs are the agent's own: cluster-wide, checked by `infra`.
    if id.group == crate::core::INFRA_GROUP {
        return Some(false);
    }
    let Some(crd) = crds.get(&(id.group.clone(), id.kind.clone())) else {
        errors.push(Error::UnknownKind {
            api_version: id.api_version.clone(),
            kind: id.kind.clone(),
        });
        return None;
    };
    if !crd.versions.is_empty() && !crd.versions.contains(&id.version) {
        errors.push(Error::UnknownVersion {
            version: id.version.clone(),
            kind: id.kind.clone(),
            defined: crd.versions.join(", "),
        });
    }
    Some(crd.namespaced)
}

/// The data rules of Secrets and ConfigMaps (what the API server would refuse).
pub(super) fn check_kind_data(id: &Identity, obj: &Map<String, Value>, errors: &mut Vec<Error>) {
    if !id.group.is_empty() {
        return;
    }
    match id.kind.as_str() {
        "Secret" => {
            let base64 =
                DataValue::Base64("value is not valid base64 (use stringData for plain text)");
            check_data(obj, "data", base64, errors);
            check_data(obj, "stringData", DataValue::String, errors);
        }
        "ConfigMap" => {
            check_data(obj, "data", DataValue::String, errors);
            let base64 = DataValue::Base64("value is not valid base64");
            check_data(obj, "binaryData", base64, errors);
        }
        _ => {}
    }
}

/// Adds labels to an object's metadata, keeping the ones it has.
pub fn add_labels(obj: &mut Value, labels: &BTreeMap<String, String>) {
    if labels.is_empty() {
        return;
    }
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let l = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    if !l.is_object() {
        *l = Value::Object(Default::default());
    }
    if let Some(map) = l.as_object_mut() {
        for (k, v) in labels {
            map.insert(k.clone(), Value::String(v.clone()));
        }
    }
}

/// Reports each object defined more than once (version ignored), naming the first.
pub(super) fn find_duplicates(manifests: &[Manifest], errors: &mut Vec<Located>) {
    let mut order: Vec<usize> = (0..manifests.len()).collect();
    // Sorting by identity, then by position, puts each first definition ahead of its copies.
    order.sort_by(|&a, &b| {
        let (x, y) = (&manifests[a].id, &manifests[b].id);
        (&x.group, &x.kind, &x.namespace, &x.name, a).cmp(&(
            &y.group,
            &y.kind,
            &y.namespace,
            &y.name,
            b,
        ))
    });
    let mut first = None::<&Manifest>;
    for i in order {
        let m = &manifests[i];
        match first {
            Some(f) if f.id == m.id => errors.push(Located {
                subject: Some(m.subject()),
                ..Located::new(
                    &m.file,
                    m.line,
                    Error::Duplicate {
                        file: f.file.clone(),
                        line: f.line,
                    },
                )
            }),
            _ => first = Some(m),
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum DataValue {
    String,
    /// With the message for a value that is not base64.
    Base64(&'static str),
}

/// Checks a Secret's or ConfigMap's data the way the API server would, without ever
/// putting a value into a message.
pub(super) fn check_data(
    obj: &Map<String, Value>,
    field: &str,
    kind: DataValue,
    errors: &mut Vec<Error>,
) {
    let entries = match obj.get(field) {
        None | Some(Value::Null) => return,
        Some(Value::Object(entries)) => entries,
        Some(_) => {
            errors.push(Error::InvalidData {
                field: field.to_owned(),
                reason: "must be a mapping of keys to values",
            });
            return;
        }
    };
    for (key, value) in entries {
        let at = || format!("{field}.{key}");
        if key.is_empty()
            || key.len() > 253
            || !key
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        {
            errors.push(Error::InvalidData {
                field: format!("{field}[{key:?}]"),
                reason: "a key must consist of alphanumeric characters, '-', '_' or '.' \
                         (at most 253)",
            });
        }
        match (kind, value) {
            (_, Value::Null) => {}
            (DataValue::String, Value::String(_)) => {}
            (DataValue::Base64(_), Value::String(s)) if is_base64(s) => {}
            (DataValue::Base64(reason), Value::String(_)) => errors.push(Error::InvalidData {
                field: at(),
                reason,
            }),
            (_, _) => errors.push(Error::InvalidData {
                field: at(),
                reason: "value must be a string (quote numbers and booleans)",
            }),
        }
    }
}

/// Standard base64 with padding, as Go's decoder (used by the API server) accepts it:
/// line breaks are ignored.
pub(super) fn is_base64(s: &str) -> bool {
    let body: Vec<u8> = s.bytes().filter(|&c| c != b'\n' && c != b'\r').collect();
    if !body.len().is_multiple_of(4) {
        return false;
    }
    let data = body.len() - body.iter().rev().take_while(|&&c| c == b'=').count();
    body.len() - data <= 2
        && body[..data]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}
