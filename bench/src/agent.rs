//! The agent under test, run as the real release binary: `sync --once` with its
//! `took ... API requests (... writes, ... dry-runs)` line parsed, and the `run` daemon
//! as a child process with its readiness, metrics and peak RSS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// The agent's own namespace: inventories and the alert signing key live here.
pub const SYSTEM_NAMESPACE: &str = "b-agent-system";
/// The Secret (in [`SYSTEM_NAMESPACE`]) holding the alert sink's signing key.
pub const ALERT_SECRET: &str = "bench-alert-key";
/// The GitHub webhook secret, as the file `github` in the config's `secretsDir`.
pub const WEBHOOK_SECRET: &str = "bench-webhook-secret";

/// Where the agent binary and its configuration for one corpus live.
pub struct Agent {
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
    pub config: PathBuf,
    pub dir: PathBuf,
    /// Every sync's name.
    pub syncs: Vec<String>,
    pub metrics_port: u16,
    pub webhook_port: u16,
}

/// What one `sync --once` reported.
#[derive(Debug, Clone, Default)]
pub struct SyncRun {
    /// Wall time of the whole process (start, fetch, render, apply, exit).
    pub wall: Duration,
    /// The agent's own `took` (the sync alone).
    pub took: Duration,
    pub requests: u64,
    pub writes: u64,
    pub dry_runs: u64,
    /// Of `took`, the time spent waiting on health (the rest is fetch, render, apply).
    pub health_wait: Option<Duration>,
    /// The process's peak RSS (`sync --once` only), KiB.
    pub peak_kib: u64,
}

impl SyncRun {
    /// From the start to every object applied: the wall time short of the health wait.
    pub fn applied(&self) -> Duration {
        self.wall
            .saturating_sub(self.health_wait.unwrap_or_default())
    }
}

/// Where to write the config and what to point it at.
pub struct Setup<'a> {
    pub binary: &'a Path,
    pub kubeconfig: &'a Path,
    pub dir: &'a Path,
    /// The sync's name (its inventory's): one per corpus copy, so each is synced cold.
    pub sync: &'a str,
    /// The source's poll interval (`1h` when only webhooks should trigger).
    pub interval: &'a str,
    /// Directories under `deploy/`, one sync each; empty for one sync of `deploy` itself.
    pub parts: &'a [String],
    pub url: &'a str,
    pub first_namespace: &'a str,
    pub alert_url: &'a str,
}

impl Agent {
    pub fn configure(s: Setup<'_>) -> anyhow::Result<Self> {
        let (metrics_port, webhook_port) = (free_port()?, free_port()?);
        let sync = s.sync.to_owned();
        let names: Vec<String> = match s.parts.is_empty() {
            true => vec![sync.clone()],
            false => s.parts.iter().map(|p| format!("{sync}-{p}")).collect(),
        };
        let syncs: String = if s.parts.is_empty() {
            format!(
                "  - name: {sync}\n    source: {sync}\n    path: deploy\n    namespace: {ns}\n    selfHeal: true\n",
                ns = s.first_namespace
            )
        } else {
            s.parts
                .iter()
                .map(|p| {
                    format!(
                        "  - name: {sync}-{p}\n    source: {sync}\n    path: deploy/{p}\n    namespace: {ns}\n    selfHeal: true\n",
                        ns = s.first_namespace
                    )
                })
                .collect()
        };
        std::fs::create_dir_all(s.dir.join("webhook"))?;
        std::fs::write(s.dir.join("webhook/github"), format!("{WEBHOOK_SECRET}\n"))?;
        let text = format!(
            "stateDir: {dir}/state\nnamespace: {SYSTEM_NAMESPACE}\n\
             metrics: {{listen: \"127.0.0.1:{metrics_port}\"}}\n\
             webhook: {{listen: \"127.0.0.1:{webhook_port}\", secretsDir: {dir}/webhook}}\n\
             alerts:\n  sinks:\n    - type: webhook\n      name: bench\n      url: {alert}\n      secretRef: {{name: {ALERT_SECRET}, key: key}}\n\
             sources:\n  - name: {sync}\n    url: {url}\n    interval: {interval}\n\
             syncs:\n{syncs}",
            dir = s.dir.display(),
            alert = s.alert_url,
            url = s.url,
            interval = s.interval,
        );
        let config = s.dir.join("config.yaml");
        std::fs::write(&config, text)?;
        Ok(Agent {
            binary: s.binary.to_owned(),
            kubeconfig: s.kubeconfig.to_owned(),
            config,
            dir: s.dir.to_owned(),
            syncs: names,
            metrics_port,
            webhook_port,
        })
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--config")
            .arg(&self.config)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .stdin(Stdio::null());
        c
    }

