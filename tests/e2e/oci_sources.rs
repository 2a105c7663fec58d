//! OCI DevOps code repositories and Object Storage as sources, end to end on loopback: the
//! stand-ins of tests/oci/standin.py answer from a real Git repository (`git archive`) and
//! a directory of objects, verifying every signature; the daemon holds nothing but the
//! service-account token the local API server issued. The official `oci` SDK, as a client
//! of the same stand-ins, shows they speak the real wire format.

#[path = "../harness/git.rs"]
mod git;
#[path = "../harness/mod.rs"]
mod harness;
#[path = "../harness/oci.rs"]
mod standin;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use harness::control_plane;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use standin::{Agent, StandIn, TOPIC_ID, WAIT, setup, token_file, wait_value};

const REPO_ID: &str = "ocid1.devopsrepository.oc1.iad.shop";
const HOOK_SECRET: &str = "ocid1.vaultsecret.oc1.iad.hook";
const SLACK_SECRET: &str = "ocid1.vaultsecret.oc1.iad.slack";

/// The official SDK's DevOps and Object Storage clients, signing with its own OKE
/// workload-identity signer (exchange on OKE's fixed port), answered by the stand-ins.
#[tokio::test]
async fn the_oci_sdk_is_a_client_of_the_devops_and_object_storage_stand_ins() {
    let (ns, s, work) = setup("oci-sdk-src", 600, gitops_agent::oci::auth::workload::PORT).await;
    let token = token_file(&ns, work.path()).await;
    let upstream = git::Upstream::new();
    let repo = upstream.create("shop");
    let commit = repo.push("main", &[("deploy/a.yaml", &harness::cm("a", "1"))], &[]);
    write_devops(&s, repo.path());
    let bucket = s.dir.path().join("buckets/tenancyns/manifests");
    std::fs::create_dir_all(bucket.join("apps")).unwrap();
    std::fs::write(bucket.join("apps/a.yaml"), harness::cm("a", "1")).unwrap();
    let script = format!(
        r#"
import io, tarfile, oci
signer = oci.auth.signers.get_oke_workload_identity_resource_principal_signer(service_account_token_path={token:?})
endpoint = "https://127.0.0.1:{port}"
devops = oci.devops.DevopsClient({{}}, signer=signer, service_endpoint=endpoint)
refs = devops.list_refs({REPO_ID:?}, ref_type="BRANCH", ref_name="main").data
print("ref", refs.items[0].ref_name, refs.items[0].commit_id)
print("commit", devops.get_commit({REPO_ID:?}, refs.items[0].commit_id).data.commit_id)
archive = devops.get_repository_archive_content({REPO_ID:?}, ref_name=refs.items[0].commit_id, format="tar.gz").data.content
print("archive", sorted(tarfile.open(fileobj=io.BytesIO(archive)).getnames()))
os = oci.object_storage.ObjectStorageClient({{}}, signer=signer, service_endpoint=endpoint)
listed = os.list_objects("tenancyns", "manifests", prefix="apps/", fields="name,size,etag").data
print("listed", [(o.name, o.size) for o in listed.objects])
head = os.head_object("tenancyns", "manifests", "apps/a.yaml")
got = os.get_object("tenancyns", "manifests", "apps/a.yaml")
print("etag", head.headers["etag"] == got.headers["etag"], len(got.data.content))
"#,
        token = token.display().to_string(),
        port = s.services,
    );
    let stdout = s.sdk(&script);
    assert!(stdout.contains(&format!("ref main {commit}")), "{stdout}");
    assert!(stdout.contains(&format!("commit {commit}")), "{stdout}");
    let top = format!("shop.git-{}", &commit[..12]);
    assert!(
        stdout.contains(&format!("'{top}/deploy/a.yaml'")),
        "{stdout}"
    );
    let size = harness::cm("a", "1").len();
    assert!(
        stdout.contains(&format!("listed [('apps/a.yaml', {size})]")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("etag True {size}")), "{stdout}");
    // Every one of those requests was signed and verified.
    let refused: Vec<_> = s
        .log("requests.jsonl")
        .into_iter()
        .filter(|r| r["role"] == "services" && r["status"] != 200)
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}

/// Two repositories: `shop` (deploy/a.yaml), served by the DevOps stand-in, and `plain`
/// (p.yaml), a Git source that needs no OCI.
fn shop_and_plain(s: &StandIn) -> (git::Upstream, git::Repo, git::Repo) {
    let upstream = git::Upstream::new();
    let repo = upstream.create("shop");
    repo.push("main", &[("deploy/a.yaml", &harness::cm("a", "1"))], &[]);
    write_devops(s, repo.path());
    let plain = upstream.create("plain");
    plain.push("main", &[("p.yaml", &harness::cm("p", "1"))], &[]);
    (upstream, repo, plain)
}

