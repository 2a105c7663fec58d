//! Manifests: parse the files of a revision into validated Kubernetes objects, each
//! with the file and line it came from, before anything is written to the cluster.
//! The repository is untrusted input, so parsing is bounded and every problem is reported.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope, Resource};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::core::{ObjectKey, compact, parse_compact};
use crate::source::File;

pub mod build;
mod crd;
pub mod exec;
pub mod helm;
pub mod kustomize;
mod memo;
mod parse;
#[cfg(test)]
mod testing;
mod validate;

use crd::collect_crd;
pub use memo::{Memo, Reuse, render_with_memo};
use parse::{Candidate, Compact, JSON_MAX_DEPTH, expand_list, format_of, parse_file};
pub use validate::add_labels;

/// The kind a CustomResourceDefinition among rendered manifests defines: (group, kind,
/// plural, namespaced); `None` for any other object.
pub fn crd_resource(m: &Manifest) -> Option<(String, String, String, bool)> {
    if m.id.group != crd::CRD_GROUP || m.id.kind != crd::CRD_KIND {
        return None;
    }
    let ((group, kind), defined) = crd::crd_kind(m.value().as_object()?).ok()?;
    Some((group, kind, defined.plural, defined.namespaced))
}
use validate::{find_duplicates, validate};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One validated object of the desired state, with where it was written.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub id: ObjectKey,
    /// Path of the file, relative to the repository root.
    pub file: String,
    /// 1-based line of the first line of the object's document (for a `List` item, of the
    /// `List`'s document).
    pub line: usize,
    /// The object as written, with `metadata.namespace` defaulted for namespaced kinds and
    /// the options' labels added, as compact JSON. Not a `Value` tree: that costs several
    /// times the memory, for every object of a revision at once, and the object is mostly
    /// sent to the server or compared whole. Shared, so the drift detector keeps this copy.
    pub object: Arc<RawValue>,
}

impl Manifest {
    /// How every message names this object: `Kind/ns/name` or `Kind/name`.
    pub fn subject(&self) -> String {
        self.id.to_string()
    }

    /// The object as a tree, for the few places that look inside it.
    pub fn value(&self) -> Value {
        parse_compact(&self.object)
    }
}

/// How to render a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Namespace given to namespaced objects that do not name one.
    pub default_namespace: String,
    /// Labels added to every object (a sync's owner label), keeping the ones it has.
    pub labels: BTreeMap<String, String>,
    pub limits: Limits,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            default_namespace: "default".into(),
            labels: BTreeMap::new(),
            limits: Limits::default(),
        }
    }
}

/// Bounds on untrusted input. The defaults admit the largest real-world bundles we know
/// of (CRD bundles of several MiB) while keeping time and memory bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest file accepted, in bytes.
    pub max_file_bytes: usize,
    /// Most YAML documents (or JSON values) in one file.
    pub max_documents_per_file: usize,
    /// Deepest nesting of mappings and sequences, at most 127 (serde_json's cap): objects
    /// travel to and from the API server as JSON, so a deeper one could never be applied.
    pub max_depth: usize,
    /// Most YAML nodes (scalars, mappings, sequences) in one file.
    pub max_nodes_per_file: usize,
    /// Most events replayed from aliases in one file: this is what stops alias bombs.
    pub max_alias_replay: usize,
    /// Most objects in the whole revision.
    pub max_objects: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: 16 * 1024 * 1024,
            max_documents_per_file: 10_000,
            max_depth: JSON_MAX_DEPTH,
            max_nodes_per_file: 2_000_000,
            max_alias_replay: 100_000,
            // Issue 10: one sync holds 100,000 objects; the source's 256 MiB bounds the memory.
            max_objects: 200_000,
        }
    }
}

/// Answers whether a kind is namespaced. The apply engine supplies one backed by API
/// discovery; [`BuiltinScopes`] knows the kinds compiled into k8s-openapi.
pub trait Scopes {
    /// `Some(true)` if namespaced, `Some(false)` if cluster-scoped, `None` if unknown.
    fn namespaced(&self, group: &str, kind: &str) -> Option<bool>;
}

/// The built-in Kubernetes kinds, with their scope taken from k8s-openapi.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinScopes;

impl Scopes for BuiltinScopes {
    fn namespaced(&self, group: &str, kind: &str) -> Option<bool> {
        BUILTIN_KINDS
            .iter()
            .find(|(g, k, _, _)| *g == group && *k == kind)
            .map(|(_, _, namespaced, _)| *namespaced)
    }
}

impl BuiltinScopes {
    /// The plural resource name of a built-in kind (`deployments`), and whether it is
    /// namespaced.
    pub fn resource(group: &str, kind: &str) -> Option<(&'static str, bool)> {
        BUILTIN_KINDS
            .iter()
            .find(|(g, k, _, _)| *g == group && *k == kind)
            .map(|(_, _, namespaced, plural)| (*plural, *namespaced))
    }
}

