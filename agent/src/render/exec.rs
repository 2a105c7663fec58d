//! Running a renderer binary (kustomize, helm) on untrusted input, as peers learned to: an
//! explicit argv (no shell), an empty environment but for a private HOME and XDG
//! directories in a fresh temporary directory, its own process group (killed whole on
//! timeout, so grandchildren go too), a timeout, and stdout and stderr read through a cap
//! (killed on overflow). Nothing the repository says reaches a shell or a config file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// What bounds one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    pub timeout: Duration,
    /// Most bytes of standard output; stderr gets a sixteenth of it.
    pub max_output: usize,
    /// Most bytes of memory the renderer may allocate (its data segment, RLIMIT_DATA): a
    /// chart's `until 1000000000` allocates gigabytes before it prints a byte. Not the
    /// address space (RLIMIT_AS): Go's runtime reserves more of that than it uses and
    /// aborts at start under a cap of even 2 GiB.
    pub max_memory: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            timeout: Duration::from_secs(90),
            max_output: 64 * 1024 * 1024,
            max_memory: 2 * 1024 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{program}: cannot start: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program}: killed after {}: a render must finish in that time", humantime::format_duration(*.after))]
    Timeout { program: String, after: Duration },
    #[error("{program}: killed: its output passed {max} bytes")]
    TooMuchOutput { program: String, max: usize },
    #[error("{program}: failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{program}: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `program args` in `dir`, with nothing of the agent's environment; its stdout.
pub async fn run(
    program: &Path,
    args: &[String],
    dir: &Path,
    bounds: &Bounds,
) -> Result<Vec<u8>, Error> {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.display().to_string());
    let io = |source| Error::Io {
        program: name.clone(),
        source,
    };
    let home = tempfile::Builder::new()
        .prefix("gitops-agent-render-home-")
        .tempdir()
        .map_err(io)?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .envs(private_env(home.path()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: name.clone(),
        source,
    })?;
    let pgid = child.id();
    limit_memory(pgid, bounds.max_memory);
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let max = bounds.max_output;
    let work = async {
        // An overflow kills the group at once, so the other stream ends too.
        let (out, err) = tokio::join!(
            capped(stdout, max, pgid),
            capped(stderr, max / 16 + 4096, pgid)
        );
        let status = child.wait().await;
        (out, err, status)
    };
    let (out, err, status) = match tokio::time::timeout(bounds.timeout, work).await {
        Ok(done) => done,
        Err(_) => {
            kill_group(pgid);
            return Err(Error::Timeout {
                program: name,
                after: bounds.timeout,
            });
        }
    };
    let (Some(out), err) = (out.map_err(io)?, err.map_err(io)?) else {
        return Err(Error::TooMuchOutput { program: name, max });
    };
    let status = status.map_err(io)?;
    if !status.success() {
        let text = String::from_utf8_lossy(&err.unwrap_or_default())
            .trim()
            .to_owned();
        return Err(Error::Failed {
            program: name,
            status: status.to_string(),
            stderr: crate::core::bounded(&text, 20, 4096),
        });
    }
    Ok(out)
}

/// Caps the memory of the just-started renderer (and what it starts, which inherits the
/// limit). Set from outside, after the start, because setting it between fork and exec
/// needs `unsafe`; the renderer reads its input first, so nothing it is told to allocate
/// comes before the cap. A renderer gone already needs no cap.
fn limit_memory(pid: Option<u32>, max: u64) {
    use rustix::process::{Resource, Rlimit, prlimit};
    let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) else {
        return;
    };
    let cap = Rlimit {
        current: Some(max),
        maximum: Some(max),
    };
    if let Err(e) = prlimit(Some(pid), Resource::Data, cap) {
        tracing::debug!(error = %e, "capping a renderer's memory");
    }
}

