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
        },
    });
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
        },
    });
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
    let after = env
        .root_client()
        .get_object()
        .bucket(&bucket)
        .key("kong/3.6.1.4/config.json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        &after.body.collect().await.unwrap().into_bytes()[..],
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
