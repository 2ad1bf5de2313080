//! Reconciles `FallbackConfigPolicy` objects: validates the spec, runs what its exporter
//! mode needs, and writes the status that sums it up ([`status`], pure) with server-side
//! apply, with an Event for each change a person should know about. Only the policy's
//! Lease holder ([`leadership`]) writes status and exports; the others stand by.
//!
//! - `exporter.mode: Operator`: the operator's own exporters ([`exporters`], fed by
//!   [`plan`]), reported as `ControlPlaneConnected`, `Exporting`, `Fencing` and the
//!   per-version exports.
//! - `exporter.mode: BackupPods`: the designation of native Kong backup pods ([`backup`]).
//! - Every mode: `StorageReachable` ([`probe`]), and the pods a policy covers with those
//!   lacking the current injection ([`pods`]: `PodsInjected`, `status.pods`), their
//!   opt-in restart ([`rollout`]) and the pacing of pod events ([`throttle`]).
//!
//! Watches policies, the pods' metadata (also the cache the injection webhook reads) and
//! the metadata of the Secrets policies name; a changed Secret re-triggers its policies.
//! The finalizer ([`FINALIZER`]) stops a deleted policy's work and deletes its Lease. A
//! policy is also re-checked on a timer: 30 s while not Ready, 5 min when Ready, 10 s in
//! BackupPods mode (a designated pod that stops being Ready).

pub mod backup;
pub mod crd;
pub mod events;
pub mod exporters;
pub mod leadership;
pub mod plan;
pub mod pods;
pub mod probe;
pub mod rollout;
pub mod secrets;
pub mod status;
pub mod throttle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, CustomResourceExt, Resource, ResourceExt};
use tracing::{debug, info, warn};

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;

