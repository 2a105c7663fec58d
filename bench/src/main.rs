//! `gitops-agent-bench`: starts the local control plane, generates synthetic repositories
//! of N objects, and measures the agent (cold sync, no-change resync, one-object change,
//! drift and webhook latency, memory) against `kubectl apply --server-side` and the raw
//! server-side-apply bound. Reports only: nothing here asserts a time.
#![forbid(unsafe_code)]

mod agent;
mod cluster;
mod corpus;
mod git;
mod latency;
mod oci;
mod peers;
mod policies;
mod report;
mod sink;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::agent::{Agent, SyncRun};
use crate::cluster::ControlPlane;
use crate::corpus::Corpus;
use crate::report::{Measured, Run};

#[derive(Parser, Debug)]
#[command(about = "Benchmark gitops-agent against kubectl and the apiserver's raw SSA bound")]
pub struct Args {
    /// Corpus sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub objects: Vec<usize>,
    /// Use this running cluster instead of starting the local control plane.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The agent binary (default: `gitops-agent` beside this binary, i.e. target/release).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Samples for the drift and webhook latencies.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Concurrency of the raw bound's client.
    #[arg(long, default_value_t = 48)]
    concurrency: usize,
    /// Skip kubectl and the raw bound (for profiling the agent alone).
    #[arg(long)]
    skip_peers: bool,
    /// Where the Markdown results go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md"))]
    out: PathBuf,
    /// Instead of the rows above: what an OCI DevOps source adds to a sync against a Git
    /// source of the same repository, at each N (needs tests/setup's OCI SDK for the
    /// stand-ins); written to `bench/RESULTS-oci.md`.
    #[arg(long)]
    oci: bool,
    /// Instead of the rows above: what the virtual-nodes policy pack adds to a cold sync at
    /// each N; written to `bench/RESULTS-policies.md`.
    #[arg(long)]
    policies: bool,
}

