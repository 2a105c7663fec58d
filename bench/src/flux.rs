//! Flux, the peer: its `source-controller` and `kustomize-controller` (built from their Go
//! modules by `bench/flux/build`) run as processes against the control plane, with their
//! CRDs from the same module versions. Here: starting them, a `GitRepository` per
//! repository, a `Kustomization` per corpus, the waits on their status, and what they cost
//! (API requests from their own metrics, CPU and memory from `/proc`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::proc::{self, Usage};

/// Where Flux's controllers run and keep their objects (`RUNTIME_NAMESPACE`).
pub const NAMESPACE: &str = "flux-system";
/// kustomize-controller's field manager for what it applies.
pub const FIELD_MANAGER: &str = "kustomize-controller";
/// The annotation `flux reconcile` writes, and the Receiver's handler does: the controller
/// reconciles at once and echoes the value in `status.lastHandledReconcileAt`.
const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";

/// The two controllers, killed on drop.
pub struct Flux {
    client: Client,
    controllers: Vec<Controller>,
    pub versions: String,
    _dir: tempfile::TempDir,
}

struct Controller {
    name: &'static str,
    child: Child,
    metrics_port: u16,
    log: PathBuf,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Flux object kind the benchmark writes.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    GitRepository,
    Kustomization,
}

impl Kind {
    fn resource(self) -> ApiResource {
        let (group, kind, plural) = match self {
            Kind::GitRepository => (
                "source.toolkit.fluxcd.io",
                "GitRepository",
                "gitrepositories",
            ),
            Kind::Kustomization => (
                "kustomize.toolkit.fluxcd.io",
                "Kustomization",
                "kustomizations",
            ),
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
    }
}

/// A Kustomization of one corpus directory.
pub struct Kustomization<'a> {
    pub name: &'a str,
    pub source: &'a str,
    pub path: &'a str,
    pub interval: &'a str,
    /// `wait: true`: Ready only once every applied object is healthy (kstatus).
    pub wait: bool,
}

/// When a Kustomization's first reconcile applied its revision and when it was Ready.
#[derive(Debug, Clone, Copy)]
pub struct Cold {
    pub applied: Duration,
    pub healthy: Duration,
}

impl Flux {
    /// Builds (once per version) and starts both controllers, with their CRDs installed.
    pub async fn start(
        repo_root: &Path,
        kubeconfig: &Path,
        client: &Client,
    ) -> anyhow::Result<Self> {
        let built = build(repo_root)?;
        install_crds(client, &built.join("crds")).await?;
        let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        ns.patch(
            NAMESPACE,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
            ),
        )
        .await
        .context("create flux-system")?;
        let dir = tempfile::Builder::new()
            .prefix("gitops-agent-bench-flux-")
            .tempdir()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let storage_addr = format!("127.0.0.1:{}", proc::free_port()?);
        let source = Controller::spawn(
            "source-controller",
            &built,
            kubeconfig,
            dir.path(),
            &[
                "--storage-path",
                &storage.display().to_string(),
                "--storage-addr",
                &storage_addr,
                "--storage-adv-addr",
                &storage_addr,
            ],
        )?;
        let kustomize =
            Controller::spawn("kustomize-controller", &built, kubeconfig, dir.path(), &[])?;
        let versions = std::fs::read_to_string(repo_root.join("bench/flux/versions"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .collect::<Vec<_>>()
            .join(", ");
        let flux = Flux {
            client: client.clone(),
            controllers: vec![source, kustomize],
            versions,
            _dir: dir,
        };
        flux.wait_serving().await?;
        Ok(flux)
    }

    /// Until both controllers answer on their metrics port (the manager has started).
    async fn wait_serving(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let started = Instant::now();
        for c in &self.controllers {
            loop {
                let url = format!("http://127.0.0.1:{}/metrics", c.metrics_port);
                if http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    break;
                }
                c.check_alive()?;
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(120),
                    "{} not serving metrics in 120 s; log {}",
                    c.name,
                    c.log.display()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), NAMESPACE, &kind.resource())
    }

