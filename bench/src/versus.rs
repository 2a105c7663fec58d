//! The agent against Flux, side by side on one control plane, one Git server (smart HTTP:
//! Flux refuses `git://`) and the same corpus: cold syncs (with kubectl and the raw bound),
//! no-change reconciles, push → applied by webhook and by polling, drift corrected, and
//! memory. Each contender's copy of the corpus lives in its own namespaces; copies that are
//! done with are deleted before the next is timed.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};

use crate::agent::{Agent, Daemon, SyncRun};
use crate::cluster;
use crate::corpus::Corpus;
use crate::flux::{self, Flux, Kind};
use crate::git::{self, HttpGit};
use crate::latency::{self, Drift, Samples};
use crate::peers;
use crate::proc::Usage;
use crate::sink::Sink;

/// The poll interval both contenders get for the polling row.
const POLL: &str = "10s";
/// Flux's interval for the drift row: drift is corrected only when it reconciles.
const FLUX_DRIFT_INTERVAL: Duration = Duration::from_secs(60);
/// Bound for a namespace's deletion (its objects and kwok pods go first).
const DELETE_LIMIT: Duration = Duration::from_secs(15 * 60);

/// What every row needs.
pub struct Env<'a> {
    pub client: &'a Client,
    pub kubeconfig: &'a Path,
    pub agent_bin: &'a Path,
    pub upstream: &'a git::Upstream,
    pub git: &'a HttpGit,
    pub work: &'a Path,
    pub sink: &'a Sink,
    pub alert_url: &'a str,
    pub http: &'a reqwest::Client,
    pub flux: &'a Flux,
    /// Repetitions of the cold and no-change rows.
    pub repeat: usize,
    /// Samples of the fast latencies (webhook, the agent's drift).
    pub samples: usize,
    /// Samples of the slow ones (polling, Flux's interval-bound drift).
    pub slow_samples: usize,
    pub kubectl_up_to: usize,
}

/// A no-change reconcile of one contender.
#[derive(Debug, Clone)]
pub struct Reconcile {
    pub wall: Duration,
    pub requests: u64,
    /// How the requests split, in the contender's own terms.
    pub detail: String,
    /// Corpus objects it wrote (resourceVersion and its managedFields entry moved).
    pub writes: usize,
    pub cpu_seconds: f64,
}

/// One repetition of the cold rows: the size, which one, whether it is the last.
#[derive(Debug, Clone, Copy)]
struct Rep {
    n: usize,
    index: usize,
    last: bool,
}

/// A synced copy kept for the rows after the cold ones.
type Kept = Option<(Corpus, git::Repo)>;

/// Everything measured at one size.
#[derive(Debug, Default)]
pub struct Row {
    pub objects: usize,
    pub syncs: usize,
    pub agent_cold: Vec<SyncRun>,
    pub flux_cold: Vec<flux::Cold>,
    pub raw_cold: Vec<Duration>,
    pub kubectl_cold: Option<Duration>,
    pub agent_idle: Vec<Reconcile>,
    pub flux_idle: Vec<Reconcile>,
    pub agent_webhook: Samples,
    pub flux_webhook: Samples,
    pub agent_poll: Samples,
    pub flux_poll: Samples,
    pub agent_drift: Drift,
    pub flux_drift: Samples,
    pub agent_memory: Usage,
    pub flux_memory: Usage,
    /// Steps that failed, in order: the row shows what was measured around them.
    pub errors: Vec<String>,
}

impl Row {
    fn note(&mut self, what: &str, r: anyhow::Result<()>) {
        if let Err(e) = r {
            eprintln!("{what}: {e:#}");
            self.errors.push(format!("{what}: {e:#}"));
        }
    }
}

