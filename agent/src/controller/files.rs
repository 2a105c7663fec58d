//! File-system triggers with notify: the config file, mounted Secret directories and
//! local-directory sources. Kubernetes updates mounted ConfigMaps and Secrets by swapping a
//! symlink in the directory, so directories are watched, not the files in them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to watch: a directory (recursively or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub path: PathBuf,
    pub recursive: bool,
}

/// Keeps the OS watches alive; dropping it stops them.
pub struct FileWatch {
    _watcher: RecommendedWatcher,
}

/// Watches the targets and sends the changed paths, coalesced over `debounce`: an editor's
/// save or a Secret rotation is a burst of events, and one reaction is enough.
pub fn watch(
    targets: &[Target],
    debounce: Duration,
) -> Result<(FileWatch, mpsc::Receiver<Vec<PathBuf>>)> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            for p in ev.paths {
                let _ = raw_tx.send(p);
            }
        }
    })
    .map_err(|source| Error::Watch {
        path: PathBuf::new(),
        source,
    })?;
    for t in targets {
        let mode = if t.recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        watcher
            .watch(&t.path, mode)
            .map_err(|source| Error::Watch {
                path: t.path.clone(),
                source,
            })?;
    }
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(first) = raw_rx.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + debounce;
            while let Ok(Some(p)) = tokio::time::timeout_at(deadline, raw_rx.recv()).await {
                if !batch.contains(&p) {
                    batch.push(p);
                }
            }
            if tx.send(batch).await.is_err() {
                return;
            }
        }
    });
    Ok((FileWatch { _watcher: watcher }, rx))
}

/// Whether a changed path is `target` or below it (a recursively watched tree).
pub fn concerns(changed: &Path, target: &Path) -> bool {
    changed.starts_with(target)
}

/// Whether a changed path is `dir` itself or one of its own entries: what happens next to
/// it (a log file, the state directory in the same parent) is not its change.
pub fn own_entry(changed: &Path, dir: &Path) -> bool {
    changed == dir || changed.parent() == Some(dir)
}

/// Whether a changed path changes the config file: the file itself, or the `..data`
/// symlink (and its timestamped target) that Kubernetes swaps in a mounted ConfigMap.
pub fn is_config_change(changed: &Path, config: &Path) -> bool {
    let swapped = changed.parent() == config.parent()
        && changed
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".."));
    changed == config || swapped
}

/// What the daemon watches on disk: the config file's folder (a valid edit reloads the
/// configuration), the webhook secrets directory (rotation without restart) and the
/// local-directory sources (an edit triggers their syncs).
pub struct ConfigWatch {
    pub events: mpsc::Receiver<Vec<PathBuf>>,
    _watch: FileWatch,
}