/// HOME and the XDG directories in `home`; PATH empty (the renderers exec nothing); Helm's
/// plugins from an empty directory; and every Go HTTP client sent to a proxy that is not
/// there, so no request leaves even if a reference slipped past the checks (charts and
/// bases come from the repository, never the network).
fn private_env(home: &Path) -> Vec<(&'static str, PathBuf)> {
    let nowhere = PathBuf::from("http://127.0.0.1:9");
    vec![
        ("HTTP_PROXY", nowhere.clone()),
        ("HTTPS_PROXY", nowhere.clone()),
        ("http_proxy", nowhere.clone()),
        ("https_proxy", nowhere),
        ("NO_PROXY", PathBuf::new()),
        ("HELM_PLUGINS", home.join("helm-plugins")),
        ("HOME", home.to_owned()),
        ("XDG_CONFIG_HOME", home.join("config")),
        ("XDG_CACHE_HOME", home.join("cache")),
        ("XDG_DATA_HOME", home.join("data")),
        ("HELM_CONFIG_HOME", home.join("helm-config")),
        ("HELM_CACHE_HOME", home.join("helm-cache")),
        ("HELM_DATA_HOME", home.join("helm-data")),
        ("PATH", PathBuf::new()),
    ]
}

/// Everything `reader` gives, or `None` once it passes `max` bytes (the group killed then).
async fn capped(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    max: usize,
    pgid: Option<u32>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Some(buf));
        }
        if buf.len() + n > max {
            kill_group(pgid);
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Kills the run's whole process group (the renderer and anything it started).
fn kill_group(pgid: Option<u32>) {
    if let Some(pid) = pgid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh() -> &'static Path {
        Path::new("/bin/sh")
    }

    /// A script with the usual PATH: the renderer's own environment has none.
    fn args(script: &str) -> Vec<String> {
        vec!["-c".into(), format!("PATH=/usr/bin:/bin; {script}")]
    }

    #[tokio::test]
    async fn a_render_sees_only_its_private_environment() {
        let dir = tempfile::tempdir().unwrap();
        let script = vec![
            "-c".to_owned(),
            "echo \"$HTTPS_PROXY|$HOME|$PATH|${CARGO_PKG_NAME:-unset}\"".to_owned(),
        ];
        let out = run(sh(), &script, dir.path(), &Bounds::default())
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("gitops-agent-render-home-"), "{text}");
        assert!(
            text.starts_with("http://127.0.0.1:9|"),
            "no way out: {text}"
        );
        assert!(text.trim_end().ends_with("||unset"), "{text}");
    }

    #[tokio::test]
    async fn a_render_that_never_ends_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pgid");
        // The shell leads its group ($$ is the group id); its child sleeps on.
        let script = format!("echo $$ > {}; sleep 30 & sleep 60", pid_file.display());
        let bounds = Bounds {
            timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let err = run(sh(), &args(&script), dir.path(), &bounds)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("killed after 300ms"), "{err}");
        let pgid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pgid = rustix::process::Pid::from_raw(pgid).unwrap();
        // Gone once the killed processes are reaped: no member of the group is left.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while rustix::process::test_kill_process_group(pgid).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the group still has members: the child was not killed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_render_that_allocates_too_much_memory_fails() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = Bounds {
            max_memory: 256 * 1024 * 1024,
            ..Default::default()
        };
        let python = [
            "-c".to_owned(),
            "import time; time.sleep(0.2); x = bytearray(1024 * 1024 * 1024)".to_owned(),
        ];
        let err = run(Path::new("/usr/bin/python3"), &python, dir.path(), &bounds)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("python3: failed"), "{err}");
        assert!(err.contains("MemoryError"), "{err}");
        // The same allocation under the default cap succeeds: the cap is what failed it.
        let small = [
            "-c".to_owned(),
            "x = bytearray(64 * 1024 * 1024)".to_owned(),
        ];
        run(Path::new("/usr/bin/python3"), &small, dir.path(), &bounds)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn output_past_the_cap_is_refused_and_failures_carry_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = Bounds {
            max_output: 1024,
            ..Default::default()
        };
        let err = run(sh(), &args("yes gitops"), dir.path(), &bounds)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "sh: killed: its output passed 1024 bytes");
        let err = run(
            sh(),
            &args("echo 'no such file' >&2; exit 3"),
            dir.path(),
            &bounds,
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "sh: failed (exit status: 3): no such file");
    }
}
