//! The thin loop around [`Exporter`]: snapshots in from the control-plane client, writes
//! out through an [`ObjectStore`], reports out to whoever keeps the status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::decision::{Exporter, Next, Snapshot};
use super::early::{Early, Outcome, Stager};
use super::history::{history_key, to_prune};
use crate::cp_client::{ConfigSnapshot, Event};
use crate::election::Gate;
use crate::kong::StorageUrl;
use crate::metrics::ExportEvent;
use crate::storage::{ErrorKind, Object, ObjectStore, Precondition, PutObject, StoreError};

/// Object metadata naming the exporter's Kong node id, as Kong's own exporter sets it
/// (`uploader = self.node_id` in Kong's `config_sync_backup/strategies/s3.lua`): the
/// operator's stable node id for the policy and version, whichever replica wrote.
pub const META_UPLOADER: &str = "uploader";
/// Object metadata naming the operator replica that wrote (its Lease identity).
pub const META_WRITER: &str = "writer";
/// Object metadata with the control plane's hash of the stored configuration.
pub const META_CONFIG_HASH: &str = "config-hash";
/// Object metadata with the writer's election epoch (the Lease's `leaseTransitions`).
pub const META_EPOCH: &str = "fencing-epoch";
/// Object metadata with the UID of the Lease the fencing epoch counts in.
pub const META_LEASE: &str = "fencing-lease";
/// Object metadata naming the policy that wrote (`namespace/name`): another policy (or
/// cluster) writing the same prefix is a conflict to report, not a newer leader.
pub const META_OWNER: &str = "fencing-owner";
/// Object metadata with the control plane's `timestamp` of the stored configuration (epoch
/// seconds): a writer never replaces a stored configuration with an older one.
pub const META_CONFIG_TIMESTAMP: &str = "config-timestamp";

/// Where and how one version is exported.
#[derive(Clone)]
pub struct ExportTarget {
    pub url: StorageUrl,
    pub version: String,
    /// Written as the `uploader` metadata: the stable node id.
    pub uploader: String,
    /// Written as the `writer` metadata: this replica.
    pub writer: String,
    /// Written as the `fencing-owner` metadata: the policy, `namespace/name`.
    pub owner: String,
    /// The plugins announced to the control plane (what the data planes have): a
    /// configuration that configures any other is refused. `None`: not checked.
    pub plugins: Option<Vec<(String, String)>>,
    pub min_interval: Duration,
    /// History entries kept; 0 keeps none.
    pub history_limit: usize,
}

/// Where one export's time went: the frame read off the control plane's socket, decoded
/// and validated, taken through the exporter's checks and queue, then written.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stages {
    /// When the frame was read (`None`: the snapshot did not come from a session).
    pub read: Option<Instant>,
    /// Read → decoded: inflate, JSON and the configuration's validation.
    pub decode: Duration,
    /// The parts of `decode` that were inflating, and reading and checking the JSON (the
    /// rest is the hop to the decoding thread and back).
    pub inflate: Duration,
    pub checks: Duration,
    /// Decoded → the PUT started: the plugin check, coalescing, waiting for the lead.
    pub queue: Duration,
    /// The PUT of `config.json`.
    pub put: Duration,
    /// When the PUT returned.
    pub written: Option<Instant>,
    /// Whether the write was staged while the frame was checked (see [`super::early`]):
    /// `put` is then the wait for the staged parts, the last part and the commit.
    pub staged: bool,
    /// Whether the write was made in parts after the checks (a large configuration not
    /// staged while checked: [`super::early::Stager::write_in_parts`]).
    pub in_parts: bool,
}

/// A snapshot the exporter holds, and when it arrived (for [`Stages`]).
#[derive(Clone, Copy, Debug)]
struct Arrived {
    at: Instant,
    arrival: Option<crate::cp_client::Arrival>,
}

