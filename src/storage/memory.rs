//! An in-memory [`ObjectStore`] with the same precondition semantics as S3 and GCS, for
//! unit tests of the code above the storage layer. Its clock can be set, so freshness
//! rules (the election mirror) can be tested without waiting.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::{
    BoundedBody, ErrorKind, Object, ObjectInfo, ObjectStore, Precondition, PutObject, Staged,
    StagedPart, StoreError,
};

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Object>,
    next_version: u64,
    now: Option<SystemTime>,
    /// When set, every request fails with this kind (to test error handling).
    fail_with: Option<ErrorKind>,
    /// Behave like a store that ignores conditional writes.
    ignore_preconditions: bool,
    puts: u64,
    /// The part size of staged writes; `None`: the store does not stage them.
    part_size: Option<usize>,
    /// Staged writes in progress, by id: key, content type, metadata, parts by number.
    staged: BTreeMap<String, StagedWrite>,
    next_stage: u64,
    /// Staged writes committed so far.
    commits: u64,
    /// How long the answer to the start of a staged write takes, the write already begun.
    stage_answer_delay: Option<std::time::Duration>,
}

struct StagedWrite {
    key: String,
    content_type: String,
    metadata: BTreeMap<String, String>,
    parts: BTreeMap<i32, bytes::Bytes>,
}

pub struct MemoryStore {
    bucket: String,
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new(bucket: &str) -> Self {
        MemoryStore {
            bucket: bucket.to_owned(),
            state: Mutex::default(),
        }
    }

    /// Fixes the store's clock (default: the system clock).
    pub fn set_time(&self, now: SystemTime) {
        self.lock().now = Some(now);
    }

    /// Makes every following request fail with `kind` (`None` heals the store).
    pub fn fail_with(&self, kind: Option<ErrorKind>) {
        self.lock().fail_with = kind;
    }

    /// Makes the store ignore preconditions, as some S3-compatible stores do.
    pub fn ignore_preconditions(&self, ignore: bool) {
        self.lock().ignore_preconditions = ignore;
    }

    /// How many writes succeeded so far (committed staged writes included).
    pub fn put_count(&self) -> u64 {
        self.lock().puts
    }

    /// Makes the store stage writes in parts of at least `part_size` (as S3 multipart
    /// uploads).
    pub fn stage_writes(&self, part_size: usize) {
        self.lock().part_size = Some(part_size);
    }

    /// Makes the answer to the start of a staged write come `delay` after the write has
    /// begun (`None`: at once), as a slow store's answer does: the writer hears of an
    /// upload that is already open.
    pub fn answer_stage_after(&self, delay: Option<std::time::Duration>) {
        self.lock().stage_answer_delay = delay;
    }

    /// How many staged writes were committed so far.
    pub fn staged_commits(&self) -> u64 {
        self.lock().commits
    }

    /// How many staged writes were begun so far (committed, aborted or open).
    pub fn stages_begun(&self) -> u64 {
        self.lock().next_stage
    }

