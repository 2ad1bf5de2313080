//! Object storage: one [`ObjectStore`] trait for S3 (and S3-compatible stores), GCS, and an
//! in-memory store for unit tests. This module owns how the operator talks to a store; the
//! export and election code see only the trait.
//!
//! Every error names the bucket and key and says whether the cause is the credentials, a
//! missing bucket, a failed precondition, or the network, so a status condition can tell a
//! person what to fix.

pub mod gcs;
pub mod memory;
pub mod s3;

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;

/// A conditional write: the store's compare-and-swap, used to fence stale writers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Write unconditionally.
    None,
    /// Write only if the key does not exist (S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`).
    IfAbsent,
    /// Write only if the object's current version is this one (S3 ETag via `If-Match`,
    /// GCS generation via `ifGenerationMatch`).
    IfVersion(String),
}

/// One object to write.
#[derive(Clone, Debug)]
pub struct PutObject {
    pub key: String,
    pub body: Bytes,
    pub content_type: String,
    /// User metadata (`x-amz-meta-*` on S3, `metadata` on GCS).
    pub metadata: BTreeMap<String, String>,
    pub precondition: Precondition,
}

/// A write staged in parts (an S3 multipart upload): none of it is visible until
/// [`ObjectStore::commit_staged`], which is conditional as a PUT is, and
/// [`ObjectStore::abort_staged`] discards it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staged {
    pub key: String,
    /// The store's id of the upload.
    pub id: String,
}

/// One part of a staged write, as the store acknowledged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedPart {
    /// From 1, in the object's order.
    pub number: i32,
    pub etag: String,
    /// The part's CRC32 as the store computed it, when it did (S3 wants it back on commit).
    pub crc32: Option<String>,
}

/// What a listing or a read reports about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// S3 `LastModified`, GCS `updated`.
    pub last_modified: SystemTime,
    /// GCS `timeCreated`; S3 has none (equal to `last_modified` there).
    pub created: SystemTime,
    /// The version a conditional write compares against: the S3 ETag or the GCS generation.
    pub version: String,
}

/// An object read back whole.
#[derive(Clone, Debug)]
pub struct Object {
    pub info: ObjectInfo,
    pub body: Bytes,
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// The broad cause of a storage error: what a person should look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The credentials are missing, wrong, expired or lack the permission.
    Credentials,
    /// The bucket does not exist.
    BucketMissing,
    /// A conditional write found another version (a newer writer exists).
    PreconditionFailed,
    /// The store could not be reached or timed out; worth retrying.
    Network,
    /// The object is larger than the reader's bound.
    TooLarge,
    /// Anything else the store answered.
    Other,
}

impl ErrorKind {
    /// A stable label for metrics, condition reasons and Events.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Credentials => "Credentials",
            ErrorKind::BucketMissing => "BucketMissing",
            ErrorKind::PreconditionFailed => "PreconditionFailed",
            ErrorKind::Network => "Network",
            ErrorKind::TooLarge => "TooLarge",
            ErrorKind::Other => "StorageError",
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Network | ErrorKind::Other)
    }
}

/// A failed storage operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct StoreError {
    pub kind: ErrorKind,
    /// `put`, `get`, `list` or `delete`.
    pub op: &'static str,
    pub bucket: String,
    /// The key, or the prefix of a listing.
    pub key: String,
    /// What the store said (never credentials).
    pub detail: String,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cause = match self.kind {
            ErrorKind::Credentials => "the credentials were refused or lack permission",
            ErrorKind::BucketMissing => "the bucket does not exist",
            ErrorKind::PreconditionFailed => {
                "the object changed since it was last read (conditional write refused)"
            }
            ErrorKind::Network => "the store could not be reached",
            ErrorKind::TooLarge => "the object is too large to read",
            ErrorKind::Other => "the store returned an error",
        };
        write!(
            f,
            "{} {}/{}: {cause}: {}",
            self.op, self.bucket, self.key, self.detail
        )
    }
}

