//! Real Git servers on loopback for end-to-end tests: `git daemon`, smart HTTP
//! (`git http-backend` behind a small axum server that demands a token) and OpenSSH's
//! `sshd` with generated keys, plus bare repositories that tests push commits to.
//! Every server listens on 127.0.0.1 only and is stopped when its handle drops.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "http_git.rs"]
mod http_git;
#[allow(unused_imports)] // each test binary uses a different part of the harness
pub use http_git::HttpGit;

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
