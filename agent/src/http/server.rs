//! The one HTTP server, behind the webhook port and the metrics port: a header read
//! timeout (a slow-loris client cannot hold a connection), a cap on open connections, and
//! a drain on shutdown that lets requests in flight finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct Options {
    /// A client must send the request line and headers within this, or the connection
    /// is closed (hyper answers no status here).
    pub header_timeout: Duration,
    /// After the shutdown signal, requests in flight get this long to finish.
    pub drain_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            header_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in
/// flight finish; see [`serve_with`].
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()>) {
    serve_with(listener, router, Options::default(), shutdown).await
}

/// Like [`serve`], with options. HTTP/1.1 only (webhook senders and Prometheus use
/// nothing else); our own accept loop, because axum::serve has no header read timeout and
/// no connection cap.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) {
    let (drain_tx, drain_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let mut conns = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => {
                let Ok(permit) = permit else { break };
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = &mut shutdown => break,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                let mut drain = drain_rx.clone();
                let header_timeout = opts.header_timeout;
                conns.spawn(
                    async move {
                        let _slot = permit;
                        let mut builder = hyper::server::conn::http1::Builder::new();
                        builder
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(header_timeout);
                        let conn = builder
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                        let mut conn = std::pin::pin!(conn);
                        let result = tokio::select! {
                            r = conn.as_mut() => r,
                            _ = drain.changed() => {
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                        };
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended");
                        }
                    }
                    .instrument(tracing::debug_span!("connection", %peer)),
                );
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let drained = tokio::time::timeout(opts.drain_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("listener: requests still running after the drain timeout; aborting them");
        conns.abort_all();
    }
}
