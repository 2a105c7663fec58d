//! Leader election against the real control plane: two candidates for one Lease with
//! short timings. Exactly one leads; a crashed leader is replaced once its lease expires
//! (not before); a released lease is taken over within about a retry period; and the
//! two leadership flags, sampled throughout, are never true together.

#[path = "../harness/mod.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gitops_agent::cluster::{RequestCounter, counted_client};
use gitops_agent::controller::leader::{self, Handle, Options};
use harness::{TestNamespace, control_plane};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const LEASE: &str = "gitops-agent-leader";
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_millis(500);

fn options(namespace: &str, identity: &str) -> Options {
    Options {
        lease_duration: LEASE_DURATION,
        renew_deadline: Duration::from_secs(2),
        retry_period: RETRY,
        ..Options::new(namespace, LEASE, identity)
    }
}

struct Candidate {
    identity: &'static str,
    leading: watch::Receiver<bool>,
    handle: Handle,
    /// Every request this replica made.
    requests: RequestCounter,
}

async fn candidate(namespace: &str, identity: &'static str) -> Candidate {
    // Each replica has its own client, as separate pods would.
    let requests = RequestCounter::default();
    let client = counted_client(control_plane().config().await, &requests).unwrap();
    let (leading, handle) = leader::spawn(client, options(namespace, identity)).unwrap();
    Candidate {
        identity,
        leading,
        handle,
        requests,
    }
}

