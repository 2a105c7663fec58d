//! Real Git servers on loopback for end-to-end tests: `git daemon`, smart HTTP
//! (`git http-backend` behind a small axum server that demands a token) and OpenSSH's
//! `sshd` with generated keys, plus bare repositories that tests push commits to.
//! Every server listens on 127.0.0.1 only and is stopped when its handle drops.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

const READY_WITHIN: Duration = Duration::from_secs(20);

/// A directory of bare repositories, served by any of the servers below.
pub struct Upstream {
    dir: tempfile::TempDir,
}

impl Upstream {
    pub fn new() -> Self {
        Upstream {
            dir: tempfile::tempdir().expect("tempdir for upstream repositories"),
        }
    }

    /// The directory holding `<name>.git` repositories.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A new bare repository `<root>/<name>.git` with a clone to commit and push from.
    pub fn create(&self, name: &str) -> Repo {
        let bare = self.root().join(format!("{name}.git"));
        git(
            self.root(),
            &["init", "--quiet", "--bare", "--initial-branch=main"],
        )
        .arg(&bare)
        .run();
        let work = self.root().join(format!(".work-{name}"));
        git(self.root(), &["init", "--quiet", "--initial-branch=main"])
            .arg(&work)
            .run();
        git(&work, &["remote", "add", "origin"]).arg(&bare).run();
        Repo { bare, work }
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

/// A bare repository on the "server" side and the clone tests push to it from.
pub struct Repo {
    bare: PathBuf,
    work: PathBuf,
}

impl Repo {
    /// The bare repository's absolute path.
    pub fn path(&self) -> &Path {
        &self.bare
    }

    pub fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Writes `files` (path, content) into the clone, removes `removed`, commits on
    /// `branch` and pushes it; returns the new commit id.
    pub fn push(&self, branch: &str, files: &[(&str, &str)], removed: &[&str]) -> String {
        // Start from the branch as pushed, or from nothing for a new branch.
        let exists = git(&self.work, &["rev-parse", "--verify", "--quiet"])
            .arg(format!("refs/heads/{branch}"))
            .status_ok();
        if exists {
            git(&self.work, &["checkout", "--quiet", branch]).run();
        } else {
            git(&self.work, &["checkout", "--quiet", "--orphan", branch]).run();
            git(
                &self.work,
                &["rm", "-r", "-f", "--quiet", "--ignore-unmatch", "."],
            )
            .run();
        }
        for (path, content) in files {
            let p = self.work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            git(&self.work, &["add", "--"]).arg(path).run();
        }
        for path in removed {
            git(&self.work, &["rm", "--quiet", "--"]).arg(path).run();
        }
        git(&self.work, &["commit", "--quiet", "--allow-empty", "-m"])
            .arg(format!("push to {branch}"))
            .run();
        git(&self.work, &["push", "--quiet", "origin"])
            .arg(format!("HEAD:refs/heads/{branch}"))
            .run();
        self.head(branch)
    }

    /// Adds a symbolic link `link` → `target` on `branch` and pushes it.
    pub fn push_link(&self, branch: &str, link: &str, target: &str) -> String {
        git(&self.work, &["checkout", "--quiet", branch]).run();
        let p = self.work.join(link);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, &p).unwrap();
        git(&self.work, &["add", "--"]).arg(link).run();
        git(&self.work, &["commit", "--quiet", "-m"])
            .arg(format!("link {link}"))
            .run();
        git(&self.work, &["push", "--quiet", "origin"])
            .arg(format!("HEAD:refs/heads/{branch}"))
            .run();
        self.head(branch)
    }

    /// Tags the head of `branch` (annotated) and pushes the tag.
    pub fn tag(&self, branch: &str, tag: &str) -> String {
        git(&self.work, &["tag", "-a", "-m", tag, tag])
            .arg(format!("refs/heads/{branch}"))
            .run();
        git(&self.work, &["push", "--quiet", "origin"])
            .arg(format!("refs/tags/{tag}"))
            .run();
        self.head(branch)
    }

    pub fn head(&self, branch: &str) -> String {
        let out = git(&self.bare, &["rev-parse"])
            .arg(format!("refs/heads/{branch}"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

/// `git` with a fixed identity and no user or system configuration.
fn git(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .args(["-c", "protocol.file.allow=always"])
        .args(args);
    c
}

trait Run {
    fn run(&mut self);
    fn status_ok(&mut self) -> bool;
}

impl Run for Command {
    fn run(&mut self) {
        let out = self.output().unwrap_or_else(|e| panic!("{self:?}: {e}"));
        assert!(
            out.status.success(),
            "{self:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn status_ok(&mut self) -> bool {
        self.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// A free port on 127.0.0.1 (free when asked; servers here bind it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Starts the server `command(port)` builds on a free port and waits until it accepts
/// connections. The port is only free when asked, so a server that exits before listening
/// (another process took the port) is started again on a new one.
fn spawn_listening(what: &str, log: &Path, command: impl Fn(u16) -> Command) -> (u16, Killed) {
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        let mut child = command(port)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let deadline = Instant::now() + READY_WITHIN;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return (port, Killed(child));
            }
            if let Ok(Some(status)) = child.try_wait() {
                last = format!(
                    "{status}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not listening on {port} in time"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("{what} exited ({last})");
}

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `git daemon` serving every repository under a base path, read-only.
pub struct GitDaemon {
    port: u16,
    _child: Killed,
    _log: tempfile::TempDir,
}

impl GitDaemon {
    pub fn start(base: &Path) -> Self {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("daemon.log");
        // git-daemon itself, not the `git daemon` wrapper: killing the wrapper would leave
        // the daemon running.
        let exec_path = Command::new("git")
            .arg("--exec-path")
            .output()
            .unwrap()
            .stdout;
        let exec_path = PathBuf::from(String::from_utf8(exec_path).unwrap().trim());
        let (port, child) = spawn_listening("git daemon", &log, |port| {
            let mut c = Command::new(exec_path.join("git-daemon"));
            c.args([
                "--export-all",
                "--reuseaddr",
                "--informative-errors",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base);
            c
        });
        GitDaemon {
            port,
            _child: child,
            _log: logdir,
        }
    }

    /// `git://127.0.0.1:PORT/<name>.git`
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }
}

/// Smart HTTP: `git http-backend` as CGI behind a local axum server that requires HTTP
/// Basic auth whose password is the token (any user name).
pub struct HttpGit {
    port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct Backend {
    root: PathBuf,
    token: String,
}

impl HttpGit {
    pub fn start(root: &Path, token: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend = Backend {
            root: root.to_owned(),
            token: token.to_owned(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // Its own runtime on its own thread: each #[tokio::test] has a runtime of its own
        // that ends with the test, and the server must outlive none of them.
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(cgi).with_state(backend);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
            rt.shutdown_background();
        });
        HttpGit {
            port,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/<name>.git`
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}.git", self.port)
    }
}

impl Drop for HttpGit {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn authorized(headers: &HeaderMap, token: &str) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    (password == token).then(|| user.to_owned())
}

async fn cgi(State(backend): State<Backend>, request: Request) -> Response {
    let Some(user) = authorized(request.headers(), &backend.token) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")],
            "authentication required\n",
        )
            .into_response();
    };
    let (parts, body) = request.into_parts();
    let header_str = |name: HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", &backend.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header_str(header::CONTENT_TYPE))
        .env("REMOTE_USER", &user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env(
            "GIT_PROTOCOL",
            header_str(HeaderName::from_static("git-protocol")),
        )
        .env(
            "HTTP_CONTENT_ENCODING",
            header_str(header::CONTENT_ENCODING),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // Without CONTENT_LENGTH, http-backend reads the body to end of file (chunked uploads).
    if let Some(len) = parts.headers.get(header::CONTENT_LENGTH) {
        command.env("CONTENT_LENGTH", len.to_str().unwrap_or_default());
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("spawn git http-backend: {e}\n"),
            )
                .into_response();
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    tokio::spawn(async move {
        let mut chunks = body.into_data_stream();
        while let Some(Ok(chunk)) = chunks.next().await {
            if stdin.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // Dropping stdin closes it: the end of the request body.
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut status = StatusCode::OK;
    let mut headers = HeaderMap::new();
    loop {
        let mut line = String::new();
        match stdout.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().and_then(|c| c.parse().ok());
            status = code
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
        } else if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.append(n, v);
        }
    }
    // Stream the rest of stdout as the body; reap the child when it is done.
    let stream = futures::stream::unfold(Some((stdout, child)), |state| async move {
        let (mut stdout, mut child) = state?;
        let mut buf = vec![0u8; 64 * 1024];
        match stdout.read(&mut buf).await {
            Ok(0) => {
                let _ = child.wait().await;
                None
            }
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), Some((stdout, child))))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// OpenSSH's sshd on 127.0.0.1 with a generated ed25519 host key, accepting one generated
/// client key for the current user. Repositories are reached by absolute path.
pub struct SshServer {
    // Fields drop in order: stop sshd before its directory goes.
    _child: Killed,
    port: u16,
    dir: tempfile::TempDir,
    user: String,
}

/// A generated SSH key pair.
pub struct SshKey {
    pub private: String,
    pub public: String,
}

/// `ssh-keygen -t ed25519` into `dir/name`, with `passphrase` ("" for none).
pub fn ssh_keygen(dir: &Path, name: &str, passphrase: &str) -> SshKey {
    let path = dir.join(name);
    Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-C", name, "-N", passphrase, "-f"])
        .arg(&path)
        .run();
    SshKey {
        private: std::fs::read_to_string(&path).unwrap(),
        public: std::fs::read_to_string(path.with_extension("pub")).unwrap(),
    }
}

impl SshServer {
    pub fn start() -> Self {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd not installed (apt-get install openssh-server; .ci/run does)");
        // sshd insists on its privilege separation directory even when it will not use it.
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ssh_keygen(d, "host_ed25519", "");
        let client = ssh_keygen(d, "client_ed25519", "");
        std::fs::write(d.join("authorized_keys"), &client.public).unwrap();
        let config = d.join("sshd_config");
        let log = d.join("sshd.log");
        let (port, child) = spawn_listening("sshd", &log, |port| {
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\n\
                     PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
                     UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\nLogLevel VERBOSE\n",
                    d = d.display()
                ),
            )
            .unwrap();
            let mut c = Command::new(sshd);
            c.args(["-D", "-e", "-f"]).arg(&config);
            c
        });
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        SshServer {
            port,
            dir,
            user,
            _child: child,
        }
    }

    /// `ssh://USER@127.0.0.1:PORT/abs/path`
    pub fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo.display()
        )
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA...`, the line for this server's host key.
    pub fn known_hosts(&self) -> String {
        let public = std::fs::read_to_string(self.dir.path().join("host_ed25519.pub")).unwrap();
        let mut fields = public.split_whitespace();
        let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
        format!("[127.0.0.1]:{} {kind} {key}\n", self.port)
    }

    /// The private key sshd accepts.
    pub fn client_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("client_ed25519")).unwrap()
    }

    /// Adds another public key to the authorized ones.
    pub fn authorize(&self, public_key: &str) {
        let path = self.dir.path().join("authorized_keys");
        let mut keys = std::fs::read_to_string(&path).unwrap();
        keys.push_str(public_key);
        std::fs::write(path, keys).unwrap();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// sshd's log so far, for failing tests.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}
