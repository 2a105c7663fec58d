//! When to fetch a source and when to run a sync, decided as plain data. The event loop
//! tells the scheduler what happened (a trigger, a fetched revision, a finished sync) and
//! what time it is; the scheduler answers with [`Action`]s. It owns no I/O and no clock,
//! so every rule is unit-tested in paused time:
//! - a source is fetched on its interval, or at once when triggered; triggers that arrive
//!   before the fetch starts are one fetch, and one fetch serves every sync of the source;
//! - a sync runs when its source has a revision it has not applied, when its retry is due
//!   after a failure (jittered backoff that resets on success), when its resync is due (on
//!   its own clock, with the revision it has), or when a trigger asked for it;
//! - a sync never runs twice at once: what comes due while it runs waits for its end.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::http::backoff::{Backoff, Policy};

/// Why a sync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its source has a revision it has not applied (or its spec changed).
    NewRevision,
    /// It failed and its backoff has passed.
    Retry,
    /// Its resync interval has passed.
    Resync,
    /// A webhook or a file change asked for it.
    Requested,
}

/// What the event loop should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Fetch { source: String },
    Run { sync: String, reason: Reason },
}

#[derive(Debug, Clone)]
pub struct Options {
    /// How often a sync whose revision has not changed is run again.
    pub resync: Duration,
    /// Retries of a failed sync.
    pub backoff: Policy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            resync: Duration::from_secs(600),
            backoff: Policy {
                min: Duration::from_secs(5),
                max: Duration::from_secs(300),
            },
        }
    }
}

/// A source as the scheduler knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    pub name: String,
    pub interval: Duration,
}

/// A sync as the scheduler knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSpec {
    pub name: String,
    pub source: String,
    pub suspended: bool,
    /// Changes whenever anything else of the sync's configuration does (its path, say):
    /// a changed sync runs again on the same revision.
    pub generation: u64,
}

#[derive(Debug)]
struct SourceState {
    interval: Duration,
    next_fetch: Instant,
    fetching: bool,
    /// A trigger came: the syncs of the next fetch run even on an unchanged revision.
    requested: bool,
    /// The revision of the last good fetch.
    revision: Option<String>,
}

#[derive(Debug)]
struct SyncState {
    spec: SyncSpec,
    running: bool,
    /// Something came due while it ran.
    again: bool,
    requested: bool,
    /// The revision it last ran with, and whether that run succeeded.
    last: Option<(String, bool)>,
    retry_at: Option<Instant>,
    next_resync: Option<Instant>,
    backoff: Backoff,
}

/// The scheduler's state. See the module header for the rules.
#[derive(Debug)]
pub struct Scheduler {
    opts: Options,
    sources: BTreeMap<String, SourceState>,
    syncs: BTreeMap<String, SyncState>,
}

impl Scheduler {
    pub fn new(opts: Options) -> Self {
        Scheduler {
            opts,
            sources: BTreeMap::new(),
            syncs: BTreeMap::new(),
        }
    }

    /// Takes a (new) configuration: removed sources and syncs are forgotten, a sync whose
    /// spec changed runs again even on the same revision, and every source is fetched now.
    pub fn configure(&mut self, sources: &[SourceSpec], syncs: &[SyncSpec], now: Instant) {
        self.sources
            .retain(|name, _| sources.iter().any(|s| &s.name == name));
        for s in sources {
            let st = self.sources.entry(s.name.clone()).or_insert(SourceState {
                interval: s.interval,
                next_fetch: now,
                fetching: false,
                requested: false,
                revision: None,
            });
            st.interval = s.interval;
            st.next_fetch = now;
        }
        self.syncs
            .retain(|name, _| syncs.iter().any(|s| &s.name == name));
        for s in syncs {
            let backoff = self.opts.backoff;
            let st = self
                .syncs
                .entry(s.name.clone())
                .or_insert_with(|| SyncState::new(s.clone(), backoff));
            if st.spec != *s {
                st.spec = s.clone();
                st.last = None;
            }
        }
    }

    /// A trigger for `source`: fetch it now, and run its syncs even if nothing changed.
    pub fn trigger(&mut self, source: &str, now: Instant) {
        if let Some(st) = self.sources.get_mut(source) {
            st.requested = true;
            st.next_fetch = st.next_fetch.min(now);
        }
    }

    /// Whether `sync` is configured and belongs to `source`.
    #[cfg(test)]
    pub fn source_of(&self, sync: &str) -> Option<&str> {
        self.syncs.get(sync).map(|s| s.spec.source.as_str())
    }

    /// The syncs of `source` that are not suspended.
    pub fn syncs_of(&self, source: &str) -> Vec<String> {
        self.syncs
            .values()
            .filter(|s| s.spec.source == source && !s.spec.suspended)
            .map(|s| s.spec.name.clone())
            .collect()
    }