    /// `gitops-agent sync --once`, bounded by `limit`.
    pub async fn sync_once(&self, limit: Duration) -> anyhow::Result<SyncRun> {
        let mut c = tokio::process::Command::from(self.command());
        c.args(["--log-level", "warn", "sync", "--once"])
            .kill_on_drop(true);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let started = Instant::now();
        let child = c.spawn().context("spawn sync --once")?;
        let peak = tokio::spawn(crate::proc::track_peak(child.id().unwrap_or_default()));
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .with_context(|| format!("sync --once did not finish in {limit:?}"))??;
        let wall = started.elapsed();
        let peak_kib = peak.await.unwrap_or_default();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let errors: Vec<&str> = stdout
                .lines()
                .filter(|l| l.contains("error") || l.contains("failed"))
                .take(5)
                .collect();
            anyhow::bail!(
                "sync --once: {}: {} {}",
                out.status,
                errors.join("; "),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
        }
        let mut run = parse_took(&stdout).context("no `took` line in sync --once output")?;
        run.wall = wall;
        run.peak_kib = peak_kib;
        Ok(run)
    }

    /// Starts `gitops-agent run`; its log goes to `<dir>/daemon.log`.
    pub fn start_daemon(&self) -> anyhow::Result<Daemon> {
        let log = self.dir.join("daemon.log");
        let out = std::fs::File::create(&log)?;
        let child = self
            .command()
            .args(["--log-level", "info", "run"])
            .env("POD_NAME", "bench")
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawn gitops-agent run")?;
        Ok(Daemon {
            child,
            log,
            metrics_port: self.metrics_port,
        })
    }
}

/// Parses `took 1.23s, 456 API requests (7 writes, 8 dry-runs)`, with
/// ` (1.00s of it waiting on health)` after the time when the sync waited.
pub fn parse_took(stdout: &str) -> Option<SyncRun> {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("took "))?;
    let nums: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|t| !t.is_empty() && *t != ".")
        .filter_map(|t| t.parse().ok())
        .collect();
    let (took, health_wait, rest) = match nums[..] {
        [took, waited, ref rest @ ..] if rest.len() == 3 => (took, Some(waited), rest),
        [took, ref rest @ ..] if rest.len() == 3 => (took, None, rest),
        _ => return None,
    };
    Some(SyncRun {
        wall: Duration::ZERO,
        took: Duration::from_secs_f64(took),
        requests: rest[0] as u64,
        writes: rest[1] as u64,
        dry_runs: rest[2] as u64,
        health_wait: health_wait.map(Duration::from_secs_f64),
        peak_kib: 0,
    })
}

use crate::proc::free_port;

/// Counters read from the daemon's `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    pub syncs: u64,
    pub sync_seconds: f64,
    pub requests: u64,
    pub writes: u64,
    pub dry_runs: u64,
}