use crate::api::LeaderStatus;
use crate::api::{ExporterMode, FIELD_MANAGER, FallbackConfigPolicy, validate};
use crate::http::Health;
use crate::metrics::Metrics;
use exporters::Exporters;
use leadership::Electors;
use status::ExportView;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the FallbackConfigPolicy CRD is not installed: install it with `kong-fallback-operator crd | kubectl apply --server-side -f -` (or `kubectl apply -f crds/`)"
    )]
    CrdMissing,
    #[error("the FallbackConfigPolicy CRD is installed but not Established yet")]
    CrdNotEstablished,
    /// Helm never upgrades `crds/`: an older CRD would make the apiserver drop these fields
    /// silently from every policy and status.
    #[error(
        "the installed FallbackConfigPolicy CRD is older than this operator: it lacks {}{}, which the apiserver would silently drop. Upgrade the CRD first: `kong-fallback-operator crd | kubectl apply --server-side -f -` (or `kubectl apply --server-side -f crds/` from this release), then restart the operator",
        missing.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
        if missing.len() > 5 { format!(" and {} more", missing.len() - 5) } else { String::new() }
    )]
    CrdOutdated { missing: Vec<String> },
    #[error("failed to write the status of {policy}: {source}")]
    Status {
        policy: String,
        #[source]
        source: kube::Error,
    },
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// A stable label for metrics and Events.
    pub fn label(&self) -> &'static str {
        match self {
            Error::CrdMissing => "crd_missing",
            Error::CrdNotEstablished => "crd_not_established",
            Error::CrdOutdated { .. } => "crd_outdated",
            Error::Status { .. } => "status_write",
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// How the controller runs.
pub struct Settings {
    /// This replica's identity (the pod name): Event reporter instance, export uploader.
    pub identity: String,
    /// Watch one namespace, or (`None`) all of them.
    pub namespace: Option<String>,
    pub metrics: Arc<Metrics>,
    /// Gets [`CACHES_SYNCED`] once the policy and pod caches have their first full lists (and
    /// [`crate::webhook::CERT_LOADED`] once the webhook serves).
    pub health: Arc<Health>,
    /// Serve the injection webhook from the policy cache.
    pub webhook: Option<crate::webhook::Settings>,
    /// The operator-wide ceiling of a policy's `exporter.maxConfigSize` (bytes).
    pub max_config_bytes: usize,
    /// Namespaces whose policies may write with the operator's own cloud identity
    /// (`writeCredentials.ambient`); `*` allows all.
    pub ambient_write_namespaces: Vec<String>,
}

impl Settings {
    /// All namespaces, fresh metrics, a health that waits for [`CACHES_SYNCED`].
    pub fn new(identity: impl Into<String>) -> Self {
        Settings {
            identity: identity.into(),
            namespace: None,
            metrics: Arc::default(),
            health: Arc::new(Health::new(&[CACHES_SYNCED])),
            webhook: None,
            max_config_bytes: DEFAULT_MAX_CONFIG_BYTES,
            ambient_write_namespaces: Vec::new(),
        }
    }
}

/// The default of `run --max-config-size`: 64 MiB.
pub const DEFAULT_MAX_CONFIG_BYTES: usize = 64 << 20;

/// The readiness check the controller passes once its caches are synced.
pub const CACHES_SYNCED: &str = "caches";

/// The `controller` label of this controller's reconcile metrics.
const CONTROLLER: &str = "policy";

/// A pod as the controller caches it: metadata only.
type PodMeta = kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Pod>;

struct Context {
    client: Client,
    /// The metadata of the pods in scope (labels and the injection annotation).
    pods: kube::runtime::reflector::Store<PodMeta>,
    /// Every policy in scope (to tell which policy claims a pod).
    policies: kube::runtime::reflector::Store<FallbackConfigPolicy>,
    /// Whether `pods` holds the whole first listing; until then a report would undercount.
    pods_synced: Arc<std::sync::atomic::AtomicBool>,
    /// Events, published off the reconcile path.
    events: events::Events,
    exporters: Exporters,
    electors: Electors,
    probes: probe::Probes,
    rollouts: rollout::Rollouts,
    /// What the Secrets policies name hold, as last read; the webhook leaves out
    /// references to Secrets or keys known to be missing.
    secrets: crate::webhook::SharedSecretFacts,
    /// Reads the Secrets policies name, cached against the Secret metadata watch.
    reader: secrets::SecretReader,
    /// Whether this replica serves the webhook, and its readiness (for rollouts).
    webhook_enabled: bool,
    /// The operator-wide ceiling of a configuration held in memory.
    max_config_bytes: usize,
    /// Namespaces allowed `writeCredentials.ambient`.
    ambient_write_namespaces: Vec<String>,
    health: Arc<Health>,
    identity: String,
    metrics: Arc<Metrics>,
}

/// Checks that the CRD is installed, Established and not older than this operator's (see
/// [`crd::missing_fields`]), so a missing or outdated CRD is one clear error instead of a
/// watch failing in a loop or fields silently dropped.
pub async fn check_crd(client: &Client) -> Result<(), Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = FallbackConfigPolicy::crd_name();
    let crd = crds.get_opt(name).await?.ok_or(Error::CrdMissing)?;
    let missing = crd::missing_fields(&FallbackConfigPolicy::crd(), &crd, crate::api::VERSION);
    if !missing.is_empty() {
        return Err(Error::CrdOutdated { missing });
    }
    let established = crd
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    if established {
        Ok(())
    } else {
        Err(Error::CrdNotEstablished)
    }
}

