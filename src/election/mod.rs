//! Exactly one exporter per policy: a Kubernetes Lease elects it, a [`Gate`] keeps every
//! write behind the claim, conditional writes fence a stale leader, and a mirror tells
//! native Kong backup nodes who won.
//!
//! # Design
//!
//! - **The Lease** ([`lease`]): one `coordination.k8s.io/v1` Lease per policy, in its
//!   namespace and named after it, owned by it (garbage-collected with it). client-go's
//!   algorithm and defaults (15 s / 10 s / 2 s): a candidate takes over a Lease that has not
//!   changed for `leaseDuration` *by its own clock* (so clock skew between replicas does not
//!   matter, only clock rate), the holder renews every `retryPeriod`, and every write is an
//!   update conditioned on the `resourceVersion` read, so two candidates cannot both win.
//!   `leaseTransitions`, incremented on every change of holder, is the **epoch**. We write
//!   the small loop ourselves on kube's API rather than use a crate: none of the maintained
//!   ones exposes the epoch for fencing together with a renew deadline the writers can check,
//!   and the decision is a pure function ([`lease::Candidate`]) with unit tests.
//! - **The gate** ([`Gate`]): writers ask for a [`Permit`] before each write. One is granted
//!   only while this replica holds the Lease *and* its last successful renewal is younger
//!   than `renewDeadline`: a leader that cannot renew stops writing `leaseDuration -
//!   renewDeadline` (5 s by default) before anyone else can take over. A graceful shutdown
//!   closes the gate, waits for the writes in flight, then releases the Lease, so the next
//!   replica takes over at once instead of after `leaseDuration`.
//! - **Fencing**: the gate cannot stop a process that was paused *after* it got its permit.
//!   So `config.json` is written conditionally (S3 `If-Match` on the ETag last seen or
//!   `If-None-Match: *`, GCS `ifGenerationMatch`) and carries the epoch in its metadata. A
//!   stale leader's write fails with a precondition error; the writer re-reads the object, and
//!   if a newer epoch wrote it, steps down ([`Gate::step_down`]) instead of retrying.
//! - **The mirror** ([`mirror`]): native Kong 3.6+ backup nodes run their own election in
//!   the store's `election/` prefix. The leader registers there in Kong's format with a
//!   registration that wins Kong's algorithm against any native node, refreshes it every
//!   [`mirror::REFRESH`], and removes every other registration, so native nodes sharing the
//!   prefix see the operator's leader as theirs and stop exporting. The module says how.

pub mod lease;
pub mod mirror;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedRwLockReadGuard, RwLock, mpsc, watch};

/// What the elector last knew of the Lease, for writers and status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claim {
    /// The holder of the Lease as last read (any replica), if any.
    pub holder: Option<String>,
    /// `leaseTransitions` of the Lease as last read: the epoch.
    pub epoch: i32,
    /// When the current holder acquired the Lease, as the Lease says.
    pub since: Option<k8s_openapi::jiff::Timestamp>,
    /// Set while this replica leads: it may write until then (its last renewal plus the
    /// renew deadline, on this process's monotonic clock).
    pub leading_until: Option<Instant>,
    /// The Lease object's UID: epochs compare only within one Lease (a Lease deleted and
    /// created again starts over at 0).
    pub lease_uid: Option<String>,
}

impl Claim {
    pub fn leading(&self, now: Instant) -> bool {
        self.leading_until.is_some_and(|t| now < t)
    }
}

/// The right to write, for one write: holds off a graceful release until dropped.
pub struct Permit {
    pub epoch: i32,
    /// The UID of the Lease the epoch counts in.
    pub lease_uid: Option<String>,
    _inflight: OwnedRwLockReadGuard<()>,
}

/// The writers' side of an election.
#[derive(Clone)]
pub struct Gate {
    claims: watch::Receiver<Claim>,
    inflight: Arc<RwLock<()>>,
    step_down: mpsc::UnboundedSender<i32>,
}

/// The elector's side of a [`Gate`].
pub struct GateControl {
    pub claims: watch::Sender<Claim>,
    pub inflight: Arc<RwLock<()>>,
    pub step_down: mpsc::UnboundedReceiver<i32>,
}

impl Gate {
    /// A gate and the control its elector drives.
    pub fn new() -> (Gate, GateControl) {
        let (claims, rx) = watch::channel(Claim::default());
        let inflight = Arc::new(RwLock::new(()));
        let (step_tx, step_rx) = mpsc::unbounded_channel();
        (
            Gate {
                claims: rx,
                inflight: inflight.clone(),
                step_down: step_tx,
            },
            GateControl {
                claims,
                inflight,
                step_down: step_rx,
            },
        )
    }

