//! The fault suite: real faults injected into real components (Toxiproxy between the
//! operator and its peers, signals to their processes), with figures printed as
//! `fault: <ID> key=value ...` and checked against the goals of issue #12.
//!
//! `make test` runs a short form of each scenario (few rounds, short outages) so they stay
//! alive; `make faults` runs the full form (`KFO_FAULTS=full`) one scenario at a time and
//! prints every line. What each figure means is in the README ("Fault suite").
//!
//! The checks do not trust the operator's own reports where they can avoid it: what is
//! stored is read straight from MinIO (not through the proxy), in a versioned bucket.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kfo_testenv::{KongCp, MinioEnv, Mtls, Proxy, Stream, Toxic, kube, toxiproxy};
use kong_fallback_operator::api::FallbackConfigPolicy;
use kong_fallback_operator::kong::config::config_hashes;
use kube::CustomResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::cluster::condition;

/// Whether this is `make faults` (full rounds and outages) or the short form of `make test`.
fn full() -> bool {
    std::env::var("KFO_FAULTS").is_ok_and(|v| v == "full")
}

/// A configuration with one service named `name`, and Kong's hash of it.
fn config(name: &str) -> (String, String) {
    let table = format!(
        r#"{{"_format_version":"3.0","_transform":false,"services":[{{"id":"9748f662-7711-4a90-8186-dc02f10eb0f5","name":"{name}","host":"example.com","port":443}}]}}"#
    );
    let hash = config_hashes(&serde_json::from_str(&table).unwrap()).config;
    (table, hash)
}

/// The `config-hash` metadata of what `bucket` holds at `key`, read without the proxy.
async fn stored_hash(m: &MinioEnv, bucket: &str, key: &str) -> Option<String> {
    let o = m
        .root_client()
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .ok()?;
    o.metadata()?.get("config-hash").cloned()
}

/// One Operator-mode policy exporting 3.6.1.4 through `store_endpoint`, with the
/// controller running in this process.
struct Exporting {
    policies: Api<FallbackConfigPolicy>,
    running: tokio::task::JoinHandle<Result<(), kong_fallback_operator::controller::Error>>,
}

async fn exporting(
    ns_prefix: &str,
    m: &MinioEnv,
    bucket: &str,
    store_endpoint: &str,
    cp: &KongCp,
) -> Exporting {
    let env = kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let client = env.client().await.unwrap();
    let ns = env.namespace(ns_prefix).await.unwrap();
    let secret = |name: &str, data: serde_json::Value| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap()
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let creds = json!({"AWS_ACCESS_KEY_ID": m.root_user, "AWS_SECRET_ACCESS_KEY": m.root_password});
    for s in [
        secret(
            "kong-cluster-cert",
            json!({"tls.crt": cp.certs.cert_pem, "tls.key": cp.certs.key_pem}),
        ),
        secret("fallback-write", creds.clone()),
        secret("fallback-read", creds),
    ] {
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let policy = crate::cluster::policy(
        "prod",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {
                "url": format!("s3://{bucket}/kong"), "endpoint": store_endpoint, "region": "us-east-1",
                "readCredentials": {"secretName": "fallback-read"},
                "writeCredentials": {"secretName": "fallback-write"},
                "validationInterval": "10s"
            },
            "exporter": {
                "mode": "Operator", "versions": ["3.6.1.4"], "minInterval": "0s",
                "controlPlane": {"endpoint": cp.endpoint, "clusterCertSecret": "kong-cluster-cert"}
            }
        }),
    );
    let policies: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let running = crate::cluster::run_controller(&client, &ns, "kfo-fault-test");
    Exporting { policies, running }
}

/// R2's faults, each applied to the proxy (or the MinIO process) between the operator and
/// its store, and removed.
#[derive(Clone, Copy, Debug)]
enum StoreFault {
    /// Requests vanish and connections stay open.
    Blackhole,
    /// The store's process is gone (connections refused), then started again.
    Stopped,
    /// 2 s on every answer.
    Latency,
    /// Connections cut after 16 KiB of a request: mid-upload.
    ResetMidUpload,
}

impl StoreFault {
    fn name(self) -> &'static str {
        match self {
            StoreFault::Blackhole => "blackhole",
            StoreFault::Stopped => "stopped",
            StoreFault::Latency => "latency_2s",
            StoreFault::ResetMidUpload => "reset_mid_upload",
        }
    }

    /// Whether the operator should see this fault as a failure (2 s of latency is within
    /// every bound: it must export, late, without a failure).
    fn fails(self) -> bool {
        !matches!(self, StoreFault::Latency)
    }

    async fn apply(self, m: &MinioEnv, px: &Proxy) {
        match self {
            StoreFault::Blackhole => px
                .add("fault", Stream::Upstream, Toxic::Blackhole(Duration::ZERO))
                .await
                .unwrap(),
            StoreFault::Stopped => m.kill().await.unwrap(),
            StoreFault::Latency => px
                .add(
                    "fault",
                    Stream::Downstream,
                    Toxic::Latency(Duration::from_secs(2)),
                )
                .await
                .unwrap(),
            StoreFault::ResetMidUpload => px
                .add("fault", Stream::Upstream, Toxic::LimitData(16 << 10))
                .await
                .unwrap(),
        }
    }

    async fn remove(self, m: &MinioEnv, px: &Proxy) {
        match self {
            StoreFault::Stopped => m.start_again().await.unwrap(),
            StoreFault::Latency => px.remove("fault").await.unwrap(),
            // NB: connections the blackhole held stay half-open: cut them, as the network
            // coming back does not heal them either.
            StoreFault::Blackhole | StoreFault::ResetMidUpload => {
                px.remove("fault").await.unwrap();
                px.set_enabled(false).await.unwrap();
                px.set_enabled(true).await.unwrap();
            }
        }
    }
}

