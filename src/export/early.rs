//! Writing a large configuration before its checks end.
//!
//! Inflating a 20 MB frame takes about 14 ms and checking it about 18 ms more, against a
//! 70 ms PUT (`make bench B=P1`). So once a large frame is inflated
//! ([`crate::cp_client::Event::Inflated`]), its configuration's bytes go to the store as a
//! staged write (an S3 multipart upload), while the control-plane client checks the frame.
//! Nothing staged is visible. The write takes effect only through the commit, which is
//! conditional and fenced exactly as a PUT is, and it is committed only when the checked
//! snapshot the exporter decided to write proves to be the bytes staged: the same hash,
//! the same metadata (epoch, Lease, writer), and the same buffer (one allocation, so its
//! address names it). Anything else (a frame that fails its checks, another configuration
//! written first, a guess that was wrong, a lost lead) aborts the staged write, and the
//! export falls back to its ordinary PUT. A frame the exporter would not write (the
//! configuration stored, which a control plane sends again on every reconnect, or an
//! older one) is not staged at all, and leaves alone the staged write of the configuration
//! waiting for its turn (`minInterval`), which may be that very frame sent again. Once a
//! frame is checked, a staged write lives only while its configuration is the one to
//! write: a frame refused after its checks, a configuration superseded or a lost lead
//! aborts it at once, rather than at the next frame.
//!
//! A store that stages writes is first checked to fence commits too
//! ([`storage::enforces_staged_preconditions`]); without that, nothing is staged.
//!
//! A leader killed while staging leaves its upload behind: its parts cost storage until
//! a bucket lifecycle rule removes them. So on taking the lead, an exporter aborts what is
//! staged for its key ([`Stager::sweep`]) before it stages anything itself. A staged write
//! of a leader that is still running is aborted too, and the store refuses its next part
//! or its commit (`NoSuchUpload`, a failure worth retrying). Refused before the commit,
//! the export writes the configuration afresh; a refused commit fails the export, which
//! is retried under the next permit. The fencing judges either write as any other.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::cp_client::peek_envelope;
use crate::election::Permit;
use crate::storage::{self, ErrorKind, ObjectStore, Precondition, Staged, StagedPart, StoreError};

/// Room left after the parts sent early, for the envelope's fields that follow
/// `config_table` (Kong's, `config_hash`, `hashes` and `timestamp`, take under 1 KiB):
/// the last part, sent once the checks end, is about this small.
const TAIL_ROOM: usize = 4 << 10;
/// Parts sent at once.
const PARTS_AT_ONCE: usize = 4;
/// The smallest configuration written in parts (one part under the store's part size)
/// rather than with one PUT, when it was not staged while checked.
///
/// NB: a conditional PUT holds MinIO's object lock for as long as its body takes (see
/// [`Stager::write_in_parts`]). A body this small is in the kernel's send buffer a few
/// milliseconds after the PUT starts (Linux's `tcp_wmem` grows to 4 MiB), so a writer
/// frozen later cannot hold it; a larger one is sent as the peer takes it. Writing in
/// parts costs two more requests (about 6 ms on the test MinIO at 1 and 4 MB:
/// `cargo run --release --example multipart_probe 4`), which P1 would pay at 1 MB.
pub const IN_PARTS_FROM: usize = 2 << 20;

/// Whether staged writes may be used with this store: checked once, behind the gate.
enum Probe {
    Unknown,
    Running(oneshot::Receiver<Result<bool, StoreError>>),
    On,
    Off,
}

/// Starts staged writes for one export runner.
pub struct Stager {
    store: Arc<dyn ObjectStore>,
    probe_key: String,
    probe: Probe,
    /// The sweep of staged writes left behind in this lead: nothing is staged before it
    /// ended, so that it cannot abort this exporter's own.
    sweep: Sweep,
}

/// A lead: its epoch, in the Lease of this UID.
type Lead = (i32, Option<String>);

enum Sweep {
    NotYet,
    Running(Lead, oneshot::Receiver<()>),
    Done(Lead),
}

impl Sweep {
    /// Whether the sweep of `lead` has ended (a sweep that has is marked done here only).
    fn ended(&mut self, lead: &Lead) -> bool {
        if let Sweep::Running(of, rx) = self
            && !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
        {
            *self = Sweep::Done(of.clone());
        }
        matches!(self, Sweep::Done(of) if of == lead)
    }

    /// Waits for the sweep of `lead` to end, if it is running; then [`Sweep::ended`].
    async fn wait(&mut self, lead: &Lead) -> bool {
        if let Sweep::Running(of, rx) = self
            && of == lead
        {
            let _ = rx.await;
        }
        self.ended(lead)
    }
}