    /// A gate that always grants, at epoch 0: for a single writer without an election
    /// (tests, tools). Keeps its control alive for as long as the gate lives.
    pub fn always() -> Gate {
        let (gate, control) = Gate::new();
        let claim = Claim {
            holder: Some("always".into()),
            epoch: 0,
            since: None,
            leading_until: Some(
                Instant::now() + std::time::Duration::from_secs(100 * 365 * 86_400),
            ),
            lease_uid: None,
        };
        // NB: the receiver keeps the last value after the sender is gone.
        let _ = control.claims.send(claim);
        gate
    }

    /// Whether both are the same election's gate.
    pub fn same(&self, other: &Gate) -> bool {
        Arc::ptr_eq(&self.inflight, &other.inflight)
    }

    /// The current claim.
    pub fn claim(&self) -> Claim {
        self.claims.borrow().clone()
    }

    /// A permit if this replica leads now.
    pub fn permit(&self) -> Option<Permit> {
        let claim = self.claims.borrow().clone();
        if !claim.leading(Instant::now()) {
            return None;
        }
        let guard = self.inflight.clone().try_read_owned().ok()?;
        Some(Permit {
            epoch: claim.epoch,
            lease_uid: claim.lease_uid,
            _inflight: guard,
        })
    }

    /// Waits until the claim changes (or the elector is gone, then never returns).
    pub async fn changed(&mut self) {
        if self.claims.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once this replica no longer leads: its claim's `leading_until` passed
    /// without a renewal extending it. A write in flight is abandoned then, so that it ends
    /// `leaseDuration - renewDeadline` before another replica can take over.
    pub async fn lapsed(&self) {
        let mut claims = self.claims.clone();
        loop {
            let until = claims.borrow_and_update().leading_until;
            let Some(until) = until.filter(|u| *u > Instant::now()) else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                changed = claims.changed() => {
                    if changed.is_err() {
                        // The elector is gone: nothing extends the claim any more.
                        tokio::time::sleep_until(until.into()).await;
                        return;
                    }
                }
            }
        }
    }

    /// Tells the elector that a write found a newer epoch in the store: stop leading.
    pub fn step_down(&self, epoch: i32) {
        let _ = self.step_down.send(epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn permits_only_while_leading_and_not_during_a_release() {
        let (gate, control) = Gate::new();
        assert!(gate.permit().is_none(), "no claim yet");
        let lead = |until| Claim {
            holder: Some("me".into()),
            epoch: 3,
            since: None,
            leading_until: Some(until),
            lease_uid: None,
        };
        control
            .claims
            .send(lead(Instant::now() + Duration::from_secs(5)))
            .unwrap();
        let permit = gate.permit().expect("leading");
        assert_eq!(permit.epoch, 3);
        // A release waits for the permit: the write lock is not available while it lives.
        assert!(control.inflight.try_write().is_err());
        drop(permit);
        let release = control.inflight.try_write().expect("no write in flight");
        assert!(gate.permit().is_none(), "no permit during a release");
        drop(release);

        // Past the renew deadline: no permit, even though the claim still names us.
        control.claims.send(lead(Instant::now())).unwrap();
        assert!(gate.permit().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_lapses_at_its_deadline_unless_a_renewal_extends_it() {
        let (gate, control) = Gate::new();
        let lead = |until| Claim {
            holder: Some("me".into()),
            epoch: 1,
            since: None,
            leading_until: Some(until),
            lease_uid: None,
        };
        let start = Instant::now();
        control
            .claims
            .send(lead(start + Duration::from_secs(10)))
            .unwrap();
        let lapsed = tokio::spawn({
            let gate = gate.clone();
            async move {
                gate.lapsed().await;
                Instant::now()
            }
        });
        // Renewed at 8 s: the deadline moves to 18 s.
        tokio::time::sleep(Duration::from_secs(8)).await;
        control
            .claims
            .send(lead(start + Duration::from_secs(18)))
            .unwrap();
        let at = lapsed.await.unwrap();
        assert_eq!(at.duration_since(start).as_secs(), 18);
        // Not leading at all: lapsed at once.
        control.claims.send(Claim::default()).unwrap();
        tokio::time::timeout(Duration::from_millis(1), gate.lapsed())
            .await
            .unwrap();
    }

    #[test]
    fn the_always_gate_grants_at_epoch_zero() {
        let gate = Gate::always();
        assert_eq!(gate.permit().map(|p| p.epoch), Some(0));
    }
}
