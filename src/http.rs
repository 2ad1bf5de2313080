//! The operator's plain-HTTP endpoint for the kubelet and Prometheus:
//!
//! - `GET /metrics`: [`Metrics`] in the OpenMetrics text format;
//! - `GET /healthz`: liveness, 200 while the process serves requests;
//! - `GET /readyz`: readiness, 200 once every check registered in [`Health`] passed
//!   (the controller's caches are synced, later the webhook certificate is loaded), else
//!   503 naming what is still pending.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::{self, Metrics};

/// Named readiness checks; ready when all have passed.
#[derive(Default)]
pub struct Health {
    checks: Mutex<BTreeMap<&'static str, bool>>,
}

impl Health {
    /// A health with `pending` checks, none passed yet.
    pub fn new(pending: &[&'static str]) -> Self {
        Health {
            checks: Mutex::new(pending.iter().map(|c| (*c, false)).collect()),
        }
    }

    /// Marks `check` as passed (`true`) or failing again (`false`).
    pub fn set(&self, check: &'static str, passed: bool) {
        self.lock().insert(check, passed);
    }

    /// The checks that have not passed; empty when ready.
    pub fn pending(&self) -> Vec<&'static str> {
        self.lock()
            .iter()
            .filter(|(_, ok)| !**ok)
            .map(|(c, _)| *c)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, bool>> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The routes, for [`serve`] and for tests.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(Shared { metrics, health })
}

/// Serves [`router`] on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health)).await
}

async fn metrics_handler(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        s.metrics.encode(),
    )
}

async fn ready_handler(State(s): State<Shared>) -> impl IntoResponse {
    let pending = s.health.pending();
    if pending.is_empty() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: waiting for {}\n", pending.join(", ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passed() {
        let h = Health::new(&["caches", "webhook-certificate"]);
        assert_eq!(h.pending(), ["caches", "webhook-certificate"]);
        h.set("caches", true);
        assert_eq!(h.pending(), ["webhook-certificate"]);
        h.set("webhook-certificate", true);
        assert!(h.pending().is_empty());
        h.set("caches", false);
        assert_eq!(h.pending(), ["caches"]);
    }
}