/// What happened, for status, Events and metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// The control-plane session is up.
    Connected,
    /// Connected, but the control plane sent no configuration (withheld).
    NoConfig,
    /// The session ended.
    Disconnected { reason: String, label: &'static str },
    /// A frame was refused; the last good configuration stays.
    Rejected { reason: String, label: &'static str },
    /// A new configuration is waiting to be written (the clock of a stalled export starts).
    Received { hash: String },
    /// A snapshot was not exported (unchanged, empty...).
    Skipped { hash: String, why: &'static str },
    /// A configuration the data planes could not load was not exported: the reason names
    /// what they lack.
    Refused { hash: String, reason: String },
    /// `config.json` was written.
    Exported {
        key: String,
        hash: String,
        bytes: u64,
        at: SystemTime,
        /// From the snapshot reaching the exporter to the write's end.
        latency: Duration,
        /// Where the time went, step by step.
        stages: Stages,
    },
    /// The history step after an export ended: its entry written (and the history
    /// pruned), or not (logged). Comes after the export's report, never before.
    History { hash: String, written: bool },
    /// A write failed; it is retried after `retry_in`.
    Failed {
        error: StoreError,
        retry_in: Duration,
    },
    /// On taking the lead: what another writer stored (nothing to write if it is current).
    Stored {
        key: String,
        hash: String,
        bytes: u64,
        at: SystemTime,
    },
    /// A write was refused because a newer leader (`epoch`) wrote the object: stepped down.
    Fenced { mine: i32, epoch: i32 },
    /// The stored object was written by another policy (or cluster) on the same prefix:
    /// not overwritten; retried with backoff.
    Foreign { owner: String, key: String },
}

impl Report {
    /// What this report changes in the metrics, if anything. Only stable labels pass,
    /// never a message.
    pub fn metric(&self) -> Option<ExportEvent<'_>> {
        Some(match self {
            Report::Connected => ExportEvent::Connected,
            Report::NoConfig => ExportEvent::Withheld,
            Report::Disconnected { label, .. } => ExportEvent::Disconnected { reason: label },
            Report::Rejected { label, .. } => ExportEvent::RejectedFrame { reason: label },
            Report::Skipped { .. } => ExportEvent::Skipped,
            Report::Exported {
                bytes, at, latency, ..
            } => ExportEvent::Exported {
                bytes: *bytes,
                at: *at,
                latency: *latency,
            },
            Report::Failed { error, .. } => ExportEvent::Failed {
                reason: error.kind.label(),
            },
            Report::Fenced { .. } => ExportEvent::Fenced,
            Report::Stored { .. }
            | Report::Received { .. }
            | Report::History { .. }
            | Report::Refused { .. }
            | Report::Foreign { .. } => return None,
        })
    }
}

/// Runs until `events` closes or `shutdown` fires: feeds snapshots into the decision
/// state and writes what it says, while `gate` grants it (see [`crate::election`]).
///
/// Every write of `config.json` is conditional on the version last seen (or on absence),
/// so a writer that lost the lead without knowing cannot overwrite a newer leader's write.
pub async fn run(
    target: ExportTarget,
    store: Arc<dyn ObjectStore>,
    mut events: mpsc::Receiver<Event>,
    reports: mpsc::Sender<Report>,
    mut gate: Gate,
    mut shutdown: watch::Receiver<bool>,
) {
    let key = target.url.config_key(&target.version);
    let mut exporter = Exporter::new(target.min_interval, None);
    // The stored object's version as last seen, and the epoch it was read under: a new
    // epoch (we just took the lead) re-reads before writing.
    let mut seen: Option<Option<String>> = None;
    let mut seen_epoch: Option<i32> = None;
    let mut seen_lease: Option<String> = None;
    let mut conflicts = 0u32;
    // The epoch we were fenced at: no more writes until the Lease gives us a newer one.
    let mut fenced: Option<i32> = None;
    let epoch = Instant::now();
    let now_ms = || epoch.elapsed().as_millis() as u64;
    let mut received: BTreeMap<String, Arrived> = BTreeMap::new();
    // NB: the history copy follows the export off its path: the next configuration is
    // not held up by it. At most one copy is written at a time and none waits (an export
    // that finds the history busy gets no entry): it never holds more than one body.
    let history = History::start(&target, &store, &reports);
    let mut stager = Stager::new(
        store.clone(),
        format!(
            "{}/.kong-fallback-operator/staging-probe-{}",
            target.url.prefix, target.version
        ),
    );
    // NB: at most one staged write, for the newest large frame: a newer one aborts it.
    let mut early: Option<Early> = None;
    loop {
        let wait = match exporter.next(now_ms()) {
            Next::Write(snapshot) => {
                let permit = gate.permit().filter(|p| fenced.is_none_or(|f| p.epoch > f));
                let Some(permit) = permit else {
                    // Not leading: keep the newest snapshot until we are. Not a staged
                    // write: it would hold its upload open and its frame in memory while
                    // this replica follows, and the next lead may be another replica's.
                    early = None;
                    let open = wait_for_gate(
                        &target,
                        &mut gate,
                        &mut events,
                        &mut exporter,
                        &mut received,
                        &reports,
                        &mut shutdown,
                    )
                    .await;
                    if !open || *shutdown.borrow() {
                        return;
                    }
                    continue;
                };
                if seen_epoch != Some(permit.epoch) || seen.is_none() {
                    match store.head(&key).await {
                        Ok(o) => {
                            if let Fence::Foreign(owner) = fence(
                                o.as_ref(),
                                &target.owner,
                                permit.lease_uid.as_deref(),
                                permit.epoch,
                            ) {
                                let retry_in = exporter.failed(now_ms());
                                warn!(key = %key, owner = %owner, ?retry_in, "another policy writes this prefix: not overwriting its configuration");
                                let _ = reports
                                    .send(Report::Foreign {
                                        owner,
                                        key: key.clone(),
                                    })
                                    .await;
                                continue;
                            }
                            // NB: a policy whose configurations are written in parts:
                            // check the store's multipart commits now, so that the next
                            // one is staged, or written in parts, without waiting on it.
                            let large = o.as_ref().is_some_and(|o| {
                                o.info.size >= crate::export::early::IN_PARTS_FROM as u64
                            });
                            if large && let Some(p) = gate.permit() {
                                stager.prepare(p);
                            }
                            if let Some(p) = gate.permit() {
                                stager.sweep(p, &key);
                            }
                            adopt(&key, o.as_ref(), &mut exporter, &reports).await;
                            seen = Some(o.map(|o| o.info.version));
                            seen_epoch = Some(permit.epoch);
                            seen_lease.clone_from(&permit.lease_uid);
                        }
                        Err(error) => {
                            let retry_in = exporter.failed(now_ms());
                            warn!(key = %key, error = %error, ?retry_in, "cannot read the stored configuration");
                            let _ = reports.send(Report::Failed { error, retry_in }).await;
                        }
                    }
                    continue;
                }
                let arrived = received.remove(&snapshot.hash).unwrap_or(Arrived {
                    at: Instant::now(),
                    arrival: None,
                });
                let started = arrived.at;
                let put_start = Instant::now();
                let precondition = match seen.clone().flatten() {
                    Some(v) => Precondition::IfVersion(v),
                    None => Precondition::IfAbsent,
                };
                // NB: a write may not outlive the lead it was granted under: abandoned at
                // the renew deadline, it ends leaseDuration - renewDeadline before another
                // replica can take over (the store's own bound catches the rest).
                let staged = early.take();
                let result = tokio::select! {
                    r = write(&target, store.as_ref(), &key, &snapshot, (permit.epoch, permit.lease_uid.as_deref()), precondition, (staged, &mut stager)) => r,
                    _ = gate.lapsed() => Err(StoreError {
                        kind: ErrorKind::Network,
                        op: "put",
                        bucket: store.bucket().to_owned(),
                        key: key.clone(),
                        detail: "abandoned: the write did not finish within this replica's lead (renewDeadline)".into(),
                    }),
                };
                let (result, how) = match result {
                    Ok((version, how)) => (Ok(version), how),
                    Err(e) => (Err(e), Written::Put),
                };
                drop(permit);
                let written = Instant::now();
                match result {
                    Ok(version) => {
                        seen = Some(Some(version));
                        conflicts = 0;
                        exporter.written(&snapshot.hash, snapshot.timestamp, now_ms());
                        let latency = written - started;
                        let stages = Stages {
                            staged: how == Written::Staged,
                            in_parts: how == Written::InParts,
                            ..stages(arrived, put_start, written)
                        };
                        info!(key = %key, hash = %snapshot.hash, bytes = snapshot.body.len(), ?latency,
                            decode = ?stages.decode, queue = ?stages.queue, put = ?stages.put, staged = stages.staged, in_parts = stages.in_parts, "exported");
                        let _ = reports
                            .send(Report::Exported {
                                key: key.clone(),
                                hash: snapshot.hash.clone(),
                                bytes: snapshot.body.len() as u64,
                                at: SystemTime::now(),
                                latency,
                                stages,
                            })
                            .await;
                        history.offer(&snapshot);
                    }
                    Err(error) if error.kind == ErrorKind::PreconditionFailed && conflicts < 3 => {
                        // Someone else wrote: a newer leader (step down) or not (re-read, retry).
                        conflicts += 1;
                        received.insert(snapshot.hash.clone(), arrived);
                        match store.head(&key).await {
                            Ok(o) => {
                                let mine = seen_epoch.unwrap_or(0);
                                let verdict =
                                    fence(o.as_ref(), &target.owner, seen_lease.as_deref(), mine);
                                if let Fence::Foreign(_) = verdict {
                                    // NB: re-read under the next permit, which reports it.
                                    seen = None;
                                    seen_epoch = None;
                                } else if let Fence::Newer(theirs) = verdict {
                                    warn!(key = %key, mine, theirs, "a newer leader wrote the configuration: stepping down");
                                    gate.step_down(mine);
                                    fenced = Some(mine);
                                    seen_epoch = None;
                                    let _ = reports
                                        .send(Report::Fenced {
                                            mine,
                                            epoch: theirs,
                                        })
                                        .await;
                                } else {
                                    debug!(key = %key, "the stored configuration changed under us; retrying on the new version");
                                    adopt(&key, o.as_ref(), &mut exporter, &reports).await;
                                    seen = Some(o.map(|o| o.info.version));
                                }
                            }
                            Err(_) => seen = None,
                        }
                    }
                    Err(error) => {
                        conflicts = 0;
                        if error.kind == ErrorKind::PreconditionFailed {
                            seen = None;
                        }
                        received.insert(snapshot.hash.clone(), arrived);
                        let retry_in = exporter.failed(now_ms());
                        warn!(key = %key, error = %error, ?retry_in, "export failed");
                        let _ = reports.send(Report::Failed { error, retry_in }).await;
                    }
                }
                continue;
            }
            Next::WaitUntil(t) => Some(Duration::from_millis(t.saturating_sub(now_ms()))),
            Next::Idle => None,
        };
        let sleep = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600)));
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { return };
                if let Event::Inflated(envelope) = &ev {
                    // NB: only under a lead whose stored version was read (as a write).
                    let permit = gate
                        .permit()
                        .filter(|p| fenced.is_none_or(|f| p.epoch > f))
                        .filter(|p| seen_epoch == Some(p.epoch) && seen.is_some());
                    // NB: a frame not staged leaves the staged write alone: the pending
                    // configuration sent again (a reconnect within minInterval) is not
                    // staged, and its staging is still the one to commit.
                    let next = permit.and_then(|permit| {
                        let (epoch, lease) = (permit.epoch, permit.lease_uid.clone());
                        stager.begin(envelope.clone(), permit, &key, |hash, timestamp| {
                            exporter.would_keep(hash, timestamp).then(|| {
                                fenced_metadata(&target, hash, timestamp, (epoch, lease.as_deref()))
                            })
                        })
                    });
                    if next.is_some() {
                        early = next;
                    }
                }
                let ends_frame = matches!(
                    ev,
                    Event::Snapshot(_) | Event::Rejected(_) | Event::Disconnected { .. }
                );
                if let Some(report) = handle(&target, &mut exporter, &mut received, ev) {
                    let _ = reports.send(report).await;
                }
                // NB: once a frame is offered (or ends unchecked), a staged write lives only
                // while its configuration is the one to write: a frame refused after its
                // checks (plugins the data planes lack), superseded or unchanged aborts it
                // now, not at the next frame, which may be hours away.
                let pending = exporter.pending().map(|p| p.hash.as_str());
                if ends_frame && early.as_ref().is_some_and(|e| pending != Some(e.hash())) {
                    early = None;
                }
            }
            _ = sleep, if wait.is_some() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// While not leading: take events (the newest snapshot stays pending) until the claim
/// changes or shutdown. False when the events have ended: the exporter stops, as it does
/// when leading.
async fn wait_for_gate(
    target: &ExportTarget,
    gate: &mut Gate,
    events: &mut mpsc::Receiver<Event>,
    exporter: &mut Exporter,
    received: &mut BTreeMap<String, Arrived>,
    reports: &mpsc::Sender<Report>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    // NB: the permit may also lapse by time alone (renew deadline); look again now and then.
    let recheck = tokio::time::sleep(Duration::from_millis(500));
    tokio::select! {
        _ = gate.changed() => {}
        ev = events.recv() => match ev {
            Some(ev) => {
                if let Some(report) = handle(target, exporter, received, ev) {
                    let _ = reports.send(report).await;
                }
            }
            // NB: not `pending()`: inside a select arm it outlives the other arms, and a
            // closed channel would hold the task (and its snapshot) forever.
            None => return false,
        },
        _ = recheck => {}
        _ = shutdown.changed() => {}
    }
    true
}

