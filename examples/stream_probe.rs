//! Whether writing a large configuration while its frame is still being inflated could
//! bring P1 at 20 MB under 1.2x a bare PUT on this machine, before anyone changes the
//! export path for it: `cargo run --release --example stream_probe [MB]` (default 20),
//! against the test MinIO. Three arms, interleaved, each timed from the frame in memory to
//! the write committed (P1 adds the frame's receive, about 7 ms at 20 MB, to the export):
//!
//! - `bare_put`: one conditional PUT of the configuration: P1's baseline.
//! - `after_inflate`: the frame inflated, then the parts sent (four at once) while the
//!   checks run, committed after both: the exporter's staged path today.
//! - `while_inflating`: the upload created at once, each part sent as soon as it is
//!   inflated, the checks after inflating, the last part after the checks (they find where
//!   `config_table` ends), committed after both. Only possible when `config_hash` and
//!   `timestamp` come before `config_table` in the envelope: the upload's metadata must be
//!   known when it is created. Kong's key order is cjson's, that is LuaJIT's table order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::Instant;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures::StreamExt;

mod support;
use support::{On, percentile};

const KEY: &str = "probe/stream.json";
/// S3's smallest part but the last.
const PART: usize = 5 << 20;
/// Parts sent at once, as the exporter does.
const AT_ONCE: usize = 4;

async fn part(
    client: &Client,
    bucket: &str,
    id: &str,
    number: i32,
    body: Bytes,
) -> aws_sdk_s3::types::CompletedPart {
    support::part(client, bucket, KEY, id, number, body).await
}

async fn commit(
    client: &Client,
    bucket: &str,
    id: &str,
    parts: Vec<aws_sdk_s3::types::CompletedPart>,
    etag: String,
) -> String {
    support::complete(client, bucket, KEY, id, parts, On::Version(etag))
        .await
        .unwrap()
}

/// The checks the exporter runs on a configuration.
fn check(json: &[u8]) {
    let text = std::str::from_utf8(json).unwrap();
    kong_fallback_operator::kong::config::validate_config_text(text).unwrap();
}

/// The gzip trailer's ISIZE: the inflated length (mod 4 GiB).
fn inflated_len(frame: &[u8]) -> usize {
    let t = &frame[frame.len() - 4..];
    u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize
}

/// Today's path: inflate, then parts and checks at once, then the commit.
async fn after_inflate(
    client: &Client,
    bucket: &str,
    frame: Bytes,
    table: std::ops::Range<usize>,
    etag: String,
) -> String {
    let json = tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(inflated_len(&frame));
        flate2::read::GzDecoder::new(&frame[..])
            .read_to_end(&mut out)
            .unwrap();
        Bytes::from(out)
    })
    .await
    .unwrap();
    let config = json.slice(table);
    let id = support::create(client, bucket, KEY).await;
    let checks = tokio::task::spawn_blocking({
        let config = config.clone();
        move || check(&config)
    });
    let count = (config.len() / PART).max(1);
    let size = config.len() / count;
    let parts = futures::stream::iter((0..count).map(|i| {
        let end = if i + 1 == count {
            config.len()
        } else {
            (i + 1) * size
        };
        part(
            client,
            bucket,
            &id,
            i as i32 + 1,
            config.slice(i * size..end),
        )
    }))
    .buffered(AT_ONCE)
    .collect::<Vec<_>>()
    .await;
    checks.await.unwrap();
    commit(client, bucket, &id, parts, etag).await
}

/// Parts sent as they are inflated; the last after the checks.
async fn while_inflating(
    client: &Client,
    bucket: &str,
    frame: Bytes,
    table: std::ops::Range<usize>,
    etag: String,
) -> String {
    let (tx, rx) = tokio::sync::mpsc::channel::<(i32, Bytes)>(8);
    let inflater = tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(inflated_len(&frame));
        let mut gz = flate2::read::GzDecoder::new(&frame[..]);
        let (mut sent, mut number) = (table.start, 1);
        loop {
            let n = (&mut gz).take(1 << 20).read_to_end(&mut out).unwrap();
            // NB: a part goes once a whole part and more of the table are inflated, so
            // that the last part is never empty.
            while out.len().min(table.end) > sent + PART {
                let chunk = Bytes::copy_from_slice(&out[sent..sent + PART]);
                tx.blocking_send((number, chunk)).unwrap();
                (sent, number) = (sent + PART, number + 1);
            }
            if n == 0 {
                break;
            }
        }
        check(&out[table.clone()]);
        let last = Bytes::copy_from_slice(&out[sent..table.end]);
        tx.blocking_send((number, last)).unwrap();
    });
    let id = support::create(client, bucket, KEY).await;
    let inflated = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|next| (next, rx))
    });
    let parts = inflated
        .map(|(number, body)| part(client, bucket, &id, number, body))
        .buffered(AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    inflater.await.unwrap();
    commit(client, bucket, &id, parts, etag).await
}

#[tokio::main]
async fn main() {
    let (mb, bucket, client) = support::start("stream-probe").await;
    let table_text = kfo_testenv::configs::config_table(mb * 1_000_000, 1);
    // NB: the order the arm `while_inflating` needs: both fields before the table.
    let head = format!(
        r#"{{"type":"reconfigure","config_hash":"{:032x}","timestamp":1.0,"config_table":"#,
        1
    );
    let json = format!("{head}{table_text}}}");
    let table = head.len()..head.len() + table_text.len();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json.as_bytes()).unwrap();
    let frame = Bytes::from(gz.finish().unwrap());
    let config = Bytes::from(table_text.into_bytes());
    let mut etag = client
        .put_object()
        .bucket(&bucket)
        .key(KEY)
        .body(ByteStream::from(config.clone()))
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_owned();

    let arms = ["bare_put", "after_inflate", "while_inflating"];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); arms.len()];
    for _ in 0..30 {
        for (i, arm) in arms.iter().enumerate() {
            let t = Instant::now();
            etag = match *arm {
                "bare_put" => support::put(&client, &bucket, KEY, config.clone(), Some(etag)).await,
                "after_inflate" => {
                    after_inflate(&client, &bucket, frame.clone(), table.clone(), etag).await
                }
                _ => while_inflating(&client, &bucket, frame.clone(), table.clone(), etag).await,
            };
            samples[i].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let stored = client
        .get_object()
        .bucket(&bucket)
        .key(KEY)
        .send()
        .await
        .unwrap();
    let stored = stored.body.collect().await.unwrap().into_bytes();
    assert!(
        stored == config,
        "the last write did not store the configuration"
    );
    let bare = percentile(&mut samples[0], 0.5);
    for (arm, s) in arms.iter().zip(&mut samples) {
        let p50 = percentile(s, 0.5);
        println!(
            "{arm} mb={mb} p50_ms={p50:.1} p90_ms={:.1} ratio_p50={:.2}",
            percentile(s, 0.9),
            p50 / bare
        );
    }
}
