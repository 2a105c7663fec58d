//! Which renderer builds a sync's files, and the cache in front of them. A render is a pure
//! function of (revision, path, render options, binary versions, the cluster's
//! capabilities), so a resync of a revision already built runs no binary: the output kept
//! for the sync is reused while that key holds. One entry per sync bounds the memory to
//! what the syncs render anyway.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::exec::{self, Bounds};
use super::helm::{self, Capabilities, Chart};
use super::kustomize;
use crate::source::File;

/// A renderer binary and the version it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub path: PathBuf,
    pub version: String,
}

impl Tool {
    /// Asks the binary at `path` for its version, through the same sandbox as a render.
    pub async fn probe(path: &Path, renderer: Renderer) -> Result<Tool, exec::Error> {
        let args: Vec<String> = match renderer {
            Renderer::Kustomize => vec!["version".into()],
            Renderer::Helm => vec!["version".into(), "--template".into(), "{{.Version}}".into()],
        };
        let bounds = Bounds {
            timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let out = exec::run(path, &args, Path::new("/"), &bounds).await?;
        Ok(Tool {
            path: path.to_owned(),
            version: String::from_utf8_lossy(&out).trim().to_owned(),
        })
    }
}

/// The renderers there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Renderer {
    Kustomize,
    Helm,
}

impl Renderer {
    pub fn as_str(self) -> &'static str {
        match self {
            Renderer::Kustomize => "kustomize",
            Renderer::Helm => "helm",
        }
    }
}

