//! A sink whose credential (a Slack URL, a webhook's HMAC key) is held in OCI Vault: the
//! secret is read again once it is older than `oci.vaultRefresh`, and at the next delivery
//! after a failed one (a revoked URL or key fails first), and the sink is built anew when
//! the value changed. A failed read keeps the sink built from the value read before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sha2::Digest as _;

use super::{Alert, Sink, SinkResources, build};
use crate::config::alerts::{OciVaultRef, SinkConfig};
use crate::notify::Result;
use crate::secrets::SecretBytes;

pub struct VaultHeld {
    name: String,
    cfg: SinkConfig,
    res: SinkResources,
    secret: OciVaultRef,
    oci: Arc<crate::oci::Shared>,
    every: Duration,
    current: tokio::sync::Mutex<Current>,
}

struct Current {
    sink: Arc<dyn Sink>,
    /// SHA-256 of the value it was built with: only whether it changed matters.
    digest: [u8; 32],
    /// When to read the secret again.
    due: Instant,
}

impl VaultHeld {
    /// Builds the sink with `value`, read from Vault `secret` just before.
    pub fn new(
        cfg: &SinkConfig,
        res: SinkResources,
        secret: &OciVaultRef,
        oci: Arc<crate::oci::Shared>,
        every: Duration,
        value: SecretBytes,
    ) -> Result<Self> {
        let digest = sha2::Sha256::digest(value.expose()).into();
        let sink = build(
            cfg,
            SinkResources {
                secret: Some(value),
                ..res.clone()
            },
        )?;
        Ok(VaultHeld {
            name: sink.name().to_owned(),
            cfg: cfg.clone(),
            res,
            secret: secret.clone(),
            oci,
            every,
            current: tokio::sync::Mutex::new(Current {
                sink,
                digest,
                due: Instant::now() + every,
            }),
        })
    }

    /// The sink to deliver with: rebuilt first when the secret is due and changed.
    async fn sink(&self) -> Arc<dyn Sink> {
        let mut current = self.current.lock().await;
        if Instant::now() < current.due {
            return current.sink.clone();
        }
        current.due = Instant::now() + self.every;
        match crate::oci::vault::secret(&self.oci, &self.secret).await {
            Ok(value) => {
                let digest: [u8; 32] = sha2::Sha256::digest(&value).into();
                if digest != current.digest {
                    let res = SinkResources {
                        secret: Some(SecretBytes::new(value)),
                        ..self.res.clone()
                    };
                    match build(&self.cfg, res) {
                        Ok(sink) => {
                            tracing::info!(sink = %self.name, "credential changed in OCI Vault; sink rebuilt");
                            *current = Current {
                                sink,
                                digest,
                                due: current.due,
                            };
                        }
                        Err(e) => {
                            tracing::error!(sink = %self.name, error = %e, "the credential read from OCI Vault does not build the sink; the one before stays")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "credential not read again from OCI Vault; the one before stays")
            }
        }
        current.sink.clone()
    }

    /// After a failed delivery the secret is read at the next one: it may have rotated.
    async fn failed(&self) {
        self.current.lock().await.due = Instant::now();
    }
}

impl Sink for VaultHeld {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let result = self.sink().await.deliver(alert).await;
            if result.is_err() {
                self.failed().await;
            }
            result
        })
    }

    fn deliver_batch<'a>(&'a self, alerts: &'a [Arc<Alert>]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let result = self.sink().await.deliver_batch(alerts).await;
            if result.is_err() {
                self.failed().await;
            }
            result
        })
    }
}