impl Stager {
    /// `probe_key`: where the check that the store fences commits writes its throwaway
    /// object.
    pub fn new(store: Arc<dyn ObjectStore>, probe_key: String) -> Self {
        let probe = if store.staged_part_size().is_some() {
            Probe::Unknown
        } else {
            Probe::Off
        };
        Stager {
            store,
            probe_key,
            probe,
            sweep: Sweep::NotYet,
        }
    }

    /// Aborts, in the background, the staged writes of `key` left open (by a leader that
    /// died mid-write): on taking the lead, behind its `permit`. Nothing is staged in a
    /// lead before its sweep ended.
    pub fn sweep(&mut self, permit: Permit, key: &str) {
        let lead = (permit.epoch, permit.lease_uid.clone());
        if self.store.staged_part_size().is_none() {
            self.sweep = Sweep::Done(lead);
            return;
        }
        let (tx, rx) = oneshot::channel();
        let (store, key) = (self.store.clone(), key.to_owned());
        tokio::spawn(async move {
            match store.staged_writes(&key).await {
                Ok(left) if left.is_empty() => {}
                Ok(left) => {
                    let mut aborted = 0;
                    for staged in &left {
                        match store.abort_staged(staged).await {
                            Ok(()) => aborted += 1,
                            Err(e) => {
                                debug!(key = %key, error = %e, "cannot abort a staged write left behind");
                            }
                        }
                    }
                    info!(key = %key, aborted, left = left.len(), "aborted the staged writes an earlier leader left behind");
                }
                // NB: a principal without s3:ListBucketMultipartUploads: a lifecycle rule
                // (AbortIncompleteMultipartUpload) is left to do it (docs/operations.md).
                Err(e) => {
                    debug!(key = %key, error = %e, "cannot list the staged writes left behind")
                }
            }
            drop(permit);
            let _ = tx.send(());
        });
        self.sweep = Sweep::Running(lead, rx);
    }

    /// Starts the check of the store's multipart commits, if not done yet: on taking the
    /// lead of a policy whose configuration is written in parts ([`IN_PARTS_FROM`]), so
    /// that its next one is staged, or written in parts, without waiting on the check.
    pub fn prepare(&mut self, permit: Permit) {
        self.ready(permit);
    }

