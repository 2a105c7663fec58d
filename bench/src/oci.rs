//! What OCI adds to a sync: one daemon with two sources on the same repository, a Git
//! source (the `git daemon`) and an OCI DevOps source (the stand-in of tests/oci/standin.py
//! on loopback, every request signed with workload identity and verified there), each
//! fetched every second; the difference of their fetch times, cold (ListRefs and the
//! archive) and with nothing new (ListRefs alone), from the daemon's own fetch histogram.
//! Also the agent's own cost of signing one request. The stand-in is Python on loopback:
//! a real region adds its network round trips, which this cannot measure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::corpus::Corpus;
use crate::git;

const NAMESPACE: &str = "b-oci-system";
const REPO_ID: &str = "ocid1.devopsrepository.oc1.iad.bench";

/// Mean fetch times of the two sources.
pub struct Row {
    pub objects: usize,
    pub archive_bytes: u64,
    pub git_cold: Duration,
    pub oci_cold: Duration,
    pub git_warm: Duration,
    pub oci_warm: Duration,
    pub warm_samples: u64,
    /// The fetch that found a new commit (token already held).
    pub git_new: Duration,
    pub oci_new: Duration,
    pub sign: Duration,
}

impl Row {
    pub fn markdown(&self) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        format!(
            "| N = {n} ({kib} KiB archive) | Git source | OCI DevOps source | OCI adds | ratio |\n\
             | --- | ---: | ---: | ---: | ---: |\n\
             | first fetch (the token exchange, ListRefs, archive) | {gc} | {oc} | {dc} | {rc:.2}× |\n\
             | a new commit (ListRefs, archive) | {gn} | {on} | {dn} | {rn:.2}× |\n\
             | nothing new (ListRefs), mean of {s} | {gw} | {ow} | {dw} | {rw:.2}× |\n\n\
             Signing one request (RSA-2048, in the agent): {sign:.0} µs.\n",
            n = self.objects,
            kib = self.archive_bytes / 1024,
            gc = ms(self.git_cold),
            oc = ms(self.oci_cold),
            dc = ms(self.oci_cold.saturating_sub(self.git_cold)),
            rc = ratio(self.oci_cold, self.git_cold),
            gn = ms(self.git_new),
            on = ms(self.oci_new),
            dn = ms(self.oci_new.saturating_sub(self.git_new)),
            rn = ratio(self.oci_new, self.git_new),
            s = self.warm_samples,
            gw = ms(self.git_warm),
            ow = ms(self.oci_warm),
            dw = ms(self.oci_warm.saturating_sub(self.git_warm)),
            rw = ratio(self.oci_warm, self.git_warm),
            sign = self.sign.as_secs_f64() * 1e6,
        )
    }
}

/// The stand-ins, killed on drop.
struct StandIn {
    child: Child,
    dir: tempfile::TempDir,
    ports: serde_json::Value,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn oci_python(repo_root: &Path) -> anyhow::Result<PathBuf> {
    let versions = std::fs::read_to_string(repo_root.join("tests/oci/versions"))?;
    let cli = versions
        .lines()
        .find_map(|l| l.strip_prefix("oci_cli="))
        .context("tests/oci/versions names no oci_cli")?;
    let home = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let python = home.join(format!(
        "gitops-agent/python/oci-cli-{}/bin/python",
        cli.trim()
    ));
    anyhow::ensure!(
        python.exists(),
        "{} missing: run tests/setup first",
        python.display()
    );
    Ok(python)
}

fn start_standin(repo_root: &Path, kubeconfig: &Path, bare: &Path) -> anyhow::Result<StandIn> {
    let dir = tempfile::Builder::new()
        .prefix("gitops-agent-bench-oci-")
        .tempdir()?;
    std::fs::write(
        dir.path().join("devops.json"),
        json!({ REPO_ID: bare }).to_string(),
    )?;
    let child = Command::new(oci_python(repo_root)?)
        .arg(repo_root.join("tests/oci/standin.py"))
        .arg("--dir")
        .arg(dir.path())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--token-lifetime", "3600"])
        .stdin(Stdio::piped())
        .spawn()
        .context("spawn the OCI stand-ins")?;
    let ports = dir.path().join("ports.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ports.exists() {
        anyhow::ensure!(Instant::now() < deadline, "the OCI stand-ins never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ports = serde_json::from_slice(&std::fs::read(ports)?)?;
    Ok(StandIn { child, dir, ports })
}

/// A service account's token from the API server (TokenRequest), in a file.
async fn token(client: &kube::Client, dir: &Path) -> anyhow::Result<PathBuf> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
    let _ = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "gitops-agent"}}))?;
    let _ = sas.create(&PostParams::default(), &sa).await;
    let req = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = sas
        .create_token_request("gitops-agent", &PostParams::default(), &req)
        .await?
        .status
        .context("no token")?
        .token;
    let path = dir.join("token");
    std::fs::write(&path, token)?;
    Ok(path)
}