/// R2: storage that hangs, fails or slows down, and comes back. The operator must say so
/// (a condition with a reason) within one validation round or 30 s, and store the newest
/// configuration within 10 s of the store's return.
async fn r2(fault: StoreFault) {
    let outage = if full() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(12)
    };
    let m = MinioEnv::private("r2-minio").await.unwrap();
    let bucket = m.bucket("r2").await.unwrap();
    let px = toxiproxy()
        .await
        .proxy("r2", m.endpoint.trim_start_matches("http://"))
        .await
        .unwrap();
    let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    // NB: the push at the fault's start goes out at once: detect_s is the operator's time.
    cp.set_push_debounce(Duration::ZERO);
    let (first, first_hash) = config("before");
    cp.push(&first, &first_hash);
    let ex = exporting("fault-r2", &m, &bucket, &px.http(), &cp).await;
    let key = "kong/3.6.1.4/config.json";
    crate::wait::until("the first export, and Exporting=True", async || {
        (stored_hash(&m, &bucket, key).await? == first_hash).then_some(())?;
        let p = ex.policies.get("prod").await.ok()?;
        (condition(&p, "Exporting")?.0 == "True").then_some(())
    })
    .await;

    fault.apply(&m, &px).await;
    let started = Instant::now();
    // NB: 1 MB, so that the reset case cuts the upload in its middle.
    let (during, during_hash) = config_sized(1_000_000, 7);
    cp.push(&during, &during_hash);
    let mut detected: Option<(Duration, String)> = None;
    while started.elapsed() < outage {
        if detected.is_none()
            && let Ok(p) = ex.policies.get("prod").await
        {
            for t in ["Exporting", "StorageReachable"] {
                if let Some((status, reason, _)) = condition(&p, t)
                    && status == "False"
                {
                    detected = Some((started.elapsed(), format!("{t}/{reason}")));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    fault.remove(&m, &px).await;
    let back = Instant::now();
    crate::wait::until(
        "the newest configuration stored after the fault",
        async || (stored_hash(&m, &bucket, key).await? == during_hash).then_some(()),
    )
    .await;
    let recover = back.elapsed();
    let body = m
        .root_client()
        .get_object()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let matches = body[..] == *during.as_bytes();
    let detect = detected.as_ref().map_or("none".to_owned(), |(d, _)| {
        format!("{:.1}", d.as_secs_f64())
    });
    let reason = detected.as_ref().map_or("none", |(_, r)| r.as_str());
    println!(
        "fault: R2 case={} outage_s={} detect_s={detect} reason={reason} recover_s={:.1} final_matches_cp={}",
        fault.name(),
        outage.as_secs(),
        recover.as_secs_f64(),
        u8::from(matches)
    );
    ex.running.abort();
    assert!(matches, "the stored configuration is the newest one pushed");
    if fault.fails() {
        let (d, _) = detected.expect("the outage was reported by a condition");
        // NB: the goal is one validation round (10 s here) or 30 s, whichever is less;
        // 2 s more for the status write and this poll.
        assert!(
            d <= Duration::from_secs(12),
            "detected after {d:?}: later than one validation round (10 s)"
        );
    } else {
        assert!(
            detected.is_none(),
            "2 s of latency is within every bound, yet: {detected:?}"
        );
    }
    assert!(
        recover <= Duration::from_secs(10),
        "recovered {recover:?} after the store came back"
    );
}

#[tokio::test]
async fn r2_a_blackholed_store_is_reported_and_the_newest_config_lands_after() {
    r2(StoreFault::Blackhole).await;
}

#[tokio::test]
async fn r2_a_stopped_store_is_reported_and_the_newest_config_lands_after() {
    r2(StoreFault::Stopped).await;
}

#[tokio::test]
async fn r2_a_slow_store_is_waited_for_without_a_failure() {
    r2(StoreFault::Latency).await;
}

#[tokio::test]
async fn r2_a_connection_reset_mid_upload_is_reported_and_retried() {
    r2(StoreFault::ResetMidUpload).await;
}

/// The peak resident memory of process `pid` in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// R3's faults of the control plane, as one operator replica sees them through a proxy.
#[derive(Clone, Copy, Debug)]
enum CpFault {
    /// Every session cut, refused for 2 s, then accepted again (a CP restart).
    Restarted,
    /// Refused for a whole outage.
    Down,
    /// A frame that is not gzip.
    Garbage,
    /// A small frame that inflates past the operator's bound.
    GzipBomb,
    /// A frame over the websocket's frame limit.
    OverLimit,
    /// TCP accepted, and nothing answered: the TLS handshake never ends.
    SilentTls,
}

impl CpFault {
    fn name(self) -> &'static str {
        match self {
            CpFault::Restarted => "restarted",
            CpFault::Down => "down",
            CpFault::Garbage => "garbage_frame",
            CpFault::GzipBomb => "gzip_bomb",
            CpFault::OverLimit => "frame_over_limit",
            CpFault::SilentTls => "silent_tls",
        }
    }
}

/// R3: the control plane restarts, goes away, or sends what no CP should. The last good
/// configuration stays stored, the operator does not crash, and the first good
/// configuration after the fault is stored.
async fn r3(fault: CpFault) {
    use crate::fleet::{Fleet, Options, Timings};
    let outage = match (fault, full()) {
        (CpFault::Down, true) => Duration::from_secs(60),
        (CpFault::Down | CpFault::SilentTls, _) => Duration::from_secs(10),
        (CpFault::Restarted, _) => Duration::from_secs(2),
        _ => Duration::from_secs(5),
    };
    let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    let px = toxiproxy()
        .await
        .proxy("r3-cp", &cp.endpoint)
        .await
        .unwrap();
    let mut fleet = Fleet::with(
        "fault-r3",
        Timings {
            lease: 6,
            renew: 4,
            retry: 1,
        },
        Options {
            cp: Some(cp),
            cp_endpoint: Some(px.listen.clone()),
            ..Options::default()
        },
    )
    .await;
    let op = fleet.start("r3-0");
    let good = fleet.push();
    fleet
        .wait_stored(&good, Duration::from_secs(60))
        .await
        .expect("the first configuration stored");

    match fault {
        CpFault::Restarted | CpFault::Down => px.set_enabled(false).await.unwrap(),
        CpFault::SilentTls => {
            px.add(
                "fault",
                Stream::Downstream,
                Toxic::Blackhole(Duration::ZERO),
            )
            .await
            .unwrap();
            // Cut the live session: the reconnection meets the silent CP.
            px.set_enabled(false).await.unwrap();
            px.set_enabled(true).await.unwrap();
        }
        CpFault::Garbage => fleet
            .cp
            .push_frame(b"this is not a reconfigure frame".to_vec()),
        CpFault::GzipBomb => {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..96 {
                gz.write_all(&zeros).unwrap();
            }
            fleet.cp.push_frame(gz.finish().unwrap());
        }
        CpFault::OverLimit => {
            // 17 MiB that do not compress, over the 16 MiB frame limit.
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let junk: Vec<u8> = (0..17 << 20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            fleet.cp.push_frame(junk);
        }
    }
    tokio::time::sleep(outage).await;
    op.proc
        .check_alive()
        .unwrap_or_else(|e| panic!("the operator crashed during {}: {e}", fault.name()));
    let kept = fleet.stored().await.map(|s| s.0);
    match fault {
        CpFault::Restarted | CpFault::Down => px.set_enabled(true).await.unwrap(),
        CpFault::SilentTls => px.remove("fault").await.unwrap(),
        _ => {}
    }
    let back = Instant::now();
    let next = fleet.push();
    let stored = fleet.wait_stored(&next, Duration::from_secs(60)).await;
    let reconnect = back.elapsed();
    let crashed = op.proc.check_alive().is_err();
    let peak = peak_rss_mib(op.proc.pid());
    println!(
        "fault: R3 case={} outage_s={} last_good_kept={} crashed={} peak_rss_mb={peak:.0} reconnect_s={:.1}",
        fault.name(),
        outage.as_secs(),
        u8::from(kept.as_deref() == Some(good.as_str())),
        u8::from(crashed),
        reconnect.as_secs_f64()
    );
    assert_eq!(
        kept.as_deref(),
        Some(good.as_str()),
        "the last good config stayed"
    );
    assert!(!crashed, "the operator crashed: {}", op.proc.log_tail(20));
    assert!(
        stored.is_some(),
        "the first good configuration after the fault was stored; operator log:\n{}",
        op.proc.log_tail(30)
    );
    // NB: the goal is 10 s from the fault's end; 1 s more for the session and the write.
    assert!(
        reconnect <= Duration::from_secs(11),
        "the next configuration stored {reconnect:?} after the control plane came back"
    );
}

#[tokio::test]
async fn r3_a_restarted_control_plane_is_reconnected() {
    r3(CpFault::Restarted).await;
}

#[tokio::test]
async fn r3_a_control_plane_down_for_an_outage_is_reconnected() {
    r3(CpFault::Down).await;
}

#[tokio::test]
async fn r3_a_garbage_frame_keeps_the_last_good_config() {
    r3(CpFault::Garbage).await;
}

#[tokio::test]
async fn r3_a_gzip_bomb_keeps_the_last_good_config_and_bounded_memory() {
    r3(CpFault::GzipBomb).await;
}

#[tokio::test]
async fn r3_a_frame_over_the_limit_keeps_the_last_good_config() {
    r3(CpFault::OverLimit).await;
}

#[tokio::test]
async fn r3_a_control_plane_that_never_answers_tls_is_survived() {
    r3(CpFault::SilentTls).await;
}

/// What a versioned bucket's history of one key shows, checked against what was pushed.
#[derive(Debug, Default, PartialEq)]
struct History {
    versions: usize,
    /// A version that does not parse, is not a configuration the CP pushed, or lacks a
    /// fencing epoch.
    corrupt: usize,
    /// A version holding a configuration pushed before one already stored.
    older_over_newer: usize,
    /// A version whose fencing epoch is lower than the one stored before it: two writers
    /// interleaved.
    dual_writer_windows: usize,
}

/// Checks every stored version of a key, oldest first: `pushed` lists the configurations
/// in the order the CP pushed them, as (hash, table).
fn check_history(versions: &[kfo_testenv::StoredVersion], pushed: &[(String, String)]) -> History {
    use kong_fallback_operator::export::runner::{META_CONFIG_HASH, META_EPOCH};
    let mut h = History {
        versions: versions.len(),
        ..History::default()
    };
    let (mut newest_push, mut last_epoch) = (None::<usize>, None::<u64>);
    for v in versions {
        let index = pushed
            .iter()
            .position(|(_, table)| table.as_bytes() == v.body);
        let epoch = v
            .metadata
            .get(META_EPOCH)
            .and_then(|e| e.parse::<u64>().ok());
        let parses = serde_json::from_slice::<serde_json::Value>(&v.body).is_ok();
        let hash_ok = index.is_some_and(|i| v.metadata.get(META_CONFIG_HASH) == Some(&pushed[i].0));
        let (Some(index), Some(epoch), true, true) = (index, epoch, parses, hash_ok) else {
            h.corrupt += 1;
            continue;
        };
        if newest_push.is_some_and(|n| index < n) {
            h.older_over_newer += 1;
        }
        if last_epoch.is_some_and(|e| epoch < e) {
            h.dual_writer_windows += 1;
        }
        newest_push = Some(newest_push.map_or(index, |n| n.max(index)));
        last_epoch = Some(last_epoch.map_or(epoch, |e| e.max(epoch)));
    }
    h
}

#[test]
fn the_history_checker_counts_what_it_claims() {
    use kong_fallback_operator::export::runner::{META_CONFIG_HASH, META_EPOCH};
    let pushed: Vec<(String, String)> = (0..3)
        .map(|i| config(&format!("c{i}")))
        .map(|(t, h)| (h, t))
        .collect();
    let version = |i: usize, epoch: &str| kfo_testenv::StoredVersion {
        version_id: String::new(),
        modified: (0, 0),
        body: pushed[i].1.clone().into_bytes(),
        metadata: [
            (META_CONFIG_HASH.to_owned(), pushed[i].0.clone()),
            (META_EPOCH.to_owned(), epoch.to_owned()),
        ]
        .into(),
        etag: String::new(),
    };
    let clean = [version(0, "1"), version(1, "1"), version(2, "2")];
    assert_eq!(check_history(&clean, &pushed).older_over_newer, 0);
    let bad = [
        version(0, "1"),
        version(2, "2"),
        version(1, "1"),
        version(1, "x"),
    ];
    let h = check_history(&bad, &pushed);
    assert_eq!(
        (h.corrupt, h.older_over_newer, h.dual_writer_windows),
        (1, 1, 1),
        "{h:?}"
    );
    let mut garbage = version(0, "1");
    garbage.body = b"{not json".to_vec();
    assert_eq!(check_history(&[garbage], &pushed).corrupt, 1);
}

/// How the leader is stopped in R1.
#[derive(Clone, Copy, Debug)]
enum Death {
    /// SIGKILL: gone at once.
    Kill,
    /// SIGSTOP, then SIGCONT once another replica has taken over: a paused writer that
    /// wakes up with a write in flight.
    Pause,
}

/// R1: the leader dies (or freezes) in the middle of a PUT, round after round, with three
/// replicas; a versioned bucket keeps every write for the checker.
async fn r1(death: Death, bytes: usize) {
    use crate::fleet::{Fleet, Options, Timings};
    // NB: a 12 MB round takes six seconds of upload and a takeover: fewer of them.
    let rounds = match (full(), bytes > 1_000_000) {
        (true, false) => 50,
        (true, true) => 10,
        (false, _) => 3,
    };
    let m: &'static MinioEnv = Box::leak(Box::new(MinioEnv::private("r1-minio").await.unwrap()));
    let px = toxiproxy()
        .await
        .proxy("r1-s3", m.endpoint.trim_start_matches("http://"))
        .await
        .unwrap();
    // NB: 2 MiB/s: a 1 MB PUT takes about half a second, so the kill lands inside it.
    px.add("slow-put", Stream::Upstream, Toxic::Bandwidth(2048))
        .await
        .unwrap();
    let timings = Timings {
        lease: 4,
        renew: 3,
        retry: 1,
    };
    let fleet = Fleet::with(
        "fault-r1",
        timings,
        Options {
            s3: Some(m),
            store_endpoint: Some(px.http()),
            ..Options::default()
        },
    )
    .await;
    m.enable_versioning(&fleet.bucket).await.unwrap();
    let mut ops: Vec<crate::fleet::Operator> =
        (0..3).map(|i| fleet.start(&format!("r1-{i}"))).collect();
    let mut started = 3;
    let mut gone = Vec::new();
    let mut pushed: Vec<(String, String)> = Vec::new();
    let mut takeovers = Vec::new();
    // NB: rounds whose leader was staging the write when it died (large configurations).
    let mut staged_at_death = 0;
    for round in 0..rounds {
        // NB: off the runtime: hashing 12 MB in a test build takes seconds, and the CP
        // double runs on this runtime too.
        let (table, hash) = tokio::task::spawn_blocking(move || config_sized(bytes, round as u64))
            .await
            .unwrap();
        // NB: a leader killed just after its write ended holds the Lease until it expires.
        let until = Instant::now() + Duration::from_secs(30);
        let i = loop {
            let leader = fleet
                .wait_leader(Duration::from_secs(30))
                .await
                .expect("a leader");
            if let Some(i) = ops.iter().position(|o| o.name == leader) {
                break i;
            }
            assert!(
                Instant::now() < until,
                "the Lease stayed with {leader}, gone"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        fleet.cp.push(&table, &hash);
        pushed.push((hash.clone(), table));
        // Inside the write: after the decode, before the upload ends (1 MB: half a
        // second; 12 MB: about three, its parts going at once, each connection slowed on
        // its own). NB: a large configuration dies as soon as its
        // leader says it is staging it (a fixed 1.5 s missed that on a slow machine), or at
        // 3 s if it never does (no staging yet: a plain PUT, still under way).
        let staging = || {
            std::fs::read_to_string(ops[i].proc.log_path())
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("staging a large configuration") && l.contains(&hash))
        };
        if bytes > 1_000_000 {
            let until = Instant::now() + Duration::from_secs(3);
            while !staging() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let dead = Instant::now();
        match death {
            Death::Kill => ops[i].proc.signal("KILL").unwrap(),
            Death::Pause => ops[i].proc.signal("STOP").unwrap(),
        }
        // NB: a kill that came after the write's commit is no death inside it.
        let written = fleet.stored().await.is_some_and(|s| s.0 == hash);
        staged_at_death += usize::from(staging() && !written);
        let stored = fleet.wait_stored(&hash, Duration::from_secs(60)).await;
        takeovers.push(dead.elapsed());
        assert!(
            stored.is_some(),
            "round {round}: the config was stored after the leader died"
        );
        match death {
            Death::Kill => {
                gone.push(ops.remove(i));
                started += 1;
                ops.push(fleet.start(&format!("r1-{started}")));
            }
            // The paused leader wakes with its write in flight: fencing must stop it.
            Death::Pause => ops[i].proc.signal("CONT").unwrap(),
        }
    }
    // Let woken writers finish whatever they still try.
    tokio::time::sleep(Duration::from_secs(u64::from(timings.lease as u32) + 2)).await;
    let key = format!("kong/{}/config.json", crate::fleet::VERSION);
    let versions = m.versions(&fleet.bucket, &key).await.unwrap();
    let h = check_history(&versions, &pushed);
    takeovers.sort();
    let p99 = takeovers[((takeovers.len() as f64 - 1.0) * 0.99).round() as usize];
    let label = match death {
        Death::Kill => "sigkill",
        Death::Pause => "sigstop",
    };
    let staged = versions.iter().filter(|v| v.etag.contains('-')).count();
    println!(
        "fault: R1 case={label} size_mb={} rounds={rounds} staged_at_death={staged_at_death} staged_versions={staged} versions={} corrupt={} older_over_newer={} dual_writer_windows={} takeover_max_s={:.2} takeover_p99_s={:.2}",
        bytes / 1_000_000,
        h.versions,
        h.corrupt,
        h.older_over_newer,
        h.dual_writer_windows,
        takeovers.last().unwrap().as_secs_f64(),
        p99.as_secs_f64()
    );
    // R6: no secret value in what the run wrote: every replica's log, the Events and the
    // policy's status.
    let secrets = [
        m.root_password.as_str(),
        fleet.cp.certs.key_pem.lines().nth(1).unwrap_or("-"),
    ];
    let mut places: Vec<(String, String)> = ops
        .iter()
        .chain(&gone)
        .map(|o| {
            (
                o.proc.log_path().display().to_string(),
                std::fs::read_to_string(o.proc.log_path()).unwrap_or_default(),
            )
        })
        .collect();
    let events =
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(fleet.client.clone(), &fleet.ns)
            .list(&Default::default())
            .await
            .unwrap();
    for e in events.items {
        places.push(("event".into(), serde_json::to_string(&e).unwrap()));
    }
    let policy = Api::<FallbackConfigPolicy>::namespaced(fleet.client.clone(), &fleet.ns)
        .get("prod")
        .await
        .unwrap();
    places.push((
        "status".into(),
        serde_json::to_string(&policy.status).unwrap(),
    ));
    let leaks: Vec<&str> = places
        .iter()
        .filter(|(_, text)| secrets.iter().any(|s| text.contains(s)))
        .map(|(place, _)| place.as_str())
        .collect();
    println!(
        "fault: R6 case={label} places_checked={} leaks={}",
        places.len(),
        leaks.len()
    );
    assert_eq!(
        (h.corrupt, h.older_over_newer, h.dual_writer_windows),
        (0, 0, 0),
        "{h:?}"
    );
    assert!(h.versions >= rounds, "{h:?}");
    assert!(leaks.is_empty(), "a secret value in {leaks:?}");
    if bytes > 1_000_000 {
        // NB: from the third round on, the leader took over a large stored configuration
        // and had its store checked: it dies inside a staged write.
        assert!(staged_at_death >= 1, "no leader died while staging a write");
    }
}

/// A configuration of about `bytes` bytes and Kong's hash of it.
fn config_sized(bytes: usize, seed: u64) -> (String, String) {
    let table = kfo_testenv::configs::config_table(bytes, 1000 + seed);
    let hash = config_hashes(&serde_json::from_str(&table).unwrap()).config;
    (table, hash)
}

#[tokio::test]
async fn r1_a_leader_killed_mid_put_loses_nothing_and_never_goes_back() {
    r1(Death::Kill, 1_000_000).await;
}

#[tokio::test]
async fn r1_a_leader_paused_mid_put_is_fenced_when_it_wakes() {
    r1(Death::Pause, 1_000_000).await;
}

/// R1 with configurations large enough to be staged (a multipart upload committed only
/// after the checks): the leader dies inside the staged write.
#[tokio::test]
async fn r1_a_leader_killed_mid_staged_write_loses_nothing_and_never_goes_back() {
    r1(Death::Kill, 12_000_000).await;
}

#[tokio::test]
async fn r1_a_leader_paused_mid_staged_write_is_fenced_when_it_wakes() {
    r1(Death::Pause, 12_000_000).await;
}

/// R7's ways for the operator to be absent or wrong while Kong pods are created.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Absent {
    /// Every replica SIGKILLed: the webhook refuses connections.
    AllReplicasKilled,
    /// The registration points at a Service without endpoints (replicas gone).
    NoEndpoints,
    /// The read Secret the injection references is deleted.
    ReadSecretDeleted,
    /// A chart re-apply puts the inert registration back.
    RegistrationOverwritten,
}

impl Absent {
    fn name(self) -> &'static str {
        match self {
            Absent::AllReplicasKilled => "all_replicas_killed",
            Absent::NoEndpoints => "service_without_endpoints",
            Absent::ReadSecretDeleted => "read_secret_deleted",
            Absent::RegistrationOverwritten => "registration_overwritten",
        }
    }
}

/// Whether `pod` references a Secret key that does not exist without `optional: true`:
/// the kubelet would never start it (`CreateContainerConfigError`).
async fn references_missing_secret(
    secrets: &Api<Secret>,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> bool {
    let spec = pod.spec.as_ref().unwrap();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for e in c.env.iter().flatten() {
            let Some(r) = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
            else {
                continue;
            };
            if r.optional == Some(true) {
                continue;
            }
            let present = secrets
                .get_opt(&r.name)
                .await
                .unwrap()
                .and_then(|s| s.data)
                .is_some_and(|d| d.contains_key(&r.key));
            if !present {
                return true;
            }
        }
    }
    false
}

/// R7: the operator never blocks a Kong pod. Pods are created at 5/s while the operator is
/// absent or wrong in `absent`'s way; with `failurePolicy: Ignore` none may be refused or
/// reference a missing Secret key. Returns (attempted, created, blocked).
async fn r7(absent: Absent, failure_policy: &str) -> (usize, usize, usize) {
    use crate::fleet::{Fleet, Timings};
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::Pod;
    let fleet = Fleet::new(
        "fault-r7",
        Timings {
            lease: 6,
            renew: 4,
            retry: 1,
        },
    )
    .await;
    let configuration = kfo_testenv::unique_name("kfo-r7");
    let (op, _) = fleet
        .start_with_webhook("r7-0", &configuration, failure_policy)
        .await;
    let pods: Api<Pod> = Api::namespaced(fleet.client.clone(), &fleet.ns);
    let secrets: Api<Secret> = Api::namespaced(fleet.client.clone(), &fleet.ns);
    let template = crate::cluster::kong_dp_template();
    let pod = |name: String| -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"app": "kong-dp"}},
            "spec": template["spec"]}),
        )
        .unwrap()
    };
    // Injection works before the fault.
    let mut n = 0;
    crate::wait::until("a pod injected before the fault", async || {
        n += 1;
        let p = pods
            .create(&PostParams::default(), &pod(format!("before-{n}")))
            .await
            .ok()?;
        p.metadata
            .annotations?
            .contains_key(kong_fallback_operator::inject::ANNOTATION)
            .then_some(())
    })
    .await;
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(fleet.client.clone());
    match absent {
        Absent::AllReplicasKilled => op.proc.signal("KILL").unwrap(),
        Absent::NoEndpoints => {
            op.proc.signal("KILL").unwrap();
            let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
                "metadata": {"name": "kfo-webhook-none"},
                "spec": {"ports": [{"port": 443, "targetPort": 9443}]}
            }))
            .unwrap();
            Api::namespaced(fleet.client.clone(), &fleet.ns)
                .create(&PostParams::default(), &svc)
                .await
                .unwrap();
            let mut c = mwcs.get(&configuration).await.unwrap();
            let w = &mut c.webhooks.as_mut().unwrap()[0];
            w.client_config.url = None;
            w.client_config.service = Some(
                k8s_openapi::api::admissionregistration::v1::ServiceReference {
                    namespace: fleet.ns.clone(),
                    name: "kfo-webhook-none".into(),
                    port: Some(443),
                    path: Some("/mutate".into()),
                },
            );
            mwcs.replace(&configuration, &PostParams::default(), &c)
                .await
                .unwrap();
        }
        Absent::ReadSecretDeleted => secrets
            .delete("fallback-read", &Default::default())
            .await
            .map(|_| ())
            .unwrap(),
        Absent::RegistrationOverwritten => {
            // The chart's inert rendering, as a chart re-apply writes it.
            let mut c = mwcs.get(&configuration).await.unwrap();
            let w = &mut c.webhooks.as_mut().unwrap()[0];
            w.match_conditions = Some(vec![
                k8s_openapi::api::admissionregistration::v1::MatchCondition {
                    name: "kong-fallback-operator-policies".into(),
                    expression: "false".into(),
                },
            ]);
            w.client_config.ca_bundle = None;
            mwcs.replace(&configuration, &PostParams::default(), &c)
                .await
                .unwrap();
        }
    }
    let seconds = if full() { 20 } else { 4 };
    let (mut attempted, mut created, mut blocked) = (0, 0, 0);
    let mut names = Vec::new();
    let start = Instant::now();
    for i in 0..seconds * 5 {
        let due = start + Duration::from_millis(200 * i as u64);
        tokio::time::sleep_until(due.into()).await;
        attempted += 1;
        match pods
            .create(&PostParams::default(), &pod(format!("during-{i}")))
            .await
        {
            Ok(p) => {
                created += 1;
                names.push(p);
            }
            Err(_) => blocked += 1,
        }
    }
    for p in &names {
        if references_missing_secret(&secrets, p).await {
            blocked += 1;
        }
    }
    let _ = mwcs.delete(&configuration, &Default::default()).await;
    (attempted, created, blocked)
}

