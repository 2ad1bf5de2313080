//! The storage clients the product uses, against a real MinIO and fake-gcs-server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_sdk_s3::primitives::ByteStream;
use kfo_testenv::{gcs, minio};
use kong_fallback_operator::kong::StorageUrl;
use kong_fallback_operator::storage::gcs::{GcsCredentials, bucket_path};
use kong_fallback_operator::storage::s3::{S3Settings, StaticCredentials, client};

const CONFIG: &str = r#"{"_format_version":"3.0","_transform":false,"services":[],"routes":[]}"#;

#[tokio::test]
async fn s3_round_trip_against_minio_with_the_product_client() {
    let env = minio().await;
    let bucket = env.bucket("s3-roundtrip").await.unwrap();
    let url = StorageUrl::parse(&format!("s3://{bucket}/kong//")).unwrap();
    let key = url.config_key("3.6.1.4");
    assert_eq!(key, "kong/3.6.1.4/config.json");

    let s3 = client(&S3Settings {
        region: "us-east-1".into(),
        endpoint: Some(format!("{}/", env.endpoint)),
        credentials: StaticCredentials {
            access_key_id: env.root_user.clone(),
            secret_access_key: env.root_password.clone(),
            session_token: None,
        }
        .into(),
        ca_pem: None,
    })
    .unwrap();
    s3.put_object()
        .bucket(&bucket)
        .key(&key)
        .content_type("application/json")
        .metadata("uploader", "kong-fallback-operator")
        .body(ByteStream::from_static(CONFIG.as_bytes()))
        .send()
        .await
        .unwrap();

    let got = s3
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_type(), Some("application/json"));
    assert_eq!(
        got.metadata()
            .and_then(|m| m.get("uploader"))
            .map(String::as_str),
        Some("kong-fallback-operator")
    );
    let body = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(&body[..], CONFIG.as_bytes());

    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("kong/")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, [key.as_str()]);
}

