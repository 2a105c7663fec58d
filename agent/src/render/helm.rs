//! Helm charts in the repository, rendered with the pinned `helm` binary's `helm template`
//! (never `install`: no release, no cluster access, so `lookup` finds nothing), with the
//! live cluster's version and API versions as its capabilities. Charts and their
//! dependencies come from the repository (`charts/` vendored): nothing is pulled, no
//! plugin or post-renderer binary runs. Values files are parsed here first, so one that is
//! not YAML is reported with its line and without its content, and every value the sync
//! supplies is masked out of Helm's messages (a chart's `fail` prints what it is given).
//! The output may go through a kustomization (`postRender`) before it is rendered as YAML.

use std::path::Path;

use serde_json::Value;

use super::exec::{self, Bounds};
use super::kustomize;
use super::parse::parse_yaml;
use crate::source::File;

/// What a sync asks of Helm. Paths are from the repository root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Chart {
    /// The chart's directory (holding `Chart.yaml`).
    pub chart: String,
    /// Values files, in order (later ones win), then `values`.
    pub values_files: Vec<String>,
    /// Values given inline, as `--set` would, over the files; a mapping or null.
    pub values: Value,
    pub release_name: String,
    pub namespace: String,
    /// A directory holding a kustomization the chart's output goes through: it is added to
    /// that kustomization's resources.
    pub post_render: Option<String>,
}