/// Takes what the store holds as the last written state.
async fn adopt(
    key: &str,
    o: Option<&Object>,
    exporter: &mut Exporter,
    reports: &mpsc::Sender<Report>,
) {
    let hash = o.and_then(|o| o.metadata.get(META_CONFIG_HASH).cloned());
    let timestamp = o.and_then(stored_timestamp);
    if let Some(older) = exporter.stored(hash.clone(), timestamp) {
        warn!(key = %key, hash = %older.hash, "the stored configuration is newer than this replica's: not replacing it");
        let _ = reports
            .send(Report::Skipped {
                hash: older.hash,
                why: why_label(super::Dropped::Older),
            })
            .await;
    }
    if let (Some(o), Some(hash)) = (o, hash) {
        let _ = reports
            .send(Report::Stored {
                key: key.to_owned(),
                hash,
                bytes: o.info.size,
                at: o.info.last_modified,
            })
            .await;
    }
}

fn stored_epoch(o: &Object) -> Option<i32> {
    o.metadata.get(META_EPOCH)?.parse().ok()
}

/// What the stored object says about writing over it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fence {
    /// Ours to replace (conditionally on its version, as always).
    Proceed,
    /// A newer leader of our Lease wrote it at this epoch: step down.
    Newer(i32),
    /// Another policy or cluster wrote it: report, do not overwrite.
    Foreign(String),
}

/// The fencing decision for the stored object `o`, for our policy `owner` writing at
/// `mine` in the Lease `lease`. Epochs compare only within one Lease: a Lease deleted and
/// created again (a policy replaced) counts from 0 again, and an older incarnation's
/// higher epoch must not fence the new one forever. Objects without these metadata (older
/// writers) compare by epoch alone. Pure.
fn fence(o: Option<&Object>, owner: &str, lease: Option<&str>, mine: i32) -> Fence {
    let Some(o) = o else {
        return Fence::Proceed;
    };
    if let Some(theirs) = o.metadata.get(META_OWNER)
        && theirs != owner
    {
        return Fence::Foreign(theirs.clone());
    }
    if let (Some(theirs), Some(ours)) = (o.metadata.get(META_LEASE), lease)
        && theirs != ours
    {
        return Fence::Proceed;
    }
    match stored_epoch(o) {
        Some(theirs) if theirs > mine => Fence::Newer(theirs),
        _ => Fence::Proceed,
    }
}

fn stored_timestamp(o: &Object) -> Option<f64> {
    o.metadata
        .get(META_CONFIG_TIMESTAMP)?
        .parse()
        .ok()
        .filter(|t: &f64| t.is_finite())
}

fn handle(
    target: &ExportTarget,
    exporter: &mut Exporter,
    received: &mut BTreeMap<String, Arrived>,
    ev: Event,
) -> Option<Report> {
    match ev {
        Event::Inflated(_) => None,
        Event::Connected => Some(Report::Connected),
        Event::NoConfig => Some(Report::NoConfig),
        Event::Disconnected { error, .. } => Some(Report::Disconnected {
            reason: error.to_string(),
            label: error.label(),
        }),
        Event::Rejected(e) => Some(Report::Rejected {
            reason: e.to_string(),
            label: e.label(),
        }),
        Event::Snapshot(s) => {
            let hash = s.hash.clone();
            let arrival = s.arrival;
            if let Some(announced) = &target.plugins {
                let lacking = crate::cp_client::plugins::missing(&s.summary.plugins, announced);
                if !lacking.is_empty() {
                    let reason = format!(
                        "the configuration {hash} configures {} that the data planes of {} lack (Kong's bundled plugins at that version, spec.exporter.plugins and the pods' KONG_PLUGINS): not exported, since a data plane could not load it",
                        lacking.join(", "),
                        target.version
                    );
                    warn!(hash = %hash, plugins = ?lacking, "a configuration with plugins the data planes lack was not exported");
                    return Some(Report::Refused { hash, reason });
                }
            }
            match exporter.offer(to_snapshot(s)) {
                Ok(()) => {
                    received.insert(
                        hash.clone(),
                        Arrived {
                            at: Instant::now(),
                            arrival,
                        },
                    );
                    // NB: bounded: only pending hashes are remembered.
                    if received.len() > 16 {
                        let keep = exporter.pending().map(|p| p.hash.clone());
                        received.retain(|h, _| Some(h) == keep.as_ref());
                    }
                    Some(Report::Received { hash })
                }
                Err(why) => {
                    debug!(hash = %hash, ?why, "snapshot not exported");
                    Some(Report::Skipped {
                        hash,
                        why: why_label(why),
                    })
                }
            }
        }
    }
}

fn why_label(d: super::Dropped) -> &'static str {
    match d {
        super::Dropped::Unchanged => "unchanged",
        super::Dropped::AlreadyPending => "already pending",
        super::Dropped::Empty => "empty configuration",
        super::Dropped::Older => "older than the stored configuration",
    }
}

fn to_snapshot(s: ConfigSnapshot) -> Snapshot {
    let empty = s.is_empty();
    Snapshot {
        hash: s.hash,
        body: s.config,
        empty,
        timestamp: s.timestamp.filter(|t| t.is_finite()),
    }
}

fn metadata(target: &ExportTarget, hash: &str, timestamp: Option<f64>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::from([
        (META_UPLOADER.to_owned(), target.uploader.clone()),
        (META_WRITER.to_owned(), target.writer.clone()),
        (META_CONFIG_HASH.to_owned(), hash.to_owned()),
    ]);
    if let Some(t) = timestamp {
        m.insert(META_CONFIG_TIMESTAMP.to_owned(), t.to_string());
    }
    m
}

/// The metadata of a fenced write of `config.json`: [`metadata`] with the epoch, the Lease
/// and the owner.
fn fenced_metadata(
    target: &ExportTarget,
    hash: &str,
    timestamp: Option<f64>,
    (epoch, lease): (i32, Option<&str>),
) -> BTreeMap<String, String> {
    let mut metadata = metadata(target, hash, timestamp);
    metadata.insert(META_EPOCH.to_owned(), epoch.to_string());
    metadata.insert(META_OWNER.to_owned(), target.owner.clone());
    if let Some(lease) = lease {
        metadata.insert(META_LEASE.to_owned(), lease.to_owned());
    }
    metadata
}

/// How a configuration was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Written {
    Put,
    /// Committed from the parts staged while its frame was checked.
    Staged,
    /// In parts, after the checks.
    InParts,
}

/// Writes `s` to `key`: by committing `staged` when it holds this very write, else in
/// parts when it is large ([`Stager::write_in_parts`]), else with a PUT. The new version,
/// and how it was written.
async fn write(
    target: &ExportTarget,
    store: &dyn ObjectStore,
    key: &str,
    s: &Snapshot,
    fence: (i32, Option<&str>),
    precondition: Precondition,
    (staged, stager): (Option<Early>, &mut Stager),
) -> Result<(String, Written), StoreError> {
    let metadata = fenced_metadata(target, &s.hash, s.timestamp, fence);
    if let Some(staged) = staged {
        match staged
            .commit(&s.body, &s.hash, &metadata, precondition.clone())
            .await
        {
            Outcome::Committed(result) => return result.map(|v| (v, Written::Staged)),
            Outcome::NotUsed(why, error) => {
                debug!(key = %key, hash = %s.hash, why, error = ?error.as_ref().map(ToString::to_string), "staged write not used: writing with one PUT");
                if let Some(e) = &error {
                    stager.failed(e);
                }
            }
        }
    }
    if let Some(result) = stager
        .write_in_parts(fence, key, &s.body, &metadata, precondition.clone())
        .await
    {
        return result.map(|v| (v, Written::InParts));
    }
    store
        .put(PutObject {
            key: key.to_owned(),
            body: s.body.clone(),
            content_type: "application/json".to_owned(),
            metadata,
            precondition,
        })
        .await
        .map(|v| (v, Written::Put))
}

/// The split of one export, from when its snapshot arrived to when its PUT returned.
fn stages(arrived: Arrived, put_start: Instant, written: Instant) -> Stages {
    let decoded = arrived.arrival.map_or(arrived.at, |a| a.decoded);
    let (decode, inflate, checks) = arrived.arrival.map_or(Default::default(), |a| {
        (
            a.decoded.saturating_duration_since(a.read),
            a.inflated.saturating_duration_since(a.read),
            a.checked.saturating_duration_since(a.inflated),
        )
    });
    Stages {
        read: arrived.arrival.map(|a| a.read),
        decode,
        inflate,
        checks,
        queue: put_start.saturating_duration_since(decoded),
        put: written.saturating_duration_since(put_start),
        written: Some(written),
        staged: false,
        in_parts: false,
    }
}

/// The task that writes history copies after exports, one at a time.
struct History {
    tx: Option<mpsc::Sender<Snapshot>>,
    busy: Arc<std::sync::atomic::AtomicBool>,
}

