//! Webhook and controller-scale benchmarks (figures, not assertions). `make bench B=P3`.
//!
//! - P3: pod creates through the real apiserver at 100/s for 20 s, alternately in a
//!   namespace the operator's webhook selects and in one it does not (same apiserver, same
//!   seconds, the operator running for both), 3 repetitions; each figure is the median of
//!   the repetitions' with its spread. The overhead is the difference of the two create
//!   p99s. Server time is the webhook's own histogram (from a request's headers read to its
//!   answer encoded, body read included), with buckets 0.25 ms apart below 2 ms.
//! - P4: 5,000 pods and 200 policies in the apiserver, then an operator process starts:
//!   its peak RSS and the time until every policy's status is current (observed
//!   generation and pod counts); 3 repetitions (statuses and Leases cleared between), the
//!   median printed with the spread. From the operator's own log: when its caches were
//!   listed (`listed_s`), when the first status was written (`first_status_s`), how many
//!   reconciles ran and how many were deferred (pod cache still listing, Lease not held),
//!   and, of the reconciles that wrote a status, the median time of that write
//!   (`status_write_p50_ms`) and of the storage check before it (`storage_check_p50_ms`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kfo_testenv::{Proc, kube, minio};
use kong_fallback_operator::api::FallbackConfigPolicy;
use kong_fallback_operator::controller;
use kong_fallback_operator::webhook::registration;
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

#[path = "../tests/common/cluster.rs"]
mod cluster;

const RATE: u64 = 100;
const SECONDS: u64 = 20;

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

/// Creates pods at RATE per second for SECONDS, alternately in `hooked` (a namespace the
/// webhook selects) and `bare` (one it does not): the end-to-end create latencies (ms) of
/// each, measured in the same seconds against the same apiserver.
async fn drive(hooked: &Api<Pod>, bare: &Api<Pod>, prefix: &str) -> (Vec<f64>, Vec<f64>) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    let mut tasks = Vec::new();
    for i in 0..RATE * SECONDS {
        tick.tick().await;
        let (pods, with_hook) = if i % 2 == 0 {
            (hooked.clone(), true)
        } else {
            (bare.clone(), false)
        };
        let p = pod(&format!("{prefix}-{i}"), "kong-dp");
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            pods.create(&PostParams::default(), &p).await.unwrap();
            (with_hook, start.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            (true, ms) => with.push(ms),
            (false, ms) => without.push(ms),
        }
    }
    (with, without)
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

/// Repetitions of P3: figures are their median, with the spread.
const REPS: usize = 3;

/// The median of `figures` and their spread (largest - smallest).
fn median_spread(mut figures: Vec<f64>) -> (f64, f64) {
    figures.sort_by(f64::total_cmp);
    (
        figures[figures.len() / 2],
        figures[figures.len() - 1] - figures[0],
    )
}