impl Env<'_> {
    /// One sync of `n` objects per contender: every row.
    pub async fn row(&self, n: usize) -> Row {
        let mut row = Row {
            objects: n,
            syncs: 1,
            ..Default::default()
        };
        let deployments = Corpus::new("agent", n).deployments();
        let r = cluster::ensure_pod_capacity(self.client, 2 * deployments + 100).await;
        row.note("capacity", r);
        let (mut kept, mut flux_kept) = (None, None);
        for rep in 0..self.repeat {
            let last = rep + 1 == self.repeat;
            eprintln!("== N = {n}, cold sync {} of {}", rep + 1, self.repeat);
            let rep = Rep {
                n,
                index: rep,
                last,
            };
            let r = self.cold_agent(&mut row, rep).await;
            row.note("agent cold", r.map(|a| kept = a.or(kept.take())));
            crate::settle().await;
            let r = self.cold_flux(&mut row, rep).await;
            row.note("Flux cold", r.map(|f| flux_kept = f.or(flux_kept.take())));
            crate::settle().await;
            let r = self.cold_raw(&mut row, n, rep.index).await;
            row.note("raw cold", r);
            crate::settle().await;
        }
        if n <= self.kubectl_up_to {
            let r = self.cold_kubectl(&mut row, n).await;
            row.note("kubectl cold", r);
            crate::settle().await;
        }
        let no_copy = || anyhow::anyhow!("no synced copy of the corpus");
        let r = match &kept {
            Some((corpus, repo)) => self.agent_rows(&mut row, corpus, repo).await,
            None => Err(no_copy()),
        };
        row.note("agent rows", r);
        let r = match &flux_kept {
            Some((corpus, repo)) => self.flux_rows(&mut row, corpus, repo).await,
            None => Err(no_copy()),
        };
        row.note("Flux rows", r);
        row
    }

    fn corpus(&self, contender: &str, n: usize, rep: usize) -> Corpus {
        Corpus::new(&format!("{contender}{rep}"), n)
    }

    /// A repository holding one corpus copy under `deploy/`.
    fn repo(&self, corpus: &Corpus) -> anyhow::Result<(git::Repo, String)> {
        let name = corpus.prefix.clone();
        let repo = self
            .upstream
            .create(&name, |work| corpus.write(&work.join("deploy")))?;
        Ok((repo, self.git.url(&name)))
    }

    /// The agent's config for a sync `name` of `url` (one per part when there are parts).
    fn agent(
        &self,
        name: &str,
        corpus: &Corpus,
        url: &str,
        interval: &str,
        parts: &[String],
    ) -> anyhow::Result<Agent> {
        let dir = self.work.join(format!("agent-{name}-{interval}"));
        std::fs::create_dir_all(&dir)?;
        Agent::configure(crate::agent::Setup {
            binary: self.agent_bin,
            kubeconfig: self.kubeconfig,
            dir: &dir,
            sync: name,
            interval,
            parts,
            url,
            first_namespace: &corpus.first_namespace(),
            alert_url: self.alert_url,
        })
    }

    /// `sync --once` into fresh namespaces; the last repetition's copy is kept (returned).
    async fn cold_agent(&self, row: &mut Row, rep: Rep) -> anyhow::Result<Kept> {
        let corpus = self.corpus("agent", rep.n, rep.index);
        let (repo, url) = self.repo(&corpus)?;
        let agent = self.agent(&corpus.prefix, &corpus, &url, "1h", &[])?;
        let run = agent.sync_once(crate::SYNC_LIMIT).await?;
        eprintln!(
            "  agent: applied {:.2}s, healthy {:.2}s (its own: {:.2}s), {} requests, peak {} KiB",
            run.applied().as_secs_f64(),
            run.wall.as_secs_f64(),
            run.took.as_secs_f64(),
            run.requests,
            run.peak_kib
        );
        row.agent_memory.peak_kib = row.agent_memory.peak_kib.max(run.peak_kib);
        row.agent_cold.push(run);
        self.keep(rep, corpus, repo).await
    }

    /// The last repetition's copy is kept for the rows after; the others are deleted.
    async fn keep(&self, rep: Rep, corpus: Corpus, repo: git::Repo) -> anyhow::Result<Kept> {
        if rep.last {
            return Ok(Some((corpus, repo)));
        }
        cluster::delete_namespaces(self.client, &corpus.namespaces(), DELETE_LIMIT).await?;
        Ok(None)
    }

    /// A Kustomization (`wait: true`, like the agent's default health wait) of a fresh copy,
    /// timed from its creation, its GitRepository's artifact already stored.
    async fn cold_flux(&self, row: &mut Row, rep: Rep) -> anyhow::Result<Kept> {
        let corpus = self.corpus("flux", rep.n, rep.index);
        let (repo, url) = self.repo(&corpus)?;
        let name = &corpus.prefix;
        let revision = self.flux.git_repository(name, &url, "1h").await?;
        let started = Instant::now();
        self.flux
            .kustomization(&flux::Kustomization {
                name,
                source: name,
                path: "./deploy",
                interval: "1h",
                wait: true,
            })
            .await?;
        let cold = self.flux.wait_cold(name, &revision, started).await?;
        eprintln!(
            "  Flux: applied {:.2}s, healthy {:.2}s",
            cold.applied.as_secs_f64(),
            cold.healthy.as_secs_f64()
        );
        row.flux_cold.push(cold);
        if !rep.last {
            self.flux.forget(name).await?;
        }
        self.keep(rep, corpus, repo).await
    }

    async fn cold_raw(&self, row: &mut Row, n: usize, rep: usize) -> anyhow::Result<()> {
        let corpus = self.corpus("raw", n, rep);
        let took = peers::raw(self.client, &corpus.all(), peers::CONCURRENCY).await?;
        eprintln!("  raw bound: {:.2}s", took.as_secs_f64());
        row.raw_cold.push(took);
        cluster::delete_namespaces(self.client, &corpus.namespaces(), DELETE_LIMIT).await
    }

    async fn cold_kubectl(&self, row: &mut Row, n: usize) -> anyhow::Result<()> {
        let corpus = Corpus::new("kubectl", n);
        let dir = self.work.join(&corpus.prefix);
        corpus.write(&dir)?;
        let took = peers::kubectl(self.kubeconfig, &dir, crate::SYNC_LIMIT).await?;
        eprintln!("  kubectl: {:.2}s", took.as_secs_f64());
        row.kubectl_cold = Some(took);
        cluster::delete_namespaces(self.client, &corpus.namespaces(), DELETE_LIMIT).await
    }
}