    async fn apply(&self, kind: Kind, object: Value) -> anyhow::Result<()> {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut object = object;
        object["metadata"]["namespace"] = json!(NAMESPACE);
        self.api(kind)
            .patch(
                &name,
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&object),
            )
            .await
            .with_context(|| format!("{kind:?}/{NAMESPACE}/{name}"))?;
        Ok(())
    }

    /// Creates a GitRepository and waits until its artifact is stored: the commit is known.
    /// Returns the artifact's revision (`main@sha1:...`).
    pub async fn git_repository(
        &self,
        name: &str,
        url: &str,
        interval: &str,
    ) -> anyhow::Result<String> {
        self.apply(
            Kind::GitRepository,
            json!({
                "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
                "metadata": {"name": name},
                "spec": {"url": url, "interval": interval, "ref": {"branch": "main"}, "timeout": "5m"}
            }),
        )
        .await?;
        let found = self
            .wait_for(Kind::GitRepository, name, crate::SYNC_LIMIT, |o| {
                ready(o).then(|| {
                    o.data["status"]["artifact"]["revision"]
                        .as_str()
                        .map(str::to_owned)
                })?
            })
            .await?;
        Ok(found.1)
    }

    /// Creates (or changes) a Kustomization.
    pub async fn kustomization(&self, k: &Kustomization<'_>) -> anyhow::Result<()> {
        self.apply(
            Kind::Kustomization,
            json!({
                "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                "metadata": {"name": k.name},
                "spec": {
                    "interval": k.interval, "path": k.path, "prune": true, "wait": k.wait,
                    "timeout": "20m",
                    "sourceRef": {"kind": "GitRepository", "name": k.source},
                }
            }),
        )
        .await
    }

    /// Times a new Kustomization's first reconcile of `revision` from now: applied is when
    /// it starts its health checks (the status says so before it waits), healthy when Ready.
    pub async fn wait_cold(
        &self,
        name: &str,
        revision: &str,
        started: Instant,
    ) -> anyhow::Result<Cold> {
        let mut applied = None;
        let checking = format!("Running health checks for revision {revision}");
        let (_, healthy) = self
            .wait_for(Kind::Kustomization, name, crate::SYNC_LIMIT, |o| {
                if applied.is_none()
                    && condition(o, "Healthy").is_some_and(|c| {
                        c["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with(&checking))
                    })
                {
                    applied = Some(started.elapsed());
                }
                (ready(o) && o.data["status"]["lastAppliedRevision"] == revision)
                    .then(|| started.elapsed())
            })
            .await?;
        Ok(Cold {
            // Without `wait`, or with nothing to check, applied is Ready.
            applied: applied.unwrap_or(healthy),
            healthy,
        })
    }

    /// Asks for a reconcile now, as `flux reconcile` and the Receiver do; returns the token
    /// the controller echoes when it has handled it.
    pub async fn request_reconcile(&self, kind: Kind, name: &str) -> anyhow::Result<String> {
        let token = format!(
            "{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        );
        self.api(kind)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {REQUESTED_AT: token}}})),
            )
            .await
            .with_context(|| format!("{kind:?}/{NAMESPACE}/{name}: request a reconcile"))?;
        Ok(token)
    }

    /// Waits until the Kustomization has handled the request `token` and is Ready again.
    pub async fn wait_handled(&self, name: &str, token: &str) -> anyhow::Result<()> {
        self.wait_for(Kind::Kustomization, name, crate::SYNC_LIMIT, |o| {
            (o.data["status"]["lastHandledReconcileAt"] == token && ready(o)).then_some(())
        })
        .await?;
        Ok(())
    }

    /// Waits until the Kustomization is Ready with `commit` applied.
    pub async fn wait_applied(&self, name: &str, commit: &str) -> anyhow::Result<()> {
        let revision = format!("main@sha1:{commit}");
        self.wait_for(Kind::Kustomization, name, crate::SYNC_LIMIT, |o| {
            (ready(o) && o.data["status"]["lastAppliedRevision"] == revision.as_str()).then_some(())
        })
        .await?;
        Ok(())
    }

    /// Sets a Kustomization's interval.
    pub async fn set_interval(&self, name: &str, interval: &str) -> anyhow::Result<()> {
        self.api(Kind::Kustomization)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"interval": interval}})),
            )
            .await
            .with_context(|| format!("Kustomization/{NAMESPACE}/{name}: set the interval"))?;
        Ok(())
    }

    /// Deletes a Kustomization without its objects: suspended first, so the finalizer
    /// skips garbage collection (the benchmark deletes their namespaces itself).
    pub async fn forget(&self, name: &str) -> anyhow::Result<()> {
        let api = self.api(Kind::Kustomization);
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .with_context(|| format!("Kustomization/{NAMESPACE}/{name}: suspend"))?;
        api.delete(name, &DeleteParams::default()).await?;
        let started = Instant::now();
        while api.get_opt(name).await?.is_some() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "Kustomization/{name} not deleted in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Watches one object until `done` returns a value; each status change is seen as the
    /// watch event arrives.
    async fn wait_for<T>(
        &self,
        kind: Kind,
        name: &str,
        limit: Duration,
        mut done: impl FnMut(&DynamicObject) -> Option<T>,
    ) -> anyhow::Result<(DynamicObject, T)> {
        // The server ends each watch before the client's 60 s read timeout would; a watch
        // that fails anyway is started again (backoff), as a controller's would be.
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(45);
        let mut events = watcher(self.api(kind), config)
            .default_backoff()
            .applied_objects()
            .boxed();
        let mut last = None;
        let found = tokio::time::timeout(limit, async {
            while let Some(event) = events.next().await {
                let o = match event {
                    Ok(o) => o,
                    Err(e) => {
                        eprintln!("  {kind:?}/{name}: watch restarted: {e}");
                        continue;
                    }
                };
                if let Some(v) = done(&o) {
                    return Some((o, v));
                }
                last = Some(o);
            }
            None
        })
        .await;
        match found {
            Ok(Some(v)) => Ok(v),
            Ok(None) => anyhow::bail!("{kind:?}/{name}: watch ended"),
            Err(_) => {
                for c in &self.controllers {
                    c.check_alive()?;
                }
                let status = last
                    .map(|o| o.data["status"].to_string())
                    .unwrap_or_default();
                anyhow::bail!("{kind:?}/{name}: not done in {limit:?}; last status {status}")
            }
        }
    }

    /// API requests both controllers have made (their `rest_client_requests_total`), by method.
    pub async fn requests(&self, http: &reqwest::Client) -> anyhow::Result<Requests> {
        let mut total = Requests::default();
        for c in &self.controllers {
            let url = format!("http://127.0.0.1:{}/metrics", c.metrics_port);
            let text = http.get(&url).send().await?.text().await?;
            total.add(&Requests::parse(&text));
        }
        Ok(total)
    }

    /// CPU time and memory of both controllers together.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        let mut sum = Usage::default();
        for c in &self.controllers {
            sum.add(&proc::usage(c.child.id())?);
        }
        Ok(sum)
    }
}

