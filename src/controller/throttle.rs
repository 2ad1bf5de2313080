//! Pod churn re-triggers a policy at most once per period: the first pod event at once,
//! every later one in the period folded into a single trigger at its end.
//!
//! A policy's reconcile reads its Secrets and writes its status, and the pod counts in
//! that status change with every pod. Triggered per pod, a rollout of a hundred data
//! planes, or the 100 creates a second of benchmark P3, became hundreds of apiserver
//! requests a second on top of the creates themselves. kube-runtime's `debounce` does
//! not fit: it is trailing-edge and restarts with every request, so steady churn would
//! hold the reconcile back for as long as it lasts.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// How soon pod churn re-triggers a policy again.
pub const POD_TRIGGER_PERIOD: Duration = Duration::from_secs(1);

/// What to do with a trigger.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Send it now.
    Now,
    /// Send it at this instant (and call [`Throttle::fired`] then).
    At(Instant),
    /// One is already due at the end of the period: drop this one.
    Folded,
}

/// Per-key leading- and trailing-edge throttle. Pure: the caller sends and sleeps.
#[derive(Debug)]
pub struct Throttle<K> {
    period: Duration,
    /// Per key: when the last trigger was sent, and whether one is due.
    keys: HashMap<K, (Instant, bool)>,
    pruned: Option<Instant>,
}

impl<K: Eq + Hash + Clone> Throttle<K> {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            keys: HashMap::new(),
            pruned: None,
        }
    }

    /// A trigger for `key` arrived at `now`.
    pub fn admit(&mut self, key: &K, now: Instant) -> Admit {
        self.prune(now);
        match self.keys.get_mut(key) {
            Some((_, true)) => Admit::Folded,
            Some((last, pending)) if now.duration_since(*last) < self.period => {
                *pending = true;
                Admit::At(*last + self.period)
            }
            _ => {
                self.keys.insert(key.clone(), (now, false));
                Admit::Now
            }
        }
    }

    /// The trigger due for `key` was sent at `now`.
    pub fn fired(&mut self, key: &K, now: Instant) {
        self.keys.insert(key.clone(), (now, false));
    }

    /// Forgets, once a minute, keys with nothing due whose period is over (deleted
    /// policies, quiet ones): the map holds only what is in flight.
    fn prune(&mut self, now: Instant) {
        if self
            .pruned
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(60))
        {
            return;
        }
        self.pruned = Some(now);
        let period = self.period;
        self.keys
            .retain(|_, (last, pending)| *pending || now.duration_since(*last) < period);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_trigger_goes_at_once() {
        let mut t = Throttle::new(P);
        let now = Instant::now();
        assert_eq!(t.admit(&"a", now), Admit::Now);
        // Another key is not held back by the first.
        assert_eq!(t.admit(&"b", now), Admit::Now);
    }

    #[test]
    fn a_burst_in_the_period_becomes_one_trigger_at_its_end() {
        let mut t = Throttle::new(P);
        let start = Instant::now();
        assert_eq!(t.admit(&"a", start), Admit::Now);
        let at = start + P;
        assert_eq!(
            t.admit(&"a", start + Duration::from_millis(10)),
            Admit::At(at)
        );
        for ms in [20, 500, 999] {
            assert_eq!(
                t.admit(&"a", start + Duration::from_millis(ms)),
                Admit::Folded
            );
        }
        // While the trailing trigger is due, even a late event is folded into it.
        assert_eq!(t.admit(&"a", start + P * 2), Admit::Folded);
        t.fired(&"a", at);
        // After it fires, the next event waits a period from the fired one.
        assert_eq!(
            t.admit(&"a", at + Duration::from_millis(1)),
            Admit::At(at + P)
        );
    }

    #[test]
    fn steady_churn_is_never_held_back_longer_than_a_period() {
        let mut t = Throttle::new(P);
        let start = Instant::now();
        let mut sent = vec![];
        let mut due: Option<Instant> = None;
        // An event every 10 ms for 5 s.
        for i in 0..500u64 {
            let now = start + Duration::from_millis(10 * i);
            if let Some(at) = due
                && at <= now
            {
                t.fired(&"a", at);
                sent.push(at);
                due = None;
            }
            match t.admit(&"a", now) {
                Admit::Now => sent.push(now),
                Admit::At(at) => due = Some(at),
                Admit::Folded => {}
            }
        }
        assert_eq!(sent.len(), 5, "{sent:?}");
        for pair in sent.windows(2) {
            assert_eq!(pair[1] - pair[0], P);
        }
    }

    #[test]
    fn quiet_keys_are_forgotten_but_due_ones_kept() {
        let mut t = Throttle::new(P);
        let start = Instant::now();
        assert_eq!(t.admit(&"quiet", start), Admit::Now);
        assert_eq!(t.admit(&"busy", start), Admit::Now);
        assert!(matches!(t.admit(&"busy", start), Admit::At(_)));
        // A minute on, the next admit prunes: "quiet" goes, "busy" still has one due.
        let later = start + Duration::from_secs(61);
        assert_eq!(t.admit(&"other", later), Admit::Now);
        assert_eq!(t.len(), 2);
        assert_eq!(t.admit(&"busy", later), Admit::Folded);
        assert_eq!(t.admit(&"quiet", later), Admit::Now);
    }
}
