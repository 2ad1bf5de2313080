//! The election against the real apiserver, MinIO and fake-gcs-server: three operator
//! processes on one policy, fencing of a stale leader, and a native Kong election peer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use kfo_testenv::{gcs, minio};
use kong_fallback_operator::cp_client::{ConfigSnapshot, Event};
use kong_fallback_operator::election::mirror::{Flavor, Mirror};
use kong_fallback_operator::election::{Claim, Gate};
use kong_fallback_operator::export::runner::{self, ExportTarget, META_CONFIG_HASH, Report};
use kong_fallback_operator::kong::StorageUrl;
use kong_fallback_operator::kong::config::ConfigSummary;
use kong_fallback_operator::storage::gcs::{GcsCredentials, GcsStore};
use kong_fallback_operator::storage::{Object, ObjectInfo, ObjectStore, PutObject, StoreError};
use tokio::sync::{Notify, mpsc, watch};

use crate::fleet::{Fleet, Timings};
use crate::stores::minio_store;
use crate::wait::next_matching;

#[tokio::test]
async fn three_replicas_one_exporter_takeover_after_a_kill_and_handover_on_sigterm() {
    let timings = Timings {
        lease: 8,
        renew: 6,
        retry: 1,
    };
    let mut fleet = Fleet::new("election", timings).await;
    let ops: Vec<_> = ["kfo-a", "kfo-b", "kfo-c"]
        .iter()
        .map(|n| fleet.start(n))
        .collect();
    let first = fleet
        .wait_leader(Duration::from_secs(30))
        .await
        .expect("a leader");

    // Exactly one exports: every write is the leader's.
    for _ in 0..3 {
        let hash = fleet.push();
        let ((_, uploader), _) = fleet
            .wait_stored(&hash, Duration::from_secs(20))
            .await
            .expect("exported");
        assert_eq!(uploader, first, "only the Lease holder writes");
    }
    let (_, epoch_before) = fleet.lease().await.unwrap();
    // Followers leave status to the leader: the policy's Events, which accompany every
    // status change, all come from it.
    let events =
        kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(fleet.client.clone(), &fleet.ns)
            .list(&Default::default())
            .await
            .unwrap();
    let reporters: Vec<String> = events
        .items
        .iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("FallbackConfigPolicy"))
        .map(|e| e.reporting_instance.clone().unwrap_or_default())
        .collect();
    assert!(!reporters.is_empty(), "the leader reported nothing");
    assert!(
        reporters
            .iter()
            .all(|r| r.split('_').next() == Some(first.as_str())),
        "Events from replicas other than the leader {first}: {reporters:?}"
    );

    // SIGKILL: no release; another replica takes over after the Lease expires.
    let leader = ops.iter().find(|o| o.name == first).unwrap();
    leader.proc.signal("KILL").unwrap();
    let killed_at = Instant::now();
    let hash = fleet.push();
    let ((_, second), _) = fleet
        .wait_stored(
            &hash,
            Duration::from_secs(timings.lease + timings.retry + 15),
        )
        .await
        .expect("a new leader exports after the kill");
    let took = killed_at.elapsed();
    assert_ne!(second, first);
    assert!(
        took >= Duration::from_secs(timings.lease - timings.retry - 1),
        "took over after {took:?}: before the Lease could expire?"
    );
    let (_, epoch_after) = fleet.lease().await.unwrap();
    assert_eq!(epoch_after, epoch_before + 1, "a new holder is a new epoch");

    // SIGTERM: the leader finishes, releases the Lease and exits; the hand-over does not
    // wait for the Lease to expire. NB: shown by the Lease's history (a watch from before
    // the signal sees every write), not by a time bound on a loaded machine: how fast the
    // hand-over is, is benchmark P2's figure.
    let leader = ops.iter().find(|o| o.name == second).unwrap();
    let leases = kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        fleet.client.clone(),
        &fleet.ns,
    );
    let rv = leases
        .get("prod")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let watch = kube::api::WatchParams::default().fields("metadata.name=prod");
    let mut history = futures::StreamExt::boxed(leases.watch(&watch, &rv).await.unwrap());
    leader.proc.signal("TERM").unwrap();
    assert!(
        leader.proc.wait_exit(Duration::from_secs(30)).await,
        "SIGTERM ends the operator"
    );
    let hash = fleet.push();
    let ((_, third), _) = fleet
        .wait_stored(&hash, Duration::from_secs(60))
        .await
        .expect("the last replica exports after the hand-over");
    assert_ne!(third, second);
    assert_ne!(third, first);
    // The holders the Lease had, in order, until the new one.
    let mut holders = Vec::new();
    while holders.last().is_none_or(|h: &Option<String>| {
        h.as_deref()
            .is_none_or(|h| h.split('_').next() == Some(second.as_str()))
    }) {
        let event = tokio::time::timeout(
            Duration::from_secs(30),
            futures::StreamExt::next(&mut history),
        )
        .await
        .expect("no Lease change after the hand-over")
        .expect("the Lease watch ended");
        if let kube::api::WatchEvent::Modified(l) = event.unwrap() {
            let holder = l.spec.unwrap().holder_identity.filter(|h| !h.is_empty());
            if holders.last() != Some(&holder) {
                holders.push(holder);
            }
        }
    }
    let n = holders.len();
    assert!(
        n >= 2 && holders[n - 2].is_none(),
        "the Lease went from {second} to {third} without a release: {holders:?}\n{}",
        leader.proc.log_tail(30)
    );
    assert!(
        leader.proc.log_tail(200).contains("released the Lease"),
        "{}",
        leader.proc.log_tail(40)
    );

    // No secret value in any replica's log (debug level), nor in the status or Events.
    let secrets = [
        fleet.s3.root_password.as_str(),
        fleet.cp.certs.key_pem.lines().nth(1).unwrap(),
    ];
    for op in &ops {
        let log = std::fs::read_to_string(op.proc.log_path()).unwrap();
        assert!(log.len() > 1000, "{} logged little: {log}", op.name);
        for secret in secrets {
            assert!(!log.contains(secret), "a secret value in {}'s log", op.name);
        }
    }
    let policy = kube::Api::<kong_fallback_operator::api::FallbackConfigPolicy>::namespaced(
        fleet.client.clone(),
        &fleet.ns,
    )
    .get("prod")
    .await
    .unwrap();
    let events =
        kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(fleet.client.clone(), &fleet.ns)
            .list(&Default::default())
            .await
            .unwrap();
    let seen = format!(
        "{}{}",
        serde_json::to_string(&policy).unwrap(),
        serde_json::to_string(&events).unwrap()
    );
    for secret in secrets {
        assert!(
            !seen.contains(secret),
            "a secret value in the status or an Event"
        );
    }
}

