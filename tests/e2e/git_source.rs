//! The Git source against real servers on loopback, one per transport: `file://`,
//! `git://` (git daemon), smart HTTP with a token (git http-backend) and SSH with a key
//! and known_hosts (OpenSSH sshd). No Kubernetes control plane is involved.

#[path = "../harness/git.rs"]
mod git;

use git::{GitDaemon, HttpGit, Repo, SshServer, Upstream};
use gitops_agent::source::{Credentials, Error, GitSource, Limits, Reference, SourceSpec};

const TOKEN: &str = "s3cr3t-t0ken-e2e";

fn spec(name: &str, url: &str, credentials: Credentials) -> SourceSpec {
    SourceSpec {
        name: name.into(),
        url: url.into(),
        reference: Reference::Branch("main".into()),
        credentials,
        limits: Limits::default(),
    }
}

fn paths(files: &[gitops_agent::source::File]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

/// What every transport must do: fetch and read a commit, then fetch a pushed commit
/// incrementally, then see nothing new.
async fn fetch_read_push_fetch(repo: &Repo, url: &str, credentials: Credentials) {
    let first = repo.push(
        "main",
        &[
            ("deploy/cm.yaml", "kind: ConfigMap\n"),
            ("deploy/ns.yaml", "kind: Namespace\n"),
            ("README.md", "not synced\n"),
        ],
        &[],
    );
    let state = tempfile::tempdir().unwrap();
    let source = GitSource::new(spec("shop", url, credentials), state.path()).unwrap();

    let fetched = source.fetch().await.unwrap();
    assert_eq!(fetched.revision.commit.to_string(), first);
    assert_eq!(fetched.revision.reference, "refs/heads/main");
    let files = source
        .read(fetched.revision.commit, "deploy")
        .await
        .unwrap();
    assert_eq!(paths(&files), ["deploy/cm.yaml", "deploy/ns.yaml"]);
    assert_eq!(files[0].content, b"kind: ConfigMap\n");

    let second = repo.push(
        "main",
        &[("deploy/web.yaml", "kind: Deployment\n")],
        &["deploy/ns.yaml"],
    );
    let next = source.fetch().await.unwrap();
    assert_eq!(next.revision.commit.to_string(), second);
    // Incremental: the new commit, its two changed trees and one new blob, not the
    // seven objects of the whole history.
    assert!(
        next.received_objects > 0 && next.received_objects <= 4,
        "received {} objects",
        next.received_objects
    );
    let files = source.read(next.revision.commit, "deploy").await.unwrap();
    assert_eq!(paths(&files), ["deploy/cm.yaml", "deploy/web.yaml"]);
    // The earlier revision is still readable from the mirror.
    let old = source
        .read(fetched.revision.commit, "deploy")
        .await
        .unwrap();
    assert_eq!(paths(&old), ["deploy/cm.yaml", "deploy/ns.yaml"]);

    let same = source.fetch().await.unwrap();
    assert_eq!(same.revision, next.revision);
    assert_eq!(same.received_objects, 0);
}

#[tokio::test]
async fn file_transport_fetches_and_follows_pushes() {
    let upstream = Upstream::new();
    let repo = upstream.create("shop");
    let state = tempfile::tempdir().unwrap();
    let first = repo.push("main", &[("deploy/a.yaml", "a")], &[]);
    let source = GitSource::new(
        spec("shop", &repo.file_url(), Credentials::None),
        state.path(),
    )
    .unwrap();
    let fetched = source.fetch().await.unwrap();
    assert_eq!(fetched.revision.commit.to_string(), first);
    let second = repo.push("main", &[("deploy/b.yaml", "b")], &[]);
    let next = source.fetch().await.unwrap();
    assert_eq!(next.revision.commit.to_string(), second);
    let files = source.read(next.revision.commit, "deploy").await.unwrap();
    assert_eq!(paths(&files), ["deploy/a.yaml", "deploy/b.yaml"]);
}

#[tokio::test]
async fn git_daemon_fetches_only_the_configured_ref_incrementally() {
    let upstream = Upstream::new();
    let repo = upstream.create("shop");
    let daemon = GitDaemon::start(upstream.root());
    fetch_read_push_fetch(&repo, &daemon.url("shop"), Credentials::None).await;

    // Another branch's commits never reach the mirror of a source that tracks main.
    let other = repo.push("other", &[("x.yaml", "x")], &[]);
    let state = tempfile::tempdir().unwrap();
    let source = GitSource::new(
        spec("only-main", &daemon.url("shop"), Credentials::None),
        state.path(),
    )
    .unwrap();
    source.fetch().await.unwrap();
    let mirror = git2::Repository::open_bare(source.mirror_path()).unwrap();
    assert!(
        mirror
            .find_commit(git2::Oid::from_str(&other).unwrap())
            .is_err()
    );

    // A tag on the server resolves to its commit.
    let tagged = repo.tag("main", "v1.3.0");
    let mut s = spec("tagged", &daemon.url("shop"), Credentials::None);
    s.reference = Reference::Semver("^1.2".into());
    let fetched = GitSource::new(s, state.path())
        .unwrap()
        .fetch()
        .await
        .unwrap();
    assert_eq!(fetched.revision.commit.to_string(), tagged);
    assert_eq!(fetched.revision.reference, "refs/tags/v1.3.0");
}

#[tokio::test]
async fn git_daemon_missing_repository_is_a_clear_error() {
    let upstream = Upstream::new();
    let daemon = GitDaemon::start(upstream.root());
    let state = tempfile::tempdir().unwrap();
    let url = daemon.url("nope");
    let err = GitSource::new(spec("shop", &url, Credentials::None), state.path())
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("source shop: fetch {url}: ")),
        "{err}"
    );
}

