//! The results: one column per corpus size, ratios against kubectl and the raw bound,
//! the targets beside the numbers (met, or missed by how much, judged at the largest
//! size), and the machine they were measured on. Printed and written as Markdown.

use std::fmt::Write as _;
use std::time::Duration;

use crate::agent::SyncRun;
use crate::latency::Samples;

/// A measurement, or why it could not be made.
pub type Measured<T> = Result<T, String>;

/// Everything measured for one corpus size.
#[derive(Debug)]
pub struct Run {
    pub objects: usize,
    pub agent_cold: Measured<SyncRun>,
    pub kubectl_cold: Measured<Duration>,
    pub raw_cold: Measured<Duration>,
    /// `sync --once` again: a one-shot process, no watch cache.
    pub resync_once: Measured<SyncRun>,
    pub change_once: Measured<SyncRun>,
    /// The daemon, each triggered by a webhook: `wall` from the webhook to the sync's end.
    pub resync_daemon: Measured<SyncRun>,
    pub change_daemon: Measured<SyncRun>,
    pub drift: Measured<Samples>,
    pub webhook: Measured<Samples>,
    pub peak_rss_kib: Measured<u64>,
}

/// Where it ran.
#[derive(Debug)]
pub struct Machine {
    pub cpus: String,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub kubernetes: String,
    pub kubectl: String,
    pub date: String,
}

impl Machine {
    pub fn describe(kubernetes: String) -> Self {
        let sh = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|| "unknown".into())
        };
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_else(|| "unknown".into())
        };
        let kubectl = sh("kubectl", &["version", "--client", "-o", "json"]);
        let kubectl = serde_json::from_str::<serde_json::Value>(&kubectl)
            .ok()
            .and_then(|v| v["clientVersion"]["gitVersion"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpus: sh("nproc", &[]),
            cpu_model: field(&cpuinfo, "model name"),
            memory: field(&meminfo, "MemTotal"),
            kernel: sh("uname", &["-sr"]),
            kubernetes,
            kubectl,
            date: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }
}

