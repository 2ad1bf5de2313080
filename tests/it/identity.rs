//! `ambient: true` on S3: the operator and `doctor` use the AWS SDK's default credential
//! chain, proven against the real protocols with no static key anywhere (issue #13):
//!
//! - EKS Pod Identity: the container credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`
//!   and `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`), served on loopback with temporary MinIO
//!   credentials ([`PodIdentityAgent`]);
//! - IRSA: a ServiceAccount token of the test apiserver (`kubectl create token`, audience
//!   `sts.amazonaws.com`) in `AWS_WEB_IDENTITY_TOKEN_FILE`, exchanged with
//!   `AssumeRoleWithWebIdentity` at a MinIO that trusts the apiserver as its OpenID provider
//!   (through [`StsArnShim`], which only fills the assumed-role ARN MinIO leaves empty).
//!
//! The identities are given to the operator child process only, never to the test process.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kfo_testenv::{MinioEnv, MinioOpenId, PodIdentityAgent, STS_AUDIENCE, StsArnShim, kube, minio};
use kong_fallback_operator::api::FallbackConfigPolicy;
use kube::api::Api;

use crate::fleet::{Fleet, Options, Timings};

const TIMINGS: Timings = Timings {
    lease: 6,
    renew: 4,
    retry: 1,
};

/// Variables that keep the machine's own AWS settings (if any) out of the chain, so only
/// the identity under test can supply credentials.
fn isolated(mut env: Vec<(String, String)>) -> Vec<(String, String)> {
    for (k, v) in [
        // NB: blank counts as unset for the SDK's environment provider.
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_SECRET_ACCESS_KEY", ""),
        ("AWS_SESSION_TOKEN", ""),
        ("AWS_CONFIG_FILE", "/nonexistent/kfo-aws-config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/kfo-aws-credentials",
        ),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        env.push((k.to_owned(), v.to_owned()));
    }
    env
}

/// No Secret of the namespace holds an AWS key.
async fn no_static_key_in(fleet: &Fleet) {
    let secrets = Api::<Secret>::namespaced(fleet.client.clone(), &fleet.ns)
        .list(&Default::default())
        .await
        .unwrap();
    for s in secrets.items {
        let keys: Vec<&String> = s.data.iter().flat_map(|d| d.keys()).collect();
        assert!(
            !keys.iter().any(|k| k.starts_with("AWS_")),
            "Secret {:?} holds AWS keys: {keys:?}",
            s.metadata.name
        );
    }
}

/// Waits until `StorageReachable` is Unknown and returns (reason, message).
async fn storage_condition_unknown(fleet: &Fleet) -> (String, String) {
    let api = Api::<FallbackConfigPolicy>::namespaced(fleet.client.clone(), &fleet.ns);
    crate::wait::until("StorageReachable Unknown", async || {
        let p = api.get("prod").await.ok()?;
        let (status, reason, message) = crate::cluster::condition(&p, "StorageReachable")?;
        (status == "Unknown").then_some((reason, message))
    })
    .await
}

#[tokio::test]
async fn an_operator_with_eks_pod_identity_exports_with_no_static_key_anywhere() {
    let mut fleet = Fleet::with(
        "pod-identity",
        TIMINGS,
        Options {
            ambient: true,
            ..Options::default()
        },
    )
    .await;
    let agent = PodIdentityAgent::start(fleet.s3, &fleet.bucket)
        .await
        .unwrap();
    fleet.operator_env = isolated(agent.env());
    no_static_key_in(&fleet).await;

    let op = fleet.start("pi-0");
    let hash = fleet.push();
    let stored = fleet.wait_stored(&hash, Duration::from_secs(60)).await;
    assert!(
        stored.is_some(),
        "not exported with the Pod Identity credentials (served {}, refused {}):\n{}",
        agent.served(),
        agent.refused(),
        op.proc.log_tail(40)
    );
    assert!(agent.served() >= 1, "the endpoint was not asked");
    assert_eq!(agent.refused(), 0, "the authorization token was not sent");

    // The data planes' identity is not the operator's: nothing to check, and it says so.
    let (reason, message) = storage_condition_unknown(&fleet).await;
    assert_eq!(reason, "NotVerifiable", "{message}");
    assert!(message.contains("doctor"), "{message}");
}

#[tokio::test]
async fn doctor_reads_with_eks_pod_identity_and_no_keys() {
    let s3 = minio().await;
    let bucket = s3.bucket("doctor-pod-identity").await.unwrap();
    let good = r#"{"_format_version":"3.0","_transform":false,"services":[{"id":"9748f662-7711-4a90-8186-dc02f10eb0f5","name":"svc","host":"example.com","port":443}]}"#;
    s3.root_client()
        .put_object()
        .bucket(&bucket)
        .key("kong/3.6.1.4/config.json")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(
            good.as_bytes(),
        ))
        .send()
        .await
        .unwrap();
    let agent = PodIdentityAgent::start(s3, &bucket).await.unwrap();
    let storage = format!("s3://{bucket}/kong");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kong-fallback-operator"))
        .args(["doctor", "--kong-version", "3.6.1.4"])
        .env_clear()
        .env("KONG_CLUSTER_FALLBACK_CONFIG_STORAGE", &storage)
        .env("AWS_CONFIG_STORAGE_ENDPOINT", &s3.endpoint)
        .env("AWS_REGION", "us-east-1")
        .envs(isolated(agent.env()))
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("services=1"), "{text}");
    assert!(agent.served() >= 1, "{text}");
}

#[tokio::test]
async fn an_operator_with_irsa_exports_with_a_service_account_token_and_no_static_key() {
    let env = kube().await;
    env.serve_issuer_discovery_anonymously().await.unwrap();
    let openid = MinioOpenId {
        config_url: env.issuer_discovery_url(),
        client_id: STS_AUDIENCE.to_owned(),
        role_policy: "readwrite".to_owned(),
    };
    // NB: a MinIO of its own: the OpenID provider is read at its start.
    let s3: &'static MinioEnv = Box::leak(Box::new(
        MinioEnv::with_openid("minio-irsa", &openid, &env.ca_pem)
            .await
            .unwrap(),
    ));
    let mut fleet = Fleet::with(
        "irsa",
        TIMINGS,
        Options {
            s3: Some(s3),
            ambient: true,
            ..Options::default()
        },
    )
    .await;
    let token = env
        .service_account_token(&fleet.ns, "kong-fallback-operator", STS_AUDIENCE)
        .await
        .unwrap();
    let sts = StsArnShim::start(s3).await.unwrap();
    let token_file = std::env::temp_dir().join(kfo_testenv::unique_name("kfo-irsa-token"));
    std::fs::write(&token_file, &token).unwrap();
    // What EKS's pod identity webhook sets for a ServiceAccount annotated with a role,
    // plus the STS endpoint pointed at MinIO.
    fleet.operator_env = isolated(vec![
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE".into(),
            token_file.display().to_string(),
        ),
        ("AWS_ROLE_ARN".into(), openid.role_arn()),
        ("AWS_ROLE_SESSION_NAME".into(), "kfo-irsa".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ENDPOINT_URL_STS".into(), sts.endpoint.clone()),
    ]);
    no_static_key_in(&fleet).await;

    let op = fleet.start("irsa-0");
    let hash = fleet.push();
    let stored = fleet.wait_stored(&hash, Duration::from_secs(60)).await;
    let log = op.proc.log_tail(40);
    let _ = std::fs::remove_file(&token_file);
    assert!(
        stored.is_some(),
        "not exported with the web identity:\n{log}"
    );
}
