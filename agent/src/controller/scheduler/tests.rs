//! The scheduler's rules, in paused time.

use super::*;

const MIN: Duration = Duration::from_secs(5);

fn opts() -> Options {
    Options {
        resync: Duration::from_secs(60),
        backoff: Policy {
            min: MIN,
            max: Duration::from_secs(40),
        },
    }
}

fn source(name: &str, interval: u64) -> SourceSpec {
    SourceSpec {
        name: name.into(),
        interval: Duration::from_secs(interval),
    }
}

fn sync(name: &str, source: &str) -> SyncSpec {
    SyncSpec {
        name: name.into(),
        source: source.into(),
        suspended: false,
        generation: 0,
    }
}

fn fetch(s: &str) -> Action {
    Action::Fetch { source: s.into() }
}

fn run(s: &str, reason: Reason) -> Action {
    Action::Run {
        sync: s.into(),
        reason,
    }
}

/// One source `repo` (interval 30 s) with syncs `a`, `b`, `c`.
fn three_on_one_repo() -> Scheduler {
    let mut s = Scheduler::new(opts());
    s.configure(
        &[source("repo", 30)],
        &[sync("a", "repo"), sync("b", "repo"), sync("c", "repo")],
        Instant::now(),
    );
    s
}

fn advance_to(t: Instant) -> impl std::future::Future<Output = ()> {
    tokio::time::sleep_until(t)
}

