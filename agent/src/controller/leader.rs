//! Leader election through a `coordination.k8s.io/v1` Lease, with client-go's
//! leaderelection semantics (`holderIdentity`, `leaseDurationSeconds`, `acquireTime`,
//! `renewTime`, `leaseTransitions`), so that only one replica syncs at a time.
//!
//! [`spawn`] starts a candidate and returns a `watch::Receiver<bool>` that is `true` while
//! this replica leads, and a [`Handle`]: `release().await` steps down and frees the lease
//! for the next candidate at once; dropping the handle (or `abort()`) stops without
//! releasing, as a crash would, and the lease then expires after its duration.
//!
//! Safety argument, in short:
//! - every write carries the `resourceVersion` read just before it, so of two candidates
//!   racing for the same lease exactly one write succeeds (the other gets 409 Conflict);
//! - a leader counts its lease from the moment it *sent* its last successful renewal and
//!   stops leading `renew_deadline` after that, while nobody else may take over before
//!   `lease_duration` has passed since they *saw* that renewal; with
//!   `renew_deadline < lease_duration` the old leader has stepped down first;
//! - "seen" is measured on the follower's own clock (as client-go does) *and* the lease's
//!   `renewTime + leaseDurationSeconds` must be in the past, so neither a skewed clock
//!   nor a follower that has only just started can take a live lease early.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, info_span};

use crate::http::backoff::{Backoff, Policy};

/// client-go's defaults (and the kube-controller-manager's).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Longest wait between attempts while the API server keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election options: {0}")]
    InvalidOptions(&'static str),
    #[error("Lease/{lease}: {verb}: {source}")]
    Api {
        lease: String,
        verb: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("Lease/{lease}: changed by another writer since it was read")]
    Conflict { lease: String },
    #[error("Lease/{lease}: no answer within {timeout:?}")]
    Timeout { lease: String, timeout: Duration },
    #[error("leader election task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct Options {
    /// Where the Lease lives (the agent's own namespace).
    pub namespace: String,
    pub name: String,
    /// Unique per replica: the pod name is the usual choice.
    pub identity: String,
    /// How long others wait, after last seeing the lease renewed, before taking it over.
    pub lease_duration: Duration,
    /// How long a leader keeps leading after its last successful renewal. Must be shorter
    /// than `lease_duration`: the difference is the margin against two leaders.
    pub renew_deadline: Duration,
    /// How often a leader renews and a follower looks again.
    pub retry_period: Duration,
}

impl Options {
    /// Options with client-go's default timing (15 s, 10 s, 2 s).
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Options {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    fn validate(&self) -> Result<()> {
        let problem = if self.namespace.is_empty() || self.name.is_empty() {
            "namespace and name of the Lease are required"
        } else if self.identity.is_empty() {
            "identity must not be empty"
        } else if self.retry_period.is_zero() {
            "retry_period must be positive"
        } else if self.renew_deadline <= self.retry_period {
            "renew_deadline must be longer than retry_period"
        } else if self.lease_duration <= self.renew_deadline {
            "lease_duration must be longer than renew_deadline"
        } else {
            return Ok(());
        };
        Err(Error::InvalidOptions(problem))
    }

    /// Whole seconds, rounded up: the Lease cannot say less than we mean.
    fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_millis().div_ceil(1000))
            .unwrap_or(i32::MAX)
            .max(1)
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

// --- decisions (pure) ------------------------------------------------------------

/// What a candidate does with the lease it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    /// Ours: renew it.
    Renew,
    /// Free, released or expired: take it.
    TakeOver,
    /// Someone else holds a live lease.
    Follow { holder: String },
}

/// `unchanged_for`: how long, on our own clock, the lease has looked exactly like `spec`.
fn decide(spec: &LeaseSpec, identity: &str, now: Timestamp, unchanged_for: Duration) -> Decision {
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let seconds = u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
    let duration = Duration::from_secs(seconds);
    let seen_expired = unchanged_for >= duration;
    // A lease without renewTime has nothing to compare; our observation decides alone.
    let clock_expired = spec
        .renew_time
        .as_ref()
        .is_none_or(|t| now.duration_since(t.0) > SignedDuration::from_secs(seconds as i64));
    if seen_expired && clock_expired {
        Decision::TakeOver
    } else {
        Decision::Follow {
            holder: holder.to_string(),
        }
    }
}