#[tokio::test]
async fn a_read_only_principal_reads_but_its_writes_are_refused() {
    let env = minio().await;
    let bucket = env.bucket("s3-readonly").await.unwrap();
    env.root_client()
        .put_object()
        .bucket(&bucket)
        .key("kong/3.6.1.4/config.json")
        .body(ByteStream::from_static(CONFIG.as_bytes()))
        .send()
        .await
        .unwrap();

    let ro = env.read_only_credentials(&bucket).await.unwrap();
    let s3 = client(&S3Settings {
        region: "us-east-1".into(),
        endpoint: Some(env.endpoint.clone()),
        credentials: StaticCredentials {
            access_key_id: ro.access_key_id,
            secret_access_key: ro.secret_access_key,
            session_token: Some(ro.session_token),
        }
        .into(),
        ca_pem: None,
    })
    .unwrap();
    let got = s3
        .get_object()
        .bucket(&bucket)
        .key("kong/3.6.1.4/config.json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        &got.body.collect().await.unwrap().into_bytes()[..],
        CONFIG.as_bytes()
    );

    let err = s3
        .put_object()
        .bucket(&bucket)
        .key("kong/3.6.1.4/config.json")
        .body(ByteStream::from_static(b"{}"))
        .send()
        .await
        .expect_err("a read-only principal must not write");
    let code = err.raw_response().map(|r| r.status().as_u16());
    assert_eq!(code, Some(403), "{err:?}");
    assert_eq!(
        aws_sdk_s3::error::ProvideErrorMetadata::code(&err),
        Some("AccessDenied")
    );

    // The object is unchanged.
    assert_eq!(
        &env.read(&bucket, "kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap()[..],
        CONFIG.as_bytes()
    );
}

#[tokio::test]
async fn gcs_round_trip_against_fake_gcs_server_with_the_product_client() {
    let env = gcs().await;
    let bucket = env.bucket("gcs-roundtrip").await.unwrap();
    let url = StorageUrl::parse(&format!("gcs://{bucket}/kong")).unwrap();
    let key = url.config_key("3.6.1.4");

    let storage = kong_fallback_operator::storage::gcs::client(
        Some(&env.endpoint),
        &GcsCredentials::Anonymous,
    )
    .await
    .unwrap();
    let written = storage
        .write_object(
            bucket_path(&bucket),
            &key,
            bytes::Bytes::from_static(CONFIG.as_bytes()),
        )
        .set_content_type("application/json")
        .set_metadata([("uploader", "kong-fallback-operator")])
        .send_buffered()
        .await
        .unwrap();
    assert_eq!(written.name, key);
    assert_eq!(written.size, CONFIG.len() as i64);

    let mut reader = storage
        .read_object(bucket_path(&bucket), &key)
        .send()
        .await
        .unwrap();
    let mut body = Vec::new();
    while let Some(chunk) = reader.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(body, CONFIG.as_bytes());
}

// ---- The ObjectStore implementations, held to one contract on both real stores. ----

use std::collections::BTreeMap;

use crate::stores;

use kong_fallback_operator::storage::gcs::GcsStore;
use kong_fallback_operator::storage::s3::{PutExtras, S3Store};
use kong_fallback_operator::storage::{ErrorKind, ObjectStore, Precondition, PutObject};

fn object(key: &str, body: &str, precondition: Precondition) -> PutObject {
    PutObject {
        key: key.to_owned(),
        body: bytes::Bytes::from(body.to_owned()),
        content_type: "application/json".to_owned(),
        metadata: BTreeMap::from([("uploader".to_owned(), "kfo-test".to_owned())]),
        precondition,
    }
}

/// The contract every store keeps: round trip with content type and metadata, listing by
/// prefix, conditional writes that fence a stale writer, and idempotent deletes.
/// `keeps_content_type` is false only for fake-gcs-server: it takes an object's content
/// type from the media part of a multipart upload, not from the metadata part where the
/// GCS client (and the real GCS) put it.
/// `creation_time`: the store keeps a creation time apart from the modification time (GCS).
async fn contract(store: &dyn ObjectStore, keeps_content_type: bool, creation_time: bool) {
    let key = "kong/3.6.1.4/config.json";
    assert!(
        store.get(key).await.unwrap().is_none(),
        "a missing object reads as None"
    );

    let v1 = store
        .put(object(key, CONFIG, Precondition::IfAbsent))
        .await
        .unwrap();
    let err = store
        .put(object(key, "{}", Precondition::IfAbsent))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind,
        ErrorKind::PreconditionFailed,
        "create-only refused on an existing key: {err}"
    );
    assert!(err.to_string().contains(key), "{err}");

    let got = store.get(key).await.unwrap().unwrap();
    assert_eq!(&got.body[..], CONFIG.as_bytes());
    if keeps_content_type {
        assert_eq!(got.content_type.as_deref(), Some("application/json"));
    }
    assert_eq!(
        got.metadata.get("uploader").map(String::as_str),
        Some("kfo-test")
    );
    assert_eq!(got.info.version, v1);
    assert_eq!(got.info.size, CONFIG.len() as u64);
    // The metadata alone, without the body: what the exporter reads before each write.
    let head = store.head(key).await.unwrap().unwrap();
    assert!(head.body.is_empty());
    assert_eq!(
        (head.info.version.as_str(), head.info.size),
        (v1.as_str(), CONFIG.len() as u64)
    );
    assert_eq!(head.metadata, got.metadata);
    assert!(store.head("kong/none/config.json").await.unwrap().is_none());
    // A bounded read refuses an object over its bound (from the size the store reports)
    // and reads one within it.
    let over = store
        .get_at_most(key, CONFIG.len() as u64 - 1)
        .await
        .unwrap_err();
    assert_eq!(over.kind, ErrorKind::TooLarge, "{over}");
    assert!(over.to_string().contains(key), "{over}");
    let within = store.get_at_most(key, CONFIG.len() as u64).await.unwrap();
    assert_eq!(&within.unwrap().body[..], CONFIG.as_bytes());

    // A writer holding the current version wins once; the stale one is fenced off.
    let v2 = store
        .put(object(
            key,
            r#"{"v":2}"#,
            Precondition::IfVersion(v1.clone()),
        ))
        .await
        .unwrap();
    assert_ne!(v1, v2);
    let stale = store
        .put(object(key, r#"{"v":"stale"}"#, Precondition::IfVersion(v1)))
        .await
        .unwrap_err();
    assert_eq!(stale.kind, ErrorKind::PreconditionFailed, "{stale}");
    assert_eq!(
        &store.get(key).await.unwrap().unwrap().body[..],
        br#"{"v":2}"#
    );

    store
        .put(object("kong/3.6.1.4/election/1-a", "", Precondition::None))
        .await
        .unwrap();
    store
        .put(object("kong/3.7.0.0/config.json", "{}", Precondition::None))
        .await
        .unwrap();
    let listed = store.list("kong/3.6.1.4/").await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        ["kong/3.6.1.4/config.json", "kong/3.6.1.4/election/1-a"]
    );
    assert!(
        listed
            .iter()
            .all(|i| i.last_modified > std::time::SystemTime::UNIX_EPOCH)
    );

    // touch moves the modification time and keeps the data and the creation time.
    let reg = "kong/3.6.1.4/election/1-a";
    let before = listed.iter().find(|i| i.key == reg).unwrap().clone();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(store.touch(reg).await.unwrap());
    let after = store.list("kong/3.6.1.4/election/").await.unwrap();
    let after = after.iter().find(|i| i.key == reg).unwrap();
    if creation_time {
        // NB: fake-gcs-server does not move `updated` on a metadata patch (GCS does: it is
        // "the modification time of the object metadata"); what it can show is that the
        // creation time and the data stay.
        assert_eq!(after.created, before.created, "the creation time stays");
    } else {
        assert!(
            after.last_modified > before.last_modified,
            "{before:?} -> {after:?}"
        );
    }
    assert_eq!(after.size, 0);
    assert!(!store.touch("kong/3.6.1.4/election/missing").await.unwrap());

    store.delete("kong/3.6.1.4/election/1-a").await.unwrap();
    store.delete("kong/3.6.1.4/election/1-a").await.unwrap();
    assert_eq!(store.list("kong/3.6.1.4/election/").await.unwrap().len(), 0);
}

fn minio_store(env: &kfo_testenv::MinioEnv, bucket: &str, secret: &str) -> S3Store {
    S3Store::new(
        &stores::minio_settings(env, secret),
        bucket,
        PutExtras::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn the_s3_store_keeps_the_contract_on_minio() {
    let env = minio().await;
    let bucket = env.bucket("contract-s3").await.unwrap();
    contract(&minio_store(env, &bucket, &env.root_password), true, false).await;
}

#[tokio::test]
async fn the_gcs_store_keeps_the_contract_on_fake_gcs_server() {
    let env = gcs().await;
    let bucket = env.bucket("contract-gcs").await.unwrap();
    let store = GcsStore::new(Some(&env.endpoint), &GcsCredentials::Anonymous, &bucket)
        .await
        .unwrap();
    contract(&store, false, true).await;
}

#[tokio::test]
async fn s3_errors_say_credentials_missing_bucket_or_network() {
    let env = minio().await;
    let bucket = env.bucket("errors-s3").await.unwrap();

    let wrong = minio_store(env, &bucket, "not-the-password");
    let e = wrong
        .put(object("k", "{}", Precondition::None))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Credentials, "{e}");
    assert!(e.to_string().contains(&format!("put {bucket}/k")), "{e}");

    let missing = minio_store(env, "no-such-bucket-kfo", &env.root_password);
    let e = missing.get("k").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::BucketMissing, "{e}");
    // A HEAD answers 404 without a body for a missing bucket as for a missing key: the
    // store must still tell them apart (fault R5 found a probe that said Reachable).
    let e = missing.head("k").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::BucketMissing, "{e}");
    assert!(
        minio_store(env, &bucket, &env.root_password)
            .head("no-such-key")
            .await
            .unwrap()
            .is_none()
    );

    let settings = S3Settings {
        region: "us-east-1".into(),
        endpoint: Some("http://127.0.0.1:9".into()),
        credentials: StaticCredentials {
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
            session_token: None,
        }
        .into(),
        ca_pem: None,
    };
    let e = S3Store::new(&settings, &bucket, PutExtras::default())
        .unwrap()
        .list("x/")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Network, "{e}");
    assert!(e.kind.is_transient());
}

