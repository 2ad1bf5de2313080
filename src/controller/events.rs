//! Events, published off the reconcile path.
//!
//! A reconcile hands its Events to one task that publishes them in the order they were
//! sent. A status write never waits on an Event, and while the operator catches up on many
//! policies at once the Events of the policies done first do not compete with the status
//! writes of the rest (bench P4: a policy's first status brings 3-4 Events, and with 200
//! policies they were the largest share of the requests while statuses were still due).
//! Events are best effort, as the apiserver treats them: when the queue is full an Event is
//! dropped, counted, and said in the log; one the apiserver refuses is logged and counted
//! too (`kong_fallback_events_lost_total{cause}`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use tokio::sync::mpsc;
use tracing::warn;

use crate::metrics::{EventLoss, Metrics};

/// Events waiting to be published; beyond this many, new ones are dropped.
pub const QUEUE: usize = 4096;

/// The sending side of the Event queue.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<(Event, ObjectReference)>,
    dropped: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

/// The publishing task of an [`Events`] queue.
pub struct Publisher {
    task: tokio::task::JoinHandle<()>,
    close: tokio::sync::oneshot::Sender<()>,
}

impl Events {
    /// Starts the task that publishes with `recorder`; Events lost are counted in `metrics`.
    pub fn start(
        recorder: Recorder,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> (Events, Publisher) {
        let (tx, mut rx) = mpsc::channel::<(Event, ObjectReference)>(capacity);
        let (close, mut closing) = tokio::sync::oneshot::channel::<()>();
        let publishing = metrics.clone();
        let task = tokio::spawn(async move {
            let mut closed = false;
            loop {
                tokio::select! {
                    next = rx.recv() => {
                        let Some((event, reference)) = next else { break };
                        if let Err(e) = recorder.publish(&event, &reference).await {
                            publishing.event_lost(EventLoss::PublishFailed);
                            warn!(error = %e, reason = %event.reason, "failed to publish an Event");
                        }
                    }
                    // NB: closed, the queue takes no more and gives what it holds, then ends.
                    _ = &mut closing, if !closed => {
                        closed = true;
                        rx.close();
                    }
                }
            }
        });
        let events = Events {
            tx,
            dropped: Arc::default(),
            metrics,
        };
        (events, Publisher { task, close })
    }

    /// Queues `event` about `reference`; never waits.
    pub fn send(&self, event: Event, reference: ObjectReference) {
        if let Err(e) = self.tx.try_send((event, reference)) {
            let full = matches!(e, mpsc::error::TrySendError::Full(_));
            let (event, _) = e.into_inner();
            if !full {
                // Shutting down: the queue is closed.
                tracing::debug!(reason = %event.reason, "an Event after shutdown is not published");
                return;
            }
            self.metrics.event_lost(EventLoss::QueueFull);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // NB: said for the first and then every 100th, not for each: a full queue
            // means a flood, and a log line per Event would be another.
            if dropped % 100 == 1 {
                warn!(reason = %event.reason, dropped, "the Event queue is full; Events are dropped");
            }
        }
    }
}

impl Publisher {
    /// Closes the queue and waits (at most `bound`) for the Events in it to be published;
    /// what is left after that is lost.
    pub async fn finish(self, bound: Duration) {
        let _ = self.close.send(());
        let abort = self.task.abort_handle();
        if tokio::time::timeout(bound, self.task).await.is_err() {
            abort.abort();
            warn!("Events still queued at shutdown were not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::events::{EventType, Reporter};

    fn event(reason: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: None,
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    fn recorder(url: String) -> Recorder {
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let reporter = Reporter {
            controller: "test".into(),
            instance: None,
        };
        Recorder::new(client, reporter)
    }

    fn lost(metrics: &Metrics, cause: &str) -> u64 {
        let line = format!("kong_fallback_events_lost_total{{cause=\"{cause}\"}} ");
        metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0, |n| n.parse().unwrap())
    }

    /// A recorder whose apiserver accepts connections and never answers; the number of
    /// connections it accepted so far.
    async fn hung_apiserver() -> (Recorder, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        (recorder(url), accepted)
    }

    fn reference() -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            name: Some("x".into()),
            namespace: Some("default".into()),
            ..ObjectReference::default()
        }
    }

    #[tokio::test]
    async fn a_hung_apiserver_holds_no_sender_and_a_full_queue_drops_and_counts() {
        let (recorder, accepted) = hung_apiserver().await;
        let metrics = Arc::new(Metrics::new());
        let (events, publisher) = Events::start(recorder, 2, metrics.clone());
        events.send(event("First"), reference());
        // The first is being published (its request hangs): the queue is empty again.
        tokio::time::timeout(Duration::from_secs(10), async {
            while accepted.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the publisher never called the apiserver");
        for reason in ["Second", "Third", "Fourth", "Fifth"] {
            events.send(event(reason), reference());
        }
        assert_eq!(
            lost(&metrics, "queue_full"),
            2,
            "two fit in the queue, two were dropped and counted"
        );
        assert_eq!(lost(&metrics, "publish_failed"), 0);
        // Shutdown is bounded although the apiserver never answers.
        let started = std::time::Instant::now();
        publisher.finish(Duration::from_millis(300)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn an_event_the_apiserver_cannot_take_is_counted_as_lost() {
        // NB: a port nothing listens on: each publish fails at once.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", free.local_addr().unwrap());
        drop(free);
        let metrics = Arc::new(Metrics::new());
        let (events, publisher) = Events::start(recorder(url), QUEUE, metrics.clone());
        events.send(event("First"), reference());
        events.send(event("Second"), reference());
        publisher.finish(Duration::from_secs(10)).await;
        assert_eq!(lost(&metrics, "publish_failed"), 2);
        assert_eq!(lost(&metrics, "queue_full"), 0);
    }
}