/// The record of a newly acquired lease (client-go counts a transition whenever the
/// holder changes, a released lease included).
fn acquired(old: &LeaseSpec, opts: &Options, now: Timestamp) -> LeaseSpec {
    let transitions = old.lease_transitions.unwrap_or(0);
    let changed = old.holder_identity.as_deref() != Some(opts.identity.as_str());
    LeaseSpec {
        holder_identity: Some(opts.identity.clone()),
        lease_duration_seconds: Some(opts.lease_duration_seconds()),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if changed {
            transitions.saturating_add(1)
        } else {
            transitions
        }),
        ..old.clone()
    }
}

fn renewed(old: &LeaseSpec, opts: &Options, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        lease_duration_seconds: Some(opts.lease_duration_seconds()),
        renew_time: Some(MicroTime(now)),
        acquire_time: old.acquire_time.clone().or(Some(MicroTime(now))),
        lease_transitions: Some(old.lease_transitions.unwrap_or(0)),
        ..old.clone()
    }
}

/// As client-go releases: no holder, and a one-second duration for readers that only
/// look at the clock.
fn released(old: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(old.lease_transitions.unwrap_or(0)),
        ..old.clone()
    }
}

/// The shared backoff, shaped so that the wait after `n` failures lies in the upper half of
/// `retry_period · 2^(n-1)` (at most 30 s): never in the same breath, and spread out.
fn retries(retry_period: Duration) -> Backoff {
    Backoff::new(Policy {
        min: retry_period / 2,
        max: MAX_BACKOFF.max(retry_period) / 2,
    })
}

/// The wait after `failures` failures, from a fresh [`retries`].
#[cfg(test)]
fn backoff(retry_period: Duration, failures: u32) -> Duration {
    let mut b = retries(retry_period);
    (1..failures).for_each(|_| {
        b.next_delay();
    });
    b.next_delay()
}

/// Up to 20 % more than `d`, so that followers started together do not poll in step.
fn jittered(d: Duration) -> Duration {
    d + d.mul_f64(0.2 * random_fraction())
}