async fn r7_case(absent: Absent) {
    let (pods, created, blocked) = r7(absent, "ignore").await;
    let with_fail = if matches!(absent, Absent::AllReplicasKilled) {
        let (_, _, b) = r7(absent, "fail").await;
        format!(" blocked_with_fail={b}")
    } else {
        String::new()
    };
    println!(
        "fault: R7 case={} pods={pods} created={created} blocked={blocked}{with_fail}",
        absent.name()
    );
    assert_eq!(
        blocked, 0,
        "a Kong pod was blocked with failurePolicy Ignore"
    );
    assert_eq!(created, pods);
}

#[tokio::test]
async fn r7_killed_replicas_never_block_a_kong_pod() {
    r7_case(Absent::AllReplicasKilled).await;
}

#[tokio::test]
async fn r7_a_webhook_service_without_endpoints_never_blocks_a_kong_pod() {
    r7_case(Absent::NoEndpoints).await;
}

#[tokio::test]
async fn r7_a_deleted_read_secret_never_blocks_a_kong_pod() {
    r7_case(Absent::ReadSecretDeleted).await;
}

#[tokio::test]
async fn r7_an_overwritten_registration_never_blocks_a_kong_pod() {
    r7_case(Absent::RegistrationOverwritten).await;
}

/// R5's base: a working policy of `mode` with its own prefix and selector (`i`), so that
/// what a mutation breaks is the only thing wrong.
fn good_spec(mode: &str, i: usize, fleet: &crate::fleet::Fleet) -> serde_json::Value {
    let mut s = json!({
        "dataPlanes": {"selector": {"matchLabels": {"app": format!("kong-dp-{i}")}}},
        "storage": {"url": format!("s3://{}/r5-{i}", fleet.bucket), "region": "us-east-1",
                    "endpoint": fleet.s3.endpoint,
                    "readCredentials": {"secretName": "good-read"},
                    "writeCredentials": {"secretName": "fallback-write"}},
        "exporter": {"mode": mode, "versions": ["3.6.1.4"], "minInterval": "0s",
                     "controlPlane": {"endpoint": fleet.cp.endpoint, "clusterCertSecret": "kong-cluster-cert"}}
    });
    if mode == "BackupPods" {
        s["backup"] = json!({"selector": {"matchLabels": {"app": format!("kong-backup-{i}")}}});
    }
    if mode == "None" {
        s["storage"]
            .as_object_mut()
            .unwrap()
            .remove("writeCredentials");
        s["exporter"]
            .as_object_mut()
            .unwrap()
            .remove("controlPlane");
        s["exporter"].as_object_mut().unwrap().remove("minInterval");
    }
    s
}

