//! What to write, where, and when, for one (policy, Kong version): a pure state machine.
//!
//! Snapshots arrive from the control plane; [`Exporter::offer`] drops the ones that must
//! never be written (invalid, empty, unchanged) and keeps the newest of the rest as
//! pending. [`Exporter::next`] says, for a given instant, whether to write the pending
//! snapshot now or when to look again: at most one write per `min_interval`, retries with
//! backoff after failures, and the newest snapshot always wins once things are quiet.
//! Time is passed in, so every rule is unit-tested without a clock.

use std::time::Duration;

use bytes::Bytes;

use crate::kong::config::EMPTY_CONFIG_HASH;

/// A configuration received from the control plane, validated, ready to store.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The control plane's `config_hash`, kept verbatim (a DP pings it; compat rewrites
    /// keep the original).
    pub hash: String,
    /// The bytes of `config.json`.
    pub body: Bytes,
    /// True when a data plane loading it would serve nothing.
    pub empty: bool,
    /// The control plane's `timestamp` of the reconfigure message (epoch seconds, when it
    /// built the payload): orders configurations across sessions and writers.
    pub timestamp: Option<f64>,
}

/// Why a snapshot was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Same hash as the last one written: nothing to do.
    Unchanged,
    /// Same hash as the one already pending.
    AlreadyPending,
    /// Empty: writing it would make every new data plane come up empty.
    Empty,
    /// Older than the configuration already stored (a lagging session): writing it would
    /// replace a newer configuration with an older one.
    Older,
}

/// The next step for the loop around the state machine.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Write this snapshot now.
    Write(Snapshot),
    /// Nothing to write before this instant (milliseconds, on the caller's clock).
    WaitUntil(u64),
    /// Nothing pending.
    Idle,
}

/// Retry delays after failed writes: 0.5 s doubling to 5 s.
///
/// NB: capped low on purpose: the store's return is seen only by the next try, and the
/// newest configuration must be stored within 10 s of it (fault R2 measured 10.6 s after a
/// 30 s outage with a 30 s cap). A try every 5 s is no load for a store.
pub fn backoff(failures: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << failures.saturating_sub(1).min(16));
    Duration::from_millis(ms.min(5_000))
}

/// The export state of one (policy, version).
#[derive(Clone, Debug)]
pub struct Exporter {
    min_interval_ms: u64,
    last_written: Option<String>,
    /// The control plane's timestamp of what the store holds, when known.
    stored_timestamp: Option<f64>,
    last_write_ms: Option<u64>,
    pending: Option<Snapshot>,
    failures: u32,
    retry_at_ms: Option<u64>,
}

impl Exporter {
    /// `last_written`: the hash already in storage, if known (so a restart does not
    /// rewrite an identical object).
    pub fn new(min_interval: Duration, last_written: Option<String>) -> Self {
        Exporter {
            min_interval_ms: min_interval.as_millis() as u64,
            last_written,
            stored_timestamp: None,
            last_write_ms: None,
            pending: None,
            failures: 0,
            retry_at_ms: None,
        }
    }

    /// Takes a new snapshot; the newest kept snapshot replaces an older pending one.
    pub fn offer(&mut self, snapshot: Snapshot) -> Result<(), Dropped> {
        let verdict = self.verdict(&snapshot.hash, snapshot.empty, snapshot.timestamp);
        match verdict {
            Ok(()) => self.pending = Some(snapshot),
            // NB: a return to the stored config also cancels a newer pending one.
            Err(Dropped::Unchanged) => self.pending = None,
            Err(_) => {}
        }
        verdict
    }

    /// Whether [`Exporter::offer`] would keep a snapshot of `hash` and `timestamp` now: asked
    /// of a frame before its checks, to stage only a configuration that may be written.
    pub fn would_keep(&self, hash: &str, timestamp: Option<f64>) -> bool {
        self.verdict(hash, false, timestamp).is_ok()
    }