impl ConfigWatch {
    pub fn new(cfg: &crate::config::Config, config_path: &Path) -> Result<Self> {
        let mut targets = Vec::new();
        if let Some(w) = cfg
            .webhook
            .as_ref()
            .filter(|w| !w.secrets_dir.as_os_str().is_empty())
        {
            targets.push(Target {
                path: w.secrets_dir.clone(),
                recursive: false,
            });
        }
        if let Some(dir) = config_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            targets.push(Target {
                path: dir.to_path_buf(),
                recursive: false,
            });
        }
        for s in &cfg.sources {
            if let Some(d) = &s.directory {
                targets.push(Target {
                    path: d.clone(),
                    recursive: true,
                });
            }
        }
        let (watch, events) = watch(&targets, Duration::from_millis(200))?;
        Ok(ConfigWatch {
            events,
            _watch: watch,
        })
    }

    /// Reacts to a batch of changed paths.
    pub(super) fn changed(
        &mut self,
        ctl: &mut super::state::Controller,
        w: &mut super::Wiring,
        batch: &[PathBuf],
    ) -> Result<()> {
        if batch.iter().any(|p| is_config_change(p, &ctl.config_path)) {
            self.reload(ctl, w)?;
        }
        if let Some(dir) = ctl.cfg.webhook.as_ref().map(|h| h.secrets_dir.clone())
            && !dir.as_os_str().is_empty()
            && batch.iter().any(|p| own_entry(p, &dir))
        {
            let vault = w.vault_secrets.lock().expect("vault secrets lock").clone();
            let _ = w
                .secrets_tx
                .send(crate::webhook::Secrets::read(&dir).overlay(&vault));
            tracing::info!("webhook secrets reloaded");
        }
        let touched: Vec<String> = ctl
            .cfg
            .sources
            .iter()
            .filter(|s| {
                s.directory
                    .as_deref()
                    .is_some_and(|d| batch.iter().any(|p| concerns(p, d)))
            })
            .map(|s| s.name.clone())
            .collect();
        for s in touched {
            ctl.trigger(&s);
        }
        Ok(())
    }

    /// Re-reads the configuration; an invalid new one is rejected and the running one stays.
    fn reload(&mut self, ctl: &mut super::state::Controller, w: &mut super::Wiring) -> Result<()> {
        let new = match crate::config::load(&ctl.config_path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "new configuration rejected; keeping the running one");
                return Ok(());
            }
        };
        if new == *ctl.cfg {
            return Ok(());
        }
        tracing::info!(
            sources = new.sources.len(),
            syncs = new.syncs.len(),
            "configuration reloaded"
        );
        let _ = w.sources_tx.send(crate::webhook::sources_from_config(&new));
        *self = ConfigWatch::new(&new, &ctl.config_path)?;
        ctl.reconfigure(new);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_writes_is_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (_w, mut rx) = watch(
            &[Target {
                path: dir.path().to_path_buf(),
                recursive: true,
            }],
            Duration::from_millis(300),
        )
        .unwrap();
        for i in 0..5 {
            std::fs::write(dir.path().join("config.yaml"), format!("v{i}")).unwrap();
        }
        let batch = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            batch.iter().any(|p| p.ends_with("config.yaml")),
            "{batch:?}"
        );
        // Nothing else arrives for the same burst: the next batch is the next write's.
        std::fs::write(dir.path().join("marker"), "m").unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(next.iter().any(|p| p.ends_with("marker")), "{next:?}");
        assert!(!next.iter().any(|p| p.ends_with("config.yaml")), "{next:?}");
    }

    #[test]
    fn only_a_directorys_own_entries_are_its_changes() {
        let parent = Path::new("/etc/agent");
        let secrets = parent.join("webhook");
        let config = parent.join("config.yaml");
        assert!(own_entry(&secrets.join("github"), &secrets));
        assert!(
            own_entry(&secrets.join("..data"), &secrets),
            "a Secret rotation"
        );
        assert!(own_entry(&secrets, &secrets));
        for beside in [
            parent.to_path_buf(),
            parent.join("agent.log"),
            parent.join("state/x"),
        ] {
            assert!(!own_entry(&beside, &secrets), "{}", beside.display());
            assert!(!is_config_change(&beside, &config), "{}", beside.display());
        }
        assert!(!own_entry(&secrets.join("nested/deep"), &secrets));
        assert!(is_config_change(&config, &config));
        assert!(
            is_config_change(&parent.join("..data"), &config),
            "a ConfigMap swap"
        );
        assert!(is_config_change(
            &parent.join("..2026_12_01_10_00_00.1"),
            &config
        ));
        assert!(
            !concerns(parent, &parent.join("apps")),
            "a parent is not below"
        );
    }

    #[tokio::test]
    async fn nested_changes_are_seen_in_recursive_targets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("apps/shop")).unwrap();
        let (_w, mut rx) = watch(
            &[Target {
                path: dir.path().to_path_buf(),
                recursive: true,
            }],
            Duration::from_millis(100),
        )
        .unwrap();
        std::fs::write(dir.path().join("apps/shop/cm.yaml"), "x").unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            batch.iter().any(|p| concerns(p, &dir.path().join("apps"))),
            "{batch:?}"
        );
    }
}
