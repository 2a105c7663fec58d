//! Crash safety of the real binary: `gitops-agent sync --once` is killed with SIGKILL at
//! several points of a multi-thousand-object sync (during apply, during prune, during the
//! health wait, right after its first inventory write), the next revision removes objects,
//! and the sync after that must leave exactly Git's objects live with our label: no
//! orphans, nothing of Git's missing.

#[path = "../harness/git.rs"]
mod git;
#[path = "../harness/mod.rs"]
mod harness;

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use git::{Repo, Upstream};
use harness::{TestNamespace, control_plane};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, ObjectMeta};

const OWNER: &str = "gitops-agent.io/sync";
/// How long a kill point may take to come; the machines are shared and slow at times.
const WAIT: Duration = Duration::from_secs(300);

/// One revision: ConfigMaps `c<i>` and Deployments `d<i>` by index, and whether the
/// Deployment that never becomes available is in it.
struct Revision {
    cms: Vec<Range<usize>>,
    deps: Range<usize>,
    stuck: bool,
}

impl Revision {
    fn names(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .cms
            .iter()
            .flat_map(|r| r.clone())
            .map(|i| format!("ConfigMap/c{i}"))
            .collect();
        out.extend(self.deps.clone().map(|i| format!("Deployment/d{i}")));
        if self.stuck {
            out.insert("Deployment/stuck".into());
        }
        out
    }

    /// Its files: ConfigMaps a hundred to a file by index block, the Deployments in one.
    fn files(&self) -> Vec<(String, String)> {
        let mut blocks: std::collections::BTreeMap<usize, String> = Default::default();
        for i in self.cms.iter().flat_map(|r| r.clone()) {
            blocks.entry(i / 100).or_default().push_str(&format!(
                "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c{i}\ndata:\n  value: \"{i}\"\n"
            ));
        }
        let mut files: Vec<(String, String)> = blocks
            .into_iter()
            .map(|(b, text)| (format!("deploy/cm-{b}.yaml"), text))
            .collect();
        let mut deps: String = self
            .deps
            .clone()
            .map(|i| deployment(&format!("d{i}"), ""))
            .collect();
        if self.stuck {
            deps.push_str(&deployment(
                "stuck",
                "      nodeSelector: {no-such-node: \"true\"}\n",
            ));
        }
        files.push(("deploy/deployments.yaml".into(), deps));
        files
    }
}

fn deployment(name: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  \
         selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    \
         spec:\n{extra}      containers: [{{name: c, image: registry.example/c:1}}]\n"
    )
}

struct Crash {
    _upstream: Upstream,
    repo: Repo,
    _ns: TestNamespace,
    dir: tempfile::TempDir,
    config: PathBuf,
    cms: Api<ConfigMap>,
    deps: Api<Deployment>,
    pushed: BTreeSet<String>,
}

