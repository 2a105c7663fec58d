//! The synthetic repositories and the servers that serve them on loopback (`git daemon`,
//! and smart HTTP for the rows against Flux): one bare repository per corpus, a work tree
//! to commit from, each server stopped on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

// Flux's GitRepository refuses `git://`: both contenders fetch over smart HTTP, the same
// server the end-to-end tests use.
#[path = "../../tests/harness/http_git.rs"]
mod http_git;
pub use http_git::HttpGit;

/// A directory of bare repositories `<name>.git`, each with a work tree beside it.
pub struct Upstream {
    dir: tempfile::TempDir,
}

/// One repository: the bare one the daemon serves and the clone commits are pushed from.
pub struct Repo {
    pub work: PathBuf,
}

impl Upstream {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Upstream {
            dir: tempfile::Builder::new()
                .prefix("gitops-agent-bench-git-")
                .tempdir()?,
        })
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A new repository whose first commit is whatever `fill` writes into the work tree.
    pub fn create(
        &self,
        name: &str,
        fill: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Repo> {
        let bare = self.root().join(format!("{name}.git"));
        let work = self.root().join(format!(".work-{name}"));
        git(
            self.root(),
            &["init", "--quiet", "--bare", "--initial-branch=main"],
        )
        .arg(&bare)
        .run()?;
        git(self.root(), &["init", "--quiet", "--initial-branch=main"])
            .arg(&work)
            .run()?;
        git(&work, &["remote", "add", "origin"]).arg(&bare).run()?;
        fill(&work)?;
        let repo = Repo { work };
        repo.commit("synthetic corpus")?;
        Ok(repo)
    }
}

impl Repo {
    /// Writes one file, commits and pushes; returns the new commit id.
    pub fn push_file(&self, path: &str, content: &str) -> anyhow::Result<String> {
        let p = self.work.join(path);
        std::fs::write(&p, content).with_context(|| p.display().to_string())?;
        self.commit(&format!("change {path}"))
    }

    fn commit(&self, message: &str) -> anyhow::Result<String> {
        git(&self.work, &["add", "-A"]).run()?;
        git(&self.work, &["commit", "--quiet", "-m", message]).run()?;
        git(
            &self.work,
            &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
        )
        .run()?;
        let out = git(&self.work, &["rev-parse", "HEAD"]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// `git` with a fixed identity and no user or system configuration.
fn git(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .args(args);
    c
}

trait Run {
    fn run(&mut self) -> anyhow::Result<()>;
}

impl Run for Command {
    fn run(&mut self) -> anyhow::Result<()> {
        let out = self.output().with_context(|| format!("{self:?}"))?;
        anyhow::ensure!(
            out.status.success(),
            "{self:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

/// `git-daemon` (the daemon itself, not the `git daemon` wrapper, so killing it stops it)
/// serving every repository under a base path on 127.0.0.1.
pub struct GitDaemon {
    port: u16,
    child: Child,
}

impl GitDaemon {
    pub fn start(base: &Path) -> anyhow::Result<Self> {
        let exec_path = Command::new("git").arg("--exec-path").output()?.stdout;
        let exec_path = PathBuf::from(String::from_utf8_lossy(&exec_path).trim());
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut child = Command::new(exec_path.join("git-daemon"))
            .args([
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
            ])
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn git-daemon")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("git-daemon did not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(GitDaemon { port, child })
    }

    /// `git://127.0.0.1:PORT/<name>.git`
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