/// A running `gitops-agent run`, killed on drop.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    metrics_port: u16,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn metrics(&self, http: &reqwest::Client) -> Option<String> {
        let r = http
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    }

    /// Waits until `/readyz` answers 200 and the sync has succeeded once.
    pub async fn wait_synced(
        &mut self,
        http: &reqwest::Client,
        sync: &str,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let needle = format!(
            "gitops_agent_sync_duration_seconds_count{{sync=\"{sync}\",result=\"succeeded\"}}"
        );
        loop {
            let ready = http
                .get(format!("http://127.0.0.1:{}/readyz", self.metrics_port))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready
                && self
                    .metrics(http)
                    .await
                    .is_some_and(|m| m.lines().any(|l| l.starts_with(&needle)))
            {
                return Ok(started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "gitops-agent run exited: {status}; log {}",
                    self.log.display()
                );
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "daemon not ready and synced in {limit:?}; log {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The daemon's own counters: syncs done and their summed duration, API requests.
    pub async fn counters(&self, http: &reqwest::Client, sync: &str) -> anyhow::Result<Counters> {
        let text = self.metrics(http).await.context("metrics unreachable")?;
        let value = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let synced = format!("{{sync=\"{sync}\",result=\"succeeded\"}}");
        Ok(Counters {
            syncs: value(&format!("gitops_agent_sync_duration_seconds_count{synced}")) as u64,
            sync_seconds: value(&format!("gitops_agent_sync_duration_seconds_sum{synced}")),
            requests: value("gitops_agent_api_requests_total{kind=\"total\"}") as u64,
            writes: value("gitops_agent_api_requests_total{kind=\"writes\"}") as u64,
            dry_runs: value("gitops_agent_api_requests_total{kind=\"dry_runs\"}") as u64,
        })
    }

    /// Waits until the request counters stand still for two seconds: the daemon's background
    /// work after a sync (confirming objects for the watch cache) is over.
    pub async fn quiet(
        &self,
        http: &reqwest::Client,
        sync: &str,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last = self.counters(http, sync).await?.requests;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = self.counters(http, sync).await?.requests;
            if now == last {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "daemon still busy after {limit:?}"
            );
            last = now;
        }
    }

    /// Runs `trigger` and waits for the next successful sync of every one of `syncs`; returns
    /// the time to the last and the API requests the daemon made meanwhile.
    pub async fn triggered_sync<F>(
        &self,
        http: &reqwest::Client,
        syncs: &[String],
        limit: Duration,
        trigger: F,
    ) -> anyhow::Result<SyncRun>
    where
        F: std::future::Future<Output = anyhow::Result<()>>,
    {
        let mut before = Vec::new();
        for s in syncs {
            before.push(self.counters(http, s).await?);
        }
        let started = Instant::now();
        trigger.await?;
        loop {
            let mut all = true;
            for (s, b) in syncs.iter().zip(&before) {
                all &= self.counters(http, s).await?.syncs > b.syncs;
            }
            if all {
                let wall = started.elapsed();
                // The request counters are published just after the sync's own metrics.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut took = 0.0;
                for (s, b) in syncs.iter().zip(&before) {
                    took += self.counters(http, s).await?.sync_seconds - b.sync_seconds;
                }
                let (b, after) = (&before[0], self.counters(http, &syncs[0]).await?);
                return Ok(SyncRun {
                    wall,
                    took: Duration::from_secs_f64(took.max(0.0)),
                    requests: after.requests - b.requests,
                    writes: after.writes - b.writes,
                    dry_runs: after.dry_runs - b.dry_runs,
                    health_wait: None,
                    peak_kib: 0,
                });
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "no sync within {limit:?}; log {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// CPU time and memory of the daemon so far.
    pub fn usage(&self) -> anyhow::Result<crate::proc::Usage> {
        crate::proc::usage(self.pid())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_took_line() {
        let out = "sync a: revision abc\n  summary: 3 unchanged\n  took 0.42s, 1234 API requests (0 writes, 17 dry-runs)\n";
        let r = parse_took(out).unwrap();
        assert_eq!(r.took, Duration::from_millis(420));
        assert_eq!((r.requests, r.writes, r.dry_runs), (1234, 0, 17));
        assert_eq!(r.health_wait, None);
        let waited = "  took 3.50s (2.25s of it waiting on health), 10 API requests (2 writes, 0 dry-runs)\n";
        let r = parse_took(waited).unwrap();
        assert_eq!(r.health_wait, Some(Duration::from_millis(2250)));
        assert_eq!((r.requests, r.writes, r.dry_runs), (10, 2, 0));
    }
}