/// Runs the controller until SIGINT/SIGTERM.
pub async fn run(client: Client, settings: Settings) -> Result<(), Error> {
    let Settings {
        identity,
        namespace,
        metrics,
        health,
        webhook,
        max_config_bytes,
        ambient_write_namespaces,
    } = settings;
    check_crd(&client).await?;
    let (trigger, triggers) = tokio::sync::mpsc::unbounded_channel();
    let pod_trigger = trigger.clone();
    // NB: an Api of PartialObjectMeta makes metadata-only requests: labels and annotations
    // are all the pod report needs, and the cache stays small with thousands of pods.
    let pods_api: Api<PodMeta> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (pod_store, pod_writer) = kube::runtime::reflector::store();
    let pod_events = kube::runtime::reflector(
        pod_writer,
        watcher::watcher(pods_api, watcher::Config::default().any_semantic())
            .backoff(crate::watch::backoff()),
    );
    // NB: Secrets are watched as metadata only: a change re-triggers the policies that name
    // the Secret, which then read just those Secrets. No other Secret's value ever reaches
    // this process.
    let (policies, secrets): (
        Api<FallbackConfigPolicy>,
        Api<kube::core::PartialObjectMeta<Secret>>,
    ) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    info!(
        namespace = namespace.as_deref().unwrap_or("(all)"),
        "watching FallbackConfigPolicy objects"
    );
    let triggers = futures::stream::unfold(triggers, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    });
    // NB: our own status writes do not re-trigger a policy: otherwise each write during pod
    // churn would start the next reconcile at once and bypass the pod throttle. What does
    // (spec, deletion, finalizers, labels, annotations) changes these hashes; the store
    // still gets every update.
    let (store, writer) = kube::runtime::reflector::store();
    let policy_events = kube::runtime::reflector(
        writer,
        watcher::watcher(policies, watcher::Config::default().any_semantic())
            .backoff(crate::watch::backoff()),
    )
    .applied_objects()
    .predicate_filter(
        predicates::generation
            .combine(predicates::finalizers)
            .combine(predicates::labels)
            .combine(predicates::annotations),
        Default::default(),
    );
    let controller = Controller::for_stream(policy_events, store.clone());
    // A Secret a policy references re-triggers it, so a fixed Secret clears the error at
    // once; the metadata it lists also keeps the Secret reader's cache honest.
    let (secret_metas, secret_writer) = kube::runtime::reflector::store();
    let secret_events = kube::runtime::reflector(
        secret_writer,
        watcher::watcher(secrets, watcher::Config::default().any_semantic())
            .backoff(crate::watch::backoff()),
    )
    .touched_objects();
    let (events, publisher) = events::Events::start(
        Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance: Some(identity.clone()),
            },
        ),
        events::QUEUE,
        metrics.clone(),
    );
    let ctx = Arc::new(Context {
        events,
        client: client.clone(),
        pods: pod_store,
        policies: store.clone(),
        pods_synced: Arc::default(),
        exporters: Exporters::new(identity.clone(), trigger.clone(), metrics.clone()),
        electors: Electors::new(
            client.clone(),
            namespace.as_deref(),
            &identity,
            trigger,
            metrics.clone(),
        ),
        probes: probe::Probes::default(),
        rollouts: rollout::Rollouts::default(),
        secrets: Arc::default(),
        reader: secrets::SecretReader::cached(client.clone(), secret_metas),
        webhook_enabled: webhook.is_some(),
        max_config_bytes,
        ambient_write_namespaces,
        health: health.clone(),
        identity,
        metrics: metrics.clone(),
    });
    let by_secret = store.clone();
    let pod_triggers = tokio::spawn(trigger_on_pods(
        pod_events,
        store.clone(),
        pod_trigger,
        ctx.pods_synced.clone(),
    ));
    let (stop_webhook, webhook_stopped) = tokio::sync::watch::channel(false);
    let webhook = webhook.map(|ws| {
        health.set(crate::webhook::CERT_LOADED, false);
        tokio::spawn(crate::webhook::run(
            client.clone(),
            ws,
            store.clone(),
            ctx.secrets.clone(),
            metrics.clone(),
            health.clone(),
            webhook_stopped,
        ))
    });
    let synced = {
        let (store, pods_synced) = (store.clone(), ctx.pods_synced.clone());
        tokio::spawn(async move {
            if !store_ready(&store).await {
                return;
            }
            // A replica that cannot list pods stays unready (its status writes wait too).
            while !pods_synced.load(std::sync::atomic::Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            health.set(CACHES_SYNCED, true);
            info!("caches synced; ready");
        })
    };
    // NB: without a finalizer a deleted policy is never reconciled again; sweep its exporters.
    let sweeper = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                for key in ctx.exporters.keys().into_iter().chain(ctx.electors.keys()) {
                    let obj = ObjectRef::<FallbackConfigPolicy>::new(&key.1).within(&key.0);
                    if store.get(&obj).is_none() {
                        ctx.exporters.stop(&key);
                        ctx.electors.stop(&key);
                        ctx.probes.forget(&key);
                    }
                }
            }
        })
    };
    controller
        .watches_stream(
            secret_events,
            move |secret: kube::core::PartialObjectMeta<Secret>| {
                let ns = secret.namespace().unwrap_or_default();
                let name = secret.name_any();
                by_secret
                    .state()
                    .into_iter()
                    .filter(|p| {
                        p.namespace().as_deref() == Some(ns.as_str()) && references(&p.spec, &name)
                    })
                    .map(|p| ObjectRef::from_obj(&*p))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_on(triggers)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
    sweeper.abort();
    synced.abort();
    pod_triggers.abort();
    // Close the gates and stop the writers, then release the Leases: the next replica takes
    // over at once instead of after leaseDuration.
    tokio::join!(ctx.exporters.shutdown(), ctx.electors.shutdown());
    publisher.finish(Duration::from_secs(5)).await;
    let _ = stop_webhook.send(true);
    if let Some(task) = webhook {
        match task.await {
            Ok(Err(e)) => warn!(error = %e, "the webhook failed"),
            Err(e) => warn!(error = %e, "the webhook task failed"),
            Ok(Ok(())) => {}
        }
    }
    info!("controller stopped");
    Ok(())
}

/// The finalizer that lets the operator remove what it created for a policy.
pub const FINALIZER: &str = "fallback.kong-dp.io/cleanup";

/// The field manager that owns [`FINALIZER`] (and nothing else) on the policy object.
const FINALIZER_MANAGER: &str = "kong-fallback-operator-finalizer";

/// `policy` as the apiserver has it once it carries [`FINALIZER`]: added by a server-side
/// apply of that one list entry when the cached object lacks it, else `policy` itself.
///
/// NB: idempotent, where kube-runtime's `finalizer` helper adds with a JSON patch that
/// first tests the cached finalizers. A trigger that came before the watch delivered our
/// own add (the pod listing's end, a Lease change: hundreds at once when an operator
/// starts on existing policies) failed that test with 422 and held the policy's first
/// status back by the error requeue (bench P4). `metadata.finalizers` is a set for
/// server-side apply, so another owner's entries are kept. A policy being deleted is left
/// as it is (the apiserver refuses new finalizers then).
pub async fn with_finalizer(
    api: &Api<FallbackConfigPolicy>,
    policy: Arc<FallbackConfigPolicy>,
) -> Result<Arc<FallbackConfigPolicy>, kube::Error> {
    if policy.metadata.deletion_timestamp.is_some()
        || policy.finalizers().iter().any(|f| f == FINALIZER)
    {
        return Ok(policy);
    }
    let patch = serde_json::json!({
        "apiVersion": FallbackConfigPolicy::api_version(&()),
        "kind": FallbackConfigPolicy::kind(&()),
        "metadata": {"name": policy.name_any(), "finalizers": [FINALIZER]},
    });
    let applied = api
        .patch(
            &policy.name_any(),
            &PatchParams::apply(FINALIZER_MANAGER),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(Arc::new(applied))
}

/// Whether `store` has its first listing; false if its writer is gone.
async fn store_ready<K>(store: &kube::runtime::reflector::Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    // NB: a store's readiness is a oneshot that keeps only its last waiter's waker, and
    // the controller waits on the policy store too: poll again until it says ready.
    loop {
        let wait = tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready());
        match wait.await {
            Ok(Ok(())) => return true,
            Ok(Err(_)) => return false,
            Err(_elapsed) => {}
        }
    }
}

/// Drives the pod cache: a pod created, changed or deleted re-triggers the policies that
/// select it, at most once per [`throttle::POD_TRIGGER_PERIOD`] each, and the end of
/// every relisting re-triggers them all.
async fn trigger_on_pods(
    events: impl futures::Stream<Item = Result<watcher::Event<PodMeta>, watcher::Error>>,
    policies: kube::runtime::reflector::Store<FallbackConfigPolicy>,
    trigger: tokio::sync::mpsc::UnboundedSender<ObjectRef<FallbackConfigPolicy>>,
    synced: Arc<std::sync::atomic::AtomicBool>,
) {
    let throttle = Arc::new(std::sync::Mutex::new(throttle::Throttle::new(
        throttle::POD_TRIGGER_PERIOD,
    )));
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::Delete(pod)) => pod,
            // NB: the reflector swaps a listing into the cache only when it is complete,
            // so reconciles triggered by the pods of a listing may have seen none of it.
            Ok(watcher::Event::InitDone) => {
                // NB: not after the first listing: the reconciles that need it wait for it
                // in line (`reconcile_policy`), or requeue if it takes longer. Triggering
                // every policy here too ran each one twice as an operator started, the
                // second time often on a cached object without the first's status write,
                // so that the status was written and its Events published twice (bench P4).
                // A relisting, after the watch lost its place, can hide any pod change.
                let relisted = synced.swap(true, std::sync::atomic::Ordering::AcqRel);
                if relisted {
                    for policy in policies.state() {
                        let _ = trigger.send(ObjectRef::from_obj(&*policy));
                    }
                }
                continue;
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
            Err(e) => {
                warn!(error = %e, "watching pods failed; retrying");
                continue;
            }
        };
        let selecting = policies.state().into_iter().filter(|p| {
            p.namespace() == pod.namespace()
                && !matches!(crate::inject::role(p, pod.labels()), Ok(None))
        });
        for policy in selecting {
            let obj = ObjectRef::from_obj(&*policy);
            let admit = throttle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .admit(&obj, tokio::time::Instant::now());
            match admit {
                throttle::Admit::Now => {
                    let _ = trigger.send(obj);
                }
                throttle::Admit::At(at) => {
                    let (throttle, trigger) = (throttle.clone(), trigger.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at).await;
                        throttle
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .fired(&obj, tokio::time::Instant::now());
                        let _ = trigger.send(obj);
                    });
                }
                throttle::Admit::Folded => {}
            }
        }
    }
}

