//! Google Cloud Storage.
//!
//! Reads and writes (with generation preconditions) go through google-cloud-storage. Its
//! list, delete and metadata calls are gRPC only (`StorageControl`), which emulators do
//! not serve and some networks block; those three use the JSON API directly, with the
//! same credentials (google-cloud-auth) and endpoint.
//!
//! Emulators: `STORAGE_EMULATOR_HOST` (the convention of Google's client libraries and of
//! fake-gcs-server, `host:port` or a URL) sends every call, the client library's and the
//! JSON API's alike, to the emulator, with the configured credentials. The policy stays as
//! in production; Kong's data planes do not read the variable (their GCS strategy always
//! calls Google).
//!
//! NB: no private CA (`spec.storage.caCert`) here. google-cloud-storage 1.21 builds its
//! own reqwest client inside `Storage::builder().build()` and takes neither an HTTP client
//! nor trust roots, so only the platform roots apply. GCS itself has a public certificate
//! (`spec.storage.endpoint` is for S3-compatible stores only).

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use google_cloud_auth::credentials::{
    Builder as AdcBuilder, CacheableResource, Credentials, anonymous, service_account,
};
use google_cloud_storage::client::Storage;
use serde::Deserialize;

use super::{
    BoundedBody, ErrorKind, Object, ObjectInfo, ObjectStore, Precondition, PutObject, StoreError,
    classify,
};

/// The public endpoint of Google Cloud Storage.
pub const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";

/// The variable that points every GCS call at an emulator.
pub const EMULATOR_HOST_ENV: &str = "STORAGE_EMULATOR_HOST";

/// The endpoint a `STORAGE_EMULATOR_HOST` value names: a URL as is, a bare `host:port` over
/// plain HTTP (as Google's client libraries read it); `None` when unset or empty.
pub fn emulator_endpoint(value: Option<&str>) -> Option<String> {
    let value = value.map(str::trim).filter(|v| !v.is_empty())?;
    let value = value.trim_end_matches('/');
    Some(if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    })
}

/// The emulator endpoint of this process's environment ([`EMULATOR_HOST_ENV`]).
pub fn emulator_from_env() -> Option<String> {
    emulator_endpoint(std::env::var(EMULATOR_HOST_ENV).ok().as_deref())
}

/// Where GCS credentials come from.
#[derive(Clone)]
pub enum GcsCredentials {
    /// A service-account key (the JSON Kong reads from `GCP_SERVICE_ACCOUNT`).
    ServiceAccountJson(String),
    /// Application default credentials: Workload Identity, the metadata server.
    Ambient,
    /// No credentials: only for emulators such as fake-gcs-server.
    Anonymous,
}

impl std::fmt::Debug for GcsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GcsCredentials::ServiceAccountJson(_) => "ServiceAccountJson(** redacted **)",
            GcsCredentials::Ambient => "Ambient",
            GcsCredentials::Anonymous => "Anonymous",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcsClientError {
    #[error("the GCS service-account JSON is not valid JSON: {0}")]
    ServiceAccountJson(serde_json::Error),
    #[error("cannot build GCS credentials: {0}")]
    Credentials(String),
    #[error("cannot build the GCS client: {0}")]
    Client(String),
}

/// The bucket name as the client library wants it.
pub fn bucket_path(bucket: &str) -> String {
    format!("projects/_/buckets/{bucket}")
}

fn credentials(credentials: &GcsCredentials) -> Result<Credentials, GcsClientError> {
    Ok(match credentials {
        GcsCredentials::ServiceAccountJson(json) => {
            let key = serde_json::from_str(json).map_err(GcsClientError::ServiceAccountJson)?;
            service_account::Builder::new(key)
                .build()
                .map_err(|e| GcsClientError::Credentials(e.to_string()))?
        }
        GcsCredentials::Ambient => AdcBuilder::default()
            .build()
            .map_err(|e| GcsClientError::Credentials(e.to_string()))?,
        GcsCredentials::Anonymous => anonymous::Builder::new().build(),
    })
}

/// A GCS client; `endpoint` overrides [`DEFAULT_ENDPOINT`] (emulators).
pub async fn client(
    endpoint: Option<&str>,
    creds: &GcsCredentials,
) -> Result<Storage, GcsClientError> {
    let mut builder = Storage::builder().with_credentials(credentials(creds)?);
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
    }
    builder
        .build()
        .await
        .map_err(|e| GcsClientError::Client(e.to_string()))
}