/// An object store holding one bucket.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// The bucket this store writes to.
    fn bucket(&self) -> &str;
    /// Writes an object; returns the new version (ETag or generation).
    async fn put(&self, object: PutObject) -> Result<String, StoreError>;
    /// Reads an object; `None` when it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        self.get_at_most(key, u64::MAX).await
    }
    /// Reads an object of at most `max` bytes; `None` when it does not exist. A larger one
    /// is a [`ErrorKind::TooLarge`] error as soon as the store reports its size, or, when
    /// the size it reported was wrong, as soon as more bytes arrive: no reported size and
    /// no object sizes an allocation past `max`.
    async fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Object>, StoreError>;
    /// Reads an object's metadata without its body (an empty `body`); `None` when it does
    /// not exist. The default reads the whole object: stores override it.
    async fn head(&self, key: &str) -> Result<Option<Object>, StoreError> {
        Ok(self.get(key).await?.map(|o| Object {
            body: Bytes::new(),
            ..o
        }))
    }
    /// Lists objects under `prefix` (all pages), sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// Marks an existing object as refreshed: its modification time (S3 `LastModified`, GCS
    /// `updated`) moves to now, its content and its GCS creation time stay. `false` when the
    /// object does not exist. (Kong's GCS election reads both times.)
    async fn touch(&self, key: &str) -> Result<bool, StoreError>;
    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// The smallest size of every part of a staged write but the last (the last may be
    /// smaller); `None`: the store does not stage writes, and the methods below fail.
    fn staged_part_size(&self) -> Option<usize> {
        None
    }
    /// Starts a staged write of `key` with its content type and metadata.
    async fn stage(
        &self,
        key: &str,
        _content_type: &str,
        _metadata: BTreeMap<String, String>,
    ) -> Result<Staged, StoreError> {
        Err(unstaged(self.bucket(), key))
    }
    /// Uploads part `number` of a staged write.
    async fn stage_part(
        &self,
        staged: &Staged,
        _number: i32,
        _body: Bytes,
    ) -> Result<StagedPart, StoreError> {
        Err(unstaged(self.bucket(), &staged.key))
    }
    /// Makes the parts, in order, the object, if `precondition` holds (as [`Self::put`]);
    /// returns the new version. A refused commit leaves the object as it was, and the
    /// staged write to [`Self::abort_staged`].
    async fn commit_staged(
        &self,
        staged: &Staged,
        _parts: Vec<StagedPart>,
        _precondition: Precondition,
    ) -> Result<String, StoreError> {
        Err(unstaged(self.bucket(), &staged.key))
    }
    /// Discards a staged write and its parts.
    async fn abort_staged(&self, staged: &Staged) -> Result<(), StoreError> {
        Err(unstaged(self.bucket(), &staged.key))
    }
    /// The staged writes of exactly `key` that are neither committed nor aborted: what a
    /// writer that died mid-write left behind. None on a store that does not stage writes.
    async fn staged_writes(&self, _key: &str) -> Result<Vec<Staged>, StoreError> {
        Ok(Vec::new())
    }
}

fn unstaged(bucket: &str, key: &str) -> StoreError {
    StoreError::new(
        ErrorKind::Other,
        "stage",
        bucket,
        key,
        "this store does not stage writes",
    )
}

impl StoreError {
    pub(crate) fn new(
        kind: ErrorKind,
        op: &'static str,
        bucket: &str,
        key: &str,
        detail: impl Into<String>,
    ) -> Self {
        StoreError {
            kind,
            op,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            detail: detail.into(),
        }
    }
}

