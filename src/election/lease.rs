//! The Lease election: [`Candidate`] decides (pure, on a millisecond monotonic clock), [`run`]
//! reads and writes the Lease and drives a [`super::Gate`].

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::runtime::WatchStreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{Claim, GateControl};

/// client-go's timings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timings {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The Lease as read: what the decision needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// `None` when nobody holds it (never held, or released).
    pub holder: Option<String>,
    pub lease_duration: Duration,
    pub transitions: i32,
    pub acquire_time: Option<Timestamp>,
    /// Compared only to notice a renewal: never against our clock.
    pub renew_time: Option<Timestamp>,
}

impl Record {
    pub fn from_lease(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            lease_duration: Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            ),
            transitions: spec.lease_transitions.unwrap_or(0),
            acquire_time: spec.acquire_time.map(|t| t.0),
            renew_time: spec.renew_time.map(|t| t.0),
        }
    }

    fn spec(&self) -> LeaseSpec {
        LeaseSpec {
            holder_identity: self.holder.clone(),
            lease_duration_seconds: Some(
                i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            lease_transitions: Some(self.transitions),
            acquire_time: self.acquire_time.map(MicroTime),
            renew_time: self.renew_time.map(MicroTime),
            ..LeaseSpec::default()
        }
    }
}

/// What to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// No Lease exists: create it, held by me.
    Create,
    /// Take it over (nobody holds it, or the holder let it expire): epoch + 1.
    Acquire,
    /// I hold it: renew.
    Renew,
    /// Someone else holds it and it is fresh: look again later.
    Wait,
}

/// One candidate's view of the election. Times are milliseconds of a monotonic clock.
#[derive(Clone, Debug)]
pub struct Candidate {
    me: String,
    record: Option<Record>,
    /// When the record last changed, by our clock.
    observed_ms: u64,
    /// When our last successful write started, while we hold the Lease.
    renewed_ms: Option<u64>,
}