    /// How many staged writes are neither committed nor aborted.
    pub fn open_stages(&self) -> usize {
        self.lock().staged.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // NB: a panic while holding the lock only happens in a failing test; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, state: &State, op: &'static str, key: &str) -> Result<(), StoreError> {
        match state.fail_with {
            Some(kind) => Err(StoreError::new(
                kind,
                op,
                &self.bucket,
                key,
                "injected failure",
            )),
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for MemoryStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn put(&self, object: PutObject) -> Result<String, StoreError> {
        let mut state = self.lock();
        self.check(&state, "put", &object.key)?;
        let current = state
            .objects
            .get(&object.key)
            .map(|o| o.info.version.clone());
        let ok = match (&object.precondition, &current) {
            _ if state.ignore_preconditions => true,
            (Precondition::None, _) => true,
            (Precondition::IfAbsent, current) => current.is_none(),
            (Precondition::IfVersion(v), Some(current)) => v == current,
            (Precondition::IfVersion(_), None) => false,
        };
        if !ok {
            return Err(StoreError::new(
                ErrorKind::PreconditionFailed,
                "put",
                &self.bucket,
                &object.key,
                format!("expected {:?}, found {current:?}", object.precondition),
            ));
        }
        state.next_version += 1;
        let version = state.next_version.to_string();
        let now = state.now.unwrap_or_else(SystemTime::now);
        let created = state
            .objects
            .get(&object.key)
            .map_or(now, |o| o.info.created);
        let info = ObjectInfo {
            key: object.key.clone(),
            size: object.body.len() as u64,
            last_modified: now,
            created,
            version: version.clone(),
        };
        state.objects.insert(
            object.key,
            Object {
                info,
                body: object.body,
                content_type: Some(object.content_type),
                metadata: object.metadata,
            },
        );
        state.puts += 1;
        Ok(version)
    }

    async fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Object>, StoreError> {
        let state = self.lock();
        self.check(&state, "get", key)?;
        let Some(object) = state.objects.get(key) else {
            return Ok(None);
        };
        BoundedBody::new(object.body.len() as u64, max, "memory", key)?;
        Ok(Some(object.clone()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let state = self.lock();
        self.check(&state, "list", prefix)?;
        Ok(state
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, o)| o.info.clone())
            .collect())
    }

    async fn touch(&self, key: &str) -> Result<bool, StoreError> {
        let mut state = self.lock();
        self.check(&state, "touch", key)?;
        let now = state.now.unwrap_or_else(SystemTime::now);
        Ok(match state.objects.get_mut(key) {
            Some(o) => {
                o.info.last_modified = now;
                true
            }
            None => false,
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut state = self.lock();
        self.check(&state, "delete", key)?;
        state.objects.remove(key);
        Ok(())
    }

    fn staged_part_size(&self) -> Option<usize> {
        self.lock().part_size
    }

    async fn stage(
        &self,
        key: &str,
        content_type: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<Staged, StoreError> {
        let (id, delay) = {
            let mut state = self.lock();
            self.check(&state, "stage", key)?;
            state.next_stage += 1;
            let id = state.next_stage.to_string();
            state.staged.insert(
                id.clone(),
                StagedWrite {
                    key: key.to_owned(),
                    content_type: content_type.to_owned(),
                    metadata,
                    parts: BTreeMap::new(),
                },
            );
            (id, state.stage_answer_delay)
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        Ok(Staged {
            key: key.to_owned(),
            id,
        })
    }

    async fn stage_part(
        &self,
        staged: &Staged,
        number: i32,
        body: bytes::Bytes,
    ) -> Result<StagedPart, StoreError> {
        let mut state = self.lock();
        self.check(&state, "stage", &staged.key)?;
        let missing = self.no_such_upload(&staged.key);
        let upload = state.staged.get_mut(&staged.id).ok_or(missing)?;
        upload.parts.insert(number, body);
        Ok(StagedPart {
            number,
            etag: format!("part-{number}"),
            crc32: None,
        })
    }

    async fn commit_staged(
        &self,
        staged: &Staged,
        parts: Vec<StagedPart>,
        precondition: Precondition,
    ) -> Result<String, StoreError> {
        let object = {
            let state = self.lock();
            self.check(&state, "put", &staged.key)?;
            let missing = self.no_such_upload(&staged.key);
            let upload = state.staged.get(&staged.id).ok_or(missing)?;
            let mut body = Vec::new();
            for p in &parts {
                let missing = self.no_such_upload(&staged.key);
                body.extend_from_slice(upload.parts.get(&p.number).ok_or(missing)?);
            }
            PutObject {
                key: upload.key.clone(),
                body: body.into(),
                content_type: upload.content_type.clone(),
                metadata: upload.metadata.clone(),
                precondition,
            }
        };
        // NB: as S3, a refused commit leaves the staged write to be aborted.
        let version = self.put(object).await?;
        let mut state = self.lock();
        state.staged.remove(&staged.id);
        state.commits += 1;
        Ok(version)
    }

    async fn abort_staged(&self, staged: &Staged) -> Result<(), StoreError> {
        let mut state = self.lock();
        self.check(&state, "stage", &staged.key)?;
        state.staged.remove(&staged.id);
        Ok(())
    }

    async fn staged_writes(&self, key: &str) -> Result<Vec<Staged>, StoreError> {
        let state = self.lock();
        self.check(&state, "stage", key)?;
        Ok(state
            .staged
            .iter()
            .filter(|(_, w)| w.key == key)
            .map(|(id, _)| Staged {
                key: key.to_owned(),
                id: id.clone(),
            })
            .collect())
    }
}

impl MemoryStore {
    fn no_such_upload(&self, key: &str) -> StoreError {
        StoreError::new(ErrorKind::Other, "stage", &self.bucket, key, "NoSuchUpload")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn put(key: &str, body: &'static str, precondition: Precondition) -> PutObject {
        PutObject {
            key: key.into(),
            body: Bytes::from_static(body.as_bytes()),
            content_type: "application/json".into(),
            metadata: BTreeMap::new(),
            precondition,
        }
    }

    #[tokio::test]
    async fn if_absent_writes_once_and_if_version_needs_the_current_version() {
        let s = MemoryStore::new("b");
        let v1 = s.put(put("k", "1", Precondition::IfAbsent)).await.unwrap();
        let err = s
            .put(put("k", "2", Precondition::IfAbsent))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::PreconditionFailed);
        let v2 = s
            .put(put("k", "2", Precondition::IfVersion(v1.clone())))
            .await
            .unwrap();
        let stale = s
            .put(put("k", "3", Precondition::IfVersion(v1)))
            .await
            .unwrap_err();
        assert_eq!(stale.kind, ErrorKind::PreconditionFailed);
        let got = s.get("k").await.unwrap().unwrap();
        assert_eq!(
            (got.body.as_ref(), got.info.version.as_str()),
            (b"2".as_ref(), v2.as_str())
        );
        assert_eq!(s.put_count(), 2);
    }

    #[tokio::test]
    async fn list_returns_only_the_prefix_in_key_order() {
        let s = MemoryStore::new("b");
        for k in ["p/b", "p/a", "q/a", "p"] {
            s.put(put(k, "x", Precondition::None)).await.unwrap();
        }
        let keys: Vec<String> = s
            .list("p/")
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.key)
            .collect();
        assert_eq!(keys, ["p/a", "p/b"]);
        s.delete("p/a").await.unwrap();
        s.delete("p/a").await.unwrap();
        assert_eq!(s.list("p/").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn injected_failures_name_the_operation_and_key() {
        let s = MemoryStore::new("b");
        s.fail_with(Some(ErrorKind::Network));
        let e = s.get("k").await.unwrap_err();
        assert_eq!(
            (e.kind, e.op, e.key.as_str()),
            (ErrorKind::Network, "get", "k")
        );
        s.fail_with(None);
        assert!(s.get("k").await.unwrap().is_none());
    }
}