#[tokio::test]
async fn gcs_errors_say_missing_bucket_or_network() {
    let env = gcs().await;
    let store = GcsStore::new(
        Some(&env.endpoint),
        &GcsCredentials::Anonymous,
        "no-such-bucket-kfo",
    )
    .await
    .unwrap();
    let e = store.list("x/").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::BucketMissing, "{e}");

    let down = GcsStore::new(Some("http://127.0.0.1:9"), &GcsCredentials::Anonymous, "b")
        .await
        .unwrap();
    let e = down.list("x/").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Network, "{e}");
}

/// A store that accepts connections and never answers (a half-open connection, a hung
/// proxy): every call of the product's clients ends with a network error, on time.
#[tokio::test]
async fn a_store_that_never_answers_fails_every_call_within_its_bound() {
    use kong_fallback_operator::storage::s3::PutExtras;
    use kong_fallback_operator::storage::{Access, ErrorKind, PutObject, Timeouts, open_with};
    // A real socket that accepts and then says nothing; the connections are kept open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let timeouts = Timeouts {
        call: std::time::Duration::from_secs(2),
        per_mib: std::time::Duration::from_secs(1),
    };
    let url = StorageUrl::parse("s3://hung-bucket/kong").unwrap();
    let access = Access::S3 {
        settings: S3Settings {
            region: "us-east-1".into(),
            endpoint: Some(format!("http://{addr}")),
            credentials: StaticCredentials {
                access_key_id: "AKIAHUNG".into(),
                secret_access_key: "hung-secret-value".into(),
                session_token: None,
            }
            .into(),
            ca_pem: None,
        },
        extras: PutExtras::default(),
    };
    let store = open_with(&url, access, timeouts).await.unwrap();
    // NB: the outer limit only turns a hang (the old behaviour) into a failure.
    let hang = std::time::Duration::from_secs(60);
    let put = tokio::time::timeout(
        hang,
        store.put(PutObject {
            key: "kong/3.6.1.4/config.json".into(),
            body: bytes::Bytes::from_static(CONFIG.as_bytes()),
            content_type: "application/json".into(),
            metadata: Default::default(),
            precondition: kong_fallback_operator::storage::Precondition::IfAbsent,
        }),
    )
    .await
    .expect("put hung")
    .unwrap_err();
    let get = tokio::time::timeout(hang, store.get("kong/3.6.1.4/config.json"))
        .await
        .expect("get hung")
        .unwrap_err();
    let list = tokio::time::timeout(hang, store.list("kong/"))
        .await
        .expect("list hung")
        .unwrap_err();
    for (e, op) in [(&put, "put"), (&get, "get"), (&list, "list")] {
        assert_eq!((e.kind, e.op), (ErrorKind::Network, op), "{e}");
    }
    assert!(get.to_string().contains("abandoned"), "{get}");
    assert!(!get.to_string().contains("hung-secret-value"), "{get}");
    held.abort();
}

