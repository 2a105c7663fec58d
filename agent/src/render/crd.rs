//! CustomResourceDefinitions in the same revision: the kinds they define, so their custom
//! resources validate before the cluster serves them.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::parse::{Candidate, str_field};
use super::validate::subject_of;
use super::{Error, Located};
use crate::core::ObjectKey;

pub(super) const CRD_GROUP: &str = "apiextensions.k8s.io";
pub(super) const CRD_KIND: &str = "CustomResourceDefinition";

/// A kind defined by a CustomResourceDefinition of the revision.
#[derive(Debug, Clone)]
pub(super) struct CrdKind {
    pub(super) plural: String,
    pub(super) namespaced: bool,
    pub(super) versions: Vec<String>,
}

/// Records the kind a CRD candidate defines, keyed by (group, kind); other candidates are
/// left alone. Errors in a CRD's definition are reported here; its identity is checked
/// like any object's.
pub(super) fn collect_crd(
    c: &Candidate,
    crds: &mut HashMap<(String, String), CrdKind>,
    errors: &mut Vec<Located>,
) {
    let Some(obj) = c.value.as_object() else {
        return;
    };
    let api_version = str_field(obj, "apiVersion").unwrap_or_default();
    if ObjectKey::split_api_version(api_version).0 != CRD_GROUP
        || str_field(obj, "kind") != Some(CRD_KIND)
    {
        return;
    }
    match crd_kind(obj) {
        Ok((key, kind)) => {
            crds.insert(key, kind);
        }
        Err(reason) => errors.push(Located {
            subject: Some(subject_of(obj)),
            item: c.item,
            ..Located::new(&c.file, c.line, Error::InvalidCrd(reason))
        }),
    }
}

pub(super) fn crd_kind(obj: &Map<String, Value>) -> Result<((String, String), CrdKind), String> {
    let spec = obj
        .get("spec")
        .and_then(Value::as_object)
        .ok_or("spec is missing")?;
    let nonempty = |v: Option<&Value>, field: &str| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or(format!("{field} must be a non-empty string"))
    };
    let group = nonempty(spec.get("group"), "spec.group")?;
    let names = spec.get("names");
    let kind = nonempty(names.and_then(|n| n.get("kind")), "spec.names.kind")?;
    let plural = nonempty(names.and_then(|n| n.get("plural")), "spec.names.plural")?;
    let namespaced = match spec.get("scope").and_then(Value::as_str) {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => return Err("spec.scope must be \"Namespaced\" or \"Cluster\"".into()),
    };
    let expected = format!("{plural}.{group}");
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    if name.is_some_and(|n| n != expected) {
        return Err(format!(
            "metadata.name must be spec.names.plural + \".\" + spec.group: {expected:?}"
        ));
    }
    let versions = match spec.get("versions") {
        Some(Value::Array(vs)) => vs
            .iter()
            .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Ok((
        (group, kind),
        CrdKind {
            plural,
            namespaced,
            versions,
        },
    ))
}