impl Candidate {
    pub fn new(me: impl Into<String>) -> Self {
        Candidate {
            me: me.into(),
            record: None,
            observed_ms: 0,
            renewed_ms: None,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn record(&self) -> Option<&Record> {
        self.record.as_ref()
    }

    /// Records the Lease as read at `now_ms` (`None`: it does not exist).
    pub fn observe(&mut self, record: Option<Record>, now_ms: u64) {
        if record != self.record {
            self.record = record;
            self.observed_ms = now_ms;
        }
        if !self.holds() {
            self.renewed_ms = None;
        }
    }

    fn holds(&self) -> bool {
        self.record
            .as_ref()
            .is_some_and(|r| r.holder.as_deref() == Some(self.me.as_str()))
    }

    /// The decision at `now_ms`.
    pub fn decide(&self, now_ms: u64) -> Step {
        match &self.record {
            None => Step::Create,
            Some(_) if self.holds() => Step::Renew,
            Some(r) if r.holder.is_none() => Step::Acquire,
            Some(r) => {
                let expires = self
                    .observed_ms
                    .saturating_add(r.lease_duration.as_millis() as u64);
                if now_ms >= expires {
                    Step::Acquire
                } else {
                    Step::Wait
                }
            }
        }
    }

    /// The record to write for `step` at wall time `now`.
    pub fn desired(&self, step: &Step, t: &Timings, now: Timestamp) -> Record {
        let old = self.record.as_ref();
        let held = self.holds();
        Record {
            holder: Some(self.me.clone()),
            lease_duration: t.lease_duration,
            transitions: match (step, old) {
                (Step::Renew, Some(r)) if held => r.transitions,
                (_, Some(r)) => r.transitions.saturating_add(1),
                (_, None) => 0,
            },
            acquire_time: match old {
                Some(r) if held => r.acquire_time,
                _ => Some(now),
            },
            renew_time: Some(now),
        }
    }

    /// Our write of `record`, started at `started_ms`, succeeded.
    pub fn wrote(&mut self, record: Record, started_ms: u64) {
        self.record = Some(record);
        self.observed_ms = started_ms;
        self.renewed_ms = Some(started_ms);
    }

    /// Stop leading now (a fenced write, or a release): the next renewal makes us lead again
    /// only if the Lease still names us.
    pub fn step_down(&mut self) {
        self.renewed_ms = None;
    }

    /// Whether the holder's renewal is due at `now_ms`: a retryPeriod after its last one (or
    /// it has none). NB: the Lease watch also wakes the holder on its own writes; renewing on
    /// each of those wakes would write the Lease in a loop.
    pub fn renewal_due(&self, now_ms: u64, t: &Timings) -> bool {
        self.renewed_ms
            .is_none_or(|r| now_ms >= r.saturating_add(t.retry_period.as_millis() as u64))
    }

    /// How long to wait before looking again at `now_ms`: until the holder's next renewal
    /// is due, else a retryPeriod.
    pub fn next_look(&self, now_ms: u64, t: &Timings) -> Duration {
        match self.renewed_ms {
            Some(r) if self.holds() => {
                let due = r.saturating_add(t.retry_period.as_millis() as u64);
                Duration::from_millis(due.saturating_sub(now_ms)).min(t.retry_period)
            }
            _ => t.retry_period,
        }
    }

    /// Until when (ms) we may act as leader: our last renewal plus the renew deadline.
    pub fn leading_until(&self, t: &Timings) -> Option<u64> {
        if !self.holds() {
            return None;
        }
        self.renewed_ms
            .map(|r| r.saturating_add(t.renew_deadline.as_millis() as u64))
    }
}

/// Where the elector works.
pub struct Elector {
    pub api: Api<Lease>,
    /// The Lease's name (the policy's).
    pub name: String,
    /// This replica's holder identity: pod name plus a per-process suffix.
    pub identity: String,
    pub timings: Timings,
    /// The policy, so the Lease goes when it goes.
    pub owner: Option<OwnerReference>,
}

/// The label on every Lease the operator writes: what [`LeaseWatch`] selects.
pub const LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "kong-fallback-operator");

/// A Lease's change as the watch saw it: its resourceVersion (`None`: it was deleted).
pub type Wake = Option<String>;

/// Per Lease (namespace, name), where its elector takes wakes.
type Wakers = HashMap<(String, String), mpsc::Sender<Wake>>;

/// One watch of every Lease the operator writes (by [`LABEL`]), waking the elector of each
/// changed Lease, so a waiting candidate takes a released Lease at once.
///
/// NB: one watch for all policies, not one per Lease: an operator with 200 policies held 200
/// watch connections open to the apiserver and listed 200 times when it started (bench P4),
/// and those watches had no backoff: with the apiserver gone each retried at once, and one
/// policy's kept the operator above a CPU core for the outage (fault R4). A Lease written
/// before the label existed wakes nobody until its holder renews it (with the label); until
/// then its followers look every retryPeriod, as client-go's do.
pub struct LeaseWatch {
    electors: Arc<Mutex<Wakers>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseWatch {
    /// Watches the labelled Leases of `api` (one namespace, or all).
    pub fn start(api: Api<Lease>) -> Self {
        let electors: Arc<Mutex<Wakers>> = Arc::default();
        let cfg = watcher::Config::default().labels(&format!("{}={}", LABEL.0, LABEL.1));
        let stream = watcher::watcher(api, cfg).backoff(crate::watch::backoff());
        let task = tokio::spawn({
            let electors = electors.clone();
            async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    let (lease, wake) = match event {
                        Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => {
                            let rv = l.resource_version();
                            (l, rv)
                        }
                        Ok(watcher::Event::Delete(l)) => (l, None),
                        Ok(watcher::Event::Init | watcher::Event::InitDone) | Err(_) => continue,
                    };
                    let key = (lease.namespace().unwrap_or_default(), lease.name_any());
                    let elector = lock(&electors).get(&key).cloned();
                    if let Some(tx) = elector {
                        // NB: a full channel already holds a wake; the elector reads anew.
                        let _ = tx.try_send(wake);
                    }
                }
            }
        });
        LeaseWatch { electors, task }
    }