/// `(sum, count)` of a source's fetch histogram, from the daemon's metrics.
async fn fetches(http: &reqwest::Client, port: u16, source: &str) -> anyhow::Result<(f64, u64)> {
    let body = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let value = |suffix: &str| {
        let key =
            format!("gitops_agent_git_fetch_duration_seconds_{suffix}{{source=\"{source}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((value("sum"), value("count") as u64))
}

/// The agent's cost of signing one GET (the mean of 200).
fn signing_cost() -> anyhow::Result<Duration> {
    use gitops_agent::oci::signing;
    let key = signing::PrivateKey::generate()?;
    let uri: http::Uri =
        "https://devops.us-ashburn-1.oci.oraclecloud.com/20210630/repositories/x/refs".parse()?;
    let started = Instant::now();
    for _ in 0..200 {
        let mut headers = http::HeaderMap::new();
        signing::sign(
            &http::Method::GET,
            &uri,
            &mut headers,
            b"",
            ("ST$token", &key),
            signing::BodyHeaders::ForMethod,
            SystemTime::now(),
        )?;
    }
    Ok(started.elapsed() / 200)
}

pub struct Setup<'a> {
    pub repo_root: &'a Path,
    pub kubeconfig: &'a Path,
    pub client: &'a kube::Client,
    pub agent_bin: &'a Path,
    pub objects: usize,
    pub samples: u64,
}

/// Runs the row.
pub async fn measure(s: Setup<'_>) -> anyhow::Result<Row> {
    let upstream = git::Upstream::new()?;
    let corpus = Corpus::new("bo", s.objects);
    // The OCI source's sync applies one ConfigMap of its own, so that the two syncs do not
    // declare the same objects; both sources fetch the whole repository.
    let own = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: oci-bench}\ndata: {a: b}\n";
    let repo = upstream.create("oci", |dir| {
        corpus.write(&dir.join("deploy"))?;
        std::fs::create_dir_all(dir.join("oci"))?;
        Ok(std::fs::write(dir.join("oci/cm.yaml"), own)?)
    })?;
    let daemon = git::GitDaemon::start(upstream.root())?;
    let bare = upstream.root().join("oci.git");
    let standin = start_standin(s.repo_root, s.kubeconfig, &bare)?;
    let work = tempfile::Builder::new()
        .prefix("gitops-agent-bench-oci-")
        .tempdir()?;
    let token = token(s.client, work.path()).await?;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let services = standin.ports["services"]
        .as_u64()
        .context("no services port")?;
    let exchange = standin.ports["exchange"]
        .as_u64()
        .context("no exchange port")?;
    let ca = standin.dir.path().join("ca.pem");
    let config = format!(
        "stateDir: {dir}/state\nnamespace: {NAMESPACE}\n\
         metrics: {{listen: \"127.0.0.1:{metrics_port}\"}}\n\
         sources:\n\
         \x20 - {{name: git, url: \"{url}\", interval: 1s}}\n\
         \x20 - {{name: oci, interval: 1s, ociDevOps: {{repositoryId: {REPO_ID}}}}}\n\
         syncs:\n\
         \x20 - {{name: git, source: git, path: deploy, namespace: {ns}, health: {{wait: false}}}}\n\
         \x20 - {{name: oci, source: oci, path: oci, namespace: {NAMESPACE}, health: {{wait: false}}}}\n\
         oci:\n  region: us-ashburn-1\n  caFile: {ca}\n\
         \x20 endpoints: {{devops: \"https://127.0.0.1:{services}\"}}\n\
         \x20 tokenExchange: {{host: 127.0.0.1, port: {exchange}, serviceAccountToken: {token}, clusterCa: {ca}}}\n",
        dir = work.path().display(),
        url = daemon.url("oci"),
        ns = corpus.first_namespace(),
        ca = ca.display(),
        token = token.display(),
    );
    let config_path = work.path().join("config.yaml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(work.path().join("daemon.log"))?;
    let mut child = Command::new(s.agent_bin)
        .arg("--config")
        .arg(&config_path)
        .arg("--kubeconfig")
        .arg(s.kubeconfig)
        .args(["--log-level", "warn", "run"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let result = match sample(&metrics_port, s.samples).await {
        Ok((cold, warm, n)) => new_commit(&repo, &metrics_port)
            .await
            .map(|new| (cold, warm, n, new)),
        Err(e) => Err(e),
    };
    let _ = child.kill();
    let _ = child.wait();
    let (cold, warm, n, new) = result.with_context(|| {
        let log = std::fs::read_to_string(work.path().join("daemon.log")).unwrap_or_default();
        format!("daemon log:\n{log}")
    })?;
    let archive_bytes = git_archive_size(&bare)?;
    Ok(Row {
        objects: s.objects,
        archive_bytes,
        git_cold: cold.0,
        oci_cold: cold.1,
        git_warm: warm.0,
        oci_warm: warm.1,
        warm_samples: n,
        git_new: new.0,
        oci_new: new.1,
        sign: signing_cost()?,
    })
}

type Pair = (Duration, Duration);

/// Each source's first fetch (read while its count is 1: polled five times a second, the
/// one-second interval cannot pass it), then the mean of the next `samples` of each.
async fn sample(port: &u16, samples: u64) -> anyhow::Result<(Pair, Pair, u64)> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: [Option<(f64, u64)>; 2] = [None, None];
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sources were not fetched in time"
        );
        let now = [
            fetches(&http, *port, "git").await.unwrap_or_default(),
            fetches(&http, *port, "oci").await.unwrap_or_default(),
        ];
        for (f, n) in first.iter_mut().zip(now) {
            if f.is_none() && n.1 >= 1 {
                *f = Some(n);
            }
        }
        if let [Some(g1), Some(o1)] = first
            && now[0].1 >= g1.1 + samples
            && now[1].1 >= o1.1 + samples
        {
            let mean = |a: (f64, u64), b: (f64, u64)| {
                Duration::from_secs_f64((b.0 - a.0) / (b.1 - a.1).max(1) as f64)
            };
            let once = |a: (f64, u64)| Duration::from_secs_f64(a.0 / a.1.max(1) as f64);
            return Ok((
                (once(g1), once(o1)),
                (mean(g1, now[0]), mean(o1, now[1])),
                samples,
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Pushes a commit, and times the next fetch of each source (the one that finds it).
async fn new_commit(repo: &git::Repo, port: &u16) -> anyhow::Result<Pair> {
    let http = reqwest::Client::new();
    let before = [
        fetches(&http, *port, "git").await?,
        fetches(&http, *port, "oci").await?,
    ];
    repo.push_file(
        "oci/new.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: oci-new}\n",
    )?;
    // Fetches that had started before the push may not see it: wait two more, take the
    // slower (the one that found the commit did the most work).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut after = before;
    let mut took = [Duration::ZERO; 2];
    loop {
        anyhow::ensure!(Instant::now() < deadline, "no fetch after the push");
        for (i, source) in ["git", "oci"].into_iter().enumerate() {
            let now = fetches(&http, *port, source).await?;
            if now.1 > after[i].1 && now.1 <= before[i].1 + 2 {
                let one =
                    Duration::from_secs_f64((now.0 - after[i].0) / (now.1 - after[i].1) as f64);
                took[i] = took[i].max(one);
                after[i] = now;
            }
        }
        if after[0].1 >= before[0].1 + 2 && after[1].1 >= before[1].1 + 2 {
            return Ok((took[0], took[1]));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn git_archive_size(bare: &Path) -> anyhow::Result<u64> {
    let out = Command::new("git")
        .arg("-C")
        .arg(bare)
        .args(["archive", "--format=tar.gz", "main"])
        .output()?;
    Ok(out.stdout.len() as u64)
}
