//! S3 and S3-compatible stores, through aws-sdk-s3.
//!
//! Credentials are static keys (a policy's Secret) or, with `ambient: true`, the AWS SDK's
//! default credential chain (aws-config): environment keys, web identity (IRSA:
//! `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`), the container credentials endpoint (EKS
//! Pod Identity, ECS: `AWS_CONTAINER_CREDENTIALS_FULL_URI` +
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`), then the instance metadata service. The chain
//! reads the operator process's own environment, never the policy's Secrets.
//!
//! With a CA bundle (`spec.storage.caCert`), the SDK's own HTTPS client is built with a
//! trust store of the platform roots plus that bundle; nothing else about it changes.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use aws_credential_types::provider::future;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, ProvideCredentials, Region, RequestChecksumCalculation,
    SharedCredentialsProvider,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::{
    BoundedBody, ErrorKind, Object, ObjectInfo, ObjectStore, Precondition, PutObject, Staged,
    StagedPart, StoreError, classify,
};

/// Static credentials, e.g. read from a policy's Secret. `Debug` never shows the secret.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .finish()
    }
}

/// Where the S3 client's credentials come from.
#[derive(Clone, Debug)]
pub enum S3Credentials {
    /// Keys, e.g. read from a policy's Secret.
    Static(StaticCredentials),
    /// The AWS SDK's default credential chain of this process (IRSA, EKS Pod Identity,
    /// environment keys, instance profile): `ambient: true`.
    Ambient,
}

impl From<StaticCredentials> for S3Credentials {
    fn from(c: StaticCredentials) -> Self {
        S3Credentials::Static(c)
    }
}

/// How to reach one S3 bucket.
#[derive(Clone, Debug)]
pub struct S3Settings {
    pub region: String,
    /// S3-compatible endpoint (`AWS_CONFIG_STORAGE_ENDPOINT`); path-style addressing is
    /// used with it, as Kong does.
    pub endpoint: Option<String>,
    pub credentials: S3Credentials,
    /// PEM certificates trusted for the endpoint besides the platform roots (a private CA in
    /// front of an S3-compatible store).
    pub ca_pem: Option<String>,
}

/// Why a CA bundle cannot be trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaBundleError {
    #[error("the CA bundle is not valid PEM: {0}")]
    Pem(String),
    #[error("the CA bundle holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    Empty,
    #[error("certificate {index} of the CA bundle is not a usable CA certificate: {reason}")]
    Certificate { index: usize, reason: String },
    #[error("cannot build the TLS settings with the CA bundle: {0}")]
    Tls(String),
}

/// The trust store for `ca_pem`: the platform roots plus every certificate of the bundle.
///
/// NB: the SDK parses a custom trust store only when it opens the first connection, and
/// panics there on a certificate it cannot read. So the bundle is read here first, with
/// the same calls (`pem_slice_iter`, `RootCertStore::add`), and refused as an error.
pub fn trust_store(ca_pem: &str) -> Result<tls::TrustStore, CaBundleError> {
    let certs = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaBundleError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CaBundleError::Empty);
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| CaBundleError::Certificate {
            index: i + 1,
            reason: e.to_string(),
        })?;
    }
    Ok(tls::TrustStore::default().with_pem_certificate(ca_pem.as_bytes()))
}

/// The SDK's rustls HTTPS client (aws-lc), built as its default one is (it reads
/// `HTTPS_PROXY`/`NO_PROXY`), with `context`'s trust store when given.
fn https_client(context: Option<tls::TlsContext>) -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::{ConnectorBuilder, proxy::ProxyConfig};
    aws_smithy_http_client::Builder::new().build_with_connector_fn(move |settings, components| {
        let mut builder = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ));
        if let Some(context) = &context {
            builder.set_tls_context(context.clone());
        }
        builder.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            builder.set_sleep_impl(components.sleep_impl());
        }
        builder.set_proxy_config(Some(ProxyConfig::from_env()));
        builder.build()
    })
}

/// The HTTPS client of every S3 client without a CA bundle of its own, one per tokio
/// runtime.
///
/// NB: shared, where each SDK client otherwise builds its own: the operator opens a store
/// per policy and per storage check, and each one opened its own connection pool (and
/// TLS sessions); 200 policies checked at once built 200 (bench P4: the operator's peak
/// RSS fell from ~104 to ~88 MB). The SDK keeps a connector per connector settings
/// (timeouts) within the client. One per runtime: a pooled connection is driven by a task
/// of the runtime that opened it (the operator has one runtime; tests have one each).
fn shared_https_client() -> aws_sdk_s3::config::SharedHttpClient {
    type Clients = HashMap<tokio::runtime::Id, aws_sdk_s3::config::SharedHttpClient>;
    static CLIENTS: std::sync::LazyLock<std::sync::Mutex<Clients>> =
        std::sync::LazyLock::new(Default::default);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return https_client(None);
    };
    CLIENTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(runtime.id())
        .or_insert_with(|| https_client(None))
        .clone()
}

/// The client of [`https_client`] trusting `ca_pem` too.
fn https_client_trusting(
    ca_pem: &str,
) -> Result<aws_sdk_s3::config::SharedHttpClient, CaBundleError> {
    let context = tls::TlsContext::builder()
        .with_trust_store(trust_store(ca_pem)?)
        .build()
        .map_err(|e| CaBundleError::Tls(e.to_string()))?;
    Ok(https_client(Some(context)))
}

/// The AWS SDK's default credential chain, built on first use (building it is async, a
/// client is not). Its STS calls (web identity) go to the region of the process's
/// environment (`AWS_REGION`, which EKS's webhook sets), else to the bucket's region; the
/// STS endpoint follows `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL` as the SDK reads them.
#[derive(Debug)]
struct AmbientChain {
    region: Region,
    chain:
        tokio::sync::OnceCell<aws_config::default_provider::credentials::DefaultCredentialsChain>,
}

impl ProvideCredentials for AmbientChain {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let chain = self
                .chain
                .get_or_init(|| async {
                    let region = aws_config::meta::region::RegionProviderChain::default_provider()
                        .or_else(self.region.clone());
                    aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                        .region(region)
                        .build()
                        .await
                })
                .await;
            chain.provide_credentials().await
        })
    }
}

/// An S3 client for `settings`. Kong always uses path-style addressing; so do we, so the
/// operator and the data planes resolve a bucket the same way on every store. `Err` when
/// the CA bundle cannot be read.
pub fn client(settings: &S3Settings) -> Result<aws_sdk_s3::Client, CaBundleError> {
    let region = Region::new(settings.region.clone());
    let credentials = match &settings.credentials {
        S3Credentials::Static(c) => SharedCredentialsProvider::new(Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            c.session_token.clone(),
            None,
            "kong-fallback-operator",
        )),
        S3Credentials::Ambient => SharedCredentialsProvider::new(AmbientChain {
            region: region.clone(),
            chain: tokio::sync::OnceCell::new(),
        }),
    };
    let mut config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(region)
        .credentials_provider(credentials)
        // NB: a CRC32 of every body the SDK supports it for (PutObject): the integrity
        // check `put` relies on when it leaves the payload out of the signature.
        .request_checksum_calculation(RequestChecksumCalculation::WhenSupported)
        .force_path_style(true);
    if let Some(endpoint) = &settings.endpoint {
        config = config.endpoint_url(endpoint.trim_end_matches('/'));
    }
    config = config.http_client(match &settings.ca_pem {
        Some(ca_pem) => https_client_trusting(ca_pem)?,
        None => shared_https_client(),
    });
    Ok(aws_sdk_s3::Client::from_conf(config.build()))
}

/// Extra PutObject arguments for `config.json` (Kong's `cluster_fallback_export_s3_config`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutExtras {
    pub server_side_encryption: Option<String>,
    pub kms_key_id: Option<String>,
    pub storage_class: Option<String>,
}

/// `$req` (a PutObject or a CreateMultipartUpload: their builders differ, their setters
/// do not) with `$extras` set: one place, so that a staged write is stored as a PUT is.
macro_rules! with_extras {
    ($req:expr, $extras:expr) => {{
        let (mut req, extras): (_, &PutExtras) = ($req, $extras);
        if let Some(sse) = &extras.server_side_encryption {
            req = req.server_side_encryption(sse.as_str().into());
        }
        if let Some(kms) = &extras.kms_key_id {
            req = req.ssekms_key_id(kms);
        }
        if let Some(class) = &extras.storage_class {
            req = req.storage_class(class.as_str().into());
        }
        req
    }};
}

/// One bucket of an S3 or S3-compatible store.
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    extras: PutExtras,
}

impl S3Store {
    /// `Err` when the CA bundle of `settings` cannot be read.
    pub fn new(
        settings: &S3Settings,
        bucket: &str,
        extras: PutExtras,
    ) -> Result<Self, CaBundleError> {
        Ok(S3Store {
            client: client(settings)?,
            bucket: bucket.to_owned(),
            extras,
        })
    }

    /// After a HEAD answered 404: S3 answers a HEAD without a body, so a missing bucket and
    /// a missing key look alike. A HEAD of the bucket tells them apart; when it is refused
    /// (credentials without s3:ListBucket) the key is taken as missing.
    async fn missing_key_or_bucket(&self, key: &str) -> Result<Option<Object>, StoreError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Err(StoreError::new(
                ErrorKind::BucketMissing,
                "head",
                &self.bucket,
                key,
                "HEAD of the bucket answered 404",
            )),
            _ => Ok(None),
        }
    }

    fn error<E, R>(&self, op: &'static str, key: &str, err: SdkError<E, R>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + HttpStatus,
    {
        let (kind, detail) = match &err {
            SdkError::DispatchFailure(e) => {
                (ErrorKind::Network, format!("{:?}", e.as_connector_error()))
            }
            SdkError::TimeoutError(_) => (ErrorKind::Network, "timed out".to_owned()),
            SdkError::ServiceError(e) => {
                let status = e.raw().status_code();
                let code = e.err().code();
                let msg = e.err().message().unwrap_or("");
                (
                    classify(Some(status), code),
                    format!("HTTP {status} {} {msg}", code.unwrap_or(""))
                        .trim()
                        .to_owned(),
                )
            }
            SdkError::ResponseError(e) => (
                classify(Some(e.raw().status_code()), None),
                format!("unreadable response (HTTP {})", e.raw().status_code()),
            ),
            other => (ErrorKind::Other, other.to_string()),
        };
        StoreError::new(kind, op, &self.bucket, key, detail)
    }
}

/// The HTTP status of a raw response, for error classification.
pub trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn put(&self, object: PutObject) -> Result<String, StoreError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&object.key)
            .content_type(&object.content_type)
            .set_metadata(Some(object.metadata.into_iter().collect()))
            .body(ByteStream::from(object.body));
        req = match &object.precondition {
            Precondition::None => req,
            Precondition::IfAbsent => req.if_none_match("*"),
            Precondition::IfVersion(etag) => req.if_match(etag),
        };
        req = with_extras!(req, &self.extras);
        // NB: SigV4 would hash the whole body (SHA-256, 13 ms for 20 MB here) before the
        // first byte is sent; the body's CRC32 header (signed) already lets the store refuse
        // a damaged body, so the payload is sent unsigned, as over HTTPS the SDK's own
        // streaming uploads are.
        let out = req
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.error("put", &object.key, e))?;
        Ok(out.e_tag().unwrap_or_default().to_owned())
    }

    async fn head(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let out = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => {
                return self.missing_key_or_bucket(key).await;
            }
            Err(e) => return Err(self.error("head", key, e)),
        };
        let last_modified = to_system_time(out.last_modified());
        Ok(Some(Object {
            info: ObjectInfo {
                key: key.to_owned(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                last_modified,
                created: last_modified,
                version: out.e_tag().unwrap_or_default().to_owned(),
            },
            body: bytes::Bytes::new(),
            content_type: out.content_type().map(str::to_owned),
            metadata: out
                .metadata()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }))
    }

    async fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Object>, StoreError> {
        let mut out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => return Ok(None),
            Err(e) => return Err(self.error("get", key, e)),
        };
        let last_modified = to_system_time(out.last_modified());
        let info = ObjectInfo {
            key: key.to_owned(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            last_modified,
            created: last_modified,
            version: out.e_tag().unwrap_or_default().to_owned(),
        };
        let content_type = out.content_type().map(str::to_owned);
        let metadata: BTreeMap<String, String> = out
            .metadata()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut body = BoundedBody::new(info.size, max, &self.bucket, key)?;
        while let Some(chunk) = out.body.next().await {
            let chunk = chunk.map_err(|e| {
                StoreError::new(ErrorKind::Network, "get", &self.bucket, key, e.to_string())
            })?;
            body.push(&chunk, &self.bucket, key)?;
        }
        Ok(Some(Object {
            info,
            body: body.into_bytes(),
            content_type,
            metadata,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("list", prefix, e))?;
            for o in page.contents() {
                let last_modified = to_system_time(o.last_modified());
                out.push(ObjectInfo {
                    key: o.key().unwrap_or_default().to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified,
                    created: last_modified,
                    version: o.e_tag().unwrap_or_default().to_owned(),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn touch(&self, key: &str) -> Result<bool, StoreError> {
        // S3 has no touch: copying the object onto itself with replaced metadata is the
        // documented way to move LastModified without rewriting the data from here.
        let source = format!("{}/{}", self.bucket, key);
        let r = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(key)
            .copy_source(source)
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .metadata("refreshed", jiff::Timestamp::now().to_string())
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) => {
                let err = self.error("touch", key, e);
                if err.detail.contains("NoSuchKey") || err.detail.starts_with("HTTP 404") {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("delete", key, e))?;
        Ok(())
    }

    fn staged_part_size(&self) -> Option<usize> {
        // NB: S3's smallest part but the last.
        Some(5 << 20)
    }

    async fn stage(
        &self,
        key: &str,
        content_type: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<Staged, StoreError> {
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .set_metadata(Some(metadata.into_iter().collect()))
            // NB: each part carries its CRC32 (as a PUT's body does), declared up front.
            .checksum_algorithm(ChecksumAlgorithm::Crc32);
        req = with_extras!(req, &self.extras);
        let out = req.send().await.map_err(|e| self.error("stage", key, e))?;
        let id = out.upload_id().unwrap_or_default();
        if id.is_empty() {
            return Err(StoreError::new(
                ErrorKind::Other,
                "stage",
                &self.bucket,
                key,
                "the store answered a multipart upload without an id",
            ));
        }
        Ok(Staged {
            key: key.to_owned(),
            id: id.to_owned(),
        })
    }

    async fn stage_part(
        &self,
        staged: &Staged,
        number: i32,
        body: Bytes,
    ) -> Result<StagedPart, StoreError> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&staged.key)
            .upload_id(&staged.id)
            .part_number(number)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(body))
            // NB: unsigned, guarded by its CRC32, as `put` is.
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.error("stage", &staged.key, e))?;
        Ok(StagedPart {
            number,
            etag: out.e_tag().unwrap_or_default().to_owned(),
            crc32: out.checksum_crc32().map(str::to_owned),
        })
    }

    async fn commit_staged(
        &self,
        staged: &Staged,
        parts: Vec<StagedPart>,
        precondition: Precondition,
    ) -> Result<String, StoreError> {
        let parts = parts
            .into_iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(p.etag)
                    .set_checksum_crc32(p.crc32)
                    .build()
            })
            .collect();
        let req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&staged.key)
            .upload_id(&staged.id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        // NB: S3 takes both on CompleteMultipartUpload (2024-08 and 2024-11), MinIO too;
        // a store that ignores them here is found by `enforces_staged_preconditions`.
        let req = match &precondition {
            Precondition::None => req,
            Precondition::IfAbsent => req.if_none_match("*"),
            Precondition::IfVersion(etag) => req.if_match(etag),
        };
        let out = req
            .send()
            .await
            .map_err(|e| self.error("put", &staged.key, e))?;
        Ok(out.e_tag().unwrap_or_default().to_owned())
    }

    async fn abort_staged(&self, staged: &Staged) -> Result<(), StoreError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&staged.key)
            .upload_id(&staged.id)
            .send()
            .await
            .map_err(|e| self.error("stage", &staged.key, e))?;
        Ok(())
    }

    async fn staged_writes(&self, key: &str) -> Result<Vec<Staged>, StoreError> {
        // NB: one page (up to 1,000 uploads) is plenty: the exporter leaves at most one
        // per lead, and what is left after this is aborted next time.
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(key)
            .send()
            .await
            .map_err(|e| self.error("stage", key, e))?;
        Ok(out
            .uploads()
            .iter()
            .filter(|u| u.key() == Some(key))
            .filter_map(|u| {
                Some(Staged {
                    key: key.to_owned(),
                    id: u.upload_id()?.to_owned(),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_with_ca(ca_pem: &str) -> S3Settings {
        S3Settings {
            region: "us-east-1".into(),
            endpoint: Some("https://127.0.0.1:9".into()),
            credentials: StaticCredentials {
                access_key_id: "a".into(),
                secret_access_key: "b".into(),
                session_token: None,
            }
            .into(),
            ca_pem: Some(ca_pem.into()),
        }
    }

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_ca_bundle_that_cannot_be_read_is_an_error_not_a_panic() {
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        let cases = [
            ("", "holds no PEM certificate"),
            ("not a certificate", "holds no PEM certificate"),
            (
                "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n",
                "holds no PEM certificate",
            ),
            (
                "-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n",
                "not valid PEM",
            ),
            ("-----BEGIN CERTIFICATE-----\nMIIB\n", "not valid PEM"),
            (not_der, "certificate 1 of the CA bundle"),
        ];
        for (pem, expected) in cases {
            let e = client(&settings_with_ca(pem)).map(|_| ()).unwrap_err();
            assert!(e.to_string().contains(expected), "{pem:?}: {e}");
            // The store refuses it the same way.
            let e = S3Store::new(&settings_with_ca(pem), "b", PutExtras::default())
                .map(|_| ())
                .unwrap_err();
            assert!(e.to_string().contains(expected), "{pem:?}: {e}");
        }
        // One bad certificate spoils the bundle: the SDK would panic on it later.
        let e = trust_store(&format!("{}{not_der}", ca_pem())).unwrap_err();
        assert!(
            matches!(e, CaBundleError::Certificate { index: 2, .. }),
            "{e}"
        );
    }

    #[test]
    fn a_bundle_of_ca_certificates_builds_a_client() {
        let bundle = format!("{}\n{}", ca_pem(), ca_pem());
        assert!(trust_store(&bundle).is_ok());
        assert!(client(&settings_with_ca(&bundle)).is_ok());
    }

    #[test]
    fn debug_output_never_contains_the_secret() {
        let c = StaticCredentials {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: "very-secret-value".into(),
            session_token: Some("token-value".into()),
        };
        let s = format!(
            "{:?}",
            S3Settings {
                region: "r".into(),
                endpoint: None,
                credentials: c.into(),
                ca_pem: None,
            }
        );
        assert!(s.contains("AKIAEXAMPLE"));
        assert!(
            !s.contains("very-secret-value") && !s.contains("token-value"),
            "{s}"
        );
    }
}
