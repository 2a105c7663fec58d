//! What `sync --once` shows while it waits on health, on stderr: a live line on a terminal
//! (redrawn at every poll), a plain line every 10 s when piped (logs, CI), so that a wait of
//! minutes is never silent. Each says which objects are still progressing and why, and the
//! time left before the timeout.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gitops_agent::health::{OnProgress, Progress};

/// How often a piped wait prints a line, the first after the first of these.
const PLAIN_EVERY: Duration = Duration::from_secs(10);
/// Objects named in one line; the rest are counted.
const NAMED: usize = 3;

pub struct Reporter {
    sync: String,
    tty: bool,
    width: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    drawn: bool,
    printed_at: Option<Duration>,
}

impl Reporter {
    pub fn new(sync: &str) -> Arc<Reporter> {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(120);
        Arc::new(Reporter {
            sync: sync.to_string(),
            tty,
            width,
            state: Mutex::new(State::default()),
        })
    }

    pub fn callback(self: &Arc<Self>) -> OnProgress {
        let me = self.clone();
        OnProgress(Arc::new(move |p: &Progress| me.report(p)))
    }

    fn report(&self, p: &Progress) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let text = line(&self.sync, p);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let cut: String = text.chars().take(self.width.saturating_sub(1)).collect();
            let _ = write!(err, "\r\x1b[2K{cut}");
            let _ = err.flush();
            st.drawn = true;
        } else if due(st.printed_at, p.elapsed) {
            let _ = writeln!(err, "{text}");
            st.printed_at = Some(p.elapsed);
        }
    }

    /// Clears the live line, so what follows starts on a clean one.
    pub fn finish(&self) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

/// A piped line is due at the first report past 10 s, then every 10 s.
fn due(last: Option<Duration>, now: Duration) -> bool {
    match last {
        None => now >= PLAIN_EVERY,
        Some(at) => now >= at + PLAIN_EVERY,
    }
}

/// `sync shop: waiting on health, 2 of 9 objects not ready, 2m 31s left: Deployment/shop/web
/// (Progressing: ...), ...`
pub fn line(sync: &str, p: &Progress) -> String {
    let left = humantime::format_duration(Duration::from_secs(p.left.as_secs()));
    let mut out = format!(
        "sync {sync}: waiting on health, {} of {} objects not ready, {left} left:",
        p.pending.len(),
        p.total
    );
    for (i, (id, a)) in p.pending.iter().take(NAMED).enumerate() {
        let sep = if i == 0 { " " } else { "; " };
        out.push_str(&format!("{sep}{id} ({a})"));
    }
    if p.pending.len() > NAMED {
        out.push_str(&format!("; and {} more", p.pending.len() - NAMED));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitops_agent::core::ObjectKey;
    use gitops_agent::health::{Assessment, Status};

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
            namespace: Some("shop".into()),
            name: name.into(),
        }
    }

    #[test]
    fn a_line_names_what_is_waited_for_why_and_the_time_left() {
        let pending: Vec<_> = ["web", "api", "db", "cache"]
            .iter()
            .map(|n| {
                (
                    key(n),
                    Assessment::new(Status::Progressing, "1 of 2 replicas available"),
                )
            })
            .collect();
        let mut p = Progress {
            total: 9,
            pending: pending[..1].to_vec(),
            elapsed: Duration::from_secs(29),
            left: Duration::from_millis(151_400),
        };
        let one = line("shop", &p);
        assert!(
            one.starts_with("sync shop: waiting on health, 1 of 9 objects not ready, 2m 31s left: Deployment/shop/web ("),
            "{one}"
        );
        assert!(one.contains("1 of 2 replicas available"), "{one}");
        p.pending = pending;
        let many = line("shop", &p);
        assert!(
            many.contains("Deployment/shop/db") && many.ends_with("; and 1 more"),
            "{many}"
        );
        assert!(!many.contains("cache"), "{many}");
    }

    #[test]
    fn piped_lines_come_every_ten_seconds() {
        let s = Duration::from_secs;
        assert!(!due(None, s(9)));
        assert!(due(None, s(10)));
        assert!(!due(Some(s(10)), s(19)));
        assert!(due(Some(s(10)), s(20)));
    }
}
