//! What the last good render of a sync made of each file, so that the next revision
//! parses and validates only the files whose content changed: a commit that touches one
//! file of a 20,000-object repository costs that file, not the repository.
//!
//! A file's objects depend on its content and on the revision's context: the render
//! options, the cluster's kinds (discovery) and the CRDs the revision defines. The memo
//! holds on to the discovery it was made with (so a new one is never mistaken for it) and
//! renders the whole revision again whenever the context changes, or a changed file
//! defines CRDs or did before.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::parse::format_of;
use super::validate::find_duplicates;
use super::{Errors, File, Manifest, Options, Scopes, collect, crd, validate_all};

/// One sync's memo; empty until a render succeeds.
#[derive(Default)]
pub struct Memo {
    context: Option<Context>,
    files: HashMap<String, Rendered>,
    /// The revision's CRD kinds, as the last render found them.
    crds: HashMap<(String, String), crd::CrdKind>,
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memo")
            .field("files", &self.files.len())
            .finish()
    }
}

struct Context {
    options: Options,
    scopes: Arc<dyn Scopes + Send + Sync>,
}

/// One file as last rendered.
struct Rendered {
    content: Vec<u8>,
    manifests: Vec<Manifest>,
    defines_crds: bool,
}

/// How a render used the memo, for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Every file parsed and validated.
    Full,
    /// Only this many (changed) files were.
    Files(usize),
}

impl Memo {
    fn same_context(&self, options: &Options, scopes: &Arc<dyn Scopes + Send + Sync>) -> bool {
        self.context
            .as_ref()
            .is_some_and(|c| c.options == *options && Arc::ptr_eq(&c.scopes, scopes))
    }
}

/// [`super::render`], reusing what `memo` holds of the files whose content is unchanged,
/// and keeping this revision in it when it renders cleanly. The result is the same as a
/// full render's: the same manifests in the same order, or the same errors.
pub fn render_with_memo(
    files: &[File],
    options: &Options,
    scopes: &Arc<dyn Scopes + Send + Sync>,
    memo: &mut Memo,
) -> (Result<Vec<Manifest>, Errors>, Reuse) {
    let mut paths: Vec<&File> = files
        .iter()
        .filter(|f| format_of(&f.path).is_some())
        .collect();
    paths.sort_by(|a, b| a.path.cmp(&b.path));
    let changed: Vec<&File> = paths
        .iter()
        .copied()
        .filter(|f| {
            memo.files
                .get(&f.path)
                .is_none_or(|r| r.content != f.content)
        })
        .collect();
    let present: HashSet<&str> = paths.iter().map(|f| f.path.as_str()).collect();
    let gone_defined_crds = memo
        .files
        .iter()
        .any(|(p, r)| r.defines_crds && !present.contains(p.as_str()));
    let touched_crds = gone_defined_crds
        || changed
            .iter()
            .any(|f| memo.files.get(&f.path).is_some_and(|r| r.defines_crds));
    if !memo.same_context(options, scopes) || touched_crds {
        return (full(&paths, options, scopes, memo), Reuse::Full);
    }
    let mut errors = Vec::new();
    let (candidates, crds) = collect(changed.iter().copied(), options, &mut errors);
    if !crds.is_empty() {
        return (full(&paths, options, scopes, memo), Reuse::Full);
    }
    let fresh = validate_all(
        candidates,
        options,
        scopes.as_ref(),
        &memo.crds,
        &mut errors,
    );
    if !errors.is_empty() {
        // A bad revision is rare: render it whole, so its errors are exactly a full
        // render's (a duplicate across files, the object limit, every file's problems).
        return (full(&paths, options, scopes, memo), Reuse::Full);
    }
    let mut fresh_by_file: HashMap<String, Vec<Manifest>> = HashMap::new();
    for m in fresh {
        fresh_by_file.entry(m.file.clone()).or_default().push(m);
    }
    let changed_paths: HashSet<&str> = changed.iter().map(|f| f.path.as_str()).collect();
    let mut manifests = Vec::new();
    for f in &paths {
        match changed_paths.contains(f.path.as_str()) {
            // A changed file without objects (now empty, say) has no entry.
            true => manifests.extend(fresh_by_file.get(&f.path).into_iter().flatten().cloned()),
            false => manifests.extend(memo.files[&f.path].manifests.iter().cloned()),
        }
    }
    find_duplicates(&manifests, &mut errors);
    if manifests.len() > options.limits.max_objects || !errors.is_empty() {
        return (full(&paths, options, scopes, memo), Reuse::Full);
    }
    memo.files.retain(|p, _| present.contains(p.as_str()));
    for f in &changed {
        let rendered = Rendered {
            content: f.content.clone(),
            manifests: fresh_by_file.remove(&f.path).unwrap_or_default(),
            defines_crds: false,
        };
        memo.files.insert(f.path.clone(), rendered);
    }
    (Ok(manifests), Reuse::Files(changed.len()))
}

/// A full render; on success the memo holds this revision, file by file.
fn full(
    paths: &[&File],
    options: &Options,
    scopes: &Arc<dyn Scopes + Send + Sync>,
    memo: &mut Memo,
) -> Result<Vec<Manifest>, Errors> {
    let mut errors = Vec::new();
    let (candidates, crds) = collect(paths.iter().copied(), options, &mut errors);
    let manifests = super::finish(candidates, options, scopes.as_ref(), &crds, errors)?;
    // Copied only now, for a revision that rendered: the memo owns what it compares with.
    let mut by_file: HashMap<String, Rendered> = paths
        .iter()
        .map(|f| {
            let r = Rendered {
                content: f.content.clone(),
                manifests: Vec::new(),
                defines_crds: false,
            };
            (f.path.clone(), r)
        })
        .collect();
    for m in &manifests {
        if let Some(r) = by_file.get_mut(&m.file) {
            r.defines_crds |= m.id.group == crd::CRD_GROUP && m.id.kind == crd::CRD_KIND;
            r.manifests.push(m.clone());
        }
    }
    *memo = Memo {
        context: Some(Context {
            options: options.clone(),
            scopes: scopes.clone(),
        }),
        files: by_file,
        crds,
    };
    Ok(manifests)
}