/// Options of every object this store writes (`spec.storage.gcsOptions`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutExtras {
    /// Cloud KMS key name (customer-managed encryption).
    pub kms_key_name: Option<String>,
    pub storage_class: Option<String>,
}

/// One GCS bucket.
pub struct GcsStore {
    extras: PutExtras,
    storage: Storage,
    http: reqwest::Client,
    credentials: Credentials,
    endpoint: String,
    bucket: String,
}

impl GcsStore {
    pub async fn new(
        endpoint: Option<&str>,
        creds: &GcsCredentials,
        bucket: &str,
    ) -> Result<Self, GcsClientError> {
        let credentials = credentials(creds)?;
        if let GcsCredentials::ServiceAccountJson(_) = creds {
            // NB: a key signs its own token locally (no network): a key that cannot (not an
            // RSA PKCS #8 PEM, fields missing) is reported as unusable here, not as refused
            // by the store on every call.
            credentials.headers(Default::default()).await.map_err(|e| {
                GcsClientError::Credentials(format!(
                    "the service-account key cannot sign a token: {e}"
                ))
            })?;
        }
        Ok(GcsStore {
            extras: PutExtras::default(),
            storage: client(endpoint, creds).await?,
            http: reqwest::Client::new(),
            credentials,
            endpoint: endpoint
                .unwrap_or(DEFAULT_ENDPOINT)
                .trim_end_matches('/')
                .to_owned(),
            bucket: bucket.to_owned(),
        })
    }

    /// Writes every object with `extras`.
    pub fn with_extras(self, extras: PutExtras) -> Self {
        GcsStore { extras, ..self }
    }

    fn err(
        &self,
        kind: ErrorKind,
        op: &'static str,
        key: &str,
        detail: impl Into<String>,
    ) -> StoreError {
        StoreError::new(kind, op, &self.bucket, key, detail)
    }

    fn client_error(
        &self,
        op: &'static str,
        key: &str,
        e: &google_cloud_storage::Error,
    ) -> StoreError {
        let kind = if e.is_authentication() {
            ErrorKind::Credentials
        } else if e.is_timeout() || e.is_io() || e.is_connect() || e.is_transport() {
            ErrorKind::Network
        } else {
            match e.http_status_code() {
                Some(404) => ErrorKind::BucketMissing,
                status => classify(status, None),
            }
        };
        self.err(kind, op, key, e.to_string())
    }

    /// A JSON API request with the store's credentials.
    async fn json_api(
        &self,
        op: &'static str,
        key: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, StoreError> {
        let headers = match self.credentials.headers(Default::default()).await {
            Ok(CacheableResource::New { data, .. }) => data,
            Ok(CacheableResource::NotModified) => Default::default(),
            Err(e) => return Err(self.err(ErrorKind::Credentials, op, key, e.to_string())),
        };
        req.headers(headers)
            .send()
            .await
            .map_err(|e| self.err(ErrorKind::Network, op, key, e.to_string()))
    }

    async fn failure(&self, op: &'static str, key: &str, resp: reqwest::Response) -> StoreError {
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let kind = match status {
            404 if op == "list" || body.contains("bucket") || body.contains("Bucket") => {
                ErrorKind::BucketMissing
            }
            _ => classify(Some(status), None),
        };
        let detail: String = body.chars().take(300).collect();
        self.err(kind, op, key, format!("HTTP {status} {detail}"))
    }

    fn object_url(&self, key: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            self.bucket,
            encode(key)
        )
    }

    /// Lists at most one object under `prefix`: `Err` when the bucket is missing.
    async fn list_one(&self, prefix: &str) -> Result<(), StoreError> {
        let url = format!("{}/storage/v1/b/{}/o", self.endpoint, self.bucket);
        let query = [("prefix", prefix), ("maxResults", "1")];
        let resp = self
            .json_api("list", prefix, self.http.get(&url).query(&query))
            .await?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(self.failure("list", prefix, resp).await)
    }

