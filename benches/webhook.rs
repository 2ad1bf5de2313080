//! Webhook and controller-scale benchmarks (figures, not assertions). `make bench B=P3`.
//!
//! - P3: pod creates through the real apiserver at a fixed rate for 30 s, first with no
//!   webhook registered, then (the first phase's pods deleted) with the operator's webhook
//!   injecting every pod. Server-side handling time comes from the webhook's latency
//!   histogram (interpolated within its buckets); the overhead is the difference of the
//!   end-to-end create p99s.
//! - P4: 5,000 pods and 200 policies in the apiserver, then an operator process starts:
//!   its peak RSS and the time until every policy's status is current (observed
//!   generation and pod counts).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kfo_testenv::{Proc, kube, minio};
use kong_fallback_operator::api::FallbackConfigPolicy;
use kong_fallback_operator::controller;
use kong_fallback_operator::webhook::registration;
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

#[path = "../tests/common/cluster.rs"]
mod cluster;

const RATE: u64 = 100;
const SECONDS: u64 = 30;

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn pod(name: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "proxy", "image": "kong/kong-gateway:3.6.1.4"}]}
    }))
    .unwrap()
}

fn policy(name: &str, app: &str, bucket: &str, endpoint: &str) -> FallbackConfigPolicy {
    cluster::policy(
        name,
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": app}}},
            "storage": {"url": format!("s3://{bucket}/kong"), "region": "us-east-1", "endpoint": endpoint,
                        "readCredentials": {"secretName": "fallback-read"}},
            "exporter": {"mode": "None", "versions": ["3.6.1.4"]}
        }),
    )
}

/// Creates pods at RATE per second for SECONDS; the end-to-end create latencies (ms).
async fn drive(pods: &Api<Pod>, prefix: &str) -> Vec<f64> {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    let mut tasks = Vec::new();
    for i in 0..RATE * SECONDS {
        tick.tick().await;
        let pods = pods.clone();
        let p = pod(&format!("{prefix}-{i}"), "kong-dp");
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            pods.create(&PostParams::default(), &p).await.unwrap();
            start.elapsed().as_secs_f64() * 1000.0
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// p-quantile (ms) of a Prometheus histogram in `text`, interpolated within buckets.
fn histogram_quantile(text: &str, name: &str, q: f64) -> f64 {
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    let rank = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lo * 1000.0;
            }
            let frac = if count > below {
                (rank - below) / (count - below)
            } else {
                0.0
            };
            return (lo + (le - lo) * frac) * 1000.0;
        }
        lo = le;
        below = count;
    }
    lo * 1000.0
}

async fn setup(prefix: &str) -> (kube::Client, String, String, &'static kfo_testenv::MinioEnv) {
    let env = kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let client = env.client().await.unwrap();
    let ns = env.namespace(prefix).await.unwrap();
    let s3 = minio().await;
    let bucket = s3.bucket(prefix).await.unwrap();
    let ro = s3.read_only_credentials(&bucket).await.unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fallback-read"},
        "stringData": {"AWS_ACCESS_KEY_ID": ro.access_key_id, "AWS_SECRET_ACCESS_KEY": ro.secret_access_key,
                       "AWS_SESSION_TOKEN": ro.session_token}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    (client, ns, bucket, s3)
}

