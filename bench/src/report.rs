//! The results: for each size, the agent beside Flux (and kubectl and the raw bound for
//! the cold sync), medians with their spread, ratios, the targets of issue 16 judged at the
//! sizes it names (met, or missed by how much), and the machine. Printed and written as
//! Markdown.

use std::fmt::Write as _;
use std::time::Duration;

use crate::latency::Samples;
use crate::versus::{Reconcile, Row};

/// Where it ran.
#[derive(Debug)]
pub struct Machine {
    pub cpus: String,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub kubernetes: String,
    pub kubectl: String,
    /// Flux's controllers, when they ran.
    pub flux: String,
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
            flux: String::new(),
            date: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }
}

impl Machine {
    /// A Markdown list.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "- CPUs (nproc): {}\n- CPU model: {}\n- memory: {}\n- kernel: {}\n- Kubernetes (server): {}\n- kubectl (client): {}\n",
            self.cpus, self.cpu_model, self.memory, self.kernel, self.kubernetes, self.kubectl
        );
        if !self.flux.is_empty() {
            let _ = writeln!(out, "- Flux: {}", self.flux);
        }
        let _ = writeln!(out, "- date: {}", self.date);
        out
    }

    /// `2 × <model>, <memory>, <kernel>, Kubernetes <v>, <date>`.
    pub fn one_line(&self) -> String {
        format!(
            "{} × {}, {} memory, {}, Kubernetes {}, {}",
            self.cpus, self.cpu_model, self.memory, self.kernel, self.kubernetes, self.date
        )
    }
}

fn secs(d: Duration) -> String {
    match d.as_secs_f64() {
        s if s < 1.0 => format!("{} ms", d.as_millis()),
        s => format!("{s:.2} s"),
    }
}

/// Median and spread of repeated measurements.
fn series(values: &[Duration]) -> Option<String> {
    let mut v = values.to_vec();
    v.sort();
    let median = *v.get(v.len() / 2)?;
    Some(match v.len() {
        1 => format!("{} (n=1)", secs(median)),
        n => format!(
            "{} ({}–{}, n={n})",
            secs(median),
            secs(v[0]),
            secs(v[n - 1])
        ),
    })
}

fn median(values: &[Duration]) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