impl Crash {
    async fn new() -> Crash {
        harness::init_logging();
        let client = control_plane().client().await;
        let ns = TestNamespace::create(&client, "crash").await;
        let upstream = Upstream::new();
        let repo = upstream.create("apps");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "stateDir: {dir}/state\nnamespace: {ns}\nsources:\n  - name: apps\n    url: {url}\n\
                 syncs:\n  - name: apps\n    source: apps\n    path: deploy\n    namespace: {ns}\n    \
                 pruneGuard: {{allowMassDeletion: true}}\n    health: {{timeout: 600s}}\n",
                dir = dir.path().display(),
                ns = ns.name,
                url = repo.file_url(),
            ),
        )
        .unwrap();
        Crash {
            cms: Api::namespaced(client.clone(), &ns.name),
            deps: Api::namespaced(client, &ns.name),
            _upstream: upstream,
            repo,
            _ns: ns,
            dir,
            config,
            pushed: BTreeSet::new(),
        }
    }

    fn push(&mut self, rev: &Revision) {
        let files = rev.files();
        let paths: BTreeSet<String> = files.iter().map(|(p, _)| p.clone()).collect();
        let removed: Vec<&str> = self.pushed.difference(&paths).map(String::as_str).collect();
        self.repo.push("main", &harness::borrowed(&files), &removed);
        self.pushed = paths;
    }

    fn start(&self, log: &str) -> Child {
        let out = std::fs::File::create(self.dir.path().join(log)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_gitops-agent"))
            .args(["sync", "--once", "--config"])
            .arg(&self.config)
            .arg("--kubeconfig")
            .arg(control_plane().kubeconfig())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// What is live and labelled as this sync's, as `Kind/name`.
    async fn live(&self) -> BTreeSet<String> {
        let lp = ListParams::default().labels(&format!("{OWNER}=apps"));
        let named = |kind: &str, items: Vec<ObjectMeta>| {
            items
                .into_iter()
                .filter(|m| m.deletion_timestamp.is_none())
                .map(|m| format!("{kind}/{}", m.name.unwrap_or_default()))
                .collect::<Vec<_>>()
        };
        let cms = self.cms.list_metadata(&lp).await.unwrap().items;
        let deps = self.deps.list_metadata(&lp).await.unwrap().items;
        let mut out: BTreeSet<String> =
            named("ConfigMap", cms.into_iter().map(|m| m.metadata).collect())
                .into_iter()
                .collect();
        out.extend(named(
            "Deployment",
            deps.into_iter().map(|m| m.metadata).collect(),
        ));
        out
    }

    async fn head_version(&self) -> Option<String> {
        self.cms
            .get_opt("gitops-agent-apps")
            .await
            .unwrap()
            .and_then(|c| c.metadata.resource_version)
    }

    /// Starts a sync of `rev`, waits for `point` to say the moment has come, and kills it.
    async fn kill_when<F>(&mut self, rev: &Revision, what: &str, point: F)
    where
        F: Fn(&BTreeSet<String>, Option<String>) -> bool,
    {
        self.push(rev);
        let log = format!("{what}.log");
        let mut child = self.start(&log);
        let started = Instant::now();
        loop {
            if point(&self.live().await, self.head_version().await) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the sync ended ({status}) before the kill point {what}:\n{}",
                    self.log(&log)
                );
            }
            assert!(
                started.elapsed() < WAIT,
                "kill point {what} never came:\n{}",
                self.log(&log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        eprintln!(
            "killed at {what}: {} labelled objects live",
            self.live().await.len()
        );
    }

    /// Syncs `rev` to completion and returns (orphans, missing) against Git.
    async fn complete(&mut self, rev: &Revision, what: &str) -> (usize, usize) {
        self.push(rev);
        let log = format!("{what}-after.log");
        let status = self.start(&log).wait().unwrap();
        assert!(
            status.success(),
            "the sync after {what} failed:\n{}",
            self.log(&log)
        );
        let live = self.live().await;
        let want = rev.names();
        let orphans: Vec<&String> = live.difference(&want).collect();
        let missing: Vec<&String> = want.difference(&live).collect();
        eprintln!(
            "kill point {what}: {} objects in Git, {} orphans, {} missing",
            want.len(),
            orphans.len(),
            missing.len()
        );
        assert!(
            orphans.is_empty() && missing.is_empty(),
            "after the kill point {what}: orphans {:?}…, missing {:?}…",
            orphans.iter().take(5).collect::<Vec<_>>(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        (orphans.len(), missing.len())
    }
}

#[tokio::test]
#[allow(clippy::single_range_in_vec_init)] // a revision's ConfigMaps are ranges, often one
async fn sigkill_at_any_point_then_a_removal_leaves_exactly_gits_objects() {
    let mut c = Crash::new().await;

    // During apply: 3,000 ConfigMaps and 40 Deployments, killed with some 1,200 applied;
    // the next revision drops half of them, applied or not.
    let full = rev(&[0..3000], 0..40);
    c.kill_when(&full, "apply", |live, _| live.len() >= 1200)
        .await;
    c.complete(&rev(&[1500..3000], 20..40), "apply").await;

    // During prune: a revision removing 1,000 ConfigMaps and 10 Deployments, killed after
    // some 200 deletions; the next one removes more and adds 500.
    let before = c.live().await.len();
    let fewer = rev(&[1500..2000], 30..40);
    c.kill_when(&fewer, "prune", |live, _| live.len() + 200 <= before)
        .await;
    c.complete(&rev(&[1500..1800, 3000..3500], 30..35), "prune")
        .await;

    // During the health wait: everything applied, one Deployment never available.
    let mut waiting = rev(&[1500..1800, 3000..4000], 30..35);
    waiting.stuck = true;
    let want = waiting.names();
    c.kill_when(&waiting, "health", |live, _| *live == want)
        .await;
    c.complete(&rev(&[1500..1800, 3000..3700], 30..35), "health")
        .await;

    // Right after the first inventory write (the intent, before any object is applied).
    let head = c.head_version().await;
    let added = rev(&[1500..1800, 3000..3700, 4000..5000], 30..35);
    c.kill_when(&added, "intent", |_, now| now != head).await;
    c.complete(&rev(&[1500..1800, 4500..5000], 30..35), "intent")
        .await;
}

fn rev(cms: &[Range<usize>], deps: Range<usize>) -> Revision {
    Revision {
        cms: cms.to_vec(),
        deps,
        stuck: false,
    }
}