/// A store whose `config.json` writes can be held, like a process paused between its
/// leadership check and its request.
struct Pausable {
    inner: Arc<dyn ObjectStore>,
    paused: watch::Receiver<bool>,
    entered: Notify,
}

#[async_trait::async_trait]
impl ObjectStore for Pausable {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    async fn put(&self, object: PutObject) -> Result<String, StoreError> {
        if object.key.ends_with("config.json") && *self.paused.borrow() {
            self.entered.notify_one();
            let mut paused = self.paused.clone();
            let _ = paused.wait_for(|p| !*p).await;
        }
        self.inner.put(object).await
    }
    async fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Object>, StoreError> {
        self.inner.get_at_most(key, max).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn touch(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.touch(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
}

/// The elector of policy "prod" as replica kfo-a_123456, with timings short enough for a
/// test (leaseDuration 4 s, renewDeadline 3 s, retryPeriod 1 s).
fn elector_of_prod(
    api: kube::Api<k8s_openapi::api::coordination::v1::Lease>,
) -> kong_fallback_operator::election::lease::Elector {
    use kong_fallback_operator::election::lease::{Elector, Timings};
    Elector {
        api,
        name: "prod".into(),
        identity: "kfo-a_123456".into(),
        timings: Timings {
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_secs(1),
        },
        owner: None,
    }
}

fn snapshot(n: u32) -> Event {
    let config = format!(r#"{{"_format_version":"3.0","services":[{{"name":"s{n}"}}]}}"#);
    Event::Snapshot(ConfigSnapshot {
        hash: format!("{n:0>32}"),
        config: Bytes::from(config),
        summary: ConfigSummary {
            format_version: "3.0".into(),
            entities: vec![("services".into(), 1)],
            plugins: Vec::new(),
        },
        timestamp: None,
        arrival: None,
    })
}

fn leading(epoch: i32) -> Claim {
    Claim {
        holder: Some(format!("leader-{epoch}")),
        epoch,
        since: None,
        leading_until: Some(Instant::now() + Duration::from_secs(3600)),
        lease_uid: None,
    }
}

/// A leader whose write found a newer epoch in the store steps down by releasing its Lease:
/// holding it at an epoch the store has passed would leave the policy without a writer.
/// The next acquisition counts a new, higher epoch.
#[tokio::test]
async fn a_fenced_leader_releases_its_lease_and_the_next_lead_has_a_higher_epoch() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kong_fallback_operator::election::lease;
    let env = kfo_testenv::kube().await;
    let client = env.client().await.unwrap();
    let ns = env.namespace("fenced-release").await.unwrap();
    let api: kube::Api<Lease> = kube::Api::namespaced(client.clone(), &ns);
    let elector = elector_of_prod(api.clone());
    let (gate, control) = Gate::new();
    let (_stop, stop_rx) = watch::channel(false);
    let leases = lease::LeaseWatch::start(api.clone());
    let wakes = leases.register(&ns, "prod");
    tokio::spawn(lease::run(elector, control, || {}, wakes, stop_rx));
    let leading = crate::wait::until("leading", async || {
        let c = gate.claim();
        (c.leading(Instant::now()) && c.lease_uid.is_some()).then_some(c)
    })
    .await;
    gate.step_down(leading.epoch);
    let after = crate::wait::until("a new epoch after the release", async || {
        let c = gate.claim();
        (c.leading(Instant::now()) && c.epoch > leading.epoch).then_some(c)
    })
    .await;
    let lease = api.get("prod").await.unwrap();
    assert_eq!(
        lease.spec.unwrap().lease_transitions,
        Some(after.epoch),
        "the Lease counts the new epoch"
    );
    assert_eq!(after.lease_uid, leading.lease_uid, "the same Lease object");
}

/// The holder's own renewal comes back through its Lease watch; that wake must not renew
/// again at once (a loop of writes per policy, which loaded the apiserver of bench P4).
#[tokio::test]
async fn a_leader_renews_once_per_retry_period_not_on_each_of_its_own_writes() {
    use futures::StreamExt;
    use k8s_openapi::api::coordination::v1::Lease;
    use kong_fallback_operator::election::lease;
    use kube::runtime::watcher;
    let env = kfo_testenv::kube().await;
    let client = env.client().await.unwrap();
    let ns = env.namespace("renewals").await.unwrap();
    let api: kube::Api<Lease> = kube::Api::namespaced(client.clone(), &ns);
    let elector = elector_of_prod(api.clone());
    let (gate, control) = Gate::new();
    let (_stop, stop_rx) = watch::channel(false);
    let leases = lease::LeaseWatch::start(api.clone());
    let wakes = leases.register(&ns, "prod");
    let running = tokio::spawn(lease::run(elector, control, || {}, wakes, stop_rx));
    crate::wait::until("leading", async || {
        gate.claim().leading(Instant::now()).then_some(())
    })
    .await;
    let writes = {
        let cfg = watcher::Config::default().fields("metadata.name=prod");
        let mut events = std::pin::pin!(watcher::watcher(api.clone(), cfg));
        let mut seen = std::collections::BTreeSet::new();
        let window = Duration::from_secs(5);
        let start = Instant::now();
        while let Ok(Some(event)) =
            tokio::time::timeout(window.saturating_sub(start.elapsed()), events.next()).await
        {
            if let Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) = event {
                seen.insert(l.metadata.resource_version.unwrap_or_default());
            }
        }
        seen.len()
    };
    running.abort();
    // 5 s at one renewal a second: about 5 writes (and the version first listed).
    assert!(writes <= 8, "{writes} Lease versions in 5 s");
    assert!(gate.claim().leading(Instant::now()), "still leading");
}

/// The holder renews on the resourceVersion of its own last write, without a GET first:
/// one request per renewal where client-go's loop (and ours before) made two. Counted in
/// the apiserver's audit log of the elector's ServiceAccount. With no Lease watch to tell
/// it, a write by another still ends the lead at the next renewal: the renewal loses the
/// compare-and-swap and the elector reads the Lease at once.
#[tokio::test]
async fn a_holder_renews_without_reading_first_and_a_lost_renewal_reads_the_lease() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kong_fallback_operator::election::lease;
    let env = kfo_testenv::kube().await;
    let admin = env.client().await.unwrap();
    let ns = env.namespace("renew-cas").await.unwrap();
    let token = crate::cluster::service_account_token(
        env,
        &ns,
        "elector",
        "get,create,update",
        "leases.coordination.k8s.io",
    )
    .await;
    let api: kube::Api<Lease> =
        kube::Api::namespaced(env.client_with_token(&token).await.unwrap(), &ns);
    let elector = elector_of_prod(api);
    let (gate, control) = Gate::new();
    let (_stop, stop_rx) = watch::channel(false);
    // NB: no Lease watch: nothing wakes the elector but its own timer.
    let (_no_wakes, wakes) = mpsc::channel(1);
    let running = tokio::spawn(lease::run(elector, control, || {}, wakes, stop_rx));
    crate::wait::until("leading", async || {
        gate.claim().leading(Instant::now()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let count = |verb: &str| {
        env.audited_requests(&token)
            .unwrap()
            .into_iter()
            .filter(|(g, r, v)| g == "coordination.k8s.io" && r == "leases" && v == verb)
            .count()
    };
    let (gets, updates) = (count("get"), count("update"));
    assert!(updates >= 4, "{updates} renewals in 5 s at one a second");
    assert_eq!(
        gets, 1,
        "one read, before the Lease was created; {updates} renewals"
    );

    // Another takes the Lease over (as a replica that judged it expired would).
    let leases: kube::Api<Lease> = kube::Api::namespaced(admin, &ns);
    let mut taken = leases.get("prod").await.unwrap();
    let spec = taken.spec.as_mut().unwrap();
    spec.holder_identity = Some("kfo-b_654321".into());
    spec.lease_duration_seconds = Some(60);
    spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    leases
        .replace("prod", &Default::default(), &taken)
        .await
        .unwrap();
    let claim = crate::wait::until("the lead ended", async || {
        let claim = gate.claim();
        (!claim.leading(Instant::now())).then_some(claim)
    })
    .await;
    assert_eq!(claim.holder.as_deref(), Some("kfo-b_654321"));
    let written = leases.get("prod").await.unwrap();
    assert_eq!(
        written.spec.unwrap().holder_identity.as_deref(),
        Some("kfo-b_654321"),
        "the lost renewal wrote nothing"
    );
    running.abort();
}

/// `exporter.standby: Cold`: only the leader holds a control-plane session; after the
/// leader is killed the new one connects and exports.
#[tokio::test]
async fn with_cold_standby_only_the_leader_holds_a_control_plane_session() {
    let timings = Timings {
        lease: 4,
        renew: 3,
        retry: 1,
    };
    let mut fleet = Fleet::with_standby("cold", timings, "Cold").await;
    let ops: Vec<_> = ["kfo-a", "kfo-b"].iter().map(|n| fleet.start(n)).collect();
    let hash = fleet.push();
    let ((_, first), _) = fleet
        .wait_stored(&hash, Duration::from_secs(30))
        .await
        .expect("exported");
    // Followers connect nothing: one session, the leader's, stays up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let connected = || {
        fleet
            .cp
            .data_planes()
            .iter()
            .filter(|d| d.connected)
            .count()
    };
    assert_eq!(connected(), 1, "{:?}", fleet.cp.data_planes());
    let leader = ops.iter().find(|o| o.name == first).unwrap();
    leader.proc.signal("KILL").unwrap();
    let hash = fleet.push();
    let ((_, second), _) = fleet
        .wait_stored(&hash, Duration::from_secs(60))
        .await
        .expect("the new leader connected and exported");
    assert_ne!(second, first);
}

/// A leader paused after its permit wakes up after a newer leader wrote: its write is
/// refused by the store and it steps down; the newer configuration stays.
async fn a_stale_leader_is_fenced(store: Arc<dyn ObjectStore>, bucket: &str, url_scheme: &str) {
    let url = StorageUrl::parse(&format!("{url_scheme}://{bucket}/kong")).unwrap();
    let key = url.config_key("3.6.1.4");
    let target = |uploader: &str| ExportTarget {
        url: url.clone(),
        version: "3.6.1.4".into(),
        uploader: uploader.into(),
        writer: uploader.into(),
        owner: "kong/prod".into(),
        plugins: None,
        min_interval: Duration::ZERO,
        history_limit: 0,
    };
    let (pause, paused) = watch::channel(false);
    let stale_store = Arc::new(Pausable {
        inner: store.clone(),
        paused,
        entered: Notify::new(),
    });
    let (_stop, stop_rx) = watch::channel(false);

    // Replica A leads at epoch 1 and exports.
    let (gate_a, mut control_a) = Gate::new();
    control_a.claims.send(leading(1)).unwrap();
    let (ev_a, ev_rx) = mpsc::channel(8);
    let (rep_tx, mut rep_a) = mpsc::channel(64);
    tokio::spawn(runner::run(
        target("a"),
        stale_store.clone(),
        ev_rx,
        rep_tx,
        gate_a,
        stop_rx.clone(),
    ));
    ev_a.send(snapshot(1)).await.unwrap();
    next_matching(&mut rep_a, 20, |r| {
        matches!(r, Report::Exported { .. }).then_some(r)
    })
    .await;

    // A gets its permit for the next write, then "pauses" before the request goes out.
    pause.send(true).unwrap();
    ev_a.send(snapshot(2)).await.unwrap();
    stale_store.entered.notified().await;

    // Meanwhile the Lease moved: B leads at epoch 2 and exports a newer configuration.
    let (gate_b, control_b) = Gate::new();
    control_b.claims.send(leading(2)).unwrap();
    let (ev_b, ev_rx) = mpsc::channel(8);
    let (rep_tx, mut rep_b) = mpsc::channel(64);
    tokio::spawn(runner::run(
        target("b"),
        store.clone(),
        ev_rx,
        rep_tx,
        gate_b,
        stop_rx.clone(),
    ));
    ev_b.send(snapshot(3)).await.unwrap();
    next_matching(&mut rep_b, 20, |r| {
        matches!(r, Report::Exported { .. }).then_some(r)
    })
    .await;

    // A wakes up: its conditional write fails, it sees epoch 2 and steps down.
    pause.send(false).unwrap();
    let fenced = next_matching(&mut rep_a, 20, |r| {
        matches!(r, Report::Fenced { .. } | Report::Exported { .. }).then_some(r)
    })
    .await;
    assert_eq!(fenced, Report::Fenced { mine: 1, epoch: 2 });
    let step_down = tokio::time::timeout(Duration::from_secs(5), control_a.step_down.recv())
        .await
        .unwrap();
    assert_eq!(step_down, Some(1), "the elector is told to step down");
    // Even while its claim still says it leads (the elector has not acted yet), the fenced
    // writer does not write again at the old epoch.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stored = store.get(&key).await.unwrap().unwrap();
    assert_eq!(
        stored.metadata.get(META_CONFIG_HASH),
        Some(&format!("{:0>32}", 3)),
        "the newer leader's configuration stays"
    );
    assert_eq!(
        stored.metadata.get("uploader").map(String::as_str),
        Some("b")
    );
}

#[tokio::test]
async fn a_stale_leader_is_fenced_on_minio() {
    let env = minio().await;
    let bucket = env.bucket("fence").await.unwrap();
    a_stale_leader_is_fenced(minio_store(env, &bucket), &bucket, "s3").await;
}

#[tokio::test]
async fn a_stale_leader_is_fenced_on_fake_gcs_server() {
    let env = gcs().await;
    let bucket = env.bucket("fence").await.unwrap();
    let store = GcsStore::new(Some(&env.endpoint), &GcsCredentials::Anonymous, &bucket)
        .await
        .unwrap();
    a_stale_leader_is_fenced(Arc::new(store), &bucket, "gcs").await;
}

/// A native Kong 3.6+ backup node's election (DOMAIN.md §4), written here from the
/// description and not from the product's code: register once with the time of the first
/// registration, re-PUT every round, elect the smallest register time among registrations
/// refreshed within `interval + 5 s`, ties to the smallest node id.
struct NativePeer {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    node_id: String,
    register_time: String,
    interval: Duration,
}

impl NativePeer {
    /// One round; the elected node id.
    async fn round(&self) -> Option<String> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(format!(
                "{}{}-{}",
                self.prefix, self.register_time, self.node_id
            ))
            .content_type("text/plain")
            .body(ByteStream::from_static(b""))
            .send()
            .await
            .unwrap();
        native_elect(&self.client, &self.bucket, &self.prefix, self.interval).await
    }
}

/// What a native Kong node with election interval `interval` elects among the S3
/// registrations under `prefix` now: the rules of [`NativePeer`], not the product's code.
async fn native_elect(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    interval: Duration,
) -> Option<String> {
    let listed = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .max_keys(1000)
        .send()
        .await
        .unwrap();
    let now = SystemTime::now();
    let mut best: Option<(f64, String)> = None;
    for o in listed.contents() {
        let name = &o.key().unwrap()[prefix.len()..];
        let Some((time, node)) = name.split_once('-') else {
            continue;
        };
        let Ok(time) = time.parse::<f64>() else {
            continue;
        };
        let modified = SystemTime::try_from(*o.last_modified().unwrap()).unwrap();
        if now > modified + interval + Duration::from_secs(5) {
            continue;
        }
        let candidate = (time, node.to_owned());
        if best
            .as_ref()
            .is_none_or(|b| candidate.0 < b.0 || (candidate.0 == b.0 && candidate.1 < b.1))
        {
            best = Some(candidate);
        }
    }
    best.map(|b| b.1)
}

#[tokio::test]
async fn a_native_kong_peer_defers_to_the_mirrored_leader_and_takes_over_when_it_is_gone() {
    let env = minio().await;
    let bucket = env.bucket("mirror").await.unwrap();
    let url = StorageUrl::parse(&format!("s3://{bucket}/kong")).unwrap();
    let store: Arc<dyn ObjectStore> = minio_store(env, &bucket);
    let peer = NativePeer {
        client: env.root_client(),
        bucket: bucket.clone(),
        prefix: url.election_prefix("3.6.1.4"),
        node_id: "0000-native".into(),
        // Registered long before the operator (and with a node id that sorts first).
        register_time: format!(
            "{}.25",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                - 86_400
        ),
        interval: Duration::from_secs(1),
    };
    assert_eq!(
        peer.round().await.as_deref(),
        Some("0000-native"),
        "alone, it leads"
    );

    let mirror = |node: &str| Mirror {
        store: store.clone(),
        flavor: Flavor::S3,
        url: url.clone(),
        version: "3.6.1.4".into(),
        node_id: node.into(),
    };
    let (gate, control) = Gate::new();
    control.claims.send(leading(1)).unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let first = tokio::spawn(mirror("operator-leader-1").run(gate, stop_rx.clone()));
    let registered = async |node: &str, present: bool| {
        crate::wait::until(&format!("{node} registered: {present}"), async || {
            let keys = store.list(&url.election_prefix("3.6.1.4")).await.ok()?;
            (keys.iter().any(|o| o.key.ends_with(&format!("-{node}"))) == present).then_some(())
        })
        .await
    };
    registered("operator-leader-1", true).await;

    // Over many rounds (longer than the mirror's refresh), the peer never elects itself.
    let mut elected = BTreeMap::<String, u32>::new();
    for _ in 0..12 {
        let e = peer.round().await.unwrap();
        *elected.entry(e).or_default() += 1;
        tokio::time::sleep(peer.interval).await;
    }
    assert_eq!(
        elected.keys().collect::<Vec<_>>(),
        ["operator-leader-1"],
        "{elected:?}"
    );

    // A new leader (epoch 2, another replica) takes over: the peer follows it within one
    // round, although the old registration has not gone stale.
    let (gate2, control2) = Gate::new();
    control2.claims.send(leading(2)).unwrap();
    let second = tokio::spawn(mirror("operator-leader-2").run(gate2, stop_rx.clone()));
    registered("operator-leader-2", true).await;
    control
        .claims
        .send(Claim {
            leading_until: None,
            ..leading(1)
        })
        .unwrap();
    registered("operator-leader-1", false).await;
    assert_eq!(peer.round().await.as_deref(), Some("operator-leader-2"));

    // The operator goes away (graceful stop removes its registration): the peer leads.
    stop.send(true).unwrap();
    first.await.unwrap();
    second.await.unwrap();
    assert_eq!(peer.round().await.as_deref(), Some("0000-native"));
    let left: Vec<String> = store
        .list(&url.election_prefix("3.6.1.4"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        left.len(),
        1,
        "only the peer's registration is left: {left:?}"
    );
}

mod backup_pods {
    use super::*;
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use kfo_testenv::kube;
    use kong_fallback_operator::api::FallbackConfigPolicy;
    use kong_fallback_operator::controller;
    use kong_fallback_operator::inject::{self, SecretFacts};
    use kube::CustomResourceExt;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use serde_json::json;

    /// A Ready backup pod of Kong `version`, created with what the webhook injects for
    /// `policy` (or, with `None`, without the injection).
    async fn backup_pod(
        pods: &Api<Pod>,
        name: &str,
        version: &str,
        policy: Option<&FallbackConfigPolicy>,
    ) -> String {
        let mut pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": pods.namespace(), "labels": {"app": "kong-backup"}},
            "spec": {"containers": [{"name": "proxy", "image": format!("kong/kong-gateway:{version}")}]}
        }))
        .unwrap();
        if let Some(policy) = policy {
            // What the controller knows: the write Secret exists with both keys.
            let mut facts = SecretFacts::default();
            facts.record(
                pods.namespace().unwrap_or_default(),
                "fallback-write",
                Some(
                    [
                        "AWS_ACCESS_KEY_ID".to_owned(),
                        "AWS_SECRET_ACCESS_KEY".to_owned(),
                    ]
                    .into(),
                ),
            );
            let o = inject::inject(&pod, std::slice::from_ref(policy), &facts);
            let mut doc = serde_json::to_value(&pod).unwrap();
            let patch: json_patch::Patch =
                serde_json::from_value(serde_json::Value::Array(o.patch)).unwrap();
            json_patch::patch(&mut doc, &patch).unwrap();
            pod = serde_json::from_value(doc).unwrap();
        }
        let created = pods.create(&PostParams::default(), &pod).await.unwrap();
        set_ready(pods, name, true).await;
        created.metadata.uid.unwrap()
    }

