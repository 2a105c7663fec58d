//! The one backoff, from backon: exponential from `min`, doubling up to `max`, each delay
//! jittered (the step plus a random share of it, so replicas and sinks retrying together
//! spread out), and back to `min` after a success. Used by the scheduler's retries of a
//! failed sync, the alert sinks' retries and the leader's lease retries.

use std::fmt;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Where a backoff starts and where it stops growing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub min: Duration,
    pub max: Duration,
}

/// A running backoff: [`Backoff::next`] gives the wait before the next attempt.
pub struct Backoff {
    policy: Policy,
    seed: Option<u64>,
    steps: ExponentialBackoff,
}

impl Backoff {
    pub fn new(policy: Policy) -> Self {
        Self::build(policy, None)
    }

    /// The same delays every time for the same seed (tests).
    pub fn with_seed(policy: Policy, seed: u64) -> Self {
        Self::build(policy, Some(seed))
    }

    fn build(policy: Policy, seed: Option<u64>) -> Self {
        let mut b = ExponentialBuilder::new()
            .with_min_delay(policy.min)
            .with_max_delay(policy.max.max(policy.min))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        if let Some(s) = seed {
            b = b.with_jitter_seed(s);
        }
        Backoff {
            policy,
            seed,
            steps: b.build(),
        }
    }

    /// The wait before the next attempt: in `[step, 2·step)`, where the step doubles from
    /// `min` at every call until it reaches `max`.
    pub fn next_delay(&mut self) -> Duration {
        self.steps.next().unwrap_or(self.policy.max)
    }

    /// Starts again from `min` (after a success).
    pub fn reset(&mut self) {
        *self = Self::build(self.policy, self.seed);
    }
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        min: Duration::from_secs(1),
        max: Duration::from_secs(8),
    };

    #[test]
    fn doubles_with_jitter_up_to_max_and_resets() {
        let mut b = Backoff::new(P);
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let step = Duration::from_secs(1 << i.min(3));
            assert!(*d >= step && *d < step * 2, "attempt {i}: {d:?}");
        }
        b.reset();
        let d = b.next_delay();
        assert!(d >= P.min && d < P.min * 2, "{d:?}");
    }

    #[test]
    fn jitter_spreads_delays() {
        let firsts: std::collections::HashSet<Duration> =
            (0..20).map(|_| Backoff::new(P).next_delay()).collect();
        assert!(firsts.len() > 1, "20 backoffs all waited {firsts:?}");
        let a: Vec<Duration> = {
            let mut b = Backoff::with_seed(P, 7);
            (0..4).map(|_| b.next_delay()).collect()
        };
        let mut b = Backoff::with_seed(P, 7);
        assert_eq!(a, (0..4).map(|_| b.next_delay()).collect::<Vec<_>>());
    }
}
