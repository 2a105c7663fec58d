//! Unit tests of the alert module. HTTP sinks are tested against a real axum server on a
//! loopback socket; queueing and rate limiting against in-memory sinks in paused time.

use super::sinks::{SIGNATURE_HEADER, build, parse_url};
use super::*;
use crate::http::client::{Options as HttpOptions, redact};
use crate::secrets::SecretBytes;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::core::ObjectKey;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::time::Instant;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use tokio::sync::{Semaphore, mpsc};

const WAIT: Duration = Duration::from_secs(10);
const KEY: &[u8] = b"s3cret-hmac-key";

fn obj(group: &str, kind: &str, ns: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey {
        group: group.into(),
        version: "v1".into(),
        kind: kind.into(),
        namespace: ns.map(Into::into),
        name: name.into(),
    }
}

fn web() -> ObjectKey {
    obj("apps", "Deployment", Some("shop"), "web")
}

fn drift() -> Event {
    Event::drift_detected(
        "shop",
        web(),
        vec![FieldDrift::new("spec.replicas", json!(2), json!(5))],
        Some("kubectl-scale".into()),
    )
}

fn failed(revision: &str) -> Event {
    Event::SyncFailed {
        sync: "shop".into(),
        revision: revision.into(),
        error: "boom".into(),
    }
}

fn agent() -> AgentInfo {
    AgentInfo::new("gitops", "agent-0")
}

// --- a real HTTP receiver ------------------------------------------------------------

#[derive(Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

struct ServerState {
    /// Statuses to answer with, in order; the last one repeats.
    statuses: Mutex<VecDeque<u16>>,
    hits: AtomicUsize,
    tx: mpsc::UnboundedSender<Received>,
}

struct Server {
    addr: SocketAddr,
    state: Arc<ServerState>,
    rx: mpsc::UnboundedReceiver<Received>,
}

