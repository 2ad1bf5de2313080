//! The S3 requests the write-path probes time (`multipart_probe`, `stream_probe`), sent as
//! the exporter sends them (payload unsigned), with the SDK client the test MinIO hands out.
// NB: each probe compiles its own copy and uses part of it.
#![allow(dead_code)]

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

/// What a write is conditional on.
pub enum On {
    Version(String),
    Absent,
}

/// One PUT of `body` to `key`, on `if_match` when given: the new ETag.
pub async fn put(
    client: &Client,
    bucket: &str,
    key: &str,
    body: Bytes,
    if_match: Option<String>,
) -> String {
    let out = client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/json")
        .set_if_match(if_match)
        .body(ByteStream::from(body))
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .unwrap();
    out.e_tag().unwrap().to_owned()
}

/// Starts a multipart upload of `key`: its id.
pub async fn create(client: &Client, bucket: &str, key: &str) -> String {
    let out = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type("application/json")
        .send()
        .await
        .unwrap();
    out.upload_id().unwrap().to_owned()
}

/// Sends part `number` of upload `id`.
pub async fn part(
    client: &Client,
    bucket: &str,
    key: &str,
    id: &str,
    number: i32,
    body: Bytes,
) -> CompletedPart {
    let out = client
        .upload_part()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .part_number(number)
        .body(ByteStream::from(body))
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .unwrap();
    CompletedPart::builder()
        .part_number(number)
        .e_tag(out.e_tag().unwrap())
        .build()
}

/// Commits upload `id` from `parts` on `on`: the new ETag, or the store's error code when
/// the commit is refused (the upload is then aborted).
pub async fn complete(
    client: &Client,
    bucket: &str,
    key: &str,
    id: &str,
    mut parts: Vec<CompletedPart>,
    on: On,
) -> Result<String, String> {
    parts.sort_by_key(|p| p.part_number());
    let complete = client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        );
    let complete = match on {
        On::Version(etag) => complete.if_match(etag),
        On::Absent => complete.if_none_match("*"),
    };
    match complete.send().await {
        Ok(out) => Ok(out.e_tag().unwrap().to_owned()),
        Err(e) => {
            client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await
                .unwrap();
            Err(e
                .as_service_error()
                .and_then(|e| e.code())
                .unwrap_or("no code")
                .to_owned())
        }
    }
}

/// The `p` quantile of `samples` (sorted in place).
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

/// The size asked for on the command line (MB, default 20), and a fresh bucket `name` on
/// the test MinIO with a client for it.
pub async fn start(name: &str) -> (usize, String, Client) {
    let mb: usize = std::env::args()
        .nth(1)
        .map_or(20, |a| a.parse().expect("a size in MB"));
    let env = kfo_testenv::minio().await;
    let bucket = env.bucket(name).await.unwrap();
    (mb, bucket, env.root_client())
}