    /// What is due at `now`: fetches of sources, and syncs due on their own clock.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        for (name, st) in &mut self.sources {
            if !st.fetching && st.next_fetch <= now {
                st.fetching = true;
                st.next_fetch = now + st.interval;
                out.push(Action::Fetch {
                    source: name.clone(),
                });
            }
        }
        let names: Vec<String> = self.syncs.keys().cloned().collect();
        for name in names {
            if let Some(reason) = self.clock_due(&name, now) {
                out.extend(self.start(&name, reason));
            }
        }
        out
    }

    /// A sync's own clock: its retry or its resync, with the revision it last ran with.
    fn clock_due(&self, sync: &str, now: Instant) -> Option<Reason> {
        let st = self.syncs.get(sync)?;
        let failed = match &st.last {
            _ if st.spec.suspended || st.running => return None,
            None => return None,
            Some((_, ok)) => !ok,
        };
        if failed {
            // A failing sync runs again when its backoff says, not on the resync clock.
            return st
                .retry_at
                .is_some_and(|t| t <= now)
                .then_some(Reason::Retry);
        }
        st.next_resync
            .is_some_and(|t| t <= now)
            .then_some(Reason::Resync)
    }

    /// A fetch of `source` ended; `revision` is `None` when it failed. Returns the syncs to
    /// run with the new revision.
    pub fn fetched(&mut self, source: &str, revision: Option<&str>, now: Instant) -> Vec<Action> {
        let Some(st) = self.sources.get_mut(source) else {
            return Vec::new();
        };
        st.fetching = false;
        let Some(revision) = revision else {
            // Failed: the request stays for the next fetch, at the source's interval.
            return Vec::new();
        };
        st.revision = Some(revision.to_string());
        let requested = std::mem::take(&mut st.requested);
        let mut out = Vec::new();
        for name in self.syncs_of(source) {
            let Some(sync) = self.syncs.get_mut(&name) else {
                continue;
            };
            sync.requested |= requested;
            if let Some(reason) = self.due_after_fetch(&name, now) {
                out.extend(self.start(&name, reason));
            }
        }
        out
    }

    /// Whether a sync should run with its source's current revision.
    fn due_after_fetch(&self, sync: &str, now: Instant) -> Option<Reason> {
        let st = self.syncs.get(sync)?;
        let revision = self.sources.get(&st.spec.source)?.revision.as_deref()?;
        let reason = match &st.last {
            _ if st.spec.suspended => return None,
            None => Reason::NewRevision,
            Some((last, _)) if last != revision => Reason::NewRevision,
            _ if st.requested => Reason::Requested,
            _ => return self.clock_due(sync, now),
        };
        Some(reason)
    }

    /// Marks a sync running, or (when it is) to be looked at again when it ends.
    fn start(&mut self, sync: &str, reason: Reason) -> Option<Action> {
        let st = self.syncs.get_mut(sync)?;
        if st.running {
            st.again = true;
            return None;
        }
        st.running = true;
        st.requested = false;
        Some(Action::Run {
            sync: sync.to_string(),
            reason,
        })
    }

    /// The revision `sync` should run with: its source's newest good one.
    #[cfg(test)]
    pub fn revision_for(&self, sync: &str) -> Option<&str> {
        let st = self.syncs.get(sync)?;
        self.sources.get(&st.spec.source)?.revision.as_deref()
    }

    /// A run of `sync` ended with `revision`: `Some(ok)` when it applied (and whether that
    /// succeeded), `None` when it only judged drift, which leaves its last result as it
    /// was. Returns the run that came due while it ran, if any.
    pub fn finished(
        &mut self,
        sync: &str,
        revision: &str,
        applied: Option<bool>,
        now: Instant,
    ) -> Vec<Action> {
        let resync = self.opts.resync;
        let Some(st) = self.syncs.get_mut(sync) else {
            return Vec::new();
        };
        st.running = false;
        st.next_resync = Some(now + resync);
        match applied {
            Some(true) => {
                st.backoff.reset();
                st.retry_at = None;
                st.last = Some((revision.to_string(), true));
            }
            Some(false) => {
                st.retry_at = Some(now + st.backoff.next_delay());
                st.last = Some((revision.to_string(), false));
            }
            None => {
                let ok = st.last.as_ref().is_none_or(|(_, ok)| *ok);
                st.last = Some((revision.to_string(), ok));
            }
        }
        if !std::mem::take(&mut st.again) {
            return Vec::new();
        }
        self.due_after_fetch(sync, now)
            .and_then(|reason| self.start(sync, reason))
            .into_iter()
            .collect()
    }

    /// An action that was not started (this replica stopped leading, or the sync's source
    /// has no revision to read): the fetch is due again now, and the sync waits for the
    /// next fetch of its source (its own clock would only hand it back again).
    pub fn not_started(&mut self, action: &Action, now: Instant) {
        match action {
            Action::Fetch { source } => {
                if let Some(st) = self.sources.get_mut(source) {
                    st.fetching = false;
                    st.next_fetch = now;
                }
            }
            Action::Run { sync, .. } => {
                if let Some(st) = self.syncs.get_mut(sync) {
                    st.running = false;
                    st.requested = true;
                    st.retry_at = None;
                    st.next_resync = None;
                }
            }
        }
    }

    /// Whether a sync is running now.
    #[cfg(test)]
    pub fn is_running(&self, sync: &str) -> bool {
        self.syncs.get(sync).is_some_and(|s| s.running)
    }

    /// When something next comes due (at most `max` from now).
    pub fn next_wake(&self, now: Instant, max: Duration) -> Instant {
        let sources = self
            .sources
            .values()
            .filter(|s| !s.fetching)
            .map(|s| s.next_fetch);
        let syncs = self
            .syncs
            .values()
            .filter(|s| !s.running && !s.spec.suspended)
            .filter_map(|s| match &s.last {
                None => None,
                Some((_, true)) => s.next_resync,
                Some((_, false)) => s.retry_at,
            });
        sources
            .chain(syncs)
            .min()
            .map_or(now + max, |t| t.min(now + max))
    }
}

impl SyncState {
    fn new(spec: SyncSpec, backoff: Policy) -> Self {
        SyncState {
            spec,
            running: false,
            again: false,
            requested: false,
            last: None,
            retry_at: None,
            next_resync: None,
            backoff: Backoff::new(backoff),
        }
    }
}

#[cfg(test)]
mod tests;