impl Server {
    async fn start(statuses: &[u16]) -> Server {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(ServerState {
            statuses: Mutex::new(statuses.iter().copied().collect()),
            hits: AtomicUsize::new(0),
            tx,
        });
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server { addr, state, rx }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a request in time")
            .expect("server running")
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

async fn receive(
    State(s): State<Arc<ServerState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let status = {
        let mut q = s.statuses.lock().unwrap();
        if q.len() > 1 {
            q.pop_front().unwrap()
        } else {
            q.front().copied().unwrap_or(200)
        }
    };
    s.hits.fetch_add(1, Ordering::SeqCst);
    let _ = s.tx.send(Received {
        path: uri.path().to_string(),
        headers,
        body: body.to_vec(),
    });
    let text = if status < 300 { "ok" } else { "no_service" };
    let mut resp =
        axum::response::IntoResponse::into_response((StatusCode::from_u16(status).unwrap(), text));
    if status == 429 {
        resp.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("0"));
    }
    resp
}

fn http() -> HttpOptions {
    HttpOptions {
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
    }
}

fn webhook_sink(name: &str, url: String) -> Arc<dyn Sink> {
    let cfg = SinkConfig::Webhook {
        name: name.into(),
        url,
        secret_ref: Some(SecretKeyRef {
            name: "hmac".into(),
            key: "secret".into(),
            namespace: None,
        }),
        oci_vault: None,
    };
    build(
        &cfg,
        SinkResources {
            client: None,
            agent: agent(),
            secret: Some(SecretBytes::new(KEY)),
            http: http(),
            oci: None,
        },
    )
    .unwrap()
}

fn slack_sink(url: String, blocks: bool) -> Arc<dyn Sink> {
    let cfg = SinkConfig::Slack {
        name: "team".into(),
        secret_ref: Some(SecretKeyRef {
            name: "slack".into(),
            key: "url".into(),
            namespace: None,
        }),
        oci_vault: None,
        blocks,
    };
    build(
        &cfg,
        SinkResources {
            client: None,
            agent: agent(),
            secret: Some(SecretBytes::new(url)),
            http: http(),
            oci: None,
        },
    )
    .unwrap()
}

type Results = mpsc::UnboundedReceiver<(String, DeliveryResult)>;

/// Quick retries and no effective rate limit; results reported into a channel.
fn options() -> (DeliveryOptions, Results) {
    let (tx, rx) = mpsc::unbounded_channel();
    let on_result: OnResult = Arc::new(move |sink: &str, r: DeliveryResult| {
        let _ = tx.send((sink.to_string(), r));
    });
    (
        DeliveryOptions {
            queue_capacity: 1000,
            rate: RateLimit {
                burst: 100,
                per_second: 100.0,
            },
            retry: RetryPolicy {
                max_attempts: 5,
                initial: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            on_result: Some(on_result),
        },
        rx,
    )
}

async fn next_result(rx: &mut Results) -> (String, DeliveryResult) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a delivery result in time")
        .expect("dispatcher running")
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// --- HTTP sinks ----------------------------------------------------------------------

#[tokio::test]
async fn webhook_body_is_signed_over_its_exact_bytes() {
    let mut server = Server::start(&[200]).await;
    let (opts, mut results) = options();
    let d = Dispatcher::new(
        [webhook_sink("ops", format!("http://{}/hook", server.addr))],
        opts,
    );
    d.send(drift());

    let req = server.next().await;
    assert_eq!(req.path, "/hook");
    assert_eq!(req.headers["content-type"], "application/json");
    let sig = req.headers[SIGNATURE_HEADER].to_str().unwrap();
    let hex = sig.strip_prefix("sha256=").expect("sha256= prefix");
    // Verified with the HMAC crate directly, not with our own `sign`.
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    mac.update(&req.body);
    mac.verify_slice(&hex_decode(hex))
        .expect("signature verifies with the shared secret");
    // One changed byte and it no longer verifies.
    let mut tampered = req.body.clone();
    tampered[10] ^= 1;
    assert_ne!(crate::http::signature::signature(KEY, &tampered), sig);

    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body["event"],
        json!({"type": "driftDetected", "sync": "shop", "subject": "Deployment/shop/web",
               "fields": [{"path": "spec.replicas", "before": 2, "after": 5}],
               "manager": "kubectl-scale"})
    );
    assert_eq!(body["key"], "drift/shop/Deployment.apps/shop/web");
    assert_eq!(body["agent"]["name"], "gitops-agent");
    assert_eq!(body["agent"]["instance"], "agent-0");
    let time: Timestamp = body["time"].as_str().unwrap().parse().expect("RFC 3339");
    assert!(time <= Timestamp::now());

    assert_eq!(
        next_result(&mut results).await,
        (
            "webhook/ops".into(),
            DeliveryResult::Delivered { attempts: 1 }
        )
    );
    assert_eq!(d.stats()["webhook/ops"].delivered, 1);
}

/// Past the rate limit nothing is dropped: the alerts that waited go out in one signed
/// webhook body (and one Slack message that counts what it does not list).
#[tokio::test]
async fn alerts_over_the_rate_go_out_together_in_one_signed_body() {
    let mut server = Server::start(&[200, 200, 200]).await;
    let (mut opts, mut results) = options();
    opts.rate = RateLimit {
        burst: 1,
        per_second: 2.0,
    };
    let d = Dispatcher::new(
        [webhook_sink("ops", format!("http://{}/hook", server.addr))],
        opts,
    );
    for i in 0..60 {
        d.send(failed(&format!("r{i}")));
    }
    for _ in 0..60 {
        assert!(matches!(
            next_result(&mut results).await.1,
            DeliveryResult::Delivered { .. }
        ));
    }
    let one: Value = serde_json::from_slice(&server.next().await.body).unwrap();
    assert_eq!(one["event"]["revision"], "r0");
    let req = server.next().await;
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    mac.update(&req.body);
    let sig = req.headers[SIGNATURE_HEADER].to_str().unwrap();
    mac.verify_slice(&hex_decode(sig.strip_prefix("sha256=").unwrap()))
        .expect("the batch is signed like one alert");
    let batch: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(batch["count"], 59);
    let revisions: Vec<&str> = batch["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["event"]["revision"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (1..60).map(|i| format!("r{i}")).collect();
    assert_eq!(revisions, want, "in the order raised");
    assert_eq!(d.stats()["webhook/ops"].delivered, 60);

    let alerts: Vec<Arc<Alert>> = (0..45)
        .map(|i| {
            Arc::new(Alert {
                event: failed(&format!("s{i}")),
                time: Timestamp::now(),
            })
        })
        .collect();
    let slack = crate::notify::sinks::SlackSink::new(
        "slack/team",
        &SecretBytes::new("http://127.0.0.1:1/x"),
        true,
        agent(),
        &http(),
    )
    .unwrap();
    let text = slack.batch_body(&alerts)["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.starts_with("45 alerts from gitops-agent agent-0:"),
        "{text}"
    );
    assert!(text.ends_with("… and 5 more"), "{text}");
}

#[tokio::test]
async fn slack_gets_text_and_blocks() {
    let mut server = Server::start(&[200]).await;
    let (opts, mut results) = options();
    let url = format!("http://{}/services/T000/B000/XYZSECRET", server.addr);
    let d = Dispatcher::new([slack_sink(url.clone(), true)], opts);
    d.send(drift());
    let req = server.next().await;
    assert_eq!(req.path, "/services/T000/B000/XYZSECRET");
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body["text"],
        "Deployment/shop/web: drift in spec.replicas (2 → 5) by kubectl-scale"
    );
    let blocks = body["blocks"].as_array().expect("blocks");
    assert_eq!(blocks[0]["type"], "section");
    assert!(
        blocks[0]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("*DriftDetected*"),
        "{body}"
    );
    assert_eq!(blocks[1]["text"]["text"], "`spec.replicas`: 2 → 5");
    assert_eq!(blocks.last().unwrap()["type"], "context");
    assert_eq!(
        next_result(&mut results).await.1,
        DeliveryResult::Delivered { attempts: 1 }
    );

    // Without blocks, the body is the plain form every Slack-compatible receiver takes.
    let d = Dispatcher::new([slack_sink(url, false)], options().0);
    d.send(failed("main"));
    let body: Value = serde_json::from_slice(&server.next().await.body).unwrap();
    assert_eq!(body, json!({"text": "sync/shop: failed at main: boom"}));
}

#[tokio::test]
async fn a_503_is_retried_until_it_succeeds() {
    let mut server = Server::start(&[503, 503, 200]).await;
    let (opts, mut results) = options();
    let d = Dispatcher::new(
        [webhook_sink("ops", format!("http://{}/hook", server.addr))],
        opts,
    );
    d.send(drift());
    assert_eq!(
        next_result(&mut results).await.1,
        DeliveryResult::Delivered { attempts: 3 }
    );
    // Every attempt carries the same alert: same bytes, same signature.
    let bodies: Vec<Vec<u8>> = [
        server.next().await,
        server.next().await,
        server.next().await,
    ]
    .into_iter()
    .map(|r| r.body)
    .collect();
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn a_429_is_retried_when_the_server_says() {
    let server = Server::start(&[429, 200]).await;
    let (mut opts, mut results) = options();
    // Our own backoff would wait a minute; the server's `Retry-After: 0` wins.
    opts.retry.initial = Duration::from_secs(60);
    opts.retry.max = Duration::from_secs(60);
    let d = Dispatcher::new(
        [webhook_sink("ops", format!("http://{}/hook", server.addr))],
        opts,
    );
    d.send(drift());
    assert_eq!(
        next_result(&mut results).await.1,
        DeliveryResult::Delivered { attempts: 2 }
    );
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn a_400_is_not_retried_and_the_error_names_sink_and_url() {
    let server = Server::start(&[400]).await;
    let (opts, mut results) = options();
    let d = Dispatcher::new(
        [webhook_sink(
            "ops",
            format!("http://{}/hook?token=abc", server.addr),
        )],
        opts,
    );
    d.send(drift());
    let (sink, result) = next_result(&mut results).await;
    assert_eq!(sink, "webhook/ops");
    let DeliveryResult::Failed { attempts, error } = result else {
        panic!("expected a failure, got {result:?}");
    };
    assert_eq!(attempts, 1);
    assert_eq!(
        error,
        format!(
            "alert sink webhook/ops: POST http://{}/hook?…: 400 Bad Request: no_service",
            server.addr
        )
    );
    // The result comes only after the dispatcher gave up: one request is all it made.
    assert_eq!(server.hits(), 1);
    assert_eq!(
        d.stats()["webhook/ops"],
        SinkStats {
            delivered: 0,
            failed: 1,
            dropped: 0
        }
    );
}

#[tokio::test]
async fn slack_errors_never_show_the_url_path() {
    let server = Server::start(&[500]).await;
    let (mut opts, mut results) = options();
    opts.retry.max_attempts = 2;
    let d = Dispatcher::new(
        [slack_sink(
            format!("http://{}/services/T000/B000/XYZSECRET", server.addr),
            true,
        )],
        opts,
    );
    d.send(drift());
    let DeliveryResult::Failed { attempts, error } = next_result(&mut results).await.1 else {
        panic!("expected a failure");
    };
    assert_eq!(attempts, 2);
    assert!(
        !error.contains("XYZSECRET") && !error.contains("T000"),
        "{error}"
    );
    assert!(
        error.starts_with(&format!(
            "alert sink slack/team: POST http://{}/…: 500",
            server.addr
        )),
        "{error}"
    );
}

#[tokio::test]
async fn a_dead_sink_delays_neither_the_others_nor_the_caller() {
    // Refused: a port bound and released, so nobody listens. Silent: a listener that never
    // accepts, so connections open and requests hang until the request timeout.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut live = Server::start(&[200]).await;
    let (mut opts, mut results) = options();
    opts.retry = RetryPolicy {
        max_attempts: 3,
        initial: Duration::from_millis(200),
        max: Duration::from_secs(1),
    };
    let d = Dispatcher::new(
        [
            webhook_sink("refused", format!("http://{refused}/hook")),
            webhook_sink(
                "silent",
                format!("http://{}/hook", silent.local_addr().unwrap()),
            ),
            webhook_sink("live", format!("http://{}/hook", live.addr)),
        ],
        opts,
    );

    let start = std::time::Instant::now();
    for i in 0..50 {
        d.send(failed(&format!("r{i}")));
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "send blocked for {:?}",
        start.elapsed()
    );

    // The live sink gets the first alert while the dead ones are still retrying theirs.
    let first = live.next().await;
    let body: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(body["event"]["revision"], "r0");
    let got_first = start.elapsed();
    assert!(got_first < Duration::from_secs(5), "{got_first:?}");

    // Both dead sinks give up on their first alert with errors naming them.
    let mut failures = BTreeMap::new();
    while failures.len() < 2 {
        if let (sink, DeliveryResult::Failed { attempts, error }) = next_result(&mut results).await
        {
            failures.entry(sink).or_insert((attempts, error));
        }
    }
    let (attempts, error) = &failures["webhook/refused"];
    assert_eq!(*attempts, 3);
    assert!(
        error.starts_with("alert sink webhook/refused: POST http://127.0.0.1:"),
        "{error}"
    );
    let (attempts, error) = &failures["webhook/silent"];
    assert_eq!(*attempts, 3);
    assert!(
        error.starts_with("alert sink webhook/silent: POST"),
        "{error}"
    );
    drop(silent);
}

// --- queueing and rate limiting ------------------------------------------------------

/// Records what it delivers and when; optionally holds each delivery until released.
struct MemorySink {
    name: String,
    gate: Option<Arc<Semaphore>>,
    started: mpsc::UnboundedSender<Event>,
    delivered: Mutex<Vec<(Event, Instant)>>,
}

impl MemorySink {
    fn new(gate: Option<Arc<Semaphore>>) -> (Arc<Self>, mpsc::UnboundedReceiver<Event>) {
        let (started, rx) = mpsc::unbounded_channel();
        let sink = Arc::new(MemorySink {
            name: "memory/test".into(),
            gate,
            started,
            delivered: Mutex::default(),
        });
        (sink, rx)
    }

    fn delivered(&self) -> Vec<(Event, Instant)> {
        self.delivered.lock().unwrap().clone()
    }
}

impl Sink for MemorySink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let _ = self.started.send(alert.event.clone());
            if let Some(g) = &self.gate {
                g.acquire().await.unwrap().forget();
            }
            self.delivered
                .lock()
                .unwrap()
                .push((alert.event.clone(), Instant::now()));
            Ok(())
        })
    }
}

