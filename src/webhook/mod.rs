//! The mutating admission webhook: HTTPS (rustls) `POST /mutate` answering `AdmissionReview`
//! v1 for pod CREATE from the controller's in-memory policy cache, with the patch of
//! [`crate::inject`]. Nothing on the request path calls the apiserver.
//!
//! - [`certs`]: the serving certificate, self-managed (a CA and a leaf in a Secret, rotated
//!   before expiry) or mounted files (cert-manager), reloaded without a restart.
//! - [`registration`]: the `MutatingWebhookConfiguration`, kept current with server-side
//!   apply: the caBundle, and a namespaceSelector listing only namespaces with a policy,
//!   so unrelated pods never reach the webhook.
//!
//! A malformed review gets an `AdmissionResponse` error, never a panic; with the default
//! `failurePolicy: Ignore` an outage never blocks a Kong pod, and the controller reports
//! pods that were created without the injection.

pub mod certs;
pub mod registration;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::Store;
use tracing::{debug, warn};

use crate::api::FallbackConfigPolicy;
use crate::inject;
use crate::metrics::Metrics;

/// The path the apiserver posts reviews to.
pub const PATH: &str = "/mutate";

/// Answers one review body given the cluster's policies. Pure.
pub fn review(
    body: &[u8],
    policies: &[FallbackConfigPolicy],
    secrets: &inject::SecretFacts,
) -> (AdmissionReview<DynamicObject>, &'static str) {
    let parsed: AdmissionReview<Pod> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return (
                AdmissionResponse::invalid(format!("malformed AdmissionReview: {e}")).into_review(),
                "malformed",
            );
        }
    };
    let req: AdmissionRequest<Pod> = match parsed.try_into() {
        Ok(r) => r,
        Err(e) => {
            return (
                AdmissionResponse::invalid(format!("AdmissionReview without a request: {e}"))
                    .into_review(),
                "malformed",
            );
        }
    };
    let resp = AdmissionResponse::from(&req);
    let Some(mut pod) = req
        .object
        .clone()
        .filter(|_| req.operation == Operation::Create)
    else {
        return (resp.into_review(), "skipped");
    };
    // NB: a pod in a CREATE request may have no namespace yet: the request has it.
    if pod.metadata.namespace.is_none() {
        pod.metadata.namespace = req.namespace.clone();
    }
    let outcome = inject::inject(&pod, policies, secrets);
    let mut resp = resp;
    if !outcome.remarks.is_empty() {
        resp.warnings = Some(
            outcome
                .remarks
                .iter()
                .map(|r| format!("kong-fallback-operator: {r}"))
                .collect(),
        );
    }
    if outcome.patch.is_empty() {
        return (
            resp.into_review(),
            if outcome.injected.is_some() {
                "unchanged"
            } else {
                "skipped"
            },
        );
    }
    let patch: json_patch::Patch =
        match serde_json::from_value(serde_json::Value::Array(outcome.patch)) {
            Ok(p) => p,
            Err(e) => {
                return (
                    resp.deny(format!("internal error building the patch: {e}"))
                        .into_review(),
                    "error",
                );
            }
        };
    match resp.clone().with_patch(patch) {
        Ok(r) => (r.into_review(), "injected"),
        Err(e) => (
            resp.deny(format!("internal error encoding the patch: {e}"))
                .into_review(),
            "error",
        ),
    }
}

/// What the controller knows of the Secrets policies name, shared with the webhook.
pub type SharedSecretFacts = Arc<std::sync::RwLock<inject::SecretFacts>>;

#[derive(Clone)]
struct Shared {
    policies: Store<FallbackConfigPolicy>,
    secrets: SharedSecretFacts,
}

/// The webhook's routes.
pub fn router(
    policies: Store<FallbackConfigPolicy>,
    secrets: SharedSecretFacts,
    metrics: Arc<Metrics>,
) -> Router {
    Router::new()
        .route(PATH, post(mutate))
        .with_state(Shared { policies, secrets })
        // NB: outermost, so the time counts reading the body and encoding the answer.
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let metrics = metrics.clone();
                async move {
                    let started = Instant::now();
                    let response = next.run(req).await;
                    let result = response
                        .extensions()
                        .get::<Answered>()
                        .map_or("unrouted", |a| a.0);
                    metrics.webhook(result, started.elapsed());
                    response
                }
            },
        ))
}