/// Bounds for the long steps: far past any plausible time, so a timeout means broken.
pub const SYNC_LIMIT: Duration = Duration::from_secs(20 * 60);
const DAEMON_READY_LIMIT: Duration = Duration::from_secs(10 * 60);
/// Lets the controllers' churn after one contender (ReplicaSets, kwok pods) settle
/// before the next is timed.
pub const SETTLE: Duration = Duration::from_secs(15);
/// Bound for the controllers to roll out the corpus's Deployments.
const SETTLE_LIMIT: Duration = Duration::from_secs(10 * 60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let agent_bin = match &args.agent {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for the bench binary")?
            .join("gitops-agent"),
    };
    anyhow::ensure!(
        agent_bin.exists(),
        "{} missing: run `cargo build --release -p gitops-agent` first",
        agent_bin.display()
    );
    let repo_root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench crate has no parent")?;
    let cp = match &args.kubeconfig {
        Some(k) => ControlPlane::existing(k.clone()),
        None => ControlPlane::up(repo_root)?,
    };
    // Run inside a function so the control plane guard drops (and stops it) on every path.
    // Ctrl-C ends the run the same way, so child processes and the control plane stop.
    let result = tokio::select! {
        r = bench(&args, &cp, &agent_bin) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    drop(cp);
    result
}

async fn bench(args: &Args, cp: &ControlPlane, agent_bin: &Path) -> anyhow::Result<()> {
    if args.oci {
        return bench_oci(args, cp, agent_bin).await;
    }
    if args.policies {
        return policies::bench_policies(args, cp, agent_bin).await;
    }
    let client = cp.client().await?;
    let kubernetes = cp.version().await;
    prepare_system_namespace(&client).await?;
    let sink = sink::Sink::default();
    let alert_url = sink.start().await?;
    let http = reqwest::Client::new();
    let upstream = git::Upstream::new()?;
    let daemon = git::GitDaemon::start(upstream.root())?;
    let work = tempfile::Builder::new()
        .prefix("gitops-agent-bench-")
        .tempdir()?;

    let mut runs = Vec::new();
    for &n in &args.objects {
        eprintln!("== N = {n}");
        let ctx = Ctx {
            args,
            client: &client,
            kubeconfig: &cp.kubeconfig,
            agent_bin,
            upstream: &upstream,
            daemon: &daemon,
            work: work.path(),
            sink: &sink,
            alert_url: &alert_url,
            http: &http,
        };
        runs.push(ctx.run(n).await);
    }

    let machine = report::Machine::describe(kubernetes);
    let mut notes = vec![
        "Each contender applies the same objects into its own fresh namespaces (`b-agent-N-*`, `b-kubectl-N-*`, `b-raw-N-*`), so every cold sync is really cold; contenders run one after another with a 15 s pause for the controllers' churn to settle.".to_owned(),
        "Object mix per namespace (10 namespaces, Namespace objects included in N): 40% ConfigMaps, 20% Secrets (stringData), 15% ServiceAccounts, 20% Services, 5% Deployments (1 replica; kept at 5% because each becomes a ReplicaSet and a kwok pod). Services are headless: the local control plane's service range is a /24.".to_owned(),
        "Agent times are the `sync --once` process wall time (start, Git fetch, render, apply, exit); the agent's own `took` is shown beside it. The agent runs its default config, health waiting included: its times include waiting until every object is healthy, which kubectl and the raw bound do not do.".to_owned(),
        format!("The raw bound: kube-rs, `Patch::Apply` with force, {} requests in flight, Namespaces first, no GETs, no dry-runs.", args.concurrency),
        "kubectl is v1.32 against a v1.34 server: two minor versions apart, outside kubectl's supported skew of ±1; server-side apply worked across it here.".to_owned(),
        format!("Drift: `selfHeal: true`; each of {} samples edits a different ConfigMap's data (one object healed more than three times a minute is a fight the agent stops healing) with field manager `bench-drift` (merge patch) and times the `driftDetected` alert at a loopback webhook sink, then waits for `driftResolved`. Webhook: push a commit to the `git daemon` source, POST a signed GitHub push webhook, poll GET every 10 ms until the value is live.", args.samples),
        "Drift samples are 2.5 s apart: each raises two alerts and a sink delivers at most one a second after a burst of ten (the agent's default), so back-to-back samples would time that rate limiter (about 1 s each), not the detection.".to_owned(),
        "Daemon rows: a signed webhook for the unchanged revision, then one after a one-object push, each once the controllers have rolled out the corpus's Deployments and the daemon has made no request for 2 s; timed from the webhook to the sync's end, and counting every request the daemon made meanwhile (from its `/metrics`). The change's 7 are the inventory's read and write, the object's GET, dry-run and apply, and the drift detector's GET and dry-run confirming the new state.".to_owned(),
        "Numbers are one run each, not averages.".to_owned(),
    ];
    notes.extend(runs.iter().filter_map(where_time_goes));
    let text = report::render(&runs, &machine, &notes);
    println!("\n{text}");
    let doc = format!(
        "# Benchmark results\n\nProduced by `cargo build --release -p gitops-agent && cargo run --release -p gitops-agent-bench -- --objects {}` (see README.md, \"Benchmark\").\n\n{text}",
        args.objects
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    std::fs::write(&args.out, doc).with_context(|| args.out.display().to_string())?;
    eprintln!("results written to {}", args.out.display());
    Ok(())
}

/// The OCI row at each N, to `bench/RESULTS-oci.md`.
async fn bench_oci(args: &Args, cp: &ControlPlane, agent_bin: &Path) -> anyhow::Result<()> {
    let client = cp.client().await?;
    let repo_root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench crate has no parent")?;
    let machine = report::Machine::describe(cp.version().await);
    let mut text = String::new();
    for &n in &args.objects {
        eprintln!("== OCI, N = {n}");
        let row = oci::measure(oci::Setup {
            repo_root,
            kubeconfig: &cp.kubeconfig,
            client: &client,
            agent_bin,
            objects: n,
            samples: args.samples as u64,
        })
        .await?;
        text.push_str(&row.markdown());
        text.push('\n');
    }
    println!("\n{text}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS-oci.md");
    let doc = format!(
        "# What OCI adds to a sync\n\nProduced by `cargo build --release -p gitops-agent && cargo run --release -p gitops-agent-bench -- --oci --objects {objects}` on {machine}.\n\n\
         One daemon, two sources on the same repository, each fetched every second: a Git source (`git daemon` on loopback) and an OCI DevOps source (tests/oci/standin.py on loopback, Python, every request signed with OKE workload identity and verified against the session key). Times are the daemon's own `gitops_agent_git_fetch_duration_seconds`. The stand-in runs `git archive` per download and answers ListRefs from `git for-each-ref`; a real region adds its network round trips (one per ListRefs, one more for a new commit's archive), which this machine cannot measure.\n\n{text}",
        objects = args
            .objects
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(","),
        machine = machine.one_line(),
    );
    std::fs::write(&out, doc).with_context(|| out.display().to_string())?;
    eprintln!("results written to {}", out.display());
    Ok(())
}

/// The agent's namespace and the alert sink's signing key in it.
pub async fn prepare_system_namespace(client: &Client) -> anyhow::Result<()> {
    let pp = PatchParams::apply("bench").force();
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.patch(
        agent::SYSTEM_NAMESPACE,
        &pp,
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": agent::SYSTEM_NAMESPACE}})),
    )
    .await
    .context("create the agent's namespace")?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), agent::SYSTEM_NAMESPACE);
    secrets
        .patch(
            agent::ALERT_SECRET,
            &pp,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": agent::ALERT_SECRET}, "stringData": {"key": "bench-alert-signing-key"}})),
        )
        .await
        .context("create the alert signing key")?;
    Ok(())
}

