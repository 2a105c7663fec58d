//! The daemon (`gitops-agent run`, the real binary) end to end: a signed GitHub push
//! webhook leads to the new revision applied; bad webhooks get their 4xx and trigger
//! nothing; drift raises exactly one signed alert at a local HTTP sink and self-heal
//! restores the object; a local directory is followed; the config file is reloaded (an
//! invalid one rejected); and with two replicas, the survivor takes over from a killed leader.

#[path = "../harness/git.rs"]
mod git;
#[path = "../harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use git::{GitDaemon, Repo, Upstream};
use harness::{TestNamespace, borrowed, cm, configmap_files, control_plane};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const SECRET: &str = "e2e-webhook-secret";
const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `gitops-agent run`, killed on drop; its log is kept for failure messages.
struct AgentProcess {
    child: Child,
    log: PathBuf,
    metrics: u16,
    webhook: u16,
}

impl AgentProcess {
    fn start(dir: &Path, name: &str, config: &Path, metrics: u16, webhook: u16) -> AgentProcess {
        let kubeconfig = control_plane().kubeconfig();
        Self::start_as(dir, name, config, (metrics, webhook), kubeconfig)
    }

    /// An agent with its own kubeconfig (as a service account, say).
    fn start_as(
        dir: &Path,
        name: &str,
        config: &Path,
        (metrics, webhook): (u16, u16),
        kubeconfig: &Path,
    ) -> AgentProcess {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gitops-agent"))
            .args([
                "run",
                "--log-format",
                "json",
                "--log-level",
                "info,gitops_agent=debug",
                "--config",
            ])
            .arg(config)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env("POD_NAME", name)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        AgentProcess {
            child,
            log,
            metrics,
            webhook,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn ready(&self, http: &reqwest::Client) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = http
                .get(format!("http://127.0.0.1:{}/readyz", self.metrics))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self, http: &reqwest::Client) -> String {
        http.get(format!("http://127.0.0.1:{}/metrics", self.metrics))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until the metrics sample `series` reaches `at_least`, failing after `within`.
    async fn wait_sample(
        &self,
        http: &reqwest::Client,
        series: &str,
        at_least: f64,
        within: Duration,
    ) {
        let started = Instant::now();
        while sample(&self.metrics(http).await, series) < at_least {
            assert!(
                started.elapsed() < within,
                "{series} never reached {at_least}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the metrics hold exactly `line`, failing after `WAIT`.
    async fn wait_line(&self, http: &reqwest::Client, line: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let metrics = self.metrics(http).await;
            if metrics.lines().any(|l| l == line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {line}:\n{metrics}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn push_hook(
        &self,
        http: &reqwest::Client,
        body: &[u8],
        signature: Option<&str>,
        content_type: &str,
    ) -> u16 {
        let mut req = http
            .post(format!("http://127.0.0.1:{}/hooks/github", self.webhook))
            .header("X-GitHub-Event", "push")
            .header(
                "X-GitHub-Delivery",
                format!("{:032x}", rand::random::<u128>()),
            )
            .header("Content-Type", content_type)
            .body(body.to_vec());
        if let Some(s) = signature {
            req = req.header("X-Hub-Signature-256", s);
        }
        req.send().await.unwrap().status().as_u16()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn oversized_status(port: u16, signature: &str, len: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head = format!(
        "POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\n\
         X-GitHub-Delivery: big-1\r\nX-Hub-Signature-256: {signature}\r\nContent-Length: {len}\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(WAIT, sock.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let line = String::from_utf8_lossy(&buf[..n]).to_string();
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"))
}

/// Whether a metrics exposition says this replica leads (the sample line, not the HELP text).
fn is_leader(metrics: &str) -> bool {
    metrics.lines().any(|l| l == "gitops_agent_leader 1")
}

fn push_payload(url: &str, git_ref: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": git_ref,
        "after": "0000000000000000000000000000000000000000",
        "repository": {"full_name": "org/apps", "clone_url": url, "html_url": url, "git_url": url, "ssh_url": url},
        "pusher": {"name": "e2e"},
    }))
    .unwrap()
}

async fn wait_value(
    api: &Api<ConfigMap>,
    name: &str,
    value: &str,
    agent: &AgentProcess,
) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(Some(c)) = api.get_opt(name).await
            && c.data
                .as_ref()
                .and_then(|d| d.get("value"))
                .map(String::as_str)
                == Some(value)
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT,
            "ConfigMap/{name} never got value {value:?}; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Setup {
    _upstream: Upstream,
    repo: Repo,
    _daemon: GitDaemon,
    url: String,
    dir: tempfile::TempDir,
    ns: TestNamespace,
    client: Client,
    http: reqwest::Client,
}

async fn setup(prefix: &str, files: &[(&str, &str)]) -> Setup {
    harness::init_logging();
    let client = control_plane().client().await;
    let ns = TestNamespace::create(&client, prefix).await;
    let upstream = Upstream::new();
    let repo = upstream.create("apps");
    repo.push("main", files, &[]);
    let daemon = GitDaemon::start(upstream.root());
    let url = daemon.url("apps");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("webhook")).unwrap();
    std::fs::write(dir.path().join("webhook/github"), format!("{SECRET}\n")).unwrap();
    Setup {
        _upstream: upstream,
        repo,
        _daemon: daemon,
        url,
        dir,
        ns,
        client,
        http: reqwest::Client::new(),
    }
}

impl Setup {
    /// Another repository on the same Git server.
    fn repo_named(&self, name: &str) -> Repo {
        self._upstream.create(name)
    }
}

/// A config with one Git source (polled hourly, so only webhooks trigger) and one sync.
fn config(s: &Setup, state: &str, metrics: u16, webhook: u16, extra: &str) -> String {
    format!(
        "stateDir: {dir}/{state}\nnamespace: {ns}\nmetrics: {{listen: \"127.0.0.1:{metrics}\"}}\n\
         webhook: {{listen: \"127.0.0.1:{webhook}\", secretsDir: {dir}/webhook}}\n{extra}\
         sources:\n  - name: apps\n    url: {url}\n    interval: 1h\n\
         syncs:\n  - name: apps\n    source: apps\n    path: deploy\n    namespace: {ns}\n    health: {{wait: false}}\n",
        dir = s.dir.path().display(),
        ns = s.ns.name,
        url = s.url,
    )
}

#[tokio::test]
async fn signed_push_webhook_applies_the_new_revision_and_bad_ones_get_4xx() {
    let s = setup("hook", &[("deploy/a.yaml", &cm("a", "1"))]).await;
    let path = s.dir.path().join("config.yaml");
    let (m, w) = (free_port(), free_port());
    std::fs::write(&path, config(&s, "state", m, w, "")).unwrap();
    let agent = AgentProcess::start(s.dir.path(), "solo", &path, m, w);
    agent.ready(&s.http).await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    wait_value(&cms, "a", "1", &agent).await;

    let body = push_payload(&s.url, "refs/heads/main");
    let good = gitops_agent::http::signature::signature(SECRET.as_bytes(), &body);
    // Every bad input gets its 4xx and triggers nothing.
    s.repo
        .push("main", &[("deploy/a.yaml", &cm("a", "2"))], &[]);
    assert_eq!(
        agent
            .push_hook(&s.http, &body, None, "application/json")
            .await,
        401
    );
    assert_eq!(
        agent
            .push_hook(&s.http, &body, Some("sha256=00"), "application/json")
            .await,
        401
    );
    assert_eq!(
        agent
            .push_hook(
                &s.http,
                &body,
                Some(&gitops_agent::http::signature::signature(b"wrong", &body)),
                "application/json"
            )
            .await,
        401
    );
    assert_eq!(
        agent
            .push_hook(&s.http, &body, Some(&good), "text/plain")
            .await,
        415
    );
    let broken = b"{not json".to_vec();
    assert_eq!(
        agent
            .push_hook(
                &s.http,
                &broken,
                Some(&gitops_agent::http::signature::signature(
                    SECRET.as_bytes(),
                    &broken
                )),
                "application/json"
            )
            .await,
        400
    );
    // Oversized: refused from the declared length, before the body is read (so over a raw
    // socket: an HTTP client would still be writing the body when the answer comes).
    let big = vec![b' '; 2 * 1024 * 1024];
    assert_eq!(
        oversized_status(
            agent.webhook,
            &gitops_agent::http::signature::signature(SECRET.as_bytes(), &big),
            big.len()
        )
        .await,
        413
    );
    let other = push_payload(&s.url, "refs/heads/feature");
    assert_eq!(
        agent
            .push_hook(
                &s.http,
                &other,
                Some(&gitops_agent::http::signature::signature(
                    SECRET.as_bytes(),
                    &other
                )),
                "application/json"
            )
            .await,
        202
    );
    // The receiver decides before it answers: a push that matches no source triggers
    // nothing, so there is nothing to wait for.
    let metrics = agent.metrics(&s.http).await;
    let unmatched = r#"gitops_agent_webhook_requests_total{provider="github",result="unmatched"}"#;
    assert_eq!(sample(&metrics, unmatched), 1.0, "{metrics}");
    assert_eq!(
        cms.get("a").await.unwrap().data.unwrap()["value"],
        "1",
        "nothing applied without a valid push to main"
    );

    // The signed push to main: applied.
    assert_eq!(
        agent
            .push_hook(&s.http, &body, Some(&good), "application/json")
            .await,
        202
    );
    let took = wait_value(&cms, "a", "2", &agent).await;
    eprintln!("webhook to applied: {} ms", took.as_millis());

    let metrics = agent.metrics(&s.http).await;
    for needle in [
        "gitops_agent_webhook_requests_total{provider=\"github\",result=\"accepted\"} 1",
        "gitops_agent_webhook_requests_total{provider=\"github\",result=\"unauthorized\"} 3",
        "gitops_agent_webhook_requests_total{provider=\"github\",result=\"payload_too_large\"} 1",
        "gitops_agent_sync_duration_seconds_count{sync=\"apps\",result=\"succeeded\"}",
    ] {
        assert!(metrics.contains(needle), "{needle:?} missing in\n{metrics}");
    }
    assert!(
        is_leader(&metrics),
        "without leader election the single replica leads"
    );
}

/// The value of one sample line of the metrics text (`name{labels} value`).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_webhook_for_an_unchanged_revision_resyncs_from_the_watch_cache() {
    let mut files = configmap_files(12);
    files.push(("deploy/web.yaml".into(), deployment("web")));
    let s = setup("resync", &borrowed(&files)).await;
    let path = s.dir.path().join("config.yaml");
    let (m, w) = (free_port(), free_port());
    // Self-heal: a detect-only sync never re-applies an unchanged revision. The default
    // health wait: the Deployment's health comes from the watch too.
    let text = config(&s, "state", m, w, "")
        .replace("    health: {wait: false}\n", "    selfHeal: true\n");
    std::fs::write(&path, text).unwrap();
    let agent = AgentProcess::start(s.dir.path(), "solo", &path, m, w);
    agent.ready(&s.http).await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    wait_value(&cms, "cm11", "1", &agent).await;

    let synced = r#"gitops_agent_sync_duration_seconds_count{sync="apps",result="succeeded"}"#;
    let total = r#"gitops_agent_api_requests_total{kind="total"}"#;
    let writes = r#"gitops_agent_api_requests_total{kind="writes"}"#;
    let dry_runs = r#"gitops_agent_api_requests_total{kind="dry_runs"}"#;
    // After the first sync the daemon confirms each object once in the background; wait
    // until the watch cache vouches for every object, and knows the Deployment healthy
    // (else the resync would rightly read it while waiting for health).
    let confirmed = r#"gitops_agent_unconfirmed_objects{sync="apps"} 0"#;
    agent.wait_sample(&s.http, synced, 1.0, WAIT).await;
    agent.wait_line(&s.http, confirmed).await;
    agent
        .wait_line(&s.http, r#"gitops_agent_unhealthy_objects{sync="apps"} 0"#)
        .await;

    // A push webhook for the revision already applied: the daemon resyncs it, and as the
    // watch cache knows every object unchanged on both sides, it sends no dry-run and
    // writes nothing.
    let resync = || {
        let (s, agent) = (&s, &agent);
        async move {
            let before = agent.metrics(&s.http).await;
            let body = push_payload(&s.url, "refs/heads/main");
            let signature = gitops_agent::http::signature::signature(SECRET.as_bytes(), &body);
            let status = agent
                .push_hook(&s.http, &body, Some(&signature), "application/json")
                .await;
            assert_eq!(status, 202);
            let deadline = Instant::now() + WAIT;
            let after = loop {
                // The request counters are read at the scrape, so they are current.
                let now = agent.metrics(&s.http).await;
                if sample(&now, synced) > sample(&before, synced) {
                    break now;
                }
                assert!(
                    Instant::now() < deadline,
                    "no resync:\n{now}\n{}",
                    agent.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            [total, writes, dry_runs].map(|k| sample(&after, k) - sample(&before, k))
        }
    };
    let [requests, w, d] = resync().await;
    assert_eq!((w, d), (0.0, 0.0), "writes, dry-runs");
    assert!(
        requests <= 2.0,
        "a cached resync reads only the inventory, and health comes from the watch; made {requests} requests"
    );

    // Drift healed by the detector leaves the object confirmed again: the next resync
    // still costs no dry-run.
    let pp = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    cms.patch(
        "cm3",
        &pp,
        &Patch::Merge(json!({"data": {"value": "edited"}})),
    )
    .await
    .unwrap();
    wait_value(&cms, "cm3", "1", &agent).await;
    agent.wait_line(&s.http, confirmed).await;
    let [_, w, d] = resync().await;
    assert_eq!((w, d), (0.0, 0.0), "writes, dry-runs after a heal");
}

#[tokio::test]
async fn local_directory_is_followed_and_config_reloads_keep_the_last_good_one() {
    let s = setup("localdir", &[]).await;
    let local = s.dir.path().join("local");
    std::fs::create_dir_all(local.join("deploy")).unwrap();
    std::fs::write(local.join("deploy/a.yaml"), cm("a", "1")).unwrap();
    let (m, w) = (free_port(), free_port());
    let cfg = |syncs: &str| {
        format!(
            "stateDir: {dir}/state\nnamespace: {ns}\nmetrics: {{listen: \"127.0.0.1:{m}\"}}\n\
             sources:\n  - name: local\n    directory: {dir}/local\n    interval: 1h\n\
             syncs:\n  - name: local\n    source: local\n    path: deploy\n    namespace: {ns}\n    health: {{wait: false}}\n{syncs}",
            dir = s.dir.path().display(),
            ns = s.ns.name,
        )
    };
    let path = s.dir.path().join("config.yaml");
    std::fs::write(&path, cfg("")).unwrap();
    let agent = AgentProcess::start(s.dir.path(), "local", &path, m, w);
    agent.ready(&s.http).await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    wait_value(&cms, "a", "1", &agent).await;

    // Edit a file: the cluster follows.
    std::fs::write(local.join("deploy/a.yaml"), cm("a", "2")).unwrap();
    wait_value(&cms, "a", "2", &agent).await;

    // An invalid config is rejected with its errors; the running one keeps working.
    std::fs::write(&path, format!("{}bogusField: 1\n", cfg(""))).unwrap();
    let deadline = Instant::now() + WAIT;
    while !agent.log().contains("new configuration rejected") {
        assert!(Instant::now() < deadline, "{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        agent.log().contains("bogusField"),
        "the rejection names the problem"
    );
    std::fs::write(local.join("deploy/a.yaml"), cm("a", "3")).unwrap();
    wait_value(&cms, "a", "3", &agent).await;

    // A valid new config is picked up without a restart: a second sync appears.
    std::fs::create_dir_all(local.join("more")).unwrap();
    std::fs::write(local.join("more/b.yaml"), cm("b", "new")).unwrap();
    let more = format!(
        "  - name: more\n    source: local\n    path: more\n    namespace: {}\n    health: {{wait: false}}\n",
        s.ns.name
    );
    std::fs::write(&path, cfg(&more)).unwrap();
    wait_value(&cms, "b", "new", &agent).await;
}

#[tokio::test]
async fn the_survivor_takes_over_when_the_leader_dies() {
    let s = setup("failover", &[("deploy/a.yaml", &cm("a", "1"))]).await;
    let election = "leaderElection: {enabled: true, leaseName: e2e-lease}\n";
    let ports = [(free_port(), free_port()), (free_port(), free_port())];
    let mut agents = Vec::new();
    for (i, (m, w)) in ports.iter().enumerate() {
        let path = s.dir.path().join(format!("config-{i}.yaml"));
        std::fs::write(&path, config(&s, &format!("state-{i}"), *m, *w, election)).unwrap();
        agents.push(AgentProcess::start(
            s.dir.path(),
            &format!("replica-{i}"),
            &path,
            *m,
            *w,
        ));
    }
    for a in &agents {
        a.ready(&s.http).await;
    }
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    wait_value(&cms, "a", "1", &agents[0]).await;
    let leader = {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut leading = Vec::new();
            let mut seen = Vec::new();
            for (i, a) in agents.iter().enumerate() {
                let m = a.metrics(&s.http).await;
                if is_leader(&m) {
                    leading.push(i);
                }
                seen.push(
                    m.lines()
                        .filter(|l| l.contains("leader"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
            }
            assert!(
                leading.len() <= 1,
                "two leaders at once: {seen:?}\n{}\n----\n{}",
                agents[0].log(),
                agents[1].log()
            );
            if let [l] = leading.as_slice() {
                break *l;
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let follower = 1 - leader;

    // A webhook that reaches the follower is relayed to the leader.
    s.repo
        .push("main", &[("deploy/a.yaml", &cm("a", "2"))], &[]);
    let body = push_payload(&s.url, "refs/heads/main");
    let sig = gitops_agent::http::signature::signature(SECRET.as_bytes(), &body);
    assert_eq!(
        agents[follower]
            .push_hook(&s.http, &body, Some(&sig), "application/json")
            .await,
        202
    );
    wait_value(&cms, "a", "2", &agents[leader]).await;

    // The leader dies without releasing its lease: the survivor takes over within the
    // lease duration (15 s) and applies the next push.
    let killed = Instant::now();
    agents[leader].kill();
    s.repo
        .push("main", &[("deploy/a.yaml", &cm("a", "3"))], &[]);
    let survivor = &agents[follower];
    let deadline = Instant::now() + Duration::from_secs(40);
    while !is_leader(&survivor.metrics(&s.http).await) {
        assert!(
            Instant::now() < deadline,
            "no takeover:\n{}",
            survivor.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Reported, not asserted: the machine is shared and slow at times.
    eprintln!("takeover after {} ms", killed.elapsed().as_millis());
    assert_eq!(
        survivor
            .push_hook(&s.http, &body, Some(&sig), "application/json")
            .await,
        202
    );
    wait_value(&cms, "a", "3", survivor).await;
}

/// An HTTP sink on loopback that records every alert it receives with its signature.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Received>>>);

/// One alert as the sink received it: parsed, its signature header, the raw body.
type Received = (Value, String, Vec<u8>);

impl Sink {
    async fn start(&self) -> u16 {
        use axum::routing::post;
        let me = self.clone();
        let app = axum::Router::new().route(
            "/alerts",
            post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let me = me.clone();
                    async move {
                        let sig = headers
                            .get("x-signature-256")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        me.0.lock().unwrap().push((v, sig, body.to_vec()));
                        "ok"
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    }

    /// Starts the sink and returns the `alerts:` config for it, its signing key in a Secret.
    async fn configured(&self, s: &Setup) -> String {
        let port = self.start().await;
        let secret_api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(s.client.clone(), &s.ns.name);
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "metadata": {"name": "alert-key"}, "stringData": {"key": "alert-signing-key"}
        }))
        .unwrap();
        secret_api
            .create(&Default::default(), &secret)
            .await
            .unwrap();
        format!(
            "alerts:\n  sinks:\n    - type: webhook\n      name: ops\n      url: http://127.0.0.1:{port}/alerts\n      secretRef: {{name: alert-key, key: key}}\n"
        )
    }

    /// Every alert received, batched ones unpacked, in order.
    fn alerts(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for v in self.events() {
            match v["batch"].as_array() {
                Some(batch) => out.extend(batch.iter().cloned()),
                None => out.push(v),
            }
        }
        out
    }

    fn events(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(v, _, _)| v.clone())
            .collect()
    }
}

#[tokio::test]
async fn drift_raises_one_signed_alert_and_self_heal_restores() {
    let web = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers: [{name: web, image: registry.example/web:1}]\n";
    let s = setup(
        "alert",
        &[("deploy/a.yaml", &cm("a", "1")), ("deploy/web.yaml", web)],
    )
    .await;
    let sink = Sink::default();
    let alerts = sink.configured(&s).await;
    let (m, w) = (free_port(), free_port());
    let path = s.dir.path().join("config.yaml");
    let text = config(&s, "state", m, w, &alerts).replace(
        "    health: {wait: false}\n",
        "    health: {wait: false}\n    selfHeal: true\n",
    );
    std::fs::write(&path, text).unwrap();
    let agent = AgentProcess::start(s.dir.path(), "alerting", &path, m, w);
    agent.ready(&s.http).await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    wait_value(&cms, "a", "1", &agent).await;
    // The watches have seen every object and found it as Git has it.
    let confirmed = r#"gitops_agent_unconfirmed_objects{sync="apps"} 0"#;
    agent.wait_line(&s.http, confirmed).await;

    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(s.client.clone(), &s.ns.name);
    let changed = Instant::now();
    harness::scale(&deployments, "web", "kubectl-scale", 5).await;
    let deadline = Instant::now() + WAIT;
    let detected = loop {
        if let Some(e) = sink
            .events()
            .into_iter()
            .find(|e| e["event"]["type"] == "driftDetected")
        {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no drift alert; sink got {:?}\n{}",
            sink.events(),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("drift to alert: {} ms", changed.elapsed().as_millis());
    let ev = &detected["event"];
    assert_eq!(ev["subject"], format!("Deployment/{}/web", s.ns.name));
    assert_eq!(ev["manager"], "kubectl-scale");
    let fields = ev["fields"].as_array().unwrap();
    let replicas = fields
        .iter()
        .find(|f| f["path"] == "spec.replicas")
        .unwrap_or_else(|| panic!("{fields:?}"));
    assert_eq!(
        (&replicas["before"], &replicas["after"]),
        (&json!(2), &json!(5))
    );
    // Self-heal put it back, and a resolution followed.
    let deadline = Instant::now() + WAIT;
    while deployments.get("web").await.unwrap().spec.unwrap().replicas != Some(2) {
        assert!(Instant::now() < deadline, "not healed:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + WAIT;
    while !sink
        .events()
        .iter()
        .any(|e| e["event"]["type"] == "driftResolved")
    {
        assert!(
            Instant::now() < deadline,
            "no resolved alert: {:?}",
            sink.events()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let detected_count = sink
        .events()
        .iter()
        .filter(|e| e["event"]["type"] == "driftDetected")
        .count();
    assert_eq!(
        detected_count,
        1,
        "exactly one drift alert: {:?}",
        sink.events()
    );
    // Every alert is signed with the configured key over its exact body.
    for (_, sig, body) in sink.0.lock().unwrap().iter() {
        assert_eq!(
            sig,
            &gitops_agent::http::signature::signature(b"alert-signing-key", body)
        );
    }
}

/// A signed GitHub push webhook for `main` of the setup's repository: accepted.
async fn signed_push_to_main(s: &Setup, agent: &AgentProcess) {
    let body = push_payload(&s.url, "refs/heads/main");
    let sig = gitops_agent::http::signature::signature(SECRET.as_bytes(), &body);
    assert_eq!(
        agent
            .push_hook(&s.http, &body, Some(&sig), "application/json")
            .await,
        202
    );
}

/// A Deployment that never becomes available: its pods fit no node.
/// A Deployment that becomes available (kwok runs its Pod).
fn deployment(name: &str) -> String {
    stuck_deployment(name).replace(
        "      nodeSelector: {gitops-agent.io/no-such-node: \"true\"}\n",
        "",
    )
}

fn stuck_deployment(name: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      nodeSelector: {{gitops-agent.io/no-such-node: \"true\"}}\n      containers: [{{name: c, image: registry.example/c:1}}]\n"
    )
}

/// Syncs run at once: while one waits minutes on its health timeout, a webhook for another
/// sync is applied, and the waiting one is still waiting when it is.
#[tokio::test]
async fn a_sync_waiting_on_health_does_not_delay_a_webhook_for_another() {
    let s = setup("concurrent", &[("deploy/a.yaml", &cm("a", "1"))]).await;
    let slow = s.repo_named("slow");
    slow.push(
        "main",
        &[("deploy/stuck.yaml", &stuck_deployment("stuck"))],
        &[],
    );
    let slow_url = s._daemon.url("slow");
    let path = s.dir.path().join("config.yaml");
    let (m, w) = (free_port(), free_port());
    let text = config(&s, "state", m, w, "").replace(
        "syncs:\n",
        &format!(
            "  - name: slow\n    url: {slow_url}\n    interval: 1h\nsyncs:\n  - name: slow\n    source: slow\n    path: deploy\n    namespace: {ns}\n    health: {{timeout: 10m}}\n",
            ns = s.ns.name
        ),
    );
    std::fs::write(&path, text).unwrap();
    let agent = AgentProcess::start(s.dir.path(), "solo", &path, m, w);
    agent.ready(&s.http).await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    wait_value(&cms, "a", "1", &agent).await;
    // The slow sync has applied its Deployment and waits for it to become healthy.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(s.client.clone(), &s.ns.name);
    let started = Instant::now();
    while deployments.get_opt("stuck").await.unwrap().is_none() {
        assert!(
            started.elapsed() < WAIT,
            "slow sync never applied:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    s.repo
        .push("main", &[("deploy/a.yaml", &cm("a", "2"))], &[]);
    signed_push_to_main(&s, &agent).await;
    let took = wait_value(&cms, "a", "2", &agent).await;
    let metrics = agent.metrics(&s.http).await;
    assert_eq!(
        sample(
            &metrics,
            "gitops_agent_sync_duration_seconds_count{sync=\"slow\",result=\"failed\"}"
        ),
        0.0,
        "the slow sync is still waiting on health"
    );
    assert!(
        !metrics.contains("gitops_agent_sync_duration_seconds_count{sync=\"slow\""),
        "the slow sync has not finished:\n{metrics}"
    );
    eprintln!(
        "webhook to applied while another sync waits on health: {} ms",
        took.as_millis()
    );
}

/// Three syncs of one repository: one fetch serves them all, and they apply the same commit.
#[tokio::test]
async fn three_syncs_of_one_repository_share_one_fetch_per_pass() {
    let files = [
        ("a/cm.yaml", cm("a", "1")),
        ("b/cm.yaml", cm("b", "1")),
        ("c/cm.yaml", cm("c", "1")),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    let s = setup("monorepo", &files).await;
    let path = s.dir.path().join("config.yaml");
    let (m, w) = (free_port(), free_port());
    let mut syncs = String::from("syncs:\n");
    for name in ["a", "b", "c"] {
        syncs.push_str(&format!(
            "  - name: {name}\n    source: apps\n    path: {name}\n    namespace: {ns}\n    health: {{wait: false}}\n",
            ns = s.ns.name
        ));
    }
    let text = config(&s, "state", m, w, "");
    let text = format!("{}{syncs}", &text[..text.find("syncs:\n").unwrap()]);
    std::fs::write(&path, text).unwrap();
    let agent = AgentProcess::start(s.dir.path(), "solo", &path, m, w);
    agent.ready(&s.http).await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    for name in ["a", "b", "c"] {
        wait_value(&cms, name, "1", &agent).await;
    }
    let fetches = "gitops_agent_git_fetch_duration_seconds_count{source=\"apps\"}";
    let metrics = agent.metrics(&s.http).await;
    assert_eq!(sample(&metrics, fetches), 1.0, "{metrics}");

    let head = s.repo.push(
        "main",
        &[
            ("a/cm.yaml", &cm("a", "2")),
            ("b/cm.yaml", &cm("b", "2")),
            ("c/cm.yaml", &cm("c", "2")),
        ],
        &[],
    );
    signed_push_to_main(&s, &agent).await;
    for name in ["a", "b", "c"] {
        wait_value(&cms, name, "2", &agent).await;
    }
    // Wait for all three syncs to be recorded, then count.
    let started = Instant::now();
    let metrics = loop {
        let metrics = agent.metrics(&s.http).await;
        let revision = format!("revision=\"refs/heads/main@sha1:{head}\"}} 1");
        let applied = metrics
            .lines()
            .filter(|l| {
                l.starts_with("gitops_agent_last_applied_revision{") && l.ends_with(&revision)
            })
            .count();
        if applied == 3 {
            break metrics;
        }
        assert!(
            started.elapsed() < WAIT,
            "not all three at {head}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        sample(&metrics, fetches),
        2.0,
        "one fetch per pass:\n{metrics}"
    );
}

/// Fenced leadership: replica A (a service account, so the API server's audit log names
/// it) leads and its pass waits on health; its Lease rights are taken away, so its
/// renewals fail; replica B takes over. From the lease's acquisition by B until B's own
/// pass has ended (A's would have ended before it), the audit log shows no write by A.
#[tokio::test]
async fn a_leader_that_loses_its_lease_mid_pass_writes_nothing_after() {
    let mut files = configmap_files(300);
    files.push(("deploy/stuck.yaml".into(), stuck_deployment("stuck")));
    let s = setup("fence", &borrowed(&files)).await;
    let ns = s.ns.name.clone();
    let rbac = |kind: &str, name: &str, resources: &str| -> Value {
        if kind == "Role" {
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
                   "rules": [{"apiGroups": ["", "apps", "coordination.k8s.io"], "resources": resources.split(',').collect::<Vec<_>>(), "verbs": ["*"]}]})
        } else {
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                   "subjects": [{"kind": "ServiceAccount", "name": "replica-a", "namespace": ns}]})
        }
    };
    let dynamic = |kind: &str| {
        let ar = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "rbac.authorization.k8s.io",
            "v1",
            kind,
        ));
        Api::<kube::api::DynamicObject>::namespaced_with(s.client.clone(), &ns, &ar)
    };
    let pp = PatchParams::apply("e2e");
    for (name, resources) in [
        ("agent", "configmaps,deployments,events"),
        ("lease", "leases"),
    ] {
        for kind in ["Role", "RoleBinding"] {
            let obj = rbac(kind, name, resources);
            dynamic(kind)
                .patch(name, &pp, &Patch::Apply(&obj))
                .await
                .unwrap();
        }
    }
    let kubeconfig = s.dir.path().join("replica-a.kubeconfig");
    control_plane()
        .service_account_kubeconfig(&ns, "replica-a", &kubeconfig)
        .await;
    let election = "leaderElection: {enabled: true, leaseName: e2e-fence}\n";
    let config_for = |i: usize, ports: (u16, u16)| {
        let path = s.dir.path().join(format!("config-{i}.yaml"));
        let text = config(&s, &format!("state-{i}"), ports.0, ports.1, election)
            .replace("health: {wait: false}", "health: {timeout: 40s}");
        std::fs::write(&path, text).unwrap();
        path
    };
    let ports_a = (free_port(), free_port());
    let a = AgentProcess::start_as(
        s.dir.path(),
        "replica-a",
        &config_for(0, ports_a),
        ports_a,
        &kubeconfig,
    );
    a.ready(&s.http).await;
    // A leads and its pass is in the health wait: everything applied, one Deployment stuck.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(s.client.clone(), &ns);
    let started = Instant::now();
    while !(is_leader(&a.metrics(&s.http).await)
        && deployments.get_opt("stuck").await.unwrap().is_some())
    {
        assert!(
            started.elapsed() < WAIT,
            "A never led and applied:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ports_b = (free_port(), free_port());
    let b = AgentProcess::start(
        s.dir.path(),
        "replica-b",
        &config_for(1, ports_b),
        ports_b.0,
        ports_b.1,
    );
    b.ready(&s.http).await;

    // A's renewals now fail: it stops leading at its renew deadline, B takes the lease once
    // it has expired.
    dynamic("RoleBinding")
        .delete("lease", &Default::default())
        .await
        .unwrap();
    let started = Instant::now();
    while !is_leader(&b.metrics(&s.http).await) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "B never took over:\n{}\n----\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leases = kube::api::ApiResource::erase::<k8s_openapi::api::coordination::v1::Lease>(&());
    let lease = Api::<kube::api::DynamicObject>::namespaced_with(s.client.clone(), &ns, &leases)
        .get("e2e-fence")
        .await
        .unwrap();
    let taken = lease.data["spec"]["acquireTime"]
        .as_str()
        .unwrap()
        .to_string();
    // B's pass has ended (its health wait timed out); A's, had it gone on, would have ended first.
    let done = "gitops_agent_sync_duration_seconds_count{sync=\"apps\",result=\"failed\"}";
    b.wait_sample(&s.http, done, 1.0, Duration::from_secs(180))
        .await;
    let user = format!("system:serviceaccount:{ns}:replica-a");
    let (before, after) = writes_by(&control_plane().audit_log(), &user, &taken);
    eprintln!(
        "writes by the old leader: {before} before the lease passed, {} after",
        after.len()
    );
    assert!(
        before > 300,
        "A applied its objects ({before} audited writes)"
    );
    assert!(
        after.is_empty(),
        "A wrote after B took the lease at {taken}: {after:?}\n{}",
        a.log()
    );
    assert!(
        a.log()
            .contains("sync stopped: this replica no longer leads"),
        "{}",
        a.log()
    );
}

/// `user`'s audited writes other than to Leases: how many were received before `since`,
/// and those received after it (`verb resource/name at time`).
fn writes_by(log: &Path, user: &str, since: &str) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let mut before = 0;
    let mut after = Vec::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if e["user"]["username"] != user || e["objectRef"]["resource"] == "leases" {
            continue;
        }
        // MicroTime, fixed width in UTC: text order is time order.
        let at = e["requestReceivedTimestamp"].as_str().unwrap_or_default();
        if at < since {
            before += 1;
        } else {
            after.push(format!(
                "{} {}/{} at {at}",
                e["verb"], e["objectRef"]["resource"], e["objectRef"]["name"]
            ));
        }
    }
    (before, after)
}

/// Lossless drift alerts: 2,000 objects drift at once (another field manager changes each),
/// and the sink receives 2,000 drift alerts, one per object, signed, none dropped; past the
/// sink's rate limit they come in batches.
#[tokio::test]
async fn a_burst_of_two_thousand_drifts_raises_two_thousand_alerts() {
    let files = configmap_files(2000);
    let s = setup("burst", &borrowed(&files)).await;
    let sink = Sink::default();
    let alerts = sink.configured(&s).await;
    let (m, w) = (free_port(), free_port());
    let path = s.dir.path().join("config.yaml");
    std::fs::write(&path, config(&s, "state", m, w, &alerts)).unwrap();
    let agent = AgentProcess::start(s.dir.path(), "burst", &path, m, w);
    agent.ready(&s.http).await;
    let synced = "gitops_agent_sync_duration_seconds_count{sync=\"apps\",result=\"succeeded\"}";
    agent
        .wait_sample(&s.http, synced, 1.0, Duration::from_secs(300))
        .await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    let pp = PatchParams::apply("kubectl-edit").force();
    futures::stream::iter(0..2000)
        .for_each_concurrent(16, |i| {
            let cms = cms.clone();
            let pp = pp.clone();
            async move {
                let patch = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"value": "hand-edited"}});
                cms.patch(&format!("cm{i}"), &pp, &Patch::Apply(&patch)).await.unwrap();
            }
        })
        .await;
    let drifted = || -> Vec<String> {
        sink.alerts()
            .iter()
            .filter(|a| a["event"]["type"] == "driftDetected")
            .map(|a| {
                a["event"]["subject"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    let started = Instant::now();
    while drifted().len() < 2000 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{} of 2,000 drift alerts:\n{}",
            drifted().len(),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all = drifted();
    let distinct: std::collections::BTreeSet<&String> = all.iter().collect();
    let requests = sink.events().len();
    eprintln!(
        "2,000 drifts: {} alerts ({} distinct objects) in {requests} requests",
        all.len(),
        distinct.len()
    );
    assert_eq!(distinct.len(), 2000, "one alert per object");
    assert_eq!(all.len(), 2000, "none twice");
    for (_, sig, body) in sink.0.lock().unwrap().iter() {
        assert_eq!(
            sig,
            &gitops_agent::http::signature::signature(b"alert-signing-key", body)
        );
    }
    let metrics = agent.metrics(&s.http).await;
    let dropped = "gitops_agent_alert_deliveries_total{sink=\"webhook/ops\",result=\"dropped\"}";
    assert_eq!(sample(&metrics, dropped), 0.0, "{metrics}");
}

/// Graceful shutdown: SIGTERM while a sync waits minutes on health stops that sync where it
/// is and the process exits cleanly at once, its inventory already listing what it applied
/// (the intent recorded before the first write); the next start takes over from there.
#[tokio::test]
async fn sigterm_stops_a_sync_waiting_on_health_and_exits_with_the_inventory_right() {
    let mut files = configmap_files(20);
    files.push(("deploy/stuck.yaml".into(), stuck_deployment("stuck")));
    let s = setup("drain", &borrowed(&files)).await;
    let path = s.dir.path().join("config.yaml");
    let (m, w) = (free_port(), free_port());
    let text =
        config(&s, "state", m, w, "").replace("health: {wait: false}", "health: {timeout: 10m}");
    std::fs::write(&path, text).unwrap();
    let mut agent = AgentProcess::start(s.dir.path(), "drained", &path, m, w);
    agent.ready(&s.http).await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(s.client.clone(), &s.ns.name);
    let started = Instant::now();
    while deployments.get_opt("stuck").await.unwrap().is_none() {
        assert!(started.elapsed() < WAIT, "never applied:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: a plain kill(2) of our own child's pid.
    assert_eq!(
        unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) },
        0
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        // Far below the 10 minutes the health wait would take; the grace period is 20 s.
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still running after SIGTERM:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("exited {} ms after SIGTERM", started.elapsed().as_millis());
    assert!(status.success(), "{status}:\n{}", agent.log());
    let log = agent.log();
    assert!(log.contains("sync stopped"), "{log}");
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    let inventory = cms.get("gitops-agent-apps").await.unwrap().data.unwrap();
    assert!(
        inventory["inventory"].contains("apps/v1 Deployment")
            && inventory["inventory"].lines().count() == 21,
        "{inventory:?}"
    );
    agent.kill();
}