    /// Takes in the outcome of the store's check, if it ended; true when it just failed
    /// (it is started again on the next call, not this one).
    fn poll(&mut self) -> bool {
        let Probe::Running(rx) = &mut self.probe else {
            return false;
        };
        match rx.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => false,
            Ok(outcome) => self.settle(Some(outcome)),
            Err(oneshot::error::TryRecvError::Closed) => self.settle(None),
        }
    }

    /// Takes in the outcome of the store's check (`None`: it ended without one); true when
    /// it failed.
    fn settle(&mut self, outcome: Option<Result<bool, StoreError>>) -> bool {
        let (probe, failed) = match outcome {
            Some(Ok(true)) => (Probe::On, false),
            Some(Ok(false)) => {
                warn!(bucket = %self.store.bucket(), "the store does not fence multipart commits: large configurations are written with one PUT");
                (Probe::Off, false)
            }
            Some(Err(e)) => {
                debug!(error = %e, "cannot check the store's multipart commits yet");
                (Probe::Unknown, true)
            }
            None => (Probe::Unknown, true),
        };
        self.probe = probe;
        failed
    }

    /// Whether staging is on (the store was checked to fence commits); starts the check
    /// behind `permit` when it is not known yet.
    fn ready(&mut self, permit: Permit) -> bool {
        if self.poll() {
            return false;
        }
        match self.probe {
            Probe::On => true,
            Probe::Off | Probe::Running(_) => false,
            Probe::Unknown => {
                let (tx, rx) = oneshot::channel();
                let (store, key) = (self.store.clone(), self.probe_key.clone());
                // NB: a store write: behind the permit, held until the check ends.
                tokio::spawn(async move {
                    let outcome =
                        storage::enforces_staged_preconditions(store.as_ref(), &key).await;
                    drop(permit);
                    let _ = tx.send(outcome);
                });
                self.probe = Probe::Running(rx);
                false
            }
        }
    }

    /// Writes `body` to `key` as a staged write committed at once, when it is at least
    /// [`IN_PARTS_FROM`] and staging is on in this lead (the store fences commits, the
    /// sweep ended); `None` otherwise, and when staging failed in a way a PUT may not (the
    /// PUT is then the write). A body under the store's part size is one part.
    ///
    /// NB: MinIO takes an object's lock before it reads a conditional PUT's body and
    /// holds it until the body ends (`putObject` in minio's cmd/erasure-object.go), and
    /// its GET and HEAD wait on that lock. A writer that freezes or crawls mid-body
    /// would hold every data plane's read of `config.json` (and the next leader's HEAD)
    /// for as long. Parts take no object lock, and the commit is a small request.
    pub async fn write_in_parts(
        &mut self,
        lead: (i32, Option<&str>),
        key: &str,
        body: &Bytes,
        metadata: &BTreeMap<String, String>,
        precondition: Precondition,
    ) -> Option<Result<String, StoreError>> {
        let part = self.store.staged_part_size()?;
        if body.len() < IN_PARTS_FROM.min(part) {
            return None;
        }
        // NB: the first large write of a lead waits for the lead's sweep and for the
        // store's check (inline: this write holds the permit): a few small requests.
        if !self.sweep.wait(&(lead.0, lead.1.map(str::to_owned))).await {
            return None;
        }
        match &mut self.probe {
            Probe::Running(rx) => {
                let outcome = rx.await.ok();
                self.settle(outcome);
            }
            Probe::Unknown => {
                let outcome =
                    storage::enforces_staged_preconditions(self.store.as_ref(), &self.probe_key)
                        .await;
                self.settle(Some(outcome));
            }
            Probe::On | Probe::Off => {}
        }
        if !matches!(self.probe, Probe::On) {
            return None;
        }
        let count = (body.len() / part).max(1);
        let size = body.len() / count;
        let result: Result<String, StoreError> = async {
            let staged = self
                .store
                .stage(key, "application/json", metadata.clone())
                .await?;
            let mut guard = Abort::new(self.store.clone(), staged);
            let store = self.store.as_ref();
            let parts = futures::stream::iter((0..count).map(|i| {
                let end = if i + 1 == count {
                    body.len()
                } else {
                    (i + 1) * size
                };
                store.stage_part(&guard.staged, i as i32 + 1, body.slice(i * size..end))
            }))
            .buffered(PARTS_AT_ONCE)
            .try_collect::<Vec<_>>()
            .await?;
            let version = store
                .commit_staged(&guard.staged, parts, precondition)
                .await?;
            guard.disarm();
            Ok(version)
        }
        .await;
        match result {
            Err(e) if !e.kind.is_transient() && e.kind != ErrorKind::PreconditionFailed => {
                self.failed(&e);
                None
            }
            r => Some(r),
        }
    }

    /// Starts the staged write of `envelope`'s configuration to `key`, when the store
    /// stages writes and fences them, and the envelope is large enough for a part to go
    /// before the checks end. `metadata` gives the fenced write's metadata for a hash and
    /// timestamp (the guesses the commit confirms), or `None` for a configuration the
    /// exporter would not write: then nothing is staged.
    pub fn begin(
        &mut self,
        envelope: Bytes,
        permit: Permit,
        key: &str,
        metadata: impl FnOnce(&str, Option<f64>) -> Option<BTreeMap<String, String>>,
    ) -> Option<Early> {
        let smallest = self.store.staged_part_size()?;
        // NB: cheap checks first: the probe starts only for an envelope worth staging.
        let peek = peek_envelope(&envelope)?;
        let room = envelope.len().checked_sub(peek.config_start + TAIL_ROOM)?;
        // NB: as few parts as fill the room, all but the last (sent after the checks) at
        // least the store's smallest: what is left for after the checks is tiny.
        let count = room / smallest;
        let hash = peek.hash?;
        if count == 0 {
            return None;
        }
        // NB: a control plane sends its whole configuration again on every connect (Kong's
        // `kong/clustering/control_plane.lua`, `handle_cp_websocket` queues its cached
        // payload for each new socket): an unchanged one would be uploaded in full, then
        // aborted.
        let metadata = metadata(&hash, peek.timestamp.filter(|t| t.is_finite()))?;
        if !self.sweep.ended(&(permit.epoch, permit.lease_uid.clone())) || !self.ready(permit) {
            return None;
        }
        let part = room / count;
        let covered = part * count;
        info!(key = %key, hash = %hash, parts = count + 1, "staging a large configuration while its frame is checked");
        let (tx, parts) = oneshot::channel();
        let (store, key) = (self.store.clone(), key.to_owned());
        let (body, start, meta) = (envelope.clone(), peek.config_start, metadata.clone());
        tokio::spawn(async move {
            let mut tx = tx;
            // NB: the start is seen through even when the export gives up on it (the store
            // may open the upload before its answer arrives, and only the guard aborts it),
            // but the frame is let go at once: a hanging store holds no frame.
            let stage = store.stage(&key, "application/json", meta);
            tokio::pin!(stage);
            let (staged, body) = tokio::select! {
                r = &mut stage => (r, Some(body)),
                _ = tx.closed() => {
                    drop(body);
                    ((&mut stage).await, None)
                }
            };
            let staged = match staged {
                Ok(staged) => staged,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let guard = Abort::new(store.clone(), staged.clone());
            let Some(body) = body else {
                return;
            };
            let upload = futures::stream::iter((0..count).map(|i| {
                let chunk = body.slice(start + i * part..start + (i + 1) * part);
                store.stage_part(&staged, i as i32 + 1, chunk)
            }))
            .buffered(PARTS_AT_ONCE)
            .try_collect::<Vec<_>>();
            // NB: the export gave up on it (dropped its `Early`): stop; the guard aborts.
            let done = tokio::select! {
                r = upload => Some(r),
                _ = tx.closed() => None,
            };
            if let Some(r) = done {
                // NB: refused when the receiver is gone: the guard drops and aborts.
                let _ = tx.send(r.map(|parts| (guard, parts)));
            }
        });
        Some(Early {
            store: self.store.clone(),
            envelope,
            start: peek.config_start,
            covered,
            hash,
            metadata,
            parts,
        })
    }

    /// Takes note of a staged write that failed: a failure that retrying will not cure
    /// (credentials, a store that refuses multipart uploads) turns staging off.
    pub fn failed(&mut self, e: &StoreError) {
        if !e.kind.is_transient() && e.kind != ErrorKind::PreconditionFailed {
            warn!(error = %e, "a staged write failed: large configurations are written with one PUT from now on");
            self.probe = Probe::Off;
        }
    }
}