/// What every step of one size's run needs.
struct Ctx<'a> {
    args: &'a Args,
    client: &'a Client,
    kubeconfig: &'a Path,
    agent_bin: &'a Path,
    upstream: &'a git::Upstream,
    daemon: &'a git::GitDaemon,
    work: &'a Path,
    sink: &'a sink::Sink,
    alert_url: &'a str,
    http: &'a reqwest::Client,
}

fn measured<T>(what: &str, r: anyhow::Result<T>) -> Measured<T> {
    r.map_err(|e| {
        eprintln!("{what}: {e:#}");
        format!("{e:#}")
    })
}

impl Ctx<'_> {
    async fn run(&self, n: usize) -> Run {
        let corpus = Corpus::new("agent", n);
        let setup = self.setup_agent(&corpus);
        let (agent, repo, url) = match setup {
            Ok(v) => v,
            Err(e) => {
                let e = format!("setup: {e:#}");
                eprintln!("{e}");
                return Run {
                    objects: n,
                    agent_cold: Err(e.clone()),
                    kubectl_cold: Err(e.clone()),
                    raw_cold: Err(e.clone()),
                    resync_once: Err(e.clone()),
                    change_once: Err(e.clone()),
                    resync_daemon: Err(e.clone()),
                    change_daemon: Err(e.clone()),
                    drift: Err(e.clone()),
                    webhook: Err(e.clone()),
                    peak_rss_kib: Err(e),
                };
            }
        };

        eprintln!("cold sync: agent");
        let agent_cold = measured("agent cold", agent.sync_once(SYNC_LIMIT).await);
        report_sync("agent cold", &agent_cold);
        tokio::time::sleep(SETTLE).await;

        let (kubectl_cold, raw_cold) = if self.args.skip_peers {
            let skipped = || Err("skipped (--skip-peers)".to_owned());
            (skipped(), skipped())
        } else {
            self.peers(n).await
        };

        eprintln!("no-change resync");
        let resync = measured("resync", agent.sync_once(SYNC_LIMIT).await);
        report_sync("resync", &resync);

        eprintln!("one-object change");
        let change = match push_hot(&repo, &corpus, "changed-once") {
            Ok(()) => measured("change", agent.sync_once(SYNC_LIMIT).await),
            Err(e) => measured("change", Err(e)),
        };
        report_sync("change", &change);

        let d = self.daemon_steps(&agent, &repo, &corpus, &url).await;
        Run {
            objects: n,
            agent_cold,
            kubectl_cold,
            raw_cold,
            resync_once: resync,
            change_once: change,
            resync_daemon: d.resync,
            change_daemon: d.change,
            drift: d.drift,
            webhook: d.webhook,
            peak_rss_kib: d.peak_rss_kib,
        }
    }

    /// Cold syncs of kubectl and the raw bound, each into its own fresh namespaces.
    async fn peers(&self, n: usize) -> (Measured<Duration>, Measured<Duration>) {
        eprintln!("cold sync: kubectl");
        let kubectl_cold = measured("kubectl cold", self.kubectl(n).await);
        eprintln!("  {kubectl_cold:?}");
        tokio::time::sleep(SETTLE).await;

        eprintln!("cold sync: raw bound");
        let raw = Corpus::new("raw", n).all();
        let raw_cold = measured(
            "raw cold",
            peers::raw(self.client, &raw, self.args.concurrency).await,
        );
        eprintln!("  {raw_cold:?}");
        tokio::time::sleep(SETTLE).await;
        (kubectl_cold, raw_cold)
    }

    fn setup_agent(&self, corpus: &Corpus) -> anyhow::Result<(Agent, git::Repo, String)> {
        let name = format!("corpus-{}", corpus.objects);
        let repo = self
            .upstream
            .create(&name, |work| corpus.write(&work.join("deploy")))?;
        let url = self.daemon.url(&name);
        let dir = self.work.join(format!("agent-{}", corpus.objects));
        std::fs::create_dir_all(&dir)?;
        let first = corpus.first_namespace();
        let agent = Agent::configure(agent::Setup {
            binary: self.agent_bin,
            kubeconfig: self.kubeconfig,
            dir: &dir,
            objects: corpus.objects,
            url: &url,
            first_namespace: &first,
            alert_url: self.alert_url,
        })?;
        Ok((agent, repo, url))
    }

    async fn kubectl(&self, n: usize) -> anyhow::Result<Duration> {
        let dir = self.work.join(format!("kubectl-{n}"));
        Corpus::new("kubectl", n).write(&dir)?;
        peers::kubectl(self.kubeconfig, &dir, SYNC_LIMIT).await
    }

    /// Steps 2 to 6 in the daemon, on the synced corpus: drift and webhook latencies, a
    /// no-change resync and a one-object change (each triggered by a webhook, timed and
    /// counted from the daemon's metrics), then its peak RSS.
    async fn daemon_steps(
        &self,
        agent: &Agent,
        repo: &git::Repo,
        corpus: &Corpus,
        url: &str,
    ) -> DaemonResults {
        eprintln!("daemon: starting");
        let failed = |e: String| DaemonResults {
            drift: Err(e.clone()),
            webhook: Err(e.clone()),
            resync: Err(e.clone()),
            change: Err(e.clone()),
            peak_rss_kib: Err(e),
        };
        let mut daemon = match agent.start_daemon() {
            Ok(d) => d,
            Err(e) => return failed(format!("{e:#}")),
        };
        if let Err(e) = daemon
            .wait_synced(self.http, &agent.sync, DAEMON_READY_LIMIT)
            .await
        {
            let e = format!("{e:#}");
            eprintln!("daemon: {e}");
            return failed(e);
        }
        // The watches are started with the first sync; give them a moment to list.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &corpus.first_namespace());
        eprintln!("daemon: drift samples");
        let drift = latency::drift(&cms, corpus, self.sink, self.args.samples).await;
        eprintln!(
            "  median {:?} worst {:?} missed {}",
            drift.median(),
            drift.worst(),
            drift.missed
        );
        eprintln!("daemon: webhook samples");
        let hook = latency::Hook {
            http: self.http,
            port: agent.webhook_port,
            url,
            secret: agent::WEBHOOK_SECRET.as_bytes(),
        };
        let webhook = latency::webhook(&cms, repo, corpus, &hook, self.args.samples).await;
        eprintln!(
            "  median {:?} worst {:?} missed {}",
            webhook.median(),
            webhook.worst(),
            webhook.missed
        );

        eprintln!("daemon: no-change resync");
        let pid = std::process::id();
        let resync = async {
            // Until the controllers have rolled out every Deployment, each still gets
            // metadata written (the revision annotation), which the daemon rightly judges:
            // wait, so the counts are the resync's own.
            settle_deployments(self.client, corpus, SETTLE_LIMIT).await?;
            daemon.quiet(self.http, &agent.sync, SYNC_LIMIT).await?;
            daemon
                .triggered_sync(
                    self.http,
                    &agent.sync,
                    SYNC_LIMIT,
                    hook.post(&format!("bench-resync-{pid}")),
                )
                .await
        }
        .await;
        let resync = measured("daemon resync", resync);
        report_sync("daemon resync", &resync);

        eprintln!("daemon: one-object change");
        let change = async {
            daemon.quiet(self.http, &agent.sync, SYNC_LIMIT).await?;
            push_hot(repo, corpus, "daemon-change")?;
            daemon
                .triggered_sync(
                    self.http,
                    &agent.sync,
                    SYNC_LIMIT,
                    hook.post(&format!("bench-change-{pid}")),
                )
                .await
        }
        .await;
        let change = measured("daemon change", change);
        report_sync("daemon change", &change);

        let rss = measured("peak RSS", daemon.peak_rss_kib());
        eprintln!(
            "  peak RSS {rss:?} KiB; daemon log {}",
            daemon.log.display()
        );
        DaemonResults {
            drift: Ok(drift),
            webhook: Ok(webhook),
            resync,
            change,
            peak_rss_kib: rss,
        }
    }
}