/// R5's mutations: (what, JSON pointer, value); each breaks one thing of a good spec.
fn mutations() -> Vec<(&'static str, &'static str, serde_json::Value)> {
    vec![
        ("url", "/storage/url", json!("s3://bucket")),
        ("url", "/storage/url", json!("s3://bucket/")),
        ("url", "/storage/url", json!("s3://b/a/../c")),
        ("url", "/storage/url", json!("s3://b/%41")),
        ("url", "/storage/url", json!("s3://b/p;x=1")),
        ("url", "/storage/url", json!("http://b/p")),
        ("url", "/storage/url", json!("gcs://UPPER/p")),
        ("url", "/storage/url", json!("")),
        ("url", "/storage/url", json!("s3://b/p q")),
        ("url", "/storage/url", json!(42)),
        ("url", "/storage/url", json!("s3://no-such-bucket-r5/p")),
        ("region", "/storage/region", json!("")),
        ("endpoint", "/storage/endpoint", json!("not a url")),
        ("endpoint", "/storage/endpoint", json!("http://127.0.0.1:9")),
        ("selector", "/dataPlanes/selector", json!({})),
        (
            "selector",
            "/dataPlanes/selector/matchLabels",
            json!({"app": "a'b"}),
        ),
        (
            "selector",
            "/dataPlanes/selector/matchLabels",
            json!({"-bad": "x"}),
        ),
        (
            "selector",
            "/dataPlanes/selector/matchLabels",
            json!({"app": "x".repeat(64)}),
        ),
        (
            "selector",
            "/dataPlanes/selector/matchLabels",
            json!({"a/b/c": "x"}),
        ),
        (
            "selector",
            "/dataPlanes/selector/matchLabels",
            json!({"app": "x y"}),
        ),
        (
            "selector",
            "/dataPlanes/selector/matchExpressions",
            json!([{"key": "app", "operator": "Near", "values": ["x"]}]),
        ),
        (
            "selector",
            "/dataPlanes/selector/matchExpressions",
            json!([{"key": "app", "operator": "In", "values": []}]),
        ),
        (
            "selector",
            "/dataPlanes/selector/matchExpressions",
            json!([{"key": "app", "operator": "Exists", "values": ["x"]}]),
        ),
        ("duration", "/exporter/minInterval", json!("10")),
        ("duration", "/exporter/minInterval", json!("-1s")),
        ("duration", "/exporter/minInterval", json!("1y")),
        ("duration", "/storage/validationInterval", json!("soon")),
        ("duration", "/storage/validationInterval", json!("-5m")),
        (
            "election",
            "/election",
            json!({"leaseDuration": "5s", "renewDeadline": "10s", "retryPeriod": "2s"}),
        ),
        (
            "election",
            "/election",
            json!({"leaseDuration": "15s", "renewDeadline": "10s", "retryPeriod": "20s"}),
        ),
        ("election", "/election", json!({"leaseDuration": "0s"})),
        ("version", "/exporter/versions", json!(["3.6"])),
        ("version", "/exporter/versions", json!(["latest"])),
        ("version", "/exporter/versions", json!([])),
        (
            "version",
            "/exporter/versions",
            json!(["3.6.1.4", "3.6.1.4"]),
        ),
        ("size", "/exporter/maxConfigSize", json!("2Gi")),
        ("size", "/exporter/maxConfigSize", json!("-1")),
        ("size", "/exporter/maxConfigSize", json!("lots")),
        (
            "secret",
            "/storage/readCredentials/secretName",
            json!("does-not-exist"),
        ),
        (
            "secret",
            "/storage/writeCredentials/secretName",
            json!("does-not-exist"),
        ),
        (
            "secret",
            "/storage/readCredentials/secretName",
            json!("other-ns/fallback-read"),
        ),
        (
            "secret",
            "/storage/readCredentials/secretName",
            json!("wrong-shape"),
        ),
        (
            "secret",
            "/storage/writeCredentials/secretName",
            json!("wrong-shape"),
        ),
        (
            "secret",
            "/storage/readCredentials/secretName",
            json!("fallback-read"),
        ),
        (
            "secret",
            "/exporter/controlPlane/clusterCertSecret",
            json!("does-not-exist"),
        ),
        (
            "secret",
            "/exporter/controlPlane/clusterCertSecret",
            json!("wrong-shape"),
        ),
        ("credentials", "/storage/writeCredentials", json!({})),
        (
            "credentials",
            "/storage/readCredentials",
            json!({"secretName": "good-read", "ambient": true}),
        ),
        (
            "credentials",
            "/storage/writeCredentials",
            json!({"ambient": true}),
        ),
        ("cp", "/exporter/controlPlane/endpoint", json!("no-port")),
        ("cp", "/exporter/controlPlane/endpoint", json!("")),
        (
            "cp",
            "/exporter/controlPlane/endpoint",
            json!("127.0.0.1:9"),
        ),
        ("mode", "/exporter/mode", json!("Sometimes")),
        ("backup", "/backup", json!({"selector": {}})),
        (
            "overlap",
            "/dataPlanes/selector/matchLabels",
            json!({"app": "kong-dp-shared"}),
        ),
        ("history", "/exporter/historyLimit", json!(-3)),
        ("history", "/exporter/historyLimit", json!("three")),
        ("filters", "/exporter/wasmFilters", json!([""])),
        ("standby", "/exporter/standby", json!("Lukewarm")),
        ("rollout", "/dataPlanes/rollout", json!("yes")),
        ("payload", "/exporter/controlPlane/maxPayload", json!("1Ki")),
        (
            "payload",
            "/exporter/controlPlane/maxPayload",
            json!("huge"),
        ),
        ("mtls", "/exporter/controlPlane/mtls", json!("maybe")),
        (
            "sse",
            "/storage/putOptions/serverSideEncryption",
            json!("rot13"),
        ),
        ("sse", "/storage/putOptions/kmsKeyId", json!("alias/x")),
        ("images", "/dataPlanes/imageRepositories", json!([""])),
        ("images", "/dataPlanes/imageRepositories", json!("kong")),
        ("url", "/storage/url", json!("s3://b//p")),
        ("url", "/storage/url", json!("gcs://b")),
        ("url", "/storage/url", json!("s3://b/./p")),
        ("url", "/storage/url", json!("s3://b/p%2F")),
        ("url", "/storage/url", json!("s3://b/p\\q")),
        (
            "selector",
            "/dataPlanes/selector/matchLabels",
            json!({"": "x"}),
        ),
        (
            "selector",
            "/dataPlanes/selector/matchLabels",
            json!({"app": "-x"}),
        ),
        (
            "selector",
            "/dataPlanes/selector/matchLabels",
            json!({"APP/b": "x"}),
        ),
        (
            "selector",
            "/dataPlanes/selector/matchExpressions",
            json!([{"key": "a'b", "operator": "Exists"}]),
        ),
        ("duration", "/storage/validationInterval", json!("1 hour")),
        ("duration", "/storage/validationInterval", json!(5)),
        (
            "images",
            "/dataPlanes/imageRepositories",
            json!(["kong/kong gateway"]),
        ),
        ("spec", "/storage", json!(null)),
        ("spec", "/dataPlanes", json!("everything")),
        ("spec", "/exporter", json!([])),
    ]
}

