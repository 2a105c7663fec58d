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
pub const SAMPLE_LIMIT: Duration = Duration::from_secs(30);

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

/// Drift samples: when the alert came, and when the object was back as Git has it.
#[derive(Debug, Clone, Default)]
pub struct Drift {
    pub detected: Samples,
    pub corrected: Samples,
}

/// Edits a ConfigMap's data with another field manager (a different one each sample, see
/// [`Corpus::drift_targets`]), times the `driftDetected` alert and the value's return
/// (self-heal), and waits for `driftResolved` so the next sample starts clean.
pub async fn drift(api: &Api<ConfigMap>, corpus: &Corpus, sink: &Sink, samples: usize) -> Drift {
    let mut out = Drift::default();
    let targets = corpus.drift_targets(samples);
    if targets.is_empty() {
        out.detected.note = Some("no ConfigMap to edit".into());
    }
    for (i, target) in targets.iter().enumerate() {
        let subject = format!("ConfigMap/{}/{target}", corpus.first_namespace());
        let edited = match edit(api, target, &format!("drift-{i}")).await {
            Ok(e) => e,
            Err(e) => {
                out.detected.note = Some(format!("edit failed: {e}"));
                out.detected.missed += 1;
                continue;
            }
        };
        match wait_alert(sink, "driftDetected", &subject, edited.at).await {
            Some(at) => out.detected.times.push(at.duration_since(edited.at)),
            None => out.detected.missed += 1,
        }
        out.corrected
            .push(edited.wait_corrected(api, SAMPLE_LIMIT).await);
        if wait_alert(sink, "driftResolved", &subject, edited.at)
            .await
            .is_none()
        {
            out.detected.note = Some(format!(
                "sample {i}: no driftResolved within {SAMPLE_LIMIT:?}"
            ));
        }
        tokio::time::sleep(DRIFT_PACE).await;
    }
    out
}

/// An out-of-band edit: what the value was (as Git has it) and when it was changed.
pub struct Edited {
    name: String,
    original: String,
    pub at: Instant,
}

/// Sets a ConfigMap's `value` with field manager `bench-drift` (a merge patch, as a hand
/// edit with kubectl would be).
pub async fn edit(api: &Api<ConfigMap>, name: &str, value: &str) -> anyhow::Result<Edited> {
    let original = api
        .get(name)
        .await?
        .data
        .and_then(|mut d| d.remove("value"))
        .unwrap_or_default();
    let pp = PatchParams {
        field_manager: Some("bench-drift".into()),
        ..Default::default()
    };
    let patch = Patch::Merge(json!({"data": {"value": value}}));
    let at = Instant::now();
    api.patch(name, &pp, &patch).await?;
    Ok(Edited {
        name: name.to_owned(),
        original,
        at,
    })
}

impl Edited {
    /// Time from the edit until the value is back; `None` past `limit`.
    pub async fn wait_corrected(&self, api: &Api<ConfigMap>, limit: Duration) -> Option<Duration> {
        while self.at.elapsed() < limit {
            if let Ok(Some(cm)) = api.get_opt(&self.name).await
                && cm.data.as_ref().and_then(|d| d.get("value")) == Some(&self.original)
            {
                return Some(self.at.elapsed());
            }
            tokio::time::sleep(poll_pace(self.at)).await;
        }
        None
    }
}

/// 10 ms for the first two seconds (the agent's latencies), then 100 ms (Flux's interval).
fn poll_pace(since: Instant) -> Duration {
    match since.elapsed() < Duration::from_secs(2) {
        true => Duration::from_millis(10),
        false => Duration::from_millis(100),
    }
}

/// Commits the hot ConfigMap with `value` under `deploy/` and pushes; the commit id.
pub fn push_hot(repo: &Repo, corpus: &Corpus, value: &str) -> anyhow::Result<String> {
    let (path, text) = corpus.hot_file(value);
    repo.push_file(&format!("deploy/{path}"), &text)
}

impl Samples {
    /// A sample that could not be taken, and why.
    pub fn fail(&mut self, why: String) {
        self.note = Some(why);
        self.missed += 1;
    }

    /// One sample, or a miss.
    pub fn push(&mut self, sample: Option<Duration>) {
        match sample {
            Some(d) => self.times.push(d),
            None => self.missed += 1,
        }
    }
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
        if let Err(e) = push_hot(repo, corpus, &value) {
            out.fail(format!("push failed: {e}"));
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
        out.push(wait_value(api, &value, started, SAMPLE_LIMIT).await);
        // The receiver allows a burst of 5 fetches per source, then 1 a second: pace the
        // samples like real pushes, so the bench times syncing, not the rate limit.
        tokio::time::sleep(WEBHOOK_PACE).await;
    }
    out
}

const WEBHOOK_PACE: Duration = Duration::from_millis(1100);

/// Polls the hot ConfigMap until its value is `value`: the time from `started`.
pub async fn wait_value(
    api: &Api<ConfigMap>,
    value: &str,
    started: Instant,
    limit: Duration,
) -> Option<Duration> {
    while started.elapsed() < limit {
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
        tokio::time::sleep(poll_pace(started)).await;
    }
    None
}