/// The `Access` of the TLS MinIO's root user; `ca_pem` is what `spec.storage.caCert` gives.
fn tls_minio_access(
    env: &kfo_testenv::MinioEnv,
    ca_pem: Option<String>,
) -> kong_fallback_operator::storage::Access {
    kong_fallback_operator::storage::Access::S3 {
        settings: S3Settings {
            region: "us-east-1".into(),
            endpoint: Some(env.endpoint.clone()),
            credentials: StaticCredentials {
                access_key_id: env.root_user.clone(),
                secret_access_key: env.root_password.clone(),
                session_token: None,
            }
            .into(),
            ca_pem,
        },
        extras: PutExtras::default(),
    }
}

#[tokio::test]
async fn an_export_round_trips_through_a_store_behind_a_private_ca_it_is_told_to_trust() {
    use kong_fallback_operator::storage::{Timeouts, open_with};
    let env = kfo_testenv::minio_tls().await;
    assert!(env.endpoint.starts_with("https://"), "{}", env.endpoint);
    let bucket = env.bucket("tls-ca").await.unwrap();
    let url = StorageUrl::parse(&format!("s3://{bucket}/kong")).unwrap();
    let key = url.config_key("3.6.1.4");
    let store = open_with(
        &url,
        tls_minio_access(env, env.ca_pem.clone()),
        Timeouts::default(),
    )
    .await
    .unwrap();
    store
        .put(object(&key, CONFIG, Precondition::IfAbsent))
        .await
        .unwrap();
    let got = store.get(&key).await.unwrap().expect("the exported object");
    assert_eq!(&got.body[..], CONFIG.as_bytes());
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    // The server really is the TLS one: the store holds what the client wrote.
    assert_eq!(
        env.read(&bucket, &key).await.unwrap().as_deref(),
        Some(CONFIG.as_bytes())
    );
}