/// Sets `pointer` (a JSON pointer) in `v` to `value`, making the objects on the way.
fn set_pointer(v: &mut serde_json::Value, pointer: &str, value: serde_json::Value) {
    let mut cur = v;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for p in &parts[..parts.len() - 1] {
        if !cur[*p].is_object() {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
    cur[parts[parts.len() - 1]] = value;
}

/// Creates policy `name` with `spec` as a raw request (so that a value of the wrong type
/// reaches the apiserver); the apiserver's refusal if any.
async fn create_raw(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: &serde_json::Value,
) -> Result<(), kube::core::Status> {
    let body = json!({"apiVersion": "fallback.kong-dp.io/v1alpha1", "kind": "FallbackConfigPolicy",
                      "metadata": {"name": name}, "spec": spec});
    let req = kube::core::Request::new(format!(
        "/apis/fallback.kong-dp.io/v1alpha1/namespaces/{ns}/fallbackconfigpolicies"
    ))
    .create(&PostParams::default(), serde_json::to_vec(&body).unwrap())
    .unwrap();
    match client.request::<serde_json::Value>(req).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) => Err(*e),
        Err(e) => panic!("creating {name}: {e}"),
    }
}

/// Whether policy `name` is reported: a False condition (other than the `Ready` summary)
/// with a reason, and a Warning Event about it.
async fn reported(fleet: &crate::fleet::Fleet, name: &str) -> (bool, bool) {
    use k8s_openapi::api::core::v1::Event;
    let p = Api::<FallbackConfigPolicy>::namespaced(fleet.client.clone(), &fleet.ns)
        .get(name)
        .await
        .unwrap();
    let condition = p.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ != "Ready" && c.status == "False" && !c.reason.is_empty())
    });
    let events = Api::<Event>::namespaced(fleet.client.clone(), &fleet.ns)
        .list(&kube::api::ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap();
    let warned = events
        .items
        .iter()
        .any(|e| e.type_.as_deref() == Some("Warning"));
    (condition, warned)
}

