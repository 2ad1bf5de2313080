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
use bytes::Bytes;

mod support;
use support::{On, percentile};

const KEY: &str = "probe/config.json";

async fn put(client: &Client, bucket: &str, body: Bytes, if_match: Option<String>) -> String {
    support::put(client, bucket, KEY, body, if_match).await
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
    let id = support::create(client, bucket, KEY).await;
    let parts = (0..body.len().div_ceil(part)).map(|i| {
        let chunk = body.slice(i * part..((i + 1) * part).min(body.len()));
        support::part(client, bucket, KEY, &id, i as i32 + 1, chunk)
    });
    let parts = futures::future::join_all(parts).await;
    support::complete(client, bucket, KEY, &id, parts, on).await
}

#[tokio::main]
async fn main() {
    let (mb, bucket, client) = support::start("multipart-probe").await;
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
