//! The long-running agent (`gitops-agent run`): one event loop that owns the scheduler.
//! Triggers come in (intervals, webhooks, file changes, the HA relay); fetches and syncs
//! run as tasks, every source fetched once per pass and its syncs run from that one
//! revision, up to `concurrency` syncs at once; drift reports and outcomes turn into
//! metrics and alerts. Only the leader fetches, syncs, heals and alerts. On a shutdown
//! signal no new work starts and the syncs in flight finish.

mod alerts;
pub mod files;
pub mod leader;
mod log;
mod relay;
pub mod scheduler;
mod shutdown;
pub mod sources;
mod state;
mod vault;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::cluster::RequestCounter;
use crate::config::Config;
use crate::drift::{self, Detector, Report};
use crate::sync::Engine;
use crate::telemetry::metrics::{self, Health, Metrics};
use crate::webhook;
pub use log::{log_outcome, log_report};
pub use relay::RELAY_CONFIGMAP;
use state::{Controller, Parts};
pub use worker::sync_once;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] crate::apply::Error),
    #[error(transparent)]
    Files(#[from] files::Error),
    #[error("listen on {0}: {1}")]
    Listen(String, #[source] std::io::Error),
    #[error(transparent)]
    Leader(leader::Error),
    #[error("{0}")]
    Policies(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub scheduler: scheduler::Options,
    pub drift: drift::Options,
}

impl Options {
    /// The daemon's options for a configuration: its resync interval, the default backoff.
    pub fn for_config(cfg: &Config) -> Self {
        Options {
            scheduler: scheduler::Options {
                resync: cfg.resync,
                ..Default::default()
            },
            drift: drift::Options {
                namespaced: !cfg.scope.namespaces.is_empty(),
                ..Default::default()
            },
        }
    }
}

/// This replica's name: the Pod's (or the host's).
fn identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("gitops-agent-{}", std::process::id()))
}

/// The path as the config watcher sees it (absolute), so events compare equal.
pub fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// What the servers and the loop share.
struct Wiring {
    metrics: Arc<Metrics>,
    health: Health,
    stop: watch::Sender<bool>,
    /// The HTTP servers' tasks, joined at shutdown.
    servers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    triggers: mpsc::Receiver<webhook::Trigger>,
    trigger_tx: mpsc::Sender<webhook::Trigger>,
    pending: webhook::Pending,
    sources_tx: watch::Sender<Vec<webhook::SourceMatch>>,
    secrets_tx: watch::Sender<webhook::Secrets>,
    /// Webhook secrets read from OCI Vault, laid over the directory's.
    vault_secrets: Arc<std::sync::Mutex<webhook::Secrets>>,
}

impl Wiring {
    fn new(
        counter: RequestCounter,
        cfg: &Config,
    ) -> (
        Self,
        watch::Receiver<Vec<webhook::SourceMatch>>,
        watch::Receiver<webhook::Secrets>,
    ) {
        let metrics = Arc::new(Metrics::new());
        metrics.track_requests(counter);
        let (trigger_tx, triggers) = mpsc::channel(256);
        let (sources_tx, sources_rx) = watch::channel(webhook::sources_from_config(cfg));
        let secrets = cfg
            .webhook
            .as_ref()
            .map(|w| webhook::Secrets::read(&w.secrets_dir))
            .unwrap_or_default();
        let (secrets_tx, secrets_rx) = watch::channel(secrets);
        let w = Wiring {
            metrics,
            health: Health::new(),
            stop: watch::channel(false).0,
            servers: Default::default(),
            triggers,
            trigger_tx,
            pending: webhook::Pending::new(),
            sources_tx,
            secrets_tx,
            vault_secrets: Default::default(),
        };
        (w, sources_rx, secrets_rx)
    }

