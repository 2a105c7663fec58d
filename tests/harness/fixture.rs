//! A sync under test: a Git repository, a namespace, a counting client and the engine, so
//! end-to-end tests read as what a user does (push, sync, look at the cluster).
#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::Path;

use crate::git::{Repo, Upstream};
use crate::harness::{self, TestNamespace, control_plane};
use gitops_agent::cluster::{RequestCounter, RequestCounts, counted_client};
use gitops_agent::config;
use gitops_agent::controller;
use gitops_agent::sync::{self, Engine, Outcome};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, ResourceExt};

pub struct Fixture {
    pub _upstream: Upstream,
    pub repo: Repo,
    pub _state: tempfile::TempDir,
    pub ns: TestNamespace,
    pub client: Client,
    pub counter: RequestCounter,
    pub engine: Engine,
    pub cfg: config::Config,
}

pub use crate::harness::cm;

impl Fixture {
    /// A repo with `files` on main, and a config with one sync of its `deploy/` path into a
    /// fresh namespace. `sync_extra` is added to the sync's YAML (indented four spaces).
    pub async fn new(prefix: &str, files: &[(&str, &str)], sync_extra: &str) -> Fixture {
        harness::init_logging();
        let cp = control_plane();
        let admin = cp.client().await;
        let ns = TestNamespace::create(&admin, prefix).await;
        let upstream = Upstream::new();
        let repo = upstream.create("apps");
        repo.push("main", files, &[]);
        let url = repo.file_url();
        Self::with_source(upstream, repo, ns, &format!("url: {url}"), sync_extra).await
    }

    pub async fn with_source(
        upstream: Upstream,
        repo: Repo,
        ns: TestNamespace,
        source_yaml: &str,
        sync_extra: &str,
    ) -> Fixture {
        let state = tempfile::tempdir().unwrap();
        let text = format!(
            "stateDir: {state}\nnamespace: {ns}\nsources:\n  - name: apps\n    {source_yaml}\n    ref: {{branch: main}}\n\
             syncs:\n  - name: apps\n    source: apps\n    path: deploy\n    namespace: {ns}\n    health: {{wait: false}}\n{extra}",
            state = state.path().display(),
            ns = ns.name,
            extra = sync_extra
                .lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>(),
        );
        let cfg =
            config::parse(Path::new("e2e.yaml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let counter = RequestCounter::default();
        let client = counted_client(control_plane().config().await, &counter).unwrap();
        let engine = Engine::new(client.clone(), &ns.name).await.unwrap();
        Fixture {
            _upstream: upstream,
            repo,
            _state: state,
            ns,
            client,
            counter,
            engine,
            cfg,
        }
    }

    pub async fn sync(&mut self) -> (Outcome, RequestCounts) {
        self.sync_with(&sync::Options::default()).await
    }

    pub async fn sync_with(&mut self, opts: &sync::Options) -> (Outcome, RequestCounts) {
        let before = self.counter.snapshot();
        let s = self.cfg.syncs[0].clone();
        let outcome =
            controller::sync_once(&self.engine, Some(&self.client), &self.cfg, &s, opts).await;
        (outcome, self.counter.snapshot() - before)
    }

    pub fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// name → resourceVersion of every ConfigMap we manage, to see what was written.
    pub async fn versions(&self) -> BTreeMap<String, String> {
        let list = self.configmaps().list(&Default::default()).await.unwrap();
        list.items
            .into_iter()
            .filter(|c| c.labels().contains_key("gitops-agent.io/sync"))
            .map(|c| (c.name_any(), c.resource_version().unwrap()))
            .collect()
    }
}

/// Asserts that a sync changed nothing, printing its change set if it did.
pub fn assert_all_unchanged(o: &Outcome) {
    assert!(
        o.changes
            .entries
            .iter()
            .all(|c| c.action == gitops_agent::core::change::Action::Unchanged),
        "{}",
        o.changes
    );
}
