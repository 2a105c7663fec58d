//! Latencies measured against the running daemon: out-of-band drift to the
//! `driftDetected` alert at the sink, and a signed GitHub push webhook to the change
//! visible in the cluster. Each is sampled a bounded number of times, each sample bounded
//! in time; a sample that times out is counted as missed, not faked.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::corpus::{Corpus, HOT};
use crate::git::Repo;
use crate::sink::Sink;

/// Pause between drift samples. Each sample raises two alerts (detected, resolved) and a
/// sink delivers at most one a second after a burst of ten (the agent's default rate
/// limit), so back-to-back samples would time the rate limiter, not the detection.
const DRIFT_PACE: Duration = Duration::from_millis(2500);

/// Per-sample limit: far beyond any target, so a timeout means "broken", not "slow".
const SAMPLE_LIMIT: Duration = Duration::from_secs(30);

/// Samples of one latency, with how many never completed.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub times: Vec<Duration>,
    pub missed: usize,
    pub note: Option<String>,
}

impl Samples {
    pub fn median(&self) -> Option<Duration> {
        let mut t = self.times.clone();
        t.sort();
        t.get(t.len() / 2).copied()
    }

    pub fn worst(&self) -> Option<Duration> {
        self.times.iter().max().copied()
    }
}

/// Edits a ConfigMap's data with another field manager (a different one each sample, see
/// [`Corpus::drift_targets`]), times the `driftDetected` alert, then waits for
/// `driftResolved` (self-heal) so the next sample starts clean.
pub async fn drift(api: &Api<ConfigMap>, corpus: &Corpus, sink: &Sink, samples: usize) -> Samples {
    let pp = PatchParams {
        field_manager: Some("bench-drift".into()),
        ..Default::default()
    };
    let mut out = Samples::default();
    let targets = corpus.drift_targets(samples);
    if targets.is_empty() {
        out.note = Some("no ConfigMap to edit".into());
    }
    for (i, target) in targets.iter().enumerate() {
        let subject = format!("ConfigMap/{}/{target}", corpus.first_namespace());
        let started = Instant::now();
        let patch = Patch::Merge(json!({"data": {"value": format!("drift-{i}")}}));
        if let Err(e) = api.patch(target, &pp, &patch).await {
            out.note = Some(format!("edit failed: {e}"));
            out.missed += 1;
            continue;
        }
        match wait_alert(sink, "driftDetected", &subject, started).await {
            Some(at) => out.times.push(at.duration_since(started)),
            None => {
                out.missed += 1;
                continue;
            }
        }
        if wait_alert(sink, "driftResolved", &subject, started)
            .await
            .is_none()
        {
            out.note = Some(format!(
                "sample {i}: no driftResolved within {SAMPLE_LIMIT:?}"
            ));
        }
        tokio::time::sleep(DRIFT_PACE).await;
    }
    out
}

async fn wait_alert(sink: &Sink, kind: &str, subject: &str, since: Instant) -> Option<Instant> {
    while since.elapsed() < SAMPLE_LIMIT {
        if let Some(a) = sink.find(kind, subject, since) {
            return Some(a.at);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Where the daemon's webhook listens and what repository URL its payload names.
pub struct Hook<'a> {
    pub http: &'a reqwest::Client,
    pub port: u16,
    pub url: &'a str,
    pub secret: &'a [u8],
}

impl Hook<'_> {
    /// Posts a signed GitHub push webhook for the corpus repository's main branch.
    pub async fn post(&self, delivery: &str) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&json!({
            "ref": "refs/heads/main",
            "after": "0000000000000000000000000000000000000000",
            "repository": {"full_name": "bench/corpus", "clone_url": self.url, "html_url": self.url,
                           "git_url": self.url, "ssh_url": self.url},
            "pusher": {"name": "bench"},
        }))?;
        let signature = gitops_agent::http::signature::signature(self.secret, &body);
        let r = self
            .http
            .post(format!("http://127.0.0.1:{}/hooks/github", self.port))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", delivery)
            .header("Content-Type", "application/json")
            .header("X-Hub-Signature-256", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("webhook failed: {e}"))?;
        anyhow::ensure!(r.status() == 202, "webhook answered {}", r.status());
        Ok(())
    }
}

/// Pushes a commit changing the hot ConfigMap, posts a signed GitHub push webhook, and
/// polls (every 10 ms) until the new value is in the cluster.
pub async fn webhook(
    api: &Api<ConfigMap>,
    repo: &Repo,
    corpus: &Corpus,
    hook: &Hook<'_>,
    samples: usize,
) -> Samples {
    let mut out = Samples::default();
    for i in 0..samples {
        let value = format!("hook-{i}");
        let (path, text) = corpus.hot_file(&value);
        if let Err(e) = repo.push_file(&format!("deploy/{path}"), &text) {
            out.note = Some(format!("push failed: {e}"));
            out.missed += 1;
            continue;
        }
        let started = Instant::now();
        if let Err(e) = hook
            .post(&format!("bench-{i}-{}", std::process::id()))
            .await
        {
            out.note = Some(e.to_string());
            out.missed += 1;
            continue;
        }
        match wait_value(api, &value, started).await {
            Some(d) => out.times.push(d),
            None => out.missed += 1,
        }
        // The receiver allows a burst of 5 fetches per source, then 1 a second: pace the
        // samples like real pushes, so the bench times syncing, not the rate limit.
        tokio::time::sleep(WEBHOOK_PACE).await;
    }
    out
}

const WEBHOOK_PACE: Duration = Duration::from_millis(1100);

async fn wait_value(api: &Api<ConfigMap>, value: &str, started: Instant) -> Option<Duration> {
    while started.elapsed() < SAMPLE_LIMIT {
        if let Ok(Some(cm)) = api.get_opt(HOT).await
            && cm
                .data
                .as_ref()
                .and_then(|d| d.get("value"))
                .map(String::as_str)
                == Some(value)
        {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}
