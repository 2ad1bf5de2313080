//! Waiting for a matching message on a channel, for tests and benchmarks. Included with `#[path]`.
#![allow(dead_code)]

use std::time::Duration;

use tokio::sync::mpsc;

/// The next message on `rx` that `f` maps to `Some`, within `secs`; others are skipped.
pub async fn next_matching<E, T>(
    rx: &mut mpsc::Receiver<E>,
    secs: u64,
    mut f: impl FnMut(E) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let msg = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("timed out waiting for a message")
            .expect("the sender stopped");
        if let Some(v) = f(msg) {
            return v;
        }
    }
}
