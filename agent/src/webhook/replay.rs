//! Per-process memory of the receiver: delivery ids seen recently (a replayed delivery is
//! a duplicate) and a token bucket per source (the rate limit bounds fetches).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::{RateLimit, SourceMatch};

/// Delivery ids seen recently, oldest first; bounded in time and in number.
pub(super) struct Deliveries {
    pub(super) seen: HashMap<String, Instant>,
    pub(super) order: VecDeque<(String, Instant)>,
    window: Duration,
    capacity: usize,
}

impl Deliveries {
    pub(super) fn new(window: Duration, capacity: usize) -> Self {
        Deliveries {
            seen: HashMap::new(),
            order: VecDeque::new(),
            window,
            capacity: capacity.max(1),
        }
    }

    /// True if `key` was seen within the window; otherwise records it.
    pub(super) fn seen(&mut self, key: &str, now: Instant) -> bool {
        while let Some((_, t)) = self.order.front() {
            if now.duration_since(*t) < self.window && self.order.len() < self.capacity {
                break;
            }
            self.pop_oldest();
        }
        if self.seen.contains_key(key) {
            return true;
        }
        self.seen.insert(key.to_owned(), now);
        self.order.push_back((key.to_owned(), now));
        false
    }

    pub(super) fn pop_oldest(&mut self) {
        if let Some((k, t)) = self.order.pop_front()
            && self.seen.get(&k) == Some(&t)
        {
            self.seen.remove(&k);
        }
    }

    /// Forgets `key`, so that a retry of a refused delivery is not a duplicate.
    pub(super) fn forget(&mut self, key: &str) {
        self.seen.remove(key);
    }
}

/// One token bucket per source (the rate limit bounds fetches, not requests).
pub(super) struct Limiter {
    limit: Option<RateLimit>,
    pub(super) buckets: HashMap<String, crate::http::limit::Limiter>,
}

impl Limiter {
    pub(super) fn new(limit: Option<RateLimit>) -> Self {
        Limiter {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for `source`, or says how long until one is available.
    pub(super) fn take(&mut self, source: &str) -> Result<(), Duration> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        self.buckets
            .entry(source.to_owned())
            .or_insert_with(|| {
                crate::http::limit::Limiter::new(crate::http::limit::Rate {
                    burst: limit.burst,
                    every: limit.every,
                })
            })
            .check()
    }

    /// Drops buckets of sources no longer configured, so reloads cannot grow the map.
    pub(super) fn forget_removed(&mut self, sources: &[SourceMatch]) {
        // Buckets are only made for configured names, so more buckets than sources
        // means some were removed.
        if self.buckets.len() > sources.len() {
            self.buckets
                .retain(|name, _| sources.iter().any(|s| &s.name == name));
        }
    }
}
