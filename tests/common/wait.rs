//! Waiting, for tests and benchmarks: for a matching message on a channel, or for a
//! condition polled against the apiserver or a store. Included with `#[path]`.
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

/// Polls `f` every 200 ms until it gives `Some`, for up to 40 s; panics naming `what`.
pub async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}