/// R5: over 200 bad policies, each a working policy with one thing wrong. Each is refused
/// at admission with the field named, or accepted and then reported by a False condition
/// and a Warning Event; no replica crashes. A control policy per mode (unmutated) must be
/// Ready, so that a report is the mutation's doing.
#[tokio::test]
async fn r5_bad_specs_at_volume_are_refused_or_reported_and_crash_nothing() {
    use crate::fleet::{Fleet, Timings};
    let mut fleet = Fleet::new(
        "fault-r5",
        Timings {
            lease: 6,
            renew: 4,
            retry: 1,
        },
    )
    .await;
    let configuration = kfo_testenv::unique_name("kfo-r5");
    let (op, port) = fleet
        .start_with_webhook("r5-0", &configuration, "ignore")
        .await;
    let last_good = fleet.push();
    let secrets: Api<Secret> = Api::namespaced(fleet.client.clone(), &fleet.ns);
    let creds = json!({"AWS_ACCESS_KEY_ID": fleet.s3.root_user, "AWS_SECRET_ACCESS_KEY": fleet.s3.root_password});
    for (name, data) in [
        ("wrong-shape", json!({"unrelated": "x"})),
        ("good-read", creds),
    ] {
        let s: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
                .unwrap();
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    // A pod two policies select (the overlap case), and the first of them.
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "shared", "labels": {"app": "kong-dp-shared"}},
        "spec": crate::cluster::kong_dp_template()["spec"]
    }))
    .unwrap();
    Api::namespaced(fleet.client.clone(), &fleet.ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let modes = ["Operator", "BackupPods", "None"];
    let mut i = 0;
    for mode in modes {
        i += 1;
        let mut first = good_spec(mode, i, &fleet);
        set_pointer(
            &mut first,
            "/dataPlanes/selector/matchLabels",
            json!({"app": "kong-dp-shared"}),
        );
        if mode == "None" {
            create_raw(&fleet.client, &fleet.ns, "first-shared", &first)
                .await
                .unwrap();
        }
    }
    for mode in modes {
        i += 1;
        let name = format!("control-{}", mode.to_lowercase());
        create_raw(&fleet.client, &fleet.ns, &name, &good_spec(mode, i, &fleet))
            .await
            .unwrap();
        let api = Api::<FallbackConfigPolicy>::namespaced(fleet.client.clone(), &fleet.ns);
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Ok(p) = api.get(&name).await
                    && condition(&p, "Ready").is_some_and(|c| c.0 == "True")
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
        .await;
        if ready.is_err() {
            let p = api.get(&name).await.unwrap();
            panic!(
                "the control policy {name} is not Ready: {:#?}",
                p.status.map(|s| s.conditions)
            );
        }
    }
    let (mut specs, mut rejected, mut unnamed, mut accepted) = (0, 0, Vec::new(), Vec::new());
    // NB: what only Operator mode reads (write credentials, the control plane, versions,
    // the write options) is not wrong in another mode.
    let operator_only = [
        "/storage/writeCredentials",
        "/exporter/controlPlane",
        "/exporter/versions",
        "/storage/putOptions",
    ];
    for mode in modes {
        for (what, path, value) in mutations() {
            if mode != "Operator" && operator_only.iter().any(|p| path.starts_with(p)) {
                continue;
            }
            i += 1;
            specs += 1;
            let mut spec = good_spec(mode, i, &fleet);
            set_pointer(&mut spec, path, value.clone());
            let what = format!("{mode}:{what}:{path}={value}");
            let name = format!("bad-{i}");
            match create_raw(&fleet.client, &fleet.ns, &name, &spec).await {
                Ok(()) => accepted.push((name, what)),
                Err(e) if e.code == 422 || e.code == 400 => {
                    rejected += 1;
                    // The field is named: the last segment of the pointer that was changed.
                    let field = path.rsplit('/').next().unwrap();
                    if !e.message.contains(field) {
                        unnamed.push(format!("{what}: {}", e.message));
                    }
                }
                Err(e) => panic!("{what}: {e:?}"),
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut both, mut unreported) = (0, Vec::new());
    for (name, what) in &accepted {
        loop {
            let (condition, warned) = reported(&fleet, name).await;
            if condition && warned {
                both += 1;
                break;
            }
            if Instant::now() > deadline {
                let p = Api::<FallbackConfigPolicy>::namespaced(fleet.client.clone(), &fleet.ns)
                    .get(name)
                    .await
                    .unwrap();
                let conditions: Vec<String> = p
                    .status
                    .map(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason))
                    .collect();
                unreported.push(format!(
                    "{what} (condition={condition} warning={warned}) {conditions:?}"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // Malformed AdmissionReviews straight at the webhook: each answered 4xx (or allowed
    // unchanged), none a 5xx, none a crash.
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/mutate");
    crate::wait::until("the webhook serving", async || {
        http.post(&url).body("{}").send().await.ok().map(|_| ())
    })
    .await;
    let mut bodies: Vec<Vec<u8>> = [
        "", "{", "null", "[]", "42", "\"x\"",
        r#"{"kind":"AdmissionReview"}"#,
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#,
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":42}}"#,
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","object":{"spec":"none"}}}"#,
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","object":{"metadata":{"labels":{"app":"kong-dp-1"}},"spec":{"containers":[{"name":"x"}]}}}}"#,
    ]
    .iter()
    .map(|b| b.as_bytes().to_vec())
    .collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while bodies.len() < 100 {
        let len = (rnd() % 4096) as usize;
        bodies.push((0..len).map(|_| rnd() as u8).collect());
    }
    bodies.push(vec![b'['; 2 << 20]);
    let (mut reviews, mut review_5xx) = (0, 0);
    for b in bodies {
        reviews += 1;
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .body(b)
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_server_error()) {
            review_5xx += 1;
        }
    }
    // Malformed CP frames at volume: the last good configuration stays stored.
    let frames = 50;
    for _ in 0..frames {
        let len = (rnd() % 65536) as usize;
        fleet.cp.push_frame((0..len).map(|_| rnd() as u8).collect());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = u8::from(fleet.stored().await.is_some_and(|s| s.0 == last_good));
    let _ = Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
        fleet.client.clone(),
    )
    .delete(&configuration, &Default::default())
    .await;
    let crashed = u8::from(op.proc.check_alive().is_err());
    println!(
        "fault: R5 specs={specs} rejected_by_apiserver={rejected} condition_and_event={both} unreported={} field_unnamed={} reviews={reviews} review_5xx={review_5xx} cp_frames={frames} last_good_kept={kept} crashed={crashed}",
        unreported.len(),
        unnamed.len()
    );
    assert_eq!(review_5xx, 0, "a malformed AdmissionReview got a 5xx");
    assert_eq!(kept, 1, "garbage frames replaced the stored configuration");
    assert_eq!(crashed, 0, "{}", op.proc.log_tail(30));
    assert!(
        unreported.is_empty(),
        "accepted and not reported: {unreported:#?}"
    );
    assert!(
        unnamed.is_empty(),
        "refused without naming the field: {unnamed:#?}"
    );
    assert!(specs >= 200, "{specs} specs");
}

/// R3, a control plane that accepts the session and never sends a configuration: the
/// operator stores nothing (no empty or made-up configuration), says it waits, does not
/// crash, and stores the first configuration when it comes.
#[tokio::test]
async fn r3_a_control_plane_that_never_sends_a_config_is_waited_for() {
    use crate::fleet::{Fleet, Timings};
    let outage = Duration::from_secs(if full() { 30 } else { 8 });
    let mut fleet = Fleet::new(
        "fault-r3-silent",
        Timings {
            lease: 6,
            renew: 4,
            retry: 1,
        },
    )
    .await;
    let op = fleet.start("r3-silent");
    crate::wait::until("the DP session open", async || {
        (!fleet.cp.data_planes().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(outage).await;
    let stored_during = fleet.stored().await;
    let policy = Api::<FallbackConfigPolicy>::namespaced(fleet.client.clone(), &fleet.ns)
        .get("prod")
        .await
        .unwrap();
    let exporting = condition(&policy, "Exporting");
    let crashed = op.proc.check_alive().is_err();
    let back = Instant::now();
    let first = fleet.push();
    let stored = fleet.wait_stored(&first, Duration::from_secs(60)).await;
    println!(
        "fault: R3 case=never_sends_config outage_s={} stored_during={} crashed={} peak_rss_mb={:.0} reconnect_s={:.1}",
        outage.as_secs(),
        u8::from(stored_during.is_some()),
        u8::from(crashed),
        peak_rss_mib(op.proc.pid()),
        back.elapsed().as_secs_f64()
    );
    assert!(
        stored_during.is_none(),
        "stored without a configuration: {stored_during:?}"
    );
    assert!(!crashed, "{}", op.proc.log_tail(20));
    let (status, reason, _) = exporting.expect("an Exporting condition while waiting");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Waiting"));
    assert!(
        stored.is_some(),
        "the first configuration was stored when it came"
    );
}

/// R4: the kube-apiserver stopped (etcd keeps the data) and started again, while Kong pods
/// are created at 5/s. Every pod created is injected or counted as not injected in the
/// status (`lost=0`); the controller and the webhook resume after the restart.
#[tokio::test]
async fn r4_an_apiserver_restart_under_pod_creation_loses_no_pod() {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let outage = Duration::from_secs(if full() { 20 } else { 8 });
    let env = kube().await;
    let cluster = env.restartable_cluster().await.unwrap();
    let client = cluster.client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &FallbackConfigPolicy::crd())
        .await
        .unwrap();
    crate::wait::until("the CRD established", async || {
        let crd = crds
            .get("fallbackconfigpolicies.fallback.kong-dp.io")
            .await
            .ok()?;
        crd.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
    let ns = "fault-r4";
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "fallback-read"},
        "stringData": {"AWS_ACCESS_KEY_ID": "r", "AWS_SECRET_ACCESS_KEY": "r"}}))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let policy = crate::cluster::policy(
        "prod",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {"url": "s3://fallback/kong", "region": "us-east-1",
                        "readCredentials": {"secretName": "fallback-read"},
                        "validationInterval": "0s"},
            "exporter": {"mode": "None"}
        }),
    );
    let policies: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), ns);
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let configuration = kfo_testenv::unique_name("kfo-r4");
    let (op, _) = crate::fleet::operator_with_webhook(
        cluster.kubeconfig_path().to_str().unwrap(),
        "r4",
        ns,
        &configuration,
        "ignore",
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let template = crate::cluster::kong_dp_template();
    let pod = move |name: String| -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"app": "kong-dp"}},
            "spec": template["spec"]}),
        )
        .unwrap()
    };
    let injected = |p: &Pod| {
        p.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(kong_fallback_operator::inject::ANNOTATION))
    };
    let mut n = 0;
    crate::wait::until("a pod injected before the restart", async || {
        n += 1;
        let p = pods
            .create(&PostParams::default(), &pod(format!("before-{n}")))
            .await
            .ok()?;
        injected(&p).then_some(())
    })
    .await;

    // Pods at 5/s: 2 s before the stop, through the outage, 10 s after the start.
    let creator = {
        let pods = pods.clone();
        let pod = pod.clone();
        let total = (2 + outage.as_secs() + 10) * 5;
        tokio::spawn(async move {
            let start = Instant::now();
            let mut made = Vec::new();
            for i in 0..total {
                tokio::time::sleep_until((start + Duration::from_millis(200 * i)).into()).await;
                if let Ok(p) = pods
                    .create(&PostParams::default(), &pod(format!("p-{i}")))
                    .await
                {
                    made.push((Instant::now(), p));
                }
            }
            made
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.stop();
    // The operator's CPU while the apiserver is gone: its watches and Lease loops must back
    // off, not retry in a loop (each refused connect returns at once).
    let cpu_before = cpu_seconds(op.pid());
    tokio::time::sleep(outage).await;
    let outage_cpu = cpu_seconds(op.pid()) - cpu_before;
    cluster.start_again().await.unwrap();
    let back = Instant::now();
    // The controller: a spec change after the restart is observed.
    let generation = policies
        .patch(
            "prod",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"spec": {"dataPlanes": {"imageRepositories": ["kong/kong-gateway"]}}}),
            ),
        )
        .await
        .unwrap()
        .metadata
        .generation;
    // NB: polled for up to two minutes: a figure, not a goal (the issue sets none); on a
    // loaded machine the restarted apiserver and the relists take a while.
    let observed = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if let Ok(p) = policies.get("prod").await
                && p.status.and_then(|s| s.observed_generation) == generation
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        observed.is_ok(),
        "the controller did not observe a change made after the restart within 120 s; its log:\n{}",
        op.log_tail(30)
    );
    let controller_resume = back.elapsed();
    let made = creator.await.unwrap();
    let webhook_resume = made
        .iter()
        .find(|(at, p)| *at > back && injected(p))
        .map(|(at, _)| at.duration_since(back));
    let created = made.len() + n;
    let injected_count = made.iter().filter(|(_, p)| injected(p)).count() + 1;
    // Wait until the status counts every pod, then count the lost ones.
    let counts = crate::wait::until("the status counting every pod", async || {
        let c = policies.get("prod").await.ok()?.status?.pods?;
        (c.importers as usize == created).then_some(c)
    })
    .await;
    let not_injected = counts.not_injected as usize;
    let lost = created.saturating_sub(injected_count + not_injected);
    println!(
        "fault: R4 outage_s={} pods={created} injected={injected_count} reported_not_injected={not_injected} lost={lost} controller_resume_s={:.1} webhook_resume_s={} outage_cpu_s={outage_cpu:.2}",
        outage.as_secs(),
        controller_resume.as_secs_f64(),
        webhook_resume.map_or("none".into(), |d| format!("{:.1}", d.as_secs_f64()))
    );
    op.check_alive().unwrap();
    assert_eq!(lost, 0, "pods neither injected nor reported");
    // NB: a quarter of one core is far above what backing-off watches cost (reconnects a
    // second or so apart) and far below one that retries at once (a core or more).
    assert!(
        outage_cpu < outage.as_secs_f64() / 4.0,
        "the operator used {outage_cpu:.2} s of CPU in a {} s apiserver outage: something retries without backing off",
        outage.as_secs()
    );
    assert!(
        webhook_resume.is_some(),
        "no pod injected after the restart"
    );
}

