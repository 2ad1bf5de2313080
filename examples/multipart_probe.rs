//! What a commit-gated export (P1's open gap: start the upload before the checks end,
//! commit only after them) would rest on, measured against the test MinIO: `cargo run
//! --release --example multipart_probe [MB]` (default 20).
//!
//! 1. A multipart upload is committed only by `CompleteMultipartUpload`, and the store
//!    honours the export's fencing there: completing with a stale `If-Match`, or with
//!    `If-None-Match: *` over an existing object, is refused (412) and the object stays.
//!    The probe panics if not.
//! 2. The write's own cost: a single PUT against multipart uploads with their parts sent
//!    at once (5 MiB parts, 8 MiB parts, four parts), interleaved, each conditional on the
//!    stored ETag as the export's write is.
//!
//! The exporter now stages large configurations this way (`src/export/early.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

const KEY: &str = "probe/config.json";

/// What a completion is conditional on.
enum On {
    Version(String),
    Absent,
}

async fn put(client: &Client, bucket: &str, body: Bytes, if_match: Option<String>) -> String {
    client
        .put_object()
        .bucket(bucket)
        .key(KEY)
        .content_type("application/json")
        .set_if_match(if_match)
        .body(ByteStream::from(body))
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_owned()
}

/// A multipart upload of `body` in parts of `part` bytes, all sent at once, completed on
/// `on`. The store's error code when the completion is refused (the upload is aborted).
async fn multipart(
    client: &Client,
    bucket: &str,
    body: &Bytes,
    part: usize,
    on: On,
) -> Result<String, String> {
    let id = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(KEY)
        .content_type("application/json")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    let parts = (0..body.len().div_ceil(part)).map(|i| {
        let chunk = body.slice(i * part..((i + 1) * part).min(body.len()));
        let (id, number) = (id.clone(), i as i32 + 1);
        async move {
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(KEY)
                .upload_id(id)
                .part_number(number)
                .body(ByteStream::from(chunk))
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
    });
    let parts = futures::future::join_all(parts).await;
    let complete = client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(KEY)
        .upload_id(&id)
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
                .key(KEY)
                .upload_id(&id)
                .send()
                .await
                .unwrap();
            Err(e
                .as_service_error()
                .and_then(|e| aws_sdk_s3::error::ProvideErrorMetadata::code(e))
                .unwrap_or("no code")
                .to_owned())
        }
    }
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .map_or(20, |a| a.parse().expect("a size in MB"));
    let env = kfo_testenv::minio().await;
    let bucket = env.bucket("multipart-probe").await.unwrap();
    let client = env.root_client();
    let body = Bytes::from(kfo_testenv::configs::config_table(mb * 1_000_000, 1));

    // 1. Fencing at the commit.
    let stored = put(&client, &bucket, body.clone(), None).await;
    let stale = multipart(
        &client,
        &bucket,
        &body,
        8 << 20,
        On::Version("\"0\"".into()),
    )
    .await;
    let absent = multipart(&client, &bucket, &body, 8 << 20, On::Absent).await;
    let now = client
        .head_object()
        .bucket(&bucket)
        .key(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        now.e_tag(),
        Some(stored.as_str()),
        "a refused completion changed the object"
    );
    println!(
        "stale_if_match={} if_none_match_over_existing={} object_unchanged=1",
        stale.expect_err("a stale If-Match was not refused"),
        absent.expect_err("If-None-Match over an existing object was not refused"),
    );

    // 2. The write's cost, interleaved.
    let arms = [
        ("single_put", 0),
        ("parts_5mib", 5 << 20),
        ("parts_8mib", 8 << 20),
        ("four_parts", body.len().div_ceil(4).max(5 << 20)),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); arms.len()];
    let mut etag = stored;
    for _ in 0..30 {
        for (i, &(_, part)) in arms.iter().enumerate() {
            let t = Instant::now();
            etag = if part == 0 {
                put(&client, &bucket, body.clone(), Some(etag)).await
            } else {
                multipart(&client, &bucket, &body, part, On::Version(etag))
                    .await
                    .unwrap()
            };
            samples[i].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    for ((name, _), s) in arms.iter().zip(&mut samples) {
        println!(
            "{name} mb={mb} p50_ms={:.1} p90_ms={:.1}",
            percentile(s, 0.5),
            percentile(s, 0.9)
        );
    }
}
