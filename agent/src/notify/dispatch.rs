//! Delivery: each sink has its own bounded queue and task, a rate limit and retries with
//! jittered backoff, so a slow or dead sink delays nothing but its own alerts.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info_span, warn};

use super::{Alert, Event, Sink};
use crate::http::backoff::{Backoff, Policy};
use crate::http::limit::{Limiter, Rate};

/// What became of one alert at one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    Delivered {
        attempts: u32,
    },
    /// Gave up: attempts exhausted or an error that retrying cannot fix.
    Failed {
        attempts: u32,
        error: String,
    },
    /// Pushed out of a full queue by a newer alert, or still queued at shutdown.
    Dropped,
}

/// Called for every outcome with the sink's `type/name`. Runs inline (for drops, in
/// [`Dispatcher::send`]'s caller), so it must be quick: count, don't do I/O.
pub type OnResult = Arc<dyn Fn(&str, DeliveryResult) + Send + Sync>;

/// Counts per sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub delivered: u64,
    pub failed: u64,
    pub dropped: u64,
}

/// Token bucket: `burst` requests at once, then `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub burst: u32,
    pub per_second: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            burst: 10,
            per_second: 1.0,
        }
    }
}

/// Jittered exponential backoff between attempts of one alert; each alert starts afresh.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The one backoff, shaped so that the wait after failed attempt `n` is half of
    /// `initial·2ⁿ⁻¹` (capped at `max`) plus a random share of the other half: retries of
    /// many agents spread out without ever becoming immediate.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(Policy {
            min: self.initial / 2,
            max: self.max / 2,
        })
    }

    /// The wait after failed attempt `n` (1-based), from a fresh [`RetryPolicy::backoff`].
    #[cfg(test)]
    pub fn delay(&self, attempt: u32) -> Duration {
        let mut b = self.backoff();
        (1..attempt).for_each(|_| {
            b.next_delay();
        });
        b.next_delay()
    }
}

impl RateLimit {
    fn rate(self) -> Rate {
        let per_second = if self.per_second > 0.0 {
            self.per_second
        } else {
            f64::MIN_POSITIVE
        };
        Rate {
            burst: self.burst,
            every: Duration::from_secs_f64((1.0 / per_second).min(3600.0)),
        }
    }
}

#[derive(Clone)]
pub struct DeliveryOptions {
    /// Alerts waiting per sink; when full the oldest is dropped.
    pub queue_capacity: usize,
    pub rate: RateLimit,
    pub retry: RetryPolicy,
    pub on_result: Option<OnResult>,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            // Bounds memory, not delivery: past the rate limit alerts go out in batches.
            queue_capacity: 10_000,
            rate: RateLimit::default(),
            retry: RetryPolicy::default(),
            on_result: None,
        }
    }
}

impl fmt::Debug for DeliveryOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryOptions")
            .field("queue_capacity", &self.queue_capacity)
            .field("rate", &self.rate)
            .field("retry", &self.retry)
            .field("on_result", &self.on_result.is_some())
            .finish()
    }
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// A sink's queue: a mutex held only to push or pop, so `send` never waits on delivery.
struct Queue {
    items: Mutex<VecDeque<Arc<Alert>>>,
    capacity: usize,
    closed: std::sync::atomic::AtomicBool,
    // One consumer: notify_one keeps a permit when nobody waits, so no wake-up is lost.
    ready: Notify,
}