/// Maps k8s-openapi's scope marker types to a bool. `SubResourceScope` deliberately has
/// no impl, so listing a subresource below fails to compile.
trait ScopeKind {
    const NAMESPACED: bool;
}
impl ScopeKind for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl ScopeKind for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// (group, kind, namespaced) read from each type's `Resource` impl, so the table cannot
/// drift from the crate.
macro_rules! builtin_kinds {
    ($($ty:ty),* $(,)?) => {
        &[$((
            <$ty as Resource>::GROUP,
            <$ty as Resource>::KIND,
            <<$ty as Resource>::Scope as ScopeKind>::NAMESPACED,
            <$ty as Resource>::URL_PATH_SEGMENT,
        )),*]
    };
}

/// Every persisted kind of k8s-openapi's v1_34 API. Left out on purpose: create-only
/// review and request kinds (TokenReview, SubjectAccessReview, Binding, ...), which are not
/// stored and cannot be applied, and meta types (Status, APIGroup, ...).
static BUILTIN_KINDS: &[(&str, &str, bool, &str)] = {
    use k8s_openapi::api as k;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions as apiext;
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration as apireg;
    builtin_kinds![
        k::admissionregistration::v1::MutatingWebhookConfiguration,
        k::admissionregistration::v1::ValidatingAdmissionPolicy,
        k::admissionregistration::v1::ValidatingAdmissionPolicyBinding,
        k::admissionregistration::v1::ValidatingWebhookConfiguration,
        k::admissionregistration::v1beta1::MutatingAdmissionPolicy,
        k::admissionregistration::v1beta1::MutatingAdmissionPolicyBinding,
        k::apiserverinternal::v1alpha1::StorageVersion,
        k::apps::v1::ControllerRevision,
        k::apps::v1::DaemonSet,
        k::apps::v1::Deployment,
        k::apps::v1::ReplicaSet,
        k::apps::v1::StatefulSet,
        k::autoscaling::v2::HorizontalPodAutoscaler,
        k::batch::v1::CronJob,
        k::batch::v1::Job,
        k::certificates::v1::CertificateSigningRequest,
        k::certificates::v1beta1::ClusterTrustBundle,
        k::certificates::v1alpha1::PodCertificateRequest,
        k::coordination::v1::Lease,
        k::coordination::v1beta1::LeaseCandidate,
        k::core::v1::ConfigMap,
        k::core::v1::Endpoints,
        k::core::v1::Event,
        k::core::v1::LimitRange,
        k::core::v1::Namespace,
        k::core::v1::Node,
        k::core::v1::PersistentVolume,
        k::core::v1::PersistentVolumeClaim,
        k::core::v1::Pod,
        k::core::v1::PodTemplate,
        k::core::v1::ReplicationController,
        k::core::v1::ResourceQuota,
        k::core::v1::Secret,
        k::core::v1::Service,
        k::core::v1::ServiceAccount,
        k::discovery::v1::EndpointSlice,
        k::events::v1::Event,
        k::flowcontrol::v1::FlowSchema,
        k::flowcontrol::v1::PriorityLevelConfiguration,
        k::networking::v1::IPAddress,
        k::networking::v1::Ingress,
        k::networking::v1::IngressClass,
        k::networking::v1::NetworkPolicy,
        k::networking::v1::ServiceCIDR,
        k::node::v1::RuntimeClass,
        k::policy::v1::PodDisruptionBudget,
        k::rbac::v1::ClusterRole,
        k::rbac::v1::ClusterRoleBinding,
        k::rbac::v1::Role,
        k::rbac::v1::RoleBinding,
        k::resource::v1::DeviceClass,
        k::resource::v1::ResourceClaim,
        k::resource::v1::ResourceClaimTemplate,
        k::resource::v1::ResourceSlice,
        k::resource::v1alpha3::DeviceTaintRule,
        k::scheduling::v1::PriorityClass,
        k::storage::v1::CSIDriver,
        k::storage::v1::CSINode,
        k::storage::v1::CSIStorageCapacity,
        k::storage::v1::StorageClass,
        k::storage::v1::VolumeAttachment,
        k::storage::v1::VolumeAttributesClass,
        k::storagemigration::v1alpha1::StorageVersionMigration,
        apiext::v1::CustomResourceDefinition,
        apireg::v1::APIService,
    ]
};