/// Requests counted by a controller-runtime client, by HTTP method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    pub get: u64,
    pub patch: u64,
    pub other: u64,
}

impl Requests {
    pub fn total(&self) -> u64 {
        self.get + self.patch + self.other
    }

    fn add(&mut self, o: &Requests) {
        self.get += o.get;
        self.patch += o.patch;
        self.other += o.other;
    }

    pub fn since(&self, before: &Requests) -> Requests {
        Requests {
            get: self.get - before.get,
            patch: self.patch - before.patch,
            other: self.other - before.other,
        }
    }

    /// Sums `rest_client_requests_total{code=..,host=..,method=..} N` lines.
    fn parse(text: &str) -> Requests {
        let mut r = Requests::default();
        for line in text
            .lines()
            .filter(|l| l.starts_with("rest_client_requests_total{"))
        {
            let Some((labels, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(n) = value.parse::<f64>() else {
                continue;
            };
            let n = n as u64;
            if labels.contains("method=\"GET\"") {
                r.get += n;
            } else if labels.contains("method=\"PATCH\"") {
                r.patch += n;
            } else {
                r.other += n;
            }
        }
        r
    }
}

impl Controller {
    fn spawn(
        name: &'static str,
        built: &Path,
        kubeconfig: &Path,
        dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let metrics_port = proc::free_port()?;
        let health_port = proc::free_port()?;
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(built.join(name))
            .args([
                "--enable-leader-election=false",
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--health-addr",
                &format!("127.0.0.1:{health_port}"),
                "--log-level",
                "info",
            ])
            .args(extra)
            // They take no --kubeconfig flag: controller-runtime reads KUBECONFIG.
            .env("KUBECONFIG", kubeconfig)
            .env("RUNTIME_NAMESPACE", NAMESPACE)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        Ok(Controller {
            name,
            child,
            metrics_port,
            log,
        })
    }

    fn check_alive(&self) -> anyhow::Result<()> {
        // `try_wait` needs `&mut`; /proc says as much without reaping.
        let state =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        anyhow::ensure!(
            !state.is_empty() && !state.contains(") Z "),
            "{} exited; log {}",
            self.name,
            self.log.display()
        );
        Ok(())
    }
}

fn condition<'a>(o: &'a DynamicObject, kind: &str) -> Option<&'a Value> {
    o.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Ready=True for the object's current generation.
fn ready(o: &DynamicObject) -> bool {
    let observed = o.data["status"]["observedGeneration"].as_i64() == o.metadata.generation;
    observed && condition(o, "Ready").is_some_and(|c| c["status"] == "True")
}

/// `bench/flux/build`: builds once per version, prints the directory.
fn build(repo_root: &Path) -> anyhow::Result<PathBuf> {
    let script = repo_root.join("bench/flux/build");
    eprintln!(
        "building Flux's controllers (once per version): {}",
        script.display()
    );
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| script.display().to_string())?;
    anyhow::ensure!(out.status.success(), "{}: {}", script.display(), out.status);
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Server-side applies every CRD in `dir` and waits until each is established.
async fn install_crds(client: &Client, dir: &Path) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).with_context(|| path.display().to_string())?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("CustomResourceDefinition/{name}"))?;
        names.push(name);
    }
    let started = Instant::now();
    for name in names {
        loop {
            let crd = api.get(&name).await?;
            let established = crd.status.and_then(|s| s.conditions).is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "CustomResourceDefinition/{name} not established"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_requests_by_method() {
        let text = "# TYPE rest_client_requests_total counter\n\
            rest_client_requests_total{code=\"200\",host=\"127.0.0.1:6443\",method=\"GET\"} 12\n\
            rest_client_requests_total{code=\"404\",host=\"127.0.0.1:6443\",method=\"GET\"} 3\n\
            rest_client_requests_total{code=\"200\",host=\"127.0.0.1:6443\",method=\"PATCH\"} 40\n\
            rest_client_requests_total{code=\"201\",host=\"127.0.0.1:6443\",method=\"POST\"} 2\n\
            rest_client_request_duration_seconds_count{verb=\"GET\"} 99\n";
        assert_eq!(
            Requests::parse(text),
            Requests {
                get: 15,
                patch: 40,
                other: 2
            }
        );
    }
}