/// The result label of an answered review, handed from the handler to the timing layer.
#[derive(Clone, Copy)]
struct Answered(&'static str);

async fn mutate(State(s): State<Shared>, body: Bytes) -> impl IntoResponse {
    let policies: Vec<FallbackConfigPolicy> =
        s.policies.state().iter().map(|p| (**p).clone()).collect();
    let secrets = s.secrets.read().unwrap_or_else(|e| e.into_inner()).clone();
    let (review, result) = review(&body, &policies, &secrets);
    match result {
        "malformed" => warn!("refused a malformed AdmissionReview"),
        r => debug!(result = r, "answered an AdmissionReview"),
    }
    let status = if result == "malformed" {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (
        status,
        axum::Extension(Answered(result)),
        axum::Json(review),
    )
}

/// How the webhook runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where to serve HTTPS.
    pub addr: std::net::SocketAddr,
    /// A socket already bound to `addr` to serve on, instead of binding it here: the
    /// registration can name the port before the server runs, with no moment in which
    /// another process can take it (tests run many webhooks side by side).
    pub listener: Option<Arc<std::net::TcpListener>>,
    pub source: certs::Source,
    /// The MutatingWebhookConfiguration's name.
    pub configuration: String,
    pub target: registration::Target,
    pub failure_policy: registration::FailurePolicy,
    pub timeout_seconds: i32,
    /// How often the certificate source is checked (rotation, changed files).
    pub cert_check: std::time::Duration,
}

/// The readiness check the webhook passes once it serves with a certificate.
pub const CERT_LOADED: &str = "webhook-certificate";

/// Serves the webhook and keeps its certificate and registration current, until
/// `shutdown`.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    policies: Store<FallbackConfigPolicy>,
    secrets: SharedSecretFacts,
    metrics: Arc<Metrics>,
    health: Arc<crate::http::Health>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    use axum_server::tls_rustls::RustlsConfig;

    let load = async |rotate: bool| -> Result<certs::Material, String> {
        match &settings.source {
            certs::Source::Managed {
                namespace,
                name,
                hosts,
                validity,
            } => {
                let api = kube::Api::namespaced(client.clone(), namespace);
                certs::ensure_secret(&api, name, hosts, *validity, rotate).await
            }
            certs::Source::Files { dir } => certs::read_files(dir),
        }
    };
    // NB: a certificate that cannot be had yet (a Secret the RBAC does not allow, files
    // cert-manager has not written) is retried, and said, rather than ending the webhook;
    // /readyz names it as pending meanwhile.
    let (mut material, tls) = loop {
        let loaded = match load(false).await {
            Ok(m) => RustlsConfig::from_pem(
                m.cert_pem.clone().into_bytes(),
                m.key_pem.clone().into_bytes(),
            )
            .await
            .map(|tls| (m, tls))
            .map_err(|e| format!("the webhook certificate is unusable: {e}")),
            Err(e) => Err(e),
        };
        match loaded {
            Ok(ok) => break ok,
            Err(e) => {
                warn!(error = %e, "the webhook cannot load its certificate; retrying in 10 s");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
    };
    let handle = axum_server::Handle::new();
    let server = {
        let app = router(policies.clone(), secrets, metrics.clone());
        let handle = handle.clone();
        let tls = tls.clone();
        let addr = settings.addr;
        let listener = settings.listener.as_deref().map(|l| l.try_clone());
        tokio::spawn(async move {
            let server = match listener {
                None => axum_server::bind_rustls(addr, tls),
                Some(l) => axum_server::from_tcp_rustls(l?, tls)?,
            };
            server.handle(handle).serve(app.into_make_service()).await
        })
    };
    let Some(bound) = handle.listening().await else {
        return Err(format!("cannot serve the webhook on {}", settings.addr));
    };
    tracing::info!(addr = %bound, "serving the admission webhook");
    health.set(CERT_LOADED, true);
    metrics.webhook_certificate(certs::not_after_of(&material.cert_pem));

    // The live registration's resourceVersion, watched so that a rewrite by another field
    // manager (helm upgrade, Argo CD, Flux) is undone within a second, not at the next
    // policy change.
    let live_version: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let watch_registration = {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let api: kube::Api<
            k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
        > = kube::Api::all(client.clone());
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", settings.configuration));
        let live_version = live_version.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, config).backoff(crate::watch::backoff()));
            while let Some(event) = events.next().await {
                let update = match event {
                    Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                        Some(c.metadata.resource_version)
                    }
                    Ok(watcher::Event::Delete(_)) => Some(None),
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                    Err(e) => {
                        warn!(error = %e, "cannot watch the webhook registration; retrying");
                        None
                    }
                };
                if let Some(v) = update {
                    *live_version.lock().unwrap_or_else(|e| e.into_inner()) = v;
                }
            }
        })
    };
    let mut applied = None;
    let mut last_check = Instant::now();
    loop {
        if last_check.elapsed() >= settings.cert_check {
            last_check = Instant::now();
            match load(false).await {
                Ok(m) if m != material => {
                    match tls
                        .reload_from_pem(
                            m.cert_pem.clone().into_bytes(),
                            m.key_pem.clone().into_bytes(),
                        )
                        .await
                    {
                        Ok(()) => {
                            tracing::info!("reloaded the webhook certificate");
                            metrics.webhook_certificate(certs::not_after_of(&m.cert_pem));
                            material = m;
                        }
                        Err(e) => {
                            warn!(error = %e, "the new webhook certificate is unusable; keeping the old one")
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot check the webhook certificate"),
            }
        }
        let mut all: Vec<FallbackConfigPolicy> =
            policies.state().iter().map(|p| (**p).clone()).collect();
        all.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
        let desired = registration::configuration(
            &settings.configuration,
            &settings.target,
            &material.ca_bundle,
            &all,
            settings.failure_policy,
            settings.timeout_seconds,
        );
        let live = live_version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if registration::needs_apply(&desired, applied.as_ref(), live.as_deref()) {
            let rewritten = applied.as_ref().is_some_and(|(c, _)| *c == desired);
            match registration::apply(&client, &desired).await {
                Ok(version) => {
                    if rewritten {
                        warn!(configuration = %settings.configuration, "the webhook registration was rewritten by another manager (a chart re-apply?); restored it");
                    } else {
                        tracing::info!(configuration = %settings.configuration, policies = all.len(), "registered the webhook");
                    }
                    applied = Some((desired, version));
                }
                Err(e) => warn!(error = %e, "cannot register the webhook"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = shutdown.changed() => break,
        }
    }
    watch_registration.abort();
    health.set(CERT_LOADED, false);
    metrics.webhook_certificate(None);
    handle.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    let _ = server.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn policy() -> FallbackConfigPolicy {
        serde_json::from_value(json!({
            "apiVersion": "fallback.kong-dp.io/v1alpha1", "kind": "FallbackConfigPolicy",
            "metadata": {"name": "prod", "namespace": "kong", "generation": 1},
            "spec": {
                "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
                "storage": {"url": "s3://fallback/kong", "region": "eu-west-1",
                            "readCredentials": {"secretName": "fallback-read"}},
                "exporter": {"mode": "None"}
            }
        }))
        .unwrap()
    }

    fn request(operation: &str, labels: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "kong", "operation": operation,
                "userInfo": {"username": "admin"},
                "object": {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"generateName": "kong-dp-", "labels": labels},
                           "spec": {"containers": [{"name": "proxy", "image": "kong:3.9.1"}]}},
                "dryRun": false
            }
        }))
        .unwrap()
    }

    fn response(r: &AdmissionReview<DynamicObject>) -> Value {
        serde_json::to_value(r).unwrap()["response"].clone()
    }

    #[test]
    fn a_matching_pod_create_gets_a_json_patch() {
        let (r, result) = review(
            &request("CREATE", json!({"app": "kong-dp"})),
            &[policy()],
            &Default::default(),
        );
        assert_eq!(result, "injected");
        let resp = response(&r);
        assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(resp["allowed"], true);
        assert_eq!(resp["patchType"], "JSONPatch");
        // NB: kube serialises the patch bytes as a JSON array, which the apiserver decodes.
        let bytes: Vec<u8> = serde_json::from_value(resp["patch"].clone()).unwrap();
        let patch = String::from_utf8(bytes).unwrap();
        assert!(
            patch.contains("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT"),
            "{patch}"
        );
    }

    #[test]
    fn other_pods_and_operations_are_allowed_unchanged() {
        for (op, labels) in [
            ("CREATE", json!({"app": "web"})),
            ("UPDATE", json!({"app": "kong-dp"})),
        ] {
            let (r, result) = review(&request(op, labels), &[policy()], &Default::default());
            assert_eq!(result, "skipped");
            let resp = response(&r);
            assert_eq!(resp["allowed"], true);
            assert!(resp.get("patch").is_none_or(Value::is_null));
        }
    }

    #[test]
    fn malformed_reviews_get_an_error_response_not_a_panic() {
        for body in [
            &b"not json"[..],
            b"{}",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            b"\xff\xfe",
        ] {
            let (r, result) = review(body, &[policy()], &Default::default());
            assert_eq!(result, "malformed");
            let resp = response(&r);
            assert_eq!(resp["allowed"], false);
            assert!(
                resp["status"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("AdmissionReview"),
                "{resp}"
            );
        }
    }
}