/// Classifies an HTTP status and a provider error code the way S3 and GCS use them.
pub(crate) fn classify(status: Option<u16>, code: Option<&str>) -> ErrorKind {
    match code {
        Some(
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "TokenRefreshRequired"
            | "AllAccessDisabled",
        ) => return ErrorKind::Credentials,
        Some("NoSuchBucket") => return ErrorKind::BucketMissing,
        Some("PreconditionFailed" | "ConditionalRequestConflict") => {
            return ErrorKind::PreconditionFailed;
        }
        _ => {}
    }
    match status {
        Some(401 | 403) => ErrorKind::Credentials,
        Some(412) => ErrorKind::PreconditionFailed,
        Some(408 | 429 | 500..=599) => ErrorKind::Network,
        _ => ErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_body_counts_the_bytes_that_arrive_not_the_size_reported() {
        // Reported honestly and over the bound: refused before any read.
        let early = BoundedBody::new(11, 10, "b", "k").err().unwrap();
        assert_eq!(early.kind, ErrorKind::TooLarge);
        // Reported as 1 byte (wrong): the bytes that arrive are what count.
        let mut body = BoundedBody::new(1, 10, "b", "k").unwrap();
        body.push(b"12345", "b", "k").unwrap();
        body.push(b"67890", "b", "k").unwrap();
        let late = body.push(b"x", "b", "k").unwrap_err();
        assert_eq!(late.kind, ErrorKind::TooLarge, "{late}");
        // A huge reported size within the bound reserves at most 16 MiB up front.
        let big = BoundedBody::new(u64::MAX, u64::MAX, "b", "k").unwrap();
        assert!(big.buf.capacity() <= 16 << 20);
    }

    #[tokio::test]
    async fn a_store_that_ignores_preconditions_is_found_out() {
        let store = memory::MemoryStore::new("b");
        assert_eq!(enforces_preconditions(&store, "p/.probe").await, Ok(true));
        assert_eq!(
            store.get("p/.probe").await.unwrap().map(|o| o.info.key),
            None
        );
        store.ignore_preconditions(true);
        assert_eq!(enforces_preconditions(&store, "p/.probe").await, Ok(false));
        assert_eq!(
            store.get("p/.probe").await.unwrap().map(|o| o.info.key),
            None
        );
    }

    #[test]
    fn a_write_may_take_longer_the_larger_it_is() {
        let t = Timeouts::default();
        assert_eq!(t.put(0), std::time::Duration::from_secs(5));
        assert_eq!(t.put(1), std::time::Duration::from_secs(6));
        assert_eq!(t.put(64 << 20), std::time::Duration::from_secs(69));
    }

    #[test]
    fn provider_codes_win_over_statuses() {
        assert_eq!(
            classify(Some(404), Some("NoSuchBucket")),
            ErrorKind::BucketMissing
        );
        assert_eq!(
            classify(Some(403), Some("SignatureDoesNotMatch")),
            ErrorKind::Credentials
        );
        assert_eq!(
            classify(Some(409), Some("ConditionalRequestConflict")),
            ErrorKind::PreconditionFailed
        );
    }

    #[test]
    fn statuses_classify_when_the_code_is_unknown() {
        assert_eq!(classify(Some(401), None), ErrorKind::Credentials);
        assert_eq!(classify(Some(412), None), ErrorKind::PreconditionFailed);
        assert_eq!(classify(Some(503), Some("SlowDown")), ErrorKind::Network);
        assert_eq!(
            classify(Some(400), Some("InvalidArgument")),
            ErrorKind::Other
        );
        assert_eq!(classify(None, None), ErrorKind::Other);
    }

    #[test]
    fn the_message_names_bucket_key_and_cause() {
        let e = StoreError::new(
            ErrorKind::Credentials,
            "put",
            "b",
            "p/3.6.0.0/config.json",
            "AccessDenied",
        );
        assert_eq!(
            e.to_string(),
            "put b/p/3.6.0.0/config.json: the credentials were refused or lack permission: AccessDenied"
        );
        assert!(!ErrorKind::Credentials.is_transient());
        assert!(ErrorKind::Network.is_transient());
    }
}

/// Whether the store enforces conditional writes, which fencing rests on: writes a
/// throwaway object at `probe_key`, then tries two writes that must be refused (a version
/// that does not exist, and "only if absent" on the existing object), and deletes it.
/// `Ok(false)`: the store accepted a write it should have refused. Some S3-compatible
/// stores ignore `If-Match`/`If-None-Match`; S3 itself, MinIO and GCS enforce them.
pub async fn enforces_preconditions(
    store: &dyn ObjectStore,
    probe_key: &str,
) -> Result<bool, StoreError> {
    let put = |precondition| PutObject {
        key: probe_key.to_owned(),
        body: Bytes::from_static(b"fencing probe of kong-fallback-operator; safe to delete\n"),
        content_type: "text/plain".to_owned(),
        metadata: BTreeMap::new(),
        precondition,
    };
    let version = store.put(put(Precondition::None)).await?;
    // NB: an ETag and a generation are never this; S3 wants ETags quoted.
    let stale = if version.starts_with('"') {
        "\"00000000000000000000000000000000\"".to_owned()
    } else {
        format!("{version}0")
    };
    let mut enforced = true;
    for precondition in [Precondition::IfVersion(stale), Precondition::IfAbsent] {
        match store.put(put(precondition)).await {
            Ok(_) => enforced = false,
            Err(e) if e.kind == ErrorKind::PreconditionFailed => {}
            Err(e) => {
                let _ = store.delete(probe_key).await;
                return Err(e);
            }
        }
    }
    store.delete(probe_key).await?;
    Ok(enforced)
}

/// Whether the store fences staged writes too (S3 `If-Match` / `If-None-Match` on
/// `CompleteMultipartUpload`, which fencing then rests on): as
/// [`enforces_preconditions`], with each refused write staged in one part and committed.
/// `Ok(false)`: a commit that should have been refused was taken. Each staged write is
/// aborted; the probe object is deleted.
pub async fn enforces_staged_preconditions(
    store: &dyn ObjectStore,
    probe_key: &str,
) -> Result<bool, StoreError> {
    let body = Bytes::from_static(b"fencing probe of kong-fallback-operator; safe to delete\n");
    let version = store
        .put(PutObject {
            key: probe_key.to_owned(),
            body: body.clone(),
            content_type: "text/plain".to_owned(),
            metadata: BTreeMap::new(),
            precondition: Precondition::None,
        })
        .await?;
    let stale = if version.starts_with('"') {
        "\"00000000000000000000000000000000\"".to_owned()
    } else {
        format!("{version}0")
    };
    let mut outcome = Ok(true);
    for precondition in [Precondition::IfVersion(stale), Precondition::IfAbsent] {
        let staged = match store.stage(probe_key, "text/plain", BTreeMap::new()).await {
            Ok(staged) => staged,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        let committed = match store.stage_part(&staged, 1, body.clone()).await {
            Ok(part) => store.commit_staged(&staged, vec![part], precondition).await,
            Err(e) => Err(e),
        };
        match committed {
            Ok(_) => outcome = Ok(false),
            Err(e) if e.kind == ErrorKind::PreconditionFailed => {
                let _ = store.abort_staged(&staged).await;
            }
            Err(e) => {
                let _ = store.abort_staged(&staged).await;
                outcome = Err(e);
                break;
            }
        }
    }
    let deleted = store.delete(probe_key).await;
    let enforced = outcome?;
    deleted?;
    Ok(enforced)
}

/// How to reach a store: the provider's settings and credentials.
#[derive(Clone, Debug)]
pub enum Access {
    S3 {
        settings: s3::S3Settings,
        extras: s3::PutExtras,
    },
    Gcs {
        /// Overrides the public endpoint (emulators).
        endpoint: Option<String>,
        credentials: gcs::GcsCredentials,
        extras: gcs::PutExtras,
    },
}

/// Opens the bucket `url` names with `access`; every call is bounded by
/// [`Timeouts::default`].
pub async fn open(
    url: &crate::kong::StorageUrl,
    access: Access,
) -> Result<Box<dyn ObjectStore>, String> {
    open_with(url, access, Timeouts::default()).await
}

/// [`open`] with other bounds (tests, tools).
pub async fn open_with(
    url: &crate::kong::StorageUrl,
    access: Access,
    timeouts: Timeouts,
) -> Result<Box<dyn ObjectStore>, String> {
    use crate::kong::Provider;
    let store: Box<dyn ObjectStore> = match (url.provider, access) {
        (Provider::S3, Access::S3 { settings, extras }) => {
            Box::new(s3::S3Store::new(&settings, &url.bucket, extras).map_err(|e| e.to_string())?)
        }
        (
            Provider::Gcs,
            Access::Gcs {
                endpoint,
                credentials,
                extras,
            },
        ) => {
            let store = gcs::GcsStore::new(endpoint.as_deref(), &credentials, &url.bucket)
                .await
                .map_err(|e| e.to_string())?
                .with_extras(extras);
            Box::new(store)
        }
        (provider, _) => {
            return Err(format!(
                "{url} is a {} URL but the credentials are for another provider",
                provider.scheme()
            ));
        }
    };
    Ok(Box::new(Bounded {
        inner: store,
        timeouts,
    }))
}

/// A body being read under a bound: the reported size only hints the first allocation
/// (within 16 MiB), so a store (or an emulator) that reports a wrong size cannot make us
/// reserve it, and the bytes that arrive are counted against the bound.
pub(crate) struct BoundedBody {
    buf: Vec<u8>,
    max: u64,
}

impl BoundedBody {
    /// Refuses at once an object whose reported size is over `max`.
    pub(crate) fn new(
        reported: u64,
        max: u64,
        bucket: &str,
        key: &str,
    ) -> Result<BoundedBody, StoreError> {
        if reported > max {
            return Err(too_large(bucket, key, reported, max));
        }
        let hint = usize::try_from(reported).unwrap_or(usize::MAX);
        Ok(BoundedBody {
            buf: Vec::with_capacity(hint.min(16 << 20)),
            max,
        })
    }

    pub(crate) fn push(&mut self, chunk: &[u8], bucket: &str, key: &str) -> Result<(), StoreError> {
        let len = (self.buf.len() + chunk.len()) as u64;
        if len > self.max {
            return Err(too_large(bucket, key, len, self.max));
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        Bytes::from(self.buf)
    }
}

fn too_large(bucket: &str, key: &str, size: u64, max: u64) -> StoreError {
    StoreError::new(
        ErrorKind::TooLarge,
        "get",
        bucket,
        key,
        format!("{size} bytes or more, over the bound of {max} bytes; not read"),
    )
}

/// How long one storage call may take before it is abandoned as a network failure. A
/// half-open connection must not hold an exporter (and its write permit) forever: neither
/// SDK bounds a whole request by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Any call, and the base of a write.
    pub call: std::time::Duration,
    /// Added to a write's bound per MiB of body (a floor of 1 MiB/s).
    pub per_mib: std::time::Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        // NB: 5 s: a store that answers nothing (a blackhole, a half-open connection) must
        // turn `Exporting` False within a validation round, and a healthy store answers a
        // small call in milliseconds (issue #12's R2 measures both).
        Timeouts {
            call: std::time::Duration::from_secs(5),
            per_mib: std::time::Duration::from_secs(1),
        }
    }
}

impl Timeouts {
    /// The bound of a write of `bytes`.
    pub fn put(&self, bytes: usize) -> std::time::Duration {
        let mib = bytes.div_ceil(1 << 20) as u32;
        self.call + self.per_mib * mib
    }
}

/// An [`ObjectStore`] whose every call ends within its [`Timeouts`].
struct Bounded {
    inner: Box<dyn ObjectStore>,
    timeouts: Timeouts,
}

impl Bounded {
    async fn bound<T>(
        &self,
        op: &'static str,
        key: &str,
        limit: std::time::Duration,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(StoreError::new(
                ErrorKind::Network,
                op,
                self.inner.bucket(),
                key,
                format!("no answer within {limit:?}; abandoned"),
            ))
        })
    }
}