    /// Completes when shutdown begins.
    /// Waits (bounded) for the servers to finish the requests they have, after `stop`.
    async fn join_servers(&self) {
        let servers = std::mem::take(&mut *self.servers.lock().expect("servers lock"));
        let all = futures::future::join_all(servers);
        if tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .is_err()
        {
            tracing::warn!("servers still busy after 5 s; leaving them");
        }
    }

    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

async fn serve_metrics(w: &Wiring, cfg: &Config) -> Result<()> {
    let Some(addr) = &cfg.metrics_listen else {
        return Ok(());
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Listen(addr.clone(), e))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    let router = metrics::router(w.metrics.clone(), w.health.clone());
    let server = tokio::spawn(
        crate::http::server::serve(listener, router, w.stopped())
            .instrument(tracing::info_span!("metrics_server")),
    );
    w.servers.lock().expect("servers lock").push(server);
    Ok(())
}

/// How OCI Notifications subscriptions get confirmed, when a source follows a topic: a GET
/// with the OCI client's trust (`oci.caFile`, else the platform's roots) to OCI, or to the
/// configured `oci.endpoints.notifications`.
fn oci_confirm(cfg: &Config) -> Option<webhook::OciConfirm> {
    if cfg.sources.iter().all(|s| s.oci_topics.is_empty()) {
        return None;
    }
    let oci = cfg.oci.clone().unwrap_or_default();
    let client = crate::oci::http_client(oci.ca_file.as_deref())
        .map_err(|e| tracing::error!(error = %e, "OCI Notifications confirmations are off"))
        .ok()?;
    let allowed = oci
        .endpoints
        .get("notifications")
        .cloned()
        .into_iter()
        .collect();
    Some(webhook::OciConfirm { client, allowed })
}

async fn serve_webhooks(
    w: &Wiring,
    cfg: &Config,
    sources: watch::Receiver<Vec<webhook::SourceMatch>>,
    secrets: watch::Receiver<webhook::Secrets>,
) -> Result<()> {
    let Some(hook_cfg) = &cfg.webhook else {
        return Ok(());
    };
    let listener = TcpListener::bind(&hook_cfg.listen)
        .await
        .map_err(|e| Error::Listen(hook_cfg.listen.clone(), e))?;
    tracing::info!(addr = %hook_cfg.listen, "serving push webhooks");
    let m = w.metrics.clone();
    let hook: webhook::OutcomeHook = Arc::new(move |p, o| m.webhook_request(p.as_str(), o));
    let opts = webhook::Options {
        on_outcome: Some(hook),
        oci_confirm: oci_confirm(cfg),
        ..Default::default()
    };
    let hooks = webhook::Webhooks::new(
        sources,
        secrets,
        w.trigger_tx.clone(),
        w.pending.clone(),
        opts,
    );
    let server = tokio::spawn(
        crate::http::server::serve(listener, webhook::app(hooks), w.stopped())
            .instrument(tracing::info_span!("webhook_server")),
    );
    w.servers.lock().expect("servers lock").push(server);
    Ok(())
}

/// Leadership: from the Lease when enabled, always leading otherwise.
fn elect(client: &Client, cfg: &Config) -> Result<(watch::Receiver<bool>, Option<leader::Handle>)> {
    if !cfg.leader_election.enabled {
        let (tx, rx) = watch::channel(true);
        // Nobody else decides: keep the sender for the life of the process.
        std::mem::forget(tx);
        return Ok((rx, None));
    }
    // A 10 s lease (renewed every 2 s, given up after 7 s without renewal) bounds a
    // takeover after a crash to about 12 s: inside the 15 s we promise.
    let lo = leader::Options {
        lease_duration: Duration::from_secs(10),
        renew_deadline: Duration::from_secs(7),
        retry_period: Duration::from_secs(2),
        ..leader::Options::new(&cfg.namespace, &cfg.leader_election.lease_name, identity())
    };
    let (rx, handle) = leader::spawn(client.clone(), lo).map_err(Error::Leader)?;
    Ok((rx, Some(handle)))
}

/// Runs until SIGTERM or Ctrl-C: webhooks, metrics, leader election, syncing and drift.
pub async fn run(
    client: Client,
    counter: RequestCounter,
    config_path: PathBuf,
    cfg: Config,
    opts: Options,
) -> Result<()> {
    let (mut w, sources_rx, secrets_rx) = Wiring::new(counter, &cfg);
    serve_metrics(&w, &cfg).await?;
    let vault =
        vault::VaultSecrets::from_config(&cfg, w.vault_secrets.clone(), w.secrets_tx.clone());
    if let Some(v) = vault {
        // Read before the receiver serves, so its first request already has them.
        v.read_all().await;
        let stopped = w.stopped();
        tokio::spawn(
            v.run(stopped)
                .instrument(tracing::info_span!("vault_secrets")),
        );
    }
    serve_webhooks(&w, &cfg, sources_rx, secrets_rx).await?;
    let (leading, lease) = elect(&client, &cfg)?;
    let (relay_tx, relayed) = mpsc::channel::<String>(64);
    let _relay = relay::watch_relay(client.clone(), cfg.namespace.clone(), relay_tx);
    let dispatcher = alerts::dispatcher(&client, &cfg, w.metrics.clone()).await;
    let (oci_tx, oci_alerts) = mpsc::channel(8);
    alerts::watch_oci(&cfg, w.metrics.clone(), oci_tx);
    let mut engine = Engine::new(client.clone(), &cfg.namespace).await?;
    engine.set_oci(cfg.oci.as_ref().map(crate::oci::Shared::for_config));
    engine.set_renderers(crate::sync::renderers(&cfg.render).await);
    let packs = crate::sync::policy_packs(&cfg).map_err(Error::Policies)?;
    engine.set_policies(packs, cfg.policies.packs.clone());
    let (detector, reports) = Detector::new(client.clone(), opts.drift.clone());
    // The detector's gauges are read at every scrape: they change between the loop's passes.
    let counted = detector.clone();
    w.metrics.on_scrape(move |m| {
        for (sync, c) in counted.counts() {
            m.set_watched(&sync, c);
        }
    });
    let mut ctl = Controller::new(Parts {
        client: client.clone(),
        config_path,
        cfg,
        opts,
        engine,
        detector,
        metrics: w.metrics.clone(),
        dispatcher,
        claim: leader::Claim::new(leading.clone(), w.stop.subscribe()),
    });
    let mut watch = files::ConfigWatch::new(&ctl.cfg, &ctl.config_path)?;
    w.health.set_ready(true);
    let lp = Loop {
        client,
        leading,
        relayed,
        reports,
        oci_alerts,
    };
    lp.run(&mut ctl, &mut w, &mut watch).await?;
    // Drain: syncs in flight stop where they are (their recorded intent keeps the
    // inventory right), servers finish their requests, alerts get a grace; a second
    // signal exits at once. The install's terminationGracePeriodSeconds covers it.
    tracing::info!("shutting down: stopping the syncs in flight");
    w.health.set_not_ready("shutting down");
    let _ = w.stop.send(true);
    tokio::spawn(
        async {
            shutdown::signal().await;
            tracing::warn!("second signal: exiting without draining");
            std::process::exit(130);
        }
        .instrument(tracing::info_span!("shutdown")),
    );
    ctl.drain().await;
    ctl.dispatcher.shutdown(ALERT_GRACE).await;
    w.join_servers().await;
    if let Some(l) = lease
        && let Err(e) = l.release().await
    {
        tracing::warn!(error = %e, "releasing the leader lease");
    }
    Ok(())
}

/// How long queued alerts may take to go out at shutdown.
const ALERT_GRACE: Duration = Duration::from_secs(10);

/// The event loop's inputs besides the controller.
struct Loop {
    client: Client,
    leading: watch::Receiver<bool>,
    relayed: mpsc::Receiver<String>,
    reports: mpsc::Receiver<Report>,
    /// The OCI identity's failures and recoveries.
    oci_alerts: mpsc::Receiver<crate::notify::Event>,
}

impl Loop {
    /// Until the shutdown signal.
    async fn run(
        mut self,
        ctl: &mut Controller,
        w: &mut Wiring,
        watch: &mut files::ConfigWatch,
    ) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown::signal());
        loop {
            let leading = *self.leading.borrow();
            ctl.metrics.set_leader(leading);
            ctl.detector.set_active(leading);
            ctl.set_leading(leading);
            ctl.tick();
            let wake = ctl.next_wake();
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                Some(done) = ctl.tasks.join_next(), if !ctl.tasks.is_empty() => {
                    match done {
                        Ok(done) => ctl.done(done),
                        Err(e) => tracing::error!(error = %e, "a fetch or sync task ended abnormally"),
                    }
                }
                Some(t) = w.triggers.recv() => {
                    w.pending.take(&t.source);
                    if *self.leading.borrow() {
                        ctl.trigger(&t.source);
                    } else {
                        relay::relay_trigger(&self.client, &ctl.cfg.namespace, &t.source).await;
                    }
                }
                Some(source) = self.relayed.recv() => {
                    if *self.leading.borrow() {
                        ctl.trigger(&source);
                    }
                }
                Some(batch) = watch.events.recv() => watch.changed(ctl, w, &batch)?,
                Some(report) = self.reports.recv() => {
                    log_report(&report);
                    if let Some(a) = alerts::drift_alert(report) {
                        ctl.dispatcher.send(a);
                    }
                }
                Some(a) = self.oci_alerts.recv() => ctl.dispatcher.send(a),
                _ = self.leading.changed() => {
                    tracing::info!(leader = *self.leading.borrow(), "leadership changed");
                }
                _ = &mut shutdown => return Ok(()),
            }
        }
    }
}