/// What the cluster offers, as Helm's `.Capabilities` sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Capabilities {
    /// `v1.34.4`.
    pub kube_version: String,
    /// `apps/v1` and `apps/v1/Deployment`, for every kind served.
    pub api_versions: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {reason}")]
    Path { path: String, reason: &'static str },
    /// A values file (or Chart.yaml, or a post-render kustomization) that does not parse
    /// as a mapping: where, and the parser's message, never the text.
    #[error("{file}:{line}: {what} must be a YAML mapping: {message}")]
    Mapping {
        file: String,
        line: usize,
        what: &'static str,
        message: String,
    },
    #[error("{chart}: writing the chart for helm: {source}")]
    Write {
        chart: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{chart}: helm template: {source}")]
    Template {
        chart: String,
        #[source]
        source: exec::Error,
    },
    /// Writing the tree, or the post-render kustomization.
    #[error(transparent)]
    Kustomize(#[from] kustomize::Error),
}

impl Error {
    /// The repository file the error is about, and its line.
    pub fn location(&self) -> (String, usize) {
        match self {
            Error::Path { path, .. } => (path.clone(), 1),
            Error::Mapping { file, line, .. } => (file.clone(), *line),
            Error::Write { chart, .. } | Error::Template { chart, .. } => {
                (format!("{chart}/Chart.yaml"), 1)
            }
            Error::Kustomize(e) => (e.file(), 1),
        }
    }
}

/// The name the output of a kustomization wrapping the chart is given in `postRender`.
const OUTPUT_NAME: &str = "gitops-agent-helm-output.yaml";

/// Renders `chart` from `files` (the whole repository) with `helm`; the output as one file
/// per chart template, named after it (`charts/web/templates/deploy.yaml (helm
/// template).yaml`), or, with `postRender`, the kustomization's output.
pub async fn template(
    helm: &Path,
    kustomize_bin: Option<&Path>,
    files: &[File],
    chart: &Chart,
    caps: &Capabilities,
    bounds: &Bounds,
) -> Result<Vec<File>, Error> {
    let dir = chart.chart.trim_matches('/');
    let shown = if dir.is_empty() { "." } else { dir }.to_owned();
    let chart_yaml = if dir.is_empty() {
        "Chart.yaml".to_owned()
    } else {
        format!("{dir}/Chart.yaml")
    };
    let Some(meta) = files.iter().find(|f| f.path == chart_yaml) else {
        return Err(Error::Path {
            path: chart_yaml,
            reason: "not in the repository: helm.chart must name a chart's directory",
        });
    };
    let name = chart_name(meta)?;
    // The chart's own defaults too: Helm's YAML errors quote the text.
    let defaults = chart_yaml.replace("Chart.yaml", "values.yaml");
    if let Some(f) = files.iter().find(|f| f.path == defaults) {
        mapping(f, VALUES)?;
    }
    let mut secrets = Vec::new();
    collect_strings(&chart.values, &mut secrets);
    for path in &chart.values_files {
        let f = files.iter().find(|f| &f.path == path).ok_or(Error::Path {
            path: path.clone(),
            reason: "values file not in the repository",
        })?;
        collect_strings(&mapping(f, VALUES)?, &mut secrets);
    }
    let tree = kustomize::write_tree(files, &shown)?;
    let inline = tree.path().join("values.json");
    std::fs::write(&inline, chart.values.to_string()).map_err(|source| Error::Write {
        chart: shown.clone(),
        source,
    })?;
    let args = arguments(chart, caps, &tree.repo(), &inline);
    let out = exec::run(helm, &args, &tree.repo(), bounds)
        .await
        .map_err(|e| Error::Template {
            chart: shown.clone(),
            source: mask(tree.scrub(e), &secrets, &name, &shown),
        })?;
    match &chart.post_render {
        None => Ok(split(&out, &name, &shown)),
        Some(dir) => {
            let bin = kustomize_bin.ok_or(Error::Path {
                path: dir.clone(),
                reason: "helm.postRender needs the kustomize binary: put it on PATH or set render.kustomize",
            })?;
            post_render(bin, files, dir, out, bounds)
                .await
                .map(|f| vec![f])
        }
    }
}

/// `helm template`'s arguments: the release, the chart, the values, the capabilities.
fn arguments(chart: &Chart, caps: &Capabilities, repo: &Path, inline: &Path) -> Vec<String> {
    let mut args = vec![
        "template".to_owned(),
        chart.release_name.clone(),
        repo.join(chart.chart.trim_matches('/'))
            .display()
            .to_string(),
        "--namespace".to_owned(),
        chart.namespace.clone(),
        // CRDs in `crds/` are part of what the chart declares (Argo CD renders them too).
        "--include-crds".to_owned(),
        // Test pods run on `helm test`, never on install.
        "--skip-tests".to_owned(),
    ];
    for f in &chart.values_files {
        args.extend(["--values".to_owned(), repo.join(f).display().to_string()]);
    }
    args.extend(["--values".to_owned(), inline.display().to_string()]);
    if !caps.kube_version.is_empty() {
        args.extend(["--kube-version".to_owned(), caps.kube_version.clone()]);
    }
    for v in &caps.api_versions {
        args.extend(["--api-versions".to_owned(), v.clone()]);
    }
    args
}

/// The chart's `name` from its Chart.yaml: Helm's `# Source:` lines start with it.
fn chart_name(meta: &File) -> Result<String, Error> {
    let doc = mapping(meta, "Chart.yaml")?;
    doc.get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(Error::Path {
            path: meta.path.clone(),
            reason: "a chart's Chart.yaml must give its name",
        })
}

/// What a values file is called in errors.
const VALUES: &str = "a values file";

/// A file that must hold one YAML mapping (or nothing), parsed; `what` names it in errors.
fn mapping(f: &File, what: &'static str) -> Result<Value, Error> {
    let limits = super::Limits::default();
    let not_yaml = |line: usize, message: String| Error::Mapping {
        file: f.path.clone(),
        line,
        what,
        message,
    };
    let text = std::str::from_utf8(&f.content).map_err(|_| not_yaml(1, "not UTF-8".into()))?;
    let mut docs =
        parse_yaml(text, &limits).map_err(|(line, _, e)| not_yaml(line, e.to_string()))?;
    match docs.len() {
        0 => Ok(Value::Object(Default::default())),
        1 if docs[0].value.is_object() => Ok(docs.remove(0).value),
        1 => Err(not_yaml(docs[0].line, "it is not a mapping".into())),
        _ => Err(not_yaml(
            docs[1].line,
            "it has more than one document".into(),
        )),
    }
}

/// Every string and number of `v` worth masking (short ones would mask ordinary words).
fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.chars().count() >= 4 => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        Value::Object(m) => m.values().for_each(|i| collect_strings(i, out)),
        _ => {}
    }
}