    /// The wakes of Lease `ns`/`name` (replacing an earlier elector's).
    pub fn register(&self, ns: &str, name: &str) -> mpsc::Receiver<Wake> {
        let (tx, rx) = mpsc::channel(1);
        lock(&self.electors).insert((ns.to_owned(), name.to_owned()), tx);
        rx
    }

    /// No more wakes for Lease `ns`/`name`.
    pub fn forget(&self, ns: &str, name: &str) {
        lock(&self.electors).remove(&(ns.to_owned(), name.to_owned()));
    }
}

impl Drop for LeaseWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the election until `shutdown`, then releases the Lease if held (after the writes in
/// flight end). Publishes every change of the claim to the gate; `changed` is told too.
/// `wakes` (from [`LeaseWatch::register`]) wakes a waiting candidate when the Lease changes.
pub async fn run(
    e: Elector,
    mut control: GateControl,
    changed: impl Fn() + Send + 'static,
    mut wakes: mpsc::Receiver<Wake>,
    mut shutdown: watch::Receiver<bool>,
) {
    let epoch = Instant::now();
    let ms = move |i: Instant| i.duration_since(epoch).as_millis() as u64;
    let mut c = Candidate::new(e.identity.clone());
    // The Lease object's UID, as last read: the epoch counts within it.
    let mut lease_uid: Option<String> = None;
    // The resourceVersion our last write made: its own watch event is not news.
    let mut written: Option<String> = None;
    // Whether the Lease could not be read last time: said once, not at every retry.
    let mut unreadable = false;
    // The Lease's resourceVersion while we hold it and nothing since said it changed.
    let mut current: Option<String> = None;
    loop {
        let started = Instant::now();
        let mut failed = false;
        // NB: the holder renews without a GET first while the Lease is as it last saw it:
        // the write is the same compare-and-swap on the resourceVersion, and the Lease
        // watch says when another wrote it. client-go's loop reads before each write; with
        // a Lease per policy those reads were half of the operator's steady requests (bench
        // P4). A renewal that loses (another wrote meanwhile, not yet seen) reads at once.
        let trusted = current
            .take()
            .filter(|_| c.decide(ms(started)) == Step::Renew);
        let optimistic = trusted.is_some();
        let observed = match trusted {
            Some(rv) => Ok((Some(rv), ms(started))),
            None => match observe_read(&mut c, e.api.get_opt(&e.name), || ms(Instant::now())).await
            {
                Ok((lease, read)) => {
                    if std::mem::take(&mut unreadable) {
                        info!(lease = %e.name, "read the Lease again");
                    }
                    lease_uid = lease.as_ref().and_then(|l| l.uid());
                    Ok((lease.as_ref().and_then(|l| l.resource_version()), read))
                }
                Err(err) => Err(err),
            },
        };
        match observed {
            Ok((resource_version, read)) => {
                let step = c.decide(read);
                // NB: a wake (another's change, or our own write coming back) reads the
                // Lease; the holder renews only when due.
                let due = step != Step::Renew || c.renewal_due(read, &e.timings);
                if step != Step::Wait && due {
                    let desired = c.desired(&step, &e.timings, Timestamp::now());
                    match write(&e, &step, &desired, resource_version).await {
                        Ok(lease) => {
                            // NB: the UID too: a holder that created the Lease and renews
                            // without reading learns it nowhere else (fencing counts the
                            // epoch within it).
                            lease_uid = lease.uid();
                            written = lease.resource_version();
                            current = written.clone();
                            if step != Step::Renew {
                                info!(lease = %e.name, holder = %e.identity, epoch = desired.transitions, "acquired the Lease");
                            }
                            c.wrote(desired, ms(started));
                        }
                        Err(err) if optimistic => {
                            debug!(lease = %e.name, error = %err, "Lease renewal lost; reading the Lease");
                            continue;
                        }
                        Err(err) => {
                            failed = true;
                            debug!(lease = %e.name, error = %err, ?step, "Lease write lost")
                        }
                    }
                } else if step == Step::Renew {
                    current = resource_version;
                }
            }
            Err(err) => {
                failed = true;
                if std::mem::replace(&mut unreadable, true) {
                    debug!(lease = %e.name, error = %err, "cannot read the Lease");
                } else {
                    warn!(lease = %e.name, error = %err, "cannot read the Lease; retrying every retryPeriod");
                }
            }
        }
        publish(
            &control,
            &c,
            lease_uid.as_deref(),
            &e.timings,
            epoch,
            &changed,
        );

        // The holder renews every retryPeriod; a follower looks again as often (a watch
        // event wakes it earlier, so a release is taken over at once).
        // NB: after a failed read or write, a retryPeriod, as client-go's loop: a holder
        // whose renewal is overdue would otherwise look again at once, and with the apiserver
        // gone (a refused connect fails at once) that was a loop on a CPU core (fault R4).
        let wait = if failed {
            e.timings.retry_period
        } else {
            c.next_look(ms(Instant::now()), &e.timings)
        };
        let look = tokio::time::Instant::now() + wait;
        let stop = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(look) => break false,
                Some(wake) = wakes.recv() => {
                    // NB: our own write coming back is not news: read again when due.
                    if wake.is_none() || wake != written {
                        current = None;
                        break false;
                    }
                }
                Some(fenced) = control.step_down.recv() => {
                    warn!(lease = %e.name, epoch = fenced, "a newer leader wrote the store: stepping down and releasing the Lease");
                    // NB: release, not just stop renewing: holding the Lease at an epoch the
                    // store has passed would keep this policy without a writer, with a
                    // status that says it leads. The next acquisition (any replica's)
                    // counts a new, higher epoch.
                    release(&e, &mut c, &mut control, &changed).await;
                    current = None;
                    publish(&control, &c, lease_uid.as_deref(), &e.timings, epoch, &changed);
                    tokio::time::sleep(e.timings.retry_period).await;
                    break false;
                }
                _ = shutdown.changed() => break true,
            }
        };
        if stop {
            break;
        }
    }
    release(&e, &mut c, &mut control, &changed).await;
}