async fn reconcile(policy: Arc<FallbackConfigPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    use kube::runtime::finalizer::{Event as Finalizer, finalizer};
    let started = Instant::now();
    let api: Api<FallbackConfigPolicy> =
        Api::namespaced(ctx.client.clone(), &policy.namespace().unwrap_or_default());
    let policy = match with_finalizer(&api, policy).await {
        Ok(p) => p,
        Err(e) => {
            let error = Error::Finalizer(format!("failed to add finalizer: {e}"));
            ctx.metrics
                .reconciled(CONTROLLER, started.elapsed(), Some(error.label()));
            return Err(error);
        }
    };
    let result = finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            Finalizer::Apply(p) => reconcile_policy(&p, &ctx).await,
            Finalizer::Cleanup(p) => cleanup(&p, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    let error = result.as_ref().err().map(Error::label);
    ctx.metrics.reconciled(CONTROLLER, started.elapsed(), error);
    result
}

/// A deleted policy: stop its work (the mirror removes the leader's registrations, the
/// elector releases), then delete the Lease. Bounded: storage that cannot be reached does
/// not hold up the deletion (a registration left behind goes stale by itself).
async fn cleanup(policy: &FallbackConfigPolicy, ctx: &Context) -> Result<Action, Error> {
    let key = (policy.namespace().unwrap_or_default(), policy.name_any());
    ctx.exporters
        .stop_and_wait(&key, Duration::from_secs(10))
        .await;
    ctx.electors
        .stop_and_wait(&key, Duration::from_secs(10))
        .await;
    ctx.probes.forget(&key);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(ctx.client.clone(), &key.0);
    match leases.delete(&key.1, &Default::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    info!(policy = %key.1, namespace = %key.0, "cleaned up after a deleted policy");
    Ok(Action::await_change())
}

async fn reconcile_policy(policy: &FallbackConfigPolicy, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let name = policy.name_any();
    let namespace = policy.namespace().unwrap_or_default();
    let key = (namespace.clone(), name.clone());
    let problems = validate(&policy.spec);
    plan::record_credential_secrets(&ctx.reader, &namespace, &policy.spec, &ctx.secrets).await;
    let gate = ctx
        .electors
        .ensure(policy, leadership::timings(policy, problems.is_empty()));
    // NB: a suspended policy keeps its elector: the Lease holder still writes its status.
    let suspended = policy.spec.suspend;
    let export = if problems.is_empty()
        && !suspended
        && policy.spec.exporter.mode == ExporterMode::Operator
    {
        let mut view = ExportView {
            stall_after: Duration::from(policy.spec.exporter.min_interval) + status::STALL_MARGIN,
            ..ExportView::default()
        };
        let built = match plan::ambient_write_allowed(
            &policy.spec,
            &namespace,
            &ctx.ambient_write_namespaces,
        ) {
            Ok(()) => {
                plan::build(
                    &ctx.client,
                    &ctx.reader,
                    policy,
                    &ctx.identity,
                    ctx.max_config_bytes,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match built {
            Ok((plan, notes)) => {
                view.notes = notes;
                if let Err(e) = ctx.exporters.ensure(&key, plan, &gate).await {
                    view.setup_error = Some(("StorageUnusable".into(), e));
                }
            }
            Err(e) => {
                ctx.exporters.stop(&key);
                view.setup_error = Some(e);
            }
        }
        view.states = ctx.exporters.states(&key);
        view.fencing = ctx.exporters.fencing(&key);
        Some(view)
    } else {
        None
    };
    // mode: BackupPods: designate a backup pod per version and mirror its node id.
    let mut designation: Option<backup::Designation> = None;
    let mut backup_problem: Option<(String, String)> = None;
    if problems.is_empty() && !suspended && policy.spec.exporter.mode == ExporterMode::BackupPods {
        let current: std::collections::BTreeMap<String, String> = policy
            .status
            .as_ref()
            .and_then(|s| s.leader.as_ref())
            .map(|l| {
                l.backup_pods
                    .iter()
                    .map(|d| (d.version.clone(), d.pod.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let secrets = ctx
            .secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let built = match plan::ambient_write_allowed(
            &policy.spec,
            &namespace,
            &ctx.ambient_write_namespaces,
        ) {
            Ok(()) => backup::build(&ctx.client, &ctx.reader, policy, &secrets, &current).await,
            Err(e) => Err(e),
        };
        match built {
            Ok(plan) => {
                let chosen = plan.designation.clone();
                if let Some(note) = plan.notes.first() {
                    warn!(policy = %name, namespace = %namespace, "{note}");
                }
                match ctx.exporters.ensure_mirrors(&key, plan, &gate).await {
                    Ok(()) => designation = Some(chosen),
                    Err(e) => backup_problem = Some(("StorageUnusable".into(), e)),
                }
            }
            Err(e) => {
                ctx.exporters.stop(&key);
                backup_problem = Some(e);
            }
        }
    } else if export.is_none() {
        ctx.exporters.stop(&key);
    }
    let claim = gate.claim();
    if !claim.leading(Instant::now()) {
        // Followers keep their exporters warm but leave status to the leader; a change of
        // leadership triggers this again.
        debug!(policy = %name, namespace = %namespace, holder = ?claim.holder, "not leading; status left to the leader");
        ctx.metrics.pods_not_injected(&namespace, &name, None);
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    // NB: wait here for the pod listing (bounded) instead of requeueing at once: a listing
    // ends within a second or two, and a requeue's delay held every policy's first status
    // back by seconds (bench P4); the trigger sent when the listing ends races with these.
    let listed = async {
        while !ctx.pods_synced.load(std::sync::atomic::Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), listed)
        .await
        .is_err()
    {
        debug!(policy = %name, namespace = %namespace, "pod cache still listing; status waits for it");
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let current = policy.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let mut desired = status::desired_status(
        &current,
        policy.metadata.generation,
        &problems,
        export.as_ref(),
        now.clone(),
    );
    let leader = claim.holder.clone().map(|identity| LeaderStatus {
        identity,
        since: claim.since.map(Time),
        transitions: claim.epoch,
        backup_pod: designation
            .as_ref()
            .and_then(|d| d.designated.first())
            .map(|d| d.pod.clone()),
        node_id: designation
            .as_ref()
            .and_then(|d| d.designated.first())
            .map(|d| d.node_id.clone()),
        backup_pods: designation
            .as_ref()
            .map(|d| d.designated.clone())
            .unwrap_or_default(),
    });
    let mut leader_note: Option<String> = None;
    if backup_problem.is_none()
        && let Some(d) = &designation
    {
        (backup_problem, leader_note) = d.verdict();
    }
    status::set_leader(
        &mut desired,
        leader,
        backup_problem.as_ref(),
        leader_note.as_deref(),
        policy.metadata.generation,
        now.clone(),
    );
    if let Some(note) = &leader_note {
        let said = |s: &crate::api::FallbackConfigPolicyStatus| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Leading" && c.message.contains(note.as_str()))
        };
        if !said(&current) && said(&desired) {
            let change = status::Change {
                warning: true,
                reason: "NodeIdUnknown".into(),
                note: note.clone(),
            };
            publish(ctx, policy, change);
        }
    }
    let mut storage_check_ms = 0;
    if problems.is_empty() {
        let checking = Instant::now();
        let storage = ctx.probes.check(&ctx.reader, policy).await;
        storage_check_ms = checking.elapsed().as_millis() as u64;
        status::set_storage(
            &mut desired,
            &storage,
            policy.metadata.generation,
            now.clone(),
        );
        let all_pods = ctx.pods.state();
        // NB: shared, not cloned: a reconcile per policy, each copying every policy, was
        // policies x policies deep copies during a catch-up (bench P4).
        let policies = ctx.policies.state();
        let secrets = ctx
            .secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let report = pods::report(policy, &policies, &all_pods, &secrets);
        ctx.metrics
            .pods_not_injected(&namespace, &name, Some(report.not_injected.len()));
        status::set_pods(
            &mut desired,
            &report,
            policy.metadata.generation,
            now.clone(),
        );
        if policy.spec.data_planes.rollout && !suspended && !report.not_injected.is_empty() {
            let webhook = if !ctx.webhook_enabled {
                Err("this operator does not serve the webhook (run --webhook): restarted pods would not be injected".to_owned())
            } else if ctx.health.pending().contains(&crate::webhook::CERT_LOADED) {
                Err("the webhook does not serve yet (no certificate loaded)".to_owned())
            } else {
                Ok(())
            };
            let control_plane = export.as_ref().and_then(|v| {
                v.states
                    .iter()
                    .find(|(_, s)| !s.connected)
                    .map(|(version, s)| {
                        let why = s
                            .session_error
                            .as_ref()
                            .map_or("not connected yet".to_owned(), |e| e.1.clone());
                        format!("version {version}: {why}")
                    })
            });
            let policies: Vec<FallbackConfigPolicy> =
                policies.iter().map(|p| (**p).clone()).collect();
            let conditions = rollout::Conditions {
                webhook,
                control_plane,
                policies: &policies,
                secrets: &secrets,
            };
            match ctx
                .rollouts
                .restart(
                    &ctx.client,
                    policy,
                    &all_pods,
                    &report.not_injected,
                    &conditions,
                )
                .await
            {
                Ok(done) => {
                    for ((kind, _, workload), outcome) in done {
                        let change = match outcome {
                            rollout::Outcome::Restarted => status::Change {
                                warning: false,
                                reason: "RolloutRestarted".into(),
                                note: format!(
                                    "restarted {kind} {workload}: its pods lack the current injection"
                                ),
                            },
                            rollout::Outcome::Held(why) => status::Change {
                                warning: true,
                                reason: "RolloutHeld".into(),
                                note: format!("not restarting {kind} {workload}: {why}"),
                            },
                            rollout::Outcome::GaveUp(why) => status::Change {
                                warning: true,
                                reason: "RolloutGaveUp".into(),
                                note: format!("{kind} {workload}: {why}"),
                            },
                        };
                        publish(ctx, policy, change);
                    }
                }
                Err(e) => warn!(policy = %name, error = %e, "cannot restart a workload"),
            }
        }
    } else {
        // An invalid spec selects nothing it could count.
        ctx.metrics.pods_not_injected(&namespace, &name, None);
    }
    if suspended && problems.is_empty() {
        status::set_suspended(&mut desired, policy.metadata.generation, now.clone());
    }
    status::set_progress(&mut desired, policy.metadata.generation, now);

    let mut status_write_ms = 0;
    if desired != current {
        let writing = Instant::now();
        let api: Api<FallbackConfigPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({
            "apiVersion": FallbackConfigPolicy::api_version(&()),
            "kind": FallbackConfigPolicy::kind(&()),
            "status": desired,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| Error::Status {
            policy: format!("{namespace}/{name}"),
            source,
        })?;
        status_write_ms = writing.elapsed().as_millis() as u64;
        for change in status::changes(&current, &desired) {
            publish(ctx, policy, change);
        }
    }
    let ready = desired
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    // NB: the times say where a slow reconcile waited (bench P4 reads them).
    info!(
        policy = %name,
        namespace = %namespace,
        problems = problems.len(),
        ready,
        took_ms = started.elapsed().as_millis() as u64,
        storage_check_ms,
        status_write_ms,
        "reconciled"
    );
    // NB: the pod cache holds metadata only: in BackupPods mode a designated pod that stops
    // being Ready is noticed by this requeue.
    let backup_mode = policy.spec.exporter.mode == ExporterMode::BackupPods;
    // NB: a configuration waiting to be stored is looked at again when it would count as
    // stalled: a hung writer sends no report that would trigger us.
    let waiting = export
        .as_ref()
        .is_some_and(|v| v.states.values().any(|s| s.waiting_since.is_some()));
    let requeue = match (backup_mode, ready) {
        (true, _) => Duration::from_secs(10),
        (false, true) => Duration::from_secs(300),
        (false, false) => Duration::from_secs(30),
    };
    let requeue = match (waiting, export.as_ref()) {
        (true, Some(v)) => requeue.min(v.stall_after + Duration::from_secs(1)),
        _ => requeue,
    };
    // NB: the storage check is due every validationInterval, and without another event
    // only this requeue runs it: a key revoked while nothing else changes must show.
    let check: Duration = policy.spec.storage.validation_interval.into();
    let requeue = if check.is_zero() {
        requeue
    } else {
        requeue.min(check.max(Duration::from_secs(1)))
    };
    Ok(Action::requeue(requeue))
}

fn error_policy(policy: Arc<FallbackConfigPolicy>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(policy = %policy.name_any(), error = %error, kind = error.label(), "reconcile error; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// Whether `spec` names the Secret `name`.
pub fn references(spec: &crate::api::FallbackConfigPolicySpec, name: &str) -> bool {
    let st = &spec.storage;
    [
        st.read_credentials.secret(),
        st.write_credentials.as_ref().and_then(|c| c.secret()),
    ]
    .into_iter()
    .flatten()
    .chain(st.ca().map(|(name, _)| name))
    .chain(
        spec.exporter
            .control_plane
            .as_ref()
            .map(|c| c.cluster_cert_secret.as_str()),
    )
    .any(|s| s == name)
}

fn publish(ctx: &Context, policy: &FallbackConfigPolicy, change: status::Change) {
    let event = Event {
        type_: if change.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: change.reason,
        note: Some(change.note),
        action: "Reconcile".into(),
        secondary: None,
    };
    ctx.events.send(event, policy.object_ref(&()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_references_its_credential_certificate_and_ca_secrets() {
        let spec: crate::api::FallbackConfigPolicySpec = serde_json::from_value(serde_json::json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {
                "url": "s3://bkt/p", "region": "r",
                "readCredentials": {"secretName": "read"},
                "writeCredentials": {"secretName": "write"},
                "caCert": {"secretName": "ca", "key": "ca.crt"}
            },
            "exporter": {"mode": "Operator", "controlPlane": {"endpoint": "cp:8005", "clusterCertSecret": "cert"}}
        }))
        .unwrap();
        for name in ["read", "write", "ca", "cert"] {
            assert!(references(&spec, name), "{name}");
        }
        assert!(!references(&spec, "other"));
    }

    fn pod(name: &str, app: &str) -> PodMeta {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "kong", "labels": {"app": app}}
        }))
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn pod_events_trigger_selecting_policies_and_a_relisting_triggers_all() {
        let policy: FallbackConfigPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "fallback.kong-dp.io/v1alpha1", "kind": "FallbackConfigPolicy",
            "metadata": {"name": "prod", "namespace": "kong"},
            "spec": {
                "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
                "storage": {"url": "gcs://bkt/p", "readCredentials": {"ambient": true}},
                "exporter": {"mode": "None"}
            }
        }))
        .unwrap();
        let (store, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&watcher::Event::Apply(policy.clone()));
        let (events_tx, events_rx) = futures::channel::mpsc::unbounded();
        let (trigger, mut triggered) = tokio::sync::mpsc::unbounded_channel();
        let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn(trigger_on_pods(events_rx, store, trigger, synced.clone()));
        let prod = ObjectRef::from_obj(&policy);
        let send = |e: watcher::Event<PodMeta>| events_tx.unbounded_send(Ok(e)).unwrap();
        async fn next<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> T {
            tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("a trigger")
                .expect("the channel is open")
        }

        // A listing in progress is not in the cache yet: its pods trigger nothing...
        send(watcher::Event::Init);
        send(watcher::Event::InitApply(pod("dp-0", "kong-dp")));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(triggered.try_recv().is_err());
        assert!(!synced.load(std::sync::atomic::Ordering::Acquire));
        // ...its end makes the cache count as synced, and triggers nothing: the reconciles
        // that need it wait for it.
        send(watcher::Event::InitDone);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(synced.load(std::sync::atomic::Ordering::Acquire));
        assert!(triggered.try_recv().is_err(), "the first listing triggered");

        // A pod the policy does not select triggers nothing.
        send(watcher::Event::Apply(pod("other", "web")));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(triggered.try_recv().is_err());
        // A selected pod triggers at once; a burst after it, once at the end of the period.
        let start = tokio::time::Instant::now();
        send(watcher::Event::Apply(pod("dp-1", "kong-dp")));
        assert_eq!(next(&mut triggered).await, prod);
        for i in 2..10 {
            send(watcher::Event::Apply(pod(&format!("dp-{i}"), "kong-dp")));
        }
        send(watcher::Event::Delete(pod("dp-1", "kong-dp")));
        assert_eq!(next(&mut triggered).await, prod);
        assert!(start.elapsed() >= throttle::POD_TRIGGER_PERIOD);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(triggered.try_recv().is_err(), "the burst triggered once");

        // A relisting (the watch lost its place) may hide any change: it triggers them all.
        send(watcher::Event::Init);
        send(watcher::Event::InitApply(pod("dp-2", "kong-dp")));
        send(watcher::Event::InitDone);
        assert_eq!(next(&mut triggered).await, prod);
        task.abort();
    }
}