fn write_devops(s: &StandIn, repo: &Path) {
    std::fs::write(
        s.dir.path().join("devops.json"),
        serde_json::json!({ REPO_ID: repo }).to_string(),
    )
    .unwrap();
}

/// What the issue asks for: a daemon with an OCI DevOps source, a Vault-held webhook secret
/// and an OCI Notifications alert sink, holding only its service-account token. A push to
/// the repository behind the DevOps stand-in plus a Notifications message applies the new
/// revision; drift raises a Notifications message; a rotated Vault secret is picked up; an
/// archive over its cap fails its own sync only, in status and as an alert.
#[tokio::test]
async fn a_devops_source_a_vault_webhook_secret_and_notifications_end_to_end() {
    let (ns, s, work) = setup("oci-devops", 600, 0).await;
    let token = token_file(&ns, work.path()).await;
    let b64 = base64::engine::general_purpose::STANDARD;
    // Vault holds the subscription's password and a Slack receiver's URL (both rotated below).
    let (slack1, got1) = receiver().await;
    let (slack2, got2) = receiver().await;
    let vault = std::sync::Mutex::new(serde_json::Map::new());
    let write_secret = |id: &str, value: &str| {
        let mut v = vault.lock().unwrap();
        v.insert(id.into(), b64.encode(value).into());
        let text = serde_json::Value::Object(v.clone()).to_string();
        std::fs::write(s.dir.path().join("secrets.json"), text).unwrap();
    };
    write_secret(HOOK_SECRET, "ons-password");
    write_secret(SLACK_SECRET, &slack1);
    let (_upstream, repo, plain) = shop_and_plain(&s);
    let hook_port = git::free_port();
    let config = format!(
        "stateDir: {dir}/state\nnamespace: {ns}\n\
         sources:\n\
         \x20 - name: shop\n    interval: 1h\n    ociDevOps: {{repositoryId: {REPO_ID}, ref: {{branch: main}}}}\n    triggers: {{ociNotifications: [{TOPIC_ID}]}}\n\
         \x20 - name: big\n    interval: 1h\n    ociDevOps: {{repositoryId: {REPO_ID}, maxArchiveBytes: 100}}\n\
         \x20 - name: plain\n    url: {plain}\n    interval: 1h\n\
         webhook: {{listen: \"127.0.0.1:{hook_port}\", ociVault: {{oci-notifications: {{secretId: {HOOK_SECRET}}}}}}}\n\
         syncs:\n\
         \x20 - {{name: shop, source: shop, path: deploy, namespace: {ns}, health: {{wait: false}}}}\n\
         \x20 - {{name: big, source: big, path: deploy, namespace: {ns}, health: {{wait: false}}}}\n\
         \x20 - {{name: plain, source: plain, namespace: {ns}, health: {{wait: false}}}}\n\
         alerts:\n  sinks:\n    - {{type: ociNotifications, name: ons, topicId: {TOPIC_ID}, endpoint: \"https://127.0.0.1:{port}\"}}\n\
         \x20   - {{type: slack, name: team, blocks: false, ociVault: {{secretId: {SLACK_SECRET}}}}}\n\
         {oci}",
        dir = work.path().display(),
        ns = ns.name,
        plain = plain.file_url(),
        port = s.services,
        oci = s.oci_section(
            &token,
            &["secrets", "notifications", "devops"],
            "  vaultRefresh: 1s\n"
        ),
    );
    let (agent, path) = Agent::run(work.path(), &config);
    let cms: Api<ConfigMap> = Api::namespaced(control_plane().client().await, &ns.name);
    wait_value(
        &cms,
        "a",
        "1",
        &agent,
        "the DevOps source was never applied",
    )
    .await;
    wait_value(&cms, "p", "1", &agent, "the Git source was never applied").await;

    // The archive over its cap: that sync alone fails, with the reason, as an alert.
    let too_large = || {
        s.log("messages.jsonl").into_iter().find(|m| {
            m["message"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("more than 100 bytes"))
        })
    };
    let started = Instant::now();
    while too_large().is_none() {
        assert!(
            started.elapsed() < WAIT,
            "no alert for the archive over its cap:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And in status, the others unaffected.
    let status = || standin::status(&path);
    let row = |stdout: &str, name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{stdout}"))
            .to_owned()
    };
    let started = Instant::now();
    let stdout = loop {
        let stdout = status();
        if row(&stdout, "big").contains("Failed") {
            break stdout;
        }
        assert!(
            started.elapsed() < WAIT,
            "the failure is not in status:\n{stdout}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(row(&stdout, "shop").contains("Succeeded"), "{stdout}");
    assert!(row(&stdout, "plain").contains("Succeeded"), "{stdout}");

    // A push, and a Notifications message (the subscription's password from Vault).
    let commit = repo.push("main", &[("deploy/a.yaml", &harness::cm("a", "2"))], &[]);
    let http = reqwest::Client::new();
    let deliver = |password: &str, id: &str| {
        http.post(format!(
            "http://127.0.0.1:{hook_port}/hooks/oci-notifications"
        ))
        .basic_auth("ons", Some(password))
        .header("content-type", "application/json")
        .header("x-oci-ns-topicocid", TOPIC_ID)
        .header("x-oci-ns-messageid", id)
        .body("{}")
        .send()
    };
    let r = deliver("ons-password", "m-1").await.unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    wait_value(
        &cms,
        "a",
        "2",
        &agent,
        "the message did not apply the new commit",
    )
    .await;
    let archives = s
        .log("requests.jsonl")
        .into_iter()
        .filter(|r| {
            r["path"].as_str().is_some_and(|p| {
                p.contains("/archive/content") && p.contains(&commit) && r["status"] == 200
            })
        })
        .count();
    // The `shop` source downloaded it once; `big` was refused (no 200).
    assert_eq!(archives, 1, "{:?}", s.log("requests.jsonl"));

    // Rotation in Vault: the new password works within the refresh, the old one stops.
    write_secret(HOOK_SECRET, "rotated-password");
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let r = deliver("rotated-password", &format!("r-{n}"))
            .await
            .unwrap();
        if r.status() == 202 {
            break;
        }
        assert_eq!(r.status(), 401);
        assert!(
            started.elapsed() < WAIT,
            "the rotated secret was never read:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = deliver("ons-password", "old").await.unwrap();
    assert_eq!(r.status(), 401);

    // Drift raises a Notifications message, and a Slack one at the rotated URL.
    let started = Instant::now();
    while got1.lock().unwrap().is_empty() {
        assert!(started.elapsed() < WAIT, "no Slack alert:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    write_secret(SLACK_SECRET, &slack2);
    let pp = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    let edit = serde_json::json!({"data": {"value": "edited"}});
    let about_a = || {
        s.log("messages.jsonl")
            .into_iter()
            .filter(|m| {
                m["message"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("ConfigMap") && b.contains("/a"))
            })
            .count()
    };
    let before = about_a();
    let started = Instant::now();
    while about_a() == before {
        cms.patch("a", &pp, &Patch::Merge(&edit)).await.unwrap();
        assert!(
            started.elapsed() < WAIT,
            "no drift message:\n{}\n{:?}",
            agent.log(),
            s.log("messages.jsonl")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Each toggle is an alert (drift detected, then resolved): once the rotated URL is
    // read, they go there.
    let started = Instant::now();
    let mut n = 0;
    while got2.lock().unwrap().is_empty() {
        n += 1;
        let value = if n % 2 == 0 { "2" } else { "edited" };
        let edit = serde_json::json!({"data": {"value": value}});
        cms.patch("a", &pp, &Patch::Merge(&edit)).await.unwrap();
        assert!(
            started.elapsed() < WAIT,
            "no Slack alert at the rotated URL:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let log = agent.log();
    for secret in ["ons-password", "rotated-password", "eyJ", &slack1, &slack2] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

/// Object Storage: an archive object (its ETag is the revision) and a prefix of objects;
/// a changed object applies, an unchanged bucket downloads nothing again.
#[tokio::test]
async fn object_storage_archives_and_prefixes_are_sources() {
    let (ns, s, work) = setup("oci-bucket", 600, 0).await;
    let token = token_file(&ns, work.path()).await;
    let bucket = s.dir.path().join("buckets/tenancyns/manifests");
    std::fs::create_dir_all(bucket.join("live/apps")).unwrap();
    std::fs::write(bucket.join("live/apps/b.yaml"), harness::cm("b", "1")).unwrap();
    std::fs::write(bucket.join("live/notes.txt"), "not a manifest").unwrap();
    let write_archive = |value: &str| {
        let mut b = tar::Builder::new(Vec::new());
        let content = harness::cm("c", value);
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "deploy/c.yaml", content.as_bytes())
            .unwrap();
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let tmp = bucket.join("release.tar.gz.tmp");
        std::fs::write(&tmp, gz.finish().unwrap()).unwrap();
        std::fs::rename(tmp, bucket.join("release.tar.gz")).unwrap();
    };
    write_archive("1");
    let config = format!(
        "stateDir: {dir}/state\nnamespace: {ns}\n\
         sources:\n\
         \x20 - name: release\n    interval: 1s\n    ociObjectStorage: {{namespace: tenancyns, bucket: manifests, object: release.tar.gz}}\n\
         \x20 - name: live\n    interval: 1s\n    ociObjectStorage: {{namespace: tenancyns, bucket: manifests, prefix: live}}\n\
         syncs:\n\
         \x20 - {{name: release, source: release, path: deploy, namespace: {ns}, health: {{wait: false}}}}\n\
         \x20 - {{name: live, source: live, path: apps, namespace: {ns}, health: {{wait: false}}}}\n\
         {oci}",
        dir = work.path().display(),
        ns = ns.name,
        oci = s.oci_section(&token, &["objectstorage"], ""),
    );
    let (agent, _) = Agent::run(work.path(), &config);
    let cms: Api<ConfigMap> = Api::namespaced(control_plane().client().await, &ns.name);
    wait_value(
        &cms,
        "c",
        "1",
        &agent,
        "the archive object was never applied",
    )
    .await;
    wait_value(&cms, "b", "1", &agent, "the prefix was never applied").await;
    let gets = |name: &str| {
        s.log("requests.jsonl")
            .iter()
            .filter(|r| {
                r["method"] == "GET"
                    && r["path"].as_str().is_some_and(|p| p.ends_with(name))
                    && r["status"] == 200
            })
            .count()
    };
    // Polled every second: HEADs and lists go on, but nothing unchanged is downloaded again.
    let started = Instant::now();
    while s
        .log("requests.jsonl")
        .iter()
        .filter(|r| r["method"] == "HEAD")
        .count()
        < 4
    {
        assert!(started.elapsed() < WAIT, "no polling:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(gets("/o/release.tar.gz"), 1);
    assert_eq!(gets("/o/live%2Fapps%2Fb.yaml"), 1);
    assert_eq!(
        gets("/o/live%2Fnotes.txt"),
        0,
        "what is not read is not downloaded"
    );
    write_archive("2");
    std::fs::write(bucket.join("live/apps/b.yaml"), harness::cm("b", "2")).unwrap();
    wait_value(&cms, "c", "2", &agent, "the new archive was never applied").await;
    wait_value(
        &cms,
        "b",
        "2",
        &agent,
        "the changed object was never applied",
    )
    .await;
    assert_eq!(gets("/o/release.tar.gz"), 2);
}

/// A receiver of alert webhooks on loopback; what it got, as text.
async fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let got = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| async move {
            got.lock().unwrap().push(body);
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}/hook"), received)
}

/// The token exchange starts refusing (the service account is deleted, so its token no
/// longer passes the TokenReview): the refresh at half-life fails, which is an alert
/// while the current token is still used; once it expires the OCI source fails in its own
/// status while the Git sync goes on; a new service account and token bring it back.
#[tokio::test]
async fn a_failed_refresh_is_alerted_and_stops_only_what_needs_oci() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let (ns, s, work) = setup("oci-refresh-fail", 20, 0).await;
    let token = token_file(&ns, work.path()).await;
    let (_upstream, repo, plain) = shop_and_plain(&s);
    let (hook, received) = receiver().await;
    // A Slack-compatible receiver, its URL in Vault (read at start, while the identity works).
    let slack =
        serde_json::json!({ HOOK_SECRET: base64::engine::general_purpose::STANDARD.encode(&hook) });
    std::fs::write(s.dir.path().join("secrets.json"), slack.to_string()).unwrap();
    let config = format!(
        "stateDir: {dir}/state\nnamespace: {ns}\n\
         sources:\n\
         \x20 - name: shop\n    interval: 2s\n    ociDevOps: {{repositoryId: {REPO_ID}}}\n\
         \x20 - name: plain\n    url: {plain}\n    interval: 1s\n\
         syncs:\n\
         \x20 - {{name: shop, source: shop, path: deploy, namespace: {ns}, health: {{wait: false}}}}\n\
         \x20 - {{name: plain, source: plain, namespace: {ns}, health: {{wait: false}}}}\n\
         alerts:\n  sinks:\n    - {{type: slack, name: team, blocks: false, ociVault: {{secretId: {HOOK_SECRET}}}}}\n\
         {oci}",
        dir = work.path().display(),
        ns = ns.name,
        plain = plain.file_url(),
        oci = s.oci_section(&token, &["devops", "secrets"], ""),
    );
    let (agent, _) = Agent::run(work.path(), &config);
    let client = control_plane().client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    wait_value(
        &cms,
        "a",
        "1",
        &agent,
        "the DevOps source was never applied",
    )
    .await;
    let sas: Api<ServiceAccount> = Api::namespaced(client, &ns.name);
    sas.delete("gitops-agent", &Default::default())
        .await
        .unwrap();
    let alerted = |what: &str| {
        received
            .lock()
            .unwrap()
            .iter()
            .find(|b| b.contains(what))
            .cloned()
    };
    let started = Instant::now();
    let failing = loop {
        if let Some(b) = alerted("oci/identity: token refresh failed") {
            break b;
        }
        assert!(
            started.elapsed() < WAIT,
            "no identity alert:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(failing.contains("the current token is kept"), "{failing}");
    assert!(failing.contains("403"), "{failing}");
    // Once the token has expired, the DevOps source fails in its status; Git goes on.
    let started = Instant::now();
    while alerted("sync/shop: failed").is_none() {
        assert!(
            started.elapsed() < WAIT,
            "the DevOps sync never failed:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    plain.push("main", &[("p.yaml", &harness::cm("p", "2"))], &[]);
    wait_value(&cms, "p", "2", &agent, "the Git sync stopped with OCI").await;
    // A new service account, and a new token where the pod's is.
    let fresh = control_plane()
        .service_account_token(&ns.name, "gitops-agent")
        .await;
    std::fs::write(&token, fresh).unwrap();
    repo.push("main", &[("deploy/a.yaml", &harness::cm("a", "2"))], &[]);
    wait_value(&cms, "a", "2", &agent, "the DevOps source never came back").await;
    let started = Instant::now();
    while alerted("oci/identity: credentials work again").is_none() {
        assert!(
            started.elapsed() < WAIT,
            "no recovery alert:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!agent.log().contains("eyJ"), "no token in the log");
}

/// Git credentials held in OCI Vault (by secret name and vault, GetSecretBundleByName):
/// a wrong token fails the fetch in status, and once the secret is fixed in Vault the next
/// fetch reads it again and applies; the token never reaches the log.
#[tokio::test]
async fn git_credentials_from_oci_vault_are_read_again_after_a_refusal() {
    const VAULT: &str = "ocid1.vault.oc1.iad.standin";
    let (ns, s, work) = setup("oci-gitcreds", 600, 0).await;
    let token = token_file(&ns, work.path()).await;
    let upstream = git::Upstream::new();
    let repo = upstream.create("private");
    repo.push("main", &[("a.yaml", &harness::cm("a", "1"))], &[]);
    let http = git::HttpGit::start(upstream.root(), "t0ken-right");
    let b64 = base64::engine::general_purpose::STANDARD;
    let set = |content: &str| {
        let secrets = serde_json::json!({ format!("{VAULT}/git-private"): b64.encode(content) });
        std::fs::write(s.dir.path().join("secrets.json"), secrets.to_string()).unwrap();
    };
    set("username: git\ntoken: t0ken-wrong\n");
    let config = format!(
        "stateDir: {dir}/state\nnamespace: {ns}\n\
         sources:\n\
         \x20 - name: private\n    url: {url}\n    interval: 1s\n    ociVault: {{secretName: git-private, vaultId: {VAULT}}}\n\
         syncs:\n\
         \x20 - {{name: private, source: private, namespace: {ns}, health: {{wait: false}}}}\n\
         {oci}",
        dir = work.path().display(),
        ns = ns.name,
        url = http.url("private"),
        oci = s.oci_section(&token, &["secrets"], ""),
    );
    let (agent, path) = Agent::run(work.path(), &config);
    let status = || standin::status(&path);
    let started = Instant::now();
    while !status().contains("Failed") {
        assert!(
            started.elapsed() < WAIT,
            "no failure:\n{}\n{}",
            status(),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        agent.log().contains("authentication failed"),
        "{}",
        agent.log()
    );
    set("username: git\ntoken: t0ken-right\n");
    let cms: Api<ConfigMap> = Api::namespaced(control_plane().client().await, &ns.name);
    wait_value(&cms, "a", "1", &agent, "the fixed secret was never read").await;
    let by_name = s
        .log("requests.jsonl")
        .iter()
        .filter(|r| r["method"] == "POST" && r["path"].as_str().unwrap().contains("getByName"))
        .count();
    assert!(by_name >= 2, "read once per open: {by_name}");
    let log = agent.log();
    assert!(!log.contains("t0ken"), "a token in the log:\n{log}");
}