/// What is wrong with one file, document or object. Messages never quote a field's value
/// except identity fields (apiVersion, kind, name, namespace), so Secret data cannot leak.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("file is {size} bytes, more than the limit of {limit}")]
    FileTooLarge { size: usize, limit: usize },
    #[error("file is not valid UTF-8")]
    NotUtf8,
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("rejected as hostile or oversized input: {0}")]
    Limit(String),
    #[error("more than {limit} objects in this revision")]
    TooManyObjects { limit: usize },
    #[error("document is {found}, not a Kubernetes object (a mapping)")]
    NotAnObject { found: &'static str },
    #[error("{field} is missing")]
    MissingField { field: &'static str },
    #[error("{field} must be a non-empty string")]
    NotAString { field: &'static str },
    #[error("metadata must be a mapping")]
    MetadataNotAMapping,
    #[error("invalid apiVersion {0:?}: expected \"v1\" or \"group/version\"")]
    InvalidApiVersion(String),
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidName {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "unknown kind {kind} ({api_version}): not a built-in kind, not known to the cluster, \
         and no CustomResourceDefinition in this revision defines it"
    )]
    UnknownKind { api_version: String, kind: String },
    #[error(
        "version {version} is not among the versions ({defined}) of the CustomResourceDefinition \
         for {kind} in this revision"
    )]
    UnknownVersion {
        version: String,
        kind: String,
        defined: String,
    },
    #[error("{kind} is cluster-scoped, but metadata.namespace is {namespace:?}")]
    NamespaceOnClusterScoped { kind: String, namespace: String },
    #[error("duplicate object: also defined at {file}:{line}")]
    Duplicate { file: String, line: usize },
    #[error("invalid CustomResourceDefinition: {0}")]
    InvalidCrd(String),
    #[error("invalid List: {0}")]
    InvalidList(&'static str),
    #[error("{field}: {reason}")]
    InvalidData { field: String, reason: &'static str },
    #[error(
        "also declared by sync {sync:?}; one object belongs to one sync: remove it from one of them"
    )]
    DeclaredByOtherSync { sync: String },
    /// An infra spec (`oke.gitops-agent.io`) that is not valid.
    #[error("{0}")]
    InfraSpec(String),
    /// A renderer (kustomize) that failed or could not run.
    #[error("{0}")]
    Renderer(String),
}

/// An [`Error`] with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub file: String,
    /// 1-based; the document's first line for errors about an object.
    pub line: usize,
    /// 1-based, when known (syntax errors).
    pub column: Option<usize>,
    /// `Kind/ns/name` (as much of it as the document gives), when known.
    pub subject: Option<String>,
    /// Index in the `items` of a `List`, for objects that came from one.
    pub item: Option<usize>,
    pub error: Error,
}

impl Located {
    fn new(file: &str, line: usize, error: Error) -> Self {
        Self {
            file: file.to_owned(),
            line,
            column: None,
            subject: None,
            item: None,
            error,
        }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)?;
        if let Some(column) = self.column {
            write!(f, ":{column}")?;
        }
        if let Some(subject) = &self.subject {
            write!(f, ": {subject}")?;
        }
        if let Some(item) = self.item {
            write!(f, " (List items[{item}])")?;
        }
        write!(f, ": {}", self.error)
    }
}

// The message already includes the inner error's text, so it is not also exposed as a
// source (that would print it twice in a chain).
impl std::error::Error for Located {}

/// Every problem found in a revision, in file and line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Errors(pub Vec<Located>);

impl Errors {
    pub fn iter(&self) -> impl Iterator<Item = &Located> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

/// Turns a revision's files into validated objects: [`Plain`] YAML and JSON. kustomize and
/// Helm run before it (`build`), and their output is rendered as files by it.
pub trait Renderer: Send + Sync {
    fn render(
        &self,
        files: &[File],
        options: &Options,
        scopes: &dyn Scopes,
    ) -> Result<Vec<Manifest>, Errors>;
}

/// Every `.yaml`, `.yml` and `.json` file, as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Renderer for Plain {
    fn render(
        &self,
        files: &[File],
        options: &Options,
        scopes: &dyn Scopes,
    ) -> Result<Vec<Manifest>, Errors> {
        render(files, options, scopes)
    }
}

/// Parses and validates the manifests of a revision: every `.yaml`, `.yml` and `.json`
/// file, in path order, then document order. Returns all the problems found, or none.
pub fn render(
    files: &[File],
    options: &Options,
    scopes: &dyn Scopes,
) -> Result<Vec<Manifest>, Errors> {
    let mut errors = Vec::new();
    let (candidates, crds) = collect(files, options, &mut errors);
    finish(candidates, options, scopes, &crds, errors)
}

/// Validates every candidate, then looks for duplicates: the manifests, or every problem.
fn finish(
    candidates: Vec<Compact>,
    options: &Options,
    scopes: &dyn Scopes,
    crds: &HashMap<(String, String), crd::CrdKind>,
    mut errors: Vec<Located>,
) -> Result<Vec<Manifest>, Errors> {
    let manifests = validate_all(candidates, options, scopes, crds, &mut errors);
    find_duplicates(&manifests, &mut errors);
    if errors.is_empty() {
        Ok(manifests)
    } else {
        // Stable, so errors on one line keep the order they were found in.
        errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        Err(Errors(errors))
    }
}

/// The valid candidates as manifests, in order; the problems of the others to `errors`.
fn validate_all(
    candidates: Vec<Compact>,
    options: &Options,
    scopes: &dyn Scopes,
    crds: &HashMap<(String, String), crd::CrdKind>,
    errors: &mut Vec<Located>,
) -> Vec<Manifest> {
    let mut manifests = Vec::with_capacity(candidates.len());
    for c in candidates {
        let (file, line, item) = (c.file.clone(), c.line, c.item);
        let candidate = Candidate {
            file: c.file,
            line: c.line,
            item: c.item,
            value: parse_compact(&c.json),
        };
        drop(c.json);
        match validate(candidate, options, scopes, crds) {
            Ok(m) => manifests.push(m),
            Err((subject, errs)) => errors.extend(errs.into_iter().map(|error| Located {
                subject: subject.clone(),
                item,
                ..Located::new(&file, line, error)
            })),
        }
    }
    manifests
}

