//! `kong-fallback-operator doctor` against real stores, configured through the same
//! environment a Kong data plane reads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_sdk_s3::primitives::ByteStream;
use kfo_testenv::{gcs, minio};
use std::process::Output;

const GOOD: &str = r#"{"_format_version":"3.0","_transform":false,
  "services":[{"id":"9748f662-7711-4a90-8186-dc02f10eb0f5","name":"httpbin","host":"httpbin.org","port":443,"protocol":"https"}],
  "routes":[{"id":"2f55b0b3-04a1-4e47-8c0f-c0d6f0b2b3a2","service":"9748f662-7711-4a90-8186-dc02f10eb0f5","paths":["/mock"]}]}"#;

async fn doctor(envs: &[(&str, &str)], args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kong-fallback-operator"))
        .arg("doctor")
        .args(args)
        .env_clear()
        .envs(envs.iter().copied())
        .output()
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn doctor_reads_minio_like_a_data_plane_and_judges_the_config() {
    let env = minio().await;
    let bucket = env.bucket("doctor-s3").await.unwrap();
    env.root_client()
        .put_object()
        .bucket(&bucket)
        .key("kong/3.6.1.4/config.json")
        .content_type("application/json")
        .metadata("uploader", "kfo-test")
        .body(ByteStream::from_static(GOOD.as_bytes()))
        .send()
        .await
        .unwrap();
    env.root_client()
        .put_object()
        .bucket(&bucket)
        .key("kong/3.7.0.0/config.json")
        .body(ByteStream::from_static(
            br#"{"_format_version":"3.0","workspaces":[{"id":"w"}]}"#,
        ))
        .send()
        .await
        .unwrap();
    let ro = env.read_only_credentials(&bucket).await.unwrap();
    let storage = format!("s3://{bucket}/kong");
    let vars = [
        ("KONG_CLUSTER_FALLBACK_CONFIG_STORAGE", storage.as_str()),
        ("AWS_CONFIG_STORAGE_ENDPOINT", env.endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", ro.access_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", ro.secret_access_key.as_str()),
        ("AWS_SESSION_TOKEN", ro.session_token.as_str()),
    ];

    let out = doctor(&vars, &["--kong-version", "3.6.1.4"]).await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("routes=1 services=1"), "{t}");
    assert!(t.contains("uploader:   kfo-test"), "{t}");
    assert!(t.contains("would load"), "{t}");
    assert!(
        !t.contains(&ro.secret_access_key) && !t.contains(&ro.session_token),
        "a secret leaked: {t}"
    );

    // A bound below the object's size: refused by the size the store reports, not read.
    let out = doctor(&vars, &["--kong-version", "3.6.1.4", "--max-size", "100"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("over the bound of 100 bytes"),
        "{}",
        text(&out)
    );

    let out = doctor(&vars, &["--kong-version", "3.7.0.0"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("empty configuration"), "{}", text(&out));

    let out = doctor(&vars, &["--kong-version", "3.8.0.0"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no object at kong/3.8.0.0/config.json"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn doctor_names_the_cause_when_storage_refuses() {
    let env = minio().await;
    let bucket = env.bucket("doctor-denied").await.unwrap();
    let storage = format!("s3://{bucket}/kong");
    let vars = [
        ("KONG_CLUSTER_FALLBACK_CONFIG_STORAGE", storage.as_str()),
        ("AWS_CONFIG_STORAGE_ENDPOINT", env.endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "nobody"),
        ("AWS_SECRET_ACCESS_KEY", "wrong-secret-value"),
    ];
    let out = doctor(&vars, &["--kong-version", "3.6.1.4"]).await;
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("credentials were refused") && t.contains(&bucket),
        "{t}"
    );
    assert!(!t.contains("wrong-secret-value"), "{t}");

    let out = doctor(&vars[..1], &["--kong-version", "3.6.1.4"]).await;
    assert!(
        text(&out).contains("S3 region is not configured"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn doctor_reads_gcs_through_the_emulator() {
    let env = gcs().await;
    let bucket = env.bucket("doctor-gcs").await.unwrap();
    let store = kong_fallback_operator::storage::gcs::GcsStore::new(
        Some(&env.endpoint),
        &kong_fallback_operator::storage::gcs::GcsCredentials::Anonymous,
        &bucket,
    )
    .await
    .unwrap();
    use kong_fallback_operator::storage::{ObjectStore, Precondition, PutObject};
    store
        .put(PutObject {
            key: "p/3.6.1.4/config.json".into(),
            body: bytes::Bytes::from_static(GOOD.as_bytes()),
            content_type: "application/json".into(),
            metadata: [("uploader".to_owned(), "kfo-test".to_owned())].into(),
            precondition: Precondition::None,
        })
        .await
        .unwrap();
    let storage = format!("gcs://{bucket}/p");
    let out = doctor(
        &[("KONG_CLUSTER_FALLBACK_CONFIG_STORAGE", storage.as_str())],
        &[
            "--kong-version",
            "3.6.1.4",
            "--endpoint",
            &env.endpoint,
            "--gcs-anonymous",
        ],
    )
    .await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("routes=1 services=1") && t.contains("uploader:   kfo-test"),
        "{t}"
    );
}