/// The count of a Prometheus histogram in `text`.
fn histogram_count(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}_count")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The histogram `name` of `after` less that of `before`: one repetition's share.
fn histogram_since(before: &str, after: &str, name: &str) -> String {
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find(|l| l.rsplit_once(' ').is_some_and(|(s, _)| s == series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    after
        .lines()
        .filter(|l| {
            l.starts_with(&format!("{name}_bucket{{")) || l.starts_with(&format!("{name}_count"))
        })
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let v: f64 = v.parse().ok()?;
            Some(format!("{series} {}", v - value(before, series)))
        })
        .collect::<Vec<_>>()
        .join("\n")
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
    // NB: the same pods in a namespace with no policy: the webhook's namespaceSelector
    // leaves them out, so the apiserver creates them without calling it.
    let bare_ns = kube().await.namespace("bench-p3-bare").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let bare_pods: Api<Pod> = Api::namespaced(client.clone(), &bare_ns);

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
    let name = "kong_fallback_webhook_latency_seconds";
    let mut reps: Vec<[f64; 6]> = Vec::new();
    for rep in 0..REPS {
        let before = metrics.encode();
        let (mut hooked, mut bare) = drive(&pods, &bare_pods, &format!("r{rep}")).await;
        let after = metrics.encode();
        let served = histogram_since(&before, &after, name);
        assert!(
            histogram_count(&served, name) >= hooked.len() as f64,
            "every hooked pod went through the webhook: {served}"
        );
        let hooked_p99 = percentile(&mut hooked, 0.99);
        let bare_p99 = percentile(&mut bare, 0.99);
        reps.push([
            histogram_quantile(&served, name, 0.5),
            histogram_quantile(&served, name, 0.99),
            percentile(&mut hooked, 0.5),
            hooked_p99,
            percentile(&mut bare, 0.5),
            bare_p99,
        ]);
        // Each repetition starts from empty namespaces, as the first did.
        for api in [&pods, &bare_pods] {
            api.delete_collection(&DeleteParams::default(), &ListParams::default())
                .await
                .unwrap();
        }
    }
    let figure = |i: usize| median_spread(reps.iter().map(|r| r[i]).collect());
    let (server_p50, _) = figure(0);
    let (server_p99, server_spread) = figure(1);
    let (create_p50, _) = figure(2);
    let (create_p99, create_spread) = figure(3);
    let (bare_p50, _) = figure(4);
    let (bare_p99, bare_spread) = figure(5);
    let (overhead, overhead_spread) = median_spread(reps.iter().map(|r| r[3] - r[5]).collect());
    println!(
        "bench: P3 rate={RATE} seconds={SECONDS} reps={REPS} interleaved=1 server_p50_ms={server_p50:.3} server_p99_ms={server_p99:.3} server_p99_spread_ms={server_spread:.3} create_p50_ms={create_p50:.1} create_p99_ms={create_p99:.1} create_p99_spread_ms={create_spread:.1} bare_create_p50_ms={bare_p50:.1} bare_create_p99_ms={bare_p99:.1} bare_create_p99_spread_ms={bare_spread:.1} overhead_p99_ms={overhead:.1} overhead_p99_spread_ms={overhead_spread:.1} target_server_p99_ms=2 target_overhead_ms=10",
    );
    running.abort();
    let _ = Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
        client,
    )
    .delete(&configuration, &Default::default())
    .await;
}

/// What one P4 operator's log says the catch-up waited on (seconds from its start).
struct CatchUp {
    /// Until the pod and policy caches were listed ("caches synced; ready").
    listed: f64,
    /// Until the first status was written by a reconcile that found the policy leading.
    first_status: f64,
    /// Reconciles that ran during the catch-up (200 would be one each).
    reconciles: usize,
    /// Reconciles that found the pod cache still listing, or the policy not yet led.
    deferred: usize,
    /// Of the reconciles that wrote a status: the median of the status write's time (ms).
    status_write_ms: f64,
    /// Of the same: the median of the storage check's time (ms).
    storage_check_ms: f64,
}