/// Every document of every manifest file, in path order, kept compact until validated,
/// with the kinds the revision's CRDs define.
fn collect<'a>(
    files: impl IntoIterator<Item = &'a File>,
    options: &Options,
    errors: &mut Vec<Located>,
) -> (Vec<Compact>, HashMap<(String, String), crd::CrdKind>) {
    // The caller sorts, but output order is part of the contract, so do not depend on it.
    let mut files: Vec<&File> = files
        .into_iter()
        .filter(|f| format_of(&f.path).is_some())
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut candidates = Vec::new();
    let mut crds = HashMap::new();
    for file in files {
        let documents = match parse_file(file, &options.limits) {
            Ok(documents) => documents,
            Err((line, column, error)) => {
                errors.push(Located {
                    column,
                    ..Located::new(&file.path, line, error)
                });
                continue;
            }
        };
        for document in documents {
            for candidate in expand_list(&file.path, document, errors) {
                if candidates.len() == options.limits.max_objects {
                    let limit = options.limits.max_objects;
                    let e = Error::TooManyObjects { limit };
                    errors.push(Located::new(&file.path, candidate.line, e));
                    return (candidates, crds);
                }
                collect_crd(&candidate, &mut crds, errors);
                // Kept compact until validated, one at a time: a revision's objects as
                // trees, all at once, are most of the agent's peak memory.
                candidates.push(Compact {
                    file: candidate.file,
                    line: candidate.line,
                    item: candidate.item,
                    json: compact(&candidate.value),
                });
            }
        }
    }
    (candidates, crds)
}

#[cfg(test)]
mod tests {
    use super::parse::*;
    use super::validate::*;
    use super::*;

    fn file(path: &str, text: &str) -> File {
        File {
            path: path.into(),
            content: text.as_bytes().to_vec(),
        }
    }

    fn ok(files: &[File]) -> Vec<Manifest> {
        match render(files, &Options::default(), &BuiltinScopes) {
            Ok(m) => m,
            Err(e) => panic!("expected success, got:\n{e}"),
        }
    }

    fn err(files: &[File]) -> Errors {
        match render(files, &Options::default(), &BuiltinScopes) {
            Ok(m) => panic!("expected errors, got {} manifests", m.len()),
            Err(e) => e,
        }
    }

    /// The files of a testdata directory, as the source stage hands them over.
    fn testdata(dir: &str) -> Vec<File> {
        fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<File>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(root, &path, out);
                } else {
                    out.push(File {
                        path: path.strip_prefix(root).unwrap().to_str().unwrap().into(),
                        content: std::fs::read(&path).unwrap(),
                    });
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/render");
        let mut out = Vec::new();
        walk(&root, &root.join(dir), &mut out);
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n";

    #[test]
    fn renders_a_revision_in_file_then_document_order() {
        let manifests = ok(&testdata("shop"));
        let got: Vec<(String, &str, usize)> = manifests
            .iter()
            .map(|m| (m.subject(), m.file.as_str(), m.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("Namespace/shop".into(), "shop/00-namespace.yaml", 1),
                ("Deployment/shop/web".into(), "shop/app.yaml", 5),
                ("Service/default/web".into(), "shop/app.yaml", 27),
                (
                    "ClusterRole/system:aggregate-to-edit-widgets".into(),
                    "shop/app.yaml",
                    35
                ),
                (
                    "CustomResourceDefinition/widgets.example.com".into(),
                    "shop/crd.yaml",
                    1
                ),
                ("ConfigMap/shop/web".into(), "shop/list.yml", 1),
                ("Widget/shop/gadget".into(), "shop/list.yml", 1),
                ("Secret/shop/db".into(), "shop/secret.json", 1),
            ]
        );
        let widget = &manifests[6].id;
        assert_eq!(
            (widget.group.as_str(), widget.version.as_str()),
            ("example.com", "v1")
        );
        // YAML 1.1 octal, as kubectl reads it.
        assert_eq!(
            manifests[1].value()["spec"]["template"]["spec"]["volumes"][0]["configMap"]["defaultMode"],
            420
        );
    }

    #[test]
    fn defaults_the_namespace_of_namespaced_kinds_only() {
        let options = Options {
            default_namespace: "team-a".into(),
            ..Options::default()
        };
        let files = [file(
            "a.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: \"\"}\n",
        )];
        let m = render(&files, &options, &BuiltinScopes).unwrap();
        assert_eq!(m[0].id.namespace.as_deref(), Some("team-a"));
        assert_eq!(m[0].value()["metadata"]["namespace"], "team-a");
        assert_eq!(m[1].id.namespace, None);
        assert!(m[1].value()["metadata"].get("namespace").is_none());
        assert_eq!(m[2].id.namespace.as_deref(), Some("team-a"));
    }

    #[test]
    fn ignores_other_files_and_empty_documents() {
        let m = ok(&[
            file("README.md", "not: [valid"),
            file("script.sh", "#!/bin/sh\n"),
            file("empty.yaml", ""),
            file(
                "comments.yaml",
                "# nothing here\n---\n# nor here\n---\n...\n",
            ),
            file("nulls.yml", "---\n~\n---\nnull\n"),
            file("upper.YAML", CM),
        ]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].file, "upper.YAML");
    }