fn median_of<T>(values: &[T], f: impl Fn(&T) -> f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// `Flux ÷ agent`: how many times the agent is better.
fn times(flux: Option<f64>, agent: Option<f64>) -> String {
    match (flux, agent) {
        (Some(f), Some(a)) if a > 0.0 => format!("{:.1}×", f / a),
        (Some(_), Some(_)) => "∞ (agent: 0)".into(),
        _ => "–".into(),
    }
}

fn cell(s: Option<String>) -> String {
    s.unwrap_or_else(|| "not measured".into())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One table line: measurement, N, agent, Flux, Flux ÷ agent, and the other peers' cell.
struct Line {
    what: &'static str,
    agent: String,
    flux: String,
    ratio: String,
    others: String,
}

fn size(r: &Row) -> String {
    match r.syncs {
        1 => r.objects.to_string(),
        n => format!("{} ({n} syncs)", r.objects),
    }
}

fn cold_lines(r: &Row) -> Vec<Line> {
    let secs_of = |v: Option<Duration>| v.map(|d| d.as_secs_f64());
    let agent_applied: Vec<Duration> = r
        .agent_cold
        .iter()
        .filter(|s| s.health_wait.is_some())
        .map(|s| s.applied())
        .collect();
    let agent_healthy: Vec<Duration> = r.agent_cold.iter().map(|s| s.wall).collect();
    let flux_applied: Vec<Duration> = r.flux_cold.iter().map(|c| c.applied).collect();
    let flux_healthy: Vec<Duration> = r.flux_cold.iter().map(|c| c.healthy).collect();
    let mut others = Vec::new();
    if let Some(raw) = series(&r.raw_cold) {
        let over = secs_of(median(&agent_applied))
            .zip(secs_of(median(&r.raw_cold)))
            .map(|(a, b)| a / b);
        others.push(format!(
            "raw bound {raw}; agent ÷ raw {}",
            over.map(|x| format!("{x:.2}×")).unwrap_or("–".into())
        ));
    }
    if let Some(k) = r.kubectl_cold {
        let x = secs_of(median(&agent_applied)).map(|a| k.as_secs_f64() / a);
        others.push(format!(
            "kubectl {} (n=1; kubectl ÷ agent {})",
            secs(k),
            x.map(|x| format!("{x:.1}×")).unwrap_or("–".into())
        ));
    }
    vec![
        Line {
            what: "cold sync: commit → all applied",
            agent: cell(series(&agent_applied)),
            flux: cell(series(&flux_applied)),
            ratio: times(
                secs_of(median(&flux_applied)),
                secs_of(median(&agent_applied)),
            ),
            others: others.join("; "),
        },
        Line {
            what: "cold sync: commit → all healthy",
            agent: cell(series(&agent_healthy)),
            flux: cell(series(&flux_healthy)),
            ratio: times(
                secs_of(median(&flux_healthy)),
                secs_of(median(&agent_healthy)),
            ),
            others: String::new(),
        },
    ]
}

fn idle_lines(r: &Row) -> Vec<Line> {
    let walls = |v: &[Reconcile]| v.iter().map(|x| x.wall).collect::<Vec<_>>();
    let detail = |v: &[Reconcile]| {
        v.first()
            .map(|x| format!("; e.g. {}", x.detail))
            .unwrap_or_default()
    };
    let count = |v: &[Reconcile], f: fn(&Reconcile) -> f64| median_of(v, f);
    let (a, f) = (&r.agent_idle, &r.flux_idle);
    vec![
        Line {
            what: "no-change reconcile: wall time (agent at its default config, health on)",
            agent: cell(series(&walls(a))),
            flux: cell(series(&walls(f))),
            ratio: times(
                median(&walls(f)).map(|d| d.as_secs_f64()),
                median(&walls(a)).map(|d| d.as_secs_f64()),
            ),
            others: String::new(),
        },
        Line {
            what: "no-change reconcile: API requests (median)",
            agent: cell(count(a, |x| x.requests as f64).map(|n| format!("{n}{}", detail(a)))),
            flux: cell(count(f, |x| x.requests as f64).map(|n| format!("{n}{}", detail(f)))),
            ratio: times(
                count(f, |x| x.requests as f64),
                count(a, |x| x.requests as f64),
            ),
            others: String::new(),
        },
        Line {
            what: "no-change reconcile: corpus objects written (by its field manager)",
            agent: cell(count(a, |x| x.writes as f64).map(|n| n.to_string())),
            flux: cell(count(f, |x| x.writes as f64).map(|n| n.to_string())),
            ratio: "–".into(),
            others: String::new(),
        },
        Line {
            what: "no-change reconcile: CPU seconds (median)",
            agent: cell(count(a, |x| x.cpu_seconds).map(|c| format!("{c:.2}"))),
            flux: cell(count(f, |x| x.cpu_seconds).map(|c| format!("{c:.2}"))),
            ratio: times(count(f, |x| x.cpu_seconds), count(a, |x| x.cpu_seconds)),
            others: String::new(),
        },
    ]
}

fn samples_ratio(flux: &Samples, agent: &Samples) -> String {
    times(
        flux.median().map(|d| d.as_secs_f64()),
        agent.median().map(|d| d.as_secs_f64()),
    )
}

fn latency_lines(r: &Row) -> Vec<Line> {
    let no_alert =
        "Flux raises no drift alert (its next reconcile corrects the object and records an Event)";
    vec![
        Line {
            what: "one-object change: push → applied, via webhook",
            agent: samples_cell(&r.agent_webhook),
            flux: samples_cell(&r.flux_webhook),
            ratio: samples_ratio(&r.flux_webhook, &r.agent_webhook),
            others: "Flux: the reconcile request its Receiver would make".into(),
        },
        Line {
            what: "one-object change: push → applied, polling every 10 s",
            agent: samples_cell(&r.agent_poll),
            flux: samples_cell(&r.flux_poll),
            ratio: samples_ratio(&r.flux_poll, &r.agent_poll),
            others: String::new(),
        },
        Line {
            what: "drift: out-of-band edit → corrected",
            agent: samples_cell(&r.agent_drift.corrected),
            flux: samples_cell(&r.flux_drift),
            ratio: samples_ratio(&r.flux_drift, &r.agent_drift.corrected),
            others: "Flux at a 1-minute interval".into(),
        },
        Line {
            what: "drift: out-of-band edit → alerted",
            agent: samples_cell(&r.agent_drift.detected),
            flux: "–".into(),
            ratio: "–".into(),
            others: no_alert.into(),
        },
    ]
}

fn memory_lines(r: &Row) -> Vec<Line> {
    let (a, f) = (&r.agent_memory, &r.flux_memory);
    let per = |kib: u64| mib(kib) / (r.objects as f64 / 1000.0);
    let some = |kib: u64| (kib > 0).then_some(kib);
    vec![
        Line {
            what: "peak RSS",
            agent: cell(some(a.peak_kib).map(|k| format!("{:.1} MiB", mib(k)))),
            flux: cell(some(f.peak_kib).map(|k| format!("{:.1} MiB", mib(k)))),
            ratio: times(some(f.peak_kib).map(mib), some(a.peak_kib).map(mib)),
            others: "agent: its `sync --once` and daemon processes, the larger; Flux: both controllers' together".into(),
        },
        Line {
            what: "steady RSS (after the rows)",
            agent: cell(some(a.rss_kib).map(|k| format!("{:.1} MiB ({:.2} MiB per 1,000 objects)", mib(k), per(k)))),
            flux: cell(some(f.rss_kib).map(|k| format!("{:.1} MiB ({:.2} MiB per 1,000 objects)", mib(k), per(k)))),
            ratio: times(some(f.rss_kib).map(mib), some(a.rss_kib).map(mib)),
            others: String::new(),
        },
    ]
}

/// Renders the table, the targets, the machine and the notes as Markdown.
pub fn render(rows: &[Row], machine: &Machine, notes: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| measurement | N | agent | Flux | Flux ÷ agent | notes |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
    let groups: [fn(&Row) -> Vec<Line>; 4] = [cold_lines, idle_lines, latency_lines, memory_lines];
    for group in groups {
        for r in rows {
            for l in group(r) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} |",
                    l.what,
                    size(r),
                    l.agent,
                    l.flux,
                    l.ratio,
                    l.others
                );
            }
        }
    }
    let _ = writeln!(out, "\n### Targets\n\n| target | verdict |\n| --- | --- |");
    for (t, v) in crate::targets::judge(rows) {
        let _ = writeln!(out, "| {t} | {v} |");
    }
    let _ = writeln!(out, "\n### Machine\n");
    let _ = write!(out, "{}", machine.markdown());
    let _ = writeln!(out, "\n### Notes\n");
    for n in notes {
        let _ = writeln!(out, "- {n}");
    }
    for r in rows {
        for e in &r.errors {
            let _ = writeln!(
                out,
                "- N = {}: not measured: {}",
                size(r),
                e.replace('\n', " ")
            );
        }
    }
    out
}
fn samples_cell(s: &Samples) -> String {
    match (s.median(), s.worst()) {
        (Some(m), Some(w)) => {
            let mut c = format!(
                "median {}, worst {} (n={})",
                secs(m),
                secs(w),
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
