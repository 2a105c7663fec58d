//! Tests of the Git source: tree reading rules on in-memory repositories, and fetching
//! from a local upstream repository.

use super::*;
use git2::{IndexEntry, IndexTime, Signature};
use std::time::Duration;

enum Entry<'a> {
    Blob(&'a [u8]),
    Link(&'a str),
    Gitlink(Oid),
}
use Entry::*;

/// Commits exactly `files` on `branch` (on top of its current head, if any).
fn commit(repo: &Repository, branch: &str, files: &[(&str, Entry<'_>)]) -> Oid {
    let mut index = git2::Index::new().unwrap();
    for (path, e) in files {
        let (mode, id) = match e {
            Blob(bytes) => (0o100644, repo.blob(bytes).unwrap()),
            Link(target) => (0o120000, repo.blob(target.as_bytes()).unwrap()),
            Gitlink(id) => (0o160000, *id),
        };
        index
            .add(&IndexEntry {
                ctime: IndexTime::new(0, 0),
                mtime: IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode,
                uid: 0,
                gid: 0,
                file_size: 0,
                id,
                flags: path.len().min(0xfff) as u16,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            })
            .unwrap();
    }
    let tree = repo.find_tree(index.write_tree_to(repo).unwrap()).unwrap();
    let refname = format!("refs/heads/{branch}");
    let parent = repo
        .refname_to_id(&refname)
        .ok()
        .map(|id| repo.find_commit(id).unwrap());
    let sig = Signature::new(
        "Test",
        "test@example.com",
        &git2::Time::new(1_700_000_000, 0),
    )
    .unwrap();
    repo.commit(
        Some(&refname),
        &sig,
        &sig,
        "test commit",
        &tree,
        &parent.iter().collect::<Vec<_>>(),
    )
    .unwrap()
}

fn bare() -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(dir.path()).unwrap();
    (dir, repo)
}

fn paths(files: &[File]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

#[test]
fn reads_files_recursively_sorted_with_repository_paths() {
    let (_d, repo) = bare();
    let c = commit(
        &repo,
        "main",
        &[
            ("deploy/z.yaml", Blob(b"z")),
            ("deploy/a/b.yaml", Blob(b"b")),
            ("deploy/a.yaml", Blob(b"a")),
            ("README.md", Blob(b"readme")),
        ],
    );
    let every = Limits {
        only: None,
        ..Limits::default()
    };
    let all = read_tree(&repo, c, "", &every).unwrap();
    assert_eq!(
        paths(&all),
        [
            "README.md",
            "deploy/a.yaml",
            "deploy/a/b.yaml",
            "deploy/z.yaml"
        ]
    );
    let limits = Limits::default();
    for path in ["deploy", "./deploy/", "/deploy"] {
        let sub = read_tree(&repo, c, path, &limits).unwrap();
        assert_eq!(
            paths(&sub),
            ["deploy/a.yaml", "deploy/a/b.yaml", "deploy/z.yaml"]
        );
        assert_eq!(sub[1].content, b"b");
    }
    let one = read_tree(&repo, c, "deploy/z.yaml", &limits).unwrap();
    assert_eq!(
        one,
        vec![super::File {
            path: "deploy/z.yaml".into(),
            content: b"z".to_vec()
        }]
    );
}

#[test]
fn missing_path_and_parent_path_are_errors_naming_the_path() {
    let (_d, repo) = bare();
    let c = commit(&repo, "main", &[("a.yaml", Blob(b"a"))]);
    let err = read_tree(&repo, c, "apps/shop", &Limits::default()).unwrap_err();
    assert!(matches!(err, Error::MissingPath { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("apps/shop: not found in commit"),
        "{err}"
    );
    let err = read_tree(&repo, c, "../x", &Limits::default()).unwrap_err();
    assert!(
        err.to_string().starts_with("../x: must not contain '..'"),
        "{err}"
    );
}

#[test]
fn symlinks_inside_are_followed_and_escapes_are_refused() {
    let (_d, repo) = bare();
    let limits = Limits::default();
    let c = commit(
        &repo,
        "main",
        &[
            ("apps/base.yaml", Blob(b"base")),
            ("apps/link.yaml", Link("base.yaml")),
            ("apps/chain.yaml", Link("./link.yaml")),
            ("outside.yaml", Blob(b"secret")),
        ],
    );
    let files = read_tree(&repo, c, "apps", &limits).unwrap();
    assert_eq!(
        paths(&files),
        ["apps/base.yaml", "apps/chain.yaml", "apps/link.yaml"]
    );
    assert!(files.iter().all(|f| f.content == b"base"));

    let escapes = [
        ("apps/up.yaml", "../outside.yaml"),
        ("apps/abs.yaml", "/etc/passwd"),
        ("apps/far.yaml", "../../../etc/passwd"),
    ];
    for (path, target) in escapes {
        let c = commit(
            &repo,
            "main",
            &[("apps/a.yaml", Blob(b"a")), (path, Link(target))],
        );
        let err = read_tree(&repo, c, "apps", &limits).unwrap_err();
        assert!(matches!(err, Error::SymlinkEscape { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("{path}: symlink to {target} leaves apps")
        );
    }
    // Leaving the synced path is refused even when the target is in the repository.
    let c = commit(
        &repo,
        "main",
        &[
            ("apps/up.yaml", Link("../outside.yaml")),
            ("outside.yaml", Blob(b"x")),
        ],
    );
    assert!(read_tree(&repo, c, "", &limits).is_ok());
    assert!(read_tree(&repo, c, "apps", &limits).is_err());

    let c = commit(
        &repo,
        "main",
        &[("apps/d/x.yaml", Blob(b"x")), ("apps/dir.yaml", Link("d"))],
    );
    let err = read_tree(&repo, c, "apps", &limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "apps/dir.yaml: symlink to d: links to directories are not followed"
    );
    let c = commit(&repo, "main", &[("apps/loop.yml", Link("loop.yml"))]);
    let err = read_tree(&repo, c, "apps", &limits).unwrap_err();
    assert!(
        err.to_string().starts_with("apps/loop.yml: symlink to"),
        "{err}"
    );
    let c = commit(&repo, "main", &[("apps/dangling.json", Link("nope.yaml"))]);
    let err = read_tree(&repo, c, "apps", &limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "apps/dangling.json: symlink to nope.yaml: the target does not exist"
    );
}

#[test]
fn submodules_are_refused_naming_the_path() {
    let (_d, repo) = bare();
    let sub = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
    let c = commit(
        &repo,
        "main",
        &[
            ("apps/a.yaml", Blob(b"a")),
            ("apps/vendor/lib", Gitlink(sub)),
        ],
    );
    let err = read_tree(&repo, c, "apps", &Limits::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "apps/vendor/lib: submodule (gitlink to 0123456789abcdef0123456789abcdef01234567) is not supported"
    );
}

#[test]
fn file_size_and_file_count_caps() {
    let (_d, repo) = bare();
    let limits = Limits {
        max_file_size: 10,
        max_files: 3,
        ..Limits::default()
    };
    let c = commit(
        &repo,
        "main",
        &[
            ("a/ten.yaml", Blob(b"0123456789")),
            ("a/x.yaml", Blob(b"x")),
            ("a/y.yaml", Blob(b"y")),
        ],
    );
    assert_eq!(read_tree(&repo, c, "a", &limits).unwrap().len(), 3);
    // What is not a manifest is skipped unread, whatever its size or number.
    let c = commit(
        &repo,
        "main",
        &[
            ("a/ten.yaml", Blob(b"0123456789")),
            ("a/logo.png", Blob(&[0u8; 64])),
            ("a/README.md", Blob(b"0123456789ABCDEF")),
            ("a/x.txt", Blob(b"x")),
            ("a/y.sh", Blob(b"y")),
            ("a/UPPER.YAML", Blob(b"u")),
            ("a/link.md", Link("../b/missing")),
        ],
    );
    assert_eq!(
        paths(&read_tree(&repo, c, "a", &limits).unwrap()),
        ["a/UPPER.YAML", "a/ten.yaml"]
    );

    let c = commit(&repo, "main", &[("a/big.yaml", Blob(b"0123456789A"))]);
    let err = read_tree(&repo, c, "a", &limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a/big.yaml: 11 bytes is over the 10-byte file size limit"
    );
    // A link is measured by its target, not by the link itself.
    let c = commit(
        &repo,
        "main",
        &[
            ("a/big", Blob(b"0123456789A")),
            ("b/l.yaml", Link("../a/big")),
        ],
    );
    let err = read_tree(&repo, c, "", &limits).unwrap_err();
    assert!(err.to_string().starts_with("b/l.yaml: 11 bytes"), "{err}");

    let c = commit(
        &repo,
        "main",
        &[
            ("a/1.yaml", Blob(b"")),
            ("a/2.yaml", Blob(b"")),
            ("a/3.yaml", Blob(b"")),
            ("a/4.yaml", Blob(b"")),
        ],
    );
    let err = read_tree(&repo, c, "a", &limits).unwrap_err();
    assert_eq!(err.to_string(), "a: more than 3 files");
    let err = read_tree(&repo, c, "", &limits).unwrap_err();
    assert_eq!(err.to_string(), ".: more than 3 files");

    // All the files together, and how deep directories nest.
    let thin = Limits {
        max_total_bytes: 15,
        ..Limits::default()
    };
    let c = commit(
        &repo,
        "main",
        &[
            ("a/1.yaml", Blob(b"0123456789")),
            ("a/2.yaml", Blob(b"0123456789")),
        ],
    );
    let err = read_tree(&repo, c, "a", &thin).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a: the files under it are over the 15-byte limit of a revision"
    );
    let shallow = Limits {
        max_depth: 2,
        ..Limits::default()
    };
    let c = commit(&repo, "main", &[("a/b/c/d.yaml", Blob(b"x"))]);
    assert_eq!(read_tree(&repo, c, "a", &shallow).unwrap().len(), 1);
    let err = read_tree(&repo, c, "", &shallow).unwrap_err();
    assert_eq!(err.to_string(), "a/b/c: directories nested deeper than 2");
}

fn spec(name: &str, url: &str, reference: Reference) -> SourceSpec {
    SourceSpec {
        name: name.into(),
        url: url.into(),
        reference,
        credentials: Credentials::None,
        limits: Limits::default(),
    }
}

fn upstream() -> (tempfile::TempDir, Repository, String) {
    let (dir, repo) = bare();
    let url = format!("file://{}", dir.path().display());
    (dir, repo, url)
}

#[tokio::test]
async fn branch_fetch_is_incremental_and_reads_each_commit() {
    let (_u, up, url) = upstream();
    let state = tempfile::tempdir().unwrap();
    let first = commit(&up, "main", &[("deploy/cm.yaml", Blob(b"v1"))]);
    let source = GitSource::new(
        spec("shop", &url, Reference::Branch("main".into())),
        state.path(),
    )
    .unwrap();
    let f1 = source.fetch().await.unwrap();
    assert_eq!(
        f1.revision,
        Revision {
            commit: first,
            reference: "refs/heads/main".into()
        }
    );
    assert_eq!(
        f1.revision.to_string(),
        format!("refs/heads/main@sha1:{first}")
    );
    assert!(state.path().join("sources/shop.git/objects").is_dir());
    assert_eq!(
        source.read(first, "deploy").await.unwrap()[0].content,
        b"v1"
    );

    let again = source.fetch().await.unwrap();
    assert_eq!((again.revision.commit, again.received_objects), (first, 0));

    let second = commit(
        &up,
        "main",
        &[
            ("deploy/cm.yaml", Blob(b"v1")),
            ("deploy/new.yaml", Blob(b"v2")),
        ],
    );
    let f2 = source.fetch().await.unwrap();
    assert_eq!(f2.revision.commit, second);
    // Only the new commit, its tree(s) and the new blob travel; v1's blob is already here.
    assert!(f2.received_objects > 0 && f2.received_objects < 5, "{f2:?}");
    let files = source.read(second, "deploy").await.unwrap();
    assert_eq!(paths(&files), ["deploy/cm.yaml", "deploy/new.yaml"]);
    // The older commit stays readable from the mirror.
    assert_eq!(source.read(first, "").await.unwrap().len(), 1);
    let unknown = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
    let err = source.read(unknown, "").await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("source shop: commit {unknown}: ")),
        "{err}"
    );
}

#[tokio::test]
async fn only_the_configured_branch_is_fetched() {
    let (_u, up, url) = upstream();
    let state = tempfile::tempdir().unwrap();
    commit(&up, "main", &[("a", Blob(b"a"))]);
    commit(&up, "other", &[("b", Blob(b"b"))]);
    let source = GitSource::new(
        spec("s", &url, Reference::Branch("main".into())),
        state.path(),
    )
    .unwrap();
    source.fetch().await.unwrap();
    let mirror = Repository::open_bare(source.mirror_path()).unwrap();
    // (libgit2's file:// transport may copy more objects than asked for; over the network
    // only the branch's objects travel, see tests/e2e/git_source.rs.)
    assert!(mirror.find_reference("refs/heads/other").is_err());
    // The URL is not recorded in the mirror (it may carry credentials).
    assert!(mirror.remotes().unwrap().is_empty());
}

#[tokio::test]
async fn tags_commits_and_semver_ranges_resolve() {
    let (_u, up, url) = upstream();
    let state = tempfile::tempdir().unwrap();
    let sig = Signature::now("T", "t@example.com").unwrap();
    let mut ids = Vec::new();
    for (i, tag) in [
        "v1.0.0",
        "v1.2.0",
        "1.4.1",
        "v2.0.0",
        "v1.5.0-rc.1",
        "not-a-version",
    ]
    .iter()
    .enumerate()
    {
        let id = commit(&up, "main", &[("n", Blob(i.to_string().as_bytes()))]);
        let obj = up.find_object(id, None).unwrap();
        if i % 2 == 0 {
            up.tag(tag, &obj, &sig, "annotated", false).unwrap();
        } else {
            up.tag_lightweight(tag, &obj, false).unwrap();
        }
        ids.push(id);
    }
    let fetch = |name: &str, r: Reference| {
        let source = GitSource::new(spec(name, &url, r), state.path()).unwrap();
        async move { source.fetch().await }
    };
    let annotated = fetch("t1", Reference::Tag("v1.0.0".into())).await.unwrap();
    assert_eq!(
        annotated.revision,
        Revision {
            commit: ids[0],
            reference: "refs/tags/v1.0.0".into()
        }
    );
    let light = fetch("t2", Reference::Tag("v1.2.0".into())).await.unwrap();
    assert_eq!(light.revision.commit, ids[1]);

    let pinned = fetch("c", Reference::Commit(ids[2].to_string()))
        .await
        .unwrap();
    assert_eq!(
        pinned.revision,
        Revision {
            commit: ids[2],
            reference: ids[2].to_string()
        }
    );
    // A commit already in the mirror needs no network at all.
    let again = fetch("c", Reference::Commit(ids[2].to_string()))
        .await
        .unwrap();
    assert_eq!(again.received_objects, 0);

    let range = fetch("r", Reference::Semver(">=1.2.0, <2".into()))
        .await
        .unwrap();
    assert_eq!(
        range.revision,
        Revision {
            commit: ids[2],
            reference: "refs/tags/1.4.1".into()
        }
    );
    // Only the chosen tag is fetched into the mirror.
    let mirror = Repository::open_bare(state.path().join("sources/r.git")).unwrap();
    let tags: Vec<String> = mirror
        .references_glob("refs/tags/*")
        .unwrap()
        .map(|r| r.unwrap().name().unwrap().to_owned())
        .collect();
    assert_eq!(tags, ["refs/tags/1.4.1"]);
    let pre = fetch("r2", Reference::Semver(">=1.5.0-rc.0, <2".into()))
        .await
        .unwrap();
    assert_eq!(pre.revision.reference, "refs/tags/v1.5.0-rc.1");
    let any = fetch("r3", Reference::Semver("*".into())).await.unwrap();
    assert_eq!(any.revision.reference, "refs/tags/v2.0.0");

    let err = fetch("r4", Reference::Semver(">=3".into()))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("source r4: semver >=3: no matching tag: not found at {url}")
    );
    let err = fetch("t3", Reference::Tag("v9".into())).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("source t3: tag v9: not found at {url}")
    );
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let err = fetch("c2", Reference::Commit(missing.into()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RefNotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn a_deleted_branch_is_not_found_rather_than_stale() {
    let (_u, up, url) = upstream();
    let state = tempfile::tempdir().unwrap();
    commit(&up, "main", &[("a", Blob(b"a"))]);
    commit(&up, "gone", &[("a", Blob(b"a"))]);
    let source = GitSource::new(
        spec("s", &url, Reference::Branch("gone".into())),
        state.path(),
    )
    .unwrap();
    source.fetch().await.unwrap();
    up.find_reference("refs/heads/gone")
        .unwrap()
        .delete()
        .unwrap();
    let err = source.fetch().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("source s: branch gone: not found at {url}")
    );
}

#[tokio::test]
async fn a_stalled_server_times_out() {
    // Accepts connections into the backlog and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/repo.git",
        listener.local_addr().unwrap().port()
    );
    let state = tempfile::tempdir().unwrap();
    let mut s = spec("slow", &url, Reference::Branch("main".into()));
    s.limits.fetch_timeout = Duration::from_millis(300);
    let err = GitSource::new(s, state.path())
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("source slow: fetch {url}: timed out after 300ms")
    );
}

#[test]
fn ssh_without_known_hosts_is_refused_at_construction() {
    let state = tempfile::tempdir().unwrap();
    for url in [
        "ssh://git@example.com/x.git",
        "git@example.com:x.git",
        "ssh://example.com:2222/x",
    ] {
        let err = GitSource::new(
            spec("s", url, Reference::Branch("main".into())),
            state.path(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("connections without host key verification are refused"),
            "{err}"
        );
    }
    let mut s = spec(
        "s",
        "ssh://git@example.com/x.git",
        Reference::Branch("main".into()),
    );
    s.credentials = Credentials::Ssh {
        private_key: "KEY".into(),
        passphrase: None,
        known_hosts: "# nothing\n".into(),
    };
    let err = GitSource::new(s.clone(), state.path()).unwrap_err();
    assert_eq!(err.to_string(), "source s: known_hosts: no host keys");
    s.url = "https://example.com/x.git".into();
    assert!(GitSource::new(s, state.path()).is_err());
}

#[test]
fn invalid_specs_are_refused() {
    let state = tempfile::tempdir().unwrap();
    let bad = [
        spec("../x", "file:///x", Reference::Branch("main".into())),
        spec(
            "s",
            "file:///x",
            Reference::Branch("refs/heads/main".into()),
        ),
        spec("s", "file:///x", Reference::Commit("abc123".into())),
        spec(
            "s",
            "file:///x",
            Reference::Branch("main:refs/heads/x".into()),
        ),
        spec("s", "file:///x", Reference::Tag("v*".into())),
        spec("s", "file:///x", Reference::Semver("not a range".into())),
    ];
    for s in bad {
        let err = GitSource::new(s.clone(), state.path()).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!("source {}: ", s.name)),
            "{err}"
        );
    }
}

#[test]
fn urls_and_debug_output_carry_no_secrets() {
    assert_eq!(
        scrub(
            "failed to connect to https://u:tok3n@h/x: tok3n rejected",
            &["tok3n".into()]
        ),
        "failed to connect to https://***@h/x: <redacted> rejected"
    );
    let creds = Credentials::Ssh {
        private_key: "PRIVATE-KEY-TEXT".into(),
        passphrase: Some("hunter22".into()),
        known_hosts: "h ssh-ed25519 AAAA".into(),
    };
    let token = Credentials::Token {
        username: None,
        token: "tok3n".into(),
    };
    let shown = format!("{creds:?} {token:?}");
    assert!(
        !shown.contains("PRIVATE-KEY-TEXT")
            && !shown.contains("hunter22")
            && !shown.contains("tok3n"),
        "{shown}"
    );
    let state = tempfile::tempdir().unwrap();
    let mut s = spec(
        "s",
        "https://u:tok3n@host/r.git",
        Reference::Branch("main".into()),
    );
    s.credentials = token;
    let source = GitSource::new(s, state.path()).unwrap();
    assert!(!format!("{source:?} {:?}", source.spec()).contains("tok3n"));
}
