//! The export pipeline end to end: the Kong CP double pushes, the operator's client
//! receives, the exporter writes to a real MinIO or fake-gcs-server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use kfo_testenv::{KongCp, Mtls, gcs, minio};
use kong_fallback_operator::export::runner::{META_CONFIG_HASH, META_UPLOADER, Report, Stages};
use kong_fallback_operator::kong::config::config_hashes;
use kong_fallback_operator::storage::gcs::{GcsCredentials, GcsStore};
use kong_fallback_operator::storage::s3::{PutExtras, S3Settings, S3Store, StaticCredentials};
use kong_fallback_operator::storage::{ErrorKind, ObjectStore};

use crate::{pipeline, stores};
use pipeline::Pipeline;
use stores::{minio_store, open_uploads};

fn table(n: usize) -> String {
    format!(
        r#"{{"_format_version":"3.0","_transform":false,"services":[{{"id":"9748f662-7711-4a90-8186-dc02f10eb0f5","name":"svc-{n}","host":"httpbin.org","path":"\/anything","port":443,"tags":null}}],"routes":[{{"id":"2f55b0b3-04a1-4e47-8c0f-c0d6f0b2b3a2","service":"9748f662-7711-4a90-8186-dc02f10eb0f5","paths":["\/mock"]}}]}}"#
    )
}

fn hash(t: &str) -> String {
    config_hashes(&serde_json::from_str(t).unwrap()).config
}

/// A pipeline exporting version `version` of `cp`'s configuration to `s3://bucket/kong` on
/// MinIO, with no minimum interval.
fn to_minio(cp: &KongCp, version: &str, env: &kfo_testenv::MinioEnv, bucket: &str) -> Pipeline {
    Pipeline::start(
        cp,
        version,
        minio_store(env, bucket),
        &format!("s3://{bucket}/kong"),
        Duration::ZERO,
    )
}
#[tokio::test]
async fn a_push_lands_at_the_exact_key_with_the_exact_bytes_and_only_once() {
    let env = minio().await;
    let bucket = env.bucket("export-exact").await.unwrap();
    let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    let t = table(1);
    cp.push(&t, &hash(&t));
    let store = minio_store(env, &bucket);
    let mut p = Pipeline::start(
        &cp,
        "3.6.1.4",
        store.clone(),
        &format!("s3://{bucket}/kong/"),
        Duration::ZERO,
    );

    let (key, h) = p.exported().await;
    assert_eq!(key, "kong/3.6.1.4/config.json");
    assert_eq!(h, hash(&t));
    let o = env
        .root_client()
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(o.content_type(), Some("application/json"));
    let meta = o.metadata().unwrap().clone();
    assert_eq!(meta[META_UPLOADER], "kfo-test-replica");
    assert_eq!(meta[META_CONFIG_HASH], hash(&t));
    let etag = o.e_tag().unwrap().to_owned();
    let body = o.body.collect().await.unwrap().into_bytes();
    assert_eq!(
        &body[..],
        t.as_bytes(),
        "byte-for-byte the config_table the CP encoded"
    );
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        parsed["services"][0]["path"], "/anything",
        "\\/ escapes decode like Kong's cjson"
    );

    // The same config again (a CP re-push or a reconnect) writes nothing.
    cp.push(&t, &hash(&t));
    let why = p
        .until(10, |r| {
            if let Report::Skipped { why, .. } = r {
                Some(why)
            } else {
                None
            }
        })
        .await;
    assert_eq!(why, "unchanged");
    let again = env
        .root_client()
        .head_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(again.e_tag(), Some(etag.as_str()));
}