/// User plus system CPU time of process `pid` so far, in seconds (from `/proc/<pid>/stat`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // NB: the command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // NB: /proc counts in USER_HZ, 100 on the architectures we run on.
    ticks / 100.0
}

/// R2, a write that stalls mid-body (a writer frozen, or its link crawling): a data plane
/// that reads `config.json` meanwhile gets the stored configuration at once. MinIO takes
/// an object's lock before it reads a conditional PUT's body and holds it until the body
/// ends (`putObject` in minio's cmd/erasure-object.go), and its GET waits on that lock:
/// with one conditional PUT per configuration, a stalled writer held every read of the
/// object (the R1 SIGSTOP takeover of 38 s was the next leader's HEAD waiting on it). A
/// large configuration is written in parts now, which take no object lock.
#[tokio::test]
async fn r2_a_stalled_write_never_holds_a_data_planes_read_of_the_stored_config() {
    stalled_write_holds_no_read("r2-stall", 6_000_000).await;
}

/// R2 for a configuration of a few MB, under one S3 part (5 MiB): written as one PUT, a
/// frozen or crawling writer held every read of it until the PUT was abandoned (a 4 MB
/// crawl: 9 s) or, for a writer frozen or cut off, until MinIO gave up on the body. It is
/// written in one part now; only configurations small enough to be handed to the kernel
/// at once (`IN_PARTS_FROM`) are still one PUT.
#[tokio::test]
async fn r2_a_stalled_write_of_a_few_mb_never_holds_a_data_planes_read() {
    stalled_write_holds_no_read("r2-stall-mid", 4_000_000).await;
}