    fn verdict(&self, hash: &str, empty: bool, timestamp: Option<f64>) -> Result<(), Dropped> {
        if empty || hash == EMPTY_CONFIG_HASH {
            Err(Dropped::Empty)
        } else if self.pending.as_ref().is_some_and(|p| p.hash == hash) {
            Err(Dropped::AlreadyPending)
        } else if self.last_written.as_deref() == Some(hash) {
            Err(Dropped::Unchanged)
        } else if older(timestamp, self.stored_timestamp) {
            Err(Dropped::Older)
        } else {
            Ok(())
        }
    }

    /// What to do at `now_ms`.
    pub fn next(&self, now_ms: u64) -> Next {
        let Some(pending) = &self.pending else {
            return Next::Idle;
        };
        let mut due = self
            .last_write_ms
            .map_or(0, |t| t.saturating_add(self.min_interval_ms));
        if let Some(retry) = self.retry_at_ms {
            due = due.max(retry);
        }
        if now_ms >= due {
            Next::Write(pending.clone())
        } else {
            Next::WaitUntil(due)
        }
    }

    /// What the store holds now (read after another writer may have written), with the
    /// control plane's timestamp of it: a pending snapshot with that hash has nothing left
    /// to do, and one older than it must not replace it. Returns the snapshot so dropped.
    pub fn stored(&mut self, hash: Option<String>, timestamp: Option<f64>) -> Option<Snapshot> {
        let mut dropped = None;
        if self.pending.as_ref().map(|p| &p.hash) == hash.as_ref() {
            self.pending = None;
        } else if self
            .pending
            .as_ref()
            .is_some_and(|p| older(p.timestamp, timestamp))
        {
            dropped = self.pending.take();
        }
        self.last_written = hash;
        self.stored_timestamp = timestamp;
        dropped
    }

    /// Records a successful write of `hash` (with its control-plane `timestamp`) at `now_ms`.
    pub fn written(&mut self, hash: &str, timestamp: Option<f64>, now_ms: u64) {
        self.last_written = Some(hash.to_owned());
        self.stored_timestamp = timestamp;
        self.last_write_ms = Some(now_ms);
        self.failures = 0;
        self.retry_at_ms = None;
        if self.pending.as_ref().is_some_and(|p| p.hash == hash) {
            self.pending = None;
        }
    }

    /// Records a failed write at `now_ms`; the snapshot stays pending and is retried
    /// after a growing delay. Returns the delay.
    pub fn failed(&mut self, now_ms: u64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = backoff(self.failures);
        self.retry_at_ms = Some(now_ms.saturating_add(delay.as_millis() as u64));
        delay
    }

    pub fn last_written(&self) -> Option<&str> {
        self.last_written.as_deref()
    }