fn revision(e: &Event) -> &str {
    match e {
        Event::SyncFailed { revision, .. } => revision,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_and_counts() {
    let gate = Arc::new(Semaphore::new(0));
    let (sink, mut started) = MemorySink::new(Some(gate.clone()));
    let (mut opts, mut results) = options();
    opts.queue_capacity = 3;
    let d = Dispatcher::new([sink.clone() as Arc<dyn Sink>], opts);

    d.send(failed("r0"));
    // r0 is out of the queue and held in delivery; the queue is empty again.
    let first = tokio::time::timeout(WAIT, started.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revision(&first), "r0");
    for i in 1..=5 {
        d.send(failed(&format!("r{i}")));
    }
    assert_eq!(d.stats()["memory/test"].dropped, 2);
    for _ in 0..2 {
        assert_eq!(
            next_result(&mut results).await,
            ("memory/test".into(), DeliveryResult::Dropped)
        );
    }

    gate.add_permits(10);
    for _ in 0..4 {
        assert!(matches!(
            next_result(&mut results).await.1,
            DeliveryResult::Delivered { attempts: 1 }
        ));
    }
    let order: Vec<String> = sink
        .delivered()
        .iter()
        .map(|(e, _)| revision(e).to_string())
        .collect();
    assert_eq!(order, ["r0", "r3", "r4", "r5"]);
    assert_eq!(
        d.stats()["memory/test"],
        SinkStats {
            delivered: 4,
            failed: 0,
            dropped: 2
        }
    );
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_lets_a_burst_through_then_batches_what_waits() {
    let (sink, _started) = MemorySink::new(None);
    let (mut opts, mut results) = options();
    opts.rate = RateLimit {
        burst: 3,
        per_second: 1.0,
    };
    let start = Instant::now();
    let d = Dispatcher::new([sink.clone() as Arc<dyn Sink>], opts);
    for i in 0..6 {
        d.send(failed(&format!("r{i}")));
    }
    for _ in 0..6 {
        next_result(&mut results).await;
    }
    let at: Vec<Duration> = sink
        .delivered()
        .iter()
        .map(|(_, t)| t.duration_since(start))
        .collect();
    let ms = |d: &Duration| d.as_millis();
    // Three at once, then the three that waited together, with the next token.
    for (i, t) in at.iter().enumerate() {
        let expected = if i < 3 { 0 } else { 1000 };
        assert!(
            ms(t) >= expected && ms(t) <= expected + 50,
            "delivery {i} at {t:?}; all: {at:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_delivers_what_is_queued_and_counts_the_rest() {
    let (sink, _started) = MemorySink::new(None);
    let d = Dispatcher::new([sink.clone() as Arc<dyn Sink>], options().0);
    for i in 0..3 {
        d.send(failed(&format!("r{i}")));
    }
    d.shutdown(Duration::from_secs(5)).await;
    assert_eq!(sink.delivered().len(), 3);

    // A sink that never finishes: the grace runs out and what is left counts as dropped.
    let (stuck, mut started) = MemorySink::new(Some(Arc::new(Semaphore::new(0))));
    let (opts, mut results) = options();
    let d = Dispatcher::new([stuck as Arc<dyn Sink>], opts);
    for i in 0..3 {
        d.send(failed(&format!("r{i}")));
    }
    started.recv().await.expect("r0 in delivery");
    d.shutdown(Duration::from_secs(1)).await;
    let mut dropped = 0;
    while let Ok(r) = results.try_recv() {
        assert_eq!(r.1, DeliveryResult::Dropped);
        dropped += 1;
    }
    // One was in delivery when time ran out (lost with the task); two were still queued.
    assert_eq!(dropped, 2);
}

#[test]
fn backoff_grows_is_capped_and_jittered() {
    let p = RetryPolicy::default();
    for (attempt, exp_ms) in [(1, 500), (2, 1000), (3, 2000), (7, 30_000), (40, 30_000)] {
        for _ in 0..20 {
            let d = p.delay(attempt).as_millis();
            assert!(
                d >= exp_ms / 2 && d <= exp_ms,
                "attempt {attempt}: {d} ms not in [{}, {exp_ms}]",
                exp_ms / 2
            );
        }
    }
    let distinct: HashSet<Duration> = (0..20).map(|_| p.delay(3)).collect();
    assert!(distinct.len() > 1, "jitter varies the delay");
}

#[test]
fn retryable_errors() {
    let status = |code: u16| Error::Status {
        sink: "webhook/ops".into(),
        url: "https://h/".into(),
        status: reqwest::StatusCode::from_u16(code).unwrap(),
        body: String::new(),
        retry_after: None,
    };
    for code in [500, 502, 503, 429, 408] {
        assert!(status(code).is_retryable(), "{code}");
    }
    for code in [400, 401, 403, 404, 410, 422] {
        assert!(!status(code).is_retryable(), "{code}");
    }
}

// --- events, masking, de-duplication ----------------------------------------------------

#[test]
fn secret_drift_is_masked() {
    let plain = FieldDrift::new(
        "data.password",
        json!("aHVudGVyMg=="),
        json!("c3dvcmRmaXNo"),
    );
    assert_eq!(crate::diff::mask_field("ConfigMap", plain.clone()), plain);
    let masked = crate::diff::mask_field("Secret", plain.clone());
    assert_eq!(masked.before, json!(MASK));
    assert_eq!(masked.after, json!(MASK));
    // Absence stays visible: a key added by hand is still reported as added.
    let added = crate::diff::mask_field(
        "Secret",
        FieldDrift::new("data.extra", Value::Null, json!("c2VjcmV0")),
    );
    assert_eq!((added.before, added.after), (Value::Null, json!(MASK)));

    let secret = obj("", "Secret", Some("shop"), "db");
    let e = Event::drift_detected("shop", secret.clone(), vec![plain.clone()], None);
    let text = format!("{}{}", serde_json::to_string(&e).unwrap(), e.summary());
    assert!(
        !text.contains("aHVudGVyMg==") && !text.contains("c3dvcmRmaXNo"),
        "{text}"
    );
    assert_eq!(
        e.summary(),
        "Secret/shop/db: drift in data.password (*** (masked) → *** (masked))"
    );

    // Built by hand, bypassing the constructor: the dispatcher masks it anyway.
    let raw = Event::DriftDetected {
        sync: "shop".into(),
        subject: secret,
        fields: vec![plain],
        manager: None,
    };
    assert_eq!(raw.clone().masked(), e);
}

#[tokio::test]
async fn the_dispatcher_masks_secret_drift_built_by_hand() {
    let (sink, _started) = MemorySink::new(None);
    let (opts, mut results) = options();
    let d = Dispatcher::new([sink.clone() as Arc<dyn Sink>], opts);
    d.send(Event::DriftDetected {
        sync: "shop".into(),
        subject: obj("", "Secret", Some("shop"), "db"),
        fields: vec![FieldDrift::new("data.token", json!("old"), json!("new"))],
        manager: None,
    });
    next_result(&mut results).await;
    let (event, _) = sink.delivered().remove(0);
    let Event::DriftDetected { fields, .. } = event else {
        panic!("{event:?}")
    };
    assert_eq!(
        (&fields[0].before, &fields[0].after),
        (&json!(MASK), &json!(MASK))
    );
}

#[test]
fn deduper_sends_one_alert_per_drift_until_resolved() {
    let mut d = Deduper::new();
    let resolved = Event::DriftResolved {
        sync: "shop".into(),
        subject: web(),
    };
    assert!(!d.should_send(&resolved), "nothing was open");
    assert!(d.should_send(&drift()));
    assert!(d.is_active(&drift().key()));
    // The same drift again, even with other values, stays quiet until resolved.
    let worse = Event::drift_detected(
        "shop",
        web(),
        vec![FieldDrift::new("spec.replicas", json!(2), json!(9))],
        None,
    );
    assert!(!d.should_send(&worse));
    // Another object, or the same object in another sync, is a distinct drift.
    let other = Event::drift_detected(
        "shop",
        obj("apps", "Deployment", Some("shop"), "api"),
        vec![],
        None,
    );
    assert!(d.should_send(&other));
    let other_sync = Event::drift_detected("shop-canary", web(), vec![], None);
    assert!(d.should_send(&other_sync));

    assert!(d.should_send(&resolved));
    assert!(!d.is_active(&drift().key()));
    assert!(!d.should_send(&resolved), "resolved once");
    assert!(
        d.should_send(&drift()),
        "a new drift after resolution is reported"
    );
    // Everything else always goes.
    assert!(d.should_send(&failed("r1")) && d.should_send(&failed("r1")));
}

#[test]
fn summaries_start_with_the_subject() {
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let cases = [
        (
            drift(),
            "Deployment/shop/web: drift in spec.replicas (2 → 5) by kubectl-scale",
        ),
        (
            Event::drift_detected(
                "shop",
                obj("", "ConfigMap", Some("shop"), "cfg"),
                (1..=5)
                    .map(|i| FieldDrift::new(format!("data.k{i}"), json!("a"), Value::Null))
                    .collect(),
                None,
            ),
            "ConfigMap/shop/cfg: drift in data.k1 (a → none), data.k2 (a → none), data.k3 (a → none) and 2 more",
        ),
        (
            Event::drift_detected(
                "shop",
                obj("", "Namespace", None, "shop"),
                vec![FieldDrift::new(
                    "metadata.labels",
                    json!({"team": "a"}),
                    json!({"team": "a", "owner": "someone-with-a-long-name"}),
                )],
                None,
            ),
            "Namespace/shop: drift in metadata.labels ({\"team\":\"a\"} → {\"owner\":\"someone-with-a-long-name\",\"…)",
        ),
        (
            Event::DriftResolved {
                sync: "shop".into(),
                subject: web(),
            },
            "Deployment/shop/web: drift resolved",
        ),
        (
            Event::Fight {
                sync: "shop".into(),
                subject: web(),
                manager: Some("hpa-controller".into()),
                count: 4,
            },
            "Deployment/shop/web: hpa-controller keeps reverting the sync (4 times)",
        ),
        (
            Event::Fight {
                sync: "shop".into(),
                subject: web(),
                manager: None,
                count: 2,
            },
            "Deployment/shop/web: another field manager keeps reverting the sync (2 times)",
        ),
        (
            Event::SyncFailed {
                sync: "shop".into(),
                revision: rev.into(),
                error: "Deployment/shop/web: field is immutable: spec.selector".into(),
            },
            "sync/shop: failed at 0123456789ab: Deployment/shop/web: field is immutable: spec.selector",
        ),
        (
            Event::SyncRecovered {
                sync: "shop".into(),
                revision: rev.into(),
            },
            "sync/shop: recovered at 0123456789ab",
        ),
        (
            Event::PruneHeldBack {
                sync: "shop".into(),
                revision: "v1.2.0".into(),
                reason: "would delete 8 of 10 objects (max 50%)".into(),
            },
            "sync/shop: prune held back at v1.2.0: would delete 8 of 10 objects (max 50%)",
        ),
    ];
    for (event, want) in cases {
        assert_eq!(event.summary(), want);
    }
}

#[test]
fn keys_pair_openings_with_closings() {
    let resolved = Event::DriftResolved {
        sync: "shop".into(),
        subject: web(),
    };
    assert_eq!(drift().key(), resolved.key());
    let recovered = Event::SyncRecovered {
        sync: "shop".into(),
        revision: "r2".into(),
    };
    assert_eq!(failed("r1").key(), recovered.key());
    assert_eq!(recovered.key(), "sync/shop");
    // Same display form, different groups: different keys.
    let a = Event::drift_detected("s", obj("a.io", "Thing", Some("n"), "x"), vec![], None);
    let b = Event::drift_detected("s", obj("b.io", "Thing", Some("n"), "x"), vec![], None);
    assert_ne!(a.key(), b.key());
    assert_eq!(
        Event::drift_detected("s", obj("", "ConfigMap", Some("n"), "x"), vec![], None).key(),
        "drift/s/ConfigMap/n/x"
    );
}

#[test]
fn events_serialize_tagged_and_read_back() {
    let fight = Event::Fight {
        sync: "shop".into(),
        subject: web(),
        manager: None,
        count: 3,
    };
    assert_eq!(
        serde_json::to_value(&fight).unwrap(),
        json!({"type": "fight", "sync": "shop", "subject": "Deployment/shop/web", "manager": null, "count": 3})
    );
    assert_eq!(
        serde_json::to_value(Event::PruneHeldBack {
            sync: "s".into(),
            revision: "r".into(),
            reason: "why".into()
        })
        .unwrap(),
        json!({"type": "pruneHeldBack", "sync": "s", "revision": "r", "reason": "why"})
    );
    // Read back, the subject is what the wire says: kind, namespace, name.
    let back: Event = serde_json::from_value(serde_json::to_value(&fight).unwrap()).unwrap();
    let subject = back.subject().unwrap();
    assert_eq!(subject.to_string(), "Deployment/shop/web");
    assert!(subject.group.is_empty() && subject.version.is_empty());
    let cluster: Event = serde_json::from_value(
        json!({"type": "driftResolved", "sync": "s", "subject": "Namespace/shop"}),
    )
    .unwrap();
    assert_eq!(cluster.subject().unwrap().namespace, None);
    assert!(
        serde_json::from_value::<Event>(
            json!({"type": "driftResolved", "sync": "s", "subject": "a/b/c/d"})
        )
        .is_err()
    );
    assert_eq!(drift().severity(), Severity::Warning);
    assert_eq!(cluster.severity(), Severity::Normal);
}

// --- configuration ---------------------------------------------------------------------

const CONFIG: &str = "\
sinks:
  - type: events
    name: cluster
    agentRef: {apiVersion: apps/v1, kind: Deployment, name: gitops-agent}
  - type: webhook
    name: ops
    url: https://alerts.example.com/gitops
    secretRef: {name: alert-hmac, key: secret}
  - type: slack
    name: team
    secretRef: {name: slack, key: url, namespace: chat}
";

#[test]
fn sink_config_reads_from_yaml() {
    let c: AlertsConfig = serde_saphyr::from_str(CONFIG).unwrap();
    assert_eq!(
        c.sinks,
        vec![
            SinkConfig::Events {
                name: "cluster".into(),
                agent_ref: AgentRef {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "gitops-agent".into(),
                    namespace: None,
                },
                reporting_controller: "gitops-agent".into(),
            },
            SinkConfig::Webhook {
                name: "ops".into(),
                url: "https://alerts.example.com/gitops".into(),
                secret_ref: Some(SecretKeyRef {
                    name: "alert-hmac".into(),
                    key: "secret".into(),
                    namespace: None,
                }),
                oci_vault: None,
            },
            SinkConfig::Slack {
                name: "team".into(),
                secret_ref: Some(SecretKeyRef {
                    name: "slack".into(),
                    key: "url".into(),
                    namespace: Some("chat".into()),
                }),
                oci_vault: None,
                blocks: true,
            },
        ]
    );
    assert!(c.problems().is_empty(), "{:?}", c.problems());
    assert_eq!(c.sinks[1].id(), "webhook/ops");
    match c.sinks[2].credential() {
        Some(crate::config::Credential::Kubernetes(r)) => assert_eq!(r.key, "url"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.sinks[0].credential(), None);
}

#[test]
fn sink_config_rejects_unknown_fields_and_types() {
    for bad in [
        "sinks:\n  - type: webhook\n    name: a\n    url: https://h/\n    secretRef: {name: s, key: k}\n    retries: 3\n",
        "sinks:\n  - type: pager\n    name: a\n",
        "sinks:\n  - type: slack\n    name: a\n    secretRef: {name: s, key: k, value: x}\n",
        "sink: []\n",
    ] {
        assert!(
            serde_saphyr::from_str::<AlertsConfig>(bad).is_err(),
            "accepted:\n{bad}"
        );
    }
}

#[test]
fn config_problems_are_all_reported() {
    let c: AlertsConfig = serde_saphyr::from_str(
        "\
sinks:
  - {type: webhook, name: ops, url: 'http://alerts.example.com/x', secretRef: {name: s, key: k}}
  - {type: webhook, name: ops, url: 'https://user:pw@alerts.example.com/x', secretRef: {name: s, key: k}}
  - {type: slack, name: Team, secretRef: {name: s, key: k}}
",
    )
    .unwrap();
    let p = c.problems().join("\n");
    assert!(p.contains("alert sink webhook/ops: url http://alerts.example.com/x: http:// is only allowed to a loopback address"), "{p}");
    assert!(p.contains("credentials in the URL"), "{p}");
    assert!(!p.contains("pw"), "{p}");
    assert!(p.contains("already used"), "{p}");
    assert!(
        p.contains("alert sink slack/Team: name must be a DNS label"),
        "{p}"
    );
}

#[test]
fn urls_are_checked_and_redacted() {
    for ok in [
        "https://hooks.example.com/x",
        "http://127.0.0.1:8080/x",
        "http://[::1]:8080/x",
        "http://localhost/x",
    ] {
        assert!(parse_url("webhook/a", ok, false).is_ok(), "{ok}");
    }
    for bad in [
        "http://10.0.0.1/x",
        "ftp://h/x",
        "not a url",
        "https://u:p@h/x",
    ] {
        assert!(parse_url("webhook/a", bad, false).is_err(), "{bad}");
    }
    assert_eq!(
        redact("https://hooks.slack.com/services/T0/B0/XYZ", true),
        "https://hooks.slack.com/…"
    );
    assert_eq!(
        redact("https://u:p@h.example:8443/hook?token=abc#f", false),
        "https://h.example:8443/hook?…"
    );
    // A bad Slack URL from the Secret is reported without being echoed.
    let e = parse_url("slack/team", "http://hooks.slack.com/services/XYZ", true)
        .unwrap_err()
        .to_string();
    assert!(
        !e.contains("XYZ") && e.starts_with("alert sink slack/team: "),
        "{e}"
    );
}

#[test]
fn building_needs_the_secret_and_never_prints_it() {
    let cfg = SinkConfig::Webhook {
        name: "ops".into(),
        url: "https://h.example/x".into(),
        secret_ref: Some(SecretKeyRef {
            name: "s".into(),
            key: "k".into(),
            namespace: None,
        }),
        oci_vault: None,
    };
    let res = SinkResources {
        client: None,
        agent: agent(),
        secret: None,
        http: HttpOptions::default(),
        oci: None,
    };
    // With its secret an HTTPS sink builds (rustls with ring, platform roots).
    let with_secret = SinkResources {
        secret: Some(SecretBytes::new(KEY)),
        ..res.clone()
    };
    let sink = build(&cfg, with_secret).expect("HTTPS webhook sink");
    assert_eq!(sink.name(), "webhook/ops");
    let err = build(&cfg, res.clone())
        .err()
        .expect("no secret")
        .to_string();
    assert_eq!(
        err,
        "alert sink webhook/ops: the secretRef value is required"
    );
    let events = SinkConfig::Events {
        name: "cluster".into(),
        agent_ref: AgentRef {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: "agent-0".into(),
            namespace: None,
        },
        reporting_controller: "gitops-agent".into(),
    };
    let err = build(&events, res).err().expect("no client").to_string();
    assert_eq!(
        err,
        "alert sink events/cluster: a Kubernetes client is required"
    );
    assert_eq!(
        format!("{:?}", SecretBytes::new("hunter2")),
        "SecretBytes(7 bytes)"
    );
}

#[test]
fn truncation_respects_characters() {
    assert_eq!(crate::core::truncate("short", 10), "short");
    let cut = crate::core::truncate(&"é".repeat(100), 11);
    assert!(cut.len() <= 11 && cut.ends_with('…'), "{cut}");
    assert_eq!(super::event::short("v1.2.0"), "v1.2.0");
}