impl Env<'_> {
    /// The agent's daemon on its synced copy: no-change reconciles and push → applied by
    /// webhook, drift, memory; then a second daemon polling every [`POLL`].
    async fn agent_rows(
        &self,
        row: &mut Row,
        corpus: &Corpus,
        repo: &git::Repo,
    ) -> anyhow::Result<()> {
        let url = self.git.url(&corpus.prefix);
        let agent = self.agent(&corpus.prefix, corpus, &url, "1h", &[])?;
        let daemon = self.start(&agent, corpus).await?;
        let hook = self.hook(&agent, &url);
        for i in 0..self.repeat {
            eprintln!("agent: no-change reconcile {} of {}", i + 1, self.repeat);
            let r = self
                .agent_idle(
                    &daemon,
                    &agent.syncs,
                    &hook,
                    std::slice::from_ref(corpus),
                    i,
                )
                .await?;
            row.agent_idle.push(r);
        }
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &corpus.first_namespace());
        eprintln!("agent: drift samples");
        row.agent_drift = latency::drift(&cms, corpus, self.sink, self.samples).await;
        eprintln!("agent: webhook samples");
        row.agent_webhook = latency::webhook(&cms, repo, corpus, &hook, self.samples).await;
        let usage = daemon.usage()?;
        row.agent_memory.rss_kib = usage.rss_kib;
        row.agent_memory.peak_kib = row.agent_memory.peak_kib.max(usage.peak_kib);
        drop(daemon);

        eprintln!("agent: polling samples (every {POLL})");
        let poller = self.agent(&corpus.prefix, corpus, &url, POLL, &[])?;
        let daemon = self.start(&poller, corpus).await?;
        row.agent_poll = self.poll_samples(&cms, repo, corpus, "agent-poll").await;
        row.agent_memory.peak_kib = row.agent_memory.peak_kib.max(daemon.usage()?.peak_kib);
        Ok(())
    }

    /// The signed GitHub webhook to `agent`'s daemon, for the repository at `url`.
    fn hook<'h>(&'h self, agent: &Agent, url: &'h str) -> latency::Hook<'h> {
        latency::Hook {
            http: self.http,
            port: agent.webhook_port,
            url,
            secret: crate::agent::WEBHOOK_SECRET.as_bytes(),
        }
    }

    /// Starts the daemon and waits until it has synced and gone quiet.
    async fn start(&self, agent: &Agent, corpus: &Corpus) -> anyhow::Result<Daemon> {
        let mut daemon = agent.start_daemon()?;
        for s in &agent.syncs {
            daemon.wait_synced(self.http, s, crate::SYNC_LIMIT).await?;
        }
        // The watches start with the first sync; let them list.
        tokio::time::sleep(Duration::from_secs(2)).await;
        crate::settle_deployments(self.client, corpus, crate::SYNC_LIMIT).await?;
        daemon
            .quiet(self.http, &agent.syncs[0], crate::SYNC_LIMIT)
            .await?;
        Ok(daemon)
    }

    /// One webhook for the unchanged revision: wall time, requests, corpus writes, CPU.
    async fn agent_idle(
        &self,
        daemon: &Daemon,
        syncs: &[String],
        hook: &latency::Hook<'_>,
        corpora: &[Corpus],
        i: usize,
    ) -> anyhow::Result<Reconcile> {
        let namespaces: Vec<String> = corpora.iter().flat_map(Corpus::namespaces).collect();
        let before = cluster::versions(self.client, &namespaces).await?;
        let cpu = daemon.usage()?.cpu_seconds;
        let delivery = format!("bench-idle-{i}-{}", std::process::id());
        let run = daemon
            .triggered_sync(self.http, syncs, crate::SYNC_LIMIT, hook.post(&delivery))
            .await?;
        let cpu = daemon.usage()?.cpu_seconds - cpu;
        let after = cluster::versions(self.client, &namespaces).await?;
        daemon
            .quiet(self.http, &syncs[0], crate::SYNC_LIMIT)
            .await?;
        Ok(Reconcile {
            wall: run.wall,
            requests: run.requests,
            detail: format!("{} writes, {} dry-runs", run.writes, run.dry_runs),
            writes: cluster::written_by(&before, &after, gitops_agent::FIELD_MANAGER),
            cpu_seconds: cpu,
        })
    }

    /// Push → the value live, with nothing but the contender's own polling to notice.
    async fn poll_samples(
        &self,
        cms: &Api<ConfigMap>,
        repo: &git::Repo,
        corpus: &Corpus,
        tag: &str,
    ) -> Samples {
        let mut out = Samples::default();
        let limit = Duration::from_secs(300);
        for i in 0..self.slow_samples {
            let value = format!("{tag}-{i}");
            if let Err(e) = latency::push_hot(repo, corpus, &value) {
                out.fail(format!("push failed: {e}"));
                continue;
            }
            let started = Instant::now();
            out.push(latency::wait_value(cms, &value, started, limit).await);
            // Start the next at another point of the interval.
            tokio::time::sleep(jitter(Duration::from_secs(10))).await;
        }
        out
    }

    /// Flux on its synced copy: no-change reconciles, push → applied by reconcile request
    /// (what its Receiver does) and by polling, drift at a 1-minute interval, memory.
    async fn flux_rows(
        &self,
        row: &mut Row,
        corpus: &Corpus,
        repo: &git::Repo,
    ) -> anyhow::Result<()> {
        let name = &corpus.prefix;
        crate::settle_deployments(self.client, corpus, crate::SYNC_LIMIT).await?;
        for i in 0..self.repeat {
            eprintln!("Flux: no-change reconcile {} of {}", i + 1, self.repeat);
            row.flux_idle.push(
                self.flux_idle(std::slice::from_ref(name), std::slice::from_ref(corpus))
                    .await?,
            );
        }
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &corpus.first_namespace());
        eprintln!("Flux: webhook samples (reconcile requested on the GitRepository)");
        for i in 0..self.slow_samples {
            let value = format!("flux-hook-{i}");
            let commit = latency::push_hot(repo, corpus, &value)?;
            let started = Instant::now();
            self.flux
                .request_reconcile(Kind::GitRepository, name)
                .await?;
            row.flux_webhook
                .push(latency::wait_value(&cms, &value, started, crate::SYNC_LIMIT).await);
            self.flux.wait_applied(name, &commit).await?;
        }
        eprintln!("Flux: polling samples (every {POLL})");
        let url = self.git.url(name);
        self.flux.git_repository(name, &url, POLL).await?;
        row.flux_poll = self.poll_samples(&cms, repo, corpus, "flux-poll").await;
        self.flux.git_repository(name, &url, "1h").await?;

        eprintln!("Flux: drift samples (interval {FLUX_DRIFT_INTERVAL:?})");
        self.flux.set_interval(name, "1m").await?;
        let targets = corpus.drift_targets(self.slow_samples);
        for (i, target) in targets.iter().enumerate() {
            // An edit lands anywhere in the interval.
            tokio::time::sleep(jitter(FLUX_DRIFT_INTERVAL)).await;
            let edited = latency::edit(&cms, target, &format!("flux-drift-{i}")).await?;
            let limit = FLUX_DRIFT_INTERVAL * 3;
            row.flux_drift
                .push(edited.wait_corrected(&cms, limit).await);
        }
        self.flux.set_interval(name, "1h").await?;
        row.flux_memory = self.flux.usage()?;
        Ok(())
    }

    /// Requests a reconcile of each Kustomization and waits until all have handled it.
    async fn flux_idle(&self, names: &[String], corpora: &[Corpus]) -> anyhow::Result<Reconcile> {
        let namespaces: Vec<String> = corpora.iter().flat_map(Corpus::namespaces).collect();
        let before = cluster::versions(self.client, &namespaces).await?;
        let requests = self.flux.requests(self.http).await?;
        let cpu = self.flux.usage()?.cpu_seconds;
        let started = Instant::now();
        let mut tokens = Vec::new();
        for n in names {
            tokens.push(self.flux.request_reconcile(Kind::Kustomization, n).await?);
        }
        let waits = names
            .iter()
            .zip(&tokens)
            .map(|(n, t)| self.flux.wait_handled(n, t));
        futures::future::try_join_all(waits).await?;
        let wall = started.elapsed();
        let cpu = self.flux.usage()?.cpu_seconds - cpu;
        let r = self.flux.requests(self.http).await?.since(&requests);
        let after = cluster::versions(self.client, &namespaces).await?;
        Ok(Reconcile {
            wall,
            requests: r.total(),
            detail: format!(
                "{} GET, {} PATCH (dry-runs and status), {} other",
                r.get, r.patch, r.other
            ),
            writes: cluster::written_by(&before, &after, flux::FIELD_MANAGER),
            cpu_seconds: cpu,
        })
    }
}