impl Queue {
    /// Pushes, returning whether the oldest alert was dropped to make room.
    fn push(&self, alert: Arc<Alert>) -> bool {
        let dropped = {
            let mut q = self.items.lock().expect("queue lock");
            let dropped = q.len() >= self.capacity && q.pop_front().is_some();
            q.push_back(alert);
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    /// Up to `max` more alerts that are already waiting.
    fn take(&self, max: usize) -> Vec<Arc<Alert>> {
        let mut q = self.items.lock().expect("queue lock");
        let n = q.len().min(max);
        q.drain(..n).collect()
    }

    async fn next(&self) -> Option<Arc<Alert>> {
        loop {
            if let Some(a) = self.items.lock().expect("queue lock").pop_front() {
                return Some(a);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            self.ready.notified().await;
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    fn drain(&self) -> usize {
        let mut q = self.items.lock().expect("queue lock");
        let n = q.len();
        q.clear();
        n
    }
}

struct Worker {
    name: String,
    queue: Arc<Queue>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

/// Fans alerts out to sinks. [`send`](Self::send) only queues: each sink has its own
/// queue and task, so a slow or dead sink delays nothing but its own alerts.
pub struct Dispatcher {
    workers: Vec<Worker>,
    on_result: Option<OnResult>,
}

impl Dispatcher {
    /// Starts one task per sink. Must be called within a Tokio runtime.
    pub fn new(sinks: impl IntoIterator<Item = Arc<dyn Sink>>, options: DeliveryOptions) -> Self {
        let workers = sinks
            .into_iter()
            .map(|sink| {
                let name = sink.name().to_string();
                let queue = Arc::new(Queue {
                    items: Mutex::default(),
                    capacity: options.queue_capacity.max(1),
                    closed: Default::default(),
                    ready: Notify::new(),
                });
                let counters = Arc::new(Counters::default());
                let task = tokio::spawn(
                    run(sink, queue.clone(), counters.clone(), options.clone())
                        .instrument(info_span!("alert_sink", sink = %name)),
                );
                Worker {
                    name,
                    queue,
                    counters,
                    task,
                }
            })
            .collect();
        Dispatcher {
            workers,
            on_result: options.on_result,
        }
    }

    /// Queues the event for every sink and returns at once. Drift on a Secret is masked.
    pub fn send(&self, event: Event) {
        let alert = Arc::new(Alert {
            event: event.masked(),
            time: Timestamp::now(),
        });
        for w in &self.workers {
            if w.queue.push(alert.clone()) {
                w.counters.dropped.fetch_add(1, Ordering::Relaxed);
                warn!(sink = %w.name, "alert queue full: dropped the oldest alert");
                if let Some(cb) = &self.on_result {
                    cb(&w.name, DeliveryResult::Dropped);
                }
            }
        }
    }

    /// Counts per sink, by `type/name`.
    pub fn stats(&self) -> BTreeMap<String, SinkStats> {
        self.workers
            .iter()
            .map(|w| {
                let c = &w.counters;
                (
                    w.name.clone(),
                    SinkStats {
                        delivered: c.delivered.load(Ordering::Relaxed),
                        failed: c.failed.load(Ordering::Relaxed),
                        dropped: c.dropped.load(Ordering::Relaxed),
                    },
                )
            })
            .collect()
    }

    /// Stops taking alerts and gives the sinks `grace` to deliver what is queued; what is
    /// left after that is counted as dropped.
    pub async fn shutdown(mut self, grace: Duration) {
        for w in &self.workers {
            w.queue.close();
        }
        let all = futures::future::join_all(self.workers.iter_mut().map(|w| &mut w.task));
        let _ = tokio::time::timeout(grace, all).await;
        for w in &self.workers {
            w.task.abort();
            let left = w.queue.drain() as u64;
            if left > 0 {
                w.counters.dropped.fetch_add(left, Ordering::Relaxed);
                warn!(sink = %w.name, left, "alerts not delivered before shutdown");
                if let Some(cb) = &self.on_result {
                    for _ in 0..left {
                        cb(&w.name, DeliveryResult::Dropped);
                    }
                }
            }
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        // Tasks must not outlive their dispatcher (and keep sinks' connections open).
        for w in &self.workers {
            w.task.abort();
        }
    }
}

async fn run(
    sink: Arc<dyn Sink>,
    queue: Arc<Queue>,
    counters: Arc<Counters>,
    options: DeliveryOptions,
) {
    let bucket = Limiter::new(options.rate.rate());
    let name = sink.name().to_string();
    while let Some(first) = queue.next().await {
        let mut alerts = vec![first];
        if bucket.check().is_err() {
            // Over the rate: what waits goes out together once a token comes, in one
            // request where the sink can, rather than one by one or not at all.
            bucket.until_ready().await;
            alerts.extend(queue.take(MAX_BATCH - 1));
        }
        // Either way the first attempt's token is taken.
        let result = deliver(&*sink, &alerts, &options.retry, &bucket).await;
        let n = alerts.len() as u64;
        match &result {
            DeliveryResult::Delivered { .. } => {
                counters.delivered.fetch_add(n, Ordering::Relaxed);
            }
            DeliveryResult::Failed { attempts, error } => {
                counters.failed.fetch_add(n, Ordering::Relaxed);
                warn!(attempts, alerts = n, "alert not delivered: {error}");
            }
            DeliveryResult::Dropped => {}
        }
        if let Some(cb) = &options.on_result {
            for _ in 0..n {
                cb(&name, result.clone());
            }
        }
    }
}

/// The most alerts one batched delivery carries.
const MAX_BATCH: usize = 1000;

/// Alerts to one sink (one, or a batch), with retries. Every attempt takes a token (the
/// first was taken by the caller): the limit protects the receiver, which sees retries
/// as requests like any other.
async fn deliver(
    sink: &dyn Sink,
    alerts: &[Arc<Alert>],
    retry: &RetryPolicy,
    bucket: &Limiter,
) -> DeliveryResult {
    let mut attempts = 0;
    let mut backoff = retry.backoff();
    loop {
        attempts += 1;
        if attempts > 1 {
            bucket.until_ready().await;
        }
        let sent = match alerts {
            [one] => sink.deliver(one).await,
            many => sink.deliver_batch(many).await,
        };
        match sent {
            Ok(()) => return DeliveryResult::Delivered { attempts },
            Err(e) if e.is_retryable() && attempts < retry.max_attempts.max(1) => {
                let wait = e
                    .retry_after()
                    .unwrap_or_else(|| backoff.next_delay())
                    .min(retry.max);
                debug!(attempts, ?wait, "alert delivery failed, retrying: {e}");
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                return DeliveryResult::Failed {
                    attempts,
                    error: e.to_string(),
                };
            }
        }
    }
}