#[tokio::test]
async fn without_the_private_ca_a_store_behind_it_fails_on_the_certificate_without_hanging() {
    use kong_fallback_operator::storage::{Timeouts, open_with};
    let env = kfo_testenv::minio_tls().await;
    let bucket = env.bucket("tls-noca").await.unwrap();
    let url = StorageUrl::parse(&format!("s3://{bucket}/kong")).unwrap();
    let key = url.config_key("3.6.1.4");
    let store = open_with(&url, tls_minio_access(env, None), Timeouts::default())
        .await
        .unwrap();
    // NB: the outer limit only turns a hang into a failure; the SDK gives up sooner.
    let hang = std::time::Duration::from_secs(60);
    let e = tokio::time::timeout(
        hang,
        store.put(object(&key, CONFIG, Precondition::IfAbsent)),
    )
    .await
    .expect("put hung")
    .unwrap_err();
    let text = e.to_string();
    assert!(
        !text.contains("abandoned"),
        "failed only by the time bound: {text}"
    );
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("TLS"),
        "{text}"
    );
    assert_eq!(env.read(&bucket, &key).await.unwrap(), None);
}

/// A TCP relay to `upstream` that rewrites `from` to `to` (same length) in what the client
/// sends: a body damaged on the way. A proper prefix of `from` at the end of a read is held
/// back until the next one, so a split occurrence is rewritten too.
async fn tampering_relay(upstream: String, from: &'static [u8], to: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    assert_eq!(from.len(), to.len());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
            });
            tokio::spawn(async move {
                let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 64 * 1024]);
                loop {
                    let n = match client_rx.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(i) = buf.windows(from.len()).position(|w| w == from) {
                        buf[i..i + from.len()].copy_from_slice(to);
                    }
                    let keep = (1..from.len())
                        .rev()
                        .find(|k| buf.len() >= *k && buf.ends_with(&from[..*k]))
                        .unwrap_or(0);
                    let send = buf.len() - keep;
                    if server_tx.write_all(&buf[..send]).await.is_err() {
                        break;
                    }
                    buf.drain(..send);
                }
            });
        }
    });
    format!("http://{addr}")
}

/// The store puts `config.json` without signing its payload (SigV4 hashing of large
/// bodies cost P1 and P5 time), so the body's CRC32 is what guards it: a body changed on
/// the way must be refused and the stored configuration left as it was.
#[tokio::test]
async fn a_body_damaged_on_the_way_is_refused_and_the_stored_configuration_stays() {
    use kong_fallback_operator::storage::{Precondition, PutObject};
    let env = minio().await;
    let bucket = env.bucket("s3-tamper").await.unwrap();
    let key = "kong/3.6.1.4/config.json";
    let direct = S3Store::new(
        &stores::minio_settings(env, &env.root_password),
        &bucket,
        PutExtras::default(),
    )
    .unwrap();
    let relay = tampering_relay(
        env.endpoint.trim_start_matches("http://").to_owned(),
        b"\"routes\":[{\"id\":\"r1\"",
        b"\"routes\":[{\"id\":\"r2\"",
    )
    .await;
    let mut settings = stores::minio_settings(env, &env.root_password);
    settings.endpoint = Some(relay);
    let relayed = S3Store::new(&settings, &bucket, PutExtras::default()).unwrap();
    let put = |body: &'static str| PutObject {
        key: key.into(),
        body: bytes::Bytes::from_static(body.as_bytes()),
        content_type: "application/json".into(),
        metadata: Default::default(),
        precondition: Precondition::None,
    };
    let good = r#"{"_format_version":"3.0","services":[{"id":"s"}],"routes":[{"id":"r0"}]}"#;
    direct.put(put(good)).await.unwrap();
    // The relay passes what it does not rewrite: a put through it lands.
    let passed = r#"{"_format_version":"3.0","services":[{"id":"s"}],"routes":[{"id":"r9"}]}"#;
    relayed.put(put(passed)).await.unwrap();
    assert_eq!(
        &direct.get(key).await.unwrap().unwrap().body[..],
        passed.as_bytes()
    );
    // A body the relay damages is refused, and the stored one stays.
    let damaged = r#"{"_format_version":"3.0","services":[{"id":"s"}],"routes":[{"id":"r1"}]}"#;
    let err = relayed.put(put(damaged)).await.unwrap_err();
    assert_eq!(
        &direct.get(key).await.unwrap().unwrap().body[..],
        passed.as_bytes(),
        "a damaged body was stored ({err})"
    );
}