/// A staged write under way, for one configuration.
pub struct Early {
    store: Arc<dyn ObjectStore>,
    /// The inflated envelope the parts were cut from, held so that its address names it.
    envelope: Bytes,
    /// The configuration's first byte in `envelope`, and how many bytes the early parts
    /// hold.
    start: usize,
    covered: usize,
    hash: String,
    metadata: BTreeMap<String, String>,
    parts: oneshot::Receiver<Result<(Abort, Vec<StagedPart>), StoreError>>,
}

/// What became of a staged write at the export.
#[derive(Debug)]
pub enum Outcome {
    /// The commit was sent: its result, as a PUT's.
    Committed(Result<String, StoreError>),
    /// Not usable for this write (aborted): why, and the store's error if there was one.
    NotUsed(&'static str, Option<StoreError>),
}

impl Early {
    /// The hash of the configuration staged (the frame's, before its checks).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Commits the staged write as the write of `body` (a checked snapshot's configuration)
    /// with `metadata`, on `precondition`, if it is that write. Otherwise it is aborted.
    pub async fn commit(
        self,
        body: &Bytes,
        hash: &str,
        metadata: &BTreeMap<String, String>,
        precondition: Precondition,
    ) -> Outcome {
        if hash != self.hash {
            return Outcome::NotUsed("another configuration is written", None);
        }
        // NB: the same buffer (held, so no other can have its address) at the same offset:
        // the bytes staged are the snapshot's first `covered` bytes.
        let at = self.envelope.as_ptr() as usize + self.start;
        if body.as_ptr() as usize != at || body.len() <= self.covered {
            return Outcome::NotUsed("the configuration is not the bytes staged", None);
        }
        if *metadata != self.metadata {
            return Outcome::NotUsed("the metadata changed (a new lead or timestamp)", None);
        }
        let (mut guard, mut parts) = match self.parts.await {
            Ok(Ok(staged)) => staged,
            Ok(Err(e)) => return Outcome::NotUsed("staging failed", Some(e)),
            Err(_) => return Outcome::NotUsed("staging ended", None),
        };
        let last = parts.len() as i32 + 1;
        let rest = body.slice(self.covered..);
        match self.store.stage_part(&guard.staged, last, rest).await {
            Ok(part) => parts.push(part),
            Err(e) => return Outcome::NotUsed("the last part failed", Some(e)),
        }
        let result = self
            .store
            .commit_staged(&guard.staged, parts, precondition)
            .await;
        if result.is_ok() {
            guard.disarm();
        }
        Outcome::Committed(result)
    }
}

/// Aborts a staged write when dropped, unless disarmed (committed).
struct Abort {
    store: Arc<dyn ObjectStore>,
    staged: Staged,
    armed: bool,
}

impl Abort {
    fn new(store: Arc<dyn ObjectStore>, staged: Staged) -> Self {
        Abort {
            store,
            staged,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Abort {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, staged) = (self.store.clone(), self.staged.clone());
        rt.spawn(async move {
            match store.abort_staged(&staged).await {
                Ok(()) => debug!(key = %staged.key, "staged write aborted"),
                // NB: parts left behind cost storage only; a bucket lifecycle rule
                // (AbortIncompleteMultipartUpload) removes them (docs/operations.md).
                Err(e) => info!(key = %staged.key, error = %e, "cannot abort a staged write"),
            }
        });
    }
}
