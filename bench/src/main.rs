//! `gitops-agent-bench`: starts the local control plane and Flux's controllers, generates
//! synthetic repositories of N objects, and measures the agent against Flux side by side
//! (cold sync, no-change reconcile, push → applied, drift, memory), with `kubectl apply
//! --server-side` and the raw server-side-apply bound for the cold sync. Reports only:
//! nothing here asserts a time.
#![forbid(unsafe_code)]

mod agent;
mod cluster;
mod corpus;
mod flux;
mod git;
mod latency;
mod oci;
mod peers;
mod policies;
mod proc;
mod report;
mod sink;
mod targets;
mod versus;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::cluster::ControlPlane;
use crate::corpus::Corpus;

#[derive(Parser, Debug)]
#[command(about = "Benchmark gitops-agent against Flux, kubectl and the apiserver's raw SSA bound")]
pub struct Args {
    /// Corpus sizes, comma separated (one sync each).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub objects: Vec<usize>,
    /// The large rows: N = 1,000, 5,000 and 20,000 in one sync, and 50,000 across ten.
    #[arg(long)]
    large: bool,
    /// Only the row of 50,000 objects across ten syncs (the last of `--large`).
    #[arg(long, conflicts_with = "large")]
    many: bool,
    /// Use this running cluster instead of starting the local control plane.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The agent binary (default: `gitops-agent` beside this binary, i.e. target/release).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Runs of the cold-sync and no-change rows (median and spread).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Samples of the fast latencies: webhook and drift for the agent.
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// Samples of the slow ones: polling, Flux's webhook path and its interval-bound drift.
    #[arg(long, default_value_t = 3)]
    slow_samples: usize,
    /// kubectl's cold sync runs up to this N (it is 20-30× the raw bound).
    #[arg(long, default_value_t = 5_000)]
    kubectl_up_to: usize,
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
/// Lets the controllers' churn after one contender (ReplicaSets, kwok pods) settle
/// before the next is timed.
pub const SETTLE: Duration = Duration::from_secs(15);

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
    // Ctrl-C and SIGTERM end the run the same way, so child processes and the control plane stop.
    let result = tokio::select! {
        r = bench(&args, &cp, &agent_bin) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = terminated() => Err(anyhow::anyhow!("terminated")),
    };
    drop(cp);
    result
}

/// SIGTERM (a `kill`, a timeout): stopped like Ctrl-C, the control plane with it.
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

async fn bench(args: &Args, cp: &ControlPlane, agent_bin: &Path) -> anyhow::Result<()> {
    if args.oci {
        return bench_oci(args, cp, agent_bin).await;
    }
    if args.policies {
        return policies::bench_policies(args, cp, agent_bin).await;
    }
    let repo_root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench crate has no parent")?;
    let client = cp.client().await?;
    let kubernetes = cp.version().await;
    prepare_system_namespace(&client).await?;
    let flux = flux::Flux::start(repo_root, &cp.kubeconfig, &client).await?;
    let sink = sink::Sink::default();
    let alert_url = sink.start().await?;
    let http = reqwest::Client::new();
    let upstream = git::Upstream::new()?;
    let server = git::HttpGit::anonymous(upstream.root());
    let work = tempfile::Builder::new()
        .prefix("gitops-agent-bench-")
        .tempdir()?;
    let env = versus::Env {
        client: &client,
        kubeconfig: &cp.kubeconfig,
        agent_bin,
        upstream: &upstream,
        git: &server,
        work: work.path(),
        sink: &sink,
        alert_url: &alert_url,
        http: &http,
        flux: &flux,
        repeat: args.repeat,
        samples: args.samples,
        slow_samples: args.slow_samples,
        kubectl_up_to: args.kubectl_up_to,
    };
    let sizes = match (args.large, args.many) {
        (true, _) => vec![1_000, 5_000, 20_000],
        (_, true) => Vec::new(),
        _ => args.objects.clone(),
    };
    let mut machine = report::Machine::describe(kubernetes);
    machine.flux = format!(
        "{} (built from their Go modules by bench/flux/build)",
        flux.versions
    );
    let command = command(args, &sizes);
    // Written after every size, so a long run that is stopped keeps what it measured.
    let mut rows = Vec::new();
    for &n in &sizes {
        rows.push(env.row(n).await);
        write_results(args, &command, &rows, &machine, false)?;
    }
    if args.large || args.many {
        rows.push(env.row_many(10, 5_000).await);
    }
    write_results(args, &command, &rows, &machine, true)
}