/// Waits until `c` has made `n` requests (looked at the lease `n` times, or tried to).
async fn wait_requests(c: &Candidate, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.requests.snapshot().total < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} made {} requests",
            c.identity,
            c.requests.snapshot().total
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Samples both flags every few milliseconds and on every change, counting the moments
/// both read `true`.
struct Overlap {
    seen: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Overlap {
    fn watch(a: &watch::Receiver<bool>, b: &watch::Receiver<bool>) -> Self {
        let (mut a, mut b) = (a.clone(), b.clone());
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        let task = tokio::spawn(async move {
            let (mut a_open, mut b_open) = (true, true);
            loop {
                if *a.borrow() && *b.borrow() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                tokio::select! {
                    r = a.changed(), if a_open => a_open = r.is_ok(),
                    r = b.changed(), if b_open => b_open = r.is_ok(),
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
        });
        Overlap { seen, task }
    }

    fn assert_never(&self) {
        assert_eq!(
            self.seen.load(Ordering::SeqCst),
            0,
            "both candidates read as leader at the same time"
        );
    }
}

impl Drop for Overlap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_leading(c: &mut Candidate, within: Duration) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(within, c.leading.wait_for(|l| *l))
        .await
        .unwrap_or_else(|_| panic!("{} not leading within {within:?}", c.identity))
        .unwrap_or_else(|_| panic!("{}: candidate stopped", c.identity));
    start.elapsed()
}

/// Waits until one of the two leads; returns (leader, follower).
async fn elect(a: Candidate, b: Candidate) -> (Candidate, Candidate) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = (*a.leading.borrow(), *b.leading.borrow());
        match state {
            (true, false) => return (a, b),
            (false, true) => return (b, a),
            (true, true) => panic!("both candidates lead"),
            (false, false) => {}
        }
        assert!(Instant::now() < deadline, "nobody leads after 30s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn lease(client: &kube::Client, namespace: &str) -> Lease {
    Api::<Lease>::namespaced(client.clone(), namespace)
        .get(LEASE)
        .await
        .unwrap_or_else(|e| panic!("Lease/{namespace}/{LEASE}: {e}"))
}

fn holder(l: &Lease) -> String {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn one_leads_and_a_crashed_leader_is_replaced_once_its_lease_expires() {
    harness::init_logging();
    let client = control_plane().client().await;
    let ns = TestNamespace::create(&client, "leader-crash").await;

    let a = candidate(&ns.name, "replica-a").await;
    let b = candidate(&ns.name, "replica-b").await;
    let overlap = Overlap::watch(&a.leading, &b.leading);
    let (leader, mut follower) = elect(a, b).await;

    // Leadership is stable: the same one leads through several renewals, the other follows.
    let first = lease(&client, &ns.name).await;
    // Through a lease duration's worth of renewals (one every retry period) and the
    // follower's looks at the lease meanwhile.
    let renewals = (LEASE_DURATION.as_millis() / RETRY.as_millis()) as u64;
    let (l0, f0) = (
        leader.requests.snapshot().total,
        follower.requests.snapshot().total,
    );
    wait_requests(&leader, l0 + renewals).await;
    wait_requests(&follower, f0 + 2).await;
    assert!(*leader.leading.borrow() && !*follower.leading.borrow());
    let later = lease(&client, &ns.name).await;
    assert_eq!(holder(&later), leader.identity);
    let (s1, s2) = (first.spec.unwrap(), later.spec.unwrap());
    assert_eq!(s2.lease_duration_seconds, Some(3));
    assert_eq!(
        s2.acquire_time, s1.acquire_time,
        "renewals keep acquireTime"
    );
    assert!(s2.renew_time > s1.renew_time, "the leader renews");
    let transitions = s2.lease_transitions.unwrap_or(0);

    // Crash: stop without releasing. The crashed replica stops reading as leader at once...
    leader.handle.abort();
    let mut crashed = leader.leading.clone();
    tokio::time::timeout(Duration::from_secs(2), crashed.wait_for(|l| !*l))
        .await
        .expect("an aborted candidate reads as not leading")
        .ok();
    // ...but the lease still names it, so the follower must wait for it to expire.
    let took = wait_leading(&mut follower, Duration::from_secs(15)).await;
    eprintln!(
        "{} took over {took:?} after {} crashed",
        follower.identity, leader.identity
    );
    // Not before the lease could have expired (slowness only makes it later, so there is
    // no upper bound but wait_leading's deadline).
    assert!(
        took >= LEASE_DURATION - RETRY * 2,
        "took over after {took:?}, before the {LEASE_DURATION:?} lease could have expired"
    );
    let after = lease(&client, &ns.name).await;
    assert_eq!(holder(&after), follower.identity);
    let taken = after.spec.unwrap();
    assert_eq!(taken.lease_transitions, Some(transitions + 1));

    // The new leader keeps it: the lease shows it renewing, twice, and it still leads.
    let mut renewals = 0;
    let mut last = taken.renew_time;
    let deadline = Instant::now() + Duration::from_secs(30);
    while renewals < 2 {
        let now = lease(&client, &ns.name).await.spec.unwrap();
        assert_eq!(now.holder_identity.as_deref(), Some(follower.identity));
        if now.renew_time > last {
            renewals += 1;
            last = now.renew_time;
        }
        assert!(Instant::now() < deadline, "the new leader does not renew");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(*follower.leading.borrow());
    overlap.assert_never();
    follower.handle.release().await.unwrap();
}

#[tokio::test]
async fn a_released_lease_is_taken_over_within_a_retry_period() {
    harness::init_logging();
    let client = control_plane().client().await;
    let ns = TestNamespace::create(&client, "leader-release").await;

    let a = candidate(&ns.name, "replica-a").await;
    let b = candidate(&ns.name, "replica-b").await;
    let overlap = Overlap::watch(&a.leading, &b.leading);
    let (leader, mut follower) = elect(a, b).await;

    let mut released = leader.leading.clone();
    let held = lease(&client, &ns.name).await.spec.unwrap();
    leader.handle.release().await.unwrap();
    assert!(!*released.borrow_and_update(), "released means not leading");

    // Expiry would take the lease duration; a release is taken at the next look. Told by
    // the lease's own times, not by how fast this test process runs: the follower acquired
    // it before the released lease would have expired.
    let took = wait_leading(&mut follower, Duration::from_secs(15)).await;
    eprintln!("{} took over {took:?} after the release", follower.identity);
    let taken = lease(&client, &ns.name).await.spec.unwrap();
    assert_eq!(taken.holder_identity.as_deref(), Some(follower.identity));
    let (renewed, acquired) = (held.renew_time.unwrap().0, taken.acquire_time.unwrap().0);
    let expiry = renewed + std::time::Duration::from_secs(LEASE_DURATION.as_secs());
    assert!(
        acquired < expiry,
        "acquired at {acquired}, not before the released lease's expiry at {expiry}"
    );

    // Releasing a lease held by someone else leaves it alone.
    let bystander = candidate(&ns.name, "replica-c").await;
    // It has looked at the held lease twice and not taken it.
    wait_requests(&bystander, 2).await;
    assert!(!*bystander.leading.borrow());
    bystander.handle.release().await.unwrap();
    assert_eq!(holder(&lease(&client, &ns.name).await), follower.identity);
    assert!(*follower.leading.borrow());

    overlap.assert_never();
    follower.handle.release().await.unwrap();
    assert_eq!(holder(&lease(&client, &ns.name).await), "");
}