async fn p3() {
    let (client, ns, bucket, s3) = setup("bench-p3").await;
    Api::<FallbackConfigPolicy>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &policy("prod", "kong-dp", &bucket, &s3.endpoint),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut bare = drive(&pods, "bare").await;
    // Both phases start from an empty namespace: the hooked one should not also pay for
    // the bare phase's pods (in etcd, and in the operator's first pod listing).
    pods.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    while !pods
        .list_metadata(&ListParams::default().limit(1))
        .await
        .unwrap()
        .items
        .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let configuration = kfo_testenv::unique_name("kfo-bench-p3");
    let settings = controller::Settings {
        namespace: Some(ns.clone()),
        webhook: Some(cluster::local_webhook(
            &ns,
            "webhook-tls",
            &configuration,
            registration::FailurePolicy::Fail,
            Duration::from_secs(60),
        )),
        ..controller::Settings::new("kfo-bench-p3")
    };
    let metrics = Arc::clone(&settings.metrics);
    let health = settings.health.clone();
    let running = tokio::spawn(controller::run(client.clone(), settings));
    while !health.pending().is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Wait until the apiserver calls the webhook (the registration is applied).
    loop {
        let p = pods
            .create(
                &PostParams::default(),
                &pod(&kfo_testenv::unique_name("warm"), "kong-dp"),
            )
            .await
            .unwrap();
        if p.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(kong_fallback_operator::inject::ANNOTATION)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut hooked = drive(&pods, "hooked").await;
    let text = metrics.encode();
    let injected: u64 = text
        .lines()
        .find(|l| l.starts_with("kong_fallback_webhook_requests_total{result=\"injected\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        injected >= RATE * SECONDS,
        "every pod went through the webhook: {injected}"
    );
    let server_p50 = histogram_quantile(&text, "kong_fallback_webhook_latency_seconds", 0.5);
    let server_p99 = histogram_quantile(&text, "kong_fallback_webhook_latency_seconds", 0.99);
    let bare_p99 = percentile(&mut bare, 0.99);
    let hooked_p99 = percentile(&mut hooked, 0.99);
    println!(
        "bench: P3 rate={RATE} seconds={SECONDS} server_p50_ms={server_p50:.3} server_p99_ms={server_p99:.3} create_p50_ms={:.1} create_p99_ms={hooked_p99:.1} bare_create_p50_ms={:.1} bare_create_p99_ms={bare_p99:.1} overhead_p99_ms={:.1} target_server_p99_ms=5 target_overhead_ms=10",
        percentile(&mut hooked, 0.5),
        percentile(&mut bare, 0.5),
        hooked_p99 - bare_p99,
    );
    running.abort();
    let _ = Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
        client,
    )
    .delete(&configuration, &Default::default())
    .await;
}

async fn p4() {
    const POLICIES: usize = 200;
    const PODS: usize = 5_000;
    let (client, ns, bucket, s3) = setup("bench-p4").await;
    let policies: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    for i in 0..POLICIES {
        policies
            .create(
                &PostParams::default(),
                &policy(
                    &format!("p{i}"),
                    &format!("kong-dp-{i}"),
                    &bucket,
                    &s3.endpoint,
                ),
            )
            .await
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let per = PODS / POLICIES;
    let mut tasks = Vec::new();
    for i in 0..PODS {
        let pods = pods.clone();
        let p = pod(&format!("dp-{i}"), &format!("kong-dp-{}", i / per));
        tasks.push(tokio::spawn(async move {
            pods.create(&PostParams::default(), &p).await.unwrap()
        }));
        if tasks.len() >= 32 {
            for t in tasks.drain(..) {
                t.await.unwrap();
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!("P4: {PODS} pods and {POLICIES} policies created; starting the operator");

    let env = kube().await;
    let start = Instant::now();
    let proc = Proc::start(
        &kfo_testenv::unique_name("kfo-p4"),
        std::path::Path::new(env!("CARGO_BIN_EXE_kong-fallback-operator")),
        &[
            "run".into(),
            "--identity".into(),
            "kfo-p4".into(),
            "--namespace".into(),
            ns.clone(),
            "--http-addr".into(),
            "127.0.0.1:0".into(),
        ],
        &[
            ("KUBECONFIG", &env.kubeconfig_path().display().to_string()),
            ("RUST_LOG", "warn"),
        ],
    )
    .unwrap();
    let catchup = loop {
        let list = policies.list(&Default::default()).await.unwrap();
        let current = list
            .items
            .iter()
            .filter(|p| {
                p.status.as_ref().is_some_and(|s| {
                    s.observed_generation == p.metadata.generation
                        && s.pods.as_ref().is_some_and(|c| c.importers as usize == per)
                })
            })
            .count();
        if current == POLICIES {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "not current after 10 min: {current}/{POLICIES}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", proc.pid())).unwrap();
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    println!(
        "bench: P4 pods={PODS} policies={POLICIES} rss_mb={:.1} catchup_s={:.2} target_rss_mb=150 target_catchup_s=5",
        hwm_kb / 1024.0,
        catchup.as_secs_f64()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only: Option<String> = std::env::args().skip(1).find(|a| a.starts_with('P'));
    let run = |id: &str| only.as_deref().is_none_or(|o| o == id);
    if run("P3") {
        rt.block_on(p3());
    }
    if run("P4") {
        rt.block_on(p4());
    }
}