    #[test]
    fn orders_by_path_even_if_given_unsorted() {
        let m = ok(&[
            file(
                "b.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
            ),
            file(
                "a.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
            ),
        ]);
        let names: Vec<&str> = m.iter().map(|m| m.id.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn reads_json_streams_with_lines() {
        let m = ok(&[file(
            "objs.json",
            "\u{feff}{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {\"name\": \"a\"}}\n\n\
             {\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\",\n \"metadata\": {\"name\": \"b\"}}\n",
        )]);
        assert_eq!(m.iter().map(|m| m.line).collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn expands_lists_and_rejects_bad_ones() {
        let m = ok(&[file(
            "list.yaml",
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: a}\n\
             - apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: b}\n",
        )]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].id.name, "b");

        let e = err(&[
            file("a.yaml", "apiVersion: v1\nkind: List\nitems: {}\n"),
            file(
                "b.yaml",
                "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: ok}\n\
                 - apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: Bad}\n\
                 - {apiVersion: v1, kind: List, items: []}\n",
            ),
        ]);
        let text = e.to_string();
        assert_eq!(e.len(), 3, "{text}");
        assert!(
            text.contains("a.yaml:1: invalid List: items must be a sequence"),
            "{text}"
        );
        assert!(
            text.contains("b.yaml:1: ConfigMap/Bad (List items[1]): invalid metadata.name \"Bad\""),
            "{text}"
        );
        assert!(
            text.contains("b.yaml:1 (List items[2]): invalid List: a List inside a List"),
            "{text}"
        );
    }

    #[test]
    fn reports_missing_identity_fields_and_every_error() {
        let e = err(&[
            file("a.yaml", "kind: ConfigMap\nmetadata: {name: a}\n"),
            file(
                "b.yaml",
                "apiVersion: v1\nmetadata: {name: b}\n---\napiVersion: v1\nkind: ConfigMap\n",
            ),
            file(
                "c.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: 7}\n",
            ),
            file(
                "d.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: [x]\n---\n- just\n- a list\n",
            ),
            file("e.json", "[1, 2]"),
        ]);
        let lines: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "a.yaml:1: ConfigMap/a: apiVersion is missing",
                "b.yaml:1: ?/b: kind is missing",
                "b.yaml:4: ConfigMap/?: metadata.name is missing",
                "c.yaml:1: ConfigMap/?: metadata.name must be a non-empty string",
                "d.yaml:1: ConfigMap/?: metadata must be a mapping",
                "d.yaml:5: document is a sequence, not a Kubernetes object (a mapping)",
                "e.json:1: document is a sequence, not a Kubernetes object (a mapping)",
            ]
        );
        // The aggregate lists them one per line.
        assert_eq!(e.to_string(), lines.join("\n"));
    }

    #[test]
    fn labels_are_added_without_dropping_existing() {
        let mut obj = serde_json::json!({"metadata": {"name": "a", "labels": {"app": "x"}}});
        add_labels(
            &mut obj,
            &std::collections::BTreeMap::from([(
                crate::core::OWNER_LABEL.to_string(),
                "shop".to_string(),
            )]),
        );
        assert_eq!(
            obj["metadata"]["labels"],
            serde_json::json!({"app": "x", crate::core::OWNER_LABEL: "shop"})
        );
    }

    #[test]
    fn validates_names_and_namespaces_like_the_api_server() {
        let e = err(&[file(
            "a.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: My_Config, namespace: Shop}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: shop.prod}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: a/b}\n",
        )]);
        let text = e.to_string();
        assert_eq!(e.len(), 5, "{text}");
        assert!(text.contains("a.yaml:1: ConfigMap/Shop/My_Config: invalid metadata.name \"My_Config\": a lowercase RFC 1123 subdomain"), "{text}");
        assert!(text.contains("a.yaml:1: ConfigMap/Shop/My_Config: invalid metadata.namespace \"Shop\": a lowercase RFC 1123 label"), "{text}");
        assert!(
            text.contains("a.yaml:5: Namespace/shop.prod: invalid metadata.name"),
            "{text}"
        );
        assert!(
            text.contains(
                "a.yaml:9: Service/1web: invalid metadata.name \"1web\": a DNS-1035 label"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "a.yaml:13: Role/a/b: invalid metadata.name \"a/b\": may not contain '/'"
            ),
            "{text}"
        );
    }

    #[test]
    fn rejects_malformed_api_versions() {
        let e = err(&[file(
            "a.yaml",
            "apiVersion: apps/\nkind: Deployment\nmetadata: {name: a}\n---\n\
             apiVersion: /v1\nkind: Deployment\nmetadata: {name: b}\n",
        )]);
        assert_eq!(e.len(), 2, "{e}");
        assert!(
            e.iter()
                .all(|l| matches!(l.error, Error::InvalidApiVersion(_))),
            "{e}"
        );
    }

    #[test]
    fn enforces_scope() {
        let e = err(&[
            file(
                "ns.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, namespace: b}\n",
            ),
            file(
                "x.yaml",
                "# header\napiVersion: example.com/v1\nkind: Gizmo\nmetadata: {name: a}\n",
            ),
            file(
                "old.yaml",
                "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: a}\n",
            ),
        ]);
        let lines: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "ns.yaml:1: Namespace/b/a: Namespace is cluster-scoped, but metadata.namespace is \"b\"",
                "old.yaml:1: Deployment/a: unknown kind Deployment (extensions/v1beta1): not a built-in kind, \
                 not known to the cluster, and no CustomResourceDefinition in this revision defines it",
                "x.yaml:2: Gizmo/a: unknown kind Gizmo (example.com/v1): not a built-in kind, \
                 not known to the cluster, and no CustomResourceDefinition in this revision defines it",
            ]
        );
    }

    fn crd(scope: &str) -> String {
        format!(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
             metadata: {{name: gizmos.example.com}}\n\
             spec:\n  group: example.com\n  scope: {scope}\n  names: {{kind: Gizmo, plural: gizmos}}\n  \
             versions: [{{name: v1}}, {{name: v2}}]\n"
        )
    }

    #[test]
    fn crds_in_the_revision_define_kinds() {
        let cr = "apiVersion: example.com/v2\nkind: Gizmo\nmetadata: {name: a}\n";
        // The CR may come before its CRD: the CRDs are collected first.
        let m = ok(&[
            file("a-cr.yaml", cr),
            file("b-crd.yaml", &crd("Namespaced")),
        ]);
        assert_eq!(m[0].subject(), "Gizmo/default/a");

        let m = ok(&[file("a-cr.yaml", cr), file("b-crd.yaml", &crd("Cluster"))]);
        assert_eq!(m[0].subject(), "Gizmo/a");

        let e = err(&[
            file(
                "a-cr.yaml",
                "apiVersion: example.com/v3\nkind: Gizmo\nmetadata: {name: a, namespace: x}\n",
            ),
            file("b-crd.yaml", &crd("Cluster")),
        ]);
        let text = e.to_string();
        assert!(
            text.contains("a-cr.yaml:1: Gizmo/x/a: version v3 is not among the versions (v1, v2)"),
            "{text}"
        );
        assert!(
            text.contains("a-cr.yaml:1: Gizmo/x/a: Gizmo is cluster-scoped"),
            "{text}"
        );
    }

    #[test]
    fn reports_invalid_crds() {
        let e = err(&[
            file("a.yaml", &crd("Sometimes")),
            file(
                "b.yaml",
                &crd("Cluster").replace("gizmos.example.com", "gizmo.example.com"),
            ),
            file(
                "c.yaml",
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: x.y}\n",
            ),
        ]);
        let lines: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "a.yaml:1: CustomResourceDefinition/gizmos.example.com: invalid CustomResourceDefinition: \
                 spec.scope must be \"Namespaced\" or \"Cluster\"",
                "b.yaml:1: CustomResourceDefinition/gizmo.example.com: invalid CustomResourceDefinition: \
                 metadata.name must be spec.names.plural + \".\" + spec.group: \"gizmos.example.com\"",
                "c.yaml:1: CustomResourceDefinition/x.y: invalid CustomResourceDefinition: spec is missing",
            ]
        );
    }

    /// A stand-in for the discovery-backed scopes of the apply engine.
    struct Discovered;
    impl Scopes for Discovered {
        fn namespaced(&self, group: &str, kind: &str) -> Option<bool> {
            match (group, kind) {
                ("cert-manager.io", "ClusterIssuer") => Some(false),
                ("cert-manager.io", "Certificate") => Some(true),
                _ => BuiltinScopes.namespaced(group, kind),
            }
        }
    }

    #[test]
    fn uses_the_scopes_it_is_given() {
        let files = [file(
            "certs.yaml",
            "apiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {name: le}\n---\n\
             apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: web}\n",
        )];
        let m = render(&files, &Options::default(), &Discovered).unwrap();
        assert_eq!(m[0].subject(), "ClusterIssuer/le");
        assert_eq!(m[1].subject(), "Certificate/default/web");
        assert!(render(&files, &Options::default(), &BuiltinScopes).is_err());
    }

    #[test]
    fn builtin_scopes_come_from_k8s_openapi() {
        let s = BuiltinScopes;
        assert_eq!(s.namespaced("apps", "Deployment"), Some(true));
        assert_eq!(s.namespaced("", "Secret"), Some(true));
        assert_eq!(s.namespaced("", "Namespace"), Some(false));
        assert_eq!(
            s.namespaced("rbac.authorization.k8s.io", "ClusterRole"),
            Some(false)
        );
        assert_eq!(
            s.namespaced("apiextensions.k8s.io", "CustomResourceDefinition"),
            Some(false)
        );
        assert_eq!(
            s.namespaced("apiregistration.k8s.io", "APIService"),
            Some(false)
        );
        assert_eq!(s.namespaced("apps", "Secret"), None);
        assert_eq!(s.namespaced("example.com", "Gizmo"), None);
        // Two versions of one kind never disagree on scope.
        for (g, k, n, _) in BUILTIN_KINDS {
            assert!(
                BUILTIN_KINDS
                    .iter()
                    .all(|(g2, k2, n2, _)| (g, k) != (g2, k2) || n == n2)
            );
        }
        assert_eq!(
            BuiltinScopes::resource("apps", "Deployment"),
            Some(("deployments", true))
        );
    }

    #[test]
    fn reports_duplicates_with_both_places() {
        let e = err(&[
            file(
                "a.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
            ),
            file(
                "b.yaml",
                "# again, as another version and with the default namespace spelled out\n\
                 apiVersion: apps/v1beta2\nkind: Deployment\nmetadata: {name: web, namespace: default}\n",
            ),
            // Same name, other kind or namespace: not duplicates.
            file(
                "c.yaml",
                "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n---\n\
                 apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: other}\n",
            ),
        ]);
        assert_eq!(
            e.to_string(),
            "b.yaml:2: Deployment/default/web: duplicate object: also defined at a.yaml:1"
        );
    }

    #[test]
    fn yaml_syntax_errors_have_file_line_and_column() {
        let e = err(&[
            file("a.yaml", CM),
            file(
                "b.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [a\n",
            ),
            file("c.yaml", "a: 1\nb: 2: 3\n"),
            file("d.yaml", "a: 1\na: 2\n"),
        ]);
        let located: Vec<(&str, usize, Option<usize>)> = e
            .iter()
            .map(|l| (l.file.as_str(), l.line, l.column))
            .collect();
        assert_eq!(located.len(), 3, "{e}");
        assert_eq!(located[1], ("c.yaml", 2, Some(5)));
        assert_eq!(located[2].0, "d.yaml");
        assert_eq!(located[2].1, 2);
        assert!(e.iter().all(|l| matches!(l.error, Error::Yaml(_))), "{e}");
        assert!(
            e.to_string()
                .contains("c.yaml:2:5: invalid YAML: mapping values are not allowed"),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("d.yaml:2:1: invalid YAML: duplicate mapping key"),
            "{e}"
        );
    }

    #[test]
    fn json_syntax_errors_have_file_line_and_column() {
        let e = err(&[file(
            "a.json",
            "{\n  \"apiVersion\": \"v1\",\n  \"kind\": ConfigMap\n}\n",
        )]);
        let l = &e.0[0];
        assert_eq!((l.line, l.column), (3, Some(11)), "{e}");
        assert!(
            e.to_string()
                .starts_with("a.json:3:11: invalid JSON: expected value"),
            "{e}"
        );
        assert!(!e.to_string().contains(" at line "), "{e}");
    }

    #[test]
    fn rejects_files_that_are_not_utf8() {
        let e = err(&[File {
            path: "a.yaml".into(),
            content: b"a: 1\nb: \xff\n".to_vec(),
        }]);
        assert_eq!(e.to_string(), "a.yaml:2: file is not valid UTF-8");
    }

    fn assert_limit(e: &Errors) {
        assert_eq!(e.len(), 1, "{e}");
        assert!(matches!(e.0[0].error, Error::Limit(_)), "{e}");
    }

    #[test]
    fn rejects_billion_laughs() {
        let e = err(&testdata("hostile"));
        assert_limit(&e);
        let text = e.to_string();
        assert!(text.starts_with("hostile/billion-laughs.yaml:"), "{text}");
        assert!(text.contains("alias bomb"), "{text}");
    }

    #[test]
    fn rejects_deep_nesting() {
        const DEPTH: usize = 10_000;
        let flow = format!("{}1{}", "[".repeat(DEPTH), "]".repeat(DEPTH));
        let flow_maps = format!("{}1{}", "{a: ".repeat(DEPTH), "}".repeat(DEPTH));
        let block = format!("{}1\n", "- ".repeat(DEPTH));
        let in_object = format!("{CM}data:\n  x: {flow}\n");
        let json = format!("{}1{}", "[".repeat(DEPTH), "]".repeat(DEPTH));
        for (path, text) in [
            ("flow.yaml", &flow),
            ("maps.yaml", &flow_maps),
            ("block.yaml", &block),
            ("object.yaml", &in_object),
            ("deep.json", &json),
        ] {
            let e = err(&[file(path, text)]);
            assert_limit(&e);
            assert!(e.to_string().contains("nested"), "{path}: {e}");
        }
        // A lower limit applies to JSON too.
        let shallow = Options {
            limits: Limits {
                max_depth: 3,
                ..Limits::default()
            },
            ..Options::default()
        };
        for (path, text) in [("a.json", "{\"a\": [[{}]]}"), ("a.yaml", "a: [[{}]]")] {
            let e = render(&[file(path, text)], &shallow, &BuiltinScopes).unwrap_err();
            assert_limit(&e);
            assert!(e.to_string().contains("nested more than 3 levels"), "{e}");
        }
        // Nesting up to the limit is fine (and does not exhaust a 2 MiB thread stack).
        let max = Limits::default().max_depth;
        let at_limit = format!("{CM}x: {}1{}\n", "[".repeat(max - 1), "]".repeat(max - 1));
        ok(&[file("fine.yaml", &at_limit)]);
        let over = format!("{CM}x: {}1{}\n", "[".repeat(max), "]".repeat(max));
        assert_limit(&err(&[file("over.yaml", &over)]));
        // JSON has the same limit, serde_json's.
        let json_at_limit = format!(
            "{{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {{\"name\": \"a\"}}, \"x\": {}1{}}}",
            "[".repeat(JSON_MAX_DEPTH - 1),
            "]".repeat(JSON_MAX_DEPTH - 1)
        );
        ok(&[file("fine.json", &json_at_limit)]);
    }

    #[test]
    fn rejects_huge_inputs() {
        let small = Options {
            limits: Limits {
                max_file_bytes: 1024,
                max_documents_per_file: 10,
                max_nodes_per_file: 100,
                max_objects: 3,
                ..Limits::default()
            },
            ..Options::default()
        };
        let run = |files: &[File]| render(files, &small, &BuiltinScopes).unwrap_err();

        let big = format!("{CM}data:\n  x: \"{}\"\n", "a".repeat(2000));
        let e = run(&[file("big.yaml", &big)]);
        assert_eq!(
            e.to_string(),
            format!(
                "big.yaml:1: file is {} bytes, more than the limit of 1024",
                big.len()
            )
        );

        let e = run(&[file("many.yaml", &"a: 1\n---\n".repeat(50))]);
        assert_limit(&e);
        assert!(e.to_string().contains("more than 10 documents"), "{e}");

        let e = run(&[file("many.json", &"{}\n".repeat(50))]);
        assert_limit(&e);

        let e = run(&[file(
            "wide.yaml",
            &format!("{CM}data: [{}]\n", "1,".repeat(200)),
        )]);
        assert_limit(&e);
        assert!(e.to_string().contains("more than 100 nodes"), "{e}");

        let four: String = (0..4)
            .map(|i| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\n---\n"))
            .collect();
        let e = run(&[file("objects.yaml", &four)]);
        assert_eq!(
            e.to_string(),
            "objects.yaml:13: more than 3 objects in this revision"
        );

        // With the default limits, a huge number of documents is refused too.
        let e = err(&[file("storm.yaml", &"---\na: 1\n".repeat(20_000))]);
        assert_limit(&e);
    }

    #[test]
    fn secret_values_never_appear_in_errors() {
        let e = err(&[
            file(
                "a.yaml",
                "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\n\
                 data:\n  password: hunter2-not-base64!\n  fine: aHVudGVy\n\
                 stringData:\n  pin: 918273\n  flag: true\n",
            ),
            file(
                "b.yaml",
                "apiVersion: v1\nkind: Secret\nstringData:\n  password: \"hunter2\n  x: 1\n",
            ),
            file(
                "c.yaml",
                "apiVersion: v1\nkind: Secret\nstringData:\n  password: \"hunter2\\q\"\n",
            ),
            file(
                "d.yaml",
                "apiVersion: v1\nkind: Secret\nstringData:\n  password: hunter2: x\n",
            ),
            file(
                "e.json",
                "{\"kind\": \"Secret\", \"data\": {\"password\": \"hunter2\\q\"}}",
            ),
        ]);
        let text = e.to_string();
        for secret in ["hunter2", "918273", "true"] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
        assert!(
            text.contains("a.yaml:1: Secret/db: data.password: value is not valid base64"),
            "{text}"
        );
        assert!(
            text.contains("a.yaml:1: Secret/db: stringData.pin: value must be a string"),
            "{text}"
        );
        assert!(
            text.contains("a.yaml:1: Secret/db: stringData.flag: value must be a string"),
            "{text}"
        );
        assert_eq!(e.iter().filter(|l| l.file != "a.yaml").count(), 4, "{text}");
    }

    #[test]
    fn checks_configmap_data() {
        let e = err(&[file(
            "cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n\
             data:\n  enabled: yes\n  bad/key: x\n  ok.key_1-A: x\nbinaryData:\n  blob: \"@@@@\"\n",
        )]);
        let lines: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "cm.yaml:1: ConfigMap/a: data[\"bad/key\"]: a key must consist of alphanumeric characters, \
                 '-', '_' or '.' (at most 253)",
                "cm.yaml:1: ConfigMap/a: data.enabled: value must be a string (quote numbers and booleans)",
                "cm.yaml:1: ConfigMap/a: binaryData.blob: value is not valid base64",
            ]
        );
        assert!(is_base64("aGVs\nbG8="));
        assert!(!is_base64("aGVsbG8=aGk="));
        assert!(is_base64(""));
        assert!(!is_base64("aGk"));
        assert!(!is_base64("a==="));
        assert!(!is_base64("a=Gk"));
    }

    #[test]
    fn manifest_subject_names_the_object() {
        let m = ok(&[file(
            "a.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n",
        )]);
        assert_eq!(m[0].subject(), "Deployment/shop/web");
        assert_eq!(m[0].id.api_version(), "apps/v1");
    }
}