    pub fn pending(&self) -> Option<&Snapshot> {
        self.pending.as_ref()
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Whether a configuration of `candidate` time is older than the stored one. Unknown times
/// compare as not older: only what is known to be older is held back.
fn older(candidate: Option<f64>, stored: Option<f64>) -> bool {
    matches!((candidate, stored), (Some(c), Some(s)) if c < s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_another_writer_stored_is_not_written_again() {
        let mut e = Exporter::new(Duration::ZERO, None);
        e.offer(snap("a")).unwrap();
        e.stored(Some(snap("a").hash), None);
        assert_eq!(
            e.next(0),
            Next::Idle,
            "the pending snapshot is already stored"
        );
        assert_eq!(e.offer(snap("a")), Err(Dropped::Unchanged));
        e.offer(snap("b")).unwrap();
        e.stored(Some(snap("c").hash), None);
        assert!(matches!(e.next(0), Next::Write(s) if s.hash == snap("b").hash));
    }

    fn snap(hash: &str) -> Snapshot {
        Snapshot {
            hash: format!("{hash:a>32}"),
            body: Bytes::from(format!("{{\"h\":\"{hash}\"}}")),
            empty: false,
            timestamp: None,
        }
    }

    fn at(hash: &str, timestamp: f64) -> Snapshot {
        Snapshot {
            timestamp: Some(timestamp),
            ..snap(hash)
        }
    }

    #[test]
    fn a_pending_snapshot_older_than_the_stored_one_is_dropped_on_taking_the_lead() {
        let mut e = ex(0);
        e.offer(at("old", 100.0)).unwrap();
        // Another replica stored a newer configuration while this session lagged.
        let dropped = e.stored(Some(snap("new").hash), Some(200.0));
        assert_eq!(dropped, Some(at("old", 100.0)));
        assert_eq!(e.next(0), Next::Idle);
        // The lagging session's configuration is refused until a newer one arrives.
        assert_eq!(e.offer(at("old", 100.0)), Err(Dropped::Older));
        e.offer(at("newer", 250.0)).unwrap();
        assert!(matches!(e.next(0), Next::Write(s) if s.hash == snap("newer").hash));
    }

    #[test]
    fn unknown_times_never_hold_a_write_back() {
        let mut e = ex(0);
        e.offer(snap("a")).unwrap();
        assert_eq!(e.stored(Some(snap("b").hash), Some(200.0)), None);
        assert!(matches!(e.next(0), Next::Write(s) if s.hash == snap("a").hash));
        let mut e = ex(0);
        e.offer(at("a", 100.0)).unwrap();
        assert_eq!(e.stored(Some(snap("b").hash), None), None);
        e.written(&snap("a").hash, Some(100.0), 0);
        // What we wrote ourselves sets the bar too.
        assert_eq!(e.offer(at("c", 50.0)), Err(Dropped::Older));
    }

    /// Asked before a frame's checks, `would_keep` gives the verdict `offer` then gives,
    /// in each of its cases, and changes nothing.
    #[test]
    fn would_keep_foretells_offer_without_taking_anything() {
        let mut e = ex(0);
        e.offer(at("stored", 100.0)).unwrap();
        e.written(&snap("stored").hash, Some(100.0), 0);
        e.offer(at("pending", 150.0)).unwrap();
        let cases = [
            (at("stored", 100.0), Err(Dropped::Unchanged)),
            (at("pending", 150.0), Err(Dropped::AlreadyPending)),
            (at("old", 50.0), Err(Dropped::Older)),
            (snap(&"0".repeat(32)), Err(Dropped::Empty)),
            (at("new", 200.0), Ok(())),
            (snap("unknown-time"), Ok(())),
        ];
        for (s, verdict) in cases {
            let before = (e.pending().cloned(), e.last_written().map(str::to_owned));
            assert_eq!(
                e.would_keep(&s.hash, s.timestamp),
                verdict.is_ok(),
                "{}",
                s.hash
            );
            assert_eq!(
                (e.pending().cloned(), e.last_written().map(str::to_owned)),
                before,
                "would_keep changed the state"
            );
            assert_eq!(e.clone().offer(s.clone()), verdict, "{}", s.hash);
        }
    }

    fn ex(min_interval_ms: u64) -> Exporter {
        Exporter::new(Duration::from_millis(min_interval_ms), None)
    }

    #[test]
    fn the_first_snapshot_is_written_at_once() {
        let mut e = ex(5_000);
        e.offer(snap("a")).unwrap();
        assert_eq!(e.next(0), Next::Write(snap("a")));
        e.written(&snap("a").hash, None, 0);
        assert_eq!(e.next(1), Next::Idle);
    }

    #[test]
    fn an_identical_snapshot_writes_nothing() {
        let mut e = ex(0);
        e.offer(snap("a")).unwrap();
        e.written(&snap("a").hash, None, 0);
        assert_eq!(e.offer(snap("a")), Err(Dropped::Unchanged));
        assert_eq!(e.next(10), Next::Idle);
    }

    #[test]
    fn a_hash_already_in_storage_is_not_rewritten_after_a_restart() {
        let mut e = Exporter::new(Duration::ZERO, Some(snap("a").hash));
        assert_eq!(e.offer(snap("a")), Err(Dropped::Unchanged));
    }

    #[test]
    fn an_empty_config_is_never_written() {
        let mut e = ex(0);
        let empty = Snapshot {
            hash: "f".repeat(32),
            body: Bytes::from_static(b"{}"),
            empty: true,
            timestamp: None,
        };
        assert_eq!(e.offer(empty), Err(Dropped::Empty));
        let zero = Snapshot {
            hash: EMPTY_CONFIG_HASH.into(),
            body: Bytes::from_static(b"{}"),
            empty: false,
            timestamp: None,
        };
        assert_eq!(e.offer(zero), Err(Dropped::Empty));
        assert_eq!(e.next(0), Next::Idle);
    }

    #[test]
    fn an_empty_config_does_not_displace_a_pending_good_one() {
        let mut e = ex(0);
        e.offer(snap("a")).unwrap();
        let empty = Snapshot {
            hash: "f".repeat(32),
            body: Bytes::new(),
            empty: true,
            timestamp: None,
        };
        assert_eq!(e.offer(empty), Err(Dropped::Empty));
        assert_eq!(e.next(0), Next::Write(snap("a")));
    }

    #[test]
    fn a_burst_is_coalesced_and_the_newest_wins() {
        let mut e = ex(1_000);
        let mut writes = Vec::new();
        // 100 snapshots, one every 30 ms (a 3 s burst), with the loop acting on each tick.
        for i in 0..100u64 {
            let now = i * 30;
            e.offer(snap(&format!("{:02}", i % 100))).unwrap();
            if let Next::Write(s) = e.next(now) {
                e.written(&s.hash, None, now);
                writes.push((now, s.hash));
            }
        }
        // Quiet afterwards: the newest pending snapshot is written once its slot comes.
        let end = 99 * 30;
        match e.next(end) {
            Next::WaitUntil(t) => {
                let Next::Write(s) = e.next(t) else {
                    panic!("due at {t}")
                };
                e.written(&s.hash, None, t);
                writes.push((t, s.hash));
            }
            Next::Idle => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            writes.last().unwrap().1,
            snap("99").hash,
            "the newest snapshot is stored last"
        );
        let bound = (end as f64 / 1_000.0).ceil() as usize + 1;
        assert!(writes.len() <= bound, "{} writes > {bound}", writes.len());
        for w in writes.windows(2) {
            assert!(
                w[1].0 - w[0].0 >= 1_000,
                "writes closer than min_interval: {w:?}"
            );
        }
        assert_eq!(e.next(end + 10_000), Next::Idle);
    }

    #[test]
    fn a_failed_write_is_retried_with_growing_backoff_and_keeps_the_snapshot() {
        let mut e = ex(0);
        e.offer(snap("a")).unwrap();
        assert_eq!(e.failed(0), Duration::from_millis(500));
        assert_eq!(e.next(100), Next::WaitUntil(500));
        assert_eq!(e.next(500), Next::Write(snap("a")));
        assert_eq!(e.failed(500), Duration::from_secs(1));
        assert_eq!(e.failed(1_500), Duration::from_secs(2));
        // A newer snapshot during the backoff replaces the old one but waits its turn.
        e.offer(snap("b")).unwrap();
        assert_eq!(e.next(2_000), Next::WaitUntil(3_500));
        assert_eq!(e.next(3_500), Next::Write(snap("b")));
        e.written(&snap("b").hash, None, 3_500);
        assert_eq!(e.failures(), 0);
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(5));
        assert_eq!(backoff(200), Duration::from_secs(5));
    }

    #[test]
    fn returning_to_the_stored_config_cancels_a_pending_change() {
        let mut e = ex(10_000);
        e.offer(snap("a")).unwrap();
        e.written(&snap("a").hash, None, 0);
        e.offer(snap("b")).unwrap();
        assert_eq!(e.offer(snap("a")), Err(Dropped::Unchanged));
        assert_eq!(e.next(20_000), Next::Idle);
    }
}