#[tokio::test(start_paused = true)]
async fn one_fetch_serves_every_sync_of_a_source_and_intervals_come_due() {
    let mut s = three_on_one_repo();
    let t0 = Instant::now();
    assert_eq!(s.poll(t0), [fetch("repo")]);
    assert_eq!(s.poll(t0), [], "a fetch in flight is not started twice");
    let runs = s.fetched("repo", Some("rev1"), t0);
    assert_eq!(
        runs,
        [
            run("a", Reason::NewRevision),
            run("b", Reason::NewRevision),
            run("c", Reason::NewRevision)
        ]
    );
    for name in ["a", "b", "c"] {
        assert_eq!(s.finished(name, "rev1", Some(true), t0), []);
    }
    // Nothing until the source's interval; then one fetch, and an unchanged revision runs nothing.
    assert_eq!(
        s.next_wake(t0, Duration::from_secs(3600)),
        t0 + Duration::from_secs(30)
    );
    advance_to(t0 + Duration::from_secs(29)).await;
    assert_eq!(s.poll(Instant::now()), []);
    advance_to(t0 + Duration::from_secs(30)).await;
    assert_eq!(s.poll(Instant::now()), [fetch("repo")]);
    assert_eq!(s.fetched("repo", Some("rev1"), Instant::now()), []);
    assert_eq!(
        s.fetched("repo", Some("rev2"), Instant::now()),
        [
            run("a", Reason::NewRevision),
            run("b", Reason::NewRevision),
            run("c", Reason::NewRevision)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn triggers_before_the_fetch_coalesce_and_run_unchanged_syncs() {
    let mut s = three_on_one_repo();
    let t0 = Instant::now();
    s.poll(t0);
    s.fetched("repo", Some("rev1"), t0);
    for name in ["a", "b", "c"] {
        s.finished(name, "rev1", Some(true), t0);
    }
    advance_to(t0 + Duration::from_secs(1)).await;
    let now = Instant::now();
    for _ in 0..5 {
        s.trigger("repo", now);
    }
    s.trigger("unknown", now);
    assert_eq!(s.poll(now), [fetch("repo")], "five triggers, one fetch");
    assert_eq!(s.poll(now), []);
    assert_eq!(
        s.fetched("repo", Some("rev1"), now),
        [
            run("a", Reason::Requested),
            run("b", Reason::Requested),
            run("c", Reason::Requested)
        ],
        "a trigger resyncs an unchanged revision"
    );
}

#[tokio::test(start_paused = true)]
async fn a_sync_never_runs_twice_at_once_and_what_came_due_runs_after() {
    let mut s = three_on_one_repo();
    let t0 = Instant::now();
    s.poll(t0);
    s.fetched("repo", Some("rev1"), t0);
    s.finished("b", "rev1", Some(true), t0);
    s.finished("c", "rev1", Some(true), t0);
    assert!(s.is_running("a"));
    // A new revision while `a` still runs: b and c run, a waits.
    s.trigger("repo", t0);
    s.poll(t0);
    assert_eq!(
        s.fetched("repo", Some("rev2"), t0),
        [run("b", Reason::NewRevision), run("c", Reason::NewRevision)]
    );
    // More triggers for `a` while it runs are still one run after it ends.
    s.trigger("repo", t0);
    s.poll(t0);
    s.fetched("repo", Some("rev2"), t0);
    assert_eq!(
        s.finished("a", "rev1", Some(true), t0),
        [run("a", Reason::NewRevision)]
    );
    assert_eq!(s.revision_for("a"), Some("rev2"));
    assert_eq!(s.finished("a", "rev2", Some(true), t0), []);
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_with_jitter_and_a_success_resets() {
    let mut s = Scheduler::new(opts());
    let t0 = Instant::now();
    s.configure(&[source("repo", 3600)], &[sync("a", "repo")], t0);
    s.poll(t0);
    s.fetched("repo", Some("rev1"), t0);
    let mut waits = Vec::new();
    for _ in 0..4 {
        let failed_at = Instant::now();
        assert_eq!(s.finished("a", "rev1", Some(false), failed_at), []);
        let wake = s.next_wake(failed_at, Duration::from_secs(3600));
        waits.push(wake - failed_at);
        // Not before the backoff has passed.
        advance_to(wake - Duration::from_millis(1)).await;
        assert_eq!(s.poll(Instant::now()), []);
        advance_to(wake).await;
        assert_eq!(s.poll(Instant::now()), [run("a", Reason::Retry)]);
    }
    for (i, w) in waits.iter().enumerate() {
        let step = MIN * (1 << i);
        assert!(*w >= step && *w < step * 2, "retry {i}: {w:?}");
    }
    // A success resets the backoff: the next failure waits about the minimum again.
    let now = Instant::now();
    s.finished("a", "rev1", Some(true), now);
    s.poll(now);
    s.trigger("repo", now);
    s.poll(now);
    assert_eq!(
        s.fetched("repo", Some("rev1"), now),
        [run("a", Reason::Requested)]
    );
    s.finished("a", "rev1", Some(false), now);
    let w = s.next_wake(now, Duration::from_secs(3600)) - now;
    assert!(w >= MIN && w < MIN * 2, "after a reset: {w:?}");
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_the_retries_of_syncs_that_fail_together() {
    let mut s = Scheduler::new(opts());
    let t0 = Instant::now();
    let names: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    let syncs: Vec<SyncSpec> = names.iter().map(|n| sync(n, "repo")).collect();
    s.configure(&[source("repo", 3600)], &syncs, t0);
    s.poll(t0);
    s.fetched("repo", Some("rev1"), t0);
    for n in &names {
        s.finished(n, "rev1", Some(false), t0);
    }
    let retries: std::collections::BTreeSet<Instant> = names
        .iter()
        .map(|n| s.syncs[n].retry_at.expect("retry scheduled"))
        .collect();
    assert!(retries.len() > 1, "ten syncs retry at one instant");
}

#[tokio::test(start_paused = true)]
async fn resync_runs_on_its_own_clock_whatever_the_source_interval() {
    let mut s = Scheduler::new(opts());
    let t0 = Instant::now();
    s.configure(&[source("repo", 3600)], &[sync("a", "repo")], t0);
    s.poll(t0);
    s.fetched("repo", Some("rev1"), t0);
    s.finished("a", "rev1", Some(true), t0);
    let wake = s.next_wake(t0, Duration::from_secs(7200));
    assert_eq!(
        wake,
        t0 + Duration::from_secs(60),
        "resync (60 s) before the fetch (1 h)"
    );
    advance_to(wake).await;
    assert_eq!(s.poll(Instant::now()), [run("a", Reason::Resync)]);
    assert_eq!(s.revision_for("a"), Some("rev1"));
}

#[tokio::test(start_paused = true)]
async fn suspended_and_removed_syncs_do_not_run_and_a_changed_spec_runs_again() {
    let mut s = three_on_one_repo();
    let t0 = Instant::now();
    s.poll(t0);
    s.fetched("repo", Some("rev1"), t0);
    for name in ["a", "b", "c"] {
        s.finished(name, "rev1", Some(true), t0);
    }
    let mut b = sync("b", "repo");
    b.suspended = true;
    s.configure(&[source("repo", 30)], &[sync("a", "repo"), b], t0);
    assert_eq!(s.source_of("c"), None);
    assert_eq!(
        s.poll(t0),
        [fetch("repo")],
        "a new configuration fetches now"
    );
    assert_eq!(
        s.fetched("repo", Some("rev1"), t0),
        [],
        "a suspended sync never runs, an unchanged one needs no run"
    );
    let mut b = sync("b", "repo");
    b.suspended = false;
    s.configure(&[source("repo", 30)], &[sync("a", "repo"), b], t0);
    s.poll(t0);
    assert_eq!(
        s.fetched("repo", Some("rev1"), t0),
        [run("b", Reason::NewRevision)],
        "a changed spec runs again on the same revision"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_that_only_judged_drift_keeps_the_last_result() {
    let mut s = Scheduler::new(opts());
    let t0 = Instant::now();
    s.configure(&[source("repo", 3600)], &[sync("a", "repo")], t0);
    s.poll(t0);
    s.fetched("repo", Some("rev1"), t0);
    s.finished("a", "rev1", Some(false), t0);
    let retry = s.next_wake(t0, Duration::from_secs(3600));
    s.trigger("repo", t0);
    s.poll(t0);
    assert_eq!(
        s.fetched("repo", Some("rev1"), t0),
        [run("a", Reason::Requested)]
    );
    // A detect-only sync only judged drift: still failing, the same retry still due.
    s.finished("a", "rev1", None, t0);
    assert_eq!(s.next_wake(t0, Duration::from_secs(3600)), retry);
}

#[tokio::test(start_paused = true)]
async fn a_failed_fetch_runs_nothing_and_keeps_the_trigger() {
    let mut s = three_on_one_repo();
    let t0 = Instant::now();
    s.trigger("repo", t0);
    s.poll(t0);
    assert_eq!(s.fetched("repo", None, t0), []);
    advance_to(t0 + Duration::from_secs(30)).await;
    assert_eq!(s.poll(Instant::now()), [fetch("repo")]);
    assert_eq!(s.fetched("repo", Some("rev1"), Instant::now()).len(), 3);
}

#[tokio::test(start_paused = true)]
async fn what_was_not_started_comes_due_again() {
    let mut s = three_on_one_repo();
    let t0 = Instant::now();
    let fetches = s.poll(t0);
    s.not_started(&fetches[0], t0);
    assert_eq!(s.poll(t0), [fetch("repo")], "the fetch is due again");
    let runs = s.fetched("repo", Some("rev1"), t0);
    s.not_started(&runs[0], t0);
    assert!(!s.is_running("a"));
    s.finished("b", "rev1", Some(true), t0);
    s.finished("c", "rev1", Some(true), t0);
    s.poll(t0);
    assert_eq!(
        s.fetched("repo", Some("rev1"), t0).first(),
        Some(&run("a", Reason::NewRevision))
    );
}