/// Uniform in [0, 1). Jitter needs no quality randomness: std's randomly keyed hasher is enough.
fn random_fraction() -> f64 {
    use std::hash::BuildHasher;
    let bits =
        std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

// --- the candidate ---------------------------------------------------------------

enum Attempt {
    Leading,
    Following { holder: String },
}

struct Candidate {
    api: Api<Lease>,
    opts: Options,
    lease: String,
    /// The lease as last read or written, and when (our clock) it last changed.
    observed: Option<(LeaseSpec, Instant)>,
}

impl Candidate {
    fn new(client: Client, opts: Options) -> Self {
        Candidate {
            api: Api::namespaced(client, &opts.namespace),
            lease: opts.lease_ref(),
            opts,
            observed: None,
        }
    }

    /// How long the lease has looked like `spec`, restarting the count when it changed.
    fn observe(&mut self, spec: &LeaseSpec) -> Duration {
        match &self.observed {
            Some((seen, since)) if seen == spec => since.elapsed(),
            _ => {
                self.observed = Some((spec.clone(), Instant::now()));
                Duration::ZERO
            }
        }
    }

    fn api_error(&self, verb: &'static str, e: kube::Error) -> Error {
        match e {
            kube::Error::Api(s) if s.is_conflict() || s.is_already_exists() => Error::Conflict {
                lease: self.lease.clone(),
            },
            source => Error::Api {
                lease: self.lease.clone(),
                verb,
                source,
            },
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt> {
        let now = Timestamp::now();
        let current = self
            .api
            .get_opt(&self.opts.name)
            .await
            .map_err(|e| self.api_error("get", e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.opts.name.clone()),
                    namespace: Some(self.opts.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(acquired(&LeaseSpec::default(), &self.opts, now)),
            };
            // Two candidates creating at once: the second gets AlreadyExists (a Conflict).
            let created = self
                .api
                .create(&PostParams::default(), &lease)
                .await
                .map_err(|e| self.api_error("create", e))?;
            self.observe(&created.spec.unwrap_or_default());
            return Ok(Attempt::Leading);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let unchanged_for = self.observe(&spec);
        let next = match decide(&spec, &self.opts.identity, now, unchanged_for) {
            Decision::Follow { holder } => return Ok(Attempt::Following { holder }),
            Decision::Renew => renewed(&spec, &self.opts, now),
            Decision::TakeOver => acquired(&spec, &self.opts, now),
        };
        lease.spec = Some(next);
        // `lease` still carries the resourceVersion we read: a concurrent writer makes this fail.
        let written = self
            .api
            .replace(&self.opts.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| self.api_error("update", e))?;
        self.observe(&written.spec.unwrap_or_default());
        Ok(Attempt::Leading)
    }

    /// Frees the lease if we hold it. Returns whether there was anything to release.
    async fn release_once(&mut self) -> Result<bool> {
        let current = self
            .api
            .get_opt(&self.opts.name)
            .await
            .map_err(|e| self.api_error("get", e))?;
        let Some(mut lease) = current else {
            return Ok(false);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.opts.identity.as_str()) {
            return Ok(false);
        }
        lease.spec = Some(released(&spec, Timestamp::now()));
        self.api
            .replace(&self.opts.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| self.api_error("update", e))?;
        Ok(true)
    }

    /// Retries a failed release until `renew_deadline`: past that, the lease expires anyway.
    async fn release(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.opts.renew_deadline;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let result = match tokio::time::timeout(left, self.release_once()).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout {
                    lease: self.lease.clone(),
                    timeout: self.opts.renew_deadline,
                }),
            };
            match result {
                Ok(true) => {
                    tracing::info!("released the lease");
                    return Ok(());
                }
                Ok(false) => return Ok(()),
                Err(e) if Instant::now() + self.opts.retry_period < deadline => {
                    tracing::warn!(error = %e, "releasing the lease; retrying");
                    tokio::time::sleep(self.opts.retry_period).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The leadership flag. Dropping it (the task ended or was aborted) turns it false, so a
/// stopped candidate never reads as leader.
struct Leadership(watch::Sender<bool>);

impl Leadership {
    fn set(&self, leading: bool) {
        self.0
            .send_if_modified(|v| std::mem::replace(v, leading) != leading);
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// What the election loop remembers between attempts.
struct Campaign {
    /// When the last successful acquire or renewal was *sent*; `Some` while leading.
    renewed_at: Option<Instant>,
    failures: u32,
    retry: Backoff,
}

impl Campaign {
    /// Updates leadership after an attempt started at `started`; returns the wait before
    /// the next one.
    fn after(
        &mut self,
        attempt: Result<Attempt>,
        started: Instant,
        opts: &Options,
        leadership: &Leadership,
    ) -> Duration {
        match attempt {
            Ok(Attempt::Leading) => {
                if self.renewed_at.is_none() {
                    tracing::info!("became leader");
                }
                self.renewed_at = Some(started);
                self.failures = 0;
                self.retry.reset();
                leadership.set(true);
                opts.retry_period
            }
            Ok(Attempt::Following { holder }) => {
                if self.renewed_at.take().is_some() {
                    tracing::warn!(%holder, "lost the lease to another holder");
                } else if self.failures > 0 {
                    tracing::info!(%holder, "following");
                }
                leadership.set(false);
                self.failures = 0;
                self.retry.reset();
                jittered(opts.retry_period)
            }
            Err(e) => self.failed(e, opts, leadership),
        }
    }

    fn failed(&mut self, e: Error, opts: &Options, leadership: &Leadership) -> Duration {
        self.failures = self.failures.saturating_add(1);
        match self.renewed_at {
            Some(t) if Instant::now() >= t + opts.renew_deadline => {
                tracing::error!(error = %e, "could not renew the lease in time; stepping down");
                self.renewed_at = None;
                leadership.set(false);
                self.retry.next_delay()
            }
            Some(t) => {
                tracing::warn!(error = %e, "renewing the lease; retrying");
                // Keep trying at the renew pace until the deadline.
                opts.retry_period
                    .min((t + opts.renew_deadline).saturating_duration_since(Instant::now()))
            }
            None => {
                // A Conflict is the normal sign of losing a race: no need to shout.
                if matches!(e, Error::Conflict { .. }) {
                    tracing::debug!(error = %e, "acquiring the lease");
                } else {
                    tracing::warn!(error = %e, "acquiring the lease");
                }
                self.retry.next_delay()
            }
        }
    }
}

async fn run(
    mut c: Candidate,
    leadership: Leadership,
    mut release: oneshot::Receiver<()>,
) -> Result<()> {
    let opts = c.opts.clone();
    let mut campaign = Campaign {
        renewed_at: None,
        failures: 0,
        retry: retries(opts.retry_period),
    };
    let mut wait = Duration::ZERO;
    let mut first = true;
    loop {
        let started = tokio::select! {
            biased;
            r = &mut release => {
                if r.is_err() {
                    // The handle was dropped without release: stop as a crash would.
                    return Ok(());
                }
                break;
            }
            _ = tokio::time::sleep(wait) => Instant::now(),
        };
        // A leader's attempt must end by its deadline, so that stepping down is never late.
        let limit = match campaign.renewed_at {
            Some(t) => (t + opts.renew_deadline).saturating_duration_since(started),
            None => opts.renew_deadline,
        };
        let attempt = tokio::select! {
            biased;
            r = &mut release => {
                if r.is_err() {
                    return Ok(());
                }
                break;
            }
            r = tokio::time::timeout(limit, c.try_acquire_or_renew()) => r,
        };
        let attempt = attempt.unwrap_or_else(|_| {
            Err(Error::Timeout {
                lease: c.lease.clone(),
                timeout: limit,
            })
        });
        if first && let Ok(Attempt::Following { holder }) = &attempt {
            tracing::info!(%holder, "following");
        }
        first = false;
        wait = campaign.after(attempt, started, &opts, &leadership);
    }
    // Stop leading before the lease is freed, so that we and the next leader never overlap.
    leadership.set(false);
    c.release().await
}

/// The right to write while this replica leads (after kubert's `Claim`): work runs under
/// it and is stopped, at its next await, the moment leadership is lost. Leadership is lost
/// at the renew deadline, before the lease can pass to another replica, so a stopped pass
/// and the next leader never write at once.
/// Shutting down ends it too: a drain stops the syncs in flight the same way.
#[derive(Clone, Debug)]
pub struct Claim {
    leading: watch::Receiver<bool>,
    stopping: watch::Receiver<bool>,
}

impl Claim {
    /// A claim that follows `leading` (the receiver [`spawn`] returns) until `stopping`
    /// turns true.
    pub fn new(leading: watch::Receiver<bool>, stopping: watch::Receiver<bool>) -> Self {
        Claim { leading, stopping }
    }

    pub fn held(&self) -> bool {
        *self.leading.borrow() && !*self.stopping.borrow()
    }

    /// Runs `work` while the claim is held: `None` when it was not held, or was lost first
    /// (then `work` is dropped where it waits, between two requests or inside one).
    pub async fn run<F: std::future::Future>(&self, work: F) -> Option<F::Output> {
        let (mut leading, mut stopping) = (self.leading.clone(), self.stopping.clone());
        if !self.held() {
            return None;
        }
        tokio::select! {
            biased;
            _ = leading.wait_for(|l| !*l) => None,
            _ = stopping.wait_for(|s| *s) => None,
            out = work => Some(out),
        }
    }
}

/// Controls a candidate started by [`spawn`].
#[derive(Debug)]
pub struct Handle {
    release: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<()>>>,
}

impl Handle {
    /// Stops campaigning. When leading, the receiver turns `false` first, then the lease is
    /// released (`holderIdentity` empty, `leaseDurationSeconds` 1) so that another candidate
    /// takes over within one retry period. Returns once that is done.
    pub async fn release(mut self) -> Result<()> {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(Error::Task)?,
            None => Ok(()),
        }
    }

    /// Stops at once without releasing, as a crash would: others take over once the
    /// lease expires. The receiver turns `false`.
    pub fn abort(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Starts a candidate for the lease `opts.namespace/opts.name`. The receiver is `true`
/// exactly while this replica leads; act on it (start or stop syncing) whenever it
/// changes. Fails only on invalid options.
pub fn spawn(client: Client, opts: Options) -> Result<(watch::Receiver<bool>, Handle)> {
    opts.validate()?;
    let (tx, rx) = watch::channel(false);
    let (release_tx, release_rx) = oneshot::channel();
    let span = info_span!("leader", lease = %opts.lease_ref(), identity = %opts.identity);
    let candidate = Candidate::new(client, opts);
    let task = tokio::spawn(run(candidate, Leadership(tx), release_rx).instrument(span));
    Ok((
        rx,
        Handle {
            release: Some(release_tx),
            task: Some(task),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn held(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            acquire_time: Some(MicroTime(at(renewed - 100))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(4),
            ..Default::default()
        }
    }

    fn opts() -> Options {
        Options::new("agent", "gitops-agent-leader", "me")
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn a_free_or_released_lease_is_taken_at_once() {
        let free = LeaseSpec::default();
        assert_eq!(
            decide(&free, "me", at(NOW), Duration::ZERO),
            Decision::TakeOver
        );
        let released = released(&held("other", NOW, 15), at(NOW));
        assert_eq!(
            decide(&released, "me", at(NOW), Duration::ZERO),
            Decision::TakeOver
        );
    }

    #[test]
    fn our_own_lease_is_renewed_even_when_expired() {
        let ours = held("me", NOW - 600, 15);
        assert_eq!(decide(&ours, "me", at(NOW), LONG), Decision::Renew);
    }

    #[test]
    fn a_live_lease_held_by_another_is_followed() {
        let theirs = held("other", NOW - 5, 15);
        let follow = Decision::Follow {
            holder: "other".into(),
        };
        assert_eq!(decide(&theirs, "me", at(NOW), LONG), follow);
        // Exactly at renewTime + duration it is not yet expired.
        let edge = held("other", NOW - 15, 15);
        assert_eq!(decide(&edge, "me", at(NOW), LONG), follow);
    }

    #[test]
    fn an_expired_lease_is_taken_only_once_we_have_seen_it_unchanged_for_its_duration() {
        let stale = held("other", NOW - 16, 15);
        // Just started (or it just changed): wait a full duration on our own clock first.
        assert_eq!(
            decide(&stale, "me", at(NOW), Duration::from_secs(3)),
            Decision::Follow {
                holder: "other".into()
            }
        );
        assert_eq!(
            decide(&stale, "me", at(NOW), Duration::from_secs(15)),
            Decision::TakeOver
        );
        // A holder whose clock runs ahead is not robbed by our observation alone.
        let ahead = held("other", NOW + 30, 15);
        assert_eq!(
            decide(&ahead, "me", at(NOW), LONG),
            Decision::Follow {
                holder: "other".into()
            }
        );
    }

    #[tokio::test]
    async fn work_under_a_claim_stops_when_leadership_is_lost() {
        let (tx, rx) = watch::channel(true);
        let (stop_tx, stop_rx) = watch::channel(false);
        let claim = Claim::new(rx, stop_rx.clone());
        assert_eq!(claim.run(async { 1 }).await, Some(1));
        let (started_tx, started) = oneshot::channel();
        let work = tokio::spawn({
            let claim = claim.clone();
            async move {
                claim
                    .run(async move {
                        let _ = started_tx.send(());
                        std::future::pending::<()>().await
                    })
                    .await
            }
        });
        started.await.unwrap();
        tx.send(false).unwrap();
        assert_eq!(work.await.unwrap(), None, "stopped, not finished");
        assert!(!claim.held());
        assert_eq!(
            claim.run(async { 2 }).await,
            None,
            "nothing starts without it"
        );

        // Shutting down ends a claim as losing the lease does.
        let (_lead, leading) = watch::channel(true);
        let claim = Claim::new(leading, stop_rx);
        let work = tokio::spawn({
            let claim = claim.clone();
            async move { claim.run(std::future::pending::<()>()).await }
        });
        stop_tx.send(true).unwrap();
        assert_eq!(work.await.unwrap(), None);
        assert!(!claim.held());
    }

    #[test]
    fn records_follow_client_go() {
        let o = opts();
        let theirs = held("other", NOW - 20, 15);
        let taken = acquired(&theirs, &o, at(NOW));
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_duration_seconds, Some(15));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(NOW))));
        assert_eq!(taken.renew_time, Some(MicroTime(at(NOW))));
        assert_eq!(taken.lease_transitions, Some(5));

        let renewal = renewed(&taken, &o, at(NOW + 2));
        assert_eq!(renewal.acquire_time, Some(MicroTime(at(NOW))));
        assert_eq!(renewal.renew_time, Some(MicroTime(at(NOW + 2))));
        assert_eq!(renewal.lease_transitions, Some(5));
        assert_eq!(renewal.holder_identity.as_deref(), Some("me"));

        let freed = released(&renewal, at(NOW + 3));
        assert_eq!(freed.holder_identity.as_deref(), Some(""));
        assert_eq!(freed.lease_duration_seconds, Some(1));
        assert_eq!(freed.lease_transitions, Some(5));

        // The first lease ever counts no transition; taking back our own neither.
        let first = acquired(&LeaseSpec::default(), &o, at(NOW));
        assert_eq!(first.lease_transitions, Some(1));
        let again = acquired(&held("me", NOW - 20, 15), &o, at(NOW));
        assert_eq!(again.lease_transitions, Some(4));
    }

    #[test]
    fn options_default_to_client_go_timing_and_are_validated() {
        let o = opts();
        assert_eq!(
            (o.lease_duration, o.renew_deadline, o.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        assert!(o.validate().is_ok());
        let bad = Options {
            renew_deadline: Duration::from_secs(15),
            ..opts()
        };
        assert!(
            matches!(bad.validate(), Err(Error::InvalidOptions(m)) if m.contains("lease_duration"))
        );
        let bad = Options {
            identity: String::new(),
            ..opts()
        };
        assert!(bad.validate().is_err());
        let sub_second = Options {
            lease_duration: Duration::from_millis(2500),
            ..opts()
        };
        assert_eq!(sub_second.lease_duration_seconds(), 3);
    }

    #[test]
    fn backoff_grows_with_failures_and_stays_bounded() {
        let retry = Duration::from_secs(2);
        for failures in 1..40 {
            let cap = retry
                .saturating_mul(1 << (failures - 1).min(16))
                .min(MAX_BACKOFF);
            for _ in 0..50 {
                let d = backoff(retry, failures);
                assert!(d >= cap / 10 && d <= cap, "{failures}: {d:?} vs {cap:?}");
            }
        }
        for _ in 0..50 {
            let d = jittered(retry);
            assert!(d >= retry && d <= retry.mul_f64(1.2), "{d:?}");
        }
    }

    // --- the election loop against a scripted API server, in paused time ---

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Serve,
        /// Every request fails with 500.
        Fail,
        /// No request is ever answered.
        Hang,
    }

    #[derive(Default)]
    struct Server {
        lease: Option<Lease>,
        version: u64,
        mode: Option<Mode>,
        /// When the last successful write arrived.
        last_write: Option<Instant>,
    }

    fn status(code: u16, reason: &str) -> http::Response<kube::client::Body> {
        let body = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": reason, "reason": reason, "code": code,
        });
        http::Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap().into())
            .unwrap()
    }

    fn ok(code: u16, lease: &Lease) -> http::Response<kube::client::Body> {
        http::Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(lease).unwrap().into())
            .unwrap()
    }

    /// A Lease endpoint with resourceVersion checks, whose failure mode the test switches.
    fn scripted(server: std::sync::Arc<std::sync::Mutex<Server>>) -> Client {
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let server = server.clone();
            async move {
                let mode = server.lock().unwrap().mode.unwrap_or(Mode::Serve);
                match mode {
                    Mode::Hang => std::future::pending::<()>().await,
                    Mode::Fail => return Ok(status(500, "InternalError")),
                    Mode::Serve => {}
                }
                let method = req.method().clone();
                let body = req.into_body().collect_bytes().await.unwrap();
                let mut s = server.lock().unwrap();
                let resp = match method {
                    http::Method::GET => match &s.lease {
                        Some(l) => ok(200, l),
                        None => status(404, "NotFound"),
                    },
                    http::Method::POST | http::Method::PUT => {
                        let mut lease: Lease = serde_json::from_slice(&body).unwrap();
                        let current = s
                            .lease
                            .as_ref()
                            .and_then(|l| l.metadata.resource_version.clone());
                        let creating = method == http::Method::POST;
                        if creating && s.lease.is_some() {
                            status(409, "AlreadyExists")
                        } else if !creating && lease.metadata.resource_version != current {
                            status(409, "Conflict")
                        } else {
                            s.version += 1;
                            lease.metadata.resource_version = Some(s.version.to_string());
                            s.lease = Some(lease.clone());
                            s.last_write = Some(Instant::now());
                            ok(if creating { 201 } else { 200 }, &lease)
                        }
                    }
                    _ => status(405, "MethodNotAllowed"),
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        Client::new(service, "agent")
    }

    async fn steps_down_by_the_renew_deadline(mode: Mode) {
        let server = std::sync::Arc::new(std::sync::Mutex::new(Server::default()));
        let (mut leading, handle) = spawn(scripted(server.clone()), opts()).unwrap();
        leading.wait_for(|l| *l).await.unwrap();
        // Several renewals go through...
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(*leading.borrow());
        assert_eq!(
            server.lock().unwrap().version,
            4,
            "created, then renewed every 2 s"
        );
        // ...then the API server stops answering.
        let last_write = {
            let mut s = server.lock().unwrap();
            s.mode = Some(mode);
            s.last_write.unwrap()
        };
        leading.wait_for(|l| !*l).await.unwrap();
        let stepped_down = Instant::now() - last_write;
        // Not at the first failed renewal, but by the renew deadline: well before anyone
        // else could take the lease (lease_duration after they saw that write).
        assert!(
            stepped_down > DEFAULT_RENEW_DEADLINE - DEFAULT_RETRY_PERIOD
                && stepped_down <= DEFAULT_RENEW_DEADLINE,
            "stepped down {stepped_down:?} after the last renewal"
        );
        assert!(stepped_down < DEFAULT_LEASE_DURATION);
        drop(handle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewals_fail_steps_down_by_its_renew_deadline() {
        steps_down_by_the_renew_deadline(Mode::Fail).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewals_hang_steps_down_by_its_renew_deadline() {
        steps_down_by_the_renew_deadline(Mode::Hang).await;
    }

    #[tokio::test(start_paused = true)]
    async fn release_steps_down_first_then_frees_the_lease() {
        let server = std::sync::Arc::new(std::sync::Mutex::new(Server::default()));
        let (mut leading, handle) = spawn(scripted(server.clone()), opts()).unwrap();
        leading.wait_for(|l| *l).await.unwrap();
        handle.release().await.unwrap();
        assert!(!*leading.borrow());
        let spec = server.lock().unwrap().lease.clone().unwrap().spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some(""));
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(1));
    }
}