impl History {
    fn start(
        target: &ExportTarget,
        store: &Arc<dyn ObjectStore>,
        reports: &mpsc::Sender<Report>,
    ) -> History {
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if target.history_limit == 0 {
            return History { tx: None, busy };
        }
        let (tx, mut rx) = mpsc::channel::<Snapshot>(1);
        let (target, store, reports, flag) =
            (target.clone(), store.clone(), reports.clone(), busy.clone());
        // NB: ends when the runner drops its sender, after the copy in hand.
        tokio::spawn(async move {
            while let Some(s) = rx.recv().await {
                let written = write_history(&target, store.as_ref(), &s).await;
                let hash = s.hash.clone();
                drop(s);
                flag.store(false, std::sync::atomic::Ordering::Release);
                let _ = reports.send(Report::History { hash, written }).await;
            }
        });
        History { tx: Some(tx), busy }
    }

    /// Hands `s` to the history task, unless it is still writing the previous copy.
    fn offer(&self, s: &Snapshot) {
        let Some(tx) = &self.tx else { return };
        if self.busy.swap(true, std::sync::atomic::Ordering::AcqRel) {
            debug!(hash = %s.hash, "the previous history copy is still being written: no entry for this one");
            return;
        }
        if tx.try_send(s.clone()).is_err() {
            self.busy.store(false, std::sync::atomic::Ordering::Release);
        }
    }
}

/// Writes the history entry of `s` and prunes the history to its limit; whether the entry
/// was written. Failures are logged only: the history must never hold up or fail an export.
async fn write_history(target: &ExportTarget, store: &dyn ObjectStore, s: &Snapshot) -> bool {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let history = history_key(&target.url, &target.version, secs, &s.hash);
    let put = PutObject {
        key: history.clone(),
        body: s.body.clone(),
        content_type: "application/json".to_owned(),
        metadata: metadata(target, &s.hash, s.timestamp),
        precondition: Precondition::None,
    };
    let written = match store.put(put).await {
        Ok(_) => true,
        Err(e) => {
            warn!(key = %history, error = %e, "cannot write the history entry");
            false
        }
    };
    prune_history(target, store).await;
    written
}

