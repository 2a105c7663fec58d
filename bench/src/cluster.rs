//! The local control plane the benchmark runs against: started with `tests/cluster/up`
//! and stopped with `tests/cluster/down` when the guard drops, or one the caller names
//! with `--kubeconfig`, left running.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A control plane this run uses; stops the one it started when dropped.
pub struct ControlPlane {
    pub kubeconfig: PathBuf,
    started: Option<(PathBuf, tempfile::TempDir)>,
}

impl ControlPlane {
    /// Starts one with `tests/cluster/up --dir <tmp>` (the script builds the binaries once).
    pub fn up(repo: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("gitops-agent-bench-cp-")
            .tempdir()?;
        let script = repo.join("tests/cluster/up");
        eprintln!(
            "starting the local control plane in {}",
            dir.path().display()
        );
        let out = Command::new(&script)
            .arg("--dir")
            .arg(dir.path())
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| script.display().to_string())?;
        anyhow::ensure!(out.status.success(), "{}: {}", script.display(), out.status);
        let kubeconfig = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(ControlPlane {
            kubeconfig,
            started: Some((repo.join("tests/cluster/down"), dir)),
        })
    }

    pub fn existing(kubeconfig: PathBuf) -> Self {
        ControlPlane {
            kubeconfig,
            started: None,
        }
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        // The raw bound runs dozens of requests at once; the default client-side limits
        // are not what is being measured.
        config.read_timeout = Some(std::time::Duration::from_secs(60));
        Ok(Client::try_from(config)?)
    }

    /// The server's `gitVersion`.
    pub async fn version(&self) -> String {
        match self.client().await {
            Ok(c) => c
                .apiserver_version()
                .await
                .map(|v| v.git_version)
                .unwrap_or_else(|e| format!("unknown ({e})")),
            Err(e) => format!("unknown ({e})"),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some((down, dir)) = &self.started {
            eprintln!("stopping the local control plane");
            let _ = Command::new(down).arg("--dir").arg(dir.path()).status();
        }
    }
}