/// Staged writes (S3 multipart uploads: the exporter stages a large configuration while
/// its checks run): nothing is visible before the commit, the commit is fenced as a PUT
/// is (a stale version, or "only if absent" over an object, is refused and the object
/// stays), a committed write carries its metadata, and an aborted one leaves no upload.
#[tokio::test]
async fn a_staged_write_is_invisible_until_committed_and_fenced_at_the_commit() {
    use kong_fallback_operator::storage::{
        ErrorKind, Precondition, StoreError, enforces_staged_preconditions,
    };
    let env = minio().await;
    let bucket = env.bucket("s3-staged").await.unwrap();
    let store = minio_store(env, &bucket, &env.root_password);
    let key = "kong/3.6.1.4/config.json";
    let old = store
        .put(object(key, CONFIG, Precondition::None))
        .await
        .unwrap();
    let part = store.staged_part_size().expect("S3 stages writes");
    let body = bytes::Bytes::from(
        (0..2 * part + 1000)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let meta = std::collections::BTreeMap::from([("config-hash".to_owned(), "c0ffee".to_owned())]);
    let stored = async || store.get(key).await.unwrap().unwrap();
    let stage_all = async |before: &[u8]| {
        let staged = store
            .stage(key, "application/json", meta.clone())
            .await
            .unwrap();
        let mut parts = Vec::new();
        for (n, range) in [(1, 0..part), (2, part..2 * part)] {
            parts.push(
                store
                    .stage_part(&staged, n, body.slice(range))
                    .await
                    .unwrap(),
            );
        }
        // Two parts are in the store, and the object is still the one before.
        assert!(
            stored().await.body == before,
            "a staged part became visible"
        );
        parts.push(
            store
                .stage_part(&staged, 3, body.slice(2 * part..))
                .await
                .unwrap(),
        );
        (staged, parts)
    };

    for refused in [
        Precondition::IfVersion("\"00000000000000000000000000000000\"".into()),
        Precondition::IfAbsent,
    ] {
        let (staged, parts) = stage_all(CONFIG.as_bytes()).await;
        let err = store
            .commit_staged(&staged, parts, refused.clone())
            .await
            .unwrap_err();
        assert_eq!(
            err.kind,
            ErrorKind::PreconditionFailed,
            "{refused:?}: {err}"
        );
        assert!(
            stored().await.body == CONFIG.as_bytes(),
            "a refused commit ({refused:?}) changed the object"
        );
        store.abort_staged(&staged).await.unwrap();
    }

    let (staged, parts) = stage_all(CONFIG.as_bytes()).await;
    let version = store
        .commit_staged(&staged, parts, Precondition::IfVersion(old.clone()))
        .await
        .unwrap();
    let now = stored().await;
    assert!(
        now.body == body,
        "the committed object is not the parts in order"
    );
    assert_eq!(now.info.version, version);
    assert_eq!(
        now.metadata.get("config-hash").map(String::as_str),
        Some("c0ffee")
    );
    assert_eq!(now.content_type.as_deref(), Some("application/json"));

    // What a writer killed mid-write leaves is listed by its exact key (not another key
    // it is a prefix of), and aborting it leaves nothing.
    let (staged, _) = stage_all(&body).await;
    let longer = store
        .stage(&format!("{key}.old"), "application/json", meta.clone())
        .await
        .unwrap();
    assert_eq!(
        store.staged_writes(key).await.unwrap(),
        std::slice::from_ref(&staged)
    );
    store.abort_staged(&staged).await.unwrap();
    store.abort_staged(&longer).await.unwrap();
    assert_eq!(store.staged_writes(key).await.unwrap(), []);

    // A running writer whose upload another leader's sweep aborted: its next part and its
    // commit are refused as a failure worth retrying (MinIO's NoSuchUpload), not as a
    // newer writer or bad credentials, and the object stays.
    let (staged, mut parts) = stage_all(&body).await;
    for swept in store.staged_writes(key).await.unwrap() {
        store.abort_staged(&swept).await.unwrap();
    }
    let no_such_upload = |what: &str, err: StoreError| {
        assert!(
            err.kind.is_transient()
                && err.kind != ErrorKind::PreconditionFailed
                && err.detail.contains("NoSuchUpload"),
            "{what} of an aborted upload: {err}"
        );
    };
    let part = store.stage_part(&staged, 4, body.slice(..10)).await;
    no_such_upload("a part", part.unwrap_err());
    parts.truncate(3);
    let commit = store
        .commit_staged(&staged, parts, Precondition::IfVersion(version.clone()))
        .await;
    no_such_upload("the commit", commit.unwrap_err());
    assert_eq!(stored().await.info.version, version);
    let open = stores::open_uploads(env, &bucket).await;
    assert!(open.is_empty(), "{open:?}");
    assert!(now.body == store.get(key).await.unwrap().unwrap().body);
    assert_eq!(
        enforces_staged_preconditions(&store, "kong/.kong-fallback-operator/staging-probe").await,
        Ok(true)
    );
}

/// Every S3 store the operator opens (one per policy, another per storage check) shares
/// one HTTP client: five stores opened one after another, each reading once, make one
/// connection to the store. Before, each SDK client built its own connection pool (five
/// connections; 200 at once for 200 policies, bench P4). Counted by a relay in front of
/// MinIO that counts the connections it accepts.
#[tokio::test]
async fn s3_stores_opened_one_after_another_share_their_connections() {
    use kong_fallback_operator::storage::ObjectStore;
    use kong_fallback_operator::storage::s3::{PutExtras, S3Store};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let env = minio().await;
    let bucket = env.bucket("shared-client").await.unwrap();
    let upstream = env.endpoint.trim_start_matches("http://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let accepted = accepted.clone();
        async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let mut outbound = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        }
    });
    let mut settings = crate::stores::minio_settings(env, &env.root_password);
    settings.endpoint = Some(relay);
    for _ in 0..5 {
        let store = S3Store::new(&settings, &bucket, PutExtras::default()).unwrap();
        assert!(store.get("kong/absent").await.unwrap().is_none());
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "connections to the store"
    );
}