/// Waits until the deployment controller is done with every Deployment of the corpus: the
/// revision annotation set and the latest generation observed. (Not availability: kwok's
/// pods come and go with its fake nodes' heartbeats on a loaded machine.)
async fn settle_deployments(
    client: &Client,
    corpus: &Corpus,
    limit: Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let mut pending = 0;
        for i in 0..corpus::NAMESPACES {
            let api: Api<Deployment> = Api::namespaced(client.clone(), &corpus.namespace(i));
            for d in api.list(&Default::default()).await? {
                let revision = d
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key("deployment.kubernetes.io/revision"));
                let observed =
                    d.status.and_then(|s| s.observed_generation) == d.metadata.generation;
                if !(revision && observed) {
                    pending += 1;
                }
            }
        }
        if pending == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "{pending} Deployments still rolling out after {limit:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What the daemon steps measured.
struct DaemonResults {
    drift: Measured<latency::Samples>,
    webhook: Measured<latency::Samples>,
    resync: Measured<SyncRun>,
    change: Measured<SyncRun>,
    peak_rss_kib: Measured<u64>,
}

/// Derived from the counts: what the agent's requests per object are.
fn where_time_goes(r: &Run) -> Option<String> {
    let s = r.resync_once.as_ref().ok()?;
    let n = r.objects.max(1) as f64;
    Some(format!(
        "N = {}: the one-shot no-change resync made {:.2} API requests per object ({} dry-runs, {} writes: a GET and a dry-run per object, as a one-shot process has no watch cache), {:.1} ms per object; the daemon's made {}. The cold sync made {} (one apply each: an object the inventory never listed is not read first).",
        r.objects,
        s.requests as f64 / n,
        s.dry_runs,
        s.writes,
        s.took.as_secs_f64() * 1000.0 / n,
        r.resync_daemon
            .as_ref()
            .map(|d| format!(
                "{} requests in all ({} dry-runs, {} writes)",
                d.requests, d.dry_runs, d.writes
            ))
            .unwrap_or_else(|_| "n/a".into()),
        r.agent_cold
            .as_ref()
            .map(|c| format!("{:.2} per object", c.requests as f64 / n))
            .unwrap_or_else(|_| "n/a".into()),
    ))
}

fn push_hot(repo: &git::Repo, corpus: &Corpus, value: &str) -> anyhow::Result<()> {
    let (path, text) = corpus.hot_file(value);
    repo.push_file(&format!("deploy/{path}"), &text)?;
    Ok(())
}

fn report_sync(what: &str, r: &Measured<SyncRun>) {
    if let Ok(s) = r {
        eprintln!(
            "  {what}: {:.2}s wall, took {:.2}s, {} requests ({} writes, {} dry-runs)",
            s.wall.as_secs_f64(),
            s.took.as_secs_f64(),
            s.requests,
            s.writes,
            s.dry_runs
        );
    }
}