async fn prune_history(target: &ExportTarget, store: &dyn ObjectStore) {
    let prefix = target.url.history_prefix(&target.version);
    let entries = match store.list(&prefix).await {
        Ok(list) => list,
        Err(e) => {
            warn!(prefix = %prefix, error = %e, "cannot list the history");
            return;
        }
    };
    for key in to_prune(&prefix, &entries, target.history_limit) {
        if let Err(e) = store.delete(&key).await {
            warn!(key = %key, error = %e, "cannot prune the history");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cp_client::frame::ConfigSnapshot;
    use crate::export::early::IN_PARTS_FROM;
    use crate::kong::config::validate_config;
    use crate::storage::ErrorKind;
    use crate::storage::memory::MemoryStore;

    fn snapshot(hash: char, body: &str) -> Event {
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        Event::Snapshot(ConfigSnapshot {
            hash: hash.to_string().repeat(32),
            config: bytes::Bytes::from(body.to_owned()),
            summary: validate_config(&value).unwrap(),
            timestamp: None,
            arrival: None,
        })
    }

    #[test]
    fn reports_reach_the_metrics_as_stable_labels_never_messages() {
        let denied = Report::Failed {
            error: StoreError {
                kind: ErrorKind::Credentials,
                op: "put",
                bucket: "b".into(),
                key: "k".into(),
                detail: "AccessDenied".into(),
            },
            retry_in: Duration::from_secs(1),
        };
        assert_eq!(
            denied.metric(),
            Some(ExportEvent::Failed {
                reason: "Credentials"
            })
        );
        let lost = Report::Disconnected {
            reason: "connection refused".into(),
            label: "connect",
        };
        assert_eq!(
            lost.metric(),
            Some(ExportEvent::Disconnected { reason: "connect" })
        );
        let bad = Report::Rejected {
            reason: "frame too large".into(),
            label: "too_large",
        };
        assert_eq!(
            bad.metric(),
            Some(ExportEvent::RejectedFrame {
                reason: "too_large"
            })
        );
        assert_eq!(Report::NoConfig.metric(), Some(ExportEvent::Withheld));
        assert_eq!(
            Report::Fenced { mine: 1, epoch: 2 }.metric(),
            Some(ExportEvent::Fenced)
        );
        let received = Report::Received { hash: "h".into() };
        assert_eq!(received.metric(), None);
    }

    const GOOD: &str = r#"{"_format_version":"3.0","services":[{"id":"s"}]}"#;
    const EMPTY: &str = r#"{"_format_version":"3.0","workspaces":[{"id":"w"}]}"#;

    struct Harness {
        store: Arc<MemoryStore>,
        events: mpsc::Sender<Event>,
        reports: mpsc::Receiver<Report>,
        _stop: watch::Sender<bool>,
    }

    /// Version 3.6.1.4 of policy kong/prod under `s3://bkt/kong`, no minimum interval.
    fn target(history_limit: usize) -> ExportTarget {
        ExportTarget {
            url: StorageUrl::parse("s3://bkt/kong").unwrap(),
            version: "3.6.1.4".into(),
            uploader: "kfo-0".into(),
            writer: "kfo-0_abc".into(),
            owner: "kong/prod".into(),
            plugins: None,
            min_interval: Duration::ZERO,
            history_limit,
        }
    }

    fn harness(history_limit: usize) -> Harness {
        harness_over(Arc::new(MemoryStore::new("bkt")), target(history_limit))
    }

    /// A runner of `target` over `store`, leading always.
    fn harness_over(store: Arc<MemoryStore>, target: ExportTarget) -> Harness {
        harness_gated(store, target, Gate::always())
    }

    /// A runner of `target` over `store`, writing under `gate`.
    fn harness_gated(store: Arc<MemoryStore>, target: ExportTarget, gate: Gate) -> Harness {
        let (events, rx) = mpsc::channel(16);
        let (tx, reports) = mpsc::channel(64);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(run(target, store.clone(), rx, tx, gate, stop_rx));
        Harness {
            store,
            events,
            reports,
            _stop: stop,
        }
    }

    impl Harness {
        /// The next report but `Received` (bookkeeping for the stall check).
        async fn report(&mut self) -> Report {
            loop {
                let r = tokio::time::timeout(Duration::from_secs(5), self.reports.recv())
                    .await
                    .unwrap()
                    .unwrap();
                if !matches!(r, Report::Received { .. }) {
                    return r;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_snapshot_is_written_with_metadata_and_history() {
        let mut h = harness(2);
        h.events.send(snapshot('a', GOOD)).await.unwrap();
        let Report::Exported {
            key, hash, bytes, ..
        } = h.report().await
        else {
            panic!()
        };
        assert_eq!(
            (key.as_str(), bytes),
            ("kong/3.6.1.4/config.json", GOOD.len() as u64)
        );
        let o = h.store.get(&key).await.unwrap().unwrap();
        assert_eq!(&o.body[..], GOOD.as_bytes());
        assert_eq!(o.content_type.as_deref(), Some("application/json"));
        assert_eq!(o.metadata[META_UPLOADER], "kfo-0");
        assert_eq!(o.metadata[META_CONFIG_HASH], hash);
        for _ in 0..100 {
            if h.store.list("kong/3.6.1.4/history/").await.unwrap().len() == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no history entry");
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_whose_events_end_stops_and_frees_its_pending_snapshot() {
        let store = Arc::new(MemoryStore::new("bkt"));
        let (events, rx) = mpsc::channel(16);
        let (tx, _reports) = mpsc::channel(64);
        let (_stop, stop_rx) = watch::channel(false);
        let target = target(0);
        // A follower: the gate never grants a permit.
        let (gate, _control) = Gate::new();
        let task = tokio::spawn(run(target, store.clone(), rx, tx, gate, stop_rx));
        let body = bytes::Bytes::from(GOOD.to_owned());
        let weak = {
            let Event::Snapshot(s) = snapshot('a', GOOD) else {
                unreachable!()
            };
            let s = ConfigSnapshot {
                config: body.clone(),
                ..s
            };
            events.send(Event::Snapshot(s)).await.unwrap();
            body.clone()
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(events);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the exporter did not stop when its events ended")
            .unwrap();
        assert_eq!(store.put_count(), 0);
        // Only our handles hold the snapshot's bytes now.
        drop(body);
        assert!(
            weak.is_unique(),
            "the stopped exporter still holds its snapshot"
        );
    }

    #[tokio::test]
    async fn a_lagging_replica_never_replaces_a_newer_stored_config_with_an_older_one() {
        let mut h = harness(0);
        // Another replica (a newer leader whose session was ahead) stored config 'n' at 200.
        let newer = r#"{"_format_version":"3.0","services":[{"id":"newer"}]}"#;
        h.store
            .put(PutObject {
                key: "kong/3.6.1.4/config.json".into(),
                body: bytes::Bytes::from_static(newer.as_bytes()),
                content_type: "application/json".into(),
                metadata: BTreeMap::from([
                    (META_CONFIG_HASH.to_owned(), "n".repeat(32)),
                    (META_CONFIG_TIMESTAMP.to_owned(), "200.5".to_owned()),
                    (META_EPOCH.to_owned(), "0".to_owned()),
                ]),
                precondition: Precondition::None,
            })
            .await
            .unwrap();
        // This replica's session lags: it still has config 'o' from 100.
        let Event::Snapshot(old) = snapshot('o', GOOD) else {
            unreachable!()
        };
        let old = ConfigSnapshot {
            timestamp: Some(100.0),
            ..old
        };
        h.events.send(Event::Snapshot(old.clone())).await.unwrap();
        let mut skipped = None;
        for _ in 0..5 {
            match h.report().await {
                Report::Skipped { hash, why } => {
                    skipped = Some((hash, why));
                    break;
                }
                Report::Received { .. } | Report::Stored { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            skipped,
            Some(("o".repeat(32), "older than the stored configuration"))
        );
        let stored = h
            .store
            .get("kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&stored.body[..], newer.as_bytes());
        assert_eq!(h.store.put_count(), 1, "only the other replica's write");
        // A configuration newer than the stored one is written, with its time.
        let Event::Snapshot(next) = snapshot('x', GOOD) else {
            unreachable!()
        };
        let next = ConfigSnapshot {
            timestamp: Some(300.25),
            ..next
        };
        h.events.send(Event::Snapshot(next)).await.unwrap();
        loop {
            if let Report::Exported { .. } = h.report().await {
                break;
            }
        }
        let stored = h
            .store
            .get("kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.metadata[META_CONFIG_TIMESTAMP], "300.25");
    }

    #[tokio::test]
    async fn a_config_naming_a_plugin_the_data_planes_lack_is_refused_not_exported() {
        let store = Arc::new(MemoryStore::new("bkt"));
        let (events, rx) = mpsc::channel(16);
        let (tx, mut reports) = mpsc::channel(64);
        let (_stop, stop_rx) = watch::channel(false);
        let target = ExportTarget {
            plugins: Some(vec![("key-auth".to_owned(), "3.6.1".to_owned())]),
            ..target(0)
        };
        tokio::spawn(run(target, store.clone(), rx, tx, Gate::always(), stop_rx));
        let with_acl = r#"{"_format_version":"3.0","services":[{"id":"s"}],"plugins":[{"name":"key-auth"},{"name":"acl"}]}"#;
        events.send(snapshot('a', with_acl)).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), reports.recv())
            .await
            .unwrap()
            .unwrap();
        let Report::Refused { hash, reason } = r else {
            panic!("{r:?}")
        };
        assert_eq!(hash, "a".repeat(32));
        assert!(
            reason.contains("acl") && !reason.contains("key-auth,"),
            "{reason}"
        );
        assert_eq!(store.put_count(), 0);
        // One with announced plugins only is exported.
        let fine =
            r#"{"_format_version":"3.0","services":[{"id":"s"}],"plugins":[{"name":"key-auth"}]}"#;
        events.send(snapshot('b', fine)).await.unwrap();
        loop {
            let r = tokio::time::timeout(Duration::from_secs(5), reports.recv())
                .await
                .unwrap()
                .unwrap();
            if matches!(r, Report::Exported { .. }) {
                break;
            }
        }
        assert_eq!(store.put_count(), 1);
    }

    fn stored_by(owner: &str, lease: &str, epoch: i32) -> Object {
        Object {
            info: crate::storage::ObjectInfo {
                key: "k".into(),
                size: 1,
                last_modified: SystemTime::UNIX_EPOCH,
                created: SystemTime::UNIX_EPOCH,
                version: "v".into(),
            },
            body: bytes::Bytes::new(),
            content_type: None,
            metadata: BTreeMap::from([
                (META_OWNER.to_owned(), owner.to_owned()),
                (META_LEASE.to_owned(), lease.to_owned()),
                (META_EPOCH.to_owned(), epoch.to_string()),
            ]),
        }
    }

    #[test]
    fn epochs_compare_only_within_one_lease_and_one_policy() {
        let o = stored_by("kong/prod", "lease-1", 7);
        assert_eq!(
            fence(Some(&o), "kong/prod", Some("lease-1"), 5),
            Fence::Newer(7)
        );
        assert_eq!(
            fence(Some(&o), "kong/prod", Some("lease-1"), 7),
            Fence::Proceed
        );
        // The Lease was deleted and created again (the policy replaced): epochs restart.
        assert_eq!(
            fence(Some(&o), "kong/prod", Some("lease-2"), 0),
            Fence::Proceed
        );
        // Another policy (or cluster) on the same prefix.
        assert_eq!(
            fence(Some(&o), "edge/prod", Some("lease-1"), 9),
            Fence::Foreign("kong/prod".into())
        );
        // Older writers without these metadata compare by epoch alone.
        let mut legacy = o.clone();
        legacy.metadata.remove(META_OWNER);
        legacy.metadata.remove(META_LEASE);
        assert_eq!(
            fence(Some(&legacy), "kong/prod", Some("lease-2"), 0),
            Fence::Newer(7)
        );
        assert_eq!(fence(None, "kong/prod", None, 0), Fence::Proceed);
    }

    #[tokio::test]
    async fn a_configuration_another_policy_wrote_on_the_same_prefix_is_not_overwritten() {
        let mut h = harness(0);
        let mut theirs = stored_by("edge/other", "lease-x", 3);
        theirs.body = bytes::Bytes::from_static(b"{}");
        h.store
            .put(PutObject {
                key: "kong/3.6.1.4/config.json".into(),
                body: theirs.body.clone(),
                content_type: "application/json".into(),
                metadata: theirs.metadata.clone(),
                precondition: Precondition::None,
            })
            .await
            .unwrap();
        h.events.send(snapshot('a', GOOD)).await.unwrap();
        let Report::Foreign { owner, key } = h.report().await else {
            panic!()
        };
        assert_eq!(
            (owner.as_str(), key.as_str()),
            ("edge/other", "kong/3.6.1.4/config.json")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(h.store.put_count(), 1, "only theirs");
    }

    /// A store whose history PUTs wait until released: a history copy that hangs.
    struct SlowHistory {
        inner: Arc<MemoryStore>,
        release: tokio::sync::Semaphore,
    }

    #[async_trait::async_trait]
    impl ObjectStore for SlowHistory {
        fn bucket(&self) -> &str {
            self.inner.bucket()
        }
        async fn put(&self, object: PutObject) -> Result<String, StoreError> {
            if object.key.contains("/history/") {
                let _held = self.release.acquire().await;
            }
            self.inner.put(object).await
        }
        async fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Object>, StoreError> {
            self.inner.get_at_most(key, max).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<crate::storage::ObjectInfo>, StoreError> {
            self.inner.list(prefix).await
        }
        async fn touch(&self, key: &str) -> Result<bool, StoreError> {
            self.inner.touch(key).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key).await
        }
    }

    #[tokio::test]
    async fn a_history_copy_that_hangs_does_not_hold_up_the_next_export() {
        let memory = Arc::new(MemoryStore::new("bkt"));
        let store = Arc::new(SlowHistory {
            inner: memory.clone(),
            release: tokio::sync::Semaphore::new(0),
        });
        let (events, rx) = mpsc::channel(16);
        let (tx, mut reports) = mpsc::channel(64);
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(run(
            target(3),
            store.clone(),
            rx,
            tx,
            Gate::always(),
            stop_rx,
        ));
        let mut exported = Vec::new();
        let next_export = async |reports: &mut mpsc::Receiver<Report>| loop {
            let r = tokio::time::timeout(Duration::from_secs(5), reports.recv())
                .await
                .expect("an export within 5 s while the history copy hangs")
                .unwrap();
            match r {
                Report::Exported { hash, .. } => return hash,
                Report::History { .. } => panic!("the hanging history copy ended"),
                _ => {}
            }
        };
        events.send(snapshot('a', GOOD)).await.unwrap();
        exported.push(next_export(&mut reports).await);
        let second = r#"{"_format_version":"3.0","services":[{"id":"t"}]}"#;
        events.send(snapshot('b', second)).await.unwrap();
        exported.push(next_export(&mut reports).await);
        assert_eq!(exported, ["a".repeat(32), "b".repeat(32)]);
        let stored = memory
            .get("kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&stored.body[..], second.as_bytes());
        // Released, the copy in hand ends and says so; 'b' found it busy and has none.
        store.release.add_permits(1);
        loop {
            let r = tokio::time::timeout(Duration::from_secs(5), reports.recv())
                .await
                .unwrap()
                .unwrap();
            if let Report::History { hash, written } = r {
                assert_eq!((hash, written), ("a".repeat(32), true));
                break;
            }
        }
        let entries = memory.list("kong/3.6.1.4/history/").await.unwrap();
        assert_eq!(entries.len(), 1, "{entries:?}");
    }

    /// A store where, just before our first write, the previous incarnation of our Lease
    /// (epoch 7) writes once more: our conditional write fails and we re-read its object.
    struct Raced {
        inner: Arc<MemoryStore>,
        raced: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl ObjectStore for Raced {
        fn bucket(&self) -> &str {
            self.inner.bucket()
        }
        async fn put(&self, object: PutObject) -> Result<String, StoreError> {
            if !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let old = stored_by("kong/prod", "lease-old", 7);
                self.inner
                    .put(PutObject {
                        key: object.key.clone(),
                        body: bytes::Bytes::from_static(GOOD.as_bytes()),
                        content_type: "application/json".into(),
                        metadata: old.metadata,
                        precondition: Precondition::None,
                    })
                    .await?;
            }
            self.inner.put(object).await
        }
        async fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Object>, StoreError> {
            self.inner.get_at_most(key, max).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<crate::storage::ObjectInfo>, StoreError> {
            self.inner.list(prefix).await
        }
        async fn touch(&self, key: &str) -> Result<bool, StoreError> {
            self.inner.touch(key).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key).await
        }
    }

    #[tokio::test]
    async fn a_recreated_lease_is_not_fenced_by_its_previous_incarnations_epoch() {
        let memory = Arc::new(MemoryStore::new("bkt"));
        let store = Arc::new(Raced {
            inner: memory.clone(),
            raced: Default::default(),
        });
        let (gate, control) = Gate::new();
        control
            .claims
            .send(crate::election::Claim {
                holder: Some("me".into()),
                epoch: 0,
                since: None,
                leading_until: Some(Instant::now() + Duration::from_secs(3600)),
                lease_uid: Some("lease-new".into()),
            })
            .unwrap();
        let (events, rx) = mpsc::channel(16);
        let (tx, mut reports) = mpsc::channel(64);
        let (_stop, stop_rx) = watch::channel(false);
        let target = target(0);
        tokio::spawn(run(target, store.clone(), rx, tx, gate, stop_rx));
        let newer = GOOD.replace("\"s\"", "\"s2\"");
        events.send(snapshot('b', &newer)).await.unwrap();
        loop {
            let r = tokio::time::timeout(Duration::from_secs(5), reports.recv())
                .await
                .unwrap()
                .unwrap();
            match r {
                Report::Exported { .. } => break,
                Report::Fenced { .. } => panic!("fenced by another Lease's epoch"),
                _ => {}
            }
        }
        let o = memory
            .get("kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap();
        assert!(store.raced.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(o.metadata[META_LEASE], "lease-new");
        assert_eq!(o.metadata[META_EPOCH], "0");
        drop(control);
    }

    #[tokio::test]
    async fn an_empty_snapshot_never_replaces_a_good_one() {
        let mut h = harness(0);
        h.events.send(snapshot('a', GOOD)).await.unwrap();
        assert!(matches!(h.report().await, Report::Exported { .. }));
        h.events.send(snapshot('b', EMPTY)).await.unwrap();
        assert_eq!(
            h.report().await,
            Report::Skipped {
                hash: "b".repeat(32),
                why: "empty configuration"
            }
        );
        let o = h
            .store
            .get("kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&o.body[..], GOOD.as_bytes());
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_and_retried_until_it_succeeds() {
        let mut h = harness(0);
        h.store.fail_with(Some(ErrorKind::Credentials));
        h.events.send(snapshot('a', GOOD)).await.unwrap();
        let Report::Failed { error, retry_in } = h.report().await else {
            panic!()
        };
        assert_eq!(error.kind, ErrorKind::Credentials);
        assert_eq!(retry_in, Duration::from_millis(500));
        h.store.fail_with(None);
        loop {
            match h.report().await {
                Report::Exported { .. } => break,
                Report::Failed { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(h.store.put_count(), 1);
    }

    #[tokio::test]
    async fn history_is_pruned_to_the_limit() {
        let mut h = harness(2);
        for (i, c) in ['a', 'b', 'c', 'd'].into_iter().enumerate() {
            h.events
                .send(snapshot(c, &GOOD.replace("\"s\"", &format!("\"s{i}\""))))
                .await
                .unwrap();
            assert!(matches!(h.report().await, Report::Exported { .. }));
            // NB: one copy at a time: the next export waits for this one's, so each has one.
            let Report::History { hash, written } = h.report().await else {
                panic!("no history report")
            };
            assert_eq!((hash, written), (c.to_string().repeat(32), true));
        }
        // The history is written after the report: wait for the last entry and the pruning.
        let mut history = Vec::new();
        for _ in 0..100 {
            history = h.store.list("kong/3.6.1.4/history/").await.unwrap();
            if history.len() == 2 && history[1].key.contains(&"d".repeat(32)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(history.len(), 2, "{history:?}");
        // Within one second the keys order by hash, and 'd' > 'c' here.
        assert!(
            history[1]
                .key
                .ends_with(&format!("{}.json", "d".repeat(32)))
        );
    }

    /// A `reconfigure` frame of about 200 KiB, as the client hands it over: the envelope it
    /// announces once inflated, then its snapshot (a slice of the same buffer) or, when a
    /// row near its end is not an object, its rejection.
    fn large_frame(hash: char, seed: usize, good: bool) -> (Event, Event) {
        large_frame_with(hash, seed, good, "")
    }

    /// [`large_frame`], its table holding `entities` (`,"plugins":[...]`) too.
    fn large_frame_with(hash: char, seed: usize, good: bool, entities: &str) -> (Event, Event) {
        use std::io::Write;
        let rows: Vec<String> = (0..2000)
            .map(|i| format!(r#"{{"id":"s{seed}-{i}","name":"service-{i}","host":"upstream-{i}.example.com"}}"#))
            .collect();
        let last = if good { r#"{"id":"last"}"# } else { "7" };
        let table = format!(
            r#"{{"_format_version":"3.0"{entities},"services":[{},{last}]}}"#,
            rows.join(",")
        );
        let envelope = format!(
            r#"{{"type":"reconfigure","timestamp":1700000000.5,"config_table":{table},"config_hash":"{}"}}"#,
            hash.to_string().repeat(32)
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(envelope.as_bytes()).unwrap();
        let frame = gz.finish().unwrap();
        let mut announced = None;
        let decoded = crate::cp_client::decode_announcing(&frame, 1 << 30, |json| {
            announced = Some(json.clone());
        });
        let then = match decoded {
            Ok(Some(s)) => Event::Snapshot(s),
            Ok(None) => panic!("not a reconfigure"),
            Err(e) => Event::Rejected(e),
        };
        (Event::Inflated(announced.unwrap()), then)
    }

    /// A runner over a store that stages writes in 16 KiB parts, after a first export (so
    /// the stored version is known) and after large frames until one was staged: staging
    /// starts only once the store was checked to fence commits.
    async fn staging_harness() -> Harness {
        staging_harness_for(target(0), Gate::always()).await
    }

    /// [`staging_harness`] of `target`, writing under `gate`.
    async fn staging_harness_for(target: ExportTarget, gate: Gate) -> Harness {
        let store = Arc::new(MemoryStore::new("bkt"));
        store.stage_writes(16 << 10);
        let mut h = harness_gated(store, target, gate);
        h.events.send(snapshot('a', GOOD)).await.unwrap();
        assert!(matches!(h.report().await, Report::Exported { .. }));
        assert!(
            a_large_frame_is_staged(&mut h).await,
            "no large frame was staged"
        );
        h
    }

    /// Sends large frames, as the client does, until one was staged while checked (at
    /// most five): whether one was.
    async fn a_large_frame_is_staged(h: &mut Harness) -> bool {
        for (i, c) in ['b', 'c', 'd', 'e', 'f'].into_iter().enumerate() {
            let (inflated, snapshot) = large_frame(c, i, true);
            h.events.send(inflated).await.unwrap();
            h.events.send(snapshot).await.unwrap();
            let Report::Exported { stages, .. } = h.report().await else {
                panic!("not exported")
            };
            if stages.staged {
                return true;
            }
            // NB: the first large frame starts the store's check; give it a moment.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    async fn no_staged_write_left(store: &MemoryStore) {
        for _ in 0..100 {
            if store.open_stages() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} staged writes left open", store.open_stages());
    }

    /// A large configuration that was not staged while checked (no `Inflated` hint here) is
    /// still written in parts, committed on the stored version: a writer that stalls
    /// mid-body then holds no lock on the object (MinIO's conditional PUT does). A small
    /// one is one PUT.
    #[tokio::test]
    async fn a_large_configuration_not_staged_early_is_written_in_parts() {
        let store = Arc::new(MemoryStore::new("bkt"));
        store.stage_writes(16 << 10);
        let mut h = harness_over(store.clone(), target(0));
        h.events.send(snapshot('a', GOOD)).await.unwrap();
        let Report::Exported { stages, .. } = h.report().await else {
            panic!("not exported")
        };
        assert!(
            !stages.staged && !stages.in_parts,
            "a small configuration is one PUT"
        );
        let (_, large) = large_frame('b', 1, true);
        let Event::Snapshot(s) = &large else { panic!() };
        let config = s.config.clone();
        h.events.send(large).await.unwrap();
        let Report::Exported { stages, hash, .. } = h.report().await else {
            panic!("not exported")
        };
        assert!(
            stages.in_parts && !stages.staged,
            "a large configuration was one PUT"
        );
        assert_eq!(store.staged_commits(), 1);
        let o = store
            .get("kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap();
        assert!(o.body == config);
        assert_eq!(o.metadata[META_CONFIG_HASH], hash);
        no_staged_write_left(&store).await;
    }

    /// On a store of S3's part size, a configuration of a few MB (under one part, over
    /// [`IN_PARTS_FROM`]) is written as one part committed at once, not as a PUT whose body
    /// would hold MinIO's lock on the object; one under it is still one PUT.
    #[tokio::test]
    async fn a_configuration_of_a_few_mb_is_one_part_and_a_smaller_one_a_put() {
        let store = Arc::new(MemoryStore::new("bkt"));
        store.stage_writes(5 << 20);
        let mut h = harness_over(store.clone(), target(0));
        let sized = |bytes: usize| {
            let pad = "x".repeat(bytes);
            format!(r#"{{"_format_version":"3.0","services":[{{"id":"s","name":"{pad}"}}]}}"#)
        };
        for (hash, bytes, in_parts) in [
            ('a', IN_PARTS_FROM - 1000, false),
            ('b', IN_PARTS_FROM + 1000, true),
            ('c', 4 << 20, true),
        ] {
            let commits = store.staged_commits();
            h.events.send(snapshot(hash, &sized(bytes))).await.unwrap();
            let Report::Exported { stages, .. } = h.report().await else {
                panic!("not exported")
            };
            assert_eq!(stages.in_parts, in_parts, "{bytes} bytes");
            assert_eq!(store.staged_commits(), commits + u64::from(in_parts));
            let o = store
                .get("kong/3.6.1.4/config.json")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(o.body.len(), sized(bytes).len());
        }
        no_staged_write_left(&store).await;
    }

    /// A store staging writes in parts of `part` bytes, holding a configuration of `size`
    /// bytes (as a previous leader wrote it).
    async fn store_holding(part: usize, size: usize) -> Arc<MemoryStore> {
        let store = Arc::new(MemoryStore::new("bkt"));
        store.stage_writes(part);
        store
            .put(PutObject {
                key: "kong/3.6.1.4/config.json".into(),
                body: bytes::Bytes::from(vec![b' '; size]),
                content_type: "application/json".into(),
                metadata: BTreeMap::new(),
                precondition: Precondition::None,
            })
            .await
            .unwrap();
        store
    }

    /// Taking the lead over a configuration that is written in parts (a few MB) starts the
    /// store's multipart check at once, not in the next write: by the time a new
    /// configuration comes, the check's throwaway object has been written.
    #[tokio::test]
    async fn taking_the_lead_over_a_few_mb_checks_the_store_before_the_next_write() {
        let store = store_holding(5 << 20, IN_PARTS_FROM + 1).await;
        let mut h = harness_over(store.clone(), target(0));
        h.events.send(snapshot('a', GOOD)).await.unwrap();
        assert!(matches!(h.report().await, Report::Exported { .. }));
        // The stored configuration, the check's object and the export.
        for _ in 0..100 {
            if store.put_count() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            store.put_count(),
            3,
            "the store was not checked on taking the lead"
        );
    }

    /// A leader that is still running but lost its lead may have its staged write aborted
    /// by the next leader's sweep. Its commit then cannot use it: the export writes the
    /// configuration afresh (in parts here), and nothing of the aborted upload is stored.
    #[tokio::test]
    async fn a_staged_write_aborted_by_another_leaders_sweep_is_written_afresh() {
        let mut h = staging_harness().await;
        let key = "kong/3.6.1.4/config.json";
        let (inflated, snapshot) = large_frame('9', 9, true);
        let Event::Snapshot(s) = &snapshot else {
            panic!()
        };
        let config = s.config.clone();
        h.events.send(inflated).await.unwrap();
        let mut open = vec![];
        for _ in 0..100 {
            open = h.store.staged_writes(key).await.unwrap();
            if !open.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(open.len(), 1, "the large frame was not staged");
        // The other leader's sweep.
        h.store.abort_staged(&open[0]).await.unwrap();
        let commits = h.store.staged_commits();
        h.events.send(snapshot).await.unwrap();
        let Report::Exported { stages, hash, .. } = h.report().await else {
            panic!("not exported")
        };
        assert!(
            !stages.staged && stages.in_parts,
            "the aborted staged write was used"
        );
        assert_eq!(h.store.staged_commits(), commits + 1);
        let o = h.store.get(key).await.unwrap().unwrap();
        assert!(
            o.body == config,
            "the stored object is not the configuration"
        );
        assert_eq!(o.metadata[META_CONFIG_HASH], hash);
        no_staged_write_left(&h.store).await;
    }

    /// A leader killed while staging leaves its upload open. The next leader aborts what is
    /// staged for its key on taking the lead, and nothing else: an upload of another key
    /// stays. Then it stages its own large configurations as before.
    #[tokio::test]
    async fn a_new_leader_aborts_the_staged_writes_a_dead_one_left_for_its_key() {
        let store = Arc::new(MemoryStore::new("bkt"));
        store.stage_writes(16 << 10);
        let key = "kong/3.6.1.4/config.json";
        let left = store
            .stage(key, "application/json", BTreeMap::new())
            .await
            .unwrap();
        store
            .stage_part(&left, 1, bytes::Bytes::from(vec![b'x'; 16 << 10]))
            .await
            .unwrap();
        let other = store
            .stage(
                "kong/3.7.0.0/config.json",
                "application/json",
                BTreeMap::new(),
            )
            .await
            .unwrap();
        let mut h = harness_over(store.clone(), target(0));
        h.events.send(snapshot('a', GOOD)).await.unwrap();
        assert!(matches!(h.report().await, Report::Exported { .. }));
        for _ in 0..100 {
            if store.open_stages() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            store.staged_writes(key).await.unwrap(),
            [],
            "the upload left for the key is still open"
        );
        assert_eq!(
            store
                .staged_writes("kong/3.7.0.0/config.json")
                .await
                .unwrap(),
            [other],
            "another key's upload was aborted"
        );
        // Its own large configurations are still staged.
        assert!(
            a_large_frame_is_staged(&mut h).await,
            "no large frame was staged after the sweep"
        );
    }

    #[tokio::test]
    async fn a_large_configuration_is_staged_while_checked_and_committed_as_the_checked_snapshot() {
        let mut h = staging_harness().await;
        let commits = h.store.staged_commits();
        let (inflated, snapshot) = large_frame('9', 9, true);
        let Event::Snapshot(s) = &snapshot else {
            panic!()
        };
        let config = s.config.clone();
        h.events.send(inflated).await.unwrap();
        h.events.send(snapshot).await.unwrap();
        let Report::Exported { stages, hash, .. } = h.report().await else {
            panic!("not exported")
        };
        assert!(stages.staged, "the large frame was not staged");
        assert_eq!(hash, "9".repeat(32));
        assert_eq!(h.store.staged_commits(), commits + 1);
        let o = h
            .store
            .get("kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap();
        assert!(
            o.body == config,
            "the stored object is not the configuration"
        );
        assert_eq!(o.metadata[META_CONFIG_HASH], "9".repeat(32));
        assert_eq!(o.metadata[META_CONFIG_TIMESTAMP], "1700000000.5");
        assert_eq!(o.metadata[META_EPOCH], "0");
        assert_eq!(o.metadata[META_OWNER], "kong/prod");
        assert_eq!(o.content_type.as_deref(), Some("application/json"));
        no_staged_write_left(&h.store).await;
    }

    /// The do-no-harm case of staging: a frame that fails its checks after its upload
    /// started is never committed, and the stored configuration stays.
    #[tokio::test]
    async fn a_frame_failing_its_checks_after_its_upload_started_leaves_the_stored_configuration() {
        let mut h = staging_harness().await;
        let before = h
            .store
            .get("kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap();
        let commits = h.store.staged_commits();
        let (inflated, rejected) = large_frame('7', 7, false);
        assert!(matches!(rejected, Event::Rejected(_)), "{rejected:?}");
        h.events.send(inflated).await.unwrap();
        // NB: the upload is under way before the verdict arrives.
        tokio::time::sleep(Duration::from_millis(20)).await;
        h.events.send(rejected).await.unwrap();
        assert!(matches!(h.report().await, Report::Rejected { .. }));
        no_staged_write_left(&h.store).await;
        let after = h
            .store
            .get("kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.info.version, before.info.version);
        assert_eq!(h.store.staged_commits(), commits);
    }

    /// A control plane sends its whole configuration again on every reconnect. A large
    /// frame of the configuration already stored is not staged: it was uploaded in full,
    /// then left open (its envelope held) until the next frame or write.
    #[tokio::test]
    async fn a_large_frame_of_the_stored_configuration_is_not_staged_again() {
        let mut h = staging_harness().await;
        let (inflated, snapshot) = large_frame('8', 8, true);
        h.events.send(inflated).await.unwrap();
        h.events.send(snapshot).await.unwrap();
        let Report::Exported { stages, .. } = h.report().await else {
            panic!("not exported")
        };
        assert!(stages.staged, "a new large configuration is staged");
        let begun = h.store.stages_begun();
        // The same frame again, as after a reconnect.
        let (inflated, snapshot) = large_frame('8', 8, true);
        h.events.send(inflated).await.unwrap();
        h.events.send(snapshot).await.unwrap();
        assert!(matches!(
            h.report().await,
            Report::Skipped {
                why: "unchanged",
                ..
            }
        ));
        // NB: staging runs in a task of its own: give it the time to start.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            h.store.stages_begun(),
            begun,
            "the stored configuration was staged again"
        );
        no_staged_write_left(&h.store).await;
    }

    /// A control plane that reconnects while a large configuration waits for its write
    /// (minInterval) sends it again. That frame is not staged, and the staged write of the
    /// one waiting is kept and committed: it was aborted, and the configuration written in
    /// parts after all.
    #[tokio::test]
    async fn a_pending_configuration_sent_again_keeps_its_staged_write() {
        let mut h = staging_harness_for(
            ExportTarget {
                min_interval: Duration::from_secs(1),
                ..target(0)
            },
            Gate::always(),
        )
        .await;
        let begun = h.store.stages_begun();
        let (first, again) = (large_frame('9', 9, true), large_frame('9', 9, true));
        h.events.send(first.0).await.unwrap();
        h.events.send(first.1).await.unwrap();
        let lost = Event::Disconnected {
            error: crate::cp_client::ClientError::Closed(String::new()),
            retry_in: Duration::ZERO,
        };
        h.events.send(lost).await.unwrap();
        h.events.send(again.0).await.unwrap();
        h.events.send(again.1).await.unwrap();
        let mut skipped = false;
        let stages = loop {
            match h.report().await {
                Report::Skipped { why, .. } => skipped |= why == "already pending",
                Report::Exported { stages, hash, .. } => {
                    assert_eq!(hash, "9".repeat(32));
                    break stages;
                }
                _ => {}
            }
        };
        assert!(skipped, "written before the frame came again");
        assert!(
            stages.staged && !stages.in_parts,
            "the staged write was not used: {stages:?}"
        );
        assert_eq!(h.store.stages_begun(), begun + 1);
        no_staged_write_left(&h.store).await;
    }

    /// A large frame staged while checked and then refused (it configures a plugin the
    /// data planes lack) aborts its staged write at once: it held the upload open, and the
    /// frame in memory, until the next frame, which may be hours away.
    #[tokio::test]
    async fn a_staged_frame_refused_for_its_plugins_leaves_no_upload_open() {
        let mut h = staging_harness_for(
            ExportTarget {
                plugins: Some(vec![("key-auth".to_owned(), "3.6.1".to_owned())]),
                ..target(0)
            },
            Gate::always(),
        )
        .await;
        let begun = h.store.stages_begun();
        let (inflated, snapshot) = large_frame_with('9', 9, true, r#","plugins":[{"name":"acl"}]"#);
        // NB: as the checks take their time: the staged write starts before they end.
        staged_before_checked(&h, inflated, begun).await;
        h.events.send(snapshot).await.unwrap();
        assert!(matches!(h.report().await, Report::Refused { .. }));
        no_staged_write_left(&h.store).await;
    }

    /// Sends a large frame's `inflated` event and waits until its staged write has begun
    /// (the store's count of staged writes past `begun`).
    async fn staged_before_checked(h: &Harness, inflated: Event, begun: u64) {
        h.events.send(inflated).await.unwrap();
        for _ in 0..100 {
            if h.store.stages_begun() > begun {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            h.store.stages_begun(),
            begun + 1,
            "the frame was not staged"
        );
    }

    /// A leader that stops leading while a large configuration waits for its write keeps
    /// no staged write: it held the upload open and the frame in memory while it followed,
    /// and a new lead writes under other metadata anyway.
    #[tokio::test]
    async fn a_replica_that_stops_leading_keeps_no_staged_write() {
        let (gate, control) = Gate::new();
        let lead = |until| crate::election::Claim {
            holder: Some("kfo-0".into()),
            epoch: 1,
            since: None,
            leading_until: until,
            lease_uid: None,
        };
        let hour = Instant::now() + Duration::from_secs(3600);
        control.claims.send(lead(Some(hour))).unwrap();
        let target = ExportTarget {
            min_interval: Duration::from_millis(300),
            ..target(0)
        };
        let h = staging_harness_for(target, gate).await;
        let (inflated, snapshot) = large_frame('9', 9, true);
        staged_before_checked(&h, inflated, h.store.stages_begun()).await;
        h.events.send(snapshot).await.unwrap();
        control.claims.send(lead(None)).unwrap();
        no_staged_write_left(&h.store).await;
        let stored = h
            .store
            .head("kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap();
        assert_ne!(
            stored.metadata[META_CONFIG_HASH],
            "9".repeat(32),
            "written before the lead was lost"
        );
    }

    /// A frame given up (it failed its checks) while the store opens its upload: the
    /// upload, opened before the store's answer came, was left open, with no guard to
    /// abort it. And the frame is let go at once, not when the store answers: a hanging
    /// store would hold every frame given up meanwhile.
    #[tokio::test]
    async fn a_frame_given_up_while_its_upload_opens_leaves_no_upload_open() {
        let h = staging_harness().await;
        let answer = Duration::from_secs(1);
        h.store.answer_stage_after(Some(answer));
        let (inflated, rejected) = large_frame('9', 9, false);
        assert!(matches!(rejected, Event::Rejected(_)));
        let Event::Inflated(frame) = &inflated else {
            unreachable!()
        };
        let frame = frame.clone();
        staged_before_checked(&h, inflated, h.store.stages_begun()).await;
        // NB: the store's answer is still on its way.
        h.events.send(rejected).await.unwrap();
        let mut let_go = false;
        for _ in 0..50 {
            if frame.is_unique() {
                let_go = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(let_go, "the frame is held until the store answers");
        tokio::time::sleep(answer).await;
        no_staged_write_left(&h.store).await;
    }

    /// A staged write is only ever the write of the snapshot it was staged for: another
    /// configuration written next goes with a PUT, and the staged one is aborted.
    #[tokio::test]
    async fn a_staged_write_for_another_configuration_is_aborted_and_the_put_used() {
        let mut h = staging_harness().await;
        let commits = h.store.staged_commits();
        let (inflated, _) = large_frame('5', 5, true);
        h.events.send(inflated).await.unwrap();
        h.events.send(snapshot('6', GOOD)).await.unwrap();
        let Report::Exported { stages, hash, .. } = h.report().await else {
            panic!("not exported")
        };
        assert_eq!(hash, "6".repeat(32));
        assert!(!stages.staged);
        let o = h
            .store
            .get("kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&o.body[..], GOOD.as_bytes());
        assert_eq!(h.store.staged_commits(), commits);
        no_staged_write_left(&h.store).await;
    }

    /// A replica taking the lead of a policy whose stored configuration is large checks
    /// the store's multipart commits at once: the first large frame it writes after its
    /// first write is staged (the check does not wait for a large frame to start).
    #[tokio::test]
    async fn taking_the_lead_over_a_large_configuration_readies_staging_for_the_next_frame() {
        let store = store_holding(16 << 10, crate::cp_client::ANNOUNCE_INFLATED_FROM + 1).await;
        let mut h = harness_over(store, target(0));
        h.events.send(snapshot('a', GOOD)).await.unwrap();
        assert!(matches!(h.report().await, Report::Exported { .. }));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (inflated, snapshot) = large_frame('b', 1, true);
        h.events.send(inflated).await.unwrap();
        h.events.send(snapshot).await.unwrap();
        let Report::Exported { stages, .. } = h.report().await else {
            panic!("not exported")
        };
        assert!(
            stages.staged,
            "the first large frame after the lead was not staged"
        );
        no_staged_write_left(&h.store).await;
    }

    /// A store that takes a stale multipart commit would break fencing: nothing is staged
    /// on it, and large configurations still go with a PUT.
    #[tokio::test]
    async fn nothing_is_staged_on_a_store_that_does_not_fence_commits() {
        let store = Arc::new(MemoryStore::new("bkt"));
        store.stage_writes(16 << 10);
        store.ignore_preconditions(true);
        let mut h = harness_over(store, target(0));
        h.events.send(snapshot('a', GOOD)).await.unwrap();
        assert!(matches!(h.report().await, Report::Exported { .. }));
        for (i, c) in ['b', 'c', 'd', 'e'].into_iter().enumerate() {
            let (inflated, snapshot) = large_frame(c, i, true);
            h.events.send(inflated).await.unwrap();
            h.events.send(snapshot).await.unwrap();
            let Report::Exported { stages, .. } = h.report().await else {
                panic!("not exported")
            };
            assert!(
                !stages.staged,
                "staged on a store that does not fence commits"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // NB: the store's check committed its own probe writes; config.json never.
        no_staged_write_left(&h.store).await;
    }
}