#[async_trait::async_trait]
impl ObjectStore for Bounded {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    async fn put(&self, object: PutObject) -> Result<String, StoreError> {
        let limit = self.timeouts.put(object.body.len());
        let key = object.key.clone();
        self.bound("put", &key, limit, self.inner.put(object)).await
    }
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        // NB: a read of unknown size is bounded as a call.
        self.bound("get", key, self.timeouts.call, self.inner.get(key))
            .await
    }
    async fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Object>, StoreError> {
        // NB: a bounded read is bounded like a write of the most it may read (up to 1 GiB).
        let most = usize::try_from(max).unwrap_or(usize::MAX).min(1 << 30);
        let limit = self.timeouts.put(most);
        self.bound("get", key, limit, self.inner.get_at_most(key, max))
            .await
    }
    async fn head(&self, key: &str) -> Result<Option<Object>, StoreError> {
        self.bound("head", key, self.timeouts.call, self.inner.head(key))
            .await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.bound("list", prefix, self.timeouts.call, self.inner.list(prefix))
            .await
    }
    async fn touch(&self, key: &str) -> Result<bool, StoreError> {
        self.bound("touch", key, self.timeouts.call, self.inner.touch(key))
            .await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.bound("delete", key, self.timeouts.call, self.inner.delete(key))
            .await
    }
    fn staged_part_size(&self) -> Option<usize> {
        self.inner.staged_part_size()
    }
    async fn stage(
        &self,
        key: &str,
        content_type: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<Staged, StoreError> {
        let call = self.inner.stage(key, content_type, metadata);
        self.bound("stage", key, self.timeouts.call, call).await
    }
    async fn stage_part(
        &self,
        staged: &Staged,
        number: i32,
        body: Bytes,
    ) -> Result<StagedPart, StoreError> {
        let limit = self.timeouts.put(body.len());
        let call = self.inner.stage_part(staged, number, body);
        self.bound("stage", &staged.key, limit, call).await
    }
    async fn commit_staged(
        &self,
        staged: &Staged,
        parts: Vec<StagedPart>,
        precondition: Precondition,
    ) -> Result<String, StoreError> {
        let call = self.inner.commit_staged(staged, parts, precondition);
        self.bound("put", &staged.key, self.timeouts.call, call)
            .await
    }
    async fn abort_staged(&self, staged: &Staged) -> Result<(), StoreError> {
        let call = self.inner.abort_staged(staged);
        self.bound("stage", &staged.key, self.timeouts.call, call)
            .await
    }
    async fn staged_writes(&self, key: &str) -> Result<Vec<Staged>, StoreError> {
        let call = self.inner.staged_writes(key);
        self.bound("stage", key, self.timeouts.call, call).await
    }
}