/// `e` with every given value replaced by `***`, longest first, and Helm's template names
/// (`web/templates/x.yaml`, from the chart's name) as the repository's paths
/// (`charts/web/templates/x.yaml`, from its directory `dir`).
fn mask(e: exec::Error, secrets: &[String], name: &str, dir: &str) -> exec::Error {
    let exec::Error::Failed {
        program,
        status,
        mut stderr,
    } = e
    else {
        return e;
    };
    let mut secrets: Vec<&String> = secrets.iter().collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets {
        stderr = stderr.replace(s.as_str(), "***");
    }
    let prefix = if dir == "." {
        String::new()
    } else {
        format!("{dir}/")
    };
    for sub in ["templates/", "charts/", "crds/"] {
        stderr = stderr.replace(&format!("{name}/{sub}"), &format!("{prefix}{sub}"));
    }
    exec::Error::Failed {
        program,
        status,
        stderr,
    }
}

/// Helm's output cut at its `# Source: <chart>/<template>` lines, one file per template
/// (its documents in Helm's order), named by the template's path in the repository.
fn split(out: &[u8], name: &str, dir: &str) -> Vec<File> {
    let text = String::from_utf8_lossy(out);
    let mut files: Vec<File> = Vec::new();
    for doc in text.split("\n---").map(|d| d.trim_start_matches("---")) {
        if doc.trim().is_empty() {
            continue;
        }
        let source = doc
            .lines()
            .find_map(|l| l.strip_prefix("# Source: "))
            .map(|s| s.trim());
        let template = match source.and_then(|s| s.strip_prefix(name)) {
            Some(rest) if dir == "." => rest.trim_start_matches('/').to_owned(),
            Some(rest) => format!("{dir}{rest}"),
            None => dir.to_owned(),
        };
        let path = format!("{template} (helm template).yaml");
        let doc = format!("---{doc}\n");
        match files.iter_mut().find(|f| f.path == path) {
            Some(f) => f.content.extend_from_slice(doc.as_bytes()),
            None => files.push(File {
                path,
                content: doc.into_bytes(),
            }),
        }
    }
    files
}

/// The chart's output as a resource of the kustomization in `dir`, built.
async fn post_render(
    bin: &Path,
    files: &[File],
    dir: &str,
    out: Vec<u8>,
    bounds: &Bounds,
) -> Result<File, Error> {
    let dir = dir.trim_matches('/');
    let Some(k) = kustomize::kustomization(files, dir) else {
        return Err(Error::Path {
            path: dir.to_owned(),
            reason: "helm.postRender must name a directory holding a kustomization",
        });
    };
    let mut doc = mapping(k, "a kustomization")?;
    let resources = doc
        .as_object_mut()
        .expect("a mapping")
        .entry("resources")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(list) = resources.as_array_mut() else {
        return Err(Error::Path {
            path: k.path.clone(),
            reason: "resources must be a list",
        });
    };
    list.push(Value::String(OUTPUT_NAME.into()));
    let output = if dir.is_empty() {
        OUTPUT_NAME.to_owned()
    } else {
        format!("{dir}/{OUTPUT_NAME}")
    };
    let mut with: Vec<File> = files
        .iter()
        .filter(|f| f.path != k.path && f.path != output)
        .cloned()
        .collect();
    with.push(File {
        path: k.path.clone(),
        content: doc.to_string().into_bytes(),
    });
    with.push(File {
        path: output,
        content: out,
    });
    Ok(kustomize::build(bin, &with, dir, bounds).await?)
}

#[cfg(test)]
mod tests;