/// Awaits `read` and records what it returned in `c`, timed by `now_ms` when the read
/// *returns*; gives the Lease and that time.
///
/// NB: as client-go records it (`observedTime` is set after the GET). Timed from before a
/// slow read, a follower would count the holder's leaseDuration from before the renewal it
/// is reading, and could take over while the holder still leads. Our own renewals stay
/// timed from before the write (the safe side).
async fn observe_read<E>(
    c: &mut Candidate,
    read: impl std::future::Future<Output = Result<Option<Lease>, E>>,
    now_ms: impl Fn() -> u64,
) -> Result<(Option<Lease>, u64), E> {
    let lease = read.await?;
    let at = now_ms();
    c.observe(lease.as_ref().map(Record::from_lease), at);
    Ok((lease, at))
}

async fn release(e: &Elector, c: &mut Candidate, control: &mut GateControl, changed: &impl Fn()) {
    let held = c.leading_until(&e.timings).is_some();
    c.step_down();
    let mut claim = control.claims.borrow().clone();
    claim.leading_until = None;
    let _ = control.claims.send(claim);
    changed();
    if !held {
        return;
    }
    // Wait for the writes in flight (bounded: a hung write must not block shutdown).
    let _inflight = tokio::time::timeout(
        Duration::from_secs(5),
        control.inflight.clone().write_owned(),
    )
    .await;
    // Re-read: release only what we still hold, conditioned on what we read.
    let Ok(Some(lease)) = e.api.get_opt(&e.name).await else {
        return;
    };
    let record = Record::from_lease(&lease);
    if record.holder.as_deref() != Some(c.me()) {
        return;
    }
    let released = Record {
        holder: None,
        lease_duration: Duration::from_secs(1),
        renew_time: Some(Timestamp::now()),
        ..record
    };
    match write(e, &Step::Renew, &released, lease.resource_version()).await {
        Ok(_) => info!(lease = %e.name, "released the Lease"),
        Err(err) => {
            warn!(lease = %e.name, error = %err, "cannot release the Lease; it expires by itself")
        }
    }
}