impl Machine {
    /// `2 × <model>, <memory>, <kernel>, Kubernetes <v>, <date>`.
    pub fn one_line(&self) -> String {
        format!(
            "{} × {}, {} memory, {}, Kubernetes {}, {}",
            self.cpus, self.cpu_model, self.memory, self.kernel, self.kubernetes, self.date
        )
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn or_err<T>(m: &Measured<T>, f: impl Fn(&T) -> String) -> String {
    match m {
        Ok(v) => f(v),
        Err(e) => format!("not measured: {}", e.replace('|', "/").replace('\n', " ")),
    }
}

fn sync_cell(r: &SyncRun) -> String {
    format!(
        "{} (agent's own: {}); {} requests, {} writes, {} dry-runs",
        secs(r.wall),
        secs(r.took),
        r.requests,
        r.writes,
        r.dry_runs
    )
}

fn daemon_cell(r: &SyncRun) -> String {
    format!(
        "{} webhook to synced (the sync itself: {}); {} requests, {} writes, {} dry-runs",
        secs(r.wall),
        secs(r.took),
        r.requests,
        r.writes,
        r.dry_runs
    )
}

fn samples_cell(s: &Samples) -> String {
    match (s.median(), s.worst()) {
        (Some(m), Some(w)) => {
            let mut c = format!(
                "median {} ms, worst {} ms (n={})",
                m.as_millis(),
                w.as_millis(),
                s.times.len()
            );
            if s.missed > 0 {
                let _ = write!(c, ", {} missed", s.missed);
            }
            if let Some(n) = &s.note {
                let _ = write!(c, "; {n}");
            }
            c
        }
        _ => format!(
            "no sample completed ({} missed){}",
            s.missed,
            s.note
                .as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        ),
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

/// "met" or "missed by ..." for a value that must stay under `limit`.
fn under(value: f64, limit: f64, unit: &str) -> String {
    if value < limit {
        format!("met ({value:.3} {unit} < {limit} {unit})")
    } else {
        format!("missed by {:.2} {unit} ({value:.2} {unit})", value - limit)
    }
}

/// Renders the table, the targets and the machine as Markdown.
pub fn render(runs: &[Run], machine: &Machine, notes: &[String]) -> String {
    let mut out = String::new();
    let header: Vec<String> = runs.iter().map(|r| format!("N = {}", r.objects)).collect();
    let _ = writeln!(out, "| measurement | {} |", header.join(" | "));
    let _ = writeln!(out, "| --- |{}", " --- |".repeat(runs.len()));
    type Row = (&'static str, fn(&Run) -> String);
    let rows: [Row; 13] = [
        ("cold sync: agent (`sync --once`)", |r| {
            or_err(&r.agent_cold, sync_cell)
        }),
        ("cold sync: kubectl apply --server-side", |r| {
            or_err(&r.kubectl_cold, |d| secs(*d))
        }),
        ("cold sync: raw SSA bound", |r| {
            or_err(&r.raw_cold, |d| secs(*d))
        }),
        ("agent speed-up over kubectl", |r| {
            match (&r.agent_cold, &r.kubectl_cold) {
                (Ok(a), Ok(k)) => format!("{:.2}×", ratio(*k, a.wall)),
                _ => "n/a".into(),
            }
        }),
        ("agent / raw bound", |r| {
            match (&r.agent_cold, &r.raw_cold) {
                (Ok(a), Ok(raw)) => format!("{:.2}×", ratio(a.wall, *raw)),
                _ => "n/a".into(),
            }
        }),
        ("kubectl / raw bound", |r| {
            match (&r.kubectl_cold, &r.raw_cold) {
                (Ok(k), Ok(raw)) => format!("{:.2}×", ratio(*k, *raw)),
                _ => "n/a".into(),
            }
        }),
        ("no-change resync: daemon (webhook, watch cache)", |r| {
            or_err(&r.resync_daemon, daemon_cell)
        }),
        ("one-object change: daemon (push + webhook)", |r| {
            or_err(&r.change_daemon, daemon_cell)
        }),
        ("no-change resync: one-shot `sync --once`", |r| {
            or_err(&r.resync_once, sync_cell)
        }),
        ("one-object change: one-shot `sync --once`", |r| {
            or_err(&r.change_once, sync_cell)
        }),
        ("drift → `driftDetected` alert", |r| {
            or_err(&r.drift, samples_cell)
        }),
        ("webhook → applied", |r| or_err(&r.webhook, samples_cell)),
        ("daemon peak RSS (VmHWM)", |r| {
            or_err(&r.peak_rss_kib, |k| {
                format!("{:.1} MiB", *k as f64 / 1024.0)
            })
        }),
    ];
    for (name, cell) in rows {
        let cells: Vec<String> = runs.iter().map(cell).collect();
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    }

    if let Some(big) = runs.iter().max_by_key(|r| r.objects) {
        let _ = writeln!(out, "\n### Targets (judged at N = {})\n", big.objects);
        let _ = writeln!(out, "| target | verdict |\n| --- | --- |");
        for (target, verdict) in targets(big) {
            let _ = writeln!(out, "| {target} | {verdict} |");
        }
    }

    let _ = writeln!(out, "\n### Machine\n");
    for (k, v) in [
        ("CPUs (nproc)", &machine.cpus),
        ("CPU model", &machine.cpu_model),
        ("memory", &machine.memory),
        ("kernel", &machine.kernel),
        ("Kubernetes (server)", &machine.kubernetes),
        ("kubectl (client)", &machine.kubectl),
        ("date", &machine.date),
    ] {
        let _ = writeln!(out, "- {k}: {v}");
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\n### Notes\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

fn targets(r: &Run) -> Vec<(&'static str, String)> {
    let na = |e: &str| format!("not measured: {e}");
    let mut t = Vec::new();
    t.push((
        "cold sync ≥ 4× faster than kubectl",
        match (&r.agent_cold, &r.kubectl_cold) {
            (Ok(a), Ok(k)) => {
                let x = ratio(*k, a.wall);
                if x >= 4.0 {
                    format!("met ({x:.2}×)")
                } else {
                    format!("missed: {x:.2}×, {:.2}× short", 4.0 - x)
                }
            }
            (Err(e), _) | (_, Err(e)) => na(e),
        },
    ));
    t.push((
        "cold sync ≤ 1.5× the raw bound",
        match (&r.agent_cold, &r.raw_cold) {
            (Ok(a), Ok(raw)) => {
                let x = ratio(a.wall, *raw);
                if x <= 1.5 {
                    format!("met ({x:.2}×)")
                } else {
                    format!("missed: {x:.2}×, {:.2}× over", x - 1.5)
                }
            }
            (Err(e), _) | (_, Err(e)) => na(e),
        },
    ));
    t.push((
        "no-change resync < 1 s (daemon, webhook to synced)",
        match &r.resync_daemon {
            Ok(s) => under(s.wall.as_secs_f64(), 1.0, "s"),
            Err(e) => na(e),
        },
    ));
    t.push((
        "no-change resync: zero writes, no dry-run (daemon)",
        match &r.resync_daemon {
            Ok(s) if s.writes == 0 && s.dry_runs == 0 => {
                format!("met ({} requests, 0 writes, 0 dry-runs)", s.requests)
            }
            Ok(s) => format!("missed: {} writes, {} dry-runs", s.writes, s.dry_runs),
            Err(e) => na(e),
        },
    ));
    t.push((
        "one-object change < 1 s, only that object written (daemon, webhook to synced)",
        match &r.change_daemon {
            Ok(s) => format!(
                "{}; {} writes (the object and the sync's inventory record){}",
                under(s.wall.as_secs_f64(), 1.0, "s"),
                s.writes,
                if s.writes <= 2 { "" } else { " (missed)" }
            ),
            Err(e) => na(e),
        },
    ));
    let lat = |m: &Measured<Samples>, pick: fn(&Samples) -> Option<Duration>, limit: f64| match m {
        Ok(s) => match pick(s) {
            Some(d) => under(d.as_secs_f64(), limit, "s"),
            None => "no sample completed".into(),
        },
        Err(e) => na(e),
    };
    t.push((
        "drift alert median < 1 s",
        lat(&r.drift, Samples::median, 1.0),
    ));
    t.push((
        "drift alert worst < 3 s",
        lat(&r.drift, Samples::worst, 3.0),
    ));
    t.push((
        "webhook to applied median < 2 s",
        lat(&r.webhook, Samples::median, 2.0),
    ));
    t.push((
        "peak RSS < 64 MiB",
        match &r.peak_rss_kib {
            Ok(k) => under(*k as f64 / 1024.0, 64.0, "MiB"),
            Err(e) => na(e),
        },
    ));
    t
}