    /// The object's JSON API resource; `None` when it does not exist.
    async fn stat(&self, key: &str) -> Result<Option<JsonObject>, StoreError> {
        let resp = self
            .json_api("get", key, self.http.get(self.object_url(key)))
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            let body = resp.text().await.unwrap_or_default();
            return match not_found(&body) {
                NotFound::Bucket => Err(self.err(ErrorKind::BucketMissing, "get", key, body)),
                NotFound::Object => Ok(None),
                // NB: emulators (fake-gcs-server) say only "Not Found" for both: a listing
                // of a missing bucket fails, and the read credentials may list.
                NotFound::Unsaid => self.list_one(key).await.map(|()| None),
            };
        }
        if !resp.status().is_success() {
            return Err(self.failure("get", key, resp).await);
        }
        resp.json::<JsonObject>()
            .await
            .map(Some)
            .map_err(|e| self.err(ErrorKind::Other, "get", key, e.to_string()))
    }
}

/// What a 404 of an object read says is missing.
#[derive(Debug, PartialEq, Eq)]
enum NotFound {
    Bucket,
    Object,
    /// Neither (an emulator's bare "Not Found").
    Unsaid,
}

/// GCS says "The specified bucket does not exist." or "No such object: b/k".
fn not_found(body: &str) -> NotFound {
    let body = body.to_ascii_lowercase();
    if body.contains("object") {
        NotFound::Object
    } else if body.contains("bucket") {
        NotFound::Bucket
    } else {
        NotFound::Unsaid
    }
}

/// The fields of a JSON API object resource we use.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonObject {
    name: String,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    generation: Option<String>,
    #[serde(default)]
    updated: Option<String>,
    #[serde(default)]
    time_created: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

