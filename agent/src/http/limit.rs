//! The one rate limiter, from governor: a token bucket (`burst` at once, then one more per
//! `every`), one per webhook source and one per alert sink. It runs on tokio's clock, so
//! paused-time tests see it refill as time advances.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// A token bucket's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed at once.
    pub burst: u32,
    /// One more request is allowed after each such period.
    pub every: Duration,
}

impl Rate {
    fn quota(self) -> Quota {
        let every = self.every.max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(self.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(every)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

/// tokio's clock, as governor reads time.
#[derive(Debug, Clone)]
struct TokioClock {
    start: tokio::time::Instant,
}

impl TokioClock {
    fn new() -> Self {
        TokioClock {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.start.elapsed())
    }
}

/// A token bucket.
pub struct Limiter {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>,
    clock: TokioClock,
}

impl Limiter {
    pub fn new(rate: Rate) -> Self {
        let clock = TokioClock::new();
        Limiter {
            limiter: RateLimiter::direct_with_clock(rate.quota(), clock.clone()),
            clock,
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Waits until a token is available, and takes it.
    pub async fn until_ready(&self) {
        while let Err(not_until) = self.limiter.check() {
            let wait = not_until.wait_time_from(self.clock.now());
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        burst: 2,
        every: Duration::from_secs(1),
    };

    #[tokio::test(start_paused = true)]
    async fn buckets_refill_on_tokio_time() {
        let l = Limiter::new(RATE);
        assert!(l.check().is_ok() && l.check().is_ok());
        let wait = l.check().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.check().is_ok());
        assert!(l.check().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_paced() {
        let l = Limiter::new(RATE);
        let start = tokio::time::Instant::now();
        for _ in 0..4 {
            l.until_ready().await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
}