#[tokio::test]
async fn an_empty_config_never_replaces_a_good_one() {
    let env = minio().await;
    let bucket = env.bucket("export-empty").await.unwrap();
    let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    let good = table(1);
    cp.push(&good, &hash(&good));
    let mut p = to_minio(&cp, "3.6.1.4", env, &bucket);
    p.exported().await;
    let empty = r#"{"_format_version":"3.0","_transform":false,"workspaces":[{"id":"w","name":"default"}]}"#;
    cp.push(empty, "00000000000000000000000000000000");
    let why = p
        .until(10, |r| {
            if let Report::Skipped { why, .. } = r {
                Some(why)
            } else {
                None
            }
        })
        .await;
    assert_eq!(why, "empty configuration");
    assert_eq!(
        &env.read(&bucket, "kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap()[..],
        good.as_bytes()
    );
}

#[tokio::test]
async fn two_versions_get_two_keys() {
    let env = minio().await;
    let bucket = env.bucket("export-versions").await.unwrap();
    let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    // key-auth's `realm` is removed from what a DP before 3.7 is sent (Kong's compat
    // layer): each key holds what its own version received.
    let t = table(1).replace(
        r#""routes":"#,
        r#""plugins":[{"id":"4a6d2c9e-1f3b-4c5d-8e7f-0a1b2c3d4e5f","name":"key-auth","config":{"key_names":["apikey"],"realm":"kong"}}],"routes":"#,
    );
    cp.push(&t, &hash(&t));
    let mut a = to_minio(&cp, "3.6.1.4", env, &bucket);
    let mut b = to_minio(&cp, "3.9.0.1", env, &bucket);
    assert_eq!(a.exported().await.0, "kong/3.6.1.4/config.json");
    assert_eq!(b.exported().await.0, "kong/3.9.0.1/config.json");
    for (version, realm) in [("3.6.1.4", None), ("3.9.0.1", Some("kong"))] {
        let stored = env
            .read(&bucket, &format!("kong/{version}/config.json"))
            .await
            .unwrap()
            .unwrap();
        let stored: serde_json::Value = serde_json::from_slice(&stored).unwrap();
        assert_eq!(
            stored["plugins"][0]["config"]["realm"].as_str(),
            realm,
            "kong/{version}/config.json holds another version's payload"
        );
    }
    let versions: Vec<String> = cp.data_planes().into_iter().map(|d| d.version).collect();
    assert!(versions.contains(&"3.6.1.4".to_owned()) && versions.contains(&"3.9.0.1".to_owned()));
}

#[tokio::test]
async fn a_burst_of_100_pushes_ends_with_the_last_stored_within_the_write_bound() {
    let env = minio().await;
    let bucket = env.bucket("export-burst").await.unwrap();
    let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    // NB: the CP passes every push on (as with a tiny db_update_frequency): the operator's
    // own coalescing is what this test bounds, not the CP's 5 s debounce.
    cp.set_push_debounce(Duration::ZERO);
    let first = table(0);
    cp.push(&first, &hash(&first));
    let min_interval = Duration::from_millis(500);
    let mut p = Pipeline::start(
        &cp,
        "3.6.1.4",
        minio_store(env, &bucket),
        &format!("s3://{bucket}/kong"),
        min_interval,
    );
    p.exported().await;

    let start = Instant::now();
    for n in 1..=100 {
        let t = table(n);
        cp.push(&t, &hash(&t));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let burst = start.elapsed();
    let last = hash(&table(100));
    let mut writes = 0;
    loop {
        let (_, h) = p.exported().await;
        writes += 1;
        if h == last {
            break;
        }
    }
    let bound = (burst.as_secs_f64() / min_interval.as_secs_f64()).ceil() as usize + 1;
    assert!(
        writes <= bound,
        "{writes} writes for a {burst:?} burst, bound {bound}"
    );
    assert_eq!(
        &env.read(&bucket, "kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap()[..],
        table(100).as_bytes()
    );
    // History keeps the newest 3 (written just after each export).
    let mut keys = Vec::new();
    for _ in 0..100 {
        let listed = env
            .root_client()
            .list_objects_v2()
            .bucket(&bucket)
            .prefix("kong/3.6.1.4/history/")
            .send()
            .await
            .unwrap();
        keys = listed
            .contents()
            .iter()
            .map(|o| o.key().unwrap_or("").to_owned())
            .collect();
        if keys.len() == 3 && keys.iter().any(|k| k.contains(&last)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // NB: the whole condition again: the loop also ends by running out of tries.
    assert!(
        keys.len() == 3 && keys.iter().any(|k| k.contains(&last)),
        "history is not the newest 3 including {last}: {keys:?}"
    );
}

#[tokio::test]
async fn wrong_write_credentials_are_reported_as_credentials_and_retried() {
    let env = minio().await;
    let bucket = env.bucket("export-denied").await.unwrap();
    let ro = env.read_only_credentials(&bucket).await.unwrap();
    let settings = S3Settings {
        region: "us-east-1".into(),
        endpoint: Some(env.endpoint.clone()),
        credentials: StaticCredentials {
            access_key_id: ro.access_key_id,
            secret_access_key: ro.secret_access_key.clone(),
            session_token: Some(ro.session_token),
        }
        .into(),
        ca_pem: None,
    };
    let store: Arc<dyn ObjectStore> =
        Arc::new(S3Store::new(&settings, &bucket, PutExtras::default()).unwrap());
    let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    let t = table(1);
    cp.push(&t, &hash(&t));
    let mut p = Pipeline::start(
        &cp,
        "3.6.1.4",
        store,
        &format!("s3://{bucket}/kong"),
        Duration::ZERO,
    );
    let (error, retry_in) = p
        .until(15, |r| {
            if let Report::Failed { error, retry_in } = r {
                Some((error, retry_in))
            } else {
                None
            }
        })
        .await;
    assert_eq!(error.kind, ErrorKind::Credentials, "{error}");
    assert!(
        error
            .to_string()
            .contains(&format!("{bucket}/kong/3.6.1.4/config.json")),
        "{error}"
    );
    assert!(!error.to_string().contains(&ro.secret_access_key));
    assert_eq!(retry_in, Duration::from_millis(500));
    let (error, retry_in) = p
        .until(15, |r| {
            if let Report::Failed { error, retry_in } = r {
                Some((error, retry_in))
            } else {
                None
            }
        })
        .await;
    assert_eq!(error.kind, ErrorKind::Credentials);
    assert_eq!(retry_in, Duration::from_secs(1), "backoff grows");
}

#[tokio::test]
async fn a_push_lands_in_gcs() {
    let env = gcs().await;
    let bucket = env.bucket("export-gcs").await.unwrap();
    // NB: the client goes through a recorder: fake-gcs-server takes an upload's content
    // type from the media part's header, not from the object resource the client sends
    // (GCS uses the resource's `contentType`), so only the request can show it.
    let (proxy, sent) = recording_proxy(&env.endpoint).await;
    let store: Arc<dyn ObjectStore> = Arc::new(
        GcsStore::new(Some(&proxy), &GcsCredentials::Anonymous, &bucket)
            .await
            .unwrap(),
    );
    let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    let t = table(1);
    cp.push(&t, &hash(&t));
    let mut p = Pipeline::start(
        &cp,
        "3.6.1.4",
        store.clone(),
        &format!("gcs://{bucket}/kong"),
        Duration::ZERO,
    );
    let (key, _) = p.exported().await;
    assert_eq!(key, "kong/3.6.1.4/config.json");
    // Read back through the emulator's JSON API, not the product's client.
    let object = gcs_object(&env.endpoint, &bucket, &key).await;
    let request = String::from_utf8_lossy(&sent.lock().unwrap()).into_owned();
    let upload = request
        .split("POST /upload/storage/v1/")
        .nth(1)
        .expect("an upload request");
    assert!(
        upload.contains(r#""contentType":"application/json""#),
        "the upload does not name the content type: {upload}"
    );
    assert_eq!(
        object["metadata"][META_UPLOADER], "kfo-test-replica",
        "{object}"
    );
    assert_eq!(object["metadata"][META_CONFIG_HASH], hash(&t), "{object}");
    let body = reqwest::get(format!(
        "{}/storage/v1/b/{bucket}/o/{}?alt=media",
        env.endpoint,
        key.replace('/', "%2F")
    ))
    .await
    .unwrap()
    .error_for_status()
    .unwrap()
    .bytes()
    .await
    .unwrap();
    assert_eq!(&body[..], t.as_bytes());

    // The refresh of a GCS registration (Kong's objects.update) is the store's `touch`: a
    // metadata patch that keeps the data, the generation and the creation time.
    // NB: GCS moves `updated` (and `metageneration`) on a metadata patch; fake-gcs-server
    // 1.56 moves neither (checked by hand: PATCH of the metadata, then GET), so what it can show is that the patch landed: the `refreshed`
    // metadata is set, the rest of the object is as it was.
    let before = jiff::Timestamp::now();
    assert!(store.touch(&key).await.unwrap());
    let touched = gcs_object(&env.endpoint, &bucket, &key).await;
    let refreshed: jiff::Timestamp = touched["metadata"]["refreshed"]
        .as_str()
        .unwrap_or_else(|| panic!("no refreshed metadata after touch: {touched}"))
        .parse()
        .unwrap();
    assert!(refreshed >= before, "{refreshed} < {before}");
    for field in [
        "generation",
        "timeCreated",
        "md5Hash",
        "size",
        "contentType",
    ] {
        assert_eq!(touched[field], object[field], "{field} changed by touch");
    }
    assert_eq!(touched["metadata"][META_UPLOADER], "kfo-test-replica");
    assert!(!store.touch("kong/3.6.1.4/election/missing").await.unwrap());
}

/// A loopback proxy to the plain-HTTP `endpoint`; its URL and every byte clients sent.
async fn recording_proxy(endpoint: &str) -> (String, Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = endpoint.trim_start_matches("http://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 16 * 1024];
                while let Ok(n @ 1..) = client_rx.read(&mut buf).await {
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    if server_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = server_tx.shutdown().await;
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
            });
        }
    });
    (url, sent)
}

/// An object's resource as fake-gcs-server's JSON API returns it.
async fn gcs_object(endpoint: &str, bucket: &str, key: &str) -> serde_json::Value {
    reqwest::get(format!(
        "{endpoint}/storage/v1/b/{bucket}/o/{}",
        key.replace('/', "%2F")
    ))
    .await
    .unwrap()
    .error_for_status()
    .unwrap()
    .json()
    .await
    .unwrap()
}

/// A large configuration's write is staged (an S3 multipart upload) while its frame is
/// checked and committed as the export; a large frame that fails its checks after its
/// upload started is never stored, and no upload is left behind, not even the one a
/// leader killed mid-write left before this one took the lead (the real client, CP double
/// and MinIO).
#[tokio::test]
async fn a_large_configuration_is_staged_and_a_failing_one_leaves_the_stored_one() {
    use kfo_testenv::configs::config_table;
    let env = minio().await;
    let bucket = env.bucket("export-staged").await.unwrap();
    let cp = KongCp::start(Mtls::Shared, "3.6.1.4").await.unwrap();
    cp.set_push_debounce(Duration::ZERO);
    let key = "kong/3.6.1.4/config.json";
    let first = config_table(12_000_000, 1);
    cp.push(&first, &format!("{:032x}", 1));
    // A leader killed while staging left an upload of the key open.
    env.root_client()
        .create_multipart_upload()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let mut p = to_minio(&cp, "3.6.1.4", env, &bucket);
    p.exported().await;
    let store = minio_store(env, &bucket);
    // NB: staging starts once the store was checked to fence multipart commits.
    let mut good = None;
    for seed in 2..8u64 {
        let table = config_table(12_000_000, seed);
        let hash = format!("{seed:032x}");
        cp.push(&table, &hash);
        let stages = exported_stages(&mut p, &hash).await;
        let stored = store.get(key).await.unwrap().unwrap();
        assert!(
            stored.body == table.as_bytes(),
            "round {seed}: not the pushed bytes"
        );
        assert_eq!(stored.metadata[META_CONFIG_HASH], hash);
        // NB: the split P1 prints: inflating and the checks, within the decode.
        assert!(
            stages.inflate > Duration::ZERO
                && stages.checks > Duration::ZERO
                && stages.inflate + stages.checks <= stages.decode,
            "round {seed}: {stages:?}"
        );
        if stages.staged {
            // NB: a multipart object's ETag counts its parts.
            assert!(stored.info.version.contains('-'), "{}", stored.info.version);
            good = Some((table, stored.info.version));
            break;
        }
    }
    let (good, version) = good.expect("no large configuration was staged");

    // A row near the end that is not an object: refused once the checks reach it.
    let mut bad = config_table(12_000_000, 20);
    assert!(bad.ends_with("}]}"), "{}", &bad[bad.len() - 20..]);
    bad.truncate(bad.len() - 2);
    bad.push_str(",7]}");
    cp.push(&bad, &format!("{:032x}", 20));
    p.until(120, |r| matches!(r, Report::Rejected { .. }).then_some(()))
        .await;
    let stored = store.get(key).await.unwrap().unwrap();
    assert_eq!(
        stored.info.version, version,
        "a refused frame changed config.json"
    );
    assert!(stored.body == good.as_bytes());

    // The next good configuration lands, and no staged upload is left.
    let last = config_table(12_000_000, 21);
    cp.push(&last, &format!("{:032x}", 21));
    let want = format!("{:032x}", 21);
    p.until(120, |r| {
        matches!(r, Report::Exported { hash: ref h, .. } if *h == want).then_some(())
    })
    .await;
    assert!(store.get(key).await.unwrap().unwrap().body == last.as_bytes());
    let mut open = Vec::new();
    for _ in 0..50 {
        open = open_uploads(env, &bucket).await;
        if open.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(open.is_empty(), "staged uploads left: {open:?}");
}

/// From one S3 part on (6 MB here, under two), a configuration's write is staged while its
/// frame is checked. The same configuration sent again, as a control plane does on every
/// reconnect, uploads nothing: it was staged in full and left open until the next frame
/// (the real client, CP double and MinIO).
#[tokio::test]
async fn a_configuration_over_one_part_is_staged_and_one_sent_again_uploads_nothing() {
    use kfo_testenv::configs::config_table;
    let env = minio().await;
    let bucket = env.bucket("export-staged-again").await.unwrap();
    let cp = KongCp::start(Mtls::Shared, "3.6.1.4").await.unwrap();
    cp.set_push_debounce(Duration::ZERO);
    let hash = |seed: u64| format!("{seed:032x}");
    cp.push(&config_table(6_000_000, 1), &hash(1));
    let mut p = to_minio(&cp, "3.6.1.4", env, &bucket);
    p.exported().await;
    // NB: staging starts once the store was checked to fence multipart commits.
    let mut staged = None;
    for seed in 2..8u64 {
        let want = hash(seed);
        cp.push(&config_table(6_000_000, seed), &want);
        let stages = exported_stages(&mut p, &want).await;
        if stages.staged {
            staged = Some(seed);
            break;
        }
    }
    let seed = staged.expect("no configuration of 6 MB was staged");
    let stored = minio_store(env, &bucket)
        .get("kong/3.6.1.4/config.json")
        .await
        .unwrap()
        .unwrap();
    assert!(stored.body == config_table(6_000_000, seed).as_bytes());

    cp.push(&config_table(6_000_000, seed), &hash(seed));
    p.until(120, |r| {
        matches!(r, Report::Skipped { hash: ref h, .. } if *h == hash(seed)).then_some(())
    })
    .await;
    // NB: a staging runs in a task of its own: give one the time to start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = open_uploads(env, &bucket).await;
    assert!(
        open.is_empty(),
        "the configuration sent again was uploaded: {open:?}"
    );
}

/// How the export of `hash` went, once reported.
async fn exported_stages(p: &mut Pipeline, hash: &str) -> Stages {
    p.until(120, |r| match r {
        Report::Exported {
            hash: ref h,
            stages,
            ..
        } if h == hash => Some(stages),
        _ => None,
    })
    .await
}