#[cfg(test)]
mod tests {
    use super::super::testing::file;
    use super::super::{BuiltinScopes, render};
    use super::*;

    fn cm(name: &str, value: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: a}}\ndata: {{value: \"{value}\"}}\n"
        )
    }

    fn scopes() -> Arc<dyn Scopes + Send + Sync> {
        Arc::new(BuiltinScopes)
    }

    /// What a render gave, comparable.
    fn shape(
        r: &Result<Vec<Manifest>, Errors>,
    ) -> Result<Vec<(String, String, usize, String)>, String> {
        match r {
            Ok(ms) => Ok(ms
                .iter()
                .map(|m| {
                    (
                        m.id.to_string(),
                        m.file.clone(),
                        m.line,
                        m.object.get().to_owned(),
                    )
                })
                .collect()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Renders with the memo and checks the result is a full render's.
    fn step(files: &[File], scopes: &Arc<dyn Scopes + Send + Sync>, memo: &mut Memo) -> Reuse {
        let options = Options::default();
        let (got, reuse) = render_with_memo(files, &options, scopes, memo);
        assert_eq!(
            shape(&got),
            shape(&render(files, &options, scopes.as_ref()))
        );
        reuse
    }

    fn revision(values: [&str; 3]) -> Vec<File> {
        vec![
            file("deploy/a.yaml", &(cm("a1", values[0]) + &cm("a2", "x"))),
            file("deploy/b.yaml", &cm("b", values[1])),
            file("deploy/c.yaml", &cm("c", values[2])),
            file("deploy/README.md", "not a manifest"),
        ]
    }

    #[test]
    fn a_commit_renders_only_the_files_it_changed() {
        let (s, mut memo) = (scopes(), Memo::default());
        assert_eq!(step(&revision(["1", "1", "1"]), &s, &mut memo), Reuse::Full);
        assert_eq!(
            step(&revision(["1", "1", "1"]), &s, &mut memo),
            Reuse::Files(0)
        );
        assert_eq!(
            step(&revision(["1", "2", "1"]), &s, &mut memo),
            Reuse::Files(1)
        );
        assert_eq!(
            step(&revision(["3", "2", "4"]), &s, &mut memo),
            Reuse::Files(2)
        );
        // A removed file's objects are gone; an added one is rendered.
        let mut files = revision(["3", "2", "4"]);
        files.remove(1);
        assert_eq!(step(&files, &s, &mut memo), Reuse::Files(0));
        files.push(file(
            "deploy/d.json",
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"d"}}"#,
        ));
        assert_eq!(step(&files, &s, &mut memo), Reuse::Files(1));
    }

    #[test]
    fn a_bad_revision_reports_what_a_full_render_does_and_the_memo_survives_it() {
        let (s, mut memo) = (scopes(), Memo::default());
        step(&revision(["1", "1", "1"]), &s, &mut memo);
        let mut broken = revision(["1", "1", "1"]);
        broken[1] = file("deploy/b.yaml", "kind: [unclosed");
        assert_eq!(step(&broken, &s, &mut memo), Reuse::Full);
        // A changed file that duplicates an unchanged file's object.
        let mut dup = revision(["1", "1", "1"]);
        dup[2] = file("deploy/c.yaml", &cm("a1", "again"));
        assert_eq!(step(&dup, &s, &mut memo), Reuse::Full);
        // The last good revision is still what the memo holds.
        assert_eq!(
            step(&revision(["1", "1", "5"]), &s, &mut memo),
            Reuse::Files(1)
        );
    }

    #[test]
    fn crds_options_and_discovery_make_it_render_everything() {
        let (s, mut memo) = (scopes(), Memo::default());
        step(&revision(["1", "1", "1"]), &s, &mut memo);
        let crd = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\nspec:\n  group: example.com\n  names: {kind: Widget, plural: widgets}\n  scope: Namespaced\n  versions: [{name: v1, served: true, storage: true}]\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w, namespace: a}\n";
        let mut with_crd = revision(["1", "1", "1"]);
        with_crd.push(file("deploy/crd.yaml", crd));
        assert_eq!(step(&with_crd, &s, &mut memo), Reuse::Full);
        // A file that defined CRDs changes, or goes: whole again.
        with_crd[4] = file("deploy/crd.yaml", &crd.replace("name: w,", "name: w2,"));
        assert_eq!(step(&with_crd, &s, &mut memo), Reuse::Full);
        assert_eq!(step(&revision(["1", "1", "1"]), &s, &mut memo), Reuse::Full);
        assert_eq!(
            step(&revision(["1", "1", "2"]), &s, &mut memo),
            Reuse::Files(1)
        );
        // Another discovery (even an equal one) or other options.
        assert_eq!(
            step(&revision(["1", "1", "2"]), &scopes(), &mut memo),
            Reuse::Full
        );
        let options = Options {
            default_namespace: "b".into(),
            ..Default::default()
        };
        let (_, reuse) = render_with_memo(&revision(["1", "1", "2"]), &options, &s, &mut memo);
        assert_eq!(reuse, Reuse::Full);
    }
}
