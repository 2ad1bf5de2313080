//! Product storage clients for the test MinIO. Included with `#[path]`.
#![allow(dead_code)]

use std::sync::Arc;

use kfo_testenv::MinioEnv;
use kong_fallback_operator::storage::ObjectStore;
use kong_fallback_operator::storage::s3::{PutExtras, S3Settings, S3Store, StaticCredentials};

/// Settings for the test MinIO as its root user, with `secret` as the password.
pub fn minio_settings(env: &MinioEnv, secret: &str) -> S3Settings {
    S3Settings {
        region: "us-east-1".into(),
        endpoint: Some(env.endpoint.clone()),
        credentials: StaticCredentials {
            access_key_id: env.root_user.clone(),
            secret_access_key: secret.to_owned(),
            session_token: None,
        }
        .into(),
        ca_pem: None,
    }
}

/// The product's S3 store on `bucket` of the test MinIO, as its root user.
pub fn minio_store(env: &MinioEnv, bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        S3Store::new(
            &minio_settings(env, &env.root_password),
            bucket,
            PutExtras::default(),
        )
        .unwrap(),
    )
}

/// The multipart uploads open (staged writes neither committed nor aborted) in `bucket` of
/// the test MinIO.
pub async fn open_uploads(env: &MinioEnv, bucket: &str) -> Vec<aws_sdk_s3::types::MultipartUpload> {
    env.root_client()
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .uploads()
        .to_vec()
}
