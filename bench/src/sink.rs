//! The alert sink inside the bench process: a loopback HTTP server that records the
//! arrival time, type and subject of every alert the agent posts.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

/// One alert as received.
#[derive(Debug, Clone)]
pub struct Alert {
    pub at: Instant,
    pub kind: String,
    pub subject: String,
}

#[derive(Clone, Default)]
pub struct Sink(Arc<Mutex<Vec<Alert>>>);

impl Sink {
    /// Serves `POST /alerts` on 127.0.0.1; returns the URL.
    pub async fn start(&self) -> anyhow::Result<String> {
        use axum::routing::post;
        let me = self.clone();
        let app = axum::Router::new().route(
            "/alerts",
            post(move |body: axum::body::Bytes| {
                let me = me.clone();
                async move {
                    let at = Instant::now();
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let field = |k: &str| v["event"][k].as_str().unwrap_or_default().to_owned();
                    let alert = Alert {
                        at,
                        kind: field("type"),
                        subject: field("subject"),
                    };
                    if let Ok(mut seen) = me.0.lock() {
                        seen.push(alert);
                    }
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(format!("http://127.0.0.1:{port}/alerts"))
    }

    /// The first alert of `kind` for `subject` that arrived at or after `since`.
    pub fn find(&self, kind: &str, subject: &str, since: Instant) -> Option<Alert> {
        self.0.lock().ok().and_then(|seen| {
            seen.iter()
                .find(|a| a.at >= since && a.kind == kind && a.subject == subject)
                .cloned()
        })
    }
}