fn publish(
    control: &GateControl,
    c: &Candidate,
    lease_uid: Option<&str>,
    t: &Timings,
    epoch: Instant,
    changed: &impl Fn(),
) {
    let r = c.record();
    let claim = Claim {
        holder: r.and_then(|r| r.holder.clone()),
        epoch: r.map_or(0, |r| r.transitions),
        since: r.and_then(|r| r.acquire_time),
        leading_until: c
            .leading_until(t)
            .map(|until| epoch + Duration::from_millis(until)),
        lease_uid: lease_uid.map(str::to_owned),
    };
    let before = control.claims.borrow().clone();
    // NB: a renewal moves leading_until only; that is not news for status.
    let news = before.holder != claim.holder
        || before.epoch != claim.epoch
        || before.leading_until.is_some() != claim.leading_until.is_some();
    let _ = control.claims.send(claim);
    if news {
        changed();
    }
}

/// Writes `record`; gives the Lease as written.
async fn write(
    e: &Elector,
    step: &Step,
    record: &Record,
    resource_version: Option<String>,
) -> Result<Lease, kube::Error> {
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(e.name.clone()),
            labels: Some([(LABEL.0.to_owned(), LABEL.1.to_owned())].into()),
            owner_references: e.owner.clone().map(|o| vec![o]),
            resource_version: if *step == Step::Create {
                None
            } else {
                resource_version
            },
            ..ObjectMeta::default()
        },
        spec: Some(record.spec()),
    };
    let pp = PostParams {
        field_manager: Some(crate::api::FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let written = if *step == Step::Create {
        e.api.create(&pp, &lease).await?
    } else {
        // NB: the resourceVersion makes this a compare-and-swap: a concurrent writer gets 409.
        e.api.replace(&e.name, &pp, &lease).await?
    };
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timings {
        Timings::default()
    }

    fn held_by(holder: &str, transitions: i32) -> Record {
        Record {
            holder: Some(holder.into()),
            lease_duration: Duration::from_secs(15),
            transitions,
            acquire_time: None,
            renew_time: Some(Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn no_lease_means_create_at_epoch_zero() {
        let mut c = Candidate::new("a");
        c.observe(None, 0);
        assert_eq!(c.decide(0), Step::Create);
        let r = c.desired(&Step::Create, &t(), Timestamp::UNIX_EPOCH);
        assert_eq!((r.holder.as_deref(), r.transitions), (Some("a"), 0));
        assert_eq!(
            c.leading_until(&t()),
            None,
            "not leading before the write succeeds"
        );
        c.wrote(r, 100);
        assert_eq!(c.leading_until(&t()), Some(10_100));
    }

    #[test]
    fn a_fresh_lease_held_by_another_is_left_alone_until_it_expires_by_our_clock() {
        let mut c = Candidate::new("a");
        c.observe(Some(held_by("b", 4)), 1_000);
        assert_eq!(c.decide(1_000), Step::Wait);
        assert_eq!(c.decide(15_999), Step::Wait);
        // The same record read again does not restart the clock...
        c.observe(Some(held_by("b", 4)), 10_000);
        assert_eq!(c.decide(16_000), Step::Acquire);
        // ...a renewal does.
        let mut renewed = held_by("b", 4);
        renewed.renew_time = Some(Timestamp::UNIX_EPOCH + Duration::from_secs(2));
        c.observe(Some(renewed), 16_000);
        assert_eq!(c.decide(16_001), Step::Wait);
        let r = c.desired(&Step::Acquire, &t(), Timestamp::UNIX_EPOCH);
        assert_eq!(r.transitions, 5, "taking over is a new epoch");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_read_counts_the_holders_lease_from_when_it_returned() {
        // A renewal read through a slow apiserver (3 s) must count the holder's 15 s from
        // when the read returned: timed from when it started, a follower would take over
        // 3 s early, while the holder may still lead.
        let zero = tokio::time::Instant::now();
        let clock = || zero.elapsed().as_millis() as u64;
        let lease = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(held_by("b", 4).spec()),
        };
        let slow = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, ()>(Some(lease))
        };
        let mut c = Candidate::new("a");
        let (_, read) = observe_read(&mut c, slow, clock).await.unwrap();
        assert_eq!(read, 3_000, "stamped when the read returned");
        assert_eq!(c.decide(17_999), Step::Wait, "15 s from the read's return");
        assert_eq!(c.decide(18_000), Step::Acquire);
    }

    #[test]
    fn clock_skew_does_not_matter_only_local_observation() {
        // The holder's renewTime is an hour behind our wall clock: still fresh, because it
        // just changed by our clock.
        let mut c = Candidate::new("a");
        let mut r = held_by("b", 1);
        r.renew_time = Some(Timestamp::now() - Duration::from_secs(3600));
        c.observe(Some(r), 50_000);
        assert_eq!(c.decide(50_001), Step::Wait);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let mut c = Candidate::new("a");
        let mut r = held_by("b", 7);
        r.holder = None;
        c.observe(Some(r), 0);
        assert_eq!(c.decide(0), Step::Acquire);
        assert_eq!(
            c.desired(&Step::Acquire, &t(), Timestamp::now())
                .transitions,
            8
        );
    }

    #[test]
    fn the_holder_renews_and_leads_only_until_its_renew_deadline() {
        let mut c = Candidate::new("a");
        c.observe(Some(held_by("a", 2)), 0);
        assert_eq!(c.decide(0), Step::Renew);
        assert_eq!(
            c.leading_until(&t()),
            None,
            "read, not yet renewed by this process"
        );
        let r = c.desired(&Step::Renew, &t(), Timestamp::now());
        assert_eq!(r.transitions, 2, "renewing keeps the epoch");
        c.wrote(r, 1_000);
        assert_eq!(c.leading_until(&t()), Some(11_000));
        // Renewals fail from here on (API down): the deadline stays where it was.
        c.observe(c.record().cloned(), 12_000);
        assert_eq!(c.leading_until(&t()), Some(11_000));
    }

    #[test]
    fn the_holder_renews_once_per_retry_period_however_often_it_is_woken() {
        let mut c = Candidate::new("a");
        c.observe(Some(held_by("a", 2)), 0);
        assert!(c.renewal_due(0, &t()), "never renewed by this process");
        c.wrote(c.desired(&Step::Renew, &t(), Timestamp::now()), 1_000);
        // Our own write comes back through the watch at once: read, not renewed.
        c.observe(c.record().cloned(), 1_050);
        assert_eq!(c.decide(1_050), Step::Renew);
        assert!(!c.renewal_due(1_050, &t()));
        assert_eq!(c.next_look(1_050, &t()), Duration::from_millis(1_950));
        assert!(c.renewal_due(3_000, &t()));
        assert_eq!(c.next_look(3_500, &t()), Duration::ZERO);
        // A follower looks every retryPeriod.
        let mut f = Candidate::new("b");
        f.observe(Some(held_by("a", 2)), 0);
        assert_eq!(f.next_look(0, &t()), t().retry_period);
    }

    #[test]
    fn losing_the_lease_or_stepping_down_stops_leading() {
        let mut c = Candidate::new("a");
        c.wrote(held_by("a", 2), 0);
        assert!(c.leading_until(&t()).is_some());
        c.observe(Some(held_by("b", 3)), 1_000);
        assert_eq!(c.leading_until(&t()), None);

        let mut c = Candidate::new("a");
        c.wrote(held_by("a", 2), 0);
        c.step_down();
        assert_eq!(c.leading_until(&t()), None);
        assert_eq!(c.decide(10), Step::Renew, "the Lease still names us");
    }
}
