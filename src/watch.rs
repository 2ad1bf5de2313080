//! How every watch of the operator backs off when the apiserver goes away.

use std::time::Duration;

use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::ExponentialBackoff;

/// The longest wait between two attempts to watch again.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// 0.5 s doubling to [`MAX_DELAY`], jittered, starting over after two quiet minutes.
///
/// NB: kube-runtime's default goes to 30 s: after a 8 s apiserver restart the controller
/// resumed 21 s later (fault R4). A handful of watches retrying every 5 s is no load for
/// an apiserver, and the policies' status is current again seconds after it returns.
pub fn backoff() -> impl Backoff {
    ResetTimerBackoff::new(
        ExponentialBackoff::from(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(MAX_DELAY)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times(),
        ),
        Duration::from_secs(120),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_never_wait_longer_than_the_cap() {
        let delays: Vec<Duration> = backoff().take(20).collect();
        assert_eq!(delays.len(), 20, "it never gives up");
        // NB: jitter adds up to the delay itself on top.
        assert!(delays.iter().all(|d| *d <= MAX_DELAY * 2), "{delays:?}");
        assert!(delays[0] < Duration::from_secs(2), "{delays:?}");
    }
}