    async fn set_ready(pods: &Api<Pod>, name: &str, ready: bool) {
        let status = json!({"status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
        }});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    /// What a native Kong node (interval 10 s) elects in the prefix now.
    // NB: by the test's own native rules, not the product's parser and election: those
    // would agree with the product's mirror whatever it wrote.
    async fn kong_elected(
        s3: &kfo_testenv::MinioEnv,
        bucket: &str,
        prefix: &str,
    ) -> Option<String> {
        native_elect(&s3.root_client(), bucket, prefix, Duration::from_secs(10)).await
    }

    #[tokio::test]
    async fn the_lease_holder_designates_one_backup_pod_and_kongs_election_agrees() {
        let env = kube().await;
        env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
        let client = env.client().await.unwrap();
        let ns = env.namespace("backup-pods").await.unwrap();
        let s3 = minio().await;
        let bucket = s3.bucket("backup-pods").await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fallback-write"},
            "stringData": {"AWS_ACCESS_KEY_ID": s3.root_user, "AWS_SECRET_ACCESS_KEY": s3.root_password}
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let policy: FallbackConfigPolicy = crate::cluster::policy(
            "prod",
            json!({
                "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
                "backup": {"selector": {"matchLabels": {"app": "kong-backup"}}},
                "storage": {
                    "url": format!("s3://{bucket}/kong"),
                    "endpoint": s3.endpoint,
                    "region": "us-east-1",
                    "readCredentials": {"secretName": "fallback-read"},
                    "writeCredentials": {"secretName": "fallback-write"}
                },
                "exporter": {"mode": "BackupPods"}
            }),
        );
        let api: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
        let policy = api.create(&PostParams::default(), &policy).await.unwrap();
        // An unlabelled pod created before the injection, and one of another version.
        let early = backup_pod(&pods, "kong-backup-early", "3.6.1.4", None).await;
        let first = backup_pod(&pods, "kong-backup-0", "3.6.1.4", Some(&policy)).await;
        let second = backup_pod(&pods, "kong-backup-1", "3.6.1.4", Some(&policy)).await;
        let other = backup_pod(&pods, "kong-backup-37", "3.7.0.0", Some(&policy)).await;
        let running = crate::cluster::run_controller(&client, &ns, "kfo-backup-test");

        let store = minio_store(s3, &bucket);
        let url = StorageUrl::parse(&format!("s3://{bucket}/kong")).unwrap();
        let prefix = url.election_prefix("3.6.1.4");
        let prefix_37 = url.election_prefix("3.7.0.0");
        let wait_designated = async |uid: &str| {
            crate::wait::until(&format!("{uid} designated and elected"), async || {
                let leader = api.get("prod").await.ok()?.status?.leader?;
                let d = leader.backup_pods.iter().find(|d| d.version == "3.6.1.4")?;
                (d.node_id == uid
                    && kong_elected(s3, &bucket, &prefix).await.as_deref() == Some(uid))
                .then_some(leader)
            })
            .await
        };
        // The oldest Ready backup pod of each version whose node id is known (the injection
        // gives it its UID as KONG_NODE_ID) is designated; Kong's election on the backup
        // pods of that version elects its node id, registered under that version only.
        let leader = wait_designated(&first).await;
        assert_eq!(leader.backup_pod.as_deref(), Some("kong-backup-0"));
        assert!(leader.identity.starts_with("kfo-backup-test_"));
        let d37 = leader
            .backup_pods
            .iter()
            .find(|d| d.version == "3.7.0.0")
            .expect("3.7.0.0 designated");
        assert_eq!(
            (d37.pod.as_str(), d37.node_id.as_str()),
            ("kong-backup-37", other.as_str())
        );
        crate::wait::until("3.7.0.0 elects its own pod", async || {
            (kong_elected(s3, &bucket, &prefix_37).await.as_deref() == Some(other.as_str()))
                .then_some(())
        })
        .await;
        let registered_36: Vec<String> = store
            .list(&prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert!(
            registered_36.iter().all(|k| !k.contains(&other)),
            "3.7.0.0's node id is not registered under 3.6.1.4: {registered_36:?}"
        );
        // The pod created without the injection runs under another node id: named, never
        // registered.
        let p = api.get("prod").await.unwrap();
        let leading = p
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Leading")
            .unwrap();
        assert!(
            leading.message.contains("kong-backup-early"),
            "{}",
            leading.message
        );
        for prefix in [&prefix, &prefix_37] {
            let keys = store.list(prefix).await.unwrap();
            assert!(keys.iter().all(|o| !o.key.contains(&early)), "{keys:?}");
        }
        let reasons = crate::cluster::event_reasons(&client, &ns).await;
        assert!(reasons.iter().any(|r| r == "NodeIdUnknown"), "{reasons:?}");

        // It stops being Ready: the other one is designated, and Kong's election follows.
        set_ready(&pods, "kong-backup-0", false).await;
        let leader = wait_designated(&second).await;
        assert_eq!(leader.backup_pod.as_deref(), Some("kong-backup-1"));

        // Deleting the policy removes what the operator created: the registration and the
        // Lease, then the finalizer.
        let p = api.get("prod").await.unwrap();
        assert!(
            p.metadata
                .finalizers
                .unwrap_or_default()
                .contains(&controller::FINALIZER.to_owned())
        );
        api.delete("prod", &Default::default()).await.unwrap();
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(client.clone(), &ns);
        crate::wait::until("the finalizer removed", async || {
            api.get_opt("prod").await.ok()?.is_none().then_some(())
        })
        .await;
        assert!(
            leases.get_opt("prod").await.unwrap().is_none(),
            "the Lease is gone"
        );
        for prefix in [&prefix, &prefix_37] {
            assert_eq!(
                store.list(prefix).await.unwrap(),
                [],
                "no registration is left"
            );
        }
        running.abort();
    }
}