/// A pause of up to `most`, different each time (the clock's nanoseconds): samples then
/// start at different points of a poll interval.
fn jitter(most: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    most.mul_f64(f64::from(nanos) / 1e9)
}

impl Env<'_> {
    /// `parts` syncs of `per` objects each, for both contenders at once: cold (the agent's
    /// daemon starting on them; Flux's Kustomizations created together), no-change, memory.
    pub async fn row_many(&self, parts: usize, per: usize) -> Row {
        let mut row = Row {
            objects: parts * per,
            syncs: parts,
            ..Default::default()
        };
        let deployments = Corpus::new("agent", per).deployments() * parts;
        let r = cluster::ensure_pod_capacity(self.client, 2 * deployments + 100).await;
        row.note("capacity", r);
        eprintln!("== N = {} across {parts} syncs: agent", parts * per);
        let r = self.many_agent(&mut row, parts, per).await;
        row.note("agent", r);
        crate::settle().await;
        eprintln!("== N = {} across {parts} syncs: Flux", parts * per);
        let r = self.many_flux(&mut row, parts, per).await;
        row.note("Flux", r);
        row
    }

    /// One repository, a directory per part, its own namespaces for each.
    fn many_repo(
        &self,
        contender: &str,
        parts: usize,
        per: usize,
    ) -> anyhow::Result<(Vec<Corpus>, Vec<String>, String)> {
        let corpora: Vec<Corpus> = (0..parts)
            .map(|k| Corpus::new(&format!("{contender}p{k}"), per))
            .collect();
        let names: Vec<String> = (0..parts).map(|k| format!("p{k}")).collect();
        let repo = format!("b-{contender}-many-{}", parts * per);
        self.upstream.create(&repo, |work| {
            for (c, p) in corpora.iter().zip(&names) {
                c.write(&work.join("deploy").join(p))?;
            }
            Ok(())
        })?;
        Ok((corpora, names, self.git.url(&repo)))
    }

    async fn many_agent(&self, row: &mut Row, parts: usize, per: usize) -> anyhow::Result<()> {
        let (corpora, names, url) = self.many_repo("agent", parts, per)?;
        let name = format!("b-agent-many-{}", parts * per);
        let agent = self.agent(&name, &corpora[0], &url, "1h", &names)?;
        let started = Instant::now();
        let mut daemon = agent.start_daemon()?;
        for s in &agent.syncs {
            daemon.wait_synced(self.http, s, crate::SYNC_LIMIT).await?;
        }
        let wall = started.elapsed();
        eprintln!(
            "  agent: all {parts} synced and healthy in {:.2}s",
            wall.as_secs_f64()
        );
        row.agent_cold.push(SyncRun {
            wall,
            ..Default::default()
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        for c in &corpora {
            crate::settle_deployments(self.client, c, crate::SYNC_LIMIT).await?;
        }
        daemon
            .quiet(self.http, &agent.syncs[0], crate::SYNC_LIMIT)
            .await?;
        let hook = self.hook(&agent, &url);
        for i in 0..self.repeat {
            eprintln!(
                "agent: no-change reconcile of all {parts}, {} of {}",
                i + 1,
                self.repeat
            );
            let r = self
                .agent_idle(&daemon, &agent.syncs, &hook, &corpora, i)
                .await?;
            row.agent_idle.push(r);
        }
        row.agent_memory = daemon.usage()?;
        Ok(())
    }

    async fn many_flux(&self, row: &mut Row, parts: usize, per: usize) -> anyhow::Result<()> {
        let (corpora, names, url) = self.many_repo("flux", parts, per)?;
        let source = format!("b-flux-many-{}", parts * per);
        let revision = self.flux.git_repository(&source, &url, "1h").await?;
        let kustomizations: Vec<String> = names.iter().map(|p| format!("{source}-{p}")).collect();
        let started = Instant::now();
        for (k, p) in kustomizations.iter().zip(&names) {
            let path = format!("./deploy/{p}");
            let spec = flux::Kustomization {
                name: k,
                source: &source,
                path: &path,
                interval: "1h",
                wait: true,
            };
            self.flux.kustomization(&spec).await?;
        }
        let waits = kustomizations
            .iter()
            .map(|k| self.flux.wait_cold(k, &revision, started));
        let colds = futures::future::try_join_all(waits).await?;
        let cold = flux::Cold {
            applied: colds.iter().map(|c| c.applied).max().unwrap_or_default(),
            healthy: colds.iter().map(|c| c.healthy).max().unwrap_or_default(),
        };
        eprintln!(
            "  Flux: all {parts} applied {:.2}s, healthy {:.2}s",
            cold.applied.as_secs_f64(),
            cold.healthy.as_secs_f64()
        );
        row.flux_cold.push(cold);
        for c in &corpora {
            crate::settle_deployments(self.client, c, crate::SYNC_LIMIT).await?;
        }
        for i in 0..self.repeat {
            eprintln!(
                "Flux: no-change reconcile of all {parts}, {} of {}",
                i + 1,
                self.repeat
            );
            row.flux_idle
                .push(self.flux_idle(&kustomizations, &corpora).await?);
        }
        row.flux_memory = self.flux.usage()?;
        Ok(())
    }
}