/// The command line that reproduces this run.
fn command(args: &Args, sizes: &[usize]) -> String {
    match (args.large, args.many) {
        (true, _) => "cargo run --release -p gitops-agent-bench -- --large".to_owned(),
        (_, true) => "cargo run --release -p gitops-agent-bench -- --many".to_owned(),
        _ => format!(
            "cargo run --release -p gitops-agent-bench -- --objects {}",
            sizes
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

fn write_results(
    args: &Args,
    command: &str,
    rows: &[versus::Row],
    machine: &report::Machine,
    done: bool,
) -> anyhow::Result<()> {
    let text = report::render(rows, machine, &notes(args));
    let partial = match done {
        true => "",
        false => "**The run is still going: the sizes so far.**\n\n",
    };
    let doc = format!(
        "# Benchmark results: the agent against Flux\n\nProduced by `cargo build --release -p gitops-agent && {command}` (see README.md, \"Benchmark\").\n\n{partial}{text}"
    );
    std::fs::write(&args.out, doc).with_context(|| args.out.display().to_string())?;
    if done {
        println!("\n{text}");
        eprintln!("results written to {}", args.out.display());
    }
    Ok(())
}

/// How each row was measured, for the report.
fn notes(args: &Args) -> Vec<String> {
    vec![
        "Same control plane, same Git server (`git http-backend` over loopback HTTP: Flux's GitRepository refuses `git://`), same corpus. Each contender's copy lives in its own namespaces (`b-agent<k>-N-*`, `b-flux<k>-N-*`, `b-raw<k>-N-*`), so every cold sync is really cold; copies done with are deleted before the next contender runs, and contenders alternate (agent, Flux, raw bound) with a 15 s pause between them.".to_owned(),
        "Object mix per namespace (10 namespaces, Namespace objects included in N): 40% ConfigMaps, 20% Secrets (stringData), 15% ServiceAccounts, 20% headless Services, 5% Deployments (1 replica, each a kwok pod).".to_owned(),
        format!("Cold sync, agent: `gitops-agent sync --once` at its default config (health wait on), process wall time; \"applied\" is that short of the time it reports waiting on health. Flux: a Kustomization (`prune: true`, `wait: true`) created once its GitRepository's artifact is stored (the commit known), timed to the status that says it starts health checks (applied) and to Ready (healthy). Median and spread of {} runs; kubectl (`apply --server-side -R`) once, up to N = {}.", args.repeat, args.kubectl_up_to),
        "The raw bound: kube-rs, `Patch::Apply` with force, 48 requests in flight, Namespaces first, no GETs, no dry-runs, no health.".to_owned(),
        "No-change reconcile: the agent's daemon (`gitops-agent run`, its default config) triggered by a signed GitHub webhook for the unchanged revision; Flux's Kustomization triggered by the `reconcile.fluxcd.io/requestedAt` annotation (what `flux reconcile` writes), timed to `status.lastHandledReconcileAt` with Ready. Requests: the agent's `/metrics`, Flux's `rest_client_requests_total` of both controllers. Objects written: every corpus object's resourceVersion listed before and after. CPU: user + system time from `/proc` of the agent's daemon or both Flux controllers.".to_owned(),
        format!("Push → applied by webhook: a commit changing one ConfigMap, then a signed webhook to the agent, or for Flux the reconcile request on the GitRepository that its Receiver makes (Flux's notification-controller is not served by the module proxy here, so no Receiver runs); timed until the value is live (GET every 10 ms). Agent {} samples, Flux {}. Polling: both contenders' sources polled every 10 s, {} samples each, each at a different point of the interval.", args.samples, args.slow_samples, args.slow_samples),
        format!("Drift: a merge patch of a ConfigMap's data by another field manager, timed until the value is back as Git has it. The agent: `selfHeal: true`, {} samples, each a different ConfigMap, 2.5 s apart (its alert rate limit). Flux corrects drift only when it reconciles: its Kustomization at a 1-minute interval, {} samples at different points of the interval. Flux's `interval` is required and has no default; `flux bootstrap` writes 10m, where a correction takes up to 10 minutes.", args.samples, args.slow_samples),
        "Memory: `VmHWM` and `VmRSS` from `/proc`. The agent's peak is the larger of its `sync --once` processes (sampled every 50 ms) and its daemons; Flux's is both controllers' summed, over the whole run (one pair of processes serves every Kustomization). Steady: after the rows.".to_owned(),
        "Both contenders run at their defaults: Flux's controllers with `--kube-api-qps 50 --kube-api-burst 300 --concurrent 4 --concurrent-ssa 4`, and the agent with its own.".to_owned(),
    ]
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

/// Waits until the deployment controller is done with every Deployment of the corpus: the
/// revision annotation set and the latest generation observed. (Not availability: kwok's
/// pods come and go with its fake nodes' heartbeats on a loaded machine.)
pub async fn settle_deployments(
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

/// Lets the controllers' churn after one contender (ReplicaSets, kwok pods) settle before
/// the next is timed.
pub async fn settle() {
    tokio::time::sleep(SETTLE).await;
}