#[tokio::test]
async fn smart_http_with_a_token_fetches_incrementally() {
    let upstream = Upstream::new();
    let repo = upstream.create("shop");
    let http = HttpGit::start(upstream.root(), TOKEN);
    let token = Credentials::Token {
        username: None,
        token: TOKEN.into(),
    };
    fetch_read_push_fetch(&repo, &http.url("shop"), token).await;
}

#[tokio::test]
async fn smart_http_refuses_a_wrong_or_missing_token_without_leaking_it() {
    let upstream = Upstream::new();
    let repo = upstream.create("shop");
    repo.push("main", &[("a.yaml", "a")], &[]);
    let http = HttpGit::start(upstream.root(), TOKEN);
    let url = http.url("shop");
    let state = tempfile::tempdir().unwrap();

    let wrong = Credentials::Token {
        username: Some("deployer".into()),
        token: "wrong-token-value".into(),
    };
    let err = GitSource::new(spec("shop", &url, wrong), state.path())
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("source shop: fetch {url}: authentication failed")),
        "{message}"
    );
    assert!(!message.contains("wrong-token-value"), "{message}");

    let err = GitSource::new(spec("shop", &url, Credentials::None), state.path())
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "source shop: fetch {url}: authentication failed: \
             the server requires credentials and none are configured"
        )
    );

    // Credentials in the URL itself are redacted from the message.
    let with_secret = url.replace("http://", "http://deployer:url-secret-value@");
    let err = GitSource::new(spec("shop", &with_secret, Credentials::None), state.path())
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    let message = format!("{err} {err:?}");
    assert!(!message.contains("url-secret-value"), "{message}");
    assert!(message.contains("http://***@127.0.0.1"), "{message}");
}

fn ssh_credentials(server: &SshServer, key: String, passphrase: Option<&str>) -> Credentials {
    Credentials::Ssh {
        private_key: key,
        passphrase: passphrase.map(Into::into),
        known_hosts: server.known_hosts(),
    }
}

#[tokio::test]
async fn ssh_with_key_and_known_hosts_fetches_incrementally() {
    let upstream = Upstream::new();
    let repo = upstream.create("shop");
    let server = SshServer::start();
    let creds = ssh_credentials(&server, server.client_key(), None);
    fetch_read_push_fetch(&repo, &server.url(repo.path()), creds).await;
}

#[tokio::test]
async fn ssh_with_a_passphrase_protected_key() {
    let upstream = Upstream::new();
    let repo = upstream.create("shop");
    let head = repo.push("main", &[("a.yaml", "a")], &[]);
    let server = SshServer::start();
    let keys = tempfile::tempdir().unwrap();
    let key = git::ssh_keygen(keys.path(), "locked", "correct horse");
    server.authorize(&key.public);
    let url = server.url(repo.path());
    let state = tempfile::tempdir().unwrap();

    let creds = ssh_credentials(&server, key.private.clone(), Some("correct horse"));
    let fetched = GitSource::new(spec("locked", &url, creds), state.path())
        .unwrap()
        .fetch()
        .await
        .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", server.log()));
    assert_eq!(fetched.revision.commit.to_string(), head);

    let creds = ssh_credentials(&server, key.private, Some("wrong horse battery"));
    let err = GitSource::new(spec("locked2", &url, creds), state.path())
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(!err.to_string().contains("wrong horse battery"), "{err}");
}

#[tokio::test]
async fn ssh_refuses_an_unauthorized_key_without_leaking_it() {
    let upstream = Upstream::new();
    let repo = upstream.create("shop");
    repo.push("main", &[("a.yaml", "a")], &[]);
    let server = SshServer::start();
    let keys = tempfile::tempdir().unwrap();
    let stranger = git::ssh_keygen(keys.path(), "stranger", "");
    let url = server.url(repo.path());
    let state = tempfile::tempdir().unwrap();
    let creds = ssh_credentials(&server, stranger.private.clone(), None);
    let err = GitSource::new(spec("shop", &url, creds), state.path())
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("source shop: fetch {url}: authentication failed")),
        "{message}"
    );
    let key_body = stranger.private.lines().nth(1).unwrap();
    assert!(!message.contains(key_body), "{message}");
    assert!(!format!("{err:?}").contains(key_body));
}

#[tokio::test]
async fn ssh_refuses_a_host_key_that_known_hosts_does_not_list() {
    let upstream = Upstream::new();
    let repo = upstream.create("shop");
    repo.push("main", &[("a.yaml", "a")], &[]);
    let server = SshServer::start();
    let url = server.url(repo.path());
    let state = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let impostor = git::ssh_keygen(keys.path(), "impostor", "");
    let impostor_key = impostor.public.split_whitespace().nth(1).unwrap();

    // The right host and port, with another key: a man in the middle, or a rotated key.
    let wrong_key = format!("[127.0.0.1]:{} ssh-ed25519 {impostor_key}\n", server.port());
    // The right key, listed for port 22 only: a different host as far as SSH is concerned.
    let right_key = server.known_hosts();
    let wrong_port = right_key.replace(&format!("[127.0.0.1]:{}", server.port()), "127.0.0.1");
    for (known_hosts, why) in [
        (
            wrong_key,
            "the server's ssh-ed25519 key does not match known_hosts",
        ),
        (wrong_port, "no known_hosts entry for this host"),
    ] {
        let creds = Credentials::Ssh {
            private_key: server.client_key(),
            passphrase: None,
            known_hosts,
        };
        let err = GitSource::new(spec("shop", &url, creds), state.path())
            .unwrap()
            .fetch()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::HostKey { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "source shop: fetch {url}: host key verification failed: [127.0.0.1]:{}: {why}",
                server.port()
            )),
            "{message}"
        );
        assert!(message.contains("(server key SHA256:"), "{message}");
    }
}
