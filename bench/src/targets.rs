//! Issue 16's targets, judged on the rows at the sizes it names: met, or missed by how much.
//! A size that was not run says so instead of a verdict.

use std::time::Duration;

use crate::versus::Row;

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn secs(v: impl IntoIterator<Item = Duration>) -> Vec<f64> {
    v.into_iter().map(|d| d.as_secs_f64()).collect()
}

/// The single-sync row of `n` objects.
fn at(rows: &[Row], n: usize) -> Option<&Row> {
    rows.iter().find(|r| r.objects == n && r.syncs == 1)
}

/// "met (x ≥ want)" or "missed: x, short by d", for a ratio that must reach `want`.
fn at_least(x: Option<f64>, want: f64, what: &str) -> String {
    match x {
        Some(x) if x >= want => format!("met ({what} {x:.2} ≥ {want})"),
        Some(x) => format!("missed ({what} {x:.2} < {want}, short by {:.2})", want - x),
        None => "not measured".into(),
    }
}

fn at_most(x: Option<f64>, limit: f64, what: &str) -> String {
    match x {
        Some(x) if x <= limit => format!("met ({what} {x:.2} ≤ {limit})"),
        Some(x) => format!("missed ({what} {x:.2} > {limit}, over by {:.2})", x - limit),
        None => "not measured".into(),
    }
}

fn applied(r: &Row) -> (Option<f64>, Option<f64>, Option<f64>) {
    let agent = median(secs(r.agent_cold.iter().map(|s| s.applied())));
    let flux = median(secs(r.flux_cold.iter().map(|c| c.applied)));
    let raw = median(secs(r.raw_cold.iter().copied()));
    (agent, flux, raw)
}

fn cold(rows: &[Row], out: &mut Vec<(String, String)>) {
    for n in [5_000, 20_000] {
        let (speed, bound) = match at(rows, n) {
            Some(r) => {
                let (a, f, raw) = applied(r);
                (
                    at_least(f.zip(a).map(|(f, a)| f / a), 2.0, "Flux ÷ agent"),
                    at_most(a.zip(raw).map(|(a, b)| a / b), 1.2, "agent ÷ raw"),
                )
            }
            None => ("not run at this size".into(), "not run at this size".into()),
        };
        out.push((
            format!("cold sync (all applied) at {n}: ≥ 2× faster than Flux"),
            speed,
        ));
        out.push((
            format!("cold sync (all applied) at {n}: ≤ 1.2× the raw bound"),
            bound,
        ));
    }
}

fn idle(rows: &[Row], out: &mut Vec<(String, String)>) {
    let Some(r) = at(rows, 20_000) else {
        out.push((
            "no-change reconcile at 20000".into(),
            "not run at this size".into(),
        ));
        return;
    };
    let req =
        |v: &[crate::versus::Reconcile]| median(v.iter().map(|x| x.requests as f64).collect());
    let ratio = match (req(&r.flux_idle), req(&r.agent_idle)) {
        (Some(f), Some(a)) => Some(f / a.max(1.0)),
        _ => None,
    };
    out.push((
        "no-change reconcile at 20000: ≥ 100× fewer API requests than Flux".into(),
        at_least(ratio, 100.0, "Flux ÷ agent"),
    ));
    let writes = r.agent_idle.iter().map(|x| x.writes).max();
    out.push((
        "no-change reconcile at 20000: zero writes".into(),
        match writes {
            Some(0) => "met (0 objects written in every run)".into(),
            Some(w) => format!("missed ({w} objects written)"),
            None => "not measured".into(),
        },
    ));
    let wall = median(secs(r.agent_idle.iter().map(|x| x.wall)));
    out.push((
        "no-change reconcile at 20000: under 1 s".into(),
        at_most(wall, 1.0, "seconds"),
    ));
}

fn latency(rows: &[Row], out: &mut Vec<(String, String)>) {
    for r in rows.iter().filter(|r| r.syncs == 1) {
        let (f, a) = (r.flux_webhook.median(), r.agent_webhook.median());
        let ratio = f.zip(a).map(|(f, a)| f.as_secs_f64() / a.as_secs_f64());
        out.push((
            format!(
                "push → applied via webhook at {}: median ≥ 10× faster than Flux",
                r.objects
            ),
            at_least(ratio, 10.0, "Flux ÷ agent"),
        ));
        let (f, a) = (r.flux_drift.median(), r.agent_drift.corrected.median());
        let ratio = f.zip(a).map(|(f, a)| f.as_secs_f64() / a.as_secs_f64());
        out.push((
            format!(
                "drift corrected at {}: ≥ 100× faster than Flux at a 1-minute interval",
                r.objects
            ),
            at_least(ratio, 100.0, "Flux ÷ agent"),
        ));
    }
    let hook = |n| at(rows, n).and_then(|r| r.agent_webhook.median());
    out.push((
        "push → applied via webhook at 20000: within 2× of the 1000-object figure".into(),
        match (hook(20_000), hook(1_000)) {
            (Some(big), Some(small)) => at_most(
                Some(big.as_secs_f64() / small.as_secs_f64()),
                2.0,
                "20000 ÷ 1000",
            ),
            _ => "not run at both sizes".into(),
        },
    ));
}

fn memory(rows: &[Row], out: &mut Vec<(String, String)>) {
    let mib = |k: u64| k as f64 / 1024.0;
    match at(rows, 20_000) {
        Some(r) => {
            let (a, f) = (r.agent_memory.peak_kib, r.flux_memory.peak_kib);
            let ratio = (a > 0 && f > 0).then(|| mib(a) / mib(f));
            out.push((
                "peak RSS at 20000: at most half of Flux's controllers".into(),
                at_most(ratio, 0.5, "agent ÷ Flux"),
            ));
            out.push((
                "peak RSS at 20000: under 128 MiB".into(),
                at_most((a > 0).then(|| mib(a)), 128.0, "MiB"),
            ));
        }
        None => out.push(("peak RSS at 20000".into(), "not run at this size".into())),
    }
    match rows.iter().find(|r| r.syncs > 1) {
        Some(r) => {
            let a = r.agent_memory.peak_kib;
            out.push((
                format!(
                    "peak RSS at {} across {} syncs: under 256 MiB",
                    r.objects, r.syncs
                ),
                at_most((a > 0).then(|| mib(a)), 256.0, "MiB"),
            ));
        }
        None => out.push((
            "peak RSS across ten syncs".into(),
            "not run (needs --large)".into(),
        )),
    }
}

/// Every target, in the order.
pub fn judge(rows: &[Row]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    cold(rows, &mut out);
    idle(rows, &mut out);
    latency(rows, &mut out);
    memory(rows, &mut out);
    out
}