/// What a sync's files are built with.
#[derive(Debug, Clone, Copy)]
pub enum Recipe<'a> {
    /// The kustomization in this directory.
    Kustomize(&'a str),
    Helm(&'a Chart),
}

impl Recipe<'_> {
    /// The recipe for a sync: its chart, else the kustomization at its path; `None` for a
    /// plain directory.
    pub fn of<'a>(files: &[File], path: &'a str, chart: Option<&'a Chart>) -> Option<Recipe<'a>> {
        match chart {
            Some(c) => Some(Recipe::Helm(c)),
            None => kustomize::kustomization(files, path).map(|_| Recipe::Kustomize(path)),
        }
    }

    pub fn renderer(&self) -> Renderer {
        match self {
            Recipe::Kustomize(_) => Renderer::Kustomize,
            Recipe::Helm(_) => Renderer::Helm,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: no {name} binary: put it on PATH or set render.{name}", name = .renderer.as_str())]
    Missing { file: String, renderer: Renderer },
    #[error(transparent)]
    Kustomize(#[from] kustomize::Error),
    #[error(transparent)]
    Helm(#[from] helm::Error),
}

impl Error {
    /// The repository file the error is about, and its line.
    pub fn location(&self) -> (String, usize) {
        match self {
            Error::Missing { file, .. } => (file.clone(), 1),
            Error::Kustomize(e) => (e.file(), 1),
            Error::Helm(e) => e.location(),
        }
    }
}

/// How one build went, for the sync's results and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Built {
    pub renderer: Renderer,
    /// Served from the cache: no binary ran.
    pub cached: bool,
    /// Time the binary took (zero when cached).
    pub took: Duration,
}

/// The binaries, their bounds, and the cache of the last build per sync.
#[derive(Debug, Default)]
pub struct Builder {
    pub kustomize: Option<Tool>,
    pub helm: Option<Tool>,
    pub bounds: Bounds,
    cache: Mutex<HashMap<String, Entry>>,
}

/// A sync's last build: its key and its output.
type Entry = ([u8; 32], Arc<Vec<File>>);

impl Builder {
    pub fn new(kustomize: Option<Tool>, helm: Option<Tool>, bounds: Bounds) -> Self {
        Builder {
            kustomize,
            helm,
            bounds,
            cache: Mutex::default(),
        }
    }

    /// Builds `files` (the whole repository at `revision`) for the sync `owner` with
    /// `recipe`, or returns what the last build with the same key gave.
    pub async fn build(
        &self,
        owner: &str,
        revision: &str,
        recipe: Recipe<'_>,
        files: &[File],
        caps: &Capabilities,
    ) -> Result<(Arc<Vec<File>>, Built), Error> {
        let renderer = recipe.renderer();
        let key = self.key(revision, recipe, caps);
        let mut built = Built {
            renderer,
            cached: true,
            took: Duration::ZERO,
        };
        if let Some((k, out)) = self.cache.lock().expect("render cache").get(owner)
            && *k == key
        {
            return Ok((out.clone(), built));
        }
        let started = Instant::now();
        let out = Arc::new(self.run(recipe, files, caps).await?);
        built.cached = false;
        built.took = started.elapsed();
        self.cache
            .lock()
            .expect("render cache")
            .insert(owner.to_owned(), (key, out.clone()));
        Ok((out, built))
    }

    /// Forgets a sync's cached build (it left the configuration).
    pub fn forget(&self, owner: &str) {
        self.cache.lock().expect("render cache").remove(owner);
    }

    async fn run(
        &self,
        recipe: Recipe<'_>,
        files: &[File],
        caps: &Capabilities,
    ) -> Result<Vec<File>, Error> {
        let kustomize = self.kustomize.as_ref().map(|t| t.path.as_path());
        match recipe {
            Recipe::Kustomize(dir) => {
                let Some(bin) = kustomize else {
                    let file = kustomize::kustomization(files, dir).map(|k| k.path.clone());
                    return Err(Error::Missing {
                        file: file.unwrap_or_default(),
                        renderer: Renderer::Kustomize,
                    });
                };
                Ok(vec![kustomize::build(bin, files, dir, &self.bounds).await?])
            }
            Recipe::Helm(chart) => {
                let Some(helm) = &self.helm else {
                    let file = format!("{}/Chart.yaml", chart.chart.trim_matches('/'));
                    return Err(Error::Missing {
                        file,
                        renderer: Renderer::Helm,
                    });
                };
                let out =
                    helm::template(&helm.path, kustomize, files, chart, caps, &self.bounds).await?;
                Ok(out)
            }
        }
    }

    /// Everything the output depends on, hashed: the revision names the files' content.
    fn key(&self, revision: &str, recipe: Recipe<'_>, caps: &Capabilities) -> [u8; 32] {
        let version = |t: &Option<Tool>| t.as_ref().map(|t| t.version.clone()).unwrap_or_default();
        let input = match recipe {
            Recipe::Kustomize(dir) => serde_json::json!({"kustomize": dir}),
            // Capabilities only reach charts.
            Recipe::Helm(chart) => serde_json::json!({"helm": chart, "caps": caps}),
        };
        let key = serde_json::json!({
            "revision": revision,
            "input": input,
            "kustomize": version(&self.kustomize),
            "helm": version(&self.helm),
            "bounds": [self.bounds.timeout.as_millis() as u64, self.bounds.max_output, self.bounds.max_memory],
        });
        Sha256::digest(key.to_string().as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::testing::{file, pinned};

    async fn builder() -> Builder {
        let k = Tool::probe(&pinned("kustomize"), Renderer::Kustomize)
            .await
            .unwrap();
        let h = Tool::probe(&pinned("helm"), Renderer::Helm).await.unwrap();
        Builder::new(Some(k), Some(h), Bounds::default())
    }

    #[tokio::test]
    async fn versions_are_what_the_pinned_binaries_report() {
        let b = builder().await;
        let versions = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/renderers/versions"),
        )
        .unwrap();
        let pinned = |name: &str| {
            versions
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap()
                .to_owned()
        };
        assert_eq!(b.kustomize.unwrap().version, pinned("kustomize"));
        assert_eq!(b.helm.unwrap().version, pinned("helm"));
    }

    #[tokio::test]
    async fn an_unchanged_revision_is_served_from_the_cache_and_a_change_of_key_builds_again() {
        let b = builder().await;
        let files = vec![
            file("app/kustomization.yaml", "resources: [cm.yaml]\n"),
            file(
                "app/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
            ),
        ];
        let recipe = Recipe::of(&files, "app", None).unwrap();
        let caps = Capabilities::default();
        let (first, built) = b.build("s", "rev1", recipe, &files, &caps).await.unwrap();
        assert!(!built.cached);
        assert_eq!(built.renderer, Renderer::Kustomize);
        let (again, built) = b.build("s", "rev1", recipe, &files, &caps).await.unwrap();
        assert!(built.cached, "the same key runs no binary");
        assert!(Arc::ptr_eq(&first, &again));
        let (_, built) = b.build("s", "rev2", recipe, &files, &caps).await.unwrap();
        assert!(!built.cached, "a new revision builds");
        let (_, built) = b
            .build("other", "rev2", recipe, &files, &caps)
            .await
            .unwrap();
        assert!(!built.cached, "per sync");
        b.forget("s");
        let (_, built) = b.build("s", "rev2", recipe, &files, &caps).await.unwrap();
        assert!(!built.cached, "forgotten");
    }

    #[test]
    fn the_key_covers_options_versions_and_capabilities() {
        let chart = Chart {
            chart: "c".into(),
            values_files: vec![],
            values: serde_json::Value::Null,
            release_name: "r".into(),
            namespace: "n".into(),
            post_render: None,
        };
        let b = Builder::default();
        let caps = Capabilities::default();
        let base = b.key("rev", Recipe::Helm(&chart), &caps);
        let mut other = chart.clone();
        other.values = serde_json::json!({"a": 1});
        assert_ne!(base, b.key("rev", Recipe::Helm(&other), &caps));
        let newer = Capabilities {
            api_versions: vec!["example.com/v1".into()],
            ..Default::default()
        };
        assert_ne!(base, b.key("rev", Recipe::Helm(&chart), &newer));
        let versioned = Builder {
            helm: Some(Tool {
                path: "helm".into(),
                version: "v3.22.0".into(),
            }),
            ..Default::default()
        };
        assert_ne!(base, versioned.key("rev", Recipe::Helm(&chart), &caps));
        // A kustomization does not see the capabilities.
        let k = b.key("rev", Recipe::Kustomize("app"), &caps);
        assert_eq!(k, b.key("rev", Recipe::Kustomize("app"), &newer));
    }
}
