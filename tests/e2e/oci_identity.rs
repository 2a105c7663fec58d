//! OKE workload identity end to end, on loopback: a service account of the local control
//! plane, a token the API server issued for it (TokenRequest), and the stand-ins of
//! tests/oci/standin.py (the token exchange checks that token with a TokenReview; Vault and
//! Notifications verify every request's signature against the session key in the RPST).
//! The agent signs with nothing but that token; the official `oci` SDK, as a client of the
//! same stand-ins, shows they speak the real wire format.

#[path = "../harness/git.rs"]
mod git;
#[path = "../harness/mod.rs"]
mod harness;
#[path = "../harness/oci.rs"]
mod standin;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use gitops_agent::oci;
use harness::control_plane;
use serde_json::Value;

use standin::{SECRET_ID, TOPIC_ID, WAIT, setup, token_file};

const SLACK_SECRET: &str = "ocid1.vaultsecret.oc1.iad.slack";

#[tokio::test]
async fn the_agent_signs_with_workload_identity_and_the_stand_ins_verify_it() {
    let (ns, s, work) = setup("oci-wi", 600, 0).await;
    let token = token_file(&ns, work.path()).await;

    // Vault: the secret bundle, with nothing but the service-account token.
    let bundle = s.url(&format!("/20190301/secretbundles/{SECRET_ID}"));
    let out = s.raw_request(&token, &["GET", &bundle]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("200 OK"), "{stdout}");
    let content = base64::engine::general_purpose::STANDARD.encode("db-password");
    assert!(stdout.contains(&content), "{stdout}");

    // Notifications: a signed POST with a body; the stand-in saw which workload sent it.
    let body = work.path().join("message.json");
    std::fs::write(
        &body,
        r#"{"title":"drift","body":"Deployment/shop/web drifted"}"#,
    )
    .unwrap();
    let path = format!("/20181201/topics/{TOPIC_ID}/messages");
    let out = s.raw_request(
        &token,
        &["POST", &s.url(&path), "--body", body.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let messages = s.log("messages.jsonl");
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0]["principal"],
        format!("system:serviceaccount:{}:gitops-agent", ns.name)
    );

    // What OCI would refuse, the stand-ins refuse: a body that is not the signed one, a
    // stale date, a topic that is gone.
    let url = s.url(&path);
    let printed = |extra: &[&str]| {
        let args = [
            &[
                "POST",
                &url,
                "--body",
                body.to_str().unwrap(),
                "--print-only",
            ],
            extra,
        ]
        .concat();
        headers_of(&s.raw_request(&token, &args).stdout)
    };
    let headers = printed(&[]);
    let http = s.http();
    let send = |headers: Vec<(String, String)>, body: &'static str| {
        let mut req = http.post(s.url(&path)).body(body);
        // The client sets the length of what it sends.
        for (n, v) in headers.into_iter().filter(|(n, _)| n != "content-length") {
            req = req.header(n, v);
        }
        async move { req.send().await.unwrap() }
    };
    // Same length, other bytes: only the hash tells.
    let altered = send(
        headers,
        r#"{"title":"drift","body":"Deployment/shop/web DRIFTED"}"#,
    )
    .await;
    assert_eq!(altered.status(), 401);
    assert!(
        altered
            .text()
            .await
            .unwrap()
            .contains("does not match its signed hash")
    );
    let old = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(600));
    let response = send(
        printed(&["--date", &old]),
        r#"{"title":"drift","body":"Deployment/shop/web drifted"}"#,
    )
    .await;
    assert_eq!(response.status(), 401);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("more than 5 minutes")
    );
    let out = s.raw_request(
        &token,
        &[
            "POST",
            &s.url("/20181201/topics/ocid1.onstopic.oc1..gone/messages"),
            "--body",
            body.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("404"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A token the cluster did not issue is refused at the exchange, with a clear error.
    let forged = work.path().join("forged");
    std::fs::write(&forged, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln").unwrap();
    let out = s.raw_request(&forged, &["GET", &bundle]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the token exchange refused the service account (403)"),
        "{stderr}"
    );
    assert!(!stderr.contains("eyJ"), "no token in errors: {stderr}");
}

fn headers_of(stdout: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(stdout);
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

/// How long the refresh test's tokens live: short enough to watch a refresh and an expiry,
/// long enough that a slow machine still refreshes (at half-life) well before expiry.
const LIFETIME: u64 = 20;

/// The session is refreshed at about half its life with a new key, before it expires; an
/// expired token is refused, and requests signed after the refresh go through.
#[tokio::test]
async fn workload_identity_refreshes_at_half_life_with_a_new_key() {
    let (ns, s, work) = setup("oci-refresh", LIFETIME, 0).await;
    let opts = oci::auth::workload::Options {
        service_host: "127.0.0.1".into(),
        port: s.exchange,
        token_path: token_file(&ns, work.path()).await,
        ca_path: s.ca(),
        region: None,
    };
    let identity = oci::auth::Identity::workload(opts).await.unwrap();
    let first = identity.credentials();
    let first_expiry = identity.expires().unwrap();
    let started = Instant::now();
    while identity.credentials().key_id == first.key_id {
        assert!(started.elapsed() < WAIT, "never refreshed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refreshed = SystemTime::now();
    assert!(
        refreshed < first_expiry,
        "refreshed before the first token expired"
    );
    let second = identity.credentials();
    assert_ne!(
        first.key.public_spki_der(),
        second.key.public_spki_der(),
        "a new key"
    );
    assert!(s.exchanges() >= 2);

    // Past the first token's expiry: it is refused; the identity's current one is not.
    while SystemTime::now() <= first_expiry {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = s.url(&format!("/20190301/secretbundles/{SECRET_ID}"));
    let signed = |creds: &oci::auth::Credentials| {
        let mut headers = http::HeaderMap::new();
        let uri: http::Uri = url.parse().unwrap();
        let c = (creds.key_id.as_str(), creds.key.as_ref());
        let body = oci::signing::BodyHeaders::ForMethod;
        oci::signing::sign(
            &http::Method::GET,
            &uri,
            &mut headers,
            b"",
            c,
            body,
            SystemTime::now(),
        )
        .unwrap();
        headers
    };
    let http = s.http();
    let old = http.get(&url).headers(signed(&first)).send().await.unwrap();
    assert_eq!(old.status(), 401);
    assert!(old.text().await.unwrap().contains("expired"));
    let oci_client = oci::Client::new(identity, Some(&s.ca())).unwrap();
    let request = oci::request("GET", &url, Vec::new(), None, &[]).unwrap();
    let response = oci_client.send(&request).await.unwrap();
    assert_eq!(response.status(), 200);

    // OCI stops honouring the current token (here: the stand-ins restart with a new key):
    // the 401 renews the session once and the same request is sent again, and succeeds.
    let before = oci_client.identity().credentials().key_id;
    let s = s.restart();
    let response = oci_client.send(&request).await.unwrap();
    assert_eq!(response.status(), 200, "renewed after the 401");
    assert_ne!(oci_client.identity().credentials().key_id, before);
    let services: Vec<Value> = s
        .log("requests.jsonl")
        .into_iter()
        .filter(|r| r["role"] == "services")
        .collect();
    assert_eq!(services.len(), 2, "one refused, one accepted: {services:?}");
    assert_eq!(services[0]["status"], 401);
    eprintln!(
        "refreshed {:?} after the first exchange (token lifetime {LIFETIME} s)",
        refreshed
            .duration_since(first_expiry - Duration::from_secs(LIFETIME))
            .unwrap_or_default(),
    );
}

/// The official SDK, as a client of the stand-ins (exchange on OKE's fixed port 12250):
/// its workload-identity signer gets a token, and its Vault and Notifications clients
/// are answered, so the stand-ins speak the real wire format.
#[tokio::test]
async fn the_oci_sdk_is_a_client_of_the_stand_ins() {
    let (ns, s, work) = setup("oci-sdk", 600, oci::auth::workload::PORT).await;
    let token = token_file(&ns, work.path()).await;
    let script = format!(
        r#"
import oci
signer = oci.auth.signers.get_oke_workload_identity_resource_principal_signer(service_account_token_path={token:?})
endpoint = "https://127.0.0.1:{port}"
secrets = oci.secrets.SecretsClient({{}}, signer=signer, service_endpoint=endpoint)
bundle = secrets.get_secret_bundle({SECRET_ID:?}).data
print("secret", bundle.secret_bundle_content.content)
ons = oci.ons.NotificationDataPlaneClient({{}}, signer=signer, service_endpoint=endpoint)
details = oci.ons.models.MessageDetails(title="t", body="from the sdk")
print("message", ons.publish_message({TOPIC_ID:?}, details).data.message_id)
"#,
        token = token.display().to_string(),
        port = s.services,
    );
    let stdout = s.sdk(&script);
    let content = base64::engine::general_purpose::STANDARD.encode("db-password");
    assert!(stdout.contains(&format!("secret {content}")), "{stdout}");
    assert!(stdout.contains("message "), "{stdout}");
    assert_eq!(
        s.log("messages.jsonl")[0]["message"]["body"],
        "from the sdk"
    );
}

/// The daemon with an OCI Notifications alert sink and nothing but its service-account
/// token: an out-of-band edit is published to the topic, signed with workload identity.
#[tokio::test]
async fn drift_is_published_to_oci_notifications_with_workload_identity() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams};
    let (ns, s, work) = setup("oci-ons", 600, 0).await;
    let token = token_file(&ns, work.path()).await;
    // A Slack-compatible receiver whose URL (the credential) is kept in Vault.
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let hook = {
        let received = received.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| async move {
                received.lock().unwrap().push(body);
                "ok"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://127.0.0.1:{port}/hook")
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let secrets =
        serde_json::json!({SECRET_ID: b64.encode("db-password"), SLACK_SECRET: b64.encode(&hook)});
    std::fs::write(s.dir.path().join("secrets.json"), secrets.to_string()).unwrap();
    let upstream = git::Upstream::new();
    let repo = upstream.create("apps");
    repo.push("main", &[("deploy/a.yaml", &harness::cm("a", "1"))], &[]);
    // The webhook receiver, with the password of the Notifications subscription URL.
    let hooks = work.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::write(hooks.join("oci-notifications"), "ons-password").unwrap();
    let hook_port = git::free_port();
    let config = format!(
        "stateDir: {dir}/state\nnamespace: {ns}\n\
         sources:\n  - name: apps\n    url: {url}\n    ref: {{branch: main}}\n    interval: 1h\n    triggers: {{ociNotifications: [{TOPIC_ID}]}}\n\
         webhook: {{listen: \"127.0.0.1:{hook_port}\", secretsDir: {hooks}}}\n\
         syncs:\n  - name: apps\n    source: apps\n    path: deploy\n    namespace: {ns}\n    health: {{wait: false}}\n\
         alerts:\n  sinks:\n    - type: ociNotifications\n      name: ons\n      topicId: {TOPIC_ID}\n      endpoint: https://127.0.0.1:{port}\n\
             \x20   - {{type: slack, name: team, blocks: false, ociVault: {{secretId: {SLACK_SECRET}}}}}\n\
             \x20   - {{type: slack, name: gone, ociVault: {{secretId: ocid1.vaultsecret.oc1.iad.gone}}}}\n\
         oci:\n  auth: workloadIdentity\n  region: us-ashburn-1\n  caFile: {ca}\n  endpoints: {{secrets: \"https://127.0.0.1:{port}\", notifications: \"https://127.0.0.1:{port}\"}}\n\
         \x20 tokenExchange: {{host: 127.0.0.1, port: {exchange}, serviceAccountToken: {token}, clusterCa: {ca}}}\n",
        dir = work.path().display(),
        ns = ns.name,
        url = repo.file_url(),
        port = s.services,
        ca = s.ca().display(),
        exchange = s.exchange,
        token = token.display(),
        hooks = hooks.display(),
    );
    let path = work.path().join("config.yaml");
    std::fs::write(&path, config).unwrap();
    // `check` reports the identity: kind, region, expiry; never the token.
    let out = Command::new(env!("CARGO_BIN_EXE_gitops-agent"))
        .args(["check", "--config"])
        .arg(&path)
        .arg("--kubeconfig")
        .arg(control_plane().kubeconfig())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("oci:      OKE workload identity"),
        "{stdout}"
    );
    assert!(
        stdout.contains("region us-ashburn-1") && stdout.contains("token expires"),
        "{stdout}"
    );
    assert!(!stdout.contains("eyJ"), "{stdout}");
    let agent = standin::Agent::start(&path, work.path().join("agent.log"));
    let agent_log = || agent.log();
    let cms: Api<ConfigMap> = Api::namespaced(control_plane().client().await, &ns.name);
    let started = Instant::now();
    while cms.get_opt("a").await.unwrap().is_none() {
        assert!(started.elapsed() < WAIT, "never applied:\n{}", agent_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Watched and confirmed first (the sync's own alert, if any, comes before).
    let pp = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    let edit = serde_json::json!({"data": {"value": "edited"}});
    let published = || {
        s.log("messages.jsonl").into_iter().find(|m| {
            m["message"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("ConfigMap") && b.contains("/a"))
        })
    };
    let started = Instant::now();
    let message = loop {
        cms.patch("a", &pp, &Patch::Merge(&edit)).await.unwrap();
        if let Some(m) = published() {
            break m;
        }
        assert!(
            started.elapsed() < WAIT,
            "no message:\n{}\n{:?}",
            agent_log(),
            s.log("requests.jsonl")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Notifications as a trigger: the subscription is confirmed (a GET of its URL), and a
    // message makes the agent fetch now (the source's interval is an hour).
    let http = reqwest::Client::new();
    let deliver = |extra: &[(&str, String)]| {
        let mut req = http
            .post(format!(
                "http://127.0.0.1:{hook_port}/hooks/oci-notifications"
            ))
            .basic_auth("ons", Some("ons-password"))
            .header("content-type", "application/json")
            .header("x-oci-ns-topicocid", TOPIC_ID)
            .body("{}");
        for (n, v) in extra {
            req = req.header(*n, v);
        }
        req.send()
    };
    let confirmation = format!(
        "https://127.0.0.1:{}/20181201/subscriptions/ocid1.onssubscription.oc1..s/confirmation?token=t",
        s.services
    );
    let r = deliver(&[("x-oci-ns-confirmationurl", confirmation)])
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(s.log("confirmations.jsonl").len(), 1);
    repo.push("main", &[("deploy/a.yaml", &harness::cm("a", "2"))], &[]);
    let r = deliver(&[("x-oci-ns-messageid", "m-1".into())])
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let started = Instant::now();
    while cms.get("a").await.unwrap().data.unwrap()["value"] != "2" {
        assert!(
            started.elapsed() < WAIT,
            "the message did not trigger a fetch:\n{}",
            agent_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The Slack sink, built with its URL from Vault, got the same alert.
    let started = Instant::now();
    while !received
        .lock()
        .unwrap()
        .iter()
        .any(|b| b.contains("ConfigMap"))
    {
        assert!(started.elapsed() < WAIT, "no Slack alert:\n{}", agent_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !agent_log().contains(&hook),
        "the Vault-held URL is never logged"
    );
    assert_eq!(
        message["principal"],
        format!("system:serviceaccount:{}:gitops-agent", ns.name)
    );
    assert!(
        message["message"]["title"]
            .as_str()
            .unwrap()
            .starts_with("gitops-agent: "),
        "{message}"
    );
    assert!(!agent_log().contains("eyJ"), "no token in the log");
}