impl JsonObject {
    fn info(&self) -> ObjectInfo {
        let updated = parse_time(self.updated.as_deref());
        ObjectInfo {
            key: self.name.clone(),
            size: self
                .size
                .as_deref()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            last_modified: updated,
            created: self
                .time_created
                .as_deref()
                .map_or(updated, |t| parse_time(Some(t))),
            version: self.generation.clone().unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonList {
    #[serde(default)]
    items: Vec<JsonObject>,
    #[serde(default)]
    next_page_token: Option<String>,
}

fn parse_time(t: Option<&str>) -> SystemTime {
    t.and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(SystemTime::UNIX_EPOCH, SystemTime::from)
}

/// Percent-encodes an object name for a URL path segment.
fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[async_trait::async_trait]
impl ObjectStore for GcsStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn put(&self, object: PutObject) -> Result<String, StoreError> {
        let mut req = self
            .storage
            .write_object(bucket_path(&self.bucket), &object.key, object.body)
            .set_content_type(object.content_type)
            .set_metadata(object.metadata);
        if let Some(kms) = &self.extras.kms_key_name {
            req = req.set_kms_key(kms);
        }
        if let Some(class) = &self.extras.storage_class {
            req = req.set_storage_class(class);
        }
        req = match &object.precondition {
            Precondition::None => req,
            Precondition::IfAbsent => req.set_if_generation_match(0_i64),
            Precondition::IfVersion(g) => match g.parse::<i64>() {
                Ok(g) => req.set_if_generation_match(g),
                Err(_) => {
                    return Err(self.err(
                        ErrorKind::Other,
                        "put",
                        &object.key,
                        format!("{g:?} is not a GCS generation"),
                    ));
                }
            },
        };
        let written = req
            .send_buffered()
            .await
            .map_err(|e| self.client_error("put", &object.key, &e))?;
        Ok(written.generation.to_string())
    }

    async fn head(&self, key: &str) -> Result<Option<Object>, StoreError> {
        Ok(self.stat(key).await?.map(|meta| Object {
            info: meta.info(),
            body: Bytes::new(),
            content_type: meta.content_type.clone(),
            metadata: meta.metadata,
        }))
    }

    async fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Object>, StoreError> {
        let Some(meta) = self.stat(key).await? else {
            return Ok(None);
        };
        let mut body = BoundedBody::new(meta.info().size, max, &self.bucket, key)?;
        // NB: pin the generation we described, so body and metadata belong together.
        let mut read = self.storage.read_object(bucket_path(&self.bucket), key);
        if let Some(g) = meta
            .generation
            .as_deref()
            .and_then(|g| g.parse::<i64>().ok())
        {
            read = read.set_generation(g);
        }
        let mut resp = match read.send().await {
            Ok(r) => r,
            Err(e) if e.http_status_code() == Some(404) => return Ok(None),
            Err(e) => return Err(self.client_error("get", key, &e)),
        };
        while let Some(chunk) = resp.next().await {
            let chunk = chunk.map_err(|e| self.client_error("get", key, &e))?;
            body.push(&chunk, &self.bucket, key)?;
        }
        Ok(Some(Object {
            info: meta.info(),
            body: body.into_bytes(),
            content_type: meta.content_type.clone(),
            metadata: meta.metadata,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let url = format!("{}/storage/v1/b/{}/o", self.endpoint, self.bucket);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("prefix", prefix.to_owned()),
                ("maxResults", "1000".to_owned()),
            ];
            if let Some(t) = &token {
                query.push(("pageToken", t.clone()));
            }
            let resp = self
                .json_api("list", prefix, self.http.get(&url).query(&query))
                .await?;
            if !resp.status().is_success() {
                return Err(self.failure("list", prefix, resp).await);
            }
            let page: JsonList = resp
                .json()
                .await
                .map_err(|e| self.err(ErrorKind::Other, "list", prefix, e.to_string()))?;
            out.extend(page.items.iter().map(JsonObject::info));
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn touch(&self, key: &str) -> Result<bool, StoreError> {
        // objects.patch: a metadata change bumps `updated`, keeps `timeCreated` and the data.
        let now = jiff::Timestamp::now().to_string();
        let body = serde_json::json!({"metadata": {"refreshed": now}});
        let resp = self
            .json_api(
                "touch",
                key,
                self.http.patch(self.object_url(key)).json(&body),
            )
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        if resp.status().is_success() {
            return Ok(true);
        }
        Err(self.failure("touch", key, resp).await)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let resp = self
            .json_api("delete", key, self.http.delete(self.object_url(key)))
            .await?;
        if resp.status().is_success() || resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(self.failure("delete", key, resp).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_encoded_as_one_path_segment() {
        assert_eq!(
            encode("kong/3.6.0.0/election/17.5-abc"),
            "kong%2F3.6.0.0%2Felection%2F17.5-abc"
        );
        assert_eq!(encode("a b+c"), "a%20b%2Bc");
    }

    #[test]
    fn json_api_objects_become_object_infos() {
        let o: JsonObject = serde_json::from_str(
            r#"{"name":"p/3.6.0.0/config.json","size":"42","generation":"1700000000123456",
               "updated":"2026-11-23T01:02:03.5Z","timeCreated":"2026-11-23T01:00:00Z",
               "contentType":"application/json","metadata":{"uploader":"op"}}"#,
        )
        .unwrap();
        let i = o.info();
        assert_eq!((i.size, i.version.as_str()), (42, "1700000000123456"));
        assert!(i.created < i.last_modified);
        assert_eq!(o.metadata["uploader"], "op");
    }

    #[test]
    fn the_emulator_host_is_a_url_or_a_plain_http_host_and_port() {
        assert_eq!(
            emulator_endpoint(Some("127.0.0.1:4443")).as_deref(),
            Some("http://127.0.0.1:4443")
        );
        assert_eq!(
            emulator_endpoint(Some("https://gcs.example:8443/")).as_deref(),
            Some("https://gcs.example:8443")
        );
        assert_eq!(emulator_endpoint(Some(" ")), None);
        assert_eq!(emulator_endpoint(None), None);
    }

    #[test]
    fn a_404_says_whether_the_bucket_or_the_object_is_missing_or_neither() {
        let gcs = |m: &str| format!(r#"{{"error":{{"code":404,"message":"{m}"}}}}"#);
        assert_eq!(
            not_found(&gcs("The specified bucket does not exist.")),
            NotFound::Bucket
        );
        assert_eq!(
            not_found(&gcs("No such object: bkt/p/3.6.1.4/config.json")),
            NotFound::Object
        );
        assert_eq!(not_found(&gcs("Not Found")), NotFound::Unsaid);
    }

    #[test]
    fn debug_output_never_contains_the_key() {
        let c = GcsCredentials::ServiceAccountJson(r#"{"private_key":"secret"}"#.into());
        assert!(!format!("{c:?}").contains("secret"));
    }
}