/// A data plane reads `config.json` straight from MinIO while the exporter's write of a
/// `size`-byte configuration crawls at 32 KB/s: the read must return the stored one at once.
async fn stalled_write_holds_no_read(name: &str, size: usize) {
    use crate::pipeline::Pipeline;
    use kong_fallback_operator::storage::s3::{PutExtras, S3Store};
    let m = kfo_testenv::minio().await;
    let bucket = m.bucket(name).await.unwrap();
    let px = toxiproxy()
        .await
        .proxy(name, m.endpoint.trim_start_matches("http://"))
        .await
        .unwrap();
    let cp = KongCp::start(Mtls::Shared, "3.6.1.4").await.unwrap();
    cp.set_push_debounce(Duration::ZERO);
    let key = "kong/3.6.1.4/config.json";
    let (first, first_hash) = config_sized(size, 1);
    cp.push(&first, &first_hash);
    let mut settings = crate::stores::minio_settings(m, &m.root_password);
    settings.endpoint = Some(px.http());
    let store = S3Store::new(&settings, &bucket, PutExtras::default()).unwrap();
    let mut p = Pipeline::start(
        &cp,
        "3.6.1.4",
        std::sync::Arc::new(store),
        &format!("s3://{bucket}/kong"),
        Duration::ZERO,
    );
    assert_eq!(p.exported().await.1, first_hash);

    // 32 KB/s from the exporter to the store: the next write takes minutes.
    px.add("stall", Stream::Upstream, Toxic::Bandwidth(32))
        .await
        .unwrap();
    let (second, second_hash) = config_sized(size, 2);
    cp.push(&second, &second_hash);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A data plane reads config.json, straight from MinIO, while that write crawls.
    let started = Instant::now();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        m.root_client().get_object().bucket(&bucket).key(key).send(),
    )
    .await;
    let waited = started.elapsed();
    px.remove("stall").await.unwrap();
    let Ok(read) = read else {
        panic!("a read of {key} waited {waited:?} on the stalled write")
    };
    let read = read.unwrap();
    let body = read.body.collect().await.unwrap().into_bytes();
    assert!(
        body == first.as_bytes(),
        "the read got something else than the stored configuration"
    );
    crate::wait::until(
        "the stalled configuration stored once the link is back",
        async || (stored_hash(m, &bucket, key).await? == second_hash).then_some(()),
    )
    .await;
    println!(
        "fault: R2 case=stalled-write size_mb={} read_during_write_ms={}",
        size / 1_000_000,
        waited.as_millis()
    );
}
