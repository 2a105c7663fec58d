//! Webhook secrets held in OCI Vault: read at start and again every `oci.vaultRefresh`
//! (a rotation is picked up within it), laid over the mounted directory's, and handed to
//! the receiver when they change. A failed read keeps the value read before: a Vault
//! outage must not turn the receiver off.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, OciVaultRef};
use crate::webhook::Secrets;

/// What the task needs, from the configuration and the wiring.
pub(super) struct VaultSecrets {
    pub refs: BTreeMap<String, OciVaultRef>,
    pub every: Duration,
    pub oci: Arc<crate::oci::Shared>,
    pub dir: PathBuf,
    /// The Vault-held values, shared with the directory's reloads (which overlay them).
    pub held: Arc<Mutex<Secrets>>,
    pub tx: watch::Sender<Secrets>,
}

impl VaultSecrets {
    /// For a configuration with Vault-held webhook secrets.
    pub fn from_config(
        cfg: &Config,
        held: Arc<Mutex<Secrets>>,
        tx: watch::Sender<Secrets>,
    ) -> Option<Self> {
        let hook = cfg.webhook.as_ref().filter(|w| !w.oci_vault.is_empty())?;
        let oci = cfg.oci.as_ref()?;
        Some(VaultSecrets {
            refs: hook.oci_vault.clone(),
            every: oci.vault_refresh(),
            oci: crate::oci::Shared::for_config(oci),
            dir: hook.secrets_dir.clone(),
            held,
            tx,
        })
    }

    /// Reads every secret once; true when any value changed.
    pub async fn read_all(&self) -> bool {
        let mut next = self.held.lock().expect("vault secrets lock").clone();
        for (provider, r) in &self.refs {
            match crate::oci::vault::secret(&self.oci, r).await {
                Ok(value) => next.set(provider, value),
                Err(e) => tracing::error!(
                    provider = %provider,
                    error = %e,
                    "webhook secret from OCI Vault not read; the one read before stays"
                ),
            }
        }
        let mut held = self.held.lock().expect("vault secrets lock");
        if *held == next {
            return false;
        }
        *held = next;
        let merged = Secrets::read(&self.dir).overlay(&held);
        let _ = self.tx.send(merged);
        true
    }

    /// Reads every `every` (the first read is the caller's), until `stopped` completes.
    pub async fn run(self, stopped: impl std::future::Future<Output = ()>) {
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(self.every) => {}
            }
            if self.read_all().await {
                tracing::info!("webhook secrets changed in OCI Vault");
            }
        }
    }
}