/// Reads the operator's JSON log (timestamps against `started`, wall clock).
fn catch_up(log: &std::path::Path, started: jiff::Timestamp, until: f64) -> CatchUp {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut c = CatchUp {
        listed: f64::NAN,
        first_status: f64::NAN,
        reconciles: 0,
        deferred: 0,
        status_write_ms: f64::NAN,
        storage_check_ms: f64::NAN,
    };
    let (mut writes, mut checks) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(at) = v["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        let secs = at.duration_since(started).as_secs_f64();
        if secs > until {
            continue;
        }
        match v["message"].as_str().unwrap_or_default() {
            "caches synced; ready" => c.listed = secs,
            "reconciled" => {
                c.reconciles += 1;
                let ms = |key: &str| v[key].as_f64().unwrap_or(0.0);
                if ms("status_write_ms") > 0.0 {
                    writes.push(ms("status_write_ms"));
                    checks.push(ms("storage_check_ms"));
                }
                if c.first_status.is_nan() {
                    c.first_status = secs;
                }
            }
            m if m.starts_with("pod cache still listing") || m.starts_with("not leading") => {
                c.deferred += 1;
            }
            _ => {}
        }
    }
    if !writes.is_empty() {
        c.status_write_ms = percentile(&mut writes, 0.5);
        c.storage_check_ms = percentile(&mut checks, 0.5);
    }
    c
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
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    let mut reps = Vec::new();
    for rep in 0..REPS {
        if rep > 0 {
            // The previous operator's work undone: no status, no Lease (a new process
            // would otherwise wait out the dead one's leaseDuration).
            for i in 0..POLICIES {
                policies
                    .patch_status(
                        &format!("p{i}"),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": null})),
                    )
                    .await
                    .unwrap();
            }
            leases
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await
                .unwrap();
        }
        let started_wall = jiff::Timestamp::now();
        let start = Instant::now();
        let proc = Proc::start(
            &kfo_testenv::unique_name("kfo-p4"),
            std::path::Path::new(env!("CARGO_BIN_EXE_kong-fallback-operator")),
            &[
                "--log-format".into(),
                "json".into(),
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
                ("RUST_LOG", "info,kong_fallback_operator::controller=debug"),
            ],
        )
        .unwrap();
        // NB: watched, not listed in a loop: 200 policies listed ten times a second would
        // load the apiserver the operator is catching up with.
        let catchup = {
            use futures::StreamExt;
            use kube::runtime::{WatchStreamExt, watcher};
            let mut current = std::collections::BTreeSet::new();
            let mut events = std::pin::pin!(
                watcher(policies.clone(), watcher::Config::default()).applied_objects()
            );
            let deadline = Duration::from_secs(600);
            loop {
                let next =
                    tokio::time::timeout(deadline.saturating_sub(start.elapsed()), events.next())
                        .await
                        .unwrap_or_else(|_| {
                            panic!("not current after 10 min: {}/{POLICIES}", current.len())
                        })
                        .expect("the policy watch ended")
                        .unwrap();
                let done = next.status.as_ref().is_some_and(|s| {
                    s.observed_generation == next.metadata.generation
                        && s.pods.as_ref().is_some_and(|c| c.importers as usize == per)
                });
                let name = next.metadata.name.clone().unwrap_or_default();
                if done {
                    current.insert(name);
                } else {
                    current.remove(&name);
                }
                if current.len() == POLICIES {
                    break start.elapsed();
                }
            }
        };
        let status = std::fs::read_to_string(format!("/proc/{}/status", proc.pid())).unwrap();
        let hwm_kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap();
        let waited = catch_up(proc.log_path(), started_wall, catchup.as_secs_f64());
        reps.push((catchup.as_secs_f64(), hwm_kb / 1024.0, waited));
        drop(proc);
    }
    let figure =
        |f: &dyn Fn(&(f64, f64, CatchUp)) -> f64| median_spread(reps.iter().map(f).collect());
    let (catchup, catchup_spread) = figure(&|r| r.0);
    let (rss, _) = figure(&|r| r.1);
    let (listed, _) = figure(&|r| r.2.listed);
    let (first, _) = figure(&|r| r.2.first_status);
    let (reconciles, _) = figure(&|r| r.2.reconciles as f64);
    let (deferred, _) = figure(&|r| r.2.deferred as f64);
    let (write, _) = figure(&|r| r.2.status_write_ms);
    let (check, _) = figure(&|r| r.2.storage_check_ms);
    println!(
        "bench: P4 pods={PODS} policies={POLICIES} reps={REPS} rss_mb={rss:.1} catchup_s={catchup:.2} catchup_spread_s={catchup_spread:.2} listed_s={listed:.2} first_status_s={first:.2} reconciles={reconciles:.0} deferred={deferred:.0} status_write_p50_ms={write:.0} storage_check_p50_ms={check:.0} target_rss_mb=150 target_catchup_s=5"
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