/// The policy's `s3Options` (server-side encryption, KMS key, storage class) apply to a
/// staged write as to a PUT: a large configuration (committed from staged parts) must not
/// land unencrypted or in another class than a small one. Both are written with the
/// options and read back from MinIO's own answers (its built-in KMS key).
#[tokio::test]
async fn a_staged_write_and_a_put_carry_the_same_encryption_and_storage_class() {
    use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
    use kong_fallback_operator::storage::{ObjectStore, Precondition};
    let env = minio().await;
    let bucket = env.bucket("s3-extras").await.unwrap();
    let store = S3Store::new(
        &stores::minio_settings(env, &env.root_password),
        &bucket,
        PutExtras {
            server_side_encryption: Some("aws:kms".into()),
            kms_key_id: Some(kfo_testenv::MINIO_KMS_KEY.into()),
            storage_class: Some("REDUCED_REDUNDANCY".into()),
        },
    )
    .unwrap();
    let small = "kong/3.6.1.4/config.json";
    let large = "kong/3.7.0.0/config.json";
    store
        .put(object(small, CONFIG, Precondition::None))
        .await
        .unwrap();
    let part = store.staged_part_size().expect("S3 stages writes");
    let body = bytes::Bytes::from(vec![b'x'; part + 10]);
    let staged = store
        .stage(large, "application/json", Default::default())
        .await
        .unwrap();
    let parts = vec![
        store
            .stage_part(&staged, 1, body.slice(..part))
            .await
            .unwrap(),
        store
            .stage_part(&staged, 2, body.slice(part..))
            .await
            .unwrap(),
    ];
    store
        .commit_staged(&staged, parts, Precondition::IfAbsent)
        .await
        .unwrap();
    let root = env.root_client();
    for key in [small, large] {
        let head = root
            .head_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.server_side_encryption(),
            Some(&ServerSideEncryption::AwsKms),
            "{key}: {head:?}"
        );
        assert!(
            head.ssekms_key_id()
                .is_some_and(|id| id.ends_with(kfo_testenv::MINIO_KMS_KEY)),
            "{key}: {head:?}"
        );
        assert_eq!(
            head.storage_class(),
            Some(&StorageClass::ReducedRedundancy),
            "{key}: {head:?}"
        );
    }
    assert!(store.get(large).await.unwrap().unwrap().body == body);
}
